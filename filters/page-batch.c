/* page-batch.c: batches of encoded pages (see page-batch.h). */
#include "config.h"
#include <string.h>
#include "parse-common.h"
#include "page-batch.h"
#include "page-delta.h"

#define HDR_FIXED   13 /* flags, zctx, be16 id, n, be32 entries, be32 body */
#define ENTRY_FIXED 9  /* kind, index */

static guint
entry_len(guint8 kind)
{
    switch (kind) {
    case MP_BATCH_ZERO_RUN:
        return ENTRY_FIXED + 4;
    case MP_BATCH_PAGE:
        return ENTRY_FIXED;
    case MP_BATCH_DELTA:
        return ENTRY_FIXED + 2;
    case MP_BATCH_DEDUP:
        return ENTRY_FIXED + 10;
    }
    return 0;
}

static void gates_to_stats(MpBatchEnc *e);

struct MpBatchEnc {
    guint32 page_size;
    MpPageCache *cache;
    MpZeroRuns *zero;
    MpBatchOpts opts;
    char *block;
    gint block_id;
    gint zero_block; /* the block's id in the session's zero tracker */
    GByteArray *entries;
    GByteArray *body;
    guint32 n_entries;
    guint64 pages; /* covered by the batch, runs included */
    /* the last entry, when a run: where its count sits */
    gsize run_at;
    guint64 run_end;
    gboolean run_open;
    guint8 *scratch; /* a delta */
    MpBatchStats stats;
    /* adaptive back-off of dedup and delta (mp_batch_enc_adapt()) */
    MpAdaptGate gate[2]; /* by MpBatchEncoder */
};

MpBatchEnc *
mp_batch_enc_new(guint32 page_size, MpPageCache *cache, MpZeroRuns *zero,
                 const MpBatchOpts *opts)
{
    MpBatchEnc *e = g_new0(MpBatchEnc, 1);
    g_assert(cache && mp_pcache_page_size(cache) == page_size);
    g_assert(page_size <= 65535 + 1);
    e->page_size = page_size;
    e->cache = cache;
    e->zero = zero;
    e->opts = *opts;
    if (!zero)
        e->opts.zero = FALSE;
    e->entries = g_byte_array_new();
    e->body = g_byte_array_new();
    e->scratch = g_malloc(page_size);
    e->block_id = -1;
    mp_adapt_gate_init(&e->gate[MP_BATCH_ENC_DEDUP]);
    mp_adapt_gate_init(&e->gate[MP_BATCH_ENC_DELTA]);
    gates_to_stats(e);
    return e;
}

void
mp_batch_enc_free(MpBatchEnc *e)
{
    if (!e)
        return;
    g_byte_array_unref(e->entries);
    g_byte_array_unref(e->body);
    g_free(e->scratch);
    g_free(e->block);
    g_free(e);
}

void
mp_batch_enc_set_opts(MpBatchEnc *e, const MpBatchOpts *opts)
{
    e->opts = *opts;
    if (!e->zero)
        e->opts.zero = FALSE;
    gates_to_stats(e);
}

/* The report's view of the gates. */
static void
gates_to_stats(MpBatchEnc *e)
{
    e->stats.dedup_on = e->opts.dedup && e->gate[MP_BATCH_ENC_DEDUP].on;
    e->stats.delta_on = e->opts.delta && e->gate[MP_BATCH_ENC_DELTA].on;
    e->stats.dedup_switches = e->gate[MP_BATCH_ENC_DEDUP].switches;
    e->stats.delta_switches = e->gate[MP_BATCH_ENC_DELTA].switches;
}

const MpBatchStats *
mp_batch_enc_stats(const MpBatchEnc *e)
{
    return &e->stats;
}

static const char *const enc_names[] = {"dedup", "delta"};

static gboolean
enabled(const MpBatchEnc *e, MpBatchEncoder which)
{
    return which == MP_BATCH_ENC_DEDUP ? e->opts.dedup : e->opts.delta;
}

