/* rate-pacer.c: token bucket and tc-style rate parsing (see
 * rate-pacer.h). */
#include "config.h"
#include <stdlib.h>
#include <string.h>
#include "rate-pacer.h"

/* 2 ms worth of bytes, at least 16 KiB: a burst sent at once queues at
 * the bottleneck for at most that long, which a requested page waits
 * behind (8 ms bursts doubled the blocked time per request in
 * bench-postcopy; see docs/benchmarks.md). */
#define BURST_US  2000
#define MIN_BURST (16u << 10)
/* Limits of what the parsers accept: far above any link or memory, and
 * low enough that the pacer's arithmetic (rate x BURST_US) and a size in
 * bytes stay well inside 64 bits. */
#define MAX_RATE 1e15                 /* bytes per second: 8000 tbit */
#define MAX_SIZE (double)(1ull << 50) /* 1 PiB */

struct MpRatePacer {
    guint64 rate; /* bytes per second */
    gsize burst;
    double tokens;
    gint64 last_us;
};

void
mp_rate_pacer_set_rate(MpRatePacer *p, guint64 bytes_per_s)
{
    p->rate = MAX(bytes_per_s, 1);
    p->burst = MAX(MIN_BURST, p->rate * BURST_US / G_USEC_PER_SEC);
    if (p->tokens > p->burst)
        p->tokens = p->burst;
}

MpRatePacer *
mp_rate_pacer_new(guint64 bytes_per_s, gint64 now_us)
{
    MpRatePacer *p = g_new0(MpRatePacer, 1);
    mp_rate_pacer_set_rate(p, bytes_per_s);
    p->tokens = p->burst;
    p->last_us = now_us;
    return p;
}

guint64
mp_rate_pacer_rate(const MpRatePacer *p)
{
    return p->rate;
}

void
mp_rate_pacer_free(MpRatePacer *p)
{
    g_free(p);
}

static void
refill(MpRatePacer *p, gint64 now_us)
{
    if (now_us > p->last_us) {
        p->tokens += (double)(now_us - p->last_us) * p->rate / G_USEC_PER_SEC;
        if (p->tokens > p->burst)
            p->tokens = p->burst;
        p->last_us = now_us;
    }
}

gsize
mp_rate_pacer_allowance(MpRatePacer *p, gint64 now_us)
{
    refill(p, now_us);
    return p->tokens > 0 ? (gsize)p->tokens : 0;
}

void
mp_rate_pacer_spend(MpRatePacer *p, gsize n)
{
    p->tokens -= n;
}

gint64
mp_rate_pacer_ready_at(MpRatePacer *p, gsize n, gint64 now_us)
{
    refill(p, now_us);
    double need = MIN(n, p->burst) - p->tokens;
    if (need <= 0)
        return now_us;
    return now_us + (gint64)(need * G_USEC_PER_SEC / p->rate) + 1;
}

/* ---- the path's rate ---- */

/* An interval counts when its saturated connections carried this share
 * of its bytes (in 1/100): multifd's main channel idles beside the
 * saturated data channels, and its few bytes do not change the sum. */
#define SATURATED_SHARE 90
/* A longer interval is a stalled loop, not a measure. */
#define MAX_INTERVAL_US (2 * G_USEC_PER_SEC)

struct MpRateEstimator {
    struct {
        gint64 us;
        guint64 bytes;
    } win[MP_RATE_EST_WINDOW]; /* counted intervals, a ring */
    guint n, next;
};

MpRateEstimator *
mp_rate_estimator_new(void)
{
    return g_new0(MpRateEstimator, 1);
}

void
mp_rate_estimator_free(MpRateEstimator *e)
{
    g_free(e);
}

void
mp_rate_estimator_add(MpRateEstimator *e, gint64 interval_us, guint64 bytes,
                      guint64 saturated_bytes)
{
    if (interval_us <= 0 || interval_us > MAX_INTERVAL_US || !bytes
        || saturated_bytes > bytes
        || saturated_bytes * 100 < bytes * SATURATED_SHARE)
        return;
    e->win[e->next].us = interval_us;
    e->win[e->next].bytes = bytes;
    e->next = (e->next + 1) % MP_RATE_EST_WINDOW;
    e->n = MIN(e->n + 1, MP_RATE_EST_WINDOW);
}

gint64
mp_rate_estimator_span_us(const MpRateEstimator *e)
{
    gint64 us = 0;
    for (guint i = 0; i < e->n; i++)
        us += e->win[i].us;
    return us;
}

