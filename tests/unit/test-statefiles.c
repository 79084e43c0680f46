/* test-statefiles.c: `analyze` on the state files users hold, without
 * running QEMU: detection by content, the errors for files that hold
 * nothing to analyze, and libvirt save images made here around a sample
 * stream captured from real QEMU (raw and each save_image_format), with
 * broken headers. */
#include "config.h"
#include <stdio.h>
#include <string.h>
#include <bzlib.h>
#include <lzma.h>
#include <lzo/lzo1x.h>
#include <zlib.h>
#include <zstd.h>
#include <criterion/criterion.h>
#include <glib/gstdio.h>
#include "analyze-file.h"
#include "input-format.h"
#include "libvirt-image.h"
#include "test-util.h"

static char *tmpdir;

static void
setup(void)
{
    tmpdir = g_dir_make_tmp("mp-statefiles-XXXXXX", NULL);
    cr_assert_not_null(tmpdir);
}

static void
teardown(void)
{
    g_autoptr(GDir) d = g_dir_open(tmpdir, 0, NULL);
    const char *n;
    while (d && (n = g_dir_read_name(d))) {
        g_autofree char *p = g_build_filename(tmpdir, n, NULL);
        if (g_file_test(p, G_FILE_TEST_IS_DIR)) {
            g_autoptr(GDir) sub = g_dir_open(p, 0, NULL);
            const char *m;
            while (sub && (m = g_dir_read_name(sub))) {
                g_autofree char *q = g_build_filename(p, m, NULL);
                g_unlink(q);
            }
            g_rmdir(p);
        } else {
            g_unlink(p);
        }
    }
    g_rmdir(tmpdir);
    g_clear_pointer(&tmpdir, g_free);
}

TestSuite(statefiles, .init = setup, .fini = teardown);

static gint64
jint(json_object *o, const char *path)
{
    g_auto(GStrv) parts = g_strsplit(path, ".", -1);
    for (guint i = 0; parts[i]; i++)
        cr_assert(json_object_object_get_ex(o, parts[i], &o), "no %s", path);
    return json_object_get_int64(o);
}

static const char *
jstr(json_object *o, const char *path)
{
    g_auto(GStrv) parts = g_strsplit(path, ".", -1);
    for (guint i = 0; parts[i]; i++)
        cr_assert(json_object_object_get_ex(o, parts[i], &o), "no %s", path);
    return json_object_get_string(o);
}

static const char *
first_error(json_object *doc)
{
    json_object *e;
    cr_assert(json_object_object_get_ex(doc, "errors", &e));
    cr_assert_geq(json_object_array_length(e), 1);
    return json_object_get_string(json_object_array_get_idx(e, 0));
}

static char *
write_file(const char *name, const void *data, gsize len)
{
    char *path = g_build_filename(tmpdir, name, NULL);
    cr_assert(g_file_set_contents(path, data, len, NULL));
    return path;
}

static json_object *
analyze(const char *path, const char *dump, gboolean *ok)
{
    MpAnalyzeOptions opt = {.quiet = TRUE, .dump_ram = (char *)dump};
    return mp_analyze_file(path, &opt, ok);
}

/* --- detection and files with nothing to analyze ---------------------- */

Test(statefiles, missing_file_is_an_open_error_without_analysis)
{
    gboolean ok = TRUE;
    json_object *doc = analyze("/nonexistent/x.save", NULL, &ok);
    cr_assert_not(ok);
    cr_assert_str_eq(jstr(doc, "input_error"), "open");
    cr_assert(strstr(first_error(doc), "cannot open"), "%s", first_error(doc));
    /* no summary of an empty stream */
    cr_assert_not(json_object_object_get_ex(doc, "stream", NULL));
    json_object_put(doc);
}

static void
check_format_error(const char *name, const void *data, gsize len,
                   const char *expect)
{
    g_autofree char *path = write_file(name, data, len);
    gboolean ok = TRUE;
    json_object *doc = analyze(path, NULL, &ok);
    cr_assert_not(ok);
    cr_assert_str_eq(jstr(doc, "input_error"), "format");
    cr_assert(strstr(first_error(doc), expect), "%s", first_error(doc));
    cr_assert_not(json_object_object_get_ex(doc, "stream", NULL));
    json_object_put(doc);
}

Test(statefiles, unknown_content_is_a_format_error)
{
    check_format_error("notes.mig", "hello world\n", 12,
                       "not a known format");
    check_format_error("empty.mig", "", 0, "the file is empty");
}

Test(statefiles, pcap_of_an_unknown_link_type_is_a_format_error)
{
    /* named like a stream: the content decides; link type 105 (802.11) */
    const guint8 pcap[24] = {0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0,
                             0,    0,    0,    0,    0, 0, 4, 0, 105};
    check_format_error("capture.mig", pcap, sizeof(pcap),
                       "is not one migproxy decodes");
    /* a pcapng that libpcap cannot read: invalid, one error, no summary */
    const guint8 pcapng[12] = {0x0a, 0x0d, 0x0d, 0x0a};
    g_autofree char *path = write_file("x.pcapng", pcapng, sizeof(pcapng));
    gboolean ok = TRUE;
    json_object *doc = analyze(path, NULL, &ok);
    cr_assert_not(ok);
    cr_assert_str_eq(jstr(doc, "input_error"), "invalid");
    cr_assert(strstr(first_error(doc), "cannot read as a packet capture"),
              "%s", first_error(doc));
    json_object_put(doc);
}

