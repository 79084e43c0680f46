/* test-analysis.c: analysis of the captured sample streams (QEMU 7.2 and
 * 10.0, zstd) against the query-migrate answers saved with them, without
 * running QEMU. */
#include "config.h"
#include <criterion/criterion.h>
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
