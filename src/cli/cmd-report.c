/* cmd-report.c: `migproxy report INPUT -o FILE.html`, what `analyze
 * --json` says of INPUT as one self-contained HTML page with charts
 * (src/offline/report-html.c, docs/report.md). */
#include "config.h"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <glib.h>
#include <gio/gio.h>
#include "analyze-file.h"
#include "commands.h"
#include "out-file.h"
#include "parse-common.h"
#include "report-html.h"

/* Exit statuses: analyze's (documented in --help) */
enum {
    EXIT_INVALID = 1, /* invalid content, or the page could not be written */
    EXIT_USAGE = 2,
    EXIT_NO_INPUT = 3, /* INPUT cannot be opened or read */
    EXIT_FORMAT = 4,   /* INPUT is no known format, or a qcow2 image
                          without --snapshot (no stream to draw) */
};

typedef struct {
    char *output;
    char *snapshot;
    gboolean no_vmdesc;
    gboolean quiet;
    GStrv inputs;
} ReportArgs;

static GOptionEntry *
report_entries(gpointer store)
{
    ReportArgs *a = store;
    const GOptionEntry entries[] = {
        {"output", 'o', 0, G_OPTION_ARG_FILENAME, &a->output,
         "Write the page to FILE (- for standard output); required", "FILE"},
        {"snapshot", 's', 0, G_OPTION_ARG_STRING, &a->snapshot,
         "qcow2 image: draw the VM state of this internal snapshot (name or "
         "id)",
         "NAME"},
        {"no-vmdesc", 0, 0, G_OPTION_ARG_NONE, &a->no_vmdesc,
         "Do not slice device sections with the vmdesc at the stream's end "
         "(no device sizes then)",
         NULL},
        {"quiet", 'q', 0, G_OPTION_ARG_NONE, &a->quiet,
         "No progress display on stderr", NULL},
        /* (the synopsis names INPUT once, from .operands) */
        {G_OPTION_REMAINING, 0, 0, G_OPTION_ARG_FILENAME_ARRAY, &a->inputs,
         NULL, NULL},
        {NULL},
    };
    return g_memdup2(entries, sizeof(entries));
}

/* Writes `page` to `path` (0600, replacing a file there as out-file.h
 * does: the report names the guest's machine and devices) or stdout. */
static gboolean
write_page(const char *path, const GString *page, GError **error)
{
    if (strcmp(path, "-") != 0)
        return mp_out_path_replace(path, page->str, page->len, error);
    errno = 0;
    if (fwrite(page->str, 1, page->len, stdout) != page->len
        || fflush(stdout) != 0) {
        g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno),
                    "writing standard output: %s",
                    errno ? g_strerror(errno) : "write error");
        return FALSE;
    }
    return TRUE;
}

