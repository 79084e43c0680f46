/* mapped-ram.c: a mapped-ram file read by following its offsets: the
 * stream through a main-channel pipeline, which pauses after each block's
 * header so that its bitmap and pages are skipped; the pages themselves
 * as the bitmaps say. */
#include "config.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <gio/gio.h>
#include "analysis.h"
#include "mapped-ram.h"
#include "pipeline.h"
#include "ram-image.h"
#include "record-format.h"
#include "stream-input.h"

#define READ_SIZE   (1u << 20)
#define BITMAP_READ (64u << 10) /* bytes of bitmap read at a time */

typedef struct {
    char *name;
    guint64 used_length;
    guint64 page_size;
    guint64 bitmap_offset;
    guint64 pages_offset;
} Block;

typedef struct {
    const MpAnalyzeOptions *opt;
    const char *path;
    int fd;
    guint64 size;
    MpAnalysis *analysis;
    MpRamImage *image;
    GError *error; /* a bad header, a failed read or write */
    GString *line;
    Block pending; /* a block whose header came: its pages next */
    gboolean have_pending;
    gboolean cut; /* the stream ended inside a record */
    guint64 blocks, normal, zero;
} Ctx;

static gboolean
pread_all(Ctx *c, void *buf, gsize len, guint64 off)
{
    guint8 *p = buf;
    while (len) {
        gssize n = pread(c->fd, p, len, off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int e = n < 0 ? errno : 0;
            g_set_error(&c->error, G_IO_ERROR,
                        e ? g_io_error_from_errno(e)
                          : G_IO_ERROR_PARTIAL_INPUT,
                        "%s: %s at offset %" G_GUINT64_FORMAT, c->path,
                        e ? g_strerror(e) : "the file ends", off);
            return FALSE;
        }
        p += n;
        off += n;
        len -= n;
    }
    return TRUE;
}

static guint64
bitmap_bytes(guint64 pages)
{
    /* an array of the writing host's unsigned longs (64-bit) */
    return (pages + 63) / 64 * 8;
}

/* The block's header is one QEMU would write: page size, the bitmap
 * after the header, the pages after the bitmap, all inside the file. */
static gboolean
check_block(Ctx *c, const Block *b, guint64 stream_at)
{
    const char *what = NULL;
    guint64 bm = bitmap_bytes(b->used_length / MP_TARGET_PAGE_SIZE);

    if (b->page_size != MP_TARGET_PAGE_SIZE)
        what = "page size (expected 4096)";
    else if (b->used_length % MP_TARGET_PAGE_SIZE)
        what = "used length (not a whole number of pages)";
    else if (b->bitmap_offset < stream_at)
        what = "bitmap offset (before the header)";
    else if (b->pages_offset < b->bitmap_offset
             || b->pages_offset - b->bitmap_offset < bm)
        what = "pages offset (inside the bitmap)";
    else if (b->pages_offset > c->size
             || b->used_length > c->size - b->pages_offset)
        what = "pages region (past the file's end: truncated?)";
    if (!what)
        return TRUE;
    g_set_error(&c->error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                "%s: mapped-ram header of RAMBlock \"%s\" at offset %"
                G_GUINT64_FORMAT ": bad %s (page size %" G_GUINT64_FORMAT
                ", bitmap at %" G_GUINT64_FORMAT ", pages at %" G_GUINT64_FORMAT
                ", %" G_GUINT64_FORMAT " bytes, file of %" G_GUINT64_FORMAT
                ")",
                c->path, b->name, stream_at - 28, what, b->page_size,
                b->bitmap_offset, b->pages_offset, b->used_length, c->size);
    return FALSE;
}

/* A record of the stream, or a page of the bitmaps: into the analysis,
 * the --events listing and the image.  FALSE with c->error. */
