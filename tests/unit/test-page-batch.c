/* test-page-batch.c: page batches end to end: a source encodes rounds of
 * a changing RAM image (zero runs, dedup, delta, zstd on two worker
 * contexts), a destination decodes them into its own image; both images
 * and both caches must match after every batch.  Hostile batches are
 * refused with errors that name the entry. */
#include "config.h"
#include <string.h>
#include <criterion/criterion.h>
#include "page-batch.h"
#include "page-gen.h"
#include "parse-common.h"

#define PS     4096
#define NPAGES 384

typedef struct {
    guint8 *ram[2]; /* two blocks */
    guint64 pages_seen;
} Image;

static const char *const blocks[2] = {"pc.ram", "vga.vram"};

static void
apply(const char *block, guint64 index, guint32 count, const guint8 *page,
      gpointer user_data)
{
    Image *img = user_data;
    int b = strcmp(block, blocks[0]) == 0 ? 0 : 1;
    cr_assert(strcmp(block, blocks[b]) == 0, "block %s", block);
    cr_assert_leq(index + count, NPAGES);
    for (guint32 k = 0; k < count; k++) {
        if (page)
            memcpy(img->ram[b] + (index + k) * PS, page, PS);
        else
            memset(img->ram[b] + (index + k) * PS, 0, PS);
    }
    img->pages_seen += count;
}

typedef struct {
    MpPageCache *src_cache, *dst_cache;
    MpZeroRuns *zero;
    MpBatchEnc *enc;
    MpBatchDec *dec;
    MpCompEnc *comp[2];
    Image dst;
    guint batches;
} Pair;

static void
pair_init(Pair *p, const MpBatchOpts *opts, guint64 budget)
{
    memset(p, 0, sizeof(*p));
    p->src_cache = mp_pcache_new(PS, budget);
    p->dst_cache = mp_pcache_new(PS, budget);
    p->zero = mp_zrun_new(PS);
    p->enc = mp_batch_enc_new(PS, p->src_cache, p->zero, opts);
    p->dec = mp_batch_dec_new(PS, p->dst_cache, 23);
    for (int i = 0; i < 2; i++) {
        p->comp[i] = mp_comp_enc_new(3, 23, NULL);
        p->dst.ram[i] = g_malloc0(NPAGES * PS);
    }
    /* the source names blocks in its own order, one it never sends
     * first: the destination binds the ids its batches carry */
    cr_assert_eq(mp_pcache_block_id(p->src_cache, "/rom@etc/acpi/tables"), 0);
    cr_assert_eq(mp_pcache_block_id(p->src_cache, blocks[1]), 1);
    cr_assert_eq(mp_pcache_block_id(p->src_cache, blocks[0]), 2);
    /* the destination starts with zero RAM: pc.ram declared so */
    cr_assert_eq(mp_zrun_declare_block(p->zero, blocks[1], NPAGES, FALSE), 0);
    cr_assert_eq(mp_zrun_declare_block(p->zero, blocks[0], NPAGES, TRUE), 1);
}

static void
pair_clear(Pair *p)
{
    mp_batch_enc_free(p->enc);
    mp_batch_dec_free(p->dec);
    mp_zrun_free(p->zero);
    mp_pcache_free(p->src_cache);
    mp_pcache_free(p->dst_cache);
    for (int i = 0; i < 2; i++) {
        mp_comp_enc_free(p->comp[i]);
        g_free(p->dst.ram[i]);
    }
}

/* Decodes every length-prefixed batch in `out`, two of every three
 * compressed first on one of two "worker" contexts. */
