/* plan.c: the pre-copy model behind `migproxy plan` (docs/plan.md).
 *
 * QEMU's loop, as the model runs it (migration/migration.c,
 * migration_iteration_run; names only):
 *
 *   round 1 sends every page; round k+1 sends the pages dirtied while
 *   round k was sent; after each round QEMU compares what is dirty
 *   (pages x page size) with what it can send within the downtime limit
 *   at the rate it measured (threshold = rate x downtime-limit); below it,
 *   the guest stops and the rest goes (stop-and-copy).
 */
#include "config.h"
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <gio/gio.h>
#include "mp-record.h"
#include "plan.h"

void
mp_plan_link_defaults(MpPlanLink *l)
{
    memset(l, 0, sizeof(*l));
    l->downtime_limit_s = MP_PLAN_DOWNTIME_LIMIT_S;
    l->max_bandwidth_Bps = MP_PLAN_QEMU_MAX_BW_BPS;
    l->wire_efficiency = MP_PLAN_WIRE_EFFICIENCY;
    l->tcp_window = MP_PLAN_TCP_WINDOW;
}

/* Pages dirty `t` seconds after a sync: r t for a guest that writes new
 * pages all the time, W (1 - e^(-r t / W)) for one that writes at random
 * in a working set of W pages (a page written twice is dirty once). */
static double
dirty_after(const MpPlanGuest *g, double t, double throttle)
{
    /* a throttled vCPU runs (1 - throttle) of the time, and dirties so */
    double r = g->dirty_pages_per_s * (1 - throttle), d;
    double w = g->working_set_pages;
    if (t <= 0 || r <= 0)
        return 0;
    d = w > 0 ? -w * expm1(-r * t / w) : r * t;
    return MIN(d, (double)g->ram_pages);
}

/* How fast a path sends: the link (TCP payload bytes/s) and a cap on the
 * stream bytes QEMU writes (max-bandwidth; the pair's encoders). */
typedef struct {
    double link_Bps;
    const char *link_limit;
    double max_Bps;  /* QEMU max-bandwidth; 0: none */
    double enc_pps;  /* the pair's encoders, pages/s; 0: not limiting */
    double host_pps; /* the end hosts, pages/s; 0: not limiting */
} Rates;

static void
path_rates(const MpPlanGuest *g, const MpPlanLink *l, MpPlanPath path, Rates *r)
{
    double eff = l->wire_efficiency > 0 ? MIN(l->wire_efficiency, 1.0) : 1.0;
    r->link_Bps = l->bandwidth_bps / 8 * eff;
    r->link_limit = "link";
    /* TCP keeps at most a window in flight per round trip */
    if (l->tcp_window > 0 && l->rtt_s > 0
        && l->tcp_window / l->rtt_s < r->link_Bps) {
        r->link_Bps = l->tcp_window / l->rtt_s;
        r->link_limit = "tcp-window";
    }
    r->max_Bps = l->max_bandwidth_Bps;
    r->enc_pps = path == MP_PLAN_PAIR ? MAX(g->pair_encode_pps, 0) : 0;
    r->host_pps = MAX(g->host_pps, 0);
}

/* Seconds to send `pages` costing `link_bpp` on the link and `stream_bpp`
 * in QEMU's stream: the slowest of QEMU's rate limit, the encoders and the
 * link (they run as a pipeline). */
static double
send_time(const Rates *r, double pages, double link_bpp, double stream_bpp,
          const char **limit)
{
    double t_link = pages * link_bpp / r->link_Bps;
    double t_max = r->max_Bps > 0 ? pages * stream_bpp / r->max_Bps : 0;
    double t_enc = r->enc_pps > 0 ? pages / r->enc_pps : 0;
    double t_host = r->host_pps > 0 ? pages / r->host_pps : 0;
    double t = MAX(MAX(t_link, t_max), MAX(t_enc, t_host));
    if (limit)
        *limit = t == t_link   ? r->link_limit
                 : t == t_max  ? "max-bandwidth"
                 : t == t_host ? "hosts"
                               : "encoders";
    return t;
}

