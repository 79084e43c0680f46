/* tunnel-dest.h: `migproxy dest`: accepts the tunnel from `migproxy
 * source` and opens, for each connection it carries, a TCP connection to
 * the destination QEMU's -incoming address, one at a time in the order
 * the source side opened them (QEMU tells its channels apart by their
 * first bytes and counts them in that order: main first, multifd in
 * order), then relays both directions (tunnel-mux.h).  With several
 * `to` (the source side's several --listen, migrations side by side),
 * a connection goes to the `to` of its route, and each route's
 * connections go out in their own order, independently of the others.
 *
 * One tunnel at a time: another is refused while one runs.  A tunnel
 * whose link dropped waits `resume_ms` with its QEMU connections open
 * for a connection from the same host (and TLS certificate) that
 * resumes it (tunnel-mux.h).  Only
 * addresses in `allow` may connect (others are closed at accept);
 * `allow` is required without TLS and optional with it.  A new
 * connection first goes through tunnel-tls.h (its first byte, the TLS
 * handshake): up to MP_TUN_DEST_STARTING at once, each within the
 * connect timeout; only one that passed becomes the tunnel, so nothing
 * of one that fails reaches QEMU.
 */
#pragma once

#include <gio/gio.h>
#include "tunnel-tls.h"

#define MP_TUN_DEST_STARTING 4

typedef struct {
    const char *listen;       /* HOST:PORT the tunnel comes to */
    const char *const *to;    /* HOST:PORT of each destination QEMU,
                                 NULL-terminated: route i goes to to[i]
                                 (MpTunOpen.route; 1..MP_TUN_ROUTES_MAX) */
    const char *const *allow; /* ADDR[/PREFIX], NULL-terminated; not
                                 empty without TLS */
    const char *report;       /* JSON per tunnel, or NULL */
    gboolean once;            /* exit after the first tunnel */
    gboolean compress;        /* accept zstd DATA */
    gboolean quiet;
    guint connect_timeout_ms; /* 0: 10000; also a new tunnel's TLS */
    guint resume_ms;          /* --resume-timeout: how long a dropped
                                 tunnel's QEMU connections wait for its
                                 source side to resume it (0: no resume) */
    guint ping_timeout_ms;    /* --ping-timeout: a silent peer is a drop
                                 (0: never; tunnel-mux.h) */
    MpTunTlsOptions tls;      /* `cert` NULL: plain TCP */
} MpTunDestOptions;

typedef struct MpTunDest MpTunDest;

/* Binds --listen (loads the TLS files).  @return NULL with `error`. */
MpTunDest *mp_tun_dest_new(const MpTunDestOptions *opt, GError **error);
void mp_tun_dest_free(MpTunDest *d); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpTunDest, mp_tun_dest_free)

/* "10.0.0.3:7000" (borrowed). */
const char *mp_tun_dest_listen_address(const MpTunDest *d);

/* Serves until --once is satisfied or mp_tun_dest_stop().  @return 0, or
 * 1 with --once when the tunnel did not end cleanly (END DONE) or its
 * report could not be written. */
int mp_tun_dest_run(MpTunDest *d);

/* Stops listening and ends the tunnel (END SHUTDOWN; its connections to
 * QEMU are reset if still open). */
void mp_tun_dest_stop(MpTunDest *d, const char *why);
