/* test-mfd.c: the multifd channel parser, whole, per byte and split
 * everywhere; zstd packets made with a persistent CStream flushed per
 * packet (as QEMU's multifd-zstd.c does), zlib with Z_SYNC_FLUSH. */
#include <string.h>
#include <zlib.h>
#include <zstd.h>
#include <criterion/criterion.h>
#include "feed-util.h"
#include "mfd-parser.h"

#define CHANNEL "src multifd-1"
#define PS      4096u
#define HDR     (320u + 8u * 128u) /* 1344 */

/* Parser ops: page size 4096 with decoding on or off, and 64 KiB pages */

static gpointer
mfd_create(MpRecordFunc cb, gpointer user_data)
{
    return mp_mfd_parser_new(CHANNEL, PS, cb, user_data);
}

static gpointer
mfd_create_nodecode(MpRecordFunc cb, gpointer user_data)
{
    MpMfdParser *p = mp_mfd_parser_new(CHANNEL, PS, cb, user_data);
    mp_mfd_parser_set_decode(p, FALSE);
    return p;
}

static gpointer
mfd_create_64k(MpRecordFunc cb, gpointer user_data)
{
    return mp_mfd_parser_new(CHANNEL, 65536, cb, user_data);
}

static MpFeedStatus
mfd_feed(gpointer p, const guint8 *buf, gsize len, gsize *consumed,
         GError **error)
{
    return mp_mfd_parser_feed(p, buf, len, consumed, error);
}

static gboolean
mfd_finish(gpointer p, GError **error)
{
    return mp_mfd_parser_finish(p, error);
}

static void
mfd_destroy(gpointer p)
{
    mp_mfd_parser_free(p);
}

static const MpParserOps mfd_ops = {mfd_create, mfd_feed, mfd_finish,
                                    mfd_destroy};
static const MpParserOps mfd_nodecode_ops = {mfd_create_nodecode, mfd_feed,
                                             mfd_finish, mfd_destroy};
static const MpParserOps mfd_64k_ops = {mfd_create_64k, mfd_feed, mfd_finish,
                                        mfd_destroy};

/* Byte builders */

static void
init_msg(GByteArray *b, guint8 id, guint32 magic, guint32 version)
{
    guint8 m[MP_MULTIFD_INIT_SIZE] = {0};
    mp_put_be32(m, magic);
    mp_put_be32(m + 4, version);
    for (int i = 0; i < 16; i++)
        m[8 + i] = 0xa0 + i;
    m[24] = id;
    g_byte_array_append(b, m, sizeof(m));
}

typedef struct {
    guint32 flags, pages_alloc, normal, zero, next;
    guint64 num;
    const char *block; /* NULL: 256 bytes of 'x', no NUL */
    const guint64 *offs;
    guint32 page_count; /* 0: 128 */
} Pkt;

/* A RAM packet header; stale offset slots hold unaligned garbage that
 * must be ignored. */
static void
packet(GByteArray *b, const Pkt *k)
{
    guint32 count = k->page_count ? k->page_count : 128;
    gsize len = 320 + 8 * count;
    guint8 *h = g_malloc0(len);
    guint32 used = k->normal + k->zero;

    mp_put_be32(h, MP_MULTIFD_MAGIC);
    mp_put_be32(h + 4, MP_MULTIFD_VERSION);
    mp_put_be32(h + 8, k->flags);
    mp_put_be32(h + 12, k->pages_alloc);
    mp_put_be32(h + 16, k->normal);
    mp_put_be32(h + 20, k->next);
    mp_put_be64(h + 24, k->num);
    mp_put_be32(h + 32, k->zero);
    if (k->block)
        strncpy((char *)h + 64, k->block, 256);
    else
        memset(h + 64, 'x', 256);
    for (guint32 i = 0; i < count; i++)
        mp_put_be64(h + 320 + 8 * i, i < used && k->offs
                                         ? k->offs[i]
                                         : 0xdead0001 + 0x10000ull * i);
    g_byte_array_append(b, h, len);
    g_free(h);
}

static void
fill_page(guint8 *d, guint64 addr, guint32 size)
{
    for (guint32 j = 0; j < size; j++)
        d[j] = (guint8)((addr >> 12) * 31 + j * 7 + (j >> 8));
}

static void
put_page(GByteArray *b, guint64 addr)
{
    guint8 d[PS];
    fill_page(d, addr, PS);
    g_byte_array_append(b, d, PS);
}

static void
device_state(GByteArray *b, const char *idstr, guint32 instance, guint32 size,
             gboolean with_data)
{
    guint8 h[MP_MULTIFD_DEVICE_STATE_HDR] = {0};
    mp_put_be32(h, MP_MULTIFD_MAGIC);
    mp_put_be32(h + 4, MP_MULTIFD_VERSION);
    mp_put_be32(h + 8, MP_MULTIFD_FLAG_DEVICE_STATE);
    if (idstr)
        strncpy((char *)h + 12, idstr, 256);
    else
        memset(h + 12, 'v', 256);
    mp_put_be32(h + 268, instance);
    mp_put_be32(h + 272, size);
    g_byte_array_append(b, h, sizeof(h));
    for (guint32 i = 0; with_data && i < size; i++) {
        guint8 v = (guint8)(i * 13 + 5);
        g_byte_array_append(b, &v, 1);
    }
}

/* zstd as QEMU sends it: one CStream for the channel, each packet's pages
 * compressed with ZSTD_e_continue and flushed with ZSTD_e_flush. */
static gsize
zstd_pages(ZSTD_CStream *cs, GByteArray *b, const guint64 *addrs, guint n)
{
    static guint8 out[ZSTD_COMPRESSBOUND(MP_MULTIFD_PACKET_SIZE)];
    ZSTD_outBuffer ob = {out, sizeof(out), 0};
    guint8 page[PS];

    for (guint i = 0; i < n; i++) {
        fill_page(page, addrs[i], PS);
        ZSTD_inBuffer ib = {page, PS, 0};
        size_t r;
        do {
            r = ZSTD_compressStream2(
                cs, &ob, &ib, i == n - 1 ? ZSTD_e_flush : ZSTD_e_continue);
            cr_assert(!ZSTD_isError(r));
        } while (ib.pos < ib.size || (i == n - 1 && r > 0));
    }
    g_byte_array_append(b, out, ob.pos);
    return ob.pos;
}

/* Level 1 as QEMU's default; a 16 KiB window keeps the thousands of
 * decoders the split tests create cheap (the full-packet test keeps
 * the default window). */
static ZSTD_CStream *
zstd_channel_window(int window_log)
{
    ZSTD_CStream *cs = ZSTD_createCStream();
    cr_assert(!ZSTD_isError(ZSTD_initCStream(cs, 1)));
    cr_assert(!ZSTD_isError(
        ZSTD_CCtx_setParameter(cs, ZSTD_c_windowLog, window_log)));
    return cs;
}

static ZSTD_CStream *
zstd_channel(void)
{
    return zstd_channel_window(14);
}

/* zlib as QEMU sends it: one deflate stream, Z_SYNC_FLUSH per packet. */
static gsize
zlib_pages(z_stream *zs, GByteArray *b, const guint64 *addrs, guint n)
{
    static guint8 out[600 * 1024];
    guint8 page[PS];

    zs->next_out = out;
    zs->avail_out = sizeof(out);
    for (guint i = 0; i < n; i++) {
        fill_page(page, addrs[i], PS);
        zs->next_in = page;
        zs->avail_in = PS;
        cr_assert_eq(deflate(zs, i == n - 1 ? Z_SYNC_FLUSH : Z_NO_FLUSH), Z_OK);
        cr_assert_eq(zs->avail_in, 0);
    }
    gsize len = sizeof(out) - zs->avail_out;
    g_byte_array_append(b, out, len);
    return len;
}