static void
pair_deliver(Pair *p, GByteArray *out)
{
    gsize at = 0;
    while (at < out->len) {
        guint32 n = mp_be32(out->data + at);
        const guint8 *b = out->data + at + 4;
        g_autoptr(GByteArray) z = g_byte_array_new();
        g_autoptr(GError) err = NULL;
        if (p->batches % 3 != 2) {
            guint8 ctx = p->batches % 3;
            mp_batch_compress(p->comp[ctx], ctx, b, n, z);
            cr_assert(mp_batch_decode(p->dec, z->data, z->len, apply,
                                      &p->dst, &err),
                      "%s", err ? err->message : "");
        } else {
            cr_assert(mp_batch_decode(p->dec, b, n, apply, &p->dst, &err),
                      "%s", err ? err->message : "");
        }
        p->batches++;
        at += 4 + n;
    }
    /* the source's cache is ahead until the last batch it made arrived */
    cr_assert_eq(mp_pcache_digest(p->src_cache),
                 mp_pcache_digest(p->dst_cache), "batch %u", p->batches);
    g_byte_array_set_size(out, 0);
}

static void
run_rounds(const MpBatchOpts *opts, guint64 budget, gboolean cut_batches)
{
    g_autoptr(GRand) r = g_rand_new_with_seed(7);
    guint8 *src[2] = {g_malloc0(NPAGES * PS), g_malloc0(NPAGES * PS)};
    g_autoptr(GByteArray) out = g_byte_array_new();
    guint64 added = 0;
    Pair p;

    pair_init(&p, opts, budget);
    for (int b = 0; b < 2; b++)
        for (guint i = 0; i < NPAGES; i++)
            page_gen(src[b] + i * PS, PS,
                     (PageKind)g_rand_int_range(r, 0, PG__MAX), r);
    /* some duplicates across blocks */
    for (guint i = 0; i < 20; i++)
        memcpy(src[1] + i * PS, src[0] + (100 + i) * PS, PS);

    for (int round = 0; round < 4; round++) {
        for (int b = 0; b < 2; b++) {
            for (guint i = 0; i < NPAGES; i++) {
                /* rounds after the first send the dirtied pages only */
                if (round && g_rand_int_range(r, 0, 3))
                    continue;
                cr_assert(mp_batch_enc_add(p.enc, blocks[b], i,
                                           src[b] + i * PS, out));
                added++;
                if (cut_batches && g_rand_int_range(r, 0, 40) == 0)
                    mp_batch_enc_flush(p.enc, out);
            }
            mp_batch_enc_flush(p.enc, out);
            pair_deliver(&p, out);
        }
        /* dirty: small changes, zeroed pages, copies, new content */
        for (int k = 0; k < 200; k++) {
            int b = g_rand_int_range(r, 0, 2);
            guint i = (guint)g_rand_int_range(r, 0, NPAGES);
            guint8 *pg = src[b] + i * PS;
            switch (g_rand_int_range(r, 0, 4)) {
            case 0:
                pg[g_rand_int_range(r, 0, PS)]++;
                break;
            case 1:
                memset(pg, 0, PS);
                break;
            case 2:
                memcpy(pg, src[0] + g_rand_int_range(r, 0, NPAGES) * PS, PS);
                break;
            default:
                page_gen(pg, PS, (PageKind)g_rand_int_range(r, 0, PG__MAX),
                         r);
            }
        }
    }
    /* a last full round so that every page is current at the peer */
    for (int b = 0; b < 2; b++)
        for (guint i = 0; i < NPAGES; i++)
            cr_assert(mp_batch_enc_add(p.enc, blocks[b], i, src[b] + i * PS,
                                       out));
    added += 2 * NPAGES;
    mp_batch_enc_flush(p.enc, out);
    pair_deliver(&p, out);
    for (int b = 0; b < 2; b++)
        cr_assert_eq(memcmp(src[b], p.dst.ram[b], NPAGES * PS), 0,
                     "block %d differs", b);

    const MpBatchStats *s = mp_batch_enc_stats(p.enc);
    if (opts->zero)
        cr_assert_gt(s->skipped, 0);
    if (opts->dedup)
        cr_assert_gt(s->dedup_hits, 0);
    if (opts->delta && budget >= NPAGES * PS)
        cr_assert_gt(s->delta_used, 0);
    /* every page went exactly one way */
    cr_assert_eq(s->raw.pages_in + s->delta_used + s->dedup_hits
                     + s->zero_pages + s->skipped,
                 added);
    if (opts->zero)
        cr_assert_eq(s->zero.pages_in, added);
    pair_clear(&p);
    g_free(src[0]);
    g_free(src[1]);
}

