/* rp-parser.c: the return path (destination to source, the reverse
 * direction of the main connection).
 * Spec: QEMU migration/migration.c migrate_send_rp_message(),
 * source_return_path_thread(); ram.c ramblock_recv_bitmap_send() (facts
 * only, never code).
 *
 *   +---------+--------+---------------+
 *   | be16    | be16   | payload[len]  |   len <= 512
 *   | type    | len    |               |
 *   +---------+--------+---------------+
 *
 *   type  name            len     payload
 *   1     SHUT            4       be32 0 ok / 1 error
 *   2     PONG            4       be32 value of the PING
 *   3     REQ_PAGES_ID    13+n    be64 start, be32 len, u8 n, idstr[n]
 *   4     REQ_PAGES       12      be64 start, be32 len (block of the last
 *                                 REQ_PAGES_ID)
 *   5     RECV_BITMAP     1+n     u8 n, idstr[n]; then, outside len:
 *                                 be64 size | bitmap[size] (le) |
 *                                 be64 0x0123456789abcdef
 *   6     RESUME_ACK      4       be32 1
 *   7     SWITCHOVER_ACK  0       [8.1+]
 *
 * The bitmap tail is streamed, never buffered: it is reported as one
 * MP_REC_RP_BITMAP record once its end mark has been checked.
 */
#include <stdarg.h>
#include <string.h>
#include "rp-parser.h"
#include "stream-resync.h"

#define RP_HDR_SIZE 4

/* After a gap, a position is trusted when two messages in a row have a
 * known type and a length that fits it (a few in 10^9 each for other
 * bytes); the messages are small, so the walk looks at no more than
 * this. */
#define RP_RESYNC_RECORDS 2
#define RP_RESYNC_LIMIT   (RP_RESYNC_RECORDS * (RP_HDR_SIZE + MP_RP_MAX_LEN))

/* One bit per 4 KiB target page and at most 2^40 bytes (1 TiB) in one
 * RAMBlock: 2^28 bits, 32 MiB of bitmap.  Nothing is allocated from it;
 * the bound only catches a desynchronised stream early. */
#define RP_MAX_BITMAP (32u << 20)

typedef enum {
    RP_HDR,     /* be16 type, be16 len */
    RP_PAYLOAD, /* len bytes */
    RP_BM_SIZE, /* RECV_BITMAP tail: be64 size */
    RP_BM_DATA, /* size bytes, skipped */
    RP_BM_END,  /* be64 end mark */
} RpState;

/* What a state function did; the feed loop acts on it. */
typedef enum {
    RPS_NEXT,  /* go on in p->state */
    RPS_SHORT, /* the input ended inside a field */
    RPS_EMIT,  /* `rec` is a whole record: report it, go on */
    RPS_ERROR, /* p->error is set */
} RpStep;

struct MpRpParser {
    char *channel;
    MpRecordFunc cb;
    gpointer user_data;

    RpState state;
    guint64 off;       /* stream offset of buf[0] during a feed */
    guint64 rec_start; /* offset of the current record's first byte */
    guint64 msg_start; /* offset of the last message header */
    GError *error;     /* sticky */
    MpAccum acc;       /* a field split across feeds */

    /* the message being read */
    guint16 type;
    guint16 len;

    /* REQ_PAGES means "same block as the last REQ_PAGES_ID" */
    char last_block[256];
    gboolean have_block;
    gboolean block_lost; /* a gap may have hidden the last REQ_PAGES_ID */

    MpResync rs; /* after a gap: the scan for the next message */

    /* RECV_BITMAP tail */
    char bm_block[256];
    guint64 bm_size;
    guint64 bm_left;
};

MpRpParser *
mp_rp_parser_new(const char *channel, MpRecordFunc cb, gpointer user_data)
{
    MpRpParser *p = g_new0(MpRpParser, 1);

    p->channel = g_strdup(channel);
    p->cb = cb;
    p->user_data = user_data;
    /* largest field: a payload */
    mp_accum_init(&p->acc, MP_RP_MAX_LEN);
    mp_resync_init(&p->rs, RP_RESYNC_LIMIT);
    return p;
}

