/* parse-common.c: error domain, field accumulator and names. */
#include <string.h>
#include "parse-common.h"

G_DEFINE_QUARK(mp-parse-error-quark, mp_parse_error)

void
mp_accum_init(MpAccum *a, gsize cap)
{
    a->buf = g_malloc(cap);
    a->cap = cap;
    a->have = 0;
}

void
mp_accum_clear(MpAccum *a)
{
    g_clear_pointer(&a->buf, g_free);
    a->cap = 0;
    a->have = 0;
}

const guint8 *
mp_accum_take(MpAccum *a, gsize need, MpCursor *in)
{
    gsize avail = mp_cursor_left(in);

    g_assert(need <= a->cap);
    if (a->have == 0 && avail >= need) {
        const guint8 *p = in->pos;
        in->pos += need;
        return p;
    }
    gsize n = MIN(need - a->have, avail);
    memcpy(a->buf + a->have, in->pos, n);
    a->have += n;
    in->pos += n;
    if (a->have < need)
        return NULL;
    a->have = 0;
    return a->buf;
}

void
mp_parse_error_set_valist(GError **error, const char *channel,
                          MpParseErrorCode code, const char *fmt, va_list ap)
{
    if (!error)
        return;
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    g_set_error(error, MP_PARSE_ERROR, code, "%s: %s", channel, msg);
    /* its message may quote a name from the stream */
    mp_error_make_printable(*error);
}

void
mp_parse_error_set(GError **error, const char *channel, MpParseErrorCode code,
                   const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    mp_parse_error_set_valist(error, channel, code, fmt, ap);
    va_end(ap);
}

const char *
mp_record_kind_name(MpRecordKind kind)
{
    static const char *const names[MP_REC__MAX] = {
        [MP_REC_STREAM_HEADER] = "header",
        [MP_REC_CONFIGURATION] = "configuration",
        [MP_REC_SECTION_HEADER] = "section",
        [MP_REC_SECTION_FOOTER] = "footer",
        [MP_REC_COMMAND] = "command",
        [MP_REC_PACKAGED_END] = "packaged_end",
        [MP_REC_EOF] = "eof",
        [MP_REC_VMDESC] = "vmdesc",
        [MP_REC_DEVICE_DATA] = "device_data",
        [MP_REC_OPAQUE] = "opaque",
        [MP_REC_RAM_MEM_SIZE] = "ram_mem_size",
        [MP_REC_RAM_BLOCK] = "ram_block",
        [MP_REC_RAM_PAGE] = "ram_page",
        [MP_REC_RAM_EOS] = "ram_eos",
        [MP_REC_RAM_MULTIFD_FLUSH] = "ram_multifd_flush",
        [MP_REC_BLK_BLOCK] = "blk_block",
        [MP_REC_BLK_PROGRESS] = "blk_progress",
        [MP_REC_BLK_EOS] = "blk_eos",
        [MP_REC_RP_MESSAGE] = "rp_message",
        [MP_REC_RP_BITMAP] = "rp_bitmap",
        [MP_REC_MFD_INIT] = "mfd_init",
        [MP_REC_MFD_PACKET] = "mfd_packet",
        [MP_REC_MFD_PAGE] = "mfd_page",
        [MP_REC_MFD_DATA] = "mfd_data",
        [MP_REC_MFD_DEVICE_STATE] = "mfd_device_state",
        [MP_REC_RESYNC] = "resync",
    };
    return kind < MP_REC__MAX && names[kind] ? names[kind] : "unknown";
}

const char *
mp_page_kind_name(MpPageKind kind)
{
    static const char *const names[MP_PAGE__MAX] = {
        [MP_PAGE_NORMAL] = "normal",
        [MP_PAGE_ZERO] = "zero",
        [MP_PAGE_XBZRLE] = "xbzrle",
        [MP_PAGE_COMPRESSED] = "compressed",
    };
    return kind < MP_PAGE__MAX ? names[kind] : "unknown";
}

