/* qmig-parser.c: QEMU main migration channel.
 * Spec: QEMU migration/savevm.c, ram.c, block.c (names and formats only).
 *
 *   be32 "QEVM" | be32 3
 *   [07 be32 L machine[L] {05 u8 n name be32 ver body}*]      configuration
 *   { 01|04 be32 id u8 n idstr be32 instance be32 version BODY [7e be32 id]
 *   | 02|03 be32 id BODY [7e be32 id]
 *   | 08 be16 cmd be16 len payload[len]     (PACKAGED: + be32 N bytes)
 *   }*
 *   00 [06 be32 L json[L]]                                    EOF, vmdesc
 *
 * BODY is RAM records for "ram" (ram-parser.c), disk chunks for "block",
 * and vmstate for devices, which has no length: it is sliced with the
 * vmdesc when there is one, and passed through opaquely otherwise.
 */
#include <stdarg.h>
#include <string.h>
#include "qmig-parser.h"
#include "ram-parser.h"
#include "stream-resync.h"

#define MAX_SECTIONS    65536
#define MAX_CONFIG_NAME 4096
#define MAX_VMDESC      (64u << 20)
#define VMDESC_FIRST    (64u << 10) /* a q35 guest's is 44 KiB */
#define MAX_CAPS        256

/* After a gap, a position is trusted when the records from it on walk
 * through this many checks (a record each, a known block's name or a
 * START header's name two), looking at no more than the limit's bytes:
 * four RAM pages (16 KiB) or a section header and the records after it.
 * A PAGE record's 12 flag bits and an address inside its block, four
 * times in a row and ascending, do not occur by chance in page data. */
#define RESYNC_RECORDS 4
#define RESYNC_LIMIT   (64u << 10)

typedef enum {
    Q_HEADER,
    Q_TOP,
    Q_CFG_LEN,
    Q_CFG_NAME,
    Q_CFG_PEEK,
    Q_SUB_HDR,
    Q_SUB_NAME,
    Q_SUB_VER,
    Q_SUB_PAGEBITS,
    Q_SUB_CAPS_COUNT,
    Q_SUB_CAP_LEN,
    Q_SUB_CAP,
    Q_SUB_UUID,
    Q_SEC_ID,
    Q_SEC_IDLEN,
    Q_SEC_IDSTR,
    Q_SEC_INSTVER,
    Q_RAM_BODY,
    Q_BLK_HDR,
    Q_BLK_NAMELEN,
    Q_BLK_NAME,
    Q_BLK_DATA,
    Q_DEV_BODY,
    Q_FOOTER_PEEK,
    Q_FOOTER,
    Q_CMD_HDR,
    Q_CMD_PAYLOAD,
    Q_AFTER_EOF,
    Q_VMDESC_LEN,
    Q_VMDESC,
    Q_DONE,
    Q_OPAQUE,
} QmigState;

/* What a state function did; the feed loop acts on it. */
typedef enum {
    QS_NEXT,      /* go on in p->state */
    QS_SHORT,     /* the input (or the PACKAGED blob) ended inside a field */
    QS_EMIT,      /* `rec` is a whole record: report it, go on */
    QS_EMIT_LAST, /* `rec` is the stream's last record: report it, end */
    QS_PAUSED,    /* the RAM parser's callback paused */
    QS_ERROR,     /* p->error is set */
} QmigStep;

typedef enum {
    BODY_RAM,
    BODY_BLOCK,
    BODY_DEVICE,
} BodyKind;

/* The subsections of the configuration section (savevm.c). */
typedef enum {
    SUB_UNKNOWN,
    SUB_PAGE_BITS,
    SUB_CAPABILITIES,
    SUB_UUID,
} SubsectionKind;

/* Why the parser stopped following the stream (it passes bytes through
 * from there on). */
typedef enum {
    OPAQUE_NOT,
    OPAQUE_ITERABLE_DEVICE,
    OPAQUE_NOT_IN_VMDESC,
    OPAQUE_NO_VMDESC,
} OpaqueWhy;

typedef struct {
    MpSectionInfo info;
    char idstr[256];
    BodyKind body;
} Section;

struct MpQmigParser {
    char *channel;
    MpRecordFunc cb;
    gpointer user_data;
    guint32 page_size;

    QmigState state;
    guint64 off; /* stream offset of buf[0] during a feed */
    guint64 rec_start;
    GError *error;
    MpAccum acc;

    /* record being read */
    guint8 type;
    guint32 n; /* a length being read */
    guint16 cmd, cmd_len;
    char cmd_block[256]; /* RAM_DISCARD, RECV_BITMAP: the block named */

    /* configuration */
    char machine[MAX_CONFIG_NAME + 1];
    char subname[256];
    SubsectionKind sub;
    guint32 caps_left;
    gboolean x_ignore_shared, mapped_ram;
    gboolean mapped_ram_ok; /* the caller follows the file's offsets */

    /* sections */
    GHashTable *sections; /* section_id -> Section* */
    Section *cur;
    Section pending; /* header being read */
    gboolean footers_seen, no_footers;

    /* block section */
    char blk_device[256];
    guint64 blk_addr;
    guint32 blk_flags;
    guint32 blk_left;
    gboolean blk_contig;
    const guint8 *blk_data;

    /* device sections */
    MpVmdesc *vmdesc;
    guint vmdesc_cursor;
    guint64 dev_left;
    const guint8 *dev_data;
    gboolean dev_contig;

    /* PACKAGED */
    gboolean in_package;
    guint64 pkg_end;

    /* vmdesc */
    guint8 *vmdesc_buf;
    guint32 vmdesc_len, vmdesc_have, vmdesc_cap;

    /* opaque pass-through */
    guint64 opaque_from;
    OpaqueWhy opaque_why;
    gboolean opaque_announced;

    MpRamParser *ram;
    gboolean ram_paused; /* the callback paused on the last RAM record */

    /* after a gap: the scan for the next trusted record */
    MpResync rs;
    Section *rs_ram; /* the "ram" section, whose body a scan may resume in */
};

/* RAM records come from the sub-parser straight to the user. */
static MpRecordAction
ram_record(const MpRecord *rec, gpointer user_data)
{
    MpQmigParser *p = user_data;
    MpRecordAction a = p->cb(rec, p->user_data);
    /* the RAM parser reports END, not PAUSED, after EOS */
    p->ram_paused = a == MP_REC_PAUSE;
    return a;
}

MpQmigParser *
mp_qmig_parser_new(const char *channel, MpRecordFunc cb, gpointer user_data)
{
    MpQmigParser *p = g_new0(MpQmigParser, 1);

    p->channel = g_strdup(channel);
    p->cb = cb;
    p->user_data = user_data;
    p->page_size = MP_TARGET_PAGE_SIZE;
    /* largest field taken whole: a command payload (be16 length) */
    mp_accum_init(&p->acc, 65536 + 64);
    p->sections =
        g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, g_free);
    p->ram = mp_ram_parser_new(channel, p->page_size, ram_record, p);
    p->opaque_from = G_MAXUINT64;
    mp_resync_init(&p->rs, RESYNC_LIMIT);
    return p;
}

void
mp_qmig_parser_free(MpQmigParser *p)
{
    if (!p)
        return;
    g_free(p->channel);
    g_clear_error(&p->error);
    mp_accum_clear(&p->acc);
    g_hash_table_destroy(p->sections);
    mp_vmdesc_unref(p->vmdesc);
    g_free(p->vmdesc_buf);
    mp_ram_parser_free(p->ram);
    mp_resync_clear(&p->rs);
    g_free(p);
}

void
mp_qmig_parser_set_vmdesc(MpQmigParser *p, MpVmdesc *vmdesc)
{
    mp_vmdesc_unref(p->vmdesc);
    p->vmdesc = vmdesc ? mp_vmdesc_ref(vmdesc) : NULL;
    p->vmdesc_cursor = 0;
}

void
mp_qmig_parser_allow_mapped_ram(MpQmigParser *p)
{
    p->mapped_ram_ok = TRUE;
}

void
mp_qmig_parser_set_headerless(MpQmigParser *p)
{
    if (p->state == Q_HEADER)
        p->state = Q_TOP;
}

