/* test-tunnel-pages.c: the PAGES path of the tunnel without sockets: a
 * captured QEMU stream through the source side's encoder
 * (tunnel-pages-out.h) and the destination side's writer
 * (tunnel-pages-in.h), DATA items copied as they are.
 *
 * Checks: the stream the destination writes parses as a migration stream
 * and gives the same guest memory as the input, however the input is cut
 * into reads (and a read's end holds back at most the page record it
 * cut, which then goes into a batch: no page leaves raw); the encoders do their work (pages
 * go as batches, zero pages the destination holds are skipped, fewer
 * bytes than the stream); each encoder switched off still gives the same
 * memory; hostile batches are refused with an error naming the payload
 * offset, and never crash or write more than the limit.  Lifted pages
 * (post-copy requests): copied urgent in the feed that brings them,
 * written by dest at a record boundary, their batch copy dropped, the
 * same memory; broken urgent payloads refused; read ahead of the link's
 * pace while they have not come, also with a postcopy-preempt channel.
 */
#include "config.h"
#include <string.h>
#include <criterion/criterion.h>
#include "json-util.h"
#include "page-batch.h"
#include "parse-common.h"
#include "pipeline.h"
#include "test-util.h"
#include "tunnel-pages-in.h"
#include "tunnel-pages-out.h"
#include "tunnel-mux.h"
#include "tunnel-tls.h"
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#define PS    4096u
#define CACHE (64ull << 20)
#define MAX_PAYLOAD (1u << 20)

/* ---- guest memory as a stream gives it ---- */

typedef struct {
    GHashTable *pages; /* "block@addr" -> PS bytes */
    guint64 records;
} Mem;

static MpRecordAction
mem_record(MpPipeline *p, const MpRecord *rec, gpointer data)
{
    Mem *m = data;

    if (rec->kind != MP_REC_RAM_PAGE)
        return MP_REC_CONTINUE;
    const MpRamPage *pg = &rec->u.page;
    cr_assert(pg->kind == MP_PAGE_NORMAL || pg->kind == MP_PAGE_ZERO,
              "page kind %d", pg->kind);
    guint8 *page = g_malloc(PS);
    if (pg->kind == MP_PAGE_NORMAL)
        memcpy(page, pg->payload, PS);
    else
        memset(page, pg->payload[0], PS);
    g_hash_table_replace(m->pages,
                         g_strdup_printf("%s@%" G_GINT64_MODIFIER "x",
                                         pg->block, pg->addr),
                         page);
    m->records++;
    return MP_REC_CONTINUE;
}

static const MpPipelineObserver mem_observer = {.record = mem_record};

/* The memory that `stream` leaves at the destination; pages never sent
 * read as zero, so zero pages are left out. */
static GHashTable *
memory_of(const GByteArray *stream, guint64 *records)
{
    Mem m = {g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free)};
    g_autoptr(MpPipeline) p = mp_pipeline_new(0, MP_DIR_TO_DST);
    mp_pipeline_set_kind(p, MP_CHAN_MAIN, NULL);
    mp_pipeline_observe(p, &mem_observer, &m);
    mp_pipeline_feed(p, stream->data, stream->len, 0);
    cr_assert_neq(mp_pipeline_state(p), MP_PIPELINE_GAVE_UP,
                  "the stream does not parse");
    mp_pipeline_end(p, MP_END_FIN, 0);
    static const guint8 zero[PS];
    GHashTableIter it;
    gpointer k, v;
    g_hash_table_iter_init(&it, m.pages);
    while (g_hash_table_iter_next(&it, &k, &v))
        if (memcmp(v, zero, PS) == 0)
            g_hash_table_iter_remove(&it);
    if (records)
        *records = m.records;
    return m.pages;
}

static void
assert_same_memory(GHashTable *a, GHashTable *b, const char *what)
{
    cr_assert_eq(g_hash_table_size(a), g_hash_table_size(b),
                 "%s: %u non-zero pages, expected %u", what,
                 g_hash_table_size(b), g_hash_table_size(a));
    GHashTableIter it;
    gpointer k, v;
    g_hash_table_iter_init(&it, a);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        const guint8 *o = g_hash_table_lookup(b, k);
        cr_assert(o, "%s: page %s missing", what, (char *)k);
        cr_assert(memcmp(v, o, PS) == 0, "%s: page %s differs", what,
                  (char *)k);
    }
}

/* ---- the pair without sockets ---- */

typedef struct {
    GByteArray *out;   /* what the destination writes to QEMU */
    guint64 link;      /* payload bytes: DATA raw, PAGES encoded */
    guint64 raw;       /* stream bytes the items stand for */
    guint64 pages_frames;
    guint64 compressed; /* PAGES payloads with a zstd body */
} Run;

static void
wake(gpointer data)
{
    (void)data;
}

static void
drain(MpTunPagesOut *po, MpTunPagesIn *pi, Run *r, gboolean wait)
{
    for (;;) {
        MpTunOutItem it;
        while (mp_tun_pages_out_pop(po, &it)) {
            r->raw += it.raw;
            r->link += it.bytes->len;
            if (it.kind == MP_TUN_OUT_DATA) {
                g_byte_array_append(r->out, it.bytes->data, it.bytes->len);
                mp_tun_pages_in_data(pi);
            } else {
                g_autoptr(GError) err = NULL;
                r->pages_frames++;
                if (it.bytes->data[0] & MP_BATCH_COMPRESSED)
                    r->compressed++;
                cr_assert_leq(it.bytes->len, MAX_PAYLOAD);
                cr_assert(mp_tun_pages_in_apply(pi, it.bytes->data,
                                                it.bytes->len, r->out,
                                                64u << 20, &err),
                          "%s", err ? err->message : "?");
            }
            g_byte_array_unref(it.bytes);
        }
        if (!wait || mp_tun_pages_out_queued(po) == 0)
            return;
        g_main_context_iteration(NULL, TRUE);
    }
}

static MpTunPagesOptions
all_on(void)
{
    return (MpTunPagesOptions){.zero_runs = TRUE, .delta = TRUE,
                               .dedup = TRUE, .compress = TRUE, .level = 3,
                               .workers = 2};
}

/* `in` through the pair in reads of `chunk` bytes (0: random sizes from
 * `seed`).  @return the destination's stream. */
static GByteArray *
through(const GByteArray *in, const MpTunPagesOptions *opt, gsize chunk,
        guint32 seed, Run *r, json_object **report)
{
    g_autoptr(MpTunPagesOut) po = mp_tun_pages_out_new(
        opt, PS, CACHE, MAX_PAYLOAD, "test", wake, NULL);
    g_autoptr(MpTunPagesIn) pi = mp_tun_pages_in_new(PS, CACHE);
    g_autoptr(GRand) rnd = g_rand_new_with_seed(seed);
    memset(r, 0, sizeof(*r));
    r->out = g_byte_array_new();
    guint64 skipped_raw = 0;

    for (gsize at = 0; at < in->len;) {
        gsize n = chunk ? chunk : (gsize)g_rand_int_range(rnd, 1, 300000);
        n = MIN(n, in->len - at);
        skipped_raw += mp_tun_pages_out_feed(po, in->data + at, n);
        /* nothing waits for more input: what is not popped yet waits
         * only for a worker */
        drain(po, pi, r, TRUE);
        at += n;
    }
    /* the end, as the mux's at QEMU's EOF: a page record cut by the
     * last read (a prefix of a stream) is held until then */
    mp_tun_pages_out_finish(po);
    drain(po, pi, r, TRUE);
    cr_assert_eq(r->raw + skipped_raw, in->len,
                 "items stand for %" G_GUINT64_FORMAT " bytes, %u fed",
                 r->raw + skipped_raw, in->len);
    if (report)
        *report = mp_tun_pages_out_report(po);
    return r->out;
}

static void
check_sample(const char *name, const MpTunPagesOptions *opt, gsize chunk,
             guint32 seed)
{
    g_autoptr(GByteArray) in = tu_read_sample(name);
    Run r;
    json_object *rep = NULL;
    g_autoptr(GByteArray) out = through(in, opt, chunk, seed, &r, &rep);
    g_autoptr(GHashTable) want = memory_of(in, NULL);
    g_autoptr(GHashTable) got = memory_of(out, NULL);
    g_autofree char *what = g_strdup_printf("%s in reads of %zu", name,
                                            chunk);
    assert_same_memory(want, got, what);
    cr_assert_gt(r.pages_frames, 0, "%s: no PAGES", what);
    cr_assert_gt(tu_json_int(rep, "stream_bytes"), in->len / 2,
                 "%s: %s", what, json_object_to_json_string(rep));
    json_object_put(rep);
}

Test(tunnel_pages, busy_10_same_memory)
{
    MpTunPagesOptions o = all_on();
    check_sample("busy-10.0.mig.zst", &o, 256 << 10, 0);
    check_sample("busy-10.0.mig.zst", &o, 0, 7);
}

