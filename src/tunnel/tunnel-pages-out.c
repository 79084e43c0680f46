/* tunnel-pages-out.c: RAM page records of a forward stream as PAGES
 * batches (see tunnel-pages-out.h). */
#include "config.h"
#include <string.h>
#include <time.h>
#include "enc-adapt.h"
#include "mfd-parser.h"
#include "mp-record.h"
#include "page-batch.h"
#include "parse-common.h"
#include "pipeline.h"
#include "rp-parser.h"
#include "tunnel-pages-out.h"

/* A request remembered: pages [first, first + n) of `block` were asked
 * for, the next MP_TUN_LIFT_NEIGHBOURS go with them. */
typedef struct {
    char *block;
    guint64 first, n;
    guint64 left; /* requested pages not lifted yet */
    gint64 t_us;
} Want;

typedef struct {
    MpTunPagesOut *po;
    MpTunOutKind kind;
    GByteArray *bytes;
    guint64 raw;
    /* a batch waiting for its worker: `plain` compressed into `bytes` */
    gboolean waiting;
    GByteArray *plain;
    guint8 zctx;
    /* also compressed alone both ways for the tables' samples */
    gboolean tables_sample;
    /* no batch: the worker readies its context (mp_comp_enc_warm()) and
     * frees the item, which is in no queue */
    gboolean warm;
} Item;

typedef struct {
    char *name;
    guint64 npages;
} Block;

struct MpTunPagesOut {
    MpTunPagesOptions opt;
    guint32 page_size;
    guint64 cache_cap;
    gsize batch_cap; /* entries and body of one batch at most */
    char *name;
    MpPipeline *pipe;
    /* the encoders, made at the first page (the guest's size is known) */
    MpZeroRuns *zero;
    MpPageCache *cache;
    MpBatchEnc *enc;
    guint64 cache_bytes;
    guint64 ram_total;
    GArray *blocks; /* Block: the RAM section's block list */
    gboolean shared;      /* no skipping (see the header) */
    gboolean in_packaged; /* records inside a PACKAGED blob stay as they are */
    gboolean postcopy_advised; /* the stream said post-copy may come */
    gboolean postcopy_running; /* ... and that it runs (POSTCOPY_RUN) */
    gboolean gave_up;     /* an encoder refused: the rest stays raw */
    /* the feed being processed */
    const guint8 *buf;
    gsize len;
    guint64 base;  /* stream offset of buf[0] */
    gsize pend;    /* buf[pend..] not yet in an item or a batch */
    guint64 fed;   /* stream bytes so far */
    guint64 unassigned; /* bytes taken that no item carries yet */
    GByteArray *made;   /* the encoder's batches: be32 len | payload ... */
    GQueue items;       /* Item*, stream order */
    /* zstd: one context and one single-thread pool each */
    guint workers;
    MpCompEnc **comp;
    GThreadPool **pool;
    /* the level's samples of the rungs next to it (each worker its own
     * sampler, made on first use): batches still to sample this window
     * (atomic), and what the sampled ones took alone at the level and at
     * the rung below, and at the level and the rung above (lock) */
    MpCompSampler **sampler;
    gint sample_due;
    guint64 sample_at, sample_below, sample_at_up, sample_above;
    /* the tables' samples (a slice of every MP_TUN_PAGES_TABLES_EVERY-th
     * batch): batches counted for them, and since the last decision the
     * slices' sizes alone at the level with small tables and with the
     * level's own, and how many (lock) */
    guint64 tables_count;
    guint64 ts_small, ts_full;
    guint ts_n;
    guint64 nbatch;
    GMutex lock; /* the items' `waiting`, the zstd counters, wake_id */
    guint wake_id;
    void (*wake)(gpointer data);
    gpointer wake_data;
    gboolean setup_sent;
    guint8 *zero_page;
    /* counters */
    guint64 batches, stream_bytes, payload_bytes, pages_left_raw;
    guint64 zstd_in, zstd_out, zstd_cpu_ns;
    /* the zstd counters at the last adaptive decision */
    guint64 win_in, win_out, win_ns;
    /* what that decision's window measured (0: none yet) */
    double win_enc_bps, win_ratio;
    double link_bps; /* at the owner's last mp_tun_pages_out_adapt() */
    /* adaptive zstd: on now; batches passed by while off (probes);
     * switches so far */
    gboolean zstd_on;
    guint64 zstd_skipped;
    guint zstd_switches;
    /* the zstd level: what the workers use from their next batch on
     * (atomic: the owner sets it, workers read it); adapted by `lvl`
     * unless --level pinned it (see mp_tun_pages_out_adapt()) */
    gint level;
    gboolean level_adapt;
    MpLevelCtl lvl;
    /* zstd's match tables, small or the level's own (atomic as `level`;
     * adapted by `tbl` with the level) */
    gint small_tables;
    MpTablesCtl tbl;
    gint64 born_us;
    guint64 zstd_wall_us; /* workers' wall time compressing (lock) */
    guint64 out_bytes;    /* item bytes popped (DATA and PAGES) */
    /* the counters at the level's last window */
    gint64 lw_us;
    guint64 lw_in, lw_out, lw_cpu, lw_wall, lw_popped, lw_sat, lw_sbelow,
        lw_satu, lw_sabove;
    json_object *level_log; /* [{t_s, from, to, why}], at most
                             * MP_TUN_PAGES_LEVEL_LOG */
    guint64 level_log_dropped;
    json_object *table_log; /* [{t_s, to, level, why}], at most
                             * MP_TUN_PAGES_LEVEL_LOG */
    /* lifted pages (see the header) */
    MpRpParser *rp;
    gboolean rp_lost;    /* the return path stopped parsing */
    gboolean huge;       /* a block of larger host pages: never lift */
    gboolean parse_lost; /* the stream stopped parsing */
    gboolean lifting;    /* a page was lifted: raw records name blocks */
    GArray *wants;       /* Want, oldest first */
    guint64 read_budget; /* bytes to read past the link's pace */
    GQueue urgent;       /* GByteArray*: urgent payloads, oldest first */
    GByteArray *ucur;    /* the urgent payload being made */
    char ucur_block[256];
    guint32 ucount;
    /* where the parser is: a cut page record is held until whole */
    guint64 rec_end;   /* stream offset after the last record */
    gboolean ram_body; /* a RAM record header comes next */
    char cur_block[256]; /* block of the last page record */
    GByteArray *held;    /* the first bytes of a page record */
    guint64 held_off;
    char held_block[256]; /* what its CONTINUE means */
    guint64 lift_requests, lift_pages, lift_neighbours, urgent_frames,
        urgent_bytes, held_records, names_written, read_ahead_bytes;
    /* multifd (see the header): its parser (no pipeline: nothing but the
     * packets is wanted, and QEMU's zstd is not decoded), until it stops */
    MpMfdParser *mfd;
    gboolean mfd_bare;  /* the current packet's pages are bare bytes */
    gboolean mfd_raw;   /* QEMU compresses them: the rest stays DATA */
    guint mfd_share;    /* the session's multifd channels */
    guint64 mfd_packets;
};

static void
item_free(Item *it)
{
    if (it->bytes)
        g_byte_array_unref(it->bytes);
    if (it->plain)
        g_byte_array_unref(it->plain);
    g_free(it);
}

static gint64
thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (gint64)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static gboolean
on_wake(gpointer data)
{
    MpTunPagesOut *po = data;
    g_mutex_lock(&po->lock);
    po->wake_id = 0;
    g_mutex_unlock(&po->lock);
    if (po->wake)
        po->wake(po->wake_data);
    return G_SOURCE_REMOVE;
}

/* Is this batch one of the window's samples (MP_TUN_PAGES_LEVEL_SAMPLES)? */
static gboolean
take_sample(MpTunPagesOut *po)
{
    for (;;) {
        gint due = g_atomic_int_get(&po->sample_due);
        if (due <= 0)
            return FALSE;
        if (g_atomic_int_compare_and_exchange(&po->sample_due, due, due - 1))
            return TRUE;
    }
}

static MpCompSampler *
sampler_of(MpTunPagesOut *po, guint zctx)
{
    if (!po->sampler[zctx])
        po->sampler[zctx] = mp_comp_sampler_new();
    return po->sampler[zctx];
}

/* The sampled batch compressed alone at the rungs next to `level`
 * (enc-adapt.h), with the tables in use, into the window's sums. */
