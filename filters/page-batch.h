/* page-batch.h: a batch of encoded pages of one RAM block: the payload of
 * a tunnel PAGES frame (docs/tunnel.md), and the encoders that make it.
 *
 *   u8 flags (0x01: body compressed) | u8 zctx | be16 block id |
 *   u8 n | block name[n] | be32 entries | be32 body_len (uncompressed) |
 *   entry * entries | body (zstd batch of context zctx, or raw)
 *
 *   entry  u8 kind | be64 page index | by kind:
 *     ZERO_RUN  be32 count            pages index..index+count-1 are zero
 *     PAGE      -                     page_size bytes from the body
 *     DELTA     be16 len              len bytes of body: page-delta.h
 *                                     against the cached version
 *     DEDUP     be16 block | be64 idx  the bytes of cached page (block, idx)
 *
 * Both sides apply entries in order to their mirrored page cache
 * (page-cache.h): PAGE, DELTA and DEDUP store the page under its own key
 * (DELTA and DEDUP first mark their base used), ZERO_RUN forgets its pages.
 * The source side, for each page in stream order: zero → run or nothing
 * (zero-runs.h; never nothing for a batch's first page, so that the
 * destination's current block after a batch is the batch's); same bytes
 * cached → DEDUP; cached older version and a delta under
 * MP_BATCH_DELTA_MAX of the page → DELTA; else PAGE.  Dedup and delta
 * back off where they do not pay (mp_batch_enc_adapt()): their pages then
 * go on down that list as if missed, so the cache sees the same
 * operations as it would for a miss, on both sides.  The body
 * is compressed separately (mp_batch_compress), on a worker thread, by the
 * worker's zstd context; the destination decompresses batches of one
 * context in stream order.
 *
 * Bounds (checked on decode): a batch covers at most MP_BATCH_MAX_PAGES
 * pages (runs included, so a hostile run cannot make a decoder loop) and
 * MP_BATCH_MAX_BODY bytes of body.
 */
#pragma once

#include <glib.h>
#include "codec-stats.h"
#include "enc-adapt.h"
#include "page-cache.h"
#include "page-zstd.h"
#include "zero-runs.h"

#define MP_BATCH_COMPRESSED 0x01

#define MP_BATCH_ZERO_RUN 1
#define MP_BATCH_PAGE     2
#define MP_BATCH_DELTA    3
#define MP_BATCH_DEDUP    4

#define MP_BATCH_MAX_PAGES 65536u
#define MP_BATCH_MAX_BODY  (4u * 1024 * 1024)
/* a delta is used only when smaller than this share of a page */
#define MP_BATCH_DELTA_MAX 0.75

/* Which encoders run (each switchable: --no-zero, --no-delta, ...). */
typedef struct {
    gboolean zero;
    gboolean delta;
    gboolean dedup;
} MpBatchOpts;

/* What each encoder did, with its busy time (codec-stats.h). */
typedef struct {
    MpCodecStats zero;  /* pages classified; out: run entries */
    MpCodecStats dedup; /* pages looked up; out: references */
    MpCodecStats delta; /* pages with a cached base; out: deltas used */
    MpCodecStats raw;   /* pages sent whole */
    guint64 skipped, zero_pages, dedup_hits, delta_used;
    /* adaptive (mp_batch_enc_adapt()): on now (FALSE too when the options
     * leave it off), switches so far */
    gboolean dedup_on, delta_on;
    guint dedup_switches, delta_switches;
} MpBatchStats;

/* The encoders that back off where they do not pay. */
typedef enum {
    MP_BATCH_ENC_DEDUP,
    MP_BATCH_ENC_DELTA,
} MpBatchEncoder;

/* While dedup or delta is off adaptively, one page in this many is still
 * tried, so that what it would save stays measured. */
#define MP_BATCH_PROBE_EVERY 16
/* Each decides once it tried this many bytes of pages since its last
 * decision (1024 pages of 4 KiB; 64 MiB of pages while off). */
#define MP_BATCH_ADAPT_MIN_BYTES (4u << 20)

typedef struct MpBatchEnc MpBatchEnc;

/* An encoder for one stream.  `cache` (borrowed: the stream's mirrored
 * cache) is kept up to date whatever the options, so that delta and dedup
 * can be switched on and off while both caches stay mirrored; `zero`
 * (borrowed) may be NULL when opts->zero is off.  `opts` may change
 * between batches (mp_batch_enc_set_opts).  @return free with
 * mp_batch_enc_free(). */
