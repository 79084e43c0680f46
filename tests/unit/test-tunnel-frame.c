/* test-tunnel-frame.c: the tunnel's frame writer and parser: round trip
 * of every frame type fed whole, byte by byte and split at every point
 * (each chunk ending at a guard page), hostile inputs refused with errors
 * that name stream and offset, bounded buffering, the handshake's
 * negotiation. */
#include "config.h"
#include <string.h>
#include <criterion/criterion.h>
#include "feed-util.h"
#include "tunnel-frame.h"

typedef struct {
    GString *log;
    gboolean pause;
} Sink;

static MpRecordAction
on_frame(const MpTunFrame *f, gpointer user_data)
{
    Sink *s = user_data;
    GString *l = s->log;

    g_string_append_printf(l, "off=%" G_GUINT64_FORMAT " %s fl=%x st=%u "
                              "seq=%" G_GUINT64_FORMAT " len=%u",
                           f->offset, mp_tun_frame_type_name(f->type),
                           f->flags, f->stream, f->seq, f->len);
    switch (f->type) {
    case MP_TUN_HELLO:
        g_string_append_printf(
            l, " v=%u..%u role=%u tls=%u feat=%x page=%u cache=%" G_GUINT64_FORMAT
               " max=%u id=%" G_GUINT64_FORMAT " sw=%s",
            f->u.hello.version_min, f->u.hello.version_max, f->u.hello.role,
            f->u.hello.tls, f->u.hello.features, f->u.hello.page_size,
            f->u.hello.cache_bytes, f->u.hello.max_payload,
            f->u.hello.tunnel_id, f->u.hello.software);
        break;
    case MP_TUN_OPEN:
        g_string_append_printf(l, " session=%u conn=%u %s/%u rev=%u",
                               f->u.open.session, f->u.open.connection,
                               mp_tun_channel_name(f->u.open.channel),
                               f->u.open.index, f->u.open.reverse_of);
        if (f->u.open.route)
            g_string_append_printf(l, " route=%u", f->u.open.route);
        break;
    case MP_TUN_DATA:
    case MP_TUN_PAGES: {
        g_string_append_printf(l, " raw=%u body=", f->u.data.raw_len);
        for (guint32 i = 0; i < f->u.data.body_len; i++)
            g_string_append_printf(l, "%02x", f->u.data.body[i]);
        break;
    }
    case MP_TUN_ACK:
        for (guint32 i = 0; i < f->u.ack.count; i++) {
            MpTunAckEntry e = mp_tun_ack_entry(f, i);
            g_string_append_printf(l, " [%u %" G_GUINT64_FORMAT
                                      " %" G_GUINT64_FORMAT "]",
                                   e.stream, e.bulk_seq, e.urgent_seq);
        }
        break;
    case MP_TUN_CLOSE:
        g_string_append_printf(l, " how=%u '%s'", f->u.close.how,
                               f->u.close.reason);
        break;
    case MP_TUN_PING:
    case MP_TUN_PONG:
        g_string_append_printf(l, " token=%" G_GUINT64_FORMAT
                                  " t=%" G_GUINT64_FORMAT,
                               f->u.ping.token, f->u.ping.time_ns);
        break;
    case MP_TUN_END:
        g_string_append_printf(l, " code=%u '%s'", f->u.end.code,
                               f->u.end.reason);
        break;
    }
    g_string_append_c(l, '\n');
    return s->pause ? MP_REC_PAUSE : MP_REC_CONTINUE;
}

/* Feeds data in chunks of at most `chunk` bytes (0: whole), or split once
 * at `split`; each chunk is a guarded copy.  Returns the log with the
 * final status. */
