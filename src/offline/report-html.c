/* report-html.c: an analyze document as one self-contained HTML page
 * (report-html.h; docs/report.md).
 *
 * Drawing only: every number comes from the document as analyze made it.
 * What is summed here (the channels' bytes of one interval, a few
 * intervals into one bar) says so in its data-src path, so a test can sum
 * the same values of `analyze --json` and compare.
 *
 * Layout: each section holds a chart (SVG, viewBox coordinates, scaled to
 * the page's width) and a table of the same numbers beside it on a wide
 * screen, below it on a phone; print CSS keeps a section on one page.
 */
#include "config.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "json-util.h"
#include "parse-common.h"
#include "report-html.h"

/* The chart's coordinate system (viewBox); the page scales it. */
#define CHART_W 640.0
#define CHART_H 300.0
#define PAD_L   94.0 /* y tick labels and the y axis title */
#define PAD_R   16.0
#define PAD_T   16.0
#define PAD_B   52.0 /* x tick labels and the x axis title */
#define PLOT_W  (CHART_W - PAD_L - PAD_R)
#define PLOT_H  (CHART_H - PAD_T - PAD_B)

/* A time axis of more intervals than this is drawn with several
 * intervals per bar, so that a long capture stays a readable chart and a
 * page of bounded size. */
#define MAX_TIME_BARS 240
/* Device sections drawn as bars (the table lists them all) */
#define MAX_DEVICE_BARS 16

typedef struct {
    GString *out;
    json_object *doc;
    json_object *empty; /* {}: what a missing object's members are */
} Page;

/* `o` if it is an object, else an empty one: json-c's foreach reads
 * no NULL. */
static json_object *
members(Page *pg, json_object *o)
{
    return json_object_is_type(o, json_type_object) ? o : pg->empty;
}

/* ---- text ---- */

/* Text from the stream or the capture (names, errors): printable, then
 * escaped for HTML text and attribute values alike. */
static void
put_text(GString *out, const char *s)
{
    g_autofree char *p = mp_printable(s ? s : "");
    g_autofree char *e = g_markup_escape_text(p, -1);
    g_string_append(out, e);
}

/* Text of our own (labels, units: "\302\265s", "\342\211\244"), UTF-8 as
 * written: escaped for HTML only. */
static void
put_own(GString *out, const char *s)
{
    g_autofree char *e = g_markup_escape_text(s ? s : "", -1);
    g_string_append(out, e);
}

static char *
human_bytes(double v)
{
    return g_format_size_full((guint64)MAX(v, 0), G_FORMAT_SIZE_IEC_UNITS);
}

/* A count for an axis: 1200 -> "1.2k". */
static char *
human_count(double v)
{
    if (v >= 1e9)
        return g_strdup_printf("%.3gG", v / 1e9);
    if (v >= 1e6)
        return g_strdup_printf("%.3gM", v / 1e6);
    if (v >= 1e4)
        return g_strdup_printf("%.3gk", v / 1e3);
    return g_strdup_printf("%.4g", v);
}

/* A latency in microseconds as people read it. */
static char *
human_us(gint64 us)
{
    if (us >= 1000000)
        return g_strdup_printf("%g s", us / 1e6);
    if (us >= 1000)
        return g_strdup_printf("%g ms", us / 1e3);
    return g_strdup_printf("%" G_GINT64_FORMAT " \302\265s", us);
}

/* ---- numbers with their source ---- */

/* The value at `path` (dots; array indices), or NULL. */
static json_object *
at(json_object *doc, const char *path)
{
    g_auto(GStrv) parts = g_strsplit(path, ".", -1);
    json_object *o = doc;
    for (guint i = 0; o && parts[i]; i++) {
        if (json_object_is_type(o, json_type_array)) {
            char *end;
            guint64 k = g_ascii_strtoull(parts[i], &end, 10);
            o = *end || end == parts[i] || k >= json_object_array_length(o)
                    ? NULL
                    : json_object_array_get_idx(o, k);
        } else {
            o = mp_json_get(o, parts[i]);
        }
    }
    return o;
}

static double
num(json_object *v)
{
    return v ? json_object_get_double(v) : 0;
}

/* data-src and data-v of a value of the document (as JSON has it: an
 * integer exactly, a double to its shortest exact form). */
static void
put_src(GString *out, const char *path, json_object *v)
{
    g_string_append(out, " data-src=\"");
    put_text(out, path);
    if (v && json_object_is_type(v, json_type_double)) {
        char buf[G_ASCII_DTOSTR_BUF_SIZE];
        g_string_append_printf(
            out, "\" data-v=\"%s\"",
            g_ascii_dtostr(buf, sizeof(buf), json_object_get_double(v)));
    } else {
        g_string_append_printf(out, "\" data-v=\"%" G_GINT64_FORMAT "\"",
                               v ? json_object_get_int64(v) : 0);
    }
}

/* The same for a sum (or length) this file computed; `path` says of what. */
static void
put_src_sum(GString *out, const char *path, double v)
{
    g_string_append(out, " data-src=\"");
    put_text(out, path);
    g_string_append_printf(out, "\" data-v=\"%.0f\"", v);
}

/* A table cell: the integer at `path`, shown as it is; "ARRAY.#": the
 * array's length. */
static void
td_int(Page *pg, const char *path)
{
    json_object *v = at(pg->doc, path);
    g_string_append(pg->out, "<td class=\"n\"");
    if (g_str_has_suffix(path, ".#")) {
        g_autofree char *arr = g_strndup(path, strlen(path) - 2);
        json_object *a = at(pg->doc, arr);
        gsize n = json_object_is_type(a, json_type_array)
                      ? json_object_array_length(a)
                      : 0;
        put_src_sum(pg->out, path, n);
        g_string_append_printf(pg->out, ">%zu</td>", n);
        return;
    }
    if (!v) {
        g_string_append(pg->out, ">&ndash;</td>");
        return;
    }
    put_src(pg->out, path, v);
    g_string_append_printf(pg->out, ">%" G_GINT64_FORMAT "</td>",
                           json_object_get_int64(v));
}

/* A table cell: bytes at `path`, as IEC units, exactly on hover. */
static void
td_bytes(Page *pg, const char *path)
{
    json_object *v = at(pg->doc, path);
    g_string_append(pg->out, "<td class=\"n\"");
    if (!v) {
        g_string_append(pg->out, ">&ndash;</td>");
        return;
    }
    g_autofree char *h = human_bytes(num(v));
    put_src(pg->out, path, v);
    g_string_append_printf(pg->out,
                           " title=\"%" G_GINT64_FORMAT " bytes\">%s</td>",
                           json_object_get_int64(v), h);
}

