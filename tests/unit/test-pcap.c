/* test-pcap.c: TCP reassembly (src/io/tcp-reasm.c) and `analyze` of
 * packet captures (src/io/pcap-flows.c, pcap-read.c) on pcap files made
 * here: a real stream (samples/streams/idle-7.2) cut into segments,
 * delivered in order, reordered, repeated, overlapping, with a hole, cut
 * by the snaplen, over IPv4 and IPv6, on Ethernet, SLL, SLL2 and null
 * link types.  The page counts must be those of the stream file. */
#include "config.h"
#include <string.h>
#include <pcap/pcap.h>
#include <glib/gstdio.h>
#include <criterion/criterion.h>
#include "analyze-file.h"
#include "pcap-flows.h"
#include "pcap-read.h"
#include "json-util.h"
#include "parse-common.h"
#include "qmig-parser.h"
#include "tcp-reasm.h"
#include "test-util.h"

/* ---- the reassembler alone ---- */

typedef struct {
    GByteArray *out;
    guint64 gaps, gap_bytes, first_gap_off;
    MpTcpGapWhy why;
} Sink;

static void
sink_data(gpointer d, guint64 off, const guint8 *buf, gsize len)
{
    Sink *s = d;
    cr_assert_eq(off, s->out->len + s->gap_bytes, "offset %" G_GUINT64_FORMAT,
                 off);
    g_byte_array_append(s->out, buf, len);
}

static void
sink_gap(gpointer d, guint64 off, guint64 len, MpTcpGapWhy why)
{
    Sink *s = d;
    if (!s->gaps++) {
        s->first_gap_off = off;
        s->why = why;
    }
    s->gap_bytes += len;
}

static const MpTcpReasmOps sink_ops = {.data = sink_data, .gap = sink_gap};

static guint8 bytes[4096];

static void
init_bytes(void)
{
    for (guint i = 0; i < sizeof(bytes); i++)
        bytes[i] = (guint8)(i * 7 + i / 256);
}

static void
seg(MpTcpReasm *r, guint32 isn, guint from, guint to)
{
    mp_tcp_reasm_segment(r, isn + from, bytes + from, to - from, to - from);
}

static void
assert_whole(Sink *s, guint len)
{
    cr_assert_eq(s->out->len, len, "%u bytes, %u expected", s->out->len, len);
    cr_assert(memcmp(s->out->data, bytes, len) == 0);
    cr_assert_eq(s->gaps, 0);
}

TestSuite(tcp, .init = init_bytes);

Test(tcp, out_of_order_repeated_overlapping)
{
    /* near the wrap of the sequence space */
    guint32 isn = 0xfffffc00u;
    Sink s = {g_byte_array_new()};
    g_autoptr(MpTcpReasm) r = mp_tcp_reasm_new(isn, 0, &sink_ops, &s);

    seg(r, isn, 1000, 2000); /* ahead of a hole: held */
    cr_assert_eq(s.out->len, 0);
    cr_assert_eq(mp_tcp_reasm_held(r), 1000);
    seg(r, isn, 1500, 2500); /* overlaps the held one */
    seg(r, isn, 3000, 4096);
    seg(r, isn, 0, 500);     /* in order */
    seg(r, isn, 0, 300);     /* a retransmission */
    seg(r, isn, 400, 1200);  /* overlaps delivered and held bytes */
    cr_assert_eq(s.out->len, 2500);
    seg(r, isn, 2400, 3100); /* fills the last hole */
    mp_tcp_reasm_fin(r, isn + 4096);
    cr_assert(mp_tcp_reasm_done(r));
    mp_tcp_reasm_finish(r);
    assert_whole(&s, 4096);
    cr_assert_eq(mp_tcp_reasm_held(r), 0);
    MpTcpReasmStats st;
    mp_tcp_reasm_stats(r, &st);
    cr_assert_gt(st.repeated, 0);
    cr_assert_eq(st.out_of_order, 3);
    g_byte_array_unref(s.out);
}

Test(tcp, every_order_of_small_segments)
{
    /* 16 segments of 256 bytes, delivered back to front, then each one
     * again */
    Sink s = {g_byte_array_new()};
    g_autoptr(MpTcpReasm) r = mp_tcp_reasm_new(77, 0, &sink_ops, &s);
    for (int i = 15; i >= 0; i--)
        seg(r, 77, i * 256, i * 256 + 256);
    for (int i = 0; i < 16; i++)
        seg(r, 77, i * 256, i * 256 + 256);
    assert_whole(&s, 4096);
    g_byte_array_unref(s.out);
}

