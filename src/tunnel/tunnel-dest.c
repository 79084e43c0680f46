/* tunnel-dest.c: `migproxy dest` (see tunnel-dest.h). */
#include "config.h"
#include <string.h>
#include <sys/socket.h>
#include <gio/gio.h>
#include "address.h"
#include "heap-reuse.h"
#include "out-file.h"
#include "tunnel-dest.h"
#include "tunnel-dial.h"
#include "tunnel-mux.h"

#define DEFAULT_TIMEOUT_MS 10000

/* One --to: the destination QEMU of the source side's --listen of the
 * same rank (MpTunOpen.route).  Its connections go out one at a time, in
 * the order of their OPENs; routes dial side by side, so one migration's
 * connections never wait for another's. */
typedef struct {
    MpTunDest *d;
    char *to_str;
    GSocketAddress *to;
    GQueue opens; /* stream ids waiting for their QEMU connection */
    MpTunDial *dial;
    guint16 dialing;
} Route;

struct MpTunDest {
    MpTunDestOptions opt;
    char *listen_str, *report_path;
    char *to_list; /* the --to, ", "-separated, for log lines */
    char *listen_addr;
    GSocket *listener;
    GSource *accept_source;
    GPtrArray *routes; /* Route*, one per --to */
    GPtrArray *allow; /* GInetAddressMask* */
    MpTunTlsCtx *tls;    /* NULL: plain TCP */
    GPtrArray *starting; /* Starting*: connections not yet a tunnel */
    GMainLoop *loop;
    /* the tunnel */
    MpTunMux *mux;
    char *peer;
    /* who may resume it: the same host, and under TLS the same
     * certificate */
    GInetAddress *peer_host;
    GTlsCertificate *peer_cert;
    gint64 start_us;
    guint tunnels;
    MpTunMux *dead;
    guint reap_id;
    gboolean stopping, once_done;
    int status;
};

typedef struct {
    MpTunDest *d;
    MpTunTlsStart *h;
    char *who;
} Starting;

static void connect_next(Route *r);

static void
starting_free(Starting *st)
{
    mp_tun_tls_start_free(st->h);
    g_free(st->who);
    g_free(st);
}

static void
on_dialed(MpTunDial *dl, GSocket *sock, const GError *error, gpointer data)
{
    Route *r = data;
    MpTunDest *d = r->d;
    guint16 stream = r->dialing;

    r->dialing = 0;
    g_clear_pointer(&r->dial, mp_tun_dial_free);
    if (!d->mux)
        return;
    if (sock) {
        mp_tun_mux_attach(d->mux, stream, sock);
    } else {
        g_message("tunnel stream %u: cannot connect to the destination %s: "
                  "%s; the migration's connection is reset",
                  stream, r->to_str, error->message);
        g_autofree char *why =
            g_strdup_printf("destination %s: %s", r->to_str, error->message);
        mp_tun_mux_refuse(d->mux, stream, why);
    }
    connect_next(r);
}

/* A route's connections go out one at a time, in the order of the
 * OPENs. */
static void
connect_next(Route *r)
{
    MpTunDest *d = r->d;

    if (r->dial || !d->mux || g_queue_is_empty(&r->opens))
        return;
    r->dialing = GPOINTER_TO_UINT(g_queue_pop_head(&r->opens));
    r->dial =
        mp_tun_dial_new(r->to,
                        d->opt.connect_timeout_ms ? d->opt.connect_timeout_ms
                                                  : DEFAULT_TIMEOUT_MS,
                        on_dialed, r);
}

static void
route_stop(Route *r)
{
    g_clear_pointer(&r->dial, mp_tun_dial_free);
    r->dialing = 0;
    g_queue_clear(&r->opens);
}

static void
route_free(Route *r)
{
    route_stop(r);
    g_clear_object(&r->to);
    g_free(r->to_str);
    g_free(r);
}

static void
mux_open(MpTunMux *m, guint16 stream, const MpTunOpen *o, gpointer data)
{
    MpTunDest *d = data;

    if (o->route >= d->routes->len) {
        /* the source side has more --listen than this side --to: that
         * migration fails, the others go on */
        g_autofree char *why = g_strdup_printf(
            "route %u (the source side's --listen number %u): this dest "
            "has %u --to",
            o->route, o->route + 1, d->routes->len);
        g_message("session %u: connection %u (tunnel stream %u): %s; the "
                  "migration's connection is reset",
                  o->session, o->connection, stream, why);
        mp_tun_mux_refuse(m, stream, why);
        return;
    }
    Route *r = g_ptr_array_index(d->routes, o->route);
    g_debug("session %u: connection %u is tunnel stream %u; connecting to %s",
            o->session, o->connection, stream, r->to_str);
    g_queue_push_tail(&r->opens, GUINT_TO_POINTER(stream));
    connect_next(r);
}