/* The pair's encoders switch themselves off where they do not pay
 * (filters/enc-adapt.h): a round goes encoded or as QEMU's bytes,
 * whichever is faster.  *link_bpp becomes the cost of the way chosen. */
static double
pair_time(const Rates *r, double pages, double *link_bpp, double stream_bpp,
          const char **limit)
{
    Rates direct = *r;
    const char *dlimit;
    double t = send_time(r, pages, *link_bpp, stream_bpp, limit);

    direct.enc_pps = 0;
    double td = send_time(&direct, pages, stream_bpp, stream_bpp, &dlimit);
    if (td < t) {
        *link_bpp = stream_bpp;
        if (limit)
            *limit = dlimit;
        return td;
    }
    return t;
}

static double
round_time(const Rates *r, gboolean pair, double pages, double *link_bpp,
           double stream_bpp, const char **limit)
{
    return pair ? pair_time(r, pages, link_bpp, stream_bpp, limit)
                : send_time(r, pages, *link_bpp, stream_bpp, limit);
}

/* Seconds for the device state: bytes through the link and the cap. */
static double
device_time(const Rates *r, double bytes)
{
    double t = bytes / r->link_Bps;
    return r->max_Bps > 0 ? MAX(t, bytes / r->max_Bps) : t;
}

gboolean
mp_plan_predict(const MpPlanGuest *g, const MpPlanLink *l, MpPlanPath path,
                MpPlanOutcome *out)
{
    gboolean pair = path == MP_PLAN_PAIR;
    double link_bulk = pair ? g->pair_bulk_bpp : g->qemu_bulk_bpp;
    double link_dirty = pair ? g->pair_dirty_bpp : g->qemu_dirty_bpp;
    Rates r;

    memset(out, 0, sizeof(*out));
    if (l->bandwidth_bps <= 0 || link_bulk <= 0 || link_dirty <= 0
        || g->qemu_bulk_bpp <= 0 || g->qemu_dirty_bpp <= 0)
        return FALSE;
    path_rates(g, l, path, &r);

    double pages = g->ram_pages, precopy = 0, bytes = 0;
    /* auto-converge: the throttle, syncs in a row that found the guest
     * dirtying fast, and the period since the last check */
    double throttle = 0, per_s = 0, per_dirty = 0, per_sent = 0;
    guint high = 0;
    for (guint k = 1;; k++) {
        double lbpp = k == 1 ? link_bulk : link_dirty;
        double sbpp = k == 1 ? g->qemu_bulk_bpp : g->qemu_dirty_bpp;
        const char *limit;
        double t = round_time(&r, pair, pages, &lbpp, sbpp, &limit);

        if (k == 1) {
            out->limited_by = limit;
            out->stream_Bps = t > 0 ? pages * sbpp / t : 0;
        }
        if (out->n_shown < MP_PLAN_ROUNDS_SHOWN)
            out->round[out->n_shown++] = (MpPlanRound){pages, t, pages * lbpp};
        precopy += t;
        bytes += pages * lbpp;
        out->rounds = k;

        /* QEMU's test: what is dirty now against what its measured rate
         * sends within the limit (the rate of the stream it writes) */
        double dirty = dirty_after(g, t, throttle);
        double rate = t > 0 ? pages * sbpp / t : INFINITY;
        out->throttle = throttle;
        if (dirty * g->page_size <= rate * l->downtime_limit_s) {
            double fbpp = link_dirty;
            double dt =
                round_time(&r, pair, dirty, &fbpp, g->qemu_dirty_bpp, NULL)
                + device_time(&r, g->device_bytes);
            out->converges = TRUE;
            out->final_pages = dirty;
            out->precopy_s = precopy;
            /* the last byte still crosses the link's one-way delay */
            out->downtime_s = dt + l->rtt_s / 2;
            /* migrate opens a TCP connection: one round trip */
            out->total_s = l->rtt_s + precopy + out->downtime_s;
            out->bytes = bytes + dirty * fbpp + g->device_bytes;
            return TRUE;
        }
        /* The dirty set after round k >= 2 is a growing function of the
         * set round k sent (fixed cost per page from round 2 on): once it
         * no longer shrinks it never will (unless auto-converge still
         * has a throttle step to take); one that shrinks ever more
         * slowly tends to a fixed point above the threshold. */
        /* QEMU's auto-converge at each sync at least a second after the
         * last check: dirty bytes of the period above half the bytes
         * sent, twice in a row, throttle the guest (20 %, then 10 more
         * each time, at most 99 %) */
        if (l->auto_converge) {
            per_s += t;
            per_dirty += dirty * g->page_size;
            per_sent += pages * sbpp;
            if (per_s >= 1.0) {
                if (per_dirty > per_sent * MP_PLAN_THROTTLE_TRIGGER
                    && ++high >= 2) {
                    high = 0;
                    throttle = throttle > 0
                                   ? MIN(throttle + MP_PLAN_THROTTLE_STEP,
                                         MP_PLAN_THROTTLE_MAX)
                                   : MP_PLAN_THROTTLE_INITIAL;
                }
                per_s = per_dirty = per_sent = 0;
            }
        }
        gboolean settled =
            !l->auto_converge || throttle >= MP_PLAN_THROTTLE_MAX - 1e-9;
        if ((k >= 2 && settled && dirty > pages * (1 - 1e-4))
            || k >= MP_PLAN_MAX_ROUNDS) {
            out->steady_pages = dirty;
            out->needed_downtime_limit_s = dirty * g->page_size / rate;
            out->precopy_s = INFINITY;
            out->downtime_s = INFINITY;
            out->total_s = INFINITY;
            out->bytes = bytes;
            return TRUE;
        }
        pages = dirty;
    }
}