Test(tcp, hole_acknowledged_by_the_peer_is_a_gap)
{
    Sink s = {g_byte_array_new()};
    g_autoptr(MpTcpReasm) r = mp_tcp_reasm_new(1000, 0, &sink_ops, &s);
    seg(r, 1000, 0, 100);
    seg(r, 1000, 200, 300);
    mp_tcp_reasm_ack(r, 1000 + 100); /* nothing missing yet */
    cr_assert_eq(s.gaps, 0);
    mp_tcp_reasm_ack(r, 1000 + 300);
    cr_assert_eq(s.gaps, 1);
    cr_assert_eq(s.first_gap_off, 100);
    cr_assert_eq(s.gap_bytes, 100);
    cr_assert_eq(s.why, MP_TCP_GAP_ACKED);
    cr_assert_eq(mp_tcp_reasm_offset(r), 300);
    /* delivery goes on past it */
    seg(r, 1000, 300, 400);
    cr_assert_eq(s.out->len, 300);
    g_byte_array_unref(s.out);
}

Test(tcp, hole_at_the_end_is_a_gap)
{
    Sink s = {g_byte_array_new()};
    g_autoptr(MpTcpReasm) r = mp_tcp_reasm_new(5, 0, &sink_ops, &s);
    seg(r, 5, 0, 100);
    seg(r, 5, 150, 200);
    mp_tcp_reasm_fin(r, 5 + 300);
    mp_tcp_reasm_finish(r);
    cr_assert_eq(s.gaps, 2); /* [100, 150) and [200, 300) */
    cr_assert_eq(s.first_gap_off, 100);
    cr_assert_eq(s.gap_bytes, 150);
    cr_assert_eq(s.why, MP_TCP_GAP_END);
    cr_assert_eq(s.out->len, 150);
    g_byte_array_unref(s.out);
}

Test(tcp, window_bounds_what_is_held)
{
    Sink s = {g_byte_array_new()};
    g_autoptr(MpTcpReasm) r = mp_tcp_reasm_new(0, 1024, &sink_ops, &s);
    seg(r, 0, 0, 100);
    seg(r, 0, 200, 1000); /* within the window: held */
    cr_assert_eq(s.gaps, 0);
    seg(r, 0, 1000, 1500); /* past it: the hole is a gap */
    cr_assert_eq(s.gaps, 1);
    cr_assert_eq(s.first_gap_off, 100);
    cr_assert_eq(s.why, MP_TCP_GAP_WINDOW);
    cr_assert_eq(s.out->len, 1400);
    MpTcpReasmStats st;
    mp_tcp_reasm_stats(r, &st);
    cr_assert_leq(st.held_max, 1024);
    g_byte_array_unref(s.out);
}

Test(tcp, snaplen_cut_is_a_gap_where_it_starts)
{
    Sink s = {g_byte_array_new()};
    g_autoptr(MpTcpReasm) r = mp_tcp_reasm_new(0, 0, &sink_ops, &s);
    mp_tcp_reasm_segment(r, 0, bytes, 60, 1000); /* 60 of 1000 captured */
    cr_assert_eq(s.gaps, 1);
    cr_assert_eq(s.first_gap_off, 60);
    cr_assert_eq(s.gap_bytes, 940);
    cr_assert_eq(s.why, MP_TCP_GAP_SNAPLEN);
    seg(r, 0, 1000, 1100);
    cr_assert_eq(s.out->len, 160);
    g_byte_array_unref(s.out);
}

/* ---- pcap files ---- */

typedef struct {
    GByteArray *file;
    int dlt, family;
    guint32 snaplen;
    gint64 t;
    guint16 cport, sport; /* client and server ports */
    guint8 caddr[16], saddr[16];
} Pcap;

static void
put16(GByteArray *a, guint16 v)
{
    guint8 b[2] = {v >> 8, v};
    g_byte_array_append(a, b, 2);
}

static void
put32(GByteArray *a, guint32 v)
{
    guint8 b[4] = {v >> 24, v >> 16, v >> 8, v};
    g_byte_array_append(a, b, 4);
}

static void
put32le(GByteArray *a, guint32 v)
{
    guint8 b[4] = {v, v >> 8, v >> 16, v >> 24};
    g_byte_array_append(a, b, 4);
}

static void
pcap_begin(Pcap *p, int dlt, int family, guint32 snaplen)
{
    memset(p, 0, sizeof(*p));
    p->file = g_byte_array_new();
    p->dlt = dlt;
    p->family = family;
    p->snaplen = snaplen;
    p->t = 1700000000000000ll;
    p->cport = 40000;
    p->sport = 4444;
    if (family == 4) {
        memcpy(p->caddr, (guint8[]){127, 0, 0, 1}, 4);
        memcpy(p->saddr, (guint8[]){127, 0, 0, 1}, 4);
    } else {
        p->caddr[15] = 1; /* ::1 */
        p->saddr[15] = 1;
    }
    /* the classic file header, little-endian as tcpdump writes it */
    put32le(p->file, 0xa1b2c3d4u);
    guint8 ver[4] = {2, 0, 4, 0};
    g_byte_array_append(p->file, ver, 4);
    put32le(p->file, 0);
    put32le(p->file, 0);
    put32le(p->file, snaplen);
    put32le(p->file, dlt);
}

