/* test-plan.c: the pre-copy model of `migproxy plan`
 * (src/analysis/plan.c) on synthetic guests, and its input from an
 * analysis document and from a sample stream (src/offline/plan-measure.c).
 */
#include "config.h"
#include <math.h>
#include <criterion/criterion.h>
#include "plan-measure.h"
#include "plan.h"
#include "test-util.h"

/* 128 MiB of RAM, a quarter zero in bulk, dirty pages sent whole. */
static MpPlanGuest
guest(double rate, double ws)
{
    return (MpPlanGuest){
        .page_size = 4096,
        .ram_pages = 32768,
        .device_bytes = 100000,
        .dirty_pages_per_s = rate,
        .working_set_pages = ws,
        .qemu_bulk_bpp = 0.75 * 4104 + 0.25 * 9,
        .qemu_dirty_bpp = 4104,
        .pair_bulk_bpp = 1500,
        .pair_dirty_bpp = 2000,
    };
}

static MpPlanLink
link_at(double bps)
{
    MpPlanLink l;
    mp_plan_link_defaults(&l);
    l.bandwidth_bps = bps;
    return l;
}

/* 10000 pages/s (41 MB/s of dirty pages) over 50 Mbit/s (6 MB/s): every
 * round is longer than the one before, QEMU never stops the guest. */
Test(plan, cannot_converge_at_a_slow_link)
{
    MpPlanGuest g = guest(10000, 0);
    MpPlanLink l = link_at(50e6);
    MpPlanOutcome o;

    cr_assert(mp_plan_predict(&g, &l, MP_PLAN_QEMU, &o));
    cr_assert_not(o.converges);
    cr_assert(isinf(o.total_s));
    cr_assert_gt(o.steady_pages, 0);
    /* the downtime that would let it stop at its steady state is long */
    cr_assert_gt(o.needed_downtime_limit_s, 1.0);
    cr_assert_lt(o.rounds, 10, "settles quickly: %u rounds", o.rounds);
    /* the JSON of a migration that never ends has no times */
    json_object *j = mp_plan_outcome_to_json(&o), *v;
    cr_assert(json_object_object_get_ex(j, "total_s", &v));
    cr_assert_null(v);
    json_object_put(j);
}

/* A busier guest at 10 Gbit/s: QEMU's 128 MiB/s cap (32700 pages/s)
 * outruns 20000 pages/s; it converges in a few rounds. */
Test(plan, converges_at_a_fast_link)
{
    MpPlanGuest g = guest(20000, 0);
    MpPlanLink l = link_at(10e9);
    MpPlanOutcome o;

    cr_assert(mp_plan_predict(&g, &l, MP_PLAN_QEMU, &o));
    cr_assert(o.converges);
    cr_assert_str_eq(o.limited_by, "max-bandwidth");
    cr_assert_geq(o.rounds, 2);
    cr_assert_leq(o.downtime_s, l.downtime_limit_s + 0.01);
    /* the bulk round alone takes its bytes at 128 MiB/s */
    double bulk = g.ram_pages * g.qemu_bulk_bpp / MP_PLAN_QEMU_MAX_BW_BPS;
    cr_assert_float_eq(o.round[0].seconds, bulk, 1e-9);
    cr_assert_gt(o.total_s, bulk);
}

/* A guest that dirties nothing: one round, then the device state. */
Test(plan, idle_guest_one_round)
{
    MpPlanGuest g = guest(0, 0);
    MpPlanLink l = link_at(100e6);
    MpPlanOutcome o;

    cr_assert(mp_plan_predict(&g, &l, MP_PLAN_QEMU, &o));
    cr_assert(o.converges);
    cr_assert_eq(o.rounds, 1);
    cr_assert_float_eq(o.final_pages, 0, 1e-9);
    double link = 100e6 / 8 * MP_PLAN_WIRE_EFFICIENCY;
    cr_assert_float_eq(
        o.total_s, g.ram_pages * g.qemu_bulk_bpp / link + g.device_bytes / link,
        1e-9);
}

/* Converging at one rate means converging at every higher one, and the
 * least rate found is where it switches. */