static char *
run(const guint8 *data, gsize len, gsize chunk, gsize split, guint32 max,
    gboolean pause)
{
    Sink s = {g_string_new(NULL), pause};
    g_autoptr(MpTunParser) p = mp_tun_parser_new("test tunnel", on_frame, &s);
    g_autoptr(GError) err = NULL;
    MpFeedStatus st = MP_FEED_MORE;
    gsize at = 0;

    if (max)
        mp_tun_parser_set_max_payload(p, max);
    while (at < len && st != MP_FEED_ERROR && st != MP_FEED_END) {
        gsize n = len - at;
        if (chunk)
            n = MIN(n, chunk);
        else if (split && at < split)
            n = split - at;
        guint8 *g = guarded_dup(data + at, n);
        gsize off = 0;
        do {
            gsize used = 0;
            st = mp_tun_parser_feed(p, g + off, n - off, &used, &err);
            off += used;
        } while (st == MP_FEED_PAUSED);
        guarded_free(g, n);
        at += off;
    }
    if (st == MP_FEED_ERROR)
        g_string_append_printf(s.log, "ERROR %d %s\n", err->code,
                               err->message);
    else if (st == MP_FEED_END)
        g_string_append_printf(s.log, "END at %" G_GSIZE_FORMAT "\n", at);
    else if (!mp_tun_parser_finish(p, &err))
        g_string_append_printf(s.log, "TRUNC %s\n", err->message);
    return g_string_free(s.log, FALSE);
}

/* Every split gives the same log as the whole feed. */
static char *
check_splits(const guint8 *data, gsize len, guint32 max)
{
    char *whole = run(data, len, 0, 0, max, FALSE);
    g_autofree char *bytes = run(data, len, 1, 0, max, FALSE);
    cr_assert_str_eq(bytes, whole);
    g_autofree char *paused = run(data, len, 0, 0, max, TRUE);
    cr_assert_str_eq(paused, whole);
    for (gsize s = 1; s < len; s++) {
        g_autofree char *split = run(data, len, 0, s, max, FALSE);
        cr_assert_str_eq(split, whole, "split at %zu", s);
    }
    return whole;
}

static void
hello(GByteArray *b, guint8 role)
{
    MpTunHello h = {
        .version_min = 1,
        .version_max = 1,
        .role = role,
        .tls = MP_TUN_TLS_NONE,
        .features = MP_TUN_FEATS_KNOWN,
        .page_size = 4096,
        .cache_bytes = 64 << 20,
        .max_payload = MP_TUN_MAX_PAYLOAD_DEFAULT,
        .tunnel_id = 0,
        .software = "migproxy 0.1.0",
    };
    mp_tun_write_hello(b, &h);
}

static GByteArray *
all_frames(void)
{
    GByteArray *b = g_byte_array_new();
    const guint8 raw[] = {'Q', 'E', 'V', 'M', 0, 0, 0, 3};
    const guint8 batch[] = {1, 2, 3};
    MpTunOpen main_o = {.session = 7, .connection = 0,
                        .channel = MP_TUN_CH_MAIN};
    MpTunOpen rp_o = {.session = 7, .connection = 0,
                      .channel = MP_TUN_CH_RETURN_PATH, .reverse_of = 1};
    MpTunOpen mfd_o = {.session = 7, .connection = 1,
                       .channel = MP_TUN_CH_MULTIFD, .index = 3};
    MpTunAckEntry acks[] = {{1, 10, 2}, {2, 0, 5}};

    mp_tun_write_preamble(b);
    hello(b, MP_TUN_ROLE_SOURCE);
    mp_tun_write_open(b, 1, &main_o);
    mp_tun_write_open(b, 2, &rp_o);
    mp_tun_write_open(b, 3, &mfd_o);
    mp_tun_write_data(b, 0, 1, 1, 0, raw, sizeof(raw));
    mp_tun_write_data(b, MP_TUN_FLAG_COMPRESSED, 1, 2, 4096, raw, 4);
    mp_tun_write_frame(b, MP_TUN_PAGES, MP_TUN_FLAG_URGENT, 1, 1, batch,
                       sizeof(batch));
    mp_tun_write_data(b, MP_TUN_FLAG_URGENT, 2, 1, 0, raw, 2);
    mp_tun_write_ack(b, acks, 2);
    mp_tun_write_ping(b, MP_TUN_PING, 42, 1000);
    mp_tun_write_ping(b, MP_TUN_PONG, 42, 1000);
    mp_tun_write_close(b, 0, 1, 3, MP_TUN_CLOSE_EOF, "");
    mp_tun_write_close(b, 0, 3, 1, MP_TUN_CLOSE_ABORT, "source QEMU reset");
    mp_tun_write_end(b, MP_TUN_END_DONE, "bye");
    return b;
}

