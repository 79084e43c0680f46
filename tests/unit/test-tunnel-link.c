/* test-tunnel-link.c: the link's rate measured from acknowledged bytes in
 * saturated intervals, the pace and the queue bounds it sets, round trips
 * from PONGs (tunnel-link.h); and on a real connection (tunnel-conn.h),
 * an urgent frame overtaking paced bulk frames: the order of frames on
 * the wire, never their timing. */
#include "config.h"
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <gio/gio.h>
#include <criterion/criterion.h>
#include "tunnel-cap.h"
#include "tunnel-conn.h"
#include "tunnel-tls.h"
#include "tunnel-link.h"

#define MS 1000
#define RATE 12500000ull /* 100 Mbit/s in bytes/s */

/* `n` intervals of 100 ms in which the link took `rate` bytes/s; the
 * connection had frames waiting and the kernel refused some when
 * `saturated`.  Returns whether pacing began during them. */
static gboolean
feed(MpTunLink *l, gint64 *now, guint64 *written, int n, guint64 rate,
     gboolean saturated, guint64 rwnd_per_interval, guint64 *rwnd)
{
    gboolean began = FALSE;
    for (int i = 0; i < n; i++) {
        *now += MP_TUN_LINK_SAMPLE_US;
        *written += rate / 10;
        *rwnd += rwnd_per_interval;
        if (saturated)
            mp_tun_link_refused(l);
        else
            mp_tun_link_idle(l);
        /* 1 MiB stays in the kernel's send queue all along: it is not
         * acknowledged, so it is not counted */
        began |= mp_tun_link_sample(l, *now, *written + (1u << 20), 1u << 20,
                                    *rwnd);
    }
    return began;
}

Test(tunnel_link, unsaturated_link_is_not_measured_nor_paced)
{
    gint64 now = 0;
    guint64 written = 0, rwnd = 0;
    g_autoptr(MpTunLink) l = mp_tun_link_new(0, now);

    mp_tun_link_sample(l, now, 0, 0, 0);
    cr_assert_not(feed(l, &now, &written, 50, RATE, FALSE, 0, &rwnd));
    cr_assert_eq(mp_tun_link_rate(l), 0);
    cr_assert_not(mp_tun_link_paced(l));
    cr_assert_eq(mp_tun_link_allowance(l, now), G_MAXSIZE);
    cr_assert_eq(mp_tun_link_ready_at(l, 1 << 20, now), now);
    cr_assert_eq(mp_tun_link_chunk(l), MP_TUN_LINK_CHUNK_MAX);
    cr_assert_eq(mp_tun_link_queue_bound(l), G_MAXSIZE);
    cr_assert_eq(mp_tun_link_notsent_lowat(l), 0);
}

