/* test-page-codecs.c: the tunnel's page codecs one by one: delta, zero
 * runs, mirrored page cache, zstd with a shared window, and the decision
 * whether an encoder pays. */
#include "config.h"
#include <string.h>
#include <criterion/criterion.h>
#include "enc-adapt.h"
#include "page-cache.h"
#include "page-delta.h"
#include "page-gen.h"
#include "page-zstd.h"
#include "test-util.h"
#include "zero-runs.h"

#define PS 4096

/* --- delta ------------------------------------------------------------ */

static void
delta_round_trip(const guint8 *old, const guint8 *page, gboolean must_fit)
{
    guint8 d[PS * 2], out[PS];
    gssize n = mp_delta_encode(old, page, PS, d, sizeof(d));
    cr_assert(n >= 0);
    g_autoptr(GError) err = NULL;
    cr_assert(mp_delta_decode(old, d, (gsize)n, PS, out, &err), "%s",
              err ? err->message : "");
    cr_assert_eq(memcmp(out, page, PS), 0);
    if (must_fit)
        cr_assert_lt(n, PS / 4, "delta of %zd bytes", n);
    /* in place */
    guint8 inplace[PS];
    memcpy(inplace, old, PS);
    cr_assert(mp_delta_decode(inplace, d, (gsize)n, PS, inplace, NULL));
    cr_assert_eq(memcmp(inplace, page, PS), 0);
}

Test(delta, round_trip_every_kind_of_change)
{
    g_autoptr(GRand) r = g_rand_new_with_seed(1);
    guint8 old[PS], page[PS];

    for (int k = 0; k < PG__MAX; k++) {
        for (int i = 0; i < 50; i++) {
            page_gen(old, PS, (PageKind)k, r);
            memcpy(page, old, PS);
            /* a few changed words, at the ends too */
            int changes = g_rand_int_range(r, 0, 10);
            for (int c = 0; c < changes; c++)
                page[g_rand_int_range(r, 0, PS)] ^= 0x5a;
            page[0] ^= i & 1;
            page[PS - 1] ^= i & 2;
            delta_round_trip(old, page, TRUE);
            /* unrelated pages: correct, however long */
            page_gen(page, PS, (PageKind)g_rand_int_range(r, 0, PG__MAX), r);
            delta_round_trip(old, page, FALSE);
        }
    }
}

Test(delta, identical_is_empty_and_random_does_not_pay)
{
    g_autoptr(GRand) r = g_rand_new_with_seed(2);
    guint8 old[PS], page[PS], d[PS];
    page_gen(old, PS, PG_TEXT, r);
    cr_assert_eq(mp_delta_encode(old, old, PS, d, sizeof(d)), 0);
    page_gen(page, PS, PG_RANDOM, r);
    cr_assert_eq(mp_delta_encode(old, page, PS, d, PS * 3 / 4), -1);
}

static void
expect_delta_error(const guint8 *d, gsize n, const char *text)
{
    guint8 old[PS] = {0}, out[PS];
    g_autoptr(GError) err = NULL;
    cr_assert_not(mp_delta_decode(old, d, n, PS, out, &err));
    cr_assert(strstr(err->message, text), "%s", err->message);
}

Test(delta, hostile_deltas)
{
    const guint8 overlong[] = {0x80, 0x80, 0x80, 0x01, 1, 0};
    expect_delta_error(overlong, sizeof(overlong),
                       "delta: malformed length at delta offset 0 of 6");
    const guint8 cut[] = {0x05};
    expect_delta_error(cut, sizeof(cut), "malformed length at delta offset 0");
    const guint8 past_page[] = {0xff, 0x1f, 2, 1, 2}; /* skip 4095, 2 */
    expect_delta_error(past_page, sizeof(past_page),
                       "pair at delta offset 0 (skip 4095, 2 bytes) runs "
                       "past the 4096-byte page");
    const guint8 past_delta[] = {0, 5, 1, 2};
    expect_delta_error(past_delta, sizeof(past_delta),
                       "or the 4-byte delta");
    const guint8 empty_lit[] = {3, 0};
    expect_delta_error(empty_lit, sizeof(empty_lit), "(skip 3, 0 bytes)");
}

/* --- zero runs -------------------------------------------------------- */

Test(zero_runs, skip_extend_start)
{
    g_autoptr(MpZeroRuns) z = mp_zrun_new(PS);
    guint8 zero[PS] = {0}, data[PS] = {0};
    data[100] = 1;

    cr_assert_eq(mp_zrun_declare_block(z, "pc.ram", 100, TRUE), 0);
    cr_assert_eq(mp_zrun_declare_block(z, "vga.vram", 100, FALSE), 1);
    cr_assert_eq(mp_zrun_block_id(z, "vga.vram"), 1);
    cr_assert_eq(mp_zrun_block_id(z, "nope"), -1);
    /* block 0 starts zero at the peer: nothing to send */
    cr_assert_eq(mp_zrun_classify(z, 0, 5, zero, FALSE), MP_ZRUN_SKIP);
    /* block 1 does not: a run starts, then grows */
    cr_assert_eq(mp_zrun_classify(z, 1, 5, zero, FALSE), MP_ZRUN_START);
    cr_assert_eq(mp_zrun_classify(z, 1, 6, zero, TRUE), MP_ZRUN_EXTEND);
    /* now the peer holds 5 and 6 as zero */
    cr_assert(mp_zrun_peer_zero(z, 1, 6));
    cr_assert_eq(mp_zrun_classify(z, 1, 6, zero, FALSE), MP_ZRUN_SKIP);
    /* a page that is not zero is sent and clears the bit */
    cr_assert_eq(mp_zrun_classify(z, 1, 6, data, FALSE), MP_ZRUN_DATA);
    cr_assert_not(mp_zrun_peer_zero(z, 1, 6));
    cr_assert_eq(mp_zrun_classify(z, 0, 7, data, FALSE), MP_ZRUN_DATA);
    cr_assert_eq(mp_zrun_classify(z, 0, 7, zero, FALSE), MP_ZRUN_START);
    /* a peer-zero page inside an open run extends it for free */
    cr_assert_eq(mp_zrun_classify(z, 0, 8, zero, TRUE), MP_ZRUN_EXTEND);
    /* discard: no longer known zero */
    mp_zrun_forget(z, 0, 0, 10);
    cr_assert_not(mp_zrun_peer_zero(z, 0, 5));
    cr_assert(mp_zrun_peer_zero(z, 0, 10));
    /* unknown blocks and pages past the end are never assumed zero */
    cr_assert_eq(mp_zrun_classify(z, -1, 0, zero, FALSE), MP_ZRUN_START);
    cr_assert_not(mp_zrun_peer_zero(z, 0, 100));
    cr_assert_eq(mp_zrun_skipped(z), 2);
    cr_assert_eq(mp_zrun_runs(z), 3);
    cr_assert_eq(mp_zrun_zero_pages(z), 5);
    cr_assert_eq(mp_zrun_stats(z).pages_in, 9);
    cr_assert_eq(mp_zrun_stats(z).bytes_out, 3 * MP_ZRUN_WIRE_LEN);
}