MpBatchEnc *mp_batch_enc_new(guint32 page_size, MpPageCache *cache,
                             MpZeroRuns *zero, const MpBatchOpts *opts);
void mp_batch_enc_free(MpBatchEnc *e); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpBatchEnc, mp_batch_enc_free)

void mp_batch_enc_set_opts(MpBatchEnc *e, const MpBatchOpts *opts);

/* Do dedup and delta pay?  Called every second or so by the owner with
 * the link rate in tunnel bytes/s (0: not known) and whether a guest
 * waits on the stream (post-copy: MpAdaptInput's latency_bound, no
 * encoder on only because it is cheap).  Each encoder the
 * options run decides with mp_adapt_decide() (enc-adapt.h) on what it did
 * since its last decision (at least MP_BATCH_ADAPT_MIN_BYTES of pages
 * tried): bytes tried against bytes that left for them (a hit leaves its
 * entry, a miss the whole page) and its busy time, as one encoder on the
 * owner's thread.  Off, it tries one page in MP_BATCH_PROBE_EVERY only:
 * the lookup, the hash and the delta of the others are skipped, while
 * every page still updates the cache exactly as before, so the peer's
 * cache needs to know nothing of it.  A switch is logged once, with its
 * numbers, prefixed by `name`.  @return the number of switches. */
guint mp_batch_enc_adapt(MpBatchEnc *e, double link_bps,
                         gboolean latency_bound, const char *name);

/* The decision for one encoder on numbers given (tests, no clock); no-op
 * when the options leave it off.  @return TRUE if it switched. */
gboolean mp_batch_enc_adapt_with(MpBatchEnc *e, MpBatchEncoder which,
                                 const MpAdaptInput *in, const char *name);

/* Adds a page of `block` (name; its id comes from the cache) to the batch
 * being built.  A page of another block than
 * the batch's, or one that would overflow its bounds, first finishes the
 * batch into `out` (so `out` may grow).  @return FALSE only when the cache
 * knows too many blocks (the page should then go as raw stream bytes). */
gboolean mp_batch_enc_add(MpBatchEnc *e, const char *block, guint64 index,
                          const guint8 *page, GByteArray *out);

/* Appends the batch built so far (uncompressed) to `out` as a PAGES
 * payload, length-prefixed: be32 length | payload, one per batch; nothing
 * if the batch is empty (no page added since the last flush). */
void mp_batch_enc_flush(MpBatchEnc *e, GByteArray *out);

const MpBatchStats *mp_batch_enc_stats(const MpBatchEnc *e);

/* Bytes of entries and body in the batch being built (what a flush would
 * append, less its header): a caller with a smaller bound than
 * MP_BATCH_MAX_BODY flushes before it is reached. */
gsize mp_batch_enc_pending(const MpBatchEnc *e);

/* Compresses the body of one uncompressed batch `plain` with `comp`
 * (context number `zctx`) and appends the result to `out` (as it is when
 * it has no body: runs and references only).  Runs on the
 * worker owning `comp`; batches of one context must be compressed in
 * stream order.  @return the length appended. */
gsize mp_batch_compress(MpCompEnc *comp, guint8 zctx, const guint8 *plain,
                        gsize len, GByteArray *out);

/* --- decoding ------------------------------------------------------- */

typedef struct MpBatchDec MpBatchDec;

/* A page decoded: `page` is page_size bytes, or NULL for `count` zero
 * pages from `index`.  Valid during the call. */
typedef void (*MpBatchPageFunc)(const char *block, guint64 index,
                                guint32 count, const guint8 *page,
                                gpointer user_data);

/* A decoder for one stream.  `cache` (borrowed) mirrors the source's;
 * `window_log` bounds the zstd windows.  @return free with
 * mp_batch_dec_free(). */
MpBatchDec *mp_batch_dec_new(guint32 page_size, MpPageCache *cache,
                             guint window_log);
void mp_batch_dec_free(MpBatchDec *d); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpBatchDec, mp_batch_dec_free)

/* Decodes one PAGES payload (no length prefix), calling `cb` for each
 * entry in order.  @return FALSE with an error naming the entry, its
 * offset in the payload and what was expected; pages before it were
 * delivered, and the stream is lost (the caches may differ now). */
gboolean mp_batch_decode(MpBatchDec *d, const guint8 *payload, gsize len,
                         MpBatchPageFunc cb, gpointer user_data,
                         GError **error);

const MpCodecStats *mp_batch_dec_stats(const MpBatchDec *d);
