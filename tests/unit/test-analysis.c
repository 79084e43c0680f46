/* test-analysis.c: analysis of the captured sample streams (QEMU 7.2 and
 * 10.0, zstd) against the query-migrate answers saved with them, without
 * running QEMU. */
#include "config.h"
#include <string.h>
#include <criterion/criterion.h>
#include <glib/gstdio.h>
#include <zstd.h>
#include "analyze-file.h"

static gint64
jint(json_object *o, const char *path)
{
    g_auto(GStrv) parts = g_strsplit(path, ".", -1);
    for (guint i = 0; parts[i]; i++)
        cr_assert(json_object_object_get_ex(o, parts[i], &o), "no %s", path);
    return json_object_get_int64(o);
}

static json_object *
analyze_sample(const char *name)
{
    g_autofree char *path = g_strdup_printf(
        "%s/samples/streams/%s.mig.zst", MP_SOURCE_ROOT, name);
    MpAnalyzeOptions opt = {.quiet = TRUE};
    gboolean ok;
    json_object *doc = mp_analyze_file(path, &opt, &ok);
    cr_assert(ok, "%s: %s", name, json_object_to_json_string(doc));
    return doc;
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

static void
check_sample(const char *name)
{
    json_object *doc = analyze_sample(name);
    json_object *q = query_migrate(name);

    cr_assert_eq(jint(doc, "ram.pages.normal"), jint(q, "ram.normal"));
    cr_assert_eq(jint(doc, "ram.pages.zero"), jint(q, "ram.duplicate"));
    cr_assert_eq(jint(doc, "ram.total"), jint(q, "ram.total"));
    /* precopy rounds: the first sends everything, later ones re-send */
    json_object *rounds;
    cr_assert(json_object_object_get_ex(doc, "rounds", &rounds));
    cr_assert_gt(json_object_array_length(rounds), 0);
    cr_assert_eq(jint(json_object_array_get_idx(rounds, 0), "dirty_pages"), 0);
    json_object_put(doc);
    json_object_put(q);
}

Test(analysis, idle_72_matches_query_migrate)
{
    check_sample("idle-7.2");
}

Test(analysis, busy_xbzrle_72_matches_query_migrate)
{
    check_sample("busy-xbzrle-7.2");
}

Test(analysis, busy_100_matches_query_migrate)
{
    check_sample("busy-10.0");
}

Test(analysis, xbzrle_bytes_match_qemu_counter)
{
    json_object *doc = analyze_sample("busy-xbzrle-7.2");
    json_object *q = query_migrate("busy-xbzrle-7.2");
    gint64 pages = jint(doc, "ram.pages.xbzrle");

    cr_assert_gt(pages, 0);
    cr_assert_eq(jint(doc, "ram.bytes_by_kind.xbzrle") - 8 * pages
                     + 4096 * jint(q, "xbzrle-cache.overflow"),
                 jint(q, "xbzrle-cache.bytes"));
    cr_assert_gt(json_object_array_length(json_object_object_get(doc, "rounds")),
                 2);
    json_object_put(doc);
    json_object_put(q);
}

Test(analysis, switchover_start_on_10)
{
    json_object *doc = analyze_sample("busy-10.0");
    cr_assert_eq(jint(doc, "commands.SWITCHOVER_START"), 1);
    json_object_put(doc);
}

Test(analysis, missing_file_is_an_error)
{
    MpAnalyzeOptions opt = {.quiet = TRUE};
    gboolean ok = TRUE;
    json_object *doc = mp_analyze_file("/nonexistent/x.mig", &opt, &ok);
    cr_assert_not(ok);
    json_object *errs = json_object_object_get(doc, "errors");
    cr_assert_eq(json_object_array_length(errs), 1);
    json_object_put(doc);
}

/* A sample stream, decompressed. */
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

static void
put_be64(guint8 *p, guint64 v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = v & 0xff;
}

static guint64
get_be64(const guint8 *p)
{
    guint64 v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static gsize
find(const GByteArray *a, const char *needle, gsize len)
{
    for (gsize i = 0; i + len <= a->len; i++)
        if (memcmp(a->data + i, needle, len) == 0)
            return i;
    cr_assert_fail("no %s in the sample", needle + 1);
    return 0;
}

/* A stream may claim any block size: "pc.ram" of 4 EiB (and a MEM_SIZE
 * to match) is analyzed with memory for the pages that came, not for the
 * claim (it used to abort allocating a bitmap for it), and --dump-ram
 * says it cannot hold it. */
Test(analysis, huge_block_claim)
{
    g_autoptr(GByteArray) s = sample_bytes("idle-7.2");
    gsize mem = find(s, "\003ram", 4) + 4 + 8; /* instance, version */
    gsize used = find(s, "\006pc.ram", 7) + 7;
    guint64 total = get_be64(s->data + mem), old = get_be64(s->data + used);
    const guint64 huge = G_GUINT64_CONSTANT(1) << 62;
    put_be64(s->data + mem, total - old + huge); /* flags stay in bits 0-11 */
    put_be64(s->data + used, huge);

    g_autofree char *dir = g_dir_make_tmp("mp-test-analysis-XXXXXX", NULL);
    g_autofree char *path = g_build_filename(dir, "huge.mig", NULL);
    g_autofree char *ram = g_build_filename(dir, "ram", NULL);
    cr_assert(g_file_set_contents(path, (char *)s->data, s->len, NULL));

    MpAnalyzeOptions opt = {.quiet = TRUE};
    gboolean ok;
    json_object *doc = mp_analyze_file(path, &opt, &ok);
    json_object *orig = analyze_sample("idle-7.2");
    cr_assert(ok, "%s", json_object_to_json_string(doc));
    cr_assert_eq(jint(doc, "ram.pages.normal"), jint(orig, "ram.pages.normal"));
    cr_assert_eq(jint(doc, "ram.pages.zero"), jint(orig, "ram.pages.zero"));
    cr_assert_eq(jint(doc, "ram.total"), (gint64)(total - old + huge) & ~0xfff);
    json_object_put(doc);
    json_object_put(orig);

    opt.dump_ram = ram;
    doc = mp_analyze_file(path, &opt, &ok);
    cr_assert_not(ok, "--dump-ram took a 4 EiB block");
    json_object_put(doc);

    g_autoptr(GDir) d = g_dir_open(ram, 0, NULL);
    for (const char *n; d && (n = g_dir_read_name(d));) {
        g_autofree char *f = g_build_filename(ram, n, NULL);
        g_unlink(f);
    }
    g_rmdir(ram);
    g_unlink(path);
    g_rmdir(dir);
}