Test(tunnel_frame, round_trip_every_split)
{
    g_autoptr(GByteArray) b = all_frames();
    g_autofree char *log = check_splits(b->data, b->len, 0);
    const char *want =
        "off=8 HELLO fl=0 st=0 seq=0 len=55 v=1..1 role=1 tls=0 feat=7ff "
        "page=4096 cache=67108864 max=1048576 id=0 sw=migproxy 0.1.0\n"
        "off=91 OPEN fl=0 st=1 seq=0 len=10 session=7 conn=0 main/0 rev=0\n"
        "off=129 OPEN fl=0 st=2 seq=0 len=10 session=7 conn=0 "
        "return-path/0 rev=1\n"
        "off=167 OPEN fl=0 st=3 seq=0 len=10 session=7 conn=1 multifd/3 "
        "rev=0\n"
        "off=205 DATA fl=0 st=1 seq=1 len=8 raw=8 body=5145564d00000003\n"
        "off=241 DATA fl=2 st=1 seq=2 len=8 raw=4096 body=5145564d\n"
        "off=277 PAGES fl=1 st=1 seq=1 len=3 raw=3 body=010203\n"
        "off=308 DATA fl=1 st=2 seq=1 len=2 raw=2 body=5145\n"
        "off=338 ACK fl=0 st=0 seq=0 len=36 [1 10 2] [2 0 5]\n"
        "off=402 PING fl=0 st=0 seq=0 len=16 token=42 t=1000\n"
        "off=446 PONG fl=0 st=0 seq=0 len=16 token=42 t=1000\n"
        "off=490 CLOSE fl=0 st=1 seq=3 len=2 how=0 ''\n"
        "off=520 CLOSE fl=0 st=3 seq=1 len=19 how=1 'source QEMU reset'\n"
        "off=567 END fl=0 st=0 seq=0 len=5 code=0 'bye'\n"
        "END at 600\n";
    cr_assert_str_eq(log, want);
    cr_assert_eq(b->len, 600);
}

Test(tunnel_frame, bytes_after_end_are_not_ours)
{
    g_autoptr(GByteArray) b = all_frames();
    g_byte_array_append(b, (const guint8 *)"junk", 4);
    g_autofree char *log = run(b->data, b->len, 0, 0, 0, FALSE);
    cr_assert(strstr(log, "END at 600\n") != NULL, "%s", log);
}

Test(tunnel_frame, big_payload_after_raising_the_bound)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    gsize n = 300000;
    g_autofree guint8 *big = g_malloc(n);
    for (gsize i = 0; i < n; i++)
        big[i] = (guint8)(i * 7);
    mp_tun_write_preamble(b);
    hello(b, MP_TUN_ROLE_DEST);
    mp_tun_write_data(b, 0, 2, 1, 0, big, n);
    mp_tun_write_end(b, MP_TUN_END_DONE, "");
    /* whole and in 4 KiB chunks, split inside the payload */
    g_autofree char *whole = run(b->data, b->len, 0, 0, 1 << 20, FALSE);
    g_autofree char *chunks = run(b->data, b->len, 4096, 0, 1 << 20, FALSE);
    g_autofree char *split = run(b->data, b->len, 0, 1000, 1 << 20, FALSE);
    cr_assert_str_eq(chunks, whole);
    cr_assert_str_eq(split, whole);
    cr_assert(strstr(whole, "END at") != NULL);
    /* the default bound refuses it before buffering its payload */
    g_autofree char *small = run(b->data, b->len, 0, 0, 0, FALSE);
    cr_assert(strstr(small, "DATA frame of stream 2 at offset 91: payload of "
                            "300000 bytes, at most 4096 allowed")
                  != NULL,
              "%s", small);
}