static void
sample_batch(MpTunPagesOut *po, guint zctx, int level, gboolean small,
             const GByteArray *plain)
{
    guint r = mp_level_rung_of(level);
    MpCompSampler *smp = sampler_of(po, zctx);
    gsize at = mp_comp_sampler_size(smp, plain->data, plain->len, level, small);
    gsize below = 0, above = 0;
    if (r > 0)
        below = mp_comp_sampler_size(smp, plain->data, plain->len,
                                     mp_level_rung_level(r - 1), small);
    if (r + 1 < MP_LEVEL_RUNGS)
        above = mp_comp_sampler_size(smp, plain->data, plain->len,
                                     mp_level_rung_level(r + 1), small);
    g_mutex_lock(&po->lock);
    if (at && below) {
        po->sample_at += at;
        po->sample_below += below;
    }
    if (at && above) {
        po->sample_at_up += at;
        po->sample_above += above;
    }
    g_mutex_unlock(&po->lock);
}

/* A slice of the sampled batch (MP_TUN_PAGES_TABLES_SLICE from its
 * middle) compressed alone at `level` with small tables and with the
 * level's own (MpTablesCtl), into the sums. */
static void
sample_tables(MpTunPagesOut *po, guint zctx, int level,
              const GByteArray *plain)
{
    MpCompSampler *smp = sampler_of(po, zctx);
    gsize len = MIN(plain->len, MP_TUN_PAGES_TABLES_SLICE);
    const guint8 *at = plain->data + (plain->len - len) / 2;
    gsize small = mp_comp_sampler_size(smp, at, len, level, TRUE);
    gsize full = mp_comp_sampler_size(smp, at, len, level, FALSE);
    if (!small || !full)
        return;
    g_mutex_lock(&po->lock);
    po->ts_small += small;
    po->ts_full += full;
    po->ts_n++;
    g_mutex_unlock(&po->lock);
}

/* A worker: compresses one batch's body with its context. */
static void
compress_job(gpointer job, gpointer pool_data)
{
    Item *it = job;
    MpTunPagesOut *po = it->po;
    MpCompEnc *ctx = po->comp[it->zctx];

    if (it->warm) {
        /* made with the stream, before its first batch: the context's
         * first batch would otherwise wait for zstd's workspace (a few
         * ms of page faults, each worker) */
        mp_comp_enc_warm(ctx);
        g_free(it);
        return;
    }
    gint64 t0 = thread_cpu_ns();
    gint64 w0 = g_get_monotonic_time();
    GByteArray *out = g_byte_array_sized_new(it->plain->len / 2 + 64);
    gint level = g_atomic_int_get(&po->level);
    gboolean small = g_atomic_int_get(&po->small_tables);

    /* this context's frame ends here if the level or tables changed */
    mp_comp_enc_set_level(ctx, level);
    mp_comp_enc_set_small_tables(ctx, small);
    mp_batch_compress(ctx, it->zctx, it->plain->data, it->plain->len, out);
    gint64 cpu = thread_cpu_ns() - t0;
    gint64 wall = g_get_monotonic_time() - w0;
    /* the sample is taken after the batch is handed over (its body kept
     * by a reference: the item may be gone by then), so that the stream
     * does not wait for it, and outside the counted time: it is the
     * controller's cost, not zstd's at this level (only an adaptive
     * level, always on the ladder, is sampled) */
    GByteArray *sample = take_sample(po) ? g_byte_array_ref(it->plain) : NULL;
    GByteArray *tsample = it->tables_sample ? g_byte_array_ref(it->plain)
                                            : NULL;
    guint zctx = it->zctx;
    g_mutex_lock(&po->lock);
    po->zstd_in += it->plain->len;
    po->zstd_out += out->len;
    po->zstd_cpu_ns += cpu;
    po->zstd_wall_us += (guint64)MAX(wall, 0);
    it->bytes = out;
    it->waiting = FALSE;
    /* at the sockets' priority: an idle one would wait while the loop
     * has reads and writes to do, and hold the stream back */
    if (!po->wake_id)
        po->wake_id = g_idle_add_full(G_PRIORITY_DEFAULT, on_wake, po, NULL);
    g_mutex_unlock(&po->lock);
    if (sample) {
        sample_batch(po, zctx, level, small, sample);
        g_byte_array_unref(sample);
    }
    if (tsample) {
        sample_tables(po, zctx, level, tsample);
        g_byte_array_unref(tsample);
    }
}

static void
push_item(MpTunPagesOut *po, Item *it)
{
    it->po = po;
    it->raw = po->unassigned;
    po->unassigned = 0;
    g_queue_push_tail(&po->items, it);
}

/* The tables' samples, once there are enough of them, to their
 * controller. */
static void
tables_decide(MpTunPagesOut *po)
{
    g_mutex_lock(&po->lock);
    guint n = po->ts_n;
    guint64 small = po->ts_small, full = po->ts_full;
    if (n >= MP_TABLES_MIN_SAMPLES)
        po->ts_small = po->ts_full = po->ts_n = 0;
    g_mutex_unlock(&po->lock);
    if (n >= MP_TABLES_MIN_SAMPLES && po->zstd_on)
        mp_tun_pages_out_tables_with(
            po, n, small, full, (g_get_monotonic_time() - po->born_us) / 1e6);
}

/* The encoder's finished batches become items, in order. */
static void
take_batches(MpTunPagesOut *po)
{
    gsize at = 0;

    if (po->level_adapt)
        tables_decide(po);

    while (at + 4 <= po->made->len) {
        guint32 n = mp_be32(po->made->data + at);
        const guint8 *p = po->made->data + at + 4;
        Item *it = g_new0(Item, 1);
        it->kind = MP_TUN_OUT_PAGES;
        po->batches++;
        /* off adaptively: a probe now and then keeps zstd measured */
        gboolean compress = po->workers
                            && (po->zstd_on
                                || ++po->zstd_skipped
                                           % MP_TUN_PAGES_PROBE_EVERY
                                       == 0);
        if (compress) {
            it->plain = g_byte_array_sized_new(n);
            g_byte_array_append(it->plain, p, n);
            it->zctx = (guint8)(po->nbatch++ % po->workers);
            it->waiting = TRUE;
            /* not in post-copy, as the level's: requested pages wait
             * for the workers */
            it->tables_sample = po->level_adapt && !po->postcopy_running
                                && ++po->tables_count
                                           % MP_TUN_PAGES_TABLES_EVERY
                                       == 0;
            push_item(po, it);
            g_thread_pool_push(po->pool[it->zctx], it, NULL);
        } else {
            it->bytes = g_byte_array_sized_new(n);
            g_byte_array_append(it->bytes, p, n);
            push_item(po, it);
        }
        at += 4 + n;
    }
    g_byte_array_set_size(po->made, 0);
}

static void
close_batch(MpTunPagesOut *po)
{
    if (po->enc)
        mp_batch_enc_flush(po->enc, po->made);
    take_batches(po);
}

/* A raw RAM record header whose CONTINUE refers to the block of the
 * record before it.  (The flags sit below the page size.) */
static gboolean
continues_block(const guint8 *hdr, guint32 page_size)
{
    guint64 f = mp_be64(hdr) & (page_size - 1);
    return (f & MP_RAM_SAVE_FLAG_CONTINUE)
           && (f & (MP_RAM_SAVE_FLAG_ZERO | MP_RAM_SAVE_FLAG_PAGE
                    | MP_RAM_SAVE_FLAG_XBZRLE
                    | MP_RAM_SAVE_FLAG_COMPRESS_PAGE));
}

/* `len` bytes of raw stream starting with a RAM record header as one DATA
 * item; once pages are lifted a header with CONTINUE names `block`
 * instead: the destination may have written a lifted page of another
 * block just before (docs/tunnel.md, "Lifted pages").  The caller
 * counted the bytes in `unassigned`. */
static void
push_record_bytes(MpTunPagesOut *po, const guint8 *rec, gsize len,
                  const char *block)
{
    Item *it = g_new0(Item, 1);
    gsize bl = block ? strlen(block) : 0;

    it->kind = MP_TUN_OUT_DATA;
    it->bytes = g_byte_array_sized_new(len + 1 + bl);
    if (po->lifting && len >= 8 && bl && bl < 256
        && continues_block(rec, po->page_size)) {
        guint8 h[8 + 1 + 255];
        mp_put_be64(h, mp_be64(rec) & ~(guint64)MP_RAM_SAVE_FLAG_CONTINUE);
        h[8] = (guint8)bl;
        memcpy(h + 9, block, bl);
        g_byte_array_append(it->bytes, h, 9 + bl);
        g_byte_array_append(it->bytes, rec + 8, len - 8);
        po->names_written++;
    } else {
        g_byte_array_append(it->bytes, rec, len);
    }
    push_item(po, it);
}