Test(statefiles, detection_by_content)
{
    static const struct {
        const char *bytes;
        gsize len;
        MpInputFormat f;
    } cases[] = {
        {"QEVM\0\0\0\3", 8, MP_FORMAT_STREAM},
        {"\x28\xb5\x2f\xfd", 4, MP_FORMAT_ZSTD},
        {"LibvirtQemudSave", 16, MP_FORMAT_LIBVIRT},
        {"LibvirtQemudPart", 16, MP_FORMAT_LIBVIRT},
        {"QFI\xfb\0\0\0\3", 8, MP_FORMAT_QCOW2},
        {"\xa1\xb2\xc3\xd4", 4, MP_FORMAT_PCAP},
        {"QEV", 3, MP_FORMAT_UNKNOWN},
    };
    for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autofree char *path =
            write_file("probe.bin", cases[i].bytes, cases[i].len);
        MpInputFormat f;
        g_autofree char *why = NULL;
        cr_assert(mp_input_format_detect(path, &f, &why, NULL));
        cr_assert_eq(f, cases[i].f, "case %u: %s", i, mp_input_format_name(f));
    }
}

/* --- libvirt save images ---------------------------------------------- */

static GByteArray *
gzip_bytes(const GByteArray *in)
{
    z_stream z = {0};
    cr_assert_eq(deflateInit2(&z, 6, Z_DEFLATED, 16 + MAX_WBITS, 8,
                              Z_DEFAULT_STRATEGY),
                 Z_OK);
    GByteArray *out = g_byte_array_sized_new(deflateBound(&z, in->len));
    g_byte_array_set_size(out, deflateBound(&z, in->len));
    z.next_in = in->data;
    z.avail_in = in->len;
    z.next_out = out->data;
    z.avail_out = out->len;
    cr_assert_eq(deflate(&z, Z_FINISH), Z_STREAM_END);
    g_byte_array_set_size(out, z.total_out);
    deflateEnd(&z);
    return out;
}

static GByteArray *
bzip2_bytes(const GByteArray *in)
{
    unsigned int len = in->len + in->len / 100 + 600;
    GByteArray *out = g_byte_array_sized_new(len);
    g_byte_array_set_size(out, len);
    cr_assert_eq(BZ2_bzBuffToBuffCompress((char *)out->data, &len,
                                          (char *)in->data, in->len, 9, 0, 0),
                 BZ_OK);
    g_byte_array_set_size(out, len);
    return out;
}

static GByteArray *
xz_bytes(const GByteArray *in)
{
    gsize cap = lzma_stream_buffer_bound(in->len), pos = 0;
    GByteArray *out = g_byte_array_sized_new(cap);
    g_byte_array_set_size(out, cap);
    cr_assert_eq(lzma_easy_buffer_encode(1, LZMA_CHECK_CRC64, NULL, in->data,
                                         in->len, out->data, &pos, cap),
                 LZMA_OK);
    g_byte_array_set_size(out, pos);
    return out;
}

static GByteArray *
zstd_bytes(const GByteArray *in)
{
    gsize cap = ZSTD_compressBound(in->len);
    GByteArray *out = g_byte_array_sized_new(cap);
    g_byte_array_set_size(out, cap);
    size_t n = ZSTD_compress(out->data, cap, in->data, in->len, 3);
    cr_assert(!ZSTD_isError(n));
    g_byte_array_set_size(out, n);
    return out;
}

static void
append_be32(GByteArray *b, guint32 v)
{
    guint8 p[4] = {v >> 24, v >> 16, v >> 8, v};
    g_byte_array_append(b, p, 4);
}

/* lzop's container as lzop 1.04 writes it (version 0x1040, method
 * LZO1X-1, adler32 of the decompressed and compressed data), 256 KiB
 * blocks. */
static GByteArray *
lzop_bytes(const GByteArray *in)
{
    static const guint8 magic[9] = {0x89, 'L', 'Z', 'O', 0,
                                    '\r', '\n', 0x1a, '\n'};
    GByteArray *out = g_byte_array_new();
    g_byte_array_append(out, magic, 9);
    guint8 hdr[] = {0x10, 0x40, 0x20, 0xa0, 0x09, 0x40, 1, 5};
    g_byte_array_append(out, hdr, sizeof(hdr));
    append_be32(out, 0x3000003 /* adler32 D and C, unix */);
    append_be32(out, 0100644); /* mode */
    append_be32(out, 0);       /* mtime low, high */
    append_be32(out, 0);
    guint8 namelen = 0;
    g_byte_array_append(out, &namelen, 1);
    append_be32(out, 0); /* header checksum (not checked) */
    cr_assert_eq(lzo_init(), LZO_E_OK);
    g_autofree guint8 *wrk = g_malloc(LZO1X_1_MEM_COMPRESS);
    gsize block = 256 << 10;
    g_autofree guint8 *cbuf = g_malloc(block + block / 16 + 64 + 3);
    for (gsize off = 0; off < in->len; off += block) {
        gsize n = MIN(block, in->len - off);
        lzo_uint clen;
        cr_assert_eq(lzo1x_1_compress(in->data + off, n, cbuf, &clen, wrk),
                     LZO_E_OK);
        append_be32(out, n);
        gboolean stored = clen >= n;
        append_be32(out, stored ? n : clen);
        append_be32(out, adler32(1, in->data + off, n));
        if (!stored)
            append_be32(out, adler32(1, cbuf, clen));
        g_byte_array_append(out, stored ? in->data + off : cbuf,
                            stored ? n : clen);
    }
    append_be32(out, 0);
    return out;
}