double
mp_plan_least_bandwidth(const MpPlanGuest *g, const MpPlanLink *l,
                        MpPlanPath path)
{
    MpPlanLink probe = *l;
    MpPlanOutcome o;
    double lo = 1e3, hi = 1e13; /* 1 kbit/s .. 10 Tbit/s */

    probe.bandwidth_bps = hi;
    if (!mp_plan_predict(g, &probe, path, &o) || !o.converges)
        return 0;
    probe.bandwidth_bps = lo;
    if (mp_plan_predict(g, &probe, path, &o) && o.converges)
        return lo;
    /* converges at hi, not at lo: halve the ratio (log scale) */
    while (hi / lo > 1.01) {
        double mid = sqrt(lo * hi);
        probe.bandwidth_bps = mid;
        mp_plan_predict(g, &probe, path, &o);
        if (o.converges)
            hi = mid;
        else
            lo = mid;
    }
    return hi;
}

/* Sum of squared relative errors of the dirtying (r, w) on the pairs. */
static double
fit_error(const double *t, const double *d, guint n, double r, double w)
{
    MpPlanGuest g = {.dirty_pages_per_s = r,
                     .working_set_pages = w,
                     .ram_pages = G_MAXUINT64};
    double e = 0;
    for (guint i = 0; i < n; i++) {
        if (t[i] <= 0)
            continue;
        double x = (dirty_after(&g, t[i], 0) - d[i]) / MAX(d[i], 1.0);
        e += x * x;
    }
    return e;
}

/* For a working set w, the rate that fits: each pair's own rate (the
 * curve through it) averaged with the pairs' dirty pages as weights. */
static double
fit_rate(const double *t, const double *d, guint n, double w)
{
    double num = 0, den = 0;
    for (guint i = 0; i < n; i++) {
        if (t[i] <= 0)
            continue;
        double ri = d[i] < w ? -w * log1p(-d[i] / w) / t[i] : INFINITY;
        if (!isfinite(ri))
            continue;
        num += ri * MAX(d[i], 1.0);
        den += MAX(d[i], 1.0);
    }
    return den > 0 ? num / den : 0;
}

