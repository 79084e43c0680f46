/* analysis-print.c: the human summary, rendered from the JSON document so
 * that text and --json can never disagree. */
#include <stdlib.h>
#include <string.h>
#include "analysis.h"
#include "json-util.h"
#include "parse-common.h"

/* Every string printed came from a stream or a capture's index.json:
 * printable, whatever it holds (parse-common.h); `keep` holds the copies
 * until the summary is printed. */
static const char *
str(GPtrArray *keep, json_object *v)
{
    const char *s = json_object_get_string(v);
    if (!s)
        return "(null)";
    char *p = mp_printable(s);
    g_ptr_array_add(keep, p);
    return p;
}

static const char *
key(GPtrArray *keep, const char *k)
{
    char *p = mp_printable(k);
    g_ptr_array_add(keep, p);
    return p;
}

/* The document's numbers; 0: missing or null */
static gint64
geti(json_object *o, const char *key)
{
    return mp_json_int_or(o, key, 0);
}

static char *
human(gint64 n)
{
    return g_format_size_full(n, G_FORMAT_SIZE_IEC_UNITS);
}

static int
cmp_device_bytes(const void *x, const void *y)
{
    gint64 a = geti(*(json_object *const *)x, "bytes");
    gint64 b = geti(*(json_object *const *)y, "bytes");
    return (a < b) - (a > b);
}

static double
getd(json_object *o, const char *key)
{
    json_object *v = mp_json_get(o, key);
    return v ? json_object_get_double(v) : -1;
}

static char *
latency(json_object *o, const char *key)
{
    json_object *v = mp_json_get(o, key);
    if (!v)
        return g_strdup("-");
    gint64 us = json_object_get_int64(v);
    return us >= 1000 ? g_strdup_printf("%.1f ms", us / 1000.0)
                      : g_strdup_printf("%" G_GINT64_FORMAT " us", us);
}

/* What only live streams have (the relay's report, a capture directory):
 * multifd, the return path, timing and the channels. */
static void
print_live(json_object *doc, FILE *out, GPtrArray *keep)
{
    json_object *mfd = mp_json_get(doc, "multifd");
    if (mfd) {
        g_autofree char *mb = human(geti(mfd, "bytes"));
        fprintf(out,
                "Multifd: %" G_GINT64_FORMAT " channels, %" G_GINT64_FORMAT
                " packets (%" G_GINT64_FORMAT " SYNC), %" G_GINT64_FORMAT
                " normal and %" G_GINT64_FORMAT " zero pages, %s "
                "(multifd-bytes)\n",
                geti(mfd, "channels"), geti(mfd, "packets"),
                geti(mfd, "sync_packets"), geti(mfd, "normal_pages"),
                geti(mfd, "zero_pages"), mb);
    }
    json_object *rp = mp_json_get(mp_json_get(doc, "return_path"), "messages");
    if (rp) {
        fprintf(out, "Return path:");
        json_object_object_foreach(rp, name, n)
            fprintf(out, " %s=%" G_GINT64_FORMAT, key(keep, name),
                    json_object_get_int64(n));
        fprintf(out, "\n");
    }
    json_object *chans = mp_json_get(doc, "channels");
    if (!chans)
        return;
    json_object *dt = mp_json_get(doc, "downtime");
    fprintf(out, "\nLive: %s, %.0f ms", str(keep, mp_json_get(doc, "outcome")),
            getd(doc, "total_ms"));
    if (mp_json_get(doc, "downtime_ms"))
        fprintf(out, ", downtime %.1f ms on the wire (until %s)",
                getd(doc, "downtime_ms"),
                str(keep, mp_json_get(dt, "end_marker")));
    fprintf(out, "\n");
    json_object *phases = mp_json_get(doc, "phases");
    for (size_t i = 0; phases && i < json_object_array_length(phases); i++) {
        json_object *p = json_object_array_get_idx(phases, i);
        fprintf(out, "%s%s %.0f-%.0f ms",
                i ? ", " : "  phases: ", str(keep, mp_json_get(p, "phase")),
                getd(p, "start_ms"), getd(p, "end_ms"));
    }
    if (phases && json_object_array_length(phases))
        fprintf(out, "\n");
    json_object *pc = mp_json_get(doc, "postcopy");
    json_object *lat = mp_json_get(pc, "latency_us");
    if (lat && geti(lat, "count")) {
        g_autofree char *p50 = latency(lat, "p50");
        g_autofree char *p99 = latency(lat, "p99");
        g_autofree char *max = latency(lat, "max");
        fprintf(out,
                "  page requests: %" G_GINT64_FORMAT " answered, latency p50 %s, "
                "p99 %s, max %s\n",
                geti(lat, "count"), p50, p99, max);
    }
    fprintf(out, "  %7s %-9s %12s %12s  %s\n", "channel", "kind", "to-dst",
            "to-src", "end");
    for (size_t i = 0; i < json_object_array_length(chans); i++) {
        json_object *c = json_object_array_get_idx(chans, i);
        json_object *d = mp_json_get(c, "to_dst"),
                    *s = mp_json_get(c, "to_src");
        g_autofree char *db = human(geti(d, "bytes"));
        g_autofree char *sb = human(geti(s, "bytes"));
        json_object *de = mp_json_get(d, "end"), *se = mp_json_get(s, "end");
        fprintf(out, "  %7" G_GINT64_FORMAT " %-9s %12s %12s  %s/%s%s\n",
                geti(c, "channel"), str(keep, mp_json_get(c, "kind")), db, sb,
                de ? str(keep, de) : "-", se ? str(keep, se) : "-",
                json_object_get_boolean(mp_json_get(c, "partial"))
                    ? " (partial)"
                    : "");
    }
}