void
mp_rp_parser_free(MpRpParser *p)
{
    if (!p)
        return;
    g_free(p->channel);
    g_clear_error(&p->error);
    mp_accum_clear(&p->acc);
    mp_resync_clear(&p->rs);
    g_free(p);
}

guint64
mp_rp_parser_offset(const MpRpParser *p)
{
    return p->off;
}

/* @return what the parser reads in state `s`, for errors ("inside %s"). */
static const char *
rp_state_name(RpState s)
{
    switch (s) {
    case RP_HDR:
        return "a message header";
    case RP_PAYLOAD:
        return "the payload of a message";
    case RP_BM_SIZE:
        return "the bitmap size";
    case RP_BM_DATA:
        return "the bitmap";
    case RP_BM_END:
        break;
    }
    return "the bitmap end mark";
}

static void set_error(MpRpParser *p, MpParseErrorCode code, const char *fmt,
                      ...) G_GNUC_PRINTF(3, 4);

/* Sets the sticky error, prefixed with the channel name. */
static void
set_error(MpRpParser *p, MpParseErrorCode code, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    mp_parse_error_set_valist(&p->error, p->channel, code, fmt, ap);
    va_end(ap);
}

/* Payload length each type must have; -1: variable, checked later. */
static int
fixed_len(guint16 type)
{
    switch (type) {
    case MP_RP_MSG_SHUT:
    case MP_RP_MSG_PONG:
    case MP_RP_MSG_RESUME_ACK:
        return 4;
    case MP_RP_MSG_REQ_PAGES:
        return 12;
    case MP_RP_MSG_SWITCHOVER_ACK:
        return 0;
    default:
        return -1;
    }
}

static gboolean
check_header(MpRpParser *p)
{
    int want;

    if (p->type == MP_RP_MSG_INVALID || p->type >= MP_RP_MSG__MAX) {
        set_error(p, MP_PARSE_ERROR_RP_MESSAGE,
                  "message type %u unknown at offset %" G_GUINT64_FORMAT
                  " (expected 1..%d)",
                  p->type, p->rec_start, MP_RP_MSG__MAX - 1);
        return FALSE;
    }
    if (p->len > MP_RP_MAX_LEN) {
        set_error(p, MP_PARSE_ERROR_LENGTH,
                  "%s message at offset %" G_GUINT64_FORMAT
                  " has length %u (expected at most %d)",
                  mp_rp_message_name(p->type), p->rec_start, p->len,
                  MP_RP_MAX_LEN);
        return FALSE;
    }
    want = fixed_len(p->type);
    if (want >= 0 && p->len != want) {
        set_error(p, MP_PARSE_ERROR_RP_MESSAGE,
                  "%s message at offset %" G_GUINT64_FORMAT
                  " has length %u (expected %d)",
                  mp_rp_message_name(p->type), p->rec_start, p->len, want);
        return FALSE;
    }
    if (p->type == MP_RP_MSG_REQ_PAGES_ID && p->len < 13) {
        set_error(p, MP_PARSE_ERROR_RP_MESSAGE,
                  "REQ_PAGES_ID message at offset %" G_GUINT64_FORMAT
                  " has length %u (expected 13 + idstr length)",
                  p->rec_start, p->len);
        return FALSE;
    }
    if (p->type == MP_RP_MSG_RECV_BITMAP && p->len < 1) {
        set_error(p, MP_PARSE_ERROR_RP_MESSAGE,
                  "RECV_BITMAP message at offset %" G_GUINT64_FORMAT
                  " has length 0 (expected 1 + idstr length)",
                  p->rec_start);
        return FALSE;
    }
    return TRUE;
}

/* Copies the counted idstr at `d` (n = d[0], n + 1 bytes available) into
 * `dst`.  @return FALSE if n is 0 (QEMU would find no RAMBlock by that
 * name) or the message length does not match n. */