static void
mux_suspended(MpTunMux *m, const GError *error, gpointer data)
{
    MpTunDest *d = data;
    g_message("tunnel from %s: waiting for its source side to resume it",
              d->peer);
}

static void
mux_ready(MpTunMux *m, gpointer data)
{
    MpTunDest *d = data;
    if (!d->opt.quiet)
        g_message("tunnel from %s is up; relaying to %s", d->peer, d->to_list);
}

static gboolean
reap(gpointer data)
{
    MpTunDest *d = data;
    d->reap_id = 0;
    g_clear_pointer(&d->dead, mp_tun_mux_free);
    mp_heap_release(); /* the tunnel's buffers, until the next one */
    if (d->once_done || d->stopping)
        g_main_loop_quit(d->loop);
    return G_SOURCE_REMOVE;
}

static void
write_report(MpTunDest *d, MpTunMux *m, const GError *error)
{
    if (!d->report_path)
        return;
    g_autoptr(GError) err = NULL;
    g_autofree char *path =
        d->tunnels <= 1 ? g_strdup(d->report_path)
                        : g_strdup_printf("%s-%u", d->report_path, d->tunnels);
    json_object *rep = json_object_new_object();
    json_object_object_add(rep, "peer", json_object_new_string(d->peer));
    json_object *to = json_object_new_array();
    for (guint i = 0; i < d->routes->len; i++) {
        const Route *r = g_ptr_array_index(d->routes, i);
        json_object_array_add(to, json_object_new_string(r->to_str));
    }
    /* `to`: the first (the only one, but for several --to); `routes`:
     * each --to, in order */
    json_object_object_add(rep, "to",
                           json_object_get(json_object_array_get_idx(to, 0)));
    json_object_object_add(rep, "routes", to);
    json_object_object_add(
        rep, "duration_ms",
        json_object_new_double((g_get_monotonic_time() - d->start_us) / 1e3));
    json_object_object_add(rep, "outcome",
                           json_object_new_string(error ? "failed" : "ended"));
    if (error)
        json_object_object_add(rep, "error",
                               json_object_new_string(error->message));
    json_object_object_add(rep, "tunnel", mp_tun_mux_report(m, 0));
    const char *text = json_object_to_json_string_ext(
        rep, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE);
    if (!mp_out_path_replace(path, text, strlen(text), &err)) {
        g_critical("the report is lost: %s", err->message);
        d->status = 1;
    }
    json_object_put(rep);
}

static void
mux_closed(MpTunMux *m, const GError *error, guint8 end_code, gpointer data)
{
    MpTunDest *d = data;

    if (error)
        g_warning("the tunnel from %s failed: %s", d->peer, error->message);
    else if (!d->opt.quiet)
        g_message("the tunnel from %s ended (%s)", d->peer,
                  end_code == MP_TUN_END_DONE ? "done" : "shut down");
    write_report(d, m, error);
    if (d->opt.once) {
        d->once_done = TRUE;
        if (error || end_code != MP_TUN_END_DONE)
            d->status = 1;
    }
    for (guint i = 0; i < d->routes->len; i++)
        route_stop(g_ptr_array_index(d->routes, i));
    g_clear_pointer(&d->dead, mp_tun_mux_free);
    d->dead = d->mux;
    d->mux = NULL;
    if (!d->reap_id)
        d->reap_id = g_idle_add(reap, d);
}

static const MpTunMuxHooks mux_hooks = {
    .ready = mux_ready,
    .open = mux_open,
    .closed = mux_closed,
    .suspended = mux_suspended,
};

static gboolean
allowed(MpTunDest *d, GInetAddress *host)
{
    /* none: TLS authenticates the peer */
    return d->allow->len == 0 || mp_allow_matches(d->allow, host);
}

static gboolean
busy(MpTunDest *d, const char *who)
{
    if (!d->mux && !d->once_done && !d->stopping)
        return FALSE;
    /* a tunnel waiting to resume: its peer's host and certificate are
     * checked once the connection passed TLS (on_started) */
    if (d->mux && mp_tun_mux_suspended(d->mux) && !d->stopping)
        return FALSE;
    g_message("connection from %s: a tunnel runs already (from %s); closed",
              who, d->peer);
    return TRUE;
}

/* The address of the host at the other end of `stream` (plain or TLS
 * over a socket connection), or NULL. */
static GInetAddress *
stream_host(GIOStream *stream)
{
    while (G_IS_TLS_CONNECTION(stream)) {
        GIOStream *base = NULL;
        g_object_get(stream, "base-io-stream", &base, NULL);
        g_object_unref(base); /* the TLS connection holds it */
        stream = base;
    }
    if (!G_IS_SOCKET_CONNECTION(stream))
        return NULL;
    g_autoptr(GSocketAddress) a = g_socket_connection_get_remote_address(
        G_SOCKET_CONNECTION(stream), NULL);
    if (!a || !G_IS_INET_SOCKET_ADDRESS(a))
        return NULL;
    return g_object_ref(
        g_inet_socket_address_get_address(G_INET_SOCKET_ADDRESS(a)));
}

