/* tunnel-conn.h: one tunnel connection between `migproxy source` and
 * `migproxy dest` over a GIOStream on the glib main loop: a
 * GSocketConnection (plain TCP) or a GTlsConnection over one, whose
 * handshake is done (tunnel-tls.h); docs/tunnel.md, "Connection".
 *
 *   connect/accept --> preamble + HELLO each way --> negotiated (`ready`)
 *                  --> frames both ways (`frame`) --> END each way
 *
 * Output is a queue of whole frames in two lanes: a queued urgent frame
 * goes before the next bulk frame, never inside one.  The connection
 * counts its bytes each way; the owner bounds what it queues with
 * mp_tun_conn_queued() and the `drained` hook (back-pressure).
 *
 * Hooks are called from the main loop; none may free the connection
 * except `closed`, which is called from an idle once the connection is
 * over (END exchanged, or an error: then `error` says why).
 */
#pragma once

#include <gio/gio.h>
#include "tunnel-frame.h"
#include "tunnel-link.h"

/* The owner stops producing frames above this many queued bytes and is
 * told by `drained` when the queue fell below half of it. */
#define MP_TUN_CONN_QUEUE_HIGH (8u << 20)

typedef struct MpTunConn MpTunConn;

typedef struct {
    /* Both HELLOs are in and agree. */
    void (*ready)(MpTunConn *c, const MpTunAgreed *agreed, gpointer data);
    /* A frame after the handshake other than HELLO and END. */
    void (*frame)(MpTunConn *c, const MpTunFrame *f, gpointer data);
    /* The output queue fell below MP_TUN_CONN_QUEUE_HIGH / 2, or there is
     * bulk room again after mp_tun_conn_bulk_room() said no. */
    void (*drained)(MpTunConn *c, gpointer data);
    /* The connection is over: `error` NULL after a clean END both ways
     * (`end_code` the peer's code), else why it failed.  May free. */
    void (*closed)(MpTunConn *c, const GError *error, guint8 end_code,
                   gpointer data);
    /* Bulk frames are paced from now on (the link's rate was measured):
     * the queues in front of the link shrink (tunnel-link.h).  Optional. */
    void (*paced)(MpTunConn *c, gpointer data);
} MpTunConnHooks;

/* Starts the handshake on `stream` (a reference is taken; its pollable
 * streams are used, its socket made non-blocking); `name` names
 * the connection in errors ("tunnel to 10.0.0.3:7000"); `mine` is the
 * HELLO to send (copied).  @return free with mp_tun_conn_free(). */
MpTunConn *mp_tun_conn_new(GIOStream *stream, const char *name,
                           const MpTunHello *mine, const MpTunConnHooks *hooks,
                           gpointer data);
/* Closes the socket at once (a TLS stream without close_notify: END
 * tells a clean end); no hook is called.  Accepts NULL. */
void mp_tun_conn_free(MpTunConn *c);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpTunConn, mp_tun_conn_free)

/* Queues whole frame(s) `buf` (copied) in the urgent or bulk lane. */
void mp_tun_conn_send(MpTunConn *c, const guint8 *buf, gsize len,
                      gboolean urgent);
/* The same with `frames` shared, not copied (a reference is taken): the
 * mux keeps the frames it may have to send again after a resume. */
void mp_tun_conn_send_bytes(MpTunConn *c, GBytes *frames, gboolean urgent);
/* Bytes queued and not yet written. */
gsize mp_tun_conn_queued(const MpTunConn *c);
/* May the owner queue another bulk frame?  Below MP_TUN_CONN_QUEUE_HIGH,
 * and once paced below a millisecond or so of the link
 * (mp_tun_link_queue_bound()); when not, `drained` says when. */
gboolean mp_tun_conn_bulk_room(MpTunConn *c);
/* Raw stream bytes per DATA frame (mp_tun_link_chunk()). */
gsize mp_tun_conn_chunk(const MpTunConn *c);
/* Fails the connection (G_IO_ERROR_TIMED_OUT, as a socket error would)
 * when nothing at all came from the peer for `ms` (0: never), from its
 * start on: a peer whose host stopped or whose network went silently (no
 * FIN, no reset) sends no PING (every MP_TUN_LINK_PING_EVERY samples), so
 * its silence tells; docs/tunnel.md, "Ping". */
void mp_tun_conn_set_ping_timeout(MpTunConn *c, guint ms);
/* Paces bulk frames at `bytes_per_s` from now on (--rate; 0: measure). */
void mp_tun_conn_set_rate(MpTunConn *c, guint64 bytes_per_s);
/* The link's measurements and pace (owned by the connection). */
MpTunLink *mp_tun_conn_link(const MpTunConn *c);
/* Sends END with `code` and `reason` after what is queued; the
 * connection closes once the peer's END came (or at once if it had). */
void mp_tun_conn_end(MpTunConn *c, guint8 code, const char *reason);
/* Fails the connection now with `error`'s message (closed hook follows
 * from an idle). */
void mp_tun_conn_fail(MpTunConn *c, const GError *error);

const char *mp_tun_conn_name(const MpTunConn *c);
guint64 mp_tun_conn_bytes_in(const MpTunConn *c);
guint64 mp_tun_conn_bytes_out(const MpTunConn *c);
gboolean mp_tun_conn_is_ready(const MpTunConn *c);
/* The peer sent END (whatever its code): it ended the tunnel on purpose. */
gboolean mp_tun_conn_peer_ended(const MpTunConn *c);