/* What is held goes out as it came (named if due): the record was not a
 * page this encoder takes. */
static void
flush_held(MpTunPagesOut *po)
{
    if (!po->held)
        return;
    g_autoptr(GByteArray) h = g_steal_pointer(&po->held);
    close_batch(po);
    po->unassigned += h->len;
    push_record_bytes(po, h->data, h->len, po->held_block);
}

/* buf[pend, upto) goes out as raw stream bytes, after the open batch. */
static void
emit_data(MpTunPagesOut *po, gsize upto)
{
    if (po->held)
        flush_held(po);
    if (upto <= po->pend)
        return;
    close_batch(po);
    Item *it = g_new0(Item, 1);
    it->kind = MP_TUN_OUT_DATA;
    it->bytes = g_byte_array_sized_new(upto - po->pend);
    g_byte_array_append(it->bytes, po->buf + po->pend, upto - po->pend);
    po->unassigned += upto - po->pend;
    po->pend = upto;
    push_item(po, it);
}

static gboolean
ram_section(const MpRecord *rec)
{
    return rec->section && rec->section->idstr
           && strcmp(rec->section->idstr, "ram") == 0;
}

/* No more skipping: every block is declared again without pages, so the
 * tracker neither skips nor records a page of it. */
static void
stop_skipping(MpTunPagesOut *po)
{
    po->shared = TRUE;
    if (!po->zero)
        return;
    for (guint i = 0; i < po->blocks->len; i++)
        mp_zrun_declare_block(po->zero,
                              g_array_index(po->blocks, Block, i).name, 0,
                              FALSE);
}

static gboolean
ensure_encoder(MpTunPagesOut *po)
{
    if (po->enc)
        return TRUE;
    guint64 ram = po->ram_total;
    if (!ram)
        for (guint i = 0; i < po->blocks->len; i++)
            ram += g_array_index(po->blocks, Block, i).npages * po->page_size;
    guint64 budget = po->opt.cache_bytes ? po->opt.cache_bytes
                                         : mp_pcache_auto_size(ram);
    /* A multifd channel has a cache of its own, mirrored by dest's cache
     * of that stream: a delta or a reference is then relative to what
     * this stream's cache holds, which dest's holds too whatever the other
     * channels did meanwhile.  One cache for the session would have to
     * see the pages in the same order on both sides, but the channels run
     * side by side (each its own zstd items, frames and socket at dest),
     * and 7.2 sends a page twice on two channels (the reference's section
     * 13).  The cost: a page dirtied again and sent on another channel is
     * no delta.  The channels split the session's budget, so the
     * session's caches stay within it (the main stream's, besides, holds
     * no page with multifd: QEMU sends none there, or zero ones only). */
    if (po->opt.multifd) {
        if (!po->opt.cache_bytes && !ram)
            budget = 32u << 20; /* auto's least: RAM not known yet */
        budget /= MAX(po->mfd_share, 1);
    }
    /* without delta and dedup nothing reads the cache: one page keeps the
     * mirrors trivially equal */
    if (!po->opt.delta && !po->opt.dedup)
        budget = po->page_size;
    budget = MIN(budget, po->cache_cap);
    budget = MAX(budget, po->page_size);
    po->cache_bytes = budget;
    po->cache = mp_pcache_new(po->page_size, budget);
    if (po->opt.zero_runs) {
        po->zero = mp_zrun_new(po->page_size);
        /* a destination QEMU started with -incoming holds its RAM as
         * zero: zero pages it has need not be sent (multifd: no block is
         * declared, so none is skipped) */
        for (guint i = 0; i < po->blocks->len; i++) {
            Block *b = &g_array_index(po->blocks, Block, i);
            mp_zrun_declare_block(po->zero, b->name,
                                  po->shared ? 0 : b->npages, !po->shared);
        }
    }
    MpBatchOpts bo = {
        .zero = po->opt.zero_runs,
        .delta = po->opt.delta,
        .dedup = po->opt.dedup,
    };
    po->enc = mp_batch_enc_new(po->page_size, po->cache, po->zero, &bo);
    g_debug("%s: pages encoded (cache %" G_GUINT64_FORMAT " MiB for %"
            G_GUINT64_FORMAT " MiB of RAM, %u zstd workers%s)",
            po->name, budget >> 20, ram >> 20, po->workers,
            po->shared ? ", no zero skipping" : "");
    return TRUE;
}

/* A page record that stays raw: the destination's copy is no longer
 * known to be zero. */
static void
page_left_raw(MpTunPagesOut *po, const MpRecord *rec)
{
    po->pages_left_raw++;
    if (po->zero && rec->u.page.block) {
        gint id = mp_zrun_block_id(po->zero, rec->u.page.block);
        mp_zrun_forget(po->zero, id, rec->u.page.addr / po->page_size, 1);
    }
}

/* May a page record that a feed cut be held until it is whole?  Held,
 * it joins a batch (zstd on the workers, the page caches) instead of
 * going out as raw DATA: one page per read did, 2 % of the pages at 1
 * Gbit/s (each read ends inside a page record, mostly).  While pages are
 * lifted, holding also ends dest's writes at a record boundary. */
static gboolean
hold_ok(const MpTunPagesOut *po)
{
    return !po->huge && !po->parse_lost && !po->gave_up && !po->in_packaged;
}

/* May pages be lifted now? */
static gboolean
lift_ok(const MpTunPagesOut *po)
{
    return po->opt.urgent && po->shared && hold_ok(po);
}

/* Is page `index` of `block` asked for?  @return 0 no, 1 requested, 2 a
 * neighbour of a requested page. */
static int
wanted(MpTunPagesOut *po, const char *block, guint64 index)
{
    if (!po->wants->len)
        return 0;
    gint64 now = g_get_monotonic_time();
    for (guint i = po->wants->len; i-- > 0;) {
        Want *w = &g_array_index(po->wants, Want, i);
        if (index < w->first
            || index - w->first >= w->n + MP_TUN_LIFT_NEIGHBOURS
            || now - w->t_us > MP_TUN_LIFT_WANT_US
            || strcmp(block, w->block) != 0)
            continue;
        if (index - w->first < w->n) {
            if (w->left)
                w->left--;
            return 1;
        }
        return 2;
    }
    return 0;
}

/* The urgent payload being made is complete. */
static void
urgent_close(MpTunPagesOut *po)
{
    if (!po->ucur)
        return;
    mp_put_be32(po->ucur->data + 1 + po->ucur->data[0], po->ucount);
    g_queue_push_tail(&po->urgent, g_steal_pointer(&po->ucur));
}

/* A copy of page `index` of `block` (`page`: its bytes, or the zero page)
 * into the urgent payload: `u8 n | block[n] | be32 count | {be64 index |
 * u8 kind | [page]} * count`. */
static void
urgent_add(MpTunPagesOut *po, const char *block, guint64 index,
           const guint8 *page)
{
    gsize bl = strlen(block);
    gboolean zero = page == po->zero_page;
    guint8 e[9];

    if (!bl || bl > 255)
        return;
    if (po->ucur
        && (strcmp(po->ucur_block, block) != 0
            || po->ucur->len + sizeof(e) + po->page_size > po->batch_cap))
        urgent_close(po);
    if (!po->ucur) {
        guint8 h[1 + 255 + 4];
        h[0] = (guint8)bl;
        memcpy(h + 1, block, bl);
        mp_put_be32(h + 1 + bl, 0);
        po->ucur = g_byte_array_sized_new(1 + bl + 4 + sizeof(e)
                                          + po->page_size);
        g_byte_array_append(po->ucur, h, 1 + bl + 4);
        memcpy(po->ucur_block, block, bl + 1);
        po->ucount = 0;
    }
    mp_put_be64(e, index);
    e[8] = zero ? MP_TUN_LIFT_ZERO : MP_TUN_LIFT_PAGE;
    g_byte_array_append(po->ucur, e, sizeof(e));
    if (!zero)
        g_byte_array_append(po->ucur, page, po->page_size);
    po->ucount++;
    po->lifting = TRUE;
}