Test(zero_runs, bitmap_edges)
{
    g_autoptr(MpZeroRuns) z = mp_zrun_new(PS);
    cr_assert_eq(mp_zrun_declare_block(z, "a", 65, TRUE), 0);
    cr_assert(mp_zrun_peer_zero(z, 0, 63));
    cr_assert(mp_zrun_peer_zero(z, 0, 64));
    cr_assert_not(mp_zrun_peer_zero(z, 0, 65));
    cr_assert_eq(mp_zrun_declare_block(z, "b", (guint64)1 << 33, FALSE), -1);
    cr_assert_eq(mp_zrun_declare_block(z, "c", 0, TRUE), 1);
    cr_assert_not(mp_zrun_peer_zero(z, 1, 0));
    /* declared again: same id, new bitmap */
    cr_assert_eq(mp_zrun_declare_block(z, "a", 65, FALSE), 0);
    cr_assert_not(mp_zrun_peer_zero(z, 0, 63));
}

Test(zero_runs, check_rejects_runs_outside_their_block)
{
    MpZeroRun ok = {0, 10, 90}, past = {3, 10, 91}, none = {0, 1, 0},
              wrap = {0, G_MAXUINT64 - 1, 5};
    g_autoptr(GError) err = NULL;
    cr_assert(mp_zrun_check(&ok, 100, NULL));
    cr_assert_not(mp_zrun_check(&past, 100, &err));
    cr_assert_str_eq(err->message,
                     "zero run: run of 91 pages from page 10 in block 3, "
                     "expected 1 or more pages inside its 100 pages");
    cr_assert_not(mp_zrun_check(&none, 100, NULL));
    cr_assert_not(mp_zrun_check(&wrap, 0, NULL));
}

/* --- page cache ------------------------------------------------------- */

Test(page_cache, lru_within_budget)
{
    g_autoptr(MpPageCache) c = mp_pcache_new(PS, 3 * PS);
    guint8 p[PS];
    for (int i = 0; i < 4; i++) {
        memset(p, i + 1, PS);
        mp_pcache_put(c, (MpPageKey){0, (guint64)i}, p);
        if (i == 1) /* page 0 used again: page 1 is now the oldest */
            cr_assert_not_null(mp_pcache_get(c, (MpPageKey){0, 0}));
    }
    cr_assert_eq(mp_pcache_pages(c), 3);
    cr_assert_eq(mp_pcache_evictions(c), 1);
    cr_assert_null(mp_pcache_get(c, (MpPageKey){0, 1}));
    const guint8 *g = mp_pcache_get(c, (MpPageKey){0, 0});
    cr_assert(g && g[0] == 1 && g[PS - 1] == 1);
    /* replacing keeps one entry */
    memset(p, 9, PS);
    mp_pcache_put(c, (MpPageKey){0, 3}, p);
    cr_assert_eq(mp_pcache_pages(c), 3);
    cr_assert_eq(mp_pcache_get(c, (MpPageKey){0, 3})[7], 9);
    mp_pcache_forget(c, (MpPageKey){0, 3});
    mp_pcache_forget(c, (MpPageKey){5, 5}); /* not there: nothing */
    cr_assert_eq(mp_pcache_pages(c), 2);
    cr_assert_eq(mp_pcache_capacity(c), 3);
}

/* The cached pages are guest memory: never in a core dump, and in huge
 * pages where the kernel has them (the first pass faults every page). */
Test(page_cache, pages_kept_out_of_core_dumps)
{
    g_autoptr(MpPageCache) c = mp_pcache_new(PS, 8 << 20);
    guint8 p[PS];
    memset(p, 5, PS);
    mp_pcache_put(c, (MpPageKey){0, 1}, p);
    const guint8 *held = mp_pcache_get(c, (MpPageKey){0, 1});
    cr_assert_not_null(held);
    g_autofree char *flags = tu_vm_flags(held);
    cr_assert(strstr(flags, " dd"), "MADV_DONTDUMP: VmFlags%s", flags);
    if (g_file_test("/sys/kernel/mm/transparent_hugepage/enabled",
                    G_FILE_TEST_EXISTS))
        cr_assert(strstr(flags, " hg"), "MADV_HUGEPAGE: VmFlags%s", flags);
}

Test(page_cache, dedup_finds_identical_bytes_only)
{
    g_autoptr(MpPageCache) c = mp_pcache_new(PS, 1 << 20);
    g_autoptr(GRand) r = g_rand_new_with_seed(3);
    guint8 a[PS], b[PS];
    MpPageKey k;
    page_gen(a, PS, PG_TEXT, r);
    memcpy(b, a, PS);
    b[4000] ^= 1;
    mp_pcache_put(c, (MpPageKey){1, 42}, a);
    cr_assert(mp_pcache_find(c, a, &k));
    cr_assert_eq(k.block, 1);
    cr_assert_eq(k.index, 42);
    cr_assert_not(mp_pcache_find(c, b, &k));
    /* the same content under two keys: the newest is found first */
    mp_pcache_put(c, (MpPageKey){0, 7}, a);
    cr_assert(mp_pcache_find(c, a, &k));
    cr_assert_eq(k.index, 7);
    mp_pcache_forget(c, (MpPageKey){0, 7});
    cr_assert(mp_pcache_find(c, a, &k));
    cr_assert_eq(k.index, 42);
    /* content changed under a key: the old content is gone */
    mp_pcache_put(c, (MpPageKey){1, 42}, b);
    cr_assert_not(mp_pcache_find(c, a, &k));
    cr_assert(mp_pcache_find(c, b, &k));
}

/* The same sequence of operations gives the same cache on both sides,
 * whatever the allocator does. */
Test(page_cache, mirrors_stay_identical)
{
    g_autoptr(MpPageCache) x = mp_pcache_new(PS, 64 * PS);
    g_autoptr(GRand) r = g_rand_new_with_seed(4);
    guint8 p[PS];
    /* allocate some garbage between the two so addresses differ */
    g_autofree guint8 *junk = g_malloc(12345);
    junk[0] = 1;
    g_autoptr(MpPageCache) y = mp_pcache_new(PS, 64 * PS);

    cr_assert_eq(mp_pcache_block_id(x, "pc.ram"), 0);
    cr_assert_eq(mp_pcache_block_id(x, "vga.vram"), 1);
    cr_assert_eq(mp_pcache_block_id(x, "pc.ram"), 0);
    cr_assert_eq(mp_pcache_block_id(y, "pc.ram"), 0);
    cr_assert_eq(mp_pcache_block_id(y, "vga.vram"), 1);
    for (int i = 0; i < 5000; i++) {
        MpPageKey k = {(guint16)g_rand_int_range(r, 0, 2),
                       (guint64)g_rand_int_range(r, 0, 200)};
        int op = g_rand_int_range(r, 0, 10);
        page_gen(p, PS, (PageKind)g_rand_int_range(r, 1, 3), r);
        if (op < 6) {
            mp_pcache_put(x, k, p);
            mp_pcache_put(y, k, p);
        } else if (op < 8) {
            cr_assert_eq(mp_pcache_get(x, k) != NULL,
                         mp_pcache_get(y, k) != NULL);
        } else if (op < 9) {
            mp_pcache_forget(x, k);
            mp_pcache_forget(y, k);
        } else {
            MpPageKey kx, ky;
            const guint8 *held = mp_pcache_get(x, k);
            (void)mp_pcache_get(y, k);
            if (held) {
                memcpy(p, held, PS);
                cr_assert(mp_pcache_find(x, p, &kx));
                cr_assert(mp_pcache_find(y, p, &ky));
                cr_assert_eq(kx.block, ky.block);
                cr_assert_eq(kx.index, ky.index);
            }
        }
        cr_assert_eq(mp_pcache_digest(x), mp_pcache_digest(y), "op %d", i);
    }
    cr_assert_gt(mp_pcache_evictions(x), 0);
    cr_assert_eq(mp_pcache_evictions(x), mp_pcache_evictions(y));
}

