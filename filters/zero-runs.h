/* zero-runs.h: zero pages collapsed into runs, and pages the peer already
 * holds as zero not sent at all.
 *
 * The source side classifies each page of a stream, in stream order:
 *   - not zero: the caller sends it (another encoder's business); the
 *     peer's copy is no longer known to be zero;
 *   - zero, and the peer holds it as zero: nothing is sent (SKIP);
 *   - zero otherwise: it joins a run; consecutive pages of one block make
 *     one run (ZERO_RUN entry: first index, count), sent with the batch
 *     (the batch, page-batch.h, keeps the entries and their order).
 *
 * "The peer holds it as zero" is a bitmap per block (one bit per page:
 * 16 KiB for 512 MiB of 4 KiB pages).  A bit is set when a zero page or
 * run was sent, or for a whole block when the caller knows the
 * destination starts with it zero; it is cleared when a non-zero page is
 * sent or the range is discarded (postcopy RAM_DISCARD).  The decode side
 * expands a run back into zero pages after checking it lies inside its
 * block.
 *
 * One MpZeroRuns per migration session, shared by all the streams of the
 * session that carry pages (main, multifd channels, preempt): a page may
 * go as zero on one channel and with data on another, and a tracker per
 * stream would then skip a later zero page that the destination does not
 * hold as zero.  So it is thread-safe (a mutex around each call; the
 * streams' ordered stages may run on different threads), and it must see
 * a page's versions in the order QEMU sent them (multifd: QEMU sends a
 * page on one channel per sync round, and the rounds are ordered).
 */
#pragma once

#include <glib.h>
#include "codec-stats.h"

/* @return TRUE if all `len` bytes are zero. */
gboolean mp_page_is_zero(const guint8 *p, gsize len);

typedef struct MpZeroRuns MpZeroRuns;

typedef struct {
    guint16 block;
    guint64 first; /* page index */
    guint32 count;
} MpZeroRun;

typedef enum {
    MP_ZRUN_DATA,   /* not zero: send it */
    MP_ZRUN_SKIP,   /* zero and already zero at the peer: send nothing */
    MP_ZRUN_EXTEND, /* zero: the caller's open run grows by this page */
    MP_ZRUN_START,  /* zero: the caller starts a new run with it */
} MpZeroVerdict;

/* bytes of a run entry on the wire (page-batch.h) */
#define MP_ZRUN_WIRE_LEN 13

#define MP_ZRUN_MAX_BLOCKS 4096

/* @return a classifier for pages of `page_size`; free with
 * mp_zrun_free(). */
MpZeroRuns *mp_zrun_new(guint32 page_size);
void mp_zrun_free(MpZeroRuns *z); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpZeroRuns, mp_zrun_free)

/* Declares RAM block `name` with `npages` pages; `peer_zero`: the peer
 * holds every page of it as zero (a fresh destination's RAM).  The
 * tracker numbers blocks itself (0, 1, ... in order of declaration; a
 * block declared again keeps its id and gets a new bitmap): the streams
 * sharing it each number blocks in their own caches.  Pages of undeclared
 * blocks (id -1), or past a block's end, are never assumed zero.
 * @return the block's id, or -1 if npages is above 2^32 (16 TiB of 4 KiB
 * pages) or MP_ZRUN_MAX_BLOCKS are declared. */
gint mp_zrun_declare_block(MpZeroRuns *z, const char *name, guint64 npages,
                           gboolean peer_zero);

/* @return the id of block `name`, or -1 if it was not declared. */
gint mp_zrun_block_id(MpZeroRuns *z, const char *name);

/* Classifies one page (page_size bytes), in the order QEMU sent it.
 * `run_ends_here`: the caller's last entry is a run of this block that
 * ends right before `index` (a zero page then extends it for free, even
 * one the peer holds as zero).  The caller keeps its entries in order,
 * runs among them: a page may come twice in one batch. */
MpZeroVerdict mp_zrun_classify(MpZeroRuns *z, gint block, guint64 index,
                               const guint8 *page, gboolean run_ends_here);

/* The peer's pages [first, first + n) are no longer known as zero. */
void mp_zrun_forget(MpZeroRuns *z, gint block, guint64 first, guint64 n);

/* @return whether the peer is known to hold the page as zero. */
gboolean mp_zrun_peer_zero(const MpZeroRuns *z, gint block,
                           guint64 index);

/* Decode side: checks that a run received lies inside a block of
 * `npages` pages (0: size unknown, then only overflow is checked).
 * @return FALSE with an error naming block, first and count. */
gboolean mp_zrun_check(const MpZeroRun *r, guint64 npages, GError **error);

/* Pages skipped, zero pages put in runs, runs started.  stats.pages_in
 * counts every page classified, bytes_out the run entries' wire size. */
MpCodecStats mp_zrun_stats(const MpZeroRuns *z);
guint64 mp_zrun_skipped(const MpZeroRuns *z);
guint64 mp_zrun_zero_pages(const MpZeroRuns *z);
guint64 mp_zrun_runs(const MpZeroRuns *z);
