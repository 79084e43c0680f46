/* tunnel-mux.h: QEMU connections carried as streams of one tunnel
 * connection (docs/tunnel.md, "Streams", "Raw stream bytes"); both sides
 * of the pair use it.
 *
 *   local socket (a QEMU connection, or the source side's hop from its
 *   relay)  --read--> DATA frames (zstd, one context per stream) --> tunnel
 *           <-write-- DATA frames of the reverse stream        <-- tunnel
 *
 * A QEMU connection is a pair of streams: the forward one, opened by the
 * source side (odd id), and its reverse, opened by the destination side
 * (even id, OPEN with reverse_of) when it first has bytes or an end for
 * it.  The destination side opens its connections to QEMU in the order
 * of the OPENs (the `open` hook; mp_tun_mux_attach() when connected), and
 * buffers a stream's bytes until then.
 *
 * Bounds and back-pressure: a receiver acknowledges a DATA frame (ACK)
 * once its bytes are written to the local socket; a sender stops reading
 * a local socket while its stream's window of raw bytes is
 * unacknowledged, or while the tunnel's output queue is above
 * MP_TUN_CONN_QUEUE_HIGH.  So a stream holds at most one window of bytes
 * at the receiver (a peer that sends more than twice it is refused), and
 * what QEMU sees is the rate of the tunnel and of the far QEMU.  The
 * window is MP_TUN_MUX_WINDOW at first; with MP_TUN_FEAT_WIDE_WINDOW on
 * both sides it follows the rate the peer acknowledges: MP_TUN_MUX_WINDOW_US
 * of it, between MP_TUN_MUX_WINDOW and MP_TUN_MUX_WINDOW_MAX
 * (mp_tun_mux_window_for()).  A window fixed in bytes is time that
 * depends on the link and the stream: 4 MiB is about 80 ms of a 100
 * Mbit/s link on pages that compress to a quarter, where more lets more
 * wait in front of the far QEMU at the switchover, and 33 ms of a 1
 * Gbit/s link on random pages, less than the path holds, where the
 * sender waited for ACKs (docs/benchmarks.md, "1 Gbit/s with the guest
 * idle").
 *
 * Sharing: when the link (or its pace) holds the tunnel back, the bulk
 * lane's room goes round the migrations (MpTunOpen route and session),
 * one read each, and within a migration round its connections, so that
 * migrations get equal turns whatever their number of connections;
 * urgent connections read at once.
 *
 * Ends: a local EOF goes as CLOSE EOF (the receiver shuts down the write
 * side of its socket once written, then acknowledges the CLOSE); a reset
 * as CLOSE ABORT (the receiver resets its socket).  A tunnel that fails
 * resets every local socket, so QEMU sees its migration's connections
 * close.
 *
 * Resume (docs/tunnel.md, "What the pair does on a drop"): with
 * opt.resume_ms on both sides (HELLO feature RESUME, the source side's
 * tunnel_id), every sequenced frame is kept until the peer acknowledges
 * it (the same bytes the output queue holds, bounded by the window per
 * connection).  When the link drops while something is worth resuming
 * (dest: any live connection; source: a migration in post-copy), the
 * local sockets stay open and unread, `suspended` tells the owner, which
 * brings a new connection (mp_tun_mux_resume()) within opt.resume_ms;
 * both sides then say what they hold (a resume ACK) and send again what
 * the other lacks.  A peer that does not hold the tunnel makes the new
 * connection a new tunnel (the old connections are reset); the timeout
 * ends the tunnel as a failure would.
 */
#pragma once

#include <gio/gio.h>
#include <json-c/json.h>
#include "tunnel-conn.h"
#include "tunnel-pages-out.h"

#define MP_TUN_MUX_WINDOW (4u << 20)  /* unacknowledged raw bytes/stream */
#define MP_TUN_MUX_WINDOW_MAX (16u << 20) /* ... at most, grown */
#define MP_TUN_MUX_WINDOW_US 80000        /* ... of the acknowledged rate */
/* How often a stream's acknowledged rate is taken (the window follows
 * the last interval's). */
