/* tunnel-frame.c: migproxy tunnel frames, parser and writer.
 * Spec: docs/tunnel.md; wire layout in tunnel-frame.h.
 *
 * Payloads of the control frames:
 *   HELLO  be32 magic "MPTN" | be16 ver_min | be16 ver_max | u8 role |
 *          u8 tls | be16 0 | be32 features | be32 page_size |
 *          be64 cache_bytes | be32 max_payload | be64 tunnel_id |
 *          u8 n | software[n] | (later versions append fields)
 *   OPEN   be32 session | be16 connection | u8 channel | u8 index |
 *          be16 reverse_of | [be16 route, only when not 0]
 *   DATA   raw bytes, or with COMPRESSED: be32 raw_len | zstd chunk
 *   PAGES  a page batch (filters/page-batch.h), opaque here
 *   ACK    { be16 stream | be64 bulk_seq | be64 urgent_seq } *
 *   CLOSE  u8 how | u8 n | reason[n]
 *   PING / PONG  be64 token | be64 time_ns
 *   END    u8 code | u8 n | reason[n]
 */
#include "config.h"
#include <string.h>
#include <xxhash.h>
#include "tunnel-frame.h"

#define HELLO_MIN_LEN  41
#define OPEN_LEN       10
#define OPEN_ROUTE_LEN 12 /* with the route */
#define ACK_ENTRY_LEN  18
#define PING_LEN       16

typedef enum {
    ST_PREAMBLE,
    ST_HEADER,
    ST_BODY, /* payload and trailer */
    ST_END,
    ST_ERROR,
} ParserState;

struct MpTunParser {
    char *channel;
    MpTunFrameFunc cb;
    gpointer user_data;
    ParserState state;
    guint32 max_payload;
    gboolean hello_seen;
    guint64 off;       /* bytes consumed before the current feed */
    guint64 frame_off; /* offset of the current frame's header */
    guint8 header[MP_TUN_HEADER_LEN];
    /* split fields gather here; grows up to max_payload + trailer */
    guint8 *acc;
    gsize acc_cap;
    gsize acc_have;
    char str[256]; /* NUL-terminated copy of a frame's string */
    char str2[256];
    GError *sticky;
};

static const char *const type_names[MP_TUN__MAX] = {
    [MP_TUN_HELLO] = "HELLO", [MP_TUN_OPEN] = "OPEN",
    [MP_TUN_DATA] = "DATA",   [MP_TUN_PAGES] = "PAGES",
    [MP_TUN_ACK] = "ACK",     [MP_TUN_CLOSE] = "CLOSE",
    [MP_TUN_PING] = "PING",   [MP_TUN_PONG] = "PONG",
    [MP_TUN_END] = "END",
};

const char *
mp_tun_frame_type_name(guint8 type)
{
    if (type < MP_TUN__MAX && type_names[type])
        return type_names[type];
    return "unknown";
}

static const char *const channel_names[MP_TUN_CH__MAX] = {
    [MP_TUN_CH_UNKNOWN] = "unknown",         [MP_TUN_CH_MAIN] = "main",
    [MP_TUN_CH_RETURN_PATH] = "return-path", [MP_TUN_CH_MULTIFD] = "multifd",
    [MP_TUN_CH_PREEMPT] = "preempt",         [MP_TUN_CH_RECOVERY] = "recovery",
};

const char *
mp_tun_channel_name(guint8 channel)
{
    return channel < MP_TUN_CH__MAX ? channel_names[channel] : "invalid";
}

MpTunAckEntry
mp_tun_ack_entry(const MpTunFrame *f, guint32 i)
{
    const guint8 *e = f->u.ack.entries + (gsize)i * ACK_ENTRY_LEN;
    MpTunAckEntry a = {
        .stream = mp_be16(e),
        .bulk_seq = mp_be64(e + 2),
        .urgent_seq = mp_be64(e + 10),
    };
    g_assert(i < f->u.ack.count);
    return a;
}

/* --- checks ---------------------------------------------------------- */

static guint32
header_check(const guint8 *h)
{
    return (guint32)XXH3_64bits(h, 16);
}

static guint64
payload_check(const guint8 *payload, gsize len, guint32 hcheck)
{
    return XXH3_64bits_withSeed(payload, len, hcheck);
}

/* --- parser ---------------------------------------------------------- */