/* A table cell: milliseconds at `path` (a double). */
static void
td_ms(Page *pg, const char *path)
{
    json_object *v = at(pg->doc, path);
    g_string_append(pg->out, "<td class=\"n\"");
    if (!v) {
        g_string_append(pg->out, ">&ndash;</td>");
        return;
    }
    put_src(pg->out, path, v);
    g_string_append_printf(pg->out, ">%.1f ms</td>", num(v));
}

static void
td_text(Page *pg, const char *s)
{
    g_string_append(pg->out, "<td>");
    put_text(pg->out, s);
    g_string_append(pg->out, "</td>");
}

/* ---- charts ---- */

/* The step of an axis from 0 to `max`: 1, 2 or 5 times a power of ten,
 * about four ticks. */
static double
nice_step(double max)
{
    if (max <= 0)
        return 1;
    double raw = max / 4, p = pow(10, floor(log10(raw))), f = raw / p;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
}

typedef enum { AXIS_COUNT, AXIS_BYTES, AXIS_RATE } AxisUnit;

/* The same in the IEC unit the labels use (KiB, MiB, ...), so that they
 * read 20 MiB, 40 MiB rather than 19.1 MiB, 38.1 MiB. */
static double
axis_step(double max, AxisUnit unit)
{
    double u = 1;
    if (unit != AXIS_COUNT)
        while (max / u >= 1024)
            u *= 1024;
    return nice_step(max / u) * u;
}

/* A tick's label: counts as 10k, bytes in the IEC unit of the tick (a
 * round number of it: axis_step()). */
static char *
axis_label(double v, AxisUnit unit)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    guint u = 0;

    if (unit == AXIS_COUNT)
        return human_count(v);
    while (v >= 1024 && u + 1 < G_N_ELEMENTS(units)) {
        v /= 1024;
        u++;
    }
    return g_strdup_printf("%g %s%s", v, units[u],
                           unit == AXIS_RATE ? "/s" : "");
}

/* Opens a chart: its svg, title and description (the accessible name),
 * the y grid with its labels, the axes' titles.  @return the y scale's
 * top (the value drawn at the plot's top). */
static double
chart_open(Page *pg, const char *name, const char *title, const char *desc,
           const char *x_title, const char *y_title, double max, AxisUnit unit)
{
    GString *o = pg->out;
    double step = axis_step(max, unit), top = step * MAX(ceil(max / step), 1);

    g_string_append_printf(
        o,
        "<svg class=\"chart\" data-chart=\"%s\" viewBox=\"0 0 %.0f %.0f\" "
        "role=\"img\" aria-labelledby=\"%s-t %s-d\" "
        "preserveAspectRatio=\"xMidYMid meet\">\n<title id=\"%s-t\">",
        name, CHART_W, CHART_H, name, name, name);
    put_text(o, title);
    g_string_append_printf(o, "</title><desc id=\"%s-d\">", name);
    put_own(o, desc);
    g_string_append(o, "</desc>\n<g class=\"grid\">");
    for (double v = 0; v <= top * 1.0001; v += step) {
        double y = PAD_T + PLOT_H - v / top * PLOT_H;
        g_autofree char *l = axis_label(v, unit);
        g_string_append_printf(
            o,
            "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>"
            "<text class=\"yt\" x=\"%.1f\" y=\"%.1f\">%s</text>",
            PAD_L, PAD_L + PLOT_W, y, y, PAD_L - 6, y + 4, l);
    }
    g_string_append_printf(
        o,
        "</g>\n<line class=\"axis\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" "
        "y2=\"%.1f\"/>\n<text class=\"xtitle\" x=\"%.1f\" y=\"%.1f\">",
        PAD_L, PAD_L + PLOT_W, PAD_T + PLOT_H, PAD_T + PLOT_H,
        PAD_L + PLOT_W / 2, CHART_H - 6);
    put_own(o, x_title);
    g_string_append_printf(
        o,
        "</text>\n<text class=\"ytitle\" transform=\"translate(13 %.1f) "
        "rotate(-90)\">",
        PAD_T + PLOT_H / 2);
    put_own(o, y_title);
    g_string_append(o, "</text>\n");
    return top;
}

static void
chart_close(Page *pg)
{
    g_string_append(pg->out, "</svg>\n");
}

/* One bar from the baseline up to `v` of the scale `top`, in slot `i` of
 * `n`; `frac` of the slot's width, centred.  Its source is `path` (or a
 * computed sum when `v_json` is NULL); its tooltip `tip`. */
static void
bar(Page *pg, const char *cls, guint i, guint n, double frac, double v,
    double top, const char *path, json_object *v_json, const char *tip)
{
    double slot = PLOT_W / n, w = slot * frac;
    double h = top > 0 ? v / top * PLOT_H : 0;
    double x = PAD_L + slot * i + (slot - w) / 2;

    g_string_append_printf(
        pg->out,
        "<rect class=\"%s\" x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" "
        "height=\"%.2f\"",
        cls, x, PAD_T + PLOT_H - h, w, h);
    if (v_json)
        put_src(pg->out, path, v_json);
    else
        put_src_sum(pg->out, path, v);
    g_string_append(pg->out, "><title>");
    put_own(pg->out, tip); /* a stream's names in it are printable already */
    g_string_append(pg->out, "</title></rect>\n");
}

/* An x tick label under slot `i` of `n`. */
static void
x_label(Page *pg, guint i, guint n, const char *label)
{
    double slot = PLOT_W / n;
    g_string_append_printf(pg->out, "<text class=\"xt\" x=\"%.1f\" y=\"%.1f\">",
                           PAD_L + slot * (i + 0.5), PAD_T + PLOT_H + 16);
    put_own(pg->out, label);
    g_string_append(pg->out, "</text>\n");
}

static void
legend(Page *pg, const char *const *cls, const char *const *label, guint n)
{
    g_string_append(pg->out, "<p class=\"legend\">");
    for (guint i = 0; i < n; i++)
        g_string_append_printf(pg->out,
                               "<span><i class=\"sw %s\"></i>%s</span>", cls[i],
                               label[i]);
    g_string_append(pg->out, "</p>\n");
}

static void
section_open(Page *pg, const char *id, const char *title)
{
    g_string_append_printf(pg->out, "<section id=\"%s\"><h2>%s</h2>\n", id,
                           title);
}

static void
note(Page *pg, const char *html)
{
    g_string_append_printf(pg->out, "<p class=\"note\">%s</p>\n", html);
}

/* ---- sections ---- */

static void
summary_row_int(Page *pg, const char *label, const char *path)
{
    g_string_append_printf(pg->out, "<tr><th>%s</th>", label);
    td_int(pg, path);
    g_string_append(pg->out, "</tr>\n");
}

static void
summary_row_bytes(Page *pg, const char *label, const char *path)
{
    g_string_append_printf(pg->out, "<tr><th>%s</th>", label);
    td_bytes(pg, path);
    g_string_append(pg->out, "</tr>\n");
}