Test(tunnel_link, saturated_link_is_measured_then_paced_below_it_once_postcopy_may_come)
{
    gint64 now = 0;
    guint64 written = 0, rwnd = 0;
    g_autoptr(MpTunLink) l = mp_tun_link_new(0, now);

    mp_tun_link_sample(l, now, 0, 0, 0);
    /* under 1 s of saturated intervals: not trusted yet (the first ones
     * are TCP's slow start, slower than the link) */
    cr_assert_not(feed(l, &now, &written, 3, RATE / 2, TRUE, 0, &rwnd));
    cr_assert_not(feed(l, &now, &written, 5, RATE, TRUE, 0, &rwnd));
    cr_assert_not(mp_tun_link_paced(l));
    /* an idle moment in an interval: it does not count */
    cr_assert_not(feed(l, &now, &written, 20, RATE / 3, FALSE, 0, &rwnd));
    /* pre-copy: measured and trusted, but never paced */
    cr_assert_not(feed(l, &now, &written, 6, RATE, TRUE, 0, &rwnd));
    cr_assert_not(mp_tun_link_paced(l));
    cr_assert_gt(mp_tun_link_rate(l), 0);
    /* but the queues in front of it are bounded: 20 ms of it each, so
     * that QEMU's stream does not stand long in front of the link */
    gsize q = mp_tun_link_queue_bound(l);
    cr_assert(q > RATE * 19 / 1000 && q <= RATE * 21 / 1000, "queued %zu", q);
    cr_assert_eq(mp_tun_link_notsent_lowat(l), q);
    /* the stream said post-copy may come: paced from the next sample */
    mp_tun_link_allow_pace(l);
    cr_assert(feed(l, &now, &written, 1, RATE, TRUE, 0, &rwnd));
    cr_assert(mp_tun_link_paced(l));
    guint64 m = mp_tun_link_rate(l);
    cr_assert(m > RATE * 99 / 100 && m < RATE * 101 / 100, "measured %lu",
              (unsigned long)m);
    /* 90 % while the bottleneck's queue drains, then 97 % */
    guint64 p = mp_tun_link_pace(l);
    cr_assert(p > m * 89 / 100 && p < m * 91 / 100, "pace %lu",
              (unsigned long)p);
    feed(l, &now, &written, 6, RATE, TRUE, 0, &rwnd);
    p = mp_tun_link_pace(l);
    cr_assert(p > m * 96 / 100 && p < m * 98 / 100, "pace %lu",
              (unsigned long)p);
    /* the queues in front of the link: a millisecond or so of it */
    cr_assert_eq(mp_tun_link_queue_bound(l), MP_TUN_LINK_QUEUE_MIN);
    cr_assert_eq(mp_tun_link_notsent_lowat(l), MP_TUN_LINK_QUEUE_MIN);
    gsize chunk = mp_tun_link_chunk(l);
    cr_assert(chunk > p * 19 / 10000 && chunk <= p * 2 / 1000 + 1,
              "chunk %zu", chunk);
    json_object *r = mp_tun_link_report(l);
    cr_assert_str_eq(
        json_object_get_string(json_object_object_get(r, "rate_source")),
        "measured");
    json_object *mb = json_object_object_get(r, "measured_bps");
    cr_assert_eq(json_object_get_int64(mb), (gint64)m * 8);
    json_object_put(r);
}

/* Post-copy runs before the pace (under load 3 to 6 s after the switch
 * with postcopy-preempt): the kernel's unsent bytes are bounded by 10 ms
 * of the rate measured so far (in pre-copy 20 ms; before, the kernel's
 * default, up to 1 MB in front of a requested page); with nothing
 * measured the kernel's default stays; once paced, the paced bound. */
Test(tunnel_link, postcopy_bounds_unsent_bytes_before_the_pace)
{
    gint64 now = 0;
    guint64 written = 0, rwnd = 0;
    g_autoptr(MpTunLink) l = mp_tun_link_new(0, now);
    g_autoptr(MpTunLink) quiet = mp_tun_link_new(0, now);

    mp_tun_link_sample(l, now, 0, 0, 0);
    mp_tun_link_postcopy_runs(quiet);
    cr_assert_eq(mp_tun_link_notsent_lowat(quiet), 0);
    /* 1.2 s of a saturated link: measured, not paced (post-copy not
     * announced yet) */
    cr_assert_not(feed(l, &now, &written, 12, RATE, TRUE, 0, &rwnd));
    cr_assert_not(mp_tun_link_paced(l));
    cr_assert_gt(mp_tun_link_rate(l), 0);
    gsize pre = mp_tun_link_notsent_lowat(l);
    cr_assert(pre > RATE * 19 / 1000 && pre <= RATE * 21 / 1000,
              "pre-copy: %zu bytes unsent", pre);
    mp_tun_link_postcopy_runs(l);
    gsize lowat = mp_tun_link_notsent_lowat(l);
    cr_assert(lowat > RATE * 95 / 10000 && lowat <= RATE * 10 / 1000 + 1,
              "%zu bytes unsent", lowat);
    cr_assert_eq(mp_tun_link_queue_bound(l), pre, "not paced: 20 ms");
    /* pacing allowed: paced, and the paced bound */
    mp_tun_link_allow_pace(l);
    cr_assert(feed(l, &now, &written, 1, RATE, TRUE, 0, &rwnd));
    cr_assert_eq(mp_tun_link_notsent_lowat(l), MP_TUN_LINK_QUEUE_MIN);
}