static void
on_page(MpTunPagesOut *po, const MpRecord *rec)
{
    const MpRamPage *pg = &rec->u.page;
    const guint8 *page = NULL;
    /* the page record held at the last feed's end, whole now */
    gboolean was_held = po->held && rec->offset == po->held_off;

    if (po->held && !was_held)
        flush_held(po);
    if (pg->kind == MP_PAGE_NORMAL && pg->size == po->page_size
        && pg->payload_len == po->page_size)
        page = pg->payload;
    else if (pg->kind == MP_PAGE_ZERO && pg->size == po->page_size
             && pg->payload_len >= 1 && pg->payload[0] == 0
             && po->opt.zero_runs)
        page = po->zero_page;
    /* whole in this feed's bytes not handed out yet (else a feed cut it:
     * its first bytes are out as DATA) */
    gboolean here = rec->offset >= po->base + po->pend
                    && rec->offset + rec->length <= po->base + po->len;
    if (!page || po->in_packaged || po->gave_up || !ram_section(rec)
        || !pg->block || pg->addr % po->page_size || !(here || was_held)) {
        if (was_held) {
            flush_held(po); /* the rest follows as DATA */
        } else if (here && po->lifting && pg->block
                   && (pg->flags & MP_RAM_SAVE_FLAG_CONTINUE)) {
            /* raw, with its block named instead of CONTINUE */
            emit_data(po, rec->offset - po->base);
            po->unassigned += rec->length;
            push_record_bytes(po, po->buf + (rec->offset - po->base),
                              rec->length, pg->block);
            po->pend += rec->length;
        }
        page_left_raw(po, rec);
        return;
    }
    ensure_encoder(po);
    if (!was_held)
        emit_data(po, rec->offset - po->base);
    /* the frame's payload bound: a page and its entry must still fit */
    if (mp_batch_enc_pending(po->enc) + po->page_size + 32 > po->batch_cap)
        close_batch(po);
    if (!mp_batch_enc_add(po->enc, pg->block, pg->addr / po->page_size, page,
                          po->made)) {
        g_message("%s: RAM block \"%s\": too many blocks for the page "
                  "cache; pages go as raw stream bytes from here on",
                  po->name, pg->block);
        po->gave_up = TRUE;
        flush_held(po);
        page_left_raw(po, rec);
        return;
    }
    if (was_held) {
        /* its bytes are the batch's entry now */
        g_clear_pointer(&po->held, g_byte_array_unref);
        po->pend = rec->offset + rec->length - po->base;
    } else {
        po->pend += rec->length;
    }
    take_batches(po);
    po->unassigned += rec->length;
    po->stream_bytes += rec->length;
    /* asked for: a copy goes urgent (the batch keeps its own) */
    if (lift_ok(po)) {
        int w = wanted(po, pg->block, pg->addr / po->page_size);
        if (w) {
            urgent_add(po, pg->block, pg->addr / po->page_size, page);
            if (w == 1)
                po->lift_pages++;
            else
                po->lift_neighbours++;
        }
    }
}

/* A multifd packet's header: are its pages bare page bytes? */
static void
on_mfd_packet(MpTunPagesOut *po, const MpRecord *rec)
{
    guint32 comp = rec->u.mfd.flags & MP_MULTIFD_FLAG_COMPRESS_MASK;

    po->mfd_packets++;
    po->mfd_bare = comp == MP_MULTIFD_FLAG_NOCOMP;
    if (!po->mfd_bare && !po->mfd_raw) {
        g_message("%s: multifd packet %" G_GUINT64_FORMAT " at offset %"
                  G_GUINT64_FORMAT " is compressed by QEMU (flags 0x%x): "
                  "this channel goes as raw stream bytes from here on",
                  po->name, rec->u.mfd.packet_num, rec->offset,
                  rec->u.mfd.flags);
        po->mfd_raw = TRUE;
    }
}

/* One normal page of an uncompressed multifd packet, its bytes as they
 * are on the wire (no header of its own): into the batch when the feed
 * holds all of it. */
static void
on_mfd_page(MpTunPagesOut *po, const MpRecord *rec)
{
    const MpMfdInfo *m = &rec->u.mfd;

    /* a zero page of the packet header's list has no bytes of its own;
     * a compressed packet's pages are decoded views */
    if (m->zero || !po->mfd_bare || po->mfd_raw)
        return;
    gboolean here = rec->offset >= po->base + po->pend
                    && rec->offset + rec->length <= po->base + po->len;
    if (po->gave_up || !m->data || !m->block
        || !m->block[0] || rec->length != po->page_size
        || m->addr % po->page_size || !here) {
        po->pages_left_raw++;
        return;
    }
    ensure_encoder(po);
    emit_data(po, rec->offset - po->base);
    if (mp_batch_enc_pending(po->enc) + po->page_size + 32 > po->batch_cap)
        close_batch(po);
    if (!mp_batch_enc_add(po->enc, m->block, m->addr / po->page_size, m->data,
                          po->made)) {
        g_message("%s: RAM block \"%s\": too many blocks for the page "
                  "cache; pages go as raw stream bytes from here on",
                  po->name, m->block);
        po->gave_up = TRUE;
        po->pages_left_raw++;
        return;
    }
    po->pend += rec->length;
    take_batches(po);
    po->unassigned += rec->length;
    po->stream_bytes += rec->length;
}

static MpRecordAction
on_mfd_record(const MpRecord *rec, gpointer data)
{
    MpTunPagesOut *po = data;

    if (rec->kind == MP_REC_MFD_PACKET)
        on_mfd_packet(po, rec);
    else if (rec->kind == MP_REC_MFD_PAGE)
        on_mfd_page(po, rec);
    return MP_REC_CONTINUE;
}

/* A multifd channel's bytes through its parser; a channel QEMU
 * compresses, or that the parser loses, is not parsed any further. */
static void
mfd_feed(MpTunPagesOut *po, const guint8 *buf, gsize len)
{
    g_autoptr(GError) err = NULL;
    gsize used = 0;

    if (!po->mfd)
        return;
    if (mp_mfd_parser_feed(po->mfd, buf, len, &used, &err) == MP_FEED_ERROR) {
        g_message("%s: multifd channel not followed: %s; it goes as raw "
                  "stream bytes from here on",
                  po->name, err ? err->message : "?");
        po->parse_lost = TRUE;
    }
    if (po->parse_lost || po->mfd_raw)
        g_clear_pointer(&po->mfd, mp_mfd_parser_free);
}

static MpRecordAction
on_record(MpPipeline *p, const MpRecord *rec, gpointer data)
{
    MpTunPagesOut *po = data;

    /* what was held was not a page record */
    if (po->held && rec->kind != MP_REC_RAM_PAGE)
        flush_held(po);
    switch (rec->kind) {
    case MP_REC_RAM_PAGE:
        on_page(po, rec);
        if (rec->u.page.block)
            g_strlcpy(po->cur_block, rec->u.page.block,
                      sizeof(po->cur_block));
        break;
    case MP_REC_RAM_MEM_SIZE:
        if (ram_section(rec) && !po->enc)
            po->ram_total = rec->u.mem_size.total;
        break;
    case MP_REC_RAM_BLOCK:
        if (ram_section(rec) && rec->u.block.name) {
            Block b = {g_strdup(rec->u.block.name),
                       rec->u.block.used_length / po->page_size};
            /* its records of one host page must reach QEMU together */
            if (rec->u.block.page_size
                && rec->u.block.page_size != po->page_size)
                po->huge = TRUE;
            g_array_append_val(po->blocks, b);
            if (po->zero)
                mp_zrun_declare_block(po->zero, b.name,
                                      po->shared ? 0 : b.npages,
                                      !po->shared);
        }
        break;
    case MP_REC_RAM_MULTIFD_FLUSH:
        if (!po->shared)
            stop_skipping(po);
        break;
    case MP_REC_COMMAND:
        if (rec->u.cmd.cmd == MP_QMIG_CMD_POSTCOPY_ADVISE) {
            po->postcopy_advised = TRUE;
            if (!po->shared)
                stop_skipping(po);
        }
        if (rec->u.cmd.cmd == MP_QMIG_CMD_POSTCOPY_RUN)
            po->postcopy_running = TRUE;
        if (rec->u.cmd.cmd == MP_QMIG_CMD_PACKAGED)
            po->in_packaged = TRUE;
        break;
    case MP_REC_PACKAGED_END:
        po->in_packaged = FALSE;
        /* the package (POSTCOPY_LISTEN, the devices, POSTCOPY_RUN) went:
         * post-copy runs, as the relay's analysis says too */
        po->postcopy_running = TRUE;
        break;
    default:
        break;
    }
    /* is a RAM record header next (inside the ram section's body)? */
    po->rec_end = rec->offset + rec->length;
    po->ram_body = ((rec->kind == MP_REC_RAM_PAGE
                     || rec->kind == MP_REC_RAM_MULTIFD_FLUSH)
                    && ram_section(rec) && !po->in_packaged)
                   || (rec->kind == MP_REC_SECTION_HEADER
                       && rec->u.sect.idstr
                       && strcmp(rec->u.sect.idstr, "ram") == 0
                       && (rec->u.sect.type == MP_QMIG_SECTION_PART
                           || rec->u.sect.type == MP_QMIG_SECTION_END));
    return MP_REC_CONTINUE;
}

