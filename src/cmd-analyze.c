/* cmd-analyze.c: `migproxy analyze FILE...`, offline analysis of stream
 * files as QEMU writes them with `migrate "exec:cat > FILE"`. */
#include "config.h"
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <glib.h>
#include "analysis.h"
#include "commands.h"
#include "qmig-parser.h"
#include "ram-image.h"
#include "record-format.h"
#include "stream-input.h"

#define READ_SIZE   (1u << 20)
#define TAIL_SEARCH (16u << 20) /* the vmdesc is well below this */

typedef struct {
    gboolean json, events, no_vmdesc, quiet;
    char *dump_ram;
} AnalyzeOptions;

typedef struct {
    const AnalyzeOptions *opt;
    MpAnalysis *analysis;
    MpRamImage *image;
    GError *image_error;
    GString *line;
} FileCtx;

static MpRecordAction
on_record(const MpRecord *rec, gpointer user_data)
{
    FileCtx *ctx = user_data;

    mp_analysis_record(ctx->analysis, rec);
    if (ctx->opt->events) {
        g_string_truncate(ctx->line, 0);
        mp_record_describe(rec, ctx->line);
        puts(ctx->line->str);
    }
    if (ctx->image && !ctx->image_error
        && !mp_ram_image_record(ctx->image, rec, &ctx->image_error))
        return MP_REC_PAUSE; /* stop: the error is reported by the caller */
    return MP_REC_CONTINUE;
}

static MpVmdesc *
find_vmdesc(const char *path)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GBytes) tail = mp_input_read_tail(path, TAIL_SEARCH, &err);
    gsize off, len, size;

    if (!tail)
        return NULL;
    const guint8 *t = g_bytes_get_data(tail, &size);
    if (!mp_vmdesc_locate(t, size, &off, &len))
        return NULL;
    return mp_vmdesc_new((const char *)t + off, len, NULL);
}

static void
progress(const char *path, guint64 done, guint64 file_size, gboolean zst,
         gint64 start_us)
{
    double s = (g_get_monotonic_time() - start_us) / 1e6;
    if (zst || !file_size)
        fprintf(stderr, "\r%s: %.1f GB in %.1f s (%.2f GB/s)  ", path,
                done / 1e9, s, s > 0 ? done / 1e9 / s : 0);
    else
        fprintf(stderr, "\r%s: %5.1f%% %.1f GB, %.2f GB/s  ", path,
                100.0 * done / file_size, done / 1e9,
                s > 0 ? done / 1e9 / s : 0);
}

/* Analyzes one file into a JSON document.  FALSE only when the file could
 * not be read at all; stream errors end up in the document's errors[]. */
static json_object *
analyze_file(const char *path, const AnalyzeOptions *opt, gboolean *ok)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(MpInput) in = mp_input_open(path, &err);
    g_autoptr(MpAnalysis) analysis = mp_analysis_new();
    g_autoptr(MpVmdesc) vmdesc = NULL;
    g_autoptr(MpRamImage) image = NULL;
    g_autoptr(MpQmigParser) parser = NULL;
    FileCtx ctx = {opt, analysis, NULL, NULL, g_string_new(NULL)};
    guint64 total = 0;
    gboolean show = !opt->quiet && isatty(STDERR_FILENO);
    gint64 start = g_get_monotonic_time(), last = start;

    *ok = TRUE;
    if (!in) {
        mp_analysis_error(analysis, err);
        *ok = FALSE;
        goto done;
    }
    if (opt->dump_ram) {
        g_autofree char *dir = g_strdup(opt->dump_ram);
        image = mp_ram_image_new(dir, &err);
        if (!image) {
            mp_analysis_error(analysis, err);
            *ok = FALSE;
            goto done;
        }
        ctx.image = image;
    }
    if (!opt->no_vmdesc)
        vmdesc = find_vmdesc(path);

    parser = mp_qmig_parser_new("main", on_record, &ctx);
    if (vmdesc) {
        mp_qmig_parser_set_vmdesc(parser, vmdesc);
        mp_analysis_set_vmdesc(analysis, vmdesc);
    }
    guint8 *buf = g_malloc(READ_SIZE);
    gboolean ended = FALSE, failed = FALSE;
    for (;;) {
        gssize n = mp_input_read(in, buf, READ_SIZE, &err);
        if (n < 0) {
            mp_analysis_error(analysis, err);
            g_clear_error(&err);
            failed = TRUE;
            break;
        }
        if (n == 0)
            break;
        total += n;
        if (ended) {
            mp_analysis_anomaly(analysis,
                                "%" G_GSSIZE_FORMAT " bytes after the end of "
                                "the stream",
                                n);
            continue;
        }
        if (image)
            mp_ram_image_set_buffer(image, buf, n);
        gsize off = 0;
        while (off < (gsize)n && !failed && !ended) {
            gsize used = 0;
            MpFeedStatus st =
                mp_qmig_parser_feed(parser, buf + off, n - off, &used, &err);
            off += used;
            if (ctx.image_error) {
                mp_analysis_error(analysis, ctx.image_error);
                failed = TRUE;
            } else if (st == MP_FEED_ERROR) {
                mp_analysis_error(analysis, err);
                g_clear_error(&err);
                failed = TRUE;
            } else if (st == MP_FEED_END) {
                ended = TRUE;
                if (off < (gsize)n)
                    mp_analysis_anomaly(analysis,
                                        "%zu bytes after the end of the "
                                        "stream",
                                        (gsize)n - off);
            }
        }
        if (image && !failed && !mp_ram_image_flush(image, &err)) {
            mp_analysis_error(analysis, err);
            g_clear_error(&err);
            failed = TRUE;
        }
        if (failed)
            break;
        if (show && g_get_monotonic_time() - last > 500000) {
            last = g_get_monotonic_time();
            progress(path, total, mp_input_file_size(in),
                     mp_input_is_compressed(in), start);
        }
    }
    g_free(buf);
    if (show && last != start)
        fprintf(stderr, "\r\033[K");
    if (!failed && !ended && !mp_qmig_parser_finish(parser, &err)) {
        mp_analysis_error(analysis, err);
        g_clear_error(&err);
        failed = TRUE;
    }
    if (image && !mp_ram_image_close(image, &err)) {
        mp_analysis_error(analysis, err);
        g_clear_error(&err);
        failed = TRUE;
    }
    if (failed)
        *ok = FALSE;
