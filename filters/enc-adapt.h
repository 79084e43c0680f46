/* enc-adapt.h: does an encoder pay?  The source side asks this for each
 * encoder every so often, from what it measured, so the tunnel never makes
 * a migration slower than a direct one at the same link speed.
 *
 * Model: encoding, sending and decoding run as a pipeline, so a byte of
 * guest stream costs the slowest stage's time:
 *
 *   direct   = 1 / link
 *   encoded  = max(1 / (enc * workers), ratio / link, 1 / (dec * workers))
 *
 * (link in tunnel bytes/s; enc, dec in input bytes per CPU-second of one
 * thread; ratio = bytes out / bytes in).  The encoder is switched on when
 * it saves at least MP_ADAPT_ON_GAIN of the time and off when it saves
 * less than MP_ADAPT_OFF_GAIN: the gap keeps it from flapping when it
 * barely pays.  An encoder at least MP_ADAPT_AMPLE times faster than the
 * link (both ends) costs the migration no time at that link, so there it
 * stays on (or comes back) unless it makes the bytes grow by more than
 * MP_ADAPT_AMPLE_MAX_RATIO: switched off it would see only its probes,
 * and pages that compress among pages that do not would go whole (not
 * where its latency counts: `latency_bound`).  A pure function: no
 * state, no clock.
 */
#pragma once

#include <glib.h>

#define MP_ADAPT_ON_GAIN  0.10
#define MP_ADAPT_OFF_GAIN 0.02
/* 8: zstd level 3 here (270-310 MiB/s per thread, 2 workers) is 50 times
 * a 100 Mbit/s link, 4.5 times a 1 Gbit/s one (where its CPU is taken
 * from the QEMUs on a small host: the gain rule decides there) */
#define MP_ADAPT_AMPLE           8.0
#define MP_ADAPT_AMPLE_MAX_RATIO 1.01

typedef struct {
    double link_bps;  /* measured link rate, bytes/s; <= 0: unknown */
    double enc_bps;   /* encoder: input bytes per CPU-second; <= 0: unknown */
    double dec_bps;   /* peer's decoder, same unit; <= 0: not limiting */
    guint enc_workers; /* threads encoding (>= 1) */
    guint dec_workers; /* threads decoding at the peer (>= 1) */
    double ratio;     /* bytes out / bytes in; <= 0: unknown */
    /* the encoder's queue delays what a guest waits for (zstd's workers
     * in post-copy): it stays on only where it saves link time, however
     * fast (MP_ADAPT_AMPLE does not apply) */
    gboolean latency_bound;
} MpAdaptInput;

typedef struct {
    gboolean use;
    double direct_s;  /* seconds per GiB of stream sent direct */
    double encoded_s; /* seconds per GiB of stream through the encoder */
    double gain;      /* 1 - encoded / direct (negative: slower) */
    const char *why;  /* a static phrase for the log */
} MpAdaptVerdict;

/* @return the decision, given whether the encoder is on now.  Without a
 * ratio, the encoder keeps its state (a new encoder starts on, so that it
 * gets measured); with a ratio but no link or encoder rate, it decides on
 * the best case, the link as the limit: gain = 1 - ratio. */
MpAdaptVerdict mp_adapt_decide(const MpAdaptInput *in, gboolean now_on);

/* The adaptive state of one encoder that works unit by unit (a page, a
 * batch): on, or backed off with a probe now and then, and the window of
 * what it did since its last decision.  Start it with
 * mp_adapt_gate_init(); one thread owns it. */
typedef struct {
    gboolean on;
    guint switches;
    guint64 passed; /* units passed by while off (counts the probes) */
    /* the encoder's cumulative counters at the last decision */
    guint64 at_in, at_out, at_ns;
} MpAdaptGate;

/* On, nothing measured yet. */
void mp_adapt_gate_init(MpAdaptGate *g);

/* @return whether the encoder works on the next unit: always while on;
 * while off one unit in `every` (a probe), so that what it would save
 * stays measured and pages that pay again bring it back. */
static inline gboolean
mp_adapt_gate_try(MpAdaptGate *g, guint every)
{
    return g->on || ++g->passed % every == 0;
}

/* Decides on the window since the last decision: `in` (bytes the encoder
 * tried), `out` (what left for them: saved bytes are in - out) and `ns`
 * (its busy time) are its cumulative counters.  With fewer than
 * `min_bytes` tried in the window (probes are few while off) nothing is
 * decided and the window stays open.  `ai` gives the link rate and the
 * workers; the window sets its ratio and enc_bps.  @return TRUE if the
 * gate switched, with *v the verdict. */
