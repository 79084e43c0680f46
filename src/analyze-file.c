/* analyze-file.c: one stream file through a main-channel pipeline into an
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
#include "pipeline.h"
#include "ram-image.h"
#include "record-format.h"
#include "stream-input.h"

#define READ_SIZE   (1u << 20)
/* The vmdesc is the stream's tail: 44 KiB for a q35 guest with no disk or
 * NIC.  Look in a small tail first and widen up to TAIL_SEARCH: reading
 * (and faulting in) 16 MiB up front cost 14 % of a 1.2 GB summary. */
#define TAIL_FIRST  (256u << 10)
#define TAIL_SEARCH (16u << 20) /* the vmdesc is well below this */

typedef struct {
    const MpAnalyzeOptions *opt;
    MpAnalysis *analysis;
    MpRamImage *image;
    GError *stop_error; /* the RAM image or --events output failed */
    GString *line;
    gboolean cut; /* the stream ended inside a record */
} FileCtx;

static MpRecordAction
on_record(MpPipeline *p, const MpRecord *rec, gpointer user_data)
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

static void
on_gave_up(MpPipeline *p, guint64 off, const GError *err, gpointer user_data)
{
    FileCtx *ctx = user_data;
    mp_analysis_error(ctx->analysis, err);
}

static void
on_trailing(MpPipeline *p, guint64 off, gsize len, gpointer user_data)
{
    FileCtx *ctx = user_data;
    mp_analysis_anomaly(ctx->analysis, "%zu bytes after the end of the stream",
                        len);
}

static void
on_end(MpPipeline *p, MpEndReason how, const GError *cut, gint64 now_us,
       gpointer user_data)
{
    FileCtx *ctx = user_data;
    if (cut) {
        mp_analysis_error(ctx->analysis, cut);
        ctx->cut = TRUE;
    }
}

static const MpPipelineObserver file_observer = {
    .record = on_record,
    .gave_up = on_gave_up,
    .trailing = on_trailing,
    .end = on_end,
};

/* The stream's vmdesc, or NULL: none, or one it will do without (an
 * anomaly says why: too large to parse, malformed). */
static MpVmdesc *
find_vmdesc(const char *path, const MpInput *in, MpAnalysis *analysis)
{
    /* a zstd tail costs a pass over the whole file: take it once */
    gsize max = mp_input_is_compressed(in) ? TAIL_SEARCH : TAIL_FIRST;

    for (;; max = MIN(max * 8, TAIL_SEARCH)) {
        g_autoptr(GError) err = NULL;
        g_autoptr(GBytes) tail = mp_input_read_tail(path, max, &err);
        gsize off, len, size;

        if (!tail)
            return NULL;
        const guint8 *t = g_bytes_get_data(tail, &size);
        if (mp_vmdesc_locate(t, size, &off, &len)) {
            MpVmdesc *vd = mp_vmdesc_new((const char *)t + off, len, &err);
            if (!vd)
                mp_analysis_anomaly(analysis,
                                    "%s; device sections are not sliced",
                                    err->message);
            return vd;
        }
        if (size < max || max == TAIL_SEARCH)
            return NULL; /* the whole file, or as far as we look */
    }
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

/* Reads the stream's first 8 bytes (magic and version) into the pipeline.
 * @return FALSE if they are not a stream header (the pipeline's observer
 * told the analysis why) or with @error set if they cannot be read. */
static gboolean
check_header(MpInput *in, MpPipeline *pipe, guint64 *total, GError **error)
{
    guint8 hdr[8];
    gsize have = 0;
    gssize n;

    while (have < sizeof(hdr)
           && (n = mp_input_read(in, hdr + have, sizeof(hdr) - have, error))
                  > 0)
        have += n;
    if (have < sizeof(hdr) && n < 0)
        return FALSE;
    *total += have;
    mp_pipeline_feed(pipe, hdr, have, 0);
    /* a file shorter than a header ends here, with the parser's word */
    if (have < sizeof(hdr))
        mp_pipeline_end(pipe, MP_END_FIN, 0);
    return mp_pipeline_state(pipe) == MP_PIPELINE_FOLLOWING;
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
    g_autoptr(MpPipeline) pipe = NULL;
    FileCtx ctx = {opt, analysis, NULL, NULL, g_string_new(NULL), FALSE};
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
    pipe = mp_pipeline_new(0, MP_DIR_TO_DST);
    mp_pipeline_set_name(pipe, "main");
    mp_pipeline_set_kind(pipe, MP_CHAN_MAIN, NULL);
    mp_pipeline_observe(pipe, &file_observer, &ctx);
    /* the header first: a file that is no stream is told so before a
     * .zst is decompressed in full to find its vmdesc */
    if (!check_header(in, pipe, &total, &err)) {
        if (err)
            mp_analysis_error(analysis, err);
        *ok = FALSE;
        goto done;
    }
    if (!opt->no_vmdesc)
        vmdesc = find_vmdesc(path, in, analysis);
    if (vmdesc) {
        mp_pipeline_set_vmdesc(pipe, vmdesc);
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
        mp_pipeline_feed(pipe, buf, n, 0);
        if (ctx.stop_error) {
            mp_analysis_error(analysis, ctx.stop_error);
            image_failed = ctx.image != NULL;
            failed = TRUE;
        } else if (mp_pipeline_state(pipe) == MP_PIPELINE_GAVE_UP) {
            failed = TRUE;
        } else if (mp_pipeline_state(pipe) == MP_PIPELINE_ENDED) {
            ended = TRUE;
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
    if (!failed && !ended) {
        mp_pipeline_end(pipe, MP_END_FIN, 0);
        failed = ctx.cut;
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

