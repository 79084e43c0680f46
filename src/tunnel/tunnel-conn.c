/* tunnel-conn.c: one tunnel connection on the glib main loop (see
 * tunnel-conn.h). */
#include "config.h"
#include <errno.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <linux/sockios.h>
#include <gio/gio.h>
#include "tcp-info.h"
#include "tunnel-conn.h"

#define READ_CHUNK (256u << 10)

struct MpTunConn {
    GIOStream *stream; /* a GSocketConnection, or TLS over one */
    GSocket *sock;     /* the TCP socket under it (borrowed from it) */
    GPollableInputStream *in;
    GPollableOutputStream *out;
    char *name;
    MpTunConnHooks hooks;
    gpointer data;
    MpTunHello mine;
    char *software;
    MpTunParser *parser;
    MpTunAgreed agreed;
    gboolean ready;
    /* output: whole frames, urgent lane first; `cur` is being written */
    GQueue urgent, bulk; /* GBytes* */
    GBytes *cur;
    gsize cur_pos;
    gsize queued;
    gboolean was_high;
    /* the link's rate and the pace of bulk frames (tunnel-link.h) */
    MpTunLink *link;
    gsize lowat; /* the TCP_NOTSENT_LOWAT set (0: the kernel's default) */
    gsize bulk_queued;
    gboolean cur_urgent, bulk_full;
    guint tick_id, pace_id, ticks;
    gint64 pace_at; /* when the pace timer should wake the writer */
    guint64 ping_token;
    /* a peer that stopped without a FIN or a reset (its host died, the
     * network went): nothing from it for ping_timeout_ms (0: no limit)
     * since heard_us, the last byte it sent */
    guint ping_timeout_ms;
    gint64 heard_us;
    GSource *in_source, *out_source;
    guint8 *rbuf;
    guint64 bytes_in, bytes_out;
    gboolean end_sent, end_received, eof;
    guint8 peer_end_code;
    GError *error;   /* the failure, once failed */
    gboolean done;   /* closed: only the idle is left */
    guint closed_id;
};

static void update_watch(MpTunConn *c);
static gboolean write_some(MpTunConn *c);

static void
stop_source(GSource **src)
{
    if (*src) {
        g_source_destroy(*src);
        g_clear_pointer(src, g_source_unref);
    }
}

static void
stop_watch(MpTunConn *c)
{
    stop_source(&c->in_source);
    stop_source(&c->out_source);
}

static gboolean
closed_idle(gpointer data)
{
    MpTunConn *c = data;
    c->closed_id = 0;
    if (c->hooks.closed)
        c->hooks.closed(c, c->error, c->peer_end_code, c->data);
    return G_SOURCE_REMOVE;
}

/* The connection is over (cleanly if `error` is NULL). */
static void
finish(MpTunConn *c, GError *error)
{
    if (c->done) {
        g_clear_error(&error);
        return;
    }
    c->done = TRUE;
    c->error = error;
    stop_watch(c);
    /* the socket, not the stream: a TLS close would block for its
     * close_notify, and END is what tells a clean end */
    g_socket_close(c->sock, NULL);
    c->closed_id = g_idle_add(closed_idle, c);
}

/* Takes the reference `b`. */
static void
queue_frame(MpTunConn *c, GBytes *b, gboolean urgent)
{
    gsize len = g_bytes_get_size(b);
    g_queue_push_tail(urgent ? &c->urgent : &c->bulk, b);
    c->queued += len;
    if (!urgent)
        c->bulk_queued += len;
}

static void
queue_bytes(MpTunConn *c, const guint8 *buf, gsize len, gboolean urgent)
{
    queue_frame(c, g_bytes_new(buf, len), urgent);
}

void
mp_tun_conn_send(MpTunConn *c, const guint8 *buf, gsize len, gboolean urgent)
{
    if (c->done || c->end_sent)
        return;
    queue_bytes(c, buf, len, urgent);
    update_watch(c);
}

