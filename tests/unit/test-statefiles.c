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

Test(statefiles, pcap_is_recognised_not_supported)
{
    /* named like a stream: the content decides */
    const guint8 pcap[24] = {0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0};
    check_format_error("capture.mig", pcap, sizeof(pcap),
                       "packet capture (pcap): recognised, not supported");
    const guint8 pcapng[12] = {0x0a, 0x0d, 0x0d, 0x0a};
    check_format_error("x.pcapng", pcapng, sizeof(pcapng), "pcap");
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
sample_bytes(const char *name)
{
    g_autofree char *path = g_strdup_printf(
        "%s/samples/streams/%s.mig.zst", MP_SOURCE_ROOT, name);
    g_autofree char *z = NULL;
    gsize zlen;
    cr_assert(g_file_get_contents(path, &z, &zlen, NULL), "%s", path);
    GByteArray *out = g_byte_array_new();
    ZSTD_DStream *ds = ZSTD_createDStream();
    ZSTD_inBuffer in = {z, zlen, 0};
    guint8 buf[1 << 16];
    while (in.pos < in.size) {
        ZSTD_outBuffer o = {buf, sizeof buf, 0};
        size_t r = ZSTD_decompressStream(ds, &o, &in);
        cr_assert(!ZSTD_isError(r), "%s: %s", path, ZSTD_getErrorName(r));
        g_byte_array_append(out, buf, o.pos);
    }
    ZSTD_freeDStream(ds);
    return out;
}

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
    g_autoptr(GByteArray) stream = sample_bytes("idle-7.2");
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
    g_autoptr(GByteArray) stream = sample_bytes("idle-7.2");
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
    g_autoptr(GByteArray) stream = sample_bytes("idle-7.2");
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
    g_autoptr(GByteArray) stream = sample_bytes("idle-7.2");
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
    g_autoptr(GByteArray) stream = sample_bytes("idle-7.2");
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