Test(tunnel_pages, idle_72_same_memory)
{
    MpTunPagesOptions o = all_on();
    check_sample("idle-7.2.mig.zst", &o, 256 << 10, 0);
    check_sample("idle-7.2.mig.zst", &o, 32 << 10, 0);
    check_sample("idle-7.2.mig.zst", &o, 0, 11);
}

/* Each encoder off alone, and all of them: the same memory. */
Test(tunnel_pages, encoders_off_same_memory)
{
    for (int k = 0; k < 5; k++) {
        MpTunPagesOptions o = all_on();
        if (k == 0 || k == 4)
            o.zero_runs = FALSE;
        if (k == 1 || k == 4)
            o.delta = FALSE;
        if (k == 2 || k == 4)
            o.dedup = FALSE;
        if (k == 3 || k == 4)
            o.compress = FALSE;
        check_sample("busy-10.0.mig.zst", &o, 0, 100 + k);
    }
}

/* Reads of every size around a page record's length: each read's end cuts
 * records, and the stream stays right. */
Test(tunnel_pages, small_reads_same_memory)
{
    g_autoptr(GByteArray) all = tu_read_sample("idle-7.2.mig.zst");
    /* a prefix: the parser stops where it ends, the memory so far */
    g_autoptr(GByteArray) in = g_byte_array_new();
    g_byte_array_append(in, all->data, MIN(all->len, 3u << 20));
    g_autoptr(GHashTable) want = memory_of(in, NULL);
    MpTunPagesOptions o = all_on();
    static const gsize sizes[] = {7, 4095, 4105, 4106, 8209, 65536, 1};
    for (guint i = 0; i < G_N_ELEMENTS(sizes); i++) {
        /* byte by byte: a shorter prefix */
        if (sizes[i] == 1)
            g_byte_array_set_size(in, MIN(in->len, 256u << 10));
        Run r;
        json_object *rep = NULL;
        g_autoptr(GByteArray) out = through(in, &o, sizes[i], 0, &r, &rep);
        g_autoptr(GHashTable) w = sizes[i] == 1 ? memory_of(in, NULL)
                                                : g_hash_table_ref(want);
        g_autoptr(GHashTable) got = memory_of(out, NULL);
        g_autofree char *what = g_strdup_printf("reads of %zu", sizes[i]);
        assert_same_memory(w, got, what);
        /* a page that a read cut waited for its rest and joined a batch */
        cr_assert_eq(tu_json_int(rep, "pages_left_raw"), 0, "%s: %s", what,
                     json_object_to_json_string(rep));
        json_object_put(rep);
    }
}

/* The encoders pay on a real stream: fewer bytes, zero pages skipped. */
Test(tunnel_pages, savings)
{
    g_autoptr(GByteArray) in = tu_read_sample("idle-7.2.mig.zst");
    MpTunPagesOptions o = all_on();
    Run r;
    json_object *rep = NULL;
    g_autoptr(GByteArray) out = through(in, &o, 256 << 10, 0, &r, &rep);
    g_printerr("idle-7.2: stream %u, link payload %" G_GUINT64_FORMAT
               ", %s\n",
               in->len, r.link, json_object_to_json_string(rep));
    cr_assert_lt(r.link, in->len / 4);
    cr_assert_gt(tu_json_int(rep, "zero_runs.skipped"), 0);
    json_object_put(rep);
}

/* in[from, to) into `po` in reads of 64 KiB (each read closes a batch:
 * many batches), drained into `r`. */
static void
feed_range(MpTunPagesOut *po, MpTunPagesIn *pi, Run *r,
           const GByteArray *in, gsize from, gsize to)
{
    for (gsize at = from; at < to; at += MIN(to - at, 65536)) {
        mp_tun_pages_out_feed(po, in->data + at, MIN(to - at, 65536));
        drain(po, pi, r, TRUE);
    }
}

/* zstd goes off where it does not pay and back on where it does,
 * decided on numbers given (no clock): the batches between go without
 * zstd body (but for a probe every MP_TUN_PAGES_PROBE_EVERY), the caches
 * stay mirrored and the memory is the same. */
Test(tunnel_pages, adapt_switches_zstd_same_memory)
{
    g_autoptr(GByteArray) in = tu_read_sample("busy-10.0.mig.zst");
    MpTunPagesOptions o = all_on();
    o.adapt = TRUE;
    g_autoptr(MpTunPagesOut) po = mp_tun_pages_out_new(
        &o, PS, CACHE, MAX_PAYLOAD, "test", wake, NULL);
    g_autoptr(MpTunPagesIn) pi = mp_tun_pages_in_new(PS, CACHE);
    Run r = {.out = g_byte_array_new()};
    gsize third = in->len / 3;
    double mb = 1e6;
    /* 10 Gbit/s, two 300 MB/s workers, pages to a half: CPU-bound */
    MpAdaptInput fast = {.link_bps = 1250 * mb, .enc_bps = 300 * mb,
                         .enc_workers = 2, .dec_workers = 2, .ratio = 0.5};
    /* 100 Mbit/s: the link is the limit, zstd halves its time */
    MpAdaptInput slow = fast;
    slow.link_bps = 12.5 * mb;
    /* 5 % gain: keeps zstd on, does not bring it back (zstd 3 times the
     * link: its CPU counts) */
    MpAdaptInput marginal = {.link_bps = 100 * mb, .enc_bps = 150 * mb,
                             .enc_workers = 2, .dec_workers = 2,
                             .ratio = 0.95};

    cr_assert(mp_tun_pages_out_zstd_on(po));
    /* a slow link: stays on; nothing measured: unchanged */
    cr_assert_not(mp_tun_pages_out_adapt_with(po, &slow));
    mp_tun_pages_out_adapt(po, 0);
    cr_assert(mp_tun_pages_out_zstd_on(po));
    feed_range(po, pi, &r, in, 0, third);
    guint64 frames1 = r.pages_frames, comp1 = r.compressed;
    cr_assert_gt(comp1, 0);
    cr_assert(mp_tun_pages_out_adapt_with(po, &marginal) == FALSE);

    /* a fast link and slow CPU: off */
    cr_assert(mp_tun_pages_out_adapt_with(po, &fast));
    cr_assert_not(mp_tun_pages_out_zstd_on(po));
    feed_range(po, pi, &r, in, third, 2 * third);
    guint64 frames2 = r.pages_frames - frames1;
    guint64 comp2 = r.compressed - comp1;
    cr_assert_gt(frames2, MP_TUN_PAGES_PROBE_EVERY);
    /* only the probes */
    cr_assert_leq(comp2, frames2 / MP_TUN_PAGES_PROBE_EVERY);
    /* hysteresis: 5 % does not bring it back */
    cr_assert_not(mp_tun_pages_out_adapt_with(po, &marginal));
    cr_assert_not(mp_tun_pages_out_zstd_on(po));
    json_object *mid = mp_tun_pages_out_report(po);
    cr_assert_not((tu_json_int(mid, "zstd.on") != 0));
    json_object_put(mid);

    /* the link slows: back on */
    cr_assert(mp_tun_pages_out_adapt_with(po, &slow));
    cr_assert(mp_tun_pages_out_zstd_on(po));
    feed_range(po, pi, &r, in, 2 * third, in->len);
    guint64 frames3 = r.pages_frames - frames1 - frames2;
    guint64 comp3 = r.compressed - comp1 - comp2;
    cr_assert_gt(comp3, frames3 / 2, "%" G_GUINT64_FORMAT " of %"
                 G_GUINT64_FORMAT, comp3, frames3);

    json_object *rep = mp_tun_pages_out_report(po);
    cr_assert_eq(tu_json_int(rep, "zstd.switches"), 2);
    cr_assert((tu_json_int(rep, "zstd.on") != 0));
    json_object_put(rep);
    g_autoptr(GHashTable) want = memory_of(in, NULL);
    g_autoptr(GHashTable) got = memory_of(r.out, NULL);
    assert_same_memory(want, got, "zstd off and on");
    g_byte_array_unref(r.out);

    /* --no-adapt: nothing switches */
    o.adapt = FALSE;
    g_autoptr(MpTunPagesOut) fixed = mp_tun_pages_out_new(
        &o, PS, CACHE, MAX_PAYLOAD, "test", wake, NULL);
    cr_assert_not(mp_tun_pages_out_adapt_with(fixed, &fast));
    cr_assert(mp_tun_pages_out_zstd_on(fixed));
}

/* ---- the sample's normal pages made random ---- */

typedef struct {
    const GByteArray *stream;
    GArray *offsets; /* of each normal page's bytes in the stream */
} PageSpots;

static MpRecordAction
spot_record(MpPipeline *p, const MpRecord *rec, gpointer data)
{
    PageSpots *ps = data;
    const MpRamPage *pg = &rec->u.page;

    (void)p;
    if (rec->kind == MP_REC_RAM_PAGE && pg->kind == MP_PAGE_NORMAL
        && pg->payload_len == PS && pg->payload >= ps->stream->data
        && pg->payload + PS <= ps->stream->data + ps->stream->len) {
        gsize off = (gsize)(pg->payload - ps->stream->data);
        g_array_append_val(ps->offsets, off);
    }
    return MP_REC_CONTINUE;
}