static gint
cmp_double(gconstpointer a, gconstpointer b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

guint64
mp_rate_estimator_rate(const MpRateEstimator *e)
{
    double r[MP_RATE_EST_WINDOW];

    if (mp_rate_estimator_span_us(e) < MP_RATE_EST_MIN_US)
        return 0;
    /* the median interval: an interval where the relay itself waited for
     * a CPU (the kernel's buffer ran dry unseen) reads low, one that got
     * acknowledgements due to the one before reads high; both are the
     * minority on a saturated path (a mean over the bench's loaded runs
     * came out 8 % low in 3 of 8 runs) */
    for (guint i = 0; i < e->n; i++)
        r[i] = (double)e->win[i].bytes * G_USEC_PER_SEC / e->win[i].us;
    qsort(r, e->n, sizeof(double), cmp_double);
    return (guint64)(e->n % 2 ? r[e->n / 2]
                              : (r[e->n / 2 - 1] + r[e->n / 2]) / 2);
}

guint64
mp_rate_auto_pace(guint64 measured, gint64 paced_us)
{
    return MAX(measured / 100 * (paced_us < MP_RATE_DRAIN_US ? 90 : 97), 1);
}

/* ---- parsing ---- */

/* "95mbit" -> 95, "mbit" */
static gboolean
split_number(const char *text, double *v, const char **unit, GError **error)
{
    char *end = NULL;

    *v = g_ascii_strtod(text, &end);
    /* (an overflow, "1e400", is +inf: the caller's range check says so) */
    if (end == text || !(*v > 0)) {
        g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                    "'%s' is not a positive number with a unit", text);
        return FALSE;
    }
    *unit = end;
    return TRUE;
}

guint64
mp_rate_parse(const char *text, GError **error)
{
    static const struct {
        const char *unit;
        double bytes; /* per second, per 1 of the unit */
    } units[] = {
        {"", 1 / 8.0},          {"bit", 1 / 8.0},
        {"kbit", 1e3 / 8},      {"mbit", 1e6 / 8},
        {"gbit", 1e9 / 8},      {"tbit", 1e12 / 8},
        {"kibit", 1024 / 8.0},  {"mibit", 1048576 / 8.0},
        {"gibit", 1073741824 / 8.0}, {"tibit", 1099511627776 / 8.0},
        {"bps", 1},             {"kbps", 1e3},
        {"mbps", 1e6},          {"gbps", 1e9},
        {"tbps", 1e12},         {"kibps", 1024},
        {"mibps", 1048576},     {"gibps", 1073741824},
        {"tibps", 1099511627776},
    };
    double v;
    const char *unit;

    if (!split_number(text, &v, &unit, error))
        return 0;
    for (guint i = 0; i < G_N_ELEMENTS(units); i++) {
        if (g_ascii_strcasecmp(unit, units[i].unit) == 0) {
            double b = v * units[i].bytes;
            if (b < 1) {
                g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                            "rate '%s' is below 1 byte per second", text);
                return 0;
            }
            if (b > MAX_RATE) {
                /* (a double beyond 2^64 does not convert to a guint64) */
                g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                            "rate '%s' is above 8000tbit (1 PB per second)",
                            text);
                return 0;
            }
            return (guint64)b;
        }
    }
    g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                "rate '%s': unknown unit '%s' (as tc writes rates: 95mbit, "
                "1gbit, 500kbit, 10mbps)",
                text, unit);
    return 0;
}

guint64
mp_size_parse(const char *text, GError **error)
{
    static const struct {
        const char *unit;
        guint64 mult;
    } units[] = {
        {"", 1},           {"b", 1},          {"k", 1u << 10},
        {"kib", 1u << 10}, {"m", 1u << 20},   {"mib", 1u << 20},
        {"g", 1u << 30},   {"gib", 1u << 30},
    };
    double v;
    const char *unit;

    if (!split_number(text, &v, &unit, error))
        return 0;
    for (guint i = 0; i < G_N_ELEMENTS(units); i++) {
        if (g_ascii_strcasecmp(unit, units[i].unit) != 0)
            continue;
        double b = v * units[i].mult;
        if (b < 1 || b > MAX_SIZE) {
            g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                        "size '%s' is %s", text,
                        b < 1 ? "below 1 byte" : "above 1048576G (1 PiB)");
            return 0;
        }
        return (guint64)b;
    }
    g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                "size '%s': unknown unit '%s' (bytes, or K, M, G)", text,
                unit);
    return 0;
}
