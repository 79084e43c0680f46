/* relay-admit.h: which connections may take part in a migration through
 * the relay (docs/relay.md, "Who may migrate").
 *
 * Pure decisions, no sockets: relay.c peeks at a new connection's first
 * bytes (never reading them) and asks here what they are, then asks the
 * session whether that connection may join it.  Stream reference
 * sections 8.4 (recovery), 10 (multifd), 11 (preempt), 12 (how QEMU
 * tells channels apart):
 *
 *   "QEVM" be32 3 + a first record    main channel: starts a session
 *   16 03 0x len len 01               TLS ClientHello (tls-creds): a
 *                                     session, or a channel of one
 *   be32 0x11223344 be32 1 uuid[16]   multifd: same version and UUID as
 *     u8 id, 39 bytes                 the session's other multifd
 *                                     channels, an id not seen yet
 *   08 be16 10|9 be16 len ...         post-copy recovery main channel
 *                                     (RECV_BITMAP names a block of the
 *                                     paused session, or POSTCOPY_RESUME)
 *   be64 addr|PAGE or ZERO, u8 n,     postcopy-preempt: bare RAM records
 *     block name                      naming a block of the session
 *   nothing at all                    7.2's postcopy-preempt channel, silent
 *                                     until post-copy (see
 *                                     mp_admit_session_check_silent())
 *
 * Every channel of a session comes from its main channel's address.
 */
#pragma once

#include <gio/gio.h>
#include "mp-record.h"

/* Bytes to peek at: a main channel's header and first record (the
 * configuration section is a few dozen bytes), a recovery command, a
 * multifd initial packet. */
#define MP_ADMIT_PEEK 4096
/* QEMU takes at most 255 multifd channels (multifd-channels is a u8). */
#define MP_ADMIT_MAX_MULTIFD 255
/* A session's connections: main, 255 multifd channels, preempt. */
#define MP_ADMIT_MAX_CONNS (1 + MP_ADMIT_MAX_MULTIFD + 1)

typedef enum {
    MP_ADMIT_MORE,     /* too few bytes to tell yet */
    MP_ADMIT_REFUSE,   /* not a QEMU migration channel: `why` */
    MP_ADMIT_MAIN,     /* a stream header and a complete first record */
    MP_ADMIT_TLS,      /* a plausible TLS ClientHello */
    MP_ADMIT_MULTIFD,  /* a valid multifd initial packet */
    MP_ADMIT_PREEMPT,  /* a RAM record that names its block */
    MP_ADMIT_RECOVERY, /* RECV_BITMAP or POSTCOPY_RESUME */
} MpAdmitKind;

typedef struct {
    MpAdmitKind kind;
    guint32 mfd_version; /* MULTIFD */
    guint8 mfd_uuid[16];
    guint8 mfd_id;
    char block[256]; /* RECOVERY (RECV_BITMAP), PREEMPT: the block named,
                        "" if none */
    char why[200];   /* REFUSE: what was expected, printable */
} MpAdmitInfo;

/* What the first `len` bytes of a connection are.  `closed`: the peer
 * has closed its side, no more bytes will come (MORE becomes REFUSE).
 * Fills `out` (kind included).  @return out->kind. */
MpAdmitKind mp_admit_classify(const guint8 *buf, gsize len, gboolean closed,
                              MpAdmitInfo *out);

typedef struct MpAdmitSession MpAdmitSession;

/* A session whose main channel came from `peer` (a reference is taken);
 * `tls`: its channels are encrypted; `recovery`: it began with a
 * post-copy recovery channel (a relay that did not see the migration's
 * start).  @return a new session state; free with
 * mp_admit_session_free(). */
MpAdmitSession *mp_admit_session_new(GInetAddress *peer, gboolean tls,
                                     gboolean recovery);
void mp_admit_session_free(MpAdmitSession *s); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpAdmitSession, mp_admit_session_free)

/* A record of the session's main (or recovery) channel towards the
 * destination: the block list, POSTCOPY_ADVISE, the switchover.
 * @return TRUE if a connection refused or held until now might be
 * admitted now (a silent preempt channel). */
gboolean mp_admit_session_record(MpAdmitSession *s, const MpRecord *rec);

/* May a connection from `peer` whose first bytes are `info` (MULTIFD,
 * PREEMPT, TLS, RECOVERY) join?  Commits it when it may (a multifd id is
 * taken, the preempt slot, a new main for RECOVERY).  @return TRUE, or
 * FALSE with `why` (printable) set. */
gboolean mp_admit_session_join(MpAdmitSession *s, GInetAddress *peer,
                               const MpAdmitInfo *info, char *why,
                               gsize why_len);

/* May a connection from `peer` that has sent nothing yet join as the
 * postcopy-preempt channel?  QEMU 7.2 connects it right after the main
 * channel and sends nothing on it until post-copy; 8.0+ connects it at
 * the switchover.  So: the session announced post-copy (POSTCOPY_ADVISE,
 * or it is a recovery), it has no multifd and no preempt channel yet, the
 * peer is the main channel's, and either `first_after_main` (no other
 * connection came from that peer since the main one) or the stream has
 * reached the switchover.  Commits it when it may.  @return TRUE, or
 * FALSE (not now: the caller keeps holding it until its timeout). */
gboolean mp_admit_session_join_silent(MpAdmitSession *s, GInetAddress *peer,
                                      gboolean first_after_main);

/* Connections joined so far (main included). */
guint mp_admit_session_conns(const MpAdmitSession *s);

/* TRUE if `a` and `b` are one host (an IPv4 address and its IPv4-mapped
 * IPv6 form are). */
gboolean mp_admit_same_host(GInetAddress *a, GInetAddress *b);

/* `a` as IPv4 if it is an IPv4-mapped IPv6 address, else `a`, with a new
 * reference. */
GInetAddress *mp_admit_host(GInetAddress *a);
