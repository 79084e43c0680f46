/* fuzz-pcap.c: libFuzzer target for packet captures given to `migproxy
 * analyze` (src/io/pcap-flows.c: libpcap's reading, the link, IP and TCP
 * decoding, TCP reassembly; src/io/pcap-read.c: sessions and their
 * pipelines; the parsers' resync after a gap, parsers/stream-resync.c).
 *
 * Input, by its first byte:
 *   'C' + bytes   a capture made here of one connection to port 4444
 *                 whose stream is a valid prefix (a main channel's
 *                 header, configuration, "ram" START with its block list;
 *                 or, when byte 1 is odd, a multifd init and one packet)
 *                 followed by the input's bytes from byte 4 on, cut into
 *                 segments of 64..(64 + byte 2 * 16) bytes, some of them
 *                 left out (bit i of byte 3 drops segment 2 + i; the
 *                 server acknowledges everything at the end), so that the
 *                 parsers look for a record to resume at in fuzzed bytes;
 *   anything else the capture file's bytes (pcap or pcapng).
 * Written to one file made once per process (libFuzzer runs one input at
 * a time), analyzed with a 4 KiB reassembly window so that small inputs
 * reach the window's gaps.  Checked: ASan and UBSan, and that a document
 * comes back.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <glib.h>
#include <glib/gstdio.h>
#include "parse-common.h"
#include "pcap-read.h"

int LLVMFuzzerTestOneInput(const guint8 *data, gsize size);

static char *dir, *file;

static void
remove_dir(void)
{
    g_unlink(file);
    g_rmdir(dir);
}

static void
put(GByteArray *a, const void *p, gsize n)
{
    g_byte_array_append(a, p, n);
}

static void
put32le(GByteArray *a, guint32 v)
{
    guint8 b[4] = {v, v >> 8, v >> 16, v >> 24};
    put(a, b, 4);
}

/* One IPv4/TCP packet on DLT_RAW between 127.0.0.1:40000 and :4444. */
static void
packet(GByteArray *f, guint *t, gboolean from_client, guint32 seq, guint32 ack,
       guint8 flags, const guint8 *payload, gsize len)
{
    guint8 h[40] = {0x45, 0};
    gsize tot = sizeof(h) + len;

    mp_put_be16(h + 2, tot);
    h[8] = 64;
    h[9] = 6;
    h[12] = h[16] = 127;
    h[15] = h[19] = 1;
    mp_put_be16(h + 20, from_client ? 40000 : 4444);
    mp_put_be16(h + 22, from_client ? 4444 : 40000);
    mp_put_be32(h + 24, seq);
    mp_put_be32(h + 28, ack);
    h[32] = 0x50;
    h[33] = flags;
    mp_put_be16(h + 34, 65535);
    (*t)++;
    put32le(f, 1700000000 + *t / 1000);
    put32le(f, (*t % 1000) * 1000);
    put32le(f, tot);
    put32le(f, tot);
    put(f, h, sizeof(h));
    put(f, payload, len);
}

static void
be32(GByteArray *a, guint32 v)
{
    guint8 b[4];
    mp_put_be32(b, v);
    put(a, b, 4);
}

static void
be64(GByteArray *a, guint64 v)
{
    guint8 b[8];
    mp_put_be64(b, v);
    put(a, b, 8);
}

