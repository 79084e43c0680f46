/* tunnel-tls.c: the tunnel's TLS and the destination side's first look
 * at a connection (see tunnel-tls.h). */
#include "config.h"
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <gio/gio.h>
#include "tunnel-frame.h"
#include "tunnel-tls.h"

#define TLS_RECORD_HANDSHAKE 0x16 /* a ClientHello's first byte */
#define PREAMBLE_FIRST       0x8b /* docs/tunnel.md, "Connection" */

struct MpTunTlsCtx {
    GTlsCertificate *cert;
    GTlsDatabase *db;
    char *name;
};

struct MpTunTlsStart {
    MpTunTlsCtx *t; /* the owner's; outlives the start */
    GSocket *sock;
    char *peer; /* client: HOST:PORT of dest */
    GIOStream *base;
    GTlsConnection *tls;
    GCancellable *cancel;
    GSource *peek_source;
    guint timeout_id, idle_id;
    guint timeout_ms;
    gboolean client, handshaking, abandoned, timed_out;
    gboolean cert_checked;
    gboolean handed; /* the stream went to the owner: its socket too */
    GTlsCertificateFlags cert_errors;
    GError *error; /* delivered from the idle */
    MpTunTlsFunc fn;
    gpointer data;
};

GIOStream *
mp_tun_plain_stream(GSocket *sock)
{
    return G_IO_STREAM(g_socket_connection_factory_create_connection(sock));
}

gboolean
mp_tun_tls_options_check(const MpTunTlsOptions *opt, GError **error)
{
    gboolean any = opt->cert || opt->key || opt->ca;
    if (any && !(opt->cert && opt->key && opt->ca)) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                    "--tls-cert, --tls-key and --tls-ca go together");
        return FALSE;
    }
    if (opt->name && !any) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                    "--tls-name needs --tls-cert, --tls-key and --tls-ca");
        return FALSE;
    }
    return TRUE;
}

MpTunTlsCtx *
mp_tun_tls_new(const MpTunTlsOptions *opt, GError **error)
{
    g_autoptr(MpTunTlsCtx) t = g_new0(MpTunTlsCtx, 1);

    if (!g_tls_backend_supports_tls(g_tls_backend_get_default())) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED,
                    "--tls-cert: GIO has no TLS backend here (install "
                    "glib-networking)");
        return NULL;
    }
    g_autoptr(GError) err = NULL;
    t->cert = g_tls_certificate_new_from_files(opt->cert, opt->key, &err);
    if (!t->cert) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                    "--tls-cert %s, --tls-key %s: %s", opt->cert, opt->key,
                    err->message);
        return NULL;
    }
    /* GTlsFileDatabase wants an absolute path */
    g_autofree char *ca = g_canonicalize_filename(opt->ca, NULL);
    t->db = g_tls_file_database_new(ca, &err);
    if (!t->db) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                    "--tls-ca %s: %s", opt->ca, err->message);
        return NULL;
    }
    t->name = g_strdup(opt->name);
    return g_steal_pointer(&t);
}

void
mp_tun_tls_free(MpTunTlsCtx *t)
{
    if (!t)
        return;
    g_clear_object(&t->cert);
    g_clear_object(&t->db);
    g_free(t->name);
    g_free(t);
}

static void
start_destroy(MpTunTlsStart *h)
{
    if (h->peek_source) {
        g_source_destroy(h->peek_source);
        g_clear_pointer(&h->peek_source, g_source_unref);
    }
    if (h->timeout_id)
        g_source_remove(h->timeout_id);
    if (h->idle_id)
        g_source_remove(h->idle_id);
    if (!h->handed)
        g_socket_close(h->sock, NULL);
    g_clear_object(&h->tls);
    g_clear_object(&h->base);
    g_clear_object(&h->sock);
    g_clear_object(&h->cancel);
    g_clear_error(&h->error);
    g_free(h->peer);
    g_free(h);
}

void
mp_tun_tls_start_free(MpTunTlsStart *h)
{
    if (!h)
        return;
    if (h->handshaking) {
        /* the handshake's callback frees it (and closes the socket: the
         * handshake's thread may be using it until then) */
        h->abandoned = TRUE;
        g_cancellable_cancel(h->cancel);
        return;
    }
    start_destroy(h);
}