static const MpPipelineObserver spot_observer = {.record = spot_record};

/* Overwrites every normal page of `stream` with random bytes (zstd's
 * ratio on them about 1).  @return the number of pages. */
static guint
randomize_pages(GByteArray *stream, guint32 seed)
{
    PageSpots ps = {stream, g_array_new(FALSE, FALSE, sizeof(gsize))};
    g_autoptr(MpPipeline) p = mp_pipeline_new(0, MP_DIR_TO_DST);
    mp_pipeline_set_kind(p, MP_CHAN_MAIN, NULL);
    mp_pipeline_observe(p, &spot_observer, &ps);
    mp_pipeline_feed(p, stream->data, stream->len, 0);
    mp_pipeline_end(p, MP_END_FIN, 0);
    g_autoptr(GRand) rnd = g_rand_new_with_seed(seed);
    for (guint i = 0; i < ps.offsets->len; i++) {
        guint8 *page = stream->data + g_array_index(ps.offsets, gsize, i);
        for (guint j = 0; j < PS; j += 4) {
            guint32 w = g_rand_int(rnd); /* (a page's bytes are unaligned) */
            memcpy(page + j, &w, 4);
        }
    }
    guint n = ps.offsets->len;
    g_array_unref(ps.offsets);
    return n;
}

/* Pages zstd cannot shrink turn it off as soon as
 * MP_TUN_PAGES_ADAPT_MIN_BYTES of them went through it, at any link
 * rate, without waiting for the owner's tick (mp_tun_pages_out_adapt()
 * is never called here): before, a second of random pages at 1 Gbit/s
 * went through zstd first. */
Test(tunnel_pages, random_pages_zstd_off_early)
{
    g_autoptr(GByteArray) in = tu_read_sample("busy-10.0.mig.zst");
    guint pages = randomize_pages(in, 7);
    cr_assert_gt((guint64)pages * PS, MP_TUN_PAGES_ADAPT_MIN_BYTES + (2u << 20),
                 "%u pages", pages);
    MpTunPagesOptions o = all_on();
    o.adapt = TRUE;
    Run r;
    json_object *rep = NULL;
    g_autoptr(GByteArray) out = through(in, &o, 64u << 10, 0, &r, &rep);
    json_object *z = json_object_object_get(rep, "zstd");
    cr_assert_not(json_object_get_boolean(json_object_object_get(z, "on")),
                  "%s", json_object_to_json_string(z));
    cr_assert_eq(tu_json_int(z, "switches"), 1);
    /* the window, the batch in hand and the probes after */
    gint64 tried = tu_json_int(z, "bytes_in");
    cr_assert(tried >= (gint64)MP_TUN_PAGES_ADAPT_MIN_BYTES
                  && tried < (gint64)MP_TUN_PAGES_ADAPT_MIN_BYTES
                                 + (1 << 20),
              "zstd tried %" G_GINT64_FORMAT " bytes", tried);
    json_object_put(rep);
    g_autoptr(GHashTable) want = memory_of(in, NULL);
    g_autoptr(GHashTable) got = memory_of(out, NULL);
    assert_same_memory(want, got, "random pages, zstd off early");
}

/* A window of a full 100 Mbit/s link with idle workers: the level
 * rises after MP_LEVEL_AGREE_UP of them. */
static const MpLevelSample LINK_BOUND = {.link_bps = 12.5e6,
                                         .out_bps = 12.4e6, .busy = 0.1,
                                         .enc_bps = 130e6, .ratio = 0.24};

/* The zstd level moves on numbers given (no clock): up while the link
 * is full and the workers idle, down while batches wait for them; each
 * move starts a new zstd frame in every worker's context, which the
 * destination decodes without being told: the memory is the same.  A
 * level given (--level) never moves. */
Test(tunnel_pages, level_moves_same_memory)
{
    g_autoptr(GByteArray) in = tu_read_sample("busy-10.0.mig.zst");
    MpTunPagesOptions o = all_on();
    o.adapt = TRUE;
    o.level = 0;
    g_autoptr(MpTunPagesOut) po = mp_tun_pages_out_new(
        &o, PS, CACHE, MAX_PAYLOAD, "test", wake, NULL);
    g_autoptr(MpTunPagesIn) pi = mp_tun_pages_in_new(PS, CACHE);
    Run r = {.out = g_byte_array_new()};
    gsize part = in->len / 4;
    MpLevelSample link_bound = LINK_BOUND;
    MpLevelSample cpu_bound = {.link_bps = 125e6, .out_bps = 20e6,
                               .busy = 0.95, .enc_bps = 24e6,
                               .ratio = 0.22};

    /* an adaptive level starts at MP_COMP_LEVEL_ADAPT_START */
    cr_assert_eq(mp_tun_pages_out_level(po), 1);
    feed_range(po, pi, &r, in, 0, part);
    /* a rise takes three windows that agree (MP_LEVEL_AGREE_UP) */
    cr_assert_not(mp_tun_pages_out_level_with(po, &link_bound, 0));
    cr_assert_not(mp_tun_pages_out_level_with(po, &link_bound, 0.5));
    cr_assert(mp_tun_pages_out_level_with(po, &link_bound, 1));
    cr_assert_eq(mp_tun_pages_out_level(po), 3);
    feed_range(po, pi, &r, in, part, 2 * part);
    link_bound.enc_bps = 40e6;
    /* level 3 compresses better than 1 did (or it would go back down) */
    link_bound.ratio = 0.226;
    /* three windows again, the third past the dwell */
    cr_assert_not(mp_tun_pages_out_level_with(po, &link_bound, 2));
    cr_assert_not(mp_tun_pages_out_level_with(po, &link_bound, 3));
    cr_assert(mp_tun_pages_out_level_with(po, &link_bound, 3.5));
    cr_assert_eq(mp_tun_pages_out_level(po), 7);
    feed_range(po, pi, &r, in, 2 * part, 3 * part);
    cr_assert_not(mp_tun_pages_out_level_with(po, &cpu_bound, 20));
    cr_assert(mp_tun_pages_out_level_with(po, &cpu_bound, 21));
    cr_assert_eq(mp_tun_pages_out_level(po), 3);
    feed_range(po, pi, &r, in, 3 * part, in->len);
    drain(po, pi, &r, TRUE);

    json_object *rep = mp_tun_pages_out_report(po);
    cr_assert_eq(tu_json_int(rep, "zstd.level"), 3);
    cr_assert((tu_json_int(rep, "zstd.level_adapt") != 0));
    json_object *z, *log;
    cr_assert(json_object_object_get_ex(rep, "zstd", &z));
    cr_assert(json_object_object_get_ex(z, "level_changes", &log));
    cr_assert_eq(json_object_array_length(log), 3);
    json_object *first = json_object_array_get_idx(log, 0);
    cr_assert_eq(tu_json_int(first, "from"), 1);
    json_object *last = json_object_array_get_idx(log, 2);
    cr_assert_eq(tu_json_int(last, "from"), 7);
    cr_assert_eq(tu_json_int(last, "to"), 3);
    json_object_put(rep);
    g_autoptr(GHashTable) want = memory_of(in, NULL);
    g_autoptr(GHashTable) got = memory_of(r.out, NULL);
    assert_same_memory(want, got, "zstd level 1, 3, 7, 3");
    g_byte_array_unref(r.out);

    /* --level 3: pinned */
    o.level = 3;
    g_autoptr(MpTunPagesOut) fixed = mp_tun_pages_out_new(
        &o, PS, CACHE, MAX_PAYLOAD, "test", wake, NULL);
    link_bound.enc_bps = 130e6;
    for (guint t = 0; t < 10; t++)
        cr_assert_not(mp_tun_pages_out_level_with(fixed, &link_bound, t));
    cr_assert_eq(mp_tun_pages_out_level(fixed), 3);
}

/* The report's zstd.tables: small? */
static gboolean
tables_small(MpTunPagesOut *po)
{
    json_object *rep = mp_tun_pages_out_report(po);
    json_object *z;
    cr_assert(json_object_object_get_ex(rep, "zstd", &z));
    gboolean small = g_strcmp0(json_object_get_string(
                                   json_object_object_get(z, "tables")),
                               "small")
                     == 0;
    json_object_put(rep);
    return small;
}

/* Samples that say the other tables compress 15 to 20 % better. */
static gboolean
tables_flip(MpTunPagesOut *po, double t)
{
    return tables_small(po)
               ? mp_tun_pages_out_tables_with(po, 6, 103000, 82000, t)
               : mp_tun_pages_out_tables_with(po, 6, 69500, 82000, t);
}

/* zstd's match tables switch on the samples' word, mid-stream, both ways,
 * and the level rises to 3 while they are small: the memory is the same, and the report says where they are and each
 * switch.  The stream's own samples (a slice of every fourth batch) may
 * switch them too, between the ones forced here; samples that favour
 * neither way by MP_TABLES_GAIN switch nothing.  With a pinned level they
 * stay the level's own. */
