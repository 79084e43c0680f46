/* tunnel-source.c: the tunnel end of `migproxy source` (see
 * tunnel-source.h). */
#include "config.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <gio/gio.h>
#include <gio/gunixsocketaddress.h>
#include "address.h"
#include "heap-reuse.h"
#include "tunnel-dial.h"
#include "tunnel-mux.h"
#include "tunnel-source.h"

#define CONNECT_TIMEOUT_MS 10000
#define RETRY_MS           1000
/* After a drop in post-copy: the first try to resume (the peer, which saw
 * the same drop, has let its side go by then), and again after a try the
 * peer closed */
#define RESUME_RETRY_MS 200
/* A hop connection's first bytes name its channel in the OPEN; one that
 * stays silent this long (QEMU 7.2's postcopy-preempt channel) goes
 * without them.  Connections wait in accept order, so the destination
 * still opens them in QEMU's order. */
#define CLASSIFY_MS 100
#define CLASSIFY_POLL_MS 2
#define MFD_MAGIC 0x11223344u
/* The hop is a Unix socket, not loopback TCP: a Unix socket's bytes count
 * against the writer (the relay) until the reader (the tunnel) took them,
 * so the relay's send buffer is all that waits between the relay's
 * post-copy lane (a requested page first in its queue) and this encoder
 * (which lifts it into the urgent lane), and the lane shrinks it at once
 * when post-copy starts (relay-channel.c, set_low_latency).  Over
 * loopback TCP it was the receive window, 64-128 KiB that could not
 * shrink once grown (a smaller SO_RCVBUF or TCP_WINDOW_CLAMP stalled the
 * sender for 200-400 ms per page): 5-10 ms of 100 Mbit/s that every
 * requested page waited behind. */

typedef struct {
    GSocket *sock;
    MpTunOpen open;
    gint64 since_us;
} HopConn;

/* One --listen of `migproxy source`: its relay connects to this route's
 * hop, so a hop connection's route says which relay, hence which
 * migration, it belongs to, and dest which --to it goes to.  The relay
 * admits one migration at a time, so a route carries one session at a
 * time; routes run side by side. */
typedef struct {
    MpTunSource *s;
    guint16 index;
    GSocket *hop;
    GSocketAddress *hop_sa;
    char *hop_addr;
    GSource *hop_source;
    GQueue wait;        /* HopConn*, accept order: waiting for their kind */
    guint32 session;    /* the session it carries now (0: none yet) */
    guint16 in_session; /* connections of it */
    gboolean session_has_main;
    guint reported; /* mux connections already in a report */
    guint since;    /* where the last report began */
} Route;

struct MpTunSource {
    MpTunSourceOptions opt;
    char *peer_str;
    GSocketAddress *peer;
    GPtrArray *routes; /* Route*, one per --listen */
    MpTunDial *dial;
    MpTunTlsCtx *tls;        /* NULL: plain TCP */
    MpTunTlsStart *start; /* the TLS handshake of a new tunnel */
    gboolean refused;     /* the last try was refused: wait_ready gives up */
    MpTunMux *mux;
    MpTunMux *last; /* the tunnel that closed last: its counters */
    guint retry_id;
    GError *last_error;
    guint32 session;     /* numbers the migrations carried, all routes */
    gboolean ended;      /* the last tunnel closed: clean END both ways */
    gboolean up;         /* the current tunnel's handshake is done */
    gboolean unheard;    /* the last one closed before the peer's HELLO */
    gboolean finishing;
    gint64 start_us;
    guint classify_id;
};

static void dial(MpTunSource *s);

/* Dial again after a failed try?  Not once finishing, unless a tunnel
 * waits to resume (its QEMU connections are still open). */
static gboolean
want_dial(const MpTunSource *s)
{
    return !s->finishing || (s->mux && mp_tun_mux_suspended(s->mux));
}

static gboolean
retry(gpointer data)
{
    MpTunSource *s = data;
    s->retry_id = 0;
    dial(s);
    return G_SOURCE_REMOVE;
}

static void
mux_ready(MpTunMux *m, gpointer data)
{
    MpTunSource *s = data;
    s->up = TRUE;
    if (!s->opt.quiet)
        g_message("tunnel to %s is up (protocol v%u%s%s)", s->peer_str,
                  MP_TUN_VERSION, s->opt.compress ? ", zstd" : "",
                  s->tls ? ", TLS, both ends authenticated" : "");
}

