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
