/* page-zstd.c: zstd with a long window shared across page batches (see
 * page-zstd.h). */
#include "config.h"
#include <zstd.h>
#include "parse-common.h"
#include "page-zstd.h"

struct MpCompEnc {
    ZSTD_CCtx *cctx;
    int level;      /* of the frame being written */
    int next_level; /* from the next batch on */
    gboolean small, next_small; /* the match tables: the same */
    gboolean in_frame;
    guint frames;
    MpCodecStats stats;
};

struct MpCompDec {
    ZSTD_DCtx *dctx;
    gboolean broken;
    MpCodecStats stats;
};

MpCompEnc *
mp_comp_enc_new(int level, guint window_log, GError **error)
{
    if (!mp_comp_level_ok(level)
        || window_log < 10 || window_log > MP_COMP_WINDOW_LOG_MAX) {
        mp_parse_error_set(error, "zstd", MP_PARSE_ERROR_UNSUPPORTED,
                           "level %d, window log %u: expected level %d..%d "
                           "(not 0), window log 10..%d",
                           level, window_log, ZSTD_minCLevel(),
                           ZSTD_maxCLevel(), MP_COMP_WINDOW_LOG_MAX);
        return NULL;
    }
    MpCompEnc *e = g_new0(MpCompEnc, 1);
    e->level = e->next_level = level;
    e->cctx = ZSTD_createCCtx();
    g_assert(e->cctx);
    ZSTD_CCtx_setParameter(e->cctx, ZSTD_c_compressionLevel, level);
    ZSTD_CCtx_setParameter(e->cctx, ZSTD_c_windowLog, (int)window_log);
    /* pages repeat at distances of MiB: long-distance matching finds them */
    ZSTD_CCtx_setParameter(e->cctx, ZSTD_c_enableLongDistanceMatching, 1);
    /* the batch's length travels in the frame; no need for it here */
    ZSTD_CCtx_setParameter(e->cctx, ZSTD_c_checksumFlag, 0);
    return e;
}

/* The match tables of `small` on a context between frames (or before
 * its first), at `level` (set just before): 0 is zstd's "the level's
 * own".  With small tables the levels whose parser is zstd's double-fast
 * one (3 and 4) parse greedily instead: double-fast's second table is
 * there to reach far matches, which small tables give up, and on log
 * text it then keeps more than level 1 (0.182 against 0.175), where the
 * greedy parser with one step of search keeps 0.169 at about 60 % of
 * level 1's speed (MP_COMP_SMALL_GREEDY_*). */
static void
set_tables(ZSTD_CCtx *cctx, int level, gboolean small)
{
    int log = small ? MP_COMP_SMALL_TABLES_LOG : 0;
    gboolean greedy = small && level >= MP_COMP_SMALL_GREEDY_FROM
                      && level <= MP_COMP_SMALL_GREEDY_TO;
    gsize r = ZSTD_CCtx_setParameter(cctx, ZSTD_c_hashLog, log);
    g_assert(!ZSTD_isError(r));
    r = ZSTD_CCtx_setParameter(cctx, ZSTD_c_chainLog, log);
    g_assert(!ZSTD_isError(r));
    r = ZSTD_CCtx_setParameter(cctx, ZSTD_c_strategy,
                               greedy ? ZSTD_greedy : 0);
    g_assert(!ZSTD_isError(r));
    r = ZSTD_CCtx_setParameter(cctx, ZSTD_c_searchLog, greedy ? 1 : 0);
    g_assert(!ZSTD_isError(r));
}

void
mp_comp_enc_free(MpCompEnc *e)
{
    if (!e)
        return;
    ZSTD_freeCCtx(e->cctx);
    g_free(e);
}

gboolean
mp_comp_level_ok(int level)
{
    return level >= ZSTD_minCLevel() && level <= ZSTD_maxCLevel()
           && level != 0;
}

void
mp_comp_enc_set_level(MpCompEnc *e, int level)
{
    g_return_if_fail(mp_comp_level_ok(level));
    e->next_level = level;
}

int
mp_comp_enc_level(const MpCompEnc *e)
{
    return e->next_level;
}

void
mp_comp_enc_set_small_tables(MpCompEnc *e, gboolean small)
{
    e->next_small = small;
}

