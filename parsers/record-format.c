/* record-format.c: one line of text per record, for golden event files,
 * `migproxy analyze --events` and test comparisons.  The format is stable:
 *   off=4107 len=4105 ram_page block="pc.ram" addr=0x1000 kind=normal
 */
#include "parse-common.h"
#include "record-format.h"

static void
describe_section(GString *s, const MpSectionInfo *si)
{
    static const char *const types[] = {"?", "start", "part", "end", "full"};
    g_string_append_printf(s, " type=%s id=%u",
                           si->type <= 4 ? types[si->type] : "?",
                           si->section_id);
    if (si->idstr)
        g_string_append_printf(s, " idstr=\"%s\" instance=%u version=%u",
                               si->idstr, si->instance_id, si->version_id);
}

static void
describe(const MpRecord *r, GString *s)
{
    g_string_append_printf(s, "off=%" G_GUINT64_FORMAT " len=%" G_GUINT64_FORMAT
                              " %s",
                           r->offset, r->length, mp_record_kind_name(r->kind));
    switch (r->kind) {
    case MP_REC_STREAM_HEADER:
        g_string_append_printf(s, " magic=0x%x version=%u",
                               r->u.header.magic, r->u.header.version);
        break;
    case MP_REC_CONFIGURATION:
        g_string_append_printf(s, " machine=\"%s\"%s%s", r->u.config.machine,
                               r->u.config.x_ignore_shared
                                   ? " x-ignore-shared" : "",
                               r->u.config.mapped_ram ? " mapped-ram" : "");
        break;
    case MP_REC_SECTION_HEADER:
    case MP_REC_SECTION_FOOTER:
        describe_section(s, &r->u.sect);
        break;
    case MP_REC_COMMAND:
        g_string_append_printf(s, " cmd=%s len=%u",
                               mp_qmig_command_name(r->u.cmd.cmd),
                               r->u.cmd.len);
        switch (r->u.cmd.cmd) {
        case MP_QMIG_CMD_PING:
            g_string_append_printf(s, " value=%u", r->u.cmd.ping_value);
            break;
        case MP_QMIG_CMD_PACKAGED:
            g_string_append_printf(s, " packaged=%u", r->u.cmd.packaged_len);
            break;
        case MP_QMIG_CMD_POSTCOPY_ADVISE:
            if (r->u.cmd.len == 16)
                g_string_append_printf(
                    s, " summary=0x%" G_GINT64_MODIFIER "x tps=%" G_GUINT64_FORMAT,
                    r->u.cmd.advise_summary, r->u.cmd.advise_target_page_size);
            break;
        case MP_QMIG_CMD_POSTCOPY_RAM_DISCARD:
            g_string_append_printf(s, " block=\"%s\" ranges=%u",
                                   r->u.cmd.block, r->u.cmd.discard_count);
            break;
        case MP_QMIG_CMD_RECV_BITMAP:
            g_string_append_printf(s, " block=\"%s\"", r->u.cmd.block);
            break;
        default:
            break;
        }
        break;
    case MP_REC_VMDESC:
        g_string_append_printf(s, " json_len=%u", r->u.vmdesc.len);
        break;
    case MP_REC_DEVICE_DATA:
    case MP_REC_OPAQUE:
        g_string_append_printf(s, " bytes=%u", r->u.raw.len);
        if (r->u.raw.why)
            g_string_append_printf(s, " why=\"%s\"", r->u.raw.why);
        break;
    case MP_REC_RAM_MEM_SIZE:
        g_string_append_printf(s, " total=%" G_GUINT64_FORMAT,
                               r->u.mem_size.total);
        break;
    case MP_REC_RAM_BLOCK:
        g_string_append_printf(s, " block=\"%s\" used=%" G_GUINT64_FORMAT,
                               r->u.block.name, r->u.block.used_length);
        if (r->u.block.page_size)
            g_string_append_printf(s, " page_size=%" G_GUINT64_FORMAT,
                                   r->u.block.page_size);
        if (r->u.block.has_mr_addr)
            g_string_append_printf(s, " mr_addr=0x%" G_GINT64_MODIFIER "x",
                                   r->u.block.mr_addr);
        break;
    case MP_REC_RAM_PAGE:
        g_string_append_printf(s,
                               " block=\"%s\" addr=0x%" G_GINT64_MODIFIER
                               "x kind=%s%s",
                               r->u.page.block, r->u.page.addr,
                               mp_page_kind_name(r->u.page.kind),
                               (r->u.page.flags & MP_RAM_SAVE_FLAG_CONTINUE)
                                   ? " cont" : "");
        if (r->u.page.kind != MP_PAGE_NORMAL)
            g_string_append_printf(s, " payload=%u", r->u.page.payload_len);
        break;
    case MP_REC_BLK_BLOCK:
        g_string_append_printf(s,
                               " device=\"%s\" sector=%" G_GUINT64_FORMAT "%s",
                               r->u.blk.device, r->u.blk.sector,
                               r->u.blk.zero ? " zero" : "");
        break;
    case MP_REC_BLK_PROGRESS:
        g_string_append_printf(s, " percent=%" G_GUINT64_FORMAT,
                               r->u.blk.progress);
        break;
    case MP_REC_RP_MESSAGE:
        g_string_append_printf(s, " type=%s len=%u",
                               mp_rp_message_name(r->u.rp.type), r->u.rp.len);
        switch (r->u.rp.type) {
        case MP_RP_MSG_SHUT:
        case MP_RP_MSG_PONG:
        case MP_RP_MSG_RESUME_ACK:
            g_string_append_printf(s, " value=%u", r->u.rp.value);
            break;
        case MP_RP_MSG_REQ_PAGES:
        case MP_RP_MSG_REQ_PAGES_ID:
            g_string_append_printf(s,
                                   " block=\"%s\" start=0x%" G_GINT64_MODIFIER
                                   "x req_len=%u",
                                   r->u.rp.block ? r->u.rp.block : "",
                                   r->u.rp.start, r->u.rp.req_len);
            break;
        case MP_RP_MSG_RECV_BITMAP:
            g_string_append_printf(s, " block=\"%s\"", r->u.rp.block);
            break;
        default:
            break;
        }
        break;
    case MP_REC_RP_BITMAP:
        g_string_append_printf(s, " block=\"%s\" size=%" G_GUINT64_FORMAT,
                               r->u.rp.block ? r->u.rp.block : "",
                               r->u.rp.bitmap_size);
        break;
    case MP_REC_MFD_INIT:
        g_string_append_printf(s, " id=%u", r->u.mfd.channel_id);
        break;
    case MP_REC_MFD_PACKET:
        g_string_append_printf(s,
                               " flags=0x%x normal=%u zero=%u next=%u num=%"
                               G_GUINT64_FORMAT " block=\"%s\"",
                               r->u.mfd.flags, r->u.mfd.normal_pages,
                               r->u.mfd.zero_pages, r->u.mfd.next_packet_size,
                               r->u.mfd.packet_num,
                               r->u.mfd.block ? r->u.mfd.block : "");
        if (!r->u.mfd.pages_follow)
            g_string_append(s, " undecoded");
        break;
    case MP_REC_MFD_PAGE:
        g_string_append_printf(s,
                               " block=\"%s\" addr=0x%" G_GINT64_MODIFIER "x%s",
                               r->u.mfd.block ? r->u.mfd.block : "",
                               r->u.mfd.addr, r->u.mfd.zero ? " zero" : "");
        break;
    case MP_REC_MFD_DATA:
        g_string_append_printf(s, " bytes=%" G_GUINT64_FORMAT, r->length);
        break;
    case MP_REC_MFD_DEVICE_STATE:
        g_string_append_printf(s, " idstr=\"%s\" instance=%u size=%u",
                               r->u.mfd.block ? r->u.mfd.block : "",
                               r->u.mfd.instance_id,
                               r->u.mfd.next_packet_size);
        break;
    case MP_REC_RESYNC:
        g_string_append_printf(s,
                               " gap_offset=%" G_GUINT64_FORMAT
                               " gap_bytes=%" G_GUINT64_FORMAT
                               " skipped=%" G_GUINT64_FORMAT " at=\"%s\"",
                               r->u.resync.gap_offset, r->u.resync.gap_bytes,
                               r->u.resync.skipped,
                               r->u.resync.what ? r->u.resync.what : "");
        break;
    default:
        break;
    }
}

void
mp_record_describe(const MpRecord *r, GString *s)
{
    gsize from = s->len;

    describe(r, s);
    /* block, section and device names come from the stream: the line
     * stays one line of plain text whatever they hold */
    for (gsize i = from; i < s->len; i++) {
        guchar c = s->str[i];
        if (c < 0x20 || c >= 0x7f) {
            g_autofree char *line = g_strdup(s->str + from);
            g_string_truncate(s, from);
            mp_string_append_printable(s, line);
            break;
        }
    }
}