static void
summary_row_ms(Page *pg, const char *label, const char *path)
{
    g_string_append_printf(pg->out, "<tr><th>%s</th>", label);
    td_ms(pg, path);
    g_string_append(pg->out, "</tr>\n");
}

/* The numbers of analyze's summary (analysis-print.c), in one table. */
static void
section_summary(Page *pg)
{
    json_object *doc = pg->doc, *v;
    GString *o = pg->out;

    section_open(pg, "summary", "Summary");
    g_string_append(o, "<div class=\"tw\"><table class=\"summary\">\n"
                       "<caption>The numbers of <code>migproxy analyze"
                       "</code>'s summary</caption>\n");
    g_string_append(o, "<tr><th>Stream</th><td>");
    put_text(o, json_object_get_boolean(at(doc, "stream.complete"))
                    ? "complete (ends with EOF)"
                    : "incomplete (no EOF)");
    g_string_append(o, ", machine ");
    v = at(doc, "stream.machine");
    put_text(o, v ? json_object_get_string(v) : "(no configuration)");
    g_string_append(o, "</td></tr>\n");
    summary_row_bytes(pg, "Stream bytes", "stream.bytes");
    g_string_append(o, "<tr><th>Sections</th><td class=\"n\">");
    static const char *const secs[][2] = {
        {"start", "START"}, {"part", "PART"}, {"end", "END"}, {"full", "FULL"}};
    for (guint i = 0; i < G_N_ELEMENTS(secs); i++) {
        g_autofree char *p = g_strdup_printf("stream.sections.%s", secs[i][0]);
        g_string_append(o, "<span");
        put_src(o, p, at(doc, p));
        g_string_append_printf(o, ">%" G_GINT64_FORMAT "</span> %s%s",
                               json_object_get_int64(at(doc, p)), secs[i][1],
                               i + 1 < G_N_ELEMENTS(secs) ? ", " : "");
    }
    g_string_append(o, "</td></tr>\n");
    if ((v = at(doc, "stream.opaque_from"))) {
        g_string_append(o, "<tr><th>Unparsed from</th><td class=\"n\"");
        put_src(o, "stream.opaque_from", v);
        g_string_append_printf(o, ">offset %" G_GINT64_FORMAT ": ",
                               json_object_get_int64(v));
        put_text(o, json_object_get_string(at(doc, "stream.opaque_reason")));
        g_string_append(o, "</td></tr>\n");
    }
    summary_row_bytes(pg, "Guest RAM", "ram.total");
    summary_row_int(pg, "RAM blocks", "ram.blocks.#");
    static const char *const kinds[] = {"normal", "zero", "xbzrle",
                                        "compressed"};
    for (guint i = 0; i < G_N_ELEMENTS(kinds); i++) {
        g_autofree char *p = g_strdup_printf("ram.pages.%s", kinds[i]);
        g_autofree char *l = g_strdup_printf("Pages: %s", kinds[i]);
        summary_row_int(pg, l, p);
    }
    summary_row_bytes(pg, "RAM records", "ram.bytes");
    json_object_object_foreach(
        members(pg, mp_json_get(mp_json_get(doc, "ram"), "phases")), ph, phv)
    {
        if (!mp_json_int_or(phv, "pages", 0))
            continue;
        g_autofree char *p = g_strdup_printf("ram.phases.%s.pages", ph);
        g_autofree char *pb = g_strdup_printf("ram.phases.%s.bytes", ph);
        g_string_append(o, "<tr><th>Pages in ");
        put_text(o, ph);
        g_string_append(o, "</th>");
        td_int(pg, p);
        g_string_append(o, "</tr>\n<tr><th>Bytes in ");
        put_text(o, ph);
        g_string_append(o, "</th>");
        td_bytes(pg, pb);
        g_string_append(o, "</tr>\n");
    }
    summary_row_int(pg, "Rounds", "rounds.#");
    json_object_object_foreach(members(pg, mp_json_get(doc, "commands")), cmd,
                               cv)
    {
        g_autofree char *p = g_strdup_printf("commands.%s", cmd);
        g_string_append(o, "<tr><th>Command ");
        put_text(o, cmd);
        g_string_append(o, "</th>");
        td_int(pg, p);
        g_string_append(o, "</tr>\n");
        (void)cv;
    }
    if (mp_json_get(doc, "disk")) {
        summary_row_int(pg, "Disk chunks", "disk.chunks");
        summary_row_int(pg, "Disk zero chunks", "disk.zero_chunks");
        summary_row_bytes(pg, "Disk data", "disk.data_bytes");
    }
    if (mp_json_get(doc, "multifd")) {
        summary_row_int(pg, "Multifd channels", "multifd.channels");
        summary_row_int(pg, "Multifd packets", "multifd.packets");
        summary_row_int(pg, "Multifd SYNC packets", "multifd.sync_packets");
        summary_row_int(pg, "Multifd normal pages", "multifd.normal_pages");
        summary_row_int(pg, "Multifd zero pages", "multifd.zero_pages");
        summary_row_bytes(pg, "Multifd bytes (multifd-bytes)", "multifd.bytes");
    }
    json_object *pc = mp_json_get(doc, "postcopy");
    if (pc) {
        summary_row_int(pg, "Post-copy page requests", "postcopy.requests");
        if (mp_json_get(pc, "packaged_bytes"))
            summary_row_bytes(pg, "Post-copy package",
                              "postcopy.packaged_bytes");
        if (mp_json_get(pc, "discard_ranges"))
            summary_row_int(pg, "Post-copy discarded ranges",
                            "postcopy.discard_ranges");
    }
    if (mp_json_get(doc, "channels")) {
        g_string_append(o, "<tr><th>Outcome</th>");
        td_text(pg, mp_json_string(doc, "outcome"));
        g_string_append(o, "</tr>\n");
        summary_row_ms(pg, "Total time", "total_ms");
        summary_row_ms(pg, "Downtime on the wire", "downtime_ms");
        if (mp_json_int_or(at(doc, "postcopy.latency_us"), "count", 0)) {
            summary_row_int(pg, "Request latencies measured",
                            "postcopy.latency_us.count");
            static const char *const q[] = {"p50", "p99", "max"};
            for (guint i = 0; i < G_N_ELEMENTS(q); i++) {
                g_autofree char *p =
                    g_strdup_printf("postcopy.latency_us.%s", q[i]);
                g_autofree char *h =
                    human_us(json_object_get_int64(at(doc, p)));
                g_string_append_printf(
                    o, "<tr><th>Request latency %s</th><td class=\"n\"", q[i]);
                put_src(o, p, at(doc, p));
                g_string_append_printf(o, ">%s</td></tr>\n", h);
            }
        }
        summary_row_int(pg, "Connections", "channels.#");
    }
    json_object *devs = mp_json_array(doc, "devices");
    summary_row_int(pg, "Device sections", "devices.#");
    if (devs && json_object_array_length(devs)
        && mp_json_get(json_object_array_get_idx(devs, 0), "bytes")) {
        double total = 0;
        for (size_t i = 0; i < json_object_array_length(devs); i++)
            total +=
                num(mp_json_get(json_object_array_get_idx(devs, i), "bytes"));
        g_autofree char *h = human_bytes(total);
        g_string_append(o, "<tr><th>Device state</th><td class=\"n\"");
        put_src_sum(o, "devices.*.bytes", total);
        g_string_append_printf(o, " title=\"%.0f bytes\">%s</td></tr>\n", total,
                               h);
    }
    json_object_object_foreach(members(pg, mp_json_get(doc, "bytes")), cat, cn)
    {
        if (!json_object_get_int64(cn))
            continue;
        g_autofree char *p = g_strdup_printf("bytes.%s", cat);
        g_string_append(o, "<tr><th>Bytes: ");
        put_text(o, cat);
        g_string_append(o, "</th>");
        td_bytes(pg, p);
        g_string_append(o, "</tr>\n");
    }
    g_string_append(o, "</table></div>\n");

    static const char *const lists[] = {"anomalies", "errors"};
    for (guint l = 0; l < G_N_ELEMENTS(lists); l++) {
        json_object *a = mp_json_array(doc, lists[l]);
        size_t n = a ? json_object_array_length(a) : 0;
        g_string_append_printf(
            o, "<p class=\"%s\"><strong>%s:</strong> %s</p>\n",
            n ? "warn" : "ok", l ? "Errors" : "Anomalies", n ? "" : "none");
        if (!n)
            continue;
        g_string_append(o, "<ul>");
        for (size_t i = 0; i < n; i++) {
            g_string_append(o, "<li>");
            put_text(o,
                     json_object_get_string(json_object_array_get_idx(a, i)));
            g_string_append(o, "</li>");
        }
        g_string_append(o, "</ul>\n");
    }
    g_string_append(o, "</section>\n");
}