static void
log_switch(MpBatchEncoder which, const char *name, const MpAdaptInput *in,
           const MpAdaptVerdict *v)
{
    /* enc-adapt's phrases speak of compression; these encoders find */
    const char *why = v->use ? (v->gain >= MP_ADAPT_ON_GAIN ? "saves link time"
                                                            : v->why)
                      : 1 - in->ratio < MP_ADAPT_ON_GAIN
                          ? "finds too little"
                          : "CPU-bound: the link is faster than the encoder";
    if (!(in->link_bps > 0))
        g_message("%s: %s %s: %s (%.1f %% of the bytes tried saved; link "
                  "not measured: it saves at most %.0f %% of the link time)",
                  name, enc_names[which], v->use ? "back on" : "off", why,
                  (1 - in->ratio) * 100, v->gain * 100);
    else
        g_message("%s: %s %s: %s (link %.1f Mbit/s, %s %.1f MiB/s, "
                  "%.1f %% of the bytes tried saved: %.2f s per GiB "
                  "encoded, %.2f s direct, gain %.0f %%)",
                  name, enc_names[which], v->use ? "back on" : "off", why,
                  in->link_bps * 8 / 1e6, enc_names[which],
                  in->enc_bps / (1024.0 * 1024.0), (1 - in->ratio) * 100,
                  v->encoded_s, v->direct_s, v->gain * 100);
}

gboolean
mp_batch_enc_adapt_with(MpBatchEnc *e, MpBatchEncoder which,
                        const MpAdaptInput *in, const char *name)
{
    MpAdaptVerdict v;

    if (!enabled(e, which) || !mp_adapt_gate_decide(&e->gate[which], in, &v))
        return FALSE;
    gates_to_stats(e);
    log_switch(which, name, in, &v);
    return TRUE;
}

guint
mp_batch_enc_adapt(MpBatchEnc *e, double link_bps, gboolean latency_bound,
                   const char *name)
{
    guint switched = 0;

    for (guint w = MP_BATCH_ENC_DEDUP; w <= MP_BATCH_ENC_DELTA; w++) {
        const MpCodecStats *c =
            w == MP_BATCH_ENC_DEDUP ? &e->stats.dedup : &e->stats.delta;
        guint64 hits =
            w == MP_BATCH_ENC_DEDUP ? e->stats.dedup_hits : e->stats.delta_used;
        /* what left for the pages tried: a miss leaves the whole page
         * (as a PAGE entry, whatever zstd then does), a hit its entry */
        guint64 out = c->bytes_in - hits * e->page_size + c->bytes_out;
        /* the encoder and the rest of the stream share the owner's
         * thread; the peer's side (a copy, an XOR) is not the limit */
        MpAdaptInput in = {.link_bps = link_bps,
                           .enc_workers = 1,
                           .dec_workers = 1,
                           .latency_bound = latency_bound};
        MpAdaptVerdict v;
        if (!enabled(e, w)
            || !mp_adapt_gate_update(&e->gate[w], c->bytes_in, out, c->busy_ns,
                                     MP_BATCH_ADAPT_MIN_BYTES, &in, &v))
            continue;
        gates_to_stats(e);
        log_switch(w, name, &in, &v);
        switched++;
    }
    return switched;
}

gsize
mp_batch_enc_pending(const MpBatchEnc *e)
{
    return e->entries->len + e->body->len;
}

static void
put_entry(MpBatchEnc *e, guint8 kind, guint64 index, const guint8 *extra,
          guint extra_len)
{
    guint8 h[ENTRY_FIXED];
    h[0] = kind;
    mp_put_be64(h + 1, index);
    g_byte_array_append(e->entries, h, sizeof(h));
    if (extra_len)
        g_byte_array_append(e->entries, extra, extra_len);
    e->n_entries++;
    e->run_open = FALSE;
}