void
mp_qmig_parser_resume_from(MpQmigParser *p, const MpQmigParser *prev)
{
    GHashTableIter it;
    gpointer key, value;

    /* (set_headerless() before is harmless) */
    g_return_if_fail((p->state == Q_HEADER || p->state == Q_TOP)
                     && p->off == 0);
    g_hash_table_iter_init(&it, prev->sections);
    while (g_hash_table_iter_next(&it, &key, &value)) {
        Section *s = g_memdup2(value, sizeof(Section));
        s->info.idstr = s->idstr;
        g_hash_table_replace(p->sections, key, s);
    }
    p->footers_seen = prev->footers_seen;
    p->no_footers = prev->no_footers;
    p->x_ignore_shared = prev->x_ignore_shared;
    p->mapped_ram = prev->mapped_ram;
    memcpy(p->machine, prev->machine, sizeof(p->machine));
    mp_ram_parser_inherit(p->ram, prev->ram);
    p->state = Q_TOP;
}

guint64
mp_qmig_parser_offset(const MpQmigParser *p)
{
    return p->off;
}

/* @return the reason as reports show it, or NULL for OPAQUE_NOT. */
static const char *
opaque_why_name(OpaqueWhy why)
{
    switch (why) {
    case OPAQUE_NOT:
        return NULL;
    case OPAQUE_ITERABLE_DEVICE:
        return "an iterable section whose format migproxy does not follow";
    case OPAQUE_NOT_IN_VMDESC:
        return "a device section that the vmdesc does not describe";
    case OPAQUE_NO_VMDESC:
        return "device state (no vmdesc to slice it)";
    }
    return NULL;
}

guint64
mp_qmig_parser_opaque_from(const MpQmigParser *p, const char **why)
{
    if (why)
        *why = opaque_why_name(p->opaque_why);
    return p->opaque_from;
}

guint64
mp_qmig_parser_ram_total(const MpQmigParser *p)
{
    return mp_ram_parser_ram_total(p->ram);
}

const MpRamParser *
mp_qmig_parser_ram(const MpQmigParser *p)
{
    return p->ram;
}

static const char *
section_type_name(guint8 t)
{
    switch (t) {
    case MP_QMIG_SECTION_START:
        return "START";
    case MP_QMIG_SECTION_PART:
        return "PART";
    case MP_QMIG_SECTION_END:
        return "END";
    case MP_QMIG_SECTION_FULL:
        return "FULL";
    default:
        return "?";
    }
}

/* @return what the parser reads in state `s`, for errors ("inside %s"). */
static const char *
qmig_state_name(QmigState s)
{
    switch (s) {
    case Q_HEADER:
        return "stream header";
    case Q_TOP:
        return "record type";
    case Q_CFG_LEN:
    case Q_CFG_NAME:
    case Q_CFG_PEEK:
    case Q_SUB_HDR:
    case Q_SUB_NAME:
    case Q_SUB_VER:
    case Q_SUB_PAGEBITS:
    case Q_SUB_CAPS_COUNT:
    case Q_SUB_CAP_LEN:
    case Q_SUB_CAP:
    case Q_SUB_UUID:
        return "configuration section";
    case Q_SEC_ID:
    case Q_SEC_IDLEN:
    case Q_SEC_IDSTR:
    case Q_SEC_INSTVER:
        return "section header";
    case Q_RAM_BODY:
        return "RAM section";
    case Q_BLK_HDR:
    case Q_BLK_NAMELEN:
    case Q_BLK_NAME:
    case Q_BLK_DATA:
        return "block section";
    case Q_DEV_BODY:
        return "device section";
    case Q_FOOTER_PEEK:
    case Q_FOOTER:
        return "section footer";
    case Q_CMD_HDR:
    case Q_CMD_PAYLOAD:
        return "command";
    case Q_AFTER_EOF:
    case Q_VMDESC_LEN:
    case Q_VMDESC:
        return "VMDESCRIPTION";
    case Q_OPAQUE:
        return "opaque data";
    case Q_DONE:
        break;
    }
    return "stream";
}

static QmigStep fail(MpQmigParser *p, MpParseErrorCode code, const char *fmt,
                     ...) G_GNUC_PRINTF(3, 4);

/* Sets the sticky error ("CHANNEL: ...").  @return QS_ERROR. */
static QmigStep
fail(MpQmigParser *p, MpParseErrorCode code, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    mp_parse_error_set_valist(&p->error, p->channel, code, fmt, ap);
    va_end(ap);
    return QS_ERROR;
}

/* Fixed payload lengths of commands; -1 for variable (checked apart). */
static int
command_len(guint16 cmd)
{
    switch (cmd) {
    case MP_QMIG_CMD_PING:
    case MP_QMIG_CMD_PACKAGED:
        return 4;
    case MP_QMIG_CMD_POSTCOPY_ADVISE:
    case MP_QMIG_CMD_POSTCOPY_RAM_DISCARD:
    case MP_QMIG_CMD_RECV_BITMAP:
        return -1;
    default:
        return 0;
    }
}

static gboolean
bad_command_len(MpQmigParser *p, const MpCommandInfo *ci)
{
    fail(p, MP_PARSE_ERROR_COMMAND,
         "command %s at offset %" G_GUINT64_FORMAT
         " has a malformed payload of %u bytes",
         mp_qmig_command_name(ci->cmd), p->rec_start, ci->len);
    return FALSE;
}

/* Validates and decodes a command payload `d` into `ci`.
 * @return FALSE with p->error set if it is bad. */
static gboolean
decode_command(MpQmigParser *p, MpCommandInfo *ci, const guint8 *d)
{
    int want = command_len(ci->cmd);

    ci->payload = d;
    if (ci->cmd == MP_QMIG_CMD_INVALID || ci->cmd >= MP_QMIG_CMD__MAX) {
        fail(p, MP_PARSE_ERROR_COMMAND,
             "unknown command %u at offset %" G_GUINT64_FORMAT
             " (expected 1..%d)",
             ci->cmd, p->rec_start, MP_QMIG_CMD__MAX - 1);
        return FALSE;
    }
    if (want >= 0 && ci->len != want)
        return bad_command_len(p, ci);
    switch (ci->cmd) {
    case MP_QMIG_CMD_PING:
        ci->ping_value = mp_be32(d);
        break;
    case MP_QMIG_CMD_PACKAGED:
        ci->packaged_len = mp_be32(d);
        break;
    case MP_QMIG_CMD_POSTCOPY_ADVISE:
        if (ci->len == 0)
            break;
        if (ci->len != 16)
            return bad_command_len(p, ci);
        ci->advise_summary = mp_be64(d);
        ci->advise_target_page_size = mp_be64(d + 8);
        if (ci->advise_target_page_size != p->page_size) {
            fail(p, MP_PARSE_ERROR_UNSUPPORTED,
                 "POSTCOPY_ADVISE at offset %" G_GUINT64_FORMAT
                 " gives target page size %" G_GUINT64_FORMAT " (expected %u)",
                 p->rec_start, ci->advise_target_page_size, p->page_size);
            return FALSE;
        }
        break;
    case MP_QMIG_CMD_POSTCOPY_RAM_DISCARD:
        /* u8 version(0) u8 n idstr[n] u8 0 {be64 start, be64 len}*
         * loadvm_postcopy_ram_handle_discard@7.2 wants len >= 20 */
        if (ci->len < 20 || d[0] != 0 || ci->len < 3u + d[1] || d[2 + d[1]] != 0
            || (ci->len - 3u - d[1]) % 16)
            return bad_command_len(p, ci);
        memcpy(p->cmd_block, d + 2, d[1]);
        p->cmd_block[d[1]] = 0;
        ci->block = p->cmd_block;
        ci->discard_count = (ci->len - 3u - d[1]) / 16;
        ci->discard_ranges = d + 3 + d[1];
        break;
    case MP_QMIG_CMD_RECV_BITMAP:
        if (ci->len < 1 || ci->len != 1u + d[0])
            return bad_command_len(p, ci);
        memcpy(p->cmd_block, d + 1, d[0]);
        p->cmd_block[d[0]] = 0;
        ci->block = p->cmd_block;
        break;
    default:
        break;
    }
    return TRUE;
}

/* Each state below reads from `in` (bounded by the PACKAGED blob when in
 * one), may fill `rec`, and tells the feed loop what to do next. */

