/* tunnel-link.h: what one side of the tunnel knows of its link, and how
 * it paces its bulk frames (docs/tunnel.md, "Link rate and pacing").
 *
 * The pair measures the link itself:
 *   - round trips: a PING every second, its PONG's echo of our clock;
 *   - the rate: every 100 ms the bytes the peer's kernel acknowledged
 *     (bytes written minus those still in our socket's send queue), in
 *     the intervals where the link held us back all along (frames waited
 *     the whole interval and the kernel refused some); the median of the
 *     last such intervals (MpRateEstimator, src/net/rate-pacer.h), as the
 *     relay does, trusted as soon as it gives one (1 s of them,
 *     MP_RATE_EST_MIN_US: the median then rests on intervals after TCP's
 *     slow start; the tunnel waited for 2 s before, and the pace began
 *     2.4 s into a migration whose post-copy the benchmark starts at 2 s,
 *     now at 1.2 s with the same median).  An interval where the
 *     peer's window, not the network, held us back does not count.
 *     An interval also counts as saturated when a queue stood in front of
 *     the link's bottleneck all along, whatever held our writes back (the
 *     tunnel's flow-control window per stream, which in pre-copy keeps
 *     the kernel's send queue from filling): the kernel's smoothed round
 *     trip at both its ends well above the least one seen, and the
 *     bytes not yet acknowledged enough to fill that queue, so that a
 *     lone segment's delayed ACK is no queue.  The bottleneck never ran
 *     dry, so what it delivered is its rate.
 * Once a rate is known (measured, or `--rate`), bulk frames take their
 * bytes from a token bucket (2 ms of it, more when the writer wakes late)
 * at just below it (90 % for 0.5 s, so that the queue the unpaced link
 * built at its bottleneck drains, then 97 %; `--rate` as given), and the
 * queues in front of the link shrink to a millisecond or so of it: the
 * kernel's unsent bytes (TCP_NOTSENT_LOWAT), the bulk frames queued, the
 * raw bytes per DATA frame.  Urgent frames (return path, preempt channel)
 * are not held by the bucket (they spend from it, so the sum stays below
 * the link) and go before every queued bulk frame; with the bottleneck's
 * queue empty, one of them waits for at most the unsent bytes and the
 * rest of the bulk frame being written.
 * Not paced (pre-copy) but measured: the bulk frames queued and the
 * kernel's unsent bytes are each bounded by MP_TUN_LINK_UNPACED_US of the
 * rate, so that the stream buffered between the source QEMU and the link
 * stays short in time and QEMU's downtime estimate holds at the
 * switchover (issue 10 item 3; before, a 4 MiB window of a stream that
 * hardly compresses stood about 260 ms in front of a 100 Mbit/s link).
 *
 * Pure logic on numbers the connection passes in (clock, byte counts),
 * so that tests drive it without sockets.
 */
#pragma once

#include <glib.h>
#include <json-c/json.h>

/* The sampling interval (microseconds) and the PING period (in samples). */
#define MP_TUN_LINK_SAMPLE_US 100000
#define MP_TUN_LINK_PING_EVERY 10

/* Before a rate is known: the queues are the throughput's (unbounded by
 * the link module; the connection's own bounds apply). */
#define MP_TUN_LINK_CHUNK_MAX (256u << 10)
/* Paced: each queue in front of the link holds about this much link time,
 * never less than MP_TUN_LINK_QUEUE_MIN bytes. */
#define MP_TUN_LINK_QUEUE_US 1000
#define MP_TUN_LINK_QUEUE_MIN (16u << 10)
/* Measured but not paced: each of those two queues holds about this much
 * link time (20 ms; never less than MP_TUN_LINK_QUEUE_MIN). */
#define MP_TUN_LINK_UNPACED_US 20000

typedef struct MpTunLink MpTunLink;

/* `given`: bytes per second from --rate, 0: measure.  @return a link with
 * nothing measured; free with mp_tun_link_free(). */
MpTunLink *mp_tun_link_new(guint64 given, gint64 now_us);
void mp_tun_link_free(MpTunLink *l); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpTunLink, mp_tun_link_free)

/* ---- what the connection reports ---- */

/* Frames waited to be written during the last sample (any moment of it
 * with nothing to write makes the interval unsaturated). */
void mp_tun_link_idle(MpTunLink *l);
/* The kernel refused bytes (its send queue is full): the link, or the
 * peer, holds us back. */
void mp_tun_link_refused(MpTunLink *l);
/* The kernel's smoothed and least round trips now (tcp-info.h), given
 * before each sample (none given: the queue rule above is off). */