gboolean
mp_comp_enc_small_tables(const MpCompEnc *e)
{
    return e->next_small;
}

guint
mp_comp_enc_frames(const MpCompEnc *e)
{
    return e->frames;
}

/* The frame being written ends (its last block, a few bytes, into `out`)
 * and the next starts at the new level and tables: single-threaded zstd
 * takes new parameters only at a frame's start.  The destination's streaming decoder
 * reads frame after frame; what it loses is the window: the new frame
 * matches nothing sent before it. */
static void
enc_switch(MpCompEnc *e, GByteArray *out)
{
    ZSTD_inBuffer none = {NULL, 0, 0};

    if (e->in_frame) {
        for (;;) {
            gsize at = out->len;
            g_byte_array_set_size(out, at + ZSTD_CStreamOutSize());
            ZSTD_outBuffer ob = {out->data + at, ZSTD_CStreamOutSize(), 0};
            gsize r = ZSTD_compressStream2(e->cctx, &ob, &none, ZSTD_e_end);
            g_byte_array_set_size(out, at + ob.pos);
            g_assert(!ZSTD_isError(r));
            if (r == 0)
                break;
        }
        e->in_frame = FALSE;
    }
    /* between frames: the parameter applies to the next one (a context
     * only warmed, mp_comp_enc_warm(), has begun its session without a
     * byte: it goes back to taking parameters) */
    ZSTD_CCtx_reset(e->cctx, ZSTD_reset_session_only);
    gsize r = ZSTD_CCtx_setParameter(e->cctx, ZSTD_c_compressionLevel,
                                     e->next_level);
    g_assert(!ZSTD_isError(r));
    set_tables(e->cctx, e->next_level, e->next_small);
    e->level = e->next_level;
    e->small = e->next_small;
}

void
mp_comp_enc_warm(MpCompEnc *e)
{
    ZSTD_inBuffer none = {NULL, 0, 0};
    guint8 byte;
    ZSTD_outBuffer ob = {&byte, 0, 0};

    if (e->in_frame)
        return;
    /* nothing in, nothing to flush: zstd starts the session (its
     * workspace allocated, its tables cleared) and writes nothing, not
     * even the frame header, which waits for the first byte of input;
     * the parameters do not depend on the input's size unless the
     * frame ends in the same call (ZSTD_e_end), so the frame that
     * follows is the one an unwarmed context would write */
    gsize r = ZSTD_compressStream2(e->cctx, &ob, &none, ZSTD_e_continue);
    g_assert(!ZSTD_isError(r) && ob.pos == 0);
}

gsize
mp_comp_enc_batch(MpCompEnc *e, const guint8 *in, gsize len, GByteArray *out)
{
    guint64 t0 = mp_codec_now_ns();
    gsize start = out->len;
    ZSTD_inBuffer ib = {in, len, 0};

    if (len == 0)
        return 0;
    if (e->next_level != e->level || e->next_small != e->small)
        enc_switch(e, out);
    if (!e->in_frame) {
        e->in_frame = TRUE;
        e->frames++;
    }
    for (;;) {
        gsize room = ZSTD_compressBound(len - ib.pos) + 64;
        gsize at = out->len;
        g_byte_array_set_size(out, at + room);
        ZSTD_outBuffer ob = {out->data + at, room, 0};
        gsize r = ZSTD_compressStream2(e->cctx, &ob, &ib, ZSTD_e_flush);
        g_byte_array_set_size(out, at + ob.pos);
        /* only misuse fails here (parameters are checked in _new) */
        g_assert(!ZSTD_isError(r));
        if (r == 0 && ib.pos == len)
            break;
    }
    gsize n = out->len - start;
    mp_codec_stats_add(&e->stats, 0, len, n, t0);
    return n;
}

MpCompDec *
mp_comp_dec_new(guint window_log, GError **error)
{
    if (window_log < 10 || window_log > MP_COMP_WINDOW_LOG_MAX) {
        mp_parse_error_set(error, "zstd", MP_PARSE_ERROR_UNSUPPORTED,
                           "window log %u, expected 10..%d", window_log,
                           MP_COMP_WINDOW_LOG_MAX);
        return NULL;
    }
    MpCompDec *d = g_new0(MpCompDec, 1);
    d->dctx = ZSTD_createDCtx();
    g_assert(d->dctx);
    ZSTD_DCtx_setParameter(d->dctx, ZSTD_d_windowLogMax, (int)window_log);
    return d;
}