static QmigStep
read_header(MpQmigParser *p, MpCursor *in, MpRecord *rec)
{
    const guint8 *d;

    if (p->acc.have == 0)
        p->rec_start = mp_cursor_offset(in);
    if (!(d = mp_accum_take(&p->acc, 8, in)))
        return QS_SHORT;
    if (mp_be32(d) != MP_QMIG_FILE_MAGIC)
        return fail(p, MP_PARSE_ERROR_MAGIC,
                    "bad magic 0x%08x at offset 0 (expected 0x%08x "
                    "\"QEVM\")",
                    mp_be32(d), MP_QMIG_FILE_MAGIC);
    if (mp_be32(d + 4) != MP_QMIG_FILE_VERSION)
        return fail(p, MP_PARSE_ERROR_VERSION,
                    "stream version %u at offset 4 (expected %u)",
                    mp_be32(d + 4), MP_QMIG_FILE_VERSION);
    rec->kind = MP_REC_STREAM_HEADER;
    rec->u.header.magic = MP_QMIG_FILE_MAGIC;
    rec->u.header.version = MP_QMIG_FILE_VERSION;
    p->state = Q_TOP;
    return QS_EMIT;
}

/* The byte that starts every top-level record. */
static QmigStep
read_top(MpQmigParser *p, MpCursor *in, MpRecord *rec)
{
    p->rec_start = mp_cursor_offset(in);
    p->type = *in->pos++;
    switch (p->type) {
    case MP_QMIG_CONFIGURATION:
        if (p->rec_start != 8)
            return fail(p, MP_PARSE_ERROR_SECTION_TYPE,
                        "configuration section at offset %" G_GUINT64_FORMAT
                        " (expected only right after the header)",
                        p->rec_start);
        p->state = Q_CFG_LEN;
        return QS_NEXT;
    case MP_QMIG_SECTION_START:
    case MP_QMIG_SECTION_PART:
    case MP_QMIG_SECTION_END:
    case MP_QMIG_SECTION_FULL:
        p->state = Q_SEC_ID;
        return QS_NEXT;
    case MP_QMIG_COMMAND:
        p->state = Q_CMD_HDR;
        return QS_NEXT;
    case MP_QMIG_EOF:
        if (p->in_package)
            return fail(
                p, MP_PARSE_ERROR_SECTION_TYPE,
                "EOF inside the PACKAGED blob at offset %" G_GUINT64_FORMAT,
                p->rec_start);
        rec->kind = MP_REC_EOF;
        p->cur = NULL;
        rec->section = NULL;
        p->state = Q_AFTER_EOF;
        return QS_EMIT;
    default:
        return fail(p, MP_PARSE_ERROR_SECTION_TYPE,
                    "unknown section type 0x%02x at offset %" G_GUINT64_FORMAT
                    " (expected a section, a command or EOF)",
                    p->type, p->rec_start);
    }
}

/* configuration: be32 len machine[len] {0x05 subsection}* */

static QmigStep
read_cfg_len(MpQmigParser *p, MpCursor *in)
{
    const guint8 *d;

    if (!(d = mp_accum_take(&p->acc, 4, in)))
        return QS_SHORT;
    p->n = mp_be32(d);
    if (p->n > MAX_CONFIG_NAME)
        return fail(p, MP_PARSE_ERROR_LENGTH,
                    "machine type name of %u bytes at offset %" G_GUINT64_FORMAT
                    " (at most %d expected)",
                    p->n, mp_cursor_offset(in) - 4, MAX_CONFIG_NAME);
    p->machine[0] = 0;
    p->state = p->n ? Q_CFG_NAME : Q_CFG_PEEK;
    return QS_NEXT;
}

static QmigStep
read_cfg_name(MpQmigParser *p, MpCursor *in)
{
    const guint8 *d;

    if (!(d = mp_accum_take(&p->acc, p->n, in)))
        return QS_SHORT;
    memcpy(p->machine, d, p->n);
    p->machine[p->n] = 0;
    p->state = Q_CFG_PEEK;
    return QS_NEXT;
}

/* A subsection, or the end of the configuration. */
static QmigStep
peek_cfg(MpQmigParser *p, MpCursor *in, MpRecord *rec)
{
    if (*in->pos == MP_QMIG_SUBSECTION) {
        p->state = Q_SUB_HDR;
        return QS_NEXT;
    }
    rec->kind = MP_REC_CONFIGURATION;
    rec->u.config.machine = p->machine;
    rec->u.config.x_ignore_shared = p->x_ignore_shared;
    rec->u.config.mapped_ram = p->mapped_ram;
    mp_ram_parser_set_ignore_shared(p->ram, p->x_ignore_shared);
    p->state = Q_TOP;
    return QS_EMIT;
}

/* 0x05 and the name's length byte. */
static QmigStep
read_sub_hdr(MpQmigParser *p, MpCursor *in)
{
    const guint8 *d;

    if (!(d = mp_accum_take(&p->acc, 2, in)))
        return QS_SHORT;
    p->n = d[1];
    p->state = Q_SUB_NAME;
    return QS_NEXT;
}

static SubsectionKind
subsection_kind(const char *name)
{
    static const struct {
        const char *name;
        SubsectionKind kind;
    } known[] = {
        {"configuration/target-page-bits", SUB_PAGE_BITS},
        {"configuration/capabilities", SUB_CAPABILITIES},
        {"configuration/uuid", SUB_UUID},
    };

    for (gsize i = 0; i < G_N_ELEMENTS(known); i++)
        if (strcmp(name, known[i].name) == 0)
            return known[i].kind;
    return SUB_UNKNOWN;
}

static QmigStep
read_sub_name(MpQmigParser *p, MpCursor *in)
{
    const guint8 *d;

    if (!(d = mp_accum_take(&p->acc, p->n, in)))
        return QS_SHORT;
    memcpy(p->subname, d, p->n);
    p->subname[p->n] = 0;
    p->sub = subsection_kind(p->subname);
    p->state = Q_SUB_VER;
    return QS_NEXT;
}

/* The subsection's version (not checked); its body follows by kind. */
static QmigStep
read_sub_version(MpQmigParser *p, MpCursor *in)
{
    if (!mp_accum_take(&p->acc, 4, in))
        return QS_SHORT;
    switch (p->sub) {
    case SUB_PAGE_BITS:
        p->state = Q_SUB_PAGEBITS;
        return QS_NEXT;
    case SUB_CAPABILITIES:
        p->state = Q_SUB_CAPS_COUNT;
        return QS_NEXT;
    case SUB_UUID:
        p->state = Q_SUB_UUID;
        return QS_NEXT;
    case SUB_UNKNOWN:
        break;
    }
    return fail(
        p, MP_PARSE_ERROR_UNSUPPORTED,
        "unknown configuration subsection \"%s\" at offset %" G_GUINT64_FORMAT,
        p->subname, mp_cursor_offset(in) - 4);
}

static QmigStep
read_sub_page_bits(MpQmigParser *p, MpCursor *in)
{
    const guint8 *d;

    if (!(d = mp_accum_take(&p->acc, 4, in)))
        return QS_SHORT;
    if (mp_be32(d) >= 32 || (1u << mp_be32(d)) != p->page_size)
        return fail(p, MP_PARSE_ERROR_UNSUPPORTED,
                    "target page bits %u at offset %" G_GUINT64_FORMAT
                    " (only %u-byte pages are supported)",
                    mp_be32(d), mp_cursor_offset(in) - 4, p->page_size);
    p->state = Q_CFG_PEEK;
    return QS_NEXT;
}

static QmigStep
read_sub_caps_count(MpQmigParser *p, MpCursor *in)
{
    const guint8 *d;

    if (!(d = mp_accum_take(&p->acc, 4, in)))
        return QS_SHORT;
    p->caps_left = mp_be32(d);
    if (p->caps_left > MAX_CAPS)
        return fail(p, MP_PARSE_ERROR_LENGTH,
                    "%u capabilities at offset %" G_GUINT64_FORMAT
                    " (at most %d expected)",
                    p->caps_left, mp_cursor_offset(in) - 4, MAX_CAPS);
    p->state = p->caps_left ? Q_SUB_CAP_LEN : Q_CFG_PEEK;
    return QS_NEXT;
}

/* One capability name of p->n bytes at `d`. */
static QmigStep
capability_done(MpQmigParser *p, const guint8 *d)
{
    if (p->n == strlen("x-ignore-shared")
        && memcmp(d, "x-ignore-shared", p->n) == 0)
        p->x_ignore_shared = TRUE;
    if (p->n == strlen("mapped-ram") && memcmp(d, "mapped-ram", p->n) == 0)
        p->mapped_ram = TRUE;
    p->state = --p->caps_left ? Q_SUB_CAP_LEN : Q_CFG_PEEK;
    return QS_NEXT;
}