/* Checking helpers */

/* With MP_SEED_DIR set, every checked input is also written there as a
 * seed for tests/fuzz/fuzz-mfd, behind the selector byte its options
 * need (bit 7: no decoding, bit 6: 64 KiB pages). */
static void
save_seed(const MpParserOps *ops, GByteArray *b)
{
    const char *dir = g_getenv("MP_SEED_DIR");
    guint8 sel = 0x35;

    if (!dir)
        return;
    if (ops == &mfd_nodecode_ops)
        sel |= 0x80;
    else if (ops == &mfd_64k_ops)
        sel |= 0x40;
    g_autoptr(GByteArray) seed = g_byte_array_new();
    g_byte_array_append(seed, &sel, 1);
    g_byte_array_append(seed, b->data, b->len);
    g_autofree char *sum =
        g_compute_checksum_for_data(G_CHECKSUM_SHA1, seed->data, seed->len);
    g_autofree char *path = g_build_filename(dir, sum, NULL);
    cr_assert(
        g_file_set_contents(path, (const char *)seed->data, seed->len, NULL));
}

static void
check_ops(const MpParserOps *ops, GByteArray *b, const char *want)
{
    save_seed(ops, b);
    g_autofree char *log = feed_check_all_splits(ops, b->data, b->len);
    cr_assert_str_eq(log, want);
}

static void
check(GByteArray *b, const char *want)
{
    check_ops(&mfd_ops, b, want);
}

/* Whole and some chunkings, for inputs too big for every split or even
 * a guard page per byte; all give `want`. */
static void
check_chunked(const MpParserOps *ops, GByteArray *b, const char *want)
{
    const gsize chunks[] = {0, 7, 1000, 4095, 4097, 65535, 65536, 65537};
    save_seed(ops, b);
    for (guint i = 0; i < G_N_ELEMENTS(chunks); i++) {
        g_autofree char *log = feed_log(ops, b->data, b->len, chunks[i], 0);
        cr_assert_str_eq(log, want, "chunk %zu", chunks[i]);
    }
}

static char *
error_line(MpParseErrorCode code, const char *msg)
{
    return g_strdup_printf("ERROR %d " CHANNEL ": %s\n", code, msg);
}

static const char init_line[] = "off=0 len=64 mfd_init id=1\n";

/* Verifies page contents: whole and split in a few places (the logs of
 * every split are compared elsewhere). */
typedef struct {
    guint pages, zeros, data_records;
    gboolean bad;
} PageCheck;

static MpRecordAction
page_check(const MpRecord *rec, gpointer user_data)
{
    PageCheck *c = user_data;
    guint8 want[PS];

    if (rec->kind == MP_REC_MFD_DATA) {
        c->data_records++;
        c->bad |= rec->u.mfd.data == NULL;
    }
    if (rec->kind != MP_REC_MFD_PAGE)
        return MP_REC_CONTINUE;
    if (rec->u.mfd.zero) {
        c->zeros++;
        c->bad |= rec->u.mfd.data != NULL || rec->length != 0;
        return MP_REC_CONTINUE;
    }
    c->pages++;
    fill_page(want, rec->u.mfd.addr, PS);
    c->bad |= rec->u.mfd.data == NULL || memcmp(rec->u.mfd.data, want, PS);
    return MP_REC_CONTINUE;
}

static void
check_pages(GByteArray *b, guint pages, guint zeros)
{
    const gsize chunks[] = {0, 3, 100, 4096, 5000};
    for (guint i = 0; i < G_N_ELEMENTS(chunks); i++) {
        PageCheck c = {0};
        g_autoptr(MpMfdParser) p =
            mp_mfd_parser_new(CHANNEL, PS, page_check, &c);
        gsize step = chunks[i] ? chunks[i] : b->len;
        for (gsize off = 0; off < b->len; off += step) {
            gsize n = MIN(step, b->len - off), used;
            guint8 *g = guarded_dup(b->data + off, n);
            cr_assert_eq(mp_mfd_parser_feed(p, g, n, &used, NULL),
                         MP_FEED_MORE);
            guarded_free(g, n);
        }
        cr_assert(mp_mfd_parser_finish(p, NULL));
        cr_assert(!c.bad, "chunk %zu: bad page data", chunks[i]);
        cr_assert_eq(c.pages, pages, "chunk %zu", chunks[i]);
        cr_assert_eq(c.zeros, zeros, "chunk %zu", chunks[i]);
    }
}

/* Streams */

/* 7.2: pages on multifd, zero pages on the main channel; a SYNC packet
 * without pages keeps the stale next_packet_size and has no data. */
static void
stream_7_2(GByteArray *b, GArray *bounds)
{
    const guint64 o1[] = {0x1000, 0x5000}, o3[] = {0x7ff000};
    guint64 v;

    init_msg(b, 1, MP_MULTIFD_MAGIC, MP_MULTIFD_VERSION);
    v = b->len, g_array_append_val(bounds, v);
    packet(b, &(Pkt){0, 128, 2, 0, 2 * PS, 1, "pc.ram", o1});
    put_page(b, 0x1000);
    put_page(b, 0x5000);
    v = b->len, g_array_append_val(bounds, v);
    packet(b, &(Pkt){MP_MULTIFD_FLAG_SYNC, 128, 0, 0, 2 * PS, 2, "pc.ram"});
    v = b->len, g_array_append_val(bounds, v);
    packet(b, &(Pkt){0, 128, 1, 0, PS, 3, "pc.ram", o3});
    put_page(b, 0x7ff000);
    v = b->len, g_array_append_val(bounds, v);
}

static const char log_7_2[] =
    "off=0 len=64 mfd_init id=1\n"
    "off=64 len=1344 mfd_packet flags=0x0 normal=2 zero=0 next=8192 num=1 "
    "block=\"pc.ram\"\n"
    "off=1408 len=4096 mfd_page block=\"pc.ram\" addr=0x1000\n"
    "off=5504 len=4096 mfd_page block=\"pc.ram\" addr=0x5000\n"
    "off=9600 len=1344 mfd_packet flags=0x1 normal=0 zero=0 next=8192 num=2 "
    "block=\"pc.ram\"\n"
    "off=10944 len=1344 mfd_packet flags=0x0 normal=1 zero=0 next=4096 "
    "num=3 block=\"pc.ram\"\n"
    "off=12288 len=4096 mfd_page block=\"pc.ram\" addr=0x7ff000\n";

/* 10.x: zero pages listed after the normal ones, zero-only packets, and
 * SYNC packets with pages_alloc 0 and an empty block name. */
static void
stream_10(GByteArray *b, GArray *bounds)
{
    const guint64 o1[] = {0x2000, 0x3000, 0x4000};
    const guint64 o2[] = {0x10000, 0x11000, 0x12000};
    guint64 v;

    init_msg(b, 1, MP_MULTIFD_MAGIC, MP_MULTIFD_VERSION);
    v = b->len, g_array_append_val(bounds, v);
    packet(b, &(Pkt){0, 128, 1, 2, PS, 5, "pc.ram", o1});
    put_page(b, 0x2000);
    v = b->len, g_array_append_val(bounds, v);
    packet(b, &(Pkt){0, 128, 0, 3, 0, 6, "mem1", o2});
    v = b->len, g_array_append_val(bounds, v);
    packet(b, &(Pkt){MP_MULTIFD_FLAG_SYNC, 0, 0, 0, 0, 7, ""});
    v = b->len, g_array_append_val(bounds, v);
}

