/* cmd-plan.c: `migproxy plan CAPTURE --bandwidth RATE`: how a migration
 * of the captured guest would go at another link rate, with QEMU alone
 * and through the migproxy pair (the model: src/analysis/plan.h,
 * docs/plan.md). */
#include "config.h"
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <glib.h>
#include "commands.h"
#include "metrics-report.h"
#include "parse-common.h"
#include "plan-measure.h"
#include "plan.h"
#include "rate-pacer.h"

/* Exit statuses (as analyze's, documented in the description) */
enum {
    EXIT_INVALID = 1,
    EXIT_USAGE = 2,
    EXIT_NO_INPUT = 3,
    EXIT_FORMAT = 4,
};

typedef struct {
    char *bandwidth;
    double rtt_ms;
    char *encoders;
    double downtime_limit_ms;
    char *max_bandwidth;
    char *capture_rate;
    gboolean auto_converge;
    gboolean json;
    GStrv files;
} PlanArgs;

static GOptionEntry *
plan_entries(gpointer store)
{
    PlanArgs *a = store;
    const GOptionEntry entries[] = {
        {"bandwidth", 'b', 0, G_OPTION_ARG_STRING, &a->bandwidth,
         "Link rate to plan for, as tc writes it (50mbit, 1gbit, 12mbps); "
         "required",
         "RATE"},
        {"rtt", 'r', 0, G_OPTION_ARG_DOUBLE, &a->rtt_ms,
         "Round-trip time of the link in milliseconds (default 0)", "MS"},
        {"encoders", 'e', 0, G_OPTION_ARG_STRING, &a->encoders,
         "The pair's encoders to measure, comma-separated: zero, zstd, "
         "delta, dedup, all, none (default all)",
         "LIST"},
        {"downtime-limit", 'd', 0, G_OPTION_ARG_DOUBLE, &a->downtime_limit_ms,
         "QEMU's downtime-limit in milliseconds (default 300, QEMU's)", "MS"},
        {"max-bandwidth", 0, 0, G_OPTION_ARG_STRING, &a->max_bandwidth,
         "QEMU's max-bandwidth (default QEMU's 128 MiB/s, 1024mibit; "
         "\"none\": no cap)",
         "RATE"},
        {"capture-rate", 0, 0, G_OPTION_ARG_STRING, &a->capture_rate,
         "For inputs without timestamps (stream files): the rate the "
         "stream was written at, to derive the dirty rate (default: the "
         "max-bandwidth)",
         "RATE"},
        {"auto-converge", 0, 0, G_OPTION_ARG_NONE, &a->auto_converge,
         "QEMU's auto-converge capability is on: the guest is throttled "
         "(20 %, then 10 % more, at most 99 %) while it dirties faster "
         "than half the rate sent",
         NULL},
        {"json", 'j', 0, G_OPTION_ARG_NONE, &a->json,
         "Print one JSON document (docs/schema/plan.schema.json)", NULL},
        /* (the synopsis names CAPTURE once, from .operands) */
        {G_OPTION_REMAINING, 0, 0, G_OPTION_ARG_FILENAME_ARRAY, &a->files, NULL,
         NULL},
        {NULL},
    };
    return g_memdup2(entries, sizeof(entries));
}

static char *
fmt_rate(double bps)
{
    if (bps <= 0)
        return g_strdup("-");
    if (bps >= 1e9)
        return g_strdup_printf("%.2f Gbit/s", bps / 1e9);
    if (bps >= 1e6)
        return g_strdup_printf("%.1f Mbit/s", bps / 1e6);
    return g_strdup_printf("%.0f kbit/s", bps / 1e3);
}

static char *
fmt_seconds(double s)
{
    if (!isfinite(s))
        return g_strdup("never");
    if (s < 1)
        return g_strdup_printf("%.0f ms", s * 1000);
    return g_strdup_printf("%.1f s", s);
}

static void
print_row(const char *name, const MpPlanOutcome *o, double least, FILE *out)
{
    g_autofree char *total = fmt_seconds(o->total_s);
    g_autofree char *down = fmt_seconds(o->downtime_s);
    g_autofree char *bytes =
        g_format_size_full((guint64)o->bytes, G_FORMAT_SIZE_IEC_UNITS);
    g_autofree char *lb = least > 0 ? fmt_rate(least) : g_strdup("none");
    g_autofree char *rounds = o->converges ? g_strdup_printf("%u", o->rounds)
                                           : g_strdup_printf(">%u", o->rounds);
    fprintf(out, "%-14s %-7s %-9s %-9s %-11s %-9s %-13s %s\n", name, rounds,
            total, down, bytes, o->converges ? "yes" : "NO", lb, o->limited_by);
}

