/* test-relay-queue.c: a relay channel's queue with edits (what the
 * post-copy lane uses): insertions and replacements go out at their queue
 * offsets, in order, and the queued bytes themselves never move. */
#include "config.h"
#include <string.h>
#include <sys/socket.h>
#include <gio/gio.h>
#include <criterion/criterion.h>
#include "pcopy-lane.h"
#include "pipeline.h"
#include "rate-pacer.h"
#include "relay-channel.h"
#include "stage-util.h"

#define N 100000

static GSocket *
listener(GSocketAddress **addr)
{
    g_autoptr(GInetAddress) lo =
        g_inet_address_new_loopback(G_SOCKET_FAMILY_IPV4);
    g_autoptr(GSocketAddress) a = g_inet_socket_address_new(lo, 0);
    GSocket *s = g_socket_new(G_SOCKET_FAMILY_IPV4, G_SOCKET_TYPE_STREAM,
                              G_SOCKET_PROTOCOL_TCP, NULL);
    cr_assert(g_socket_bind(s, a, TRUE, NULL) && g_socket_listen(s, NULL));
    *addr = g_socket_get_local_address(s, NULL);
    return s;
}

static GSocket *
dial(GSocketAddress *a)
{
    GSocket *s = g_socket_new(G_SOCKET_FAMILY_IPV4, G_SOCKET_TYPE_STREAM,
                              G_SOCKET_PROTOCOL_TCP, NULL);
    cr_assert(g_socket_connect(s, a, NULL, NULL));
    return s;
}

typedef struct {
    gboolean connected;
} State;

static void
on_data(MpRelayChannel *ch, MpDir dir, const guint8 *buf, gsize len,
        gpointer user_data)
{
    if (dir == MP_DIR_TO_DST)
        mp_relay_channel_send(ch, dir, buf, len);
}

static void
on_connected(MpRelayChannel *ch, const GError *error, gpointer user_data)
{
    cr_assert_null(error);
    ((State *)user_data)->connected = TRUE;
}

static const MpRelayChannelHooks hooks = {.data = on_data,
                                          .connected = on_connected};

static void
spin_until(gboolean (*done)(gpointer), gpointer data)
{
    gint64 deadline = g_get_monotonic_time() + 20 * G_USEC_PER_SEC;
    while (!done(data)) {
        cr_assert(g_get_monotonic_time() < deadline, "timed out");
        g_main_context_iteration(NULL, TRUE);
    }
}

static gboolean
all_queued(gpointer ch)
{
    return mp_relay_channel_bytes_sent(ch, MP_DIR_TO_DST) == N;
}

static gboolean
connected(gpointer st)
{
    return ((State *)st)->connected;
}

