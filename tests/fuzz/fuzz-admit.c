/* fuzz-admit.c: libFuzzer target for the relay's connection handling
 * (relay-admit.c): what a new connection's first bytes are (accept,
 * classify) and whether it may join the session (multifd initial packet
 * checks, the preempt channel, recovery matching), as relay.c asks.
 *
 * Input: one byte of session events, then connections, each
 *   u8 flags | be16 len | len bytes (the bytes peeked at)
 * flags: bit 0 from another host, bit 1 the peer closed, bit 2 a silent
 * connection (its bytes are ignored), bit 3 the first from the main's
 * host after it.  Events: bit 0 the main stream announces post-copy,
 * bit 1 it reaches the switchover, bit 2 its block list names "pc.ram".
 * The first connection that starts a session (main, TLS, recovery) makes
 * it; the events are applied right after; later ones try to join.
 *
 * Checked, besides ASan and UBSan (each peek is copied to a buffer of
 * exactly its size):
 *   - a closed connection is never MORE, and a refusal always says why;
 *   - a decision does not change when more bytes come (the relay peeks
 *     again while it is MORE, never after);
 *   - a session never holds more than MP_ADMIT_MAX_CONNS connections, and
 *     what one joins is not taken twice (the same multifd packet, a second
 *     preempt channel).
 */
#include <stdlib.h>
#include <string.h>
#include <glib.h>
#include "relay-admit.h"

int LLVMFuzzerTestOneInput(const guint8 *data, gsize size);

static MpAdmitKind
classify_copy(const guint8 *data, gsize len, gboolean closed, MpAdmitInfo *info)
{
    guint8 *buf = g_memdup2(data, len);
    MpAdmitKind kind = mp_admit_classify(buf, len, closed, info);
    g_free(buf);
    if (closed && kind == MP_ADMIT_MORE)
        abort();
    if (kind == MP_ADMIT_REFUSE
        && (info->why[0] == '\0' || !memchr(info->why, '\0', sizeof info->why)))
        abort();
    return kind;
}

static void
apply_events(MpAdmitSession *s, guint8 ev)
{
    if (ev & 4) {
        MpRecord r = {.kind = MP_REC_RAM_BLOCK, .u.block = {.name = "pc.ram"}};
        mp_admit_session_record(s, &r);
    }
    if (ev & 1) {
        MpRecord r = {.kind = MP_REC_COMMAND,
                      .u.cmd = {.cmd = MP_QMIG_CMD_POSTCOPY_ADVISE}};
        mp_admit_session_record(s, &r);
    }
    if (ev & 2) {
        MpRecord r = {.kind = MP_REC_COMMAND,
                      .u.cmd = {.cmd = MP_QMIG_CMD_PACKAGED}};
        mp_admit_session_record(s, &r);
    }
}

int
LLVMFuzzerTestOneInput(const guint8 *data, gsize size)
{
    if (size < 1)
        return 0;
    g_autoptr(GInetAddress) main_host =
        g_inet_address_new_from_string("10.0.0.1");
    g_autoptr(GInetAddress) other =
        g_inet_address_new_from_string("::ffff:10.0.0.2");
    g_autoptr(MpAdmitSession) s = NULL;
    guint8 ev = data[0];
    gsize off = 1;

    while (off + 3 <= size) {
        guint8 flags = data[off];
        gsize len = (gsize)data[off + 1] << 8 | data[off + 2];
        off += 3;
        len = MIN(len, size - off);
        len = MIN(len, MP_ADMIT_PEEK);
        const guint8 *bytes = data + off;
        off += len;
        GInetAddress *host = flags & 1 ? other : main_host;
        MpAdmitInfo info, more;
        char why[256];

        if (flags & 4) {
            if (s) {
                guint before = mp_admit_session_conns(s);
                gboolean ok =
                    mp_admit_session_join_silent(s, host, !!(flags & 8));
                if (ok
                    && (mp_admit_session_conns(s) != before + 1
                        || mp_admit_session_join_silent(s, host, TRUE)))
                    abort(); /* one silent preempt channel at most */
            }
            continue;
        }
        MpAdmitKind kind = classify_copy(bytes, len, !!(flags & 2), &info);
        /* every shorter peek was MORE or the same decision */
        for (gsize n = 0; n < len; n += n < 512 ? 1 : 61) {
            MpAdmitKind k = classify_copy(bytes, n, FALSE, &more);
            if (k != MP_ADMIT_MORE && k != kind)
                abort();
        }
        if (kind == MP_ADMIT_MORE || kind == MP_ADMIT_REFUSE)
            continue;
        if (!s) {
            if (kind == MP_ADMIT_MAIN || kind == MP_ADMIT_TLS
                || kind == MP_ADMIT_RECOVERY) {
                s = mp_admit_session_new(host, kind == MP_ADMIT_TLS,
                                         kind == MP_ADMIT_RECOVERY);
                apply_events(s, ev);
            }
            continue;
        }
        if (kind == MP_ADMIT_MAIN)
            continue; /* relay.c refuses a second migration */
        guint before = mp_admit_session_conns(s);
        gboolean ok = mp_admit_session_join(s, host, &info, why, sizeof why);
        if (!ok && (why[0] == '\0' || !memchr(why, '\0', sizeof why)))
            abort();
        if (mp_admit_session_conns(s) > MP_ADMIT_MAX_CONNS)
            abort();
        if (ok && (kind == MP_ADMIT_MULTIFD || kind == MP_ADMIT_PREEMPT)) {
            if (mp_admit_session_conns(s) != before + 1)
                abort();
            if (mp_admit_session_join(s, host, &info, why, sizeof why))
                abort(); /* the same id, a second preempt channel */
        }
    }
    return 0;
}
