/* analyze-file.c: one stream file through a main-channel pipeline into an
 * analysis (and optionally a RAM image). */
#include "config.h"
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <gio/gio.h>
#include "analysis.h"
#include "analyze-file.h"
#include "capture-read.h"
#include "input-format.h"
#include "mapped-ram.h"
#include "pcap-read.h"
#include "metrics-report.h"
#include "qcow2.h"
#include "qmig-parser.h"
#include "pipeline.h"
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
    g_autoptr(GError) err = NULL;
    MpVmdesc *vd = mp_input_find_vmdesc_of(in, &err);
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

/* The document of a file that holds nothing to analyze: its one error
 * and why ("input_error": "open", "format" or "invalid"), no analysis. */
static json_object *
input_error_doc(const char *path, MpInputFormat format, const char *kind,
                const char *message)
{
    json_object *doc = json_object_new_object(), *errs;

    json_object_object_add(doc, "file", json_object_new_string(path));
    if (format != MP_FORMAT_UNKNOWN)
        json_object_object_add(
            doc, "format",
            json_object_new_string(mp_input_format_name(format)));
    json_object_object_add(doc, "input_error", json_object_new_string(kind));
    errs = json_object_new_array();
    json_object_array_add(errs, json_object_new_string(message));
    json_object_object_add(doc, "errors", errs);
    return doc;
}

/* A libvirt image of format "sparse" (libvirt 11+: QEMU wrote a
 * mapped-ram stream after the header): its document; NULL for the other
 * formats, which are streams read through MpInput. */
static json_object *
libvirt_sparse(const char *path, const MpAnalyzeOptions *opt, gboolean *ok)
{
    g_autoptr(MpLibvirtImage) img = NULL;
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0 || fstat(fd, &st) != 0) {
        if (fd >= 0)
            close(fd);
        return NULL; /* the stream path says why */
    }
    img = mp_libvirt_image_read(fd, path, st.st_size, NULL);
    close(fd);
    if (!img || img->format != MP_LIBVIRT_SPARSE)
        return NULL;
    json_object *doc = mp_mapped_ram_analyze(path, opt, img->data_offset, ok);
    json_object_object_add(doc, "format", json_object_new_string("libvirt"));
    json_object_object_add(doc, "libvirt", mp_libvirt_image_to_json(img));
    if (!img->complete) {
        json_object *an;
        if (json_object_object_get_ex(doc, "anomalies", &an))
            json_object_array_add(
                an, json_object_new_string("the libvirt save image is marked "
                                           "incomplete (libvirt did not "
                                           "finish writing it)"));
    }
    return doc;
}

/* What the file holds, by content: a stream (plain, zstd, in a libvirt
 * image) goes on below; NULL then.  Otherwise its document. */