Test(tunnel_link, a_slow_receiver_is_not_the_links_rate)
{
    gint64 now = 0;
    guint64 written = 0, rwnd = 0;
    g_autoptr(MpTunLink) l = mp_tun_link_new(0, now);

    mp_tun_link_sample(l, now, 0, 0, 0);
    /* the peer's window held the kernel back a fifth of each interval */
    cr_assert_not(feed(l, &now, &written, 40, RATE / 4, TRUE, 20 * MS, &rwnd));
    cr_assert_eq(mp_tun_link_rate(l), 0);
    cr_assert_not(mp_tun_link_paced(l));
}

/* `n` intervals of 100 ms in which the link took `rate` bytes/s while
 * something else (the tunnel's window per stream) held the writes back:
 * the connection ran out of frames in every interval and the kernel
 * refused nothing, with `unacked` bytes not yet acknowledged and the
 * kernel's round trips `srtt_us` and `min_us` at each sample. */
static gboolean
feed_window_held(MpTunLink *l, gint64 *now, guint64 *written, int n,
                 guint64 rate, guint64 unacked, guint32 srtt_us,
                 guint32 min_us)
{
    gboolean began = FALSE;
    for (int i = 0; i < n; i++) {
        *now += MP_TUN_LINK_SAMPLE_US;
        *written += rate / 10;
        mp_tun_link_idle(l);
        mp_tun_link_kernel_rtt(l, srtt_us, min_us);
        began |= mp_tun_link_sample(l, *now, *written + unacked, unacked, 0);
    }
    return began;
}

/* Pre-copy over a full 100 Mbit/s link behind the tunnel's window: the
 * kernel's send queue never fills (nothing is refused), but 600 KB wait
 * in front of the bottleneck, 48 ms over the path's 0.2 ms: the link is
 * measured from those intervals (it was not: bench-pair's report said
 * saturated_s 0 at 105 Mbit/s out), trusted after 1 s, and paced once
 * post-copy may come. */
Test(tunnel_link, a_standing_queue_measures_a_link_the_window_holds)
{
    gint64 now = 0;
    guint64 written = 0;
    g_autoptr(MpTunLink) l = mp_tun_link_new(0, now);

    mp_tun_link_sample(l, now, 0, 0, 0);
    cr_assert_not(feed_window_held(l, &now, &written, 15, RATE, 600000,
                                   48 * MS, 200));
    cr_assert_gt(mp_tun_link_rate(l), 0);
    mp_tun_link_allow_pace(l);
    cr_assert(mp_tun_link_take_held(l), "a full link holds the tunnel back");
    cr_assert(feed_window_held(l, &now, &written, 10, RATE, 600000, 48 * MS,
                               200));
    guint64 m = mp_tun_link_rate(l);
    cr_assert(m > RATE * 99 / 100 && m < RATE * 101 / 100, "measured %lu",
              (unsigned long)m);
    json_object *r = mp_tun_link_report(l);
    double q = json_object_get_double(json_object_object_get(r, "queue_s"));
    double sat =
        json_object_get_double(json_object_object_get(r, "saturated_s"));
    cr_assert(q >= 1.0 && q == sat, "queue_s %.1f saturated_s %.1f", q, sat);
    json_object_put(r);
}

/* What is no standing queue: a round trip near the least one (the link
 * has room: the window, or QEMU, is the limit), and a long round trip
 * with a segment or two unacknowledged (a delayed ACK on a quiet link,
 * 40 ms, would read as a 40 ms queue). */
