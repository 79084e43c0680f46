/* channel-types.h: what the relay, its metrics and its captures call the
 * connections of one migration and their two directions. */
#pragma once

#include <glib.h>

/* What a connection carries, from its first bytes (reference section 12):
 *   "QEVM"            main channel (its reverse direction: the return path)
 *   be32 0x11223344   a multifd channel
 *   0x08 (a command)  on a later connection: postcopy recovery main channel
 *   0x16 0x03         a TLS handshake record (tls-creds: every channel
 *                     is encrypted; forwarded, never parsed)
 *   anything else     on a later connection: postcopy-preempt (bare RAM
 *                     records; 7.2 opens it at the start and sends nothing
 *                     until post-copy) */
typedef enum {
    MP_CHAN_UNKNOWN, /* no byte yet */
    MP_CHAN_MAIN,
    MP_CHAN_MULTIFD,
    MP_CHAN_PREEMPT,
    MP_CHAN_RECOVERY,
    MP_CHAN_FOREIGN, /* not a migration channel */
    MP_CHAN_TLS,     /* a TLS handshake: encrypted, never parsed */
    MP_CHAN__MAX,
} MpChanKind;

typedef enum {
    MP_DIR_TO_DST, /* source to destination */
    MP_DIR_TO_SRC, /* destination to source (the return path on main) */
    MP_DIR__MAX,
} MpDir;

static inline const char *
mp_chan_kind_name(MpChanKind kind)
{
    static const char *const names[MP_CHAN__MAX] = {
        "unknown", "main", "multifd", "preempt", "recovery", "foreign", "tls"};
    return kind < MP_CHAN__MAX ? names[kind] : "?";
}

/* Towards the destination, may the stream editor rewrite records of this
 * kind?  Main, recovery and preempt channels carry RAM records one by one
 * (UNKNOWN: none yet); a multifd packet's header counts its pages, and
 * foreign and TLS bytes are never parsed. */
static inline gboolean
mp_chan_kind_editable(MpChanKind kind)
{
    return kind == MP_CHAN_UNKNOWN || kind == MP_CHAN_MAIN
           || kind == MP_CHAN_RECOVERY || kind == MP_CHAN_PREEMPT;
}

/* How a direction of a channel ended. */
typedef enum {
    MP_END_FIN,     /* the sender closed and everything was forwarded */
    MP_END_RESET,   /* the sender's connection broke */
    MP_END_ABORTED, /* torn down: the other side broke, or the relay */
    MP_END_MISSING, /* a capture that has no end for it (cut short) */
    MP_END__MAX,
} MpEndReason;

/* "fin", "reset", "aborted", "missing": as in JSON and capture files. */
static inline const char *
mp_end_reason_name(MpEndReason how)
{
    static const char *const names[MP_END__MAX] = {"fin", "reset", "aborted",
                                                   "missing"};
    return how < MP_END__MAX ? names[how] : "?";
}

/* @return the reason named `name`, or MP_END_MISSING for NULL or a name
 * this migproxy does not write. */
static inline MpEndReason
mp_end_reason_from_name(const char *name)
{
    for (int i = 0; name && i < MP_END__MAX; i++)
        if (g_str_equal(name, mp_end_reason_name(i)))
            return i;
    return MP_END_MISSING;
}

/* "to-dst", "to-src": as in capture file names and JSON. */
static inline const char *
mp_dir_name(MpDir dir)
{
    return dir == MP_DIR_TO_DST ? "to-dst" : "to-src";
}
