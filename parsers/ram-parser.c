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
#include <stdarg.h>
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
    R_BL_MAPPED, /* MappedRamHeader */
} RamState;

/* What a state function did; the feed loop acts on it. */
typedef enum {
    RS_NEXT,     /* go on in p->state */
    RS_SHORT,    /* the input ended inside a field */
    RS_EMIT,     /* `rec` is a whole record: report it, go on */
    RS_EMIT_END, /* `rec` is EOS: report it; the section body ended */
    RS_ERROR,    /* p->error is set */
} RamStep;

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
    gboolean mapped_ram;
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
mp_ram_parser_set_mapped_ram(MpRamParser *p, gboolean on)
{
    p->mapped_ram = on;
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
    p->mapped_ram = prev->mapped_ram;
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

guint32
mp_ram_parser_page_size(const MpRamParser *p)
{
    return p->page_size;
}

gboolean
mp_ram_parser_block_used(const MpRamParser *p, const guint8 *name, gsize n,
                         guint64 *used)
{
    GHashTable *t = p->shared ? p->shared->blocks : p->blocks;
    char key[256];

    if (n == 0 || n > 255 || memchr(name, 0, n))
        return FALSE;
    memcpy(key, name, n);
    key[n] = 0;
    guint64 *u = g_hash_table_lookup(t, key);
    if (!u)
        return FALSE;
    *used = *u;
    return TRUE;
}

const char *
mp_ram_parser_current_block(const MpRamParser *p, guint64 *used)
{
    *used = p->block_used;
    return p->have_block ? p->block : NULL;
}

void
mp_ram_parser_resync(MpRamParser *p)
{
    p->state = R_HDR;
    p->acc.have = 0;
    p->have_pending = FALSE;
    p->list_remaining = 0;
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

/* @return what the parser reads in state `s`, for errors ("inside a %s"). */
static const char *
ram_state_name(RamState s)
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
    case R_BL_IDLEN:
    case R_BL_ID:
    case R_BL_USED:
    case R_BL_PSIZE:
    case R_BL_PSIZE_VAL:
    case R_BL_MRADDR:
    case R_BL_MAPPED:
        break;
    }
    return "RAM block list";
}

static RamStep fail(MpRamParser *p, MpParseErrorCode code, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);

/* Sets the sticky error ("CHANNEL: ...").  @return RS_ERROR. */
static RamStep
fail(MpRamParser *p, MpParseErrorCode code, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    mp_parse_error_set_valist(&p->error, p->channel, code, fmt, ap);
    va_end(ap);
    return RS_ERROR;
}

/* The bulk of a precopy stream is PAGE and ZERO records with CONTINUE,
 * one per 4 KiB.  This emits those that are whole in the buffer without
 * the state machine and its per-step record reset (which was 40 % of the
 * parser's time), from a record cleared once per call.  It stops at any
 * other record, a split one, or a page that the general path would reject
 * (which then reports it), leaving in->pos at that record's first byte.
 * @return MP_FEED_PAUSED if a callback paused, else MP_FEED_MORE. */
static MpFeedStatus
fast_pages(MpRamParser *p, MpCursor *in)
{
    const guint8 *pos = in->pos, *end = in->end;
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
        p->rec_start = in->off + (guint64)(pos - in->buf);
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
    in->pos = pos;
    return status;
}

/* Each state below reads from `in`, may fill `rec`, and tells the feed
 * loop what to do next. */