static void
mux_closed(MpTunMux *m, const GError *error, guint8 end_code, gpointer data)
{
    MpTunSource *s = data;

    g_clear_error(&s->last_error);
    s->unheard = !s->up;
    /* before the handshake: TLS refused us (an alert after ours was
     * done), the peer refused our HELLO (END REFUSED), or we refused its
     * HELLO (UNSUPPORTED; also a dest that takes no routes while this
     * side has several --listen): another try would be refused as well;
     * not a
     * peer that closed before a word (--allow), which may change */
    s->refused = error && !s->up
                 && (error->domain == G_TLS_ERROR
                     || g_error_matches(error, MP_PARSE_ERROR,
                                        MP_PARSE_ERROR_UNSUPPORTED)
                     || g_error_matches(error, G_IO_ERROR,
                                        G_IO_ERROR_CONNECTION_CLOSED));
    s->up = FALSE;
    if (error && s->tls && s->unheard && error->domain != MP_PARSE_ERROR) {
        /* TLS 1.3: our handshake was done before dest checked our
         * certificate; a dest that refuses it just closes */
        s->last_error = g_error_new(
            error->domain, error->code,
            "%s (the TLS tunnel closed before dest's HELLO: did dest "
            "refuse this side's certificate? its log says why)",
            error->message);
        g_warning("the tunnel failed: %s", s->last_error->message);
    } else if (error) {
        s->last_error = g_error_copy(error);
        g_warning("the tunnel failed: %s%s", error->message,
                  mp_tun_mux_live(m) ? "" : "");
    } else if (!s->opt.quiet) {
        g_message("tunnel to %s ended", s->peer_str);
    }
    s->ended = !error;
    /* (the one before: this one is inside its own hook) */
    g_clear_pointer(&s->last, mp_tun_mux_free);
    mp_heap_release(); /* the tunnels' buffers, until the next one */
    s->last = s->mux;
    s->mux = NULL;
    if (!s->finishing && !s->retry_id)
        s->retry_id = g_timeout_add(RETRY_MS, retry, s);
}

/* The tunnel dropped in post-copy (or a try to resume it failed) and
 * waits to resume: dial after RESUME_RETRY_MS (after a refused connect:
 * RETRY_MS), until it resumes or its --resume-timeout passes. */
static void
mux_suspended(MpTunMux *m, const GError *error, gpointer data)
{
    MpTunSource *s = data;

    g_clear_error(&s->last_error);
    s->last_error = g_error_copy(error);
    if (s->retry_id)
        g_source_remove(s->retry_id);
    s->retry_id = g_timeout_add(RESUME_RETRY_MS, retry, s);
}

static const MpTunMuxHooks mux_hooks = {
    .ready = mux_ready,
    .closed = mux_closed,
    .suspended = mux_suspended,
};

static void
start_mux(MpTunSource *s, GIOStream *stream)
{
    g_autofree char *name = g_strdup_printf("tunnel to %s", s->peer_str);
    if (s->mux) {
        /* the tunnel that dropped, resumed over this connection */
        mp_tun_mux_resume(s->mux, stream, name);
        return;
    }
    /* the tunnel's name for a resume: random, so that a dest that holds
     * another tunnel (or none) tells it is not this one */
    guint64 id = 0;
    while (s->opt.resume_ms && !id)
        id = (guint64)g_random_int() << 32 | g_random_int();
    MpTunMuxOptions mo = {
        .role = MP_TUN_ROLE_SOURCE,
        .compress = s->opt.compress,
        .level = s->opt.level,
        .tls = s->tls != NULL,
        .pages = s->opt.pages,
        .pages_opt = s->opt.pages_opt,
        .rate = s->opt.rate,
        .quiet = s->opt.quiet,
        .resume_ms = s->opt.resume_ms,
        .tunnel_id = id,
        .routes = s->routes->len,
        .ping_timeout_ms = s->opt.ping_timeout_ms,
    };
    s->mux = mp_tun_mux_new(stream, name, &mo, &mux_hooks, s);
    for (guint i = 0; i < s->routes->len; i++) {
        Route *r = g_ptr_array_index(s->routes, i);
        r->reported = r->since = 0;
    }
}