Test(tunnel_pages, tables_switch_same_memory)
{
    g_autoptr(GByteArray) in = tu_read_sample("busy-10.0.mig.zst");
    MpTunPagesOptions o = all_on();
    o.adapt = TRUE;
    o.level = 0;
    g_autoptr(MpTunPagesOut) po = mp_tun_pages_out_new(
        &o, PS, CACHE, MAX_PAYLOAD, "test", wake, NULL);
    g_autoptr(MpTunPagesIn) pi = mp_tun_pages_in_new(PS, CACHE);
    Run r = {.out = g_byte_array_new()};
    gsize part = in->len / 3;

    cr_assert_not(tables_small(po));
    feed_range(po, pi, &r, in, 0, part);
    gboolean was = tables_small(po);
    cr_assert_not(mp_tun_pages_out_tables_with(po, 6, 80000, 82000, 1));
    cr_assert_not(mp_tun_pages_out_tables_with(po, 3, 50000, 82000, 1));
    cr_assert_eq(tables_small(po), was);
    cr_assert(tables_flip(po, 2));
    cr_assert_neq(tables_small(po), was);
    /* and the level rises to 3, where small tables parse greedily
     * (page-zstd.h, MP_COMP_SMALL_GREEDY_FROM) */
    MpLevelSample link_bound = LINK_BOUND;
    for (guint w = 0; w < MP_LEVEL_AGREE_UP; w++)
        mp_tun_pages_out_level_with(po, &link_bound, 2 + w * 0.5);
    cr_assert_eq(mp_tun_pages_out_level(po), 3);
    feed_range(po, pi, &r, in, part, 2 * part);
    cr_assert(tables_flip(po, 3));
    feed_range(po, pi, &r, in, 2 * part, in->len);
    drain(po, pi, &r, TRUE);

    json_object *rep = mp_tun_pages_out_report(po);
    json_object *z, *log;
    cr_assert(json_object_object_get_ex(rep, "zstd", &z));
    gint64 n = tu_json_int(rep, "zstd.table_switches");
    cr_assert_geq(n, 2);
    cr_assert(json_object_object_get_ex(z, "table_changes", &log));
    cr_assert_eq((gint64)json_object_array_length(log), n);
    json_object *last = json_object_array_get_idx(log, n - 1);
    cr_assert_str_eq(
        json_object_get_string(json_object_object_get(last, "to")),
        json_object_get_string(json_object_object_get(z, "tables")));
    cr_assert_eq(tu_json_int(last, "level"), 3);
    /* the level's log is the level's alone */
    cr_assert(json_object_object_get_ex(z, "level_changes", &log));
    cr_assert_eq(json_object_array_length(log), 1);
    json_object_put(rep);
    g_autoptr(GHashTable) want = memory_of(in, NULL);
    g_autoptr(GHashTable) got = memory_of(r.out, NULL);
    assert_same_memory(want, got, "zstd tables switched, level 1 and 3");
    g_byte_array_unref(r.out);

    o.level = 3;
    g_autoptr(MpTunPagesOut) fixed = mp_tun_pages_out_new(
        &o, PS, CACHE, MAX_PAYLOAD, "test", wake, NULL);
    cr_assert_not(mp_tun_pages_out_tables_with(fixed, 6, 69500, 82000, 1));
    cr_assert_not(tables_small(fixed));
}

/* The per-encoder counters of the --metrics lines add up over streams. */
Test(tunnel_pages, encoder_counters)
{
    g_autoptr(GByteArray) in = tu_read_sample("idle-7.2.mig.zst");
    MpTunPagesOptions o = all_on();
    Run r;
    g_autoptr(MpTunPagesOut) po = mp_tun_pages_out_new(
        &o, PS, CACHE, MAX_PAYLOAD, "test", wake, NULL);
    g_autoptr(MpTunPagesIn) pi = mp_tun_pages_in_new(PS, CACHE);
    memset(&r, 0, sizeof(r));
    r.out = g_byte_array_new();
    mp_tun_pages_out_feed(po, in->data, in->len);
    drain(po, pi, &r, TRUE);
    json_object *rep = mp_tun_pages_out_report(po);
    json_object *acc = json_object_new_object();
    mp_tun_pages_out_add_counters(po, acc);
    mp_tun_pages_out_add_counters(po, acc);
    const char *keys[] = {"zero_runs", "dedup", "delta", "zstd"};
    for (guint i = 0; i < G_N_ELEMENTS(keys); i++) {
        g_autofree char *kin = g_strdup_printf("%s.bytes_in", keys[i]);
        g_autofree char *kout = g_strdup_printf("%s.bytes_out", keys[i]);
        g_autofree char *kon = g_strdup_printf("%s.on", keys[i]);
        cr_assert_eq(tu_json_int(acc, kin), 2 * tu_json_int(rep, kin), "%s",
                     kin);
        cr_assert_eq(tu_json_int(acc, kout), 2 * tu_json_int(rep, kout),
                     "%s", kout);
        cr_assert((tu_json_int(acc, kon) != 0), "%s", kon);
    }
    cr_assert_gt(tu_json_int(acc, "zstd.bytes_in"), 0);
    json_object_put(acc);
    json_object_put(rep);
    g_byte_array_unref(r.out);
}

/* Another page carrier in the session (multifd, preempt) or post-copy:
 * no zero page is skipped any more, and the memory stays the same. */
Test(tunnel_pages, shared_never_skips)
{
    g_autoptr(GByteArray) in = tu_read_sample("idle-7.2.mig.zst");
    MpTunPagesOptions o = all_on();
    g_autoptr(MpTunPagesOut) po = mp_tun_pages_out_new(
        &o, PS, CACHE, MAX_PAYLOAD, "test", wake, NULL);
    g_autoptr(MpTunPagesIn) pi = mp_tun_pages_in_new(PS, CACHE);
    Run r = {.out = g_byte_array_new()};
    gsize half = in->len / 2;

    /* skipping first, then another channel joins halfway */
    mp_tun_pages_out_feed(po, in->data, half);
    drain(po, pi, &r, TRUE);
    json_object *before = mp_tun_pages_out_report(po);
    cr_assert_gt(tu_json_int(before, "zero_runs.skipped"), 0);
    mp_tun_pages_out_set_shared(po);
    mp_tun_pages_out_feed(po, in->data + half, in->len - half);
    drain(po, pi, &r, TRUE);
    json_object *after = mp_tun_pages_out_report(po);
    cr_assert_eq(tu_json_int(after, "zero_runs.skipped"),
                 tu_json_int(before, "zero_runs.skipped"));
    cr_assert_gt(tu_json_int(after, "zero_runs.zero_pages"),
                 tu_json_int(before, "zero_runs.zero_pages"));
    g_autoptr(GHashTable) want = memory_of(in, NULL);
    g_autoptr(GHashTable) got = memory_of(r.out, NULL);
    assert_same_memory(want, got, "shared halfway");
    json_object_put(before);
    json_object_put(after);
    g_byte_array_unref(r.out);
}

/* ---- hostile batches at the destination ---- */

/* A valid first batch: setup, then `n` PAGE entries of block "pc.ram". */
static GByteArray *
batch(guint n, gboolean setup, guint64 cache)
{
    g_autoptr(MpPageCache) c = mp_pcache_new(PS, CACHE);
    MpBatchOpts bo = {.zero = FALSE, .delta = FALSE, .dedup = FALSE};
    g_autoptr(MpBatchEnc) e = mp_batch_enc_new(PS, c, NULL, &bo);
    g_autoptr(GByteArray) made = g_byte_array_new();
    guint8 page[PS];
    for (guint i = 0; i < n; i++) {
        memset(page, (int)(i + 1), PS);
        cr_assert(mp_batch_enc_add(e, "pc.ram", i, page, made));
    }
    mp_batch_enc_flush(e, made);
    GByteArray *b = g_byte_array_new();
    /* one batch: skip its be32 length */
    g_byte_array_append(b, made->data + 4, 2);
    if (setup) {
        guint8 x[8];
        mp_put_be64(x, cache);
        b->data[0] |= MP_TUN_PAGES_SETUP;
        g_byte_array_append(b, x, 8);
    }
    g_byte_array_append(b, made->data + 6, made->len - 6);
    return b;
}

static gboolean
apply(MpTunPagesIn *pi, const GByteArray *b, gsize limit, GByteArray *out,
      char **msg)
{
    g_autoptr(GError) err = NULL;
    gboolean ok = mp_tun_pages_in_apply(pi, b->data, b->len, out, limit,
                                        &err);
    *msg = ok ? NULL : g_strdup(err->message);
    return ok;
}