MpTunParser *
mp_tun_parser_new(const char *channel, MpTunFrameFunc cb, gpointer user_data)
{
    MpTunParser *p = g_new0(MpTunParser, 1);
    p->channel = g_strdup(channel);
    p->cb = cb;
    p->user_data = user_data;
    p->state = ST_PREAMBLE;
    p->max_payload = MP_TUN_MAX_PAYLOAD_HELLO;
    return p;
}

void
mp_tun_parser_free(MpTunParser *p)
{
    if (!p)
        return;
    g_clear_error(&p->sticky);
    g_free(p->acc);
    g_free(p->channel);
    g_free(p);
}

void
mp_tun_parser_set_max_payload(MpTunParser *p, guint32 max_payload)
{
    p->max_payload = MIN(max_payload, MP_TUN_MAX_PAYLOAD_LIMIT);
}

guint64
mp_tun_parser_offset(const MpTunParser *p)
{
    return p->off;
}

G_GNUC_PRINTF(4, 5)
static void
fail(MpTunParser *p, GError **error, MpParseErrorCode code, const char *fmt,
     ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_clear_error(&p->sticky);
    mp_parse_error_set_valist(&p->sticky, p->channel, code, fmt, ap);
    va_end(ap);
    p->state = ST_ERROR;
    if (error)
        *error = g_error_copy(p->sticky);
}

/* Gathers `need` contiguous bytes: a pointer into the input when they are
 * whole there, else into p->acc.  NULL when the input ran out first. */
static const guint8 *
take(MpTunParser *p, gsize need, const guint8 **pos, const guint8 *end)
{
    gsize avail = (gsize)(end - *pos);

    if (p->acc_have == 0 && avail >= need) {
        const guint8 *r = *pos;
        *pos += need;
        return r;
    }
    if (p->acc_cap < need) {
        /* need is bounded by max_payload + trailer (checked before) */
        p->acc = g_realloc(p->acc, need);
        p->acc_cap = need;
    }
    gsize n = MIN(need - p->acc_have, avail);
    memcpy(p->acc + p->acc_have, *pos, n);
    p->acc_have += n;
    *pos += n;
    if (p->acc_have < need)
        return NULL;
    p->acc_have = 0;
    return p->acc;
}

/* Copies a u8-length-prefixed string at payload[at] into dst.  FALSE if it
 * does not end where the payload does (or, with `exact` FALSE, within). */
static gboolean
get_string(const guint8 *payload, guint32 len, guint32 at, char *dst,
           gboolean exact, guint32 *next)
{
    if (at >= len)
        return FALSE;
    guint32 n = payload[at];
    if ((guint64)at + 1 + n > len || (exact && at + 1 + n != len))
        return FALSE;
    memcpy(dst, payload + at + 1, n);
    dst[n] = '\0';
    if (next)
        *next = at + 1 + n;
    return TRUE;
}

/* The header's fields that do not depend on the payload. */
static gboolean
check_header(MpTunParser *p, const MpTunFrame *f, GError **error)
{
    const char *tn = mp_tun_frame_type_name(f->type);

    if (f->type == 0 || f->type >= MP_TUN__MAX) {
        fail(p, error, MP_PARSE_ERROR_SECTION_TYPE,
             "unknown frame type 0x%02x at offset %" G_GUINT64_FORMAT
             " (stream %u), expected 0x01..0x%02x",
             f->type, f->offset, f->stream, MP_TUN__MAX - 1);
        return FALSE;
    }
    if (f->flags & ~MP_TUN_FLAGS_KNOWN
        || (f->flags & MP_TUN_FLAG_COMPRESSED && f->type != MP_TUN_DATA
            && f->type != MP_TUN_PAGES)) {
        fail(p, error, MP_PARSE_ERROR_SECTION,
             "%s frame of stream %u at offset %" G_GUINT64_FORMAT
             ": flags 0x%02x not valid for it",
             tn, f->stream, f->offset, f->flags);
        return FALSE;
    }
    if (!p->hello_seen && f->type != MP_TUN_HELLO) {
        fail(p, error, MP_PARSE_ERROR_SECTION,
             "%s frame at offset %" G_GUINT64_FORMAT
             " before the handshake, expected HELLO",
             tn, f->offset);
        return FALSE;
    }
    if (p->hello_seen && f->type == MP_TUN_HELLO) {
        fail(p, error, MP_PARSE_ERROR_SECTION,
             "second HELLO at offset %" G_GUINT64_FORMAT, f->offset);
        return FALSE;
    }
    gboolean control = f->type == MP_TUN_HELLO || f->type == MP_TUN_ACK
                       || f->type == MP_TUN_PING || f->type == MP_TUN_PONG
                       || f->type == MP_TUN_END;
    if (control != (f->stream == MP_TUN_STREAM_CONTROL)) {
        fail(p, error, MP_PARSE_ERROR_SECTION,
             "%s frame at offset %" G_GUINT64_FORMAT " on stream %u, "
             "expected %s",
             tn, f->offset, f->stream,
             control ? "stream 0" : "a stream other than 0");
        return FALSE;
    }
    if (mp_tun_type_sequenced(f->type) != (f->seq != 0)) {
        fail(p, error, MP_PARSE_ERROR_SECTION,
             "%s frame of stream %u at offset %" G_GUINT64_FORMAT
             ": seq %" G_GUINT64_FORMAT ", expected %s",
             tn, f->stream, f->offset, f->seq,
             f->seq ? "0" : "a sequence number from 1");
        return FALSE;
    }
    if (f->len > p->max_payload) {
        fail(p, error, MP_PARSE_ERROR_LENGTH,
             "%s frame of stream %u at offset %" G_GUINT64_FORMAT
             ": payload of %u bytes, at most %u allowed",
             tn, f->stream, f->offset, f->len, p->max_payload);
        return FALSE;
    }
    return TRUE;
}