/* The parts of the document both outputs use. */
typedef struct {
    MpPlanGuest guest;
    MpPlanLink link;
    MpPlanOutcome qemu, pair;
    double least_qemu, least_pair;
    gboolean have_pair;
} Plan;

static json_object *
outcome_json(const MpPlanOutcome *o, double least)
{
    json_object *j = mp_plan_outcome_to_json(o);
    json_object_object_add(j, "least_bandwidth_bps",
                           least > 0 ? json_object_new_int64(least) : NULL);
    return j;
}

static json_object *
plan_json(const char *path, json_object *analysis, const Plan *p,
          const MpPlanEncoders *enc, const MpPlanCodecs *c, GPtrArray *notes,
          gboolean timed)
{
    json_object *doc = json_object_new_object(), *v;
    json_object_object_add(doc, "file", json_object_new_string(path));
    if (json_object_object_get_ex(analysis, "format", &v))
        json_object_object_add(doc, "format", json_object_get(v));

    json_object *link = json_object_new_object();
    json_object_object_add(link, "bandwidth_bps",
                           json_object_new_int64(p->link.bandwidth_bps));
    json_object_object_add(link, "rtt_ms",
                           json_object_new_double(p->link.rtt_s * 1000));
    json_object_object_add(
        link, "downtime_limit_ms",
        json_object_new_double(p->link.downtime_limit_s * 1000));
    json_object_object_add(
        link, "max_bandwidth_bytes_per_s",
        p->link.max_bandwidth_Bps > 0
            ? json_object_new_int64(p->link.max_bandwidth_Bps)
            : NULL);
    json_object_object_add(link, "auto_converge",
                           json_object_new_boolean(p->link.auto_converge));
    json_object_object_add(doc, "link", link);

    const MpPlanGuest *g = &p->guest;
    json_object *gj = json_object_new_object();
    json_object_object_add(gj, "page_size", json_object_new_int(g->page_size));
    json_object_object_add(gj, "ram_pages",
                           json_object_new_int64(g->ram_pages));
    json_object_object_add(gj, "device_bytes",
                           json_object_new_int64(g->device_bytes));
    json_object_object_add(gj, "captured_rounds",
                           json_object_new_int64(json_object_array_length(
                               json_object_object_get(analysis, "rounds"))));
    json_object_object_add(
        gj, "timing", json_object_new_string(timed ? "captured" : "assumed"));
    json_object_object_add(gj, "dirty_pages_per_s",
                           json_object_new_double(g->dirty_pages_per_s));
    json_object_object_add(gj, "working_set_pages",
                           json_object_new_int64(g->working_set_pages));
    json_object_object_add(gj, "qemu_bulk_bytes_per_page",
                           json_object_new_double(g->qemu_bulk_bpp));
    json_object_object_add(gj, "qemu_dirty_bytes_per_page",
                           json_object_new_double(g->qemu_dirty_bpp));
    json_object_object_add(gj, "pair_bulk_bytes_per_page",
                           json_object_new_double(g->pair_bulk_bpp));
    json_object_object_add(gj, "pair_dirty_bytes_per_page",
                           json_object_new_double(g->pair_dirty_bpp));
    json_object_object_add(gj, "pair_encode_pages_per_s",
                           json_object_new_int64(g->pair_encode_pps));
    json_object_object_add(gj, "host_pages_per_s",
                           json_object_new_int64(g->host_pps));
    json_object_object_add(doc, "guest", gj);

    json_object *ej = json_object_new_array();
    const char *names[] = {"zero", "zstd", "delta", "dedup"};
    const gboolean on[] = {enc->zero, enc->zstd, enc->delta, enc->dedup};
    for (guint i = 0; i < G_N_ELEMENTS(names); i++)
        if (on[i])
            json_object_array_add(ej, json_object_new_string(names[i]));
    json_object *cj = json_object_new_object();
    json_object_object_add(cj, "encoders", ej);
    json_object_object_add(cj, "bulk_pages",
                           json_object_new_int64(c->bulk_pages));
    json_object_object_add(cj, "dirty_pages",
                           json_object_new_int64(c->dirty_pages));
    json_object_object_add(cj, "bulk_bytes",
                           json_object_new_int64(c->bulk_bytes));
    json_object_object_add(cj, "dirty_bytes",
                           json_object_new_int64(c->dirty_bytes));
    json_object_object_add(cj, "skipped_pages",
                           json_object_new_int64(c->skipped_pages));
    json_object_object_add(doc, "codecs", cj);

    json_object_object_add(doc, "qemu", outcome_json(&p->qemu, p->least_qemu));
    json_object_object_add(doc, "pair",
                           p->have_pair ? outcome_json(&p->pair, p->least_pair)
                                        : NULL);
    json_object *nj = json_object_new_array();
    for (guint i = 0; i < notes->len; i++)
        json_object_array_add(
            nj, json_object_new_string(g_ptr_array_index(notes, i)));
    json_object_object_add(doc, "notes", nj);
    json_object *errs = json_object_new_array();
    if (json_object_object_get_ex(analysis, "errors", &v))
        for (size_t i = 0; i < json_object_array_length(v); i++)
            json_object_array_add(
                errs, json_object_get(json_object_array_get_idx(v, i)));
    json_object_object_add(doc, "errors", errs);
    return mp_json_with_schema(doc);
}

