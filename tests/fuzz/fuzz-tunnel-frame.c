/* fuzz-tunnel-frame.c: libFuzzer target for the tunnel's frame parser.
 *
 * The first input byte picks the payload bound (bits 0-1), whether the
 * frames' checks are fixed up first (bit 2: else mutations rarely get past
 * them, and the payload decoders behind them would go unexplored) and the
 * chunk size of the second run (bits 3-7).  The rest is fed whole, then in
 * chunks with a callback that pauses on every other frame; the two runs
 * must agree on every frame and on the error.  Every frame delivered must
 * lie within the input, and writing it again with mp_tun_write_frame()
 * must give the very bytes it came from. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tunnel-frame.h"

int LLVMFuzzerTestOneInput(const guint8 *data, gsize size);

typedef struct {
    const guint8 *in;
    gsize in_len;
    GString *log;
    gboolean pausing;
    guint frames;
} Run;

static void
die(const char *what, const Run *r)
{
    fprintf(stderr, "fuzz-tunnel-frame: %s\n--- log ---\n%s\n", what,
            r->log->str);
    abort();
}

static MpRecordAction
on_frame(const MpTunFrame *f, gpointer user_data)
{
    Run *r = user_data;
    gsize whole = (gsize)MP_TUN_HEADER_LEN + f->len + MP_TUN_TRAILER_LEN;

    if (f->offset + whole > r->in_len)
        die("frame ends past the input", r);
    g_autoptr(GByteArray) again = g_byte_array_new();
    mp_tun_write_frame(again, f->type, f->flags, f->stream, f->seq,
                       f->payload, f->len);
    if (again->len != whole || memcmp(again->data, r->in + f->offset, whole))
        die("frame written again differs from its input bytes", r);
    g_string_append_printf(r->log, "%" G_GUINT64_FORMAT " %u %u %u %" G_GUINT64_FORMAT
                                   " %u\n",
                           f->offset, f->type, f->flags, f->stream, f->seq,
                           f->len);
    if (f->type == MP_TUN_ACK)
        for (guint32 i = 0; i < f->u.ack.count; i++)
            (void)mp_tun_ack_entry(f, i);
    if (f->type == MP_TUN_HELLO)
        g_string_append(r->log, f->u.hello.software);
    if (f->type == MP_TUN_CLOSE)
        g_string_append(r->log, f->u.close.reason);
    if (f->type == MP_TUN_END)
        g_string_append(r->log, f->u.end.reason);
    r->frames++;
    return r->pausing && r->frames % 2 ? MP_REC_PAUSE : MP_REC_CONTINUE;
}

static char *
run(const guint8 *in, gsize len, guint32 max, gsize chunk, gboolean pausing)
{
    Run r = {in, len, g_string_new(NULL), pausing, 0};
    g_autoptr(MpTunParser) p = mp_tun_parser_new("fuzz", on_frame, &r);
    MpFeedStatus st = MP_FEED_MORE;
    g_autoptr(GError) err = NULL;
    gsize at = 0;

    if (max)
        mp_tun_parser_set_max_payload(p, max);
    while (at < len && st != MP_FEED_ERROR && st != MP_FEED_END) {
        gsize n = chunk ? MIN(chunk, len - at) : len - at;
        /* a private copy of just this chunk, so over-reads trip ASan */
        g_autofree guint8 *c = g_memdup2(in + at, n);
        gsize off = 0;
        do {
            gsize used = 0;
            st = mp_tun_parser_feed(p, c + off, n - off, &used, &err);
            if (used > n - off)
                die("consumed more than given", &r);
            off += used;
            if (st == MP_FEED_PAUSED && !pausing)
                die("paused unasked", &r);
        } while (st == MP_FEED_PAUSED);
        if (st == MP_FEED_MORE && off != n)
            die("MORE without using everything", &r);
        at += off;
    }
    if (mp_tun_parser_offset(p) != at)
        die("offset disagrees with bytes consumed", &r);
    if (st == MP_FEED_ERROR)
        g_string_append_printf(r.log, "ERROR %s\n", err->message);
    else if (st == MP_FEED_END)
        g_string_append_printf(r.log, "END %" G_GSIZE_FORMAT "\n", at);
    else if (!mp_tun_parser_finish(p, &err))
        g_string_append_printf(r.log, "TRUNC %s\n", err->message);
    return g_string_free(r.log, FALSE);
}

/* Rewrites the header and payload checks of every frame that lies whole
 * in the input, as a writer would have made them. */
static void
fix_checks(guint8 *in, gsize len)
{
    gsize at = MP_TUN_PREAMBLE_LEN;

    while (at + MP_TUN_HEADER_LEN <= len) {
        guint8 *h = in + at;
        guint32 plen = (guint32)h[4] << 24 | (guint32)h[5] << 16
                       | (guint32)h[6] << 8 | h[7];
        if (plen > len - at - MP_TUN_HEADER_LEN
            || len - at - MP_TUN_HEADER_LEN - plen < MP_TUN_TRAILER_LEN)
            return;
        g_autoptr(GByteArray) again = g_byte_array_new();
        mp_tun_write_frame(again, h[0], h[1], (guint16)(h[2] << 8 | h[3]),
                           (guint64)mp_be32(h + 8) << 32 | mp_be32(h + 12),
                           h + MP_TUN_HEADER_LEN, plen);
        memcpy(h, again->data, again->len);
        at += again->len;
    }
}

int
LLVMFuzzerTestOneInput(const guint8 *data, gsize size)
{
    static const guint32 bounds[4] = {0, 65536, MP_TUN_MAX_PAYLOAD_DEFAULT,
                                      MP_TUN_MAX_PAYLOAD_LIMIT};
    if (size < 1)
        return 0;
    guint8 sel = data[0];
    gsize len = size - 1;
    g_autofree guint8 *in = g_memdup2(data + 1, len);

    if (sel & 4)
        fix_checks(in, len);

    g_autofree char *whole = run(in, len, bounds[sel & 3], 0, FALSE);
    g_autofree char *chunked =
        run(in, len, bounds[sel & 3], (sel >> 3) + 1, TRUE);
    if (strcmp(whole, chunked) != 0) {
        fprintf(stderr, "whole:\n%s\nchunked:\n%s\n", whole, chunked);
        abort();
    }
    return 0;
}