static void
on_gave_up(MpPipeline *p, guint64 off, const GError *err, gpointer data)
{
    MpTunPagesOut *po = data;
    po->parse_lost = TRUE;
}

static const MpPipelineObserver observer = {
    .record = on_record,
    .gave_up = on_gave_up,
};

static void
want_clear(gpointer w)
{
    g_free(((Want *)w)->block);
}

static void
block_clear(gpointer b)
{
    g_free(((Block *)b)->name);
}

MpTunPagesOut *
mp_tun_pages_out_new(const MpTunPagesOptions *opt, guint32 page_size,
                     guint64 cache_cap, guint32 max_payload, const char *name,
                     void (*wake)(gpointer data), gpointer wake_data)
{
    MpTunPagesOut *po = g_new0(MpTunPagesOut, 1);

    po->opt = *opt;
    if (opt->multifd)
        po->opt.urgent = FALSE; /* no post-copy pages on multifd */
    po->page_size = page_size;
    po->cache_cap = cache_cap;
    /* room for the header (name, setup) and for zstd's worst case on an
     * incompressible body (a few bytes per 128 KiB block) */
    po->batch_cap = max_payload - MIN(max_payload / 2, 1024 + max_payload / 64);
    po->name = g_strdup(name);
    po->wake = wake;
    po->wake_data = wake_data;
    po->blocks = g_array_new(FALSE, TRUE, sizeof(Block));
    g_array_set_clear_func(po->blocks, block_clear);
    po->made = g_byte_array_new();
    po->zero_page = g_malloc0(page_size);
    g_queue_init(&po->items);
    g_queue_init(&po->urgent);
    po->wants = g_array_new(FALSE, TRUE, sizeof(Want));
    g_array_set_clear_func(po->wants, want_clear);
    g_mutex_init(&po->lock);
    if (opt->multifd) {
        po->mfd = mp_mfd_parser_new(name, page_size, on_mfd_record, po);
        mp_mfd_parser_set_decode(po->mfd, FALSE);
    } else {
        po->pipe = mp_pipeline_new(0, MP_DIR_TO_DST);
        mp_pipeline_set_name(po->pipe, name);
        mp_pipeline_set_kind(po->pipe, MP_CHAN_MAIN, NULL);
        mp_pipeline_observe(po->pipe, &observer, po);
    }
    if (opt->compress) {
        /* a multifd stream: one context (the channels, each its own
         * worker, are the parallelism, and a context sees all of its
         * channel's pages: a longer history to match) */
        guint w = opt->multifd   ? 1
                  : opt->workers ? opt->workers
                                 : g_get_num_processors();
        po->workers = CLAMP(w, 1, MP_TUN_PAGES_MAX_WORKERS);
        po->comp = g_new0(MpCompEnc *, po->workers);
        po->pool = g_new0(GThreadPool *, po->workers);
        po->sampler = g_new0(MpCompSampler *, po->workers);
        po->level_adapt = opt->adapt && !opt->level;
        po->level = opt->level            ? opt->level
                     : po->level_adapt ? MP_COMP_LEVEL_ADAPT_START
                                       : MP_COMP_LEVEL_DEFAULT;
        for (guint i = 0; i < po->workers; i++) {
            g_autoptr(GError) err = NULL;
            po->comp[i] = mp_comp_enc_new(po->level,
                                          MP_COMP_WINDOW_LOG_DEFAULT, &err);
            g_assert(po->comp[i]); /* the level is checked by the CLI */
            /* one thread: a context's batches in order */
            po->pool[i] = g_thread_pool_new(compress_job, po, 1, FALSE, NULL);
            Item *warm = g_new0(Item, 1);
            warm->po = po;
            warm->zctx = (guint8)i;
            warm->warm = TRUE;
            g_thread_pool_push(po->pool[i], warm, NULL);
        }
        po->zstd_on = TRUE;
        mp_level_ctl_init(&po->lvl, po->level);
        mp_tables_ctl_init(&po->tbl);
        if (po->level_adapt)
            po->sample_due = MP_TUN_PAGES_LEVEL_SAMPLES;
    }
    po->born_us = po->lw_us = g_get_monotonic_time();
    po->level_log = json_object_new_array();
    po->table_log = json_object_new_array();
    return po;
}

void
mp_tun_pages_out_free(MpTunPagesOut *po)
{
    if (!po)
        return;
    for (guint i = 0; i < po->workers; i++) {
        g_thread_pool_free(po->pool[i], FALSE, TRUE);
        mp_comp_enc_free(po->comp[i]);
        mp_comp_sampler_free(po->sampler[i]);
    }
    g_free(po->sampler);
    g_free(po->pool);
    g_free(po->comp);
    g_mutex_lock(&po->lock);
    if (po->wake_id)
        g_source_remove(po->wake_id);
    g_mutex_unlock(&po->lock);
    g_queue_clear_full(&po->items, (GDestroyNotify)item_free);
    g_queue_clear_full(&po->urgent, (GDestroyNotify)g_byte_array_unref);
    json_object_put(po->level_log);
    json_object_put(po->table_log);
    if (po->ucur)
        g_byte_array_unref(po->ucur);
    if (po->held)
        g_byte_array_unref(po->held);
    g_array_unref(po->wants);
    mp_rp_parser_free(po->rp);
    mp_pipeline_free(po->pipe);
    mp_mfd_parser_free(po->mfd);
    mp_batch_enc_free(po->enc);
    mp_pcache_free(po->cache);
    mp_zrun_free(po->zero);
    g_array_unref(po->blocks);
    g_byte_array_unref(po->made);
    g_mutex_clear(&po->lock);
    g_free(po->zero_page);
    g_free(po->name);
    g_free(po);
}

/* The longest page record: header, block name, page. */
static gsize
max_record(const MpTunPagesOut *po)
{
    return 8 + 1 + 255 + po->page_size;
}

/* The feed's last bytes go out, but for a page record the feed cut: it
 * is held (one record at most) until it is whole (hold_ok()). */
static void
feed_end(MpTunPagesOut *po)
{
    guint64 end = po->base + po->len;

    if (po->held) {
        /* still not whole: this feed's bytes are its too */
        if (po->pend == 0 && hold_ok(po)
            && po->held->len + po->len <= max_record(po)) {
            g_byte_array_append(po->held, po->buf, po->len);
            po->pend = po->len;
            return;
        }
        emit_data(po, po->len);
        return;
    }
    if (hold_ok(po) && po->ram_body && po->rec_end >= po->base + po->pend
        && po->rec_end < end && end - po->rec_end <= max_record(po)) {
        gsize at = po->rec_end - po->base;
        gsize n = po->len - at;
        guint64 f = n >= 8 ? mp_be64(po->buf + at) & (po->page_size - 1)
                             & ~(guint64)MP_RAM_SAVE_FLAG_CONTINUE
                           : 0;
        if (n < 8 || f == MP_RAM_SAVE_FLAG_PAGE
            || f == MP_RAM_SAVE_FLAG_ZERO) {
            emit_data(po, at);
            po->held = g_byte_array_sized_new(max_record(po));
            g_byte_array_append(po->held, po->buf + at, n);
            po->held_off = po->rec_end;
            g_strlcpy(po->held_block, po->cur_block, sizeof(po->held_block));
            po->held_records++;
            po->pend = po->len;
            return;
        }
    }
    emit_data(po, po->len);
}

/* The stream bytes taken since the last call count for the last item
 * (its acknowledgement frees them in the window).  @return the bytes
 * with no item to count them (zero pages skipped, nothing queued). */
static guint64
assign_raw(MpTunPagesOut *po)
{
    guint64 left = po->unassigned;
    po->unassigned = 0;
    Item *tail = g_queue_peek_tail(&po->items);
    if (left && tail) {
        tail->raw += left;
        left = 0;
    }
    return left;
}

guint64
mp_tun_pages_out_feed(MpTunPagesOut *po, const guint8 *buf, gsize len)
{
    po->buf = buf;
    po->len = len;
    po->base = po->fed;
    po->pend = 0;
    po->read_budget -= MIN(po->read_budget, len);
    if (po->opt.multifd)
        mfd_feed(po, buf, len);
    else
        mp_pipeline_feed(po->pipe, buf, len, g_get_monotonic_time());
    po->fed += len;
    /* never hold bytes for more input, but for a cut page record */
    close_batch(po);
    urgent_close(po);
    feed_end(po);
    po->buf = NULL;
    return assign_raw(po);
}