static const char domain_xml[] =
    "<domain type='qemu'>\n  <name>guest-one</name>\n"
    "  <uuid>6f6a3a0e-4a1e-4a43-9d1e-0d4f4b7f7d11</uuid>\n"
    "  <memory unit='KiB'>131072</memory>\n"
    "  <os>\n    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>\n"
    "  </os>\n</domain>\n";

/* A libvirt save image: header, XML padded as libvirt pads it (its length
 * plus 64 KiB of zeros), then `payload`. */
static GByteArray *
libvirt_image(const char *magic, guint32 version, guint32 format,
              const GByteArray *payload)
{
    GByteArray *b = g_byte_array_new();
    guint32 data_len = sizeof(domain_xml) + (64 << 10);
    guint32 words[5 + 14] = {version, data_len, 1, format, 0};
    g_byte_array_append(b, (const guint8 *)magic, 16);
    g_byte_array_append(b, (const guint8 *)words, sizeof(words));
    cr_assert_eq(b->len, MP_LIBVIRT_HEADER_SIZE);
    g_byte_array_append(b, (const guint8 *)domain_xml, sizeof(domain_xml));
    g_byte_array_set_size(b, MP_LIBVIRT_HEADER_SIZE + data_len);
    memset(b->data + MP_LIBVIRT_HEADER_SIZE + sizeof(domain_xml), 0,
           data_len - sizeof(domain_xml));
    g_byte_array_append(b, payload->data, payload->len);
    return b;
}

static json_object *
query_migrate(const char *name)
{
    g_autofree char *path = g_strdup_printf(
        "%s/samples/streams/%s.query-migrate.json", MP_SOURCE_ROOT, name);
    json_object *q = json_object_from_file(path), *ret;
    cr_assert_not_null(q, "%s", path);
    cr_assert(json_object_object_get_ex(q, "return", &ret));
    json_object_get(ret);
    json_object_put(q);
    return ret;
}

/* The image is analyzed as the stream it holds: the counts of
 * query-migrate, the domain's facts, and --dump-ram equal to the stream's
 * own. */
static void
check_libvirt(guint32 format, GByteArray *(*compress)(const GByteArray *),
              const char *compression)
{
    g_autoptr(GByteArray) stream = tu_read_sample("idle-7.2.mig.zst");
    g_autoptr(GByteArray) payload = compress ? compress(stream)
                                             : g_byte_array_ref(stream);
    g_autoptr(GByteArray) img =
        libvirt_image(MP_LIBVIRT_MAGIC, 2, format, payload);
    /* no name that says what it is */
    g_autofree char *path = write_file("guest", img->data, img->len);
    g_autofree char *dump = g_build_filename(tmpdir, "ram", NULL);
    gboolean ok = FALSE;
    json_object *doc = analyze(path, dump, &ok);
    json_object *q = query_migrate("idle-7.2");

    cr_assert(ok, "%s", json_object_to_json_string(doc));
    cr_assert_str_eq(jstr(doc, "format"), "libvirt");
    if (compression)
        cr_assert_str_eq(jstr(doc, "compression"), compression);
    cr_assert_eq(jint(doc, "ram.pages.normal"), jint(q, "ram.normal"));
    cr_assert_eq(jint(doc, "ram.pages.zero"), jint(q, "ram.duplicate"));
    cr_assert_eq(jint(doc, "ram.total"), jint(q, "ram.total"));
    cr_assert_eq(jint(doc, "stream.bytes"), stream->len);
    cr_assert_str_eq(jstr(doc, "libvirt.domain.name"), "guest-one");
    cr_assert_eq(jint(doc, "libvirt.domain.memory"), 128 << 20);
    cr_assert_str_eq(jstr(doc, "libvirt.domain.machine"), "pc-q35-7.2");
    cr_assert_str_eq(jstr(doc, "libvirt.format"),
                     mp_libvirt_format_name(format));
    cr_assert(json_object_get_boolean(
        json_object_object_get(json_object_object_get(doc, "libvirt"),
                               "complete")));
    cr_assert_eq(jint(doc, "libvirt.data_offset"),
                 MP_LIBVIRT_HEADER_SIZE + sizeof(domain_xml) + (64 << 10));
    json_object_put(doc);
    json_object_put(q);

    /* --dump-ram: the same image as from the bare stream */
    g_autofree char *bare = write_file("bare.mig", stream->data, stream->len);
    g_autofree char *dump2 = g_build_filename(tmpdir, "ram2", NULL);
    doc = analyze(bare, dump2, &ok);
    cr_assert(ok);
    json_object_put(doc);
    g_autofree char *a = g_build_filename(dump, "pc.ram", NULL);
    g_autofree char *b = g_build_filename(dump2, "pc.ram", NULL);
    g_autofree char *ca = NULL, *cb = NULL;
    gsize la, lb;
    cr_assert(g_file_get_contents(a, &ca, &la, NULL));
    cr_assert(g_file_get_contents(b, &cb, &lb, NULL));
    cr_assert_eq(la, lb);
    cr_assert_geq(la, 64u << 20);
    cr_assert(memcmp(ca, cb, la) == 0, "pc.ram differs");
}