/* One TCP segment from the client (or the server), 1 ms after the last. */
static void
pcap_tcp(Pcap *p, gboolean from_client, guint32 seq, guint32 ack,
         guint8 flags, const guint8 *payload, gsize len)
{
    g_autoptr(GByteArray) pkt = g_byte_array_new();
    guint16 proto = p->family == 4 ? 0x0800 : 0x86dd;
    const guint8 *src = from_client ? p->caddr : p->saddr,
                 *dst = from_client ? p->saddr : p->caddr;

    switch (p->dlt) {
    case DLT_EN10MB:
        for (int i = 0; i < 12; i++)
            g_byte_array_append(pkt, (guint8[]){0}, 1);
        put16(pkt, proto);
        break;
    case DLT_LINUX_SLL:
        put16(pkt, from_client ? 4 : 0);
        put16(pkt, 772); /* ARPHRD_LOOPBACK */
        put16(pkt, 6);
        for (int i = 0; i < 8; i++)
            g_byte_array_append(pkt, (guint8[]){0}, 1);
        put16(pkt, proto);
        break;
    case DLT_LINUX_SLL2:
        put16(pkt, proto);
        put16(pkt, 0);
        put32(pkt, 1);
        put16(pkt, 772);
        g_byte_array_append(pkt, (guint8[]){from_client ? 4 : 0, 6}, 2);
        for (int i = 0; i < 8; i++)
            g_byte_array_append(pkt, (guint8[]){0}, 1);
        break;
    case DLT_NULL: /* the family in the capturing host's order */
        put32le(pkt, p->family == 4 ? 2 : 30);
        break;
    }
    gsize tcp_len = 20 + len;
    if (p->family == 4) {
        put16(pkt, 0x4500);
        put16(pkt, 20 + tcp_len);
        put32(pkt, 0x00004000); /* DF */
        g_byte_array_append(pkt, (guint8[]){64, 6, 0, 0}, 4);
        g_byte_array_append(pkt, src, 4);
        g_byte_array_append(pkt, dst, 4);
    } else {
        put32(pkt, 0x60000000);
        put16(pkt, tcp_len);
        g_byte_array_append(pkt, (guint8[]){6, 64}, 2);
        g_byte_array_append(pkt, src, 16);
        g_byte_array_append(pkt, dst, 16);
    }
    put16(pkt, from_client ? p->cport : p->sport);
    put16(pkt, from_client ? p->sport : p->cport);
    put32(pkt, seq);
    put32(pkt, ack);
    g_byte_array_append(pkt, (guint8[]){0x50, flags}, 2);
    put16(pkt, 65535);
    put32(pkt, 0);
    g_byte_array_append(pkt, payload, len);

    p->t += 1000;
    guint32 cap = MIN(pkt->len, p->snaplen);
    put32le(p->file, p->t / 1000000);
    put32le(p->file, p->t % 1000000);
    put32le(p->file, cap);
    put32le(p->file, pkt->len);
    g_byte_array_append(p->file, pkt->data, cap);
}

#define F_FIN MP_TCP_FFIN
#define F_SYN MP_TCP_FSYN
#define F_RST MP_TCP_FRST
#define F_ACK MP_TCP_FACK

#define CISN 0x10000000u
#define SISN 0x20000000u

typedef enum {
    ORDER_IN,
    ORDER_SHUFFLED, /* pairs swapped, every 5th repeated, overlaps */
    ORDER_HOLE,     /* one segment missing, acknowledged by the server */
    ORDER_NO_SYNACK, /* in order, the SYN-ACK not captured */
} Order;

/* A connection carrying `stream` to the server, cut into `mss` byte
 * segments, then closed by both sides. */
