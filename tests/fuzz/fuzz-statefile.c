/* fuzz-statefile.c: libFuzzer target for a file given to `migproxy
 * analyze` (src/analyze-file.c and what it dispatches to by content:
 * streams plain or zstd, libvirt save images and their decompressors,
 * mapped-ram files, qcow2 images).
 *
 * Input: the file's bytes, written to one file made once per process
 * (libFuzzer runs one input at a time).  A qcow2 image is also read with
 * --snapshot of its first snapshot (id "1"), through its tables.
 * Checked: ASan and UBSan, and that a document comes back.
 */
#include <stdlib.h>
#include <unistd.h>
#include <glib.h>
#include <glib/gstdio.h>
#include "analyze-file.h"

int LLVMFuzzerTestOneInput(const guint8 *data, gsize size);

static char *dir, *file;

static void
remove_dir(void)
{
    g_unlink(file);
    g_rmdir(dir);
}

int
LLVMFuzzerTestOneInput(const guint8 *data, gsize size)
{
    if (!dir) {
        dir = g_dir_make_tmp("mp-fuzz-statefile-XXXXXX", NULL);
        if (!dir)
            abort();
        file = g_build_filename(dir, "state", NULL);
        atexit(remove_dir);
    }
    if (!g_file_set_contents(file, (const char *)data, (gssize)size, NULL))
        abort();
    MpAnalyzeOptions opt = {.quiet = TRUE};
    gboolean ok;
    json_object *doc = mp_analyze_file(file, &opt, &ok);
    if (!doc)
        abort();
    json_object *q;
    gboolean qcow2 = json_object_object_get_ex(doc, "qcow2", &q);
    json_object_put(doc);
    if (qcow2) {
        opt.snapshot = (char *)"1";
        doc = mp_analyze_file(file, &opt, &ok);
        if (!doc)
            abort();
        json_object_put(doc);
    }
    return 0;
}