/* Over: `stream` or `error` (taken) to the owner. */
static void
deliver(MpTunTlsStart *h, GIOStream *stream, GError *error)
{
    if (h->peek_source) {
        g_source_destroy(h->peek_source);
        g_clear_pointer(&h->peek_source, g_source_unref);
    }
    if (h->timeout_id)
        g_source_remove(h->timeout_id);
    h->timeout_id = 0;
    if (error)
        g_socket_close(h->sock, NULL);
    h->handed = stream != NULL;
    h->fn(h, stream, error, h->data);
    g_clear_error(&error);
}

static gboolean
deliver_idle(gpointer data)
{
    MpTunTlsStart *h = data;
    h->idle_id = 0;
    deliver(h, NULL, g_steal_pointer(&h->error));
    return G_SOURCE_REMOVE;
}

static void
fail_later(MpTunTlsStart *h, GError *error)
{
    h->error = error;
    h->idle_id = g_idle_add(deliver_idle, h);
}

static gboolean
on_timeout(gpointer data)
{
    MpTunTlsStart *h = data;
    h->timeout_id = 0;
    if (h->handshaking) {
        /* the handshake's callback says so */
        h->timed_out = TRUE;
        g_cancellable_cancel(h->cancel);
        return G_SOURCE_REMOVE;
    }
    deliver(h, NULL,
            g_error_new(G_IO_ERROR, G_IO_ERROR_TIMED_OUT,
                        "sent nothing in %u ms", h->timeout_ms));
    return G_SOURCE_REMOVE;
}

/* What is wrong with the peer's certificate, in words. */
static char *
cert_problems(const MpTunTlsStart *h)
{
    static const struct {
        GTlsCertificateFlags flag;
        const char *text;
    } words[] = {
        {G_TLS_CERTIFICATE_UNKNOWN_CA, "not signed by --tls-ca"},
        {G_TLS_CERTIFICATE_BAD_IDENTITY, NULL /* below */},
        {G_TLS_CERTIFICATE_NOT_ACTIVATED, "not valid yet"},
        {G_TLS_CERTIFICATE_EXPIRED, "expired"},
        {G_TLS_CERTIFICATE_REVOKED, "revoked"},
        {G_TLS_CERTIFICATE_INSECURE, "insecure algorithm"},
        {G_TLS_CERTIFICATE_GENERIC_ERROR, "cannot be verified"},
    };
    g_autoptr(GString) s = g_string_new(NULL);

    for (guint i = 0; i < G_N_ELEMENTS(words); i++) {
        if (!(h->cert_errors & words[i].flag))
            continue;
        if (s->len)
            g_string_append(s, ", ");
        if (words[i].text)
            g_string_append(s, words[i].text);
        else
            g_string_append_printf(s, "does not name %s",
                                   h->t->name ? h->t->name : h->peer);
    }
    return g_string_free(g_steal_pointer(&s), FALSE);
}

static gboolean
on_accept_certificate(GTlsConnection *conn, GTlsCertificate *peer_cert,
                      GTlsCertificateFlags errors, gpointer data)
{
    MpTunTlsStart *h = data;
    /* only --tls-ca decides: nothing the database refused is accepted (a
     * server connection asks for every client certificate, a client for
     * a failed one only) */
    h->cert_checked = TRUE;
    h->cert_errors = errors;
    return errors == 0;
}

/* The handshake's error, said for an operator. */
static GError *
explain(MpTunTlsStart *h, GError *err)
{
    GError *e;
    if (h->timed_out) {
        e = g_error_new(G_IO_ERROR, G_IO_ERROR_TIMED_OUT,
                        "no TLS handshake in %u ms", h->timeout_ms);
    } else if (h->cert_checked && h->cert_errors) {
        g_autofree char *why = cert_problems(h);
        e = g_error_new(G_TLS_ERROR, G_TLS_ERROR_BAD_CERTIFICATE,
                        "TLS: refused the peer's certificate: %s", why);
    } else if (g_error_matches(err, G_TLS_ERROR,
                               G_TLS_ERROR_CERTIFICATE_REQUIRED)) {
        e = g_error_new(G_TLS_ERROR, G_TLS_ERROR_CERTIFICATE_REQUIRED,
                        "TLS: the peer sent no certificate (required: "
                        "--tls-cert on migproxy source)");
    } else if (h->client
               && g_error_matches(err, G_TLS_ERROR, G_TLS_ERROR_NOT_TLS)) {
        e = g_error_new(G_TLS_ERROR, G_TLS_ERROR_NOT_TLS,
                        "TLS: the peer does not speak TLS (a migproxy dest "
                        "without --tls-cert?): %s",
                        err->message);
    } else if (g_error_matches(err, G_TLS_ERROR, G_TLS_ERROR_NOT_TLS)
               || g_error_matches(err, G_TLS_ERROR, G_TLS_ERROR_EOF)
               || g_error_matches(err, G_IO_ERROR, G_IO_ERROR_BROKEN_PIPE)
               || g_error_matches(err, G_IO_ERROR,
                                  G_IO_ERROR_CONNECTION_CLOSED)) {
        e = g_error_new(G_TLS_ERROR, G_TLS_ERROR_EOF,
                        "TLS: the peer broke off the handshake (%s): did it "
                        "refuse this side's certificate? (its log says why)",
                        err->message);
    } else {
        e = g_error_new(err->domain, err->code, "TLS: %s", err->message);
    }
    g_error_free(err);
    return e;
}

