/* enc-adapt.c: whether an encoder pays (see enc-adapt.h). */
#include "config.h"
#include <math.h>
#include "enc-adapt.h"

#define GIB 1073741824.0

MpAdaptVerdict
mp_adapt_decide(const MpAdaptInput *in, gboolean now_on)
{
    MpAdaptVerdict v = {.use = now_on};

    if (!(in->ratio > 0) || !isfinite(in->ratio)) {
        v.why = "not measured yet: unchanged";
        return v;
    }
    if (!(in->link_bps > 0) || !(in->enc_bps > 0)
        || !isfinite(in->link_bps) || !isfinite(in->enc_bps)) {
        /* Rates unknown, the ratio known: at best (a slow link, a fast
         * encoder) the encoder saves 1 - ratio of the link time.  Pages
         * that do not compress (random data: zstd's ratio 0.9995 on the
         * benchmark's rand guest, 17 % of the pair's CPU) never pay, at
         * any link rate: off without waiting for the link to be measured,
         * which it may never be when the CPU is what holds the tunnel. */
        double best = 1.0 - in->ratio;
        v.gain = best;
        v.use = now_on ? best >= MP_ADAPT_OFF_GAIN : best >= MP_ADAPT_ON_GAIN;
        v.why = v.use ? (now_on ? "link not measured: unchanged"
                                : "pages compress again")
                      : "pages do not compress enough";
        return v;
    }
    double enc_w = MAX(in->enc_workers, 1);
    double dec_w = MAX(in->dec_workers, 1);
    double t_link = in->ratio / in->link_bps;
    double t_enc = 1.0 / (in->enc_bps * enc_w);
    double t_dec = in->dec_bps > 0 && isfinite(in->dec_bps)
                       ? 1.0 / (in->dec_bps * dec_w)
                       : 0;
    double enc = MAX(t_link, MAX(t_enc, t_dec));
    double direct = 1.0 / in->link_bps;

    v.direct_s = direct * GIB;
    v.encoded_s = enc * GIB;
    v.gain = 1.0 - enc / direct;
    /* the Linux guest at 100 Mbit/s: zstd went off on its tmpfs's random
     * pages at 4 s and came back at 32 s of 32, while its page cache's
     * pages, among them, went whole: 398 MB on the link in one run, 375
     * in another (docs/benchmarks.md, "zstd at a slow link") */
    if (!in->latency_bound && t_enc * MP_ADAPT_AMPLE <= direct
        && t_dec * MP_ADAPT_AMPLE <= direct) {
        v.use = in->ratio <= MP_ADAPT_AMPLE_MAX_RATIO;
        v.why = v.use ? "the link is slow: it costs no time there"
                      : "pages grow";
        return v;
    }
    v.use = now_on ? v.gain >= MP_ADAPT_OFF_GAIN : v.gain >= MP_ADAPT_ON_GAIN;
    if (v.use)
        v.why = "saves link time";
    else if (t_link >= direct * (1 - MP_ADAPT_ON_GAIN))
        v.why = "pages do not compress enough";
    else
        v.why = "CPU-bound: the link is faster than the encoder";
    return v;
}

void
mp_adapt_gate_init(MpAdaptGate *g)
{
    *g = (MpAdaptGate){.on = TRUE};
}

gboolean
mp_adapt_gate_decide(MpAdaptGate *g, const MpAdaptInput *ai, MpAdaptVerdict *v)
{
    *v = mp_adapt_decide(ai, g->on);
    if (v->use == g->on)
        return FALSE;
    g->on = v->use;
    g->switches++;
    g->passed = 0;
    return TRUE;
}

gboolean
mp_adapt_gate_update(MpAdaptGate *g, guint64 in, guint64 out, guint64 ns,
                     guint64 min_bytes, MpAdaptInput *ai, MpAdaptVerdict *v)
{
    guint64 win_in = in - g->at_in, win_ns = ns - g->at_ns;
    /* the counters only grow; a wrap would decide on nonsense */
    guint64 win_out = out > g->at_out ? out - g->at_out : 0;

    if (win_in < MAX(min_bytes, 1) || !win_ns)
        return FALSE;
    g->at_in = in;
    g->at_out = out;
    g->at_ns = ns;
    ai->ratio = MAX((double)win_out / win_in, 1e-6);
    ai->enc_bps = win_in / (win_ns / 1e9);
    return mp_adapt_gate_decide(g, ai, v);
}

