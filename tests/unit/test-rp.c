/* test-rp.c: the return-path parser, whole, per byte and split everywhere. */
#include <string.h>
#include <criterion/criterion.h>
#include "feed-util.h"
#include "rp-parser.h"

#define CHANNEL "dst return-path"

static gpointer
rp_create(MpRecordFunc cb, gpointer user_data)
{
    return mp_rp_parser_new(CHANNEL, cb, user_data);
}

static MpFeedStatus
rp_feed(gpointer p, const guint8 *buf, gsize len, gsize *consumed,
        GError **error)
{
    return mp_rp_parser_feed(p, buf, len, consumed, error);
}

static gboolean
rp_finish(gpointer p, GError **error)
{
    return mp_rp_parser_finish(p, error);
}

static void
rp_destroy(gpointer p)
{
    mp_rp_parser_free(p);
}

static const MpParserOps rp_ops = {rp_create, rp_feed, rp_finish, rp_destroy};

/* Byte builders */

static void
put16(GByteArray *b, guint16 v)
{
    guint8 t[2];
    mp_put_be16(t, v);
    g_byte_array_append(b, t, 2);
}

static void
put32(GByteArray *b, guint32 v)
{
    guint8 t[4];
    mp_put_be32(t, v);
    g_byte_array_append(b, t, 4);
}

static void
put64(GByteArray *b, guint64 v)
{
    guint8 t[8];
    mp_put_be64(t, v);
    g_byte_array_append(b, t, 8);
}

static void
msg_u32(GByteArray *b, guint16 type, guint32 v)
{
    put16(b, type);
    put16(b, 4);
    put32(b, v);
}

static void
msg_req_pages_id(GByteArray *b, guint64 start, guint32 len, const char *id)
{
    guint8 n = strlen(id);
    put16(b, MP_RP_MSG_REQ_PAGES_ID);
    put16(b, 13 + n);
    put64(b, start);
    put32(b, len);
    g_byte_array_append(b, &n, 1);
    g_byte_array_append(b, (const guint8 *)id, n);
}

static void
msg_req_pages(GByteArray *b, guint64 start, guint32 len)
{
    put16(b, MP_RP_MSG_REQ_PAGES);
    put16(b, 12);
    put64(b, start);
    put32(b, len);
}

static void
msg_recv_bitmap(GByteArray *b, const char *id, guint64 size, guint64 mark)
{
    guint8 n = strlen(id);
    put16(b, MP_RP_MSG_RECV_BITMAP);
    put16(b, 1 + n);
    g_byte_array_append(b, &n, 1);
    g_byte_array_append(b, (const guint8 *)id, n);
    put64(b, size);
    for (guint64 i = 0; i < size; i++) {
        guint8 v = (guint8)(i * 7 + 1);
        g_byte_array_append(b, &v, 1);
    }
    put64(b, mark);
}

/* With MP_SEED_DIR set, every checked input is also written there as a
 * seed for tests/fuzz/fuzz-rp (behind a selector byte). */
static void
save_seed(GByteArray *b)
{
    const char *dir = g_getenv("MP_SEED_DIR");
    const guint8 sel = 0x35;

    if (!dir)
        return;
    g_autoptr(GByteArray) seed = g_byte_array_new();
    g_byte_array_append(seed, &sel, 1);
    g_byte_array_append(seed, b->data, b->len);
    g_autofree char *sum =
        g_compute_checksum_for_data(G_CHECKSUM_SHA1, seed->data, seed->len);
    g_autofree char *path = g_build_filename(dir, sum, NULL);
    cr_assert(
        g_file_set_contents(path, (const char *)seed->data, seed->len, NULL));
}

/* Runs every feeder over `b` and compares with `want`. */
static void
check(GByteArray *b, const char *want)
{
    save_seed(b);
    g_autofree char *log = feed_check_all_splits(&rp_ops, b->data, b->len);
    cr_assert_str_eq(log, want);
}

static char *
error_line(MpParseErrorCode code, const char *msg)
{
    return g_strdup_printf("ERROR %d " CHANNEL ": %s\n", code, msg);
}