static gboolean
take_record(Ctx *c, const MpRecord *rec)
{
    mp_analysis_record(c->analysis, rec);
    if (c->opt->events) {
        g_string_truncate(c->line, 0);
        mp_record_describe(rec, c->line);
        if (puts(c->line->str) == EOF) {
            int e = errno;
            g_set_error(&c->error, G_IO_ERROR, g_io_error_from_errno(e),
                        "--events: writing to the standard output: %s",
                        g_strerror(e));
            return FALSE;
        }
    }
    return !c->image || mp_ram_image_record(c->image, rec, &c->error);
}

static MpRecordAction
on_record(MpPipeline *p, const MpRecord *rec, gpointer user_data)
{
    Ctx *c = user_data;

    if (!take_record(c, rec))
        return MP_REC_PAUSE;
    if (rec->kind == MP_REC_RAM_PAGE) {
        g_set_error(&c->error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                    "%s: a page record at stream offset %" G_GUINT64_FORMAT
                    " (a mapped-ram stream has none: its pages are at fixed "
                    "offsets)",
                    c->path, rec->offset);
        return MP_REC_PAUSE;
    }
    if (rec->kind == MP_REC_RAM_BLOCK && rec->u.block.mapped_ram) {
        /* the stream pauses here: the bitmap and pages follow in the file */
        c->pending.name = g_strdup(rec->u.block.name);
        c->pending.used_length = rec->u.block.used_length;
        c->pending.page_size = rec->u.block.mr_page_size;
        c->pending.bitmap_offset = rec->u.block.bitmap_offset;
        c->pending.pages_offset = rec->u.block.pages_offset;
        c->have_pending = TRUE;
        return MP_REC_PAUSE;
    }
    return MP_REC_CONTINUE;
}

/* One page in the file, as a stream would have carried it (its bytes
 * are read only for an image). */
static gboolean
emit_page(Ctx *c, const Block *b, guint64 index, const guint8 *data)
{
    MpRecord rec = {.kind = MP_REC_RAM_PAGE};

    rec.u.page.block = b->name;
    rec.u.page.addr = index * MP_TARGET_PAGE_SIZE;
    rec.u.page.size = MP_TARGET_PAGE_SIZE;
    rec.u.page.kind = MP_PAGE_NORMAL;
    rec.u.page.flags = MP_RAM_SAVE_FLAG_PAGE;
    rec.u.page.payload = data;
    rec.u.page.payload_len = MP_TARGET_PAGE_SIZE;
    rec.offset = b->pages_offset + rec.u.page.addr;
    rec.length = MP_TARGET_PAGE_SIZE;
    c->normal++;
    return take_record(c, &rec);
}

static gboolean
emit_zero(Ctx *c, const Block *b, guint64 index)
{
    static const guint8 fill_zero = 0;
    MpRecord rec = {.kind = MP_REC_RAM_PAGE};

    rec.u.page.block = b->name;
    rec.u.page.addr = index * MP_TARGET_PAGE_SIZE;
    rec.u.page.size = MP_TARGET_PAGE_SIZE;
    rec.u.page.kind = MP_PAGE_ZERO;
    rec.u.page.flags = MP_RAM_SAVE_FLAG_ZERO;
    rec.u.page.payload = &fill_zero;
    rec.u.page.payload_len = 1;
    /* where its (clear) bit is; it takes no bytes in the file */
    rec.offset = b->bitmap_offset + index / 8;
    rec.length = 0;
    c->zero++;
    return take_record(c, &rec);
}

/* A run of `count` pages from `first`, all in the file: with --dump-ram
 * read (1 MiB at a time) and applied; otherwise only counted. */
static gboolean
emit_run(Ctx *c, const Block *b, guint64 first, guint64 count, guint8 *buf)
{
    const guint64 per_read = READ_SIZE / MP_TARGET_PAGE_SIZE;

    while (count) {
        guint64 n = MIN(count, per_read);
        if (c->image) {
            if (!pread_all(c, buf, n * MP_TARGET_PAGE_SIZE,
                           b->pages_offset + first * MP_TARGET_PAGE_SIZE))
                return FALSE;
            mp_ram_image_set_buffer(c->image, buf, n * MP_TARGET_PAGE_SIZE);
        }
        for (guint64 i = 0; i < n; i++)
            if (!emit_page(c, b, first + i,
                           c->image ? buf + i * MP_TARGET_PAGE_SIZE : NULL))
                return FALSE;
        if (c->image && !mp_ram_image_flush(c->image, &c->error))
            return FALSE;
        first += n;
        count -= n;
    }
    return TRUE;
}

