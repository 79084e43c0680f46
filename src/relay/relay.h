/* relay.h: `migproxy relay`, a live man-in-the-middle between a source and
 * a destination QEMU (docs/relay.md).
 *
 * The relay listens where the source migrates to and opens one connection
 * to the destination per channel of the migration, main first, one at a
 * time (QEMU 7.2's destination tells its channels apart by that order).
 * Every accepted connection is held without being read until its first
 * bytes pass the checks of relay-admit.h: a stream header and a first
 * record start a session; multifd, preempt and recovery channels join it
 * only if they agree with it and come from its main channel's address;
 * anything else, an early close or silence is logged and closed, so a
 * stray client never reaches the destination.  A session ends when all
 * its connections have closed (or, after post-copy began, when a recovery
 * never came).  Only one migration at a time goes through one relay.
 */
#pragma once

#include <gio/gio.h>
#include <json-c/json.h>

typedef struct {
    const char *listen;       /* HOST:PORT (port 0: any free port) */
    const char *to;           /* HOST:PORT of the destination's -incoming */
    /* Embedding (`migproxy source`): the destination's address itself
     * (its hop, a Unix socket), `to` only naming it; NULL: resolve `to` */
    GSocketAddress *to_addr;
    const char *metrics;      /* --metrics FILE, - or unix:PATH, or NULL */
    const char *report;       /* --report FILE (session N>1: FILE-N) or NULL */
    const char *capture;      /* --capture DIR, or NULL */
    gboolean once;            /* exit when the first session ends */
    gboolean quiet;           /* warnings only */
    gboolean progress;        /* live one-line display (stderr is a terminal) */
    guint connect_timeout_ms; /* 0: 10000 */
    guint handshake_timeout_ms; /* a new connection's first bytes; 0: 10000 */
    gboolean no_zero_pages;     /* keep all-zero PAGE records as they are */
    gboolean no_priority;       /* no post-copy priority lane */
    gboolean no_pace; /* the lane without a measured pace (`migproxy
                         source`: its tunnel paces the link) */
    guint64 rate;  /* bytes/s towards the destination; 0: measured */
    guint64 queue; /* post-copy read-ahead; 0: mp_pcopy_auto_queue() */
    /* SO_RCVBUF of QEMU's connections and SO_SNDBUF towards the
     * destination, bytes (the kernel doubles them); 0: the kernel's
     * autotuning (up to megabytes each).  For `migproxy source`, whose
     * destination is the tunnel's hop on the same host: the stream that
     * waits in these buffers has left QEMU, which counts it as sent
     * (docs/tunnel.md, "What the pair does today"). */
    guint local_sockbuf;
    const char *const *allow; /* --allow ADDR[/PREFIX], NULL-terminated;
                                 NULL or empty: any address */
    /* Embedding (`migproxy source`): a JSON value added to session N's
     * report under `report_key`, or NULL for none. */
    json_object *(*report_extra)(guint session, gpointer data);
    const char *report_key;
    gpointer report_data;
    /* Embedding: the link as the embedder measured it, for the --metrics
     * sample lines (bits per second, ms; < 0: not known), or NULL. */
    void (*link_info)(gint64 *measured_bps, gint64 *paced_bps,
                      double *rtt_ms, gpointer data);
    /* Embedding: the sample lines' "encoders" (a new object that the
     * relay takes; NULL: none), or NULL. */
    json_object *(*encoders_info)(gpointer data);
    /* Embedding: the post-copy lane put a requested page first in the
     * queue toward `to` (or found it on its way there already), with
     * `report_data`; or NULL.  `migproxy source`'s tunnel then reads the
     * hop past the link's pace until the page is out of it. */
    void (*page_first)(gpointer data);
} MpRelayOptions;

typedef struct MpRelay MpRelay;

/* Resolves both addresses, binds and listens, opens the output files.
 * @opt: copied.  @return a relay, or NULL with @error set. */
MpRelay *mp_relay_new(const MpRelayOptions *opt, GError **error);
/* Closes everything (an active session is cut, not reported: call
 * mp_relay_stop() and run first).  Accepts NULL. */
void mp_relay_free(MpRelay *r);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpRelay, mp_relay_free)

/* The address it listens on, "127.0.0.1:4444" (borrowed). */
const char *mp_relay_listen_address(const MpRelay *r);

/* Serves on the thread-default main context until --once is satisfied or
 * mp_relay_stop() (at once if that happened already, while another
 * relay on the same context ran).  @return the exit status: 0, or 1 when
 * --once and the migration did not complete or its report could not be
 * written. */
int mp_relay_run(MpRelay *r);

/* Clean shutdown (from a signal handler source): stops listening, closes
 * every connection, writes the reports (outcome "interrupted: WHY"), and
 * makes mp_relay_run() return 0. */
void mp_relay_stop(MpRelay *r, const char *why);
