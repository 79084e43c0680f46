/* rate-pacer.h: a token bucket shared by the connections of one migration
 * towards the destination (`migproxy relay --rate`).
 *
 * Sending just below the bottleneck's rate keeps the queue at the
 * bottleneck empty, so a page the relay puts ahead of the others is not
 * delayed by bytes already queued in the network.  The bucket holds at
 * most `burst` bytes (a write never sends more at once).
 */
#pragma once

#include <glib.h>

typedef struct MpRatePacer MpRatePacer;

/* `bytes_per_s` > 0.  @return a new pacer with a full bucket; free with
 * mp_rate_pacer_free(). */
guint64 mp_rate_pacer_rate(const MpRatePacer *p); /* bytes per second */
MpRatePacer *mp_rate_pacer_new(guint64 bytes_per_s, gint64 now_us);
void mp_rate_pacer_free(MpRatePacer *p); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpRatePacer, mp_rate_pacer_free)

/* @return the bytes that may be sent now (at most the burst). */
gsize mp_rate_pacer_allowance(MpRatePacer *p, gint64 now_us);
/* `n` bytes were sent. */
void mp_rate_pacer_spend(MpRatePacer *p, gsize n);
/* @return when `n` bytes (capped at the burst) may be sent. */
gint64 mp_rate_pacer_ready_at(MpRatePacer *p, gsize n, gint64 now_us);
/* From now on `bytes_per_s` (> 0; the burst follows it). */
void mp_rate_pacer_set_rate(MpRatePacer *p, guint64 bytes_per_s);

/* The rate of the path to the destination, measured while the path held
 * the relay back (no --rate given).
 *
 * The relay samples its connections towards the destination every
 * interval: the bytes the path took (acknowledged by the receiver, not
 * just handed to the kernel, whose send buffer would hide the rate at
 * first) and which of them went over a saturated connection (the relay
 * had bytes waiting all interval long and the kernel refused some).  Only
 * intervals where the saturated connections carried nearly all the bytes
 * count: when the source is the limit (QEMU's max-bandwidth, a slow
 * source) the relay's queue runs dry and nothing is measured, so an
 * unsaturated path is never paced.  The estimate is the median rate of
 * the last MP_RATE_EST_WINDOW counted intervals, trusted once they add up
 * to MP_RATE_EST_MIN_US. */
#define MP_RATE_EST_WINDOW 20
#define MP_RATE_EST_MIN_US 1000000

typedef struct MpRateEstimator MpRateEstimator;

/* @return a new estimator with nothing measured; free with
 * mp_rate_estimator_free(). */
MpRateEstimator *mp_rate_estimator_new(void);
void mp_rate_estimator_free(MpRateEstimator *e); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpRateEstimator, mp_rate_estimator_free)

/* One interval of `interval_us`: `bytes` taken by the path in all, of
 * which `saturated_bytes` over saturated connections. */
void mp_rate_estimator_add(MpRateEstimator *e, gint64 interval_us,
                           guint64 bytes, guint64 saturated_bytes);
/* @return the measured rate in bytes per second, 0 until trusted. */
guint64 mp_rate_estimator_rate(const MpRateEstimator *e);
/* @return the saturated time the estimate rests on (microseconds). */
gint64 mp_rate_estimator_span_us(const MpRateEstimator *e);
/* @return the pace for a path measured at `measured` bytes/s, `paced_us`
 * after pacing began: 90 % for the first MP_RATE_DRAIN_US (the queue
 * the unpaced link built at its bottleneck drains in that time: tbf's
 * 50 ms queue of the benchmark in 0.5 s), 97 % after (a margin for the
 * estimate's error; the bottleneck's queue stays empty). */
#define MP_RATE_DRAIN_US 500000
guint64 mp_rate_auto_pace(guint64 measured, gint64 paced_us);

/* Parses a rate as tc(8) writes it: a number and a unit, "bit" (also a
 * bare number), "kbit", "mbit", "gbit", "tbit" (powers of 1000),
 * "kibit" ... "tibit" (powers of 1024), "bps", "kbps" ... (bytes per
 * second), from 1 byte per second to 8000tbit.  @return bytes per second,
 * or 0 with @error set. */
guint64 mp_rate_parse(const char *text, GError **error);
/* Parses a size: a number with an optional "K", "M", "G" (powers of 1024;
 * "KiB", "MiB", "GiB" alike), from 1 byte to 1 PiB.  @return bytes, or 0
 * with @error set. */
guint64 mp_size_parse(const char *text, GError **error);