Test(page_batch, rounds_all_encoders)
{
    MpBatchOpts o = {TRUE, TRUE, TRUE};
    run_rounds(&o, 4 << 20, FALSE);
}

Test(page_batch, rounds_small_cache_cut_batches)
{
    MpBatchOpts o = {TRUE, TRUE, TRUE};
    run_rounds(&o, 64 * PS, TRUE);
}

Test(page_batch, rounds_each_encoder_alone)
{
    MpBatchOpts zero = {TRUE, FALSE, FALSE}, delta = {FALSE, TRUE, FALSE},
                dedup = {FALSE, FALSE, TRUE}, none = {FALSE, FALSE, FALSE};
    run_rounds(&zero, 4 << 20, FALSE);
    run_rounds(&delta, 4 << 20, FALSE);
    run_rounds(&dedup, 4 << 20, FALSE);
    run_rounds(&none, 4 << 20, FALSE);
}

/* --- hostile batches -------------------------------------------------- */

static void
put_hdr(GByteArray *b, guint8 flags, guint16 id, const char *name,
        guint32 entries, guint32 body_len)
{
    guint8 h[4 + 255 + 8];
    gsize n = strlen(name), l = 0;
    h[l++] = flags;
    h[l++] = 0;
    mp_put_be16(h + l, id);
    l += 2;
    h[l++] = (guint8)n;
    memcpy(h + l, name, n);
    l += n;
    mp_put_be32(h + l, entries);
    mp_put_be32(h + l + 4, body_len);
    g_byte_array_append(b, h, l + 8);
}

static void
put_entry(GByteArray *b, guint8 kind, guint64 index, const guint8 *x,
          guint xl)
{
    guint8 h[9];
    h[0] = kind;
    mp_put_be64(h + 1, index);
    g_byte_array_append(b, h, 9);
    if (xl)
        g_byte_array_append(b, x, xl);
}

static void
expect_batch_error(GByteArray *b, const char *text)
{
    g_autoptr(MpPageCache) c = mp_pcache_new(PS, 1 << 20);
    g_autoptr(MpBatchDec) d = mp_batch_dec_new(PS, c, 23);
    Image img = {{g_malloc0(NPAGES * PS), g_malloc0(NPAGES * PS)}, 0};
    g_autoptr(GError) err = NULL;
    guint8 page[PS] = {1};

    /* the cache holds pc.ram page 1 */
    mp_pcache_block_id(c, "pc.ram");
    mp_pcache_put(c, (MpPageKey){0, 1}, page);
    cr_assert_not(mp_batch_decode(d, b->data, b->len, apply, &img, &err));
    cr_assert(strstr(err->message, text), "expected '%s' in '%s'", text,
              err->message);
    g_free(img.ram[0]);
    g_free(img.ram[1]);
}