G_GNUC_PRINTF(4, 5)
static gboolean
bad_payload(MpTunParser *p, const MpTunFrame *f, GError **error,
            const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *what = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    fail(p, error, MP_PARSE_ERROR_LENGTH,
         "%s frame of stream %u at offset %" G_GUINT64_FORMAT
         " (payload %u bytes): %s",
         mp_tun_frame_type_name(f->type), f->stream, f->offset, f->len,
         what);
    return FALSE;
}

/* Decodes the payload's fields into f->u. */
static gboolean
decode_payload(MpTunParser *p, MpTunFrame *f, GError **error)
{
    const guint8 *b = f->payload;

    switch (f->type) {
    case MP_TUN_HELLO: {
        MpTunHello *h = &f->u.hello;
        if (f->len < HELLO_MIN_LEN)
            return bad_payload(p, f, error, "expected at least %u bytes",
                               HELLO_MIN_LEN);
        if (mp_be32(b) != MP_TUN_MAGIC) {
            fail(p, error, MP_PARSE_ERROR_MAGIC,
                 "HELLO at offset %" G_GUINT64_FORMAT
                 ": magic 0x%08x, expected 0x%08x (\"MPTN\")",
                 f->offset, mp_be32(b), MP_TUN_MAGIC);
            return FALSE;
        }
        h->version_min = mp_be16(b + 4);
        h->version_max = mp_be16(b + 6);
        h->role = b[8];
        h->tls = b[9];
        h->features = mp_be32(b + 12);
        h->page_size = mp_be32(b + 16);
        h->cache_bytes = mp_be64(b + 20);
        h->max_payload = mp_be32(b + 28);
        h->tunnel_id = mp_be64(b + 32);
        if (!get_string(b, f->len, 40, p->str, FALSE, NULL))
            return bad_payload(p, f, error,
                               "software name of %u bytes runs past the "
                               "payload",
                               b[40]);
        h->software = p->str;
        if (h->version_min == 0 || h->version_min > h->version_max
            || (h->role != MP_TUN_ROLE_SOURCE && h->role != MP_TUN_ROLE_DEST)
            || h->tls > MP_TUN_TLS_REQUIRED)
            return bad_payload(p, f, error,
                               "versions %u..%u, role %u, tls %u: expected "
                               "1 <= min <= max, role 1 or 2, tls 0 or 1",
                               h->version_min, h->version_max, h->role,
                               h->tls);
        return TRUE;
    }
    case MP_TUN_OPEN: {
        MpTunOpen *o = &f->u.open;
        if (f->len != OPEN_LEN && f->len != OPEN_ROUTE_LEN)
            return bad_payload(p, f, error, "expected %u or %u bytes", OPEN_LEN,
                               OPEN_ROUTE_LEN);
        o->session = mp_be32(b);
        o->connection = mp_be16(b + 4);
        o->channel = b[6];
        o->index = b[7];
        o->reverse_of = mp_be16(b + 8);
        o->route = f->len == OPEN_ROUTE_LEN ? mp_be16(b + 10) : 0;
        if (f->len == OPEN_ROUTE_LEN && o->route == 0)
            /* one way to write each OPEN: route 0 is the short form */
            return bad_payload(p, f, error,
                               "route 0 written out, expected the %u-byte "
                               "form",
                               OPEN_LEN);
        if (o->channel >= MP_TUN_CH__MAX)
            return bad_payload(p, f, error,
                               "channel kind %u, expected 0..%u", o->channel,
                               MP_TUN_CH__MAX - 1);
        if ((o->channel == MP_TUN_CH_RETURN_PATH) != (o->reverse_of != 0))
            return bad_payload(p, f, error,
                               "reverse_of %u for a %s stream",
                               o->reverse_of,
                               mp_tun_channel_name(o->channel));
        return TRUE;
    }
    case MP_TUN_DATA:
        if (!(f->flags & MP_TUN_FLAG_COMPRESSED)) {
            f->u.data.raw_len = f->len;
            f->u.data.body = b;
            f->u.data.body_len = f->len;
            return TRUE;
        }
        if (f->len < 4)
            return bad_payload(p, f, error,
                               "compressed, expected a be32 length first");
        f->u.data.raw_len = mp_be32(b);
        f->u.data.body = b + 4;
        f->u.data.body_len = f->len - 4;
        if (f->u.data.raw_len > MP_TUN_MAX_PAYLOAD_LIMIT)
            return bad_payload(p, f, error,
                               "decompresses to %u bytes, at most %u allowed",
                               f->u.data.raw_len, MP_TUN_MAX_PAYLOAD_LIMIT);
        return TRUE;
    case MP_TUN_PAGES:
        if (f->len == 0)
            return bad_payload(p, f, error, "expected a page batch");
        f->u.data.raw_len = f->len;
        f->u.data.body = b;
        f->u.data.body_len = f->len;
        return TRUE;
    case MP_TUN_ACK:
        if (f->len == 0 || f->len % ACK_ENTRY_LEN != 0)
            return bad_payload(p, f, error,
                               "expected a non-zero multiple of %u bytes",
                               ACK_ENTRY_LEN);
        f->u.ack.count = f->len / ACK_ENTRY_LEN;
        f->u.ack.entries = b;
        return TRUE;
    case MP_TUN_CLOSE:
    case MP_TUN_END: {
        guint8 v = f->len ? b[0] : 0;
        guint8 max = f->type == MP_TUN_CLOSE ? MP_TUN_CLOSE_ABORT
                                             : MP_TUN_END_SHUTDOWN;
        if (f->len < 2 || !get_string(b, f->len, 1, p->str, TRUE, NULL))
            return bad_payload(p, f, error,
                               "expected u8 code, u8 n, n bytes of reason");
        if (v > max)
            return bad_payload(p, f, error, "code %u, expected 0..%u", v,
                               max);
        if (f->type == MP_TUN_CLOSE) {
            f->u.close.how = v;
            f->u.close.reason = p->str;
        } else {
            f->u.end.code = v;
            f->u.end.reason = p->str;
        }
        return TRUE;
    }
    case MP_TUN_PING:
    case MP_TUN_PONG:
        if (f->len != PING_LEN)
            return bad_payload(p, f, error, "expected %u bytes", PING_LEN);
        f->u.ping.token = mp_be64(b);
        f->u.ping.time_ns = mp_be64(b + 8);
        return TRUE;
    }
    g_assert_not_reached();
}