/* The destination's mirror keeps no content index (it never searches):
 * the same operations, a dedup hit on the source being a get of its key
 * on the destination (as the decoder does), give the same cache; the
 * source's hash given once (put_hashed, find_hashed) changes nothing. */
Test(page_cache, unsearched_mirror_stays_identical)
{
    g_autoptr(MpPageCache) x = mp_pcache_new(PS, 64 * PS);
    g_autoptr(MpPageCache) y = mp_pcache_new(PS, 64 * PS);
    g_autoptr(GRand) r = g_rand_new_with_seed(5);
    guint8 p[PS];
    MpPageKey k, found;

    mp_pcache_set_unsearched(y);
    mp_pcache_block_id(x, "pc.ram");
    mp_pcache_block_id(y, "pc.ram");
    for (int i = 0; i < 5000; i++) {
        k = (MpPageKey){0, (guint64)g_rand_int_range(r, 0, 200)};
        int op = g_rand_int_range(r, 0, 10);
        page_gen(p, PS, (PageKind)g_rand_int_range(r, 1, 3), r);
        if (op < 5) {
            guint64 h = mp_pcache_hash(x, p);
            if (mp_pcache_find_hashed(x, p, h, &found))
                cr_assert_not_null(mp_pcache_get(y, found));
            mp_pcache_put_hashed(x, k, p, h);
            mp_pcache_put(y, k, p);
        } else if (op < 7) {
            mp_pcache_put(x, k, p);
            mp_pcache_put(y, k, p);
        } else if (op < 8) {
            mp_pcache_forget(x, k);
            mp_pcache_forget(y, k);
        } else {
            const guint8 *held = mp_pcache_get(x, k);
            (void)mp_pcache_get(y, k);
            if (held) {
                memcpy(p, held, PS);
                cr_assert(mp_pcache_find(x, p, &found));
                cr_assert_not_null(mp_pcache_get(y, found));
                cr_assert_not(mp_pcache_find(y, p, &found));
            }
        }
        cr_assert_eq(mp_pcache_digest(x), mp_pcache_digest(y), "op %d", i);
    }
    cr_assert_gt(mp_pcache_evictions(x), 0);
    cr_assert_eq(mp_pcache_evictions(x), mp_pcache_evictions(y));
}

Test(page_cache, auto_size)
{
    guint64 mib = 1024 * 1024;
    cr_assert_eq(mp_pcache_auto_size(16 * mib), 16 * mib);
    cr_assert_eq(mp_pcache_auto_size(64 * mib), 32 * mib);
    cr_assert_eq(mp_pcache_auto_size(512 * mib), 128 * mib);
    cr_assert_eq(mp_pcache_auto_size(64 * 1024 * mib), 2048 * mib);
}

/* --- zstd ------------------------------------------------------------- */

Test(page_zstd, batches_share_a_window)
{
    g_autoptr(GRand) r = g_rand_new_with_seed(5);
    g_autoptr(MpCompEnc) e = mp_comp_enc_new(3, 23, NULL);
    g_autoptr(MpCompDec) d = mp_comp_dec_new(23, NULL);
    gsize n = 64 * PS;
    g_autofree guint8 *raw = g_malloc(n);
    g_autofree guint8 *out = g_malloc(n);
    for (gsize i = 0; i < n; i += PS)
        page_gen(raw + i, PS, (PageKind)((i / PS) % PG__MAX), r);

    g_autoptr(GByteArray) b1 = g_byte_array_new();
    g_autoptr(GByteArray) b2 = g_byte_array_new();
    gsize c1 = mp_comp_enc_batch(e, raw, n, b1);
    gsize c2 = mp_comp_enc_batch(e, raw, n, b2); /* the same pages again */
    cr_assert_gt(c1, 0);
    cr_assert_lt(c2 * 50, c1, "second batch %zu, first %zu", c2, c1);
    cr_assert(mp_comp_dec_batch(d, b1->data, b1->len, out, n, NULL));
    cr_assert_eq(memcmp(out, raw, n), 0);
    cr_assert(mp_comp_dec_batch(d, b2->data, b2->len, out, n, NULL));
    cr_assert_eq(memcmp(out, raw, n), 0);
    cr_assert_eq(mp_comp_enc_stats(e)->bytes_in, 2 * n);
    cr_assert_eq(mp_comp_enc_stats(e)->bytes_out, c1 + c2);
    cr_assert_eq(mp_comp_dec_stats(d)->bytes_out, 2 * n);
}

typedef struct {
    int level;
    gboolean small; /* match tables */
} ZstdStep;

/* One encoder takes a batch of mixed pages per step at the step's level
 * and tables, one decoder decodes each, never told: every batch gives its
 * bytes, and each change started one new frame.  @return the encoder. */
static MpCompEnc *
zstd_steps(const ZstdStep *steps, guint count, int start, guint32 seed)
{
    g_autoptr(GRand) r = g_rand_new_with_seed(seed);
    MpCompEnc *e = mp_comp_enc_new(start, 23, NULL);
    g_autoptr(MpCompDec) d = mp_comp_dec_new(23, NULL);
    gsize n = 32 * PS;
    g_autofree guint8 *raw = g_malloc(n);
    g_autofree guint8 *out = g_malloc(n);
    guint changes = 0;

    cr_assert_not(mp_comp_enc_small_tables(e));
    for (guint b = 0; b < count; b++) {
        for (gsize i = 0; i < n; i += PS)
            page_gen(raw + i, PS, (PageKind)((i / PS + b) % PG__MAX), r);
        if (steps[b].level != mp_comp_enc_level(e)
            || steps[b].small != mp_comp_enc_small_tables(e))
            changes++;
        mp_comp_enc_set_level(e, steps[b].level);
        mp_comp_enc_set_small_tables(e, steps[b].small);
        cr_assert_eq(mp_comp_enc_level(e), steps[b].level);
        cr_assert_eq(mp_comp_enc_small_tables(e), steps[b].small);
        g_autoptr(GByteArray) c = g_byte_array_new();
        cr_assert_gt(mp_comp_enc_batch(e, raw, n, c), 0);
        g_autoptr(GError) err = NULL;
        memset(out, 0xee, n);
        cr_assert(mp_comp_dec_batch(d, c->data, c->len, out, n, &err),
                  "batch %u at level %d: %s", b, steps[b].level,
                  err ? err->message : "");
        cr_assert_eq(memcmp(out, raw, n), 0, "batch %u", b);
    }
    cr_assert_eq(mp_comp_enc_frames(e), 1 + changes);
    return e;
}

/* The level changes between batches, up and down the ladder, as the
 * adaptive level does: every batch decodes to its bytes with the one
 * decoder, which is never told (each change starts a new frame). */
