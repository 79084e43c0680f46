/* relay-admit.c: which connections may take part in a migration (see
 * relay-admit.h). */
#include "config.h"
#include <stdio.h>
#include <string.h>
#include "qmig-parser.h"
#include "relay-admit.h"

/* A RAM block name is a counted string (u8 length). */
#define MAX_BLOCKS 4096 /* names remembered per session */
/* A block offset: far above any guest's RAM, far below a random be64. */
#define MAX_BLOCK_OFFSET (1ull << 50)
/* TLS: a record is at most 2^14 bytes plus expansion (RFC 8446 5.2). */
#define TLS_RECORD_MAX (16384 + 2048)

struct MpAdmitSession {
    GInetAddress *peer;
    gboolean tls;
    gboolean postcopy;   /* POSTCOPY_ADVISE seen, or a recovery */
    gboolean switchover; /* the source stopped (post-copy's start) */
    guint conns;
    guint mfd;
    guint32 mfd_version;
    guint8 mfd_uuid[16];
    guint8 mfd_ids[256 / 8];
    gboolean preempt;
    GHashTable *blocks; /* char* names */
    gboolean blocks_overflow;
};

static MpAdmitKind refuse(MpAdmitInfo *out, const char *fmt, ...)
    G_GNUC_PRINTF(2, 3);

static MpAdmitKind
refuse(MpAdmitInfo *out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_vsnprintf(out->why, sizeof(out->why), fmt, ap);
    va_end(ap);
    return out->kind = MP_ADMIT_REFUSE;
}

/* Too few bytes to tell yet: wait for more, or, when the peer has closed
 * and none will come, refuse saying where its bytes stopped. */
static MpAdmitKind
cut_short(MpAdmitInfo *out, gboolean closed, gsize len, const char *where)
{
    if (!closed)
        return out->kind = MP_ADMIT_MORE;
    return refuse(out, "closed after %zu bytes, %s", len, where);
}

/* A block name as QEMU writes it: printable ASCII, no NUL. */
static gboolean
printable_name(const guint8 *p, gsize n)
{
    if (n == 0)
        return FALSE;
    for (gsize i = 0; i < n; i++)
        if (p[i] < 0x20 || p[i] > 0x7e)
            return FALSE;
    return TRUE;
}

typedef struct {
    gboolean first; /* a record after the header */
} MainProbe;

static MpRecordAction
probe_record(const MpRecord *rec, gpointer user_data)
{
    MainProbe *m = user_data;
    if (rec->kind == MP_REC_STREAM_HEADER)
        return MP_REC_CONTINUE;
    m->first = TRUE;
    return MP_REC_PAUSE;
}

/* "QEVM", version 3, then one whole record the main-channel parser
 * accepts: QEMU writes the configuration section or a command right after
 * the header, in the same flush.  A client that sends only a header (and
 * stays silent, or closes) never reaches the destination. */
static MpAdmitKind
classify_main(const guint8 *buf, gsize len, gboolean closed, MpAdmitInfo *out)
{
    if (len < 8)
        return cut_short(out, closed, len, "before a stream header");
    guint32 version = mp_be32(buf + 4);
    if (version != MP_QMIG_FILE_VERSION)
        return refuse(out, "migration stream version %u (QEMU writes 3)",
                      version);

    g_autoptr(MpQmigParser) p = NULL;
    g_autoptr(GError) err = NULL;
    MainProbe probe = {0};
    gsize used = 0;
    p = mp_qmig_parser_new("new connection", probe_record, &probe);
    MpFeedStatus st = mp_qmig_parser_feed(p, buf, len, &used, &err);
    if (probe.first)
        return out->kind = MP_ADMIT_MAIN;
    if (st == MP_FEED_ERROR)
        return refuse(out, "not a QEMU migration stream after its header: %s",
                      err->message);
    if (closed)
        return refuse(out,
                      "closed after %zu bytes: a stream header and no "
                      "complete record",
                      len);
    if (len >= MP_ADMIT_PEEK)
        return refuse(out,
                      "no complete record in the first %u bytes after "
                      "its stream header",
                      MP_ADMIT_PEEK);
    return out->kind = MP_ADMIT_MORE;
}

/* A TLS record of type handshake (0x16), version 3.x, a sane length, and
 * a ClientHello (handshake type 1) that fits in it. */