/* ---- the zstd level (see enc-adapt.h) -------------------------------- */

/* 7 rather than 6 and 11 rather than 12: on the pages measured (below)
 * 6 saved 2 % of 3's bytes for 2.7 times its CPU, 7 5 % for 3.3 times;
 * 12 compressed no better than 11.  Nothing above 11: 15 and 19 ran at
 * 1.2 to 1.4 MB/s per core (too slow for any link worth tunnelling),
 * and a context at 19 holds 90 MiB (11: 33 MiB, 3: 10 MiB). */
static const int ladder[MP_LEVEL_RUNGS] = {-5, -1, 1, 3, 7, 9, 11};
/* Prior CPU per byte and ratio, relative to level 3: measured on the
 * benchmark's `comp` guest pages (text from a 32-word list) with the
 * pair's settings (64 KiB batches of one streaming context, window 2^23,
 * long-distance matching; level 3: 130 MB/s per core, ratio 0.235); only
 * used for a rung not measured yet. */
static const double prior_cost[MP_LEVEL_RUNGS] = {0.8, 0.8, 0.7, 1.0,
                                                  3.3, 5.3, 12};
static const double prior_ratio[MP_LEVEL_RUNGS] = {1.15, 1.11,  1.04, 1.0,
                                                   0.953, 0.936, 0.868};

int
mp_level_rung_level(guint rung)
{
    return ladder[MIN(rung, MP_LEVEL_RUNGS - 1)];
}

guint
mp_level_rung_of(int level)
{
    for (guint i = 0; i < MP_LEVEL_RUNGS; i++)
        if (ladder[i] >= level)
            return i;
    return MP_LEVEL_RUNGS - 1;
}

void
mp_level_ctl_init(MpLevelCtl *c, int level)
{
    *c = (MpLevelCtl){
        .rung = mp_level_rung_of(level),
        .last_s = -1,
        .backoff_s = MP_LEVEL_BACKOFF_S,
        .sampled_down_from = -1,
    };
}

static double
est_cost(const MpLevelCtl *c, guint r)
{
    if (c->cost[r] > 0)
        return c->cost[r];
    return c->cost[c->rung] * prior_cost[r] / prior_cost[c->rung];
}

static double
est_ratio(const MpLevelCtl *c, guint r)
{
    if (c->ratio[r] > 0)
        return c->ratio[r];
    return MIN(c->ratio[c->rung] * prior_ratio[r] / prior_ratio[c->rung], 1);
}

/* level_want()'s down on the samples: a move that the samples may take
 * back (sampled_down_from) */
#define WANT_DOWN_ON_SAMPLES (-2)

/* x's moving average with v (x 0: none yet; v not positive: no value) */
static void
average_in(double *x, double v)
{
    if (v > 0 && isfinite(v))
        *x = *x > 0 ? (*x + v) / 2 : v;
}

