/* tunnel-pages-out.h: the source side's PAGES encoding of one forward
 * stream (docs/tunnel.md, "Encoded pages (PAGES)").
 *
 *   bytes read from the hop (one QEMU connection's main stream)
 *     --> channel pipeline (src/pipeline, no sink: it parses and tells
 *         this file each record with its stream offset and length)
 *     --> RAM page records of the "ram" section (PAGE, ZERO) become page
 *         batches (filters/page-batch.h: zero runs and the peer-holds-zero
 *         bitmap, dedup and delta against the mirrored page cache), their
 *         bodies compressed by zstd on worker threads (one GThreadPool of
 *         one thread per zstd context, so a context's batches stay in
 *         order); every other byte stays raw stream bytes (DATA)
 *     --> items in stream order: DATA bytes, PAGES payloads
 *
 * Nothing waits for more input but a page record that a feed cut in
 * two: each feed ends with the open batch closed and every other byte
 * not taken into a batch handed out as DATA, so QEMU's rate measurement
 * and post-copy never see more than one record held back.  The cut
 * record is held (at most one) until the next feeds make it whole, then
 * joins a batch like any page; one that turns out not to be a page, or
 * that comes where pages are not encoded, leaves as DATA as it came.
 *
 * Mirrors: the destination (tunnel-pages-in.h) applies the batches in the
 * same order to a cache of the same budget, which the stream's first
 * PAGES payload carries (batch flag MP_TUN_PAGES_SETUP).
 *
 * Zero pages the destination already holds as zero are not sent at all
 * only while this stream is known to be the session's only page carrier
 * in pre-copy: once post-copy is advised, a multifd flush is seen or the
 * owner says another channel joined the session
 * (mp_tun_pages_out_set_shared()), no page is skipped any more (a page
 * another channel sent is unknown here; a page never sent would fault in
 * post-copy).
 *
 * Lifted pages (post-copy, docs/tunnel.md "Lifted pages"): the owner
 * feeds the return path's bytes (mp_tun_pages_out_return_path()); a page
 * the destination asked for (REQ_PAGES), and the next
 * MP_TUN_LIFT_NEIGHBOURS pages of its block (pre-paging), that arrives
 * from QEMU afterwards is copied into an urgent payload
 * (mp_tun_pages_out_pop_urgent()) as well as going into its batch as
 * always: the caches and the zero tracker are untouched, and the
 * destination drops the bulk copy (tunnel-pages-in.h).  From the first
 * lift on, no RAM page record leaves as raw bytes with CONTINUE (its
 * block is named instead), and since every page record a feed cuts is
 * held until it is whole, the destination may write an urgent page
 * after any batch.  Never with a RAM block of
 * larger host pages (their records must reach QEMU together), nor while
 * skipping zero pages (pre-copy).
 *
 * Multifd (option `multifd`, docs/tunnel.md "Multifd pages"): the
 * stream is one multifd channel, parsed by the multifd parser.  The
 * normal pages of an uncompressed packet (multifd-compression none) go
 * into batches, everything else (the packet headers with their offset
 * lists, device state) as DATA; the destination writes a batch back as
 * the bare page bytes in entry order (tunnel-pages-in.h), so it writes
 * the very bytes of the source's packets.  Nothing is skipped (every
 * page of a packet must be there), nothing is lifted (multifd carries no
 * post-copy pages).  A channel whose packets QEMU compresses (zstd,
 * zlib, ...) or that the parser loses goes as DATA from there on, said
 * once in the log.  Its page cache is its own (see ensure_encoder()).
 *
 * One thread owns it (the main loop); workers only compress.
 */
#pragma once

#include <glib.h>
#include <json-c/json.h>
#include "enc-adapt.h"

/* batch flag (beside MP_BATCH_COMPRESSED): `be64 cache_bytes` follows
 * the zctx byte; set on a stream's first PAGES payload only */
#define MP_TUN_PAGES_SETUP 0x02
#define MP_TUN_PAGES_MAX_WORKERS 64