static void
plan_print(const char *path, const Plan *p, const MpPlanEncoders *enc,
           GPtrArray *notes, FILE *out)
{
    const MpPlanGuest *g = &p->guest;
    g_autofree char *bw = fmt_rate(p->link.bandwidth_bps);
    g_autofree char *ram = g_format_size_full(
        (guint64)g->ram_pages * g->page_size, G_FORMAT_SIZE_IEC_UNITS);
    g_autofree char *dev =
        g_format_size_full((guint64)g->device_bytes, G_FORMAT_SIZE_IEC_UNITS);
    g_autofree char *p_path = mp_printable(path);

    fprintf(out, "plan for %s\n", p_path);
    fprintf(out,
            "guest: %s RAM, dirties %.0f pages/s in a working set of %.0f "
            "pages, %s of device state\n",
            ram, g->dirty_pages_per_s, g->working_set_pages, dev);
    fprintf(out, "bytes per page (bulk/dirty): QEMU %.0f/%.0f",
            g->qemu_bulk_bpp, g->qemu_dirty_bpp);
    if (p->have_pair)
        fprintf(out, ", pair %.0f/%.0f (%s%s%s%s)", g->pair_bulk_bpp,
                g->pair_dirty_bpp, enc->zero ? "zero " : "",
                enc->zstd ? "zstd " : "", enc->delta ? "delta " : "",
                enc->dedup ? "dedup" : "");
    fputc('\n', out);
    if (p->link.max_bandwidth_Bps > 0)
        fprintf(out,
                "link: %s, RTT %.0f ms, downtime limit %.0f ms, QEMU "
                "max-bandwidth %.0f MiB/s\n\n",
                bw, p->link.rtt_s * 1000, p->link.downtime_limit_s * 1000,
                p->link.max_bandwidth_Bps / (1024 * 1024));
    else
        fprintf(out,
                "link: %s, RTT %.0f ms, downtime limit %.0f ms, no QEMU "
                "max-bandwidth\n\n",
                bw, p->link.rtt_s * 1000, p->link.downtime_limit_s * 1000);
    fprintf(out, "%-14s %-7s %-9s %-9s %-11s %-9s %-13s %s\n", "", "ROUNDS",
            "TOTAL", "DOWNTIME", "BYTES", "CONVERGES", "LEAST RATE",
            "LIMITED BY");
    print_row("QEMU alone", &p->qemu, p->least_qemu, out);
    if (p->have_pair)
        print_row("migproxy pair", &p->pair, p->least_pair, out);
    if (p->link.auto_converge && p->qemu.throttle > 0)
        fprintf(out,
                "auto-converge: QEMU alone throttles the guest to %.0f %%"
                " of its CPU\n",
                100 - p->qemu.throttle * 100);
    if (!p->qemu.converges)
        fprintf(out,
                "QEMU alone settles at %.0f dirty pages per round: it would "
                "stop with a downtime limit of %.0f ms\n",
                p->qemu.steady_pages, p->qemu.needed_downtime_limit_s * 1000);
    for (guint i = 0; i < notes->len; i++)
        fprintf(out, "note: %s\n", (char *)g_ptr_array_index(notes, i));
}

static gboolean
parse_rate(const char *what, const char *text, double *bytes_per_s)
{
    g_autoptr(GError) err = NULL;
    guint64 r = mp_rate_parse(text, &err);
    if (!r) {
        fprintf(stderr, "migproxy plan: %s: %s\n", what, err->message);
        return FALSE;
    }
    *bytes_per_s = r;
    return TRUE;
}