static const char log_10[] =
    "off=0 len=64 mfd_init id=1\n"
    "off=64 len=1344 mfd_packet flags=0x0 normal=1 zero=2 next=4096 num=5 "
    "block=\"pc.ram\"\n"
    "off=1408 len=4096 mfd_page block=\"pc.ram\" addr=0x2000\n"
    "off=5504 len=0 mfd_page block=\"pc.ram\" addr=0x3000 zero\n"
    "off=5504 len=0 mfd_page block=\"pc.ram\" addr=0x4000 zero\n"
    "off=5504 len=1344 mfd_packet flags=0x0 normal=0 zero=3 next=0 num=6 "
    "block=\"mem1\"\n"
    "off=6848 len=0 mfd_page block=\"mem1\" addr=0x10000 zero\n"
    "off=6848 len=0 mfd_page block=\"mem1\" addr=0x11000 zero\n"
    "off=6848 len=0 mfd_page block=\"mem1\" addr=0x12000 zero\n"
    "off=6848 len=1344 mfd_packet flags=0x1 normal=0 zero=0 next=0 num=7 "
    "block=\"\"\n";

Test(mfd, nocomp_7_2)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    g_autoptr(GArray) bounds = g_array_new(FALSE, FALSE, sizeof(guint64));
    stream_7_2(b, bounds);
    g_autofree char *want = g_strconcat(log_7_2, "MORE\n", NULL);
    check(b, want);
    check_pages(b, 3, 0);
}

Test(mfd, nocomp_10_zero_pages_and_empty_sync)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    g_autoptr(GArray) bounds = g_array_new(FALSE, FALSE, sizeof(guint64));
    stream_10(b, bounds);
    g_autofree char *want = g_strconcat(log_10, "MORE\n", NULL);
    check(b, want);
    check_pages(b, 1, 5);
}

Test(mfd, empty_stream_and_init_only)
{
    g_autofree char *log = feed_log(&mfd_ops, NULL, 0, 0, 0);
    cr_assert_str_eq(log, "MORE\n");

    g_autoptr(GByteArray) b = g_byte_array_new();
    init_msg(b, 7, MP_MULTIFD_MAGIC, MP_MULTIFD_VERSION);
    check(b, "off=0 len=64 mfd_init id=7\nMORE\n");
}

Test(mfd, page_size_64k)
{
    /* 8 offset slots: a 384-byte header */
    const guint64 z[] = {0x30000, 0x50000};
    g_autoptr(GByteArray) b = g_byte_array_new();
    init_msg(b, 1, MP_MULTIFD_MAGIC, MP_MULTIFD_VERSION);
    packet(b, &(Pkt){0, 8, 0, 2, 0, 1, "pc.ram", z, 8});
    packet(b,
           &(Pkt){MP_MULTIFD_FLAG_SYNC, 8, 0, 0, 65536, 2, "pc.ram", NULL, 8});
    check_ops(&mfd_64k_ops, b,
              "off=0 len=64 mfd_init id=1\n"
              "off=64 len=384 mfd_packet flags=0x0 normal=0 zero=2 next=0 "
              "num=1 block=\"pc.ram\"\n"
              "off=448 len=0 mfd_page block=\"pc.ram\" addr=0x30000 zero\n"
              "off=448 len=0 mfd_page block=\"pc.ram\" addr=0x50000 zero\n"
              "off=448 len=384 mfd_packet flags=0x1 normal=0 zero=0 "
              "next=65536 num=2 block=\"pc.ram\"\n"
              "MORE\n");

    /* a 64 KiB page, and an offset aligned to 4 KiB only */
    const guint64 o[] = {0x20000}, bad[] = {0x21000};
    g_byte_array_set_size(b, 64);
    packet(b, &(Pkt){0, 8, 1, 0, 65536, 3, "pc.ram", o, 8});
    g_byte_array_set_size(b, b->len + 65536);
    memset(b->data + b->len - 65536, 0x11, 65536);
    packet(b, &(Pkt){0, 8, 1, 0, 65536, 4, "pc.ram", bad, 8});
    g_autofree char *err = error_line(
        MP_PARSE_ERROR_MULTIFD,
        "packet 4 at offset 65984 lists page offset 0x21000 at index 0 "
        "(expected a multiple of 65536)");
    g_autofree char *want = g_strconcat(
        "off=0 len=64 mfd_init id=1\n"
        "off=64 len=384 mfd_packet flags=0x0 normal=1 zero=0 next=65536 "
        "num=3 block=\"pc.ram\"\n"
        "off=448 len=65536 mfd_page block=\"pc.ram\" addr=0x20000\n",
        err, NULL);
    check_chunked(&mfd_64k_ops, b, want);
}

static void
stream_device_state(GByteArray *b, GArray *bounds)
{
    const guint64 o[] = {0x1000};
    guint64 v;

    init_msg(b, 1, MP_MULTIFD_MAGIC, MP_MULTIFD_VERSION);
    v = b->len, g_array_append_val(bounds, v);
    device_state(b, "0000:00:04.0/vfio", 3, 100, TRUE);
    v = b->len, g_array_append_val(bounds, v);
    packet(b, &(Pkt){0, 128, 1, 0, PS, 9, "pc.ram", o});
    put_page(b, 0x1000);
    v = b->len, g_array_append_val(bounds, v);
    device_state(b, "0000:00:05.0/vfio", 0, 0, TRUE);
    v = b->len, g_array_append_val(bounds, v);
}

static const char log_device_state[] =
    "off=0 len=64 mfd_init id=1\n"
    "off=64 len=276 mfd_device_state idstr=\"0000:00:04.0/vfio\" "
    "instance=3 size=100\n"
    "off=340 len=100 mfd_data bytes=100\n"
    "off=440 len=1344 mfd_packet flags=0x0 normal=1 zero=0 next=4096 num=9 "
    "block=\"pc.ram\"\n"
    "off=1784 len=4096 mfd_page block=\"pc.ram\" addr=0x1000\n"
    "off=5880 len=276 mfd_device_state idstr=\"0000:00:05.0/vfio\" "
    "instance=0 size=0\n";

Test(mfd, device_state)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    g_autoptr(GArray) bounds = g_array_new(FALSE, FALSE, sizeof(guint64));
    stream_device_state(b, bounds);
    g_autofree char *want = g_strconcat(log_device_state, "MORE\n", NULL);
    check(b, want);
}

/* Data longer than a chunk comes as 64 KiB records whatever the reads. */
Test(mfd, device_state_chunks)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    init_msg(b, 1, MP_MULTIFD_MAGIC, MP_MULTIFD_VERSION);
    device_state(b, "dev", 0, 2 * 65536 + 5, TRUE);
    check_chunked(&mfd_ops, b,
                  "off=0 len=64 mfd_init id=1\n"
                  "off=64 len=276 mfd_device_state idstr=\"dev\" instance=0 "
                  "size=131077\n"
                  "off=340 len=65536 mfd_data bytes=65536\n"
                  "off=65876 len=65536 mfd_data bytes=65536\n"
                  "off=131412 len=5 mfd_data bytes=5\n"
                  "MORE\n");
}

/* zstd: 2 pages, a SYNC without pages (stale size, no data), then 3
 * normal pages and 2 zero pages (10.x). */
