/* test-rate-pacer.c: tc-style rates, sizes, and the token bucket. */
#include "config.h"
#include <criterion/criterion.h>
#include "rate-pacer.h"

static guint64
rate(const char *s)
{
    g_autoptr(GError) err = NULL;
    guint64 v = mp_rate_parse(s, &err);
    cr_assert(v, "%s: %s", s, err ? err->message : "0");
    return v;
}

static void
bad_rate(const char *s)
{
    g_autoptr(GError) err = NULL;
    cr_assert_eq(mp_rate_parse(s, &err), 0, "%s accepted", s);
    cr_assert_not_null(err);
}

Test(rate_pacer, tc_rates)
{
    cr_assert_eq(rate("95mbit"), 11875000);
    cr_assert_eq(rate("1gbit"), 125000000);
    cr_assert_eq(rate("100Mbit"), 12500000);
    cr_assert_eq(rate("500kbit"), 62500);
    cr_assert_eq(rate("8000"), 1000); /* a bare number is bits */
    cr_assert_eq(rate("10mbps"), 10000000);
    cr_assert_eq(rate("1mibit"), 131072);
    cr_assert_eq(rate("2.5gbit"), 312500000);
    bad_rate("");
    bad_rate("fast");
    bad_rate("-5mbit");
    bad_rate("10 furlongs");
    bad_rate("4bit"); /* half a byte per second */
}

/* Rates and sizes beyond 64 bits once converted: the relay crashed on
 * --rate 1e17tbit (0 came back with no error, which it dereferenced). */
Test(rate_pacer, out_of_range)
{
    cr_assert_eq(rate("8000tbit"), 1000000000000000ull);
    bad_rate("8001tbit");
    bad_rate("1e17tbit");
    bad_rate("1e300tibps");
    bad_rate("1e19");
    bad_rate("inf");
    bad_rate("nan");
    bad_rate("1e-300mbit");

    g_autoptr(GError) err = NULL;
    cr_assert_eq(mp_size_parse("1048576G", NULL), 1ull << 50);
    cr_assert_eq(mp_size_parse("1e17G", &err), 0);
    cr_assert_not_null(err);
    g_clear_error(&err);
    cr_assert_eq(mp_size_parse("1e300", &err), 0);
    cr_assert_not_null(err);
    g_clear_error(&err);
    cr_assert_eq(mp_size_parse("0.5", &err), 0); /* half a byte */
    cr_assert_not_null(err);
}

Test(rate_pacer, sizes)
{
    g_autoptr(GError) err = NULL;
    cr_assert_eq(mp_size_parse("16M", NULL), 16u << 20);
    cr_assert_eq(mp_size_parse("64k", NULL), 64u << 10);
    cr_assert_eq(mp_size_parse("1GiB", NULL), 1u << 30);
    cr_assert_eq(mp_size_parse("4096", NULL), 4096);
    cr_assert_eq(mp_size_parse("3x", &err), 0);
    cr_assert_not_null(err);
}

Test(rate_pacer, bucket)
{
    /* 12.5 MB/s: the burst is 2 ms worth, 25000 bytes */
    g_autoptr(MpRatePacer) p = mp_rate_pacer_new(12500000, 0);
    cr_assert_eq(mp_rate_pacer_rate(p), 12500000);
    cr_assert_eq(mp_rate_pacer_allowance(p, 0), 25000);
    mp_rate_pacer_spend(p, 25000);
    cr_assert_eq(mp_rate_pacer_allowance(p, 0), 0);
    /* 4096 bytes take 327.68 us */
    gint64 at = mp_rate_pacer_ready_at(p, 4096, 0);
    cr_assert(at >= 327 && at <= 330, "ready at %" G_GINT64_FORMAT, at);
    cr_assert_eq(mp_rate_pacer_allowance(p, 1000), 12500);
    /* never more than the burst, however long it waited */
    cr_assert_eq(mp_rate_pacer_allowance(p, 10 * G_USEC_PER_SEC), 25000);
}

/* ---- the path's rate (MpRateEstimator) ---- */

#define TICK 100000 /* the relay samples every 100 ms */

Test(rate_estimator, trusted_after_enough_saturated_time)
{
    g_autoptr(MpRateEstimator) e = mp_rate_estimator_new();
    /* 12.5 MB/s: 1.25 MB per 100 ms, all over saturated connections */
    for (int i = 0; i < 9; i++) {
        mp_rate_estimator_add(e, TICK, 1250000, 1250000);
        cr_assert_eq(mp_rate_estimator_rate(e), 0, "trusted after %d", i + 1);
    }
    mp_rate_estimator_add(e, TICK, 1250000, 1250000);
    cr_assert_eq(mp_rate_estimator_span_us(e), 1000000);
    cr_assert_eq(mp_rate_estimator_rate(e), 12500000);
}