/* MEM_SIZE: the block list follows, until its sizes add up to the total. */
static RamStep
mem_size(MpRamParser *p, MpRecord *rec)
{
    if (p->hdr_flags & MP_RAM_SAVE_FLAG_CONTINUE)
        return fail(p, MP_PARSE_ERROR_RAM_FLAGS,
                    "MEM_SIZE with CONTINUE at offset %" G_GUINT64_FORMAT,
                    p->rec_start);
    if (p->ignore_shared && p->postcopy_summary
        && p->postcopy_summary != p->page_size)
        return fail(p, MP_PARSE_ERROR_UNSUPPORTED,
                    "block list at offset %" G_GUINT64_FORMAT
                    " mixes x-ignore-shared with huge-page postcopy; "
                    "its optional fields cannot be told apart",
                    p->rec_start);
    rec->kind = MP_REC_RAM_MEM_SIZE;
    rec->u.mem_size.total = p->hdr_addr;
    p->list_remaining = p->hdr_addr;
    p->ram_total = p->hdr_addr;
    g_hash_table_remove_all(p->blocks);
    p->have_block = FALSE;
    p->state = p->list_remaining ? R_BL_IDLEN : R_HDR;
    return RS_EMIT;
}

/* The page's block is known: check the address, then read the payload
 * its flags announce. */
static RamStep
page_begins(MpRamParser *p)
{
    /* (written so that an address near 2^64 cannot wrap) */
    if (p->block_used
        && (p->hdr_addr >= p->block_used
            || p->block_used - p->hdr_addr < p->page_size))
        return fail(p, MP_PARSE_ERROR_LENGTH,
                    "RAM page at 0x%" G_GINT64_MODIFIER
                    "x is past the end of \"%s\" (0x%" G_GINT64_MODIFIER
                    "x bytes) at offset %" G_GUINT64_FORMAT,
                    p->hdr_addr, p->block, p->block_used, p->rec_start);
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
    return RS_NEXT;
}

/* be64 offset | flags: what the record is. */
static RamStep
read_hdr(MpRamParser *p, MpCursor *in, MpRecord *rec)
{
    guint64 v;

    if (p->have_pending) {
        v = p->pending_hdr;
        p->rec_start = p->pending_start;
        p->have_pending = FALSE;
    } else {
        const guint8 *d;
        if (p->acc.have == 0)
            p->rec_start = mp_cursor_offset(in);
        if (!(d = mp_accum_take(&p->acc, 8, in)))
            return RS_SHORT;
        v = mp_be64(d);
    }
    p->hdr_flags = v & (p->page_size - 1);
    p->hdr_addr = v & ~(guint64)(p->page_size - 1);
    switch (p->hdr_flags & ~MP_RAM_SAVE_FLAG_CONTINUE) {
    case MP_RAM_SAVE_FLAG_MEM_SIZE:
        return mem_size(p, rec);
    case MP_RAM_SAVE_FLAG_EOS:
        rec->kind = MP_REC_RAM_EOS;
        p->state = R_HDR;
        return RS_EMIT_END;
    case MP_RAM_SAVE_FLAG_MULTIFD_FLUSH:
        rec->kind = MP_REC_RAM_MULTIFD_FLUSH;
        p->state = R_HDR;
        return RS_EMIT;
    case MP_RAM_SAVE_FLAG_ZERO:
    case MP_RAM_SAVE_FLAG_PAGE:
    case MP_RAM_SAVE_FLAG_XBZRLE:
    case MP_RAM_SAVE_FLAG_COMPRESS_PAGE:
        if (!(p->hdr_flags & MP_RAM_SAVE_FLAG_CONTINUE)) {
            p->state = R_IDLEN;
            return RS_NEXT;
        }
        if (!p->have_block)
            return fail(p, MP_PARSE_ERROR_NO_BLOCK,
                        "RAM record with CONTINUE but no previous "
                        "block at offset %" G_GUINT64_FORMAT,
                        p->rec_start);
        return page_begins(p);
    case MP_RAM_SAVE_FLAG_HOOK:
        return fail(p, MP_PARSE_ERROR_UNSUPPORTED,
                    "RAM_SAVE_FLAG_HOOK (RDMA) at offset %" G_GUINT64_FORMAT
                    " is not supported",
                    p->rec_start);
    default:
        return fail(p, MP_PARSE_ERROR_RAM_FLAGS,
                    "unknown RAM flags 0x%x at offset %" G_GUINT64_FORMAT
                    " (expected one of ZERO, MEM_SIZE, PAGE, EOS, XBZRLE, "
                    "COMPRESS_PAGE, MULTIFD_FLUSH, optionally with CONTINUE)",
                    p->hdr_flags, p->rec_start);
    }
}

