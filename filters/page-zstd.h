/* page-zstd.h: zstd over page batches with one long window shared by every
 * batch of a context.
 *
 * The level and the match tables may change between batches
 * (mp_comp_enc_set_level(), mp_comp_enc_set_small_tables()): the frame
 * ends and a new one starts, which the decoder follows without
 * being told (a zstd stream is frames one after another).
 *
 * The encoder is one streaming ZSTD_CCtx; each batch is compressed and
 * flushed (ZSTD_e_flush), so its bytes are complete on the wire while the
 * window keeps the pages of earlier batches: a page like one sent a few
 * MiB before costs a few bytes.  The decoder is one ZSTD_DCtx that must see
 * that context's batches in the order they were made; its window is
 * bounded by the negotiated window log, so a hostile peer cannot make it
 * allocate more.
 *
 * One context per worker thread (a context is used by one thread at a
 * time; there is no shared state).  The tunnel names the context in the
 * batch, and the destination keeps one decoder per source context.
 *
 * Memory, per context: about 2^window_log on each side plus zstd's tables
 * (level 3, window 2^23: about 10 MiB encoder, 8.2 MiB decoder; the
 * encoder 15 MiB at level 7, 33 at 11, 90 at 19; the decoder's does not
 * depend on the level).
 */
#pragma once

#include <glib.h>
#include "codec-stats.h"

#define MP_COMP_WINDOW_LOG_DEFAULT 23 /* 8 MiB: two thousand pages */
#define MP_COMP_WINDOW_LOG_MAX     27
#define MP_COMP_LEVEL_DEFAULT      3
/* where an adaptive level starts: the cheapest level that compresses
 * well (text of random numbers: better than 3); it rises where the link
 * is full, the workers have time and the samples say the level above
 * compresses better (enc-adapt.h) */
#define MP_COMP_LEVEL_ADAPT_START  1

typedef struct MpCompEnc MpCompEnc;
typedef struct MpCompDec MpCompDec;

/* @return an encoder at zstd `level` (1..19; negative: faster) with a
 * window of 2^window_log bytes (10..MP_COMP_WINDOW_LOG_MAX), or NULL with
 * an error for values out of range. */
MpCompEnc *mp_comp_enc_new(int level, guint window_log, GError **error);
void mp_comp_enc_free(MpCompEnc *e); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpCompEnc, mp_comp_enc_free)

/* Is `level` one zstd takes (its negative levels included, 0 not)? */
gboolean mp_comp_level_ok(int level);
/* The batches from the next one on are compressed at `level` (a valid
 * one): the frame being written ends there and a new one begins (a few
 * bytes more, and the new frame cannot match what went before it: the
 * window starts empty).  No-op if the level is the current one. */
void mp_comp_enc_set_level(MpCompEnc *e, int level);
/* The level of the next batch. */
int mp_comp_enc_level(const MpCompEnc *e);
/* Frames begun so far (1 + changes of level or tables that took effect). */
guint mp_comp_enc_frames(const MpCompEnc *e);

/* zstd's match tables (hash and chain) at 2^MP_COMP_SMALL_TABLES_LOG
 * entries instead of the level's own (2^13 to 2^22): matches are then
 * found only among recent positions.  On text around random numbers
 * (logs: every line its template and its own numbers) the full tables
 * find far matches in the numbers by chance, each costing more in offset
 * bits than the literals it replaces, while the template repeats within
 * the last lines: small tables keep 0.175 of such text at level 1 where
 * the level's own keep 0.216, at the same speed.  Elsewhere far matches
 * pay (0.366 against 0.245 on the sample guest's word-list pages), so
 * the tunnel chooses by samples (enc-adapt.h, MpTablesCtl).  Like the
 * level: from the next batch on, ending the frame if it changes.
 * Levels MP_COMP_SMALL_GREEDY_FROM to _TO (zstd's double-fast parser)
 * parse greedily with small tables: there they keep 0.169 of that text,
 * so the tunnel's adaptive level has a rung above 1 worth the CPU where
 * the link is full (at level 3's own parser, 0.182, it had none). */
#define MP_COMP_SMALL_TABLES_LOG  8
#define MP_COMP_SMALL_GREEDY_FROM 3
#define MP_COMP_SMALL_GREEDY_TO   4
void mp_comp_enc_set_small_tables(MpCompEnc *e, gboolean small);
/* The tables of the next batch: small? */
gboolean mp_comp_enc_small_tables(const MpCompEnc *e);

/* Readies the context for its first batch, writing nothing: zstd's
 * workspace allocated and its tables cleared (about 10 MiB at level 3,
 * window 2^23: milliseconds of page faults), so that a worker can do it
 * before the first batch waits on it.  The batches that follow are
 * compressed to the same bytes as without it.  No-op once a batch was
 * compressed. */
void mp_comp_enc_warm(MpCompEnc *e);

/* Compresses `len` bytes as the next batch and appends it, flushed, to
 * `out`.  @return the number of bytes appended (0 only for len 0). */
gsize mp_comp_enc_batch(MpCompEnc *e, const guint8 *in, gsize len,
                        GByteArray *out);

/* Compresses the same bytes alone (a fresh frame, no history) at a level
 * to compare levels on them: the adaptive level's samples of the rungs
 * next to it (enc-adapt.h).  Its context and buffer are kept between calls;
 * one thread at a time. */
typedef struct MpCompSampler MpCompSampler;
MpCompSampler *mp_comp_sampler_new(void);
void mp_comp_sampler_free(MpCompSampler *s); /* accepts NULL */
/* @return the size of `len` bytes compressed at `level`, with small
 * match tables or the level's own (0: failed). */
gsize mp_comp_sampler_size(MpCompSampler *s, const guint8 *in, gsize len,
                           int level, gboolean small_tables);

/* @return a decoder for batches of an encoder whose window_log is at most
 * `window_log`. */
MpCompDec *mp_comp_dec_new(guint window_log, GError **error);
void mp_comp_dec_free(MpCompDec *d); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpCompDec, mp_comp_dec_free)

/* Decompresses the next batch, which must give exactly `raw_len` bytes,
 * into `out` (raw_len bytes).  @return FALSE with an error (corrupt data,
 * a window over the bound, more or fewer bytes than raw_len); the decoder
 * is then unusable (the stream is lost: the tunnel fails it). */
gboolean mp_comp_dec_batch(MpCompDec *d, const guint8 *in, gsize len,
                           guint8 *out, gsize raw_len, GError **error);

const MpCodecStats *mp_comp_enc_stats(const MpCompEnc *e);
const MpCodecStats *mp_comp_dec_stats(const MpCompDec *d);
