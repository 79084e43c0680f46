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
#include <string.h>
#include "qmig-parser.h"
#include "ram-parser.h"

#define MAX_SECTIONS    65536
#define MAX_CONFIG_NAME 4096
#define MAX_VMDESC      (64u << 20)
#define MAX_CAPS        256

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

typedef enum {
    BODY_RAM,
    BODY_BLOCK,
    BODY_DEVICE,
} BodyKind;

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

    /* configuration */
    char machine[MAX_CONFIG_NAME + 1];
    char subname[256];
    guint32 caps_left;
    gboolean x_ignore_shared, mapped_ram;

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
    guint32 vmdesc_len, vmdesc_have;

    /* opaque pass-through */
    guint64 opaque_from;
    const char *opaque_why;
    gboolean opaque_announced;

    MpRamParser *ram;
    gboolean ram_paused; /* the callback paused on the last RAM record */
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
    p->sections = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL,
                                        g_free);
    p->ram = mp_ram_parser_new(channel, p->page_size, ram_record, p);
    p->opaque_from = G_MAXUINT64;
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

guint64
mp_qmig_parser_opaque_from(const MpQmigParser *p, const char **why)
{
    if (why)
        *why = p->opaque_why;
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

static const char *
state_what(QmigState s)
{
    switch (s) {
    case Q_HEADER:
        return "stream header";
    case Q_TOP:
        return "record type";
    case Q_CFG_LEN ... Q_SUB_UUID:
        return "configuration section";
    case Q_SEC_ID ... Q_SEC_INSTVER:
        return "section header";
    case Q_RAM_BODY:
        return "RAM section";
    case Q_BLK_HDR ... Q_BLK_DATA:
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
    default:
        return "stream";
    }
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

/* Validates and decodes a command payload into `ci`.  FALSE: bad. */
static gboolean
decode_command(MpQmigParser *p, MpCommandInfo *ci, const guint8 *d,
               char *block, GError **error)
{
    int want = command_len(ci->cmd);

    ci->payload = d;
    if (ci->cmd == MP_QMIG_CMD_INVALID || ci->cmd >= MP_QMIG_CMD__MAX) {
        g_set_error(error, MP_PARSE_ERROR, MP_PARSE_ERROR_COMMAND,
                    "%s: unknown command %u at offset %" G_GUINT64_FORMAT
                    " (expected 1..%d)",
                    p->channel, ci->cmd, p->rec_start, MP_QMIG_CMD__MAX - 1);
        return FALSE;
    }
    if (want >= 0 && ci->len != want)
        goto bad_len;
    switch (ci->cmd) {
    case MP_QMIG_CMD_PING:
        ci->ping_value = mp_be32(d);
        break;
    case MP_QMIG_CMD_PACKAGED:
        ci->packaged_len = mp_be32(d);
        break;
    case MP_QMIG_CMD_POSTCOPY_ADVISE:
        if (ci->len == 16) {
            ci->advise_summary = mp_be64(d);
            ci->advise_target_page_size = mp_be64(d + 8);
            if (ci->advise_target_page_size != p->page_size) {
                g_set_error(error, MP_PARSE_ERROR, MP_PARSE_ERROR_UNSUPPORTED,
                            "%s: POSTCOPY_ADVISE at offset %" G_GUINT64_FORMAT
                            " gives target page size %" G_GUINT64_FORMAT
                            " (expected %u)",
                            p->channel, p->rec_start,
                            ci->advise_target_page_size, p->page_size);
                return FALSE;
            }
        } else if (ci->len != 0) {
            goto bad_len;
        }
        break;
    case MP_QMIG_CMD_POSTCOPY_RAM_DISCARD: {
        /* u8 version(0) u8 n idstr[n] u8 0 {be64 start, be64 len}*
         * loadvm_postcopy_ram_handle_discard@7.2 wants len >= 20 */
        if (ci->len < 20 || d[0] != 0 || ci->len < 3u + d[1]
            || d[2 + d[1]] != 0 || (ci->len - 3u - d[1]) % 16)
            goto bad_len;
        memcpy(block, d + 2, d[1]);
        block[d[1]] = 0;
        ci->block = block;
        ci->discard_count = (ci->len - 3u - d[1]) / 16;
        ci->discard_ranges = d + 3 + d[1];
        break;
    }
    case MP_QMIG_CMD_RECV_BITMAP:
        if (ci->len < 1 || ci->len != 1u + d[0])
            goto bad_len;
        memcpy(block, d + 1, d[0]);
        block[d[0]] = 0;
        ci->block = block;
        break;
    default:
        break;
    }
    return TRUE;

bad_len:
    g_set_error(error, MP_PARSE_ERROR, MP_PARSE_ERROR_COMMAND,
                "%s: command %s at offset %" G_GUINT64_FORMAT
                " has a malformed payload of %u bytes",
                p->channel, mp_qmig_command_name(ci->cmd), p->rec_start,
                ci->len);
    return FALSE;
}

MpFeedStatus
mp_qmig_parser_feed(MpQmigParser *p, const guint8 *buf, gsize len,
                    gsize *consumed, GError **error)
{
    const guint8 *pos = buf, *end = buf + len, *lim;
    const guint8 *d;
    MpRecord rec;
    MpFeedStatus status = MP_FEED_MORE;
    char block[256];

#define AT(ptr) (p->off + (guint64)((ptr) - buf))
#define FAIL(code, ...)                                                       \
    do {                                                                      \
        g_set_error(&p->error, MP_PARSE_ERROR, (code), __VA_ARGS__);          \
        goto fail;                                                            \
    } while (0)
#define TAKE(n)                                                               \
    do {                                                                      \
        MpCursor c_ = {buf, pos, lim, 0};                                     \
        d = mp_accum_take(&p->acc, (n), &c_);                                 \
        pos = c_.pos;                                                         \
        if (!d)                                                               \
            goto next;                                                        \
    } while (0)

    *consumed = 0;
    if (p->error) {
        if (error)
            *error = g_error_copy(p->error);
        return MP_FEED_ERROR;
    }
    if (p->state == Q_DONE)
        return MP_FEED_END;

    while (TRUE) {
        lim = end;
        if (p->in_package && p->pkg_end - AT(pos) < (guint64)(end - pos))
            lim = pos + (p->pkg_end - AT(pos));
        /* The blob ended: back to the outer stream. */
        if (p->in_package && AT(pos) == p->pkg_end
            && (p->state == Q_TOP || p->state == Q_OPAQUE)) {
            memset(&rec, 0, sizeof(rec));
            rec.kind = MP_REC_PACKAGED_END;
            rec.offset = AT(pos);
            p->in_package = FALSE;
            if (p->state == Q_OPAQUE) {
                /* the device state of the package was opaque; the outer
                 * stream is parsed again (PING, RAM PART/END, EOF) */
                p->state = Q_TOP;
            }
            if (p->cb(&rec, p->user_data) == MP_REC_PAUSE) {
                status = MP_FEED_PAUSED;
                break;
            }
            continue;
        }
        if (pos >= end)
            break;
        if (pos == lim)
            FAIL(MP_PARSE_ERROR_COMMAND,
                 "%s: %s at offset %" G_GUINT64_FORMAT
                 " runs past the end of the PACKAGED blob at offset %"
                 G_GUINT64_FORMAT,
                 p->channel, state_what(p->state), p->rec_start, p->pkg_end);

        memset(&rec, 0, sizeof(rec));
        rec.section = p->cur ? &p->cur->info : NULL;

        switch (p->state) {
        case Q_HEADER:
            if (p->acc.have == 0)
                p->rec_start = AT(pos);
            TAKE(8);
            if (mp_be32(d) != MP_QMIG_FILE_MAGIC)
                FAIL(MP_PARSE_ERROR_MAGIC,
                     "%s: bad magic 0x%08x at offset 0 (expected 0x%08x "
                     "\"QEVM\")",
                     p->channel, mp_be32(d), MP_QMIG_FILE_MAGIC);
            if (mp_be32(d + 4) != MP_QMIG_FILE_VERSION)
                FAIL(MP_PARSE_ERROR_VERSION,
                     "%s: stream version %u at offset 4 (expected %u)",
                     p->channel, mp_be32(d + 4), MP_QMIG_FILE_VERSION);
            rec.kind = MP_REC_STREAM_HEADER;
            rec.u.header.magic = MP_QMIG_FILE_MAGIC;
            rec.u.header.version = MP_QMIG_FILE_VERSION;
            p->state = Q_TOP;
            goto emit;

        case Q_TOP:
            p->rec_start = AT(pos);
            p->type = *pos++;
            switch (p->type) {
            case MP_QMIG_CONFIGURATION:
                if (p->rec_start != 8)
                    FAIL(MP_PARSE_ERROR_SECTION_TYPE,
                         "%s: configuration section at offset %" G_GUINT64_FORMAT
                         " (expected only right after the header)",
                         p->channel, p->rec_start);
                p->state = Q_CFG_LEN;
                continue;
            case MP_QMIG_SECTION_START:
            case MP_QMIG_SECTION_PART:
            case MP_QMIG_SECTION_END:
            case MP_QMIG_SECTION_FULL:
                p->state = Q_SEC_ID;
                continue;
            case MP_QMIG_COMMAND:
                p->state = Q_CMD_HDR;
                continue;
            case MP_QMIG_EOF:
                if (p->in_package)
                    FAIL(MP_PARSE_ERROR_SECTION_TYPE,
                         "%s: EOF inside the PACKAGED blob at offset %"
                         G_GUINT64_FORMAT,
                         p->channel, p->rec_start);
                rec.kind = MP_REC_EOF;
                p->cur = NULL;
                rec.section = NULL;
                p->state = Q_AFTER_EOF;
                goto emit;
            default:
                FAIL(MP_PARSE_ERROR_SECTION_TYPE,
                     "%s: unknown section type 0x%02x at offset %"
                     G_GUINT64_FORMAT " (expected a section, a command "
                     "or EOF)",
                     p->channel, p->type, p->rec_start);
            }

        /* configuration */
        case Q_CFG_LEN:
            TAKE(4);
            p->n = mp_be32(d);
            if (p->n > MAX_CONFIG_NAME)
                FAIL(MP_PARSE_ERROR_LENGTH,
                     "%s: machine type name of %u bytes at offset %"
                     G_GUINT64_FORMAT " (at most %d expected)",
                     p->channel, p->n, AT(pos) - 4, MAX_CONFIG_NAME);
            p->machine[0] = 0;
            p->state = Q_CFG_NAME;
            if (p->n == 0)
                p->state = Q_CFG_PEEK;
            continue;
        case Q_CFG_NAME:
            TAKE(p->n);
            memcpy(p->machine, d, p->n);
            p->machine[p->n] = 0;
            p->state = Q_CFG_PEEK;
            continue;
        case Q_CFG_PEEK:
            if (*pos == MP_QMIG_SUBSECTION) {
                p->state = Q_SUB_HDR;
                continue;
            }
            rec.kind = MP_REC_CONFIGURATION;
            rec.u.config.machine = p->machine;
            rec.u.config.x_ignore_shared = p->x_ignore_shared;
            rec.u.config.mapped_ram = p->mapped_ram;
            mp_ram_parser_set_ignore_shared(p->ram, p->x_ignore_shared);
            p->state = Q_TOP;
            goto emit;
        case Q_SUB_HDR:
            TAKE(2);
            p->n = d[1];
            p->state = Q_SUB_NAME;
            continue;
        case Q_SUB_NAME:
            TAKE(p->n);
            memcpy(p->subname, d, p->n);
            p->subname[p->n] = 0;
            p->state = Q_SUB_VER;
            continue;
        case Q_SUB_VER:
            TAKE(4);
            if (strcmp(p->subname, "configuration/target-page-bits") == 0)
                p->state = Q_SUB_PAGEBITS;
            else if (strcmp(p->subname, "configuration/capabilities") == 0)
                p->state = Q_SUB_CAPS_COUNT;
            else if (strcmp(p->subname, "configuration/uuid") == 0)
                p->state = Q_SUB_UUID;
            else
                FAIL(MP_PARSE_ERROR_UNSUPPORTED,
                     "%s: unknown configuration subsection \"%s\" at offset %"
                     G_GUINT64_FORMAT,
                     p->channel, p->subname, AT(pos) - 4);
            continue;
        case Q_SUB_PAGEBITS:
            TAKE(4);
            if (mp_be32(d) >= 32 || (1u << mp_be32(d)) != p->page_size)
                FAIL(MP_PARSE_ERROR_UNSUPPORTED,
                     "%s: target page bits %u at offset %" G_GUINT64_FORMAT
                     " (only %u-byte pages are supported)",
                     p->channel, mp_be32(d), AT(pos) - 4, p->page_size);
            p->state = Q_CFG_PEEK;
            continue;
        case Q_SUB_CAPS_COUNT:
            TAKE(4);
            p->caps_left = mp_be32(d);
            if (p->caps_left > MAX_CAPS)
                FAIL(MP_PARSE_ERROR_LENGTH,
                     "%s: %u capabilities at offset %" G_GUINT64_FORMAT
                     " (at most %d expected)",
                     p->channel, p->caps_left, AT(pos) - 4, MAX_CAPS);
            p->state = p->caps_left ? Q_SUB_CAP_LEN : Q_CFG_PEEK;
            continue;
        case Q_SUB_CAP_LEN:
            TAKE(1);
            p->n = d[0];
            p->state = Q_SUB_CAP;
            if (p->n)
                continue;
            d = pos;
            goto cap_done;
        case Q_SUB_CAP:
            TAKE(p->n);
        cap_done:
            if (p->n == strlen("x-ignore-shared")
                && memcmp(d, "x-ignore-shared", p->n) == 0)
                p->x_ignore_shared = TRUE;
            if (p->n == strlen("mapped-ram")
                && memcmp(d, "mapped-ram", p->n) == 0)
                p->mapped_ram = TRUE;
            p->state = --p->caps_left ? Q_SUB_CAP_LEN : Q_CFG_PEEK;
            continue;
        case Q_SUB_UUID:
            TAKE(16);
            p->state = Q_CFG_PEEK;
            continue;

        /* section headers */
        case Q_SEC_ID:
            TAKE(4);
            memset(&p->pending, 0, sizeof(p->pending));
            p->pending.info.type = p->type;
            p->pending.info.section_id = mp_be32(d);
            if (p->type == MP_QMIG_SECTION_START
                || p->type == MP_QMIG_SECTION_FULL) {
                p->state = Q_SEC_IDLEN;
                continue;
            }
            p->cur = g_hash_table_lookup(
                p->sections, GUINT_TO_POINTER(p->pending.info.section_id));
            if (!p->cur)
                FAIL(MP_PARSE_ERROR_SECTION,
                     "%s: %s section at offset %" G_GUINT64_FORMAT
                     " has section id %u, which no START announced",
                     p->channel, section_type_name(p->type), p->rec_start,
                     p->pending.info.section_id);
            p->cur->info.type = p->type;
            goto section_begins;
        case Q_SEC_IDLEN:
            TAKE(1);
            p->n = d[0];
            p->state = Q_SEC_IDSTR;
            if (p->n)
                continue;
            d = pos;
            goto idstr_done;
        case Q_SEC_IDSTR:
            TAKE(p->n);
        idstr_done:
            memcpy(p->pending.idstr, d, p->n);
            p->pending.idstr[p->n] = 0;
            p->state = Q_SEC_INSTVER;
            continue;
        case Q_SEC_INSTVER: {
            TAKE(8);
            Section *s = g_hash_table_lookup(
                p->sections, GUINT_TO_POINTER(p->pending.info.section_id));
            if (!s) {
                if (g_hash_table_size(p->sections) >= MAX_SECTIONS)
                    FAIL(MP_PARSE_ERROR_LENGTH,
                         "%s: more than %d sections at offset %"
                         G_GUINT64_FORMAT,
                         p->channel, MAX_SECTIONS, p->rec_start);
                s = g_new0(Section, 1);
                g_hash_table_insert(p->sections,
                                    GUINT_TO_POINTER(
                                        p->pending.info.section_id),
                                    s);
            }
            *s = p->pending;
            s->info.idstr = s->idstr;
            s->info.instance_id = mp_be32(d);
            s->info.version_id = mp_be32(d + 4);
            s->info.known = TRUE;
            if (strcmp(s->idstr, "ram") == 0)
                s->body = BODY_RAM;
            else if (strcmp(s->idstr, "block") == 0)
                s->body = BODY_BLOCK;
            else
                s->body = BODY_DEVICE;
            p->cur = s;
        }
        section_begins:
            rec.kind = MP_REC_SECTION_HEADER;
            rec.section = &p->cur->info;
            rec.u.sect = p->cur->info;
            switch (p->cur->body) {
            case BODY_RAM:
                if (p->cur->info.version_id != 4)
                    FAIL(MP_PARSE_ERROR_VERSION,
                         "%s: \"ram\" section version %u at offset %"
                         G_GUINT64_FORMAT " (expected 4)",
                         p->channel, p->cur->info.version_id, p->rec_start);
                if (p->mapped_ram)
                    FAIL(MP_PARSE_ERROR_UNSUPPORTED,
                         "%s: mapped-ram streams (file: migration) are not "
                         "supported (offset %" G_GUINT64_FORMAT ")",
                         p->channel, p->rec_start);
                mp_ram_parser_set_section(p->ram, &p->cur->info);
                p->state = Q_RAM_BODY;
                break;
            case BODY_BLOCK:
                p->state = Q_BLK_HDR;
                break;
            case BODY_DEVICE:
                if (p->type == MP_QMIG_SECTION_START) {
                    p->opaque_why = "an iterable section whose format "
                                    "migproxy does not follow";
                    p->state = Q_OPAQUE;
                    break;
                }
                {
                    const MpVmdescDevice *dev =
                        p->vmdesc ? mp_vmdesc_lookup(p->vmdesc,
                                                     p->cur->idstr,
                                                     p->cur->info.instance_id,
                                                     &p->vmdesc_cursor)
                                  : NULL;
                    if (!dev) {
                        p->opaque_why = p->vmdesc
                                            ? "a device section that the "
                                              "vmdesc does not describe"
                                            : "device state (no vmdesc to "
                                              "slice it)";
                        p->state = Q_OPAQUE;
                        break;
                    }
                    p->dev_left = dev->size;
                    p->dev_contig = TRUE;
                    p->dev_data = NULL;
                    p->state = p->dev_left ? Q_DEV_BODY : Q_FOOTER_PEEK;
                }
                break;
            }
            if (p->state == Q_OPAQUE) {
                /* the header itself is still a well-parsed record */
                rec.offset = p->rec_start;
                rec.length = AT(pos) - p->rec_start;
                p->opaque_from = AT(pos);
                if (p->cb(&rec, p->user_data) == MP_REC_PAUSE) {
                    status = MP_FEED_PAUSED;
                    goto out;
                }
                continue;
            }
            goto emit;

        case Q_RAM_BODY: {
            g_autoptr(GError) err = NULL;
            gsize used = 0;
            mp_ram_parser_set_offset(p->ram, AT(pos));
            MpFeedStatus st =
                mp_ram_parser_feed(p->ram, pos, lim - pos, &used, &err);
            pos += used;
            if (st == MP_FEED_ERROR) {
                p->error = g_steal_pointer(&err);
                goto fail;
            }
            if (st == MP_FEED_END) {
                p->rec_start = AT(pos);
                p->state = Q_FOOTER_PEEK;
                if (p->ram_paused) {
                    status = MP_FEED_PAUSED;
                    goto out;
                }
                continue;
            }
            if (st == MP_FEED_PAUSED) {
                status = MP_FEED_PAUSED;
                goto out;
            }
            continue;
        }

        /* "block" section (disk pre-copy, <= 9.0) */
        case Q_BLK_HDR: {
            if (p->acc.have == 0)
                p->rec_start = AT(pos);
            TAKE(8);
            guint64 v = mp_be64(d);
            p->blk_flags = v & ((1u << MP_BLK_SECTOR_BITS) - 1);
            p->blk_addr = v >> MP_BLK_SECTOR_BITS;
            guint32 known = MP_BLK_MIG_FLAG_DEVICE_BLOCK | MP_BLK_MIG_FLAG_EOS
                            | MP_BLK_MIG_FLAG_PROGRESS
                            | MP_BLK_MIG_FLAG_ZERO_BLOCK;
            if ((p->blk_flags & ~known) || p->blk_flags == 0)
                FAIL(MP_PARSE_ERROR_RAM_FLAGS,
                     "%s: unknown block migration flags 0x%x at offset %"
                     G_GUINT64_FORMAT,
                     p->channel, p->blk_flags, p->rec_start);
            if (p->blk_flags & MP_BLK_MIG_FLAG_DEVICE_BLOCK) {
                p->state = Q_BLK_NAMELEN;
                continue;
            }
            if (p->blk_flags & MP_BLK_MIG_FLAG_PROGRESS) {
                rec.kind = MP_REC_BLK_PROGRESS;
                rec.u.blk.flags = p->blk_flags;
                rec.u.blk.progress = p->blk_addr;
                p->state = (p->blk_flags & MP_BLK_MIG_FLAG_EOS) ? Q_FOOTER_PEEK
                                                                : Q_BLK_HDR;
                goto emit;
            }
            /* block_load@7.2: anything else must carry EOS */
            if (!(p->blk_flags & MP_BLK_MIG_FLAG_EOS))
                FAIL(MP_PARSE_ERROR_RAM_FLAGS,
                     "%s: block migration flags 0x%x at offset %"
                     G_GUINT64_FORMAT " (ZERO_BLOCK without DEVICE_BLOCK)",
                     p->channel, p->blk_flags, p->rec_start);
            goto blk_eos;
        }
        case Q_BLK_NAMELEN:
            TAKE(1);
            p->n = d[0];
            p->state = Q_BLK_NAME;
            if (p->n)
                continue;
            d = pos;
            goto blk_name;
        case Q_BLK_NAME:
            TAKE(p->n);
        blk_name:
            memcpy(p->blk_device, d, p->n);
            p->blk_device[p->n] = 0;
            if (p->blk_flags & MP_BLK_MIG_FLAG_ZERO_BLOCK)
                goto blk_block_done;
            p->blk_left = MP_BLK_MIG_BLOCK_SIZE;
            p->blk_contig = TRUE;
            p->blk_data = NULL;
            p->state = Q_BLK_DATA;
            continue;
        case Q_BLK_DATA: {
            /* 1 MiB chunks are streamed, never gathered */
            gsize n = MIN((gsize)(lim - pos), p->blk_left);
            if (p->blk_left == MP_BLK_MIG_BLOCK_SIZE)
                p->blk_data = pos;
            if (n < p->blk_left && p->blk_left == MP_BLK_MIG_BLOCK_SIZE)
                p->blk_contig = FALSE;
            pos += n;
            p->blk_left -= n;
            if (p->blk_left)
                continue;
        }
        blk_block_done:
            rec.kind = MP_REC_BLK_BLOCK;
            rec.u.blk.device = p->blk_device;
            rec.u.blk.sector = p->blk_addr;
            rec.u.blk.flags = p->blk_flags;
            rec.u.blk.zero = !!(p->blk_flags & MP_BLK_MIG_FLAG_ZERO_BLOCK);
            rec.u.blk.data = (!rec.u.blk.zero && p->blk_contig) ? p->blk_data
                                                                : NULL;
            if (p->blk_flags & MP_BLK_MIG_FLAG_EOS) {
                /* EOS may ride on a data record; report both */
                p->state = Q_FOOTER_PEEK;
            } else {
                p->state = Q_BLK_HDR;
            }
            goto emit;
        blk_eos:
            rec.kind = MP_REC_BLK_EOS;
            p->state = Q_FOOTER_PEEK;
            goto emit;

        /* device (FULL) section sliced by the vmdesc */
        case Q_DEV_BODY: {
            gsize n = MIN((guint64)(lim - pos), p->dev_left);
            if (!p->dev_data) {
                p->dev_data = pos;
                p->rec_start = AT(pos);
            }
            if (n < p->dev_left)
                p->dev_contig = FALSE;
            pos += n;
            p->dev_left -= n;
            if (p->dev_left)
                continue;
            rec.kind = MP_REC_DEVICE_DATA;
            rec.u.raw.data = p->dev_contig ? p->dev_data : NULL;
            rec.u.raw.len = (guint32)MIN(AT(pos) - p->rec_start, G_MAXUINT32);
            p->state = Q_FOOTER_PEEK;
            goto emit;
        }

        case Q_FOOTER_PEEK:
            p->rec_start = AT(pos);
            if (*pos == MP_QMIG_SECTION_FOOTER && !p->no_footers) {
                p->footers_seen = TRUE;
                p->state = Q_FOOTER;
                continue;
            }
            if (p->footers_seen)
                FAIL(MP_PARSE_ERROR_SECTION,
                     "%s: byte 0x%02x at offset %" G_GUINT64_FORMAT
                     " where the footer of section %u (\"%s\") belongs "
                     "(expected 0x7e)",
                     p->channel, *pos, AT(pos), p->cur->info.section_id,
                     p->cur->idstr);
            /* streams of machine types <= 2.3 have no footers */
            p->no_footers = TRUE;
            p->state = Q_TOP;
            continue;
        case Q_FOOTER:
            TAKE(5);
            if (mp_be32(d + 1) != p->cur->info.section_id)
                FAIL(MP_PARSE_ERROR_SECTION,
                     "%s: footer at offset %" G_GUINT64_FORMAT
                     " names section %u inside section %u (\"%s\")",
                     p->channel, p->rec_start, mp_be32(d + 1),
                     p->cur->info.section_id, p->cur->idstr);
            rec.kind = MP_REC_SECTION_FOOTER;
            rec.u.sect = p->cur->info;
            p->state = Q_TOP;
            goto emit;

        /* commands */
        case Q_CMD_HDR:
            TAKE(4);
            p->cmd = mp_be16(d);
            p->cmd_len = mp_be16(d + 2);
            p->state = Q_CMD_PAYLOAD;
            if (p->cmd_len)
                continue;
            d = pos;
            goto cmd_payload;
        case Q_CMD_PAYLOAD:
            TAKE(p->cmd_len);
        cmd_payload: {
            GError *err = NULL;
            rec.kind = MP_REC_COMMAND;
            rec.section = NULL;
            rec.u.cmd.cmd = p->cmd;
            rec.u.cmd.len = p->cmd_len;
            if (!decode_command(p, &rec.u.cmd, d, block, &err)) {
                p->error = err;
                goto fail;
            }
            p->state = Q_TOP;
            if (p->cmd == MP_QMIG_CMD_POSTCOPY_ADVISE && p->cmd_len == 16)
                mp_ram_parser_set_postcopy_summary(p->ram,
                                                   rec.u.cmd.advise_summary);
            if (p->cmd == MP_QMIG_CMD_PACKAGED) {
                if (p->in_package)
                    FAIL(MP_PARSE_ERROR_COMMAND,
                         "%s: PACKAGED inside PACKAGED at offset %"
                         G_GUINT64_FORMAT,
                         p->channel, p->rec_start);
                p->in_package = TRUE;
                p->pkg_end = AT(pos) + rec.u.cmd.packaged_len;
            }
            goto emit;
        }

        /* after EOF: the vmdesc, or nothing */
        case Q_AFTER_EOF:
            p->rec_start = AT(pos);
            if (*pos != MP_QMIG_VMDESCRIPTION)
                FAIL(MP_PARSE_ERROR_SECTION_TYPE,
                     "%s: byte 0x%02x at offset %" G_GUINT64_FORMAT
                     " after EOF (expected VMDESCRIPTION 0x06 or the end)",
                     p->channel, *pos, AT(pos));
            pos++;
            p->state = Q_VMDESC_LEN;
            continue;
        case Q_VMDESC_LEN:
            TAKE(4);
            p->vmdesc_len = mp_be32(d);
            if (p->vmdesc_len > MAX_VMDESC)
                FAIL(MP_PARSE_ERROR_LENGTH,
                     "%s: VMDESCRIPTION of %u bytes at offset %" G_GUINT64_FORMAT
                     " (at most %u accepted)",
                     p->channel, p->vmdesc_len, p->rec_start, MAX_VMDESC);
            p->vmdesc_buf = g_try_malloc(p->vmdesc_len + 1);
            if (!p->vmdesc_buf)
                FAIL(MP_PARSE_ERROR_LENGTH,
                     "%s: no memory for a VMDESCRIPTION of %u bytes",
                     p->channel, p->vmdesc_len);
            p->vmdesc_have = 0;
            p->state = Q_VMDESC;
            if (p->vmdesc_len)
                continue;
            goto vmdesc_done;
        case Q_VMDESC: {
            gsize n = MIN((gsize)(lim - pos), p->vmdesc_len - p->vmdesc_have);
            memcpy(p->vmdesc_buf + p->vmdesc_have, pos, n);
            p->vmdesc_have += n;
            pos += n;
            if (p->vmdesc_have < p->vmdesc_len)
                continue;
        }
        vmdesc_done:
            p->vmdesc_buf[p->vmdesc_len] = 0;
            rec.kind = MP_REC_VMDESC;
            rec.section = NULL;
            rec.u.vmdesc.json = (const char *)p->vmdesc_buf;
            rec.u.vmdesc.len = p->vmdesc_len;
            p->state = Q_DONE;
            status = MP_FEED_END;
            goto emit;

        case Q_DONE:
            goto out;

        case Q_OPAQUE:
            rec.kind = MP_REC_OPAQUE;
            rec.offset = AT(pos);
            rec.length = lim - pos;
            rec.u.raw.data = pos;
            rec.u.raw.len = lim - pos;
            if (!p->opaque_announced) {
                rec.u.raw.why = p->opaque_why;
                p->opaque_announced = TRUE;
            }
            pos = lim;
            if (p->cb(&rec, p->user_data) == MP_REC_PAUSE) {
                status = MP_FEED_PAUSED;
                goto out;
            }
            continue;
        }
        g_assert_not_reached();

    emit:
        rec.offset = p->rec_start;
        rec.length = AT(pos) - p->rec_start;
        if (p->cb(&rec, p->user_data) == MP_REC_PAUSE && status == MP_FEED_MORE)
            status = MP_FEED_PAUSED;
        if (status != MP_FEED_MORE)
            goto out;
        continue;
    next:
        /* TAKE ran out of input (or hit the package end) */
        if (pos == end)
            break;
    }

out:
    *consumed = pos - buf;
    p->off += *consumed;
    return status;

fail:
    *consumed = pos - buf;
    p->off += *consumed;
    if (error)
        *error = g_error_copy(p->error);
    return MP_FEED_ERROR;
#undef AT
#undef FAIL
#undef TAKE
}

gboolean
mp_qmig_parser_finish(MpQmigParser *p, GError **error)
{
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
    g_set_error(error, MP_PARSE_ERROR, MP_PARSE_ERROR_TRUNCATED,
                "%s: stream ends at offset %" G_GUINT64_FORMAT " inside %s%s",
                p->channel, p->off, state_what(p->state),
                p->in_package ? " (in a PACKAGED blob)" : "");
    return FALSE;
}
