/* tunnel-link.c: the link's rate and round trips, and the pace of bulk
 * frames (see tunnel-link.h). */
#include "config.h"
#include "rate-pacer.h"
#include "tunnel-link.h"

/* An interval where the peer's window held the kernel back longer than
 * this share (1/10) is the peer's pace, not the link's. */
#define RWND_SHARE 10
/* The bucket holds 2 ms of the pace, or twice how late the writer woke
 * (on a busy host it wakes every few ms: a 2 ms bucket then loses the
 * rest of each gap, and 80 Mbit/s paced gave 36), at most 20 ms. */
#define BURST_MIN_US 2000
#define BURST_MAX_US 20000
/* A queue stands in front of the bottleneck when the kernel's smoothed
 * round trip exceeds the least one by this much (and a quarter of the
 * least, on a long path), with at least QUEUE_MIN_BYTES unacknowledged
 * and at least half of what the interval's rate puts in that delay. */
#define QUEUE_MIN_US 2000
#define QUEUE_MIN_BYTES (64u << 10)
/* The kernel's unsent bytes once post-copy runs, before the pace. */
#define POSTCOPY_UNSENT_US 10000

static double burst(const MpTunLink *l);

struct MpTunLink {
    guint64 given;
    MpRateEstimator *est;
    guint64 pace;  /* bytes/s; 0: not paced */
    gboolean allow; /* may start pacing once measured (post-copy may come) */
    gboolean postcopy; /* post-copy runs: page requests come */
    double tokens; /* the bucket; below 0 after urgent bytes */
    gint64 tokens_us;
    gint64 late_us; /* how late the writer wakes (a moving average) */
    guint64 measured;
    gint64 start_us, paced_us;
    /* the interval being sampled */
    gboolean refused, idle;
    gint64 sample_us;
    guint64 acked, rwnd_us;
    gboolean sampled, held;
    gint64 saturated_us;
    /* the kernel's round trips before this sample, and whether a queue
     * stood at the last one */
    guint32 srtt_us, min_rtt_us;
    gboolean queue_was;
    gint64 queue_us;
    /* round trips */
    gint64 rtt_us, rtt_min_us;
    guint64 pings, pongs;
    /* writes while paced, and their bytes */
    guint64 paced_writes, paced_bytes;
};

