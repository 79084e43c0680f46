/* ram-parser.c: RAM records (QEMU migration/ram.c, names only).
 *
 *   be64 offset_in_block | flags          flags = low bits (page_size - 1)
 *   [u8 n, idstr[n]]                      unless flags & CONTINUE
 *   payload by flags & ~CONTINUE:
 *     MEM_SIZE       offset field = total; then per block until the total
 *                    is reached: u8 n, idstr, be64 used_length,
 *                    [be64 page_size] [be64 mr_addr]
 *     ZERO           u8 fill
 *     PAGE           page_size bytes
 *     XBZRLE         u8 0x01, be16 len (<= page_size), len bytes
 *     COMPRESS_PAGE  be32 len (<= zlib compressBound), len bytes (7.2)
 *     EOS            -                  ends the section body
 *     MULTIFD_FLUSH  -                  [8.1+]
 *
 * The "current block" for CONTINUE belongs to the channel: it survives
 * EOS and section boundaries, exactly as the destination keeps it.
 */
#include <string.h>
#include "ram-parser.h"
#include "xbzrle.h"

#define MAX_BLOCKS 4096

typedef enum {
    R_HDR,
    R_IDLEN,
    R_ID,
    R_ZERO,
    R_PAGE,
    R_XBZ_HDR,
    R_XBZ_DATA,
    R_COMP_LEN,
    R_COMP_DATA,
    R_BL_IDLEN,
    R_BL_ID,
    R_BL_USED,
    R_BL_PSIZE,     /* decide whether a page_size field follows */
    R_BL_PSIZE_VAL, /* take it */
    R_BL_MRADDR,
} RamState;

struct MpRamParser {
    char *channel;
    guint32 page_size;
    MpRecordFunc cb;
    gpointer user_data;

    RamState state;
    guint64 off;       /* stream offset of buf[0] during a feed */
    guint64 rec_start; /* offset of the current record's first byte */
    GError *error;     /* sticky */
    MpAccum acc;

    /* a record header read while looking for the last block's page size */
    guint64 pending_hdr;
    guint64 pending_start;
    gboolean have_pending;

    /* current record */
    guint64 hdr_addr;
    guint32 hdr_flags;
    guint32 payload_len;

    /* per-channel CONTINUE state */
    char block[256];
    gboolean have_block;
    guint64 block_used; /* used_length of `block`, 0 if unknown */

    /* block list (MEM_SIZE) */
    guint64 postcopy_summary;
    gboolean ignore_shared;
    GHashTable *blocks; /* idstr -> guint64* used_length */
    const MpRamParser *shared;
    guint64 list_remaining;
    guint64 ram_total;
    MpRamBlockInfo bl;
    char bl_name[256];

    const MpSectionInfo *section;
};

MpRamParser *
mp_ram_parser_new(const char *channel, guint32 page_size, MpRecordFunc cb,
                  gpointer user_data)
{
    MpRamParser *p = g_new0(MpRamParser, 1);

    g_return_val_if_fail(page_size >= 512 && page_size <= MP_MAX_PAGE_SIZE
                             && (page_size & (page_size - 1)) == 0,
                         NULL);
    p->channel = g_strdup(channel);
    p->page_size = page_size;
    p->cb = cb;
    p->user_data = user_data;
    /* largest field: a compressed page (zlib bound of one page) */
    mp_accum_init(&p->acc, page_size + page_size / 16 + 64);
    p->blocks = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    return p;
}

void
mp_ram_parser_free(MpRamParser *p)
{
    if (!p)
        return;
    g_free(p->channel);
    g_clear_error(&p->error);
    mp_accum_clear(&p->acc);
    g_hash_table_destroy(p->blocks);
    g_free(p);
}

void
mp_ram_parser_set_postcopy_summary(MpRamParser *p, guint64 summary)
{
    p->postcopy_summary = summary;
}

void
mp_ram_parser_set_ignore_shared(MpRamParser *p, gboolean on)
{
    p->ignore_shared = on;
}