Test(statefiles, libvirt_raw, .timeout = 60)
{
    check_libvirt(MP_LIBVIRT_RAW, NULL, NULL);
}

Test(statefiles, libvirt_gzip, .timeout = 60)
{
    check_libvirt(MP_LIBVIRT_GZIP, gzip_bytes, "gzip");
}

Test(statefiles, libvirt_bzip2, .timeout = 60)
{
    check_libvirt(MP_LIBVIRT_BZIP2, bzip2_bytes, "bzip2");
}

Test(statefiles, libvirt_xz, .timeout = 60)
{
    check_libvirt(MP_LIBVIRT_XZ, xz_bytes, "xz");
}

Test(statefiles, libvirt_lzop, .timeout = 60)
{
    check_libvirt(MP_LIBVIRT_LZOP, lzop_bytes, "lzop");
}

Test(statefiles, libvirt_zstd, .timeout = 60)
{
    check_libvirt(MP_LIBVIRT_ZSTD, zstd_bytes, "zstd");
}

/* A header libvirt would refuse: one line naming field and offset, no
 * analysis. */
static void
check_bad_image(const GByteArray *img, const char *kind, const char *expect)
{
    g_autofree char *path = write_file("bad.save", img->data, img->len);
    gboolean ok = TRUE;
    json_object *doc = analyze(path, NULL, &ok);
    cr_assert_not(ok);
    cr_assert_str_eq(jstr(doc, "input_error"), kind);
    cr_assert(strstr(first_error(doc), expect), "%s", first_error(doc));
    cr_assert_not(json_object_object_get_ex(doc, "stream", NULL));
    json_object_put(doc);
}

Test(statefiles, libvirt_bad_headers)
{
    g_autoptr(GByteArray) stream = tu_read_sample("idle-7.2.mig.zst");
    g_autoptr(GByteArray) img =
        libvirt_image(MP_LIBVIRT_MAGIC, 2, MP_LIBVIRT_RAW, stream);
    guint32 w;

    /* truncated in the header */
    g_autoptr(GByteArray) shorter = g_byte_array_new();
    g_byte_array_append(shorter, img->data, 40);
    check_bad_image(shorter, "invalid", "truncated in its header");

    /* a version no libvirt wrote */
    w = 7;
    memcpy(img->data + 16, &w, 4);
    check_bad_image(img, "format", "version 7 at offset 16");
    w = 2;
    memcpy(img->data + 16, &w, 4);

    /* a format number beyond sparse */
    w = 9;
    memcpy(img->data + 28, &w, 4);
    check_bad_image(img, "format", "format 9 at offset 28");
    w = 0;
    memcpy(img->data + 28, &w, 4);

    /* an XML length that runs past the end of the file */
    w = img->len;
    memcpy(img->data + 20, &w, 4);
    check_bad_image(img, "invalid", "past the file's end");
    /* one beyond the memory bound */
    w = MP_LIBVIRT_DATA_MAX + 1;
    memcpy(img->data + 20, &w, 4);
    check_bad_image(img, "invalid", "XML length");
    /* zero */
    w = 0;
    memcpy(img->data + 20, &w, 4);
    check_bad_image(img, "invalid", "XML length 0 at offset 20");
}

/* A length that lies short: the stream then starts inside the XML's
 * padding, and the stream parser says where. */
Test(statefiles, libvirt_short_length_is_a_stream_error)
{
    g_autoptr(GByteArray) stream = tu_read_sample("idle-7.2.mig.zst");
    g_autoptr(GByteArray) img =
        libvirt_image(MP_LIBVIRT_MAGIC, 2, MP_LIBVIRT_RAW, stream);
    guint32 w = sizeof(domain_xml) + 100;
    memcpy(img->data + 20, &w, 4);
    g_autofree char *path = write_file("short.save", img->data, img->len);
    gboolean ok = TRUE;
    json_object *doc = analyze(path, NULL, &ok);
    cr_assert_not(ok);
    cr_assert(strstr(first_error(doc), "bad magic"), "%s", first_error(doc));
    json_object_put(doc);
}

/* libvirt writes "LibvirtQemudPart" first and the final magic once QEMU
 * is done: a partial image is analyzed, with an anomaly that says so. */