/* Parses `b` whole and asserts the error (or truncation) text. */
static void
expect_error(GByteArray *b, const char *text)
{
    g_autofree char *log = check_splits(b->data, b->len, 0);
    cr_assert(strstr(log, text) != NULL, "expected '%s' in:\n%s", text, log);
    cr_assert(strstr(log, "ERROR") != NULL || strstr(log, "TRUNC") != NULL,
              "%s", log);
}

static GByteArray *
after_hello(void)
{
    GByteArray *b = g_byte_array_new();
    mp_tun_write_preamble(b);
    hello(b, MP_TUN_ROLE_SOURCE);
    return b;
}

Test(tunnel_frame, not_a_tunnel)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    g_byte_array_append(b, (const guint8 *)"QEVM\0\0\0\3", 8);
    expect_error(b, "test tunnel: not a migproxy tunnel: first 8 bytes 51 45 "
                    "56 4d 00 00 00 03, expected the preamble");
}

Test(tunnel_frame, corrupt_header_refused_before_its_payload)
{
    g_autoptr(GByteArray) b = after_hello();
    gsize at = b->len;
    mp_tun_write_data(b, 0, 1, 1, 0, (const guint8 *)"abcd", 4);
    b->data[at + 5] = 0x40; /* length: 0x400004 */
    g_byte_array_set_size(b, at + MP_TUN_HEADER_LEN); /* header only */
    expect_error(b, "frame header at offset 91 (type 0x03, stream 1, length "
                    "4194308) fails its check");
}

Test(tunnel_frame, corrupt_payload)
{
    g_autoptr(GByteArray) b = after_hello();
    gsize at = b->len;
    mp_tun_write_data(b, 0, 1, 1, 0, (const guint8 *)"abcd", 4);
    b->data[at + MP_TUN_HEADER_LEN + 2] ^= 1;
    expect_error(b, "DATA frame of stream 1 at offset 91: payload of 4 bytes "
                    "fails its check");
}

Test(tunnel_frame, frame_before_hello)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    mp_tun_write_preamble(b);
    mp_tun_write_ping(b, MP_TUN_PING, 1, 2);
    expect_error(b, "PING frame at offset 8 before the handshake, expected "
                    "HELLO");
}

Test(tunnel_frame, second_hello)
{
    g_autoptr(GByteArray) b = after_hello();
    hello(b, MP_TUN_ROLE_SOURCE);
    expect_error(b, "second HELLO at offset 91");
}

Test(tunnel_frame, bad_hello_fields)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    MpTunHello h = {.version_min = 2, .version_max = 1, .role = 1,
                    .page_size = 4096};
    mp_tun_write_preamble(b);
    mp_tun_write_hello(b, &h);
    expect_error(b, "HELLO frame of stream 0 at offset 8 (payload 41 bytes): "
                    "versions 2..1, role 1, tls 0");

    g_autoptr(GByteArray) m = g_byte_array_new();
    guint8 pl[41] = {'X', 'X', 'X', 'X'};
    mp_tun_write_preamble(m);
    mp_tun_write_frame(m, MP_TUN_HELLO, 0, 0, 0, pl, sizeof(pl));
    expect_error(m, "HELLO at offset 8: magic 0x58585858, expected "
                    "0x4d50544e");

    g_autoptr(GByteArray) s = g_byte_array_new();
    guint8 sh[20] = {0x4d, 0x50, 0x54, 0x4e};
    mp_tun_write_preamble(s);
    mp_tun_write_frame(s, MP_TUN_HELLO, 0, 0, 0, sh, sizeof(sh));
    expect_error(s, "expected at least 41 bytes");

    g_autoptr(GByteArray) str = g_byte_array_new();
    guint8 st[41] = {0x4d, 0x50, 0x54, 0x4e, 0, 1, 0, 1, 1};
    st[40] = 9; /* 9 bytes of software name, none there */
    mp_tun_write_preamble(str);
    mp_tun_write_frame(str, MP_TUN_HELLO, 0, 0, 0, st, sizeof(st));
    expect_error(str, "software name of 9 bytes runs past the payload");
}