Test(relay_queue, edits_go_out_in_place)
{
    g_autoptr(GSocketAddress) src_addr = NULL, dst_addr = NULL;
    g_autoptr(GSocket) src_l = listener(&src_addr);
    g_autoptr(GSocket) dst_l = listener(&dst_addr);
    g_autoptr(GSocket) client = dial(src_addr);
    g_autoptr(GSocket) down = g_socket_accept(src_l, NULL, NULL);
    State st = {0};
    g_autoptr(MpRelayChannel) ch = mp_relay_channel_new(down, 1, &hooks, &st);
    /* 20 KB/s: the queue stays full while the edits are made */
    g_autoptr(MpRatePacer) slow = mp_rate_pacer_new(20000, 0);
    guint8 *data = g_malloc(N);

    for (guint i = 0; i < N; i++)
        data[i] = 'a' + i % 26;
    mp_relay_channel_set_filtered(ch, MP_DIR_TO_DST);
    mp_relay_channel_set_pacer(ch, MP_DIR_TO_DST, slow);
    mp_relay_channel_start(ch);
    mp_relay_channel_connect(ch, dst_addr, 5000, 0);
    g_autoptr(GSocket) up = g_socket_accept(dst_l, NULL, NULL);
    spin_until(connected, &st);
    cr_assert_eq(g_socket_send(client, (char *)data, N, NULL, NULL), N);
    spin_until(all_queued, ch);

    guint64 head = mp_relay_channel_bytes_written(ch, MP_DIR_TO_DST);
    cr_assert_lt(head, 40000, "%" G_GUINT64_FORMAT " written already", head);
    /* a hole, a page put in front, a header written out, two insertions
     * at one offset in order */
    cr_assert(mp_relay_channel_queue_edit(ch, MP_DIR_TO_DST, 60000, 1000, NULL,
                                          0));
    cr_assert(mp_relay_channel_queue_edit(ch, MP_DIR_TO_DST, 50000, 8,
                                          (const guint8 *)"HEADER!!name", 12));
    cr_assert(mp_relay_channel_queue_edit(ch, MP_DIR_TO_DST, 50000, 0,
                                          (const guint8 *)"first", 5));
    cr_assert(mp_relay_channel_queue_edit(ch, MP_DIR_TO_DST, 50000, 0,
                                          (const guint8 *)"second", 6));
    /* two replacements of the same bytes, or bytes not queued: refused */
    cr_assert(!mp_relay_channel_queue_edit(ch, MP_DIR_TO_DST, 50000, 4,
                                           (const guint8 *)"x", 1));
    cr_assert(!mp_relay_channel_queue_edit(ch, MP_DIR_TO_DST, N - 10, 20,
                                           NULL, 0));
    cr_assert(!mp_relay_channel_queue_edit(ch, MP_DIR_TO_DST, 0, 0,
                                           (const guint8 *)"x", 1));
    /* a dropped replacement: the bytes go out as queued */
    cr_assert(mp_relay_channel_queue_edit(ch, MP_DIR_TO_DST, 70000, 3,
                                          (const guint8 *)"zz", 2));
    cr_assert(mp_relay_channel_queue_unedit(ch, MP_DIR_TO_DST, 70000));
    const guint8 *peek = mp_relay_channel_queue_peek(ch, MP_DIR_TO_DST,
                                                     60000, 4);
    cr_assert(peek && memcmp(peek, data + 60000, 4) == 0);

    mp_relay_channel_set_pacer(ch, MP_DIR_TO_DST, NULL);
    g_socket_shutdown(client, FALSE, TRUE, NULL);
    GByteArray *want = g_byte_array_new();
    g_byte_array_append(want, data, 50000);
    g_byte_array_append(want, (const guint8 *)"firstsecondHEADER!!name", 23);
    g_byte_array_append(want, data + 50008, 60000 - 50008);
    g_byte_array_append(want, data + 61000, N - 61000);

    GByteArray *got = g_byte_array_new();
    g_socket_set_blocking(up, FALSE);
    gint64 deadline = g_get_monotonic_time() + 20 * G_USEC_PER_SEC;
    for (;;) {
        guint8 buf[65536];
        gssize n = g_socket_receive(up, (char *)buf, sizeof(buf), NULL, NULL);
        if (n == 0)
            break;
        if (n > 0)
            g_byte_array_append(got, buf, n);
        else
            g_main_context_iteration(NULL, FALSE);
        cr_assert(g_get_monotonic_time() < deadline, "timed out");
    }
    cr_assert_eq(got->len, want->len);
    cr_assert(memcmp(got->data, want->data, want->len) == 0);
    g_byte_array_unref(got);
    g_byte_array_unref(want);
    g_free(data);
}

/* A filtered direction reads into its write queue, `gap` bytes past the
 * queue's end: a hook that holds bytes back, drops some and replaces
 * others (as the stream editor does) must still get exactly its output
 * on the wire, whatever the reads' sizes. */
typedef struct {
    State st;
    GByteArray *held; /* the tail of the last read, sent before the next */
    gboolean ended;
} Shrinker;

#define HOLD_BACK 3000