static RamStep
read_idlen(MpRamParser *p, MpCursor *in)
{
    const guint8 *d;

    if (!(d = mp_accum_take(&p->acc, 1, in)))
        return RS_SHORT;
    if (d[0] == 0)
        return fail(p, MP_PARSE_ERROR_RAM_FLAGS,
                    "empty RAMBlock id at offset %" G_GUINT64_FORMAT,
                    mp_cursor_offset(in) - 1);
    p->payload_len = d[0];
    p->state = R_ID;
    return RS_NEXT;
}

/* The record names its block: the channel's current block from now on. */
static RamStep
read_id(MpRamParser *p, MpCursor *in)
{
    const guint8 *d;

    if (!(d = mp_accum_take(&p->acc, p->payload_len, in)))
        return RS_SHORT;
    memcpy(p->block, d, p->payload_len);
    p->block[p->payload_len] = 0;
    p->have_block = TRUE;
    p->block_used = 0;
    GHashTable *t = block_table(p);
    if (g_hash_table_size(t)) {
        guint64 *used = g_hash_table_lookup(t, p->block);
        if (!used) {
            p->have_block = FALSE;
            return fail(p, MP_PARSE_ERROR_RAM_FLAGS,
                        "RAM record for unknown RAMBlock \"%s\" at "
                        "offset %" G_GUINT64_FORMAT,
                        p->block, p->rec_start);
        }
        p->block_used = *used;
    }
    return page_begins(p);
}

/* The payload of the page record is whole: `len` bytes at `payload`. */
static RamStep
page_done(MpRamParser *p, MpRecord *rec, MpPageKind kind, const guint8 *payload,
          guint32 len)
{
    rec->kind = MP_REC_RAM_PAGE;
    rec->u.page.kind = kind;
    rec->u.page.payload = payload;
    rec->u.page.payload_len = len;
    rec->u.page.block = p->block;
    rec->u.page.addr = p->hdr_addr;
    rec->u.page.flags = p->hdr_flags;
    rec->u.page.size = p->page_size;
    p->state = R_HDR;
    return RS_EMIT;
}

static RamStep
read_zero(MpRamParser *p, MpCursor *in, MpRecord *rec)
{
    const guint8 *d;

    if (!(d = mp_accum_take(&p->acc, 1, in)))
        return RS_SHORT;
    return page_done(p, rec, MP_PAGE_ZERO, d, 1);
}

static RamStep
read_page(MpRamParser *p, MpCursor *in, MpRecord *rec)
{
    const guint8 *d;

    if (!(d = mp_accum_take(&p->acc, p->page_size, in)))
        return RS_SHORT;
    return page_done(p, rec, MP_PAGE_NORMAL, d, p->page_size);
}

/* The XBZRLE data (p->payload_len bytes at `d`) is whole. */
static RamStep
xbzrle_done(MpRamParser *p, MpRecord *rec, const guint8 *d)
{
    if (!mp_xbzrle_check(d, p->payload_len, p->page_size))
        return fail(
            p, MP_PARSE_ERROR_DECODE,
            "malformed XBZRLE data in the record at offset %" G_GUINT64_FORMAT,
            p->rec_start);
    return page_done(p, rec, MP_PAGE_XBZRLE, d, p->payload_len);
}

/* u8 0x01 be16 len */
static RamStep
read_xbz_hdr(MpRamParser *p, MpCursor *in, MpRecord *rec)
{
    const guint8 *d;

    if (!(d = mp_accum_take(&p->acc, 3, in)))
        return RS_SHORT;
    if (d[0] != MP_ENCODING_FLAG_XBZRLE)
        return fail(p, MP_PARSE_ERROR_DECODE,
                    "XBZRLE encoding flag 0x%x at offset %" G_GUINT64_FORMAT
                    " (expected 0x1)",
                    d[0], mp_cursor_offset(in) - 3);
    p->payload_len = mp_be16(d + 1);
    if (p->payload_len > p->page_size)
        return fail(p, MP_PARSE_ERROR_LENGTH,
                    "XBZRLE length %u at offset %" G_GUINT64_FORMAT
                    " exceeds the page size %u",
                    p->payload_len, mp_cursor_offset(in) - 2, p->page_size);
    p->state = R_XBZ_DATA;
    if (p->payload_len == 0)
        return xbzrle_done(p, rec, NULL);
    return RS_NEXT;
}