Test(tunnel_frame, unknown_type_and_flags)
{
    g_autoptr(GByteArray) b = after_hello();
    mp_tun_write_frame(b, 0x33, 0, 1, 0, NULL, 0);
    expect_error(b, "unknown frame type 0x33 at offset 91 (stream 1), "
                    "expected 0x01..0x09");

    g_autoptr(GByteArray) f = after_hello();
    mp_tun_write_frame(f, MP_TUN_OPEN, MP_TUN_FLAG_COMPRESSED, 1, 0, NULL, 0);
    expect_error(f, "OPEN frame of stream 1 at offset 91: flags 0x02 not "
                    "valid for it");

    g_autoptr(GByteArray) u = after_hello();
    mp_tun_write_frame(u, MP_TUN_DATA, 0x80, 1, 1, NULL, 0);
    expect_error(u, "flags 0x80 not valid");
}

Test(tunnel_frame, stream_and_seq_rules)
{
    g_autoptr(GByteArray) a = after_hello();
    mp_tun_write_data(a, 0, 0, 1, 0, (const guint8 *)"x", 1);
    expect_error(a, "DATA frame at offset 91 on stream 0, expected a stream "
                    "other than 0");

    g_autoptr(GByteArray) b = after_hello();
    mp_tun_write_frame(b, MP_TUN_PING, 0, 5, 0, NULL, 0);
    expect_error(b, "PING frame at offset 91 on stream 5, expected stream 0");

    g_autoptr(GByteArray) c = after_hello();
    mp_tun_write_data(c, 0, 1, 0, 0, (const guint8 *)"x", 1);
    expect_error(c, "DATA frame of stream 1 at offset 91: seq 0, expected a "
                    "sequence number from 1");

    g_autoptr(GByteArray) d = after_hello();
    MpTunOpen o = {.channel = MP_TUN_CH_MAIN};
    gsize at = d->len;
    mp_tun_write_open(d, 1, &o);
    /* seq 9 on an OPEN: rewrite the header, fix its check */
    g_byte_array_set_size(d, at);
    guint8 pl[10] = {0};
    pl[6] = MP_TUN_CH_MAIN;
    mp_tun_write_frame(d, MP_TUN_OPEN, 0, 1, 9, pl, sizeof(pl));
    expect_error(d, "OPEN frame of stream 1 at offset 91: seq 9, expected 0");
}

/* Several migrations at once: an OPEN names its route (the source
 * side's --listen, dest's --to of the same rank) in two more bytes; route
 * 0 keeps the 10-byte OPEN, so a single --listen writes what it always
 * did. */
Test(tunnel_frame, open_with_route)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    MpTunOpen m = {
        .session = 2, .connection = 0, .channel = MP_TUN_CH_MAIN, .route = 3};
    MpTunOpen rp = {.session = 2,
                    .connection = 0,
                    .channel = MP_TUN_CH_RETURN_PATH,
                    .reverse_of = 1,
                    .route = 3};
    MpTunOpen z = {.session = 1, .channel = MP_TUN_CH_MAIN};

    mp_tun_write_preamble(b);
    hello(b, MP_TUN_ROLE_SOURCE);
    mp_tun_write_open(b, 1, &m);
    mp_tun_write_open(b, 2, &rp);
    mp_tun_write_open(b, 3, &z);
    mp_tun_write_end(b, MP_TUN_END_DONE, "");
    g_autofree char *log = check_splits(b->data, b->len, 0);
    cr_assert(strstr(log, "off=91 OPEN fl=0 st=1 seq=0 len=12 session=2 "
                          "conn=0 main/0 rev=0 route=3\n"),
              "%s", log);
    cr_assert(strstr(log, "OPEN fl=0 st=2 seq=0 len=12 session=2 conn=0 "
                          "return-path/0 rev=1 route=3\n"),
              "%s", log);
    cr_assert(strstr(log, "OPEN fl=0 st=3 seq=0 len=10 session=1 conn=0 "
                          "main/0 rev=0\n"),
              "%s", log);

    g_autoptr(GByteArray) c = after_hello();
    guint8 op[12] = {0, 0, 0, 1, 0, 0, MP_TUN_CH_MAIN, 0, 0, 0, 0, 0};
    mp_tun_write_frame(c, MP_TUN_OPEN, 0, 1, 0, op, 11);
    expect_error(c, "OPEN frame of stream 1 at offset 91 (payload 11 bytes): "
                    "expected 10 or 12 bytes");

    g_autoptr(GByteArray) d = after_hello();
    mp_tun_write_frame(d, MP_TUN_OPEN, 0, 1, 0, op, 12);
    expect_error(d, "route 0 written out, expected the 10-byte form");
}

