/* cmd-analyze.c: `migproxy analyze FILE...`, offline analysis of stream
 * files as QEMU writes them with `migrate "exec:cat > FILE"`. */
#include "config.h"
#include <errno.h>
#include <stdio.h>
#include <glib.h>
#include "analysis.h"
#include "analyze-file.h"
#include "commands.h"
#include "parse-common.h"

typedef struct {
    MpAnalyzeOptions opt;
    GStrv files;
} AnalyzeArgs;

static GOptionEntry *
analyze_entries(gpointer store)
{
    AnalyzeArgs *a = store;
    const GOptionEntry entries[] = {
        {"json", 'j', 0, G_OPTION_ARG_NONE, &a->opt.json,
         "Print one JSON document instead of the summary", NULL},
        {"dump-ram", 'd', 0, G_OPTION_ARG_FILENAME, &a->opt.dump_ram,
         "Write each RAM block, as the destination would hold it after "
         "loading the stream, to a file in DIR (plus DIR/index.json)",
         "DIR"},
        {"events", 'e', 0, G_OPTION_ARG_NONE, &a->opt.events,
         "Print every record (offset, length, kind, fields), one per line",
         NULL},
        {"no-vmdesc", 0, 0, G_OPTION_ARG_NONE, &a->opt.no_vmdesc,
         "Do not slice device sections with the vmdesc at the file's end",
         NULL},
        {"quiet", 'q', 0, G_OPTION_ARG_NONE, &a->opt.quiet,
         "No progress display on stderr", NULL},
        {G_OPTION_REMAINING, 0, 0, G_OPTION_ARG_FILENAME_ARRAY, &a->files, NULL,
         "FILE..."},
        {NULL},
    };
    return g_memdup2(entries, sizeof(entries));
}

static int
analyze_run(int argc, char **argv)
{
    AnalyzeArgs a = {0};
    g_autofree GOptionEntry *entries = analyze_entries(&a);
    g_autoptr(GOptionContext) oc = mp_command_context(&mp_cmd_analyze, entries);
    g_autoptr(GError) err = NULL;

    gboolean parsed = g_option_context_parse(oc, &argc, &argv, &err);
    /* owned here, whatever the parse left in them */
    g_auto(GStrv) files = a.files;
    g_autofree char *dump_ram = a.opt.dump_ram;
    MpAnalyzeOptions opt = a.opt; /* borrows dump_ram */
    if (!parsed) {
        fprintf(stderr, "migproxy analyze: %s\n(see migproxy analyze --help)\n",
                err->message);
        return 2;
    }
    if (!files || !files[0]) {
        fprintf(stderr, "migproxy analyze: no FILE given\n"
                        "(see migproxy analyze --help)\n");
        return 2;
    }
    if (opt.dump_ram && g_strv_length(files) > 1) {
        fprintf(stderr, "migproxy analyze: --dump-ram takes a single FILE\n");
        return 2;
    }

    int status = 0, out_errno = 0;
    json_object *all = json_object_new_array();
    for (guint i = 0; files[i]; i++) {
        gboolean ok;
        json_object *doc = mp_analyze_file(files[i], &opt, &ok);
        if (!ok)
            status = 1;
        if (opt.json) {
            json_object_array_add(all, doc);
            continue;
        }
        if (!opt.events) {
            if (files[1])
                printf("%s== %s ==\n", i ? "\n" : "", files[i]);
            mp_analysis_print(doc, stdout);
        }
        json_object *errs;
        if (json_object_object_get_ex(doc, "errors", &errs))
            for (size_t k = 0; k < json_object_array_length(errs); k++) {
                /* (errors quote names from the stream) */
                g_autofree char *e = mp_printable(
                    json_object_get_string(json_object_array_get_idx(errs, k)));
                fprintf(stderr, "migproxy analyze: %s: %s\n", files[i], e);
            }
        json_object_put(doc);
    }
    if (opt.json) {
        json_object *out = json_object_array_length(all) == 1
                               ? json_object_array_get_idx(all, 0)
                               : all;
        if (puts(json_object_to_json_string_ext(
                out, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE))
            == EOF)
            out_errno = errno;
    }
    json_object_put(all);
    /* A full disk or a file system that fails on close: an error and a
     * non-zero exit, not a silently short output (a closed pipe ends the
     * command with SIGPIPE, as for any filter). */
    errno = 0;
    gboolean bad_output = fflush(stdout) != 0 || ferror(stdout);
    int e = errno ? errno : out_errno;
    if (fclose(stdout) != 0 && !bad_output) {
        bad_output = TRUE;
        e = errno;
    }
    if (bad_output) {
        fprintf(stderr, "migproxy analyze: writing the output: %s\n",
                e ? g_strerror(e) : "write error");
        status = 1;
    }
    return status;
}

const MpCommand mp_cmd_analyze = {
    .name = "analyze",
    .purpose = "analyze captured migration streams (summary, JSON, RAM images)",
    .operands = "FILE...",
    .summary = "Analyze QEMU migration stream files: what the stream holds, "
               "page by page.\n\n"
               "FILE is a stream as QEMU writes it with\n"
               "  (qemu) migrate \"exec:cat > FILE\"\n"
               "or the same compressed with zstd (detected by content).",
    .description =
        "Examples:\n"
        "  migproxy analyze vm.mig                  summary\n"
        "  migproxy analyze --json vm.mig.zst | jq .ram.pages\n"
        "  migproxy analyze --dump-ram out/ vm.mig  RAM images; then\n"
        "      cmp out/pc.ram guest-memory.bin\n"
        "  migproxy analyze --events vm.mig | less  every record\n\n"
        "Exit status: 0 if every file parsed cleanly, 1 if a file could "
        "not be read or holds an invalid stream, or the output (standard "
        "output, --dump-ram) could not be written, 2 on usage errors.",
    .entries = analyze_entries,
    .store_size = sizeof(AnalyzeArgs),
    .run = analyze_run,
};