void
mp_plan_fit_dirtying(const double *interval_s, const double *dirty, guint n,
                     double max_w, double *rate, double *working_set)
{
    double dmax = 0;
    guint used = 0;

    for (guint i = 0; i < n; i++)
        if (interval_s[i] > 0) {
            dmax = MAX(dmax, dirty[i]);
            used++;
        }
    *rate = 0;
    *working_set = max_w;
    if (!used || dmax <= 0)
        return;
    /* W can be no smaller than a round the guest dirtied */
    double wmin = MIN(dmax * 1.001 + 1, max_w), best_w = max_w;
    double best_r = fit_rate(interval_s, dirty, n, max_w);
    double best_e = fit_error(interval_s, dirty, n, best_r, max_w);
    /* from the largest W down: a smaller one must fit clearly better (by
     * a tenth), since with rounds of similar length every W fits and the
     * larger one is the cautious guess for longer rounds */
    for (int s = 1; s <= 100 && wmin < max_w; s++) {
        double w = max_w * pow(wmin / max_w, s / 100.0);
        double r = fit_rate(interval_s, dirty, n, w);
        double e = fit_error(interval_s, dirty, n, r, w);
        if (e < 0.9 * best_e - 1e-12) {
            best_e = e;
            best_r = r;
            best_w = w;
        }
    }
    *rate = best_r;
    *working_set = best_w;
}

static void note(GPtrArray *notes, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static void
note(GPtrArray *notes, const char *fmt, ...)
{
    va_list ap;
    if (!notes)
        return;
    va_start(ap, fmt);
    g_ptr_array_add(notes, g_strdup_vprintf(fmt, ap));
    va_end(ap);
}

static double
jnum(json_object *o, const char *key)
{
    json_object *v;
    return json_object_object_get_ex(o, key, &v) && v
               ? json_object_get_double(v)
               : 0;
}

/* The hosts' page rate: the fastest of the rounds that the link did not
 * hold back, those sent well below the fastest round's bit rate (the
 * link is at least that fast).  Short rounds are left out: their span is
 * a few packets. */
static void
host_rate(json_object *rounds, gsize n, MpPlanGuest *g, GPtrArray *notes)
{
    double max_bps = 0, pps = 0, at_bps = 0;
    guint which = 0;

    for (gsize i = 0; i < n; i++) {
        json_object *r = json_object_array_get_idx(rounds, i);
        if (jnum(r, "pages") >= MP_PLAN_RATE_MIN_PAGES)
            max_bps = MAX(max_bps, jnum(r, "throughput_bps"));
    }
    for (gsize i = 0; i < n; i++) {
        json_object *r = json_object_array_get_idx(rounds, i);
        double span = (jnum(r, "end_us") - jnum(r, "start_us")) / 1e6;
        double bps = jnum(r, "throughput_bps");
        if (jnum(r, "pages") < MP_PLAN_RATE_MIN_PAGES || span <= 0
            || bps >= MP_PLAN_HOST_BOUND_SHARE * max_bps)
            continue;
        if (jnum(r, "pages") / span > pps) {
            pps = jnum(r, "pages") / span;
            at_bps = bps;
            which = i + 1;
        }
    }
    g->host_pps = pps;
    if (pps > 0)
        note(notes,
             "round %u went at %.1f Mbit/s, below the %.1f Mbit/s the "
             "capture reached: the hosts, not the link, held it back; "
             "no round is taken to go faster than its %.0f pages/s",
             which, at_bps / 1e6, max_bps / 1e6, pps);
}

gboolean
mp_plan_guest_from_analysis(json_object *doc, double assumed_Bps,
                            MpPlanGuest *g, GPtrArray *notes, GError **error)
{
    json_object *rounds, *ram, *bytes;
    gsize n;

    memset(g, 0, sizeof(*g));
    g->page_size = MP_TARGET_PAGE_SIZE;
    if (!json_object_object_get_ex(doc, "rounds", &rounds)
        || !json_object_is_type(rounds, json_type_array)
        || (n = json_object_array_length(rounds)) == 0) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                    "the capture holds no RAM pages (no rounds): nothing "
                    "to plan from");
        return FALSE;
    }
    json_object *r1 = json_object_array_get_idx(rounds, 0);
    double r1_pages = jnum(r1, "pages");
    if (r1_pages <= 0) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                    "the capture's first round holds no pages");
        return FALSE;
    }
    double ram_total =
        json_object_object_get_ex(doc, "ram", &ram) ? jnum(ram, "total") : 0;
    /* the bulk round sends every page of every block */
    g->ram_pages = MAX((guint64)(ram_total / g->page_size), (guint64)r1_pages);
    g->qemu_bulk_bpp = jnum(r1, "bytes") / r1_pages;
    /* device state: sliced sections, or (a live capture without its
     * vmdesc) the bytes the parser could not follow, device state too */
    if (json_object_object_get_ex(doc, "bytes", &bytes))
        g->device_bytes = jnum(bytes, "devices") + jnum(bytes, "vmdesc")
                          + jnum(bytes, "opaque");

    gboolean timed = json_object_object_get_ex(r1, "start_us", NULL);
    g_autofree double *t = g_new0(double, n);
    g_autofree double *d = g_new0(double, n);
    double dirty_bytes = 0, dirty_pages = 0;
    for (gsize i = 1; i < n; i++) {
        json_object *prev = json_object_array_get_idx(rounds, i - 1);
        json_object *cur = json_object_array_get_idx(rounds, i);
        json_object *ph;
        /* post-copy pages are requests and the background scan, not a
         * round of dirty pages */
        if (json_object_object_get_ex(cur, "phase", &ph)
            && g_strcmp0(json_object_get_string(ph), "postcopy") == 0)
            break;
        d[i] = jnum(cur, "pages");
        t[i] = timed ? (jnum(cur, "start_us") - jnum(prev, "start_us")) / 1e6
                     : jnum(prev, "bytes") / assumed_Bps;
        dirty_bytes += jnum(cur, "bytes");
        dirty_pages += d[i];
    }
    g->qemu_dirty_bpp =
        dirty_pages > 0 ? dirty_bytes / dirty_pages : g->page_size + 8.0;
    if (dirty_pages <= 0)
        note(notes, "no page was sent twice: a re-sent page is taken to "
                    "cost a page and its 8-byte header");
    mp_plan_fit_dirtying(t, d, n, g->ram_pages, &g->dirty_pages_per_s,
                         &g->working_set_pages);
    if (timed)
        host_rate(rounds, n, g, notes);
    if (!timed)
        note(notes,
             "the input has no timestamps: each round is taken to have "
             "been sent at %.1f MiB/s to derive the dirty rate",
             assumed_Bps / (1024 * 1024));
    if (n < 3)
        note(notes, "fewer than three rounds: the working set is taken to "
                    "be all of RAM");
    return TRUE;
}

