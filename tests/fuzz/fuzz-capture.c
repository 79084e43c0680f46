/* fuzz-capture.c: libFuzzer target for reading a capture directory
 * (src/io/capture-read.c, docs/capture-format.md), as `migproxy analyze DIR`
 * does.
 *
 * Input: be16 n, then n bytes of index.json; a byte k, then k 16-byte
 * entries of s1-c0-to-dst.idx; the rest is s1-c0-to-dst.bin.  The files
 * go into a directory made once per process (libFuzzer runs one input at
 * a time), named as the relay names them, so an index.json that names
 * them is read with them; s1-c0-to-src.* and s1-c1-* exist, empty.
 * Checked: ASan and UBSan, and that a document comes back.
 */
#include <stdlib.h>
#include <unistd.h>
#include <glib.h>
#include <glib/gstdio.h>
#include "capture-read.h"

int LLVMFuzzerTestOneInput(const guint8 *data, gsize size);

static char *dir;

static void
put(const char *name, const guint8 *bytes, gsize len)
{
    g_autofree char *path = g_build_filename(dir, name, NULL);
    if (!g_file_set_contents(path, (const char *)bytes, (gssize)len, NULL))
        abort();
}

static void
remove_dir(void)
{
    g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
    for (const char *n; d && (n = g_dir_read_name(d));) {
        g_autofree char *p = g_build_filename(dir, n, NULL);
        g_unlink(p);
    }
    g_rmdir(dir);
}

int
LLVMFuzzerTestOneInput(const guint8 *data, gsize size)
{
    if (!dir) {
        dir = g_dir_make_tmp("mp-fuzz-capture-XXXXXX", NULL);
        if (!dir)
            abort();
        atexit(remove_dir);
        static const char *const empty[] = {
            "s1-c0-to-src.bin", "s1-c0-to-src.idx", "s1-c1-to-dst.bin",
            "s1-c1-to-dst.idx", "s1-c1-to-src.bin", "s1-c1-to-src.idx"};
        for (guint i = 0; i < G_N_ELEMENTS(empty); i++)
            put(empty[i], (const guint8 *)"", 0);
    }
    if (size < 2)
        return 0;
    gsize json_len = MIN((gsize)(data[0] << 8 | data[1]), size - 2);
    const guint8 *json = data + 2, *rest = json + json_len;
    gsize left = size - 2 - json_len;
    gsize idx_len = left ? MIN((gsize)rest[0] * 16, left - 1) : 0;
    const guint8 *idx = left ? rest + 1 : rest;
    const guint8 *bin = idx + idx_len;
    gsize bin_len = left ? left - 1 - idx_len : 0;

    put("index.json", json, json_len);
    put("s1-c0-to-dst.idx", idx, idx_len);
    put("s1-c0-to-dst.bin", bin, bin_len);
    gboolean ok;
    json_object *doc = mp_capture_analyze(dir, 0, FALSE, &ok);
    if (!doc)
        abort();
    json_object_put(doc);
    return 0;
}