static void
pcap_flow(Pcap *p, const GByteArray *stream, gsize mss, Order order)
{
    guint n = (stream->len + mss - 1) / mss;

    pcap_tcp(p, TRUE, CISN, 0, F_SYN, NULL, 0);
    if (order != ORDER_NO_SYNACK)
        pcap_tcp(p, FALSE, SISN, CISN + 1, F_SYN | F_ACK, NULL, 0);
    pcap_tcp(p, TRUE, CISN + 1, SISN + 1, F_ACK, NULL, 0);
    for (guint i = 0; i < n; i++) {
        guint k = i;
        if (order == ORDER_SHUFFLED && (i ^ 1) < n)
            k = i ^ 1; /* 1 0 3 2 5 4 ... */
        if (order == ORDER_HOLE && k == n / 2)
            continue;
        gsize off = (gsize)k * mss, len = MIN(mss, stream->len - off);
        pcap_tcp(p, TRUE, CISN + 1 + off, SISN + 1, F_ACK,
                 stream->data + off, len);
        if (order == ORDER_SHUFFLED && i % 5 == 0) {
            /* a retransmission, and one overlapping its neighbour */
            pcap_tcp(p, TRUE, CISN + 1 + off, SISN + 1, F_ACK,
                     stream->data + off, len);
            gsize o2 = off + len / 2, l2 = MIN(len, stream->len - o2);
            pcap_tcp(p, TRUE, CISN + 1 + o2, SISN + 1, F_ACK,
                     stream->data + o2, l2);
        }
    }
    /* acknowledged only once everything is in: the capture never sees an
     * ACK ahead of the data it covers (except for the hole) */
    pcap_tcp(p, FALSE, SISN + 1, CISN + 1 + stream->len, F_ACK, NULL, 0);
    pcap_tcp(p, TRUE, CISN + 1 + stream->len, SISN + 1, F_FIN | F_ACK, NULL,
             0);
    pcap_tcp(p, FALSE, SISN + 1, CISN + 2 + stream->len, F_FIN | F_ACK, NULL,
             0);
    pcap_tcp(p, TRUE, CISN + 2 + stream->len, SISN + 2, F_ACK, NULL, 0);
}

static char *dir;
static GByteArray *stream;
static json_object *expected;

static void
setup(void)
{
    init_bytes();
    dir = tu_tmpdir_new("mp-pcap");
    stream = tu_read_sample("idle-7.2.mig.zst");
    g_autofree char *path = g_strdup_printf(
        "%s/samples/streams/idle-7.2.mig.zst", MP_SOURCE_ROOT);
    MpAnalyzeOptions opt = {.quiet = TRUE};
    gboolean ok;
    expected = mp_analyze_file(path, &opt, &ok);
    cr_assert(ok);
}

static void
teardown(void)
{
    json_object_put(expected);
    g_byte_array_unref(stream);
    tu_tmpdir_remove(dir);
}

TestSuite(pcap, .init = setup, .fini = teardown);

static json_object *
analyze(Pcap *p, gboolean *ok)
{
    g_autofree char *path = g_build_filename(dir, "x.pcap", NULL);
    cr_assert(g_file_set_contents(path, (const char *)p->file->data,
                                  p->file->len, NULL));
    g_byte_array_unref(p->file);
    MpAnalyzeOptions opt = {.quiet = TRUE};
    json_object *doc = mp_analyze_file(path, &opt, ok);
    cr_assert_not_null(doc);
    return doc;
}

static const char *
errors_of(json_object *doc)
{
    json_object *e;
    return json_object_object_get_ex(doc, "errors", &e)
               ? json_object_to_json_string(e)
               : "(none)";
}

static void
assert_same_pages(json_object *doc)
{
    /* (not the device sections: without the vmdesc at the stream's end,
     * which a relay capture's reader finds, they are not sliced) */
    const char *keys[] = {"ram.pages.normal", "ram.pages.zero"};
    for (guint k = 0; k < G_N_ELEMENTS(keys); k++)
        cr_assert_eq(tu_json_int(doc, keys[k]), tu_json_int(expected, keys[k]),
                     "%s: %" G_GINT64_FORMAT " (%" G_GINT64_FORMAT
                     " in the file)",
                     keys[k], tu_json_int(doc, keys[k]),
                     tu_json_int(expected, keys[k]));
    cr_assert_eq(tu_json_int(doc, "session"), 1);
    json_object *f;
    cr_assert(json_object_object_get_ex(doc, "format", &f));
    cr_assert_str_eq(json_object_get_string(f), "pcap");
}

static void
check_clean(int dlt, int family, gsize mss, Order order)
{
    Pcap p;
    gboolean ok;
    pcap_begin(&p, dlt, family, 262144);
    pcap_flow(&p, stream, mss, order);
    json_object *doc = analyze(&p, &ok);
    cr_assert(ok, "errors: %s", errors_of(doc));
    assert_same_pages(doc);
    cr_assert_eq(tu_json_int(doc, "pcap.connections"), 1);
    cr_assert_eq(tu_json_int(doc, "pcap.gaps"), 0);
    json_object_put(doc);
}

Test(pcap, ethernet_ipv4_in_order)
{
    check_clean(DLT_EN10MB, 4, 65483, ORDER_IN);
}

Test(pcap, reordered_repeated_overlapping)
{
    check_clean(DLT_EN10MB, 4, 16384, ORDER_SHUFFLED);
}

Test(pcap, ipv6_on_sll)
{
    check_clean(DLT_LINUX_SLL, 6, 32768, ORDER_SHUFFLED);
}