/* What this window alone asks for (-1, 0, +1, or WANT_DOWN_ON_SAMPLES). */
static int
level_want(const MpLevelCtl *c, const MpLevelSample *s, double now_s,
           const char **why)
{
    gboolean known = s->link_bps > 0 && isfinite(s->link_bps);
    double fill = known ? s->out_bps / s->link_bps : 0;
    guint r = c->rung;

    if (c->last_dir > 0 && now_s - c->last_s < MP_LEVEL_REVERSAL_S
        && fill < MP_LEVEL_LINK_BUSY && c->in_before > 0 && s->in_bps > 0
        && s->in_bps < c->in_before * (1 - MP_LEVEL_SLOWED)) {
        *why = "the stream slowed after the last rise: QEMU needs the CPU";
        return -1;
    }
    /* measured here (past the first window after the move, which mixes
     * two levels) no better than the level below, and dearer: random
     * pages, on which the prior table's gains do not hold.  The Linux
     * guest at 100 Mbit/s with zstd on (its tmpfs): 3 -> 11 in 7 s, 40 %
     * more CPU, and the final pass slow enough to miss the downtime
     * limit (docs/benchmarks.md, "zstd at a slow link") */
    if (r > 0 && c->ratio[r - 1] > 0
        && (c->last_s < 0 || now_s - c->last_s >= MP_LEVEL_DWELL_S)
        && c->ratio[r] >= c->ratio[r - 1] * (1 - MP_LEVEL_RATIO_GAIN)
        && est_cost(c, r - 1) < est_cost(c, r)) {
        *why = "this level compresses no better than the one below";
        return -1;
    }
    /* back from a move down on samples, where they now say the rung
     * above compresses better: on a full link the ratio is the pace */
    if (c->sampled_down_from == (int)r + 1 && known && fill >= MP_LEVEL_LINK_BUSY
        && c->above_rel[r] > 0
        && c->above_rel[r] < 1 - MP_LEVEL_RATIO_GAIN) {
        *why = "the level above compresses these pages better, and the "
               "link is full";
        return 1;
    }
    /* the rung below, cheaper, compresses these pages as well: log-like
     * text (digits) at 1 keeps 0.216 of its bytes, at 3 0.239
     * (docs/benchmarks.md, "A Linux guest whose memory compresses"),
     * where the prior table (text from a word list) says 1 keeps 4 %
     * more.  Judged on the samples (the same batches alone at both
     * levels); the rule above comes back where they change their mind */
    if (r > 0 && c->below_rel[r] > 0 && c->below_rel[r] <= 1.0
        && est_cost(c, r - 1) < est_cost(c, r)) {
        *why = "the level below compresses these pages as well, for less "
               "CPU";
        return WANT_DOWN_ON_SAMPLES;
    }
    if (known && fill >= MP_LEVEL_LINK_BUSY) {
        if (s->busy >= MP_LEVEL_CPU_SHORT) {
            *why = "the link and the workers are both busy";
            return 0;
        }
        if (r + 1 >= MP_LEVEL_RUNGS) {
            *why = "link-bound at the highest level";
            return 0;
        }
        double rn = est_ratio(c, r + 1);
        double need = s->busy * est_cost(c, r + 1) / est_cost(c, r)
                      * c->ratio[r] / MAX(rn, 1e-6);
        /* the samples: on average, and this window's own (the average
         * keeps a region of other pages a window longer than it lasts) */
        if (rn >= c->ratio[r] * (1 - MP_LEVEL_RATIO_GAIN)
            || c->above_rel[r] >= 1 - MP_LEVEL_RATIO_GAIN
            || s->above_rel >= 1 - MP_LEVEL_RATIO_GAIN) {
            *why = "link-bound, but the next level compresses no better";
            return 0;
        }
        if (need > MP_LEVEL_UP_FITS) {
            *why = "link-bound, but the next level needs more CPU than "
                   "the workers have";
            return 0;
        }
        *why = "link-bound: the link is full and the workers have time";
        return 1;
    }
    if (s->busy >= MP_LEVEL_CPU_SHORT) {
        /* the cheaper neighbour, as measured: a lower level is not
         * always faster (on text-like pages -1 is slower than 1) */
        if (r + 1 < MP_LEVEL_RUNGS && c->cost[r + 1] > 0
            && c->cost[r + 1] < c->cost[r] * 0.9) {
            *why = "CPU-bound, and the level above was cheaper here";
            return 1;
        }
        if (r == 0) {
            *why = "CPU-bound at the lowest level";
            return 0;
        }
        if (c->cost[r - 1] > 0 && c->cost[r - 1] >= c->cost[r] * 0.95) {
            *why = "CPU-bound, but the level below was no cheaper here";
            return 0;
        }
        *why = "CPU-bound: batches wait for the workers, the link has room";
        return -1;
    }
    if (r == 0) {
        *why = "at the lowest level";
        return 0;
    }
    /* a link not measured yet may be full: it takes the link holding
     * the tunnel back for 2 s to be trusted (tunnel-link.h) */
    if ((known ? fill < MP_LEVEL_LINK_ROOM : now_s >= MP_LEVEL_UNMEASURED_S)
        && s->busy >= MP_LEVEL_SPENDS
        && est_cost(c, r - 1) < est_cost(c, r) * 0.9) {
        double fill_down = fill * est_ratio(c, r - 1) / c->ratio[r];
        if (!known || fill_down < (MP_LEVEL_LINK_ROOM + MP_LEVEL_LINK_BUSY) / 2) {
            *why = known ? "the link has room: the same pace for less CPU"
                         : "the link never held the stream back: the same "
                           "pace for less CPU";
            return -1;
        }
    }
    *why = "neither the link nor the workers call for a change";
    return 0;
}