Test(rp, every_message_type)
{
    g_autoptr(GByteArray) b = g_byte_array_new();

    msg_u32(b, MP_RP_MSG_PONG, 1);
    msg_req_pages_id(b, 0x7000, 4096, "pc.ram");
    msg_req_pages(b, 0x9000, 4096);
    msg_req_pages_id(b, 0x200000, 2097152, "mem1");
    msg_req_pages(b, 0x400000, 2097152);
    msg_recv_bitmap(b, "pc.ram", 16, MP_RAMBLOCK_RECV_BITMAP_ENDING);
    msg_u32(b, MP_RP_MSG_RESUME_ACK, 1);
    put16(b, MP_RP_MSG_SWITCHOVER_ACK);
    put16(b, 0);
    msg_u32(b, MP_RP_MSG_SHUT, 0);

    check(b, "off=0 len=8 rp_message type=PONG len=4 value=1\n"
             "off=8 len=23 rp_message type=REQ_PAGES_ID len=19 "
             "block=\"pc.ram\" start=0x7000 req_len=4096\n"
             "off=31 len=16 rp_message type=REQ_PAGES len=12 "
             "block=\"pc.ram\" start=0x9000 req_len=4096\n"
             "off=47 len=21 rp_message type=REQ_PAGES_ID len=17 "
             "block=\"mem1\" start=0x200000 req_len=2097152\n"
             "off=68 len=16 rp_message type=REQ_PAGES len=12 "
             "block=\"mem1\" start=0x400000 req_len=2097152\n"
             "off=84 len=11 rp_message type=RECV_BITMAP len=7 "
             "block=\"pc.ram\"\n"
             "off=95 len=32 rp_bitmap block=\"pc.ram\" size=16\n"
             "off=127 len=8 rp_message type=RESUME_ACK len=4 value=1\n"
             "off=135 len=4 rp_message type=SWITCHOVER_ACK len=0\n"
             "off=139 len=8 rp_message type=SHUT len=4 value=0\n"
             "MORE\n");
}

Test(rp, empty_stream_is_fine)
{
    g_autofree char *log = feed_log(&rp_ops, NULL, 0, 0, 0);
    cr_assert_str_eq(log, "MORE\n");
}

Test(rp, bitmap_empty_and_large)
{
    g_autoptr(GByteArray) b = g_byte_array_new();

    msg_recv_bitmap(b, "a", 0, MP_RAMBLOCK_RECV_BITMAP_ENDING);
    msg_recv_bitmap(b, "pc.ram", 4096, MP_RAMBLOCK_RECV_BITMAP_ENDING);
    msg_u32(b, MP_RP_MSG_RESUME_ACK, 1);
    check(b, "off=0 len=6 rp_message type=RECV_BITMAP len=2 block=\"a\"\n"
             "off=6 len=16 rp_bitmap block=\"a\" size=0\n"
             "off=22 len=11 rp_message type=RECV_BITMAP len=7 "
             "block=\"pc.ram\"\n"
             "off=33 len=4112 rp_bitmap block=\"pc.ram\" size=4096\n"
             "off=4145 len=8 rp_message type=RESUME_ACK len=4 value=1\n"
             "MORE\n");
}

Test(rp, bitmap_of_largest_size_streams)
{
    /* 32 MiB of bitmap pass without being buffered: feed in 1 MiB pieces
     * and check the record and the offsets. */
    guint64 size = 32u << 20;
    g_autoptr(GByteArray) b = g_byte_array_new();
    msg_recv_bitmap(b, "pc.ram", 0, 0);
    g_byte_array_set_size(b, 11);
    put64(b, size);
    g_byte_array_set_size(b, 19 + size);
    put64(b, MP_RAMBLOCK_RECV_BITMAP_ENDING);

    g_autofree char *log = feed_log(&rp_ops, b->data, b->len, 1u << 20, 0);
    cr_assert_str_eq(log, "off=0 len=11 rp_message type=RECV_BITMAP len=7 "
                          "block=\"pc.ram\"\n"
                          "off=11 len=33554448 rp_bitmap block=\"pc.ram\" "
                          "size=33554432\n"
                          "MORE\n");
}

/* Cutting the stream anywhere: finish() succeeds exactly at record
 * boundaries and reports a truncation elsewhere; never crashes. */