#define MP_TUN_MUX_WINDOW_SAMPLE_US 100000
/* ... and this much more while a requested post-copy page is on its way
 * out of the hop (the receiver takes up to twice the window).  Requests
 * read the hop past the link's pace (what is in it in front of the page,
 * ~20 KB each); at 400 requests/s that is about the link's rate, the
 * bulk queue never drained below the window, and each request waited
 * 1.5-3 ms for it to (docs/benchmarks.md, "The window in front of a
 * requested page"). */
#define MP_TUN_MUX_LIFT_SLACK (1u << 20)
#define MP_TUN_MUX_CHUNK  (256u << 10) /* raw bytes per DATA frame at most */

typedef struct MpTunMux MpTunMux;

typedef struct {
    /* The handshake is done. */
    void (*ready)(MpTunMux *m, gpointer data);
    /* Destination side: the peer opened forward stream `stream`; connect
     * to QEMU and mp_tun_mux_attach() (or mp_tun_mux_refuse()). */
    void (*open)(MpTunMux *m, guint16 stream, const MpTunOpen *o,
                 gpointer data);
    /* Both directions of a connection ended; its socket is closed. */
    void (*stream_done)(MpTunMux *m, guint16 stream, gpointer data);
    /* The tunnel is over (error NULL: END both ways, `end_code` the
     * peer's); every local socket is closed.  May free the mux. */
    void (*closed)(MpTunMux *m, const GError *error, guint8 end_code,
                   gpointer data);
    /* The link dropped (`error` why) and the tunnel waits for a new
     * connection: the source side dials, dest accepts one from the same
     * peer (mp_tun_mux_resume()).  Also after a connection made to
     * resume failed.  Optional. */
    void (*suspended)(MpTunMux *m, const GError *error, gpointer data);
} MpTunMuxHooks;

typedef struct {
    MpTunRole role;
    gboolean compress; /* offer and use zstd on DATA (RAW_ZSTD) */
    int level;         /* zstd level, 0: 3 */
    gboolean tls;      /* the tunnel runs over TLS (HELLO's tls flag) */
    /* Source side: RAM pages of main streams go as PAGES
     * (tunnel-pages-out.h) with these encoders; the destination side
     * always decodes them (tunnel-pages-in.h). */
    gboolean pages;
    MpTunPagesOptions pages_opt;
    guint64 rate;      /* bulk pace in bytes/s (--rate); 0: measured */
    gboolean quiet;    /* no log line when pacing begins */
    /* resume: how long the QEMU connections wait for a new link after a
     * drop (0: no resume, a drop resets them); the source side names the
     * tunnel with `tunnel_id` (random, not 0; dest: 0) */
    guint resume_ms;
    guint64 tunnel_id;
    /* source side: resume whatever the migration's phase (by default
     * only once one runs in post-copy); the unit tests' */
    gboolean resume_any;
    /* source side: the routes it uses (--listen); more than one needs a
     * peer with MP_TUN_FEAT_ROUTES, else the tunnel is refused */
    guint routes;
    /* --ping-timeout: nothing from the peer for this long drops the link
     * as a socket error does (resumed or failed as any drop; 0: never;
     * mp_tun_mux_default_ping_timeout()) */
    guint ping_timeout_ms;
} MpTunMuxOptions;

/* The default --ping-timeout: a third of `resume_ms` (--resume-timeout;
 * 0: off) between 3 and 10 s.  The peer PINGs every second, so 3 s is
 * three PINGs missed (a busy host's late loop, TCP retransmitting a lost
 * segment, do not drop a link that lives); at most a third of the
 * resume timeout, so that both sides, which see a silent link's drop
 * about together, still have most of it to reconnect and resume. */
#define MP_TUN_MUX_PING_TIMEOUT_MIN 3000u
#define MP_TUN_MUX_PING_TIMEOUT_MAX 10000u
/* --ping-timeout below two PING periods would drop a live link whose
 * PING came a little late */
#define MP_TUN_MUX_PING_TIMEOUT_LEAST 2000u
guint mp_tun_mux_default_ping_timeout(guint resume_ms);

/* The window of a stream whose peer acknowledged `acked_per_s` raw bytes
 * a second over the last interval (MP_TUN_FEAT_WIDE_WINDOW agreed). */
guint64 mp_tun_mux_window_for(double acked_per_s);

/* The most page cache a side offers per stream (HELLO cache_bytes):
 * mp_pcache_auto_size()'s ceiling. */
#define MP_TUN_MUX_CACHE_MAX (2048ull << 20)