static void
parse_header(const guint8 *h, MpTunFrame *f)
{
    memset(f, 0, sizeof(*f));
    f->type = h[0];
    f->flags = h[1];
    f->stream = mp_be16(h + 2);
    f->len = mp_be32(h + 4);
    f->seq = mp_be64(h + 8);
}

MpFeedStatus
mp_tun_parser_feed(MpTunParser *p, const guint8 *buf, gsize len,
                   gsize *consumed, GError **error)
{
    const guint8 *pos = buf, *end = buf + len;
    MpFeedStatus st = MP_FEED_MORE;

    *consumed = 0;
    if (p->state == ST_ERROR) {
        if (error)
            *error = g_error_copy(p->sticky);
        return MP_FEED_ERROR;
    }
    while (pos < end && st == MP_FEED_MORE) {
        guint64 here = p->off + (guint64)(pos - buf) - p->acc_have;
        switch (p->state) {
        case ST_PREAMBLE: {
            const guint8 *pre = take(p, MP_TUN_PREAMBLE_LEN, &pos, end);
            if (!pre)
                break;
            if (memcmp(pre, MP_TUN_PREAMBLE, MP_TUN_PREAMBLE_LEN) != 0) {
                fail(p, error, MP_PARSE_ERROR_MAGIC,
                     "not a migproxy tunnel: first 8 bytes %02x %02x %02x "
                     "%02x %02x %02x %02x %02x, expected the preamble "
                     "8b 4d 50 54 55 4e 0d 0a",
                     pre[0], pre[1], pre[2], pre[3], pre[4], pre[5], pre[6],
                     pre[7]);
                st = MP_FEED_ERROR;
                break;
            }
            p->state = ST_HEADER;
            break;
        }
        case ST_HEADER: {
            const guint8 *h = take(p, MP_TUN_HEADER_LEN, &pos, end);
            if (!h)
                break;
            MpTunFrame f;
            parse_header(h, &f);
            f.offset = here;
            if (mp_be32(h + 16) != header_check(h)) {
                fail(p, error, MP_PARSE_ERROR_DECODE,
                     "frame header at offset %" G_GUINT64_FORMAT
                     " (type 0x%02x, stream %u, length %u) fails its check "
                     "(0x%08x, expected 0x%08x)",
                     here, f.type, f.stream, f.len, mp_be32(h + 16),
                     header_check(h));
                st = MP_FEED_ERROR;
                break;
            }
            if (!check_header(p, &f, error)) {
                st = MP_FEED_ERROR;
                break;
            }
            memcpy(p->header, h, MP_TUN_HEADER_LEN);
            p->frame_off = here;
            p->state = ST_BODY;
            break;
        }
        case ST_BODY: {
            MpTunFrame f;
            parse_header(p->header, &f);
            f.offset = p->frame_off;
            const guint8 *b = take(p, (gsize)f.len + MP_TUN_TRAILER_LEN, &pos,
                                   end);
            if (!b)
                break;
            guint64 want = payload_check(b, f.len, mp_be32(p->header + 16));
            guint64 got = mp_be64(b + f.len);
            if (got != want) {
                fail(p, error, MP_PARSE_ERROR_DECODE,
                     "%s frame of stream %u at offset %" G_GUINT64_FORMAT
                     ": payload of %u bytes fails its check (0x%016" G_GINT64_MODIFIER
                     "x, expected 0x%016" G_GINT64_MODIFIER "x)",
                     mp_tun_frame_type_name(f.type), f.stream, f.offset,
                     f.len, got, want);
                st = MP_FEED_ERROR;
                break;
            }
            f.payload = b;
            if (!decode_payload(p, &f, error)) {
                st = MP_FEED_ERROR;
                break;
            }
            if (f.type == MP_TUN_HELLO)
                p->hello_seen = TRUE;
            p->state = f.type == MP_TUN_END ? ST_END : ST_HEADER;
            if (p->cb(&f, p->user_data) == MP_REC_PAUSE)
                st = MP_FEED_PAUSED;
            if (p->state == ST_END)
                st = MP_FEED_END;
            break;
        }
        case ST_END:
        case ST_ERROR:
            g_assert_not_reached();
        }
    }
    if (p->state == ST_END)
        st = MP_FEED_END;
    *consumed = (gsize)(pos - buf);
    p->off += *consumed;
    return st;
}

