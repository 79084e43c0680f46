/* tunnel-source.h: the tunnel end of `migproxy source`.
 *
 *   source QEMU --> relay (src/relay: admission, pipelines, metrics,
 *                   report, capture; its --to is the hop)
 *               --> hop: a loopback listener of this process; each
 *                   connection the relay opens there (in QEMU's order)
 *                   becomes one connection of the tunnel (tunnel-mux.h)
 *               --> tunnel to `migproxy dest --listen`
 *
 * The hop accepts only connections from this process's own sockets (a
 * stranger on the host that finds its port is closed), and only while
 * the tunnel is up: a connection that comes while it is down is reset,
 * so the relay fails the migration and QEMU sees it fail.
 *
 * The tunnel is connected at start (mp_tun_source_wait_ready()).  When
 * it drops while a migration runs in post-copy (and `resume_ms`), the
 * QEMU connections stay open and the tunnel is dialled again at once,
 * then every second, and resumes (tunnel-mux.h) within `resume_ms`;
 * otherwise every connection it carried is reset (the migration fails
 * cleanly: QEMU's source sees its connections close, its guest runs on;
 * in post-copy QEMU pauses and its own recovery can go through the pair)
 * and a new tunnel is tried every second for the next migration.
 */
#pragma once

#include <gio/gio.h>
#include <json-c/json.h>
#include "tunnel-tls.h"
#include "tunnel-pages-out.h"

/* The relay's socket buffers on this host (MpRelayOptions.local_sockbuf):
 * QEMU's connections (receive) and the relay's to the hop (send).  Left to
 * the kernel they grow to megabytes each, stream that has left the source
 * QEMU (which counts it as sent, and stops its guest on that count) but
 * waits on this host for the link; at the switchover it is downtime that
 * QEMU does not see.  256 KiB (the kernel doubles it) still carries
 * gigabytes a second on loopback. */
#define MP_TUN_SOURCE_LOCAL_SOCKBUF (256u << 10)

typedef struct {
    const char *peer;    /* HOST:PORT of `migproxy dest --listen` */
    gboolean compress;   /* zstd on DATA frames */
    int level;           /* zstd level (0: 3) */
    guint64 rate;        /* --rate: bulk pace, bytes/s; 0: measured */
    gboolean quiet;
    MpTunTlsOptions tls; /* `cert` NULL: plain TCP */
    guint timeout_ms;    /* a connect and a TLS handshake (0: 10000) */
    gboolean pages;      /* RAM pages as PAGES (tunnel-pages-out.h) */
    MpTunPagesOptions pages_opt;
    guint resume_ms;     /* --resume-timeout (0: no resume) */
    guint ping_timeout_ms; /* --ping-timeout: a silent peer is a drop
                              (0: never; tunnel-mux.h) */
    guint routes; /* hops, one per --listen (0: 1); route i's connections
                     go to dest's --to i (MpTunOpen.route) */
} MpTunSourceOptions;

typedef struct MpTunSource MpTunSource;

/* Binds the hop and starts connecting the tunnel.  @return NULL with
 * `error` if --peer does not parse, the TLS files do not load or the hop
 * cannot listen. */
MpTunSource *mp_tun_source_new(const MpTunSourceOptions *opt, GError **error);
void mp_tun_source_free(MpTunSource *s); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpTunSource, mp_tun_source_free)

/* Runs the default main context until the tunnel's handshake is done or
 * `timeout_ms` passed.  @return TRUE if it is up; FALSE with `error`, at
 * once when the peer was refused or refused us (TLS authentication, a
 * HELLO it did not agree to): trying again would not help; and
 * G_IO_ERROR_CANCELLED once `*stopped` (optional; a signal's name, set by
 * a handler that runs in the loop) is set. */
gboolean mp_tun_source_wait_ready(MpTunSource *s, guint timeout_ms,
                                  const char *const *stopped,
                                  GError **error);

/* Route `route`'s hop, where its relay connects (borrowed): its name
 * ("@migproxy-hop-PID-ROUTE-...", for messages) and its address (a Unix
 * socket in the abstract namespace). */
const char *mp_tun_source_hop(const MpTunSource *s, guint route);
GSocketAddress *mp_tun_source_hop_address(const MpTunSource *s, guint route);

/* The tunnel's part of a session report of route `route`'s relay:
 * the route's connections carried since its last call (a relay serves
 * one migration at a time; with one route, every connection), link bytes
 * (the whole tunnel's), and the tunnel's state.  A snapshot: the relay
 * reports when its side of the connections closed, which can be a
 * moment before the last bytes were read into the tunnel.  Caller owns. */
json_object *mp_tun_source_report(MpTunSource *s, guint route);
/* The same connections as the route's last mp_tun_source_report(), with
 * their counters now (after mp_tun_source_finish(): final).  Caller
 * owns. */
json_object *mp_tun_source_report_again(MpTunSource *s, guint route);

/* The current tunnel's link (tunnel-link.h) in bits per second and ms,
 * < 0 where not known (no tunnel, not measured, not paced, no PONG). */
void mp_tun_source_link(MpTunSource *s, gint64 *measured_bps,
                        gint64 *paced_bps, double *rtt_ms);

/* The current tunnel's encoder counters (mp_tun_mux_encoders()); NULL
 * without a tunnel or PAGES.  Caller owns. */
json_object *mp_tun_source_encoders(MpTunSource *s);

/* Route `route`'s relay put a requested post-copy page first in its
 * queue toward the hop: the tunnel reads it out of the hop past the
 * link's pace (mp_tun_mux_page_first()). */
void mp_tun_source_page_first(MpTunSource *s, guint route);

/* After the relay's last session: runs the main context until every
 * connection's streams ended, then ends the tunnel (END DONE) and waits
 * for the peer's END, `timeout_ms` at most.  @return TRUE if it ended
 * cleanly. */
gboolean mp_tun_source_finish(MpTunSource *s, guint timeout_ms);