static int
plan_run(int argc, char **argv)
{
    PlanArgs a = {.rtt_ms = 0, .downtime_limit_ms = -1};
    g_autofree GOptionEntry *entries = plan_entries(&a);
    g_autoptr(GOptionContext) oc = mp_command_context(&mp_cmd_plan, entries);
    g_autoptr(GError) err = NULL;

    gboolean parsed = g_option_context_parse(oc, &argc, &argv, &err);
    g_auto(GStrv) files = a.files;
    g_autofree char *bandwidth = a.bandwidth;
    g_autofree char *encoders = a.encoders;
    g_autofree char *max_bw = a.max_bandwidth;
    g_autofree char *capture_rate = a.capture_rate;
    if (!parsed) {
        fprintf(stderr, "migproxy plan: %s\n(see migproxy plan --help)\n",
                err->message);
        return EXIT_USAGE;
    }
    if (!files || !files[0] || files[1]) {
        fprintf(stderr, "migproxy plan: give one CAPTURE\n"
                        "(see migproxy plan --help)\n");
        return EXIT_USAGE;
    }
    if (!bandwidth) {
        fprintf(stderr, "migproxy plan: --bandwidth RATE is required\n"
                        "(see migproxy plan --help)\n");
        return EXIT_USAGE;
    }

    Plan p = {0};
    MpPlanEncoders enc;
    double bw_Bps, capture_Bps;
    mp_plan_link_defaults(&p.link);
    if (!parse_rate("--bandwidth", bandwidth, &bw_Bps))
        return EXIT_USAGE;
    p.link.bandwidth_bps = bw_Bps * 8;
    if (a.rtt_ms < 0 || a.rtt_ms > 60000) {
        fprintf(stderr, "migproxy plan: --rtt: %g ms is not within 0..60000\n",
                a.rtt_ms);
        return EXIT_USAGE;
    }
    p.link.rtt_s = a.rtt_ms / 1000;
    p.link.auto_converge = a.auto_converge;
    if (a.downtime_limit_ms >= 0) {
        if (a.downtime_limit_ms == 0 || a.downtime_limit_ms > 2000000) {
            fprintf(stderr,
                    "migproxy plan: --downtime-limit: %g ms is not within "
                    "1..2000000 (QEMU's range)\n",
                    a.downtime_limit_ms);
            return EXIT_USAGE;
        }
        p.link.downtime_limit_s = a.downtime_limit_ms / 1000;
    }
    if (max_bw && g_str_equal(max_bw, "none"))
        p.link.max_bandwidth_Bps = 0;
    else if (max_bw
             && !parse_rate("--max-bandwidth", max_bw,
                            &p.link.max_bandwidth_Bps))
        return EXIT_USAGE;
    capture_Bps = p.link.max_bandwidth_Bps > 0 ? p.link.max_bandwidth_Bps
                                               : MP_PLAN_QEMU_MAX_BW_BPS;
    if (capture_rate
        && !parse_rate("--capture-rate", capture_rate, &capture_Bps))
        return EXIT_USAGE;
    if (!mp_plan_encoders_parse(encoders ? encoders : "all", &enc, &err)) {
        fprintf(stderr, "migproxy plan: %s\n", err->message);
        return EXIT_USAGE;
    }

    gboolean ok;
    MpPlanCodecs codecs;
    g_autoptr(GPtrArray) notes = g_ptr_array_new_with_free_func(g_free);
    json_object *analysis = mp_plan_measure(files[0], &enc, &codecs, &ok), *v;
    int status = ok ? 0 : EXIT_INVALID;
    if (json_object_object_get_ex(analysis, "input_error", &v)) {
        const char *kind = json_object_get_string(v);
        json_object *errs = json_object_object_get(analysis, "errors");
        g_autofree char *e = mp_printable(
            json_object_get_string(json_object_array_get_idx(errs, 0)));
        int st = g_str_equal(kind, "open")     ? EXIT_NO_INPUT
                 : g_str_equal(kind, "format") ? EXIT_FORMAT
                                               : EXIT_INVALID;
        fprintf(stderr, "migproxy plan: %s\n", e);
        json_object_put(analysis); /* (kind lives in it) */
        return st;
    }
    if (json_object_object_get_ex(analysis, "errors", &v))
        for (size_t k = 0; k < json_object_array_length(v); k++) {
            g_autofree char *e = mp_printable(
                json_object_get_string(json_object_array_get_idx(v, k)));
            fprintf(stderr, "migproxy plan: %s: %s\n", files[0], e);
        }
    if (!mp_plan_guest_from_analysis(analysis, capture_Bps, &p.guest, notes,
                                     &err)) {
        fprintf(stderr, "migproxy plan: %s: %s\n", files[0], err->message);
        json_object_put(analysis);
        return EXIT_INVALID;
    }
    json_object *rounds = json_object_object_get(analysis, "rounds");
    gboolean timed = json_object_object_get_ex(
        json_object_array_get_idx(rounds, 0), "start_us", NULL);
    if (json_object_object_get_ex(analysis, "more_sessions", NULL))
        g_ptr_array_add(notes, g_strdup("the capture holds several "
                                        "migrations: the plan is of the "
                                        "first"));
    json_object *ram = json_object_object_get(analysis, "ram");
    if (json_object_get_boolean(json_object_object_get(ram, "after_gap")))
        g_ptr_array_add(notes,
                        g_strdup("the capture has gaps (packets it does not "
                                 "hold): its page counts are a lower bound, "
                                 "and so is the plan's guest"));
    if (codecs.skipped_pages)
        g_ptr_array_add(
            notes,
            g_strdup_printf("%" G_GUINT64_FORMAT " pages the encoders could "
                            "not read (XBZRLE, compressed) are left out of "
                            "their ratios",
                            codecs.skipped_pages));
    if (codecs.bulk_pages) {
        mp_plan_guest_set_codecs(&p.guest, &codecs);
        if (!codecs.dirty_pages)
            g_ptr_array_add(notes,
                            g_strdup("no page was sent twice: the pair's "
                                     "dirty pages are taken to cost what "
                                     "its bulk pages cost"));
    }
    mp_plan_predict(&p.guest, &p.link, MP_PLAN_QEMU, &p.qemu);
    p.least_qemu = mp_plan_least_bandwidth(&p.guest, &p.link, MP_PLAN_QEMU);
    p.have_pair = mp_plan_predict(&p.guest, &p.link, MP_PLAN_PAIR, &p.pair);
    if (p.have_pair)
        p.least_pair = mp_plan_least_bandwidth(&p.guest, &p.link, MP_PLAN_PAIR);

    int out_errno = 0;
    if (a.json) {
        json_object *doc =
            plan_json(files[0], analysis, &p, &enc, &codecs, notes, timed);
        if (puts(json_object_to_json_string_ext(
                doc, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE))
            == EOF)
            out_errno = errno;
        json_object_put(doc);
    } else {
        plan_print(files[0], &p, &enc, notes, stdout);
    }
    json_object_put(analysis);
    errno = 0;
    if (fflush(stdout) != 0 || ferror(stdout) || out_errno) {
        int e = out_errno ? out_errno : errno;
        fprintf(stderr, "migproxy plan: writing the output: %s\n",
                e ? g_strerror(e) : "write error");
        status = EXIT_INVALID;
    }
    return status;
}

