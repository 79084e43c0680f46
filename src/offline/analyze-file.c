/* analyze-file.c: one stream file through the main-channel parser into an
 * analysis (and optionally a RAM image). */
#include "config.h"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <gio/gio.h>
#include "analysis.h"
#include "analyze-file.h"
#include "capture-read.h"
#include "qmig-parser.h"
#include "ram-image.h"
#include "record-format.h"
#include "stream-input.h"

#define READ_SIZE (1u << 20)

typedef struct {
    const MpAnalyzeOptions *opt;
    MpAnalysis *analysis;
    MpRamImage *image;
    GError *stop_error; /* the RAM image or --events output failed */
    GString *line;
} FileCtx;

static MpRecordAction
on_record(const MpRecord *rec, gpointer user_data)
{
    FileCtx *ctx = user_data;

    mp_analysis_record(ctx->analysis, rec);
    if (ctx->stop_error)
        return MP_REC_PAUSE;
    if (ctx->opt->events) {
        g_string_truncate(ctx->line, 0);
        mp_record_describe(rec, ctx->line);
        if (puts(ctx->line->str) == EOF) {
            /* a full disk: an error, not a silently short listing */
            int e = errno;
            g_set_error(&ctx->stop_error, G_IO_ERROR, g_io_error_from_errno(e),
                        "--events: writing to the standard output: %s",
                        g_strerror(e));
            return MP_REC_PAUSE;
        }
    }
    if (ctx->image && !mp_ram_image_record(ctx->image, rec, &ctx->stop_error))
        return MP_REC_PAUSE; /* stop: the error is reported by the caller */
    return MP_REC_CONTINUE;
}

/* The stream's vmdesc, or NULL: none, or one it will do without (an
 * anomaly says why: too large to parse, malformed). */
static MpVmdesc *
find_vmdesc(const char *path, const MpInput *in, MpAnalysis *analysis)
{
    g_autoptr(GError) err = NULL;
    MpVmdesc *vd = mp_input_find_vmdesc(path, mp_input_is_compressed(in), &err);
    if (err)
        mp_analysis_anomaly(analysis, "%s; device sections are not sliced",
                            err->message);
    return vd;
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

/* Reads the stream's first 8 bytes (magic and version) into the parser.
 * @return FALSE with an error if they are not a stream header. */
static gboolean
check_header(MpInput *in, MpQmigParser *parser, guint64 *total, GError **error)
{
    guint8 hdr[8];
    gsize have = 0, used;
    gssize n;

    while (have < sizeof(hdr)
           && (n = mp_input_read(in, hdr + have, sizeof(hdr) - have, error))
                  > 0)
        have += n;
    if (have < sizeof(hdr) && n < 0)
        return FALSE;
    *total += have;
    if (mp_qmig_parser_feed(parser, hdr, have, &used, error) == MP_FEED_ERROR)
        return FALSE;
    /* a file shorter than a header ends here, with the parser's word */
    return have == sizeof(hdr) || mp_qmig_parser_finish(parser, error);
}

json_object *
mp_analyze_file(const char *path, const MpAnalyzeOptions *opt, gboolean *ok)
{
    if (mp_capture_is_dir(path)) {
        /* a relay capture (docs/capture-format.md): its first session */
        json_object *doc = mp_capture_analyze(path, 0, opt->events, ok), *e;
        if (opt->dump_ram && json_object_object_get_ex(doc, "errors", &e)) {
            json_object_array_add(
                e, json_object_new_string("--dump-ram reads stream files, "
                                          "not capture directories"));
            *ok = FALSE;
        }
        return doc;
    }
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
    parser = mp_qmig_parser_new("main", on_record, &ctx);
    /* the header first: a file that is no stream is told so before a
     * .zst is decompressed in full to find its vmdesc */
    if (!check_header(in, parser, &total, &err)) {
        mp_analysis_error(analysis, err);
        *ok = FALSE;
        goto done;
    }
    if (!opt->no_vmdesc)
        vmdesc = find_vmdesc(path, in, analysis);
    if (vmdesc) {
        mp_qmig_parser_set_vmdesc(parser, vmdesc);
        mp_analysis_set_vmdesc(analysis, vmdesc);
    }
    guint8 *buf = g_malloc(READ_SIZE);
    gboolean ended = FALSE, failed = FALSE, image_failed = FALSE;
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
            if (ctx.stop_error) {
                mp_analysis_error(analysis, ctx.stop_error);
                image_failed = ctx.image != NULL;
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
            image_failed = failed = TRUE;
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
    /* an image a write failed for is left without its index.json (and
     * its pending pages, which would only fail again) */
    if (image && !image_failed && !mp_ram_image_close(image, &err)) {
        mp_analysis_error(analysis, err);
        g_clear_error(&err);
        failed = TRUE;
    }
    if (failed)
        *ok = FALSE;
done:
    mp_analysis_finish(analysis, total);
    g_string_free(ctx.line, TRUE);
    g_clear_error(&ctx.stop_error);
    json_object *doc = mp_analysis_to_json(analysis);
    json_object_object_add(doc, "file", json_object_new_string(path));
    return doc;
}