Test(page_zstd, level_changes_mid_stream)
{
    static const ZstdStep steps[] = {{3}, {3}, {6}, {-5}, {-5}, {1},
                                     {19}, {9}, {9}, {-1}, {3}};
    g_autoptr(MpCompEnc) e = zstd_steps(steps, G_N_ELEMENTS(steps), 3, 7);

    /* a change before any batch costs no frame */
    g_autoptr(GRand) r = g_rand_new_with_seed(7);
    gsize n = 32 * PS;
    g_autofree guint8 *raw = g_malloc(n);
    g_autofree guint8 *out = g_malloc(n);
    for (gsize i = 0; i < n; i += PS)
        page_gen(raw + i, PS, (PageKind)((i / PS) % PG__MAX), r);
    g_autoptr(MpCompEnc) f = mp_comp_enc_new(3, 23, NULL);
    mp_comp_enc_set_level(f, 9);
    g_autoptr(GByteArray) c = g_byte_array_new();
    mp_comp_enc_batch(f, raw, n, c);
    cr_assert_eq(mp_comp_enc_frames(f), 1);
    g_autoptr(MpCompDec) d2 = mp_comp_dec_new(23, NULL);
    cr_assert(mp_comp_dec_batch(d2, c->data, c->len, out, n, NULL));
    cr_assert_eq(memcmp(out, raw, n), 0);
}

/* The match tables switch between batches, with and without a level
 * change in the same batch: every batch decodes to its bytes with the one
 * decoder, each switch a new frame. */
Test(page_zstd, tables_change_mid_stream)
{
    static const ZstdStep steps[] = {{1, FALSE}, {1, TRUE},  {1, TRUE},
                                     {3, TRUE},  {3, FALSE}, {7, TRUE},
                                     {-1, TRUE}, {1, FALSE}};
    g_autoptr(MpCompEnc) e = zstd_steps(steps, G_N_ELEMENTS(steps), 1, 9);
    cr_assert_not(mp_comp_enc_small_tables(e));
}

/* Lines like the Linux guest's log-like text (samples/linux-guest, every
 * line its own random numbers), 64 KiB of them. */
static void
log_text(guint8 *p, gsize n, GRand *r)
{
    for (gsize i = 0; i < n;) {
        char line[128];
        int l = g_snprintf(line, sizeof line,
                           "[%10zu] mp-guest: task %5u wrote %u bytes to "
                           "inode %u ok\n",
                           i / 8, g_rand_int_range(r, 0, 65536),
                           g_rand_int_range(r, 0, 65536), g_rand_int(r));
        gsize k = MIN((gsize)l, n - i);
        memcpy(p + i, line, k);
        i += k;
    }
}

/* Small tables pay on log-like text and not on text from a word list, in
 * the stream and alone (the sampler), in the same direction: what the
 * tables' controller rests on (enc-adapt.h, MpTablesCtl). */
Test(page_zstd, small_tables_on_log_text)
{
    g_autoptr(GRand) r = g_rand_new_with_seed(10);
    gsize n = 64 * 65536;
    g_autofree guint8 *logs = g_malloc(n);
    g_autofree guint8 *words = g_malloc(n);
    log_text(logs, n, r);
    for (gsize i = 0; i < n; i += PS)
        page_gen(words + i, PS, PG_TEXT, r);

    struct {
        const guint8 *data;
        gsize stream[2], alone[2];
    } kinds[] = {{logs, {0}, {0}}, {words, {0}, {0}}};
    MpCompSampler *smp = mp_comp_sampler_new();
    for (guint k = 0; k < G_N_ELEMENTS(kinds); k++) {
        for (int small = 0; small < 2; small++) {
            g_autoptr(MpCompEnc) e = mp_comp_enc_new(1, 23, NULL);
            mp_comp_enc_set_small_tables(e, small);
            g_autoptr(GByteArray) c = g_byte_array_new();
            for (gsize at = 0; at < n; at += 65536) {
                mp_comp_enc_batch(e, kinds[k].data + at, 65536, c);
                kinds[k].alone[small] += mp_comp_sampler_size(
                    smp, kinds[k].data + at, 65536, 1, small);
            }
            kinds[k].stream[small] = c->len;
            cr_assert_eq(mp_comp_enc_frames(e), 1);
        }
    }
    mp_comp_sampler_free(smp);
    g_printerr("tables: logs stream %zu small / %zu full, alone %zu / %zu; "
               "words stream %zu / %zu, alone %zu / %zu\n",
               kinds[0].stream[1], kinds[0].stream[0], kinds[0].alone[1],
               kinds[0].alone[0], kinds[1].stream[1], kinds[1].stream[0],
               kinds[1].alone[1], kinds[1].alone[0]);
    /* logs: small tables at least MP_TABLES_GAIN better, both ways */
    cr_assert_lt(kinds[0].stream[1], kinds[0].stream[0] * 0.95);
    cr_assert_lt(kinds[0].alone[1], kinds[0].alone[0] * 0.95);
    /* words: worse, both ways */
    cr_assert_gt(kinds[1].stream[1], kinds[1].stream[0]);
    cr_assert_gt(kinds[1].alone[1], kinds[1].alone[0]);
}

/* With small tables level 3 parses greedily (page-zstd.h,
 * MP_COMP_SMALL_GREEDY_FROM): on log-like text it keeps less than level
 * 1, in the stream and alone, so the adaptive level's samples see a rung
 * above 1 that pays where the link is full; its output decodes. */
Test(page_zstd, small_tables_greedy_rung_on_log_text)
{
    g_autoptr(GRand) r = g_rand_new_with_seed(11);
    gsize n = 64 * 65536;
    g_autofree guint8 *logs = g_malloc(n);
    g_autofree guint8 *out = g_malloc(65536);
    log_text(logs, n, r);

    static const int levels[] = {1, 3};
    gsize stream[2], alone[2] = {0, 0};
    MpCompSampler *smp = mp_comp_sampler_new();
    for (guint l = 0; l < G_N_ELEMENTS(levels); l++) {
        g_autoptr(MpCompEnc) e = mp_comp_enc_new(levels[l], 23, NULL);
        g_autoptr(MpCompDec) d = mp_comp_dec_new(23, NULL);
        mp_comp_enc_set_small_tables(e, TRUE);
        stream[l] = 0;
        for (gsize at = 0; at < n; at += 65536) {
            g_autoptr(GByteArray) c = g_byte_array_new();
            mp_comp_enc_batch(e, logs + at, 65536, c);
            stream[l] += c->len;
            cr_assert(mp_comp_dec_batch(d, c->data, c->len, out, 65536, NULL));
            cr_assert_eq(memcmp(out, logs + at, 65536), 0);
            alone[l] += mp_comp_sampler_size(smp, logs + at, 65536,
                                             levels[l], TRUE);
        }
    }
    mp_comp_sampler_free(smp);
    g_printerr("small tables on logs: level 1 stream %zu alone %zu, level 3 "
               "stream %zu alone %zu\n",
               stream[0], alone[0], stream[1], alone[1]);
    /* more than MP_LEVEL_RATIO_GAIN (1 %) better: a rise the samples allow */
    cr_assert_lt(stream[1], stream[0] * 0.98);
    cr_assert_lt(alone[1], alone[0] * 0.98);
}

/* A warmed context (mp_comp_enc_warm(), as a worker does before its
 * first batch arrives) writes the bytes an unwarmed one does, and still
 * takes a level set before its first batch. */