/* Dirty pages per round: each round's pages, and over them the pages it
 * sent again (dirtied since an earlier round). */
static void
section_rounds(Page *pg)
{
    json_object *rounds = mp_json_array(pg->doc, "rounds");
    guint n = rounds ? json_object_array_length(rounds) : 0;
    gboolean timed = FALSE;
    double max = 0;

    section_open(pg, "rounds", "Dirty pages per round");
    if (!n) {
        note(pg, "The stream holds no RAM rounds.");
        g_string_append(pg->out, "</section>\n");
        return;
    }
    for (guint i = 0; i < n; i++) {
        json_object *r = json_object_array_get_idx(rounds, i);
        max = MAX(max, num(mp_json_get(r, "pages")));
        timed |= mp_json_get(r, "start_us") != NULL;
    }
    /* with times the table is too wide to stand beside the chart */
    g_string_append(pg->out, timed ? "<div class=\"fig stack\"><figure>\n"
                                   : "<div class=\"fig\"><figure>\n");
    double top = chart_open(
        pg, "rounds", "Dirty pages per round",
        "Bars: RAM pages each round sent; darker, inside them: the pages "
        "sent again because the guest dirtied them since an earlier round.",
        "round (one pass of the dirty-page scan)", "pages", max, AXIS_COUNT);
    guint label_every = (n + 15) / 16;
    for (guint i = 0; i < n; i++) {
        json_object *r = json_object_array_get_idx(rounds, i);
        g_autofree char *pp = g_strdup_printf("rounds.%u.pages", i);
        g_autofree char *dp = g_strdup_printf("rounds.%u.dirty_pages", i);
        g_autofree char *tip = g_strdup_printf(
            "round %" G_GINT64_FORMAT " (%s): %" G_GINT64_FORMAT
            " pages, %" G_GINT64_FORMAT " of them dirty",
            mp_json_int_or(r, "index", i + 1),
            mp_json_string(r, "phase") ? mp_json_string(r, "phase") : "?",
            mp_json_int_or(r, "pages", 0), mp_json_int_or(r, "dirty_pages", 0));
        const char *phase = mp_json_string(r, "phase");
        const char *cls = phase && strcmp(phase, "precopy") != 0
                              ? "b-pages b-late"
                              : "b-pages";
        bar(pg, cls, i, n, 0.7, num(mp_json_get(r, "pages")), top, pp,
            at(pg->doc, pp), tip);
        bar(pg, "b-dirty", i, n, 0.44, num(mp_json_get(r, "dirty_pages")), top,
            dp, at(pg->doc, dp), tip);
        if (i % label_every == 0) {
            g_autofree char *l = g_strdup_printf(
                "%" G_GINT64_FORMAT, mp_json_int_or(r, "index", i + 1));
            x_label(pg, i, n, l);
        }
    }
    chart_close(pg);
    static const char *const cls[] = {"b-pages", "b-late", "b-dirty"};
    static const char *const lab[] = {"pages (pre-copy)",
                                      "pages (stop-copy, post-copy)",
                                      "of them dirty (sent again)"};
    legend(pg, cls, lab, 3);
    g_string_append(pg->out, "</figure>\n<div class=\"tw\"><table>\n"
                             "<caption>Rounds</caption>\n<tr><th>round</th>"
                             "<th>phase</th><th>pages</th><th>dirty</th>"
                             "<th>bytes</th>");
    if (timed)
        g_string_append(pg->out, "<th>start</th><th>end</th><th>Mbit/s</th>");
    g_string_append(pg->out, "</tr>\n");
    for (guint i = 0; i < n; i++) {
        json_object *r = json_object_array_get_idx(rounds, i);
        g_autofree char *base = g_strdup_printf("rounds.%u", i);
        g_string_append(pg->out, "<tr>");
        g_autofree char *ip = g_strconcat(base, ".index", NULL);
        td_int(pg, ip);
        td_text(pg, mp_json_string(r, "phase"));
        g_autofree char *pp = g_strconcat(base, ".pages", NULL);
        g_autofree char *dp = g_strconcat(base, ".dirty_pages", NULL);
        g_autofree char *bp = g_strconcat(base, ".bytes", NULL);
        td_int(pg, pp);
        td_int(pg, dp);
        td_bytes(pg, bp);
        if (timed) {
            static const char *const k[] = {".start_us", ".end_us"};
            for (guint j = 0; j < 2; j++) {
                g_autofree char *p = g_strconcat(base, k[j], NULL);
                json_object *v = at(pg->doc, p);
                g_string_append(pg->out, "<td class=\"n\"");
                if (v) {
                    put_src(pg->out, p, v);
                    g_string_append_printf(pg->out, ">%.1f ms", num(v) / 1000);
                } else {
                    g_string_append(pg->out, ">&ndash;");
                }
                g_string_append(pg->out, "</td>");
            }
            g_autofree char *tp = g_strconcat(base, ".throughput_bps", NULL);
            json_object *tv = at(pg->doc, tp);
            g_string_append(pg->out, "<td class=\"n\"");
            if (tv) {
                put_src(pg->out, tp, tv);
                g_string_append_printf(pg->out, ">%.1f", num(tv) / 1e6);
            } else {
                g_string_append(pg->out, ">&ndash;");
            }
            g_string_append(pg->out, "</td>");
        }
        g_string_append(pg->out, "</tr>\n");
    }
    g_string_append(pg->out, "</table></div></div>\n</section>\n");
}