static gboolean
take_idstr(MpRpParser *p, const guint8 *d, guint32 avail, char *dst)
{
    guint32 n = d[0];

    if (n == 0) {
        set_error(p, MP_PARSE_ERROR_RP_MESSAGE,
                  "%s message at offset %" G_GUINT64_FORMAT
                  " has an empty idstr (expected a RAMBlock name)",
                  mp_rp_message_name(p->type), p->rec_start);
        return FALSE;
    }
    if (n + 1 != avail) {
        set_error(p, MP_PARSE_ERROR_RP_MESSAGE,
                  "%s message at offset %" G_GUINT64_FORMAT
                  " has an idstr of %u bytes in %u payload bytes "
                  "(expected length %u)",
                  mp_rp_message_name(p->type), p->rec_start, n, p->len,
                  p->len - avail + 1 + n);
        return FALSE;
    }
    memcpy(dst, d + 1, n);
    dst[n] = 0;
    return TRUE;
}

/* Decodes the payload `d` (p->len bytes) of the message into `rec`.
 * @return FALSE: bad. */
static gboolean
decode_message(MpRpParser *p, MpRecord *rec, const guint8 *d)
{
    MpRpInfo *rp = &rec->u.rp;

    rec->kind = MP_REC_RP_MESSAGE;
    rp->type = p->type;
    rp->len = p->len;
    rp->payload = d;
    switch (p->type) {
    case MP_RP_MSG_SHUT:
    case MP_RP_MSG_PONG:
    case MP_RP_MSG_RESUME_ACK:
        rp->value = mp_be32(d);
        break;
    case MP_RP_MSG_REQ_PAGES_ID:
        if (!take_idstr(p, d + 12, p->len - 12, p->last_block))
            return FALSE;
        p->have_block = TRUE;
        /* fall through */
    case MP_RP_MSG_REQ_PAGES:
        if (!p->have_block && p->block_lost) {
            /* its block was named before a gap: not guessed */
            rp->start = mp_be64(d);
            rp->req_len = mp_be32(d + 8);
            break;
        }
        if (!p->have_block) {
            set_error(p, MP_PARSE_ERROR_NO_BLOCK,
                      "REQ_PAGES message at offset %" G_GUINT64_FORMAT
                      " with no RAMBlock named by an earlier REQ_PAGES_ID",
                      p->rec_start);
            return FALSE;
        }
        rp->start = mp_be64(d);
        rp->req_len = mp_be32(d + 8);
        rp->block = p->last_block;
        break;
    case MP_RP_MSG_RECV_BITMAP:
        if (!take_idstr(p, d, p->len, p->bm_block))
            return FALSE;
        rp->block = p->bm_block;
        break;
    default:
        break;
    }
    return TRUE;
}

/* The message's payload (p->len bytes at `d`) is whole. */
static RpStep
message_done(MpRpParser *p, MpRecord *rec, const guint8 *d)
{
    if (!decode_message(p, rec, d))
        return RPS_ERROR;
    p->state = p->type == MP_RP_MSG_RECV_BITMAP ? RP_BM_SIZE : RP_HDR;
    return RPS_EMIT;
}

static RpStep
read_hdr(MpRpParser *p, MpCursor *in, MpRecord *rec)
{
    const guint8 *d;

    if (p->acc.have == 0)
        p->rec_start = p->msg_start = mp_cursor_offset(in);
    if (!(d = mp_accum_take(&p->acc, RP_HDR_SIZE, in)))
        return RPS_SHORT;
    p->type = mp_be16(d);
    p->len = mp_be16(d + 2);
    if (!check_header(p))
        return RPS_ERROR;
    p->state = RP_PAYLOAD;
    /* SWITCHOVER_ACK: nothing more to read */
    if (p->len == 0)
        return message_done(p, rec, in->pos);
    return RPS_NEXT;
}

static RpStep
read_payload(MpRpParser *p, MpCursor *in, MpRecord *rec)
{
    const guint8 *d;

    if (!(d = mp_accum_take(&p->acc, p->len, in)))
        return RPS_SHORT;
    return message_done(p, rec, d);
}

/* The RECV_BITMAP tail: be64 size | bitmap[size] | be64 end mark */

static RpStep
read_bm_size(MpRpParser *p, MpCursor *in)
{
    const guint8 *d;

    if (p->acc.have == 0)
        p->rec_start = mp_cursor_offset(in);
    if (!(d = mp_accum_take(&p->acc, 8, in)))
        return RPS_SHORT;
    guint64 v = mp_be64(d);
    if (v > RP_MAX_BITMAP) {
        set_error(p, MP_PARSE_ERROR_LENGTH,
                  "RECV_BITMAP \"%s\" bitmap size %" G_GUINT64_FORMAT
                  " at offset %" G_GUINT64_FORMAT " (expected at most %u)",
                  p->bm_block, v, p->rec_start, RP_MAX_BITMAP);
        return RPS_ERROR;
    }
    p->bm_size = p->bm_left = v;
    p->state = p->bm_size ? RP_BM_DATA : RP_BM_END;
    return RPS_NEXT;
}