Test(plan, least_bandwidth_monotone)
{
    MpPlanGuest guests[] = {guest(3000, 0), guest(3000, 8192),
                            guest(20000, 16384), guest(500, 0)};

    for (guint k = 0; k < G_N_ELEMENTS(guests); k++) {
        for (int path = MP_PLAN_QEMU; path <= MP_PLAN_PAIR; path++) {
            MpPlanLink l = link_at(1e6);
            MpPlanOutcome o;
            gboolean seen = FALSE;
            for (double bps = 1e5; bps < 1e11; bps *= 1.1) {
                l.bandwidth_bps = bps;
                cr_assert(mp_plan_predict(&guests[k], &l, path, &o));
                if (seen)
                    cr_assert(o.converges,
                              "guest %u path %d: converges "
                              "below %g bit/s, not at it",
                              k, path, bps);
                seen |= o.converges;
            }
            double least = mp_plan_least_bandwidth(&guests[k], &l, path);
            cr_assert_gt(least, 0);
            l.bandwidth_bps = least;
            mp_plan_predict(&guests[k], &l, path, &o);
            cr_assert(o.converges);
            l.bandwidth_bps = least / 1.02;
            mp_plan_predict(&guests[k], &l, path, &o);
            cr_assert_not(o.converges, "guest %u path %d", k, path);
        }
    }
}

/* Cheaper pages converge at a lower rate; a bounded working set too. */
Test(plan, pair_and_working_set_lower_the_least_rate)
{
    MpPlanGuest g = guest(3000, 0), ws = guest(3000, 4096);
    MpPlanLink l = link_at(1e8);

    double q = mp_plan_least_bandwidth(&g, &l, MP_PLAN_QEMU);
    double p = mp_plan_least_bandwidth(&g, &l, MP_PLAN_PAIR);
    double w = mp_plan_least_bandwidth(&ws, &l, MP_PLAN_QEMU);
    cr_assert_lt(p, q * 0.6, "pair %g, QEMU %g", p, q);
    cr_assert_lt(w, q, "working set %g, unbounded %g", w, q);
}

/* A guest faster at dirtying than QEMU's cap: no rate is enough. */
Test(plan, max_bandwidth_caps_the_least_rate)
{
    MpPlanGuest g = guest(40000, 0);
    MpPlanLink l = link_at(1e8);

    cr_assert_float_eq(mp_plan_least_bandwidth(&g, &l, MP_PLAN_QEMU), 0, 0);
    l.max_bandwidth_Bps = 0; /* no cap: a fast enough link does it */
    cr_assert_gt(mp_plan_least_bandwidth(&g, &l, MP_PLAN_QEMU), 0);
}

/* Encoders slower than the link are switched off: never worse than
 * QEMU's own bytes. */
Test(plan, slow_encoders_fall_back_to_direct)
{
    MpPlanGuest g = guest(1000, 0);
    MpPlanLink l = link_at(1e9);
    MpPlanOutcome q, p;

    g.pair_encode_pps = 1000; /* 4 MB/s of pages */
    mp_plan_predict(&g, &l, MP_PLAN_QEMU, &q);
    mp_plan_predict(&g, &l, MP_PLAN_PAIR, &p);
    cr_assert(p.converges);
    cr_assert_float_eq(p.total_s, q.total_s, 1e-9);
    l.bandwidth_bps = 1e6; /* now the encoders pay */
    mp_plan_predict(&g, &l, MP_PLAN_PAIR, &p);
    cr_assert_str_eq(p.limited_by, "link");
    cr_assert_lt(p.round[0].bytes, g.ram_pages * g.qemu_bulk_bpp);
}

/* No pair measurement, no rate: no outcome. */
Test(plan, refuses_without_inputs)
{
    MpPlanGuest g = guest(1000, 0);
    MpPlanLink l = link_at(0);
    MpPlanOutcome o;

    cr_assert_not(mp_plan_predict(&g, &l, MP_PLAN_QEMU, &o));
    l.bandwidth_bps = 1e8;
    g.pair_bulk_bpp = 0;
    cr_assert_not(mp_plan_predict(&g, &l, MP_PLAN_PAIR, &o));
    cr_assert_float_eq(mp_plan_least_bandwidth(&g, &l, MP_PLAN_PAIR), 0, 0);
}