/* Bandwidth over time: the bytes of every channel towards the
 * destination per interval of the metrics' series, with the phases and
 * the downtime behind them. */
static void
section_bandwidth(Page *pg)
{
    json_object *chans = mp_json_array(pg->doc, "channels");
    guint nch = chans ? json_object_array_length(chans) : 0;
    guint len = 0;
    double interval_ms = 0;

    section_open(pg, "bandwidth", "Bandwidth over time");
    for (guint c = 0; c < nch; c++) {
        json_object *s =
            at(json_object_array_get_idx(chans, c), "to_dst.series");
        json_object *b = mp_json_array(s, "bytes");
        if (!b)
            continue;
        len = MAX(len, json_object_array_length(b));
        interval_ms = num(mp_json_get(s, "interval_ms"));
    }
    if (!len || interval_ms <= 0) {
        const char *format = mp_json_string(pg->doc, "format");
        g_autofree char *esc =
            g_markup_escape_text(format ? format : "a stream file", -1);
        g_autofree char *msg = g_strdup_printf(
            "No time axis: this input (%s) holds no timestamps, only the "
            "stream's bytes in order. A relay capture directory "
            "(<code>migproxy relay --capture</code>) or a packet capture "
            "(pcap) of the migration has them. The bytes of each round "
            "are in the rounds table.",
            esc);
        note(pg, msg);
        g_string_append(pg->out, "</section>\n");
        return;
    }
    /* k intervals per bar */
    guint k = (len + MAX_TIME_BARS - 1) / MAX_TIME_BARS, nb = (len + k - 1) / k;
    g_autofree double *sum = g_new0(double, nb);
    for (guint c = 0; c < nch; c++) {
        json_object *b =
            at(json_object_array_get_idx(chans, c), "to_dst.series.bytes");
        for (guint i = 0; b && i < json_object_array_length(b); i++)
            sum[i / k] += num(json_object_array_get_idx(b, i));
    }
    double bar_s = k * interval_ms / 1000, max = 0;
    for (guint i = 0; i < nb; i++)
        max = MAX(max, sum[i] / bar_s);
    double span_ms = len * interval_ms;
    g_autofree char *desc = g_strdup_printf(
        "Bytes per second towards the destination, all %u connections, "
        "in steps of %g ms, over %.1f s; shaded: the phases and, in red, "
        "the downtime.",
        nch, k * interval_ms, span_ms / 1000);
    g_string_append(pg->out, "<div class=\"fig\"><figure>\n");
    double top = chart_open(pg, "bandwidth", "Bandwidth over time", desc,
                            "time since the migration started (s)",
                            "to the destination", max, AXIS_RATE);
    /* phases and the downtime, behind the bars */
    json_object *phases = mp_json_array(pg->doc, "phases");
    for (guint i = 0; phases && i < json_object_array_length(phases); i++) {
        json_object *p = json_object_array_get_idx(phases, i);
        double a = num(mp_json_get(p, "start_ms")),
               b = num(mp_json_get(p, "end_ms"));
        double x0 = PAD_L + MIN(a / span_ms, 1) * PLOT_W;
        double x1 = PAD_L + MIN(b / span_ms, 1) * PLOT_W;
        const char *name = mp_json_string(p, "phase");
        g_string_append_printf(
            pg->out,
            "<rect class=\"phase ph%u\" x=\"%.2f\" y=\"%.1f\" width=\"%.2f\" "
            "height=\"%.1f\"><title>",
            i % 2, x0, PAD_T, MAX(x1 - x0, 0.5), PLOT_H);
        put_text(pg->out, name);
        g_string_append_printf(pg->out, " %.0f-%.0f ms</title></rect>", a, b);
        if (x1 - x0 > 40) {
            g_string_append_printf(pg->out,
                                   "<text class=\"phl\" x=\"%.1f\" y=\"%.1f\">",
                                   x0 + 3, PAD_T + 12);
            put_text(pg->out, name);
            g_string_append(pg->out, "</text>");
        }
        g_string_append(pg->out, "\n");
    }
    json_object *dt = mp_json_get(pg->doc, "downtime");
    if (dt && mp_json_get(dt, "stop_ms")) {
        double a = num(mp_json_get(dt, "stop_ms")),
               b = num(mp_json_get(dt, "resume_ms"));
        double x0 = PAD_L + MIN(a / span_ms, 1) * PLOT_W;
        double x1 = PAD_L + MIN(b / span_ms, 1) * PLOT_W;
        g_string_append_printf(
            pg->out,
            "<rect class=\"downtime\" x=\"%.2f\" y=\"%.1f\" width=\"%.2f\" "
            "height=\"%.1f\"><title>downtime %.1f ms</title></rect>\n",
            x0, PAD_T, MAX(x1 - x0, 1.5), PLOT_H, b - a);
    }
    for (guint i = 0; i < nb; i++) {
        guint a = i * k, b = MIN(a + k, len);
        g_autofree char *path =
            k == 1 ? g_strdup_printf("channels.*.to_dst.series.bytes.%u", a)
                   : g_strdup_printf("channels.*.to_dst.series.bytes.[%u:%u]",
                                     a, b);
        g_autofree char *rate = human_bytes(sum[i] / bar_s);
        g_autofree char *tip = g_strdup_printf(
            "%.1f-%.1f s: %.0f bytes (%s/s)", a * interval_ms / 1000,
            b * interval_ms / 1000, sum[i], rate);
        /* the bar's height is a rate; its data-v the bytes it sums */
        double slot = PLOT_W / nb, h = sum[i] / bar_s / top * PLOT_H;
        g_string_append_printf(
            pg->out,
            "<rect class=\"b-bw\" x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" "
            "height=\"%.2f\"",
            PAD_L + slot * i, PAD_T + PLOT_H - h, slot * 0.92, h);
        put_src_sum(pg->out, path, sum[i]);
        g_string_append(pg->out, "><title>");
        put_own(pg->out, tip);
        g_string_append(pg->out, "</title></rect>\n");
    }
    /* seconds on the x axis: about six labels */
    double step_s = nice_step(span_ms / 1000 * 4 / 6);
    for (double t = 0; t * 1000 <= span_ms * 1.0001; t += step_s) {
        g_string_append_printf(
            pg->out, "<text class=\"xt\" x=\"%.1f\" y=\"%.1f\">%g</text>",
            PAD_L + t * 1000 / span_ms * PLOT_W, PAD_T + PLOT_H + 16, t);
    }
    chart_close(pg);
    static const char *const cls[] = {"b-bw", "ph0", "downtime"};
    static const char *const lab[] = {"bytes/s to the destination", "phase",
                                      "downtime"};
    legend(pg, cls, lab, 3);

    /* the table: phases, downtime, connections */
    g_string_append(pg->out, "</figure>\n<div class=\"tw\"><table>\n"
                             "<caption>Phases</caption>\n<tr><th>phase</th>"
                             "<th>start</th><th>end</th></tr>\n");
    for (guint i = 0; phases && i < json_object_array_length(phases); i++) {
        g_autofree char *a = g_strdup_printf("phases.%u.start_ms", i);
        g_autofree char *b = g_strdup_printf("phases.%u.end_ms", i);
        g_string_append(pg->out, "<tr>");
        td_text(pg,
                mp_json_string(json_object_array_get_idx(phases, i), "phase"));
        td_ms(pg, a);
        td_ms(pg, b);
        g_string_append(pg->out, "</tr>\n");
    }
    if (dt && mp_json_get(dt, "stop_ms")) {
        g_string_append(pg->out, "<tr><th>downtime</th>");
        td_ms(pg, "downtime.stop_ms");
        td_ms(pg, "downtime.resume_ms");
        g_string_append(pg->out, "</tr>\n");
    }
    g_string_append(pg->out,
                    "</table>\n<table>\n<caption>Connections</caption>\n"
                    "<tr><th>#</th><th>kind</th><th>to dst</th>"
                    "<th>to src</th></tr>\n");
    for (guint c = 0; c < nch; c++) {
        json_object *ch = json_object_array_get_idx(chans, c);
        g_autofree char *ip = g_strdup_printf("channels.%u.channel", c);
        g_autofree char *dp = g_strdup_printf("channels.%u.to_dst.bytes", c);
        g_autofree char *sp = g_strdup_printf("channels.%u.to_src.bytes", c);
        g_string_append(pg->out, "<tr>");
        td_int(pg, ip);
        td_text(pg, mp_json_string(ch, "kind"));
        td_bytes(pg, dp);
        td_bytes(pg, sp);
        g_string_append(pg->out, "</tr>\n");
    }
    g_string_append(pg->out, "</table></div></div>\n</section>\n");
}