Test(rp, truncated_everywhere)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    msg_u32(b, MP_RP_MSG_PONG, 7);
    msg_req_pages_id(b, 0x7000, 4096, "pc.ram");
    msg_req_pages(b, 0x8000, 4096);
    msg_recv_bitmap(b, "pc.ram", 8, MP_RAMBLOCK_RECV_BITMAP_ENDING);
    put16(b, MP_RP_MSG_SWITCHOVER_ACK);
    put16(b, 0);
    msg_u32(b, MP_RP_MSG_SHUT, 1);
    /* the bitmap tail is part of RECV_BITMAP: no boundary at 58 */
    const guint64 bounds[] = {0, 8, 31, 47, 82, 86, 94};
    cr_assert_eq(b->len, 94);

    for (guint cut = 0; cut <= b->len; cut++) {
        g_autofree char *log = feed_log(&rp_ops, b->data, cut, 0, 0);
        gboolean boundary = FALSE;
        for (guint i = 0; i < G_N_ELEMENTS(bounds); i++)
            boundary |= bounds[i] == cut;
        const char *last = strrchr(log, '\n');
        cr_assert(last);
        const char *line = log;
        for (const char *q = log; q < last; q++)
            if (*q == '\n')
                line = q + 1;
        if (boundary) {
            cr_assert_str_eq(line, "MORE\n", "cut %u: %s", cut, log);
        } else {
            g_autofree char *want = g_strdup_printf(
                "ERROR %d " CHANNEL ": stream ends at offset %u inside",
                MP_PARSE_ERROR_TRUNCATED, cut);
            cr_assert(g_str_has_prefix(line, want), "cut %u: %s", cut, log);
        }
        /* the per-byte feed must agree on every prefix */
        g_autofree char *bytes = feed_log(&rp_ops, b->data, cut, 1, 0);
        cr_assert_str_eq(bytes, log, "cut %u", cut);
    }
}

Test(rp, truncation_messages)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    msg_req_pages_id(b, 0x7000, 4096, "pc.ram");
    g_autofree char *log = feed_log(&rp_ops, b->data, 10, 0, 0);
    g_autofree char *want = error_line(
        MP_PARSE_ERROR_TRUNCATED,
        "stream ends at offset 10 inside the payload of a REQ_PAGES_ID "
        "message (6 of 19 bytes; message at offset 0)");
    cr_assert_str_eq(log, want);

    g_byte_array_set_size(b, 0);
    msg_recv_bitmap(b, "pc.ram", 64, MP_RAMBLOCK_RECV_BITMAP_ENDING);
    g_autofree char *log2 = feed_log(&rp_ops, b->data, 40, 0, 0);
    g_autofree char *want2 = g_strdup_printf(
        "off=0 len=11 rp_message type=RECV_BITMAP len=7 block=\"pc.ram\"\n"
        "ERROR %d " CHANNEL ": stream ends at offset 40 inside the bitmap "
        "after RECV_BITMAP \"pc.ram\" (message at offset 0)\n",
        MP_PARSE_ERROR_TRUNCATED);
    cr_assert_str_eq(log2, want2);
}

Test(rp, unknown_types)
{
    const guint16 types[] = {0, 8, 9, 0xffff};
    for (guint i = 0; i < G_N_ELEMENTS(types); i++) {
        g_autoptr(GByteArray) b = g_byte_array_new();
        msg_u32(b, MP_RP_MSG_PONG, 3);
        put16(b, types[i]);
        put16(b, 4);
        put32(b, 0);
        g_autofree char *msg = g_strdup_printf(
            "message type %u unknown at offset 8 (expected 1..7)", types[i]);
        g_autofree char *err = error_line(MP_PARSE_ERROR_RP_MESSAGE, msg);
        g_autofree char *want = g_strconcat(
            "off=0 len=8 rp_message type=PONG len=4 value=3\n", err, NULL);
        check(b, want);
    }
}

Test(rp, oversized_length)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    put16(b, MP_RP_MSG_REQ_PAGES_ID);
    put16(b, 513);
    g_byte_array_set_size(b, 4 + 513);
    g_autofree char *want = error_line(
        MP_PARSE_ERROR_LENGTH,
        "REQ_PAGES_ID message at offset 0 has length 513 (expected at most "
        "512)");
    check(b, want);
}

Test(rp, wrong_fixed_lengths)
{
    static const struct {
        guint16 type, len;
        const char *msg;
    } cases[] = {
        {MP_RP_MSG_SHUT, 3,
         "SHUT message at offset 0 has length 3 "
         "(expected 4)"},
        {MP_RP_MSG_PONG, 8,
         "PONG message at offset 0 has length 8 "
         "(expected 4)"},
        {MP_RP_MSG_REQ_PAGES, 13,
         "REQ_PAGES message at offset 0 has "
         "length 13 (expected 12)"},
        {MP_RP_MSG_RESUME_ACK, 0,
         "RESUME_ACK message at offset 0 has "
         "length 0 (expected 4)"},
        {MP_RP_MSG_SWITCHOVER_ACK, 4,
         "SWITCHOVER_ACK message at offset 0 "
         "has length 4 (expected 0)"},
        {MP_RP_MSG_REQ_PAGES_ID, 12,
         "REQ_PAGES_ID message at offset 0 has "
         "length 12 (expected 13 + idstr "
         "length)"},
        {MP_RP_MSG_RECV_BITMAP, 0,
         "RECV_BITMAP message at offset 0 has "
         "length 0 (expected 1 + idstr length)"},
    };
    for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autoptr(GByteArray) b = g_byte_array_new();
        put16(b, cases[i].type);
        put16(b, cases[i].len);
        g_byte_array_set_size(b, 4 + cases[i].len);
        g_autofree char *want =
            error_line(MP_PARSE_ERROR_RP_MESSAGE, cases[i].msg);
        check(b, want);
    }
}