static void zstd_window(MpTunPagesOut *po, double link_bps,
                        gboolean incompressible_only);

gboolean
mp_tun_pages_out_pop(MpTunPagesOut *po, MpTunOutItem *item)
{
    Item *it = g_queue_peek_head(&po->items);
    if (!it)
        return FALSE;
    g_mutex_lock(&po->lock);
    gboolean waiting = it->waiting;
    g_mutex_unlock(&po->lock);
    if (waiting)
        return FALSE;
    g_queue_pop_head(&po->items);
    if (it->kind == MP_TUN_OUT_PAGES && !po->setup_sent) {
        /* the stream's first batch tells the destination its cache size */
        guint8 c[8];
        mp_put_be64(c, po->cache_bytes);
        it->bytes->data[0] |= MP_TUN_PAGES_SETUP;
        GByteArray *b = g_byte_array_sized_new(it->bytes->len + 8);
        g_byte_array_append(b, it->bytes->data, 2);
        g_byte_array_append(b, c, 8);
        g_byte_array_append(b, it->bytes->data + 2, it->bytes->len - 2);
        g_byte_array_unref(it->bytes);
        it->bytes = b;
        po->setup_sent = TRUE;
    }
    if (it->kind == MP_TUN_OUT_PAGES)
        po->payload_bytes += it->bytes->len;
    po->out_bytes += it->bytes->len;
    /* between the owner's ticks: pages zstd cannot shrink are known after
     * MP_TUN_PAGES_ADAPT_MIN_BYTES, whatever the link (at 1 Gbit/s a
     * second's wait for the tick was 80 MB of random pages through zstd,
     * 0.27 CPU seconds of the pair's 7) */
    if (it->kind == MP_TUN_OUT_PAGES && po->workers && po->zstd_on
        && po->opt.adapt)
        zstd_window(po, po->link_bps, TRUE);
    item->kind = it->kind;
    item->bytes = g_steal_pointer(&it->bytes);
    item->raw = it->raw;
    item_free(it);
    return TRUE;
}

guint
mp_tun_pages_out_queued(const MpTunPagesOut *po)
{
    return po->items.length;
}

void
mp_tun_pages_out_finish(MpTunPagesOut *po)
{
    flush_held(po);
    urgent_close(po);
    assign_raw(po); /* the held record's bytes are its item's */
}

void
mp_tun_pages_out_request(MpTunPagesOut *po, const char *block,
                         guint64 start, guint64 len)
{
    gint64 now = g_get_monotonic_time();

    if (!po->opt.urgent || !block || !len)
        return;
    po->lift_requests++;
    while (po->wants->len
           && (po->wants->len >= MP_TUN_LIFT_MAX_WANTS
               || now - g_array_index(po->wants, Want, 0).t_us
                      > MP_TUN_LIFT_WANT_US))
        g_array_remove_index(po->wants, 0);
    /* (divided first: the numbers are the destination's) a host page
     * is at most 512 target pages here (2 MiB) */
    guint64 first = start / po->page_size;
    guint64 last = start / po->page_size
                   + (len - 1 + start % po->page_size) / po->page_size;
    Want w = {
        .block = g_strdup(block),
        .first = first,
        .n = MIN(last - first + 1, 512),
        .t_us = now,
    };
    w.left = w.n;
    g_array_append_val(po->wants, w);
}

void
mp_tun_pages_out_page_first(MpTunPagesOut *po)
{
    po->read_budget = MIN(po->read_budget + MP_TUN_LIFT_READ_AHEAD,
                          4 * (guint64)MP_TUN_LIFT_READ_AHEAD);
}

static MpRecordAction
on_rp(const MpRecord *rec, gpointer data)
{
    MpTunPagesOut *po = data;

    if (rec->kind == MP_REC_RP_MESSAGE
        && (rec->u.rp.type == MP_RP_MSG_REQ_PAGES
            || rec->u.rp.type == MP_RP_MSG_REQ_PAGES_ID))
        mp_tun_pages_out_request(po, rec->u.rp.block, rec->u.rp.start,
                                 rec->u.rp.req_len);
    return MP_REC_CONTINUE;
}

void
mp_tun_pages_out_return_path(MpTunPagesOut *po, const guint8 *buf,
                             gsize len)
{
    g_autoptr(GError) err = NULL;
    gsize used = 0;

    if (!po->opt.urgent || po->rp_lost)
        return;
    if (!po->rp) {
        g_autofree char *n = g_strdup_printf("%s: return path", po->name);
        po->rp = mp_rp_parser_new(n, on_rp, po);
    }
    if (mp_rp_parser_feed(po->rp, buf, len, &used, &err) == MP_FEED_ERROR) {
        /* the bytes still go to QEMU: only the lifting stops */
        g_message("%s; requested pages are not lifted any more",
                  err->message);
        po->rp_lost = TRUE;
    }
}

GByteArray *
mp_tun_pages_out_pop_urgent(MpTunPagesOut *po)
{
    GByteArray *b = g_queue_pop_head(&po->urgent);

    if (b) {
        po->urgent_frames++;
        po->urgent_bytes += b->len;
    }
    return b;
}

gboolean
mp_tun_pages_out_read_ahead(const MpTunPagesOut *po)
{
    if (!po->read_budget || !lift_ok(po))
        return FALSE;
    gint64 now = g_get_monotonic_time();
    for (guint i = 0; i < po->wants->len; i++) {
        const Want *w = &g_array_index(po->wants, Want, i);
        if (w->left && now - w->t_us <= MP_TUN_LIFT_WANT_US)
            return TRUE;
    }
    return FALSE;
}

void
mp_tun_pages_out_read_past(MpTunPagesOut *po, gsize n)
{
    po->read_ahead_bytes += n;
}

void
mp_tun_pages_out_set_shared(MpTunPagesOut *po)
{
    if (!po->shared)
        stop_skipping(po);
}

guint64
mp_tun_pages_out_ram(const MpTunPagesOut *po)
{
    guint64 ram = po->ram_total;
    if (!ram)
        for (guint i = 0; i < po->blocks->len; i++)
            ram += g_array_index(po->blocks, Block, i).npages * po->page_size;
    return ram;
}

gboolean
mp_tun_pages_out_sized(const MpTunPagesOut *po)
{
    return po->enc != NULL;
}

void
mp_tun_pages_out_set_session(MpTunPagesOut *po, guint64 ram, guint share)
{
    if (po->enc)
        return;
    po->ram_total = ram;
    po->mfd_share = share;
}

guint64
mp_tun_pages_out_stream_bytes(const MpTunPagesOut *po)
{
    return po->stream_bytes;
}

guint64
mp_tun_pages_out_payload_bytes(const MpTunPagesOut *po)
{
    return po->payload_bytes;
}

static json_object *
codec_json(gboolean enabled, guint64 pages, guint64 in, guint64 out,
           guint64 ns)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "enabled", json_object_new_boolean(enabled));
    json_object_object_add(o, "pages", json_object_new_int64(pages));
    json_object_object_add(o, "bytes_in", json_object_new_int64(in));
    json_object_object_add(o, "bytes_out", json_object_new_int64(out));
    json_object_object_add(o, "cpu_s", json_object_new_double(ns / 1e9));
    return o;
}

