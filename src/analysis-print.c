/* analysis-print.c: the human summary, rendered from the JSON document so
 * that text and --json can never disagree. */
#include <stdlib.h>
#include <string.h>
#include "analysis.h"

static gint64
geti(json_object *o, const char *key)
{
    json_object *v;
    return json_object_object_get_ex(o, key, &v) ? json_object_get_int64(v)
                                                 : 0;
}

static json_object *
get(json_object *o, const char *key)
{
    json_object *v = NULL;
    json_object_object_get_ex(o, key, &v);
    return v;
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

void
mp_analysis_print(json_object *doc, FILE *out)
{
    json_object *stream = get(doc, "stream"), *ram = get(doc, "ram");
    json_object *machine = get(stream, "machine");
    g_autofree char *sz = human(geti(stream, "bytes"));

    fprintf(out, "Stream: %s, machine %s, %s\n",
            json_object_get_boolean(get(stream, "complete"))
                ? "complete (ends with EOF)"
                : "incomplete (no EOF)",
            machine ? json_object_get_string(machine) : "(no configuration)",
            sz);
    json_object *secs = get(stream, "sections");
    fprintf(out, "Sections: %" G_GINT64_FORMAT " START, %" G_GINT64_FORMAT
                 " PART, %" G_GINT64_FORMAT " END, %" G_GINT64_FORMAT " FULL\n",
            geti(secs, "start"), geti(secs, "part"), geti(secs, "end"),
            geti(secs, "full"));
    if (get(stream, "opaque_from"))
        fprintf(out, "Passed through unparsed from offset %" G_GINT64_FORMAT
                     ": %s\n",
                geti(stream, "opaque_from"),
                json_object_get_string(get(stream, "opaque_reason")));

    json_object *blocks = get(ram, "blocks");
    g_autofree char *total = human(geti(ram, "total"));
    fprintf(out, "\nRAM: %s in %zu blocks\n", total,
            json_object_array_length(blocks));
    if (json_object_array_length(blocks))
        fprintf(out, "  %-28s %10s %10s %10s %10s %10s\n", "block", "size",
                "normal", "zero", "xbzrle", "compressed");
    for (size_t i = 0; i < json_object_array_length(blocks); i++) {
        json_object *b = json_object_array_get_idx(blocks, i);
        json_object *p = get(b, "pages");
        g_autofree char *bs = human(geti(b, "size"));
        fprintf(out,
                "  %-28s %10s %10" G_GINT64_FORMAT " %10" G_GINT64_FORMAT
                " %10" G_GINT64_FORMAT " %10" G_GINT64_FORMAT "\n",
                json_object_get_string(get(b, "name")), bs, geti(p, "normal"),
                geti(p, "zero"), geti(p, "xbzrle"), geti(p, "compressed"));
    }
    json_object *pages = get(ram, "pages");
    g_autofree char *rb = human(geti(ram, "bytes"));
    fprintf(out, "Pages: %" G_GINT64_FORMAT " normal, %" G_GINT64_FORMAT
                 " zero, %" G_GINT64_FORMAT " xbzrle, %" G_GINT64_FORMAT
                 " compressed; RAM records %s\n",
            geti(pages, "normal"), geti(pages, "zero"), geti(pages, "xbzrle"),
            geti(pages, "compressed"), rb);
    json_object *phases = get(ram, "phases");
    json_object_object_foreach(phases, name, ph)
    {
        if (!geti(ph, "pages"))
            continue;
        g_autofree char *pb = human(geti(ph, "bytes"));
        fprintf(out, "  %-10s %10" G_GINT64_FORMAT " pages  %s\n", name,
                geti(ph, "pages"), pb);
    }

    json_object *rounds = get(doc, "rounds");
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
                " %10" G_GINT64_FORMAT " %12s\n",
                geti(r, "index"), json_object_get_string(get(r, "phase")),
                geti(r, "pages"), geti(r, "dirty_pages"), b);
    }

    fprintf(out, "\nCommands:");
    json_object *cmds = get(doc, "commands");
    if (!json_object_object_length(cmds))
        fprintf(out, " none");
    json_object_object_foreach(cmds, cname, cnt)
        fprintf(out, " %s=%" G_GINT64_FORMAT, cname, json_object_get_int64(cnt));
    fprintf(out, "\n");

    json_object *disk = get(doc, "disk");
    if (disk) {
        g_autofree char *db = human(geti(disk, "data_bytes"));
        fprintf(out, "Disk (block migration): %" G_GINT64_FORMAT
                     " chunks of 1 MiB, %" G_GINT64_FORMAT " zero, %s of data\n",
                geti(disk, "chunks"), geti(disk, "zero_chunks"), db);
    }
    json_object *pc = get(doc, "postcopy");
    if (pc)
        fprintf(out, "Postcopy: package %" G_GINT64_FORMAT
                     " bytes, %" G_GINT64_FORMAT " discarded ranges, %"
                     G_GINT64_FORMAT " page requests\n",
                geti(pc, "packaged_bytes"), geti(pc, "discard_ranges"),
                geti(pc, "requests"));

    json_object *devs = get(doc, "devices");
    size_t nd = json_object_array_length(devs);
    fprintf(out, "\nDevices: %zu sections", nd);
    GPtrArray *sorted = g_ptr_array_new();
    gint64 dev_total = 0;
    for (size_t i = 0; i < nd; i++) {
        json_object *d = json_object_array_get_idx(devs, i);
        g_ptr_array_add(sorted, d);
        dev_total += geti(d, "bytes");
    }
    if (nd && get(json_object_array_get_idx(devs, 0), "bytes")) {
        g_autofree char *dt = human(dev_total);
        fprintf(out, ", %s; largest first:\n", dt);
        qsort(sorted->pdata, sorted->len, sizeof(gpointer), cmp_device_bytes);
        for (guint i = 0; i < sorted->len && i < 12; i++) {
            json_object *d = g_ptr_array_index(sorted, i);
            fprintf(out, "  %-32s inst %-3" G_GINT64_FORMAT " v%-3"
                         G_GINT64_FORMAT " %10" G_GINT64_FORMAT " bytes\n",
                    json_object_get_string(get(d, "name")), geti(d, "instance"),
                    geti(d, "version"), geti(d, "bytes"));
        }
        if (sorted->len > 12)
            fprintf(out, "  ... and %u more\n", sorted->len - 12);
    } else {
        fprintf(out, "%s\n", nd ? " (sizes unknown: no vmdesc)" : "");
    }
    g_ptr_array_free(sorted, TRUE);

    fprintf(out, "\nBytes by category:\n");
    json_object *bytes = get(doc, "bytes");
    gint64 all = geti(stream, "bytes");
    json_object_object_foreach(bytes, cat, n)
    {
        gint64 v = json_object_get_int64(n);
        if (!v)
            continue;
        g_autofree char *hb = human(v);
        fprintf(out, "  %-12s %12s %6.2f%%\n", cat, hb,
                all ? 100.0 * v / all : 0.0);
    }

    json_object *anom = get(doc, "anomalies"), *errs = get(doc, "errors");
    fprintf(out, "\nAnomalies: %s\n",
            json_object_array_length(anom) ? "" : "none");
    for (size_t i = 0; i < json_object_array_length(anom); i++)
        fprintf(out, "  %s\n",
                json_object_get_string(json_object_array_get_idx(anom, i)));
    fprintf(out, "Errors: %s\n", json_object_array_length(errs) ? "" : "none");
    for (size_t i = 0; i < json_object_array_length(errs); i++)
        fprintf(out, "  %s\n",
                json_object_get_string(json_object_array_get_idx(errs, i)));
}
