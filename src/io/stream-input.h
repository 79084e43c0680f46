/* stream-input.h: reads a captured stream file, plain or zstd-compressed
 * (by content: the zstd frame magic, not the file name). */
#pragma once

#include <glib.h>
#include "vmdesc.h"

typedef struct MpInput MpInput;

/* A .zst frame needing a larger window is refused (zstd's error names
 * it): its decoder then holds at most 128 MiB plus two 128 KiB blocks. */
#define MP_INPUT_ZSTD_WINDOW_LOG_MAX 27

/* @return an open input, or NULL with an error naming the file. */
MpInput *mp_input_open(const char *path, GError **error);
void mp_input_free(MpInput *in); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpInput, mp_input_free)

/* Reads up to `cap` bytes.  @return bytes read, 0 at the end, -1 on error. */
gssize mp_input_read(MpInput *in, guint8 *buf, gsize cap, GError **error);

gboolean mp_input_is_compressed(const MpInput *in);
/* Size of the file on disk (compressed size for .zst). */
guint64 mp_input_file_size(const MpInput *in);

/* The last `max` bytes (or fewer) of the stream's content, for finding the
 * vmdesc.  Plain files: read directly; zstd: decompresses the whole file
 * once.  @return a new GBytes or NULL with an error. */
GBytes *mp_input_read_tail(const char *path, gsize max, GError **error);

/* The vmdesc a stream file ends with (pre-copy), so that device sections
 * can be sliced.  Looks in the last 256 KiB, then 8 times more up to
 * MP_INPUT_VMDESC_SEARCH; a compressed file in that much at once (its
 * tail costs a pass over the whole file).  @return the vmdesc; or NULL:
 * none there (or the tail cannot be read), or with *error set, one that
 * does not parse. */
#define MP_INPUT_VMDESC_SEARCH (16u << 20) /* the vmdesc is well below */
MpVmdesc *mp_input_find_vmdesc(const char *path, gboolean compressed,
                               GError **error);