Test(tunnel_frame, bad_payloads)
{
    g_autoptr(GByteArray) a = after_hello();
    guint8 ack[17] = {0};
    mp_tun_write_frame(a, MP_TUN_ACK, 0, 0, 0, ack, sizeof(ack));
    expect_error(a, "ACK frame of stream 0 at offset 91 (payload 17 bytes): "
                    "expected a non-zero multiple of 18 bytes");

    g_autoptr(GByteArray) b = after_hello();
    guint8 cl[3] = {0, 5, 'x'};
    mp_tun_write_frame(b, MP_TUN_CLOSE, 0, 1, 1, cl, sizeof(cl));
    expect_error(b, "CLOSE frame of stream 1 at offset 91 (payload 3 bytes): "
                    "expected u8 code, u8 n, n bytes of reason");

    g_autoptr(GByteArray) c = after_hello();
    mp_tun_write_end(c, 9, "x");
    expect_error(c, "END frame of stream 0 at offset 91 (payload 3 bytes): "
                    "code 9, expected 0..3");

    g_autoptr(GByteArray) d = after_hello();
    guint8 op[10] = {0, 0, 0, 1, 0, 0, MP_TUN_CH_RETURN_PATH, 0, 0, 0};
    mp_tun_write_frame(d, MP_TUN_OPEN, 0, 2, 0, op, sizeof(op));
    expect_error(d, "reverse_of 0 for a return-path stream");

    g_autoptr(GByteArray) e = after_hello();
    op[6] = 77;
    mp_tun_write_frame(e, MP_TUN_OPEN, 0, 2, 0, op, sizeof(op));
    expect_error(e, "channel kind 77, expected 0..5");

    g_autoptr(GByteArray) f = after_hello();
    mp_tun_write_frame(f, MP_TUN_DATA, MP_TUN_FLAG_COMPRESSED, 1, 1,
                       (const guint8 *)"ab", 2);
    expect_error(f, "compressed, expected a be32 length first");

    g_autoptr(GByteArray) g = after_hello();
    mp_tun_write_data(g, MP_TUN_FLAG_COMPRESSED, 1, 1, 0x7fffffff,
                      (const guint8 *)"ab", 2);
    expect_error(g, "decompresses to 2147483647 bytes, at most 8388608 "
                    "allowed");

    g_autoptr(GByteArray) h = after_hello();
    mp_tun_write_frame(h, MP_TUN_PING, 0, 0, 0, (const guint8 *)"ab", 2);
    expect_error(h, "PING frame of stream 0 at offset 91 (payload 2 bytes): "
                    "expected 16 bytes");
}

Test(tunnel_frame, truncation_names_what_was_read)
{
    g_autoptr(GByteArray) b = after_hello();
    g_autofree char *none = run(b->data, b->len, 0, 0, 0, FALSE);
    cr_assert(strstr(none, "TRUNC test tunnel: tunnel ended at offset 91 "
                           "while reading the next frame (no END frame "
                           "came)")
                  != NULL,
              "%s", none);
    g_autofree char *pre = run(b->data, 3, 0, 0, 0, FALSE);
    cr_assert(strstr(pre, "while reading the preamble") != NULL, "%s", pre);

    mp_tun_write_data(b, 0, 1, 1, 0, (const guint8 *)"abcdef", 6);
    g_autofree char *mid = run(b->data, b->len - 3, 0, 0, 0, FALSE);
    cr_assert(strstr(mid, "tunnel ended at offset 122 while reading the DATA "
                          "frame of stream 1 at offset 91, 11 of 14 bytes "
                          "after its header")
                  != NULL,
              "%s", mid);
    g_autofree char *hdr = run(b->data, 96, 0, 0, 0, FALSE);
    cr_assert(strstr(hdr, "while reading a frame header") != NULL, "%s", hdr);
}