Test(tunnel_pages, dest_writes_records)
{
    g_autoptr(MpTunPagesIn) pi = mp_tun_pages_in_new(PS, CACHE);
    g_autoptr(GByteArray) b = batch(3, TRUE, CACHE);
    g_autoptr(GByteArray) out = g_byte_array_new();
    g_autofree char *msg = NULL;
    cr_assert(apply(pi, b, 1 << 20, out, &msg), "%s", msg);
    /* first record names the block, the next two CONTINUE */
    gsize first = 8 + 1 + 6 + PS, next = 8 + PS;
    cr_assert_eq(out->len, first + 2 * next);
    cr_assert_eq(mp_be64(out->data), MP_RAM_SAVE_FLAG_PAGE);
    cr_assert_eq(out->data[8], 6);
    cr_assert(memcmp(out->data + 9, "pc.ram", 6) == 0);
    cr_assert_eq(mp_be64(out->data + first),
                 PS | MP_RAM_SAVE_FLAG_PAGE | MP_RAM_SAVE_FLAG_CONTINUE);
    cr_assert_eq(out->data[first + 8], 2);
}

Test(tunnel_pages, hostile_batches_refused)
{
    g_autoptr(GByteArray) good = batch(3, TRUE, CACHE);
    g_autoptr(GByteArray) nosetup = batch(3, FALSE, 0);
    g_autoptr(GByteArray) huge = batch(3, TRUE, CACHE * 2);
    g_autoptr(GByteArray) zctx = batch(3, TRUE, CACHE);
    zctx->data[0] |= MP_BATCH_COMPRESSED;
    zctx->data[1] = MP_TUN_PAGES_MAX_WORKERS;
    /* "p\0.ram": dest would name block "p" in its records */
    g_autoptr(GByteArray) nul = batch(3, TRUE, CACHE);
    cr_assert_eq(nul->data[13], 'p');
    nul->data[14] = 0;
    g_autoptr(GByteArray) out = g_byte_array_new();
    char *msg = NULL;
    struct {
        const GByteArray *b;
        gsize limit;
        const char *want;
    } cases[] = {
        {nosetup, 1 << 20, "no cache setup"},
        {huge, 1 << 20, "page cache of"},
        {good, 100, "more than 100 bytes"},
        {zctx, 1 << 20, "zstd context 64"},
        {nul, 1 << 20, "with a NUL"},
    };
    for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autoptr(MpTunPagesIn) pi = mp_tun_pages_in_new(PS, CACHE);
        g_byte_array_set_size(out, 0);
        cr_assert_not(apply(pi, cases[i].b, cases[i].limit, out, &msg));
        cr_assert(strstr(msg, cases[i].want), "case %u: %s", i, msg);
        cr_assert_leq(out->len, cases[i].limit);
        g_free(msg);
        /* and the stream is lost after it */
        cr_assert_not(apply(pi, good, 1 << 20, out, &msg));
        g_free(msg);
    }
    /* a second setup on the stream */
    g_autoptr(MpTunPagesIn) pi = mp_tun_pages_in_new(PS, CACHE);
    cr_assert(apply(pi, good, 1 << 20, out, &msg));
    cr_assert_not(apply(pi, good, 1 << 20, out, &msg));
    cr_assert(strstr(msg, "second cache setup"), "%s", msg);
    g_free(msg);
    /* every byte of a batch flipped, and every cut: refused or applied,
     * never more than the limit (ASan: never out of bounds) */
    for (guint at = 0; at < good->len; at += (at < 64 ? 1 : 997)) {
        for (guint cut = 0; cut < 2; cut++) {
            g_autoptr(MpTunPagesIn) p2 = mp_tun_pages_in_new(PS, CACHE);
            g_autoptr(GByteArray) bad = g_byte_array_new();
            g_byte_array_append(bad, good->data, cut ? at : good->len);
            if (!cut)
                bad->data[at] ^= 0x5a;
            g_byte_array_set_size(out, 0);
            if (!apply(p2, bad, 64 << 10, out, &msg)) {
                cr_assert(strstr(msg, "offset") || strstr(msg, "setup")
                              || strstr(msg, "cache")
                              || strstr(msg, "header"),
                          "byte %u: %s", at, msg);
                g_free(msg);
            }
            cr_assert_leq(out->len, 64u << 10);
        }
    }
}

/* ---- a hostile source side, through dest's mux ---- */

typedef struct {
    guint16 opened;
    gboolean closed;
    GError *error;
} Hostile;

static void
h_open(MpTunMux *m, guint16 stream, const MpTunOpen *o, gpointer data)
{
    ((Hostile *)data)->opened = stream;
}

static void
h_closed(MpTunMux *m, const GError *e, guint8 code, gpointer data)
{
    Hostile *h = data;
    h->closed = TRUE;
    if (e)
        h->error = g_error_copy(e);
}

/* A hostile source side offering `features` opens stream 1 of
 * `channel` and sends one PAGES frame of `payload` to dest's mux: the
 * tunnel fails with an error that names the stream, the frame's tunnel
 * offset and `want`. */
static void
dest_refuses(guint32 features, guint8 channel, const GByteArray *payload,
             const char *want)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    g_autoptr(GSocket) ds = g_socket_new_from_fd(sv[1], NULL);
    g_autoptr(GIOStream) dss = mp_tun_plain_stream(ds);
    Hostile h = {0};
    MpTunMuxHooks hooks = {.open = h_open, .closed = h_closed};
    MpTunMuxOptions mo = {.role = MP_TUN_ROLE_DEST, .compress = TRUE};
    g_autoptr(MpTunMux) m = mp_tun_mux_new(dss, "tunnel from test", &mo,
                                           &hooks, &h);
    g_autoptr(GByteArray) b = g_byte_array_new();
    MpTunHello hello = {
        .version_min = MP_TUN_VERSION,
        .version_max = MP_TUN_VERSION,
        .role = MP_TUN_ROLE_SOURCE,
        .features = features,
        .page_size = PS,
        .cache_bytes = CACHE,
        .max_payload = MP_TUN_MAX_PAYLOAD_DEFAULT,
        .software = "hostile",
    };
    MpTunOpen o = {.session = 1, .channel = channel};
    mp_tun_write_preamble(b);
    mp_tun_write_hello(b, &hello);
    mp_tun_write_open(b, 1, &o);
    gsize at = b->len;
    mp_tun_write_frame(b, MP_TUN_PAGES, 0, 1, 1, payload->data,
                       payload->len);
    cr_assert_eq(write(sv[0], b->data, b->len), (gssize)b->len);
    gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
    while (!h.closed) {
        cr_assert_lt(g_get_monotonic_time(), deadline, "timed out");
        g_main_context_iteration(NULL, FALSE);
        g_usleep(100);
    }
    cr_assert_eq(h.opened, 1);
    cr_assert_not_null(h.error);
    g_autofree char *frame = g_strdup_printf(
        "PAGES frame of stream 1 at offset %zu: ", at);
    cr_assert(strstr(h.error->message, frame)
                  && strstr(h.error->message, want),
              "%s", h.error->message);
    g_error_free(h.error);
    close(sv[0]);
}

/* A PAGES frame whose batch dest refuses fails the tunnel with an error
 * that names the stream, the frame's tunnel offset and what is wrong. */
Test(tunnel_pages, dest_mux_names_stream_and_offset)
{
    /* a first batch without its cache setup */
    g_autoptr(GByteArray) bad = batch(2, FALSE, 0);
    dest_refuses(0, MP_TUN_CH_MAIN, bad, "no cache setup");
}

/* PAGES on a multifd stream only when both sides offered them
 * (MP_TUN_FEAT_MFD_PAGES, docs/tunnel.md "Multifd pages"): dest would
 * otherwise not know how to write them; with the feature the batch is
 * taken (and this one then refused for its missing setup). */
Test(tunnel_pages, dest_mux_multifd_pages_negotiated)
{
    g_autoptr(GByteArray) good = batch(2, TRUE, CACHE);
    dest_refuses(0, MP_TUN_CH_MULTIFD, good,
                 "a multifd one when negotiated");
    g_autoptr(GByteArray) bad = batch(2, FALSE, 0);
    dest_refuses(MP_TUN_FEAT_MFD_PAGES, MP_TUN_CH_MULTIFD, bad,
                 "no cache setup");
}

/* ---- lifted pages (docs/tunnel.md, "Lifted pages") ---- */

/* A REQ_PAGES_ID message of the return path for one page. */
static void
req_pages(GByteArray *rp, const char *block, guint64 addr)
{
    gsize n = strlen(block);
    guint8 m[4 + 12 + 1 + 255];
    m[0] = 0;
    m[1] = MP_RP_MSG_REQ_PAGES_ID;
    m[2] = 0;
    m[3] = (guint8)(13 + n);
    mp_put_be64(m + 4, addr);
    mp_put_be32(m + 12, PS);
    m[16] = (guint8)n;
    memcpy(m + 17, block, n);
    g_byte_array_append(rp, m, 17 + n);
}

typedef struct {
    GArray *off; /* guint64: stream offsets of PAGE records */
    GPtrArray *block;
    GArray *addr;
} PageList;

static MpRecordAction
list_record(MpPipeline *p, const MpRecord *rec, gpointer data)
{
    PageList *l = data;
    if (rec->kind == MP_REC_RAM_PAGE && rec->u.page.kind == MP_PAGE_NORMAL) {
        g_array_append_val(l->off, rec->offset);
        g_ptr_array_add(l->block, g_strdup(rec->u.page.block));
        g_array_append_val(l->addr, rec->u.page.addr);
    }
    return MP_REC_CONTINUE;
}