Test(page_batch, hostile)
{
    guint8 x[10] = {0};
    g_autoptr(GByteArray) a = g_byte_array_new();
    g_byte_array_append(a, (const guint8 *)"\0\0\0", 3);
    expect_batch_error(a, "page batch: block \"?\", payload offset 0 of 3: "
                          "header cut short");

    g_autoptr(GByteArray) b = g_byte_array_new();
    put_hdr(b, 0, 0, "pc.ram", 1, 0);
    x[1] = 9; /* delta of 9 bytes */
    put_entry(b, MP_BATCH_DELTA, 2, x, 2);
    expect_batch_error(b, "body of 0 bytes, but the entries use 9");

    g_autoptr(GByteArray) c = g_byte_array_new();
    put_hdr(c, 0, 0, "pc.ram", 1, 2);
    x[1] = 2;
    put_entry(c, MP_BATCH_DELTA, 2, x, 2);
    g_byte_array_append(c, (const guint8 *)"\0\1", 2);
    expect_batch_error(c, "block \"pc.ram\", payload offset 19 of 32: entry "
                          "0: delta for page 2, which this side does not "
                          "hold");

    g_autoptr(GByteArray) d = g_byte_array_new();
    put_hdr(d, 0, 0, "pc.ram", 1, 0);
    mp_put_be16(x, 0);
    mp_put_be64(x + 2, 3);
    put_entry(d, MP_BATCH_DEDUP, 5, x, 10);
    expect_batch_error(d, "entry 0: page 5 refers to page 3 of block 0, "
                          "which this side does not hold");

    g_autoptr(GByteArray) e = g_byte_array_new();
    put_hdr(e, 0, 0, "pc.ram", 2, 0);
    put_entry(e, 9, 5, NULL, 0);
    expect_batch_error(e, "entry 0 of 2: unknown kind 9, expected 1..4");

    g_autoptr(GByteArray) f = g_byte_array_new();
    put_hdr(f, 0, 0, "pc.ram", 2, 0);
    mp_put_be32(x, 1);
    put_entry(f, MP_BATCH_ZERO_RUN, 5, x, 4);
    expect_batch_error(f, "entry 1 of 2 cut short");

    g_autoptr(GByteArray) g = g_byte_array_new();
    put_hdr(g, 0, 0, "pc.ram", 1, 0);
    mp_put_be32(x, 0xffffffff);
    put_entry(g, MP_BATCH_ZERO_RUN, 5, x, 4);
    expect_batch_error(g, "entries cover 4294967295 pages, at most 65536");

    g_autoptr(GByteArray) h = g_byte_array_new();
    put_hdr(h, 0, 3, "pc.ram", 1, 0);
    put_entry(h, MP_BATCH_ZERO_RUN, 5, x, 4);
    expect_batch_error(h, "page cache: block \"pc.ram\" came as id 0, now "
                          "as 3: the caches are out of step");

    g_autoptr(GByteArray) h2 = g_byte_array_new();
    put_hdr(h2, 0, 0, "other", 1, 0);
    put_entry(h2, MP_BATCH_ZERO_RUN, 5, x, 4);
    expect_batch_error(h2, "block id 0 is \"pc.ram\", now \"other\"");

    g_autoptr(GByteArray) h3 = g_byte_array_new();
    put_hdr(h3, 0, 5000, "other", 1, 0);
    put_entry(h3, MP_BATCH_ZERO_RUN, 5, x, 4);
    expect_batch_error(h3, "block id 5000 for \"other\", expected below 4096");

    g_autoptr(GByteArray) i = g_byte_array_new();
    put_hdr(i, MP_BATCH_COMPRESSED, 0, "pc.ram", 1, PS);
    put_entry(i, MP_BATCH_PAGE, 5, NULL, 0);
    g_byte_array_append(i, (const guint8 *)"not zstd, not at all", 20);
    expect_batch_error(i, "body (context 0): zstd: batch of 20 bytes");

    g_autoptr(GByteArray) j = g_byte_array_new();
    put_hdr(j, 0, 0, "pc.ram", 0, 0);
    expect_batch_error(j, "0 entries, body of 0 bytes: expected 1..65536");

    g_autoptr(GByteArray) k = g_byte_array_new();
    put_hdr(k, 0, 0, "pc.ram", 1, PS);
    put_entry(k, MP_BATCH_PAGE, 5, NULL, 0);
    g_byte_array_append(k, x, 10);
    expect_batch_error(k, "raw body of 10 bytes, expected 4096");

    g_autoptr(GByteArray) l = g_byte_array_new();
    put_hdr(l, 0, 0, "pc.ram", 1, 0);
    mp_put_be32(x, 0);
    put_entry(l, MP_BATCH_ZERO_RUN, 5, x, 4);
    expect_batch_error(l, "entry 0: zero run: run of 0 pages");

    g_autoptr(GByteArray) m = g_byte_array_new();
    put_hdr(m, 0, 0, "pc.ram", 1, 0);
    put_entry(m, MP_BATCH_ZERO_RUN, (guint64)1 << 50, x, 4);
    expect_batch_error(m, "page index 0x4000000000000 beyond 2^48");

    g_autoptr(GByteArray) n = g_byte_array_new();
    put_hdr(n, 0x80, 0, "pc.ram", 1, 0);
    expect_batch_error(n, "flags 0x80, expected 0 or 1");
}