/* Dest with --tls-name: the source's certificate must name it. */
static gboolean
client_named(MpTunTlsStart *h, GError **error)
{
    GTlsCertificate *pc = g_tls_connection_get_peer_certificate(h->tls);
    g_autoptr(GSocketConnectable) id = g_network_address_new(h->t->name, 0);
    if (pc
        && !(g_tls_certificate_verify(pc, id, NULL)
             & G_TLS_CERTIFICATE_BAD_IDENTITY))
        return TRUE;
    g_set_error(error, G_TLS_ERROR, G_TLS_ERROR_BAD_CERTIFICATE,
                "TLS: refused the peer's certificate: does not name %s "
                "(--tls-name)",
                h->t->name);
    return FALSE;
}

static void
on_handshake(GObject *obj, GAsyncResult *res, gpointer data)
{
    MpTunTlsStart *h = data;
    GError *err = NULL;
    gboolean ok =
        g_tls_connection_handshake_finish(G_TLS_CONNECTION(obj), res, &err);

    h->handshaking = FALSE;
    if (h->abandoned) {
        g_clear_error(&err);
        start_destroy(h);
        return;
    }
    if (ok && !h->client && h->t->name && !client_named(h, &err))
        ok = FALSE;
    else if (!ok)
        err = explain(h, err);
    if (!ok) {
        deliver(h, NULL, err);
        return;
    }
    deliver(h, G_IO_STREAM(h->tls), NULL);
}

/* Settings both ends share, then the handshake. */
static void
handshake(MpTunTlsStart *h, GIOStream *tls)
{
    h->tls = G_TLS_CONNECTION(tls);
    g_tls_connection_set_database(h->tls, h->t->db);
    /* the tunnel's own END tells a clean end from a cut (tunnel-conn.h) */
    g_tls_connection_set_require_close_notify(h->tls, FALSE);
    g_signal_connect(h->tls, "accept-certificate",
                     G_CALLBACK(on_accept_certificate), h);
    h->cancel = g_cancellable_new();
    h->handshaking = TRUE;
    g_tls_connection_handshake_async(h->tls, G_PRIORITY_DEFAULT, h->cancel,
                                     on_handshake, h);
}

static MpTunTlsStart *
start_new(MpTunTlsCtx *t, GSocket *sock, guint timeout_ms, MpTunTlsFunc fn,
          gpointer data)
{
    MpTunTlsStart *h = g_new0(MpTunTlsStart, 1);
    h->t = t;
    h->sock = g_object_ref(sock);
    h->timeout_ms = timeout_ms;
    h->fn = fn;
    h->data = data;
    h->timeout_id = g_timeout_add(timeout_ms, on_timeout, h);
    return h;
}

MpTunTlsStart *
mp_tun_tls_client(MpTunTlsCtx *t, GSocket *sock, const char *peer,
                  guint timeout_ms, MpTunTlsFunc fn, gpointer data)
{
    MpTunTlsStart *h = start_new(t, sock, timeout_ms, fn, data);
    GError *err = NULL;

    h->client = TRUE;
    h->peer = g_strdup(peer);
    h->base = mp_tun_plain_stream(sock);
    g_autoptr(GSocketConnectable) id =
        t->name ? g_network_address_new(t->name, 0)
                : g_network_address_parse(peer, 0, &err);
    GIOStream *tls = id ? g_tls_client_connection_new(h->base, id, &err) : NULL;
    if (!tls) {
        fail_later(h, err);
        return h;
    }
    g_tls_connection_set_certificate(G_TLS_CONNECTION(tls), t->cert);
    handshake(h, tls);
    return h;
}

/* Tells a plain migproxy source that this dest wants TLS: the preamble,
 * a HELLO with the tls flag (the source refuses the mismatch and says
 * so) and END REFUSED, after reading its HELLO (so that the close does
 * not reset the connection before the source read ours). */
