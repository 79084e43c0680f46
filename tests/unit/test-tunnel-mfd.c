/* test-tunnel-mfd.c: multifd channels through the tunnel's PAGES path
 * without sockets (docs/tunnel.md, "Multifd pages"): a multifd channel's
 * bytes through the source side's encoder in multifd mode
 * (tunnel-pages-out.h, option `multifd`) and the destination side's
 * writer in bare mode (tunnel-pages-in.h, mp_tun_pages_in_set_bare()),
 * DATA items copied as they are.
 *
 * Checks: the destination writes the source's channel byte for byte (the
 * packet headers went as DATA, the pages as batches written back in
 * their offsets' order), however the input is cut into reads, in QEMU
 * 7.2's packet format (SYNC packets with a stale next_packet_size, a
 * page sent twice in consecutive packets) and 10.0's (a zero_pages list,
 * SYNC packets with pages_alloc 0, device state packets); the encoders
 * did their work on the pages (batches, dedup, delta, zero pages in
 * runs, fewer bytes than the stream); packets that QEMU compressed, and a
 * channel the parser loses, go through as DATA untouched; bare batches
 * are bounded by the limit, and urgent pages on a multifd stream are
 * refused.
 */
#include "config.h"
#include <string.h>
#include <criterion/criterion.h>
#include <zstd.h>
#include "json-util.h"
#include "mp-record.h"
#include "page-batch.h"
#include "parse-common.h"
#include "test-util.h"
#include "tunnel-pages-in.h"
#include "tunnel-pages-out.h"

#define PS          4096u
#define SLOTS       128u /* offsets per packet header at 4 KiB pages */
#define CACHE       (64ull << 20)
#define MAX_PAYLOAD (1u << 20)

/* ---- a multifd channel as QEMU writes it ---- */

static void
init_msg(GByteArray *b, guint8 id)
{
    guint8 m[MP_MULTIFD_INIT_SIZE] = {0};
    mp_put_be32(m, MP_MULTIFD_MAGIC);
    mp_put_be32(m + 4, MP_MULTIFD_VERSION);
    for (int i = 0; i < 16; i++)
        m[8 + i] = 0xa0 + i;
    m[24] = id;
    g_byte_array_append(b, m, sizeof(m));
}

typedef struct {
    guint32 flags, pages_alloc, normal, zero, next;
    guint64 num;
    const char *block;
    const guint64 *offs; /* normal + zero */
} Pkt;

/* A RAM packet header (320 bytes + the offset slots); stale slots hold
 * garbage, as QEMU's do. */
static void
packet(GByteArray *b, const Pkt *k)
{
    gsize len = 320 + 8 * SLOTS;
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
    strncpy((char *)h + 64, k->block, 256);
    for (guint32 i = 0; i < SLOTS; i++)
        mp_put_be64(h + 320 + 8 * i,
                    i < used ? k->offs[i] : 0xdead0001 + 0x10000ull * i);
    g_byte_array_append(b, h, len);
    g_free(h);
}

/* Page contents: `kind` 0 compressible text-like bytes of `addr` and
 * `version`, 1 the same bytes for every address (dedup), 2 zero. */
static void
fill(guint8 *d, guint64 addr, guint version, int kind)
{
    if (kind == 2) {
        memset(d, 0, PS);
        return;
    }
    guint64 seed = kind == 1 ? 77 : addr >> 12;
    for (guint32 j = 0; j < PS; j++)
        d[j] = (guint8)("abcdefgh"[(seed + j / 64) % 8] + (j % 64 == 0));
    mp_put_be64(d + 8, seed); /* each address its own bytes */
    /* a version changes a few bytes: a delta against the older one */
    for (guint v = 0; v < version; v++)
        d[(v * 97) % PS] ^= (guint8)(v + 1);
}

/* One packet of `n` normal pages at `addrs` (and `nz` zero ones after
 * them, 10.0), their bytes after the header. */