static char *
stream_zstd(GByteArray *b, GArray *bounds, gboolean decoded)
{
    const guint64 o1[] = {0x1000, 0x2000};
    const guint64 o3[] = {0x8000, 0x9000, 0xa000, 0xb000, 0xc000};
    ZSTD_CStream *cs = zstd_channel();
    GByteArray *d1 = g_byte_array_new(), *d3 = g_byte_array_new();
    gsize n1 = zstd_pages(cs, d1, o1, 2);
    gsize n3 = zstd_pages(cs, d3, o3, 3);
    guint64 v;
    ZSTD_freeCStream(cs);

    init_msg(b, 1, MP_MULTIFD_MAGIC, MP_MULTIFD_VERSION);
    v = b->len, g_array_append_val(bounds, v);
    packet(b, &(Pkt){MP_MULTIFD_FLAG_ZSTD, 128, 2, 0, n1, 1, "pc.ram", o1});
    g_byte_array_append(b, d1->data, n1);
    v = b->len, g_array_append_val(bounds, v);
    packet(b, &(Pkt){MP_MULTIFD_FLAG_SYNC, 128, 0, 0, n1, 2, "pc.ram"});
    v = b->len, g_array_append_val(bounds, v);
    packet(b, &(Pkt){MP_MULTIFD_FLAG_ZSTD, 128, 3, 2, n3, 3, "pc.ram", o3});
    g_byte_array_append(b, d3->data, n3);
    v = b->len, g_array_append_val(bounds, v);
    g_byte_array_free(d1, TRUE);
    g_byte_array_free(d3, TRUE);

    guint64 e1 = 64 + HDR + n1, e3 = e1 + 2 * HDR + n3;
    GString *s = g_string_new(init_line);
    g_string_append_printf(s,
                           "off=64 len=1344 mfd_packet flags=0x4 normal=2 "
                           "zero=0 next=%zu num=1 block=\"pc.ram\"%s\n"
                           "off=1408 len=%zu mfd_data bytes=%zu\n",
                           n1, decoded ? "" : " undecoded", n1, n1);
    if (decoded)
        g_string_append_printf(s,
                               "off=%" G_GUINT64_FORMAT " len=0 mfd_page "
                               "block=\"pc.ram\" addr=0x1000\n"
                               "off=%" G_GUINT64_FORMAT " len=0 mfd_page "
                               "block=\"pc.ram\" addr=0x2000\n",
                               e1, e1);
    g_string_append_printf(s,
                           "off=%" G_GUINT64_FORMAT " len=1344 mfd_packet "
                           "flags=0x1 normal=0 zero=0 next=%zu num=2 "
                           "block=\"pc.ram\"\n"
                           "off=%" G_GUINT64_FORMAT " len=1344 mfd_packet "
                           "flags=0x4 normal=3 zero=2 next=%zu num=3 "
                           "block=\"pc.ram\"%s\n"
                           "off=%" G_GUINT64_FORMAT " len=%zu mfd_data "
                           "bytes=%zu\n",
                           e1, n1, e1 + HDR, n3, decoded ? "" : " undecoded",
                           e1 + 2 * HDR, n3, n3);
    if (decoded)
        for (guint i = 0; i < 5; i++)
            g_string_append_printf(s,
                                   "off=%" G_GUINT64_FORMAT " len=0 mfd_page "
                                   "block=\"pc.ram\" addr=0x%x%s\n",
                                   e3, (guint)o3[i], i >= 3 ? " zero" : "");
    return g_string_free(s, FALSE);
}

Test(mfd, zstd_decoded)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    g_autoptr(GArray) bounds = g_array_new(FALSE, FALSE, sizeof(guint64));
    g_autofree char *log = stream_zstd(b, bounds, TRUE);
    g_autofree char *want = g_strconcat(log, "MORE\n", NULL);
    check(b, want);
    check_pages(b, 5, 2);
}

Test(mfd, zstd_not_decoded)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    g_autoptr(GArray) bounds = g_array_new(FALSE, FALSE, sizeof(guint64));
    g_autofree char *log = stream_zstd(b, bounds, FALSE);
    g_autofree char *want = g_strconcat(log, "MORE\n", NULL);
    check_ops(&mfd_nodecode_ops, b, want);
}

typedef struct {
    GString *log;
    const guint64 *offs;
    const guint8 *pages;
    guint seen;
    gboolean ok;
} RandomCtx;

static MpRecordAction
random_page(const MpRecord *rec, gpointer user_data)
{
    RandomCtx *c = user_data;

    if (rec->kind == MP_REC_MFD_PAGE) {
        guint i = 127 - rec->u.mfd.addr / PS;
        c->ok &= rec->u.mfd.addr == c->offs[c->seen] && rec->length == 0
                 && memcmp(rec->u.mfd.data, c->pages + i * PS, PS) == 0;
        c->seen++;
    }
    if (rec->kind == MP_REC_MFD_DATA)
        g_string_append_printf(c->log,
                               "%" G_GUINT64_FORMAT "+%" G_GUINT64_FORMAT " ",
                               rec->offset, rec->length);
    return MP_REC_CONTINUE;
}

/* A full packet of incompressible pages: compressed data over several
 * chunks, decoded across chunk boundaries. */
Test(mfd, zstd_full_packet_random)
{
    guint64 offs[128];
    g_autoptr(GByteArray) b = g_byte_array_new();
    g_autoptr(GByteArray) d = g_byte_array_new();
    g_autoptr(GRand) r = g_rand_new_with_seed(42);
    guint8 *pages = g_malloc(128 * PS);
    ZSTD_CStream *cs = zstd_channel_window(0); /* default */
    ZSTD_outBuffer ob;

    for (guint i = 0; i < 128 * PS / 4; i++)
        ((guint32 *)pages)[i] = g_rand_int(r);
    for (guint i = 0; i < 128; i++)
        offs[i] = (guint64)(127 - i) * PS;
    g_byte_array_set_size(d, ZSTD_COMPRESSBOUND(128 * PS));
    ob = (ZSTD_outBuffer){d->data, d->len, 0};
    ZSTD_inBuffer ib = {pages, 128 * PS, 0};
    size_t left;
    do {
        left = ZSTD_compressStream2(cs, &ob, &ib, ZSTD_e_flush);
        cr_assert(!ZSTD_isError(left));
    } while (left > 0);
    g_byte_array_set_size(d, ob.pos);
    ZSTD_freeCStream(cs);
    cr_assert_gt(d->len, 2 * 65536);

    init_msg(b, 1, MP_MULTIFD_MAGIC, MP_MULTIFD_VERSION);
    packet(b, &(Pkt){MP_MULTIFD_FLAG_ZSTD, 128, 128, 0, d->len, 1, "pc.ram",
                     offs});
    g_byte_array_append(b, d->data, d->len);

    /* every decoded page, with any chunking */
    const gsize chunks[] = {0, 1, 4096, 65537};
    for (guint c = 0; c < G_N_ELEMENTS(chunks); c++) {
        RandomCtx ctx = {g_string_new(NULL), offs, pages, 0, TRUE};
        g_autoptr(GString) log = ctx.log;
        g_autoptr(MpMfdParser) p =
            mp_mfd_parser_new(CHANNEL, PS, random_page, &ctx);
        gsize step = chunks[c] ? chunks[c] : b->len;
        for (gsize off = 0; off < b->len; off += step) {
            gsize used;
            cr_assert_eq(mp_mfd_parser_feed(p, b->data + off,
                                            MIN(step, b->len - off), &used,
                                            NULL),
                         MP_FEED_MORE);
        }
        cr_assert(mp_mfd_parser_finish(p, NULL));
        cr_assert_eq(ctx.seen, 128, "chunk %zu", chunks[c]);
        cr_assert(ctx.ok, "chunk %zu: decoded pages differ", chunks[c]);
        /* data chunks are 64 KiB from the data start, whatever the reads */
        g_autoptr(GString) want = g_string_new(NULL);
        for (guint64 o = 0; o < d->len; o += 65536)
            g_string_append_printf(
                want, "%" G_GUINT64_FORMAT "+%" G_GUINT64_FORMAT " ",
                64 + HDR + o, MIN(65536, d->len - o));
        cr_assert_str_eq(log->str, want->str);
    }
    g_free(pages);
}

