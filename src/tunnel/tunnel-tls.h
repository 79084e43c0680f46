/* tunnel-tls.h: the tunnel's TLS (GIO's GTlsClientConnection and
 * GTlsServerConnection; the backend is glib-networking's GnuTLS) and the
 * destination side's look at a new connection's first byte
 * (docs/tunnel.md, "TLS").
 *
 *   source side: connect --> mp_tun_tls_client() --> GIOStream --> mux
 *   dest side:   accept  --> mp_tun_tls_accept(): first byte
 *                  0x16 (TLS)       with TLS: handshake; without: refused
 *                  0x8b (preamble)  without TLS: plain; with: refused
 *                  other            without TLS: plain (the tunnel parser
 *                                   refuses it); with: refused
 *                --> GIOStream --> mux
 *
 * Both ends present their certificate (--tls-cert, --tls-key) and verify
 * the peer's against --tls-ca only (not the system's CAs): the server
 * requires a client certificate.  Identity: the source side checks that
 * dest's certificate names the --peer host (or --tls-name); dest checks
 * the chain only, or with --tls-name that the source's certificate names
 * it.  A failure gives a one-line error saying why; nothing of the
 * tunnel runs before it succeeded, so nothing reaches QEMU.
 */
#pragma once

#include <gio/gio.h>

typedef struct {
    const char *cert; /* PEM certificate (and chain) of this side */
    const char *key;  /* its PEM private key */
    const char *ca;   /* PEM CA certificate(s) the peer's must chain to */
    /* source side: the name dest's certificate must carry (NULL: the
     * --peer host); dest side: the name the source's certificate must
     * carry (NULL: any certificate --tls-ca signed) */
    const char *name;
} MpTunTlsOptions;

typedef struct MpTunTlsCtx MpTunTlsCtx;

/* The options given make sense: none, or cert, key and CA together
 * (name only with them).  @return FALSE with `error` (a usage error). */
gboolean mp_tun_tls_options_check(const MpTunTlsOptions *opt, GError **error);

/* Loads the files.  @return NULL with `error` naming the option and
 * file (G_IO_ERROR_INVALID_ARGUMENT), or saying that GIO has no TLS
 * backend (glib-networking). */
MpTunTlsCtx *mp_tun_tls_new(const MpTunTlsOptions *opt, GError **error);
void mp_tun_tls_free(MpTunTlsCtx *t); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpTunTlsCtx, mp_tun_tls_free)

/* One connection on its way to a stream the tunnel can run over. */
typedef struct MpTunTlsStart MpTunTlsStart;

/* `stream` (borrowed: take a reference) ready for mp_tun_mux_new(), or
 * NULL with `error` (a one-line reason; the socket is closed).  Called
 * from the main loop, never from inside the call that started it; may
 * free `h`. */
typedef void (*MpTunTlsFunc)(MpTunTlsStart *h, GIOStream *stream,
                             const GError *error, gpointer data);

/* Source side: the TLS client handshake on the connected `sock`
 * (reference taken) with dest at `peer` (HOST:PORT: its host is the
 * identity checked unless the options name one), within `timeout_ms`. */
MpTunTlsStart *mp_tun_tls_client(MpTunTlsCtx *t, GSocket *sock,
                                 const char *peer, guint timeout_ms,
                                 MpTunTlsFunc fn, gpointer data);
/* Dest side: looks at the accepted `sock`'s first byte and, with `t`,
 * runs the TLS server handshake; `t` NULL: plain tunnels only.  Within
 * `timeout_ms`.  A plain migproxy source refused by a TLS dest is told
 * so (preamble, a HELLO with the tls flag, END REFUSED) before the
 * close. */
MpTunTlsStart *mp_tun_tls_accept(MpTunTlsCtx *t, GSocket *sock,
                                 guint timeout_ms, MpTunTlsFunc fn,
                                 gpointer data);
/* Abandons the start: no callback; its socket is closed now, or during
 * a TLS handshake once the handshake (cancelled) returns to the main
 * loop.  Accepts NULL. */
void mp_tun_tls_start_free(MpTunTlsStart *h);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpTunTlsStart, mp_tun_tls_start_free)

/* A plain stream over `sock` (reference taken) for the mux. */
GIOStream *mp_tun_plain_stream(GSocket *sock);