static void
on_tls(MpTunTlsStart *h, GIOStream *stream, const GError *error,
       gpointer data)
{
    MpTunSource *s = data;

    g_clear_pointer(&s->start, mp_tun_tls_start_free);
    if (stream) {
        start_mux(s, stream);
        return;
    }
    g_clear_error(&s->last_error);
    s->last_error = g_error_new(error->domain, error->code, "tunnel to %s: %s",
                                s->peer_str, error->message);
    s->refused = error->domain == G_TLS_ERROR;
    g_warning("%s", s->last_error->message);
    if (want_dial(s))
        s->retry_id = g_timeout_add(RETRY_MS, retry, s);
}

static void
on_dialed(MpTunDial *d, GSocket *sock, const GError *error, gpointer data)
{
    MpTunSource *s = data;

    g_clear_pointer(&s->dial, mp_tun_dial_free);
    if (!sock) {
        g_clear_error(&s->last_error);
        s->last_error = g_error_new(G_IO_ERROR, G_IO_ERROR_FAILED,
                                    "--peer %s: %s", s->peer_str,
                                    error->message);
        g_debug("%s", s->last_error->message);
        if (want_dial(s))
            s->retry_id = g_timeout_add(RETRY_MS, retry, s);
        return;
    }
    if (s->tls) {
        s->start = mp_tun_tls_client(s->tls, sock, s->peer_str,
                                     s->opt.timeout_ms, on_tls, s);
        return;
    }
    g_autoptr(GIOStream) plain = mp_tun_plain_stream(sock);
    start_mux(s, plain);
}

static void
dial(MpTunSource *s)
{
    if (s->dial || s->start || (s->mux && !mp_tun_mux_suspended(s->mux)))
        return;
    s->dial = mp_tun_dial_new(s->peer, s->opt.timeout_ms, on_dialed, s);
}

/* Is the hop's peer this process?  The relay that connects to the hop is
 * in this process; anyone else on the host (the abstract namespace is the
 * network namespace's) is not. */
static gboolean
hop_peer_is_ours(GSocket *sock)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);

    return getsockopt(g_socket_get_fd(sock), SOL_SOCKET, SO_PEERCRED, &cred,
                      &len)
               == 0
           && cred.pid == getpid();
}

static void
reset_close(GSocket *sock)
{
    struct linger l = {.l_onoff = 1, .l_linger = 0};
    setsockopt(g_socket_get_fd(sock), SOL_SOCKET, SO_LINGER, &l, sizeof(l));
    g_socket_close(sock, NULL);
}

static void
hop_conn_free(HopConn *h)
{
    g_object_unref(h->sock);
    g_free(h);
}

/* The channel a hop connection's first `n` bytes show (relay-admit.c
 * checked them already; this only names them): TRUE when decided. */
static gboolean
kind_of(Route *r, const guint8 *b, gssize n, gboolean timed_out, MpTunOpen *o)
{
    if (n >= 4 && memcmp(b, "QEVM", 4) == 0) {
        o->channel = MP_TUN_CH_MAIN;
        r->session_has_main = TRUE;
        return TRUE;
    }
    if (n >= 4 && mp_be32(b) == MFD_MAGIC) {
        /* be32 magic, be32 version, uuid[16], u8 id */
        if (n < 25 && !timed_out)
            return FALSE;
        o->channel = MP_TUN_CH_MULTIFD;
        o->index = n >= 25 ? b[24] : 0;
        return TRUE;
    }
    if (n >= 1 && b[0] == 0x08) { /* QEMU_VM_COMMAND: a recovery channel */
        o->channel = MP_TUN_CH_RECOVERY;
        return TRUE;
    }
    if (n > 0) { /* bare RAM records: postcopy-preempt; or TLS, unknown */
        o->channel = b[0] == 0x16 ? MP_TUN_CH_UNKNOWN : MP_TUN_CH_PREEMPT;
        return TRUE;
    }
    if (!timed_out && n != 0)
        return FALSE;
    /* silent (7.2's preempt channel), or closed at once */
    o->channel =
        r->session_has_main && n != 0 ? MP_TUN_CH_PREEMPT : MP_TUN_CH_UNKNOWN;
    return TRUE;
}