static QmigStep
read_sub_cap_len(MpQmigParser *p, MpCursor *in)
{
    const guint8 *d;

    if (!(d = mp_accum_take(&p->acc, 1, in)))
        return QS_SHORT;
    p->n = d[0];
    p->state = Q_SUB_CAP;
    if (p->n == 0)
        return capability_done(p, in->pos);
    return QS_NEXT;
}

static QmigStep
read_sub_cap(MpQmigParser *p, MpCursor *in)
{
    const guint8 *d;

    if (!(d = mp_accum_take(&p->acc, p->n, in)))
        return QS_SHORT;
    return capability_done(p, d);
}

static QmigStep
read_sub_uuid(MpQmigParser *p, MpCursor *in)
{
    if (!mp_accum_take(&p->acc, 16, in))
        return QS_SHORT;
    p->state = Q_CFG_PEEK;
    return QS_NEXT;
}

/* section headers: be32 id [u8 n idstr[n] be32 instance be32 version] */

static BodyKind
body_kind(const char *idstr)
{
    if (strcmp(idstr, "ram") == 0)
        return BODY_RAM;
    if (strcmp(idstr, "block") == 0)
        return BODY_BLOCK;
    return BODY_DEVICE;
}

/* A device section's body: sliced by the vmdesc, or passed through. */
static void
device_section_begins(MpQmigParser *p)
{
    const MpVmdescDevice *dev = NULL;

    if (p->type == MP_QMIG_SECTION_START) {
        p->opaque_why = OPAQUE_ITERABLE_DEVICE;
        p->state = Q_OPAQUE;
        return;
    }
    if (p->vmdesc)
        dev = mp_vmdesc_lookup(p->vmdesc, p->cur->idstr,
                               p->cur->info.instance_id, &p->vmdesc_cursor);
    if (!dev) {
        p->opaque_why = p->vmdesc ? OPAQUE_NOT_IN_VMDESC : OPAQUE_NO_VMDESC;
        p->state = Q_OPAQUE;
        return;
    }
    p->dev_left = dev->size;
    p->dev_contig = TRUE;
    p->dev_data = NULL;
    p->state = p->dev_left ? Q_DEV_BODY : Q_FOOTER_PEEK;
}

/* The header of section p->cur is whole: report it, and go on with its
 * body. */
static QmigStep
section_begins(MpQmigParser *p, MpCursor *in, MpRecord *rec)
{
    rec->kind = MP_REC_SECTION_HEADER;
    rec->section = &p->cur->info;
    rec->u.sect = p->cur->info;
    switch (p->cur->body) {
    case BODY_RAM:
        if (p->cur->info.version_id != 4)
            return fail(
                p, MP_PARSE_ERROR_VERSION,
                "\"ram\" section version %u at offset %" G_GUINT64_FORMAT
                " (expected 4)",
                p->cur->info.version_id, p->rec_start);
        mp_ram_parser_set_mapped_ram(p->ram, p->mapped_ram);
        if (p->mapped_ram && !p->mapped_ram_ok)
            return fail(p, MP_PARSE_ERROR_UNSUPPORTED,
                        "mapped-ram streams (file: migration) are not "
                        "supported (offset %" G_GUINT64_FORMAT ")",
                        p->rec_start);
        mp_ram_parser_set_section(p->ram, &p->cur->info);
        p->state = Q_RAM_BODY;
        break;
    case BODY_BLOCK:
        p->state = Q_BLK_HDR;
        break;
    case BODY_DEVICE:
        device_section_begins(p);
        break;
    }
    /* the header of a section the parser cannot follow is still a
     * well-parsed record */
    if (p->state == Q_OPAQUE)
        p->opaque_from = mp_cursor_offset(in);
    return QS_EMIT;
}

static QmigStep
read_sec_id(MpQmigParser *p, MpCursor *in, MpRecord *rec)
{
    const guint8 *d;

    if (!(d = mp_accum_take(&p->acc, 4, in)))
        return QS_SHORT;
    memset(&p->pending, 0, sizeof(p->pending));
    p->pending.info.type = p->type;
    p->pending.info.section_id = mp_be32(d);
    if (p->type == MP_QMIG_SECTION_START || p->type == MP_QMIG_SECTION_FULL) {
        p->state = Q_SEC_IDLEN;
        return QS_NEXT;
    }
    p->cur = g_hash_table_lookup(p->sections,
                                 GUINT_TO_POINTER(p->pending.info.section_id));
    if (!p->cur)
        return fail(p, MP_PARSE_ERROR_SECTION,
                    "%s section at offset %" G_GUINT64_FORMAT
                    " has section id %u, which no START announced",
                    section_type_name(p->type), p->rec_start,
                    p->pending.info.section_id);
    p->cur->info.type = p->type;
    return section_begins(p, in, rec);
}

/* The idstr of p->n bytes at `d`. */
static QmigStep
idstr_done(MpQmigParser *p, const guint8 *d)
{
    memcpy(p->pending.idstr, d, p->n);
    p->pending.idstr[p->n] = 0;
    p->state = Q_SEC_INSTVER;
    return QS_NEXT;
}

static QmigStep
read_sec_idlen(MpQmigParser *p, MpCursor *in)
{
    const guint8 *d;

    if (!(d = mp_accum_take(&p->acc, 1, in)))
        return QS_SHORT;
    p->n = d[0];
    p->state = Q_SEC_IDSTR;
    if (p->n == 0)
        return idstr_done(p, in->pos);
    return QS_NEXT;
}

static QmigStep
read_sec_idstr(MpQmigParser *p, MpCursor *in)
{
    const guint8 *d;

    if (!(d = mp_accum_take(&p->acc, p->n, in)))
        return QS_SHORT;
    return idstr_done(p, d);
}

/* be32 instance_id be32 version_id: the START/FULL header is whole. */
static QmigStep
read_sec_instver(MpQmigParser *p, MpCursor *in, MpRecord *rec)
{
    const guint8 *d;

    if (!(d = mp_accum_take(&p->acc, 8, in)))
        return QS_SHORT;
    Section *s = g_hash_table_lookup(
        p->sections, GUINT_TO_POINTER(p->pending.info.section_id));
    if (!s) {
        if (g_hash_table_size(p->sections) >= MAX_SECTIONS)
            return fail(p, MP_PARSE_ERROR_LENGTH,
                        "more than %d sections at offset %" G_GUINT64_FORMAT,
                        MAX_SECTIONS, p->rec_start);
        s = g_new0(Section, 1);
        g_hash_table_insert(p->sections,
                            GUINT_TO_POINTER(p->pending.info.section_id), s);
    }
    *s = p->pending;
    s->info.idstr = s->idstr;
    s->info.instance_id = mp_be32(d);
    s->info.version_id = mp_be32(d + 4);
    s->info.known = TRUE;
    s->body = body_kind(s->idstr);
    p->cur = s;
    return section_begins(p, in, rec);
}

/* "ram" section body: RAM records up to EOS, by ram-parser.c. */
static QmigStep
read_ram_body(MpQmigParser *p, MpCursor *in)
{
    g_autoptr(GError) err = NULL;
    gsize used = 0;

    mp_ram_parser_set_offset(p->ram, mp_cursor_offset(in));
    MpFeedStatus st =
        mp_ram_parser_feed(p->ram, in->pos, mp_cursor_left(in), &used, &err);
    in->pos += used;
    switch (st) {
    case MP_FEED_ERROR:
        p->error = g_steal_pointer(&err);
        return QS_ERROR;
    case MP_FEED_END:
        p->rec_start = mp_cursor_offset(in);
        p->state = Q_FOOTER_PEEK;
        return p->ram_paused ? QS_PAUSED : QS_NEXT;
    case MP_FEED_PAUSED:
        return QS_PAUSED;
    case MP_FEED_MORE:
        break;
    }
    return QS_NEXT;
}

/* "block" section (disk pre-copy, <= 9.0):
 *   be64 sector << 9 | flags [u8 n device[n] [1 MiB data]] */