static json_object *
jd(double x)
{
    /* inf (no convergence) is null in JSON */
    return isfinite(x) ? json_object_new_double(x) : NULL;
}

json_object *
mp_plan_outcome_to_json(const MpPlanOutcome *o)
{
    json_object *j = json_object_new_object(), *rs = json_object_new_array();

    json_object_object_add(j, "converges",
                           json_object_new_boolean(o->converges));
    json_object_object_add(j, "rounds", json_object_new_int64(o->rounds));
    json_object_object_add(j, "precopy_s", jd(o->precopy_s));
    json_object_object_add(j, "downtime_ms", jd(o->downtime_s * 1000));
    json_object_object_add(j, "total_s", jd(o->total_s));
    json_object_object_add(j, "bytes", json_object_new_int64(o->bytes));
    json_object_object_add(j, "stream_bytes_per_s",
                           json_object_new_int64(o->stream_Bps));
    json_object_object_add(j, "throttle_pct",
                           json_object_new_double(o->throttle * 100));
    json_object_object_add(j, "limited_by",
                           json_object_new_string(o->limited_by));
    if (o->converges) {
        json_object_object_add(j, "final_pages",
                               json_object_new_int64(o->final_pages));
    } else {
        json_object_object_add(j, "steady_pages",
                               json_object_new_int64(o->steady_pages));
        json_object_object_add(j, "needed_downtime_limit_ms",
                               jd(o->needed_downtime_limit_s * 1000));
    }
    for (guint i = 0; i < o->n_shown; i++) {
        json_object *r = json_object_new_object();
        json_object_object_add(r, "pages",
                               json_object_new_int64(o->round[i].pages));
        json_object_object_add(r, "seconds", jd(o->round[i].seconds));
        json_object_object_add(r, "bytes",
                               json_object_new_int64(o->round[i].bytes));
        json_object_array_add(rs, r);
    }
    json_object_object_add(j, "round_list", rs);
    return j;
}