Test(pcap, sll2_and_null)
{
    check_clean(DLT_LINUX_SLL2, 4, 1448, ORDER_IN);
    check_clean(DLT_NULL, 6, 65483, ORDER_IN);
}

/* The server's first sequence number comes from the client's ACK; its
 * FIN then ends the return path cleanly. */
Test(pcap, syn_ack_not_captured)
{
    Pcap p;
    gboolean ok;
    pcap_begin(&p, DLT_EN10MB, 4, 262144);
    pcap_flow(&p, stream, 65483, ORDER_NO_SYNACK);
    json_object *doc = analyze(&p, &ok);
    cr_assert(ok, "errors: %s", errors_of(doc));
    assert_same_pages(doc);
    json_object *ch, *to_src, *end;
    json_object_object_get_ex(doc, "channels", &ch);
    json_object_object_get_ex(json_object_array_get_idx(ch, 0), "to_src",
                              &to_src);
    json_object_object_get_ex(to_src, "end", &end);
    cr_assert_str_eq(json_object_get_string(end), "fin");
    json_object_put(doc);
}

/* ---- gaps: parsing resumes after them ---- */

typedef struct {
    guint64 off, len;
    MpRecordKind kind;
    MpPageKind page;
} Rec;

static MpRecordAction
collect(const MpRecord *rec, gpointer data)
{
    Rec r = {rec->offset, rec->length, rec->kind,
             rec->kind == MP_REC_RAM_PAGE ? rec->u.page.kind : 0};
    g_array_append_val((GArray *)data, r);
    return MP_REC_CONTINUE;
}

/* The records of the main stream `s`, as the capture reader parses it
 * (no vmdesc). */
static GArray *
main_records(const GByteArray *s)
{
    GArray *recs = g_array_new(FALSE, FALSE, sizeof(Rec));
    g_autoptr(MpQmigParser) q = mp_qmig_parser_new("main", collect, recs);
    gsize used;
    mp_qmig_parser_feed(q, s->data, s->len, &used, NULL);
    return recs;
}

static json_object *
gap_entry(json_object *doc, guint i)
{
    json_object *e = json_object_array_get_idx(
        mp_json_path(doc, "pcap.gap_list"), i);
    cr_assert_not_null(e, "no gap_list[%u]", i);
    return e;
}

static gint64
jint_of(json_object *o, const char *key)
{
    json_object *v = mp_json_get(o, key);
    cr_assert_not_null(v, "no %s in %s", key, json_object_to_json_string(o));
    return json_object_get_int64(v);
}

/* A segment of the main channel is missing (the server acknowledged it:
 * the capturing kernel dropped it).  Parsing resumes at the first record
 * after the hole; the pages are exactly those of the stream without the
 * records the hole cut, and the report says where, how much was
 * skipped, and that the counts are after a gap. */
Test(pcap, gap_in_main_channel_resumes)
{
    Pcap p;
    gboolean ok;
    pcap_begin(&p, DLT_EN10MB, 4, 262144);
    pcap_flow(&p, stream, 65483, ORDER_HOLE);
    json_object *doc = analyze(&p, &ok);
    cr_assert(ok, "errors: %s", errors_of(doc));

    guint n = (stream->len + 65482) / 65483;
    guint64 g = (guint64)(n / 2) * 65483, gl = MIN(65483, stream->len - g);
    cr_assert_eq(tu_json_int(doc, "pcap.gaps"), 1);
    json_object *e = gap_entry(doc, 0);
    cr_assert_eq(jint_of(e, "channel"), 0);
    cr_assert_eq(jint_of(e, "offset"), g);
    cr_assert_eq(jint_of(e, "bytes"), gl);

    g_autoptr(GArray) recs = main_records(stream);
    guint64 resume = 0, normal = 0, zero = 0;
    for (guint i = 0; i < recs->len; i++) {
        Rec *r = &g_array_index(recs, Rec, i);
        if (!resume && r->off >= g + gl && r->len
            && r->kind != MP_REC_SECTION_FOOTER)
            resume = r->off;
    }
    cr_assert(resume);
    cr_assert_eq(jint_of(e, "resumed_offset"), resume);
    cr_assert_eq(jint_of(e, "skipped_bytes"), resume - g - gl);
    for (guint i = 0; i < recs->len; i++) {
        Rec *r = &g_array_index(recs, Rec, i);
        if (r->kind != MP_REC_RAM_PAGE
            || (r->off + r->len > g && r->off < resume))
            continue;
        if (r->page == MP_PAGE_NORMAL)
            normal++;
        else if (r->page == MP_PAGE_ZERO)
            zero++;
    }
    cr_assert_lt(normal + zero, tu_json_int(expected, "ram.pages.normal")
                                    + tu_json_int(expected, "ram.pages.zero"));
    cr_assert_eq(tu_json_int(doc, "ram.pages.normal"), normal);
    cr_assert_eq(tu_json_int(doc, "ram.pages.zero"), zero);
    cr_assert_eq(tu_json_int(doc, "ram.resyncs"), 1);
    cr_assert_eq(tu_json_int(doc, "ram.resync_skipped_bytes"),
                 resume - g - gl);
    cr_assert(json_object_get_boolean(mp_json_path(doc, "ram.after_gap")));
    gboolean marked = FALSE;
    json_object *rounds = mp_json_get(doc, "rounds");
    for (size_t i = 0; i < json_object_array_length(rounds); i++)
        marked |= json_object_get_boolean(
            mp_json_get(json_object_array_get_idx(rounds, i), "after_gap"));
    cr_assert(marked, "no round marked after_gap");
    cr_assert(strstr(json_object_to_json_string(mp_json_get(doc, "anomalies")),
                     "parsing resumed at offset"));
    tu_validate_doc("analyze", doc);
    json_object_put(doc);
}