Test(statefiles, libvirt_partial_image)
{
    g_autoptr(GByteArray) stream = tu_read_sample("idle-7.2.mig.zst");
    g_byte_array_set_size(stream, stream->len / 2);
    g_autoptr(GByteArray) img =
        libvirt_image(MP_LIBVIRT_MAGIC_PART, 2, MP_LIBVIRT_RAW, stream);
    g_autofree char *path = write_file("part.save", img->data, img->len);
    gboolean ok = TRUE;
    json_object *doc = analyze(path, NULL, &ok);
    cr_assert_not(ok); /* the stream is truncated */
    cr_assert_not(json_object_get_boolean(json_object_object_get(
        json_object_object_get(doc, "libvirt"), "complete")));
    json_object *an = json_object_object_get(doc, "anomalies");
    cr_assert(strstr(json_object_to_json_string(an), "marked incomplete"),
              "%s", json_object_to_json_string(an));
    json_object_put(doc);
}

/* A corrupt and a truncated gzip payload: errors naming the compression
 * and where, not a crash. */
Test(statefiles, libvirt_gzip_corrupt_and_truncated)
{
    g_autoptr(GByteArray) stream = tu_read_sample("idle-7.2.mig.zst");
    g_autoptr(GByteArray) gz = gzip_bytes(stream);
    g_byte_array_set_size(gz, gz->len / 2);
    g_autoptr(GByteArray) img =
        libvirt_image(MP_LIBVIRT_MAGIC, 2, MP_LIBVIRT_GZIP, gz);
    g_autofree char *path = write_file("trunc.save", img->data, img->len);
    gboolean ok = TRUE;
    json_object *doc = analyze(path, NULL, &ok);
    cr_assert_not(ok);
    cr_assert(strstr(first_error(doc), "gzip data is truncated"), "%s",
              first_error(doc));
    json_object_put(doc);

    /* no gzip header where the payload starts */
    memset(img->data + MP_LIBVIRT_HEADER_SIZE + sizeof(domain_xml) + (64 << 10),
           0x55, 4);
    g_autofree char *path2 = write_file("bad.save", img->data, img->len);
    doc = analyze(path2, NULL, &ok);
    cr_assert_not(ok);
    cr_assert(strstr(first_error(doc), "gzip data near offset"), "%s",
              first_error(doc));
    json_object_put(doc);
}

/* --- qcow2 images made here ------------------------------------------- */

#define QC_BITS 12u /* 4 KiB clusters: 512 L2 entries, 2 MiB per L1 entry */
#define QC_SIZE (1u << QC_BITS)

static void
put_be(guint8 *p, guint64 v, guint n)
{
    for (guint i = 0; i < n; i++)
        p[i] = v >> (8 * (n - 1 - i));
}

/* A qcow2 v3 image of a 1 MiB disk with one snapshot "snap" (id 1) whose
 * VM state is `state`, every `compress_every`-th cluster compressed with
 * raw deflate (0: none), the rest plain; all-zero clusters left
 * unallocated.  Layout: header, snapshot table, L1, L2 tables, data. */
static GByteArray *
qcow2_image(const GByteArray *state, guint compress_every, guint32 crypt)
{
    guint64 nclusters = (state->len + QC_SIZE - 1) / QC_SIZE;
    guint64 nl2 = (nclusters + 511) / 512;
    guint64 l1_size = 1 + nl2; /* entry 0 is the disk's: empty */
    guint64 l1_off = 2 * QC_SIZE, l2_off = 3 * QC_SIZE;
    guint64 data_off = l2_off + nl2 * QC_SIZE;
    GByteArray *img = g_byte_array_new();
    g_byte_array_set_size(img, data_off);
    memset(img->data, 0, data_off);

    guint8 *h = img->data;
    put_be(h, 0x514649fb, 4);
    put_be(h + 4, 3, 4);
    put_be(h + 20, QC_BITS, 4);
    put_be(h + 24, 1 << 20, 8);
    put_be(h + 32, crypt, 4);
    put_be(h + 60, 1, 4);          /* snapshots */
    put_be(h + 64, QC_SIZE, 8);    /* their table */
    put_be(h + 96, 4, 4);          /* refcount order */
    put_be(h + 100, 104, 4);       /* header length */
    guint8 *s = img->data + QC_SIZE;
    put_be(s, l1_off, 8);
    put_be(s + 8, l1_size, 4);
    put_be(s + 12, 1, 2);
    put_be(s + 14, 4, 2);
    put_be(s + 16, 1764892800, 4);
    put_be(s + 32, state->len, 4);
    put_be(s + 36, 16, 4);
    put_be(s + 40, state->len, 8);
    put_be(s + 48, 1 << 20, 8);
    memcpy(s + 56, "1snap", 5);

    g_autofree guint8 *zero = g_malloc0(QC_SIZE);
    g_autofree guint8 *cl = g_malloc0(QC_SIZE);
    g_autofree guint8 *cz = g_malloc(2 * QC_SIZE);
    for (guint64 i = 0; i < nclusters; i++) {
        gsize n = MIN(QC_SIZE, state->len - i * QC_SIZE);
        memset(cl, 0, QC_SIZE);
        memcpy(cl, state->data + i * QC_SIZE, n);
        guint64 l2 = i / 512, entry;
        if (l2 == 0 || i % 512 == 0)
            put_be(img->data + l1_off + (1 + l2) * 8,
                   (l2_off + l2 * QC_SIZE) | (1ull << 63), 8);
        if (memcmp(cl, zero, QC_SIZE) == 0)
            continue; /* unallocated: reads as zeros */
        guint64 at = img->len;
        if (compress_every && i % compress_every == 0) {
            z_stream z = {0};
            cr_assert_eq(deflateInit2(&z, 6, Z_DEFLATED, -12, 8,
                                      Z_DEFAULT_STRATEGY),
                         Z_OK);
            z.next_in = cl;
            z.avail_in = QC_SIZE;
            z.next_out = cz;
            z.avail_out = 2 * QC_SIZE;
            cr_assert_eq(deflate(&z, Z_FINISH), Z_STREAM_END);
            gsize clen = z.total_out;
            deflateEnd(&z);
            /* unaligned on purpose: the sector count covers the offset */
            at += 100;
            g_byte_array_set_size(img, at);
            g_byte_array_append(img, cz, clen);
            guint64 sectors = ((at & 511) + clen + 511) / 512;
            guint shift = 62 - (QC_BITS - 8);
            entry = (1ull << 62) | ((sectors - 1) << shift) | at;
        } else {
            /* plain clusters are cluster-aligned */
            at = (at + QC_SIZE - 1) / QC_SIZE * QC_SIZE;
            g_byte_array_set_size(img, at);
            g_byte_array_append(img, cl, QC_SIZE);
            entry = at | (1ull << 63);
        }
        put_be(img->data + l2_off + i * 8, entry, 8);
    }
    return img;
}

