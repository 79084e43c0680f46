/* page-gen.h: deterministic test pages of the kinds guest RAM holds: zero,
 * sparse (a few words set), text-like, pointer tables, random. */
#pragma once

#include <string.h>
#include <glib.h>

typedef enum {
    PG_ZERO,
    PG_SPARSE,
    PG_TEXT,
    PG_POINTERS,
    PG_RANDOM,
    PG__MAX,
} PageKind;

static inline void
page_gen(guint8 *p, gsize n, PageKind kind, GRand *r)
{
    static const char *const words[] = {
        "the ", "kernel ", "migration ", "page ", "of ", "memory ",
        "guest ", "and ", "QEMU ", "stream ", "\n", "int ", "return ",
        "0x", "ffff", "    ", "{", "}", "error", "= ",
    };
    memset(p, 0, n);
    switch (kind) {
    case PG_ZERO:
        break;
    case PG_SPARSE:
        for (int i = 0; i < 8; i++)
            p[g_rand_int_range(r, 0, (gint32)n)] =
                (guint8)g_rand_int_range(r, 1, 256);
        break;
    case PG_TEXT: {
        gsize at = 0;
        while (at < n) {
            const char *w = words[g_rand_int_range(r, 0, G_N_ELEMENTS(words))];
            gsize l = MIN(strlen(w), n - at);
            memcpy(p + at, w, l);
            at += l;
        }
        break;
    }
    case PG_POINTERS:
        for (gsize i = 0; i + 8 <= n; i += 8) {
            guint64 v = G_GUINT64_CONSTANT(0xffff888000000000)
                        + (guint64)g_rand_int_range(r, 0, 1 << 20) * 64;
            memcpy(p + i, &v, 8);
        }
        break;
    case PG_RANDOM:
        for (gsize i = 0; i < n; i += 4) {
            guint32 v = g_rand_int(r);
            memcpy(p + i, &v, MIN(4, n - i));
        }
        break;
    case PG__MAX:
        g_assert_not_reached();
    }
}
