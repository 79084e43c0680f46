/* stream-input.h: reads the migration stream a file holds: plain, zstd-
 * compressed, or inside a libvirt save image (raw, gzip, bzip2, xz, lzop or
 * zstd), all told by content, not by the file name. */
#pragma once

#include <glib.h>
#include "libvirt-image.h"
#include "vmdesc.h"

typedef struct MpInput MpInput;

/* A .zst frame needing a larger window is refused (zstd's error names
 * it): its decoder then holds at most 128 MiB plus two 128 KiB blocks. */
#define MP_INPUT_ZSTD_WINDOW_LOG_MAX 27

/* xz: the decoder's memory bound (xz -9 needs 65 MiB; libvirt uses the
 * default level).  A stream needing more is refused with liblzma's word. */
#define MP_INPUT_XZ_MEMLIMIT (128u << 20)
/* lzop: the largest block lzop writes is 64 MiB (its default 256 KiB);
 * a block header above it is refused. */
#define MP_INPUT_LZOP_BLOCK_MAX (64u << 20)

/* @return an open input, or NULL with an error naming the file (it cannot
 * be opened; a libvirt save image whose header is malformed). */
MpInput *mp_input_open(const char *path, GError **error);
/* The VM state of snapshot `snapshot` (name or id) of the qcow2 image
 * `path`.  @return an open input, or NULL with an error. */
MpInput *mp_input_open_snapshot(const char *path, const char *snapshot,
                                GError **error);
void mp_input_free(MpInput *in); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpInput, mp_input_free)

/* Reads up to `cap` bytes.  @return bytes read, 0 at the end, -1 on error. */
gssize mp_input_read(MpInput *in, guint8 *buf, gsize cap, GError **error);

gboolean mp_input_is_compressed(const MpInput *in);
/* "zstd", "gzip", "bzip2", "xz", "lzop", or NULL for a plain stream. */
const char *mp_input_compression(const MpInput *in);
/* The libvirt save image's header, or NULL if the file is not one.
 * Borrowed: valid until mp_input_free(). */
const MpLibvirtImage *mp_input_libvirt(const MpInput *in);
/* Size of the file on disk (compressed size for .zst). */
guint64 mp_input_file_size(const MpInput *in);

/* The last `max` bytes (or fewer) of the stream's content, for finding the
 * vmdesc.  Plain files: read directly; zstd: decompresses the whole file
 * once.  @return a new GBytes or NULL with an error. */
GBytes *mp_input_read_tail(const char *path, gsize max, GError **error);
/* The same for what `in` reads (a file, or a qcow2 snapshot's VM state),
 * through a second input of its own. */
GBytes *mp_input_reread_tail(const MpInput *in, gsize max, GError **error);

/* The vmdesc a stream file ends with (pre-copy), so that device sections
 * can be sliced.  Looks in the last 256 KiB, then 8 times more up to
 * MP_INPUT_VMDESC_SEARCH; a compressed file in that much at once (its
 * tail costs a pass over the whole file).  @return the vmdesc; or NULL:
 * none there (or the tail cannot be read), or with *error set, one that
 * does not parse. */
#define MP_INPUT_VMDESC_SEARCH (16u << 20) /* the vmdesc is well below */
MpVmdesc *mp_input_find_vmdesc(const char *path, gboolean compressed,
                               GError **error);
/* The same for what `in` reads (a file, a qcow2 snapshot's VM state, a
 * libvirt image's stream), through a second input of its own. */
MpVmdesc *mp_input_find_vmdesc_of(const MpInput *in, GError **error);