static const MpPipelineObserver list_observer = {.record = list_record};

/* The first `max` bytes of the idle 7.2 sample, appended to `in`, and
 * the pages in them. */
static PageList
list_sample_pages(GByteArray *in, gsize max)
{
    g_autoptr(GByteArray) all = tu_read_sample("idle-7.2.mig.zst");
    g_byte_array_append(in, all->data, MIN(all->len, max));
    PageList l = {g_array_new(FALSE, FALSE, sizeof(guint64)),
                  g_ptr_array_new_with_free_func(g_free),
                  g_array_new(FALSE, FALSE, sizeof(guint64))};
    g_autoptr(MpPipeline) p = mp_pipeline_new(0, MP_DIR_TO_DST);
    mp_pipeline_set_kind(p, MP_CHAN_MAIN, NULL);
    mp_pipeline_observe(p, &list_observer, &l);
    mp_pipeline_feed(p, in->data, in->len, 0);
    return l;
}

/* Pages asked for through the return path are copied into urgent
 * payloads in the very feed that brings their record (no worker, no
 * batch ahead of them), their neighbours too; dest writes them ahead and
 * drops their batch copy; the memory stays the same.  Reads of 4105
 * bytes cut page records: those are held until whole. */
Test(tunnel_pages, lift_requested_pages_same_memory)
{
    g_autoptr(GByteArray) in = g_byte_array_new();
    PageList l = list_sample_pages(in, 3u << 20);
    cr_assert_gt(l.off->len, 200, "%u pages", l.off->len);
    MpTunPagesOptions o = all_on();
    o.urgent = TRUE;
    g_autoptr(MpTunPagesOut) po = mp_tun_pages_out_new(
        &o, PS, CACHE, MAX_PAYLOAD, "test", wake, NULL);
    g_autoptr(MpTunPagesIn) pi = mp_tun_pages_in_new(PS, CACHE);
    /* post-copy: every page goes, none skipped */
    mp_tun_pages_out_set_shared(po);
    Run r = {.out = g_byte_array_new()};
    guint next = 50, asked = 0, urgent_pages = 0;
    guint64 skipped_raw = 0;
    const gsize chunk = 4105;

    for (gsize at = 0; at < in->len; at += chunk) {
        gsize n = MIN(chunk, in->len - at);
        /* a page whose record starts in this read is asked for first
         * (every 97th page, its neighbours come right after it) */
        guint wanted_here = 0;
        while (next < l.off->len
               && g_array_index(l.off, guint64, next) < at + n) {
            if (g_array_index(l.off, guint64, next) >= at) {
                g_autoptr(GByteArray) rp = g_byte_array_new();
                req_pages(rp, g_ptr_array_index(l.block, next),
                          g_array_index(l.addr, guint64, next));
                /* split: the return path parser takes any cut */
                mp_tun_pages_out_return_path(po, rp->data, 3);
                mp_tun_pages_out_return_path(po, rp->data + 3, rp->len - 3);
                asked++;
                wanted_here++;
            }
            next += 97;
        }
        skipped_raw += mp_tun_pages_out_feed(po, in->data + at, n);
        /* the copies are there at once, before any worker ran */
        guint got_here = 0;
        for (GByteArray *u; (u = mp_tun_pages_out_pop_urgent(po));) {
            g_autoptr(GError) err = NULL;
            got_here += mp_be32(u->data + 1 + u->data[0]);
            cr_assert(mp_tun_pages_in_urgent(pi, u->data, u->len, r.out, &err),
                      "%s", err ? err->message : "?");
            g_byte_array_unref(u);
        }
        /* (a requested page whose record this read cut is held: it comes
         * with the next read) */
        urgent_pages += got_here;
        drain(po, pi, &r, TRUE);
    }
    mp_tun_pages_out_finish(po);
    drain(po, pi, &r, TRUE);
    cr_assert_eq(r.raw + skipped_raw, in->len);
    cr_assert_gt(asked, 5);
    json_object *rep = mp_tun_pages_out_report(po);
    json_object *drep = mp_tun_pages_in_report(pi);
    g_printerr("lift: source %s\n  dest %s\n",
               json_object_to_json_string(mp_json_path(rep, "lift")),
               json_object_to_json_string(mp_json_path(drep, "lift")));
    cr_assert_eq(tu_json_int(rep, "lift.requests"), asked);
    cr_assert_eq(tu_json_int(rep, "lift.pages"), asked);
    cr_assert_gt(tu_json_int(rep, "lift.neighbours"), 0);
    cr_assert_gt(tu_json_int(rep, "lift.held_records"), 0);
    cr_assert_eq(tu_json_int(rep, "lift.pages")
                     + tu_json_int(rep, "lift.neighbours"),
                 urgent_pages);
    cr_assert_eq(tu_json_int(drep, "lift.pages"), urgent_pages);
    cr_assert_eq(tu_json_int(drep, "lift.bulk_dropped"), urgent_pages);
    cr_assert_eq(tu_json_int(drep, "lift.waiting"), 0);
    cr_assert_eq(tu_json_int(drep, "lift.written_at_once")
                     + tu_json_int(drep, "lift.written_before_batch"),
                 urgent_pages);
    g_autoptr(GHashTable) want = memory_of(in, NULL);
    g_autoptr(GHashTable) got = memory_of(r.out, NULL);
    assert_same_memory(want, got, "lifted pages");
    json_object_put(rep);
    json_object_put(drep);
    g_byte_array_unref(r.out);
    g_array_unref(l.off);
    g_ptr_array_unref(l.block);
    g_array_unref(l.addr);
}

/* One batch of "pc.ram" pages `idx[i]`, filled with `fill[i]`, from a
 * fresh encoder (block id 0, as the destination's first block). */
static GByteArray *
batch_of(const guint64 *idx, const guint8 *fill, guint n, gboolean setup)
{
    g_autoptr(MpPageCache) c = mp_pcache_new(PS, CACHE);
    MpBatchOpts bo = {.zero = FALSE, .delta = FALSE, .dedup = FALSE};
    g_autoptr(MpBatchEnc) e = mp_batch_enc_new(PS, c, NULL, &bo);
    g_autoptr(GByteArray) made = g_byte_array_new();
    guint8 page[PS];
    for (guint i = 0; i < n; i++) {
        memset(page, fill[i], PS);
        cr_assert(mp_batch_enc_add(e, "pc.ram", idx[i], page, made));
    }
    mp_batch_enc_flush(e, made);
    GByteArray *b = g_byte_array_new();
    g_byte_array_append(b, made->data + 4, 2);
    if (setup) {
        guint8 x[8];
        mp_put_be64(x, CACHE);
        b->data[0] |= MP_TUN_PAGES_SETUP;
        g_byte_array_append(b, x, 8);
    }
    g_byte_array_append(b, made->data + 6, made->len - 6);
    return b;
}

/* An urgent payload of `n` pages of `block`: fill 0 makes a ZERO entry. */
static GByteArray *
urgent_of(const char *block, const guint64 *idx, const guint8 *fill,
          guint n)
{
    GByteArray *u = g_byte_array_new();
    guint8 h[1 + 255 + 4], e[9], page[PS];
    gsize bl = strlen(block);
    h[0] = (guint8)bl;
    memcpy(h + 1, block, bl);
    mp_put_be32(h + 1 + bl, n);
    g_byte_array_append(u, h, 1 + bl + 4);
    for (guint i = 0; i < n; i++) {
        mp_put_be64(e, idx[i]);
        e[8] = fill[i] ? MP_TUN_LIFT_PAGE : MP_TUN_LIFT_ZERO;
        g_byte_array_append(u, e, 9);
        if (fill[i]) {
            memset(page, fill[i], PS);
            g_byte_array_append(u, page, PS);
        }
    }
    return u;
}

/* The RAM records of `out` as QEMU reads them ("block:index:fill" for
 * pages, "EOS"), CONTINUE resolved against the record before. */
static char *
records_of(const GByteArray *out)
{
    g_autoptr(GString) s = g_string_new(NULL);
    char block[256] = "";
    for (gsize at = 0; at < out->len;) {
        cr_assert_leq(at + 8, out->len);
        guint64 h = mp_be64(out->data + at);
        guint64 f = h & (PS - 1);
        at += 8;
        if (f == MP_RAM_SAVE_FLAG_EOS) {
            g_string_append(s, "EOS ");
            continue;
        }
        if (!(f & MP_RAM_SAVE_FLAG_CONTINUE)) {
            guint8 n = out->data[at];
            memcpy(block, out->data + at + 1, n);
            block[n] = '\0';
            at += 1 + n;
        }
        cr_assert(block[0], "CONTINUE with no block before");
        f &= ~(guint64)MP_RAM_SAVE_FLAG_CONTINUE;
        cr_assert(f == MP_RAM_SAVE_FLAG_PAGE || f == MP_RAM_SAVE_FLAG_ZERO);
        guint8 fill = out->data[at];
        at += f == MP_RAM_SAVE_FLAG_PAGE ? PS : 1;
        g_string_append_printf(s, "%s:%" G_GUINT64_FORMAT ":%u ", block,
                               h / PS, fill);
    }
    return g_strdup(s->str);
}

