/* test-filters.c: the channel pipeline and the zero-page stage on real
 * streams.
 *
 * QEMU never sends an all-zero PAGE when it detects zero pages, so a
 * captured stream is first "inflated": a test filter turns every ZERO
 * record into a PAGE of 4096 zero bytes (the form QEMU 9.0+ sends with
 * zero-page-detection=none).  The zero stage must turn the inflated stream
 * back into the captured one byte for byte, however the bytes are split. */
#include "config.h"
#include <criterion/criterion.h>
#include <string.h>
#include "filter-zero.h"
#include "parse-common.h"
#include "pipeline.h"
#include "stage-util.h"

/* `in` through a pipeline with `stage` in `chunk`-byte pieces, the parser
 * stopped after `stop_following_at` (G_MAXUINT64: never).  @return the
 * output; *inserted (may be NULL): of it, the bytes beside the input. */
static GByteArray *
edit_ex(const GByteArray *in, MpStage *stage, gsize chunk,
        guint64 stop_following_at, gboolean in_place, gsize hold_limit,
        guint64 *inserted)
{
    StageUtilRun opt = {
        .chunk = chunk,
        .in_place = in_place,
        .hold_limit = hold_limit,
        .stop_following_at =
            stop_following_at == G_MAXUINT64 ? 0 : stop_following_at,
    };
    StageUtilSink s;
    GByteArray *out = stage_util_run(in, stage, &opt, &s);
    if (inserted)
        *inserted = s.inserted;
    return out;
}

static GByteArray *
edit(const GByteArray *in, MpStage *stage, gsize chunk,
     guint64 stop_following_at, gboolean in_place)
{
    return edit_ex(in, stage, chunk, stop_following_at, in_place, 2u << 20,
                   NULL);
}

static void
round_trip(const char *name, guint64 zero_pages)
{
    g_autoptr(GByteArray) orig = stage_util_load(name);
    MpStage inf;
    stage_util_inflate_init(&inf);
    g_autoptr(GByteArray) fat =
        edit(orig, &inf, 0, G_MAXUINT64, FALSE);
    cr_assert_eq(fat->len, orig->len + zero_pages * 4095,
                 "inflated by %u bytes", fat->len - orig->len);
    /* in place, a longer replacement goes beside the input */
    guint64 inserted = 0;
    g_autoptr(GByteArray) in_place =
        edit_ex(orig, &inf, 4096, G_MAXUINT64, TRUE, 2u << 20,
                &inserted);
    stage_util_assert_same(in_place, fat);
    cr_assert_gt(inserted, 0);

    static const gsize chunks[] = {0, 1 << 20, 65536, 4099, 4096, 977, 8};
    for (guint i = 0; i < G_N_ELEMENTS(chunks); i++) {
        g_autoptr(MpStage) zero = mp_filter_zero_new();
        g_autoptr(GByteArray) back =
            edit(fat, zero, chunks[i], G_MAXUINT64, TRUE);
        stage_util_assert_same(back, orig);
        cr_assert_eq(mp_filter_zero_rewritten(zero), zero_pages,
                     "chunk %zu: %" G_GUINT64_FORMAT " pages rewritten",
                     chunks[i], mp_filter_zero_rewritten(zero));
        cr_assert_eq(mp_filter_zero_bytes_saved(zero), zero_pages * 4095);
    }
}

Test(filters, zero_round_trip_10_0)
{
    round_trip("busy-10.0", 15586);
}

Test(filters, zero_round_trip_7_2_xbzrle)
{
    g_autoptr(GByteArray) orig = stage_util_load("busy-xbzrle-7.2");
    /* xbzrle and CONTINUE records pass untouched between the pages */
    g_autoptr(MpStage) zero = mp_filter_zero_new();
    g_autoptr(GByteArray) same = edit(orig, zero, 4000, G_MAXUINT64, TRUE);
    stage_util_assert_same(same, orig);
    cr_assert_eq(mp_filter_zero_rewritten(zero), 0);
}

/* A parser that stops following: from that chunk on every byte goes out
 * as it came, the pages before it were rewritten. */
Test(filters, passthrough_when_not_following)
{
    g_autoptr(GByteArray) orig = stage_util_load("busy-10.0");
    MpStage inf;
    stage_util_inflate_init(&inf);
    g_autoptr(GByteArray) fat =
        edit(orig, &inf, 0, G_MAXUINT64, FALSE);
    g_autoptr(MpStage) zero = mp_filter_zero_new();
    guint64 cut = fat->len / 2;
    g_autoptr(GByteArray) out = edit(fat, zero, 65536, cut, TRUE);

    guint64 n = mp_filter_zero_rewritten(zero);
    cr_assert(n > 0 && n < 15586, "%" G_GUINT64_FORMAT " rewritten", n);
    cr_assert_eq(out->len, fat->len - n * 4095);
    /* the tail from the cut on is the inflated stream's */
    gsize tail = fat->len - ((cut + 65535) / 65536) * 65536;
    cr_assert(memcmp(out->data + out->len - tail, fat->data + fat->len - tail,
                     tail)
              == 0);
}

/* A record longer than the hold limit: the pipeline gives up editing and
 * passes every byte on as it came. */
Test(filters, hold_limit)
{
    g_autoptr(GByteArray) orig = stage_util_load("busy-10.0");
    g_autoptr(MpStage) zero = mp_filter_zero_new();
    g_autoptr(GByteArray) out =
        edit_ex(orig, zero, 1000, G_MAXUINT64, TRUE, 2000, NULL);
    stage_util_assert_same(out, orig);
}