#define MFD_HDR   (320 + 8 * 128)
#define MFD_PKTS  24
#define MFD_PAGES 3

/* A multifd channel as QEMU 9+ writes it: init, then MFD_PKTS nocomp
 * packets of MFD_PAGES normal pages and one zero page in "pc.ram"
 * (packet numbers from 100). */
static GByteArray *
mfd_stream(void)
{
    GByteArray *b = g_byte_array_new();
    guint8 init[MP_MULTIFD_INIT_SIZE] = {0};
    mp_put_be32(init, MP_MULTIFD_MAGIC);
    mp_put_be32(init + 4, MP_MULTIFD_VERSION);
    g_byte_array_append(b, init, sizeof(init));
    for (guint k = 0; k < MFD_PKTS; k++) {
        guint8 h[MFD_HDR] = {0}, page[4096];
        mp_put_be32(h, MP_MULTIFD_MAGIC);
        mp_put_be32(h + 4, MP_MULTIFD_VERSION);
        mp_put_be32(h + 12, 128);
        mp_put_be32(h + 16, MFD_PAGES);
        mp_put_be32(h + 20, MFD_PAGES * 4096);
        mp_put_be64(h + 24, 100 + k);
        mp_put_be32(h + 32, 1);
        strcpy((char *)h + 64, "pc.ram");
        for (guint i = 0; i <= MFD_PAGES; i++)
            mp_put_be64(h + 320 + 8 * i,
                        (guint64)(k * (MFD_PAGES + 1) + i) * 4096);
        g_byte_array_append(b, h, sizeof(h));
        for (guint i = 0; i < MFD_PAGES; i++) {
            for (guint j = 0; j < sizeof(page); j++)
                page[j] = (guint8)(k * 31 + i * 7 + j * 3 + (j >> 8));
            g_byte_array_append(b, page, sizeof(page));
        }
    }
    return b;
}

/* A segment of a multifd channel is missing: parsing resumes at the next
 * packet header; its pages are those of the packets before (the pages
 * whole before the hole) and from there on. */
Test(pcap, gap_in_multifd_channel_resumes)
{
    g_autoptr(GByteArray) mfd = mfd_stream();
    const gsize mss = 16384;
    const gsize pkt = MFD_HDR + MFD_PAGES * 4096;
    Pcap p;
    gboolean ok;

    pcap_begin(&p, DLT_EN10MB, 4, 262144);
    pcap_flow(&p, stream, 65483, ORDER_IN);
    p.cport++;
    pcap_flow(&p, mfd, mss, ORDER_HOLE);
    json_object *doc = analyze(&p, &ok);
    cr_assert(ok, "errors: %s", errors_of(doc));
    cr_assert_eq(jint_of(json_object_array_get_idx(
                             mp_json_path(doc, "pcap.sessions"), 0),
                         "channels"),
                 2);

    guint n = (mfd->len + mss - 1) / mss;
    guint64 g = (guint64)(n / 2) * mss, gl = MIN(mss, mfd->len - g);
    guint64 resume = 0, normal = 0, zero = 0;
    for (guint k = 0; k < MFD_PKTS; k++) {
        guint64 start = 64 + (guint64)k * pkt;
        if (!resume && start >= g + gl)
            resume = start;
        for (guint i = 0; i < MFD_PAGES; i++)
            if (start >= g + gl
                || start + MFD_HDR + (i + 1) * 4096ull <= g)
                normal++;
        if (start >= g + gl || start + pkt <= g)
            zero++;
    }
    cr_assert_eq(tu_json_int(doc, "pcap.gaps"), 1);
    json_object *e = gap_entry(doc, 0);
    cr_assert_eq(jint_of(e, "channel"), 1);
    cr_assert_eq(jint_of(e, "offset"), g);
    cr_assert_eq(jint_of(e, "resumed_offset"), resume);
    cr_assert_eq(jint_of(e, "skipped_bytes"), resume - g - gl);
    cr_assert_eq(tu_json_int(doc, "multifd.normal_pages"), normal);
    cr_assert_eq(tu_json_int(doc, "multifd.zero_pages"), zero);
    cr_assert_lt(normal, MFD_PKTS * MFD_PAGES);
    /* the main channel, whole, as the file */
    cr_assert_eq(tu_json_int(doc, "ram.pages.normal"),
                 tu_json_int(expected, "ram.pages.normal") + normal);
    tu_validate_doc("analyze", doc);
    json_object_put(doc);
}