Test(tunnel_link, no_queue_or_a_delayed_ack_measures_nothing)
{
    gint64 now = 0;
    guint64 written = 0;
    g_autoptr(MpTunLink) room = mp_tun_link_new(0, now);
    g_autoptr(MpTunLink) quiet = mp_tun_link_new(0, now);

    mp_tun_link_sample(room, now, 0, 0, 0);
    cr_assert_not(feed_window_held(room, &now, &written, 40, RATE / 2,
                                   600000, 1200, 200));
    cr_assert_eq(mp_tun_link_rate(room), 0);
    cr_assert_not(mp_tun_link_take_held(room));
    now = written = 0;
    mp_tun_link_sample(quiet, now, 0, 0, 0);
    cr_assert_not(feed_window_held(quiet, &now, &written, 40, 20000, 2896,
                                   40 * MS, 200));
    cr_assert_eq(mp_tun_link_rate(quiet), 0);
}

Test(tunnel_link, given_rate_paces_from_the_start)
{
    g_autoptr(MpTunLink) l = mp_tun_link_new(1000000, 0);

    cr_assert(mp_tun_link_paced(l));
    cr_assert_eq(mp_tun_link_pace(l), 1000000);
    /* a full bucket: 16 KiB at once (2 ms of the rate is less) */
    gsize a = mp_tun_link_allowance(l, 0);
    cr_assert_eq(a, MP_TUN_LINK_QUEUE_MIN, "%zu", a);
    mp_tun_link_spend(l, a);
    cr_assert_eq(mp_tun_link_allowance(l, 0), 0);
    /* urgent bytes spend too: the sum stays below the rate */
    mp_tun_link_spend(l, 10000);
    cr_assert_eq(mp_tun_link_allowance(l, 5 * MS), 0);
    /* 10000 bytes owed + 4096 wanted at 1 MB/s: 14.1 ms */
    gint64 at = mp_tun_link_ready_at(l, 4096, 5 * MS);
    cr_assert(at >= 14000 && at <= 14200, "%ld", (long)at);
    cr_assert(mp_tun_link_allowance(l, 20 * MS) > 4096);
    /* never measured: a given rate stays */
    gint64 now = 0;
    guint64 written = 0, rwnd = 0;
    feed(l, &now, &written, 30, RATE, TRUE, 0, &rwnd);
    cr_assert_eq(mp_tun_link_pace(l), 1000000);
    json_object *r = mp_tun_link_report(l);
    cr_assert_str_eq(
        json_object_get_string(json_object_object_get(r, "rate_source")),
        "given");
    json_object_put(r);
}

/* A writer that wakes late (a busy host) gets a bucket and a bulk queue
 * that cover the gap, or the link idles between its wake-ups. */
Test(tunnel_link, late_writer_gets_a_larger_bucket)
{
    g_autoptr(MpTunLink) l = mp_tun_link_new(RATE, 0);

    /* 2 ms of the pace, 1 ms queued */
    cr_assert_eq(mp_tun_link_allowance(l, 100 * MS), RATE * 2 / 1000);
    cr_assert_eq(mp_tun_link_queue_bound(l), MP_TUN_LINK_QUEUE_MIN);
    for (int i = 0; i < 100; i++)
        mp_tun_link_woke(l, 8 * MS);
    gsize a = mp_tun_link_allowance(l, 200 * MS);
    cr_assert(a > RATE * 15 / 1000 && a <= RATE * 16 / 1000, "%zu", a);
    gsize q = mp_tun_link_queue_bound(l);
    cr_assert(q > RATE * 7 / 1000 && q <= RATE * 8 / 1000, "%zu", q);
    /* at most 20 ms however late */
    for (int i = 0; i < 100; i++)
        mp_tun_link_woke(l, 500 * MS);
    cr_assert_eq(mp_tun_link_allowance(l, 900 * MS), RATE * 20 / 1000);
}