static QmigStep
blk_eos(MpQmigParser *p, MpRecord *rec)
{
    rec->kind = MP_REC_BLK_EOS;
    p->state = Q_FOOTER_PEEK;
    return QS_EMIT;
}

static QmigStep
read_blk_hdr(MpQmigParser *p, MpCursor *in, MpRecord *rec)
{
    const guint32 known = MP_BLK_MIG_FLAG_DEVICE_BLOCK | MP_BLK_MIG_FLAG_EOS
                          | MP_BLK_MIG_FLAG_PROGRESS
                          | MP_BLK_MIG_FLAG_ZERO_BLOCK;
    const guint8 *d;

    if (p->acc.have == 0)
        p->rec_start = mp_cursor_offset(in);
    if (!(d = mp_accum_take(&p->acc, 8, in)))
        return QS_SHORT;
    guint64 v = mp_be64(d);
    p->blk_flags = v & ((1u << MP_BLK_SECTOR_BITS) - 1);
    p->blk_addr = v >> MP_BLK_SECTOR_BITS;
    if ((p->blk_flags & ~known) || p->blk_flags == 0)
        return fail(
            p, MP_PARSE_ERROR_RAM_FLAGS,
            "unknown block migration flags 0x%x at offset %" G_GUINT64_FORMAT,
            p->blk_flags, p->rec_start);
    if (p->blk_flags & MP_BLK_MIG_FLAG_DEVICE_BLOCK) {
        p->state = Q_BLK_NAMELEN;
        return QS_NEXT;
    }
    if (p->blk_flags & MP_BLK_MIG_FLAG_PROGRESS) {
        rec->kind = MP_REC_BLK_PROGRESS;
        rec->u.blk.flags = p->blk_flags;
        rec->u.blk.progress = p->blk_addr;
        p->state =
            (p->blk_flags & MP_BLK_MIG_FLAG_EOS) ? Q_FOOTER_PEEK : Q_BLK_HDR;
        return QS_EMIT;
    }
    /* block_load@7.2: anything else must carry EOS */
    if (!(p->blk_flags & MP_BLK_MIG_FLAG_EOS))
        return fail(p, MP_PARSE_ERROR_RAM_FLAGS,
                    "block migration flags 0x%x at offset %" G_GUINT64_FORMAT
                    " (ZERO_BLOCK without DEVICE_BLOCK)",
                    p->blk_flags, p->rec_start);
    return blk_eos(p, rec);
}

/* A DEVICE_BLOCK record is whole (its data streamed, or a zero block). */
static QmigStep
blk_block_done(MpQmigParser *p, MpRecord *rec)
{
    rec->kind = MP_REC_BLK_BLOCK;
    rec->u.blk.device = p->blk_device;
    rec->u.blk.sector = p->blk_addr;
    rec->u.blk.flags = p->blk_flags;
    rec->u.blk.zero = !!(p->blk_flags & MP_BLK_MIG_FLAG_ZERO_BLOCK);
    rec->u.blk.data = (!rec->u.blk.zero && p->blk_contig) ? p->blk_data : NULL;
    /* EOS may ride on a data record; report both */
    p->state = (p->blk_flags & MP_BLK_MIG_FLAG_EOS) ? Q_FOOTER_PEEK : Q_BLK_HDR;
    return QS_EMIT;
}

/* The device name of p->n bytes at `d`. */
static QmigStep
blk_name_done(MpQmigParser *p, MpRecord *rec, const guint8 *d)
{
    memcpy(p->blk_device, d, p->n);
    p->blk_device[p->n] = 0;
    if (p->blk_flags & MP_BLK_MIG_FLAG_ZERO_BLOCK)
        return blk_block_done(p, rec);
    p->blk_left = MP_BLK_MIG_BLOCK_SIZE;
    p->blk_contig = TRUE;
    p->blk_data = NULL;
    p->state = Q_BLK_DATA;
    return QS_NEXT;
}

static QmigStep
read_blk_namelen(MpQmigParser *p, MpCursor *in, MpRecord *rec)
{
    const guint8 *d;

    if (!(d = mp_accum_take(&p->acc, 1, in)))
        return QS_SHORT;
    p->n = d[0];
    p->state = Q_BLK_NAME;
    if (p->n == 0)
        return blk_name_done(p, rec, in->pos);
    return QS_NEXT;
}

static QmigStep
read_blk_name(MpQmigParser *p, MpCursor *in, MpRecord *rec)
{
    const guint8 *d;

    if (!(d = mp_accum_take(&p->acc, p->n, in)))
        return QS_SHORT;
    return blk_name_done(p, rec, d);
}

/* 1 MiB chunks are streamed, never gathered. */
static QmigStep
read_blk_data(MpQmigParser *p, MpCursor *in, MpRecord *rec)
{
    gsize n = MIN(mp_cursor_left(in), p->blk_left);

    if (p->blk_left == MP_BLK_MIG_BLOCK_SIZE) {
        p->blk_data = in->pos;
        if (n < p->blk_left)
            p->blk_contig = FALSE;
    }
    in->pos += n;
    p->blk_left -= n;
    if (p->blk_left)
        return QS_NEXT;
    return blk_block_done(p, rec);
}

/* A device (FULL) section's body, of the size its vmdesc entry gives. */
static QmigStep
read_dev_body(MpQmigParser *p, MpCursor *in, MpRecord *rec)
{
    gsize n = MIN((guint64)mp_cursor_left(in), p->dev_left);

    if (!p->dev_data) {
        p->dev_data = in->pos;
        p->rec_start = mp_cursor_offset(in);
    }
    if (n < p->dev_left)
        p->dev_contig = FALSE;
    in->pos += n;
    p->dev_left -= n;
    if (p->dev_left)
        return QS_NEXT;
    rec->kind = MP_REC_DEVICE_DATA;
    rec->u.raw.data = p->dev_contig ? p->dev_data : NULL;
    rec->u.raw.len =
        (guint32)MIN(mp_cursor_offset(in) - p->rec_start, G_MAXUINT32);
    p->state = Q_FOOTER_PEEK;
    return QS_EMIT;
}

/* 0x7e be32 section_id, unless the stream has no footers (<= 2.3). */
static QmigStep
peek_footer(MpQmigParser *p, MpCursor *in)
{
    p->rec_start = mp_cursor_offset(in);
    if (*in->pos == MP_QMIG_SECTION_FOOTER && !p->no_footers) {
        p->footers_seen = TRUE;
        p->state = Q_FOOTER;
        return QS_NEXT;
    }
    if (p->footers_seen)
        return fail(p, MP_PARSE_ERROR_SECTION,
                    "byte 0x%02x at offset %" G_GUINT64_FORMAT
                    " where the footer of section %u (\"%s\") belongs "
                    "(expected 0x7e)",
                    *in->pos, p->rec_start, p->cur->info.section_id,
                    p->cur->idstr);
    /* streams of machine types <= 2.3 have no footers */
    p->no_footers = TRUE;
    p->state = Q_TOP;
    return QS_NEXT;
}

static QmigStep
read_footer(MpQmigParser *p, MpCursor *in, MpRecord *rec)
{
    const guint8 *d;

    if (!(d = mp_accum_take(&p->acc, 5, in)))
        return QS_SHORT;
    if (mp_be32(d + 1) != p->cur->info.section_id)
        return fail(p, MP_PARSE_ERROR_SECTION,
                    "footer at offset %" G_GUINT64_FORMAT
                    " names section %u inside section %u (\"%s\")",
                    p->rec_start, mp_be32(d + 1), p->cur->info.section_id,
                    p->cur->idstr);
    rec->kind = MP_REC_SECTION_FOOTER;
    rec->u.sect = p->cur->info;
    p->state = Q_TOP;
    return QS_EMIT;
}

/* commands: be16 cmd be16 len payload[len] */

/* The command's payload (p->cmd_len bytes at `d`) is whole. */
static QmigStep
command_done(MpQmigParser *p, MpCursor *in, MpRecord *rec, const guint8 *d)
{
    rec->kind = MP_REC_COMMAND;
    rec->section = NULL;
    rec->u.cmd.cmd = p->cmd;
    rec->u.cmd.len = p->cmd_len;
    if (!decode_command(p, &rec->u.cmd, d))
        return QS_ERROR;
    p->state = Q_TOP;
    if (p->cmd == MP_QMIG_CMD_POSTCOPY_ADVISE && p->cmd_len == 16)
        mp_ram_parser_set_postcopy_summary(p->ram, rec->u.cmd.advise_summary);
    if (p->cmd == MP_QMIG_CMD_PACKAGED) {
        if (p->in_package)
            return fail(p, MP_PARSE_ERROR_COMMAND,
                        "PACKAGED inside PACKAGED at offset %" G_GUINT64_FORMAT,
                        p->rec_start);
        p->in_package = TRUE;
        p->pkg_end = mp_cursor_offset(in) + rec->u.cmd.packaged_len;
    }
    return QS_EMIT;
}