Test(page_zstd, warm_writes_the_same_bytes)
{
    g_autoptr(GRand) r = g_rand_new_with_seed(8);
    gsize n = 48 * PS;
    g_autofree guint8 *raw = g_malloc(n);
    g_autofree guint8 *out = g_malloc(n);
    for (gsize i = 0; i < n; i += PS)
        page_gen(raw + i, PS, (PageKind)((i / PS) % PG__MAX), r);

    static const int levels[] = {1, 3, -1};
    for (guint l = 0; l < G_N_ELEMENTS(levels); l++) {
        g_autoptr(MpCompEnc) cold = mp_comp_enc_new(1, 23, NULL);
        g_autoptr(MpCompEnc) warm = mp_comp_enc_new(1, 23, NULL);
        mp_comp_enc_warm(warm);
        mp_comp_enc_warm(warm); /* twice: still nothing written */
        mp_comp_enc_set_level(cold, levels[l]);
        mp_comp_enc_set_level(warm, levels[l]);
        g_autoptr(MpCompDec) d = mp_comp_dec_new(23, NULL);
        for (guint k = 0; k < 3; k++) {
            g_autoptr(GByteArray) a = g_byte_array_new();
            g_autoptr(GByteArray) b = g_byte_array_new();
            gsize len = n - k * PS;
            mp_comp_enc_batch(cold, raw + k * PS, len, a);
            mp_comp_enc_batch(warm, raw + k * PS, len, b);
            mp_comp_enc_warm(warm); /* in a frame: no-op */
            cr_assert_eq(a->len, b->len, "level %d batch %u", levels[l], k);
            cr_assert_eq(memcmp(a->data, b->data, a->len), 0,
                         "level %d batch %u", levels[l], k);
            cr_assert(mp_comp_dec_batch(d, b->data, b->len, out, len, NULL));
            cr_assert_eq(memcmp(out, raw + k * PS, len), 0);
        }
        cr_assert_eq(mp_comp_enc_frames(warm), 1);
    }
}

static GByteArray *
one_batch(gsize n, guint window_log)
{
    g_autoptr(GRand) r = g_rand_new_with_seed(6);
    g_autoptr(MpCompEnc) e = mp_comp_enc_new(1, window_log, NULL);
    g_autofree guint8 *raw = g_malloc(n);
    for (gsize i = 0; i < n; i += PS)
        page_gen(raw + i, PS, PG_TEXT, r);
    GByteArray *b = g_byte_array_new();
    mp_comp_enc_batch(e, raw, n, b);
    return b;
}

static void
expect_zstd_error(const guint8 *in, gsize len, gsize raw_len, guint wlog,
                  const char *text)
{
    g_autoptr(MpCompDec) d = mp_comp_dec_new(wlog, NULL);
    g_autofree guint8 *out = g_malloc(raw_len + 1);
    g_autoptr(GError) err = NULL;
    cr_assert_not(mp_comp_dec_batch(d, in, len, out, raw_len, &err));
    cr_assert(strstr(err->message, text), "%s", err->message);
    /* the stream is lost: later batches fail too */
    g_autoptr(GError) err2 = NULL;
    cr_assert_not(mp_comp_dec_batch(d, in, len, out, raw_len, &err2));
    cr_assert(strstr(err2->message, "stream is lost"));
}

/* The level's sampler: the same bytes alone at two levels, sizes that
 * compare; random bytes do not shrink; the context is reused. */
Test(page_zstd, sampler_compares_levels)
{
    g_autofree guint8 *text = g_malloc(65536);
    g_autofree guint8 *rnd = g_malloc(65536);
    g_autoptr(GRand) r = g_rand_new_with_seed(7);
    for (gsize i = 0; i < 65536;) {
        int n = g_snprintf((char *)text + i, 65536 - i,
                           "[%10zu] task %5u wrote %u bytes ok\n", i,
                           g_rand_int_range(r, 0, 65536),
                           g_rand_int_range(r, 0, 65536));
        i += MIN((gsize)n, 65536 - i);
    }
    for (gsize i = 0; i < 65536; i++)
        rnd[i] = (guint8)g_rand_int(r);
    MpCompSampler *smp = mp_comp_sampler_new();
    gsize t3 = mp_comp_sampler_size(smp, text, 65536, 3, FALSE);
    gsize t1 = mp_comp_sampler_size(smp, text, 65536, 1, FALSE);
    gsize r3 = mp_comp_sampler_size(smp, rnd, 65536, 3, FALSE);
    cr_assert(t3 > 0 && t3 < 65536 / 2, "%zu", t3);
    cr_assert(t1 > 0 && t1 < 65536 / 2, "%zu", t1);
    cr_assert_geq(r3, 65536);
    cr_assert_eq(mp_comp_sampler_size(smp, text, 65536, 3, FALSE), t3);
    /* the tables' settings do not stick to the context */
    cr_assert_neq(mp_comp_sampler_size(smp, text, 65536, 3, TRUE), t3);
    cr_assert_eq(mp_comp_sampler_size(smp, text, 65536, 3, FALSE), t3);
    mp_comp_sampler_free(smp);
    mp_comp_sampler_free(NULL);
}

Test(page_zstd, hostile_batches)
{
    g_autoptr(GByteArray) b = one_batch(16 * PS, 23);
    expect_zstd_error(b->data, b->len, 16 * PS - 1, 23,
                      "gives more than 65535 bytes, expected 65535");
    expect_zstd_error(b->data, b->len, 16 * PS + 1, 23,
                      "gives 65536 bytes, expected 65537");
    expect_zstd_error(b->data, b->len / 2, 16 * PS, 23, "expected 65536");
    g_autoptr(GByteArray) c = g_byte_array_new();
    g_byte_array_append(c, b->data, b->len);
    for (guint i = 4; i < c->len; i += 7)
        c->data[i] ^= 0xa5;
    expect_zstd_error(c->data, c->len, 16 * PS, 23, "zstd: batch of");
    const guint8 junk[] = "this is not zstd at all";
    expect_zstd_error(junk, sizeof(junk), 100, 23, "zstd: batch of 24 bytes");
    /* a window above the decoder's bound is refused, not allocated */
    g_autoptr(GByteArray) w = one_batch(4 << 20, 27);
    expect_zstd_error(w->data, w->len, 4 << 20, 20, "zstd: batch of");
}

Test(page_zstd, parameters_checked)
{
    g_autoptr(GError) err = NULL;
    cr_assert_null(mp_comp_enc_new(0, 23, &err));
    cr_assert(strstr(err->message, "level 0, window log 23"));
    cr_assert_null(mp_comp_enc_new(3, 31, NULL));
    cr_assert_null(mp_comp_dec_new(9, NULL));
    g_autoptr(MpCompEnc) fast = mp_comp_enc_new(-5, 20, NULL);
    cr_assert_not_null(fast);
}

/* --- adaptive decision ------------------------------------------------ */

static MpAdaptVerdict
decide(double link, double enc, double ratio, guint workers, gboolean on)
{
    MpAdaptInput in = {.link_bps = link, .enc_bps = enc, .ratio = ratio,
                       .enc_workers = workers, .dec_workers = 1};
    return mp_adapt_decide(&in, on);
}