Test(tunnel_link, round_trips_from_pongs)
{
    g_autoptr(MpTunLink) l = mp_tun_link_new(0, 0);

    cr_assert_eq(mp_tun_link_rtt_us(l), -1);
    mp_tun_link_pinged(l);
    mp_tun_link_pong(l, 1000000000ull, 1003000000ull);
    cr_assert_eq(mp_tun_link_rtt_us(l), 3000);
    mp_tun_link_pong(l, 2000000000ull, 2001500000ull);
    mp_tun_link_pong(l, 3000000000ull, 3002000000ull);
    /* a time from the future is not one of ours */
    mp_tun_link_pong(l, 5000000000ull, 4000000000ull);
    cr_assert_eq(mp_tun_link_rtt_us(l), 2000);
    json_object *r = mp_tun_link_report(l);
    cr_assert_float_eq(
        json_object_get_double(json_object_object_get(r, "rtt_min_ms")), 1.5,
        1e-9);
    cr_assert_eq(json_object_get_int64(json_object_object_get(r, "pongs")), 3);
    json_object_put(r);
}

/* ---- QEMU at its max-bandwidth ---- */

#define MIB (1024.0 * 1024.0)

/* Seconds of `rate` bytes/s (times `wobble` every other second). */
static double
cap_feed(MpTunCapWatch *w, gint64 *now, guint64 *bytes, int n, double rate,
         double wobble, gboolean room)
{
    double told = 0;
    for (int i = 0; i < n; i++) {
        *now += G_USEC_PER_SEC;
        *bytes += (guint64)(rate * (i % 2 ? wobble : 1));
        double r = mp_tun_cap_sample(w, *now, *bytes, room);
        if (r > 0) {
            cr_assert_eq(told, 0, "told twice");
            told = r;
        }
    }
    return told;
}

Test(tunnel_cap, steady_stream_with_room_is_told_once)
{
    MpTunCapWatch w;
    gint64 now = 0;
    guint64 bytes = 0;

    mp_tun_cap_init(&w, now);
    /* QEMU's default cap: 128 MiB/s, its limiter a little below */
    double r = cap_feed(&w, &now, &bytes, 10, 127.4 * MIB, 1.01, TRUE);
    cr_assert(r > 127 * MIB && r < 128.5 * MIB, "%f", r / MIB);
    cr_assert_eq(cap_feed(&w, &now, &bytes, 10, 127.4 * MIB, 1, TRUE), 0);
}

Test(tunnel_cap, an_unsteady_stream_or_a_full_link_is_not_a_cap)
{
    MpTunCapWatch w;
    gint64 now = 0;
    guint64 bytes = 0;

    mp_tun_cap_init(&w, now);
    /* a guest's stream: 20 % up and down */
    cr_assert_eq(cap_feed(&w, &now, &bytes, 10, 60 * MIB, 1.2, TRUE), 0);
    /* steady, but the link held the tunnel back: the link's rate */
    cr_assert_eq(cap_feed(&w, &now, &bytes, 10, 11.9 * MIB, 1, FALSE), 0);
    /* a trickle */
    cr_assert_eq(cap_feed(&w, &now, &bytes, 10, 0.2 * MIB, 1, TRUE), 0);
    /* steady with room, but not at QEMU's default cap: a source QEMU
     * short of CPU (bench-pair, 100mbit comp, 46.8 MiB/s) */
    cr_assert_eq(cap_feed(&w, &now, &bytes, 10, 46.8 * MIB, 1, TRUE), 0);
    /* room for two seconds, held the third: not three seconds in a row */
    for (int i = 0; i < 5; i++) {
        cr_assert_eq(cap_feed(&w, &now, &bytes, 2, 32 * MIB, 1, TRUE), 0);
        cr_assert_eq(cap_feed(&w, &now, &bytes, 1, 32 * MIB, 1, FALSE), 0);
    }
}