Test(mfd, zlib_counted_not_decoded)
{
    const guint64 o1[] = {0x1000, 0x2000, 0x3000}, o2[] = {0x4000};
    g_autoptr(GByteArray) b = g_byte_array_new();
    g_autoptr(GByteArray) d1 = g_byte_array_new();
    g_autoptr(GByteArray) d2 = g_byte_array_new();
    z_stream zs = {0};
    cr_assert_eq(deflateInit(&zs, 1), Z_OK);
    gsize n1 = zlib_pages(&zs, d1, o1, 3), n2 = zlib_pages(&zs, d2, o2, 1);
    deflateEnd(&zs);

    init_msg(b, 1, MP_MULTIFD_MAGIC, MP_MULTIFD_VERSION);
    packet(b, &(Pkt){MP_MULTIFD_FLAG_ZLIB, 128, 3, 0, n1, 1, "pc.ram", o1});
    g_byte_array_append(b, d1->data, n1);
    packet(b, &(Pkt){MP_MULTIFD_FLAG_SYNC, 128, 0, 0, n1, 2, "pc.ram"});
    packet(b, &(Pkt){MP_MULTIFD_FLAG_ZLIB, 128, 1, 0, n2, 3, "pc.ram", o2});
    g_byte_array_append(b, d2->data, n2);

    guint64 e1 = 64 + HDR + n1;
    g_autofree char *want = g_strdup_printf(
        "off=0 len=64 mfd_init id=1\n"
        "off=64 len=1344 mfd_packet flags=0x2 normal=3 zero=0 next=%zu num=1 "
        "block=\"pc.ram\" undecoded\n"
        "off=1408 len=%zu mfd_data bytes=%zu\n"
        "off=%" G_GUINT64_FORMAT " len=1344 mfd_packet flags=0x1 normal=0 "
        "zero=0 next=%zu num=2 block=\"pc.ram\"\n"
        "off=%" G_GUINT64_FORMAT " len=1344 mfd_packet flags=0x2 normal=1 "
        "zero=0 next=%zu num=3 block=\"pc.ram\" undecoded\n"
        "off=%" G_GUINT64_FORMAT " len=%zu mfd_data bytes=%zu\n"
        "MORE\n",
        n1, n1, n1, e1, n1, e1 + HDR, n2, e1 + 2 * HDR, n2, n2);
    check(b, want);

    /* a consumer counts normal_pages of MFD_PACKET: no MFD_PAGE at all */
    PageCheck c = {0};
    g_autoptr(MpMfdParser) p = mp_mfd_parser_new(CHANNEL, PS, page_check, &c);
    gsize used;
    cr_assert_eq(mp_mfd_parser_feed(p, b->data, b->len, &used, NULL),
                 MP_FEED_MORE);
    cr_assert_eq(c.pages + c.zeros, 0);
    cr_assert_eq(c.data_records, 2);
}

/* Cutting the channel anywhere: finish() succeeds exactly at packet
 * boundaries, reports a truncation elsewhere, and never crashes. */
static void
check_truncations(const MpParserOps *ops, GByteArray *b, GArray *bounds,
                  guint bytewise_every)
{
    for (guint cut = 0; cut <= b->len; cut++) {
        g_autofree char *log = feed_log(ops, b->data, cut, 0, 0);
        gboolean boundary = cut == 0;
        for (guint i = 0; i < bounds->len; i++)
            boundary |= g_array_index(bounds, guint64, i) == cut;
        const char *line = log, *last = strrchr(log, '\n');
        for (const char *q = log; q < last; q++)
            if (*q == '\n')
                line = q + 1;
        if (boundary) {
            cr_assert_str_eq(line, "MORE\n", "cut %u: %s", cut, log);
        } else {
            g_autofree char *want = g_strdup_printf(
                "ERROR %d " CHANNEL ": channel closed at offset %u inside",
                MP_PARSE_ERROR_TRUNCATED, cut);
            cr_assert(g_str_has_prefix(line, want), "cut %u: %s", cut, log);
        }
        /* per byte (one guard page per byte) only now and then */
        if (cut % bytewise_every == 0) {
            g_autofree char *bytes = feed_log(ops, b->data, cut, 1, 0);
            cr_assert_str_eq(bytes, log, "cut %u", cut);
        }
    }
}

Test(mfd, truncated_everywhere_nocomp)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    g_autoptr(GArray) bounds = g_array_new(FALSE, FALSE, sizeof(guint64));
    stream_7_2(b, bounds);
    check_truncations(&mfd_ops, b, bounds, 4001);
    g_byte_array_set_size(b, 0);
    g_array_set_size(bounds, 0);
    stream_10(b, bounds);
    check_truncations(&mfd_ops, b, bounds, 4001);
}

Test(mfd, truncated_everywhere_zstd_and_device_state)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    g_autoptr(GArray) bounds = g_array_new(FALSE, FALSE, sizeof(guint64));
    g_free(stream_zstd(b, bounds, TRUE));
    check_truncations(&mfd_ops, b, bounds, 4001);
    check_truncations(&mfd_nodecode_ops, b, bounds, 4001);
    g_byte_array_set_size(b, 0);
    g_array_set_size(bounds, 0);
    stream_device_state(b, bounds);
    check_truncations(&mfd_ops, b, bounds, 4001);
}

Test(mfd, truncation_messages)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    g_autoptr(GArray) bounds = g_array_new(FALSE, FALSE, sizeof(guint64));
    stream_7_2(b, bounds);
    const struct {
        guint cut;
        const char *msg;
    } cases[] = {
        {10, "channel closed at offset 10 inside the 64-byte init (10 bytes "
             "read) (init at offset 0)"},
        {70, "channel closed at offset 70 inside a packet header (6 of 12 "
             "bytes read) (packet at offset 64)"},
        {100, "channel closed at offset 100 inside a packet header (36 of "
              "1344 bytes read) (packet at offset 64)"},
        {5504, "channel closed at offset 5504 inside normal page 2 of 2 of "
               "packet 1 (packet at offset 64)"},
    };
    for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autofree char *log = feed_log(&mfd_ops, b->data, cases[i].cut, 0, 0);
        g_autofree char *want =
            error_line(MP_PARSE_ERROR_TRUNCATED, cases[i].msg);
        cr_assert(g_str_has_suffix(log, want), "%s", log);
    }

    g_byte_array_set_size(b, 0);
    g_array_set_size(bounds, 0);
    stream_device_state(b, bounds);
    g_autofree char *log = feed_log(&mfd_ops, b->data, 400, 0, 0);
    g_autofree char *want = error_line(
        MP_PARSE_ERROR_TRUNCATED,
        "channel closed at offset 400 inside the 100 bytes of device state "
        "\"0000:00:04.0/vfio\" (40 missing) (packet at offset 64)");
    cr_assert(g_str_has_suffix(log, want), "%s", log);
}

/* Malformed input: each case is checked whole, per byte and split
 * everywhere, and must give exactly this error. */
static void
check_error(GByteArray *b, MpParseErrorCode code, const char *prefix_log,
            const char *msg)
{
    g_autofree char *err = error_line(code, msg);
    g_autofree char *want = g_strconcat(prefix_log, err, NULL);
    check(b, want);
}

/* Error inputs stay small: every one is fed split at every byte. */
static const char pkt1_line[] =
    "off=64 len=1344 mfd_packet flags=0x1 normal=0 zero=0 next=0 num=1 "
    "block=\"pc.ram\"\n";