json_object *
mp_tun_pages_out_report(const MpTunPagesOut *po)
{
    json_object *o = json_object_new_object();
    MpBatchStats s = {0};
    MpTunPagesOut *mpo = (MpTunPagesOut *)po; /* the lock, not the state */

    if (po->enc)
        s = *mp_batch_enc_stats(po->enc);
    json_object_object_add(o, "batches", json_object_new_int64(po->batches));
    json_object_object_add(o, "stream_bytes",
                           json_object_new_int64(po->stream_bytes));
    json_object_object_add(o, "payload_bytes",
                           json_object_new_int64(po->payload_bytes));
    json_object_object_add(o, "pages_left_raw",
                           json_object_new_int64(po->pages_left_raw));
    json_object_object_add(o, "cache_bytes",
                           json_object_new_int64(po->cache_bytes));
    json_object *z = codec_json(po->opt.zero_runs, s.zero.pages_in,
                                s.zero.bytes_in, s.zero.bytes_out,
                                s.zero.busy_ns);
    json_object_object_add(z, "zero_pages", json_object_new_int64(s.zero_pages));
    json_object_object_add(z, "skipped", json_object_new_int64(s.skipped));
    json_object_object_add(o, "zero_runs", z);
    json_object *dd = codec_json(po->opt.dedup, s.dedup.pages_in,
                                 s.dedup.bytes_in, s.dedup.bytes_out,
                                 s.dedup.busy_ns);
    json_object_object_add(dd, "hits", json_object_new_int64(s.dedup_hits));
    json_object_object_add(
        dd, "on",
        json_object_new_boolean(po->enc ? s.dedup_on : po->opt.dedup));
    json_object_object_add(dd, "switches",
                           json_object_new_int(s.dedup_switches));
    json_object_object_add(o, "dedup", dd);
    json_object *dl = codec_json(po->opt.delta, s.delta.pages_in,
                                 s.delta.bytes_in, s.delta.bytes_out,
                                 s.delta.busy_ns);
    json_object_object_add(dl, "used", json_object_new_int64(s.delta_used));
    json_object_object_add(
        dl, "on",
        json_object_new_boolean(po->enc ? s.delta_on : po->opt.delta));
    json_object_object_add(dl, "switches",
                           json_object_new_int(s.delta_switches));
    json_object_object_add(o, "delta", dl);
    json_object_object_add(o, "whole",
                           codec_json(TRUE, s.raw.pages_in, s.raw.bytes_in,
                                      s.raw.bytes_out, s.raw.busy_ns));
    g_mutex_lock(&mpo->lock);
    json_object *zs = codec_json(po->opt.compress, 0, po->zstd_in,
                                 po->zstd_out, po->zstd_cpu_ns);
    g_mutex_unlock(&mpo->lock);
    json_object_object_add(zs, "workers", json_object_new_int(po->workers));
    json_object_object_add(zs, "on", json_object_new_boolean(po->zstd_on));
    json_object_object_add(zs, "switches",
                           json_object_new_int(po->zstd_switches));
    json_object_object_add(zs, "level", json_object_new_int(po->level));
    json_object_object_add(zs, "level_adapt",
                           json_object_new_boolean(po->level_adapt));
    json_object_object_add(zs, "tables",
                           json_object_new_string(po->tbl.small ? "small"
                                                                : "full"));
    json_object_object_add(zs, "table_switches",
                           json_object_new_int((int)po->tbl.switches));
    json_object *tl = NULL;
    json_object_deep_copy(po->table_log, &tl, NULL);
    json_object_object_add(zs, "table_changes", tl);
    json_object *ll = NULL;
    json_object_deep_copy(po->level_log, &ll, NULL);
    json_object_object_add(zs, "level_changes", ll);
    json_object_object_add(zs, "level_changes_dropped",
                           json_object_new_int64(po->level_log_dropped));
    json_object_object_add(o, "zstd", zs);
    json_object *l = json_object_new_object();
    json_object_object_add(l, "enabled", json_object_new_boolean(po->opt.urgent));
    json_object_object_add(l, "requests",
                           json_object_new_int64(po->lift_requests));
    json_object_object_add(l, "pages", json_object_new_int64(po->lift_pages));
    json_object_object_add(l, "neighbours",
                           json_object_new_int64(po->lift_neighbours));
    json_object_object_add(l, "frames",
                           json_object_new_int64(po->urgent_frames));
    json_object_object_add(l, "bytes", json_object_new_int64(po->urgent_bytes));
    json_object_object_add(l, "held_records",
                           json_object_new_int64(po->held_records));
    json_object_object_add(l, "names_written",
                           json_object_new_int64(po->names_written));
    json_object_object_add(l, "read_ahead_bytes",
                           json_object_new_int64(po->read_ahead_bytes));
    json_object_object_add(o, "lift", l);
    if (po->opt.multifd) {
        json_object *mf = json_object_new_object();
        json_object_object_add(mf, "packets",
                               json_object_new_int64(po->mfd_packets));
        json_object_object_add(mf, "compressed",
                               json_object_new_boolean(po->mfd_raw));
        json_object_object_add(o, "multifd", mf);
    }
    return o;
}

gboolean
mp_tun_pages_out_postcopy_advised(const MpTunPagesOut *po)
{
    return po->postcopy_advised;
}

gboolean
mp_tun_pages_out_postcopy_running(const MpTunPagesOut *po)
{
    return po->postcopy_running;
}

/* The level's window: what the workers and the stream did since the
 * last one, if it is long enough to judge. */
static void
level_window(MpTunPagesOut *po, double link_bps)
{
    gint64 now = g_get_monotonic_time();
    double span = (now - po->lw_us) / 1e6;

    if (span < MP_TUN_PAGES_LEVEL_WINDOW_S * 0.9)
        return;
    g_mutex_lock(&po->lock);
    guint64 in = po->zstd_in, out = po->zstd_out, cpu = po->zstd_cpu_ns,
            wall = po->zstd_wall_us, sat = po->sample_at,
            sbelow = po->sample_below, satu = po->sample_at_up,
            sabove = po->sample_above;
    g_mutex_unlock(&po->lock);
    guint64 popped = po->out_bytes;
    guint64 w_in = in - po->lw_in, w_out = out - po->lw_out,
            w_cpu = cpu - po->lw_cpu, w_wall = wall - po->lw_wall,
            w_popped = popped - po->lw_popped, w_sat = sat - po->lw_sat,
            w_sbelow = sbelow - po->lw_sbelow, w_satu = satu - po->lw_satu,
            w_sabove = sabove - po->lw_sabove;
    po->lw_sat = sat;
    po->lw_sbelow = sbelow;
    po->lw_satu = satu;
    po->lw_sabove = sabove;
    /* not in post-copy: a sampled batch is ready a few ms later */
    if (po->level_adapt && !po->postcopy_running)
        g_atomic_int_set(&po->sample_due, MP_TUN_PAGES_LEVEL_SAMPLES);
    po->lw_us = now;
    po->lw_in = in;
    po->lw_out = out;
    po->lw_cpu = cpu;
    po->lw_wall = wall;
    po->lw_popped = popped;
    /* an idle stream, or zstd off (probes only): nothing to judge */
    if (!po->zstd_on || w_in < MP_TUN_PAGES_LEVEL_MIN_BYTES || !w_cpu)
        return;
    MpLevelSample smp = {
        .link_bps = link_bps,
        .out_bps = w_popped / span,
        .busy = MIN(w_wall / 1e6 / span / po->workers, 1.0),
        .in_bps = w_in / span,
        .enc_bps = w_in / (w_cpu / 1e9),
        .ratio = (double)w_out / w_in,
        .below_rel = w_sat ? (double)w_sbelow / w_sat : 0,
        .above_rel = w_satu ? (double)w_sabove / w_satu : 0,
    };
    mp_tun_pages_out_level_with(po, &smp, (now - po->born_us) / 1e6);
}

gboolean
mp_tun_pages_out_level_with(MpTunPagesOut *po, const MpLevelSample *smp,
                            double now_s)
{
    const char *why = NULL;

    if (!po->level_adapt || !po->workers)
        return FALSE;
    int from = po->level;
    int moved = mp_level_ctl_update(&po->lvl, smp, now_s, &why);
    if (!moved) {
        g_debug("%s: zstd level %d holds: %s (link %.1f Mbit/s, out %.1f "
                "Mbit/s, workers %.0f %% busy, ratio %.3f; on samples the rung "
                "below %.3f of it, the rung above %.3f)",
                po->name, from, why, MAX(smp->link_bps, 0) * 8 / 1e6,
                smp->out_bps * 8 / 1e6, smp->busy * 100, smp->ratio,
                smp->below_rel, smp->above_rel);
        return FALSE;
    }
    int to = mp_level_ctl_level(&po->lvl);
    g_atomic_int_set(&po->level, to);
    g_message("%s: zstd level %d -> %d: %s (link %s%.1f Mbit/s, out %.1f "
              "Mbit/s, workers %.0f %% busy x %u, level %d: %.1f MiB/s per "
              "thread, ratio %.3f)",
              po->name, from, to, why, smp->link_bps > 0 ? "" : "not measured, ",
              MAX(smp->link_bps, 0) * 8 / 1e6, smp->out_bps * 8 / 1e6,
              smp->busy * 100, po->workers, from,
              smp->enc_bps / (1024.0 * 1024.0), smp->ratio);
    if (json_object_array_length(po->level_log) >= MP_TUN_PAGES_LEVEL_LOG) {
        po->level_log_dropped++;
        return TRUE;
    }
    json_object *e = json_object_new_object();
    json_object_object_add(e, "t_s", json_object_new_double(now_s));
    json_object_object_add(e, "from", json_object_new_int(from));
    json_object_object_add(e, "to", json_object_new_int(to));
    json_object_object_add(e, "why", json_object_new_string(why));
    json_object_array_add(po->level_log, e);
    return TRUE;
}