void
mp_batch_enc_flush(MpBatchEnc *e, GByteArray *out)
{
    if (e->n_entries == 0) {
        e->pages = 0;
        return;
    }
    gsize n = strlen(e->block);
    guint8 h[HDR_FIXED + 255];
    gsize hl = 0;
    h[hl++] = 0;
    h[hl++] = 0;
    mp_put_be16(h + hl, (guint16)e->block_id);
    hl += 2;
    h[hl++] = (guint8)n;
    memcpy(h + hl, e->block, n);
    hl += n;
    mp_put_be32(h + hl, e->n_entries);
    hl += 4;
    mp_put_be32(h + hl, e->body->len);
    hl += 4;
    guint8 l[4];
    mp_put_be32(l, (guint32)(hl + e->entries->len + e->body->len));
    g_byte_array_append(out, l, 4);
    g_byte_array_append(out, h, hl);
    g_byte_array_append(out, e->entries->data, e->entries->len);
    g_byte_array_append(out, e->body->data, e->body->len);
    g_byte_array_set_size(e->entries, 0);
    g_byte_array_set_size(e->body, 0);
    e->n_entries = 0;
    e->pages = 0;
    e->run_open = FALSE;
}

static void
cache_put(MpBatchEnc *e, MpPageKey key, const guint8 *page, gboolean hashed,
          guint64 hash)
{
    if (hashed)
        mp_pcache_put_hashed(e->cache, key, page, hash);
    else
        mp_pcache_put(e->cache, key, page);
}

gboolean
mp_batch_enc_add(MpBatchEnc *e, const char *block, guint64 index,
                 const guint8 *page, GByteArray *out)
{
    MpPageKey key;
    /* the page's content hash, once dedup computed it: the store reuses
     * it */
    guint64 hash = 0;
    gboolean hashed = FALSE;

    if (!e->block || strcmp(block, e->block) != 0) {
        gint id = mp_pcache_block_id(e->cache, block);
        if (id < 0 || strlen(block) > 255)
            return FALSE;
        mp_batch_enc_flush(e, out);
        g_free(e->block);
        e->block = g_strdup(block);
        e->block_id = id;
        e->zero_block = e->zero ? mp_zrun_block_id(e->zero, block) : -1;
    }
    if (e->pages + 1 > MP_BATCH_MAX_PAGES
        || e->body->len + e->page_size > MP_BATCH_MAX_BODY)
        mp_batch_enc_flush(e, out);
    key.block = (guint16)e->block_id;
    key.index = index;
    e->pages++;

    if (e->opts.zero) {
        guint64 t0 = mp_codec_now_ns();
        gboolean here = e->run_open && e->run_end == index;
        MpZeroVerdict v = mp_zrun_classify(e->zero, e->zero_block, index,
                                           page, here);
        /* a batch's first page always goes: the destination's current
         * block is then the batch's, as the source's stream has it, and a
         * raw record with CONTINUE after the batch means that block */
        if (v == MP_ZRUN_SKIP && e->n_entries == 0)
            v = MP_ZRUN_START;
        /* a page the peer holds as zero is not cached (it was forgotten
         * when it became zero), and the peer sees nothing of a skipped
         * page: only run pages touch the cache */
        if (v == MP_ZRUN_EXTEND || v == MP_ZRUN_START)
            mp_pcache_forget(e->cache, key);
        if (v == MP_ZRUN_SKIP) {
            e->stats.skipped++;
            e->pages--;
        } else if (v == MP_ZRUN_EXTEND) {
            guint8 *c = e->entries->data + e->run_at;
            mp_put_be32(c, mp_be32(c) + 1);
            e->run_end++;
            e->stats.zero_pages++;
        } else if (v == MP_ZRUN_START) {
            guint8 one[4];
            mp_put_be32(one, 1);
            put_entry(e, MP_BATCH_ZERO_RUN, index, one, 4);
            e->run_at = e->entries->len - 4;
            e->run_end = index + 1;
            e->run_open = TRUE;
            e->stats.zero_pages++;
        }
        mp_codec_stats_add(&e->stats.zero, 1, e->page_size,
                           v == MP_ZRUN_START ? MP_ZRUN_WIRE_LEN : 0, t0);
        if (v != MP_ZRUN_DATA)
            return TRUE;
    }
    /* off adaptively: the page goes on as if it were missed, which it
     * mostly is; the cache sees it as always (PAGE or DELTA below) */
    if (e->opts.dedup
        && mp_adapt_gate_try(&e->gate[MP_BATCH_ENC_DEDUP],
                             MP_BATCH_PROBE_EVERY)) {
        guint64 t0 = mp_codec_now_ns();
        MpPageKey ref;
        hash = mp_pcache_hash(e->cache, page);
        hashed = TRUE;
        gboolean hit = mp_pcache_find_hashed(e->cache, page, hash, &ref);
        if (hit) {
            guint8 x[10];
            mp_put_be16(x, ref.block);
            mp_put_be64(x + 2, ref.index);
            put_entry(e, MP_BATCH_DEDUP, index, x, sizeof(x));
            if (ref.block != key.block || ref.index != key.index)
                mp_pcache_put_hashed(e->cache, key, page, hash);
            e->stats.dedup_hits++;
        }
        mp_codec_stats_add(&e->stats.dedup, 1, e->page_size,
                           hit ? entry_len(MP_BATCH_DEDUP) : 0, t0);
        if (hit)
            return TRUE;
    }
    if (e->opts.delta
        && mp_adapt_gate_try(&e->gate[MP_BATCH_ENC_DELTA],
                             MP_BATCH_PROBE_EVERY)) {
        guint64 t0 = mp_codec_now_ns();
        const guint8 *old = mp_pcache_get(e->cache, key);
        gssize dl = -1;
        if (old)
            dl = mp_delta_encode(old, page, e->page_size, e->scratch,
                                 (gsize)(e->page_size * MP_BATCH_DELTA_MAX));
        if (dl >= 0) {
            guint8 x[2];
            mp_put_be16(x, (guint16)dl);
            put_entry(e, MP_BATCH_DELTA, index, x, 2);
            g_byte_array_append(e->body, e->scratch, (guint)dl);
            cache_put(e, key, page, hashed, hash);
            e->stats.delta_used++;
        }
        if (old)
            mp_codec_stats_add(&e->stats.delta, 1, e->page_size,
                               dl >= 0 ? entry_len(MP_BATCH_DELTA) + dl : 0,
                               t0);
        if (dl >= 0)
            return TRUE;
    }
    guint64 t0 = mp_codec_now_ns();
    put_entry(e, MP_BATCH_PAGE, index, NULL, 0);
    g_byte_array_append(e->body, page, e->page_size);
    cache_put(e, key, page, hashed, hash);
    mp_codec_stats_add(&e->stats.raw, 1, e->page_size,
                       e->page_size + ENTRY_FIXED, t0);
    return TRUE;
}