static void
shrink_data(MpRelayChannel *ch, MpDir dir, const guint8 *buf, gsize len,
            gpointer user_data)
{
    Shrinker *sh = user_data;

    if (dir != MP_DIR_TO_DST)
        return;
    mp_relay_channel_send(ch, dir, sh->held->data, sh->held->len);
    g_byte_array_set_size(sh->held, 0);
    gsize keep = len > HOLD_BACK ? len - HOLD_BACK : 0;
    /* 'q' is dropped, 'z' replaced by a 'Z' that is not among the read
     * bytes, the rest goes out in runs taken in place */
    gsize run = 0;
    for (gsize i = 0; i < keep; i++) {
        if (buf[i] != 'q' && buf[i] != 'z')
            continue;
        mp_relay_channel_send(ch, dir, buf + run, i - run);
        if (buf[i] == 'z')
            mp_relay_channel_send(ch, dir, (const guint8 *)"Z", 1);
        run = i + 1;
    }
    mp_relay_channel_send(ch, dir, buf + run, keep - run);
    for (gsize i = keep; i < len; i++)
        if (buf[i] != 'q')
            g_byte_array_append(sh->held, buf[i] == 'z' ? (const guint8 *)"Z"
                                                        : buf + i, 1);
    mp_relay_channel_set_read_gap(ch, dir, sh->held->len);
}

static void
shrink_end(MpRelayChannel *ch, MpDir dir, MpEndReason how, gpointer user_data)
{
    Shrinker *sh = user_data;

    if (dir != MP_DIR_TO_DST)
        return;
    mp_relay_channel_send(ch, dir, sh->held->data, sh->held->len);
    g_byte_array_set_size(sh->held, 0);
    sh->ended = TRUE;
}

static const MpRelayChannelHooks shrink_hooks = {
    .data = shrink_data, .end = shrink_end, .connected = on_connected};

/* `early`: the queue's memory is readied as before post-copy
 * (mp_relay_channel_prepare_limit), and its limit raised halfway. */
static void
filter_through(gboolean early)
{
    enum { LEN = 3 << 20 };
    g_autoptr(GSocketAddress) src_addr = NULL, dst_addr = NULL;
    g_autoptr(GSocket) src_l = listener(&src_addr);
    g_autoptr(GSocket) dst_l = listener(&dst_addr);
    g_autoptr(GSocket) client = dial(src_addr);
    g_autoptr(GSocket) down = g_socket_accept(src_l, NULL, NULL);
    Shrinker sh = {.held = g_byte_array_new()};
    g_autoptr(MpRelayChannel) ch =
        mp_relay_channel_new(down, 1, &shrink_hooks, &sh);
    g_autoptr(GRand) rnd = g_rand_new_with_seed(7);
    guint8 *data = g_malloc(LEN);
    GByteArray *want = g_byte_array_new();

    for (guint i = 0; i < LEN; i++) {
        data[i] = 'a' + g_rand_int_range(rnd, 0, 26);
        if (data[i] != 'q')
            g_byte_array_append(want, data[i] == 'z' ? (const guint8 *)"Z"
                                                     : data + i, 1);
    }
    mp_relay_channel_set_filtered(ch, MP_DIR_TO_DST);
    if (early)
        mp_relay_channel_prepare_limit(ch, MP_DIR_TO_DST, 64u << 20);
    mp_relay_channel_start(ch);
    mp_relay_channel_connect(ch, dst_addr, 5000, 0);
    g_autoptr(GSocket) up = g_socket_accept(dst_l, NULL, NULL);
    spin_until(connected, &sh.st);

    /* writes of odd sizes, the destination read as it goes */
    GByteArray *got = g_byte_array_new();
    g_socket_set_blocking(client, FALSE);
    g_socket_set_blocking(up, FALSE);
    gsize off = 0;
    gint64 deadline = g_get_monotonic_time() + 20 * G_USEC_PER_SEC;
    for (;;) {
        guint8 buf[65536];
        if (off < LEN) {
            /* (MIN() evaluates its arguments twice) */
            gsize step = 1 + (gsize)g_rand_int_range(rnd, 0, 200000);
            gsize n = MIN(LEN - off, step);
            gssize w =
                g_socket_send(client, (char *)data + off, n, NULL, NULL);
            if (w > 0)
                off += w;
            if (early && off >= LEN / 2)
                mp_relay_channel_set_limit(ch, MP_DIR_TO_DST, 64u << 20);
            if (off == LEN)
                g_socket_shutdown(client, FALSE, TRUE, NULL);
        }
        gssize n = g_socket_receive(up, (char *)buf, sizeof(buf), NULL, NULL);
        if (n == 0)
            break;
        if (n > 0)
            g_byte_array_append(got, buf, n);
        g_main_context_iteration(NULL, FALSE);
        cr_assert(g_get_monotonic_time() < deadline, "timed out");
    }
    cr_assert(sh.ended);
    cr_assert_eq(got->len, want->len);
    cr_assert(memcmp(got->data, want->data, want->len) == 0);
    g_byte_array_unref(got);
    g_byte_array_unref(want);
    g_byte_array_unref(sh.held);
    g_free(data);
}

