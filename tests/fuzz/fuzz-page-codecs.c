/* fuzz-page-codecs.c: libFuzzer target for the tunnel's page decoders.
 *
 * The first input byte selects what the rest is:
 *   0  a delta, applied to a fixed page
 *   1  zstd batches on one decoder: { be32 raw length | be32 n | n bytes }
 *   2  PAGES payloads, be16-length-prefixed, decoded in order against a
 *      cache that holds a few pages of "pc.ram"
 *   3  pages for the encoder: every 4096 bytes (zero-padded) are a page
 *      of "pc.ram" (a byte from the input picks its index); each batch is
 *      decoded by a mirror, and the decoded pages, the mirror's cache and
 *      the image must match the source's
 * Decoders must refuse, never crash, over-read or hang; the encoder must
 * always round-trip. */
#include <stdlib.h>
#include <string.h>
#include "page-batch.h"
#include "page-delta.h"
#include "parse-common.h"

#define PS 4096

int LLVMFuzzerTestOneInput(const guint8 *data, gsize size);

static void
fixed_page(guint8 *p, guint seed)
{
    for (guint i = 0; i < PS; i++)
        p[i] = (guint8)(i * seed + (i >> 7));
}

static void
fuzz_delta(const guint8 *in, gsize len)
{
    guint8 old[PS], page[PS], d[PS], back[PS];
    fixed_page(old, 3);
    if (!mp_delta_decode(old, in, len, PS, page, NULL))
        return;
    /* what decodes encodes again, to the same page */
    gssize n = mp_delta_encode(old, page, PS, d, sizeof(d));
    if (n >= 0
        && (!mp_delta_decode(old, d, (gsize)n, PS, back, NULL)
            || memcmp(back, page, PS) != 0))
        abort();
}

static void
fuzz_zstd(const guint8 *in, gsize len)
{
    g_autoptr(MpCompDec) d = mp_comp_dec_new(17, NULL);
    while (len >= 8) {
        guint32 raw = mp_be32(in) % (256 * 1024);
        gsize n = MIN(mp_be32(in + 4), len - 8);
        g_autofree guint8 *out = g_malloc(raw + 1);
        if (!mp_comp_dec_batch(d, in + 8, n, out, raw, NULL))
            return;
        in += 8 + n;
        len -= 8 + n;
    }
}

static void
ignore(const char *block, guint64 index, guint32 count, const guint8 *page,
       gpointer user_data)
{
    if (page) {
        /* read it all: ASan sees a short page */
        volatile guint8 x = page[0] ^ page[PS - 1];
        (void)x;
    }
}

static void
fuzz_batches(const guint8 *in, gsize len)
{
    g_autoptr(MpPageCache) c = mp_pcache_new(PS, 32 * PS);
    /* small windows and images: every run maps its memory afresh */
    g_autoptr(MpBatchDec) d = mp_batch_dec_new(PS, c, 17);
    guint8 p[PS];
    mp_pcache_block_id(c, "pc.ram");
    for (guint i = 0; i < 4; i++) {
        fixed_page(p, i + 1);
        mp_pcache_put(c, (MpPageKey){0, i}, p);
    }
    while (len >= 2) {
        gsize n = MIN(mp_be16(in), len - 2);
        if (!mp_batch_decode(d, in + 2, n, ignore, NULL, NULL))
            return;
        in += 2 + n;
        len -= 2 + n;
    }
}

typedef struct {
    guint8 *ram;
} Image;

static void
apply(const char *block, guint64 index, guint32 count, const guint8 *page,
      gpointer user_data)
{
    Image *img = user_data;
    if (strcmp(block, "pc.ram") != 0 || index + count > 64)
        abort();
    for (guint32 k = 0; k < count; k++) {
        if (page)
            memcpy(img->ram + (index + k) * PS, page, PS);
        else
            memset(img->ram + (index + k) * PS, 0, PS);
    }
}

static void
fuzz_round_trip(const guint8 *in, gsize len)
{
    g_autoptr(MpPageCache) sc = mp_pcache_new(PS, 16 * PS);
    g_autoptr(MpPageCache) dc = mp_pcache_new(PS, 16 * PS);
    g_autoptr(MpZeroRuns) z = mp_zrun_new(PS);
    MpBatchOpts o = {TRUE, TRUE, TRUE};
    g_autoptr(MpBatchEnc) e = mp_batch_enc_new(PS, sc, z, &o);
    g_autoptr(MpBatchDec) d = mp_batch_dec_new(PS, dc, 17);
    g_autoptr(MpCompEnc) comp = mp_comp_enc_new(1, 17, NULL);
    g_autofree guint8 *src = g_malloc0(64 * PS);
    Image dst = {g_malloc0(64 * PS)};
    g_autoptr(GByteArray) out = g_byte_array_new();
    guint8 page[PS];
    guint n = 0;

    mp_zrun_declare_block(z, "pc.ram", 64, TRUE);
    for (gsize at = 0; at < len; at += PS / 16, n++) {
        /* 256 bytes of input spread over a page: sparse and repetitive
         * pages, as in guest RAM */
        gsize l = MIN(PS / 16, len - at);
        guint idx = in[at] % 64;
        memset(page, 0, PS);
        for (guint r = 0; r < 16 && l > 1; r++)
            memcpy(page + r * 256 + (in[at] & 0x0f) * 8, in + at + 1,
                   MIN(l - 1, 64));
        if (in[at] & 0x40)
            memset(page, 0, PS);
        memcpy(src + idx * PS, page, PS);
        if (!mp_batch_enc_add(e, "pc.ram", idx, page, out))
            abort();
        if (in[at] & 0x80 || at + PS / 16 >= len)
            mp_batch_enc_flush(e, out);
        gsize pos = 0;
        while (pos < out->len) {
            guint32 bl = mp_be32(out->data + pos);
            g_autoptr(GByteArray) zb = g_byte_array_new();
            const guint8 *b = out->data + pos + 4;
            gsize blen = bl;
            if (n % 2) {
                mp_batch_compress(comp, 0, b, bl, zb);
                b = zb->data;
                blen = zb->len;
            }
            if (!mp_batch_decode(d, b, blen, apply, &dst, NULL))
                abort();
            pos += 4 + bl;
        }
        g_byte_array_set_size(out, 0);
    }
    mp_batch_enc_flush(e, out);
    if (out->len)
        abort(); /* everything was flushed already */
    if (mp_pcache_digest(sc) != mp_pcache_digest(dc)
        || memcmp(src, dst.ram, 64 * PS) != 0)
        abort();
    g_free(dst.ram);
}

int
LLVMFuzzerTestOneInput(const guint8 *data, gsize size)
{
    if (size < 1)
        return 0;
    switch (data[0] % 4) {
    case 0:
        fuzz_delta(data + 1, size - 1);
        break;
    case 1:
        fuzz_zstd(data + 1, size - 1);
        break;
    case 2:
        fuzz_batches(data + 1, size - 1);
        break;
    default:
        fuzz_round_trip(data + 1, size - 1);
        break;
    }
    return 0;
}
