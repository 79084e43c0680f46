/* test-util.c: see test-util.h. */
#include "config.h"
#include <criterion/criterion.h>
#include <glib/gstdio.h>
#include "json-util.h"
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
tu_tmpdir_remove(char *dir)
{
    g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
    const char *name;
    while (d && (name = g_dir_read_name(d))) {
        g_autofree char *p = g_build_filename(dir, name, NULL);
        g_unlink(p);
    }
    g_rmdir(dir);
    g_free(dir);
}

gint64
tu_json_int(json_object *doc, const char *path)
{
    json_object *v = mp_json_path(doc, path);
    cr_assert_not_null(v, "no %s", path);
    return json_object_get_int64(v);
}