Test(rp, idstr_length_mismatch)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    msg_req_pages_id(b, 0x1000, 4096, "pc.ram");
    b->data[3] += 1; /* message length 20, idstr says 6 */
    g_byte_array_set_size(b, b->len + 1);
    g_autofree char *want = error_line(
        MP_PARSE_ERROR_RP_MESSAGE,
        "REQ_PAGES_ID message at offset 0 has an idstr of 6 bytes in 20 "
        "payload bytes (expected length 19)");
    check(b, want);

    g_byte_array_set_size(b, 0);
    msg_recv_bitmap(b, "pc.ram", 8, MP_RAMBLOCK_RECV_BITMAP_ENDING);
    b->data[4] = 5; /* message length 7, idstr says 5 */
    g_autofree char *want2 = error_line(
        MP_PARSE_ERROR_RP_MESSAGE,
        "RECV_BITMAP message at offset 0 has an idstr of 5 bytes in 7 "
        "payload bytes (expected length 6)");
    check(b, want2);

    g_byte_array_set_size(b, 0);
    put16(b, MP_RP_MSG_REQ_PAGES_ID);
    put16(b, 13);
    put64(b, 0);
    put32(b, 4096);
    g_byte_array_append(b, (const guint8 *)"", 1);
    g_autofree char *want3 = error_line(
        MP_PARSE_ERROR_RP_MESSAGE,
        "REQ_PAGES_ID message at offset 0 has an empty idstr (expected a "
        "RAMBlock name)");
    check(b, want3);
}

Test(rp, req_pages_without_block)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    msg_u32(b, MP_RP_MSG_PONG, 1);
    msg_req_pages(b, 0x1000, 4096);
    g_autofree char *err = error_line(
        MP_PARSE_ERROR_NO_BLOCK,
        "REQ_PAGES message at offset 8 with no RAMBlock named by an earlier "
        "REQ_PAGES_ID");
    g_autofree char *want = g_strconcat(
        "off=0 len=8 rp_message type=PONG len=4 value=1\n", err, NULL);
    check(b, want);
}

Test(rp, bitmap_too_large)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    msg_recv_bitmap(b, "pc.ram", 0, 0);
    g_byte_array_set_size(b, 11);
    put64(b, (32u << 20) + 8);
    g_autofree char *err = error_line(
        MP_PARSE_ERROR_LENGTH,
        "RECV_BITMAP \"pc.ram\" bitmap size 33554440 at offset 11 (expected "
        "at most 33554432)");
    g_autofree char *want = g_strconcat(
        "off=0 len=11 rp_message type=RECV_BITMAP len=7 block=\"pc.ram\"\n",
        err, NULL);
    check(b, want);
}

Test(rp, bad_bitmap_end_mark)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    msg_recv_bitmap(b, "pc.ram", 24, 0x0123456789abcdeeULL);
    msg_u32(b, MP_RP_MSG_PONG, 1);
    g_autofree char *err = error_line(
        MP_PARSE_ERROR_RP_MESSAGE,
        "RECV_BITMAP \"pc.ram\" end mark 0x123456789abcdee at offset 43 "
        "(expected 0x123456789abcdef)");
    g_autofree char *want = g_strconcat(
        "off=0 len=11 rp_message type=RECV_BITMAP len=7 block=\"pc.ram\"\n",
        err, NULL);
    check(b, want);
}

/* Errors are sticky: later feeds and finish() return the same error. */
Test(rp, sticky_error)
{
    g_autoptr(MpRpParser) p = mp_rp_parser_new(CHANNEL, NULL, NULL);
    const guint8 bad[] = {0, 9, 0, 0};
    const guint8 good[] = {0, 2, 0, 4, 0, 0, 0, 1};
    g_autoptr(GError) e1 = NULL, e2 = NULL, e3 = NULL;
    gsize used;

    cr_assert_eq(mp_rp_parser_feed(p, bad, 4, &used, &e1), MP_FEED_ERROR);
    cr_assert_eq(e1->code, MP_PARSE_ERROR_RP_MESSAGE);
    cr_assert_eq(mp_rp_parser_feed(p, good, 8, &used, &e2), MP_FEED_ERROR);
    cr_assert_eq(used, 0);
    cr_assert_str_eq(e2->message, e1->message);
    cr_assert(!mp_rp_parser_finish(p, &e3));
    cr_assert_str_eq(e3->message, e1->message);
    cr_assert_eq(mp_rp_parser_offset(p), 4);
}