static int
report_run(int argc, char **argv)
{
    ReportArgs a = {0};
    g_autofree GOptionEntry *entries = report_entries(&a);
    g_autoptr(GOptionContext) oc = mp_command_context(&mp_cmd_report, entries);
    g_autoptr(GError) err = NULL;

    gboolean parsed = g_option_context_parse(oc, &argc, &argv, &err);
    g_auto(GStrv) inputs = a.inputs;
    g_autofree char *output = a.output;
    g_autofree char *snapshot = a.snapshot;
    if (!parsed) {
        fprintf(stderr, "migproxy report: %s\n(see migproxy report --help)\n",
                err->message);
        return EXIT_USAGE;
    }
    if (!inputs || !inputs[0] || inputs[1]) {
        fprintf(stderr, "migproxy report: %s\n(see migproxy report --help)\n",
                inputs && inputs[0] ? "one INPUT at a time" : "no INPUT given");
        return EXIT_USAGE;
    }
    if (!output) {
        fprintf(stderr, "migproxy report: no -o FILE given (where the page "
                        "goes; - for standard output)\n");
        return EXIT_USAGE;
    }
    /* fail before the analysis of a large file, not after it */
    if (strcmp(output, "-") != 0 && !mp_out_path_check(output, &err)) {
        fprintf(stderr, "migproxy report: %s\n", err->message);
        return EXIT_INVALID;
    }

    MpAnalyzeOptions opt = {
        .no_vmdesc = a.no_vmdesc,
        .quiet = a.quiet,
        .snapshot = snapshot,
    };
    gboolean ok;
    json_object *doc = mp_analyze_file(inputs[0], &opt, &ok), *ie, *errs;
    json_object_object_get_ex(doc, "errors", &errs);
    if (json_object_object_get_ex(doc, "input_error", &ie)) {
        const char *kind = json_object_get_string(ie);
        int status = g_str_equal(kind, "open")     ? EXIT_NO_INPUT
                     : g_str_equal(kind, "format") ? EXIT_FORMAT
                                                   : EXIT_INVALID;
        g_autofree char *e = mp_printable(
            json_object_get_string(json_object_array_get_idx(errs, 0)));
        fprintf(stderr, "migproxy report: %s\n", e);
        json_object_put(doc); /* `kind` was its */
        return status;
    }
    if (json_object_object_get_ex(doc, "qcow2", NULL)) {
        fprintf(stderr,
                "migproxy report: %s: a qcow2 image; name the snapshot to "
                "draw with --snapshot NAME (migproxy analyze %s lists "
                "them)\n",
                inputs[0], inputs[0]);
        json_object_put(doc);
        return EXIT_FORMAT;
    }
    /* a page for a broken stream too: it shows what was parsed, and its
     * errors; the exit status says it */
    for (size_t k = 0; errs && k < json_object_array_length(errs); k++) {
        g_autofree char *e = mp_printable(
            json_object_get_string(json_object_array_get_idx(errs, k)));
        fprintf(stderr, "migproxy report: %s: %s\n", inputs[0], e);
    }
    g_autoptr(GString) page = mp_report_html(doc);
    json_object_put(doc);
    if (!write_page(output, page, &err)) {
        fprintf(stderr, "migproxy report: %s\n", err->message);
        return EXIT_INVALID;
    }
    return ok ? 0 : EXIT_INVALID;
}

const MpCommand mp_cmd_report = {
    .name = "report",
    .purpose = "draw a captured migration as one HTML page with charts",
    .operands = "INPUT",
    .summary =
        "Draw what `migproxy analyze --json` says of INPUT as one HTML page: "
        "a summary table, dirty pages per round, bandwidth over time, page "
        "kinds, device state sizes and post-copy request latencies, each "
        "chart with a table of its numbers beside it.\n\n"
        "INPUT is anything analyze reads: a stream file (plain or zstd), a "
        "libvirt save image, a mapped-ram file, a qcow2 image with "
        "--snapshot, a relay capture directory (migproxy relay --capture) "
        "or a packet capture (pcap, pcapng; its first migration session).  "
        "Only captures have times: for a stream file the page says there "
        "is no time axis and draws no bandwidth or latency chart.\n\n"
        "The page is whole: styles inline, charts as SVG that migproxy "
        "draws, no script, nothing fetched (its Content-Security-Policy "
        "forbids it), so it opens offline and can be mailed or archived.  "
        "It scales to a phone and prints one section per page where it "
        "fits.  Every number in it carries its place in analyze's JSON "
        "(data-src) and its value (data-v).",
    .description =
        "Examples:\n"
        "  migproxy report vm.mig.zst -o vm.html        a stream file\n"
        "  migproxy relay --listen 127.0.0.1:4444 --to 127.0.0.1:5555 "
        "--capture cap/ --once\n"
        "  migproxy report cap/ -o migration.html       with bandwidth over "
        "time\n"
        "  tcpdump -i lo -s 0 -w mig.pcap tcp port 4444 &  (then migrate)\n"
        "  migproxy report mig.pcap -o mig.html         the same from a pcap\n"
        "  migproxy report -o - vm.mig | gzip > vm.html.gz\n\n"
        "The page is written 0600, through a temporary file renamed over "
        "FILE (docs/report.md).\n\n"
        "Exit status: 0 if the page was written for an input that parsed "
        "cleanly; 1 if the input holds an invalid stream (the page is "
        "still written, with its errors) or the page could not be written; "
        "2 on usage errors; 3 if INPUT cannot be opened or read; 4 if INPUT "
        "is not a known format, or a qcow2 image without --snapshot.",
    .entries = report_entries,
    .store_size = sizeof(ReportArgs),
    .run = report_run,
};