void mp_tun_link_kernel_rtt(MpTunLink *l, guint32 srtt_us,
                            guint32 min_rtt_us);
/* One sample, every MP_TUN_LINK_SAMPLE_US: `written` bytes written to the
 * socket in all, `unsent` bytes of them still in the kernel's send queue
 * (SIOCOUTQ), `rwnd_limited_us` the kernel's tcpi_rwnd_limited (0 if it
 * does not say).  Starts pacing once the estimate is trusted and pacing is allowed
 * (mp_tun_link_allow_pace()).  @return
 * TRUE if pacing began with this sample. */
gboolean mp_tun_link_sample(MpTunLink *l, gint64 now_us, guint64 written,
                            guint64 unsent, guint64 rwnd_limited_us);
/* @return TRUE if the link held us back (a saturated interval) since the
 * last call. */
gboolean mp_tun_link_take_held(MpTunLink *l);
/* A PONG came for our PING sent at `sent_ns` (our monotonic clock). */
void mp_tun_link_pong(MpTunLink *l, guint64 sent_ns, guint64 now_ns);
/* A PING went out. */
void mp_tun_link_pinged(MpTunLink *l);

/* ---- pacing ---- */

/* TRUE once bulk frames are paced (rate given or measured). */
/* Pacing may start once the rate is trusted (called when the stream says
 * post-copy may come: a pre-copy migration is never paced, since a pace
 * only serves page requests and costs a few per cent of the link, more
 * where the estimate reads low on a busy host).  Idempotent. */
void mp_tun_link_allow_pace(MpTunLink *l);
gboolean mp_tun_link_paced(const MpTunLink *l);
/* Bulk bytes that may be written now (G_MAXSIZE when not paced). */
gsize mp_tun_link_allowance(MpTunLink *l, gint64 now_us);
/* `n` bytes were written (bulk or urgent: both spend). */
void mp_tun_link_spend(MpTunLink *l, gsize n);
/* When `n` bulk bytes may be written (now if not paced). */
gint64 mp_tun_link_ready_at(MpTunLink *l, gsize n, gint64 now_us);
/* The writer, woken by its timer for mp_tun_link_ready_at(), woke
 * `late_us` after it: the bucket and the bulk queue grow to cover how
 * late it wakes (2 ms of the pace at least, 20 ms at most), or a busy
 * host leaves the link idle between its wake-ups. */
void mp_tun_link_woke(MpTunLink *l, gint64 late_us);
/* Post-copy runs (the guest runs on the destination and asks for
 * pages): until the pace begins, the kernel's unsent bytes are bounded by
 * 10 ms of the rate measured so far (mp_tun_link_notsent_lowat()).  Under
 * load the estimate took 3 to 6 s more to be trusted after the switch
 * with postcopy-preempt, and a requested page waited behind up to 1 MB
 * of unsent bytes meanwhile.  Idempotent. */
void mp_tun_link_postcopy_runs(MpTunLink *l);
/* The bounds of the queues in front of the link: raw stream bytes per
 * DATA frame, bulk bytes queued (G_MAXSIZE: none), the kernel's unsent
 * bytes (TCP_NOTSENT_LOWAT; 0: leave the kernel's default).  Nothing
 * measured: no bound; measured: MP_TUN_LINK_UNPACED_US of the rate (the
 * unsent bytes 10 ms of it once post-copy runs); paced: about
 * MP_TUN_LINK_QUEUE_US of the pace. */
gsize mp_tun_link_chunk(const MpTunLink *l);
gsize mp_tun_link_queue_bound(const MpTunLink *l);
gsize mp_tun_link_notsent_lowat(const MpTunLink *l);


/* ---- what it knows ---- */

guint64 mp_tun_link_rate(const MpTunLink *l);  /* measured, bytes/s; 0 */
guint64 mp_tun_link_pace(const MpTunLink *l);  /* the pace now; 0: none */
gint64 mp_tun_link_rtt_us(const MpTunLink *l); /* last round trip; -1 */

/* `{rate_source ("given", "measured", "none"), measured_bps, paced_bps,
 * rtt_ms, rtt_min_ms, pings, pongs, saturated_s, queue_s,
 * paced_since_s, writer_late_ms, queue_bound_bytes, unsent_bound_bytes}`
 * (queue_s: the part of saturated_s that a standing queue, not a refusing
 * kernel, said; the bounds: those in force at the end, null: none):
 * measured and paced rates in bits per second (null: none), round trips
 * in ms (null: no PONG yet). */
json_object *mp_tun_link_report(const MpTunLink *l);