/* ---- on a connection ---- */

typedef struct {
    GArray *order; /* stream of each DATA frame, in wire order */
} Seen;

static MpRecordAction
on_wire(const MpTunFrame *f, gpointer data)
{
    Seen *s = data;
    if (f->type == MP_TUN_DATA) {
        guint16 id = f->stream;
        g_array_append_val(s->order, id);
    }
    return MP_REC_CONTINUE;
}

/* Reads what reached the far end so far. */
static void
drain(int fd, MpTunParser *p)
{
    guint8 buf[65536];
    ssize_t n;
    while ((n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT)) > 0) {
        gsize used = 0;
        g_autoptr(GError) err = NULL;
        MpFeedStatus st = mp_tun_parser_feed(p, buf, n, &used, &err);
        cr_assert_neq(st, MP_FEED_ERROR, "%s", err ? err->message : "");
    }
}

static gboolean
has(const Seen *s, guint16 stream)
{
    for (guint i = 0; i < s->order->len; i++)
        if (g_array_index(s->order, guint16, i) == stream)
            return TRUE;
    return FALSE;
}

static const MpTunConnHooks no_hooks = {0};

/* Eight bulk frames of 32 KiB paced at 64 KiB/s (4 s of them); once the
 * first bulk bytes are on the wire, an urgent frame: it is written right
 * after the bulk frame being written, before every other queued one. */
Test(tunnel_link, urgent_frame_overtakes_paced_bulk, .timeout = 30)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    g_autoptr(GSocket) sock = g_socket_new_from_fd(sv[0], NULL);
    cr_assert_not_null(sock);
    MpTunHello h = {
        .version_min = MP_TUN_VERSION,
        .version_max = MP_TUN_VERSION,
        .role = MP_TUN_ROLE_SOURCE,
        .page_size = 4096,
        .max_payload = MP_TUN_MAX_PAYLOAD_DEFAULT,
        .software = "test",
    };
    g_autoptr(GIOStream) stream = mp_tun_plain_stream(sock);
    g_autoptr(MpTunConn) c = mp_tun_conn_new(stream, "test tunnel", &h,
                                             &no_hooks, NULL);
    mp_tun_conn_set_rate(c, 64 << 10);
    Seen seen = {g_array_new(FALSE, FALSE, sizeof(guint16))};
    g_autoptr(MpTunParser) p = mp_tun_parser_new("far end", on_wire, &seen);
    mp_tun_parser_set_max_payload(p, MP_TUN_MAX_PAYLOAD_DEFAULT);

    static guint8 body[32 << 10];
    for (guint64 seq = 1; seq <= 8; seq++) {
        g_autoptr(GByteArray) b = g_byte_array_new();
        mp_tun_write_data(b, 0, 1, seq, 0, body, sizeof(body));
        mp_tun_conn_send(c, b->data, b->len, FALSE);
    }
    /* until the first bulk frame is under way */
    while (mp_tun_conn_bytes_out(c) <= 1024) {
        g_main_context_iteration(NULL, FALSE);
        drain(sv[1], p);
        g_usleep(1000);
    }
    g_autoptr(GByteArray) u = g_byte_array_new();
    mp_tun_write_data(u, MP_TUN_FLAG_URGENT, 3, 1, 0, body, 4096);
    mp_tun_conn_send(c, u->data, u->len, TRUE);
    while (!has(&seen, 3)) {
        g_main_context_iteration(NULL, FALSE);
        drain(sv[1], p);
        g_usleep(1000);
    }
    /* the bulk frame under way (or, if the bucket's first burst took two,
     * those two), then the urgent one */
    guint at = 0;
    while (g_array_index(seen.order, guint16, at) != 3)
        at++;
    cr_assert(at >= 1 && at <= 2, "urgent frame after %u bulk frames", at);
    g_array_free(seen.order, TRUE);
    close(sv[1]);
}