void
mp_analysis_print(json_object *doc, FILE *out)
{
    g_autoptr(GPtrArray) keep = g_ptr_array_new_with_free_func(g_free);
    json_object *stream = mp_json_get(doc, "stream"),
                *ram = mp_json_get(doc, "ram");
    json_object *machine = mp_json_get(stream, "machine");
    g_autofree char *sz = human(geti(stream, "bytes"));

    fprintf(out, "Stream: %s, machine %s, %s\n",
            json_object_get_boolean(mp_json_get(stream, "complete"))
                ? "complete (ends with EOF)"
                : "incomplete (no EOF)",
            machine ? str(keep, machine) : "(no configuration)", sz);
    json_object *secs = mp_json_get(stream, "sections");
    fprintf(out, "Sections: %" G_GINT64_FORMAT " START, %" G_GINT64_FORMAT
                 " PART, %" G_GINT64_FORMAT " END, %" G_GINT64_FORMAT " FULL\n",
            geti(secs, "start"), geti(secs, "part"), geti(secs, "end"),
            geti(secs, "full"));
    if (mp_json_get(stream, "opaque_from"))
        fprintf(out,
                "Passed through unparsed from offset %" G_GINT64_FORMAT
                ": %s\n",
                geti(stream, "opaque_from"),
                str(keep, mp_json_get(stream, "opaque_reason")));

    json_object *blocks = mp_json_get(ram, "blocks");
    g_autofree char *total = human(geti(ram, "total"));
    fprintf(out, "\nRAM: %s in %zu blocks\n", total,
            json_object_array_length(blocks));
    if (json_object_array_length(blocks))
        fprintf(out, "  %-28s %10s %10s %10s %10s %10s\n", "block", "size",
                "normal", "zero", "xbzrle", "compressed");
    for (size_t i = 0; i < json_object_array_length(blocks); i++) {
        json_object *b = json_object_array_get_idx(blocks, i);
        json_object *p = mp_json_get(b, "pages");
        g_autofree char *bs = human(geti(b, "size"));
        fprintf(out,
                "  %-28s %10s %10" G_GINT64_FORMAT " %10" G_GINT64_FORMAT
                " %10" G_GINT64_FORMAT " %10" G_GINT64_FORMAT "\n",
                str(keep, mp_json_get(b, "name")), bs, geti(p, "normal"),
                geti(p, "zero"), geti(p, "xbzrle"), geti(p, "compressed"));
    }
    json_object *pages = mp_json_get(ram, "pages");
    g_autofree char *rb = human(geti(ram, "bytes"));
    fprintf(out, "Pages: %" G_GINT64_FORMAT " normal, %" G_GINT64_FORMAT
                 " zero, %" G_GINT64_FORMAT " xbzrle, %" G_GINT64_FORMAT
                 " compressed; RAM records %s\n",
            geti(pages, "normal"), geti(pages, "zero"), geti(pages, "xbzrle"),
            geti(pages, "compressed"), rb);
    if (json_object_get_boolean(mp_json_get(ram, "after_gap")))
        fprintf(out,
                "  after gaps in the capture: %" G_GINT64_FORMAT
                " resumes, %" G_GINT64_FORMAT " bytes skipped; the counts "
                "are a lower bound\n",
                geti(ram, "resyncs"), geti(ram, "resync_skipped_bytes"));
    json_object *phases = mp_json_get(ram, "phases");
    json_object_object_foreach(phases, name, ph)
    {
        if (!geti(ph, "pages"))
            continue;
        g_autofree char *pb = human(geti(ph, "bytes"));
        fprintf(out, "  %-10s %10" G_GINT64_FORMAT " pages  %s\n",
                key(keep, name), geti(ph, "pages"), pb);
    }

    json_object *rounds = mp_json_get(doc, "rounds");
    fprintf(out, "\nRounds: %zu (a round is one pass of the dirty-page scan)\n",
            json_object_array_length(rounds));
    if (json_object_array_length(rounds))
        fprintf(out, "  %5s %-10s %10s %10s %12s\n", "round", "phase", "pages",
                "dirty", "bytes");
    for (size_t i = 0; i < json_object_array_length(rounds); i++) {
        json_object *r = json_object_array_get_idx(rounds, i);
        g_autofree char *b = human(geti(r, "bytes"));
        fprintf(out,
                "  %5" G_GINT64_FORMAT " %-10s %10" G_GINT64_FORMAT
                " %10" G_GINT64_FORMAT " %12s%s\n",
                geti(r, "index"), str(keep, mp_json_get(r, "phase")),
                geti(r, "pages"), geti(r, "dirty_pages"), b,
                json_object_get_boolean(mp_json_get(r, "after_gap"))
                    ? "  after a gap (may be incomplete)"
                    : "");
    }

    fprintf(out, "\nCommands:");
    json_object *cmds = mp_json_get(doc, "commands");
    if (!json_object_object_length(cmds))
        fprintf(out, " none");
    json_object_object_foreach(cmds, cname, cnt)
        fprintf(out, " %s=%" G_GINT64_FORMAT, key(keep, cname),
                json_object_get_int64(cnt));
    fprintf(out, "\n");

    json_object *disk = mp_json_get(doc, "disk");
    if (disk) {
        g_autofree char *db = human(geti(disk, "data_bytes"));
        fprintf(out, "Disk (block migration): %" G_GINT64_FORMAT
                     " chunks of 1 MiB, %" G_GINT64_FORMAT " zero, %s of data\n",
                geti(disk, "chunks"), geti(disk, "zero_chunks"), db);
    }
    json_object *pc = mp_json_get(doc, "postcopy");
    if (pc
        && (geti(pc, "packaged_bytes") || geti(pc, "discard_ranges")
            || geti(pc, "requests")))
        fprintf(out, "Postcopy: package %" G_GINT64_FORMAT
                     " bytes, %" G_GINT64_FORMAT " discarded ranges, %"
                     G_GINT64_FORMAT " page requests\n",
                geti(pc, "packaged_bytes"), geti(pc, "discard_ranges"),
                geti(pc, "requests"));

    print_live(doc, out, keep);

    json_object *devs = mp_json_get(doc, "devices");
    size_t nd = json_object_array_length(devs);
    fprintf(out, "\nDevices: %zu sections", nd);
    GPtrArray *sorted = g_ptr_array_new();
    gint64 dev_total = 0;
    for (size_t i = 0; i < nd; i++) {
        json_object *d = json_object_array_get_idx(devs, i);
        g_ptr_array_add(sorted, d);
        dev_total += geti(d, "bytes");
    }
    if (nd && mp_json_get(json_object_array_get_idx(devs, 0), "bytes")) {
        g_autofree char *dt = human(dev_total);
        fprintf(out, ", %s; largest first:\n", dt);
        qsort(sorted->pdata, sorted->len, sizeof(gpointer), cmp_device_bytes);
        for (guint i = 0; i < sorted->len && i < 12; i++) {
            json_object *d = g_ptr_array_index(sorted, i);
            fprintf(out,
                    "  %-32s inst %-3" G_GINT64_FORMAT " v%-3" G_GINT64_FORMAT
                    " %10" G_GINT64_FORMAT " bytes\n",
                    str(keep, mp_json_get(d, "name")), geti(d, "instance"),
                    geti(d, "version"), geti(d, "bytes"));
        }
        if (sorted->len > 12)
            fprintf(out, "  ... and %u more\n", sorted->len - 12);
    } else {
        fprintf(out, "%s\n", nd ? " (sizes unknown: no vmdesc)" : "");
    }
    g_ptr_array_free(sorted, TRUE);

    fprintf(out, "\nBytes by category:\n");
    json_object *bytes = mp_json_get(doc, "bytes");
    gint64 all = geti(stream, "bytes");
    json_object_object_foreach(bytes, cat, n)
    {
        gint64 v = json_object_get_int64(n);
        if (!v)
            continue;
        g_autofree char *hb = human(v);
        fprintf(out, "  %-12s %12s %6.2f%%\n", key(keep, cat), hb,
                all ? 100.0 * v / all : 0.0);
    }

    json_object *anom = mp_json_get(doc, "anomalies"),
                *errs = mp_json_get(doc, "errors");
    fprintf(out, "\nAnomalies: %s\n",
            json_object_array_length(anom) ? "" : "none");
    for (size_t i = 0; i < json_object_array_length(anom); i++)
        fprintf(out, "  %s\n", str(keep, json_object_array_get_idx(anom, i)));
    fprintf(out, "Errors: %s\n", json_object_array_length(errs) ? "" : "none");
    for (size_t i = 0; i < json_object_array_length(errs); i++)
        fprintf(out, "  %s\n", str(keep, json_object_array_get_idx(errs, i)));
}