/* The bitmap itself is skipped, never buffered. */
static RpStep
read_bm_data(MpRpParser *p, MpCursor *in)
{
    gsize n = MIN((guint64)mp_cursor_left(in), p->bm_left);

    in->pos += n;
    p->bm_left -= n;
    if (p->bm_left == 0)
        p->state = RP_BM_END;
    return RPS_NEXT;
}

static RpStep
read_bm_end(MpRpParser *p, MpCursor *in, MpRecord *rec)
{
    const guint8 *d;

    if (!(d = mp_accum_take(&p->acc, 8, in)))
        return RPS_SHORT;
    guint64 v = mp_be64(d);
    if (v != MP_RAMBLOCK_RECV_BITMAP_ENDING) {
        set_error(p, MP_PARSE_ERROR_RP_MESSAGE,
                  "RECV_BITMAP \"%s\" end mark 0x%" G_GINT64_MODIFIER
                  "x at offset %" G_GUINT64_FORMAT
                  " (expected 0x%" G_GINT64_MODIFIER "x)",
                  p->bm_block, v, mp_cursor_offset(in) - 8,
                  (guint64)MP_RAMBLOCK_RECV_BITMAP_ENDING);
        return RPS_ERROR;
    }
    rec->kind = MP_REC_RP_BITMAP;
    rec->u.rp.type = MP_RP_MSG_RECV_BITMAP;
    rec->u.rp.block = p->bm_block;
    rec->u.rp.bitmap_size = p->bm_size;
    p->state = RP_HDR;
    return RPS_EMIT;
}

/* Runs the function of the current state. */
static RpStep
read_state(MpRpParser *p, MpCursor *in, MpRecord *rec)
{
    switch (p->state) {
    case RP_HDR:
        return read_hdr(p, in, rec);
    case RP_PAYLOAD:
        return read_payload(p, in, rec);
    case RP_BM_SIZE:
        return read_bm_size(p, in);
    case RP_BM_DATA:
        return read_bm_data(p, in);
    case RP_BM_END:
        return read_bm_end(p, in, rec);
    }
    g_assert_not_reached();
}

