/* fuzz-tunnel-pages.c: libFuzzer target for the destination side's PAGES
 * path (src/tunnel/tunnel-pages-in.c): batch decoding, the cache setup,
 * and the RAM records written for QEMU.
 *
 * Input: a mode byte (bit 0: a multifd stream, whose batches are
 * written as bare pages: mp_tun_pages_in_set_bare()), then PAGES
 * payloads, be16-length-prefixed, applied in order to one stream, with a
 * DATA marker between them when the length's top bit is set, and as an
 * urgent payload (lifted pages) when the next bit is.  The writer must
 * refuse or apply, never crash, over-read or hang, never append more than
 * its limit (and the lifted pages that waited for the batch), and what it
 * writes must parse as RAM records of a migration stream (a RAM section's
 * body), or, on a multifd stream, be whole pages (and no urgent payload
 * is taken there). */
#include <stdlib.h>
#include <string.h>
#include "mp-record.h"
#include "parse-common.h"
#include "tunnel-pages-in.h"

#define PS    4096
#define LIMIT (256u << 10)

int LLVMFuzzerTestOneInput(const guint8 *data, gsize size);

/* Walks RAM records: be64 offset|flags, a name unless CONTINUE, a page
 * or a ZERO byte.  abort() on anything else: the writer must only write
 * records QEMU's loader takes. */
static void
check_records(const guint8 *p, gsize len, gboolean *named)
{
    gsize at = 0;
    while (at < len) {
        if (len - at < 8)
            abort();
        guint64 v = mp_be64(p + at);
        guint64 flags = v & (PS - 1);
        at += 8;
        if (flags & MP_RAM_SAVE_FLAG_CONTINUE) {
            if (!*named)
                abort(); /* CONTINUE with no block before it */
        } else {
            if (at >= len || p[at] == 0 || len - at < 1u + p[at])
                abort();
            at += 1 + p[at];
            *named = TRUE;
        }
        flags &= ~(guint64)MP_RAM_SAVE_FLAG_CONTINUE;
        if (flags == MP_RAM_SAVE_FLAG_ZERO) {
            if (at >= len || p[at] != 0)
                abort();
            at += 1;
        } else if (flags == MP_RAM_SAVE_FLAG_PAGE) {
            if (len - at < PS)
                abort();
            at += PS;
        } else {
            abort();
        }
    }
}

int
LLVMFuzzerTestOneInput(const guint8 *data, gsize size)
{
    g_autoptr(MpTunPagesIn) pi = mp_tun_pages_in_new(PS, 1u << 20);
    g_autoptr(GByteArray) out = g_byte_array_new();
    gboolean named = FALSE;

    if (size < 1)
        return 0;
    gboolean bare = data[0] & 1;
    if (bare)
        mp_tun_pages_in_set_bare(pi);
    data++;
    size--;
    while (size >= 2) {
        guint16 h = mp_be16(data);
        gsize n = MIN((gsize)(h & 0x3fff), size - 2);
        if (h & 0x8000) {
            mp_tun_pages_in_data(pi);
            named = FALSE;
        }
        g_byte_array_set_size(out, 0);
        gboolean ok = h & 0x4000
                          ? mp_tun_pages_in_urgent(pi, data + 2, n, out, NULL)
                          : mp_tun_pages_in_apply(pi, data + 2, n, out, LIMIT,
                                                  NULL);
        if (out->len > (h & 0x4000 ? n * 2 : LIMIT + MP_TUN_LIFT_MAX_WAITING
                                                        * (8 + 256 + PS)))
            abort();
        if (ok && bare && ((h & 0x4000) || out->len % PS))
            abort();
        if (ok && !bare)
            check_records(out->data, out->len, &named);
        data += 2 + n;
        size -= 2 + n;
    }
    return 0;
}