/* init + one good packet (SYNC), then whatever the test appends */
static GByteArray *
good_start(void)
{
    GByteArray *b = g_byte_array_new();
    init_msg(b, 1, MP_MULTIFD_MAGIC, MP_MULTIFD_VERSION);
    packet(b, &(Pkt){MP_MULTIFD_FLAG_SYNC, 128, 0, 0, 0, 1, "pc.ram"});
    return b;
}

Test(mfd, bad_init)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    init_msg(b, 1, 0x11223345, MP_MULTIFD_VERSION);
    check_error(b, MP_PARSE_ERROR_MAGIC, "",
                "init magic 0x11223345 at offset 0 (expected 0x11223344)");
    g_byte_array_set_size(b, 0);
    init_msg(b, 1, MP_MULTIFD_MAGIC, 2);
    check_error(b, MP_PARSE_ERROR_VERSION, "",
                "init version 2 at offset 4 (expected 1)");
}

Test(mfd, bad_packet_magic_version_flags)
{
    g_autofree char *pre = g_strconcat(init_line, pkt1_line, NULL);
    const guint64 o[] = {0x2000};
    guint at = 64 + HDR;

    g_autoptr(GByteArray) b = good_start();
    packet(b, &(Pkt){0, 128, 1, 0, PS, 2, "pc.ram", o});
    mp_put_be32(b->data + at, 0xdeadbeef);
    check_error(b, MP_PARSE_ERROR_MAGIC, pre,
                "packet magic 0xdeadbeef at offset 1408 (expected "
                "0x11223344)");
    mp_put_be32(b->data + at, MP_MULTIFD_MAGIC);
    mp_put_be32(b->data + at + 4, 3);
    check_error(b, MP_PARSE_ERROR_VERSION, pre,
                "packet version 3 at offset 1412 (expected 1)");
    mp_put_be32(b->data + at + 4, MP_MULTIFD_VERSION);
    mp_put_be32(b->data + at + 8, 0x81);
    check_error(b, MP_PARSE_ERROR_MULTIFD, pre,
                "packet flags 0x81 at offset 1416 (expected only bits of "
                "0x7f)");
    mp_put_be32(b->data + at + 8, 0x06);
    check_error(b, MP_PARSE_ERROR_MULTIFD, pre,
                "packet compression 0x6 at offset 1416 (expected one of "
                "0x0, 0x2, 0x4, 0x8, 0x10, 0x20)");
}

Test(mfd, too_many_pages)
{
    g_autofree char *pre = g_strconcat(init_line, pkt1_line, NULL);
    g_autoptr(GByteArray) b = good_start();
    guint len = b->len;

    packet(b, &(Pkt){0, 129, 0, 0, 0, 2, "pc.ram"});
    check_error(b, MP_PARSE_ERROR_MULTIFD, pre,
                "packet 2 at offset 1408 has pages_alloc 129 (expected at "
                "most 128)");
    g_byte_array_set_size(b, len);
    packet(b, &(Pkt){0, 128, 100, 29, 100 * PS, 2, "pc.ram"});
    check_error(b, MP_PARSE_ERROR_MULTIFD, pre,
                "packet 2 at offset 1408 has 100 normal + 29 zero pages "
                "(expected at most pages_alloc 128)");
    g_byte_array_set_size(b, len);
    packet(b, &(Pkt){0, 0, 1, 0, PS, 2, "pc.ram"});
    check_error(b, MP_PARSE_ERROR_MULTIFD, pre,
                "packet 2 at offset 1408 has 1 normal + 0 zero pages "
                "(expected at most pages_alloc 0)");
    /* counts that overflow 32 bits when added */
    g_byte_array_set_size(b, len);
    packet(b, &(Pkt){0, 128, 0xffffffff, 2, 0, 2, "pc.ram"});
    check_error(b, MP_PARSE_ERROR_MULTIFD, pre,
                "packet 2 at offset 1408 has 4294967295 normal + 2 zero "
                "pages (expected at most pages_alloc 128)");
}

Test(mfd, unaligned_offsets)
{
    g_autofree char *pre = g_strconcat(init_line, pkt1_line, NULL);
    const guint64 o[] = {0x3000, 0x4000, 0x5800};
    g_autoptr(GByteArray) b = good_start();
    packet(b, &(Pkt){0, 128, 2, 1, 2 * PS, 2, "pc.ram", o});
    check_error(b, MP_PARSE_ERROR_MULTIFD, pre,
                "packet 2 at offset 1408 lists page offset 0x5800 at index 2 "
                "(expected a multiple of 4096)");
}

Test(mfd, bad_block_names)
{
    g_autofree char *pre = g_strconcat(init_line, pkt1_line, NULL);
    const guint64 o[] = {0x3000};
    g_autoptr(GByteArray) b = good_start();
    guint len = b->len;

    packet(b, &(Pkt){0, 128, 1, 0, PS, 2, NULL, o});
    check_error(b, MP_PARSE_ERROR_MULTIFD, pre,
                "packet 2 at offset 1408 has a RAMBlock name without NUL in "
                "its 256 bytes");
    g_byte_array_set_size(b, len);
    packet(b, &(Pkt){0, 128, 0, 1, 0, 2, "", o});
    check_error(b, MP_PARSE_ERROR_MULTIFD, pre,
                "packet 2 at offset 1408 has 1 pages but an empty RAMBlock "
                "name");
    /* no pages: a stale name is not looked at */
    g_byte_array_set_size(b, len);
    packet(b, &(Pkt){MP_MULTIFD_FLAG_SYNC, 128, 0, 0, 0, 2, NULL});
    g_autofree char *log = feed_check_all_splits(&mfd_ops, b->data, b->len);
    cr_assert(g_str_has_suffix(log, "MORE\n"), "%s", log);
}

Test(mfd, bad_next_packet_size)
{
    g_autofree char *pre = g_strconcat(init_line, pkt1_line, NULL);
    const guint64 o[] = {0x3000, 0x4000};
    g_autoptr(GByteArray) b = good_start();

    packet(b, &(Pkt){0, 128, 2, 0, PS, 2, "pc.ram", o});
    check_error(b, MP_PARSE_ERROR_LENGTH, pre,
                "packet 2 at offset 1408 has next_packet_size 4096 (expected "
                "2 normal pages x 4096 = 8192)");

    /* compressed: 1..bound (a fresh channel, so no method clash) */
    g_byte_array_set_size(b, 0);
    init_msg(b, 1, MP_MULTIFD_MAGIC, MP_MULTIFD_VERSION);
    packet(b, &(Pkt){MP_MULTIFD_FLAG_ZSTD, 128, 2, 0, 0, 2, "pc.ram", o});
    check_error(b, MP_PARSE_ERROR_LENGTH, init_line,
                "packet 2 at offset 64 has next_packet_size 0 for 2 zstd "
                "pages (expected 1..530432)");
    g_byte_array_set_size(b, 64);
    packet(b, &(Pkt){MP_MULTIFD_FLAG_ZSTD, 128, 2, 0, 530433, 2, "pc.ram", o});
    check_error(b, MP_PARSE_ERROR_LENGTH, init_line,
                "packet 2 at offset 64 has next_packet_size 530433 for 2 zstd "
                "pages (expected 1..530432)");
    g_byte_array_set_size(b, 64);
    packet(b,
           &(Pkt){MP_MULTIFD_FLAG_ZLIB, 128, 2, 0, 0xffffffff, 2, "pc.ram", o});
    check_error(b, MP_PARSE_ERROR_LENGTH, init_line,
                "packet 2 at offset 64 has next_packet_size 4294967295 for 2 "
                "zlib pages (expected 1..528557)");
    g_byte_array_set_size(b, 64);
    packet(b,
           &(Pkt){MP_MULTIFD_FLAG_QATZIP, 128, 2, 0, 1048577, 2, "pc.ram", o});
    check_error(b, MP_PARSE_ERROR_LENGTH, init_line,
                "packet 2 at offset 64 has next_packet_size 1048577 for 2 "
                "qatzip pages (expected 1..1048576)");
}