/* The parser's feed, outside a resync. */
static MpFeedStatus
feed_plain(gpointer parser, const guint8 *buf, gsize len, gsize *consumed,
           GError **error)
{
    MpRpParser *p = parser;
    MpCursor in = {.buf = buf, .pos = buf, .end = buf + len, .off = p->off};
    MpFeedStatus status = MP_FEED_MORE;
    MpRecord rec;

    *consumed = 0;
    if (p->error) {
        if (error)
            *error = g_error_copy(p->error);
        return MP_FEED_ERROR;
    }

    while (in.pos < in.end) {
        memset(&rec, 0, sizeof(rec));
        switch (read_state(p, &in, &rec)) {
        case RPS_NEXT:
        case RPS_SHORT:
            continue;
        case RPS_EMIT:
            rec.offset = p->rec_start;
            rec.length = mp_cursor_offset(&in) - p->rec_start;
            if (p->cb(&rec, p->user_data) == MP_REC_PAUSE) {
                status = MP_FEED_PAUSED;
                goto out;
            }
            continue;
        case RPS_ERROR:
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

/* ---- after a gap: the next message ---- */

/* Two messages from b[0] with known types and lengths that fit them. */
static MpProbeResult
probe_message(gconstpointer parser, const guint8 *b, gsize len, guint64 off,
              const char **what, int *kind)
{
    gsize pos = 0;

    (void)parser;
    (void)off;
    *kind = 0;
    for (int n = 0; n < RP_RESYNC_RECORDS; n++) {
        /* the type's high byte is 0: most positions end here */
        if (len > pos && b[pos] != 0)
            return MP_PROBE_NO;
        if (len < pos + RP_HDR_SIZE)
            return MP_PROBE_MORE;
        guint16 type = mp_be16(b + pos), mlen = mp_be16(b + pos + 2);
        int want = fixed_len(type);
        if (type == MP_RP_MSG_INVALID || type >= MP_RP_MSG__MAX
            || mlen > MP_RP_MAX_LEN || (want >= 0 && mlen != want))
            return MP_PROBE_NO;
        if (len < pos + RP_HDR_SIZE + mlen)
            return MP_PROBE_MORE;
        const guint8 *d = b + pos + RP_HDR_SIZE;
        switch (type) {
        case MP_RP_MSG_REQ_PAGES_ID:
            if (mlen < 14 || d[12] == 0 || d[12] + 13u != mlen)
                return MP_PROBE_NO;
            break;
        case MP_RP_MSG_RECV_BITMAP:
            /* (its bitmap follows outside the message: not walked) */
            return MP_PROBE_NO;
        case MP_RP_MSG_SHUT:
            if (mp_be32(d) > 1)
                return MP_PROBE_NO;
            break;
        default:
            break;
        }
        pos += RP_HDR_SIZE + mlen;
    }
    *what = "return-path message";
    return MP_PROBE_YES;
}

/* A message starts at rec->offset: read it from there. */
static MpRecordAction
resume_message(gpointer parser, MpRecord *rec, int kind)
{
    MpRpParser *p = parser;

    (void)kind;
    p->state = RP_HDR;
    p->off = p->rec_start = rec->offset;
    return p->cb(rec, p->user_data);
}

static const MpResyncOps resync_ops = {
    .probe = probe_message,
    .resume = resume_message,
    .feed = feed_plain,
};

gboolean
mp_rp_parser_gap(MpRpParser *p, guint64 len)
{
    if (p->error)
        return FALSE;
    p->state = RP_HDR;
    p->acc.have = 0;
    /* a REQ_PAGES_ID in the gap would have named another block */
    p->have_block = FALSE;
    p->block_lost = TRUE;
    mp_resync_gap(&p->rs, p->off, len);
    p->off += len;
    return TRUE;
}

MpFeedStatus
mp_rp_parser_feed(MpRpParser *p, const guint8 *buf, gsize len, gsize *consumed,
                  GError **error)
{
    if (p->error || !mp_resync_active(&p->rs))
        return feed_plain(p, buf, len, consumed, error);
    return mp_resync_feed(&p->rs, &resync_ops, p, &p->off, buf, len,
                          consumed, error);
}

gboolean
mp_rp_parser_finish(MpRpParser *p, GError **error)
{
    /* the owner, who told the gap, tells that it never resumed */
    if (!p->error && mp_resync_finish(&p->rs))
        return TRUE;
    if (p->error) {
        if (error)
            *error = g_error_copy(p->error);
        return FALSE;
    }
    switch (p->state) {
    case RP_HDR:
        if (p->acc.have == 0)
            return TRUE;
        mp_parse_error_set(error, p->channel, MP_PARSE_ERROR_TRUNCATED,
                           "stream ends at offset %" G_GUINT64_FORMAT
                           " inside %s (%zu of %d bytes)",
                           p->off, rp_state_name(p->state), p->acc.have,
                           RP_HDR_SIZE);
        break;
    case RP_PAYLOAD:
        mp_parse_error_set(error, p->channel, MP_PARSE_ERROR_TRUNCATED,
                           "stream ends at offset %" G_GUINT64_FORMAT
                           " inside the payload of a %s message (%zu of %u "
                           "bytes; message at offset %" G_GUINT64_FORMAT ")",
                           p->off, mp_rp_message_name(p->type), p->acc.have,
                           p->len, p->msg_start);
        break;
    case RP_BM_SIZE:
    case RP_BM_DATA:
    case RP_BM_END:
        mp_parse_error_set(error, p->channel, MP_PARSE_ERROR_TRUNCATED,
                           "stream ends at offset %" G_GUINT64_FORMAT
                           " inside %s after RECV_BITMAP \"%s\" (message at "
                           "offset %" G_GUINT64_FORMAT ")",
                           p->off, rp_state_name(p->state), p->bm_block,
                           p->msg_start);
        break;
    }
    return FALSE;
}