Test(relay_queue, filtered_reads_go_out_in_place)
{
    filter_through(FALSE);
}

/* The post-copy read-ahead's memory faulted in by a helper thread while
 * the queue is read into and moved, then the limit raised (the switch):
 * the same bytes go out. */
Test(relay_queue, readied_queue_keeps_the_bytes)
{
    filter_through(TRUE);
}

/* A channel pipeline writing into the channel's queue as the relay's
 * does (in place, relay.c's sink): a stage whose output is longer than
 * its records (ZERO records become 4 KiB PAGE records) gets exactly its
 * output on the wire, the longer parts queued beside the read bytes. */
typedef struct {
    State st;
    MpPipeline *p;
    MpRelayChannel *ch;
    guint64 inserted;
} Piped;

static void
piped_write(gpointer data, const guint8 *buf, gsize len)
{
    Piped *pp = data;
    mp_relay_channel_send(pp->ch, MP_DIR_TO_DST, buf, len);
}

static void
piped_insert(gpointer data, const guint8 *buf, gsize len)
{
    Piped *pp = data;
    pp->inserted += len;
    mp_relay_channel_queue_append(pp->ch, MP_DIR_TO_DST, buf, len);
}

static void
piped_held(gpointer data, gsize held)
{
    Piped *pp = data;
    mp_relay_channel_set_read_gap(pp->ch, MP_DIR_TO_DST, held);
}

static void
piped_data(MpRelayChannel *ch, MpDir dir, const guint8 *buf, gsize len,
           gpointer user_data)
{
    if (dir == MP_DIR_TO_DST)
        mp_pipeline_feed(((Piped *)user_data)->p, buf, len, 0);
}

static void
piped_end(MpRelayChannel *ch, MpDir dir, MpEndReason how, gpointer user_data)
{
    if (dir == MP_DIR_TO_DST)
        mp_pipeline_end(((Piped *)user_data)->p, how, 0);
}

static const MpRelayChannelHooks piped_hooks = {
    .data = piped_data, .end = piped_end, .connected = on_connected};

static void
append(gpointer data, const guint8 *buf, gsize len)
{
    g_byte_array_append(data, buf, len);
}