/* One page several times in one batch: entries apply in order, so the
 * last version wins on the destination, and runs do not swallow it. */
Test(page_batch, same_page_twice_in_a_batch)
{
    MpBatchOpts o = {TRUE, TRUE, TRUE};
    g_autoptr(GByteArray) out = g_byte_array_new();
    g_autoptr(GRand) r = g_rand_new_with_seed(8);
    guint8 a[PS], b[PS], zero[PS] = {0};
    Pair p;

    pair_init(&p, &o, 1 << 20);
    page_gen(a, PS, PG_TEXT, r);
    memcpy(b, a, PS);
    b[17] ^= 0x40;
    /* pc.ram (id 2) starts zero at the peer */
    cr_assert(mp_batch_enc_add(p.enc, blocks[0], 5, a, out));    /* PAGE */
    cr_assert(mp_batch_enc_add(p.enc, blocks[0], 6, zero, out)); /* skip */
    cr_assert(mp_batch_enc_add(p.enc, blocks[0], 5, zero, out)); /* run */
    cr_assert(mp_batch_enc_add(p.enc, blocks[0], 6, zero, out)); /* +1 */
    cr_assert(mp_batch_enc_add(p.enc, blocks[0], 5, a, out));    /* PAGE */
    cr_assert(mp_batch_enc_add(p.enc, blocks[0], 5, b, out));    /* DELTA */
    cr_assert(mp_batch_enc_add(p.enc, blocks[0], 9, b, out));    /* DEDUP */
    cr_assert(mp_batch_enc_add(p.enc, blocks[0], 6, a, out));    /* PAGE */
    mp_batch_enc_flush(p.enc, out);
    cr_assert_eq(mp_be32(out->data + 4 + 5 + strlen(blocks[0])), 6,
                 "six entries");
    pair_deliver(&p, out);
    cr_assert_eq(memcmp(p.dst.ram[0] + 5 * PS, b, PS), 0);
    cr_assert_eq(memcmp(p.dst.ram[0] + 9 * PS, b, PS), 0);
    cr_assert_eq(memcmp(p.dst.ram[0] + 6 * PS, a, PS), 0);
    const MpBatchStats *s = mp_batch_enc_stats(p.enc);
    cr_assert_eq(s->skipped, 1);
    cr_assert_eq(s->zero_pages, 2);
    cr_assert_eq(s->delta_used, 1);
    cr_assert_eq(s->dedup_hits, 1);
    cr_assert_eq(s->raw.pages_in, 3);
    pair_clear(&p);
}

/* Two streams of one session (say multifd channels 0 and 1), each with
 * its own cache, share the session's zero tracker: a page sent as zero on
 * one, then with data on the other, then zero again on the first, is sent
 * again (a tracker per stream would skip it, and the destination would
 * keep the data). */