/* A connection passed (or failed) its first byte and TLS. */
static void
on_started(MpTunTlsStart *h, GIOStream *stream, const GError *error,
           gpointer data)
{
    Starting *st = data;
    MpTunDest *d = st->d;
    g_autofree char *who = g_steal_pointer(&st->who);

    g_ptr_array_remove_fast(d->starting, st); /* frees st and h */
    if (!stream) {
        g_warning("connection from %s: %s; refused", who, error->message);
        return;
    }
    g_autoptr(GInetAddress) host = stream_host(stream);
    GTlsCertificate *cert =
        G_IS_TLS_CONNECTION(stream)
            ? g_tls_connection_get_peer_certificate(G_TLS_CONNECTION(stream))
            : NULL;
    if (d->mux && mp_tun_mux_suspended(d->mux) && !d->stopping) {
        /* only the tunnel's own peer may resume it */
        if (!host || !d->peer_host || !g_inet_address_equal(host, d->peer_host)
            || (d->peer_cert
                && (!cert || !g_tls_certificate_is_same(cert, d->peer_cert)))) {
            g_message("connection from %s: the tunnel from %s waits to be "
                      "resumed by its own source side (%s); closed",
                      who, d->peer,
                      d->peer_cert ? "host and certificate" : "host");
            return;
        }
        g_message("connection from %s: resuming the tunnel", who);
        g_autofree char *name = g_strdup_printf("tunnel from %s", who);
        mp_tun_mux_resume(d->mux, stream, name);
        return;
    }
    if (busy(d, who))
        return;
    g_clear_object(&d->peer_host);
    g_clear_object(&d->peer_cert);
    d->peer_host = g_steal_pointer(&host);
    d->peer_cert = cert ? g_object_ref(cert) : NULL;
    g_free(d->peer);
    d->peer = g_steal_pointer(&who);
    d->start_us = g_get_monotonic_time();
    d->tunnels++;
    g_autofree char *name = g_strdup_printf("tunnel from %s", d->peer);
    MpTunMuxOptions mo = {
        .role = MP_TUN_ROLE_DEST,
        .compress = d->opt.compress,
        .tls = d->tls != NULL,
        .resume_ms = d->opt.resume_ms,
        .ping_timeout_ms = d->opt.ping_timeout_ms,
    };
    d->mux = mp_tun_mux_new(stream, name, &mo, &mux_hooks, d);
}