static void
ram_packet(GByteArray *b, guint64 num, const char *block,
           const guint64 *addrs, guint n, const guint64 *zaddrs, guint nz,
           guint version, const int *kinds)
{
    guint64 offs[SLOTS];
    for (guint i = 0; i < n; i++)
        offs[i] = addrs[i];
    for (guint i = 0; i < nz; i++)
        offs[n + i] = zaddrs[i];
    Pkt k = {.flags = 0, .pages_alloc = SLOTS, .normal = n, .zero = nz,
             .next = n * PS, .num = num, .block = block, .offs = offs};
    packet(b, &k);
    guint8 page[PS];
    for (guint i = 0; i < n; i++) {
        fill(page, addrs[i], version, kinds ? kinds[i] : 0);
        g_byte_array_append(b, page, PS);
    }
}

/* A SYNC packet without pages.  7.2 keeps the last next_packet_size,
 * 10.0 sends pages_alloc 0: no data follows either way. */
static void
sync_packet(GByteArray *b, guint64 num, gboolean v10)
{
    Pkt k = {.flags = MP_MULTIFD_FLAG_SYNC,
             .pages_alloc = v10 ? 0 : SLOTS,
             .next = v10 ? 0 : SLOTS * PS,
             .num = num,
             .block = "pc.ram"};
    packet(b, &k);
}

/* A 10.0 device state packet and its data. */
static void
device_state(GByteArray *b, guint32 size)
{
    guint8 h[MP_MULTIFD_DEVICE_STATE_HDR] = {0};
    mp_put_be32(h, MP_MULTIFD_MAGIC);
    mp_put_be32(h + 4, MP_MULTIFD_VERSION);
    mp_put_be32(h + 8, MP_MULTIFD_FLAG_DEVICE_STATE);
    strncpy((char *)h + 12, "0000:00:02.0/vfio", 256);
    mp_put_be32(h + 268, 0);
    mp_put_be32(h + 272, size);
    g_byte_array_append(b, h, sizeof(h));
    for (guint32 i = 0; i < size; i++) {
        guint8 v = (guint8)(i * 13 + 5);
        g_byte_array_append(b, &v, 1);
    }
}

/* A channel of `rounds` rounds of packets over pages of two blocks:
 * compressible pages, the same bytes at many addresses, a normal page
 * that is zero, each round a newer version of the same pages (delta);
 * with `v10` zero pages listed in the header and device state; without,
 * the last page of each packet again at the head of the next (7.2's
 * race). */
static GByteArray *
channel(gboolean v10, guint rounds)
{
    GByteArray *b = g_byte_array_new();
    guint64 num = 1;

    init_msg(b, 2);
    for (guint r = 0; r < rounds; r++) {
        for (guint p = 0; p < 6; p++) {
            guint64 addrs[SLOTS], zaddrs[8];
            int kinds[SLOTS];
            /* 10.0: normal and zero pages share the packet's slots */
            guint n = p == 5 ? 17 : v10 ? SLOTS - 8 : SLOTS;
            for (guint i = 0; i < n; i++) {
                addrs[i] = ((guint64)p * SLOTS + i) * PS;
                kinds[i] = i % 16 == 3 ? 1 : i == 40 ? 2 : 0;
            }
            if (!v10 && p > 0) {
                addrs[0] = ((guint64)p * SLOTS - 1) * PS;
                kinds[0] = 0;
            }
            for (guint i = 0; i < 8; i++)
                zaddrs[i] = (0x100000ull + i) * PS;
            ram_packet(b, num++, p == 4 ? "vga.vram" : "pc.ram", addrs, n,
                       zaddrs, v10 ? 8 : 0, r, kinds);
        }
        sync_packet(b, num++, v10);
    }
    if (v10)
        device_state(b, 5000);
    return b;
}

/* ---- the pair without sockets ---- */

typedef struct {
    GByteArray *out;   /* what the destination writes to QEMU */
    guint64 link;      /* payload bytes: DATA raw, PAGES encoded */
    guint64 raw;       /* stream bytes the items stand for */
    guint64 pages_frames;
} Run;

static void
wake(gpointer data)
{
    (void)data;
}