Test(relay_queue, pipeline_longer_output_in_place)
{
    GByteArray *data = stage_util_load("busy-10.0");
    const gsize want_len = data->len + 15586u * 4095;

    g_autoptr(GSocketAddress) src_addr = NULL, dst_addr = NULL;
    g_autoptr(GSocket) src_l = listener(&src_addr);
    g_autoptr(GSocket) dst_l = listener(&dst_addr);
    g_autoptr(GSocket) client = dial(src_addr);
    g_autoptr(GSocket) down = g_socket_accept(src_l, NULL, NULL);
    MpStage inflate;
    Piped pp = {0};
    MpPipelineSink sink = {.write = piped_write, .insert = piped_insert,
                           .held = piped_held, .data = &pp};
    g_autoptr(MpPipeline) p = mp_pipeline_new(0, MP_DIR_TO_DST);
    g_autoptr(MpRelayChannel) ch =
        mp_relay_channel_new(down, 1, &piped_hooks, &pp);
    g_autoptr(GRand) rnd = g_rand_new_with_seed(7);

    stage_util_inflate_init(&inflate);
    pp.p = p;
    pp.ch = ch;
    mp_pipeline_set_kind(p, MP_CHAN_MAIN, NULL);
    mp_pipeline_set_sink(p, &sink, TRUE, 2u << 20);
    mp_pipeline_add_stage(p, &inflate);
    mp_relay_channel_set_filtered(ch, MP_DIR_TO_DST);
    mp_relay_channel_start(ch);
    mp_relay_channel_connect(ch, dst_addr, 5000, 0);
    g_autoptr(GSocket) up = g_socket_accept(dst_l, NULL, NULL);
    spin_until(connected, &pp.st);

    /* writes of odd sizes, the destination read as it goes */
    GByteArray *got = g_byte_array_new();
    g_socket_set_blocking(client, FALSE);
    g_socket_set_blocking(up, FALSE);
    gsize off = 0;
    gint64 deadline = g_get_monotonic_time() + 60 * G_USEC_PER_SEC;
    for (;;) {
        guint8 buf[65536];
        if (off < data->len) {
            gsize step = 1 + (gsize)g_rand_int_range(rnd, 0, 200000);
            gsize n = MIN(data->len - off, step);
            gssize w = g_socket_send(client, (char *)data->data + off, n,
                                     NULL, NULL);
            if (w > 0)
                off += w;
            if (off == data->len)
                g_socket_shutdown(client, FALSE, TRUE, NULL);
        }
        gssize n = g_socket_receive(up, (char *)buf, sizeof(buf), NULL, NULL);
        if (n == 0)
            break;
        if (n > 0)
            g_byte_array_append(got, buf, n);
        g_main_context_iteration(NULL, FALSE);
        cr_assert(g_get_monotonic_time() < deadline, "timed out");
    }
    cr_assert(mp_pipeline_ended(p));
    cr_assert_eq(inflate.stats.records_changed, 15586);
    cr_assert_gt(pp.inserted, 0);
    cr_assert_eq(got->len, want_len, "%u bytes, %zu expected", got->len,
                 want_len);
    cr_assert_eq(mp_pipeline_bytes_out(p), got->len);
    /* byte for byte what the same stage makes in one piece, not in place */
    GByteArray *want = g_byte_array_new();
    MpPipelineSink to_array = {.write = append, .insert = append,
                               .data = want};
    g_autoptr(MpPipeline) ref = mp_pipeline_new(0, MP_DIR_TO_DST);
    mp_pipeline_set_kind(ref, MP_CHAN_MAIN, NULL);
    mp_pipeline_set_sink(ref, &to_array, FALSE, 2u << 20);
    mp_pipeline_add_stage(ref, &inflate);
    mp_pipeline_feed(ref, data->data, data->len, 0);
    mp_pipeline_end(ref, MP_END_FIN, 0);
    cr_assert_eq(want->len, got->len);
    cr_assert(memcmp(want->data, got->data, got->len) == 0);
    g_byte_array_unref(want);
    g_byte_array_unref(got);
    g_byte_array_unref(data);
}

/* TCP_NOTSENT_LOWAT that cannot be set is an error the caller sees (the
 * post-copy lane warns and reports priority.notsent_lowat: false); it
 * was ignored, and requested pages then waited behind the kernel's whole
 * send buffer unnoticed.  A Unix socket has no TCP options. */
Test(relay_queue, low_latency_failure_is_reported)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    g_autoptr(GSocket) down = g_socket_new_from_fd(sv[0], NULL);
    g_autoptr(GSocket) peer = g_socket_new_from_fd(sv[1], NULL);
    State st = {0};
    g_autoptr(MpRelayChannel) ch = mp_relay_channel_new(down, 1, &hooks, &st);
    g_autoptr(GError) err = NULL;

    /* towards a destination not connected yet: no socket to set it on */
    cr_assert_not(
        mp_relay_channel_set_low_latency(ch, MP_DIR_TO_DST, 16384, &err));
    cr_assert_not_null(err);
    cr_assert(strstr(err->message, "TCP_NOTSENT_LOWAT"), "%s", err->message);
}

