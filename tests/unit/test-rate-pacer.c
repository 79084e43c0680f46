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