gboolean mp_adapt_gate_update(MpAdaptGate *g, guint64 in, guint64 out,
                              guint64 ns, guint64 min_bytes,
                              MpAdaptInput *ai, MpAdaptVerdict *v);

/* The same on numbers given (tests, no clock).  @return TRUE if the gate
 * switched, with *v the verdict. */
gboolean mp_adapt_gate_decide(MpAdaptGate *g, const MpAdaptInput *ai,
                              MpAdaptVerdict *v);

/* ---- the zstd level -------------------------------------------------
 *
 * Which zstd level, given what limits the stream now (docs/tunnel.md,
 * "Adaptive zstd level").  A ladder of levels (-5, -1, 1, 3, 7, 9, 11);
 * the controller moves one rung at a time, on windows of a
 * second or more:
 *
 *   up    the link is the limit (the stream's output fills at least
 *         MP_LEVEL_LINK_BUSY of the link's measured rate) and the workers
 *         have the time for the next rung: their busy share (wall time
 *         compressing / window / workers) scaled by the next rung's cost
 *         and by the stream its better ratio lets through stays under
 *         MP_LEVEL_UP_FITS.  More ratio for CPU the workers have.
 *   down  the workers are the limit (busy share MP_LEVEL_CPU_SHORT or
 *         more: batches wait for a worker) while the link is not full
 *         (unless the rung below was measured no cheaper; and up instead
 *         if the rung above was measured cheaper: on text-like pages
 *         level -1 is slower than 1);
 *         or the link has room (output under MP_LEVEL_LINK_ROOM of it, or
 *         not measured MP_LEVEL_UNMEASURED_S into the stream: it never
 *         held the stream back; earlier it may be full, but not measured
 *         yet) while the
 *         workers spend a noticeable share (MP_LEVEL_SPENDS) and the
 *         next rung down is cheaper: ratio then buys nothing, CPU freed
 *         goes to QEMU (the two share the host).
 *   down  too, at a rung whose measured ratio is not MP_LEVEL_RATIO_GAIN
 *         better than the measured one of the rung below (random pages:
 *         the prior table's gains are text's); and up never to a rung
 *         so measured.
 *   back  within MP_LEVEL_REVERSAL_S of a rise, the link no longer full
 *         and the stream (bytes into zstd per second) down by
 *         MP_LEVEL_SLOWED or more from before the rise: the rise took CPU
 *         that QEMU needed (they share the host), undone.
 *   down  the rung below, cheaper, compresses the sampled batches
 *         (below_rel) no worse than this one: the same ratio for less CPU
 *         (log-like text at 1 keeps less than at 3); back up if there the
 *         samples say the rung above compresses better by
 *         MP_LEVEL_RATIO_GAIN while the link is full.  Samples, not the
 *         stream's ratio at each rung, compare levels here: the stream's
 *         pages change from window to window (a region of other pages
 *         after a move reads as a worse level).  Nor up to a rung the
 *         samples say compresses no better (random pages).
 *   hold  otherwise: the gaps between the thresholds are the hysteresis.
 *
 * A move needs MP_LEVEL_AGREE windows in a row that want it
 * (MP_LEVEL_AGREE_UP for a rise: it costs two to three times the CPU
 * and starts a new frame, and a region of other pages two windows long
 * is common: the Linux guest's first seconds, where samples say 3
 * compresses 5 to 11 % better than 1, before text where it compresses
 * 5 to 12 % worse; docs/benchmarks.md, "A rise needs a third window"),
 * and comes
 * at least MP_LEVEL_DWELL_S after the last one (the first window after a
 * move mixes two levels).  A move that undoes the last within
 * MP_LEVEL_REVERSAL_S blocks the undone direction for a back-off (8 s,
 * doubling to 64 s): at a boundary the level settles instead of
 * swinging.  The cost (CPU seconds per byte) and ratio of a rung are the
 * ones measured there (a moving average); a rung not visited yet is
 * estimated from the current one through a prior table (zstd 1.5 on
 * text-like guest pages, 64 KiB batches, window 2^23, long-distance
 * matching).  zstd off is the on/off decision's above
 * (mp_adapt_decide), at any rung, on the current rung's numbers.  Pure: the caller passes the
 * clock; one thread owns it.
 */