Test(page_batch, zero_tracker_shared_by_a_session)
{
    MpBatchOpts o = {TRUE, TRUE, TRUE};
    g_autoptr(MpZeroRuns) z = mp_zrun_new(PS);
    g_autoptr(MpPageCache) sc0 = mp_pcache_new(PS, 1 << 20);
    g_autoptr(MpPageCache) sc1 = mp_pcache_new(PS, 1 << 20);
    g_autoptr(MpPageCache) dc0 = mp_pcache_new(PS, 1 << 20);
    g_autoptr(MpPageCache) dc1 = mp_pcache_new(PS, 1 << 20);
    g_autoptr(MpBatchEnc) e0 = mp_batch_enc_new(PS, sc0, z, &o);
    g_autoptr(MpBatchEnc) e1 = mp_batch_enc_new(PS, sc1, z, &o);
    g_autoptr(MpBatchDec) d0 = mp_batch_dec_new(PS, dc0, 23);
    g_autoptr(MpBatchDec) d1 = mp_batch_dec_new(PS, dc1, 23);
    g_autoptr(GByteArray) out = g_byte_array_new();
    Image img = {{g_malloc0(NPAGES * PS), g_malloc0(NPAGES * PS)}, 0};
    guint8 zero[PS] = {0}, data[PS];
    MpBatchEnc *enc[2] = {e0, e1};
    MpBatchDec *dec[2] = {d0, d1};
    const int on[3] = {0, 1, 0};

    memset(data, 0x5a, PS);
    /* the streams number blocks differently (stream 1 saw vga.vram
     * first); the tracker has its own numbers, by name */
    cr_assert_eq(mp_pcache_block_id(sc1, blocks[1]), 0);
    cr_assert_eq(mp_zrun_declare_block(z, "other", NPAGES, FALSE), 0);
    cr_assert_eq(mp_zrun_declare_block(z, blocks[0], NPAGES, FALSE), 1);
    for (int step = 0; step < 3; step++) {
        int ch = on[step];
        g_autoptr(GError) err = NULL;
        cr_assert(mp_batch_enc_add(enc[ch], blocks[0], 7,
                                   step == 1 ? data : zero, out));
        mp_batch_enc_flush(enc[ch], out);
        cr_assert_gt(out->len, 4, "step %d sent nothing", step);
        cr_assert(mp_batch_decode(dec[ch], out->data + 4, out->len - 4, apply,
                                  &img, &err),
                  "%s", err ? err->message : "");
        g_byte_array_set_size(out, 0);
    }
    cr_assert_eq(memcmp(img.ram[0] + 7 * PS, zero, PS), 0);
    /* and once the destination holds it as zero, it is skipped (after
     * the batch's first page, which always goes: page-batch.h) */
    guint64 skipped = mp_batch_enc_stats(e1)->skipped;
    cr_assert(mp_batch_enc_add(e1, blocks[0], 3, data, out));
    cr_assert(mp_batch_enc_add(e1, blocks[0], 7, zero, out));
    cr_assert_eq(mp_batch_enc_stats(e1)->skipped, skipped + 1);
    g_free(img.ram[0]);
    g_free(img.ram[1]);
}

/* --- adaptive back-off of dedup and delta ----------------------------- */

/* Every page of both blocks into the pair, in one batch per block; both
 * caches are compared after each (pair_deliver). */
static guint64
send_all(Pair *p, guint8 *const src[2], GByteArray *out)
{
    for (int b = 0; b < 2; b++) {
        for (guint i = 0; i < NPAGES; i++)
            cr_assert(mp_batch_enc_add(p->enc, blocks[b], i, src[b] + i * PS,
                                       out));
        mp_batch_enc_flush(p->enc, out);
        pair_deliver(p, out);
    }
    return 2 * NPAGES;
}

/* Pages the destination holds in another version (one byte changed: a
 * delta) or under another key (a copy: a reference). */
static void
dirty_findable(guint8 *const src[2], int round)
{
    for (guint i = 0; i < NPAGES; i++) {
        if (i % 2)
            src[0][i * PS + (i * 7 + round) % PS] ^= 0x11;
        else
            memcpy(src[1] + i * PS, src[0] + ((i + round) % NPAGES) * PS,
                   PS);
    }
}

static void
assert_images(const Pair *p, guint8 *const src[2])
{
    for (int b = 0; b < 2; b++)
        cr_assert_eq(memcmp(src[b], p->dst.ram[b], NPAGES * PS), 0,
                     "block %d differs", b);
}

/* The decision rule, on numbers given, switches dedup and delta off and
 * back on: while off each tries one page in MP_BATCH_PROBE_EVERY (the
 * pages go whole instead), the hysteresis holds a marginal gain off, and
 * both caches stay identical throughout (pair_deliver compares their
 * digests after every batch) with the same memory at the end. */