gboolean
mp_tun_parser_finish(MpTunParser *p, GError **error)
{
    g_autofree char *what = NULL;

    switch (p->state) {
    case ST_END:
        return TRUE;
    case ST_ERROR:
        if (error)
            *error = g_error_copy(p->sticky);
        return FALSE;
    case ST_PREAMBLE:
        what = g_strdup("the preamble");
        break;
    case ST_HEADER:
        what = g_strdup(p->acc_have ? "a frame header"
                                    : "the next frame (no END frame came)");
        break;
    case ST_BODY: {
        MpTunFrame f;
        parse_header(p->header, &f);
        what = g_strdup_printf("the %s frame of stream %u at offset "
                               "%" G_GUINT64_FORMAT ", %" G_GSIZE_FORMAT
                               " of %u bytes after its header",
                               mp_tun_frame_type_name(f.type), f.stream,
                               p->frame_off, p->acc_have,
                               f.len + MP_TUN_TRAILER_LEN);
        break;
    }
    }
    mp_parse_error_set(error, p->channel, MP_PARSE_ERROR_TRUNCATED,
                       "tunnel ended at offset %" G_GUINT64_FORMAT
                       " while reading %s",
                       p->off, what);
    return FALSE;
}

/* --- writer ---------------------------------------------------------- */

