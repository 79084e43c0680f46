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
 * barely pays.  A pure function: no state, no clock.
 */
#pragma once

#include <glib.h>

#define MP_ADAPT_ON_GAIN  0.10
#define MP_ADAPT_OFF_GAIN 0.02

typedef struct {
    double link_bps;  /* measured link rate, bytes/s; <= 0: unknown */
    double enc_bps;   /* encoder: input bytes per CPU-second; <= 0: unknown */
    double dec_bps;   /* peer's decoder, same unit; <= 0: not limiting */
    guint enc_workers; /* threads encoding (>= 1) */
    guint dec_workers; /* threads decoding at the peer (>= 1) */
    double ratio;     /* bytes out / bytes in; <= 0: unknown */
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