/* What the parsers must have seen before a gap to resume after it. */
static void
prefix(GByteArray *s, gboolean multifd)
{
    if (multifd) {
        guint8 init[MP_MULTIFD_INIT_SIZE] = {0};
        guint8 h[320 + 8 * 128] = {0};
        mp_put_be32(init, MP_MULTIFD_MAGIC);
        mp_put_be32(init + 4, MP_MULTIFD_VERSION);
        put(s, init, sizeof(init));
        mp_put_be32(h, MP_MULTIFD_MAGIC);
        mp_put_be32(h + 4, MP_MULTIFD_VERSION);
        mp_put_be32(h + 12, 128);
        mp_put_be32(h + 32, 1); /* one zero page */
        mp_put_be64(h + 24, 7);
        strcpy((char *)h + 64, "pc.ram");
        put(s, h, sizeof(h));
        return;
    }
    be32(s, MP_QMIG_FILE_MAGIC);
    be32(s, MP_QMIG_FILE_VERSION);
    put(s, "\x07\x00\x00\x00\x0apc-q35-7.2", 15);
    put(s, "\x01\x00\x00\x00\x02\x03ram\x00\x00\x00\x00\x00\x00\x00\x04", 17);
    be64(s, (64u << 12) | MP_RAM_SAVE_FLAG_MEM_SIZE);
    put(s, "\x06pc.ram", 7);
    be64(s, 64u << 12);
    be64(s, MP_RAM_SAVE_FLAG_EOS);
    put(s, "\x7e\x00\x00\x00\x02", 5);
    put(s, "\x02\x00\x00\x00\x02", 5); /* PART, then a named page */
    be64(s, MP_RAM_SAVE_FLAG_ZERO);
    put(s, "\x06pc.ram\x00", 8);
}

/* The 'C' inputs: a capture with holes in a stream with fuzzed bytes. */
static GByteArray *
made_capture(const guint8 *data, gsize size)
{
    GByteArray *f = g_byte_array_new(), *s = g_byte_array_new();
    guint8 hdr[24] = {0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0};
    const guint32 cisn = 1000, sisn = 5000;
    guint t = 0;

    hdr[16] = 0xff;
    hdr[17] = 0xff;
    hdr[20] = 101; /* DLT_RAW, as LINKTYPE_RAW */
    put(f, hdr, sizeof(hdr));
    prefix(s, size > 1 && (data[1] & 1));
    if (size > 4)
        put(s, data + 4, size - 4);
    gsize mss = 64 + (size > 2 ? data[2] * 16u : 0);
    guint8 drop = size > 3 ? data[3] : 0x05;

    packet(f, &t, TRUE, cisn, 0, 0x02, NULL, 0);
    packet(f, &t, FALSE, sisn, cisn + 1, 0x12, NULL, 0);
    guint seg = 0;
    for (gsize off = 0; off < s->len; off += mss, seg++) {
        gsize n = MIN(mss, s->len - off);
        if (seg >= 2 && seg < 10 && (drop >> (seg - 2) & 1))
            continue;
        packet(f, &t, TRUE, cisn + 1 + off, sisn + 1, 0x10, s->data + off, n);
    }
    packet(f, &t, FALSE, sisn + 1, cisn + 1 + s->len, 0x10, NULL, 0);
    packet(f, &t, TRUE, cisn + 1 + s->len, sisn + 1, 0x11, NULL, 0);
    packet(f, &t, FALSE, sisn + 1, cisn + 2 + s->len, 0x11, NULL, 0);
    g_byte_array_unref(s);
    return f;
}

int
LLVMFuzzerTestOneInput(const guint8 *data, gsize size)
{
    if (!dir) {
        dir = g_dir_make_tmp("mp-fuzz-pcap-XXXXXX", NULL);
        if (!dir)
            abort();
        file = g_build_filename(dir, "x.pcap", NULL);
        atexit(remove_dir);
    }
    gboolean ok;
    if (size && data[0] == 'C') {
        GByteArray *f = made_capture(data, size);
        ok = g_file_set_contents(file, (const char *)f->data, f->len, NULL);
        g_byte_array_unref(f);
    } else {
        ok = g_file_set_contents(file, (const char *)data, (gssize)size, NULL);
    }
    if (!ok)
        abort();
    json_object *doc = mp_pcap_analyze(file, FALSE, 4096, &ok);
    if (!doc)
        abort();
    json_object_put(doc);
    return 0;
}