static MpAdmitKind
classify_tls(const guint8 *buf, gsize len, gboolean closed, MpAdmitInfo *out)
{
    if (len < 9)
        return cut_short(out, closed, len, "inside a TLS record header");
    guint16 rec_len = mp_be16(buf + 3);
    guint32 hs_len = (guint32)buf[6] << 16 | buf[7] << 8 | buf[8];
    if (buf[1] != 0x03 || buf[2] > 0x04 || rec_len < 4
        || rec_len > TLS_RECORD_MAX || buf[5] != 0x01)
        return refuse(out, "not a TLS ClientHello (record 16 03 0x, length "
                           "4..18432, handshake type 01)");
    /* version, random, and the shortest lists: 41 bytes at least */
    if (hs_len < 41)
        return refuse(out, "a TLS ClientHello of %u bytes", hs_len);
    return out->kind = MP_ADMIT_TLS;
}

/* MultiFDInit_t: be32 magic, be32 version, uuid[16], u8 id, 39 bytes
 * unused (reference section 10). */
static MpAdmitKind
classify_multifd(const guint8 *buf, gsize len, gboolean closed,
                 MpAdmitInfo *out)
{
    if (len < 64)
        return cut_short(out, closed, len,
                         "inside a multifd initial packet (64 bytes)");
    out->mfd_version = mp_be32(buf + 4);
    if (out->mfd_version != MP_MULTIFD_VERSION)
        return refuse(out,
                      "multifd initial packet of version %u (QEMU "
                      "writes 1)",
                      out->mfd_version);
    memcpy(out->mfd_uuid, buf + 8, 16);
    out->mfd_id = buf[24];
    return out->kind = MP_ADMIT_MULTIFD;
}

/* QEMU_VM_COMMAND RECV_BITMAP (u8 n, n bytes of a block name) or
 * POSTCOPY_RESUME (no payload): a recovery main channel (section 8.4). */
static MpAdmitKind
classify_recovery(const guint8 *buf, gsize len, gboolean closed,
                  MpAdmitInfo *out)
{
    if (len < 5)
        return cut_short(out, closed, len, "inside a command");
    guint16 cmd = mp_be16(buf + 1), cmd_len = mp_be16(buf + 3);
    if (cmd == MP_QMIG_CMD_POSTCOPY_RESUME && cmd_len == 0)
        return out->kind = MP_ADMIT_RECOVERY;
    if (cmd != MP_QMIG_CMD_RECV_BITMAP)
        return refuse(out,
                      "command %u where a post-copy recovery starts "
                      "with RECV_BITMAP (10) or POSTCOPY_RESUME (9)",
                      cmd);
    if (len < 6)
        return cut_short(out, closed, len, "inside a RECV_BITMAP command");
    guint8 n = buf[5];
    if (cmd_len != 1u + n || n == 0)
        return refuse(out, "RECV_BITMAP of length %u for a name of %u bytes",
                      cmd_len, n);
    if (len < 6u + n)
        return cut_short(out, closed, len, "inside a RECV_BITMAP command");
    if (!printable_name(buf + 6, n))
        return refuse(out, "RECV_BITMAP names no RAM block (unprintable)");
    memcpy(out->block, buf + 6, n);
    out->block[n] = '\0';
    return out->kind = MP_ADMIT_RECOVERY;
}

/* The first record of a preempt channel: be64 offset | flags with PAGE or
 * ZERO and no CONTINUE, then the block name (reference 5.1, 11). */
static MpAdmitKind
classify_preempt(const guint8 *buf, gsize len, gboolean closed,
                 MpAdmitInfo *out)
{
    const char *what = "not a QEMU migration stream";
    if (len < 9)
        return cut_short(out, closed, len,
                         "inside a RAM record (not a QEMU migration stream)");
    guint64 v = mp_be64(buf);
    guint32 flags = v & (MP_TARGET_PAGE_SIZE - 1);
    if ((flags != MP_RAM_SAVE_FLAG_PAGE && flags != MP_RAM_SAVE_FLAG_ZERO)
        || (v & ~(guint64)(MP_TARGET_PAGE_SIZE - 1)) >= MAX_BLOCK_OFFSET)
        return refuse(out, "%s", what);
    guint8 n = buf[8];
    if (len < 9u + n)
        return cut_short(out, closed, len,
                         "inside a RAM record (not a QEMU migration stream)");
    if (!printable_name(buf + 9, n))
        return refuse(out, "%s", what);
    memcpy(out->block, buf + 9, n);
    out->block[n] = '\0';
    return out->kind = MP_ADMIT_PREEMPT;
}