static json_object *
analyze_snapshot(const char *path, const char *snap, const char *dump,
                 gboolean *ok)
{
    MpAnalyzeOptions opt = {.quiet = TRUE, .dump_ram = (char *)dump,
                            .snapshot = (char *)snap};
    return mp_analyze_file(path, &opt, ok);
}

static void
check_qcow2(guint compress_every)
{
    g_autoptr(GByteArray) stream = tu_read_sample("idle-7.2.mig.zst");
    g_autoptr(GByteArray) img = qcow2_image(stream, compress_every, 0);
    g_autofree char *path = write_file("disk.img", img->data, img->len);
    gboolean ok = FALSE;

    /* without --snapshot: the list */
    json_object *doc = analyze(path, NULL, &ok);
    cr_assert(ok, "%s", json_object_to_json_string(doc));
    cr_assert_str_eq(jstr(doc, "format"), "qcow2");
    json_object *snaps = json_object_object_get(
        json_object_object_get(doc, "qcow2"), "snapshots");
    cr_assert_eq(json_object_array_length(snaps), 1);
    json_object *s = json_object_array_get_idx(snaps, 0);
    cr_assert_str_eq(jstr(s, "name"), "snap");
    cr_assert_eq(jint(s, "vm_state_size"), stream->len);
    json_object_put(doc);

    /* its VM state: the stream it holds, counts and RAM as the stream's */
    g_autofree char *dump = g_build_filename(tmpdir, "ram", NULL);
    doc = analyze_snapshot(path, "snap", dump, &ok);
    json_object *q = query_migrate("idle-7.2");
    cr_assert(ok, "%s", first_error(doc));
    cr_assert_eq(jint(doc, "stream.bytes"), stream->len);
    cr_assert_eq(jint(doc, "ram.pages.normal"), jint(q, "ram.normal"));
    cr_assert_eq(jint(doc, "ram.pages.zero"), jint(q, "ram.duplicate"));
    json_object_put(doc);
    json_object_put(q);
    g_autofree char *bare = write_file("bare.mig", stream->data, stream->len);
    g_autofree char *dump2 = g_build_filename(tmpdir, "ram2", NULL);
    json_object_put(analyze(bare, dump2, &ok));
    g_autofree char *a = g_build_filename(dump, "pc.ram", NULL);
    g_autofree char *b = g_build_filename(dump2, "pc.ram", NULL);
    g_autofree char *ca = NULL, *cb = NULL;
    gsize la, lb;
    cr_assert(g_file_get_contents(a, &ca, &la, NULL));
    cr_assert(g_file_get_contents(b, &cb, &lb, NULL));
    cr_assert(la == lb && memcmp(ca, cb, la) == 0, "pc.ram differs");
}

Test(statefiles, qcow2_plain_clusters, .timeout = 60)
{
    check_qcow2(0);
}

Test(statefiles, qcow2_compressed_clusters, .timeout = 60)
{
    check_qcow2(3);
}