typedef struct {
    /* zero runs and the peer-holds-zero bitmap; off: QEMU's ZERO records
     * stay raw stream bytes (a zero page is never sent whole) */
    gboolean zero_runs;
    gboolean delta;
    gboolean dedup;
    gboolean compress; /* zstd on batch bodies (long window, workers) */
    /* zstd level of page bodies; 0: adapted (from 3) with `adapt`,
     * else 3 (see mp_tun_pages_out_adapt()) */
    int level;
    guint64 cache_bytes; /* 0: mp_pcache_auto_size(guest RAM) */
    guint workers;       /* zstd contexts and threads, 0: the cores */
    /* zstd on page bodies, dedup and delta back off where they do not
     * pay (mp_tun_pages_out_adapt()); FALSE: they stay as set */
    gboolean adapt;
    /* requested post-copy pages go urgent too (MP_TUN_FEAT_URGENT_PAGES
     * agreed; --no-lift clears it) */
    gboolean urgent;
    /* the stream is a multifd channel (its owner sets it per stream,
     * with MP_TUN_FEAT_MFD_PAGES agreed): see "Multifd" above */
    gboolean multifd;
} MpTunPagesOptions;

/* Pages after a requested one that are lifted too when they come next. */
#define MP_TUN_LIFT_NEIGHBOURS 8
/* Requests remembered at most (the oldest go first), and for how long. */
#define MP_TUN_LIFT_MAX_WANTS 64
#define MP_TUN_LIFT_WANT_US   (2 * G_USEC_PER_SEC)
/* Each time the relay in front puts a requested page first
 * (mp_tun_pages_out_page_first()), the owner may read this much of the
 * stream past the link's pace, at most 4 times that in all: the hop's
 * 8 KiB in post-copy and the page (mp_tun_pages_out_read_ahead()). */
#define MP_TUN_LIFT_READ_AHEAD (64u << 10)
/* entry kinds of an urgent payload (as the batch's) */
#define MP_TUN_LIFT_ZERO 1
#define MP_TUN_LIFT_PAGE 2

/* While zstd is off adaptively, one batch in this many is still
 * compressed, so that its ratio and CPU rate stay measured (pages that
 * became compressible bring it back). */
#define MP_TUN_PAGES_PROBE_EVERY 16
/* zstd decides once it compressed this many stream bytes. */
#define MP_TUN_PAGES_ADAPT_MIN_BYTES (4u << 20)
/* The zstd level is judged on windows of about this long with at least
 * this much compressed; the report keeps this many level changes. */
#define MP_TUN_PAGES_LEVEL_WINDOW_S  1.0
/* batches per window that the workers also compress alone at the level
 * and at the rungs next to it, to compare them on the same pages */
#define MP_TUN_PAGES_LEVEL_SAMPLES   2
/* in one batch in this many, a slice of this many bytes is also
 * compressed alone at the level with small match tables and with the
 * level's own, for their controller (MpTablesCtl), which decides on every
 * MP_TABLES_MIN_SAMPLES of them: with batches of about 1 MiB, on every 16
 * MiB of the stream's pages, for about 3 % more of zstd's CPU */
#define MP_TUN_PAGES_TABLES_EVERY    4
#define MP_TUN_PAGES_TABLES_SLICE    (64u << 10)
#define MP_TUN_PAGES_LEVEL_MIN_BYTES (1u << 20)
#define MP_TUN_PAGES_LEVEL_LOG       64

typedef enum {
    MP_TUN_OUT_DATA,  /* raw stream bytes */
    MP_TUN_OUT_PAGES, /* a PAGES payload */
} MpTunOutKind;

typedef struct {
    MpTunOutKind kind;
    GByteArray *bytes; /* owned by the caller of mp_tun_pages_out_pop() */
    guint64 raw;       /* stream bytes the item stands for */
} MpTunOutItem;

typedef struct MpTunPagesOut MpTunPagesOut;

/* An encoder for one stream named `name` (in logs).  `cache_cap`: the
 * negotiated cache budget, the most the stream's cache may use;
 * `max_payload`: the negotiated frame payload bound, which no PAGES
 * payload exceeds (compressed or not).  `wake`
 * is called on the owner's main context when a worker finished a batch
 * (mp_tun_pages_out_pop() may give more).  @return free with
 * mp_tun_pages_out_free(). */
