/* fuzz-pcap.c: libFuzzer target for packet captures given to `migproxy
 * analyze` (src/io/pcap-flows.c: libpcap's reading, the link, IP and TCP
 * decoding, TCP reassembly; src/io/pcap-read.c: sessions and their
 * pipelines).
 *
 * Input: the capture's bytes (pcap or pcapng), written to one file made
 * once per process (libFuzzer runs one input at a time), analyzed with a
 * 4 KiB reassembly window so that small inputs reach the window's gaps.
 * Checked: ASan and UBSan, and that a document comes back.
 */
#include <stdlib.h>
#include <unistd.h>
#include <glib.h>
#include <glib/gstdio.h>
#include "pcap-read.h"

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
        dir = g_dir_make_tmp("mp-fuzz-pcap-XXXXXX", NULL);
        if (!dir)
            abort();
        file = g_build_filename(dir, "x.pcap", NULL);
        atexit(remove_dir);
    }
    if (!g_file_set_contents(file, (const char *)data, (gssize)size, NULL))
        abort();
    gboolean ok;
    json_object *doc = mp_pcap_analyze(file, FALSE, 4096, &ok);
    if (!doc)
        abort();
    json_object_put(doc);
    return 0;
}