void
mp_tun_conn_send_bytes(MpTunConn *c, GBytes *frames, gboolean urgent)
{
    if (c->done || c->end_sent)
        return;
    queue_frame(c, g_bytes_ref(frames), urgent);
    update_watch(c);
}

gsize
mp_tun_conn_queued(const MpTunConn *c)
{
    return c->queued;
}

gboolean
mp_tun_conn_bulk_room(MpTunConn *c)
{
    gboolean room = c->queued < MP_TUN_CONN_QUEUE_HIGH
                    && c->bulk_queued < mp_tun_link_queue_bound(c->link);
    if (!room)
        c->bulk_full = TRUE;
    return room;
}

gsize
mp_tun_conn_chunk(const MpTunConn *c)
{
    return mp_tun_link_chunk(c->link);
}

MpTunLink *
mp_tun_conn_link(const MpTunConn *c)
{
    return c->link;
}

static MpRecordAction
on_frame(const MpTunFrame *f, gpointer data)
{
    MpTunConn *c = data;

    if (c->done)
        return MP_REC_PAUSE;
    if (f->type == MP_TUN_HELLO) {
        g_autoptr(GError) err = NULL;
        if (c->ready) {
            g_set_error(&err, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                        "%s: a second HELLO at offset %" G_GUINT64_FORMAT,
                        c->name, f->offset);
            mp_tun_conn_fail(c, err);
            return MP_REC_PAUSE;
        }
        if (!mp_tun_negotiate(&c->mine, &f->u.hello, &c->agreed, &err)) {
            g_autoptr(GByteArray) b = g_byte_array_new();
            mp_tun_write_end(b, MP_TUN_END_REFUSED, err->message);
            queue_bytes(c, b->data, b->len, TRUE);
            c->end_sent = TRUE;
            g_prefix_error(&err, "%s: ", c->name);
            /* the END goes out if the socket takes it now */
            update_watch(c);
            mp_tun_conn_fail(c, err);
            return MP_REC_PAUSE;
        }
        c->ready = TRUE;
        mp_tun_parser_set_max_payload(c->parser, c->agreed.max_payload);
        if (c->hooks.ready)
            c->hooks.ready(c, &c->agreed, c->data);
        return MP_REC_CONTINUE;
    }
    if (f->type == MP_TUN_END) {
        c->end_received = TRUE;
        c->peer_end_code = f->u.end.code;
        if (f->u.end.code != MP_TUN_END_DONE
            && f->u.end.code != MP_TUN_END_SHUTDOWN) {
            g_autoptr(GError) err = NULL;
            g_set_error(&err, G_IO_ERROR, G_IO_ERROR_CONNECTION_CLOSED,
                        "%s: the peer ended the tunnel: %s%s%s", c->name,
                        f->u.end.code == MP_TUN_END_REFUSED ? "refused"
                                                            : "error",
                        f->u.end.reason && *f->u.end.reason ? ": " : "",
                        f->u.end.reason ? f->u.end.reason : "");
            mp_tun_conn_fail(c, err);
            return MP_REC_PAUSE;
        }
        if (!c->end_sent)
            mp_tun_conn_end(c, MP_TUN_END_DONE, NULL);
        return MP_REC_CONTINUE;
    }
    if (!c->ready) {
        g_autoptr(GError) err = NULL;
        g_set_error(&err, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                    "%s: %s frame before the handshake", c->name,
                    mp_tun_frame_type_name(f->type));
        mp_tun_conn_fail(c, err);
        return MP_REC_PAUSE;
    }
    if (f->type == MP_TUN_PONG && f->u.ping.token
        && f->u.ping.token <= c->ping_token)
        mp_tun_link_pong(c->link, f->u.ping.time_ns,
                         g_get_monotonic_time() * 1000);
    if (c->hooks.frame)
        c->hooks.frame(c, f, c->data);
    return c->done ? MP_REC_PAUSE : MP_REC_CONTINUE;
}