MpTunPagesOut *mp_tun_pages_out_new(const MpTunPagesOptions *opt,
                                    guint32 page_size, guint64 cache_cap,
                                    guint32 max_payload, const char *name,
                                    void (*wake)(gpointer data),
                                    gpointer wake_data);
/* Waits for the workers.  Accepts NULL. */
void mp_tun_pages_out_free(MpTunPagesOut *po);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpTunPagesOut, mp_tun_pages_out_free)

/* `len` stream bytes, in order.  Every byte ends up in an item (some wait
 * for a worker).  @return stream bytes that no item stands for (zero
 * pages the peer holds, at the end of the feed, with no item queued to
 * carry them): the caller counts them as delivered. */
guint64 mp_tun_pages_out_feed(MpTunPagesOut *po, const guint8 *buf,
                              gsize len);
/* The next item in stream order if it is ready.  @return FALSE when none
 * is (empty, or the next waits for its worker). */
gboolean mp_tun_pages_out_pop(MpTunPagesOut *po, MpTunOutItem *item);
/* Items not popped yet. */
guint mp_tun_pages_out_queued(const MpTunPagesOut *po);
/* The stream ended: what is held (a cut page record) goes out as an
 * item. */
void mp_tun_pages_out_finish(MpTunPagesOut *po);

/* `len` bytes of the stream's return path (destination to source), in
 * order: page requests are remembered. */
void mp_tun_pages_out_return_path(MpTunPagesOut *po, const guint8 *buf,
                                  gsize len);
/* The destination asked for [start, start + len) of `block` (what
 * mp_tun_pages_out_return_path() does for each REQ_PAGES; tests). */
void mp_tun_pages_out_request(MpTunPagesOut *po, const char *block,
                              guint64 start, guint64 len);
/* The next urgent payload (docs/tunnel.md, "Lifted pages"), or NULL.
 * Caller owns.  Urgent payloads go before the items made with them. */
GByteArray *mp_tun_pages_out_pop_urgent(MpTunPagesOut *po);
/* The relay in front of the stream put a requested page first in its
 * queue (or found it on its way already): the owner may read
 * MP_TUN_LIFT_READ_AHEAD more past the link's pace while a requested page
 * has not come.  Given per request instead (before the relay said where
 * the page was), the budget went on the bytes in front before the
 * source QEMU sent a page it had not sent yet (20 ms); that page then
 * waited until the link drained what the requests before it had read
 * ahead (up to 4 MiB: 100-270 ms, docs/benchmarks.md). */
void mp_tun_pages_out_page_first(MpTunPagesOut *po);
/* Should the owner read the stream although the bulk lane is full?  A
 * requested page has not come yet and the read-ahead allows it. */
gboolean mp_tun_pages_out_read_ahead(const MpTunPagesOut *po);
/* The owner read `n` bytes of the stream past the link's pace because
 * mp_tun_pages_out_read_ahead() said so (the report's read_ahead_bytes). */
void mp_tun_pages_out_read_past(MpTunPagesOut *po, gsize n);
/* Another channel of the session may carry pages: stop skipping. */
void mp_tun_pages_out_set_shared(MpTunPagesOut *po);
/* The guest's RAM in bytes as the stream's RAM section announced it (0:
 * not yet). */
guint64 mp_tun_pages_out_ram(const MpTunPagesOut *po);
/* A multifd stream's cache budget, until its first page: `ram`, the
 * guest's RAM (the session's main stream's mp_tun_pages_out_ram(), 0 if
 * not known), and `share`, the session's multifd channels, which split
 * the session's budget (--cache, or the automatic size of `ram`). */
void mp_tun_pages_out_set_session(MpTunPagesOut *po, guint64 ram,
                                  guint share);
/* Has its cache been made (its first page came)? */
gboolean mp_tun_pages_out_sized(const MpTunPagesOut *po);

/* {enabled encoders, batches, pages, stream_bytes, payload_bytes,
 * zero_runs {...}, dedup {...}, delta {...}, whole {...}, zstd {...},
 * pages_left_raw, lift {...}, [multifd {packets, compressed}]}: each
 * encoder's pages, bytes before and after and CPU seconds.  Caller owns. */