/* Page kinds: RAM pages by kind, over all channels; multifd's share. */
static void
section_kinds(Page *pg)
{
    typedef struct {
        const char *label, *path, *bytes_path, *cls;
    } Row;
    static const Row all[] = {
        {"normal", "ram.pages.normal", "ram.bytes_by_kind.normal", "b-kind"},
        {"zero", "ram.pages.zero", "ram.bytes_by_kind.zero", "b-kind"},
        {"xbzrle", "ram.pages.xbzrle", "ram.bytes_by_kind.xbzrle", "b-kind"},
        {"compressed", "ram.pages.compressed", "ram.bytes_by_kind.compressed",
         "b-kind"},
        /* only with multifd */
        {"multifd normal", "multifd.normal_pages", NULL, "b-mfd"},
        {"multifd zero", "multifd.zero_pages", NULL, "b-mfd"},
    };
    const Row *rows = all;
    guint n = mp_json_get(pg->doc, "multifd") ? 6 : 4;
    double max = 0;

    for (guint i = 0; i < n; i++)
        max = MAX(max, num(at(pg->doc, rows[i].path)));

    section_open(pg, "kinds", "Page kinds");
    if (max <= 0) {
        note(pg, "The stream holds no RAM pages.");
        g_string_append(pg->out, "</section>\n");
        return;
    }
    g_string_append(pg->out, "<div class=\"fig\"><figure>\n");
    double top = chart_open(
        pg, "kinds", "RAM pages by kind",
        "RAM page records by kind over all channels (main, multifd, "
        "preempt); in green, those multifd carried (counted among them).",
        "page kind", "pages", max, AXIS_COUNT);
    for (guint i = 0; i < n; i++) {
        json_object *v = at(pg->doc, rows[i].path);
        g_autofree char *tip =
            g_strdup_printf("%s: %" G_GINT64_FORMAT " pages", rows[i].label,
                            v ? json_object_get_int64(v) : 0);
        bar(pg, rows[i].cls, i, n, 0.6, num(v), top, rows[i].path, v, tip);
        x_label(pg, i, n, rows[i].label);
    }
    chart_close(pg);
    g_string_append(pg->out,
                    "</figure>\n<div class=\"tw\"><table>\n<caption>Pages by "
                    "kind</caption>\n<tr><th>kind</th><th>pages</th>"
                    "<th>bytes</th></tr>\n");
    for (guint i = 0; i < n; i++) {
        g_string_append(pg->out, "<tr>");
        td_text(pg, rows[i].label);
        td_int(pg, rows[i].path);
        if (rows[i].bytes_path)
            td_bytes(pg, rows[i].bytes_path);
        else
            g_string_append(pg->out, "<td></td>");
        g_string_append(pg->out, "</tr>\n");
    }
    g_string_append(pg->out, "</table></div></div>\n</section>\n");
}

typedef struct {
    guint index;
    double bytes;
} DevRef;

static int
cmp_dev(const void *x, const void *y)
{
    const DevRef *a = x, *b = y;
    if (a->bytes != b->bytes)
        return a->bytes < b->bytes ? 1 : -1;
    return (a->index > b->index) - (a->index < b->index);
}

