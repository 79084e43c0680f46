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