int
mp_level_ctl_update(MpLevelCtl *c, const MpLevelSample *s, double now_s,
                    const char **why)
{
    guint r = c->rung;

    if (!(s->enc_bps > 0) || !(s->ratio > 0) || !isfinite(s->enc_bps)
        || !isfinite(s->ratio) || !isfinite(s->busy)
        || !isfinite(s->out_bps)) {
        *why = "not measured";
        return 0;
    }
    /* this rung's numbers: a moving average (the pages change) */
    average_in(&c->cost[r], 1.0 / s->enc_bps);
    average_in(&c->ratio[r], s->ratio);
    average_in(&c->below_rel[r], s->below_rel);
    average_in(&c->above_rel[r], s->above_rel);

    int want = level_want(c, s, now_s, why);
    gboolean on_samples = want == WANT_DOWN_ON_SAMPLES;
    if (on_samples)
        want = -1;
    double in_prev = c->in_last;
    c->in_last = s->in_bps;
    if (want == 0 || want != c->want) {
        c->want = want;
        c->agreed = want ? 1 : 0;
    } else {
        c->agreed++;
    }
    if (!want)
        return 0;
    if (c->agreed < (want > 0 ? MP_LEVEL_AGREE_UP : MP_LEVEL_AGREE)) {
        *why = "waiting for more windows to agree";
        return 0;
    }
    if (c->last_s >= 0 && now_s - c->last_s < MP_LEVEL_DWELL_S) {
        *why = "too soon after the last change";
        return 0;
    }
    if (want == c->blocked && now_s < c->blocked_until_s) {
        *why = "held: this move was undone a moment ago";
        return 0;
    }
    if (c->last_s >= 0 && want == -c->last_dir
        && now_s - c->last_s < MP_LEVEL_REVERSAL_S) {
        /* undoing the last move: the undone direction waits a while,
         * longer each time */
        c->blocked = c->last_dir;
        c->blocked_until_s = now_s + c->backoff_s;
        c->backoff_s = MIN(c->backoff_s * 2, MP_LEVEL_BACKOFF_MAX);
    } else if (c->last_s >= 0 && now_s - c->last_s >= MP_LEVEL_REVERSAL_S) {
        c->backoff_s = MAX(c->backoff_s / 2, MP_LEVEL_BACKOFF_S);
    }
    c->rung = (guint)((int)r + want);
    c->sampled_down_from = on_samples ? (int)r : -1;
    c->in_before = want > 0 ? MAX(in_prev, s->in_bps) : 0;
    c->last_dir = want;
    c->last_s = now_s;
    c->want = 0;
    c->agreed = 0;
    c->moves++;
    return want;
}

void
mp_tables_ctl_init(MpTablesCtl *c)
{
    *c = (MpTablesCtl){0};
}

gboolean
mp_tables_ctl_update(MpTablesCtl *c, guint n, guint64 now, guint64 other,
                     const char **why)
{
    if (n < MP_TABLES_MIN_SAMPLES || !now || !other) {
        *why = "too few samples";
        return FALSE;
    }
    if ((double)other > (double)now * (1 - MP_TABLES_GAIN)) {
        *why = c->small ? "small tables compress as well or better"
                        : "the level's own tables compress as well or better";
        return FALSE;
    }
    c->small = !c->small;
    c->switches++;
    *why = c->small ? "samples compress better with small tables (recent "
                      "matches only)"
                    : "samples compress better with the level's own tables";
    return TRUE;
}
