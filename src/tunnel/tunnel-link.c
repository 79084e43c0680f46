/* tunnel-link.c: the link's rate and round trips, and the pace of bulk
 * frames (see tunnel-link.h). */
#include "config.h"
#include "rate-pacer.h"
#include "tunnel-link.h"

/* An interval where the peer's window held the kernel back longer than
 * this share (1/10) is the peer's pace, not the link's. */
#define RWND_SHARE 10

struct MpTunLink {
    guint64 given;
    MpRateEstimator *est;
    MpRatePacer *pacer; /* NULL: not paced */
    guint64 measured;
    gint64 start_us, paced_us;
    /* the interval being sampled */
    gboolean refused, idle;
    gint64 sample_us;
    guint64 acked, rwnd_us;
    gboolean sampled, held;
    gint64 saturated_us;
    /* round trips */
    gint64 rtt_us, rtt_min_us;
    guint64 pings, pongs;
};

MpTunLink *
mp_tun_link_new(guint64 given, gint64 now_us)
{
    MpTunLink *l = g_new0(MpTunLink, 1);
    l->given = given;
    l->start_us = l->sample_us = now_us;
    l->rtt_us = l->rtt_min_us = -1;
    if (given) {
        l->pacer = mp_rate_pacer_new(given, now_us);
        l->paced_us = now_us;
    } else {
        l->est = mp_rate_estimator_new();
    }
    return l;
}

void
mp_tun_link_free(MpTunLink *l)
{
    if (!l)
        return;
    mp_rate_estimator_free(l->est);
    mp_rate_pacer_free(l->pacer);
    g_free(l);
}

void
mp_tun_link_idle(MpTunLink *l)
{
    l->idle = TRUE;
}

void
mp_tun_link_refused(MpTunLink *l)
{
    l->refused = TRUE;
}

gboolean
mp_tun_link_sample(MpTunLink *l, gint64 now_us, guint64 written,
                   guint64 unsent, guint64 rwnd_limited_us)
{
    guint64 acked = written > unsent ? written - unsent : 0;
    gint64 span = now_us - l->sample_us;
    gboolean began = FALSE;

    if (l->refused && !l->idle)
        l->held = TRUE;
    if (l->sampled && span > 0 && l->est && !l->pacer) {
        guint64 n = acked > l->acked ? acked - l->acked : 0;
        guint64 rwnd = rwnd_limited_us > l->rwnd_us
                           ? rwnd_limited_us - l->rwnd_us
                           : 0;
        gboolean saturated = l->refused && !l->idle
                             && rwnd * RWND_SHARE <= (guint64)span;
        mp_rate_estimator_add(l->est, span, n, saturated ? n : 0);
        if (saturated)
            l->saturated_us += span;
        l->measured = mp_rate_estimator_rate(l->est);
        if (l->measured && l->saturated_us >= MP_TUN_LINK_TRUST_US) {
            l->pacer = mp_rate_pacer_new(mp_rate_auto_pace(l->measured, 0),
                                         now_us);
            l->paced_us = now_us;
            began = TRUE;
        }
    } else if (l->pacer && !l->given) {
        /* the estimate is kept once paced: paced, the link no longer
         * shows its rate */
        mp_rate_pacer_set_rate(l->pacer, mp_rate_auto_pace(
                                             l->measured, now_us - l->paced_us));
    }
    l->sampled = TRUE;
    l->sample_us = now_us;
    l->acked = acked;
    l->rwnd_us = rwnd_limited_us;
    l->refused = l->idle = FALSE;
    return began;
}

gboolean
mp_tun_link_take_held(MpTunLink *l)
{
    gboolean held = l->held;
    l->held = FALSE;
    return held;
}

void
mp_tun_link_pinged(MpTunLink *l)
{
    l->pings++;
}