static void
refuse_plain(MpTunTlsStart *h)
{
    guint8 sink[4096];
    g_autoptr(GByteArray) b = g_byte_array_new();
    MpTunHello hello = {
        .version_min = MP_TUN_VERSION,
        .version_max = MP_TUN_VERSION,
        .role = MP_TUN_ROLE_DEST,
        .tls = MP_TUN_TLS_REQUIRED,
        .page_size = 4096,
        .max_payload = MP_TUN_MAX_PAYLOAD_DEFAULT,
        .software = "migproxy " MP_VERSION,
    };

    (void)g_socket_receive(h->sock, (char *)sink, sizeof(sink), NULL, NULL);
    mp_tun_write_preamble(b);
    mp_tun_write_hello(b, &hello);
    mp_tun_write_end(b, MP_TUN_END_REFUSED,
                     "this migproxy dest requires TLS (--tls-cert, "
                     "--tls-key, --tls-ca on migproxy source)");
    (void)g_socket_send(h->sock, (const char *)b->data, b->len, NULL, NULL);
    g_socket_shutdown(h->sock, FALSE, TRUE, NULL);
}

static gboolean
on_first_bytes(GSocket *sock, GIOCondition cond, gpointer data)
{
    MpTunTlsStart *h = data;
    guint8 first[8];
    g_autoptr(GError) err = NULL;

    /* peeked: the TLS handshake or the tunnel's parser reads them again */
    gssize n = recv(g_socket_get_fd(sock), first, sizeof(first), MSG_PEEK);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return G_SOURCE_CONTINUE;
    if (n < 0)
        g_set_error(&err, G_IO_ERROR, g_io_error_from_errno(errno),
                    "reading: %s", g_strerror(errno));
    g_clear_pointer(&h->peek_source, g_source_unref);
    if (n <= 0) {
        deliver(h, NULL,
                n < 0 ? g_steal_pointer(&err)
                      : g_error_new(G_IO_ERROR, G_IO_ERROR_CONNECTION_CLOSED,
                                    "closed before a word"));
        return G_SOURCE_REMOVE;
    }
    if (!h->t && first[0] == TLS_RECORD_HANDSHAKE) {
        deliver(h, NULL,
                g_error_new(G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED,
                            "it speaks TLS (a migproxy source with "
                            "--tls-cert?), and this dest runs without TLS"));
    } else if (!h->t) {
        /* plain: the tunnel's parser checks the preamble */
        g_autoptr(GIOStream) plain = mp_tun_plain_stream(h->sock);
        deliver(h, plain, NULL);
    } else if (first[0] == PREAMBLE_FIRST) {
        refuse_plain(h);
        deliver(h, NULL,
                g_error_new(G_IO_ERROR, G_IO_ERROR_PERMISSION_DENIED,
                            "a plain migproxy tunnel (source without "
                            "--tls-cert), and this dest requires TLS"));
    } else if (first[0] != TLS_RECORD_HANDSHAKE) {
        g_autofree char *hex = g_malloc(3 * n + 1);
        for (gssize i = 0; i < n; i++)
            g_snprintf(hex + 3 * i, 4, "%s%02x", i ? " " : "", first[i]);
        deliver(h, NULL,
                g_error_new(G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                            "not a migproxy tunnel: neither TLS nor the "
                            "tunnel preamble (first bytes %s)",
                            hex));
    } else {
        h->base = mp_tun_plain_stream(h->sock);
        GIOStream *tls = g_tls_server_connection_new(h->base, h->t->cert, &err);
        if (!tls) {
            deliver(h, NULL, g_steal_pointer(&err));
            return G_SOURCE_REMOVE;
        }
        g_object_set(tls, "authentication-mode", G_TLS_AUTHENTICATION_REQUIRED,
                     NULL);
        handshake(h, tls);
    }
    return G_SOURCE_REMOVE;
}

MpTunTlsStart *
mp_tun_tls_accept(MpTunTlsCtx *t, GSocket *sock, guint timeout_ms,
                  MpTunTlsFunc fn, gpointer data)
{
    MpTunTlsStart *h = start_new(t, sock, timeout_ms, fn, data);

    g_socket_set_blocking(sock, FALSE);
    h->peek_source = g_socket_create_source(sock, G_IO_IN, NULL);
    g_source_set_callback(h->peek_source, G_SOURCE_FUNC(on_first_bytes), h,
                          NULL);
    g_source_attach(h->peek_source, NULL);
    return h;
}