const MpCommand mp_cmd_plan = {
    .name = "plan",
    .purpose = "predict a captured guest's migration at another link rate",
    .operands = "CAPTURE",
    .summary =
        "Predict, from a captured migration, how a migration of that guest "
        "goes at a given link rate, with QEMU alone and through the "
        "migproxy pair (migproxy source and dest) with its encoders: "
        "rounds, total time, downtime, bytes, whether it converges, and "
        "the least link rate at which it would.\n\n"
        "CAPTURE is anything migproxy analyze reads: a stream file, a "
        "relay capture directory, a packet capture (pcap, pcapng).  From "
        "it come the pages per round, the dirty rate (pages dirtied per "
        "second between rounds: from the capture's timestamps, or for "
        "stream files from --capture-rate) and the page contents: the "
        "pair's encoders (zero runs, zstd, delta, dedup) run on the "
        "captured pages to measure their ratios.\n\n"
        "The model is QEMU's pre-copy loop: round after round until the "
        "dirty pages fit in the downtime limit at the rate QEMU measures; "
        "with --auto-converge, QEMU's throttling of the guest's CPU "
        "(its default steps).  Equations, "
        "assumptions and an example: docs/plan.md.",
    .description =
        "Examples:\n"
        "  migproxy plan mig.pcap --bandwidth 50mbit\n"
        "  migproxy plan capdir/ --bandwidth 1gbit --rtt 20 --encoders "
        "zero,zstd\n"
        "  migproxy plan vm.mig --bandwidth 200mbit --capture-rate 1gbit "
        "--json | jq .pair.total_s\n\n"
        "Exit status: 0 if the capture was read cleanly (whether the "
        "migration converges or not); 1 if it holds an invalid stream or "
        "no pages, or the output could not be written; 2 on usage errors; "
        "3 if CAPTURE cannot be opened or read; 4 if it is not a known "
        "format.",
    .entries = plan_entries,
    .store_size = sizeof(PlanArgs),
    .run = plan_run,
};
