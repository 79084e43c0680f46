/* xbzrle.c: XBZRLE decode (for --dump-ram and validation) and encode (for
 * building test vectors and, later, the tunnel's delta encoder). */
#include <string.h>
#include "xbzrle.h"

/* One uleb128 of at most 14 bits; returns bytes used or 0 if invalid. */
static gsize
uleb_small(const guint8 *p, gsize avail, guint32 *out)
{
    if (avail < 1)
        return 0;
    if (!(p[0] & 0x80)) {
        *out = p[0];
        return 1;
    }
    if (avail < 2 || (p[1] & 0x80))
        return 0;
    *out = (p[0] & 0x7f) | (guint32)p[1] << 7;
    return 2;
}

static gboolean
walk(guint8 *page, gsize page_size, const guint8 *enc, gsize len)
{
    gsize i = 0, d = 0;

    while (i < len) {
        guint32 zrun, nzrun;
        gsize n;

        /* QEMU requires two bytes left before each run length. */
        if (len - i < 2)
            return FALSE;
        n = uleb_small(enc + i, len - i, &zrun);
        if (!n || (i && !zrun))
            return FALSE;
        i += n;
        d += zrun;
        if (d > page_size || len - i < 2)
            return FALSE;
        n = uleb_small(enc + i, len - i, &nzrun);
        if (!n || !nzrun)
            return FALSE;
        i += n;
        if (d + nzrun > page_size || i + nzrun > len)
            return FALSE;
        if (page)
            memcpy(page + d, enc + i, nzrun);
        d += nzrun;
        i += nzrun;
    }
    return TRUE;
}

gboolean
mp_xbzrle_check(const guint8 *enc, gsize len, gsize page_size)
{
    return walk(NULL, page_size, enc, len);
}

gboolean
mp_xbzrle_apply(guint8 *page, gsize page_size, const guint8 *enc, gsize len)
{
    return walk(page, page_size, enc, len);
}

static gsize
put_uleb(guint8 *out, guint32 v)
{
    if (v < 0x80) {
        out[0] = v;
        return 1;
    }
    out[0] = (v & 0x7f) | 0x80;
    out[1] = v >> 7;
    return 2;
}

gssize
mp_xbzrle_encode(const guint8 *old, const guint8 *new_page, gsize page_size,
                 guint8 *out, gsize cap)
{
    gsize i = 0, o = 0;

    while (i < page_size) {
        gsize z = i, nz;
        while (z < page_size && old[z] == new_page[z])
            z++;
        if (z == page_size)
            break;
        nz = z;
        while (nz < page_size && old[nz] != new_page[nz])
            nz++;
        /* Runs are limited to 14 bits (uleb128_encode_small): 4 KiB
         * pages never reach that; a longer run fails the encoding (-1),
         * as it cannot be split (a later zrun may not be 0). */
        gsize zrun = z - i, nzrun = nz - z;
        if (zrun > 0x3fff || nzrun > 0x3fff)
            return -1;
        if (o + 4 + nzrun > cap)
            return -1;
        o += put_uleb(out + o, zrun);
        o += put_uleb(out + o, nzrun);
        memcpy(out + o, new_page + z, nzrun);
        o += nzrun;
        i = nz;
    }
    return o;
}