Test(statefiles, qcow2_refused_and_broken)
{
    g_autoptr(GByteArray) stream = tu_read_sample("idle-7.2.mig.zst");
    g_byte_array_set_size(stream, 64 << 10);
    gboolean ok = TRUE;

    /* encrypted: refused, no state read */
    g_autoptr(GByteArray) enc = qcow2_image(stream, 0, 2);
    g_autofree char *p1 = write_file("enc.qcow2", enc->data, enc->len);
    json_object *doc = analyze(p1, NULL, &ok);
    cr_assert_not(ok);
    cr_assert_str_eq(jstr(doc, "input_error"), "format");
    cr_assert(strstr(first_error(doc), "encrypted"), "%s", first_error(doc));
    json_object_put(doc);

    /* no such snapshot */
    g_autoptr(GByteArray) img = qcow2_image(stream, 2, 0);
    g_autofree char *p2 = write_file("x.qcow2", img->data, img->len);
    doc = analyze_snapshot(p2, "other", NULL, &ok);
    cr_assert_not(ok);
    cr_assert(strstr(first_error(doc), "no snapshot named \"other\""), "%s",
              first_error(doc));
    json_object_put(doc);

    /* a compressed cluster whose bytes are garbage */
    g_autoptr(GByteArray) bad = g_byte_array_new();
    g_byte_array_append(bad, img->data, img->len);
    memset(bad->data + 6 * QC_SIZE + 100, 0xff, 64);
    g_autofree char *p3 = write_file("bad.qcow2", bad->data, bad->len);
    doc = analyze_snapshot(p3, "snap", NULL, &ok);
    cr_assert_not(ok);
    cr_assert(strstr(json_object_to_json_string(doc),
                     "does not decompress to one cluster"),
              "%s", json_object_to_json_string(doc));
    json_object_put(doc);

    /* an L1 table that claims 2^32 - 1 entries */
    memcpy(bad->data, img->data, img->len);
    put_be(bad->data + QC_SIZE + 8, 0xffffffffu, 4);
    g_autofree char *p4 = write_file("l1.qcow2", bad->data, bad->len);
    doc = analyze_snapshot(p4, "snap", NULL, &ok);
    cr_assert_not(ok);
    cr_assert(strstr(first_error(doc), "L1 table of 4294967295 entries"),
              "%s", first_error(doc));
    json_object_put(doc);

    /* a VM state of 1 TiB in a small image (read again and again from
     * the same clusters, it would take hours) */
    memcpy(bad->data, img->data, img->len);
    put_be(bad->data + QC_SIZE + 40, (guint64)1 << 40, 8);
    g_autofree char *p6 = write_file("big.qcow2", bad->data, bad->len);
    doc = analyze_snapshot(p6, "snap", NULL, &ok);
    cr_assert_not(ok);
    cr_assert(strstr(first_error(doc), "at most twice the image"), "%s",
              first_error(doc));
    json_object_put(doc);

    /* a snapshot table past the file's end */
    memcpy(bad->data, img->data, img->len);
    put_be(bad->data + 64, (guint64)1 << 40, 8);
    g_autofree char *p5 = write_file("t.qcow2", bad->data, bad->len);
    doc = analyze(p5, NULL, &ok);
    cr_assert_not(ok);
    cr_assert(strstr(first_error(doc), "snapshot table offset"), "%s",
              first_error(doc));
    json_object_put(doc);
}

/* --- mapped-ram: a file from QEMU 10.0 (migrate file: with mapped-ram,
 * 32 MiB guest, stopped) with each block cut to 4 pages, pages 0 and 2
 * written ('A' + block index), its bitmap and pages right after its
 * header; the rest of the stream as QEMU wrote it (the fuzz seed) ----- */

static GByteArray *
mapped_ram_seed(void)
{
    g_autofree char *path = g_strdup_printf(
        "%s/tests/fuzz/corpus/statefile/mapped-ram", MP_SOURCE_ROOT);
    g_autofree char *d = NULL;
    gsize len;
    cr_assert(g_file_get_contents(path, &d, &len, NULL), "%s", path);
    GByteArray *b = g_byte_array_new();
    g_byte_array_append(b, (const guint8 *)d, len);
    return b;
}

/* Offset of the MappedRamHeader of block `name`. */
static gsize
mr_header_of(const GByteArray *b, const char *name)
{
    gsize n = strlen(name);
    for (gsize i = 0; i + n + 9 < b->len; i++)
        if (b->data[i] == n && memcmp(b->data + i + 1, name, n) == 0)
            return i + 1 + n + 8;
    cr_assert_fail("no block %s", name);
    return 0;
}

Test(statefiles, mapped_ram_follows_the_bitmaps)
{
    g_autoptr(GByteArray) b = mapped_ram_seed();
    g_autofree char *path = write_file("vm.mig", b->data, b->len);
    g_autofree char *dump = g_build_filename(tmpdir, "ram", NULL);
    gboolean ok = FALSE;
    json_object *doc = analyze(path, dump, &ok);
    cr_assert(ok, "%s", first_error(doc));
    cr_assert_str_eq(jstr(doc, "format"), "mapped-ram");
    cr_assert_eq(jint(doc, "ram.pages.normal"), 12);
    cr_assert_eq(jint(doc, "ram.pages.zero"), 12);
    cr_assert_eq(jint(doc, "mapped_ram.blocks"), 6);
    cr_assert(json_object_get_boolean(json_object_object_get(
        json_object_object_get(doc, "stream"), "complete")));
    json_object_put(doc);
    g_autofree char *img = g_build_filename(dump, "pc.ram", NULL);
    g_autofree char *ram = NULL;
    gsize len;
    cr_assert(g_file_get_contents(img, &ram, &len, NULL));
    cr_assert_eq(len, 4 * 4096);
    for (gsize i = 0; i < len; i++)
        cr_assert_eq(ram[i], (i / 4096) % 2 ? 0 : 'A', "byte %zu", i);
}