Test(tunnel_frame, errors_are_sticky)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    g_byte_array_append(b, (const guint8 *)"NOTATUNNEL", 10);
    Sink s = {g_string_new(NULL), FALSE};
    g_autoptr(MpTunParser) p = mp_tun_parser_new("t", on_frame, &s);
    g_autoptr(GError) e1 = NULL;
    g_autoptr(GError) e2 = NULL;
    gsize used;
    cr_assert_eq(mp_tun_parser_feed(p, b->data, b->len, &used, &e1),
                 MP_FEED_ERROR);
    cr_assert_eq(mp_tun_parser_feed(p, b->data, b->len, &used, &e2),
                 MP_FEED_ERROR);
    cr_assert_eq(used, 0);
    cr_assert_str_eq(e1->message, e2->message);
    g_autoptr(GError) e3 = NULL;
    cr_assert_not(mp_tun_parser_finish(p, &e3));
    cr_assert_str_eq(e3->message, e1->message);
    g_string_free(s.log, TRUE);
}

static MpTunHello
hello_of(guint8 role)
{
    MpTunHello h = {.version_min = 1, .version_max = 3, .role = role,
                    .features = MP_TUN_FEATS_KNOWN, .page_size = 4096,
                    .cache_bytes = 1 << 30, .max_payload = 1 << 20,
                    .software = "t"};
    return h;
}

Test(tunnel_frame, negotiate)
{
    MpTunHello a = hello_of(MP_TUN_ROLE_SOURCE);
    MpTunHello b = hello_of(MP_TUN_ROLE_DEST);
    MpTunAgreed x, y;
    g_autoptr(GError) err = NULL;

    b.version_max = 2;
    b.features = MP_TUN_FEAT_ZSTD_PAGES | MP_TUN_FEAT_DELTA | 0x8000;
    b.cache_bytes = 256 << 20;
    b.max_payload = 64 << 20;
    cr_assert(mp_tun_negotiate(&a, &b, &x, &err));
    cr_assert(mp_tun_negotiate(&b, &a, &y, &err));
    /* both sides agree alike */
    cr_assert_eq(x.version, y.version);
    cr_assert_eq(x.features, y.features);
    cr_assert_eq(x.page_size, y.page_size);
    cr_assert_eq(x.cache_bytes, y.cache_bytes);
    cr_assert_eq(x.max_payload, y.max_payload);
    cr_assert_eq(x.tls, y.tls);
    cr_assert_eq(x.version, 2);
    cr_assert_eq(x.features, MP_TUN_FEAT_ZSTD_PAGES | MP_TUN_FEAT_DELTA);
    cr_assert_eq(x.cache_bytes, 256 << 20);
    cr_assert_eq(x.max_payload, 1 << 20);

    b = hello_of(MP_TUN_ROLE_DEST);
    b.version_min = 4;
    b.version_max = 5;
    cr_assert_not(mp_tun_negotiate(&a, &b, &x, &err));
    cr_assert(strstr(err->message, "no common protocol version: we speak "
                                   "1..3, the peer (t) 4..5"));
    g_clear_error(&err);

    b = hello_of(MP_TUN_ROLE_SOURCE);
    cr_assert_not(mp_tun_negotiate(&a, &b, &x, &err));
    cr_assert(strstr(err->message, "both sides are source sides"));
    g_clear_error(&err);

    b = hello_of(MP_TUN_ROLE_DEST);
    b.tls = MP_TUN_TLS_REQUIRED;
    cr_assert_not(mp_tun_negotiate(&a, &b, &x, &err));
    cr_assert(strstr(err->message, "TLS expected by the peer's side only"));
    g_clear_error(&err);

    b = hello_of(MP_TUN_ROLE_DEST);
    b.page_size = 65536;
    cr_assert_not(mp_tun_negotiate(&a, &b, &x, &err));
    cr_assert(strstr(err->message, "page sizes differ or are invalid: 4096 "
                                   "here, 65536 at the peer"));
}