static void
drain(MpTunPagesOut *po, MpTunPagesIn *pi, Run *r)
{
    for (;;) {
        MpTunOutItem it;
        while (mp_tun_pages_out_pop(po, &it)) {
            r->raw += it.raw;
            r->link += it.bytes->len;
            if (it.kind == MP_TUN_OUT_DATA) {
                g_byte_array_append(r->out, it.bytes->data, it.bytes->len);
                mp_tun_pages_in_data(pi);
            } else {
                g_autoptr(GError) err = NULL;
                r->pages_frames++;
                cr_assert_leq(it.bytes->len, MAX_PAYLOAD);
                cr_assert(mp_tun_pages_in_apply(pi, it.bytes->data,
                                                it.bytes->len, r->out,
                                                8u << 20, &err),
                          "%s", err ? err->message : "?");
            }
            g_byte_array_unref(it.bytes);
        }
        if (mp_tun_pages_out_queued(po) == 0)
            return;
        g_main_context_iteration(NULL, TRUE);
    }
}

static MpTunPagesOptions
all_on(void)
{
    return (MpTunPagesOptions){.zero_runs = TRUE, .delta = TRUE,
                               .dedup = TRUE, .compress = TRUE, .level = 3,
                               .workers = 2, .urgent = TRUE,
                               .multifd = TRUE};
}

/* `in` through the pair in reads of `chunk` bytes (0: random sizes from
 * `seed`); the destination's bytes must be `in`'s.  @return the source
 * side's report (caller owns). */
static json_object *
through(const GByteArray *in, const MpTunPagesOptions *opt, gsize chunk,
        guint32 seed, Run *r)
{
    g_autoptr(MpTunPagesOut) po = mp_tun_pages_out_new(
        opt, PS, CACHE, MAX_PAYLOAD, "test multifd", wake, NULL);
    g_autoptr(MpTunPagesIn) pi = mp_tun_pages_in_new(PS, CACHE);
    g_autoptr(GRand) rnd = g_rand_new_with_seed(seed);
    memset(r, 0, sizeof(*r));
    r->out = g_byte_array_new();
    guint64 left = 0;

    mp_tun_pages_in_set_bare(pi);
    /* a 128 MiB guest, four channels: a 8 MiB cache each */
    mp_tun_pages_out_set_session(po, 128ull << 20, 4);
    for (gsize at = 0; at < in->len;) {
        gsize n = chunk ? chunk : (gsize)g_rand_int_range(rnd, 1, 300000);
        n = MIN(n, in->len - at);
        left += mp_tun_pages_out_feed(po, in->data + at, n);
        drain(po, pi, r);
        at += n;
    }
    mp_tun_pages_out_finish(po);
    drain(po, pi, r);
    cr_assert_eq(left, 0, "multifd never skips a page");
    cr_assert_eq(r->raw, in->len, "items stand for %" G_GUINT64_FORMAT
                 " bytes, %u fed", r->raw, in->len);
    cr_assert_eq(r->out->len, in->len, "dest wrote %u bytes for %u",
                 r->out->len, in->len);
    cr_assert(memcmp(r->out->data, in->data, in->len) == 0,
              "dest's channel differs from the source's");
    g_byte_array_unref(r->out);
    return mp_tun_pages_out_report(po);
}