static gboolean classify_tick(gpointer data);

/* Opens the waiting hop connections whose kind is known, in order (per
 * route: one route's silent connection holds back none of another's). */
static void
classify(MpTunSource *s)
{
    HopConn *h;
    gint64 now = g_get_monotonic_time();
    gboolean waiting = FALSE;

    for (guint i = 0; i < s->routes->len; i++) {
        Route *r = g_ptr_array_index(s->routes, i);
        while ((h = g_queue_peek_head(&r->wait))) {
            if (!s->mux || !mp_tun_mux_ready(s->mux)) {
                reset_close(h->sock);
                hop_conn_free(g_queue_pop_head(&r->wait));
                continue;
            }
            guint8 b[32];
            /* a peek: the bytes stay for the mux to read */
            gssize n = recv(g_socket_get_fd(h->sock), b, sizeof(b),
                            MSG_PEEK | MSG_DONTWAIT);
            if (!kind_of(r, b, n, now - h->since_us >= CLASSIFY_MS * 1000,
                         &h->open))
                break;
            guint16 id = mp_tun_mux_add(s->mux, h->sock, &h->open);
            g_debug("session %u (route %u): connection %u (%s %u) is "
                    "tunnel stream %u",
                    h->open.session, h->open.route, h->open.connection,
                    mp_tun_channel_name(h->open.channel), h->open.index, id);
            hop_conn_free(g_queue_pop_head(&r->wait));
        }
        waiting |= !g_queue_is_empty(&r->wait);
    }
    if (waiting && !s->classify_id)
        s->classify_id = g_timeout_add(CLASSIFY_POLL_MS, classify_tick, s);
}

static gboolean
classify_tick(gpointer data)
{
    MpTunSource *s = data;
    s->classify_id = 0;
    classify(s);
    return G_SOURCE_REMOVE;
}