MpTunLink *
mp_tun_link_new(guint64 given, gint64 now_us)
{
    MpTunLink *l = g_new0(MpTunLink, 1);
    l->given = given;
    l->start_us = l->sample_us = now_us;
    l->rtt_us = l->rtt_min_us = -1;
    if (given) {
        l->pace = given;
        l->tokens_us = l->paced_us = now_us;
        l->tokens = burst(l);
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

void
mp_tun_link_kernel_rtt(MpTunLink *l, guint32 srtt_us, guint32 min_rtt_us)
{
    l->srtt_us = srtt_us;
    l->min_rtt_us = min_rtt_us;
}

/* Does a queue stand in front of the bottleneck now, with `unacked`
 * bytes not yet acknowledged by the peer and the link delivering `bps`? */
static gboolean
queue_stands(const MpTunLink *l, guint64 unacked, double bps)
{
    if (!l->srtt_us || !l->min_rtt_us || l->srtt_us <= l->min_rtt_us)
        return FALSE;
    guint32 delay = l->srtt_us - l->min_rtt_us;
    if (delay < MAX(QUEUE_MIN_US, l->min_rtt_us / 4))
        return FALSE;
    return unacked >= QUEUE_MIN_BYTES && unacked >= bps * delay / 2e6;
}

gboolean
mp_tun_link_sample(MpTunLink *l, gint64 now_us, guint64 written,
                   guint64 unsent, guint64 rwnd_limited_us)
{
    guint64 acked = written > unsent ? written - unsent : 0;
    gint64 span = now_us - l->sample_us;
    gboolean began = FALSE;
    guint64 n = acked > l->acked ? acked - l->acked : 0;
    gboolean queue = span > 0 && queue_stands(l, unsent, n * 1e6 / span);
    /* a queue at both ends of the interval: it stood all along */
    gboolean stood = queue && l->queue_was;
    /* frames waited all interval and the kernel refused some */
    gboolean refused = l->refused && !l->idle;

    l->queue_was = queue;
    if (refused || stood)
        l->held = TRUE;
    if (l->sampled && span > 0 && l->est && !l->pace) {
        guint64 rwnd = rwnd_limited_us > l->rwnd_us
                           ? rwnd_limited_us - l->rwnd_us
                           : 0;
        gboolean saturated = (refused || stood)
                             && rwnd * RWND_SHARE <= (guint64)span;
        mp_rate_estimator_add(l->est, span, n, saturated ? n : 0);
        if (saturated)
            l->saturated_us += span;
        if (saturated && !refused)
            l->queue_us += span;
        l->measured = mp_rate_estimator_rate(l->est);
        if (l->allow && l->measured) {
            l->pace = mp_rate_auto_pace(l->measured, 0);
            l->tokens_us = l->paced_us = now_us;
            l->tokens = burst(l);
            began = TRUE;
        }
    } else if (l->pace && !l->given) {
        /* the estimate is kept once paced: paced, the link no longer
         * shows its rate */
        l->pace = mp_rate_auto_pace(l->measured, now_us - l->paced_us);
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

void
mp_tun_link_allow_pace(MpTunLink *l)
{
    l->allow = TRUE;
}

gboolean
mp_tun_link_paced(const MpTunLink *l)
{
    return l->pace != 0;
}

/* `us` of `rate` (bytes/s) in bytes, within [MP_TUN_LINK_QUEUE_MIN,
 * max]. */
static gsize
rate_time(guint64 rate, guint64 us, gsize max)
{
    guint64 b = rate * us / G_USEC_PER_SEC;
    return CLAMP(b, MP_TUN_LINK_QUEUE_MIN, max);
}

/* `us` of the pace in bytes. */
static gsize
link_time(const MpTunLink *l, guint64 us, gsize max)
{
    return rate_time(l->pace, us, max);
}

static double
burst(const MpTunLink *l)
{
    return link_time(l, CLAMP(2 * l->late_us, BURST_MIN_US, BURST_MAX_US),
                     G_MAXSIZE);
}

static void
refill(MpTunLink *l, gint64 now_us)
{
    if (now_us > l->tokens_us) {
        l->tokens +=
            (double)(now_us - l->tokens_us) * l->pace / G_USEC_PER_SEC;
        l->tokens = MIN(l->tokens, burst(l));
        l->tokens_us = now_us;
    }
}

gsize
mp_tun_link_allowance(MpTunLink *l, gint64 now_us)
{
    if (!l->pace)
        return G_MAXSIZE;
    refill(l, now_us);
    return l->tokens > 0 ? (gsize)l->tokens : 0;
}

void
mp_tun_link_spend(MpTunLink *l, gsize n)
{
    if (l->pace) {
        l->tokens -= n;
        l->paced_writes++;
        l->paced_bytes += n;
    }
}

gint64
mp_tun_link_ready_at(MpTunLink *l, gsize n, gint64 now_us)
{
    if (!l->pace)
        return now_us;
    refill(l, now_us);
    double need = MIN((double)n, burst(l)) - l->tokens;
    if (need <= 0)
        return now_us;
    return now_us + (gint64)(need * G_USEC_PER_SEC / l->pace) + 1;
}

void
mp_tun_link_woke(MpTunLink *l, gint64 late_us)
{
    l->late_us += (MAX(late_us, 0) - l->late_us) / 8;
}

/* The queues in front of the link hold 1 ms of it, or how late the
 * writer wakes: less would leave the link idle until it does. */
static guint64
queue_us(const MpTunLink *l)
{
    return CLAMP(l->late_us, MP_TUN_LINK_QUEUE_US, BURST_MAX_US);
}

gsize
mp_tun_link_chunk(const MpTunLink *l)
{
    /* a frame is the unit of interleaving: an urgent frame waits for
     * the rest of the bulk frame being written */
    return l->pace ? link_time(l, 2 * MP_TUN_LINK_QUEUE_US,
                               MP_TUN_LINK_CHUNK_MAX)
                   : MP_TUN_LINK_CHUNK_MAX;
}

gsize
mp_tun_link_queue_bound(const MpTunLink *l)
{
    if (l->pace)
        return link_time(l, queue_us(l), 8u << 20);
    return l->measured
               ? rate_time(l->measured, MP_TUN_LINK_UNPACED_US, 8u << 20)
               : G_MAXSIZE;
}

void
mp_tun_link_postcopy_runs(MpTunLink *l)
{
    l->postcopy = TRUE;
}

gsize
mp_tun_link_notsent_lowat(const MpTunLink *l)
{
    if (l->pace)
        return link_time(l, MP_TUN_LINK_QUEUE_US, 8u << 20);
    if (!l->measured)
        return 0;
    /* not paced: shorter once post-copy runs (a requested page waits
     * behind them), but long enough that a writer woken late on a busy
     * host (ms) does not leave the link idle inside the intervals that
     * still measure it (its estimate would read low) */
    return rate_time(l->measured,
                     l->postcopy ? POSTCOPY_UNSENT_US : MP_TUN_LINK_UNPACED_US,
                     8u << 20);
}

guint64
mp_tun_link_rate(const MpTunLink *l)
{
    return l->measured;
}

guint64
mp_tun_link_pace(const MpTunLink *l)
{
    return l->pace;
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
                           l->pace ? json_object_new_int64(l->pace * 8)
                                   : NULL);
    json_object_object_add(
        o, "paced_since_s",
        l->pace ? json_object_new_double((l->paced_us - l->start_us) / 1e6)
                 : NULL);
    json_object_object_add(o, "saturated_s",
                           json_object_new_double(l->saturated_us / 1e6));
    json_object_object_add(o, "queue_s",
                           json_object_new_double(l->queue_us / 1e6));
    json_object_object_add(o, "writer_late_ms",
                           json_object_new_double(l->late_us / 1e3));
    gsize qb = mp_tun_link_queue_bound(l), lowat = mp_tun_link_notsent_lowat(l);
    json_object_object_add(o, "queue_bound_bytes",
                           qb != G_MAXSIZE ? json_object_new_int64(qb) : NULL);
    json_object_object_add(o, "unsent_bound_bytes",
                           lowat ? json_object_new_int64(lowat) : NULL);
    json_object_object_add(o, "rtt_ms", ms_or_null(l->rtt_us));
    json_object_object_add(o, "rtt_min_ms", ms_or_null(l->rtt_min_us));
    json_object_object_add(o, "pings", json_object_new_int64(l->pings));
    json_object_object_add(o, "pongs", json_object_new_int64(l->pongs));
    json_object_object_add(o, "paced_writes",
                           json_object_new_int64(l->paced_writes));
    json_object_object_add(
        o, "paced_write_bytes",
        l->paced_writes
            ? json_object_new_int64(l->paced_bytes / l->paced_writes)
            : NULL);
    return o;
}