static void
check_channel(gboolean v10)
{
    g_autoptr(GByteArray) in = channel(v10, 3);
    /* (reads of 4097 bytes hold no page whole: all of them go as DATA) */
    const gsize chunks[] = {1u << 30, 256u << 10, 10000, 4097, 0};
    for (guint i = 0; i < G_N_ELEMENTS(chunks); i++) {
        MpTunPagesOptions o = all_on();
        Run r;
        json_object *rep = through(in, &o, chunks[i], i, &r);
        if (chunks[i] != 4097)
            cr_assert_gt(r.pages_frames, 0, "chunk %zu: no PAGES",
                         chunks[i]);
        if (chunks[i] >= 256u << 10)
            cr_assert_lt(r.link, in->len / 4,
                         "chunk %zu: %" G_GUINT64_FORMAT " link bytes for %u",
                         chunks[i], r.link, in->len);
        /* 3 rounds of 6 packets and a SYNC (the device state is no RAM
         * packet) */
        cr_assert_eq(tu_json_int(rep, "multifd.packets"), 21);
        cr_assert_not(json_object_get_boolean(
            mp_json_path(rep, "multifd.compressed")));
        cr_assert_not(json_object_get_boolean(mp_json_path(rep,
                                                          "lift.enabled")));
        if (chunks[i] == 1u << 30) {
            /* read whole: every normal page went encoded */
            guint64 pages = 3 * (5 * (v10 ? SLOTS - 8 : SLOTS) + 17);
            cr_assert_eq(tu_json_int(rep, "stream_bytes"), pages * PS, "%s",
                         json_object_to_json_string(rep));
            cr_assert_eq(tu_json_int(rep, "pages_left_raw"), 0);
            cr_assert_gt(tu_json_int(rep, "dedup.hits"), 0);
            cr_assert_gt(tu_json_int(rep, "delta.used"), 0);
            cr_assert_gt(tu_json_int(rep, "zero_runs.zero_pages"), 0);
            cr_assert_eq(tu_json_int(rep, "zero_runs.skipped"), 0);
            cr_assert_eq(tu_json_int(rep, "cache_bytes"), (32ull << 20) / 4);
        }
        json_object_put(rep);
    }
}

Test(tunnel_mfd, v72_same_bytes)
{
    check_channel(FALSE);
}

Test(tunnel_mfd, v10_same_bytes)
{
    check_channel(TRUE);
}

/* Each encoder off, and all of them: still the same bytes. */
Test(tunnel_mfd, encoders_off_same_bytes)
{
    g_autoptr(GByteArray) in = channel(TRUE, 2);
    for (guint i = 0; i < 5; i++) {
        MpTunPagesOptions o = all_on();
        o.zero_runs = i != 0 && i != 4;
        o.delta = i != 1 && i != 4;
        o.dedup = i != 2 && i != 4;
        o.compress = i != 3 && i != 4;
        Run r;
        json_object_put(through(in, &o, 100000, i, &r));
        cr_assert_gt(r.pages_frames, 0);
    }
}

/* Packets QEMU compressed (multifd-compression zstd): the channel goes as
 * DATA, untouched, and the report says so. */
Test(tunnel_mfd, qemu_compressed_stays_data)
{
    g_autoptr(GByteArray) in = g_byte_array_new();
    ZSTD_CStream *cs = ZSTD_createCStream();
    cr_assert(!ZSTD_isError(ZSTD_initCStream(cs, 1)));
    init_msg(in, 0);
    for (guint p = 0; p < 4; p++) {
        guint64 offs[SLOTS];
        static guint8 out[ZSTD_COMPRESSBOUND(SLOTS * PS)];
        ZSTD_outBuffer ob = {out, sizeof(out), 0};
        guint8 page[PS];
        for (guint i = 0; i < SLOTS; i++) {
            offs[i] = ((guint64)p * SLOTS + i) * PS;
            fill(page, offs[i], 0, 0);
            ZSTD_inBuffer ib = {page, PS, 0};
            size_t rc;
            do {
                rc = ZSTD_compressStream2(cs, &ob, &ib,
                                          i == SLOTS - 1 ? ZSTD_e_flush
                                                         : ZSTD_e_continue);
                cr_assert(!ZSTD_isError(rc));
            } while (ib.pos < ib.size || (i == SLOTS - 1 && rc > 0));
        }
        Pkt k = {.flags = MP_MULTIFD_FLAG_ZSTD, .pages_alloc = SLOTS,
                 .normal = SLOTS, .next = (guint32)ob.pos, .num = p + 1,
                 .block = "pc.ram", .offs = offs};
        packet(in, &k);
        g_byte_array_append(in, out, ob.pos);
    }
    ZSTD_freeCStream(cs);
    MpTunPagesOptions o = all_on();
    Run r;
    json_object *rep = through(in, &o, 65536, 0, &r);
    cr_assert_eq(r.pages_frames, 0);
    cr_assert(json_object_get_boolean(mp_json_path(rep, "multifd.compressed")));
    cr_assert_eq(tu_json_int(rep, "batches"), 0);
    json_object_put(rep);
}