MpAdmitKind
mp_admit_classify(const guint8 *buf, gsize len, gboolean closed,
                  MpAdmitInfo *out)
{
    static const guint8 qevm[4] = {0x51, 0x45, 0x56, 0x4d};
    static const guint8 mfd[4] = {0x11, 0x22, 0x33, 0x44};
    gsize n = MIN(len, 4);

    memset(out, 0, sizeof(*out));
    if (len == 0)
        return closed ? refuse(out, "closed without sending anything")
                      : (out->kind = MP_ADMIT_MORE);
    if (memcmp(buf, qevm, n) == 0)
        return classify_main(buf, len, closed, out);
    if (memcmp(buf, mfd, n) == 0)
        return len < 4 && !closed ? (out->kind = MP_ADMIT_MORE)
                                  : classify_multifd(buf, len, closed, out);
    if (buf[0] == 0x16)
        return classify_tls(buf, len, closed, out);
    if (buf[0] == MP_QMIG_COMMAND)
        return classify_recovery(buf, len, closed, out);
    return classify_preempt(buf, len, closed, out);
}

/* ---- sessions ---- */

GInetAddress *
mp_admit_host(GInetAddress *a)
{
    if (g_inet_address_get_family(a) == G_SOCKET_FAMILY_IPV6) {
        static const guint8 mapped[12] = {0, 0, 0, 0, 0,    0,
                                          0, 0, 0, 0, 0xff, 0xff};
        const guint8 *b = g_inet_address_to_bytes(a);
        if (memcmp(b, mapped, sizeof mapped) == 0)
            return g_inet_address_new_from_bytes(b + 12, G_SOCKET_FAMILY_IPV4);
    }
    return g_object_ref(a);
}

gboolean
mp_admit_same_host(GInetAddress *a, GInetAddress *b)
{
    g_autoptr(GInetAddress) ha = mp_admit_host(a);
    g_autoptr(GInetAddress) hb = mp_admit_host(b);
    return g_inet_address_equal(ha, hb);
}

MpAdmitSession *
mp_admit_session_new(GInetAddress *peer, gboolean tls, gboolean recovery)
{
    MpAdmitSession *s = g_new0(MpAdmitSession, 1);
    s->peer = g_object_ref(peer);
    s->tls = tls;
    s->postcopy = recovery;
    s->conns = 1;
    s->blocks = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    return s;
}

void
mp_admit_session_free(MpAdmitSession *s)
{
    if (!s)
        return;
    g_object_unref(s->peer);
    g_hash_table_destroy(s->blocks);
    g_free(s);
}

guint
mp_admit_session_conns(const MpAdmitSession *s)
{
    return s->conns;
}

static void
add_block(MpAdmitSession *s, const char *name)
{
    if (!name || g_hash_table_contains(s->blocks, name))
        return;
    if (g_hash_table_size(s->blocks) >= MAX_BLOCKS) {
        s->blocks_overflow = TRUE; /* no longer checked */
        return;
    }
    g_hash_table_add(s->blocks, g_strdup(name));
}

/* A block the session knows (any, while it knows none: a fresh relay's
 * recovery session before its RECV_BITMAP commands are parsed). */
static gboolean
known_block(const MpAdmitSession *s, const char *name)
{
    return s->blocks_overflow || g_hash_table_size(s->blocks) == 0
           || g_hash_table_contains(s->blocks, name);
}

gboolean
mp_admit_session_record(MpAdmitSession *s, const MpRecord *rec)
{
    if (rec->kind == MP_REC_RAM_BLOCK) {
        add_block(s, rec->u.block.name);
        return FALSE;
    }
    if (rec->kind != MP_REC_COMMAND)
        return FALSE;
    switch (rec->u.cmd.cmd) {
    case MP_QMIG_CMD_POSTCOPY_ADVISE:
        s->postcopy = TRUE;
        return TRUE;
    case MP_QMIG_CMD_RECV_BITMAP:
        add_block(s, rec->u.cmd.block);
        return FALSE;
    case MP_QMIG_CMD_SWITCHOVER_START:
    case MP_QMIG_CMD_POSTCOPY_RAM_DISCARD:
    case MP_QMIG_CMD_PACKAGED:
        if (s->switchover)
            return FALSE;
        s->switchover = TRUE;
        return TRUE;
    default:
        return FALSE;
    }
}