static QmigStep
read_cmd_hdr(MpQmigParser *p, MpCursor *in, MpRecord *rec)
{
    const guint8 *d;

    if (!(d = mp_accum_take(&p->acc, 4, in)))
        return QS_SHORT;
    p->cmd = mp_be16(d);
    p->cmd_len = mp_be16(d + 2);
    p->state = Q_CMD_PAYLOAD;
    if (p->cmd_len == 0)
        return command_done(p, in, rec, in->pos);
    return QS_NEXT;
}

static QmigStep
read_cmd_payload(MpQmigParser *p, MpCursor *in, MpRecord *rec)
{
    const guint8 *d;

    if (!(d = mp_accum_take(&p->acc, p->cmd_len, in)))
        return QS_SHORT;
    return command_done(p, in, rec, d);
}

/* after EOF: the vmdesc (0x06 be32 len json[len]), or nothing */

static QmigStep
read_after_eof(MpQmigParser *p, MpCursor *in)
{
    p->rec_start = mp_cursor_offset(in);
    if (*in->pos != MP_QMIG_VMDESCRIPTION)
        return fail(p, MP_PARSE_ERROR_SECTION_TYPE,
                    "byte 0x%02x at offset %" G_GUINT64_FORMAT
                    " after EOF (expected VMDESCRIPTION 0x06 or the end)",
                    *in->pos, p->rec_start);
    in->pos++;
    p->state = Q_VMDESC_LEN;
    return QS_NEXT;
}

/* The JSON is whole in p->vmdesc_buf: the stream's last record. */
static QmigStep
vmdesc_done(MpQmigParser *p, MpRecord *rec)
{
    p->vmdesc_buf[p->vmdesc_len] = 0;
    rec->kind = MP_REC_VMDESC;
    rec->section = NULL;
    rec->u.vmdesc.json = (const char *)p->vmdesc_buf;
    rec->u.vmdesc.len = p->vmdesc_len;
    p->state = Q_DONE;
    return QS_EMIT_LAST;
}

/* be32 len: the buffer for the JSON starts here. */
static QmigStep
read_vmdesc_len(MpQmigParser *p, MpCursor *in, MpRecord *rec)
{
    const guint8 *d;

    if (!(d = mp_accum_take(&p->acc, 4, in)))
        return QS_SHORT;
    p->vmdesc_len = mp_be32(d);
    if (p->vmdesc_len > MAX_VMDESC)
        return fail(p, MP_PARSE_ERROR_LENGTH,
                    "VMDESCRIPTION of %u bytes at offset %" G_GUINT64_FORMAT
                    " (at most %u accepted)",
                    p->vmdesc_len, p->rec_start, MAX_VMDESC);
    /* the buffer grows as the JSON comes: four bytes of length alone must
     * not reserve 64 MiB */
    p->vmdesc_cap = MIN(p->vmdesc_len + 1, VMDESC_FIRST);
    p->vmdesc_buf = g_malloc(p->vmdesc_cap);
    p->vmdesc_have = 0;
    p->state = Q_VMDESC;
    if (p->vmdesc_len == 0)
        return vmdesc_done(p, rec);
    return QS_NEXT;
}

/* The JSON, copied as it arrives. */
static QmigStep
read_vmdesc(MpQmigParser *p, MpCursor *in, MpRecord *rec)
{
    gsize n = MIN(mp_cursor_left(in), p->vmdesc_len - p->vmdesc_have);

    if (p->vmdesc_have + n + 1 > p->vmdesc_cap) {
        p->vmdesc_cap = MIN(MAX(2 * p->vmdesc_cap, p->vmdesc_have + n + 1),
                            p->vmdesc_len + 1);
        p->vmdesc_buf = g_realloc(p->vmdesc_buf, p->vmdesc_cap);
    }
    memcpy(p->vmdesc_buf + p->vmdesc_have, in->pos, n);
    p->vmdesc_have += n;
    in->pos += n;
    if (p->vmdesc_have < p->vmdesc_len)
        return QS_NEXT;
    return vmdesc_done(p, rec);
}

/* Everything up to the end (of the input, or of the PACKAGED blob) is
 * passed through as it is. */
static QmigStep
read_opaque(MpQmigParser *p, MpCursor *in, MpRecord *rec)
{
    p->rec_start = mp_cursor_offset(in);
    rec->kind = MP_REC_OPAQUE;
    rec->u.raw.data = in->pos;
    rec->u.raw.len = mp_cursor_left(in);
    if (!p->opaque_announced) {
        rec->u.raw.why = opaque_why_name(p->opaque_why);
        p->opaque_announced = TRUE;
    }
    in->pos = in->end;
    return QS_EMIT;
}

/* Runs the function of the current state.  Not called in Q_DONE: the
 * feed returns at once there. */
static QmigStep
read_state(MpQmigParser *p, MpCursor *in, MpRecord *rec)
{
    switch (p->state) {
    case Q_HEADER:
        return read_header(p, in, rec);
    case Q_TOP:
        return read_top(p, in, rec);
    case Q_CFG_LEN:
        return read_cfg_len(p, in);
    case Q_CFG_NAME:
        return read_cfg_name(p, in);
    case Q_CFG_PEEK:
        return peek_cfg(p, in, rec);
    case Q_SUB_HDR:
        return read_sub_hdr(p, in);
    case Q_SUB_NAME:
        return read_sub_name(p, in);
    case Q_SUB_VER:
        return read_sub_version(p, in);
    case Q_SUB_PAGEBITS:
        return read_sub_page_bits(p, in);
    case Q_SUB_CAPS_COUNT:
        return read_sub_caps_count(p, in);
    case Q_SUB_CAP_LEN:
        return read_sub_cap_len(p, in);
    case Q_SUB_CAP:
        return read_sub_cap(p, in);
    case Q_SUB_UUID:
        return read_sub_uuid(p, in);
    case Q_SEC_ID:
        return read_sec_id(p, in, rec);
    case Q_SEC_IDLEN:
        return read_sec_idlen(p, in);
    case Q_SEC_IDSTR:
        return read_sec_idstr(p, in);
    case Q_SEC_INSTVER:
        return read_sec_instver(p, in, rec);
    case Q_RAM_BODY:
        return read_ram_body(p, in);
    case Q_BLK_HDR:
        return read_blk_hdr(p, in, rec);
    case Q_BLK_NAMELEN:
        return read_blk_namelen(p, in, rec);
    case Q_BLK_NAME:
        return read_blk_name(p, in, rec);
    case Q_BLK_DATA:
        return read_blk_data(p, in, rec);
    case Q_DEV_BODY:
        return read_dev_body(p, in, rec);
    case Q_FOOTER_PEEK:
        return peek_footer(p, in);
    case Q_FOOTER:
        return read_footer(p, in, rec);
    case Q_CMD_HDR:
        return read_cmd_hdr(p, in, rec);
    case Q_CMD_PAYLOAD:
        return read_cmd_payload(p, in, rec);
    case Q_AFTER_EOF:
        return read_after_eof(p, in);
    case Q_VMDESC_LEN:
        return read_vmdesc_len(p, in, rec);
    case Q_VMDESC:
        return read_vmdesc(p, in, rec);
    case Q_OPAQUE:
        return read_opaque(p, in, rec);
    case Q_DONE:
        break;
    }
    g_assert_not_reached();
}

/* The PACKAGED blob ends at in->pos: back to the outer stream. */
static QmigStep
package_ends(MpQmigParser *p, MpCursor *in, MpRecord *rec)
{
    p->rec_start = mp_cursor_offset(in);
    rec->kind = MP_REC_PACKAGED_END; /* no bytes of its own */
    p->in_package = FALSE;
    if (p->state == Q_OPAQUE) {
        /* the device state of the package was opaque; the outer stream
         * is parsed again (PING, RAM PART/END, EOF) */
        p->state = Q_TOP;
    }
    return QS_EMIT;
}