/* The pages of block `b`: a bit set, a page in the file; clear, a zero
 * page (QEMU clears the bit of a page that became zero). */
static gboolean
block_pages(Ctx *c, const Block *b, guint8 *buf)
{
    guint64 pages = b->used_length / MP_TARGET_PAGE_SIZE;
    guint64 bytes = bitmap_bytes(pages);
    g_autofree guint8 *bm = g_malloc(BITMAP_READ);
    guint64 run_start = 0, run_len = 0;

    c->blocks++;
    for (guint64 at = 0; at < bytes; at += BITMAP_READ) {
        gsize n = MIN(BITMAP_READ, bytes - at);
        if (!pread_all(c, bm, n, b->bitmap_offset + at))
            return FALSE;
        for (gsize byte = 0; byte < n; byte++) {
            for (guint bit = 0; bit < 8; bit++) {
                guint64 page = (at + byte) * 8 + bit;
                if (page >= pages)
                    break;
                /* little-endian longs: page i is bit i % 8 of byte i / 8 */
                if (bm[byte] >> bit & 1) {
                    if (!run_len)
                        run_start = page;
                    run_len++;
                    continue;
                }
                if (run_len && !emit_run(c, b, run_start, run_len, buf))
                    return FALSE;
                run_len = 0;
                if (!emit_zero(c, b, page))
                    return FALSE;
            }
        }
    }
    if (run_len && !emit_run(c, b, run_start, run_len, buf))
        return FALSE;
    return !c->image || mp_ram_image_flush(c->image, &c->error);
}

static void
on_gave_up(MpPipeline *p, guint64 off, const GError *err, gpointer user_data)
{
    Ctx *c = user_data;
    mp_analysis_error(c->analysis, err);
}

static void
on_end(MpPipeline *p, MpEndReason how, const GError *cut, gint64 now_us,
       gpointer user_data)
{
    Ctx *c = user_data;
    if (cut) {
        mp_analysis_error(c->analysis, cut);
        c->cut = TRUE;
    }
}

static const MpPipelineObserver mapped_observer = {
    .record = on_record,
    .gave_up = on_gave_up,
    .end = on_end,
};

/* The vmdesc at the file's end, as for a stream file; NULL: none, or one
 * it does without (an anomaly says why). */
static MpVmdesc *
find_vmdesc(Ctx *c)
{
    g_autoptr(GError) err = NULL;
    MpVmdesc *vd = mp_input_find_vmdesc(c->path, FALSE, &err);
    if (err)
        mp_analysis_anomaly(c->analysis, "%s; device sections are not sliced",
                            err->message);
    return vd;
}