Test(adapt, decisions)
{
    double mb = 1e6;
    /* 100 Mbit/s, zstd at 60 MB/s, pages to a third: pays */
    MpAdaptVerdict v = decide(12.5 * mb, 60 * mb, 0.33, 1, FALSE);
    cr_assert(v.use);
    cr_assert_float_eq(v.gain, 0.67, 1e-9);
    cr_assert_str_eq(v.why, "saves link time");
    /* 10 Gbit/s link, one 300 MB/s worker: CPU-bound, slower than direct */
    v = decide(1250 * mb, 300 * mb, 0.33, 1, TRUE);
    cr_assert_not(v.use);
    cr_assert_lt(v.gain, 0);
    cr_assert_str_eq(v.why, "CPU-bound: the link is faster than the encoder");
    /* the same with 8 workers: 2400 MB/s of encoding, link-bound again */
    v = decide(1250 * mb, 300 * mb, 0.33, 8, FALSE);
    cr_assert(v.use);
    /* random pages: ratio 1.0 never pays where the encoder's CPU counts
     * (1 Gbit/s, 2 workers: 4.8 times the link) */
    v = decide(125 * mb, 300 * mb, 1.0, 2, TRUE);
    cr_assert_not(v.use);
    cr_assert_str_eq(v.why, "pages do not compress enough");
    /* at a link the encoder outruns 8 times over they cost nothing: on,
     * so that compressible pages among them are not sent whole */
    v = decide(12.5 * mb, 300 * mb, 1.0, 4, TRUE);
    cr_assert(v.use);
    cr_assert_str_eq(v.why, "the link is slow: it costs no time there");
    cr_assert(decide(12.5 * mb, 300 * mb, 0.999, 1, FALSE).use);
    cr_assert(decide(12.5 * mb, 300 * mb, 0.95, 1, FALSE).use);
    /* not where the encoder's queue delays a waiting guest */
    MpAdaptInput pc = {.link_bps = 12.5 * mb, .enc_bps = 300 * mb,
                       .ratio = 1.0, .enc_workers = 4, .dec_workers = 1,
                       .latency_bound = TRUE};
    cr_assert_not(mp_adapt_decide(&pc, TRUE).use);
    /* unless they grow */
    v = decide(12.5 * mb, 300 * mb, 1.02, 4, TRUE);
    cr_assert_not(v.use);
    cr_assert_str_eq(v.why, "pages grow");
    /* just under 8 times: the gain decides */
    cr_assert_not(decide(12.5 * mb, 99 * mb, 1.0, 1, TRUE).use);
    /* hysteresis: a 5% gain keeps an encoder on but does not start one */
    cr_assert(decide(100 * mb, 300 * mb, 0.95, 1, TRUE).use);
    cr_assert_not(decide(100 * mb, 300 * mb, 0.95, 1, FALSE).use);
    /* no ratio: unchanged */
    cr_assert_not(decide(12.5 * mb, 300 * mb, 0, 1, FALSE).use);
    cr_assert(decide(12.5 * mb, 300 * mb, 0, 1, TRUE).use);
    /* a ratio but no link rate: decided on the best case, 1 - ratio */
    cr_assert(decide(0, 300 * mb, 0.5, 1, TRUE).use);
    cr_assert_str_eq(decide(0, 300 * mb, 0.5, 1, TRUE).why,
                     "link not measured: unchanged");
    cr_assert(decide(12.5 * mb, 0, 0.5, 1, FALSE).use);
    cr_assert_str_eq(decide(0, 0, 0.5, 1, FALSE).why, "pages compress again");
    /* random pages, link never measured (bench-pair 1gbit rand): off */
    v = decide(0, 300 * mb, 0.9995, 2, TRUE);
    cr_assert_not(v.use);
    cr_assert_str_eq(v.why, "pages do not compress enough");
    /* the same hysteresis as with a link */
    cr_assert(decide(0, 0, 0.95, 1, TRUE).use);
    cr_assert_not(decide(0, 0, 0.95, 1, FALSE).use);
    /* a slow decoder at the peer limits too */
    MpAdaptInput in = {.link_bps = 1250 * mb, .enc_bps = 4000 * mb,
                       .dec_bps = 500 * mb, .enc_workers = 1,
                       .dec_workers = 1, .ratio = 0.2};
    cr_assert_not(mp_adapt_decide(&in, TRUE).use);
}

/* --- adaptive zstd level ---------------------------------------------- */

static int
level_feed(MpLevelCtl *c, double t0, guint n, double link, double out,
           double busy, double enc, double ratio)
{
    const char *why = NULL;
    int moved = 0;
    for (guint i = 0; i < n; i++) {
        MpLevelSample s = {.link_bps = link, .out_bps = out, .busy = busy,
                           .enc_bps = enc, .ratio = ratio};
        moved += mp_level_ctl_update(c, &s, t0 + i, &why);
        cr_assert_not_null(why);
    }
    return moved;
}

Test(level, ladder)
{
    cr_assert_eq(mp_level_rung_level(0), -5);
    cr_assert_eq(mp_level_rung_level(mp_level_rung_of(3)), 3);
    cr_assert_eq(mp_level_rung_level(mp_level_rung_of(4)), 7);
    cr_assert_eq(mp_level_rung_level(mp_level_rung_of(99)), 11);
    cr_assert_eq(mp_level_rung_level(99), 11);
}

Test(level, rises_when_link_bound)
{
    MpLevelCtl c;
    mp_level_ctl_init(&c, 3);
    /* 100 Mbit/s full, workers 20 % busy: two windows are not enough
     * for a rise (MP_LEVEL_AGREE_UP) */
    cr_assert_eq(level_feed(&c, 0, 2, 12.5e6, 12.4e6, 0.2, 130e6, 0.236), 0);
    cr_assert_eq(level_feed(&c, 2, 1, 12.5e6, 12.4e6, 0.2, 130e6, 0.236), 1);
    cr_assert_eq(mp_level_ctl_level(&c), 7);
    /* not again right away (three windows, the dwell), then on */
    cr_assert_eq(level_feed(&c, 3, 2, 12.5e6, 12.4e6, 0.2, 130e6, 0.236), 0);
    cr_assert_eq(level_feed(&c, 5, 1, 12.5e6, 12.4e6, 0.2, 40e6, 0.224), 1);
    cr_assert_eq(mp_level_ctl_level(&c), 9);
    /* at 9 the workers are 60 % busy: 11 would need more than they have */
    cr_assert_eq(level_feed(&c, 10, 10, 12.5e6, 12.4e6, 0.6, 26e6, 0.22), 0);
    cr_assert_eq(mp_level_ctl_level(&c), 9);
}

/* Random pages at a full 100 Mbit/s link: the prior table (text) says
 * level 7 compresses better, so the controller tries it once; measured
 * no better there and dearer, it goes back to 3 and stays. */
Test(level, random_pages_stay_low)
{
    MpLevelCtl c;
    mp_level_ctl_init(&c, 3);
    int moves = 0;
    for (guint t = 0; t < 60; t++) {
        double enc = mp_level_ctl_level(&c) == 3 ? 300e6 : 90e6;
        moves += level_feed(&c, t, 1, 12.5e6, 12.4e6, 0.1, enc, 0.999);
        cr_assert_leq(mp_level_ctl_level(&c), 7, "t=%u", t);
    }
    cr_assert_eq(mp_level_ctl_level(&c), 3);
    cr_assert_eq(c.moves, 2);
    cr_assert_eq(moves, 0); /* one up, one down */
}