void
mp_comp_dec_free(MpCompDec *d)
{
    if (!d)
        return;
    ZSTD_freeDCtx(d->dctx);
    g_free(d);
}

static gboolean
dec_fail(MpCompDec *d, GError **error, gsize len, gsize pos, gsize r)
{
    mp_parse_error_set(error, "zstd", MP_PARSE_ERROR_DECODE,
                       "batch of %" G_GSIZE_FORMAT " bytes, at byte %"
                       G_GSIZE_FORMAT ": %s",
                       len, pos, ZSTD_getErrorName(r));
    d->broken = TRUE;
    return FALSE;
}

gboolean
mp_comp_dec_batch(MpCompDec *d, const guint8 *in, gsize len, guint8 *out,
                  gsize raw_len, GError **error)
{
    guint64 t0 = mp_codec_now_ns();
    ZSTD_inBuffer ib = {in, len, 0};
    ZSTD_outBuffer ob = {out, raw_len, 0};
    guint8 extra;
    gboolean more = FALSE;

    if (d->broken) {
        mp_parse_error_set(error, "zstd", MP_PARSE_ERROR_DECODE,
                           "an earlier batch failed: the stream is lost");
        return FALSE;
    }
    while (ib.pos < len && ob.pos < ob.size) {
        gsize r = ZSTD_decompressStream(d->dctx, &ob, &ib);
        if (ZSTD_isError(r))
            return dec_fail(d, error, len, ib.pos, r);
    }
    if (ob.pos == raw_len) {
        /* the batch must hold exactly raw_len bytes: anything it still
         * gives (from input left, or held inside zstd) is a lie */
        for (;;) {
            ZSTD_outBuffer eb = {&extra, 1, 0};
            gsize before = ib.pos;
            gsize r = ZSTD_decompressStream(d->dctx, &eb, &ib);
            if (ZSTD_isError(r))
                return dec_fail(d, error, len, ib.pos, r);
            if (eb.pos || (ib.pos == before && ib.pos < len)) {
                more = TRUE;
                break;
            }
            if (ib.pos == len)
                break;
        }
        if (!more) {
            mp_codec_stats_add(&d->stats, 0, len, raw_len, t0);
            return TRUE;
        }
    }
    mp_parse_error_set(error, "zstd", MP_PARSE_ERROR_DECODE,
                       "batch of %" G_GSIZE_FORMAT " bytes gives %s%"
                       G_GSIZE_FORMAT " bytes, expected %" G_GSIZE_FORMAT,
                       len, more ? "more than " : "", ob.pos, raw_len);
    d->broken = TRUE;
    return FALSE;
}

const MpCodecStats *
mp_comp_enc_stats(const MpCompEnc *e)
{
    return &e->stats;
}

const MpCodecStats *
mp_comp_dec_stats(const MpCompDec *d)
{
    return &d->stats;
}

struct MpCompSampler {
    ZSTD_CCtx *cctx;
    guint8 *buf;
    gsize cap;
};

MpCompSampler *
mp_comp_sampler_new(void)
{
    MpCompSampler *s = g_new0(MpCompSampler, 1);
    s->cctx = ZSTD_createCCtx();
    return s;
}

void
mp_comp_sampler_free(MpCompSampler *s)
{
    if (!s)
        return;
    ZSTD_freeCCtx(s->cctx);
    g_free(s->buf);
    g_free(s);
}

gsize
mp_comp_sampler_size(MpCompSampler *s, const guint8 *in, gsize len,
                     int level, gboolean small_tables)
{
    gsize need = ZSTD_compressBound(len);
    if (need > s->cap) {
        g_free(s->buf);
        s->buf = g_malloc(need);
        s->cap = need;
    }
    ZSTD_CCtx_reset(s->cctx, ZSTD_reset_session_and_parameters);
    if (ZSTD_isError(ZSTD_CCtx_setParameter(s->cctx, ZSTD_c_compressionLevel,
                                            level)))
        return 0;
    set_tables(s->cctx, level, small_tables);
    gsize r = ZSTD_compress2(s->cctx, s->buf, s->cap, in, len);
    return ZSTD_isError(r) ? 0 : r;
}
