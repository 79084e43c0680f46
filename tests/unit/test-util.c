/* test-util.c: see test-util.h. */
#include "config.h"
#include <stdio.h>
#include <string.h>
#include <criterion/criterion.h>
#include <glib/gstdio.h>
#include "json-util.h"
#include "stream-input.h"
#include "test-util.h"

char *
tu_tmpdir_new(const char *prefix)
{
    g_autofree char *tmpl = g_strdup_printf("%s-XXXXXX", prefix);
    char *dir = g_dir_make_tmp(tmpl, NULL);
    cr_assert_not_null(dir);
    return dir;
}

void
tu_remove_tree(const char *dir)
{
    g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
    const char *name;
    while (d && (name = g_dir_read_name(d))) {
        g_autofree char *p = g_build_filename(dir, name, NULL);
        if (g_file_test(p, G_FILE_TEST_IS_DIR)
            && !g_file_test(p, G_FILE_TEST_IS_SYMLINK))
            tu_remove_tree(p);
        else
            g_unlink(p);
    }
    g_rmdir(dir);
}

void
tu_tmpdir_remove(char *dir)
{
    tu_remove_tree(dir);
    g_free(dir);
}

gint64
tu_json_int(json_object *doc, const char *path)
{
    json_object *v = mp_json_path(doc, path);
    cr_assert_not_null(v, "no %s", path);
    return json_object_get_int64(v);
}

GByteArray *
tu_read_sample(const char *name)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *path =
        g_strdup_printf("%s/samples/streams/%s", MP_SOURCE_ROOT, name);
    g_autoptr(MpInput) in = mp_input_open(path, &err);
    cr_assert_not_null(in, "%s", err ? err->message : "?");
    GByteArray *all = g_byte_array_new();
    guint8 buf[65536];
    gssize n;
    while ((n = mp_input_read(in, buf, sizeof(buf), &err)) > 0)
        g_byte_array_append(all, buf, n);
    cr_assert_eq(n, 0, "%s", err ? err->message : "?");
    return all;
}

void
tu_validate_json(const char *schema, const char *path, gboolean lines)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *out = NULL;
    g_autofree char *script =
        g_build_filename(MP_SOURCE_ROOT, "tests", "validate-json.py", NULL);
    const char *argv[] = {"python3", script, schema, path, NULL, NULL};
    int status = 0;

    if (lines) {
        argv[2] = "--lines";
        argv[3] = schema;
        argv[4] = path;
    }
    cr_assert(g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_SEARCH_PATH, NULL,
                           NULL, &out, NULL, &status, &err),
              "running %s: %s", script, err ? err->message : "?");
    cr_assert(g_spawn_check_wait_status(status, NULL),
              "%s is not valid against docs/schema/%s:\n%s", path, schema, out);
}

void
tu_validate_doc(const char *schema, json_object *doc)
{
    char *dir = tu_tmpdir_new("mp-validate");
    g_autofree char *path = g_build_filename(dir, "doc.json", NULL);
    cr_assert_eq(json_object_to_file(path, doc), 0);
    tu_validate_json(schema, path, FALSE);
    tu_tmpdir_remove(dir);
}

char *
tu_vm_flags(const void *addr)
{
    g_autofree char *smaps = NULL;
    guintptr a = (guintptr)addr;
    gboolean inside = FALSE;

    if (!g_file_get_contents("/proc/self/smaps", &smaps, NULL, NULL))
        cr_assert_fail("/proc/self/smaps cannot be read");
    g_auto(GStrv) lines = g_strsplit(smaps, "\n", -1);
    for (char **l = lines; *l; l++) {
        unsigned long lo, hi;
        /* a mapping's first line: "lo-hi perms ..." (hex) */
        if (sscanf(*l, "%lx-%lx ", &lo, &hi) == 2) {
            inside = a >= lo && a < hi;
            continue;
        }
        if (inside && g_str_has_prefix(*l, "VmFlags:"))
            return g_strdup(*l + strlen("VmFlags:"));
    }
    cr_assert_fail("no mapping holds %p", addr);
    return NULL;
}