done:
    mp_analysis_finish(analysis, total);
    g_string_free(ctx.line, TRUE);
    json_object *doc = mp_analysis_to_json(analysis);
    json_object_object_add(doc, "file", json_object_new_string(path));
    return doc;
}

int
mp_cmd_analyze(int argc, char **argv)
{
    AnalyzeOptions opt = {0};
    g_auto(GStrv) files = NULL;
    GOptionEntry entries[] = {
        {"json", 'j', 0, G_OPTION_ARG_NONE, &opt.json,
         "Print one JSON document instead of the summary", NULL},
        {"dump-ram", 'd', 0, G_OPTION_ARG_FILENAME, &opt.dump_ram,
         "Write each RAM block, as the destination would hold it after "
         "loading the stream, to a file in DIR (plus DIR/index.json)",
         "DIR"},
        {"events", 'e', 0, G_OPTION_ARG_NONE, &opt.events,
         "Print every record (offset, length, kind, fields), one per line",
         NULL},
        {"no-vmdesc", 0, 0, G_OPTION_ARG_NONE, &opt.no_vmdesc,
         "Do not slice device sections with the vmdesc at the file's end",
         NULL},
        {"quiet", 'q', 0, G_OPTION_ARG_NONE, &opt.quiet,
         "No progress display on stderr", NULL},
        {G_OPTION_REMAINING, 0, 0, G_OPTION_ARG_FILENAME_ARRAY, &files, NULL,
         "FILE..."},
        {NULL},
    };
    g_autoptr(GOptionContext) oc = g_option_context_new("FILE...");
    g_autoptr(GError) err = NULL;

    g_option_context_set_summary(
        oc, "Analyze QEMU migration stream files: what the stream holds, "
            "page by page.\n\n"
            "FILE is a stream as QEMU writes it with\n"
            "  (qemu) migrate \"exec:cat > FILE\"\n"
            "or the same compressed with zstd (detected by content).");
    g_option_context_set_description(
        oc, "Examples:\n"
            "  migproxy analyze vm.mig                  summary\n"
            "  migproxy analyze --json vm.mig.zst | jq .ram.pages\n"
            "  migproxy analyze --dump-ram out/ vm.mig  RAM images; then\n"
            "      cmp out/pc.ram guest-memory.bin\n"
            "  migproxy analyze --events vm.mig | less  every record\n\n"
            "Exit status: 0 if every file parsed cleanly, 1 if a file could "
            "not be read or holds an invalid stream, 2 on usage errors.");
    g_option_context_add_main_entries(oc, entries, NULL);
    if (!g_option_context_parse(oc, &argc, &argv, &err)) {
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
        fprintf(stderr,
                "migproxy analyze: --dump-ram takes a single FILE\n");
        return 2;
    }

    int status = 0;
    json_object *all = json_object_new_array();
    for (guint i = 0; files[i]; i++) {
        gboolean ok;
        json_object *doc = analyze_file(files[i], &opt, &ok);
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
            for (size_t k = 0; k < json_object_array_length(errs); k++)
                fprintf(stderr, "migproxy analyze: %s: %s\n", files[i],
                        json_object_get_string(
                            json_object_array_get_idx(errs, k)));
        json_object_put(doc);
    }
    if (opt.json) {
        json_object *out = json_object_array_length(all) == 1
                               ? json_object_array_get_idx(all, 0)
                               : all;
        puts(json_object_to_json_string_ext(
            out, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
    }
    json_object_put(all);
    g_free(opt.dump_ram);
    return status;
}