static RamStep
read_xbz_data(MpRamParser *p, MpCursor *in, MpRecord *rec)
{
    const guint8 *d;

    if (!(d = mp_accum_take(&p->acc, p->payload_len, in)))
        return RS_SHORT;
    return xbzrle_done(p, rec, d);
}

static RamStep
read_comp_len(MpRamParser *p, MpCursor *in)
{
    const guint8 *d;

    if (!(d = mp_accum_take(&p->acc, 4, in)))
        return RS_SHORT;
    p->payload_len = mp_be32(d);
    if (p->payload_len == 0 || p->payload_len > compress_bound(p->page_size))
        return fail(p, MP_PARSE_ERROR_LENGTH,
                    "compressed page length %u at offset %" G_GUINT64_FORMAT
                    " (expected 1..%u)",
                    p->payload_len, mp_cursor_offset(in) - 4,
                    compress_bound(p->page_size));
    p->state = R_COMP_DATA;
    return RS_NEXT;
}

static RamStep
read_comp_data(MpRamParser *p, MpCursor *in, MpRecord *rec)
{
    const guint8 *d;

    if (!(d = mp_accum_take(&p->acc, p->payload_len, in)))
        return RS_SHORT;
    return page_done(p, rec, MP_PAGE_COMPRESSED, d, p->payload_len);
}

/* the block list of MEM_SIZE:
 *   u8 n idstr[n] be64 used_length [be64 page_size] [be64 mr_addr] */

/* An entry of the block list is whole. */
static RamStep
block_entry_done(MpRamParser *p, MpRecord *rec)
{
    if (g_hash_table_size(p->blocks) >= MAX_BLOCKS)
        return fail(p, MP_PARSE_ERROR_LENGTH,
                    "more than %d RAMBlocks in the block list at offset "
                    "%" G_GUINT64_FORMAT,
                    MAX_BLOCKS, p->rec_start);
    g_hash_table_insert(p->blocks, g_strdup(p->bl_name),
                        g_memdup2(&p->bl.used_length, 8));
    rec->kind = MP_REC_RAM_BLOCK;
    rec->u.block = p->bl;
    p->state = p->list_remaining ? R_BL_IDLEN : R_HDR;
    return RS_EMIT;
}

/* After the mr_addr field, if any: the entry is complete unless a
 * MappedRamHeader follows. */
static RamStep
block_mr_addr_done(MpRamParser *p, MpRecord *rec)
{
    if (p->mapped_ram) {
        p->state = R_BL_MAPPED;
        return RS_NEXT;
    }
    return block_entry_done(p, rec);
}

/* After the page_size field, if any: the entry is complete unless an
 * mr_addr or a MappedRamHeader follows. */
static RamStep
block_page_size_done(MpRamParser *p, MpRecord *rec)
{
    if (p->ignore_shared) {
        p->state = R_BL_MRADDR;
        return RS_NEXT;
    }
    return block_mr_addr_done(p, rec);
}

static RamStep
read_bl_idlen(MpRamParser *p, MpCursor *in)
{
    const guint8 *d;

    if (p->acc.have == 0)
        p->rec_start = mp_cursor_offset(in);
    if (!(d = mp_accum_take(&p->acc, 1, in)))
        return RS_SHORT;
    if (d[0] == 0)
        return fail(
            p, MP_PARSE_ERROR_RAM_FLAGS,
            "empty RAMBlock id in the block list at offset %" G_GUINT64_FORMAT
            " (%" G_GUINT64_FORMAT " bytes of RAM still unlisted)",
            p->rec_start, p->list_remaining);
    p->payload_len = d[0];
    p->state = R_BL_ID;
    return RS_NEXT;
}