/* Device state sizes: the sections' bytes, largest first. */
static void
section_devices(Page *pg)
{
    json_object *devs = mp_json_array(pg->doc, "devices");
    guint n = devs ? json_object_array_length(devs) : 0;

    section_open(pg, "devices", "Device state sizes");
    if (!n) {
        note(pg, "The stream holds no device sections.");
        g_string_append(pg->out, "</section>\n");
        return;
    }
    gboolean sized =
        mp_json_get(json_object_array_get_idx(devs, 0), "bytes") != NULL;
    g_autofree DevRef *order = g_new(DevRef, n);
    for (guint i = 0; i < n; i++)
        order[i] = (DevRef){
            i, num(mp_json_get(json_object_array_get_idx(devs, i), "bytes"))};
    if (sized) {
        qsort(order, n, sizeof(*order), cmp_dev);
        guint nb = MIN(n, MAX_DEVICE_BARS);
        g_string_append(pg->out, "<div class=\"fig\"><figure>\n");
        g_autofree char *desc = g_strdup_printf(
            "Bytes of each device section, the %u largest of %u.", nb, n);
        double top = chart_open(pg, "devices", "Device state sizes", desc,
                                "device section (largest first)", "bytes",
                                order[0].bytes, AXIS_BYTES);
        for (guint i = 0; i < nb; i++) {
            json_object *d = json_object_array_get_idx(devs, order[i].index);
            g_autofree char *p =
                g_strdup_printf("devices.%u.bytes", order[i].index);
            g_autofree char *name = mp_printable(mp_json_string(d, "name"));
            g_autofree char *tip = g_strdup_printf(
                "%s (instance %" G_GINT64_FORMAT "): %.0f bytes", name,
                mp_json_int_or(d, "instance", 0), order[i].bytes);
            bar(pg, "b-dev", i, nb, 0.7, order[i].bytes, top, p, at(pg->doc, p),
                tip);
            /* names are long: the bar's number, the table gives the name */
            g_autofree char *l = g_strdup_printf("%u", i + 1);
            x_label(pg, i, nb, l);
        }
        chart_close(pg);
        g_string_append(pg->out, "</figure>\n");
    } else {
        note(pg, "Section sizes unknown: the stream has no vmdesc (its "
                 "JSON device description) to slice them with.");
        g_string_append(pg->out, "<div class=\"fig\">\n");
    }
    g_string_append(pg->out,
                    "<div class=\"tw\"><table>\n<caption>Device sections"
                    "</caption>\n<tr><th>#</th><th>section</th><th>inst</th>"
                    "<th>v</th><th>bytes</th></tr>\n");
    for (guint i = 0; i < n; i++) {
        json_object *d = json_object_array_get_idx(devs, order[i].index);
        g_autofree char *ip =
            g_strdup_printf("devices.%u.instance", order[i].index);
        g_autofree char *vp =
            g_strdup_printf("devices.%u.version", order[i].index);
        g_autofree char *bp =
            g_strdup_printf("devices.%u.bytes", order[i].index);
        g_string_append_printf(pg->out, "<tr><td class=\"n\">%u</td>", i + 1);
        td_text(pg, mp_json_string(d, "name"));
        td_int(pg, ip);
        td_int(pg, vp);
        td_int(pg, bp);
        g_string_append(pg->out, "</tr>\n");
    }
    g_string_append(pg->out, "</table></div></div>\n</section>\n");
}

/* The post-copy latency histogram, bucket by bucket as the document has
 * it. */
static void
section_latency(Page *pg)
{
    json_object *lat = at(pg->doc, "postcopy.latency_us");
    json_object *hist = mp_json_array(lat, "histogram");
    gint64 count = mp_json_int_or(lat, "count", 0);

    section_open(pg, "latency", "Post-copy page request latency");
    if (!count || !hist || !json_object_array_length(hist)) {
        gint64 req = json_object_get_int64(at(pg->doc, "postcopy.requests"));
        g_autofree char *msg =
            !mp_json_get(pg->doc, "channels")
                ? g_strdup("No latencies: a stream file has no times; a "
                           "capture directory or a pcap of a post-copy "
                           "migration has them.")
            : req ? g_strdup_printf("%" G_GINT64_FORMAT " page requests, none "
                                    "answered with a time.",
                                    req)
                  : g_strdup("No post-copy page requests: the migration did "
                             "not run post-copy, or the guest touched no page "
                             "still at the source.");
        note(pg, msg);
        g_string_append(pg->out, "</section>\n");
        return;
    }
    /* from the first bucket to the last one that counts */
    guint n = json_object_array_length(hist), last = 0;
    double max = 0;
    for (guint i = 0; i < n; i++) {
        double c =
            num(mp_json_get(json_object_array_get_idx(hist, i), "count"));
        if (c > 0)
            last = i;
        max = MAX(max, c);
    }
    guint shown = MIN(n, MAX(last + 2, 4u));
    g_string_append(pg->out, "<div class=\"fig\"><figure>\n");
    g_autofree char *desc = g_strdup_printf(
        "Of %" G_GINT64_FORMAT " page requests answered, how many took how "
        "long from the request on the return path to the page from the "
        "source.",
        count);
    double top =
        chart_open(pg, "latency", "Post-copy request latency", desc,
                   "request to page (at most)", "requests", max, AXIS_COUNT);
    for (guint i = 0; i < shown; i++) {
        json_object *b = json_object_array_get_idx(hist, i);
        json_object *le = mp_json_get(b, "le_us");
        g_autofree char *p =
            g_strdup_printf("postcopy.latency_us.histogram.%u.count", i);
        g_autofree char *h = le ? human_us(json_object_get_int64(le)) : NULL;
        g_autofree char *l =
            le ? g_strdup_printf("\342\211\244%s", h) : g_strdup("more");
        g_autofree char *tip =
            g_strdup_printf("%s: %" G_GINT64_FORMAT " requests", l,
                            mp_json_int_or(b, "count", 0));
        bar(pg, "b-lat", i, shown, 0.8, num(mp_json_get(b, "count")), top, p,
            at(pg->doc, p), tip);
        /* past 7 buckets the labels would overlap: every other one (the
         * table has them all) */
        if (shown <= 7 || i % 2 == 0)
            x_label(pg, i, shown, l);
    }
    chart_close(pg);
    g_string_append(pg->out, "</figure>\n<div class=\"tw\"><table>\n"
                             "<caption>Latency (request to page)</caption>\n"
                             "<tr><th>at most</th><th>requests</th></tr>\n");
    for (guint i = 0; i < n; i++) {
        json_object *le =
            mp_json_get(json_object_array_get_idx(hist, i), "le_us");
        g_autofree char *h = le ? human_us(json_object_get_int64(le)) : NULL;
        g_autofree char *p =
            g_strdup_printf("postcopy.latency_us.histogram.%u.count", i);
        g_string_append(pg->out, "<tr><td>");
        put_own(pg->out, le ? h : "more");
        g_string_append(pg->out, "</td>");
        td_int(pg, p);
        g_string_append(pg->out, "</tr>\n");
    }
    g_string_append(pg->out, "</table></div></div>\n</section>\n");
}

/* A packet capture: what libpcap read, and its sessions. */
static void
section_pcap(Page *pg)
{
    json_object *p = mp_json_get(pg->doc, "pcap");
    if (!p)
        return;
    section_open(pg, "pcap", "Packet capture");
    g_string_append(pg->out, "<div class=\"tw\"><table class=\"summary\">\n");
    static const char *const rows[][2] = {
        {"Packets", "pcap.packets"},
        {"TCP connections", "pcap.connections"},
        {"Gaps (bytes missing)", "pcap.gaps"},
        {"Bytes in gaps", "pcap.gap_bytes"},
        {"Retransmitted or overlapping bytes", "pcap.repeated_bytes"},
        {"Migration sessions", "pcap.sessions.#"},
    };
    for (guint i = 0; i < G_N_ELEMENTS(rows); i++)
        if (at(pg->doc, rows[i][1]) || strchr(rows[i][1], '#'))
            summary_row_int(pg, rows[i][0], rows[i][1]);
    g_string_append(pg->out, "</table></div>\n");
    if (mp_json_get(pg->doc, "more_sessions"))
        note(pg, "This page shows session 1; <code>migproxy analyze</code> "
                 "lists the others.");
    g_string_append(pg->out, "</section>\n");
}

