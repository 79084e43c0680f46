/* big-buf.h: a byte buffer that may grow to gigabytes (the relay's
 * post-copy read-ahead queue), mapped with transparent huge pages, whose
 * fresh memory a helper thread can ready ahead of the writer.
 *
 * Such a buffer is written once into fresh memory, as fast as the source
 * QEMU sends: with 4 KiB pages every page is a fault, 11 us each on this
 * host's VM, which capped filling it at ~350 MB/s (a third of the relay's
 * read-ahead time).  Above MP_BIG_BUF_MAPPED the buffer is its own
 * mapping, advised MADV_HUGEPAGE, grown by mremap() (no copy); a 2 MiB
 * page is one fault.  The advice needs the mapping to itself: given to
 * part of a malloc()ed block it splits the block's mapping, and realloc()
 * then copies the whole buffer on every growth.
 *
 * Even in huge pages, memory the kernel has not handed out for a while
 * is slow to fault in on a VM (the host backs it on first touch: 600 MB/s
 * here, against 15 GB/s for memory just freed), and the relay's loop
 * thread spent 60 % of post-copy's first second in the kernel clearing
 * pages while page requests waited (docs/benchmarks.md, "Fresh memory").
 * mp_big_buf_prepare() has a helper thread fault the mapping in
 * (MADV_POPULATE_WRITE, which leaves the bytes as they are) ahead of the
 * writer, who writes only where mp_big_buf_ready() says.
 */
#pragma once

#include <glib.h>

#define MP_BIG_BUF_MAPPED (2u << 20)

typedef struct MpBigBufPrep MpBigBufPrep;

typedef struct {
    guint8 *data;
    gsize cap;           /* usable bytes */
    gsize map_len;       /* 0: malloc()ed, else the mapping's length */
    MpBigBufPrep *prep;  /* the helper, from mp_big_buf_prepare() on */
} MpBigBuf;

/* Makes `b` (zeroed at first) hold at least `cap` bytes, keeping the
 * bytes it held.  Aborts when out of memory, as g_realloc() does. */
void mp_big_buf_resize(MpBigBuf *b, gsize cap);
/* Asks the helper thread (started on the first call) to fault in the
 * mapping up to `upto` bytes (at most its length); each step done, it
 * makes `wake` (a GSource of the writer's loop, referenced) ready.
 * A malloc()ed buffer needs no helper: nothing happens. */
void mp_big_buf_prepare(MpBigBuf *b, gsize upto, GSource *wake);
/* How far from the start the buffer may be written without a page
 * fault: `cap` without a helper, or where the kernel cannot prefault. */
gsize mp_big_buf_ready(const MpBigBuf *b);
/* Stops the helper, frees the memory; `b` is empty again. */
void mp_big_buf_clear(MpBigBuf *b);