/* Where dest writes lifted pages: at once after a record of the same
 * block; after raw bytes, or after another block, just before the next
 * batch (which names its block again); the batch's own copy of a lifted
 * page is dropped, so the lifted (newer) bytes stay. */
Test(tunnel_pages, lift_dest_merge_order)
{
    g_autoptr(MpTunPagesIn) pi = mp_tun_pages_in_new(PS, CACHE);
    g_autoptr(GByteArray) out = g_byte_array_new();
    g_autoptr(GError) err = NULL;
    char *msg = NULL;
    static const guint64 i1[] = {0, 1, 2};
    static const guint8 f1[] = {1, 2, 3};
    g_autoptr(GByteArray) b1 = batch_of(i1, f1, 3, TRUE);
    cr_assert(apply(pi, b1, 1 << 20, out, &msg), "%s", msg);

    /* same block as the last record: at once, with CONTINUE */
    static const guint64 u1i[] = {7};
    static const guint8 u1f[] = {0xaa};
    g_autoptr(GByteArray) u1 = urgent_of("pc.ram", u1i, u1f, 1);
    gsize before = out->len;
    cr_assert(mp_tun_pages_in_urgent(pi, u1->data, u1->len, out, &err));
    cr_assert_eq(out->len, before + 8 + PS);

    /* raw bytes (DATA): QEMU's block is not known here any more */
    guint8 eos[8];
    mp_put_be64(eos, MP_RAM_SAVE_FLAG_EOS);
    g_byte_array_append(out, eos, 8);
    mp_tun_pages_in_data(pi);
    static const guint64 u2i[] = {8};
    static const guint8 u2f[] = {0};
    g_autoptr(GByteArray) u2 = urgent_of("pc.ram", u2i, u2f, 1);
    static const guint64 u3i[] = {1};
    static const guint8 u3f[] = {0xbb};
    g_autoptr(GByteArray) u3 = urgent_of("vga.vram", u3i, u3f, 1);
    before = out->len;
    cr_assert(mp_tun_pages_in_urgent(pi, u2->data, u2->len, out, &err));
    cr_assert(mp_tun_pages_in_urgent(pi, u3->data, u3->len, out, &err));
    cr_assert_eq(out->len, before, "written before a record boundary");

    /* the next batch: the waiting pages first; page 8's batch copy (0x11,
     * older than nothing here, but QEMU takes a page once) is dropped */
    static const guint64 i2[] = {8, 9};
    static const guint8 f2[] = {0x11, 0x12};
    g_autoptr(GByteArray) b2 = batch_of(i2, f2, 2, FALSE);
    cr_assert(apply(pi, b2, 1 << 20, out, &msg), "%s", msg);
    g_autofree char *recs = records_of(out);
    cr_assert_str_eq(recs, "pc.ram:0:1 pc.ram:1:2 pc.ram:2:3 pc.ram:7:170 "
                           "EOS pc.ram:8:0 vga.vram:1:187 pc.ram:9:18 ");

    /* another block after a batch: waits for the next one */
    static const guint8 u4f[] = {0xcc};
    g_autoptr(GByteArray) u4 = urgent_of("vga.vram", u1i, u4f, 1);
    before = out->len;
    cr_assert(mp_tun_pages_in_urgent(pi, u4->data, u4->len, out, &err));
    cr_assert_eq(out->len, before);
    json_object *rep = mp_tun_pages_in_report(pi);
    cr_assert_eq(tu_json_int(rep, "lift.frames"), 4);
    cr_assert_eq(tu_json_int(rep, "lift.written_at_once"), 1);
    cr_assert_eq(tu_json_int(rep, "lift.written_before_batch"), 2);
    cr_assert_eq(tu_json_int(rep, "lift.bulk_dropped"), 1);
    cr_assert_eq(tu_json_int(rep, "lift.waiting"), 1);
    json_object_put(rep);
}

/* Broken urgent payloads are refused with the payload offset, and
 * nothing of them is written or kept. */
Test(tunnel_pages, lift_hostile_refused)
{
    static const guint64 idx[] = {5, 6};
    static const guint8 fill[] = {1, 0};
    g_autoptr(GByteArray) good = urgent_of("pc.ram", idx, fill, 2);
    struct {
        gsize at;   /* byte to change, or the cut when `cut` */
        guint8 v;
        gboolean cut;
        const char *want;
    } cases[] = {
        {0, 0, FALSE, "a header"},         /* no block name */
        {4, 0, TRUE, "a header"},          /* cut inside the name */
        {3, 0, FALSE, "NUL in the block name"},
        {10, 0, FALSE, "1 or more"},       /* count 0 */
        {7, 0xff, FALSE, "1 or more"},     /* count beyond the bound */
        {19, 3, FALSE, "kind 1 or 2"},     /* the first page's kind */
        {11, 0xff, FALSE, "below 2^48"},   /* the first page's index */
        {20, 0, TRUE, "cut short"},
        {10, 1, FALSE, "bytes after the last page"}, /* count 1 of 2 */
    };
    for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autoptr(MpTunPagesIn) pi = mp_tun_pages_in_new(PS, CACHE);
        g_autoptr(GByteArray) bad = g_byte_array_new();
        g_autoptr(GByteArray) out = g_byte_array_new();
        g_autoptr(GError) err = NULL;
        g_byte_array_append(bad, good->data,
                            cases[i].cut ? cases[i].at : good->len);
        if (!cases[i].cut)
            bad->data[cases[i].at] = cases[i].v;
        cr_assert_not(mp_tun_pages_in_urgent(pi, bad->data, bad->len, out,
                                             &err),
                      "case %u accepted", i);
        cr_assert(strstr(err->message, cases[i].want), "case %u: %s", i,
                  err->message);
        cr_assert_eq(out->len, 0);
        json_object *rep = mp_tun_pages_in_report(pi);
        cr_assert_eq(tu_json_int(rep, "lift.waiting"), 0);
        json_object_put(rep);
    }
    /* more waiting than the bound */
    g_autoptr(MpTunPagesIn) pi = mp_tun_pages_in_new(PS, CACHE);
    g_autoptr(GByteArray) out = g_byte_array_new();
    g_autofree guint64 *many = g_new(guint64, MP_TUN_LIFT_MAX_WAITING + 1);
    g_autofree guint8 *zero = g_new0(guint8, MP_TUN_LIFT_MAX_WAITING + 1);
    for (guint i = 0; i <= MP_TUN_LIFT_MAX_WAITING; i++)
        many[i] = i;
    g_autoptr(GByteArray) big = urgent_of("pc.ram", many, zero,
                                          MP_TUN_LIFT_MAX_WAITING + 1);
    g_autoptr(GError) err = NULL;
    cr_assert_not(mp_tun_pages_in_urgent(pi, big->data, big->len, out, &err));
    cr_assert(strstr(err->message, "waiting"), "%s", err->message);
}

/* ---- read-ahead with a postcopy-preempt channel, through both muxes ---- */

typedef struct {
    GSocket *dst_socks[2]; /* dest's "QEMU" ends: main, preempt */
    guint opened;
} Pair;

static void
p_open(MpTunMux *m, guint16 stream, const MpTunOpen *o, gpointer data)
{
    Pair *p = data;
    cr_assert_lt(p->opened, 2);
    p->opened++;
    mp_tun_mux_attach(m, stream,
                      p->dst_socks[o->channel == MP_TUN_CH_PREEMPT]);
}

typedef struct {
    int fd;
    const GByteArray *bytes; /* write: these; NULL: read until the end */
} Qemu;

static gpointer
qemu_end(gpointer data)
{
    Qemu *q = data;
    guint8 buf[65536];
    if (!q->bytes) {
        while (read(q->fd, buf, sizeof(buf)) > 0)
            ;
        return NULL;
    }
    for (gsize at = 0; at < q->bytes->len;) {
        ssize_t w = write(q->fd, q->bytes->data + at, q->bytes->len - at);
        if (w <= 0)
            break;
        at += w;
    }
    return NULL;
}

static json_object *
main_lift(MpTunMux *src, gint64 *bytes_in)
{
    json_object *rep = mp_tun_mux_report(src, 0);
    json_object *ch = json_object_array_get_idx(
        json_object_object_get(rep, "channels"), 0);
    *bytes_in = tu_json_int(ch, "to_dst.bytes_in");
    json_object *l = json_object_get(mp_json_path(ch, "to_dst.pages.lift"));
    json_object_put(rep);
    cr_assert_not_null(l);
    return l;
}

static void
spin_ms(guint ms)
{
    gint64 until = g_get_monotonic_time() + ms * 1000ll;
    while (g_get_monotonic_time() < until) {
        g_main_context_iteration(NULL, FALSE);
        g_usleep(100);
    }
}

/* Both muxes over a socketpair, the source QEMU writing `in` on the main
 * channel, a preempt channel in the session (so requested pages are
 * lifted), and a destination QEMU that reads (or not). */