void
mp_ram_parser_set_section(MpRamParser *p, const MpSectionInfo *section)
{
    p->section = section;
}

void
mp_ram_parser_set_offset(MpRamParser *p, guint64 offset)
{
    p->off = offset;
}

guint64
mp_ram_parser_offset(const MpRamParser *p)
{
    return p->off;
}

void
mp_ram_parser_share_blocks(MpRamParser *p, const MpRamParser *main)
{
    p->shared = main;
}

void
mp_ram_parser_inherit(MpRamParser *p, const MpRamParser *prev)
{
    GHashTableIter it;
    gpointer key, value;

    g_hash_table_remove_all(p->blocks);
    g_hash_table_iter_init(&it, prev->blocks);
    while (g_hash_table_iter_next(&it, &key, &value))
        g_hash_table_insert(p->blocks, g_strdup(key), g_memdup2(value, 8));
    p->ram_total = prev->ram_total;
    p->postcopy_summary = prev->postcopy_summary;
    p->ignore_shared = prev->ignore_shared;
    /* the destination's last_recv_block outlives the channel */
    memcpy(p->block, prev->block, sizeof(p->block));
    p->have_block = prev->have_block;
    p->block_used = prev->block_used;
}

guint64
mp_ram_parser_ram_total(const MpRamParser *p)
{
    return p->ram_total;
}

static GHashTable *
block_table(const MpRamParser *p)
{
    return p->shared ? p->shared->blocks : p->blocks;
}

/* zlib's compressBound() for one page: the most a COMPRESS_PAGE holds. */
static guint32
compress_bound(guint32 n)
{
    return n + (n >> 12) + (n >> 14) + (n >> 25) + 13;
}

static const char *
state_what(RamState s)
{
    switch (s) {
    case R_HDR:
        return "RAM record header";
    case R_IDLEN:
    case R_ID:
        return "RAMBlock id of a RAM record";
    case R_ZERO:
        return "ZERO fill byte";
    case R_PAGE:
        return "RAM page";
    case R_XBZ_HDR:
    case R_XBZ_DATA:
        return "XBZRLE page";
    case R_COMP_LEN:
    case R_COMP_DATA:
        return "compressed page";
    default:
        return "RAM block list";
    }
}

/* The bulk of a precopy stream is PAGE and ZERO records with CONTINUE,
 * one per 4 KiB.  This emits those that are whole in the buffer without
 * the state machine and its per-step record reset (which was 40 % of the
 * parser's time), from a record cleared once per call.  It stops at any
 * other record, a split one, or a page that the general path would reject
 * (which then reports it), leaving *pos at that record's first byte.
 * @return MP_FEED_PAUSED if a callback paused, else MP_FEED_MORE. */
static MpFeedStatus
fast_pages(MpRamParser *p, const guint8 *buf, const guint8 **pos_io,
           const guint8 *end)
{
    const guint8 *pos = *pos_io;
    const guint32 ps = p->page_size;
    MpFeedStatus status = MP_FEED_MORE;
    MpRecord rec;

    memset(&rec, 0, sizeof(rec));
    rec.kind = MP_REC_RAM_PAGE;
    rec.section = p->section;
    rec.u.page.block = p->block;
    rec.u.page.size = ps;
    while (end - pos >= 9) {
        guint64 v = mp_be64(pos);
        guint32 flags = v & (ps - 1);
        guint64 addr = v & ~(guint64)(ps - 1);
        gsize n;

        if (flags == (MP_RAM_SAVE_FLAG_CONTINUE | MP_RAM_SAVE_FLAG_PAGE)) {
            n = 8 + (gsize)ps;
            rec.u.page.kind = MP_PAGE_NORMAL;
            rec.u.page.payload_len = ps;
        } else if (flags
                   == (MP_RAM_SAVE_FLAG_CONTINUE | MP_RAM_SAVE_FLAG_ZERO)) {
            n = 9;
            rec.u.page.kind = MP_PAGE_ZERO;
            rec.u.page.payload_len = 1;
        } else {
            break;
        }
        if ((gsize)(end - pos) < n
            || (p->block_used
                && (addr >= p->block_used || p->block_used - addr < ps)))
            break;
        p->rec_start = p->off + (guint64)(pos - buf);
        p->hdr_addr = addr;
        p->hdr_flags = flags;
        rec.offset = p->rec_start;
        rec.length = n;
        rec.u.page.addr = addr;
        rec.u.page.flags = flags;
        rec.u.page.payload = pos + 8;
        pos += n;
        if (p->cb(&rec, p->user_data) == MP_REC_PAUSE) {
            status = MP_FEED_PAUSED;
            break;
        }
    }
    *pos_io = pos;
    return status;
}