Test(level, falls_when_cpu_bound)
{
    MpLevelCtl c;
    mp_level_ctl_init(&c, 3);
    /* the link not measured, the workers 50 % busy: early on the link
     * may be full and not measured yet, so it holds; later the link
     * never held the stream back: less CPU */
    cr_assert_eq(level_feed(&c, 0, 7, 0, 20e6, 0.5, 130e6, 0.236), 0);
    mp_level_ctl_init(&c, 3);
    cr_assert_eq(level_feed(&c, 8, 2, 0, 20e6, 0.5, 130e6, 0.236), -1);
    cr_assert_eq(mp_level_ctl_level(&c), 1);
    /* batches wait for workers, link not measured (never held us) */
    mp_level_ctl_init(&c, 3);
    cr_assert_eq(level_feed(&c, 0, 2, 0, 20e6, 0.95, 60e6, 0.24), -1);
    cr_assert_eq(mp_level_ctl_level(&c), 1);
    /* the same with a measured link that has room */
    cr_assert_eq(level_feed(&c, 4, 2, 125e6, 20e6, 0.9, 80e6, 0.25), -1);
    cr_assert_eq(mp_level_ctl_level(&c), -1);
    cr_assert_eq(level_feed(&c, 8, 2, 125e6, 20e6, 0.9, 80e6, 0.26), -1);
    cr_assert_eq(mp_level_ctl_level(&c), -5);
    /* the bottom: zstd off is the on/off decision's */
    cr_assert_eq(level_feed(&c, 12, 5, 125e6, 20e6, 0.9, 80e6, 0.27), 0);
    /* a lower level measured slower (text: -1 slower than 1): back up,
     * and then not down again */
    mp_level_ctl_init(&c, 1);
    cr_assert_eq(level_feed(&c, 0, 2, 0, 40e6, 0.9, 170e6, 0.246), -1);
    cr_assert_eq(mp_level_ctl_level(&c), -1);
    cr_assert_eq(level_feed(&c, 4, 3, 0, 40e6, 0.9, 140e6, 0.26), 1);
    cr_assert_eq(mp_level_ctl_level(&c), 1);
    cr_assert_eq(level_feed(&c, 8, 20, 0, 40e6, 0.9, 170e6, 0.246), 0);
    cr_assert_eq(mp_level_ctl_level(&c), 1);
    /* the link has room and the workers spend: a cheaper rung */
    mp_level_ctl_init(&c, 7);
    cr_assert_eq(level_feed(&c, 0, 2, 125e6, 15e6, 0.4, 40e6, 0.224), -1);
    cr_assert_eq(mp_level_ctl_level(&c), 3);
}

/* A rise that slows QEMU's stream (the CPU they share) is undone, and
 * the level does not rise again at once. */
Test(level, undoes_a_rise_that_slows_the_stream)
{
    MpLevelCtl c;
    const char *why;
    mp_level_ctl_init(&c, 3);
    MpLevelSample s = {.link_bps = 12.5e6, .out_bps = 12.4e6, .busy = 0.15,
                       .in_bps = 53e6, .enc_bps = 130e6, .ratio = 0.235};
    cr_assert_eq(mp_level_ctl_update(&c, &s, 0, &why), 0);
    cr_assert_eq(mp_level_ctl_update(&c, &s, 1, &why), 0);
    cr_assert_eq(mp_level_ctl_update(&c, &s, 2, &why), 1);
    cr_assert_eq(mp_level_ctl_level(&c), 7);
    /* at 7 the stream falls to 40 MB/s, the link to 70 % */
    MpLevelSample slow = {.link_bps = 12.5e6, .out_bps = 8.9e6, .busy = 0.6,
                          .in_bps = 40e6, .enc_bps = 40e6, .ratio = 0.224};
    cr_assert_eq(mp_level_ctl_update(&c, &slow, 3, &why), 0);
    cr_assert_eq(mp_level_ctl_update(&c, &slow, 4, &why), -1);
    cr_assert_str_eq(why, "the stream slowed after the last rise: QEMU "
                          "needs the CPU");
    cr_assert_eq(mp_level_ctl_level(&c), 3);
    /* link-bound again at 3: the rise waits out its back-off */
    for (guint t = 5; t < 12; t++)
        cr_assert_eq(mp_level_ctl_update(&c, &s, t, &why), 0);
    cr_assert_eq(mp_level_ctl_level(&c), 3);
}

/* The rung below is taken where the sampled batches (alone at both
 * levels) say it compresses as well.  On
 * log-like text (digits) level 1 compresses better than 3, on binaries
 * worse; where the pages change, the samples take it back.
 * The tables are measured (zstd 1.5, 64 KiB: streaming with the pair's
 * settings, and alone). */
static int
level_probe_run2(const double ratio_at[MP_LEVEL_RUNGS],
                 const double alone_at[MP_LEVEL_RUNGS],
                 const double alone_later[MP_LEVEL_RUNGS], double busy)
{
    MpLevelCtl c;
    const char *why;
    mp_level_ctl_init(&c, 3);
    for (guint t = 0; t < 60; t++) {
        guint k = c.rung;
        const double *a = t < 30 ? alone_at : alone_later;
        MpLevelSample smp = {
            .link_bps = 12.5e6, .out_bps = 12.4e6, .busy = busy,
            .enc_bps = 130e6, .ratio = ratio_at[k],
            .below_rel = k && a ? a[k - 1] / a[k] : 0,
            .above_rel = k + 1 < MP_LEVEL_RUNGS && a ? a[k + 1] / a[k] : 0};
        mp_level_ctl_update(&c, &smp, t, &why);
    }
    return mp_level_ctl_level(&c) * 100 + (int)c.moves;
}

static int
level_probe_run(const double ratio_at[MP_LEVEL_RUNGS],
                const double alone_at[MP_LEVEL_RUNGS], double busy)
{
    return level_probe_run2(ratio_at, alone_at, alone_at, busy);
}

Test(level, down_where_below_compresses_as_well)
{
    /* -5, -1, 1, 3, 7, 9, 11 */
    static const double text[] = {0.4, 0.325, 0.216, 0.239, 0.221, 0.22, 0.2};
    static const double text_alone[] = {0.382, 0.330, 0.208, 0.219,
                                        0.218, 0.217, 0.217};
    static const double bin[] = {0.5, 0.414, 0.368, 0.326, 0.293, 0.286, 0.28};
    static const double bin_alone[] = {0.581, 0.455, 0.409, 0.390,
                                       0.365, 0.364, 0.364};
    static const double same[] = {0.236, 0.236, 0.236, 0.236,
                                  0.236, 0.236, 0.236};
    /* text: 3 -> 1, and there -1 samples worse: 1, one move */
    cr_assert_eq(level_probe_run(text, text_alone, 0.9), 1 * 100 + 1);
    /* binaries: 1 samples worse: 3 holds */
    cr_assert_eq(level_probe_run(bin, bin_alone, 0.9), 3 * 100 + 0);
    /* pages that change: text, then binaries: 3 -> 1, back to 3 */
    cr_assert_eq(level_probe_run2(text, text_alone, bin_alone, 0.9),
                 3 * 100 + 2);
    /* the stream's ratio at a rung does not take it back (its pages
     * differ from the last rung's): only the samples do */
    cr_assert_eq(level_probe_run(bin, text_alone, 0.9), 1 * 100 + 1);
    /* no worse all the way down: to the cheapest, 1 (-1 costs more than
     * 1 on text, in the prior table) */
    cr_assert_eq(level_probe_run(same, same, 0.9), 1 * 100 + 1);
    /* whatever the workers' share */
    cr_assert_eq(level_probe_run(text, text_alone, 0.3), 1 * 100 + 1);
    cr_assert_eq(level_probe_run(bin, bin_alone, 0.3), 3 * 100 + 0);
    /* no samples: the rule does not apply (a link full, workers busy) */
    cr_assert_eq(level_probe_run(text, NULL, 0.9), 3 * 100 + 0);
}

