/* plan-measure.c: a capture's pages through the pair's encoders.
 *
 * The pages of every channel of the first migration are seen in the order
 * the capture replays them (stream files: stream order; captures and
 * pcaps: the order they were read), as the migproxy source would see them,
 * and fed to one batch encoder (filters/page-batch.h: zero runs, dedup,
 * delta against the mirrored cache) and one zstd context.  Each page is a
 * first send (the bulk round) or a send again (a dirty page), and batches
 * never mix the two, so the bytes of each kind are known apart: the plan
 * applies the first to the bulk round and the second to later rounds.
 */
#include "config.h"
#include <string.h>
#include <gio/gio.h>
#include "analyze-file.h"
#include "page-batch.h"
#include "page-cache.h"
#include "page-marks.h"
#include "page-zstd.h"
#include "parse-common.h"
#include "plan-measure.h"
#include "zero-runs.h"

gboolean
mp_plan_encoders_parse(const char *list, MpPlanEncoders *out, GError **error)
{
    g_auto(GStrv) words = g_strsplit(list, ",", -1);

    memset(out, 0, sizeof(*out));
    for (guint i = 0; words[i]; i++) {
        const char *w = g_strstrip(words[i]);
        if (g_str_equal(w, "all"))
            out->zero = out->zstd = out->delta = out->dedup = TRUE;
        else if (g_str_equal(w, "none") || !*w)
            ;
        else if (g_str_equal(w, "zero"))
            out->zero = TRUE;
        else if (g_str_equal(w, "zstd"))
            out->zstd = TRUE;
        else if (g_str_equal(w, "delta"))
            out->delta = TRUE;
        else if (g_str_equal(w, "dedup"))
            out->dedup = TRUE;
        else {
            g_set_error(error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                        "--encoders: unknown encoder '%s' (known: zero, "
                        "zstd, delta, dedup, all, none)",
                        w);
            return FALSE;
        }
    }
    return TRUE;
}

typedef struct {
    const MpPlanEncoders *enc;
    MpPlanCodecs *out;
    guint64 ram_bytes; /* the block list's, for the cache size */
    guint32 page_size;
    MpZeroRuns *zero;   /* made at the first block */
    MpPageCache *cache; /* made at the first page */
    MpBatchEnc *batch;
    MpCompEnc *comp;
    GHashTable *marks; /* block name -> MpPageMarks: pages seen */
    GByteArray *plain; /* finished batches, length-prefixed */
    GByteArray *packed;
    guint8 *zeros;        /* a zero page (ZERO records, multifd zero pages) */
    gboolean batch_dirty; /* the open batch holds sends again */
    guint batch_pages;
} Measure;

/* The finished batches in m->plain, compressed (or not) and counted. */
static void
account(Measure *m, gboolean dirty)
{
    gsize pos = 0;
    while (pos + 4 <= m->plain->len) {
        guint32 len = mp_be32(m->plain->data + pos);
        double bytes = 4 + MP_PLAN_FRAME_OVERHEAD;
        if (m->enc->zstd) {
            g_byte_array_set_size(m->packed, 0);
            bytes += mp_batch_compress(m->comp, 0, m->plain->data + pos + 4,
                                       len, m->packed);
        } else {
            bytes += len;
        }
        if (dirty)
            m->out->dirty_bytes += bytes;
        else
            m->out->bulk_bytes += bytes;
        pos += 4 + len;
    }
    g_byte_array_set_size(m->plain, 0);
}

static void
flush_batch(Measure *m)
{
    mp_batch_enc_flush(m->batch, m->plain);
    account(m, m->batch_dirty);
    m->batch_pages = 0;
}

static void
measure_page(Measure *m, const char *block, guint64 addr, guint32 size,
             const guint8 *page)
{
    if (!m->batch) {
        MpBatchOpts o = {m->enc->zero, m->enc->delta, m->enc->dedup};
        m->page_size = size;
        m->cache = mp_pcache_new(size, mp_pcache_auto_size(m->ram_bytes));
        if (!m->zero)
            m->zero = mp_zrun_new(size);
        m->batch = mp_batch_enc_new(size, m->cache, m->zero, &o);
        m->comp = mp_comp_enc_new(MP_COMP_LEVEL_DEFAULT,
                                  MP_COMP_WINDOW_LOG_DEFAULT, NULL);
    }
    if (size != m->page_size) {
        m->out->skipped_pages++;
        return;
    }
    MpPageMarks *marks = g_hash_table_lookup(m->marks, block);
    if (!marks) {
        marks = mp_page_marks_new();
        g_hash_table_insert(m->marks, g_strdup(block), marks);
    }
    /* never moved to a next round: a page marked this round was sent */
    guint seen = mp_page_marks_mark(marks, addr / size);
    gboolean dirty = (seen & MP_PAGE_SENT_THIS_ROUND) != 0;
    guint64 t0 = mp_codec_now_ns();

    if (m->batch_pages
        && (dirty != m->batch_dirty || m->batch_pages >= MP_PLAN_BATCH_PAGES))
        flush_batch(m);
    m->batch_dirty = dirty;
    if (!mp_batch_enc_add(m->batch, block, addr / size, page, m->plain)) {
        /* over the cache's block limit: it would go as raw bytes */
        m->out->skipped_pages++;
    } else {
        m->batch_pages++;
        if (dirty)
            m->out->dirty_pages++;
        else
            m->out->bulk_pages++;
    }
    account(m, dirty); /* a batch the encoder finished by itself */
    m->out->busy_s += (mp_codec_now_ns() - t0) / 1e9;
}