const char *
mp_qmig_command_name(guint16 cmd)
{
    static const char *const names[MP_QMIG_CMD__MAX] = {
        [MP_QMIG_CMD_INVALID] = "INVALID",
        [MP_QMIG_CMD_OPEN_RETURN_PATH] = "OPEN_RETURN_PATH",
        [MP_QMIG_CMD_PING] = "PING",
        [MP_QMIG_CMD_POSTCOPY_ADVISE] = "POSTCOPY_ADVISE",
        [MP_QMIG_CMD_POSTCOPY_LISTEN] = "POSTCOPY_LISTEN",
        [MP_QMIG_CMD_POSTCOPY_RUN] = "POSTCOPY_RUN",
        [MP_QMIG_CMD_POSTCOPY_RAM_DISCARD] = "POSTCOPY_RAM_DISCARD",
        [MP_QMIG_CMD_PACKAGED] = "PACKAGED",
        [MP_QMIG_CMD_ENABLE_COLO] = "ENABLE_COLO",
        [MP_QMIG_CMD_POSTCOPY_RESUME] = "POSTCOPY_RESUME",
        [MP_QMIG_CMD_RECV_BITMAP] = "RECV_BITMAP",
        [MP_QMIG_CMD_SWITCHOVER_START] = "SWITCHOVER_START",
    };
    return cmd < MP_QMIG_CMD__MAX ? names[cmd] : "UNKNOWN";
}

const char *
mp_rp_message_name(guint16 type)
{
    static const char *const names[MP_RP_MSG__MAX] = {
        [MP_RP_MSG_INVALID] = "INVALID",
        [MP_RP_MSG_SHUT] = "SHUT",
        [MP_RP_MSG_PONG] = "PONG",
        [MP_RP_MSG_REQ_PAGES_ID] = "REQ_PAGES_ID",
        [MP_RP_MSG_REQ_PAGES] = "REQ_PAGES",
        [MP_RP_MSG_RECV_BITMAP] = "RECV_BITMAP",
        [MP_RP_MSG_RESUME_ACK] = "RESUME_ACK",
        [MP_RP_MSG_SWITCHOVER_ACK] = "SWITCHOVER_ACK",
    };
    return type < MP_RP_MSG__MAX ? names[type] : "UNKNOWN";
}

/* json-c's heap per value, measured with json-c 0.16 on x86-64 (peak RSS
 * over parsing 2^17 to 2^20 copies of one value): an object about 890
 * bytes (its hash table starts with 16 slots), an array or an object
 * member 150 to 180, a scalar 70 to 90.  Rounded up; an array element
 * counts its ',' and its own '[', so arrays of arrays count twice. */
#define JSON_COST_OBJECT 1024
#define JSON_COST_VALUE  192

guint64
mp_json_heap_estimate(const char *json, gsize len)
{
    guint64 objects = 0, values = 1;
    gboolean in_string = FALSE;

    for (gsize i = 0; i < len; i++) {
        char ch = json[i];
        if (in_string) {
            if (ch == '\\')
                i++;
            else if (ch == '"')
                in_string = FALSE;
        } else if (ch == '"') {
            in_string = TRUE;
        } else if (ch == '{') {
            objects++;
        } else if (ch == '[' || ch == ',') {
            values++;
        }
    }
    return objects * JSON_COST_OBJECT + values * JSON_COST_VALUE + len;
}

static gboolean
printable_byte(guchar c)
{
    return c >= 0x20 && c < 0x7f;
}

void
mp_string_append_printable(GString *out, const char *s)
{
    if (!s) {
        g_string_append(out, "(null)");
        return;
    }
    for (const guchar *p = (const guchar *)s; *p; p++) {
        const guchar *run = p;
        while (*p && printable_byte(*p))
            p++;
        g_string_append_len(out, (const char *)run, p - run);
        if (!*p)
            break;
        switch (*p) {
        case '\n':
            g_string_append(out, "\\n");
            break;
        case '\r':
            g_string_append(out, "\\r");
            break;
        case '\t':
            g_string_append(out, "\\t");
            break;
        default:
            g_string_append_printf(out, "\\x%02x", *p);
        }
    }
}

char *
mp_printable(const char *s)
{
    GString *out = g_string_new(NULL);
    mp_string_append_printable(out, s);
    return g_string_free(out, FALSE);
}

void
mp_error_make_printable(GError *e)
{
    if (!e || !e->message)
        return;
    for (const guchar *p = (const guchar *)e->message; *p; p++) {
        if (!printable_byte(*p)) {
            char *clean = mp_printable(e->message);
            g_free(e->message);
            e->message = clean;
            return;
        }
    }
}