json_object *
mp_mapped_ram_analyze(const char *path, const MpAnalyzeOptions *opt,
                      guint64 start, gboolean *ok)
{
    g_autoptr(MpAnalysis) analysis = mp_analysis_new();
    g_autoptr(MpRamImage) image = NULL;
    g_autoptr(MpPipeline) pipe = NULL;
    g_autoptr(MpVmdesc) vmdesc = NULL;
    Ctx c = {opt, path, -1, 0, analysis, NULL, NULL, g_string_new(NULL)};
    struct stat st;
    guint64 pos = start, stream_bytes = 0;
    gboolean ended = FALSE, failed = FALSE;
    guint8 *buf = g_malloc(READ_SIZE), *pagebuf = NULL;

    *ok = TRUE;
    c.fd = open(path, O_RDONLY | O_CLOEXEC);
    if (c.fd < 0 || fstat(c.fd, &st) != 0) {
        int e = errno;
        g_set_error(&c.error, G_IO_ERROR, g_io_error_from_errno(e),
                    "%s: cannot open: %s", path, g_strerror(e));
        goto done;
    }
    c.size = st.st_size;
    if (opt->dump_ram) {
        image = mp_ram_image_new(opt->dump_ram, &c.error);
        if (!image)
            goto done;
        c.image = image;
        pagebuf = g_malloc(READ_SIZE);
    }
    pipe = mp_pipeline_new(0, MP_DIR_TO_DST);
    mp_pipeline_set_name(pipe, "main");
    mp_pipeline_set_kind(pipe, MP_CHAN_MAIN, NULL);
    mp_pipeline_allow_mapped_ram(pipe);
    mp_pipeline_observe(pipe, &mapped_observer, &c);
    if (!opt->no_vmdesc && (vmdesc = find_vmdesc(&c))) {
        mp_pipeline_set_vmdesc(pipe, vmdesc);
        mp_analysis_set_vmdesc(analysis, vmdesc);
    }
    while (!ended && !c.error) {
        gssize n = pread(c.fd, buf, READ_SIZE, pos);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            g_set_error(&c.error, G_IO_ERROR, g_io_error_from_errno(e),
                        "%s: read failed at offset %" G_GUINT64_FORMAT ": %s",
                        path, pos, g_strerror(e));
            break;
        }
        if (n == 0)
            break;
        gsize off = 0;
        while (off < (gsize)n && !c.error && !ended) {
            gsize used = mp_pipeline_feed_until_pause(pipe, buf + off, n - off, 0);
            off += used;
            stream_bytes += used;
            MpPipelineState state = mp_pipeline_state(pipe);
            if (state == MP_PIPELINE_GAVE_UP) {
                failed = TRUE; /* (the observer gave the error) */
                ended = TRUE;
            } else if (state == MP_PIPELINE_ENDED) {
                ended = TRUE;
                if (pos + off < c.size)
                    mp_analysis_anomaly(
                        analysis,
                        "%" G_GUINT64_FORMAT " bytes after the end of the "
                        "stream",
                        c.size - (pos + off));
            } else if (state == MP_PIPELINE_PAUSED && c.have_pending) {
                Block b = c.pending;
                c.have_pending = FALSE;
                if (check_block(&c, &b, pos + off)
                    && block_pages(&c, &b, pagebuf)) {
                    /* the stream goes on after the block's pages */
                    pos = b.pages_offset + b.used_length;
                    n = 0;
                    off = 0;
                }
                g_free(b.name);
                break;
            }
        }
        if (c.error || ended)
            break;
        pos += off;
    }
    if (!c.error && !failed && !ended) {
        /* the file ended: inside a record, the end observer says so */
        mp_pipeline_end(pipe, MP_END_FIN, 0);
        failed = c.cut;
    }
    if (c.image && !c.error && !failed && !mp_ram_image_close(c.image, &c.error))
        failed = TRUE;
done:
    if (c.error) {
        mp_analysis_error(analysis, c.error);
        failed = TRUE;
    }
    if (failed)
        *ok = FALSE;
    if (c.have_pending)
        g_free(c.pending.name);
    mp_analysis_finish(analysis, stream_bytes);
    if (c.fd >= 0)
        close(c.fd);
    g_clear_error(&c.error);
    g_string_free(c.line, TRUE);
    g_free(buf);
    g_free(pagebuf);
    json_object *doc = mp_analysis_to_json(analysis);
    json_object *mr = json_object_new_object();
    json_object_object_add(mr, "blocks", json_object_new_uint64(c.blocks));
    json_object_object_add(mr, "pages_in_file",
                           json_object_new_uint64(c.normal));
    json_object_object_add(mr, "zero_pages", json_object_new_uint64(c.zero));
    json_object_object_add(doc, "mapped_ram", mr);
    json_object_object_add(doc, "file", json_object_new_string(path));
    json_object_object_add(doc, "format", json_object_new_string("mapped-ram"));
    return doc;
}
