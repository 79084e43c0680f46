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