/* A gap on the return path: parsing resumes where two messages in a row
 * have known types and fitting lengths; with only one after the gap it
 * does not, and the direction is partial from the gap on. */
static json_object *
return_path_with_gap(guint pongs_after, gboolean *ok)
{
    Pcap p;
    guint8 pong[] = {0, MP_RP_MSG_PONG, 0, 4, 0, 0, 0, 1};
    pcap_begin(&p, DLT_EN10MB, 4, 262144);
    pcap_tcp(&p, TRUE, CISN, 0, F_SYN, NULL, 0);
    pcap_tcp(&p, FALSE, SISN, CISN + 1, F_SYN | F_ACK, NULL, 0);
    pcap_tcp(&p, TRUE, CISN + 1, SISN + 1, F_ACK, stream->data, 4096);
    /* the server's second PONG is missing: the client acknowledges it */
    pcap_tcp(&p, FALSE, SISN + 1, CISN + 4097, F_ACK, pong, sizeof(pong));
    for (guint i = 0; i < pongs_after; i++)
        pcap_tcp(&p, FALSE, SISN + 17 + 8 * i, CISN + 4097, F_ACK, pong,
                 sizeof(pong));
    pcap_tcp(&p, TRUE, CISN + 4097, SISN + 17 + 8 * pongs_after, F_ACK, NULL,
             0);
    return analyze(&p, ok);
}

Test(pcap, gap_in_return_path)
{
    gboolean ok;
    json_object *doc = return_path_with_gap(2, &ok);
    const char *errs = errors_of(doc);
    cr_assert(!strstr(errs, "to-src"), "%s", errs);
    json_object *e = gap_entry(doc, 0);
    cr_assert_str_eq(json_object_get_string(mp_json_get(e, "dir")), "to-src");
    cr_assert_eq(jint_of(e, "offset"), 8);
    cr_assert_eq(jint_of(e, "bytes"), 8);
    cr_assert_eq(jint_of(e, "resumed_offset"), 16);
    cr_assert_eq(jint_of(e, "skipped_bytes"), 0);
    cr_assert_eq(tu_json_int(doc, "return_path.messages.PONG"), 3);
    json_object_put(doc);

    doc = return_path_with_gap(1, &ok);
    cr_assert(!ok);
    errs = errors_of(doc);
    cr_assert(strstr(errs, "to-src: 8 bytes missing from the capture at "
                           "stream offset 8"),
              "%s", errs);
    cr_assert(strstr(errs, "no record to resume at was found in the 8 bytes "
                           "after it"),
              "%s", errs);
    cr_assert(json_object_is_type(
                  json_object_object_get(gap_entry(doc, 0), "resumed_offset"),
                  json_type_null));
    json_object_put(doc);
}

Test(pcap, small_snaplen_is_an_error)
{
    Pcap p;
    gboolean ok;
    pcap_begin(&p, DLT_EN10MB, 4, 96);
    pcap_flow(&p, stream, 65483, ORDER_IN);
    json_object *doc = analyze(&p, &ok);
    cr_assert(!ok);
    const char *errs = errors_of(doc);
    cr_assert(strstr(errs, "snaplen (96 bytes) is smaller than its packets"),
              "%s", errs);
    cr_assert(strstr(errs, "at stream offset 42"), "%s", errs);
    json_object_put(doc);
}

Test(pcap, no_migration_and_no_syn)
{
    Pcap p;
    gboolean ok;
    static const guint8 http[] = "GET / HTTP/1.1\r\n\r\n";
    pcap_begin(&p, DLT_EN10MB, 4, 262144);
    /* a connection the capture joined late */
    pcap_tcp(&p, TRUE, 5000, 6000, F_ACK, stream->data + 100, 100);
    p.cport = 40001;
    pcap_tcp(&p, TRUE, CISN, 0, F_SYN, NULL, 0);
    pcap_tcp(&p, FALSE, SISN, CISN + 1, F_SYN | F_ACK, NULL, 0);
    pcap_tcp(&p, TRUE, CISN + 1, SISN + 1, F_ACK, http, sizeof(http) - 1);
    pcap_tcp(&p, TRUE, CISN + sizeof(http), SISN + 1, F_RST, NULL, 0);
    json_object *doc = analyze(&p, &ok);
    cr_assert(!ok);
    const char *errs = errors_of(doc);
    cr_assert(strstr(errs, "no migration connection"), "%s", errs);
    cr_assert_eq(tu_json_int(doc, "pcap.connections_without_syn"), 1);
    json_object *pj, *sk;
    json_object_object_get_ex(doc, "pcap", &pj);
    json_object_object_get_ex(pj, "skipped", &sk);
    const char *s = json_object_to_json_string(sk);
    cr_assert(strstr(s, "no SYN"), "%s", s);
    cr_assert(strstr(s, "not a migration channel (it starts 47 45 54 20)"),
              "%s", s);
    json_object_put(doc);
}