static RamStep
read_bl_id(MpRamParser *p, MpCursor *in)
{
    const guint8 *d;

    if (!(d = mp_accum_take(&p->acc, p->payload_len, in)))
        return RS_SHORT;
    memcpy(p->bl_name, d, p->payload_len);
    p->bl_name[p->payload_len] = 0;
    memset(&p->bl, 0, sizeof(p->bl));
    p->bl.name = p->bl_name;
    p->state = R_BL_USED;
    return RS_NEXT;
}

static RamStep
read_bl_used(MpRamParser *p, MpCursor *in)
{
    const guint8 *d;

    if (!(d = mp_accum_take(&p->acc, 8, in)))
        return RS_SHORT;
    p->bl.used_length = mp_be64(d);
    if (p->bl.used_length > p->list_remaining)
        return fail(p, MP_PARSE_ERROR_LENGTH,
                    "RAMBlock \"%s\" of %" G_GUINT64_FORMAT
                    " bytes exceeds the %" G_GUINT64_FORMAT
                    " bytes left of MEM_SIZE at offset %" G_GUINT64_FORMAT,
                    p->bl_name, p->bl.used_length, p->list_remaining,
                    mp_cursor_offset(in) - 8);
    p->list_remaining -= p->bl.used_length;
    p->state = R_BL_PSIZE;
    return RS_NEXT;
}

/* Whether a page_size field follows.  It exists only for blocks whose page
 * size differs from the host's, which the ADVISE summary reveals.  It
 * starts with a 0x00 byte where a next id length cannot. */
static RamStep
peek_bl_page_size(MpRamParser *p, MpCursor *in, MpRecord *rec)
{
    const guint8 *d;

    if (p->postcopy_summary == 0 || p->postcopy_summary == p->page_size)
        return block_page_size_done(p, rec);
    if (p->list_remaining) {
        if (*in->pos != 0)
            return block_page_size_done(p, rec);
        p->state = R_BL_PSIZE_VAL;
        return RS_NEXT;
    }
    /* Last block: what follows is either its page_size (low bits clear)
     * or the next record's header (some flag set), kept for R_HDR. */
    guint64 v_start = mp_cursor_offset(in) - p->acc.have;
    if (!(d = mp_accum_take(&p->acc, 8, in)))
        return RS_SHORT;
    guint64 v = mp_be64(d);
    if (v & (p->page_size - 1)) {
        p->pending_hdr = v;
        p->pending_start = v_start;
        p->have_pending = TRUE;
    } else {
        p->bl.page_size = v;
    }
    return block_entry_done(p, rec);
}

static RamStep
read_bl_page_size(MpRamParser *p, MpCursor *in, MpRecord *rec)
{
    const guint8 *d;

    if (!(d = mp_accum_take(&p->acc, 8, in)))
        return RS_SHORT;
    p->bl.page_size = mp_be64(d);
    return block_page_size_done(p, rec);
}

static RamStep
read_bl_mr_addr(MpRamParser *p, MpCursor *in, MpRecord *rec)
{
    const guint8 *d;

    if (!(d = mp_accum_take(&p->acc, 8, in)))
        return RS_SHORT;
    p->bl.mr_addr = mp_be64(d);
    p->bl.has_mr_addr = TRUE;
    return block_mr_addr_done(p, rec);
}

/* MappedRamHeader (packed): be32 version, be64 page_size, be64
 * bitmap_offset, be64 pages_offset. */