typedef struct {
    GByteArray *in;
    PageList l;
    int tv[2], qm[2], qp[2], dm[2], dp[2];
    Pair p;
    GSocket *rm, *rp;
    GIOStream *tss, *tds;
    MpTunMux *src, *dst;
    Qemu qs, qd;
    GThread *ws, *rd;
} LiftRig;

static void
rig_start(LiftRig *r, gsize sample_max, guint64 rate, gboolean dest_reads)
{
    r->in = g_byte_array_new();
    r->l = list_sample_pages(r->in, sample_max);
    signal(SIGPIPE, SIG_IGN);
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, r->tv), 0);
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, r->qm), 0);
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, r->qp), 0);
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, r->dm), 0);
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, r->dp), 0);
    g_autoptr(GSocket) ts = g_socket_new_from_fd(r->tv[0], NULL);
    g_autoptr(GSocket) td = g_socket_new_from_fd(r->tv[1], NULL);
    r->tss = mp_tun_plain_stream(ts);
    r->tds = mp_tun_plain_stream(td);
    r->p = (Pair){.dst_socks = {g_socket_new_from_fd(r->dm[1], NULL),
                                g_socket_new_from_fd(r->dp[1], NULL)}};
    static const MpTunMuxHooks sh = {0}, dh = {.open = p_open};
    MpTunPagesOptions po = {.urgent = TRUE};
    MpTunMuxOptions so = {.role = MP_TUN_ROLE_SOURCE,
                          .rate = rate,
                          .pages = TRUE,
                          .pages_opt = po};
    MpTunMuxOptions dop = {.role = MP_TUN_ROLE_DEST};
    r->src = mp_tun_mux_new(r->tss, "tunnel to test", &so, &sh, &r->p);
    r->dst = mp_tun_mux_new(r->tds, "tunnel from test", &dop, &dh, &r->p);
    gint64 deadline = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
    while (!mp_tun_mux_ready(r->src) || !mp_tun_mux_ready(r->dst)) {
        cr_assert_lt(g_get_monotonic_time(), deadline, "timed out");
        g_main_context_iteration(NULL, FALSE);
        g_usleep(100);
    }
    /* the relay's ends of the main and the preempt channel */
    r->rm = g_socket_new_from_fd(r->qm[1], NULL);
    r->rp = g_socket_new_from_fd(r->qp[1], NULL);
    MpTunOpen om = {.session = 1, .connection = 0,
                    .channel = MP_TUN_CH_MAIN};
    MpTunOpen op = {.session = 1, .connection = 1,
                    .channel = MP_TUN_CH_PREEMPT};
    cr_assert_neq(mp_tun_mux_add(r->src, r->rm, &om), 0);
    cr_assert_neq(mp_tun_mux_add(r->src, r->rp, &op), 0);
    r->qs = (Qemu){.fd = r->qm[0], .bytes = r->in};
    r->qd = (Qemu){.fd = r->dm[0]};
    r->ws = g_thread_new("source QEMU", qemu_end, &r->qs);
    r->rd = dest_reads ? g_thread_new("dest QEMU", qemu_end, &r->qd) : NULL;
}

/* Dest QEMU asks for the first page `past` bytes or more after `read`
 * on the main channel's return path; returns once the source side saw
 * the request, and the relay in front says it put the page first. */
static void
rig_request(LiftRig *r, gint64 read, gint64 past)
{
    guint want = 0;
    while (want < r->l.off->len
           && g_array_index(r->l.off, guint64, want) < (guint64)(read + past))
        want++;
    cr_assert_lt(want, r->l.off->len);
    g_autoptr(GByteArray) req = g_byte_array_new();
    req_pages(req, g_ptr_array_index(r->l.block, want),
              g_array_index(r->l.addr, guint64, want));
    cr_assert_eq(write(r->dm[0], req->data, req->len), (gssize)req->len);
    gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
    for (;;) {
        /* the relay's lane sees the request after the tunnel did */
        spin_ms(5);
        gint64 n;
        json_object *lift = main_lift(r->src, &n);
        gboolean asked = tu_json_int(lift, "requests") >= 1;
        json_object_put(lift);
        if (asked)
            break;
        cr_assert_lt(g_get_monotonic_time(), deadline, "timed out");
    }
    mp_tun_mux_page_first(r->src, 0);
}

/* The source side's lift report once it lifted the page; fails after
 * `secs`. */
static json_object *
rig_lifted(LiftRig *r, guint secs)
{
    gint64 deadline = g_get_monotonic_time() + secs * G_USEC_PER_SEC;
    for (;;) {
        spin_ms(20);
        gint64 read;
        json_object *lift = main_lift(r->src, &read);
        if (tu_json_int(lift, "pages") >= 1)
            return lift;
        cr_assert_lt(g_get_monotonic_time(), deadline,
                     "not lifted: %" G_GINT64_FORMAT " read: %s", read,
                     json_object_to_json_string(lift));
        json_object_put(lift);
    }
}

static void
rig_stop(LiftRig *r)
{
    mp_tun_mux_free(r->src);
    mp_tun_mux_free(r->dst);
    close(r->qm[0]);
    close(r->dm[0]);
    g_thread_join(r->ws);
    if (r->rd)
        g_thread_join(r->rd);
    close(r->qp[0]);
    close(r->dp[0]);
    g_object_unref(r->rm);
    g_object_unref(r->rp);
    g_object_unref(r->tss);
    g_object_unref(r->tds);
    g_object_unref(r->p.dst_socks[0]);
    g_object_unref(r->p.dst_socks[1]);
    g_array_unref(r->l.off);
    g_ptr_array_unref(r->l.block);
    g_array_unref(r->l.addr);
    g_byte_array_unref(r->in);
}

/* With a postcopy-preempt channel in the session, a requested page that
 * comes on the main channel is still read ahead of the link's pace.
 * Behind the relay's read-ahead (migproxy source) the source QEMU has
 * long sent the requested page on the main channel when the request
 * comes, so it sends nothing on the preempt channel (2356 of 2374
 * requests came on the main channel in the benchmark); without the
 * read-ahead such a page waited for the paced bulk lane (5.4 ms blocked
 * per request against 1.3 without preempt).  Here the link is paced at
 * 200 KB/s and a page 64 KiB past what the source side read is asked
 * for, and the relay says it put the page first (what its post-copy lane
 * does, mp_tun_mux_page_first()): the source side reads past the pace
 * (read_ahead_bytes; 0 before, when a preempt channel turned the
 * read-ahead off) and lifts it. */
Test(tunnel_pages, read_ahead_with_preempt_channel)
{
    LiftRig r = {0};
    /* pages go whole, so the pace holds the stream back */
    rig_start(&r, 3u << 20, 200000, TRUE);

    /* the pace holds the stream back: the source side has read some */
    gint64 read = 0;
    gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
    while (r.p.opened < 2 || read < (64 << 10)) {
        cr_assert_lt(g_get_monotonic_time(), deadline,
                     "timed out: %u opened, %" G_GINT64_FORMAT " read",
                     r.p.opened, read);
        spin_ms(20);
        json_object_put(main_lift(r.src, &read));
    }
    rig_request(&r, read, 64 << 10);
    json_object *lift = rig_lifted(&r, 10);
    g_printerr("read_ahead_with_preempt_channel: %" G_GINT64_FORMAT
               " read when asked: %s\n",
               read, json_object_to_json_string(lift));
    cr_assert_eq(tu_json_int(lift, "requests"), 1);
    cr_assert_gt(tu_json_int(lift, "read_ahead_bytes"), 0,
                 "the requested page waited for the pace");
    json_object_put(lift);
    rig_stop(&r);
}

/* A stream whose window is full (the destination QEMU reads nothing, so
 * nothing is acknowledged) still gives up a requested page just past
 * what was read: the window has MP_TUN_MUX_LIFT_SLACK more for it.
 * Requests read the hop past the pace at about the link's rate, and
 * without the slack each waited for the window (1.5-3 ms in the
 * benchmark). */
Test(tunnel_pages, read_ahead_past_a_full_window)
{
    LiftRig r = {0};
    rig_start(&r, G_MAXSIZE, 1000000000, FALSE);
    cr_assert_gt(r.in->len, MP_TUN_MUX_WINDOW + (256u << 10));

    /* reading stops: the window is full */
    gint64 read = 0, was = -1;
    gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
    while (read < MP_TUN_MUX_WINDOW || read != was) {
        cr_assert_lt(g_get_monotonic_time(), deadline,
                     "timed out: %" G_GINT64_FORMAT " read", read);
        was = read;
        spin_ms(100);
        json_object_put(main_lift(r.src, &read));
    }
    cr_assert_lt(read, (gint64)r.in->len - (128 << 10));
    rig_request(&r, read, 16 << 10);
    json_object *lift = rig_lifted(&r, 3);
    g_printerr("read_ahead_past_a_full_window: %" G_GINT64_FORMAT
               " read when asked: %s\n",
               read, json_object_to_json_string(lift));
    json_object_put(lift);
    rig_stop(&r);
}