/* The least a paced write sends (or the rest of the frame).  The bucket
 * refills with the clock: taking whatever it holds, a writer that loops
 * finds a few bytes in it every time and never stops, a send() per
 * handful of bytes, its main loop busy (post-copy requests waited tens of
 * ms behind it). */
#define PACE_QUANTUM (16u << 10)

static gboolean
paced_again(gpointer data)
{
    MpTunConn *c = data;
    c->pace_id = 0;
    mp_tun_link_woke(c->link, g_get_monotonic_time() - c->pace_at);
    if (write_some(c))
        update_watch(c);
    return G_SOURCE_REMOVE;
}

/* Bulk bytes of `want` that the pace lets out now; 0: a timer wakes the
 * writer when it does.  An urgent frame waiting behind the bulk frame
 * being written makes the rest of that frame go at once (it spends ahead
 * from the bucket): the urgent frame waits for no tokens. */
static gsize
paced(MpTunConn *c, gsize want)
{
    gint64 now = g_get_monotonic_time();

    if (c->cur_urgent || !g_queue_is_empty(&c->urgent)
        || !mp_tun_link_paced(c->link))
        return want;
    gsize least = MIN(want, PACE_QUANTUM);
    gsize allow = mp_tun_link_allowance(c->link, now);
    if (allow >= least)
        return MIN(want, allow);
    if (!c->pace_id) {
        gint64 at = mp_tun_link_ready_at(c->link, least, now);
        c->pace_at = at;
        c->pace_id = g_timeout_add(MAX(1, (at - now + 999) / 1000),
                                   paced_again, c);
    }
    return 0;
}

/* Writes what the socket (and the pace, for bulk frames) takes.
 * @return FALSE once failed. */
static gboolean
write_some(MpTunConn *c)
{
    while (!c->done) {
        if (!c->cur) {
            GBytes *b = g_queue_pop_head(&c->urgent);
            c->cur_urgent = b != NULL;
            if (!b && !g_queue_is_empty(&c->bulk) && paced(c, 1))
                b = g_queue_pop_head(&c->bulk);
            if (!b) {
                if (g_queue_is_empty(&c->bulk))
                    mp_tun_link_idle(c->link);
                break;
            }
            c->cur = b;
            c->cur_pos = 0;
        }
        gsize len;
        const guint8 *p = g_bytes_get_data(c->cur, &len);
        gsize want = paced(c, len - c->cur_pos);
        if (!want)
            break;
        g_autoptr(GError) err = NULL;
        gssize n = g_pollable_output_stream_write_nonblocking(
            c->out, p + c->cur_pos, want, NULL, &err);
        if (n < 0) {
            if (g_error_matches(err, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK)) {
                mp_tun_link_refused(c->link);
                break;
            }
            g_prefix_error(&err, "%s: writing: ", c->name);
            finish(c, g_steal_pointer(&err));
            return FALSE;
        }
        c->cur_pos += n;
        c->queued -= n;
        if (!c->cur_urgent)
            c->bulk_queued -= n;
        c->bytes_out += n;
        mp_tun_link_spend(c->link, n);
        if (c->cur_pos == len)
            g_clear_pointer(&c->cur, g_bytes_unref);
    }
    if ((c->was_high && c->queued < MP_TUN_CONN_QUEUE_HIGH / 2)
        || (c->bulk_full && c->queued < MP_TUN_CONN_QUEUE_HIGH
            && c->bulk_queued < mp_tun_link_queue_bound(c->link))) {
        c->was_high = c->bulk_full = FALSE;
        if (c->hooks.drained)
            c->hooks.drained(c, c->data);
    }
    if (c->queued >= MP_TUN_CONN_QUEUE_HIGH)
        c->was_high = TRUE;
    if (!c->done && c->end_sent && c->end_received && !c->queued)
        finish(c, NULL);
    return !c->done;
}