typedef struct {
    GString *log;
    guint64 end; /* offset just past the last record */
} PauseCtx;

static MpRecordAction
pause_every(const MpRecord *rec, gpointer user_data)
{
    PauseCtx *c = user_data;
    g_string_append_printf(
        c->log, "%s@%" G_GUINT64_FORMAT "+%" G_GUINT64_FORMAT "\n",
        mp_record_kind_name(rec->kind), rec->offset, rec->length);
    c->end = rec->offset + rec->length;
    return MP_REC_PAUSE;
}

/* A pausing callback stops the feed just past each record. */
Test(rp, pause_after_each_record)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    msg_u32(b, MP_RP_MSG_PONG, 1);
    msg_recv_bitmap(b, "pc.ram", 8, MP_RAMBLOCK_RECV_BITMAP_ENDING);
    put16(b, MP_RP_MSG_SWITCHOVER_ACK);
    put16(b, 0);

    PauseCtx c = {g_string_new(NULL), 0};
    g_autoptr(MpRpParser) p = mp_rp_parser_new(CHANNEL, pause_every, &c);
    gsize off = 0;
    guint pauses = 0;
    for (;;) {
        gsize used;
        MpFeedStatus st =
            mp_rp_parser_feed(p, b->data + off, b->len - off, &used, NULL);
        off += used;
        cr_assert_eq(mp_rp_parser_offset(p), off);
        if (st != MP_FEED_PAUSED) {
            cr_assert_eq(st, MP_FEED_MORE);
            break;
        }
        pauses++;
        cr_assert_eq(off, c.end,
                     "paused at %zu, record ended at %" G_GUINT64_FORMAT, off,
                     c.end);
    }
    cr_assert_eq(pauses, 4);
    cr_assert(mp_rp_parser_finish(p, NULL));
    cr_assert_str_eq(c.log->str, "rp_message@0+8\n"
                                 "rp_message@8+11\n"
                                 "rp_bitmap@19+24\n"
                                 "rp_message@43+4\n");
    g_string_free(c.log, TRUE);
}

/* ---- gaps: resuming at the next two messages ---- */

static gboolean
rp_gap(gpointer p, guint64 len)
{
    return mp_rp_parser_gap(p, len);
}

/* A gap inside a REQ_PAGES_ID: parsing resumes at the first of two
 * messages in a row, whole, byte by byte and in odd chunks. */
Test(rp, gap_resumes_at_next_messages)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    msg_u32(b, MP_RP_MSG_PONG, 1);
    gsize a = b->len;
    msg_req_pages_id(b, 0x1000, 4096, "pc.ram");
    gsize next = b->len;
    msg_u32(b, MP_RP_MSG_PONG, 2);
    msg_req_pages_id(b, 0x5000, 4096, "pc.ram");
    msg_req_pages(b, 0x6000, 4096);
    msg_u32(b, MP_RP_MSG_SHUT, 0);

    feed_check_gap(&rp_ops, rp_gap, b->data, b->len, a + 3, 10, next);
    feed_check_gap(&rp_ops, rp_gap, b->data, b->len, 2, next - 2, next);
}

/* A REQ_PAGES whose REQ_PAGES_ID the gap may have hidden comes without a
 * block (not the one named before the gap); the next REQ_PAGES_ID names
 * one again. */
Test(rp, gap_block_of_req_pages_is_not_guessed)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    msg_req_pages_id(b, 0x1000, 4096, "pc.ram");
    gsize a = b->len;
    msg_req_pages_id(b, 0x2000, 4096, "/rom@etc/acpi/tables");
    msg_req_pages(b, 0x3000, 4096);
    msg_req_pages(b, 0x4000, 4096);
    msg_req_pages_id(b, 0x5000, 4096, "pc.ram");
    msg_req_pages(b, 0x6000, 4096);

    g_autofree char *log =
        feed_log_gap(&rp_ops, rp_gap, b->data, b->len, a + 3, 10, 1);
    cr_assert(strstr(log, "block=\"\" start=0x3000"), "%s", log);
    cr_assert(strstr(log, "block=\"\" start=0x4000"), "%s", log);
    cr_assert(strstr(log, "block=\"pc.ram\" start=0x6000"), "%s", log);
    cr_assert(!strstr(log, "acpi"), "%s", log);
    cr_assert(g_str_has_suffix(log, "MORE\n"), "%s", log);
}
