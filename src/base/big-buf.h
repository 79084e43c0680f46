/* big-buf.h: a byte buffer that may grow to gigabytes (the relay's
 * post-copy read-ahead queue), mapped with transparent huge pages.
 *
 * Such a buffer is written once into fresh memory, as fast as the source
 * QEMU sends: with 4 KiB pages every page is a fault, 11 us each on this
 * host's VM, which capped filling it at ~350 MB/s (a third of the relay's
 * read-ahead time).  Above MP_BIG_BUF_MAPPED the buffer is its own
 * mapping, advised MADV_HUGEPAGE, grown by mremap() (no copy); a 2 MiB
 * page is one fault (5 GB/s).  The advice needs the mapping to itself:
 * given to part of a malloc()ed block it splits the block's mapping, and
 * realloc() then copies the whole buffer on every growth.
 */
#pragma once

#include <glib.h>

#define MP_BIG_BUF_MAPPED (2u << 20)

typedef struct {
    guint8 *data;
    gsize cap;      /* usable bytes */
    gsize map_len;  /* 0: malloc()ed, else the mapping's length */
} MpBigBuf;

/* Makes `b` (zeroed at first) hold at least `cap` bytes, keeping the
 * bytes it held.  Aborts when out of memory, as g_realloc() does. */
void mp_big_buf_resize(MpBigBuf *b, gsize cap);
/* Frees the memory; `b` is empty again. */
void mp_big_buf_clear(MpBigBuf *b);