static gboolean
on_accept(GSocket *listener, GIOCondition cond, gpointer data)
{
    MpTunDest *d = data;

    for (;;) {
        g_autoptr(GError) err = NULL;
        g_autoptr(GSocket) sock = g_socket_accept(listener, NULL, &err);
        if (!sock) {
            if (!g_error_matches(err, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
                g_warning("accept on %s: %s", d->listen_addr, err->message);
            break;
        }
        g_autoptr(GSocketAddress) pa = g_socket_get_remote_address(sock, NULL);
        g_autofree char *who = mp_address_string(pa);
        GInetAddress *host =
            pa && G_IS_INET_SOCKET_ADDRESS(pa)
                ? g_inet_socket_address_get_address(G_INET_SOCKET_ADDRESS(pa))
                : NULL;
        if (!host || !allowed(d, host)) {
            g_message("connection from %s: not in --allow; closed", who);
            g_socket_close(sock, NULL);
            continue;
        }
        if (busy(d, who)) {
            g_socket_close(sock, NULL);
            continue;
        }
        if (d->starting->len >= MP_TUN_DEST_STARTING) {
            g_message("connection from %s: %u others are in their "
                      "handshake; closed",
                      who, d->starting->len);
            g_socket_close(sock, NULL);
            continue;
        }
        Starting *st = g_new0(Starting, 1);
        st->d = d;
        st->who = g_steal_pointer(&who);
        g_ptr_array_add(d->starting, st);
        st->h = mp_tun_tls_accept(d->tls, sock,
                                  d->opt.connect_timeout_ms
                                      ? d->opt.connect_timeout_ms
                                      : DEFAULT_TIMEOUT_MS,
                                  on_started, st);
    }
    return G_SOURCE_CONTINUE;
}

MpTunDest *
mp_tun_dest_new(const MpTunDestOptions *opt, GError **error)
{
    g_autoptr(MpTunDest) d = g_new0(MpTunDest, 1);

    d->opt = *opt;
    d->listen_str = g_strdup(opt->listen);
    d->report_path = g_strdup(opt->report);
    d->opt.listen = d->opt.report = NULL;
    d->opt.to = d->opt.allow = NULL;
    d->routes = g_ptr_array_new_with_free_func((GDestroyNotify)route_free);
    d->opt.tls = (MpTunTlsOptions){0}; /* loaded below, not kept */
    d->starting = g_ptr_array_new_with_free_func((GDestroyNotify)starting_free);
    d->loop = g_main_loop_new(NULL, FALSE);
    d->allow = mp_allow_parse(opt->allow, error);
    if (!d->allow)
        return NULL;
    if (d->allow->len == 0 && !opt->tls.cert) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                    "--allow is required without TLS (--tls-cert, --tls-key, "
                    "--tls-ca): only the source hosts named may connect");
        return NULL;
    }
    if (opt->tls.cert && !(d->tls = mp_tun_tls_new(&opt->tls, error)))
        return NULL;
    for (guint i = 0; opt->to && opt->to[i]; i++) {
        Route *r = g_new0(Route, 1);
        r->d = d;
        r->to_str = g_strdup(opt->to[i]);
        g_queue_init(&r->opens);
        g_ptr_array_add(d->routes, r);
        if (!(r->to = mp_address_resolve("--to", opt->to[i], error)))
            return NULL;
    }
    if (d->routes->len == 0 || d->routes->len > MP_TUN_ROUTES_MAX) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                    "--to: %u given, expected 1 to %u", d->routes->len,
                    MP_TUN_ROUTES_MAX);
        return NULL;
    }
    d->to_list = g_strjoinv(", ", (char **)opt->to);
    g_autoptr(GSocketAddress) la = mp_address_resolve("--listen", opt->listen,
                                                  error);
    if (!la)
        return NULL;
    d->listener = g_socket_new(g_socket_address_get_family(la),
                               G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_TCP,
                               error);
    if (!d->listener)
        return NULL;
    g_socket_set_blocking(d->listener, FALSE);
    if (!g_socket_bind(d->listener, la, TRUE, error)
        || !g_socket_listen(d->listener, error)) {
        g_prefix_error(error, "--listen %s: ", opt->listen);
        return NULL;
    }
    g_autoptr(GSocketAddress) bound =
        g_socket_get_local_address(d->listener, error);
    if (!bound)
        return NULL;
    d->listen_addr = mp_address_string(bound);
    if (d->report_path && !mp_out_path_check(d->report_path, error)) {
        g_prefix_error(error, "--report: ");
        return NULL;
    }
    d->accept_source = g_socket_create_source(d->listener, G_IO_IN, NULL);
    g_source_set_callback(d->accept_source, G_SOURCE_FUNC(on_accept), d, NULL);
    g_source_attach(d->accept_source, NULL);
    return g_steal_pointer(&d);
}

void
mp_tun_dest_free(MpTunDest *d)
{
    if (!d)
        return;
    if (d->accept_source) {
        g_source_destroy(d->accept_source);
        g_source_unref(d->accept_source);
    }
    if (d->reap_id)
        g_source_remove(d->reap_id);
    g_ptr_array_unref(d->starting);
    mp_tun_mux_free(d->mux);
    mp_tun_mux_free(d->dead);
    mp_tun_tls_free(d->tls);
    if (d->routes)
        g_ptr_array_unref(d->routes);
    if (d->listener) {
        g_socket_close(d->listener, NULL);
        g_object_unref(d->listener);
    }
    g_clear_pointer(&d->allow, g_ptr_array_unref);
    g_main_loop_unref(d->loop);
    g_free(d->listen_str);
    g_free(d->to_list);
    g_free(d->report_path);
    g_free(d->listen_addr);
    g_free(d->peer);
    g_clear_object(&d->peer_host);
    g_clear_object(&d->peer_cert);
    g_free(d);
}

const char *
mp_tun_dest_listen_address(const MpTunDest *d)
{
    return d->listen_addr;
}

int
mp_tun_dest_run(MpTunDest *d)
{
    g_main_loop_run(d->loop);
    return d->status;
}

void
mp_tun_dest_stop(MpTunDest *d, const char *why)
{
    if (d->stopping)
        return;
    d->stopping = TRUE;
    if (!d->opt.quiet)
        g_message("stopping (%s)", why);
    if (d->accept_source) {
        g_source_destroy(d->accept_source);
        g_clear_pointer(&d->accept_source, g_source_unref);
    }
    g_ptr_array_set_size(d->starting, 0);
    if (d->mux) {
        mp_tun_mux_end(d->mux, MP_TUN_END_SHUTDOWN, why);
        /* a peer that does not answer END is not waited for long */
        g_timeout_add_seconds(3, G_SOURCE_FUNC(g_main_loop_quit), d->loop);
    } else {
        g_main_loop_quit(d->loop);
    }
}