void
mp_tun_write_preamble(GByteArray *out)
{
    g_byte_array_append(out, (const guint8 *)MP_TUN_PREAMBLE,
                        MP_TUN_PREAMBLE_LEN);
}

void
mp_tun_write_frame(GByteArray *out, guint8 type, guint8 flags,
                   guint16 stream, guint64 seq, const guint8 *payload,
                   guint32 len)
{
    guint8 h[MP_TUN_HEADER_LEN];
    guint8 t[MP_TUN_TRAILER_LEN];

    h[0] = type;
    h[1] = flags;
    mp_put_be16(h + 2, stream);
    mp_put_be32(h + 4, len);
    mp_put_be64(h + 8, seq);
    guint32 hc = header_check(h);
    mp_put_be32(h + 16, hc);
    mp_put_be64(t, payload_check(payload, len, hc));
    g_byte_array_append(out, h, sizeof(h));
    g_byte_array_append(out, payload, len);
    g_byte_array_append(out, t, sizeof(t));
}

/* Appends u8 n | s[n], truncating s to 255 bytes. */
static void
put_string(GByteArray *b, const char *s)
{
    gsize n = s ? MIN(strlen(s), 255) : 0;
    guint8 n8 = (guint8)n;
    g_byte_array_append(b, &n8, 1);
    g_byte_array_append(b, (const guint8 *)(s ? s : ""), n);
}

void
mp_tun_write_hello(GByteArray *out, const MpTunHello *h)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    guint8 f[40] = {0};

    mp_put_be32(f, MP_TUN_MAGIC);
    mp_put_be16(f + 4, h->version_min);
    mp_put_be16(f + 6, h->version_max);
    f[8] = h->role;
    f[9] = h->tls;
    mp_put_be32(f + 12, h->features);
    mp_put_be32(f + 16, h->page_size);
    mp_put_be64(f + 20, h->cache_bytes);
    mp_put_be32(f + 28, h->max_payload);
    mp_put_be64(f + 32, h->tunnel_id);
    g_byte_array_append(b, f, sizeof(f));
    put_string(b, h->software);
    mp_tun_write_frame(out, MP_TUN_HELLO, 0, MP_TUN_STREAM_CONTROL, 0, b->data,
                       b->len);
}

void
mp_tun_write_open(GByteArray *out, guint16 stream, const MpTunOpen *o)
{
    guint8 b[OPEN_ROUTE_LEN];

    mp_put_be32(b, o->session);
    mp_put_be16(b + 4, o->connection);
    b[6] = o->channel;
    b[7] = o->index;
    mp_put_be16(b + 8, o->reverse_of);
    /* route 0 (a single --listen) keeps version 1's 10-byte OPEN */
    mp_put_be16(b + 10, o->route);
    mp_tun_write_frame(out, MP_TUN_OPEN, 0, stream, 0, b,
                       o->route ? OPEN_ROUTE_LEN : OPEN_LEN);
}

void
mp_tun_write_data(GByteArray *out, guint8 flags, guint16 stream, guint64 seq,
                  guint32 raw_len, const guint8 *body, guint32 body_len)
{
    if (!(flags & MP_TUN_FLAG_COMPRESSED)) {
        mp_tun_write_frame(out, MP_TUN_DATA, flags, stream, seq, body,
                           body_len);
        return;
    }
    g_autoptr(GByteArray) b = g_byte_array_sized_new(body_len + 4);
    guint8 l[4];
    mp_put_be32(l, raw_len);
    g_byte_array_append(b, l, 4);
    g_byte_array_append(b, body, body_len);
    mp_tun_write_frame(out, MP_TUN_DATA, flags, stream, seq, b->data, b->len);
}

void
mp_tun_write_ack(GByteArray *out, const MpTunAckEntry *entries, guint32 count)
{
    g_autofree guint8 *b = g_malloc((gsize)count * ACK_ENTRY_LEN);

    for (guint32 i = 0; i < count; i++) {
        guint8 *e = b + (gsize)i * ACK_ENTRY_LEN;
        mp_put_be16(e, entries[i].stream);
        mp_put_be64(e + 2, entries[i].bulk_seq);
        mp_put_be64(e + 10, entries[i].urgent_seq);
    }
    mp_tun_write_frame(out, MP_TUN_ACK, 0, MP_TUN_STREAM_CONTROL, 0, b,
                       count * ACK_ENTRY_LEN);
}