MpFeedStatus
mp_ram_parser_feed(MpRamParser *p, const guint8 *buf, gsize len,
                   gsize *consumed, GError **error)
{
    const guint8 *pos = buf, *end = buf + len;
    const guint8 *d;
    MpRecord rec;
    MpFeedStatus status = MP_FEED_MORE;
    guint64 hold; /* bytes taken that belong to the next record */

#define AT(ptr) (p->off + (guint64)((ptr) - buf))
#define FAIL(code, ...)                                                       \
    do {                                                                      \
        g_set_error(&p->error, MP_PARSE_ERROR, (code), __VA_ARGS__);          \
        goto fail;                                                            \
    } while (0)
#define TAKE(n)                                                               \
    do {                                                                      \
        MpCursor c_ = {buf, pos, end, 0};                                     \
        d = mp_accum_take(&p->acc, (n), &c_);                                 \
        pos = c_.pos;                                                         \
        if (!d)                                                               \
            goto out;                                                         \
    } while (0)

    *consumed = 0;
    if (p->error) {
        if (error)
            *error = g_error_copy(p->error);
        return MP_FEED_ERROR;
    }

    while (pos < end || p->have_pending) {
        if (p->state == R_HDR && p->have_block && p->acc.have == 0
            && !p->have_pending) {
            status = fast_pages(p, buf, &pos, end);
            if (status != MP_FEED_MORE || pos == end)
                break;
        }
        memset(&rec, 0, sizeof(rec));
        rec.section = p->section;
        hold = 0;
        switch (p->state) {
        case R_HDR: {
            guint64 v;
            if (p->have_pending) {
                v = p->pending_hdr;
                p->rec_start = p->pending_start;
                p->have_pending = FALSE;
            } else {
                if (p->acc.have == 0)
                    p->rec_start = AT(pos);
                TAKE(8);
                v = mp_be64(d);
            }
            p->hdr_flags = v & (p->page_size - 1);
            p->hdr_addr = v & ~(guint64)(p->page_size - 1);
            guint32 type = p->hdr_flags & ~MP_RAM_SAVE_FLAG_CONTINUE;
            switch (type) {
            case MP_RAM_SAVE_FLAG_MEM_SIZE:
                if (p->hdr_flags & MP_RAM_SAVE_FLAG_CONTINUE)
                    FAIL(MP_PARSE_ERROR_RAM_FLAGS,
                         "%s: MEM_SIZE with CONTINUE at offset %" G_GUINT64_FORMAT,
                         p->channel, p->rec_start);
                if (p->ignore_shared && p->postcopy_summary
                    && p->postcopy_summary != p->page_size)
                    FAIL(MP_PARSE_ERROR_UNSUPPORTED,
                         "%s: block list at offset %" G_GUINT64_FORMAT
                         " mixes x-ignore-shared with huge-page postcopy; "
                         "its optional fields cannot be told apart",
                         p->channel, p->rec_start);
                rec.kind = MP_REC_RAM_MEM_SIZE;
                rec.u.mem_size.total = p->hdr_addr;
                p->list_remaining = p->hdr_addr;
                p->ram_total = p->hdr_addr;
                g_hash_table_remove_all(p->blocks);
                p->have_block = FALSE;
                p->state = p->list_remaining ? R_BL_IDLEN : R_HDR;
                goto emit;
            case MP_RAM_SAVE_FLAG_EOS:
                rec.kind = MP_REC_RAM_EOS;
                p->state = R_HDR;
                status = MP_FEED_END;
                goto emit;
            case MP_RAM_SAVE_FLAG_MULTIFD_FLUSH:
                rec.kind = MP_REC_RAM_MULTIFD_FLUSH;
                p->state = R_HDR;
                goto emit;
            case MP_RAM_SAVE_FLAG_ZERO:
            case MP_RAM_SAVE_FLAG_PAGE:
            case MP_RAM_SAVE_FLAG_XBZRLE:
            case MP_RAM_SAVE_FLAG_COMPRESS_PAGE:
                if (p->hdr_flags & MP_RAM_SAVE_FLAG_CONTINUE) {
                    if (!p->have_block)
                        FAIL(MP_PARSE_ERROR_NO_BLOCK,
                             "%s: RAM record with CONTINUE but no previous "
                             "block at offset %" G_GUINT64_FORMAT,
                             p->channel, p->rec_start);
                    goto have_block;
                }
                p->state = R_IDLEN;
                continue;
            case MP_RAM_SAVE_FLAG_HOOK:
                FAIL(MP_PARSE_ERROR_UNSUPPORTED,
                     "%s: RAM_SAVE_FLAG_HOOK (RDMA) at offset %" G_GUINT64_FORMAT
                     " is not supported",
                     p->channel, p->rec_start);
            default:
                FAIL(MP_PARSE_ERROR_RAM_FLAGS,
                     "%s: unknown RAM flags 0x%x at offset %" G_GUINT64_FORMAT
                     " (expected one of ZERO, MEM_SIZE, PAGE, EOS, XBZRLE, "
                     "COMPRESS_PAGE, MULTIFD_FLUSH, optionally with CONTINUE)",
                     p->channel, p->hdr_flags, p->rec_start);
            }
        }
        case R_IDLEN:
            TAKE(1);
            if (d[0] == 0)
                FAIL(MP_PARSE_ERROR_RAM_FLAGS,
                     "%s: empty RAMBlock id at offset %" G_GUINT64_FORMAT,
                     p->channel, AT(pos) - 1);
            p->payload_len = d[0];
            p->state = R_ID;
            continue;
        case R_ID: {
            TAKE(p->payload_len);
            memcpy(p->block, d, p->payload_len);
            p->block[p->payload_len] = 0;
            p->have_block = TRUE;
            p->block_used = 0;
            GHashTable *t = block_table(p);
            if (g_hash_table_size(t)) {
                guint64 *used = g_hash_table_lookup(t, p->block);
                if (!used) {
                    p->have_block = FALSE;
                    FAIL(MP_PARSE_ERROR_RAM_FLAGS,
                         "%s: RAM record for unknown RAMBlock \"%s\" at "
                         "offset %" G_GUINT64_FORMAT,
                         p->channel, p->block, p->rec_start);
                }
                p->block_used = *used;
            }
        }
        have_block:
            /* (written so that an address near 2^64 cannot wrap) */
            if (p->block_used
                && (p->hdr_addr >= p->block_used
                    || p->block_used - p->hdr_addr < p->page_size))
                FAIL(MP_PARSE_ERROR_LENGTH,
                     "%s: RAM page at 0x%" G_GINT64_MODIFIER
                     "x is past the end of \"%s\" (0x%" G_GINT64_MODIFIER
                     "x bytes) at offset %" G_GUINT64_FORMAT,
                     p->channel, p->hdr_addr, p->block, p->block_used,
                     p->rec_start);
            switch (p->hdr_flags & ~MP_RAM_SAVE_FLAG_CONTINUE) {
            case MP_RAM_SAVE_FLAG_ZERO:
                p->state = R_ZERO;
                break;
            case MP_RAM_SAVE_FLAG_PAGE:
                p->state = R_PAGE;
                break;
            case MP_RAM_SAVE_FLAG_XBZRLE:
                p->state = R_XBZ_HDR;
                break;
            default:
                p->state = R_COMP_LEN;
                break;
            }
            continue;
        case R_ZERO:
            TAKE(1);
            rec.u.page.kind = MP_PAGE_ZERO;
            rec.u.page.payload = d;
            rec.u.page.payload_len = 1;
            goto emit_page;
        case R_PAGE:
            TAKE(p->page_size);
            rec.u.page.kind = MP_PAGE_NORMAL;
            rec.u.page.payload = d;
            rec.u.page.payload_len = p->page_size;
            goto emit_page;
        case R_XBZ_HDR:
            TAKE(3);
            if (d[0] != MP_ENCODING_FLAG_XBZRLE)
                FAIL(MP_PARSE_ERROR_DECODE,
                     "%s: XBZRLE encoding flag 0x%x at offset %" G_GUINT64_FORMAT
                     " (expected 0x1)",
                     p->channel, d[0], AT(pos) - 3);
            p->payload_len = mp_be16(d + 1);
            if (p->payload_len > p->page_size)
                FAIL(MP_PARSE_ERROR_LENGTH,
                     "%s: XBZRLE length %u at offset %" G_GUINT64_FORMAT
                     " exceeds the page size %u",
                     p->channel, p->payload_len, AT(pos) - 2, p->page_size);
            p->state = R_XBZ_DATA;
            if (p->payload_len == 0)
                goto xbz_data;
            continue;
        case R_XBZ_DATA:
            TAKE(p->payload_len);
        xbz_data:
            if (!mp_xbzrle_check(p->payload_len ? d : NULL, p->payload_len,
                                 p->page_size))
                FAIL(MP_PARSE_ERROR_DECODE,
                     "%s: malformed XBZRLE data in the record at offset %"
                     G_GUINT64_FORMAT,
                     p->channel, p->rec_start);
            rec.u.page.kind = MP_PAGE_XBZRLE;
            rec.u.page.payload = p->payload_len ? d : NULL;
            rec.u.page.payload_len = p->payload_len;
            goto emit_page;
        case R_COMP_LEN:
            TAKE(4);
            p->payload_len = mp_be32(d);
            if (p->payload_len == 0
                || p->payload_len > compress_bound(p->page_size))
                FAIL(MP_PARSE_ERROR_LENGTH,
                     "%s: compressed page length %u at offset %" G_GUINT64_FORMAT
                     " (expected 1..%u)",
                     p->channel, p->payload_len, AT(pos) - 4,
                     compress_bound(p->page_size));
            p->state = R_COMP_DATA;
            continue;
        case R_COMP_DATA:
            TAKE(p->payload_len);
            rec.u.page.kind = MP_PAGE_COMPRESSED;
            rec.u.page.payload = d;
            rec.u.page.payload_len = p->payload_len;
            goto emit_page;

        /* the block list of MEM_SIZE */
        case R_BL_IDLEN:
            if (p->acc.have == 0)
                p->rec_start = AT(pos);
            TAKE(1);
            if (d[0] == 0)
                FAIL(MP_PARSE_ERROR_RAM_FLAGS,
                     "%s: empty RAMBlock id in the block list at offset %"
                     G_GUINT64_FORMAT " (%" G_GUINT64_FORMAT
                     " bytes of RAM still unlisted)",
                     p->channel, p->rec_start, p->list_remaining);
            p->payload_len = d[0];
            p->state = R_BL_ID;
            continue;
        case R_BL_ID:
            TAKE(p->payload_len);
            memcpy(p->bl_name, d, p->payload_len);
            p->bl_name[p->payload_len] = 0;
            memset(&p->bl, 0, sizeof(p->bl));
            p->bl.name = p->bl_name;
            p->state = R_BL_USED;
            continue;
        case R_BL_USED:
            TAKE(8);
            p->bl.used_length = mp_be64(d);
            if (p->bl.used_length > p->list_remaining)
                FAIL(MP_PARSE_ERROR_LENGTH,
                     "%s: RAMBlock \"%s\" of %" G_GUINT64_FORMAT
                     " bytes exceeds the %" G_GUINT64_FORMAT
                     " bytes left of MEM_SIZE at offset %" G_GUINT64_FORMAT,
                     p->channel, p->bl_name, p->bl.used_length,
                     p->list_remaining, AT(pos) - 8);
            p->list_remaining -= p->bl.used_length;
            p->state = R_BL_PSIZE;
            continue;
        case R_BL_PSIZE:
            /* A page_size field exists only for blocks whose page size
             * differs from the host's, which the ADVISE summary reveals.
             * It starts with a 0x00 byte where a next id length cannot. */
            if (p->postcopy_summary == 0
                || p->postcopy_summary == p->page_size)
                goto no_page_size;
            if (p->list_remaining) {
                if (*pos != 0)
                    goto no_page_size;
                p->state = R_BL_PSIZE_VAL;
                continue;
            }
            /* Last block: what follows is either its page_size (low bits
             * clear) or the next record's header (some flag set). */
            {
                guint64 v_start = AT(pos) - p->acc.have;
                TAKE(8);
                guint64 v = mp_be64(d);
                if (v & (p->page_size - 1)) {
                    p->pending_hdr = v;
                    p->pending_start = v_start;
                    p->have_pending = TRUE;
                    hold = 8;
                } else {
                    p->bl.page_size = v;
                }
                p->state = R_HDR;
                goto block_done;
            }
        case R_BL_PSIZE_VAL:
            TAKE(8);
            p->bl.page_size = mp_be64(d);
        no_page_size:
            /* the entry is complete unless an mr_addr follows */
            if (p->ignore_shared) {
                p->state = R_BL_MRADDR;
                continue;
            }
            p->state = R_HDR;
            goto block_done;
        case R_BL_MRADDR:
            TAKE(8);
            p->bl.mr_addr = mp_be64(d);
            p->bl.has_mr_addr = TRUE;
            p->state = R_HDR;
            goto block_done;
        }
        g_assert_not_reached();

    block_done:
        if (g_hash_table_size(p->blocks) >= MAX_BLOCKS)
            FAIL(MP_PARSE_ERROR_LENGTH,
                 "%s: more than %d RAMBlocks in the block list at offset %"
                 G_GUINT64_FORMAT,
                 p->channel, MAX_BLOCKS, p->rec_start);
        g_hash_table_insert(p->blocks, g_strdup(p->bl_name),
                            g_memdup2(&p->bl.used_length, 8));
        rec.kind = MP_REC_RAM_BLOCK;
        rec.u.block = p->bl;
        if (p->list_remaining)
            p->state = R_BL_IDLEN;
        goto emit;

    emit_page:
        rec.kind = MP_REC_RAM_PAGE;
        rec.u.page.block = p->block;
        rec.u.page.addr = p->hdr_addr;
        rec.u.page.flags = p->hdr_flags;
        rec.u.page.size = p->page_size;
        p->state = R_HDR;
    emit:
        rec.offset = p->rec_start;
        rec.length = AT(pos) - hold - p->rec_start;
        if (p->cb(&rec, p->user_data) == MP_REC_PAUSE && status != MP_FEED_END)
            status = MP_FEED_PAUSED;
        if (status != MP_FEED_MORE)
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
mp_ram_parser_finish(MpRamParser *p, GError **error)
{
    if (p->error) {
        if (error)
            *error = g_error_copy(p->error);
        return FALSE;
    }
    if (p->state == R_HDR && p->acc.have == 0)
        return TRUE;
    g_set_error(error, MP_PARSE_ERROR, MP_PARSE_ERROR_TRUNCATED,
                "%s: stream ends at offset %" G_GUINT64_FORMAT
                " inside a %s (record started at offset %" G_GUINT64_FORMAT ")",
                p->channel, p->off, state_what(p->state), p->rec_start);
    return FALSE;
}
