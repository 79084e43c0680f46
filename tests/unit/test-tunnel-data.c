/* test-tunnel-data.c: raw stream bytes through the tunnel: a captured
 * migration stream cut into DATA frames, compressed by the stream's zstd
 * context (one window across frames), parsed back from a tunnel byte
 * stream split at random points, decompressed in order: the bytes that
 * come out are the stream that went in. */
#include "config.h"
#include <string.h>
#include <zstd.h>
#include <criterion/criterion.h>
#include "page-zstd.h"
#include "tunnel-frame.h"

static guint8 *
load_stream(const char *name, gsize *len)
{
    g_autofree char *path = g_strdup_printf("%s/samples/streams/%s.mig.zst",
                                            MP_SOURCE_ROOT, name);
    g_autofree gchar *z = NULL;
    gsize zlen;
    cr_assert(g_file_get_contents(path, &z, &zlen, NULL), "%s", path);
    unsigned long long n = ZSTD_getFrameContentSize(z, zlen);
    cr_assert(n != ZSTD_CONTENTSIZE_ERROR && n != ZSTD_CONTENTSIZE_UNKNOWN);
    guint8 *raw = g_malloc(n);
    cr_assert_eq(ZSTD_decompress(raw, n, z, zlen), n);
    *len = n;
    return raw;
}

typedef struct {
    MpCompDec *dec;
    GByteArray *out;
    guint64 next_seq;
    gboolean ended;
} Sink;

static MpRecordAction
on_frame(const MpTunFrame *f, gpointer user_data)
{
    Sink *s = user_data;
    g_autoptr(GError) err = NULL;

    if (f->type == MP_TUN_END) {
        s->ended = TRUE;
        return MP_REC_CONTINUE;
    }
    if (f->type != MP_TUN_DATA)
        return MP_REC_CONTINUE;
    cr_assert_eq(f->stream, 1);
    cr_assert_eq(f->seq, s->next_seq++);
    cr_assert(f->flags & MP_TUN_FLAG_COMPRESSED);
    gsize at = s->out->len;
    g_byte_array_set_size(s->out, at + f->u.data.raw_len);
    cr_assert(mp_comp_dec_batch(s->dec, f->u.data.body, f->u.data.body_len,
                                s->out->data + at, f->u.data.raw_len, &err),
              "%s", err ? err->message : "");
    return MP_REC_CONTINUE;
}

Test(tunnel_data, captured_stream_through_compressed_frames)
{
    gsize len;
    g_autofree guint8 *raw = load_stream("busy-10.0", &len);
    g_autoptr(MpCompEnc) enc = mp_comp_enc_new(3, 23, NULL);
    g_autoptr(MpCompDec) dec = mp_comp_dec_new(23, NULL);
    g_autoptr(GByteArray) wire = g_byte_array_new();
    g_autoptr(GByteArray) chunk = g_byte_array_new();
    g_autoptr(GRand) r = g_rand_new_with_seed(9);
    MpTunHello h = {.version_min = 1, .version_max = 1,
                    .role = MP_TUN_ROLE_SOURCE, .page_size = 4096,
                    .max_payload = MP_TUN_MAX_PAYLOAD_DEFAULT,
                    .software = "test"};
    MpTunOpen o = {.session = 1, .channel = MP_TUN_CH_MAIN};
    guint64 seq = 1;

    mp_tun_write_preamble(wire);
    mp_tun_write_hello(wire, &h);
    mp_tun_write_open(wire, 1, &o);
    for (gsize at = 0; at < len;) {
        /* QEMU's writes come in all sizes */
        gsize n = MIN((gsize)g_rand_int_range(r, 1, 256 * 1024), len - at);
        g_byte_array_set_size(chunk, 0);
        mp_comp_enc_batch(enc, raw + at, n, chunk);
        mp_tun_write_data(wire, MP_TUN_FLAG_COMPRESSED, 1, seq++, (guint32)n,
                          chunk->data, chunk->len);
        at += n;
    }
    mp_tun_write_close(wire, 0, 1, seq++, MP_TUN_CLOSE_EOF, "");
    mp_tun_write_end(wire, MP_TUN_END_DONE, "");
    /* the window shared across frames: within 10% of one-shot zstd -3 */
    gsize bound = ZSTD_compressBound(len);
    g_autofree guint8 *one = g_malloc(bound);
    gsize one_len = ZSTD_compress(one, bound, raw, len, 3);
    cr_assert_lt(wire->len, one_len * 11 / 10, "tunnel %u, one-shot %zu",
                 wire->len, one_len);

    Sink s = {dec, g_byte_array_new(), 1, FALSE};
    g_autoptr(MpTunParser) p = mp_tun_parser_new("test", on_frame, &s);
    mp_tun_parser_set_max_payload(p, MP_TUN_MAX_PAYLOAD_DEFAULT);
    for (gsize at = 0; at < wire->len;) {
        gsize n = MIN((gsize)g_rand_int_range(r, 1, 70000), wire->len - at);
        gsize used;
        g_autoptr(GError) err = NULL;
        MpFeedStatus st = mp_tun_parser_feed(p, wire->data + at, n, &used,
                                             &err);
        cr_assert(st == MP_FEED_MORE || st == MP_FEED_END, "%s",
                  err ? err->message : "");
        at += used;
    }
    cr_assert(s.ended);
    cr_assert(mp_tun_parser_finish(p, NULL));
    cr_assert_eq(s.out->len, len);
    cr_assert_eq(memcmp(s.out->data, raw, len), 0);
    g_byte_array_unref(s.out);
}