Test(page_batch, adapt_switches_dedup_delta_same_caches)
{
    MpBatchOpts o = {TRUE, TRUE, TRUE};
    g_autoptr(GRand) r = g_rand_new_with_seed(21);
    guint8 *src[2] = {g_malloc0(NPAGES * PS), g_malloc0(NPAGES * PS)};
    g_autoptr(GByteArray) out = g_byte_array_new();
    Pair p;
    /* link unknown: the ratio alone decides; nothing saved, 5 % saved
     * (between the off and on gains), half saved */
    MpAdaptInput none = {.ratio = 1.0}, marginal = {.ratio = 0.95},
                 half = {.ratio = 0.5};
    /* a 100 Gbit/s link and an encoder at 1 GB/s: CPU-bound */
    MpAdaptInput fast = {.link_bps = 12.5e9, .enc_bps = 1e9,
                         .enc_workers = 1, .dec_workers = 1, .ratio = 0.5};

    pair_init(&p, &o, 4 << 20);
    for (int b = 0; b < 2; b++)
        for (guint i = 0; i < NPAGES; i++)
            page_gen(src[b] + i * PS, PS, i % 3 ? PG_TEXT : PG_POINTERS, r);
    const MpBatchStats *s = mp_batch_enc_stats(p.enc);
    cr_assert(s->dedup_on && s->delta_on);

    /* on: they find what there is */
    send_all(&p, src, out);
    dirty_findable(src, 1);
    send_all(&p, src, out);
    guint64 hits1 = s->dedup_hits, used1 = s->delta_used;
    cr_assert_gt(hits1, NPAGES / 4);
    cr_assert_gt(used1, NPAGES / 4);
    cr_assert_not(mp_batch_enc_adapt_with(p.enc, MP_BATCH_ENC_DEDUP, &half,
                                          "test"));
    cr_assert_not(mp_batch_enc_adapt_with(p.enc, MP_BATCH_ENC_DELTA,
                                          &marginal, "test"));

    /* off: dedup finds nothing, delta is CPU-bound */
    cr_assert(mp_batch_enc_adapt_with(p.enc, MP_BATCH_ENC_DEDUP, &none,
                                      "test"));
    cr_assert(mp_batch_enc_adapt_with(p.enc, MP_BATCH_ENC_DELTA, &fast,
                                      "test"));
    cr_assert_not(s->dedup_on || s->delta_on);
    guint64 tried_dd = s->dedup.pages_in, tried_dl = s->delta.pages_in;
    guint64 raw = s->raw.pages_in;
    dirty_findable(src, 2);
    guint64 sent = send_all(&p, src, out);
    /* probes only, and what they find */
    cr_assert_leq(s->dedup.pages_in - tried_dd,
                  sent / MP_BATCH_PROBE_EVERY + 1);
    cr_assert_leq(s->delta.pages_in - tried_dl,
                  sent / MP_BATCH_PROBE_EVERY + 1);
    cr_assert_gt(s->dedup.pages_in - tried_dd, 0, "no dedup probe");
    cr_assert_gt(s->delta.pages_in - tried_dl, 0, "no delta probe");
    cr_assert_lt(s->dedup_hits - hits1 + s->delta_used - used1,
                 sent / 4);
    cr_assert_gt(s->raw.pages_in - raw, sent / 2);
    assert_images(&p, src);
    /* hysteresis: a 5 % gain does not bring them back */
    cr_assert_not(mp_batch_enc_adapt_with(p.enc, MP_BATCH_ENC_DEDUP,
                                          &marginal, "test"));
    cr_assert_not(mp_batch_enc_adapt_with(p.enc, MP_BATCH_ENC_DELTA,
                                          &marginal, "test"));
    cr_assert_not(s->dedup_on || s->delta_on);

    /* back on: they find again */
    cr_assert(mp_batch_enc_adapt_with(p.enc, MP_BATCH_ENC_DEDUP, &half,
                                      "test"));
    cr_assert(mp_batch_enc_adapt_with(p.enc, MP_BATCH_ENC_DELTA, &half,
                                      "test"));
    cr_assert(s->dedup_on && s->delta_on);
    guint64 hits3 = s->dedup_hits, used3 = s->delta_used;
    dirty_findable(src, 3);
    send_all(&p, src, out);
    cr_assert_gt(s->dedup_hits - hits3, NPAGES / 4);
    cr_assert_gt(s->delta_used - used3, NPAGES / 4);
    assert_images(&p, src);
    cr_assert_eq(s->dedup_switches, 2);
    cr_assert_eq(s->delta_switches, 2);

    /* an encoder the options leave off never switches */
    MpBatchOpts no_dedup = {TRUE, TRUE, FALSE};
    mp_batch_enc_set_opts(p.enc, &no_dedup);
    cr_assert_not(mp_batch_enc_adapt_with(p.enc, MP_BATCH_ENC_DEDUP, &half,
                                          "test"));
    cr_assert_not(s->dedup_on);
    pair_clear(&p);
    g_free(src[0]);
    g_free(src[1]);
}