static MpRecordAction
on_record(MpPipeline *p, const MpRecord *rec, gpointer user_data)
{
    Measure *m = user_data;

    switch (rec->kind) {
    case MP_REC_RAM_BLOCK:
        m->ram_bytes += rec->u.block.used_length;
        if (!m->zero)
            m->zero = mp_zrun_new(MP_TARGET_PAGE_SIZE);
        /* a fresh destination's RAM is zero: the pair knows it */
        mp_zrun_declare_block(m->zero, rec->u.block.name,
                              rec->u.block.used_length / MP_TARGET_PAGE_SIZE,
                              TRUE);
        break;
    case MP_REC_RAM_PAGE: {
        const MpRamPage *pg = &rec->u.page;
        if (pg->kind == MP_PAGE_NORMAL && pg->payload_len == pg->size) {
            measure_page(m, pg->block, pg->addr, pg->size, pg->payload);
        } else if (pg->kind == MP_PAGE_ZERO && pg->payload_len == 1
                   && pg->size <= MP_MAX_PAGE_SIZE) {
            /* the page is filled with the byte given (QEMU sends 0) */
            g_autofree guint8 *filled = NULL;
            if (!m->zeros)
                m->zeros = g_malloc0(MP_MAX_PAGE_SIZE);
            if (pg->payload[0]) {
                filled = g_malloc(pg->size);
                memset(filled, pg->payload[0], pg->size);
            }
            measure_page(m, pg->block, pg->addr, pg->size,
                         filled ? filled : m->zeros);
        } else {
            m->out->skipped_pages++;
        }
        break;
    }
    case MP_REC_MFD_PAGE: {
        const MpMfdInfo *f = &rec->u.mfd;
        if (!f->block)
            break;
        if (!m->zeros)
            m->zeros = g_malloc0(MP_MAX_PAGE_SIZE);
        measure_page(m, f->block, f->addr, MP_TARGET_PAGE_SIZE,
                     f->zero || !f->data ? m->zeros : f->data);
        break;
    }
    default:
        break;
    }
    return MP_REC_CONTINUE;
}

static const MpPipelineObserver measure_observer = {.record = on_record};

json_object *
mp_plan_measure(const char *path, const MpPlanEncoders *enc, MpPlanCodecs *out,
                gboolean *ok)
{
    Measure m = {.enc = enc, .out = out};
    MpAnalyzeOptions opt = {
        .quiet = TRUE, .observer = &measure_observer, .observer_data = &m};

    memset(out, 0, sizeof(*out));
    m.marks = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                    (GDestroyNotify)mp_page_marks_free);
    m.plain = g_byte_array_new();
    m.packed = g_byte_array_new();
    json_object *doc = mp_analyze_file(path, &opt, ok);
    if (m.batch)
        flush_batch(&m);
    mp_batch_enc_free(m.batch);
    mp_comp_enc_free(m.comp);
    mp_pcache_free(m.cache);
    mp_zrun_free(m.zero);
    g_hash_table_unref(m.marks);
    g_byte_array_unref(m.plain);
    g_byte_array_unref(m.packed);
    g_free(m.zeros);
    return doc;
}

void
mp_plan_guest_set_codecs(MpPlanGuest *g, const MpPlanCodecs *c)
{
    double bulk = c->bulk_pages ? c->bulk_bytes / c->bulk_pages : 0;
    double dirty = c->dirty_pages ? c->dirty_bytes / c->dirty_pages : bulk;

    /* pages the encoders could not read keep QEMU's cost (the pair
     * forwards them as they are) */
    g->pair_bulk_bpp = bulk;
    g->pair_dirty_bpp = dirty;
    g->pair_encode_pps =
        c->busy_s > 0 ? (c->bulk_pages + c->dirty_pages) / c->busy_s : 0;
}