static gboolean
on_hop_accept(GSocket *listener, GIOCondition cond, gpointer data)
{
    Route *r = data;
    MpTunSource *s = r->s;

    for (;;) {
        g_autoptr(GError) err = NULL;
        g_autoptr(GSocket) sock = g_socket_accept(listener, NULL, &err);
        if (!sock) {
            if (!g_error_matches(err, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
                g_warning("hop %s: accept: %s", r->hop_addr, err->message);
            break;
        }
        if (!hop_peer_is_ours(sock)) {
            g_message("hop %s: a connection from another process; closed",
                      r->hop_addr);
            reset_close(sock);
            continue;
        }
        if (!s->mux || !mp_tun_mux_ready(s->mux)) {
            g_message("a migration connection while the tunnel to %s is "
                      "down (%s); closed, the migration fails",
                      s->peer_str,
                      s->last_error ? s->last_error->message : "connecting");
            reset_close(sock);
            continue;
        }
        /* the route's migration is over (or on a tunnel gone): a new
         * one begins */
        if (!r->session
            || (mp_tun_mux_session_live(s->mux, r->session) == 0
                && g_queue_is_empty(&r->wait))) {
            r->session = ++s->session;
            r->in_session = 0;
            r->session_has_main = FALSE;
        }
        HopConn *h = g_new0(HopConn, 1);
        h->sock = g_object_ref(sock);
        g_socket_set_blocking(sock, FALSE);
        h->open.session = r->session;
        h->open.connection = r->in_session++;
        h->open.route = r->index;
        h->since_us = g_get_monotonic_time();
        g_queue_push_tail(&r->wait, h);
    }
    classify(s);
    return G_SOURCE_CONTINUE;
}

static void
route_free(Route *r)
{
    if (r->hop_source) {
        g_source_destroy(r->hop_source);
        g_source_unref(r->hop_source);
    }
    g_queue_clear_full(&r->wait, (GDestroyNotify)hop_conn_free);
    if (r->hop) {
        g_socket_close(r->hop, NULL);
        g_object_unref(r->hop);
    }
    g_clear_object(&r->hop_sa);
    g_free(r->hop_addr);
    g_free(r);
}

/* Route `index`'s hop: a loopback listener of its own. */
static Route *
route_new(MpTunSource *s, guint index, GError **error)
{
    Route *r = g_new0(Route, 1);
    r->s = s;
    r->index = index;
    g_queue_init(&r->wait);
    /* (random: another process cannot take the name first) */
    g_autofree char *name =
        g_strdup_printf("migproxy-hop-%d-%u-%08x", (int)getpid(), index,
                        g_random_int());
    r->hop_sa = g_unix_socket_address_new_with_type(
        name, -1, G_UNIX_SOCKET_ADDRESS_ABSTRACT);
    r->hop_addr = g_strdup_printf("@%s", name);
    r->hop = g_socket_new(G_SOCKET_FAMILY_UNIX, G_SOCKET_TYPE_STREAM,
                          G_SOCKET_PROTOCOL_DEFAULT, error);
    if (!r->hop) {
        route_free(r);
        return NULL;
    }
    g_socket_set_blocking(r->hop, FALSE);
    g_socket_set_listen_backlog(r->hop, 300);
    if (!g_socket_bind(r->hop, r->hop_sa, FALSE, error)
        || !g_socket_listen(r->hop, error)) {
        g_prefix_error(error, "the hop to the tunnel: ");
        route_free(r);
        return NULL;
    }
    r->hop_source = g_socket_create_source(r->hop, G_IO_IN, NULL);
    g_source_set_callback(r->hop_source, G_SOURCE_FUNC(on_hop_accept), r, NULL);
    g_source_attach(r->hop_source, NULL);
    return r;
}

MpTunSource *
mp_tun_source_new(const MpTunSourceOptions *opt, GError **error)
{
    g_autoptr(MpTunSource) s = g_new0(MpTunSource, 1);

    s->opt = *opt;
    s->peer_str = g_strdup(opt->peer);
    s->opt.peer = s->peer_str;
    s->opt.tls = (MpTunTlsOptions){0}; /* loaded below, not kept */
    if (!s->opt.timeout_ms)
        s->opt.timeout_ms = CONNECT_TIMEOUT_MS;
    s->start_us = g_get_monotonic_time();
    if (!(s->peer = mp_address_resolve("--peer", opt->peer, error)))
        return NULL;
    if (opt->tls.cert && !(s->tls = mp_tun_tls_new(&opt->tls, error)))
        return NULL;
    s->routes = g_ptr_array_new_with_free_func((GDestroyNotify)route_free);
    for (guint i = 0; i < MAX(opt->routes, 1); i++) {
        Route *r = route_new(s, i, error);
        if (!r)
            return NULL;
        g_ptr_array_add(s->routes, r);
    }
    dial(s);
    return g_steal_pointer(&s);
}

void
mp_tun_source_free(MpTunSource *s)
{
    if (!s)
        return;
    if (s->routes)
        g_ptr_array_unref(s->routes);
    if (s->retry_id)
        g_source_remove(s->retry_id);
    if (s->classify_id)
        g_source_remove(s->classify_id);
    mp_tun_dial_free(s->dial);
    mp_tun_tls_start_free(s->start);
    mp_tun_mux_free(s->mux);
    mp_tun_mux_free(s->last);
    mp_tun_tls_free(s->tls);
    g_clear_object(&s->peer);
    g_clear_error(&s->last_error);
    g_free(s->peer_str);
    g_free(s);
}

gboolean
mp_tun_source_wait_ready(MpTunSource *s, guint timeout_ms,
                         const char *const *stopped, GError **error)
{
    gint64 deadline = g_get_monotonic_time() + timeout_ms * 1000ll;

    while (!(s->mux && mp_tun_mux_ready(s->mux))) {
        if (stopped && *stopped) {
            g_set_error(error, G_IO_ERROR, G_IO_ERROR_CANCELLED,
                        "--peer %s: stopped (%s) before the tunnel was up",
                        s->peer_str, *stopped);
            return FALSE;
        }
        if (s->refused && s->last_error) {
            g_set_error(error, G_IO_ERROR, G_IO_ERROR_PERMISSION_DENIED,
                        "--peer %s: %s", s->peer_str, s->last_error->message);
            return FALSE;
        }
        if (g_get_monotonic_time() >= deadline) {
            /* a dest that closes before its preamble refused us at
             * accept: say where to look */
            gboolean at_accept = s->last_error && s->unheard;
            g_set_error(error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT,
                        "--peer %s: no tunnel in %u ms%s%s%s", s->peer_str,
                        timeout_ms, s->last_error ? ": " : "",
                        s->last_error ? s->last_error->message : "",
                        at_accept ? " (closed before a word: is this host "
                                    "in its --allow? is it migproxy dest?)"
                                  : "");
            return FALSE;
        }
        g_main_context_iteration(NULL, FALSE);
        g_usleep(1000);
    }
    return TRUE;
}

const char *
mp_tun_source_hop(const MpTunSource *s, guint route)
{
    const Route *r = g_ptr_array_index(s->routes, route);
    return r->hop_addr;
}

GSocketAddress *
mp_tun_source_hop_address(const MpTunSource *s, guint route)
{
    const Route *r = g_ptr_array_index(s->routes, route);
    return r->hop_sa;
}

static json_object *
report_from(MpTunSource *s, const Route *r)
{
    MpTunMux *m = s->mux ? s->mux : s->last;
    /* a single route reports as before: every connection */
    int route = s->routes->len > 1 ? r->index : -1;
    json_object *o = m ? mp_tun_mux_report_route(m, r->since, route)
                       : json_object_new_object();

    json_object_object_add(o, "peer", json_object_new_string(s->peer_str));
    json_object_object_add(o, "up", json_object_new_boolean(
                                        s->mux && mp_tun_mux_ready(s->mux)));
    json_object_object_add(
        o, "duration_ms",
        json_object_new_double((g_get_monotonic_time() - s->start_us) / 1e3));
    if (s->last_error)
        json_object_object_add(o, "error",
                               json_object_new_string(s->last_error->message));
    return o;
}

json_object *
mp_tun_source_report(MpTunSource *s, guint route)
{
    Route *r = g_ptr_array_index(s->routes, route);
    MpTunMux *m = s->mux ? s->mux : s->last;
    r->since = r->reported;
    if (m)
        r->reported = mp_tun_mux_connections(m);
    return report_from(s, r);
}

json_object *
mp_tun_source_report_again(MpTunSource *s, guint route)
{
    return report_from(s, g_ptr_array_index(s->routes, route));
}

void
mp_tun_source_link(MpTunSource *s, gint64 *measured_bps, gint64 *paced_bps,
                   double *rtt_ms)
{
    MpTunLink *l = s->mux ? mp_tun_mux_link(s->mux) : NULL;

    *measured_bps = l && mp_tun_link_rate(l)
                        ? (gint64)mp_tun_link_rate(l) * 8
                        : -1;
    *paced_bps = l && mp_tun_link_pace(l) ? (gint64)mp_tun_link_pace(l) * 8
                                          : -1;
    *rtt_ms = l && mp_tun_link_rtt_us(l) >= 0 ? mp_tun_link_rtt_us(l) / 1e3
                                              : -1;
}

json_object *
mp_tun_source_encoders(MpTunSource *s)
{
    return s->mux ? mp_tun_mux_encoders(s->mux) : NULL;
}

void
mp_tun_source_page_first(MpTunSource *s, guint route)
{
    if (s->mux)
        mp_tun_mux_page_first(s->mux, route);
}

static gboolean
wake(gpointer data)
{
    return G_SOURCE_CONTINUE; /* the loops below look at the clock */
}

gboolean
mp_tun_source_finish(MpTunSource *s, guint timeout_ms)
{
    gint64 deadline = g_get_monotonic_time() + timeout_ms * 1000ll;
    guint wake_id = g_timeout_add(50, wake, NULL);

    s->finishing = TRUE;
    if (!want_dial(s)) {
        if (s->retry_id)
            g_source_remove(s->retry_id);
        s->retry_id = 0;
        g_clear_pointer(&s->dial, mp_tun_dial_free);
        g_clear_pointer(&s->start, mp_tun_tls_start_free);
    }
    while (s->mux && mp_tun_mux_live(s->mux)
           && g_get_monotonic_time() < deadline)
        g_main_context_iteration(NULL, TRUE);
    if (s->mux) {
        mp_tun_mux_end(s->mux, MP_TUN_END_DONE, NULL);
        while (s->mux && g_get_monotonic_time() < deadline)
            g_main_context_iteration(NULL, TRUE);
    }
    g_source_remove(wake_id);
    return !s->mux && s->ended;
}