/* A channel that stops making sense half-way (a packet with a broken
 * magic): the pages before went encoded, the rest as DATA untouched. */
Test(tunnel_mfd, lost_channel_stays_data)
{
    g_autoptr(GByteArray) in = channel(FALSE, 1);
    gsize good = in->len;
    g_autoptr(GByteArray) more = channel(FALSE, 1);
    /* its packets without the init message, the first magic broken */
    g_byte_array_append(in, more->data + MP_MULTIFD_INIT_SIZE,
                        more->len - MP_MULTIFD_INIT_SIZE);
    in->data[good] ^= 0xff;
    MpTunPagesOptions o = all_on();
    Run r;
    json_object *rep = through(in, &o, 1u << 30, 0, &r);
    cr_assert_gt(r.pages_frames, 0);
    cr_assert_eq(tu_json_int(rep, "stream_bytes"), (5 * SLOTS + 17) * PS);
    json_object_put(rep);
}

/* ---- the destination's bare writer, hostile batches ---- */

/* A batch of one ZERO_RUN of `count` pages (and the cache setup). */
static GByteArray *
zero_batch(guint32 count)
{
    GByteArray *b = g_byte_array_new();
    guint8 h[64];
    gsize n = 0;
    h[n++] = MP_TUN_PAGES_SETUP;
    h[n++] = 0;
    mp_put_be64(h + n, CACHE);
    n += 8;
    mp_put_be16(h + n, 0);
    n += 2;
    h[n++] = 6;
    memcpy(h + n, "pc.ram", 6);
    n += 6;
    mp_put_be32(h + n, 1);
    n += 4;
    mp_put_be32(h + n, 0);
    n += 4;
    h[n++] = MP_BATCH_ZERO_RUN;
    mp_put_be64(h + n, 16);
    n += 8;
    mp_put_be32(h + n, count);
    n += 4;
    g_byte_array_append(b, h, n);
    return b;
}

Test(tunnel_mfd, dest_bare_bounded)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GByteArray) out = g_byte_array_new();

    /* 3 zero pages: 3 pages of zero bytes, nothing else */
    g_autoptr(GByteArray) b3 = zero_batch(3);
    g_autoptr(MpTunPagesIn) pi = mp_tun_pages_in_new(PS, CACHE);
    mp_tun_pages_in_set_bare(pi);
    cr_assert(mp_tun_pages_in_apply(pi, b3->data, b3->len, out, 1u << 20,
                                    &err),
              "%s", err ? err->message : "?");
    cr_assert_eq(out->len, 3 * PS);
    for (guint i = 0; i < out->len; i++)
        cr_assert_eq(out->data[i], 0);

    /* a run of the batch's most pages: refused past the limit, never
     * written beyond it */
    g_autoptr(GByteArray) big = zero_batch(MP_BATCH_MAX_PAGES / 2);
    g_autoptr(MpTunPagesIn) p2 = mp_tun_pages_in_new(PS, CACHE);
    mp_tun_pages_in_set_bare(p2);
    g_byte_array_set_size(out, 0);
    cr_assert_not(mp_tun_pages_in_apply(p2, big->data, big->len, out,
                                        8u << 20, &err));
    cr_assert(strstr(err->message, "more than"), "%s", err->message);
    cr_assert_leq(out->len, 8u << 20);
    g_clear_error(&err);

    /* lifted pages have no place on a multifd stream */
    guint8 u[1 + 6 + 4 + 9] = {6, 'p', 'c', '.', 'r', 'a', 'm', 0, 0, 0, 1};
    u[1 + 6 + 4 + 8] = MP_TUN_LIFT_ZERO;
    g_autoptr(MpTunPagesIn) p3 = mp_tun_pages_in_new(PS, CACHE);
    mp_tun_pages_in_set_bare(p3);
    g_byte_array_set_size(out, 0);
    cr_assert_not(mp_tun_pages_in_urgent(p3, u, sizeof(u), out, &err));
    cr_assert(strstr(err->message, "multifd"), "%s", err->message);
    cr_assert_eq(out->len, 0);
}