json_object *mp_tun_pages_out_report(const MpTunPagesOut *po);
/* Do zstd, dedup and delta pay?  Called every second or so by the owner
 * with the link rate in tunnel bytes/s (--rate, or measured; 0: not
 * known, then only the ratio decides: see docs/tunnel.md "Adaptive").
 * Decides with mp_adapt_decide() (filters/enc-adapt.h) from zstd's CPU
 * rate and ratio since the last decision (at least
 * MP_TUN_PAGES_ADAPT_MIN_BYTES) and the number of workers, switches zstd
 * off or back on, and logs the switch with its numbers; dedup and delta
 * the same way, each on its own window (mp_batch_enc_adapt(),
 * filters/page-batch.h).  No-op without `adapt`.  The page caches stay
 * mirrored: zstd sits after them, and dedup or delta off only skips its
 * search, while every page updates both caches as before. */
void mp_tun_pages_out_adapt(MpTunPagesOut *po, double link_bps);
/* The same decision on numbers given (tests drive it without a clock).
 * @return TRUE if zstd was switched. */
gboolean mp_tun_pages_out_adapt_with(MpTunPagesOut *po,
                                     const MpAdaptInput *in);
/* The zstd level: with `adapt` and no level given, every window of
 * MP_TUN_PAGES_LEVEL_WINDOW_S seen by mp_tun_pages_out_adapt() feeds the
 * level controller (filters/enc-adapt.h, MpLevelCtl) with the link rate,
 * this stream's bytes popped per second, the workers' busy share (their
 * wall time compressing), zstd's CPU rate and ratio; a move sets the
 * level the workers take at their next batch (a new zstd frame), is
 * logged with its reason and kept in the report (zstd.level_changes).
 * Only while zstd is on; the on/off decision (mp_tun_pages_out_adapt_with)
 * stays as it was, at whatever level (its model takes the level's
 * measured CPU rate).  This is the same on a given window's numbers
 * (tests).
 * @return TRUE if the level moved. */
gboolean mp_tun_pages_out_level_with(MpTunPagesOut *po,
                                     const MpLevelSample *s, double now_s);
/* zstd's match tables: with the adaptive level, the tables' samples (of
 * every MP_TUN_PAGES_TABLES_EVERY-th batch, a slice alone at the level
 * with small tables and with the level's own: `n` slices, `small` and
 * `full` bytes) feed the tables' controller (filters/enc-adapt.h,
 * MpTablesCtl) as the batches are made, MP_TABLES_MIN_SAMPLES at a time; a
 * switch takes effect at the workers' next batch (a new zstd frame), is
 * logged and kept in the report (zstd.tables, zstd.table_switches,
 * zstd.table_changes).  The same on numbers given (tests).
 * @return TRUE if the tables switched. */
gboolean mp_tun_pages_out_tables_with(MpTunPagesOut *po, guint n,
                                      guint64 small, guint64 full,
                                      double now_s);
/* The zstd level of the next batch (0: no zstd). */
int mp_tun_pages_out_level(const MpTunPagesOut *po);
/* Is zstd on now (FALSE also without zstd)? */
gboolean mp_tun_pages_out_zstd_on(const MpTunPagesOut *po);
/* Adds this stream's per-encoder counters into `acc`, an object
 * {zero_runs, dedup, delta, zstd: {on, bytes_in, bytes_out, cpu_s,
 * level}} (`level`: the last stream's with zstd)
 * (members made at the first call; `on`: any stream has it on). */
void mp_tun_pages_out_add_counters(const MpTunPagesOut *po, json_object *acc);

/* Stream bytes of page records encoded, PAGES payload bytes made. */
/* @return TRUE once the stream sent POSTCOPY_ADVISE (the source QEMU
 * may switch to post-copy: the tunnel then paces its link). */
gboolean mp_tun_pages_out_postcopy_advised(const MpTunPagesOut *po);
/* @return TRUE once the stream sent POSTCOPY_RUN, or the end of a
 * post-copy package (which holds it): the guest runs on the destination
 * from here on, and a tunnel that drops resumes rather than failing the
 * migration (tunnel-mux.h). */
gboolean mp_tun_pages_out_postcopy_running(const MpTunPagesOut *po);
guint64 mp_tun_pages_out_stream_bytes(const MpTunPagesOut *po);
guint64 mp_tun_pages_out_payload_bytes(const MpTunPagesOut *po);