/* The Linux guest's first seconds (docs/benchmarks.md, "A rise needs a
 * third window"): two windows of pages where the samples say 3
 * compresses 5 to 11 % better than 1, then text where it compresses 5 %
 * worse.  The level stays at 1; where such pages last (`comp`: 0.958,
 * window after window), it rises once the average agrees. */
Test(level, a_short_region_does_not_raise_it)
{
    MpLevelCtl c;
    const char *why;
    mp_level_ctl_init(&c, 1);
    static const double above[] = {0.889, 0.954, 1.053, 1.097, 1.053,
                                   0.908, 0.95, 1.052, 1.05, 1.05};
    for (guint t = 0; t < G_N_ELEMENTS(above); t++) {
        MpLevelSample smp = {.link_bps = 11.9e6, .out_bps = 11.9e6,
                             .busy = 0.2, .in_bps = 53e6, .enc_bps = 190e6,
                             .ratio = 0.217, .above_rel = above[t]};
        cr_assert_eq(mp_level_ctl_update(&c, &smp, t, &why), 0, "t=%u: %s",
                     t, why);
    }
    cr_assert_eq(mp_level_ctl_level(&c), 1);
    for (guint t = 10; t < 14; t++) {
        MpLevelSample smp = {.link_bps = 11.9e6, .out_bps = 11.9e6,
                             .busy = 0.2, .in_bps = 53e6, .enc_bps = 190e6,
                             .ratio = 0.246, .above_rel = 0.958};
        mp_level_ctl_update(&c, &smp, t, &why);
    }
    cr_assert_eq(mp_level_ctl_level(&c), 3, "%s", why);
}

Test(level, holds_in_between)
{
    MpLevelCtl c;
    mp_level_ctl_init(&c, 3);
    /* the link 70 % full, workers half busy: nothing calls for a move */
    cr_assert_eq(level_feed(&c, 0, 30, 12.5e6, 8.8e6, 0.5, 130e6, 0.236), 0);
    /* link full but the next level would not fit */
    cr_assert_eq(level_feed(&c, 60, 30, 12.5e6, 12.4e6, 0.3, 130e6, 0.236),
                 0);
    cr_assert_eq(mp_level_ctl_level(&c), 3);
    /* windows that disagree never move it */
    for (guint i = 0; i < 40; i++)
        level_feed(&c, 100 + i, 1, 12.5e6, i % 2 ? 12.4e6 : 3e6,
                   i % 2 ? 0.1 : 0.95, 130e6, 0.236);
    cr_assert_eq(mp_level_ctl_level(&c), 3);
    cr_assert_eq(c.moves, 0);
}

/* A simulated pair: a link, two workers on `cores` of CPU (their wall
 * time stretches when they get less than a core each), QEMU sending at
 * most `qemu` bytes/s; the rungs' cost and ratio as measured on text
 * pages.  Whatever the noise, the level settles: few moves, no swing. */
static guint
simulate(double link, double cores, double qemu, guint seed, int *level)
{
    static const double cost3 = 1 / 130e6;
    static const double cost[] = {0.8, 0.8, 0.7, 1.0, 3.3, 5.3, 12};
    static const double ratio[] = {0.27,  0.26, 0.244, 0.235,
                                   0.224, 0.22, 0.204};
    g_autoptr(GRand) r = g_rand_new_with_seed(seed);
    MpLevelCtl c;
    const char *why;
    mp_level_ctl_init(&c, 3);
    for (guint t = 0; t < 200; t++) {
        guint k = c.rung;
        double per_byte = cost3 * cost[k];
        double s = MIN(MIN(link / ratio[k], cores / per_byte), qemu);
        double noise = g_rand_double_range(r, 0.85, 1.15);
        MpLevelSample smp = {
            .link_bps = link,
            .out_bps = MIN(s * ratio[k] * noise, link),
            .in_bps = s * noise,
            .busy = MIN(s * per_byte / MIN(cores, 2)
                            * g_rand_double_range(r, 0.85, 1.15),
                        1),
            .enc_bps = 1 / per_byte * g_rand_double_range(r, 0.9, 1.1),
            .ratio = ratio[k] * g_rand_double_range(r, 0.97, 1.03),
        };
        mp_level_ctl_update(&c, &smp, t, &why);
    }
    *level = mp_level_ctl_level(&c);
    return c.moves;
}

Test(level, settles_on_noise)
{
    for (guint seed = 1; seed <= 20; seed++) {
        int level;
        /* 100 Mbit/s, two cores free: the link limits, 7 keeps it full
         * (56 MB/s of stream against 53 at 3), 9 would not */
        guint moves = simulate(12.5e6, 2.0, 200e6, seed, &level);
        cr_assert_leq(moves, 8, "seed %u: %u moves", seed, moves);
        cr_assert_eq(level, 7, "seed %u: level %d", seed, level);
        /* one core: 7 would slow the stream (39 MB/s): 3 stays */
        moves = simulate(12.5e6, 1.0, 200e6, seed, &level);
        cr_assert_leq(moves, 8, "seed %u: %u moves", seed, moves);
        cr_assert_eq(level, 3, "seed %u: level %d", seed, level);
        /* 1 Gbit/s, half a core: the CPU limits, the level goes down */
        moves = simulate(125e6, 0.5, 200e6, seed, &level);
        cr_assert_leq(moves, 8, "seed %u: %u moves", seed, moves);
        cr_assert_leq(level, 1, "seed %u: level %d", seed, level);
    }
}

/* The tables' controller: switches on one window whose samples say the
 * other tables compress at least MP_TABLES_GAIN better, on no fewer than
 * MP_TABLES_MIN_SAMPLES batches, and back the same way. */
Test(tables, switch_on_clear_gains)
{
    MpTablesCtl c;
    const char *why = NULL;
    mp_tables_ctl_init(&c);
    cr_assert_not(c.small);
    /* too few samples, however clear */
    cr_assert_not(mp_tables_ctl_update(&c, MP_TABLES_MIN_SAMPLES - 1,
                                       100000, 50000, &why));
    cr_assert(strstr(why, "few"), "%s", why);
    cr_assert_not(mp_tables_ctl_update(&c, 6, 0, 0, &why));
    /* random pages: the same either way */
    cr_assert_not(mp_tables_ctl_update(&c, 6, 393216, 393300, &why));
    /* 4 % better: not worth a new frame */
    cr_assert_not(mp_tables_ctl_update(&c, 6, 100000, 96000, &why));
    cr_assert_not(c.small);
    /* log-like text: 15 % better with small tables (now: full) */
    cr_assert(mp_tables_ctl_update(&c, 6, 82000, 69500, &why));
    cr_assert(c.small);
    cr_assert(strstr(why, "small tables"), "%s", why);
    /* still text: small stays (now: small, other: full) */
    cr_assert_not(mp_tables_ctl_update(&c, 6, 69500, 82000, &why));
    /* word lists: 20 % worse small: back */
    cr_assert(mp_tables_ctl_update(&c, 6, 103000, 82000, &why));
    cr_assert_not(c.small);
    cr_assert(strstr(why, "own tables"), "%s", why);
    cr_assert_eq(c.switches, 2);
}