static void
read_some(MpTunConn *c)
{
    for (int rounds = 0; rounds < 16 && !c->done && !c->eof; rounds++) {
        g_autoptr(GError) err = NULL;
        gssize n = g_pollable_input_stream_read_nonblocking(
            c->in, c->rbuf, READ_CHUNK, NULL, &err);
        if (n < 0) {
            if (g_error_matches(err, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
                return;
            g_prefix_error(&err, "%s: reading: ", c->name);
            finish(c, g_steal_pointer(&err));
            return;
        }
        if (n == 0) {
            c->eof = TRUE;
            g_autoptr(GError) ferr = NULL;
            if (!mp_tun_parser_finish(c->parser, &ferr))
                finish(c, g_steal_pointer(&ferr));
            else if (!c->end_sent || c->queued)
                /* the peer's END came; ours could not go out */
                finish(c, NULL);
            return;
        }
        c->bytes_in += n;
        c->heard_us = g_get_monotonic_time();
        gsize at = 0;
        while (at < (gsize)n && !c->done) {
            gsize used = 0;
            MpFeedStatus st = mp_tun_parser_feed(c->parser, c->rbuf + at,
                                                 n - at, &used, &err);
            at += used;
            if (st == MP_FEED_ERROR) {
                finish(c, g_steal_pointer(&err));
                return;
            }
            if (st == MP_FEED_END) {
                if (at < (gsize)n) {
                    g_set_error(&err, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                                "%s: %zu bytes after END", c->name, n - at);
                    finish(c, g_steal_pointer(&err));
                }
                break;
            }
            if (st == MP_FEED_MORE)
                break;
        }
    }
}

static gboolean
on_io(GObject *stream, gpointer data)
{
    MpTunConn *c = data;

    if (stream == G_OBJECT(c->in))
        read_some(c);
    if (!c->done)
        write_some(c);
    if (!c->done)
        update_watch(c);
    return G_SOURCE_CONTINUE;
}

/* A source on the input (readable) or the output (writable).  Over TLS
 * these also wake for the record layer's own needs. */
static GSource *
watch(MpTunConn *c, gboolean input)
{
    GSource *src = input
                       ? g_pollable_input_stream_create_source(c->in, NULL)
                       : g_pollable_output_stream_create_source(c->out, NULL);
    g_source_set_callback(src, G_SOURCE_FUNC(on_io), c, NULL);
    g_source_attach(src, NULL);
    return src;
}

static void
update_watch(MpTunConn *c)
{
    if (c->done)
        return;
    if (c->eof)
        stop_source(&c->in_source);
    else if (!c->in_source)
        c->in_source = watch(c, TRUE);
    /* bulk bytes held by the pace wait for its timer, not the socket */
    gboolean out = !g_queue_is_empty(&c->urgent) || (c->cur && c->cur_urgent)
                   || ((c->cur || c->queued) && !c->pace_id);
    if (!out)
        stop_source(&c->out_source);
    else if (!c->out_source)
        c->out_source = watch(c, FALSE);
}

/* The TCP socket under `stream` (TLS connections over a socket
 * connection). */
static GSocket *
stream_socket(GIOStream *stream)
{
    while (G_IS_TLS_CONNECTION(stream)) {
        GIOStream *base = NULL;
        g_object_get(stream, "base-io-stream", &base, NULL);
        g_object_unref(base); /* the TLS connection holds it */
        stream = base;
    }
    return G_IS_SOCKET_CONNECTION(stream)
               ? g_socket_connection_get_socket(G_SOCKET_CONNECTION(stream))
               : NULL;
}

/* Has the peer been silent for longer than the timeout?  It sends a
 * PING every second, so a live peer is never silent for long; one whose
 * host stopped, or whose network went without a FIN or a reset, is (TCP
 * itself would wait for minutes, or for ever while nothing is sent).
 * Bytes waiting in our socket are the peer's too: then our own loop ran
 * late (a busy host), not the peer.  Not once the peer sent END: it says
 * nothing more, while ours may still wait behind what we queued. */
static gboolean
peer_silent(MpTunConn *c, gint64 now)
{
    int waiting = 0;

    if (!c->ping_timeout_ms || c->end_received
        || now - c->heard_us <= c->ping_timeout_ms * 1000ll)
        return FALSE;
    if (ioctl(g_socket_get_fd(c->sock), SIOCINQ, &waiting) == 0
        && waiting > 0) {
        c->heard_us = now;
        return FALSE;
    }
    return TRUE;
}

/* Every MP_TUN_LINK_SAMPLE_US: the link's sample, a PING now and then,
 * the peer's silence. */
static gboolean
on_tick(gpointer data)
{
    MpTunConn *c = data;
    int fd = g_socket_get_fd(c->sock);
    int unsent = 0;
    guint64 rwnd = 0;

    if (c->done)
        return G_SOURCE_CONTINUE;
    if (peer_silent(c, g_get_monotonic_time())) {
        /* as a socket error: the owner resumes or fails the tunnel */
        finish(c, g_error_new(G_IO_ERROR, G_IO_ERROR_TIMED_OUT,
                              "%s: nothing from the peer for %u ms (not "
                              "even its PING, sent every second): its host "
                              "or the network between is gone without "
                              "closing the connection; dropped "
                              "(--ping-timeout)",
                              c->name, c->ping_timeout_ms));
        return G_SOURCE_CONTINUE;
    }
    if (ioctl(fd, SIOCOUTQ, &unsent) < 0)
        unsent = 0;
    mp_tcp_rwnd_limited_us(fd, &rwnd);
    guint32 srtt, min_rtt;
    if (mp_tcp_rtt_us(fd, &srtt, &min_rtt))
        mp_tun_link_kernel_rtt(c->link, srtt, min_rtt);
    gboolean began = mp_tun_link_sample(c->link, g_get_monotonic_time(),
                                        c->bytes_out,
                                        (guint64)MAX(unsent, 0), rwnd);
    /* paced (or post-copy runs): the kernel keeps few unsent bytes, so
     * an urgent frame waits behind little */
    gsize lowat = mp_tun_link_notsent_lowat(c->link);
    if (lowat && lowat != c->lowat) {
        int v = (int)lowat;
        if (setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &v, sizeof(v)) < 0
            && !c->lowat)
            g_warning("%s: TCP_NOTSENT_LOWAT: %s; urgent frames wait behind "
                      "the socket's whole send buffer",
                      c->name, g_strerror(errno));
        c->lowat = lowat;
    }
    if (began && c->hooks.paced)
        c->hooks.paced(c, c->data);
    if (c->ready && !c->end_sent && ++c->ticks % MP_TUN_LINK_PING_EVERY == 1) {
        g_autoptr(GByteArray) b = g_byte_array_new();
        mp_tun_write_ping(b, MP_TUN_PING, ++c->ping_token,
                          g_get_monotonic_time() * 1000);
        queue_bytes(c, b->data, b->len, TRUE);
        mp_tun_link_pinged(c->link);
        update_watch(c);
    }
    return G_SOURCE_CONTINUE;
}

void
mp_tun_conn_set_ping_timeout(MpTunConn *c, guint ms)
{
    c->ping_timeout_ms = ms;
}

void
mp_tun_conn_set_rate(MpTunConn *c, guint64 bytes_per_s)
{
    mp_tun_link_free(c->link);
    c->link = mp_tun_link_new(bytes_per_s, g_get_monotonic_time());
    if (bytes_per_s) {
        int lowat = (int)mp_tun_link_notsent_lowat(c->link);
        setsockopt(g_socket_get_fd(c->sock), IPPROTO_TCP, TCP_NOTSENT_LOWAT,
                   &lowat, sizeof(lowat));
        c->lowat = (gsize)lowat;
    }
}

MpTunConn *
mp_tun_conn_new(GIOStream *stream, const char *name, const MpTunHello *mine,
                const MpTunConnHooks *hooks, gpointer data)
{
    MpTunConn *c = g_new0(MpTunConn, 1);
    g_autoptr(GByteArray) b = g_byte_array_new();

    c->stream = g_object_ref(stream);
    c->sock = stream_socket(stream);
    g_assert(c->sock);
    c->in = G_POLLABLE_INPUT_STREAM(g_io_stream_get_input_stream(stream));
    c->out = G_POLLABLE_OUTPUT_STREAM(g_io_stream_get_output_stream(stream));
    g_socket_set_blocking(c->sock, FALSE);
    g_socket_set_option(c->sock, IPPROTO_TCP, TCP_NODELAY, 1, NULL);
    c->name = g_strdup(name);
    c->hooks = *hooks;
    c->data = data;
    c->mine = *mine;
    c->software = g_strdup(mine->software);
    c->mine.software = c->software;
    c->parser = mp_tun_parser_new(name, on_frame, c);
    c->rbuf = g_malloc(READ_CHUNK);
    g_queue_init(&c->urgent);
    g_queue_init(&c->bulk);
    mp_tun_write_preamble(b);
    mp_tun_write_hello(b, &c->mine);
    queue_bytes(c, b->data, b->len, TRUE);
    c->link = mp_tun_link_new(0, g_get_monotonic_time());
    c->heard_us = g_get_monotonic_time(); /* the peer's HELLO is due */
    c->tick_id = g_timeout_add(MP_TUN_LINK_SAMPLE_US / 1000, on_tick, c);
    update_watch(c);
    return c;
}

void
mp_tun_conn_free(MpTunConn *c)
{
    if (!c)
        return;
    stop_watch(c);
    if (c->closed_id)
        g_source_remove(c->closed_id);
    if (c->tick_id)
        g_source_remove(c->tick_id);
    if (c->pace_id)
        g_source_remove(c->pace_id);
    mp_tun_link_free(c->link);
    g_socket_close(c->sock, NULL);
    g_object_unref(c->stream);
    g_queue_clear_full(&c->urgent, (GDestroyNotify)g_bytes_unref);
    g_queue_clear_full(&c->bulk, (GDestroyNotify)g_bytes_unref);
    if (c->cur)
        g_bytes_unref(c->cur);
    mp_tun_parser_free(c->parser);
    g_clear_error(&c->error);
    g_free(c->rbuf);
    g_free(c->software);
    g_free(c->name);
    g_free(c);
}

void
mp_tun_conn_end(MpTunConn *c, guint8 code, const char *reason)
{
    if (c->done || c->end_sent)
        return;
    g_autoptr(GByteArray) b = g_byte_array_new();
    mp_tun_write_end(b, code, reason);
    queue_bytes(c, b->data, b->len, FALSE); /* after every queued frame */
    c->end_sent = TRUE;
    update_watch(c);
}

void
mp_tun_conn_fail(MpTunConn *c, const GError *error)
{
    if (c->done)
        return;
    /* a refusal's END, if queued, gets one try */
    write_some(c);
    finish(c, g_error_copy(error));
}

const char *
mp_tun_conn_name(const MpTunConn *c)
{
    return c->name;
}

guint64
mp_tun_conn_bytes_in(const MpTunConn *c)
{
    return c->bytes_in;
}

guint64
mp_tun_conn_bytes_out(const MpTunConn *c)
{
    return c->bytes_out;
}

gboolean
mp_tun_conn_is_ready(const MpTunConn *c)
{
    return c->ready;
}

gboolean
mp_tun_conn_peer_ended(const MpTunConn *c)
{
    return c->end_received;
}
