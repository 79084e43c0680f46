/* page-cache-fill.c: what a put into the tunnel's page cache
 * (filters/page-cache.c) costs on its first pass through the cache, when
 * every put touches memory never touched before, and on a second pass,
 * when it replaces a page.  Built and run by bench-page-cache.sh. */
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include "page-cache.h"

/* page-cache.c names a parse error only in mp_pcache_block_bind(), which
 * this does not call */
void mp_parse_error_set(void);
void mp_parse_error_set(void) {}

int
main(int argc, char **argv)
{
    guint64 mib = argc > 1 ? strtoull(argv[1], NULL, 10) : 128;
    int rounds = argc > 2 ? atoi(argv[2]) : 3;
    guint64 pages = (mib << 20) / 4096;
    guint8 page[4096];

    for (int i = 0; i < 4096; i++)
        page[i] = (guint8)(i * 7);
    for (int r = 0; r < rounds; r++) {
        MpPageCache *c = mp_pcache_new(4096, mib << 20);
        double us[2];
        for (int pass = 0; pass < 2; pass++) {
            gint64 t0 = g_get_monotonic_time();
            for (guint64 i = 0; i < pages; i++) {
                page[0] = (guint8)i;
                page[1] = (guint8)(i >> 8);
                page[2] = (guint8)pass;
                mp_pcache_put(c, (MpPageKey){.block = 0, .index = i}, page);
            }
            us[pass] = (double)(g_get_monotonic_time() - t0) / pages;
        }
        mp_pcache_free(c);
        printf("%" G_GUINT64_FORMAT " MiB cache: first pass %.2f us per "
               "page, second pass %.2f us per page\n", mib, us[0], us[1]);
    }
    return 0;
}