/* A new tunnel is named by the source side's id; a connection resumes it
 * only when both HELLOs carry that id and both offer RESUME: a dest that
 * holds no tunnel (0) or another one does not resume, and neither do
 * two sides without the feature. */
Test(tunnel_frame, negotiate_resume)
{
    MpTunHello a = hello_of(MP_TUN_ROLE_SOURCE);
    MpTunHello b = hello_of(MP_TUN_ROLE_DEST);
    MpTunAgreed x, y;
    g_autoptr(GError) err = NULL;

    a.tunnel_id = 0x1234;
    cr_assert(mp_tun_negotiate(&a, &b, &x, &err));
    cr_assert(mp_tun_negotiate(&b, &a, &y, &err));
    cr_assert_eq(x.tunnel_id, 0x1234);
    cr_assert_eq(y.tunnel_id, 0x1234);
    cr_assert_not(x.resumed);
    cr_assert_not(y.resumed);

    b.tunnel_id = 0x1234;
    cr_assert(mp_tun_negotiate(&a, &b, &x, &err));
    cr_assert(mp_tun_negotiate(&b, &a, &y, &err));
    cr_assert(x.resumed && y.resumed);

    b.tunnel_id = 0x9999;
    cr_assert(mp_tun_negotiate(&a, &b, &x, &err));
    cr_assert(mp_tun_negotiate(&b, &a, &y, &err));
    cr_assert_not(x.resumed || y.resumed);
    cr_assert_eq(y.tunnel_id, 0x1234);

    b.tunnel_id = 0x1234;
    b.features &= ~MP_TUN_FEAT_RESUME;
    cr_assert(mp_tun_negotiate(&a, &b, &x, &err));
    cr_assert(mp_tun_negotiate(&b, &a, &y, &err));
    cr_assert_not(x.resumed || y.resumed);
}

/* Routes (the 12-byte OPEN) are agreed only when both HELLOs offer
 * MP_TUN_FEAT_ROUTES: a peer from before routes (the bit clear) does not
 * get them, whichever side it is. */
Test(tunnel_frame, negotiate_routes)
{
    MpTunHello a = hello_of(MP_TUN_ROLE_SOURCE);
    MpTunHello b = hello_of(MP_TUN_ROLE_DEST);
    MpTunAgreed x, y;
    g_autoptr(GError) err = NULL;

    cr_assert(MP_TUN_FEATS_KNOWN & MP_TUN_FEAT_ROUTES);
    cr_assert(mp_tun_negotiate(&a, &b, &x, &err));
    cr_assert(mp_tun_negotiate(&b, &a, &y, &err));
    cr_assert(x.features & MP_TUN_FEAT_ROUTES);
    cr_assert(y.features & MP_TUN_FEAT_ROUTES);

    b.features &= ~MP_TUN_FEAT_ROUTES; /* an older dest */
    cr_assert(mp_tun_negotiate(&a, &b, &x, &err));
    cr_assert(mp_tun_negotiate(&b, &a, &y, &err));
    cr_assert_not(x.features & MP_TUN_FEAT_ROUTES);
    cr_assert_not(y.features & MP_TUN_FEAT_ROUTES);
    cr_assert_eq(x.features, y.features);

    b = hello_of(MP_TUN_ROLE_DEST);
    a.features &= ~MP_TUN_FEAT_ROUTES; /* an older source side */
    cr_assert(mp_tun_negotiate(&a, &b, &x, &err));
    cr_assert(mp_tun_negotiate(&b, &a, &y, &err));
    cr_assert_not(x.features & MP_TUN_FEAT_ROUTES);
    cr_assert_not(y.features & MP_TUN_FEAT_ROUTES);
}