/* Rounds made by a guest of known dirtying give it back. */
Test(plan, fit_recovers_rate_and_working_set)
{
    const double r = 1500, w = 8000;
    double t[] = {0, 8.0, 3.0, 1.2, 0.5, 0.2}, d[G_N_ELEMENTS(t)];
    for (guint i = 0; i < G_N_ELEMENTS(t); i++)
        d[i] = t[i] > 0 ? -w * expm1(-r * t[i] / w) : 0;
    double fr, fw;
    mp_plan_fit_dirtying(t, d, G_N_ELEMENTS(t), 32768, &fr, &fw);
    cr_assert(fabs(fr - r) / r < 0.1, "rate %g", fr);
    cr_assert(fabs(fw - w) / w < 0.1, "working set %g", fw);

    /* rounds of one length tell no working set: all of RAM is assumed */
    double t1[] = {0, 1, 1, 1}, d1[] = {0, 900, 910, 890};
    mp_plan_fit_dirtying(t1, d1, 4, 32768, &fr, &fw);
    cr_assert_float_eq(fw, 32768, 1e-9);
    cr_assert(fabs(fr - 900) < 30, "rate %g", fr);

    /* nothing re-sent: a guest that does not dirty */
    double t0[] = {0}, d0[] = {0};
    mp_plan_fit_dirtying(t0, d0, 1, 32768, &fr, &fw);
    cr_assert_float_eq(fr, 0, 0);
}

/* The guest an analysis document describes: rounds with times. */
Test(plan, guest_from_analysis)
{
    const char *text =
        "{\"ram\": {\"total\": 134217728},"
        " \"bytes\": {\"devices\": 50000, \"vmdesc\": 2000},"
        " \"rounds\": ["
        "  {\"index\": 1, \"phase\": \"precopy\", \"pages\": 32768,"
        "   \"bytes\": 100000000, \"start_us\": 0},"
        "  {\"index\": 2, \"phase\": \"precopy\", \"pages\": 4000,"
        "   \"bytes\": 16416000, \"start_us\": 8000000},"
        "  {\"index\": 3, \"phase\": \"stop-copy\", \"pages\": 1000,"
        "   \"bytes\": 4104000, \"start_us\": 10000000}]}";
    json_object *doc = json_tokener_parse(text);
    g_autoptr(GPtrArray) notes = g_ptr_array_new_with_free_func(g_free);
    MpPlanGuest g;

    cr_assert(mp_plan_guest_from_analysis(doc, 1e8, &g, notes, NULL));
    cr_assert_eq(g.ram_pages, 32768);
    cr_assert_float_eq(g.device_bytes, 52000, 1e-9);
    cr_assert_float_eq(g.qemu_bulk_bpp, 100000000.0 / 32768, 1e-6);
    cr_assert_float_eq(g.qemu_dirty_bpp, 4104, 1e-6);
    /* 4000 pages in 8 s, 1000 in 2 s: 500 pages/s (a bit more: pages
     * dirtied twice count once in a working set of all RAM) */
    cr_assert(fabs(g.dirty_pages_per_s - 500) < 40, "rate %g",
              g.dirty_pages_per_s);
    cr_assert_eq(notes->len, 0, "timed input, three rounds: no note");
    json_object_put(doc);

    doc = json_tokener_parse("{\"rounds\": []}");
    g_autoptr(GError) err = NULL;
    cr_assert_not(mp_plan_guest_from_analysis(doc, 1e8, &g, NULL, &err));
    cr_assert(strstr(err->message, "no RAM pages"));
    json_object_put(doc);
}

/* The encoders on a sample stream: zero pages cost next to nothing,
 * page bytes less than QEMU's; a subset measures less. */