Test(statefiles, mapped_ram_bad_headers)
{
    g_autoptr(GByteArray) b = mapped_ram_seed();
    gsize h = mr_header_of(b, "pc.bios");
    gboolean ok = TRUE;

    /* a bitmap before its own header */
    g_autoptr(GByteArray) m = g_byte_array_new();
    g_byte_array_append(m, b->data, b->len);
    put_be(m->data + h + 12, 10, 8);
    g_autofree char *p1 = write_file("a.mig", m->data, m->len);
    json_object *doc = analyze(p1, NULL, &ok);
    cr_assert_not(ok);
    cr_assert(strstr(first_error(doc), "\"pc.bios\"")
                  && strstr(first_error(doc), "bad bitmap offset"),
              "%s", first_error(doc));
    json_object_put(doc);

    /* pages far past the file's end (a truncated file) */
    memcpy(m->data, b->data, b->len);
    put_be(m->data + h + 20, (guint64)1 << 40, 8);
    g_autofree char *p2 = write_file("b.mig", m->data, m->len);
    doc = analyze(p2, NULL, &ok);
    cr_assert_not(ok);
    cr_assert(strstr(first_error(doc), "past the file's end"), "%s",
              first_error(doc));
    json_object_put(doc);

    /* a header version QEMU never wrote */
    memcpy(m->data, b->data, b->len);
    put_be(m->data + h, 2, 4);
    g_autofree char *p3 = write_file("c.mig", m->data, m->len);
    doc = analyze(p3, NULL, &ok);
    cr_assert_not(ok);
    cr_assert(strstr(first_error(doc), "mapped-ram header version 2"), "%s",
              first_error(doc));
    json_object_put(doc);

    /* the file cut in the middle of the device state */
    g_autofree char *p4 = write_file("d.mig", b->data, b->len - 80000);
    doc = analyze(p4, NULL, &ok);
    cr_assert_not(ok);
    json_object_put(doc);
}

/* libvirt 11's "sparse" format: QEMU's mapped-ram stream after the
 * header, its offsets offsets in the file: the same analysis as the bare
 * file. */
Test(statefiles, libvirt_sparse_mapped_ram)
{
    g_autoptr(GByteArray) mr = mapped_ram_seed();
    g_autoptr(GByteArray) img =
        libvirt_image(MP_LIBVIRT_MAGIC, 2, MP_LIBVIRT_SPARSE, mr);
    guint64 shift = img->len - mr->len;
    static const char *const blocks[] = {
        "pc.ram", "/rom@etc/acpi/tables", "pc.bios", "pc.rom",
        "/rom@etc/table-loader", "/rom@etc/acpi/rsdp"};
    for (guint i = 0; i < G_N_ELEMENTS(blocks); i++) {
        gsize h = shift + mr_header_of(mr, blocks[i]);
        for (guint k = 12; k <= 20; k += 8) {
            guint64 v = 0;
            for (guint j = 0; j < 8; j++)
                v = v << 8 | img->data[h + k + j];
            put_be(img->data + h + k, v + shift, 8);
        }
    }
    g_autofree char *path = write_file("sparse.save", img->data, img->len);
    g_autofree char *dump = g_build_filename(tmpdir, "ram", NULL);
    gboolean ok = FALSE;
    json_object *doc = analyze(path, dump, &ok);
    cr_assert(ok, "%s", first_error(doc));
    cr_assert_str_eq(jstr(doc, "format"), "libvirt");
    cr_assert_str_eq(jstr(doc, "libvirt.format"), "sparse");
    cr_assert_str_eq(jstr(doc, "libvirt.domain.name"), "guest-one");
    cr_assert_eq(jint(doc, "ram.pages.normal"), 12);
    cr_assert_eq(jint(doc, "ram.pages.zero"), 12);
    json_object_put(doc);
    g_autofree char *pc = g_build_filename(dump, "pc.ram", NULL);
    g_autofree char *ram = NULL;
    gsize len;
    cr_assert(g_file_get_contents(pc, &ram, &len, NULL));
    cr_assert_eq(len, 4 * 4096);
    cr_assert_eq(ram[0], 'A');
    cr_assert_eq(ram[4096], 0);
}

/* --snapshot on anything but a qcow2 image: one line, no analysis (a
 * libvirt image went on to the capture reader on the previous commit) */
Test(statefiles, snapshot_of_a_non_qcow2_file)
{
    g_autoptr(GByteArray) stream = tu_read_sample("idle-7.2.mig.zst");
    g_autoptr(GByteArray) img =
        libvirt_image(MP_LIBVIRT_MAGIC, 2, MP_LIBVIRT_RAW, stream);
    g_autofree char *p1 = write_file("a.save", img->data, img->len);
    g_autofree char *p2 = write_file("a.mig", stream->data, stream->len);
    const char *paths[] = {p1, p2};
    for (guint i = 0; i < 2; i++) {
        gboolean ok = TRUE;
        json_object *doc = analyze_snapshot(paths[i], "s1", NULL, &ok);
        cr_assert_not(ok);
        cr_assert_str_eq(jstr(doc, "input_error"), "format");
        cr_assert(strstr(first_error(doc), "--snapshot reads qcow2 images"),
                  "%s", first_error(doc));
        json_object_put(doc);
    }
}