static void
write_coded(GByteArray *out, guint8 type, guint8 flags, guint16 stream,
            guint64 seq, guint8 code, const char *reason)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    g_byte_array_append(b, &code, 1);
    put_string(b, reason);
    mp_tun_write_frame(out, type, flags, stream, seq, b->data, b->len);
}

void
mp_tun_write_close(GByteArray *out, guint8 flags, guint16 stream, guint64 seq,
                   guint8 how, const char *reason)
{
    write_coded(out, MP_TUN_CLOSE, flags, stream, seq, how, reason);
}

void
mp_tun_write_ping(GByteArray *out, guint8 type, guint64 token,
                  guint64 time_ns)
{
    guint8 b[PING_LEN];
    g_assert(type == MP_TUN_PING || type == MP_TUN_PONG);
    mp_put_be64(b, token);
    mp_put_be64(b + 8, time_ns);
    mp_tun_write_frame(out, type, 0, MP_TUN_STREAM_CONTROL, 0, b, sizeof(b));
}

void
mp_tun_write_end(GByteArray *out, guint8 code, const char *reason)
{
    write_coded(out, MP_TUN_END, 0, MP_TUN_STREAM_CONTROL, 0, code, reason);
}

/* --- handshake ------------------------------------------------------- */

gboolean
mp_tun_negotiate(const MpTunHello *mine, const MpTunHello *theirs,
                 MpTunAgreed *agreed, GError **error)
{
    guint16 lo = MAX(mine->version_min, theirs->version_min);
    guint16 hi = MIN(mine->version_max, theirs->version_max);

    if (lo > hi) {
        mp_parse_error_set(error, "tunnel handshake",
                           MP_PARSE_ERROR_VERSION,
                           "no common protocol version: we speak %u..%u, "
                           "the peer (%s) %u..%u",
                           mine->version_min, mine->version_max,
                           theirs->software ? theirs->software : "?",
                           theirs->version_min, theirs->version_max);
        return FALSE;
    }
    if (mine->role == theirs->role) {
        mp_parse_error_set(error, "tunnel handshake",
                           MP_PARSE_ERROR_UNSUPPORTED,
                           "both sides are %s sides: one `migproxy source` "
                           "talks to one `migproxy dest`",
                           mine->role == MP_TUN_ROLE_SOURCE ? "source"
                                                            : "destination");
        return FALSE;
    }
    if (mine->tls != theirs->tls) {
        mp_parse_error_set(error, "tunnel handshake",
                           MP_PARSE_ERROR_UNSUPPORTED,
                           "TLS expected by the %s side only (--tls-cert on "
                           "both ends, or on neither)",
                           mine->tls ? "local" : "peer's");
        return FALSE;
    }
    if (mine->page_size != theirs->page_size || mine->page_size == 0
        || mine->page_size > MP_MAX_PAGE_SIZE
        || (mine->page_size & (mine->page_size - 1))) {
        mp_parse_error_set(error, "tunnel handshake",
                           MP_PARSE_ERROR_UNSUPPORTED,
                           "page sizes differ or are invalid: %u here, %u "
                           "at the peer",
                           mine->page_size, theirs->page_size);
        return FALSE;
    }
    agreed->version = hi;
    agreed->features = mine->features & theirs->features & MP_TUN_FEATS_KNOWN;
    agreed->page_size = mine->page_size;
    /* both caches must be the same size, or their evictions differ */
    agreed->cache_bytes = MIN(mine->cache_bytes, theirs->cache_bytes);
    agreed->max_payload = MIN(MIN(mine->max_payload, theirs->max_payload),
                              MP_TUN_MAX_PAYLOAD_LIMIT);
    agreed->max_payload = MAX(agreed->max_payload, MP_TUN_MAX_PAYLOAD_HELLO);
    agreed->tls = mine->tls;
    agreed->tunnel_id = mine->role == MP_TUN_ROLE_SOURCE ? mine->tunnel_id
                                                         : theirs->tunnel_id;
    agreed->resumed = (agreed->features & MP_TUN_FEAT_RESUME)
                      && mine->tunnel_id
                      && mine->tunnel_id == theirs->tunnel_id;
    return TRUE;
}