static RamStep
read_bl_mapped(MpRamParser *p, MpCursor *in, MpRecord *rec)
{
    const guint8 *d;

    if (!(d = mp_accum_take(&p->acc, 28, in)))
        return RS_SHORT;
    p->bl.mapped_ram = TRUE;
    p->bl.mr_version = mp_be32(d);
    p->bl.mr_page_size = mp_be64(d + 4);
    p->bl.bitmap_offset = mp_be64(d + 12);
    p->bl.pages_offset = mp_be64(d + 20);
    if (p->bl.mr_version != 1)
        return fail(p, MP_PARSE_ERROR_VERSION,
                    "mapped-ram header version %u of RAMBlock \"%s\" at "
                    "offset %" G_GUINT64_FORMAT " (expected 1)",
                    p->bl.mr_version, p->bl_name, mp_cursor_offset(in) - 28);
    return block_entry_done(p, rec);
}

/* Runs the function of the current state. */
static RamStep
read_state(MpRamParser *p, MpCursor *in, MpRecord *rec)
{
    switch (p->state) {
    case R_HDR:
        return read_hdr(p, in, rec);
    case R_IDLEN:
        return read_idlen(p, in);
    case R_ID:
        return read_id(p, in);
    case R_ZERO:
        return read_zero(p, in, rec);
    case R_PAGE:
        return read_page(p, in, rec);
    case R_XBZ_HDR:
        return read_xbz_hdr(p, in, rec);
    case R_XBZ_DATA:
        return read_xbz_data(p, in, rec);
    case R_COMP_LEN:
        return read_comp_len(p, in);
    case R_COMP_DATA:
        return read_comp_data(p, in, rec);
    case R_BL_IDLEN:
        return read_bl_idlen(p, in);
    case R_BL_ID:
        return read_bl_id(p, in);
    case R_BL_USED:
        return read_bl_used(p, in);
    case R_BL_PSIZE:
        return peek_bl_page_size(p, in, rec);
    case R_BL_PSIZE_VAL:
        return read_bl_page_size(p, in, rec);
    case R_BL_MRADDR:
        return read_bl_mr_addr(p, in, rec);
    case R_BL_MAPPED:
        return read_bl_mapped(p, in, rec);
    }
    g_assert_not_reached();
}

/* Reports `rec`, which starts at p->rec_start and ends at in->pos, or
 * where the pending header starts when its 8 bytes were taken already. */
static MpRecordAction
emit(MpRamParser *p, const MpCursor *in, MpRecord *rec)
{
    guint64 end = p->have_pending ? p->pending_start : mp_cursor_offset(in);

    rec->offset = p->rec_start;
    rec->length = end - p->rec_start;
    return p->cb(rec, p->user_data);
}

MpFeedStatus
mp_ram_parser_feed(MpRamParser *p, const guint8 *buf, gsize len,
                   gsize *consumed, GError **error)
{
    MpCursor in = {.buf = buf, .pos = buf, .end = buf + len, .off = p->off};
    MpFeedStatus status = MP_FEED_MORE;
    MpRecord rec;

    *consumed = 0;
    if (p->error) {
        if (error)
            *error = g_error_copy(p->error);
        return MP_FEED_ERROR;
    }

    while (in.pos < in.end || p->have_pending) {
        if (p->state == R_HDR && p->have_block && p->acc.have == 0
            && !p->have_pending) {
            status = fast_pages(p, &in);
            if (status != MP_FEED_MORE || in.pos == in.end)
                break;
        }
        memset(&rec, 0, sizeof(rec));
        rec.section = p->section;
        switch (read_state(p, &in, &rec)) {
        case RS_NEXT:
            continue;
        case RS_SHORT:
            goto out;
        case RS_EMIT:
            if (emit(p, &in, &rec) == MP_REC_PAUSE) {
                status = MP_FEED_PAUSED;
                goto out;
            }
            continue;
        case RS_EMIT_END:
            /* (the caller learns of a pause here by its callback) */
            emit(p, &in, &rec);
            status = MP_FEED_END;
            goto out;
        case RS_ERROR:
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
    mp_parse_error_set(
        error, p->channel, MP_PARSE_ERROR_TRUNCATED,
        "stream ends at offset %" G_GUINT64_FORMAT
        " inside a %s (record started at offset %" G_GUINT64_FORMAT ")",
        p->off, ram_state_name(p->state), p->rec_start);
    return FALSE;
}