Test(plan, measure_sample_stream)
{
    g_autofree char *path = g_build_filename(
        MP_SOURCE_ROOT, "samples", "streams", "busy-10.0.mig.zst", NULL);
    MpPlanEncoders all, none;
    MpPlanCodecs ca, cn;
    gboolean ok;

    cr_assert(mp_plan_encoders_parse("all", &all, NULL));
    cr_assert(mp_plan_encoders_parse("none", &none, NULL));
    json_object *doc = mp_plan_measure(path, &all, &ca, &ok);
    cr_assert(ok);
    MpPlanGuest g;
    cr_assert(mp_plan_guest_from_analysis(doc, 1e7, &g, NULL, NULL));
    json_object_put(doc);
    cr_assert_eq(ca.bulk_pages, g.ram_pages);
    cr_assert_gt(ca.dirty_pages, 0);
    mp_plan_guest_set_codecs(&g, &ca);
    cr_assert_lt(g.pair_bulk_bpp, g.qemu_bulk_bpp);
    cr_assert_lt(g.pair_dirty_bpp, g.qemu_dirty_bpp);

    json_object_put(mp_plan_measure(path, &none, &cn, &ok));
    cr_assert_eq(cn.bulk_pages, ca.bulk_pages);
    cr_assert_gt(cn.bulk_bytes, 4.0 * ca.bulk_bytes);

    g_autoptr(GError) err = NULL;
    cr_assert_not(mp_plan_encoders_parse("zero,lz4", &all, &err));
    cr_assert(strstr(err->message, "lz4"));
}

/* A round sent well below the capture's fastest one was held back by the
 * hosts: its page rate caps every round of the plan. */
Test(plan, host_bound_round_caps_the_rate)
{
    const char *text =
        "{\"ram\": {\"total\": 134217728},"
        " \"rounds\": ["
        "  {\"pages\": 32768, \"bytes\": 25000000, \"start_us\": 0,"
        "   \"end_us\": 4000000, \"throughput_bps\": 50000000},"
        "  {\"pages\": 3000, \"bytes\": 12312000, \"start_us\": 4000000,"
        "   \"end_us\": 4500000, \"throughput_bps\": 196992000},"
        "  {\"pages\": 300, \"bytes\": 1231200, \"start_us\": 4500000,"
        "   \"end_us\": 4520000, \"throughput_bps\": 492480000}]}";
    json_object *doc = json_tokener_parse(text);
    g_autoptr(GPtrArray) notes = g_ptr_array_new_with_free_func(g_free);
    MpPlanGuest g;
    MpPlanLink l = link_at(1e9);
    MpPlanOutcome o;

    cr_assert(mp_plan_guest_from_analysis(doc, 1e8, &g, notes, NULL));
    /* round 1: 50 of the 197 Mbit/s of round 2 (round 3 is too short to
     * tell the link's rate) */
    cr_assert_float_eq(g.host_pps, 32768 / 4.0, 1e-6);
    cr_assert_eq(notes->len, 1);
    cr_assert(strstr(g_ptr_array_index(notes, 0), "round 1"));
    cr_assert(mp_plan_predict(&g, &l, MP_PLAN_QEMU, &o));
    cr_assert_str_eq(o.limited_by, "hosts");
    cr_assert_float_eq(o.round[0].seconds, 4.0, 1e-9);
    json_object_put(doc);
}

/* auto-converge: the guest that cannot converge at 50 Mbit/s does once
 * QEMU throttles it, and the throttle climbs from 20 % in steps of 10. */
Test(plan, auto_converge_throttles_until_it_converges)
{
    MpPlanGuest g = guest(10000, 0);
    MpPlanLink l = link_at(50e6);
    MpPlanOutcome o;

    l.auto_converge = TRUE;
    cr_assert(mp_plan_predict(&g, &l, MP_PLAN_QEMU, &o));
    cr_assert(o.converges, "settles at %g pages, throttle %g", o.steady_pages,
              o.throttle);
    cr_assert_geq(o.throttle, MP_PLAN_THROTTLE_INITIAL);
    cr_assert_leq(o.throttle, MP_PLAN_THROTTLE_MAX);
    double steps =
        (o.throttle - MP_PLAN_THROTTLE_INITIAL) / MP_PLAN_THROTTLE_STEP;
    cr_assert(fabs(steps - round(steps)) < 1e-6
                  || o.throttle == MP_PLAN_THROTTLE_MAX,
              "throttle %g", o.throttle);
    /* an idle guest is never throttled */
    g = guest(0, 0);
    cr_assert(mp_plan_predict(&g, &l, MP_PLAN_QEMU, &o));
    cr_assert_float_eq(o.throttle, 0, 0);
}