/* On a Unix socket (migproxy source's hop) what waits in front of the
 * reader is the writer's send buffer: low latency shrinks it to about
 * `bytes` (the kernel doubles what it is given). */
Test(relay_queue, low_latency_on_a_unix_socket)
{
    int sv[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    g_autoptr(GSocket) down = g_socket_new_from_fd(sv[0], NULL);
    g_autoptr(GSocket) peer = g_socket_new_from_fd(sv[1], NULL);
    State st = {0};
    g_autoptr(MpRelayChannel) ch = mp_relay_channel_new(down, 1, &hooks, &st);
    g_autoptr(GError) err = NULL;
    gint before = 0, after = 0;

    cr_assert(g_socket_get_option(down, SOL_SOCKET, SO_SNDBUF, &before, NULL));
    cr_assert(mp_relay_channel_set_low_latency(ch, MP_DIR_TO_SRC, 16384, &err),
              "%s", err ? err->message : "?");
    cr_assert(g_socket_get_option(down, SOL_SOCKET, SO_SNDBUF, &after, NULL));
    cr_assert_leq(after, 16384, "SO_SNDBUF %d (before: %d)", after, before);
    cr_assert_gt(before, after);
}

/* The path's rate is measured only while the network holds the relay
 * back: neither a destination that does not read (its window is the
 * limit) nor one that reads everything (the queue runs dry) saturates the
 * channel, and the bytes counted are those it took.  (The network case
 * needs a bottleneck: bench/bench-postcopy-relay.sh, docs/benchmarks.md.) */
static void
push(GSocket *client, const guint8 *data, gsize len, gint64 for_us)
{
    gint64 end = g_get_monotonic_time() + for_us;
    while (g_get_monotonic_time() < end) {
        if (len)
            g_socket_send(client, (const char *)data, len, NULL, NULL);
        g_main_context_iteration(NULL, FALSE);
        g_usleep(1000);
    }
}

static guint64
drain(GSocket *up, gint64 for_us)
{
    guint64 got = 0;
    gint64 end = g_get_monotonic_time() + for_us;
    while (g_get_monotonic_time() < end) {
        guint8 buf[65536];
        gssize n = g_socket_receive(up, (char *)buf, sizeof(buf), NULL, NULL);
        if (n > 0)
            got += n;
        g_main_context_iteration(NULL, FALSE);
        if (n <= 0)
            g_usleep(1000);
    }
    return got;
}

Test(relay_queue, drain_sample_sees_saturation)
{
    g_autoptr(GSocketAddress) src_addr = NULL, dst_addr = NULL;
    g_autoptr(GSocket) src_l = listener(&src_addr);
    g_autoptr(GSocket) dst_l = listener(&dst_addr);
    g_autoptr(GSocket) client = dial(src_addr);
    g_autoptr(GSocket) down = g_socket_accept(src_l, NULL, NULL);
    State st = {0};
    g_autoptr(MpRelayChannel) ch = mp_relay_channel_new(down, 1, &hooks, &st);
    guint8 *data = g_malloc0(N);
    gboolean full = TRUE;

    mp_relay_channel_set_filtered(ch, MP_DIR_TO_DST);
    mp_relay_channel_start(ch);
    cr_assert_eq(mp_relay_channel_drain_sample(ch, MP_DIR_TO_DST, &full), 0);
    cr_assert(!full, "not connected, yet saturated");
    mp_relay_channel_connect(ch, dst_addr, 5000, 0);
    g_autoptr(GSocket) up = g_socket_accept(dst_l, NULL, NULL);
    spin_until(connected, &st);
    g_socket_set_blocking(client, FALSE);
    g_socket_set_blocking(up, FALSE);

    /* the destination reads nothing: every buffer on the way fills, but
     * the receiver's window holds the relay back, not the network: its
     * rate is not the path's (on loopback, no network ever does) */
    push(client, data, N, 500000);
    mp_relay_channel_drain_sample(ch, MP_DIR_TO_DST, &full);
    push(client, data, N, 100000);
    mp_relay_channel_drain_sample(ch, MP_DIR_TO_DST, &full);
    cr_assert(!full, "a receiver that reads nothing counted as the path");

    /* it reads everything and the source stops: the queue runs dry */
    guint64 got = drain(up, 300000);
    guint64 n = mp_relay_channel_drain_sample(ch, MP_DIR_TO_DST, &full);
    cr_assert(!full, "the queue ran dry, yet saturated");
    cr_assert_gt(n, 0);
    /* every byte taken is counted once, over all the samples */
    got += drain(up, 100000);
    n = mp_relay_channel_drain_sample(ch, MP_DIR_TO_DST, &full);
    cr_assert(!full);
    g_free(data);
    cr_assert_gt(got, 0);
}

/* A deep queue (the post-copy read-ahead: QEMU sends faster than the
 * destination takes) costs a bounded number of moves per byte: before,
 * every read moved the whole queue down to free what the destination had
 * taken since the last one (quadratic: tens of ms per read at 100 MiB,
 * the loop blocked while page requests waited). */
Test(relay_queue, deep_queue_moves_linearly)
{
    enum { TOTAL = 48 << 20, STEP = 1 << 20 };
    g_autoptr(GSocketAddress) src_addr = NULL, dst_addr = NULL;
    g_autoptr(GSocket) src_l = listener(&src_addr);
    g_autoptr(GSocket) dst_l = listener(&dst_addr);
    g_autoptr(GSocket) client = dial(src_addr);
    g_autoptr(GSocket) down = g_socket_accept(src_l, NULL, NULL);
    State st = {0};
    g_autoptr(MpRelayChannel) ch = mp_relay_channel_new(down, 1, &hooks, &st);
    guint8 *data = g_malloc0(STEP);

    mp_relay_channel_set_filtered(ch, MP_DIR_TO_DST);
    mp_relay_channel_set_limit(ch, MP_DIR_TO_DST, 64u << 20);
    mp_relay_channel_start(ch);
    mp_relay_channel_connect(ch, dst_addr, 5000, 0);
    g_autoptr(GSocket) up = g_socket_accept(dst_l, NULL, NULL);
    spin_until(connected, &st);
    g_socket_set_blocking(client, FALSE);
    g_socket_set_blocking(up, FALSE);

    /* the destination takes a little per turn, the source a lot */
    guint64 sent = 0, got = 0;
    gint64 deadline = g_get_monotonic_time() + 60 * G_USEC_PER_SEC;
    while (got < TOTAL) {
        if (sent < TOTAL) {
            gssize w = g_socket_send(client, (const char *)data,
                                     MIN(STEP, TOTAL - sent), NULL, NULL);
            if (w > 0)
                sent += w;
        }
        g_main_context_iteration(NULL, FALSE);
        guint8 buf[32768];
        gssize n = g_socket_receive(up, (char *)buf,
                                    sent < TOTAL ? 8192 : sizeof(buf), NULL,
                                    NULL);
        if (n > 0)
            got += n;
        cr_assert(g_get_monotonic_time() < deadline, "timed out");
    }
    guint64 moved = mp_relay_channel_bytes_moved(ch, MP_DIR_TO_DST);
    g_printerr("deep_queue_moves_linearly: %.1f MB moved for %.1f MB\n",
               moved / 1e6, got / 1e6);
    cr_assert_leq(moved, 4ull * TOTAL, "%" G_GUINT64_FORMAT " bytes moved",
                  moved);
    g_free(data);
}

/* The post-copy read-ahead when --queue is not given: the guest's RAM and
 * its headers, within a quarter of MemAvailable and 8 GiB, at least
 * 16 MiB. */
Test(pcopy_lane, auto_queue)
{
    const guint64 M = 1u << 20, G = G_GUINT64_CONSTANT(1) << 30;

    /* 512 MiB guest, 23 GiB available: the whole RAM + 1/512 + 1 MiB */
    cr_assert_eq(mp_pcopy_auto_queue(512 * M, 23 * G), 512 * M + M + M);
    /* a quarter of what is available bounds it */
    cr_assert_eq(mp_pcopy_auto_queue(4 * G, 2 * G), G / 2);
    /* and 8 GiB, however much is available */
    cr_assert_eq(mp_pcopy_auto_queue(64 * G, 1024 * G), 8 * G);
    cr_assert_eq(mp_pcopy_auto_queue(64 * G, 1024 * G),
                 MP_PCOPY_QUEUE_AUTO_MAX);
    /* never below the old default; unknown RAM or memory: that default */
    cr_assert_eq(mp_pcopy_auto_queue(4 * M, 23 * G), 16 * M);
    cr_assert_eq(mp_pcopy_auto_queue(512 * M, 32 * M), 16 * M);
    cr_assert_eq(mp_pcopy_auto_queue(0, 23 * G), MP_PCOPY_QUEUE_MIN);
    cr_assert_eq(mp_pcopy_auto_queue(512 * M, 0), MP_PCOPY_QUEUE_MIN);
    /* absurd sizes from the stream stay within the bound */
    cr_assert_eq(mp_pcopy_auto_queue(G_MAXUINT64 / 2, 1024 * G), 8 * G);
    cr_assert_eq(mp_pcopy_auto_queue(G_MAXUINT64, 1024 * G), 8 * G);
    /* this host's figure is read */
    cr_assert_gt(mp_pcopy_mem_available(), 0);
}

typedef struct {
    guint prepares;
    gsize prepared;
} Readied;

static void
fake_prepare(gpointer q, gsize bytes)
{
    Readied *r = q;
    r->prepares++;
    r->prepared = bytes;
}

static const MpOutSchedulerOps readied_ops = {
    .prepare_read_ahead = fake_prepare,
};

static void
feed_setup(MpPcopyLane *l, guint16 advise_len, guint64 ram)
{
    MpRecord advise = {.kind = MP_REC_COMMAND};
    advise.u.cmd.cmd = MP_QMIG_CMD_POSTCOPY_ADVISE;
    advise.u.cmd.len = advise_len;
    MpRecord size = {.kind = MP_REC_RAM_MEM_SIZE};
    size.u.mem_size.total = ram;

    mp_pcopy_lane_record(l, &advise, 0, 5 + advise_len);
    mp_pcopy_lane_record(l, &size, 100, 40);
    mp_pcopy_lane_record(l, &size, 200, 40); /* (once is enough) */
}

/* With post-copy advised, the lane asks for the read-ahead's memory once
 * the RAM size is known, during pre-copy: at most
 * MP_PCOPY_QUEUE_EARLY_MAX of the queue; nothing for an ADVISE without
 * postcopy-ram (dirty bitmaps only). */
Test(pcopy_lane, readies_the_read_ahead_in_precopy)
{
    const gsize M = 1u << 20;
    Readied r = {0};
    MpOutScheduler out = {&readied_ops, &r};

    g_autoptr(MpPcopyLane) given = mp_pcopy_lane_new(&out, 100 * M);
    feed_setup(given, 16, 512 * M);
    cr_assert_eq(r.prepares, 1);
    cr_assert_eq(r.prepared, 100 * M);

    r = (Readied){0};
    g_autoptr(MpPcopyLane) deep = mp_pcopy_lane_new(&out, 4096 * M);
    feed_setup(deep, 16, 512 * M);
    cr_assert_eq(r.prepares, 1);
    cr_assert_eq(r.prepared, MP_PCOPY_QUEUE_EARLY_MAX);

    r = (Readied){0};
    g_autoptr(MpPcopyLane) bitmaps = mp_pcopy_lane_new(&out, 100 * M);
    feed_setup(bitmaps, 0, 512 * M);
    cr_assert_eq(r.prepares, 0);
}