/* A mux over the connected tunnel `stream` (reference taken; plain or
 * TLS, see tunnel-conn.h), starting the handshake.  @return free with
 * mp_tun_mux_free(). */
MpTunMux *mp_tun_mux_new(GIOStream *stream, const char *name,
                         const MpTunMuxOptions *opt,
                         const MpTunMuxHooks *hooks, gpointer data);
/* Closes the tunnel and every local socket at once; no hook is called.
 * Accepts NULL. */
void mp_tun_mux_free(MpTunMux *m);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpTunMux, mp_tun_mux_free)

/* Source side: carries the local connection `local` (reference taken) as
 * a new forward stream described by `o` (OPEN sent now).  @return the
 * stream id, or 0 (too many streams, or not ready: `local` is closed). */
guint16 mp_tun_mux_add(MpTunMux *m, GSocket *local, const MpTunOpen *o);
/* Destination side: `local` (reference taken), connected to QEMU, carries
 * forward stream `stream`. */
void mp_tun_mux_attach(MpTunMux *m, guint16 stream, GSocket *local);
/* Destination side: no QEMU connection for `stream`: CLOSE ABORT with
 * `reason` to the peer. */
void mp_tun_mux_refuse(MpTunMux *m, guint16 stream, const char *reason);

/* Ends the tunnel with END `code` (after what is queued); while
 * suspended, at once (closed follows from an idle). */
void mp_tun_mux_end(MpTunMux *m, guint8 code, const char *reason);
/* Suspended and waiting for a connection (not one in its handshake)? */
gboolean mp_tun_mux_suspended(const MpTunMux *m);
/* A new connection `stream` (reference taken; plain or TLS) for the
 * suspended tunnel: its HELLO names the tunnel; if the peer holds it the
 * tunnel resumes, else it becomes a new tunnel (`ready` is called again)
 * and the old QEMU connections are reset. */
void mp_tun_mux_resume(MpTunMux *m, GIOStream *stream, const char *name);
/* The tunnel's name (the source side's HELLO tunnel_id; 0: not known
 * yet, or no resume). */
guint64 mp_tun_mux_tunnel_id(const MpTunMux *m);
/* Connections whose streams have not both ended. */
guint mp_tun_mux_live(const MpTunMux *m);
/* The same, of session `session` only (MpTunOpen.session). */
guint mp_tun_mux_session_live(const MpTunMux *m, guint32 session);
/* Source side: the relay in front of route `route`'s main channel put a
 * requested post-copy page first (mp_tun_pages_out_page_first()). */
void mp_tun_mux_page_first(MpTunMux *m, guint16 route);
gboolean mp_tun_mux_ready(const MpTunMux *m);

/* `{link_bytes_in, link_bytes_out, compress, link, resume: {on,
 * tunnel_id, drops, resumed, frames_resent, bytes_resent,
 * duplicates_dropped, down_ms_max, kept_bytes_max}, channels: [{stream,
 * connection, kind, to_dst {bytes_in, bytes_out}, to_src {...}}]}`: per
 * connection, the bytes read from or written to QEMU's side (`bytes_in`
 * of the direction this side reads) and the DATA frame bytes on the
 * tunnel.  `since`: connections first seen at or after this mux
 * connection number only (mp_tun_mux_connections() before a session). */
json_object *mp_tun_mux_report(const MpTunMux *m, guint since);
/* The same, of the connections of route `route` only (MpTunOpen.route;
 * -1: all); each channel also says its `session` and `route`, and
 * `channels_link_bytes_out` / `_in` sum the frame bytes of the channels
 * listed (a session's share of the link). */
json_object *mp_tun_mux_report_route(const MpTunMux *m, guint since, int route);
/* Source side: the page encoders' counters over the tunnel's main
 * streams so far, `{zero_runs, dedup, delta, zstd: {on, bytes_in,
 * bytes_out, cpu_s}}` (`on`: on in a stream that runs now); NULL before
 * the first stream with PAGES.  Caller owns. */
json_object *mp_tun_mux_encoders(const MpTunMux *m);
/* The tunnel connection's link measurements and pace (NULL while the
 * tunnel is down). */
MpTunLink *mp_tun_mux_link(const MpTunMux *m);
/* Connections carried so far. */
guint mp_tun_mux_connections(const MpTunMux *m);