/* @return the length of the header of a PAGES payload (to the first
 * entry), 0 if it is cut short. */
static gsize
header_len(const guint8 *p, gsize len)
{
    if (len < 5 || len < (gsize)HDR_FIXED + p[4])
        return 0;
    return HDR_FIXED + p[4];
}

gsize
mp_batch_compress(MpCompEnc *comp, guint8 zctx, const guint8 *plain,
                  gsize len, GByteArray *out)
{
    gsize hl = header_len(plain, len);
    g_assert(hl);
    guint32 body_len = mp_be32(plain + hl - 4);
    gsize el = len - body_len - hl;
    gsize start = out->len;

    g_byte_array_append(out, plain, hl + el);
    /* no body (runs and references only): nothing to compress, and an
     * empty zstd chunk would not decode */
    if (body_len == 0)
        return out->len - start;
    out->data[start] |= MP_BATCH_COMPRESSED;
    out->data[start + 1] = zctx;
    mp_comp_enc_batch(comp, plain + hl + el, body_len, out);
    return out->len - start;
}

/* --- decoding ------------------------------------------------------- */

struct MpBatchDec {
    guint32 page_size;
    MpPageCache *cache;
    guint window_log;
    MpCompDec *comp[256]; /* made on first use of a context */
    guint8 *body;         /* decompressed body, grown to the largest */
    gsize body_cap;
    guint8 *page;
    MpCodecStats stats;
};

MpBatchDec *
mp_batch_dec_new(guint32 page_size, MpPageCache *cache, guint window_log)
{
    MpBatchDec *d = g_new0(MpBatchDec, 1);
    g_assert(cache && mp_pcache_page_size(cache) == page_size);
    d->page_size = page_size;
    d->cache = cache;
    d->window_log = window_log;
    d->page = g_malloc(page_size);
    /* references name their key: this side never searches by content */
    mp_pcache_set_unsearched(cache);
    return d;
}