void
mp_tun_link_pong(MpTunLink *l, guint64 sent_ns, guint64 now_ns)
{
    if (sent_ns > now_ns)
        return; /* not our clock: ignored */
    l->pongs++;
    l->rtt_us = (gint64)((now_ns - sent_ns) / 1000);
    if (l->rtt_min_us < 0 || l->rtt_us < l->rtt_min_us)
        l->rtt_min_us = l->rtt_us;
}

gboolean
mp_tun_link_paced(const MpTunLink *l)
{
    return l->pacer != NULL;
}

gsize
mp_tun_link_allowance(MpTunLink *l, gint64 now_us)
{
    return l->pacer ? mp_rate_pacer_allowance(l->pacer, now_us) : G_MAXSIZE;
}

void
mp_tun_link_spend(MpTunLink *l, gsize n)
{
    if (l->pacer)
        mp_rate_pacer_spend(l->pacer, n);
}

gint64
mp_tun_link_ready_at(MpTunLink *l, gsize n, gint64 now_us)
{
    return l->pacer ? mp_rate_pacer_ready_at(l->pacer, n, now_us) : now_us;
}

/* `us` of the pace in bytes, within [MP_TUN_LINK_QUEUE_MIN, max]. */
static gsize
link_time(const MpTunLink *l, guint64 us, gsize max)
{
    guint64 b = mp_rate_pacer_rate(l->pacer) * us / G_USEC_PER_SEC;
    return CLAMP(b, MP_TUN_LINK_QUEUE_MIN, max);
}

gsize
mp_tun_link_chunk(const MpTunLink *l)
{
    /* a frame is the unit of interleaving: an urgent frame waits for
     * the rest of the bulk frame being written */
    return l->pacer ? link_time(l, 2 * MP_TUN_LINK_QUEUE_US,
                                MP_TUN_LINK_CHUNK_MAX)
                    : MP_TUN_LINK_CHUNK_MAX;
}

gsize
mp_tun_link_queue_bound(const MpTunLink *l)
{
    return l->pacer ? link_time(l, MP_TUN_LINK_QUEUE_US, 8u << 20)
                    : G_MAXSIZE;
}

gsize
mp_tun_link_notsent_lowat(const MpTunLink *l)
{
    return l->pacer ? link_time(l, MP_TUN_LINK_QUEUE_US, 8u << 20) : 0;
}

guint64
mp_tun_link_rate(const MpTunLink *l)
{
    return l->measured;
}

guint64
mp_tun_link_pace(const MpTunLink *l)
{
    return l->pacer ? mp_rate_pacer_rate(l->pacer) : 0;
}

gint64
mp_tun_link_rtt_us(const MpTunLink *l)
{
    return l->rtt_us;
}

static json_object *
ms_or_null(gint64 us)
{
    return us < 0 ? NULL : json_object_new_double(us / 1e3);
}

json_object *
mp_tun_link_report(const MpTunLink *l)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "rate_source",
                           json_object_new_string(l->given      ? "given"
                                                  : l->measured ? "measured"
                                                                : "none"));
    json_object_object_add(o, "measured_bps",
                           l->measured ? json_object_new_int64(l->measured * 8)
                                       : NULL);
    json_object_object_add(o, "paced_bps",
                           l->pacer ? json_object_new_int64(
                                          mp_rate_pacer_rate(l->pacer) * 8)
                                    : NULL);
    json_object_object_add(
        o, "paced_since_s",
        l->pacer ? json_object_new_double((l->paced_us - l->start_us) / 1e6)
                 : NULL);
    json_object_object_add(o, "saturated_s",
                           json_object_new_double(l->saturated_us / 1e6));
    json_object_object_add(o, "rtt_ms", ms_or_null(l->rtt_us));
    json_object_object_add(o, "rtt_min_ms", ms_or_null(l->rtt_min_us));
    json_object_object_add(o, "pings", json_object_new_int64(l->pings));
    json_object_object_add(o, "pongs", json_object_new_int64(l->pongs));
    return o;
}