#define MP_LEVEL_RUNGS       7
#define MP_LEVEL_LINK_BUSY   0.85
#define MP_LEVEL_LINK_ROOM   0.50
#define MP_LEVEL_CPU_SHORT   0.80
#define MP_LEVEL_UP_FITS     0.70
#define MP_LEVEL_SPENDS      0.25
#define MP_LEVEL_SLOWED      0.10
#define MP_LEVEL_UNMEASURED_S 8.0
#define MP_LEVEL_AGREE       2
#define MP_LEVEL_AGREE_UP    3
#define MP_LEVEL_DWELL_S     2.0
#define MP_LEVEL_REVERSAL_S  12.0
#define MP_LEVEL_BACKOFF_S   8.0
#define MP_LEVEL_BACKOFF_MAX 64.0
/* a rung whose ratio is not this much better than the one below (as
 * measured) is not worth its CPU */
#define MP_LEVEL_RATIO_GAIN  0.01

typedef struct {
    double link_bps; /* measured link rate, bytes/s; <= 0: not known */
    double out_bps;  /* the stream's bytes onto the link per second */
    double busy;     /* the workers' busy share, 0..1 */
    double in_bps;   /* stream bytes into zstd per second; <= 0: unknown */
    double enc_bps;  /* zstd at this level: input bytes per CPU-second */
    double ratio;    /* zstd at this level: bytes out / bytes in */
    /* sampled batches compressed alone at the rung below, over the same
     * alone at this level (0: no sample) */
    double below_rel;
    double above_rel; /* the same for the rung above */
} MpLevelSample;

typedef struct {
    guint rung;
    double cost[MP_LEVEL_RUNGS];  /* CPU s per input byte; 0: not measured */
    double ratio[MP_LEVEL_RUNGS]; /* 0: not measured */
    /* the samples', at each rung (moving averages); 0: none */
    double below_rel[MP_LEVEL_RUNGS], above_rel[MP_LEVEL_RUNGS];
    int want;       /* the direction the last windows wanted */
    guint agreed;   /* ... how many in a row */
    int last_dir;   /* of the last move */
    double in_before; /* in_bps of the window before the last rise */
    double in_last;   /* in_bps of the last window */
    double last_s;  /* when (-1: never) */
    int blocked;    /* a direction held back ... */
    double blocked_until_s;
    double backoff_s;
    int sampled_down_from; /* the rung a move down on samples left (-1) */
    guint moves;
} MpLevelCtl;

/* The ladder's levels, lowest first. */
int mp_level_rung_level(guint rung);
/* The rung of `level`, or of the nearest ladder level above it. */
guint mp_level_rung_of(int level);
/* Starts at `level` (its rung), nothing measured. */
void mp_level_ctl_init(MpLevelCtl *c, int level);
static inline int
mp_level_ctl_level(const MpLevelCtl *c)
{
    return mp_level_rung_level(c->rung);
}
/* One window's measurements at `now_s` (seconds from the stream's
 * start).  @return
 * the move made (+1 up, -1 down, 0 none), with *why a static phrase for
 * the log (also for 0: why it holds). */
int mp_level_ctl_update(MpLevelCtl *c, const MpLevelSample *s, double now_s,
                        const char **why);

/* ---- zstd's match tables -------------------------------------------
 *
 * Small tables or the level's own (page-zstd.h, MP_COMP_SMALL_TABLES_LOG),
 * chosen on samples: some batches, spread over the stream, are also
 * compressed alone both ways at the current level, and the tables switch
 * when the other way made MP_TABLES_MIN_SAMPLES of them at least
 * MP_TABLES_GAIN smaller.  Samples alone point the way the stream
 * goes (measured, 64 KiB batches at level 1: log-like text 0.177 small
 * against 0.209 full alone, 0.175 against 0.216 streamed; the sample
 * guest's word-list pages 0.329 against 0.262 alone, 0.366 against 0.245
 * streamed; a Linux guest's other memory 0.390 against 0.374 alone and
 * 0.391 against 0.373); the two ways cost the same CPU, so the ratio
 * alone decides.  One group of samples suffices: memory comes in regions
 * of many MiB, text or not, and a group spans one region or two; a switch
 * costs a new frame (the window's history), so the gain must be clear.
 * Pure: one thread owns it.
 */
#define MP_TABLES_GAIN        0.05
#define MP_TABLES_MIN_SAMPLES 4

typedef struct {
    gboolean small;
    guint switches;
} MpTablesCtl;

void mp_tables_ctl_init(MpTablesCtl *c);
/* A group of samples: `n` batches, `now` bytes compressed alone with the
 * current tables, `other` the same batches with the other tables.
 * @return TRUE if the tables switched (c->small is the new choice), with
 * *why a static phrase for the log. */
gboolean mp_tables_ctl_update(MpTablesCtl *c, guint n, guint64 now,
                              guint64 other, const char **why);