/* Reports `rec`, which spans from p->rec_start to in->pos. */
static MpRecordAction
emit(MpQmigParser *p, const MpCursor *in, MpRecord *rec)
{
    rec->offset = p->rec_start;
    rec->length = mp_cursor_offset(in) - p->rec_start;
    return p->cb(rec, p->user_data);
}

/* The parser's feed, outside a resync. */
static MpFeedStatus
feed_plain(gpointer parser, const guint8 *buf, gsize len, gsize *consumed,
           GError **error)
{
    MpQmigParser *p = parser;
    const guint8 *end = buf + len;
    MpCursor in = {.buf = buf, .pos = buf, .end = end, .off = p->off};
    MpFeedStatus status = MP_FEED_MORE;
    MpRecord rec;
    QmigStep step;

    *consumed = 0;
    if (p->error) {
        if (error)
            *error = g_error_copy(p->error);
        return MP_FEED_ERROR;
    }
    if (p->state == Q_DONE)
        return MP_FEED_END;

    for (;;) {
        guint64 at = mp_cursor_offset(&in);

        /* states read up to the end of the input or of the blob */
        in.end = end;
        if (p->in_package && p->pkg_end - at < (guint64)(end - in.pos))
            in.end = in.pos + (p->pkg_end - at);
        memset(&rec, 0, sizeof(rec));
        if (p->in_package && at == p->pkg_end
            && (p->state == Q_TOP || p->state == Q_OPAQUE)) {
            step = package_ends(p, &in, &rec);
        } else if (in.pos == end) {
            break;
        } else if (in.pos == in.end) {
            step = fail(p, MP_PARSE_ERROR_COMMAND,
                        "%s at offset %" G_GUINT64_FORMAT
                        " runs past the end of the PACKAGED blob at offset "
                        "%" G_GUINT64_FORMAT,
                        qmig_state_name(p->state), p->rec_start, p->pkg_end);
        } else {
            rec.section = p->cur ? &p->cur->info : NULL;
            step = read_state(p, &in, &rec);
        }

        switch (step) {
        case QS_NEXT:
            continue;
        case QS_SHORT:
            /* at the blob's end, the checks above report it */
            if (in.pos == end)
                goto out;
            continue;
        case QS_EMIT:
            if (emit(p, &in, &rec) == MP_REC_PAUSE) {
                status = MP_FEED_PAUSED;
                goto out;
            }
            continue;
        case QS_EMIT_LAST:
            emit(p, &in, &rec);
            status = MP_FEED_END;
            goto out;
        case QS_PAUSED:
            status = MP_FEED_PAUSED;
            goto out;
        case QS_ERROR:
            goto error;
        }
    }

out:
    *consumed = in.pos - buf;
    p->off += *consumed;
    return status;

error:
    *consumed = in.pos - buf;
    p->off += *consumed;
    if (error)
        *error = g_error_copy(p->error);
    return MP_FEED_ERROR;
}

/* ---- after a gap: the next trusted record ----
 *
 * A position is tried twice: as the start of a top-level record (a PART
 * or END header of a known section, a START or FULL header equal to the
 * one seen before, a command of a known type and length, EOF), then as
 * the start of a RAM record inside the "ram" section's body (a page in
 * the channel's current block, or naming a known block; EOS and its
 * footer; MULTIFD_FLUSH).  From there the walk follows the records as the
 * parser would until it has RESYNC_RECORDS checks; a record it cannot
 * follow (a device's body) ends it, trusted only if the checks were
 * enough by then.
 */

typedef enum {
    RESUME_TOP,
    RESUME_RAM,
} ResumeKind;

typedef enum {
    W_GO,   /* a record walked */
    W_STOP, /* the walk cannot follow what comes next */
    W_NO,
    W_MORE,
} WalkStep;

typedef struct {
    const MpQmigParser *p;
    const guint8 *b;
    gsize len, pos;
    guint score;
    const char *what; /* the first record's kind */
    gboolean have_block;
    guint64 used; /* the block's used_length, 0: unknown */
    guint64 last_addr;
    gboolean have_addr; /* last_addr is of the same block */
} Walk;

/* Bytes [pos, end) of the walk must be there. */
static WalkStep
need(const Walk *w, gsize end)
{
    if (end <= w->len)
        return W_GO;
    return end > RESYNC_LIMIT ? W_NO : W_MORE;
}

static void
walked(Walk *w, guint score, gsize end, const char *what)
{
    w->score += score;
    w->pos = end;
    if (!w->what)
        w->what = what;
}

/* One RAM record; *eos: it was EOS. */
static WalkStep
walk_ram(Walk *w, gboolean *eos)
{
    const guint32 ps = w->p->page_size;
    const guint8 *h = w->b + w->pos;
    gsize at = w->pos + 8, payload;
    WalkStep st;

    *eos = FALSE;
    if ((st = need(w, at)) != W_GO)
        return st;
    guint64 v = mp_be64(h), addr = v & ~(guint64)(ps - 1);
    guint32 flags = v & (ps - 1);
    switch (flags & ~MP_RAM_SAVE_FLAG_CONTINUE) {
    case MP_RAM_SAVE_FLAG_EOS:
        /* QEMU writes the flag alone */
        if (v != MP_RAM_SAVE_FLAG_EOS)
            return W_NO;
        *eos = TRUE;
        walked(w, 1, at, "RAM EOS");
        return W_GO;
    case MP_RAM_SAVE_FLAG_MULTIFD_FLUSH:
        if (v != MP_RAM_SAVE_FLAG_MULTIFD_FLUSH)
            return W_NO;
        walked(w, 1, at, "RAM MULTIFD_FLUSH");
        return W_GO;
    case MP_RAM_SAVE_FLAG_ZERO:
    case MP_RAM_SAVE_FLAG_PAGE:
    case MP_RAM_SAVE_FLAG_XBZRLE:
    case MP_RAM_SAVE_FLAG_COMPRESS_PAGE:
        break;
    default:
        return W_NO;
    }
    guint score = 1;
    if (!(flags & MP_RAM_SAVE_FLAG_CONTINUE)) {
        if ((st = need(w, at + 1)) != W_GO)
            return st;
        gsize n = w->b[at];
        if ((st = need(w, at + 1 + n)) != W_GO)
            return st;
        if (!mp_ram_parser_block_used(w->p->ram, w->b + at + 1, n, &w->used))
            return W_NO;
        w->have_block = TRUE;
        w->have_addr = FALSE;
        at += 1 + n;
        score = 2;
    } else if (!w->have_block) {
        return W_NO;
    } else if (w->have_addr && addr <= w->last_addr) {
        /* the dirty scan goes up through a block */
        return W_NO;
    }
    if (w->used && (addr >= w->used || w->used - addr < ps))
        return W_NO;
    switch (flags & ~MP_RAM_SAVE_FLAG_CONTINUE) {
    case MP_RAM_SAVE_FLAG_ZERO:
        /* the fill byte is always 0 (save_zero_page_to_file) */
        if ((st = need(w, at + 1)) != W_GO)
            return st;
        if (w->b[at] != 0)
            return W_NO;
        payload = 1;
        break;
    case MP_RAM_SAVE_FLAG_PAGE:
        payload = ps;
        break;
    case MP_RAM_SAVE_FLAG_XBZRLE:
        if ((st = need(w, at + 3)) != W_GO)
            return st;
        payload = mp_be16(w->b + at + 1);
        if (w->b[at] != MP_ENCODING_FLAG_XBZRLE || payload > ps)
            return W_NO;
        payload += 3;
        break;
    default: /* COMPRESS_PAGE */
        if ((st = need(w, at + 4)) != W_GO)
            return st;
        payload = mp_be32(w->b + at);
        if (payload == 0 || payload > ps + ps / 16 + 64)
            return W_NO;
        payload += 4;
        break;
    }
    if ((st = need(w, at + payload)) != W_GO)
        return st;
    w->last_addr = addr;
    w->have_addr = TRUE;
    walked(w, score, at + payload, "RAM page record");
    return W_GO;
}