/* The same from what the encoders measured (mp_batch_enc_adapt(), the
 * link not known): on random pages that change every round dedup finds
 * nothing and no delta fits, so both go off; pages that repeat bring
 * them back through the probes.  The caches stay identical. */
Test(page_batch, adapt_measured_random_off_repeats_on)
{
    MpBatchOpts o = {TRUE, TRUE, TRUE};
    g_autoptr(GRand) r = g_rand_new_with_seed(22);
    guint8 *src[2] = {g_malloc0(NPAGES * PS), g_malloc0(NPAGES * PS)};
    g_autoptr(GByteArray) out = g_byte_array_new();
    Pair p;

    pair_init(&p, &o, 4 << 20);
    const MpBatchStats *s = mp_batch_enc_stats(p.enc);
    /* 3 rounds of 768 fresh random pages: 9 MiB tried by dedup, 6 MiB
     * (the rounds with a cached base) by delta, over the 4 MiB window */
    for (int round = 0; round < 3; round++) {
        for (int b = 0; b < 2; b++)
            for (guint i = 0; i < NPAGES; i++)
                page_gen(src[b] + i * PS, PS, PG_RANDOM, r);
        send_all(&p, src, out);
        if (round == 0)
            /* under the window: nothing decided yet */
            cr_assert_eq(mp_batch_enc_adapt(p.enc, 0, FALSE, "test"), 0);
    }
    cr_assert_eq(s->dedup_hits + s->delta_used, 0);
    cr_assert_eq(mp_batch_enc_adapt(p.enc, 0, FALSE, "test"), 2);
    cr_assert_not(s->dedup_on || s->delta_on);
    /* nothing more to decide on: they stay off */
    cr_assert_eq(mp_batch_enc_adapt(p.enc, 0, FALSE, "test"), 0);

    /* the guest settles: each round changes one byte of every page, so
     * a delta fits each, and a copy of a page sits in the other block */
    int rounds = 0;
    while ((!s->dedup_on || !s->delta_on) && rounds < 64) {
        for (guint i = 0; i < NPAGES; i++) {
            src[0][i * PS + (i + rounds) % PS] ^= 0x5a;
            memcpy(src[1] + i * PS, src[0] + i * PS, PS);
        }
        send_all(&p, src, out);
        mp_batch_enc_adapt(p.enc, 0, FALSE, "test");
        rounds++;
    }
    cr_assert(s->dedup_on && s->delta_on, "still off after %d rounds",
              rounds);
    /* a window of probes, 1 in 16, needed more than one round */
    cr_assert_gt(rounds, 4);
    assert_images(&p, src);
    cr_assert_eq(s->dedup_switches, 2);
    cr_assert_eq(s->delta_switches, 2);
    pair_clear(&p);
    g_free(src[0]);
    g_free(src[1]);
}
