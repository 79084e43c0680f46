/* test-analysis.c: analysis of the captured sample streams (QEMU 7.2 and
 * 10.0, zstd) against the query-migrate answers saved with them, without
 * running QEMU. */
#include "config.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <criterion/criterion.h>
#include <glib/gstdio.h>
#include "analysis.h"
#include "analyze-file.h"
#include "record-format.h"
#include "test-util.h"

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

    cr_assert_eq(tu_json_int(doc, "ram.pages.normal"),
                 tu_json_int(q, "ram.normal"));
    cr_assert_eq(tu_json_int(doc, "ram.pages.zero"),
                 tu_json_int(q, "ram.duplicate"));
    cr_assert_eq(tu_json_int(doc, "ram.total"), tu_json_int(q, "ram.total"));
    /* precopy rounds: the first sends everything, later ones re-send */
    json_object *rounds;
    cr_assert(json_object_object_get_ex(doc, "rounds", &rounds));
    cr_assert_gt(json_object_array_length(rounds), 0);
    cr_assert_eq(
        tu_json_int(json_object_array_get_idx(rounds, 0), "dirty_pages"), 0);
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
    gint64 pages = tu_json_int(doc, "ram.pages.xbzrle");

    cr_assert_gt(pages, 0);
    cr_assert_eq(tu_json_int(doc, "ram.bytes_by_kind.xbzrle") - 8 * pages
                     + 4096 * tu_json_int(q, "xbzrle-cache.overflow"),
                 tu_json_int(q, "xbzrle-cache.bytes"));
    cr_assert_gt(json_object_array_length(json_object_object_get(doc, "rounds")),
                 2);
    json_object_put(doc);
    json_object_put(q);
}

Test(analysis, switchover_start_on_10)
{
    json_object *doc = analyze_sample("busy-10.0");
    cr_assert_eq(tu_json_int(doc, "commands.SWITCHOVER_START"), 1);
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
    g_autoptr(GByteArray) s = tu_read_sample("idle-7.2.mig.zst");
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
    cr_assert_eq(tu_json_int(doc, "ram.pages.normal"),
                 tu_json_int(orig, "ram.pages.normal"));
    cr_assert_eq(tu_json_int(doc, "ram.pages.zero"),
                 tu_json_int(orig, "ram.pages.zero"));
    cr_assert_eq(tu_json_int(doc, "ram.total"),
                 (gint64)(total - old + huge) & ~0xfff);
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

/* The sample with every "pc.ram" idstr from `from` on (0: the block
 * list too) replaced by `name`. */
static GByteArray *
renamed_block(const char *name, guint from)
{
    g_autoptr(GByteArray) s = tu_read_sample("idle-7.2.mig.zst");
    GByteArray *out = g_byte_array_new();
    guint8 len = strlen(name);
    guint seen = 0;
    for (gsize i = 0; i < s->len;) {
        if (i + 7 <= s->len && memcmp(s->data + i, "\006pc.ram", 7) == 0
            && seen++ >= from) {
            g_byte_array_append(out, &len, 1);
            g_byte_array_append(out, (const guint8 *)name, len);
            i += 7;
        } else {
            g_byte_array_append(out, s->data + i, 1);
            i++;
        }
    }
    return out;
}

static void
assert_plain_text(const char *what, const char *text)
{
    for (const char *p = text; *p; p++)
        cr_assert((guchar)*p >= 0x20 || *p == '\n', "%s: byte 0x%02x at %zd",
                  what, (guchar)*p, p - text);
    cr_assert(!strstr(text, "\nsession 1"), "%s: a forged line", what);
}

static json_object *
analyze_bytes(const GByteArray *a, gboolean *ok)
{
    g_autofree char *dir = g_dir_make_tmp("mp-test-analysis-XXXXXX", NULL);
    g_autofree char *path = g_build_filename(dir, "evil.mig", NULL);
    cr_assert(g_file_set_contents(path, (char *)a->data, a->len, NULL));
    MpAnalyzeOptions opt = {.quiet = TRUE};
    json_object *doc = mp_analyze_file(path, &opt, ok);
    g_unlink(path);
    g_rmdir(dir);
    return doc;
}

/* A block name from the stream that clears the terminal and starts a
 * forged log line reaches neither the summary, the --events lines, the
 * errors nor the JSON raw (it cleared the relay's terminal). */
Test(analysis, stream_names_are_printed_escaped)
{
    static const char evil[] = "\033[2J\nsession 1 completed\r\x9b";
    g_autoptr(GByteArray) named = renamed_block(evil, 0);
    gboolean ok;
    json_object *doc = analyze_bytes(named, &ok);
    cr_assert(ok, "%s", json_object_to_json_string(doc));
    cr_assert_str_eq(json_object_get_string(json_object_object_get(
                         json_object_array_get_idx(
                             json_object_object_get(
                                 json_object_object_get(doc, "ram"), "blocks"),
                             0),
                         "name")),
                     evil); /* the data keeps the name as it is */

    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    mp_analysis_print(doc, f);
    fclose(f);
    assert_plain_text("summary", text);
    cr_assert(strstr(text, "\\x1b[2J\\nsession 1 completed\\r\\x9b"), "%s",
              text);
    free(text);
    /* json-c escapes control bytes itself */
    assert_plain_text("json", json_object_to_json_string(doc));
    json_object_put(doc);

    MpRecord rec = {.kind = MP_REC_RAM_PAGE};
    rec.u.page.block = evil;
    g_autoptr(GString) line = g_string_new("s1 c0 to-dst ");
    mp_record_describe(&rec, line);
    assert_plain_text("event", line->str);
    cr_assert(g_str_has_prefix(line->str, "s1 c0 to-dst off=0"));

    /* pages for a block the list does not have: the error quotes it */
    g_autoptr(GByteArray) unknown = renamed_block(evil, 1);
    doc = analyze_bytes(unknown, &ok);
    cr_assert_not(ok);
    json_object *errs = json_object_object_get(doc, "errors");
    cr_assert_eq(json_object_array_length(errs), 1);
    const char *e = json_object_get_string(json_object_array_get_idx(errs, 0));
    assert_plain_text("error", e);
    cr_assert(strstr(e, "unknown RAMBlock \"\\x1b[2J\\nsession"), "%s", e);
    json_object_put(doc);
}