/* The footer after the "ram" section's EOS. */
static WalkStep
walk_footer(Walk *w)
{
    WalkStep st;

    if (w->p->no_footers)
        return W_GO;
    if ((st = need(w, w->pos + 1)) != W_GO)
        return st;
    if (w->b[w->pos] != MP_QMIG_SECTION_FOOTER)
        return w->p->footers_seen ? W_NO : W_GO;
    if ((st = need(w, w->pos + 5)) != W_GO)
        return st;
    if (mp_be32(w->b + w->pos + 1) != w->p->rs_ram->info.section_id)
        return W_NO;
    walked(w, 1, w->pos + 5, "section footer");
    return W_GO;
}

/* One top-level record; *ram: the "ram" section's body follows. */
static WalkStep
walk_top(Walk *w, gboolean *ram)
{
    const guint8 *h = w->b + w->pos;
    WalkStep st;
    const Section *s;

    *ram = FALSE;
    if ((st = need(w, w->pos + 1)) != W_GO)
        return st;
    switch (h[0]) {
    case MP_QMIG_SECTION_PART:
    case MP_QMIG_SECTION_END:
        if ((st = need(w, w->pos + 5)) != W_GO)
            return st;
        s = g_hash_table_lookup(w->p->sections,
                                GUINT_TO_POINTER(mp_be32(h + 1)));
        if (!s)
            return W_NO;
        walked(w, 1, w->pos + 5, "section header");
        *ram = s == w->p->rs_ram;
        return *ram ? W_GO : W_STOP;
    case MP_QMIG_SECTION_START:
    case MP_QMIG_SECTION_FULL: {
        if ((st = need(w, w->pos + 6)) != W_GO)
            return st;
        gsize n = h[5];
        if ((st = need(w, w->pos + 14 + n)) != W_GO)
            return st;
        s = g_hash_table_lookup(w->p->sections,
                                GUINT_TO_POINTER(mp_be32(h + 1)));
        if (!s || strlen(s->idstr) != n || memcmp(s->idstr, h + 6, n) != 0
            || s->info.instance_id != mp_be32(h + 6 + n)
            || s->info.version_id != mp_be32(h + 10 + n))
            return W_NO;
        walked(w, 2, w->pos + 14 + n, "section header");
        /* (a device's body, or a block list, is not walked) */
        return W_STOP;
    }
    case MP_QMIG_COMMAND: {
        if ((st = need(w, w->pos + 5)) != W_GO)
            return st;
        guint16 cmd = mp_be16(h + 1), len = mp_be16(h + 3);
        int want = command_len(cmd);
        if (cmd == MP_QMIG_CMD_INVALID || cmd >= MP_QMIG_CMD__MAX
            || (want >= 0 && len != want))
            return W_NO;
        if ((st = need(w, w->pos + 5 + len)) != W_GO)
            return st;
        walked(w, 1, w->pos + 5 + len, "command");
        return cmd == MP_QMIG_CMD_PACKAGED ? W_STOP : W_GO;
    }
    case MP_QMIG_EOF:
        walked(w, 1, w->pos + 1, "EOF");
        return W_STOP;
    default:
        return W_NO;
    }
}

/* Walks from b[0], at the top level or in the "ram" body. */
static MpProbeResult
walk(const MpQmigParser *p, const guint8 *b, gsize len, gboolean in_ram,
     const char **what)
{
    Walk w = {.p = p, .b = b, .len = len};
    gboolean ram = in_ram;

    /* the channel's current block outlives sections (as the destination's
     * last_recv_block does) */
    w.have_block = mp_ram_parser_current_block(p->ram, &w.used) != NULL;
    while (w.score < RESYNC_RECORDS) {
        WalkStep st;
        if (ram) {
            gboolean eos;
            st = walk_ram(&w, &eos);
            if (st == W_GO && eos) {
                st = walk_footer(&w);
                ram = FALSE;
            }
        } else {
            st = walk_top(&w, &ram);
        }
        if (st == W_NO)
            return MP_PROBE_NO;
        if (st == W_MORE)
            return MP_PROBE_MORE;
        if (st == W_STOP)
            break;
    }
    *what = w.what;
    return w.score >= RESYNC_RECORDS ? MP_PROBE_YES : MP_PROBE_NO;
}

static MpProbeResult
probe_record(gconstpointer parser, const guint8 *b, gsize len, guint64 off,
             const char **what, int *kind)
{
    const MpQmigParser *p = parser;

    (void)off;
    /* top first; while it cannot tell, neither answer is given, so that
     * the choice never depends on how much input there is */
    MpProbeResult r = walk(p, b, len, FALSE, what);
    *kind = RESUME_TOP;
    if (r != MP_PROBE_NO || !p->rs_ram)
        return r;
    *kind = RESUME_RAM;
    return walk(p, b, len, TRUE, what);
}

/* A trusted record starts at rec->offset: read it from there. */
static MpRecordAction
resume_record(gpointer parser, MpRecord *rec, int kind)
{
    MpQmigParser *p = parser;

    p->off = p->rec_start = rec->offset;
    if (p->in_package && p->pkg_end <= rec->offset)
        p->in_package = FALSE;
    if (kind == RESUME_RAM) {
        p->cur = p->rs_ram;
        mp_ram_parser_set_section(p->ram, &p->cur->info);
        p->state = Q_RAM_BODY;
        rec->section = &p->cur->info;
    } else {
        p->state = Q_TOP;
    }
    return p->cb(rec, p->user_data);
}

static const MpResyncOps resync_ops = {
    .probe = probe_record,
    .resume = resume_record,
    .feed = feed_plain,
};

static Section *
find_ram_section(const MpQmigParser *p)
{
    GHashTableIter it;
    gpointer key, value;

    g_hash_table_iter_init(&it, p->sections);
    while (g_hash_table_iter_next(&it, &key, &value))
        if (((Section *)value)->body == BODY_RAM)
            return value;
    return NULL;
}

gboolean
mp_qmig_parser_gap(MpQmigParser *p, guint64 len)
{
    if (p->error)
        return FALSE;
    if (p->state == Q_OPAQUE && p->in_package && p->off + len >= p->pkg_end)
        p->in_package = FALSE; /* the blob ended in the gap: scan after it */
    else if (p->state == Q_OPAQUE || p->state == Q_DONE) {
        /* passed through (or over) already: nothing to find, it goes on
         * right after the gap */
        MpRecord rec;
        memset(&rec, 0, sizeof(rec));
        rec.kind = MP_REC_RESYNC;
        rec.offset = p->off + len;
        rec.u.resync.gap_offset = p->off;
        rec.u.resync.gap_bytes = len;
        rec.u.resync.what = "opaque bytes";
        p->off += len;
        p->cb(&rec, p->user_data);
        return TRUE;
    }
    p->rs_ram = find_ram_section(p);
    mp_ram_parser_resync(p->ram);
    p->acc.have = 0;
    g_clear_pointer(&p->vmdesc_buf, g_free);
    p->state = Q_TOP;
    mp_resync_gap(&p->rs, p->off, len);
    p->off += len;
    return TRUE;
}

MpFeedStatus
mp_qmig_parser_feed(MpQmigParser *p, const guint8 *buf, gsize len,
                    gsize *consumed, GError **error)
{
    if (p->error || !mp_resync_active(&p->rs))
        return feed_plain(p, buf, len, consumed, error);
    return mp_resync_feed(&p->rs, &resync_ops, p, &p->off, buf, len,
                          consumed, error);
}

gboolean
mp_qmig_parser_finish(MpQmigParser *p, GError **error)
{
    if (!p->error && mp_resync_finish(&p->rs))
        return TRUE; /* the owner, who told the gap, tells the rest */
    if (p->error) {
        if (error)
            *error = g_error_copy(p->error);
        return FALSE;
    }
    switch (p->state) {
    case Q_TOP:
    case Q_AFTER_EOF:
    case Q_DONE:
        if (!p->in_package && p->acc.have == 0)
            return TRUE;
        break;
    case Q_OPAQUE:
        /* a PACKAGED blob has a length, even when its content is opaque */
        if (!p->in_package)
            return TRUE;
        break;
    case Q_RAM_BODY:
        if (!mp_ram_parser_finish(p->ram, error))
            return FALSE;
        break;
    default:
        break;
    }
    mp_parse_error_set(error, p->channel, MP_PARSE_ERROR_TRUNCATED,
                       "stream ends at offset %" G_GUINT64_FORMAT
                       " inside %s%s",
                       p->off, qmig_state_name(p->state),
                       p->in_package ? " (in a PACKAGED blob)" : "");
    return FALSE;
}