Test(rate_estimator, unsaturated_intervals_do_not_count)
{
    g_autoptr(MpRateEstimator) e = mp_rate_estimator_new();
    /* the source is the limit (QEMU's max-bandwidth, a fast link): the
     * relay's queue ran dry, nothing is measured however long */
    for (int i = 0; i < 100; i++)
        mp_rate_estimator_add(e, TICK, 2000000, 0);
    cr_assert_eq(mp_rate_estimator_rate(e), 0);
    cr_assert_eq(mp_rate_estimator_span_us(e), 0);
    /* one saturated channel beside another that carried a third of the
     * bytes unsaturated: not the path's rate either */
    for (int i = 0; i < 100; i++)
        mp_rate_estimator_add(e, TICK, 3000000, 2000000);
    cr_assert_eq(mp_rate_estimator_rate(e), 0);
    /* multifd: the data channels saturated, the main channel's few bytes
     * not: counts, on the sum */
    for (int i = 0; i < 10; i++)
        mp_rate_estimator_add(e, TICK, 1250000, 1240000);
    cr_assert_eq(mp_rate_estimator_rate(e), 12500000);
}

Test(rate_estimator, window_follows_the_last_intervals)
{
    g_autoptr(MpRateEstimator) e = mp_rate_estimator_new();
    /* a slow start (the send buffer filling at first) ages out */
    for (int i = 0; i < 10; i++)
        mp_rate_estimator_add(e, TICK, 100000, 100000);
    cr_assert_eq(mp_rate_estimator_rate(e), 1000000);
    for (int i = 0; i < MP_RATE_EST_WINDOW; i++)
        mp_rate_estimator_add(e, TICK, 1250000, 1250000);
    cr_assert_eq(mp_rate_estimator_rate(e), 12500000);
    cr_assert_eq(mp_rate_estimator_span_us(e), MP_RATE_EST_WINDOW * TICK);
    /* a minority of intervals far off (the relay starved of CPU, acks
     * bunched into the next interval) does not move the median */
    g_autoptr(MpRateEstimator) u = mp_rate_estimator_new();
    for (int i = 0; i < 7; i++)
        mp_rate_estimator_add(u, TICK, 1250000, 1250000);
    mp_rate_estimator_add(u, TICK, 300000, 300000);
    mp_rate_estimator_add(u, TICK, 400000, 400000);
    mp_rate_estimator_add(u, 300000, 6000000, 6000000);
    cr_assert_eq(mp_rate_estimator_rate(u), 12500000);
    /* an even count: the middle two, halved */
    g_autoptr(MpRateEstimator) v = mp_rate_estimator_new();
    for (int i = 0; i < 5; i++)
        mp_rate_estimator_add(v, 2 * TICK, 2000000, 2000000);
    mp_rate_estimator_add(v, 2 * TICK, 3000000, 3000000);
    cr_assert_eq(mp_rate_estimator_rate(v), 10000000);
}

Test(rate_estimator, nonsense_intervals_are_ignored)
{
    g_autoptr(MpRateEstimator) e = mp_rate_estimator_new();
    mp_rate_estimator_add(e, 0, 1000, 1000);
    mp_rate_estimator_add(e, -5, 1000, 1000);
    mp_rate_estimator_add(e, 10 * G_USEC_PER_SEC, 1000, 1000); /* stalled */
    mp_rate_estimator_add(e, TICK, 1000, 2000); /* more saturated than all */
    cr_assert_eq(mp_rate_estimator_span_us(e), 0);
}

Test(rate_estimator, pace)
{
    /* 90 % while the bottleneck's standing queue drains, then 97 % */
    cr_assert_eq(mp_rate_auto_pace(12500000, 0), 11250000);
    cr_assert_eq(mp_rate_auto_pace(12500000, MP_RATE_DRAIN_US - 1), 11250000);
    cr_assert_eq(mp_rate_auto_pace(12500000, MP_RATE_DRAIN_US), 12125000);
    cr_assert_eq(mp_rate_auto_pace(12500000, G_MAXINT64), 12125000);
    cr_assert_eq(mp_rate_auto_pace(50, 0), 1);
}

Test(rate_pacer, set_rate)
{
    g_autoptr(MpRatePacer) p = mp_rate_pacer_new(12500000, 0);
    mp_rate_pacer_set_rate(p, 1000000); /* burst 16 KiB, the minimum */
    cr_assert_eq(mp_rate_pacer_rate(p), 1000000);
    cr_assert_eq(mp_rate_pacer_allowance(p, 0), 16384);
}