static gboolean fail(char *why, gsize why_len, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);

static gboolean
fail(char *why, gsize why_len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_vsnprintf(why, why_len, fmt, ap);
    va_end(ap);
    return FALSE;
}

gboolean
mp_admit_session_join(MpAdmitSession *s, GInetAddress *peer,
                      const MpAdmitInfo *info, char *why, gsize why_len)
{
    if (!mp_admit_same_host(peer, s->peer)) {
        g_autofree char *main = g_inet_address_to_string(s->peer);
        return fail(why, why_len,
                    "it comes from another address than the migration's "
                    "main channel (%s)",
                    main);
    }
    if (info->kind != MP_ADMIT_RECOVERY && s->conns >= MP_ADMIT_MAX_CONNS)
        return fail(why, why_len, "the migration has %u connections already",
                    s->conns);
    if (s->tls != (info->kind == MP_ADMIT_TLS)
        && info->kind != MP_ADMIT_RECOVERY)
        return fail(why, why_len,
                    s->tls ? "the migration is encrypted (TLS) and this "
                             "channel is not"
                           : "a TLS channel in a migration that is not "
                             "encrypted");
    switch (info->kind) {
    case MP_ADMIT_TLS:
        break;
    case MP_ADMIT_MULTIFD:
        if (s->preempt)
            return fail(why, why_len,
                        "a multifd channel after the "
                        "postcopy-preempt channel");
        if (s->mfd >= MP_ADMIT_MAX_MULTIFD)
            return fail(why, why_len, "%u multifd channels already", s->mfd);
        if (s->mfd
            && (info->mfd_version != s->mfd_version
                || memcmp(info->mfd_uuid, s->mfd_uuid, 16) != 0))
            return fail(why, why_len,
                        "its multifd initial packet names another VM (UUID) "
                        "than the migration's other multifd channels");
        if (s->mfd_ids[info->mfd_id / 8] & (1u << (info->mfd_id % 8)))
            return fail(why, why_len, "multifd channel id %u is taken",
                        info->mfd_id);
        if (!s->mfd) {
            s->mfd_version = info->mfd_version;
            memcpy(s->mfd_uuid, info->mfd_uuid, 16);
        }
        s->mfd_ids[info->mfd_id / 8] |= 1u << (info->mfd_id % 8);
        s->mfd++;
        break;
    case MP_ADMIT_PREEMPT:
        if (!s->postcopy)
            return fail(why, why_len,
                        "RAM records on a new connection of "
                        "a migration without post-copy");
        if (s->preempt)
            return fail(why, why_len, "a second postcopy-preempt channel");
        if (!known_block(s, info->block))
            return fail(why, why_len,
                        "RAM block \"%s\" is not the "
                        "migration's",
                        info->block);
        s->preempt = TRUE;
        break;
    case MP_ADMIT_RECOVERY:
        if (info->block[0] && !known_block(s, info->block))
            return fail(why, why_len,
                        "its RECV_BITMAP names RAM block \"%s\", which is not "
                        "the paused migration's",
                        info->block);
        /* QEMU opens the preempt channel again after a recovery */
        s->preempt = FALSE;
        return TRUE; /* replaces the main channel: no new slot */
    default:
        return fail(why, why_len, "not a channel of a migration");
    }
    s->conns++;
    return TRUE;
}

gboolean
mp_admit_session_join_silent(MpAdmitSession *s, GInetAddress *peer,
                             gboolean first_after_main)
{
    if (s->tls || !s->postcopy || s->preempt || s->conns >= MP_ADMIT_MAX_CONNS
        || !mp_admit_same_host(peer, s->peer))
        return FALSE;
    /* 7.2: right after the main channel (7.2 has no multifd with
     * post-copy); 8.0+: at the switchover, after any multifd channels */
    if (!((first_after_main && s->mfd == 0) || s->switchover))
        return FALSE;
    s->preempt = TRUE;
    s->conns++;
    return TRUE;
}
