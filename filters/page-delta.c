/* page-delta.c: XOR delta of a page against its cached version (see
 * page-delta.h). */
#include "config.h"
#include <string.h>
#include "parse-common.h"
#include "page-delta.h"

/* An unchanged stretch shorter than this stays inside a literal. */
#define MIN_GAP 4

static gsize
put_uleb(guint8 *p, guint32 v)
{
    gsize n = 0;
    do {
        guint8 b = v & 0x7f;
        v >>= 7;
        p[n++] = b | (v ? 0x80 : 0);
    } while (v);
    return n;
}

/* @return bytes read, 0 if malformed (over 3 bytes: 2^21 > any page). */
static gsize
get_uleb(const guint8 *p, gsize avail, guint32 *v)
{
    guint32 r = 0;
    for (gsize i = 0; i < MIN(avail, 3); i++) {
        r |= (guint32)(p[i] & 0x7f) << (7 * i);
        if (!(p[i] & 0x80)) {
            *v = r;
            return i + 1;
        }
    }
    return 0;
}

/* @return the first index >= i where a and b differ, or n. */
static gsize
same_run(const guint8 *a, const guint8 *b, gsize i, gsize n)
{
    while (i + 8 <= n) {
        guint64 x, y;
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        if (x != y)
            break;
        i += 8;
    }
    while (i < n && a[i] == b[i])
        i++;
    return i;
}

gssize
mp_delta_encode(const guint8 *old, const guint8 *page, guint32 page_size,
                guint8 *out, gsize cap)
{
    gsize i = 0, o = 0;

    for (;;) {
        gsize start = same_run(old, page, i, page_size);
        if (start == page_size)
            return (gssize)o;
        /* the literal runs until MIN_GAP unchanged bytes or the end */
        gsize end = start + 1;
        for (;;) {
            while (end < page_size && old[end] != page[end])
                end++;
            /* already too long (its header only adds to it): a page that
             * changed all over (random data) is not scanned to its end */
            if (o + (end - start) > cap)
                return -1;
            gsize next = same_run(old, page, end, page_size);
            if (next == page_size || next - end >= MIN_GAP)
                break;
            end = next;
        }
        guint8 hdr[6];
        gsize h = put_uleb(hdr, start - i);
        h += put_uleb(hdr + h, end - start);
        if (o + h + (end - start) > cap)
            return -1;
        memcpy(out + o, hdr, h);
        o += h;
        for (gsize k = start; k < end; k++)
            out[o++] = old[k] ^ page[k];
        i = end;
    }
}

gboolean
mp_delta_decode(const guint8 *old, const guint8 *delta, gsize len,
                guint32 page_size, guint8 *page, GError **error)
{
    gsize d = 0, at = 0;

    if (page != old)
        memcpy(page, old, page_size);
    while (d < len) {
        guint32 same, n;
        gsize k = get_uleb(delta + d, len - d, &same);
        gsize k2 = k ? get_uleb(delta + d + k, len - d - k, &n) : 0;
        if (!k || !k2) {
            mp_parse_error_set(error, "delta", MP_PARSE_ERROR_DECODE,
                               "malformed length at delta offset %"
                               G_GSIZE_FORMAT " of %" G_GSIZE_FORMAT,
                               d, len);
            return FALSE;
        }
        d += k + k2;
        if (n == 0 || (guint64)at + same + n > page_size || n > len - d) {
            mp_parse_error_set(error, "delta", MP_PARSE_ERROR_DECODE,
                               "pair at delta offset %" G_GSIZE_FORMAT
                               " (skip %u, %u bytes) runs past the %u-byte "
                               "page (at %" G_GSIZE_FORMAT
                               ") or the %" G_GSIZE_FORMAT "-byte delta",
                               d - k - k2, same, n, page_size, at, len);
            return FALSE;
        }
        at += same;
        for (guint32 j = 0; j < n; j++)
            page[at + j] ^= delta[d + j];
        at += n;
        d += n;
    }
    return TRUE;
}
