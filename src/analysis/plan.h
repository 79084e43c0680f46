/* plan.h: what-if planning of a pre-copy migration (`migproxy plan`).
 *
 * A pure model, no I/O and no clock: a guest (how many pages it has, how
 * fast it dirties them, what its pages cost on the wire, directly and
 * through the migproxy pair's encoders) and a link (rate, RTT, QEMU's
 * downtime limit and max-bandwidth) give the migration's rounds, time,
 * downtime and bytes, whether it converges, and the least link rate at
 * which it would.  The equations and what is not modelled are in
 * docs/plan.md.
 *
 *   analysis document (analyze --json of any input)
 *     -> mp_plan_guest_from_analysis() -> MpPlanGuest
 *        (+ the encoders measured: src/offline/plan-measure.h)
 *   MpPlanGuest + MpPlanLink -> mp_plan_predict() -> MpPlanOutcome
 */
#pragma once

#include <glib.h>
#include <json-c/json.h>

/* QEMU's defaults (migration/options.c): downtime-limit 300 ms,
 * max-bandwidth 128 MiB/s. */
#define MP_PLAN_DOWNTIME_LIMIT_S 0.3
#define MP_PLAN_QEMU_MAX_BW_BPS  (128.0 * 1024 * 1024)
/* TCP payload per Ethernet frame on the wire at MTU 1500 with timestamps
 * (what tbf and a NIC count): 1448 of 1514 bytes. */
#define MP_PLAN_WIRE_EFFICIENCY (1448.0 / 1514.0)
/* The receive window Linux grows a connection to by default
 * (net.ipv4.tcp_rmem max 6 MiB, of which about 2/3 is window). */
#define MP_PLAN_TCP_WINDOW (4.0 * 1024 * 1024)
/* Rounds simulated before a migration that still shrinks is called
 * non-converging (QEMU has no limit: it would go on until cancelled). */
#define MP_PLAN_MAX_ROUNDS 1000
/* QEMU's auto-converge defaults: throttle-trigger-threshold 50 %,
 * cpu-throttle-initial 20 %, cpu-throttle-increment 10 %, at most 99 %. */
#define MP_PLAN_THROTTLE_TRIGGER 0.5
#define MP_PLAN_THROTTLE_INITIAL 0.2
#define MP_PLAN_THROTTLE_STEP    0.1
#define MP_PLAN_THROTTLE_MAX     0.99
/* Rounds kept in an outcome for display (the first ones). */
#define MP_PLAN_ROUNDS_SHOWN 32

/* What the model knows of a guest; built by mp_plan_guest_from_analysis()
 * or by hand (tests). */
typedef struct {
    guint32 page_size;
    guint64 ram_pages;   /* pages of the bulk round (all of guest RAM) */
    double device_bytes; /* device state, sent after the guest stopped */
    /* dirtying: D(t) = W (1 - exp(-r t / W)) pages dirty after t seconds
     * (r t when W is 0) */
    double dirty_pages_per_s; /* r */
    double working_set_pages; /* W; 0: unbounded */
    /* bytes on the link per page, headers included: QEMU's stream ... */
    double qemu_bulk_bpp, qemu_dirty_bpp;
    /* ... and the pair's tunnel (<= 0: not measured, no pair outcome) */
    double pair_bulk_bpp, pair_dirty_bpp;
    /* pages per second the pair's encoders take (all workers); <= 0:
     * not limiting */
    double pair_encode_pps;
    /* pages per second the end hosts sent where the link was not what
     * held them back (QEMU's migration thread, the destination's load, a
     * busy machine); <= 0: never seen limiting */
    double host_pps;
} MpPlanGuest;

typedef struct {
    double bandwidth_bps;     /* link rate, bits per second on the wire */
    double rtt_s;             /* round-trip time */
    double downtime_limit_s;  /* QEMU downtime-limit */
    double max_bandwidth_Bps; /* QEMU max-bandwidth, bytes/s; 0: none */
    double wire_efficiency;   /* payload share of wire bytes (0, 1] */
    double tcp_window;        /* bytes in flight at most; 0: no limit */
    gboolean auto_converge;   /* QEMU's auto-converge capability */
} MpPlanLink;