void
mp_batch_dec_free(MpBatchDec *d)
{
    if (!d)
        return;
    for (guint i = 0; i < G_N_ELEMENTS(d->comp); i++)
        mp_comp_dec_free(d->comp[i]);
    g_free(d->body);
    g_free(d->page);
    g_free(d);
}

const MpCodecStats *
mp_batch_dec_stats(const MpBatchDec *d)
{
    return &d->stats;
}

G_GNUC_PRINTF(5, 6)
static gboolean
bad(GError **error, const char *block, gsize at, gsize len, const char *fmt,
    ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *what = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    mp_parse_error_set(error, "page batch", MP_PARSE_ERROR_DECODE,
                       "block \"%s\", payload offset %" G_GSIZE_FORMAT
                       " of %" G_GSIZE_FORMAT ": %s",
                       block, at, len, what);
    return FALSE;
}

gboolean
mp_batch_decode(MpBatchDec *d, const guint8 *payload, gsize len,
                MpBatchPageFunc cb, gpointer user_data, GError **error)
{
    guint64 t0 = mp_codec_now_ns();
    gsize hl = header_len(payload, len);
    char block[256] = "?";

    if (!hl)
        return bad(error, block, 0, len,
                   "header cut short (expected %u bytes and the name)",
                   HDR_FIXED);
    guint8 flags = payload[0], zctx = payload[1];
    guint16 id = mp_be16(payload + 2);
    memcpy(block, payload + 5, payload[4]);
    block[payload[4]] = '\0';
    guint32 n = mp_be32(payload + hl - 8);
    guint32 body_len = mp_be32(payload + hl - 4);
    if (flags & ~MP_BATCH_COMPRESSED)
        return bad(error, block, 0, len, "flags 0x%02x, expected 0 or 1",
                   flags);
    if (!(flags & MP_BATCH_COMPRESSED) && zctx)
        return bad(error, block, 1, len,
                   "zstd context %u on an uncompressed batch", zctx);
    /* the name goes into the destination's RAM records: an empty one,
     * or one a NUL cuts short, would name another block (or none) */
    if (payload[4] == 0 || strlen(block) != payload[4])
        return bad(error, block, 4, len,
                   "block name of %u bytes with a NUL, expected 1..255 "
                   "bytes without",
                   payload[4]);
    g_autoptr(GError) berr = NULL;
    if (!mp_pcache_block_bind(d->cache, id, block, &berr))
        return bad(error, block, 2, len, "%s", berr->message);
    if (n == 0 || n > MP_BATCH_MAX_PAGES || body_len > MP_BATCH_MAX_BODY)
        return bad(error, block, hl - 8, len,
                   "%u entries, body of %u bytes: expected 1..%u entries, a "
                   "body of at most %u",
                   n, body_len, MP_BATCH_MAX_PAGES, MP_BATCH_MAX_BODY);

    /* the entries' extent first, so that the body can be located */
    gsize at = hl;
    guint64 pages = 0, need_body = 0;
    for (guint32 i = 0; i < n; i++) {
        if (at >= len)
            return bad(error, block, at, len, "entry %u of %u cut short", i,
                       n);
        guint el = entry_len(payload[at]);
        if (!el)
            return bad(error, block, at, len,
                       "entry %u of %u: unknown kind %u, expected 1..4", i, n,
                       payload[at]);
        if (el > len - at)
            return bad(error, block, at, len, "entry %u of %u cut short", i,
                       n);
        guint8 kind = payload[at];
        guint64 count = kind == MP_BATCH_ZERO_RUN ? mp_be32(payload + at + 9)
                                                  : 1;
        if (mp_be64(payload + at + 1) >> 48)
            return bad(error, block, at, len,
                       "entry %u: page index 0x%" G_GINT64_MODIFIER
                       "x beyond 2^48",
                       i, mp_be64(payload + at + 1));
        pages += count;
        if (kind == MP_BATCH_PAGE)
            need_body += d->page_size;
        else if (kind == MP_BATCH_DELTA)
            need_body += mp_be16(payload + at + 9);
        at += el;
    }
    if (pages > MP_BATCH_MAX_PAGES)
        return bad(error, block, hl, len,
                   "entries cover %" G_GUINT64_FORMAT " pages, at most %u",
                   pages, MP_BATCH_MAX_PAGES);
    if (need_body != body_len)
        return bad(error, block, hl - 4, len,
                   "body of %u bytes, but the entries use %" G_GUINT64_FORMAT,
                   body_len, need_body);
    const guint8 *body = payload + at;
    gsize wire_body = len - at;
    if (flags & MP_BATCH_COMPRESSED) {
        if (!d->comp[zctx]) {
            d->comp[zctx] = mp_comp_dec_new(d->window_log, error);
            if (!d->comp[zctx])
                return FALSE;
        }
        if (d->body_cap < body_len) {
            /* body_len <= MP_BATCH_MAX_BODY, checked above */
            g_free(d->body);
            d->body = g_malloc(body_len);
            d->body_cap = body_len;
        }
        g_autoptr(GError) zerr = NULL;
        if (!mp_comp_dec_batch(d->comp[zctx], body, wire_body, d->body,
                               body_len, &zerr))
            return bad(error, block, at, len, "body (context %u): %s", zctx,
                       zerr->message);
        body = d->body;
    } else if (wire_body != body_len) {
        return bad(error, block, at, len,
                   "raw body of %" G_GSIZE_FORMAT " bytes, expected %u",
                   wire_body, body_len);
    }

    /* apply, in order */
    gsize e = hl, b = 0;
    for (guint32 i = 0; i < n; i++) {
        guint8 kind = payload[e];
        MpPageKey key = {id, mp_be64(payload + e + 1)};
        switch (kind) {
        case MP_BATCH_ZERO_RUN: {
            guint32 count = mp_be32(payload + e + 9);
            MpZeroRun r = {id, key.index, count};
            g_autoptr(GError) zerr = NULL;
            if (!mp_zrun_check(&r, 0, &zerr))
                return bad(error, block, e, len, "entry %u: %s", i,
                           zerr->message);
            for (guint32 k = 0; k < count; k++)
                mp_pcache_forget(d->cache,
                                 (MpPageKey){id, key.index + k});
            cb(block, key.index, count, NULL, user_data);
            break;
        }
        case MP_BATCH_PAGE:
            mp_pcache_put(d->cache, key, body + b);
            cb(block, key.index, 1, body + b, user_data);
            b += d->page_size;
            break;
        case MP_BATCH_DELTA: {
            guint16 dl = mp_be16(payload + e + 9);
            const guint8 *old = mp_pcache_get(d->cache, key);
            g_autoptr(GError) derr = NULL;
            if (!old)
                return bad(error, block, e, len,
                           "entry %u: delta for page %" G_GUINT64_FORMAT
                           ", which this side does not hold",
                           i, key.index);
            if (!mp_delta_decode(old, body + b, dl, d->page_size, d->page,
                                 &derr))
                return bad(error, block, e, len, "entry %u, page %"
                           G_GUINT64_FORMAT ": %s",
                           i, key.index, derr->message);
            mp_pcache_put(d->cache, key, d->page);
            cb(block, key.index, 1, d->page, user_data);
            b += dl;
            break;
        }
        case MP_BATCH_DEDUP: {
            MpPageKey ref = {mp_be16(payload + e + 9),
                             mp_be64(payload + e + 11)};
            const guint8 *src = mp_pcache_get(d->cache, ref);
            if (!src)
                return bad(error, block, e, len,
                           "entry %u: page %" G_GUINT64_FORMAT
                           " refers to page %" G_GUINT64_FORMAT
                           " of block %u, which this side does not hold",
                           i, key.index, ref.index, ref.block);
            memcpy(d->page, src, d->page_size);
            if (ref.block != key.block || ref.index != key.index)
                mp_pcache_put(d->cache, key, d->page);
            cb(block, key.index, 1, d->page, user_data);
            break;
        }
        }
        e += entry_len(kind);
    }
    mp_codec_stats_add(&d->stats, pages, len, pages * d->page_size, t0);
    return TRUE;
}