Test(mfd, method_changes_mid_channel)
{
    const guint64 o[] = {0x1000};
    g_autoptr(GByteArray) b = good_start();
    /* packets without pages need not name the method */
    packet(b, &(Pkt){MP_MULTIFD_FLAG_ZLIB, 128, 0, 1, 0, 2, "pc.ram", o});
    packet(b, &(Pkt){0, 128, 1, 0, PS, 3, "pc.ram", o});
    put_page(b, 0x1000);
    packet(b, &(Pkt){MP_MULTIFD_FLAG_ZLIB, 128, 1, 0, 100, 4, "pc.ram", o});
    g_autofree char *pre = g_strconcat(
        init_line, pkt1_line,
        "off=1408 len=1344 mfd_packet flags=0x2 normal=0 zero=1 next=0 num=2 "
        "block=\"pc.ram\"\n"
        "off=2752 len=0 mfd_page block=\"pc.ram\" addr=0x1000 zero\n"
        "off=2752 len=1344 mfd_packet flags=0x0 normal=1 zero=0 next=4096 "
        "num=3 block=\"pc.ram\"\n"
        "off=4096 len=4096 mfd_page block=\"pc.ram\" addr=0x1000\n",
        NULL);
    check_error(b, MP_PARSE_ERROR_MULTIFD, pre,
                "packet 4 at offset 8192 is compressed with zlib (expected "
                "none, as earlier packets of the channel)");
}

Test(mfd, bad_device_state)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    init_msg(b, 1, MP_MULTIFD_MAGIC, MP_MULTIFD_VERSION);
    device_state(b, "big", 0, (1u << 30) + 1, FALSE);
    check_error(b, MP_PARSE_ERROR_LENGTH, init_line,
                "device-state packet \"big\" at offset 64 has "
                "next_packet_size 1073741825 (expected at most 1073741824)");
    g_byte_array_set_size(b, 64);
    device_state(b, NULL, 0, 10, TRUE);
    check_error(b, MP_PARSE_ERROR_MULTIFD, init_line,
                "device-state packet at offset 64 has an idstr without NUL "
                "in its 256 bytes");
}

static const char zpkt_line[] =
    "off=64 len=1344 mfd_packet flags=0x4 normal=2 zero=0 next=%u num=1 "
    "block=\"pc.ram\"\n";

Test(mfd, zstd_corrupt)
{
    const guint64 o[] = {0x1000, 0x2000};
    g_autoptr(GByteArray) b = g_byte_array_new();
    init_msg(b, 1, MP_MULTIFD_MAGIC, MP_MULTIFD_VERSION);
    packet(b, &(Pkt){MP_MULTIFD_FLAG_ZSTD, 128, 2, 0, 40, 1, "pc.ram", o});
    for (guint i = 0; i < 40; i++) {
        guint8 v = (guint8)(0x5a ^ i);
        g_byte_array_append(b, &v, 1);
    }
    g_autofree char *log = feed_check_all_splits(&mfd_ops, b->data, b->len);
    g_autofree char *pkt = g_strdup_printf(zpkt_line, 40);
    g_autofree char *want = g_strdup_printf(
        "%s%sERROR %d " CHANNEL ": zstd data of packet 1 (at offset 64) is "
        "invalid in the chunk at offset 1408: ",
        init_line, pkt, MP_PARSE_ERROR_DECODE);
    cr_assert(g_str_has_prefix(log, want), "%s", log);

    /* not decoded: the same bytes pass as data */
    g_autofree char *log2 =
        feed_check_all_splits(&mfd_nodecode_ops, b->data, b->len);
    cr_assert(g_str_has_suffix(log2, "off=1408 len=40 mfd_data bytes=40\n"
                                     "MORE\n"),
              "%s", log2);
}

Test(mfd, zstd_wrong_page_count)
{
    const guint64 o[] = {0x1000, 0x2000, 0x3000};
    ZSTD_CStream *cs = zstd_channel();
    g_autoptr(GByteArray) d = g_byte_array_new();
    gsize n = zstd_pages(cs, d, o, 1);
    ZSTD_freeCStream(cs);

    /* one page's worth announced as two */
    g_autoptr(GByteArray) b = g_byte_array_new();
    init_msg(b, 1, MP_MULTIFD_MAGIC, MP_MULTIFD_VERSION);
    packet(b, &(Pkt){MP_MULTIFD_FLAG_ZSTD, 128, 2, 0, n, 1, "pc.ram", o});
    g_byte_array_append(b, d->data, n);
    g_autofree char *pkt = g_strdup_printf(zpkt_line, (guint)n);
    g_autofree char *pre = g_strconcat(init_line, pkt, NULL);
    check_error(b, MP_PARSE_ERROR_DECODE, pre,
                "zstd data of packet 1 (at offset 64) decodes to 4096 bytes "
                "(expected 2 normal pages x 4096)");

    /* three pages' worth announced as two */
    cs = zstd_channel();
    g_byte_array_set_size(d, 0);
    n = zstd_pages(cs, d, o, 3);
    ZSTD_freeCStream(cs);
    g_byte_array_set_size(b, 64);
    packet(b, &(Pkt){MP_MULTIFD_FLAG_ZSTD, 128, 2, 0, n, 1, "pc.ram", o});
    g_byte_array_append(b, d->data, n);
    g_autofree char *pkt2 = g_strdup_printf(zpkt_line, (guint)n);
    g_autofree char *pre2 = g_strconcat(init_line, pkt2, NULL);
    check_error(b, MP_PARSE_ERROR_DECODE, pre2,
                "zstd data of packet 1 (at offset 64) decodes to more than 2 "
                "normal pages x 4096 bytes");
}

/* Errors are sticky: later feeds and finish() return the same error. */
Test(mfd, sticky_error)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    init_msg(b, 1, 0x1, MP_MULTIFD_VERSION);
    g_autoptr(MpMfdParser) p = mp_mfd_parser_new(CHANNEL, PS, NULL, NULL);
    g_autoptr(GError) e1 = NULL, e2 = NULL, e3 = NULL;
    gsize used;

    cr_assert_eq(mp_mfd_parser_feed(p, b->data, b->len, &used, &e1),
                 MP_FEED_ERROR);
    cr_assert_eq(e1->code, MP_PARSE_ERROR_MAGIC);
    cr_assert_eq(mp_mfd_parser_feed(p, b->data, b->len, &used, &e2),
                 MP_FEED_ERROR);
    cr_assert_eq(used, 0);
    cr_assert_str_eq(e2->message, e1->message);
    cr_assert(!mp_mfd_parser_finish(p, &e3));
    cr_assert_str_eq(e3->message, e1->message);
    cr_assert_eq(mp_mfd_parser_offset(p), 64);
}