/* Fills `l` with QEMU's and Linux's defaults (above), rate and RTT 0. */
void mp_plan_link_defaults(MpPlanLink *l);

typedef enum {
    MP_PLAN_QEMU, /* QEMU alone, source to destination */
    MP_PLAN_PAIR, /* through migproxy source and dest with the encoders */
} MpPlanPath;

typedef struct {
    double pages;
    double seconds;
    double bytes; /* on the link */
} MpPlanRound;

typedef struct {
    gboolean converges;
    /* pre-copy rounds (the bulk round is 1); for a migration that does
     * not converge, those simulated until it was clear */
    guint rounds;
    double precopy_s;  /* migrate to guest stop; inf if no convergence */
    double downtime_s; /* guest stop to destination running */
    double total_s;
    double bytes;      /* on the link (TCP payload), all rounds */
    double stream_Bps; /* stream bytes per second QEMU writes, bulk round */
    /* what holds the rate back: "link", "max-bandwidth", "tcp-window",
     * "encoders", "hosts" (static strings) */
    const char *limited_by;
    /* does not converge: the dirty pages per round it settles at, and the
     * downtime limit that would let it stop there */
    double steady_pages;
    double needed_downtime_limit_s;
    guint n_shown;
    MpPlanRound round[MP_PLAN_ROUNDS_SHOWN]; /* the first n_shown rounds */
    double final_pages; /* sent after the stop (converging) */
    double throttle;    /* auto-converge: the guest's throttle at the end */
} MpPlanOutcome;

/* Runs the model.  @return FALSE (outcome zeroed) when `path` is the pair
 * and the guest has no pair measurements, or the link rate is not > 0. */
gboolean mp_plan_predict(const MpPlanGuest *g, const MpPlanLink *l,
                         MpPlanPath path, MpPlanOutcome *out);

/* The least link rate (bits/s, within 1 %) at which the migration
 * converges, the other link values as in `l`.  The model converges at
 * every rate above one at which it converges (docs/plan.md says why;
 * with auto-converge, whose throttle steps depend on the round times,
 * that is not guaranteed: the rate found converges, a lower one may too).
 * @return the rate, or 0 when it does not converge at any rate (QEMU's
 * max-bandwidth or the encoders hold it back). */
double mp_plan_least_bandwidth(const MpPlanGuest *g, const MpPlanLink *l,
                               MpPlanPath path);

/* Fits the dirtying (r, W) to observed rounds: round i re-sent `dirty[i]`
 * pages that the guest dirtied during `interval_s[i]` seconds.  `max_w`
 * bounds W (guest RAM pages).  Pairs with interval <= 0 are ignored; no
 * pair leaves r = 0. */
void mp_plan_fit_dirtying(const double *interval_s, const double *dirty,
                          guint n, double max_w, double *rate,
                          double *working_set);

/* A round sent at less than this share of the fastest round of the
 * capture was held back by the hosts, not by the link. */
#define MP_PLAN_HOST_BOUND_SHARE 0.8
/* Rounds shorter than this say nothing reliable about rates. */
#define MP_PLAN_RATE_MIN_PAGES 1000

/* The guest a migration's analysis shows (the document of `analyze
 * --json` of a stream file, capture directory or pcap: ram, rounds,
 * devices, and times where the input has them).  `assumed_Bps`: for
 * inputs without times, the rate the stream is taken to have been written
 * at (> 0).  Pair fields stay 0 (plan-measure.h fills them).  `notes`
 * gets what was assumed, one sentence each (may be NULL).
 * @return FALSE with an error if the document holds no bulk round. */
gboolean mp_plan_guest_from_analysis(json_object *doc, double assumed_Bps,
                                     MpPlanGuest *g, GPtrArray *notes,
                                     GError **error);

/* The outcome as a JSON object (docs/schema/plan.schema.json, "qemu" and
 * "pair"). */
json_object *mp_plan_outcome_to_json(const MpPlanOutcome *o);