static json_object *
dispatch(const char *path, const MpAnalyzeOptions *opt, MpInputFormat *format,
         gboolean *ok)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *why = NULL;

    if (!mp_input_format_detect(path, format, &why, &err)) {
        *ok = FALSE;
        return input_error_doc(path, MP_FORMAT_UNKNOWN, "open", err->message);
    }
    switch (*format) {
    case MP_FORMAT_UNKNOWN: {
        g_autofree char *msg = g_strdup_printf(
            "%s: not a known format (a QEMU migration stream, zstd-compressed "
            "or not, a libvirt save image, a mapped-ram file, a qcow2 image "
            "or a relay capture directory): %s",
            path, why);
        *ok = FALSE;
        return input_error_doc(path, *format, "format", msg);
    }
    case MP_FORMAT_PCAP: {
        /* its TCP connections reassembled, its migrations found by content
         * (docs/pcap.md) */
        json_object *doc, *e;
        if (opt->snapshot || opt->dump_ram) {
            g_autofree char *msg = g_strdup_printf(
                "%s: %s reads %s, not packet captures", path,
                opt->snapshot ? "--snapshot" : "--dump-ram",
                opt->snapshot ? "qcow2 images" : "stream files");
            *ok = FALSE;
            return input_error_doc(path, *format, "format", msg);
        }
        doc = mp_pcap_analyze_observed(path, opt->events, 0, opt->observer,
                                       opt->observer_data, ok);
        if (!json_object_object_get_ex(doc, "pcap", &e)) {
            /* libpcap could not read it: nothing analyzed */
            json_object *errs = json_object_object_get(doc, "errors");
            const char *msg = json_object_get_string(
                json_object_array_get_idx(errs, 0));
            json_object *out = input_error_doc(
                path, *format,
                strstr(msg ? msg : "", "link type") ? "format" : "invalid",
                msg ? msg : "unreadable capture");
            json_object_put(doc);
            *ok = FALSE;
            return out;
        }
        json_object_object_add(doc, "format", json_object_new_string("pcap"));
        return doc;
    }
    case MP_FORMAT_QCOW2: {
        if (opt->snapshot)
            return NULL; /* its VM state is a stream */
        /* no snapshot named: the list of them */
        g_autoptr(MpQcow2) q = mp_qcow2_open(path, &err);
        if (!q) {
            *ok = FALSE;
            return input_error_doc(path, *format,
                                   g_error_matches(err, G_IO_ERROR,
                                                   G_IO_ERROR_NOT_SUPPORTED)
                                       ? "format"
                                       : "invalid",
                                   err->message);
        }
        json_object *doc = json_object_new_object();
        json_object_object_add(doc, "file", json_object_new_string(path));
        json_object_object_add(doc, "format", json_object_new_string("qcow2"));
        json_object_object_add(doc, "qcow2", mp_qcow2_to_json(q));
        json_object_object_add(doc, "errors", json_object_new_array());
        *ok = TRUE;
        return doc;
    }
    case MP_FORMAT_MAPPED_RAM:
        return mp_mapped_ram_analyze(path, opt, 0, ok);
    case MP_FORMAT_CAPTURE: {
        /* a relay capture (docs/capture-format.md): its first session */
        json_object *doc = mp_capture_analyze_observed(
                         path, 0, opt->events, opt->observer,
                         opt->observer_data, ok),
                    *e;
        if (opt->dump_ram && json_object_object_get_ex(doc, "errors", &e)) {
            json_object_array_add(
                e, json_object_new_string("--dump-ram reads stream files, "
                                          "not capture directories"));
            *ok = FALSE;
        }
        json_object_object_add(doc, "format",
                               json_object_new_string("capture"));
        return doc;
    }
    case MP_FORMAT_LIBVIRT:
        if (!opt->snapshot)
            return libvirt_sparse(path, opt, ok);
        G_GNUC_FALLTHROUGH;
    default:
        if (opt->snapshot) {
            g_autofree char *msg = g_strdup_printf(
                "%s: --snapshot reads qcow2 images; this file is %s", path,
                mp_input_format_name(*format));
            *ok = FALSE;
            return input_error_doc(path, *format, "format", msg);
        }
        return NULL;
    }
}

static json_object *
analyze_file(const char *path, const MpAnalyzeOptions *opt, gboolean *ok)
{
    MpInputFormat format;
    json_object *early = dispatch(path, opt, &format, ok);
    if (early)
        return early;

    g_autoptr(GError) err = NULL;
    g_autoptr(MpInput) in = opt->snapshot
                                ? mp_input_open_snapshot(path, opt->snapshot,
                                                         &err)
                                : mp_input_open(path, &err);
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
        /* a libvirt image whose header is broken: nothing to analyze */
        *ok = FALSE;
        g_string_free(ctx.line, TRUE);
        return input_error_doc(path, format,
                               g_error_matches(err, G_IO_ERROR,
                                               G_IO_ERROR_NOT_SUPPORTED)
                                   ? "format"
                                   : "invalid",
                               err->message);
    }
    if (mp_input_libvirt(in) && !mp_input_libvirt(in)->complete)
        mp_analysis_anomaly(analysis,
                            "the libvirt save image is marked incomplete "
                            "(\"%s\": libvirt did not finish writing it)",
                            MP_LIBVIRT_MAGIC_PART);
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
    if (opt->observer)
        mp_pipeline_observe(pipe, opt->observer, opt->observer_data);
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
    json_object_object_add(doc, "format",
                           json_object_new_string(mp_input_format_name(format)));
    if (in && mp_input_compression(in))
        json_object_object_add(
            doc, "compression",
            json_object_new_string(mp_input_compression(in)));
    if (opt->snapshot)
        json_object_object_add(doc, "snapshot",
                               json_object_new_string(opt->snapshot));
    if (in && mp_input_libvirt(in))
        json_object_object_add(doc, "libvirt",
                               mp_libvirt_image_to_json(mp_input_libvirt(in)));
    return doc;
}

json_object *
mp_analyze_file(const char *path, const MpAnalyzeOptions *opt, gboolean *ok)
{
    /* every shape of document carries the output's version first */
    return mp_json_with_schema(analyze_file(path, opt, ok));
}