typedef struct {
    GString *log;
    guint64 end;
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

static const char pause_log_10[] = "mfd_init@0+64\n"
                                   "mfd_packet@64+1344\n"
                                   "mfd_page@1408+4096\n"
                                   "mfd_page@5504+0\n"
                                   "mfd_page@5504+0\n"
                                   "mfd_packet@5504+1344\n"
                                   "mfd_page@6848+0\n"
                                   "mfd_page@6848+0\n"
                                   "mfd_page@6848+0\n"
                                   "mfd_packet@6848+1344\n";

/* A pausing callback stops the feed just past each record, even records
 * that need no input (zero pages). */
Test(mfd, pause_after_each_record)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    g_autoptr(GArray) bounds = g_array_new(FALSE, FALSE, sizeof(guint64));
    stream_10(b, bounds);

    PauseCtx c = {g_string_new(NULL), 0};
    g_autoptr(MpMfdParser) p = mp_mfd_parser_new(CHANNEL, PS, pause_every, &c);
    gsize off = 0;
    guint pauses = 0;
    for (;;) {
        gsize used;
        MpFeedStatus st =
            mp_mfd_parser_feed(p, b->data + off, b->len - off, &used, NULL);
        off += used;
        cr_assert_eq(mp_mfd_parser_offset(p), off);
        if (st != MP_FEED_PAUSED) {
            cr_assert_eq(st, MP_FEED_MORE);
            break;
        }
        pauses++;
        cr_assert_eq(off, c.end);
    }
    cr_assert_eq(pauses, 10);
    cr_assert(mp_mfd_parser_finish(p, NULL));
    cr_assert_str_eq(c.log->str, pause_log_10);
    g_string_free(c.log, TRUE);
}

/* finish() right after a pause delivers the zero pages still owed. */
Test(mfd, finish_delivers_owed_pages)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    g_autoptr(GArray) bounds = g_array_new(FALSE, FALSE, sizeof(guint64));
    stream_10(b, bounds);
    g_byte_array_set_size(b, 6848); /* up to the zero-only packet's end */

    PauseCtx c = {g_string_new(NULL), 0};
    g_autoptr(MpMfdParser) p = mp_mfd_parser_new(CHANNEL, PS, pause_every, &c);
    gsize off = 0, used;
    while (c.end < 6848) {
        cr_assert_eq(
            mp_mfd_parser_feed(p, b->data + off, b->len - off, &used, NULL),
            MP_FEED_PAUSED);
        off += used;
    }
    cr_assert(g_str_has_suffix(c.log->str, "mfd_packet@5504+1344\n"));
    cr_assert(mp_mfd_parser_finish(p, NULL));
    cr_assert(g_str_has_suffix(c.log->str, "mfd_packet@5504+1344\n"
                                           "mfd_page@6848+0\n"
                                           "mfd_page@6848+0\n"
                                           "mfd_page@6848+0\n"));
    g_string_free(c.log, TRUE);
}

/* One zstd packet of two pages from a channel stream with the given
 * window, fed whole; @return the parser's log. */
static char *
zstd_window_log(int window_log)
{
    const guint64 offs[] = {0x1000, 0x2000};
    g_autoptr(GByteArray) b = g_byte_array_new();
    g_autoptr(GByteArray) d = g_byte_array_new();
    ZSTD_CStream *cs = zstd_channel_window(window_log);
    gsize n = zstd_pages(cs, d, offs, 2);
    ZSTD_freeCStream(cs);

    init_msg(b, 1, MP_MULTIFD_MAGIC, MP_MULTIFD_VERSION);
    packet(b, &(Pkt){MP_MULTIFD_FLAG_ZSTD, 128, 2, 0, n, 1, "pc.ram", offs});
    g_byte_array_append(b, d->data, n);
    return feed_log(&mfd_ops, b->data, b->len, 0, 0);
}

/* QEMU's highest multifd-zstd-level (20) writes frames with a 2^25 window:
 * decoded.  A frame asking for 2^26 is no QEMU's and would make the
 * decoder reserve 64 MiB (libzstd alone accepts 2^27): refused at its
 * header, naming the packet and the chunk.  (Before the limit, the 2^26
 * frame was decoded.) */
Test(mfd, zstd_window_limited_to_qemu_levels)
{
    g_autofree char *ok = zstd_window_log(25);
    cr_assert(g_str_has_suffix(ok, "MORE\n"), "%s", ok);
    cr_assert(strstr(ok, "mfd_page"), "%s", ok);

    g_autofree char *big = zstd_window_log(26);
    g_autofree char *want = g_strdup_printf(
        "ERROR %d " CHANNEL ": zstd data of packet 1 (at offset 64) is "
        "invalid in the chunk at offset %u: ",
        MP_PARSE_ERROR_DECODE, 64 + HDR);
    cr_assert(strstr(big, want), "%s", big);
    cr_assert(strstr(big, "more than the 2^25 bytes of window QEMU's "
                          "highest multifd-zstd-level uses"),
              "%s", big);
}

/* ---- gaps: resuming at the next packet header ------------------------- */

static gboolean
mfd_gap(gpointer p, guint64 len)
{
    return mp_mfd_parser_gap(p, len);
}

/* init, six nocomp packets of 3 normal pages (packet 2 with 2 zero pages
 * too), packet numbers 10..15, then a SYNC packet without pages (16).
 * `start`: each packet's offset. */
static GByteArray *
gap_stream(gsize start[7])
{
    GByteArray *b = g_byte_array_new();

    init_msg(b, 1, MP_MULTIFD_MAGIC, MP_MULTIFD_VERSION);
    for (int k = 0; k < 6; k++) {
        guint64 offs[5];
        for (int i = 0; i < 5; i++)
            offs[i] = (guint64)(k * 5 + i) * PS;
        start[k] = b->len;
        Pkt pk = {.pages_alloc = 128, .normal = 3, .zero = k == 2 ? 2 : 0,
                  .next = 3 * PS, .num = 10 + k, .block = "pc.ram",
                  .offs = offs};
        packet(b, &pk);
        for (int i = 0; i < 3; i++)
            put_page(b, offs[i]);
    }
    start[6] = b->len;
    Pkt sync = {.flags = MP_MULTIFD_FLAG_SYNC, .next = 3 * PS, .num = 16,
                .block = "pc.ram"};
    packet(b, &sync);
    return b;
}

/* Inside a packet's pages, across a header, inside the init, before the
 * last (page-less) packet: parsing resumes at the next packet header,
 * whole, byte by byte and in odd chunks. */
Test(mfd, gap_resumes_at_next_packet)
{
    gsize s[7];
    g_autoptr(GByteArray) b = gap_stream(s);
    gsize hdr = 320 + 8 * 128;

    feed_check_gap(&mfd_ops, mfd_gap, b->data, b->len, s[1] + hdr + 5000, 700,
                   s[2]);
    feed_check_gap(&mfd_ops, mfd_gap, b->data, b->len, s[1] + hdr + 5000,
                   s[2] + 12 - (s[1] + hdr + 5000), s[3]);
    feed_check_gap(&mfd_ops, mfd_gap, b->data, b->len, 10, 20, s[0]);
    feed_check_gap(&mfd_ops, mfd_gap, b->data, b->len, s[5] + hdr + 1, 4,
                   s[6]);
}

/* A copy of an earlier packet's header inside page data (its packet
 * number is not above the channel's last) is not trusted. */
Test(mfd, gap_older_packet_number_is_not_trusted)
{
    gsize s[7];
    g_autoptr(GByteArray) b = gap_stream(s);
    gsize hdr = 320 + 8 * 128;

    /* packet 1's header copied into packet 3's second page */
    memcpy(b->data + s[3] + hdr + PS, b->data + s[1], hdr);
    feed_check_gap(&mfd_ops, mfd_gap, b->data, b->len, s[3] + hdr + 100, 50,
                   s[4]);
}

/* No header after the gap: the channel ends without a resume, which is no
 * truncation (the owner tells the gap). */
Test(mfd, gap_without_resume_point)
{
    gsize s[7];
    g_autoptr(GByteArray) b = gap_stream(s);
    g_autofree char *log =
        feed_log_gap(&mfd_ops, mfd_gap, b->data, b->len, s[6] + 3,
                     b->len - s[6] - 3, 0);
    cr_assert(!strstr(log, "resync"), "%s", log);
    cr_assert(g_str_has_suffix(log, "MORE\n"), "%s", log);
}