Test(pcap, two_servers_two_sessions)
{
    Pcap p;
    gboolean ok;
    pcap_begin(&p, DLT_EN10MB, 4, 262144);
    pcap_flow(&p, stream, 65483, ORDER_IN);
    p.cport = 40002;
    p.sport = 4445; /* a relay's destination, say */
    pcap_flow(&p, stream, 65483, ORDER_IN);
    json_object *doc = analyze(&p, &ok);
    cr_assert(ok, "errors: %s", errors_of(doc));
    assert_same_pages(doc);
    json_object *more;
    cr_assert(json_object_object_get_ex(doc, "more_sessions", &more));
    cr_assert_eq(json_object_array_length(more), 1);
    json_object *s2 = json_object_array_get_idx(more, 0);
    cr_assert_eq(tu_json_int(s2, "session"), 2);
    cr_assert_eq(tu_json_int(s2, "ram.pages.normal"),
                 tu_json_int(expected, "ram.pages.normal"));
    json_object_put(doc);
}

Test(pcap, not_a_capture_libpcap_reads)
{
    g_autofree char *path = g_build_filename(dir, "bad.pcap", NULL);
    /* a pcap magic and nothing after it */
    cr_assert(g_file_set_contents(path, "\xd4\xc3\xb2\xa1\x02", 5, NULL));
    MpAnalyzeOptions opt = {.quiet = TRUE};
    gboolean ok;
    json_object *doc = mp_analyze_file(path, &opt, &ok);
    cr_assert(!ok);
    json_object *ie;
    cr_assert(json_object_object_get_ex(doc, "input_error", &ie));
    json_object_put(doc);
}

/* fuzz-pcap: a pcapng timestamp of 2^64 - 1 µs overflowed the conversion
 * to µs (signed overflow).  Timestamps are clamped to the end of year
 * 9999, and time never goes back. */
Test(pcap, timestamp_past_year_9999_is_clamped)
{
    g_autoptr(GByteArray) f = g_byte_array_new();
    /* section header, interface (Ethernet, µs), two enhanced packets */
    static const guint8 shb[28] = {
        0x0a, 0x0d, 0x0d, 0x0a, 28, 0, 0, 0, 0x4d, 0x3c, 0x2b, 0x1a, 1, 0,
        0,    0,    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 28, 0, 0, 0};
    static const guint8 idb[20] = {1, 0, 0, 0, 20, 0, 0, 0, 1, 0,
                                   0, 0, 0, 0, 4,  0, 20, 0, 0, 0};
    g_byte_array_append(f, shb, sizeof(shb));
    g_byte_array_append(f, idb, sizeof(idb));
    const guint32 ts[2][2] = {{0x00060a24u, 0x181e4000u}, /* 1.7e15 µs */
                              {0xffffffffu, 0xffffffffu}};
    for (int i = 0; i < 2; i++) {
        guint8 epb[32 + 16] = {6, 0, 0, 0, 48};
        memcpy(epb + 12, &ts[i][0], 4);
        memcpy(epb + 16, &ts[i][1], 4);
        epb[20] = epb[24] = 14; /* 14 bytes: an Ethernet header, ARP */
        epb[40] = 0x08;
        epb[41] = 0x06;
        epb[44] = 48;
        g_byte_array_append(f, epb, sizeof(epb));
    }
    g_autofree char *path = g_build_filename(dir, "ts.pcapng", NULL);
    cr_assert(g_file_set_contents(path, (const char *)f->data, f->len, NULL));
    gboolean ok;
    json_object *doc = mp_pcap_analyze(path, FALSE, 0, &ok);
    cr_assert_eq(tu_json_int(doc, "pcap.packets"), 2, "%s",
                 json_object_to_json_string(doc));
    gint64 first = (gint64)0x00060a24u << 32 | 0x181e4000u;
    cr_assert_eq(tu_json_int(doc, "pcap.duration_us"),
                 253402300799ll * G_USEC_PER_SEC + 999999 - first);
    json_object_put(doc);
}