static const char page_css[] =
    ":root{--fg:#1b1f24;--muted:#57606a;--line:#d0d7de;--bg:#fff;"
    "--c1:#4a7ab5;--c2:#b5542c;--c3:#2e7d4f;--c4:#7b5ea7;--c5:#c79a1e}\n"
    "*{box-sizing:border-box}\n"
    "body{margin:0 auto;max-width:72rem;padding:1rem;font:15px/1.45 "
    "system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:var(--fg);"
    "background:var(--bg)}\n"
    "h1{font-size:1.5rem;margin:.2rem 0}h2{font-size:1.2rem;margin:1.6rem 0 "
    ".6rem;border-bottom:1px solid var(--line);padding-bottom:.2rem}\n"
    "header p{margin:.2rem 0;color:var(--muted)}\n"
    "code{font-size:.92em}\n"
    ".fig{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);"
    "gap:1rem;align-items:start}\n"
    "figure{margin:0}\n"
    ".fig.stack{grid-template-columns:minmax(0,1fr)}"
    ".fig.stack figure{max-width:40rem}\n"
    "svg.chart{width:100%;height:auto;display:block}\n"
    "svg text{font-size:12px;fill:var(--fg)}\n"
    ".grid line{stroke:var(--line);stroke-width:1}\n"
    ".axis{stroke:var(--fg);stroke-width:1}\n"
    ".yt{text-anchor:end}.xt{text-anchor:middle}\n"
    ".xtitle{text-anchor:middle;fill:var(--muted)}"
    ".ytitle{text-anchor:middle;fill:var(--muted)}\n"
    ".b-pages{fill:#9dbbe0}.b-late,.sw.b-late{fill:#e3b39d;background:#e3b39d}"
    ".b-dirty{fill:var(--c2)}\n"
    ".b-bw{fill:var(--c1)}.b-kind{fill:var(--c1)}.b-mfd{fill:var(--c3)}"
    ".b-dev{fill:var(--c4)}.b-lat{fill:var(--c5)}\n"
    ".phase.ph0{fill:#eef2f7}.phase.ph1{fill:#f7f3ea}"
    ".downtime{fill:#d73a49;fill-opacity:.35}.phl{fill:var(--muted);"
    "font-size:11px}\n"
    ".legend{margin:.3rem 0;font-size:.85rem;color:var(--muted)}"
    ".legend span{margin-right:1rem;white-space:nowrap}\n"
    ".sw{display:inline-block;width:.8em;height:.8em;margin-right:.3em;"
    "vertical-align:-.05em;border:1px solid #0002}\n"
    ".sw.b-pages{background:#9dbbe0}.sw.b-dirty{background:var(--c2)}"
    ".sw.b-bw{background:var(--c1)}.sw.ph0{background:#eef2f7}"
    ".sw.downtime{background:#d73a4959}\n"
    ".tw{overflow-x:auto}\n"
    "table{border-collapse:collapse;font-size:.88rem;margin-bottom:.8rem;"
    "width:100%}\n"
    "caption{text-align:left;font-weight:600;padding:.2rem 0}\n"
    "th,td{padding:.2rem .5rem;border-bottom:1px solid var(--line);"
    "text-align:left;vertical-align:top}\n"
    "td.n{text-align:right;font-variant-numeric:tabular-nums;"
    "white-space:nowrap}\n"
    "table.summary{max-width:40rem}table.summary th{font-weight:500;"
    "color:var(--muted)}\n"
    ".note{background:#f6f8fa;border-left:3px solid var(--line);"
    "padding:.5rem .8rem}\n"
    ".warn{color:#b5542c}.ok{color:var(--muted)}\n"
    "footer{margin-top:2rem;color:var(--muted);font-size:.8rem}\n"
    /* a phone shows the 640 units of a chart in ~360 px: larger text */
    "@media (max-width:48rem){.fig{grid-template-columns:1fr}"
    "body{padding:.6rem;font-size:14px}svg text{font-size:17px}"
    ".phl{font-size:15px}}\n"
    "@media print{body{max-width:none;padding:0;font-size:10pt}"
    "section{break-inside:avoid;page-break-inside:avoid}"
    /* one column: the tables whole, under their charts */
    ".fig{grid-template-columns:minmax(0,1fr)}"
    "figure{max-width:16cm}svg.chart{max-height:8cm}.tw{overflow:visible}"
    "a{color:inherit;text-decoration:none}}\n";

GString *
mp_report_html(json_object *doc)
{
    Page pg = {g_string_sized_new(64 * 1024), doc, json_object_new_object()};
    GString *o = pg.out;
    /* a capture directory's document names it "capture" */
    const char *file = mp_json_string(doc, "file")
                           ? mp_json_string(doc, "file")
                           : mp_json_string(doc, "capture");
    const char *format = mp_json_string(doc, "format");

    g_string_append(
        o, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta "
           "charset=\"utf-8\">\n"
           "<meta name=\"viewport\" content=\"width=device-width, "
           "initial-scale=1\">\n"
           /* nothing to fetch, nothing to run: the page is whole */
           "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src "
           "'none'; style-src 'unsafe-inline'\">\n"
           "<meta name=\"generator\" content=\"migproxy " MP_VERSION "\">\n"
           "<title>Migration report: ");
    put_text(o, file ? file : "stream");
    g_string_append_printf(o,
                           "</title>\n<style>\n%s</style>\n</head>\n<body>\n"
                           "<header><h1>Migration report</h1>\n<p>",
                           page_css);
    put_text(o, file ? file : "(stream)");
    g_string_append(o, " &middot; ");
    put_text(o, format ? format : "stream");
    json_object *v;
    if ((v = mp_json_get(doc, "compression"))) {
        g_string_append(o, ", ");
        put_text(o, json_object_get_string(v));
    }
    if ((v = mp_json_get(doc, "start_time"))) {
        g_string_append(o, " &middot; started ");
        put_text(o, json_object_get_string(v));
    }
    g_string_append(o,
                    "</p>\n<p>Made by <code>migproxy report</code> " MP_VERSION
                    " from what <code>migproxy analyze --json"
                    "</code> gives for this input.</p></header>\n<main>\n");
    section_summary(&pg);
    section_pcap(&pg);
    section_rounds(&pg);
    section_bandwidth(&pg);
    section_kinds(&pg);
    section_devices(&pg);
    section_latency(&pg);
    g_string_append(o, "</main>\n<footer>Every number in this page carries "
                       "its place in the analyze document (data-src) and its "
                       "value (data-v); docs/report.md.</footer>\n"
                       "</body>\n</html>\n");
    json_object_put(pg.empty);
    return o;
}