gboolean
mp_tun_pages_out_tables_with(MpTunPagesOut *po, guint n, guint64 small,
                             guint64 full, double now_s)
{
    const char *why = NULL;

    if (!po->level_adapt || !po->workers)
        return FALSE;
    gboolean was = po->tbl.small;
    guint64 now = was ? small : full, other = was ? full : small;
    if (!mp_tables_ctl_update(&po->tbl, n, now, other, &why)) {
        if (n)
            g_debug("%s: zstd tables stay %s: %s (%u samples, %.3f of the "
                    "size the other way)",
                    po->name, was ? "small" : "full", why, n,
                    other ? (double)now / other : 0);
        return FALSE;
    }
    g_atomic_int_set(&po->small_tables, po->tbl.small);
    g_message("%s: zstd tables %s -> %s at level %d: %s (%u samples: "
              "%.3f of the size)",
              po->name, was ? "small" : "full", was ? "full" : "small",
              po->level, why, n, (double)other / now);
    if (json_object_array_length(po->table_log) >= MP_TUN_PAGES_LEVEL_LOG)
        return TRUE; /* the count (table_switches) goes on */
    json_object *e = json_object_new_object();
    json_object_object_add(e, "t_s", json_object_new_double(now_s));
    json_object_object_add(e, "to",
                           json_object_new_string(po->tbl.small ? "small"
                                                                : "full"));
    json_object_object_add(e, "level", json_object_new_int(po->level));
    json_object_object_add(e, "why", json_object_new_string(why));
    json_object_array_add(po->table_log, e);
    return TRUE;
}

int
mp_tun_pages_out_level(const MpTunPagesOut *po)
{
    return po->workers ? po->level : 0;
}

/* zstd on or off, on what it did since the last decision; with
 * `incompressible_only`, only if that shows pages it cannot shrink (the
 * ratio alone decides: off at any link rate). */
static void
zstd_window(MpTunPagesOut *po, double link_bps, gboolean incompressible_only)
{
    g_mutex_lock(&po->lock);
    guint64 in = po->zstd_in, out = po->zstd_out, ns = po->zstd_cpu_ns;
    g_mutex_unlock(&po->lock);
    /* what zstd did since the last decision, not since the start: the
     * pages change (a guest's random data, then its text), and while zstd
     * is off the probes alone fill the window, slowly */
    in -= po->win_in;
    out -= po->win_out;
    ns -= po->win_ns;
    if (in >= MP_TUN_PAGES_ADAPT_MIN_BYTES && ns) {
        if (incompressible_only && (double)out / in < 1.0 - MP_ADAPT_OFF_GAIN)
            return;
        po->win_in += in;
        po->win_out += out;
        po->win_ns += ns;
        po->win_enc_bps = in / (ns / 1e9);
        po->win_ratio = (double)out / in;
    } else if (incompressible_only || po->zstd_on || !(link_bps > 0)
               || !(po->win_enc_bps > 0)) {
        return;
    }
    /* (else: off before the link was measured -- the ratio alone, random
     * pages -- with the link known now: the last window's numbers decide
     * again at once, instead of the probes' next window (64 MiB of
     * stream, 5 s at 100 Mbit/s); at a slow link zstd comes back for the
     * pages among them that compress) */
    /* the destination decodes on one thread per context, several times
     * faster than zstd encodes: not the limit (dec_bps 0) */
    MpAdaptInput ai = {
        .link_bps = link_bps,
        .enc_bps = po->win_enc_bps,
        .enc_workers = po->workers,
        .dec_workers = po->workers,
        .ratio = po->win_ratio,
        /* post-copy: random pages kept in zstd's workers lengthened the
         * wait for requested pages (0.77 -> 1.0 ms blocked per request,
         * docs/benchmarks.md "zstd at a slow link") */
        .latency_bound = po->postcopy_running,
    };
    mp_tun_pages_out_adapt_with(po, &ai);
}

void
mp_tun_pages_out_adapt(MpTunPagesOut *po, double link_bps)
{
    if (!po->opt.adapt)
        return;
    po->link_bps = link_bps;
    if (po->enc)
        mp_batch_enc_adapt(po->enc, link_bps, po->postcopy_running,
                           po->name);
    if (!po->workers)
        return;
    level_window(po, link_bps);
    zstd_window(po, link_bps, FALSE);
}

gboolean
mp_tun_pages_out_adapt_with(MpTunPagesOut *po, const MpAdaptInput *in)
{
    if (!po->opt.adapt || !po->workers)
        return FALSE;
    MpAdaptVerdict v = mp_adapt_decide(in, po->zstd_on);
    if (v.use == po->zstd_on)
        return FALSE;
    po->zstd_on = v.use;
    po->zstd_switches++;
    po->zstd_skipped = 0;
    if (!(in->link_bps > 0))
        g_message("%s: zstd %s: %s (ratio %.3f; link not measured: it "
                  "saves at most %.0f %% of the link time)",
                  po->name, v.use ? "back on" : "off", v.why, in->ratio,
                  v.gain * 100);
    else
        g_message("%s: zstd %s: %s (link %.1f Mbit/s, zstd %.1f MiB/s per "
                  "thread x %u, ratio %.3f: %.2f s per GiB encoded, %.2f s "
                  "direct, gain %.0f %%)",
                  po->name, v.use ? "back on" : "off", v.why,
                  in->link_bps * 8 / 1e6, in->enc_bps / (1024.0 * 1024.0),
                  MAX(in->enc_workers, 1), in->ratio, v.encoded_s,
                  v.direct_s, v.gain * 100);
    return TRUE;
}

gboolean
mp_tun_pages_out_zstd_on(const MpTunPagesOut *po)
{
    return po->workers && po->zstd_on;
}

/* acc[key] += {on, bytes_in, bytes_out, cpu_s} */
static void
add_codec(json_object *acc, const char *key, gboolean on, guint64 in,
          guint64 out, guint64 ns)
{
    json_object *o, *v;
    if (!json_object_object_get_ex(acc, key, &o)) {
        o = json_object_new_object();
        json_object_object_add(o, "on", json_object_new_boolean(FALSE));
        json_object_object_add(o, "bytes_in", json_object_new_int64(0));
        json_object_object_add(o, "bytes_out", json_object_new_int64(0));
        json_object_object_add(o, "cpu_s", json_object_new_double(0));
        json_object_object_add(acc, key, o);
    }
    json_object_object_get_ex(o, "on", &v);
    json_object_set_boolean(v, json_object_get_boolean(v) || on);
    json_object_object_get_ex(o, "bytes_in", &v);
    json_object_set_int64(v, json_object_get_int64(v) + (gint64)in);
    json_object_object_get_ex(o, "bytes_out", &v);
    json_object_set_int64(v, json_object_get_int64(v) + (gint64)out);
    json_object_object_get_ex(o, "cpu_s", &v);
    json_object_set_double(v, json_object_get_double(v) + ns / 1e9);
}

void
mp_tun_pages_out_add_counters(const MpTunPagesOut *po, json_object *acc)
{
    MpBatchStats s = {0};
    MpTunPagesOut *mpo = (MpTunPagesOut *)po; /* the lock, not the state */

    if (po->enc)
        s = *mp_batch_enc_stats(po->enc);
    add_codec(acc, "zero_runs", po->opt.zero_runs, s.zero.bytes_in,
              s.zero.bytes_out, s.zero.busy_ns);
    add_codec(acc, "dedup", po->enc ? s.dedup_on : po->opt.dedup,
              s.dedup.bytes_in, s.dedup.bytes_out, s.dedup.busy_ns);
    add_codec(acc, "delta", po->enc ? s.delta_on : po->opt.delta,
              s.delta.bytes_in, s.delta.bytes_out, s.delta.busy_ns);
    g_mutex_lock(&mpo->lock);
    guint64 in = po->zstd_in, out = po->zstd_out, ns = po->zstd_cpu_ns;
    g_mutex_unlock(&mpo->lock);
    add_codec(acc, "zstd", mp_tun_pages_out_zstd_on(po), in, out, ns);
    json_object *z;
    if (po->workers && json_object_object_get_ex(acc, "zstd", &z))
        json_object_object_add(z, "level", json_object_new_int(po->level));
}
