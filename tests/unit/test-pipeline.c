/* test-pipeline.c: what a channel pipeline's stages may do, on a real
 * captured stream: pass bytes through without a copy, replace records by
 * longer output (also in place), hold records and release them at a sync
 * point or at the end, hand records to worker threads and still emit in
 * stream order; and however the input is split, the output is the same.
 */
#include "config.h"
#include <criterion/criterion.h>
#include <string.h>
#include "filter-zero.h"
#include "parse-common.h"
#include "pipeline.h"
#include "stage-util.h"

typedef StageUtilSink Sink;

static GByteArray *
run_ex(const GByteArray *in, MpStage *stage, gsize chunk, gboolean in_place,
       Sink *sink_out, void (*after)(MpPipeline *, Sink *, gpointer),
       gpointer data)
{
    StageUtilRun opt = {.chunk = chunk,
                        .in_place = in_place,
                        .after = after,
                        .after_data = data};
    return stage_util_run(in, stage, &opt, sink_out);
}

static GByteArray *
run(const GByteArray *in, MpStage *stage, gsize chunk, gboolean in_place)
{
    return run_ex(in, stage, chunk, in_place, NULL, NULL, NULL);
}

/* A zero-page rewrite of one page's bytes, wherever it runs: @return the
 * ZERO record for an all-zero PAGE record, else NULL. */
static GBytes *
zero_of(const guint8 *wire, gsize len, gsize payload_len)
{
    for (gsize i = len - payload_len; i < len; i++)
        if (wire[i])
            return NULL;
    GByteArray *b = g_byte_array_sized_new(len - payload_len + 1);
    guint8 hdr[8], fill = 0;
    mp_put_be64(hdr, (mp_be64(wire) & ~(guint64)MP_RAM_SAVE_FLAG_PAGE)
                         | MP_RAM_SAVE_FLAG_ZERO);
    g_byte_array_append(b, hdr, 8);
    g_byte_array_append(b, wire + 8, len - 8 - payload_len);
    g_byte_array_append(b, &fill, 1);
    return g_byte_array_free_to_bytes(b);
}

static gboolean
full_page(const MpRecord *rec)
{
    const MpRamPage *pg = &rec->u.page;
    return rec->kind == MP_REC_RAM_PAGE && pg->kind == MP_PAGE_NORMAL
           && pg->payload_len == pg->size
           && rec->length >= 8 + pg->payload_len;
}

/* ---- stages ---- */

static void
nothing_destroy(MpStage *self)
{
}

/* Looks at every record, changes none. */
static MpStageVerdict
pass_record(MpStage *self, guint channel, MpDir dir, const MpRecord *rec,
            const guint8 *wire, MpStageOut *out)
{
    return MP_STAGE_PASS;
}

/* Takes every full page and releases them, zero-page rewritten, at the
 * next sync point (or only at the end). */
typedef struct {
    MpStage base;
    gboolean only_at_end;
    GPtrArray *slots;  /* MpSlot*, taken */
    GPtrArray *bytes;  /* GBytes*: what fills them */
    guint64 released_at_sync, released_at_end;
} HoldStage;

static MpStageVerdict
hold_record(MpStage *self, guint channel, MpDir dir, const MpRecord *rec,
            const guint8 *wire, MpStageOut *out)
{
    HoldStage *h = (HoldStage *)self;
    if (!full_page(rec))
        return MP_STAGE_PASS;
    GBytes *b = zero_of(wire, rec->length, rec->u.page.payload_len);
    g_ptr_array_add(h->slots, mp_stage_out_slot(out));
    g_ptr_array_add(h->bytes, b ? b : g_bytes_new(wire, rec->length));
    return MP_STAGE_TAKE;
}

static void
hold_flush(MpStage *self, MpStageFlush why)
{
    HoldStage *h = (HoldStage *)self;
    if (why == MP_STAGE_FLUSH_SYNC && h->only_at_end)
        return;
    for (guint i = 0; i < h->slots->len; i++)
        mp_slot_fill(g_ptr_array_index(h->slots, i),
                     g_ptr_array_index(h->bytes, i));
    if (why == MP_STAGE_FLUSH_SYNC)
        h->released_at_sync += h->slots->len;
    else
        h->released_at_end += h->slots->len;
    g_ptr_array_set_size(h->slots, 0);
    g_ptr_array_set_size(h->bytes, 0);
}

static void
hold_init(HoldStage *h, gboolean only_at_end)
{
    *h = (HoldStage){
        .base = {.name = "hold",
                 .record = hold_record,
                 .flush = hold_flush,
                 .destroy = nothing_destroy},
        .only_at_end = only_at_end,
        .slots = g_ptr_array_new(),
        .bytes = g_ptr_array_new(),
    };
}

static void
hold_clear(HoldStage *h)
{
    g_ptr_array_unref(h->slots);
    g_ptr_array_unref(h->bytes);
}

/* Hands every full page to a pool of worker threads that rewrite zero
 * pages after a random delay: they finish out of order. */
typedef struct {
    MpStage base;
    GThreadPool *pool;
    gint64 worker_cpu_us; /* atomic */
} WorkerStage;

typedef struct {
    WorkerStage *stage;
    MpSlot *slot;
    GBytes *wire;
    gsize payload_len;
} Job;

static void
work(gpointer data, gpointer user_data)
{
    Job *j = data;
    gint64 t0 = mp_stage_thread_cpu_us();
    gsize len;
    const guint8 *wire = g_bytes_get_data(j->wire, &len);

    g_usleep(g_random_int_range(0, 300));
    GBytes *b = zero_of(wire, len, j->payload_len);
    mp_slot_fill(j->slot, b ? b : g_bytes_ref(j->wire));
    __atomic_fetch_add(&j->stage->worker_cpu_us,
                       mp_stage_thread_cpu_us() - t0, __ATOMIC_RELAXED);
    g_bytes_unref(j->wire);
    g_free(j);
}

static MpStageVerdict
worker_record(MpStage *self, guint channel, MpDir dir, const MpRecord *rec,
              const guint8 *wire, MpStageOut *out)
{
    WorkerStage *w = (WorkerStage *)self;
    if (!full_page(rec))
        return MP_STAGE_PASS;
    Job *j = g_new0(Job, 1);
    j->stage = w;
    j->slot = mp_stage_out_slot(out);
    j->wire = g_bytes_new(wire, rec->length);
    j->payload_len = rec->u.page.payload_len;
    g_thread_pool_push(w->pool, j, NULL);
    return MP_STAGE_TAKE;
}

static void
worker_init(WorkerStage *w)
{
    *w = (WorkerStage){.base = {.name = "worker",
                                .record = worker_record,
                                .destroy = nothing_destroy}};
    w->pool = g_thread_pool_new(work, NULL, 4, FALSE, NULL);
}

/* ---- tests ---- */

static const gsize splits[] = {0, 1 << 20, 65536, 4099, 977};

/* Nothing changed: the sink gets pointers into the fed buffer, every
 * byte of a whole feed, and the output is the input. */
Test(pipeline, pass_through_without_copy)
{
    g_autoptr(GByteArray) in = stage_util_load("busy-10.0");
    MpStage pass = {.name = "pass", .record = pass_record,
                    .destroy = nothing_destroy};
    Sink s;

    for (int in_place = 0; in_place < 2; in_place++) {
        g_autoptr(GByteArray) out = run_ex(in, &pass, 0, in_place, &s, NULL,
                                           NULL);
        stage_util_assert_same(out, in);
        cr_assert_eq(s.borrowed, in->len, "%" G_GUINT64_FORMAT " of %u",
                     s.borrowed, in->len);
        cr_assert_eq(s.inserted, 0);
    }
    /* in pieces: only the bytes of a record cut by a piece's end are
     * copied (held until it completes) */
    g_autoptr(GByteArray) out = run_ex(in, &pass, 65536, TRUE, &s, NULL,
                                       NULL);
    stage_util_assert_same(out, in);
    cr_log_info("65536-byte pieces: %" G_GUINT64_FORMAT " of %u bytes "
                "without a copy", s.borrowed, in->len);
    cr_assert_geq(s.borrowed, in->len / 100 * 90);
}

/* A stage whose output is longer than the record: in place too (beside
 * the input), the same bytes whatever the split; and back again. */
Test(pipeline, longer_output)
{
    g_autoptr(GByteArray) in = stage_util_load("busy-10.0");
    MpStage inflate;
    stage_util_inflate_init(&inflate);
    g_autoptr(GByteArray) fat = run(in, &inflate, 0, FALSE);
    cr_assert_eq(fat->len, in->len + 15586u * 4095);
    cr_assert_eq(inflate.stats.records_changed, 15586);

    for (guint i = 0; i < G_N_ELEMENTS(splits); i++) {
        Sink s;
        g_autoptr(GByteArray) out =
            run_ex(in, &inflate, splits[i], TRUE, &s, NULL, NULL);
        stage_util_assert_same(out, fat);
        cr_assert_gt(s.inserted, 0);
    }
    g_autoptr(MpStage) zero = mp_filter_zero_new();
    g_autoptr(GByteArray) back = run(fat, zero, 65536, TRUE);
    stage_util_assert_same(back, in);
}

typedef struct {
    const GByteArray *expect;
    gsize checked;  /* output bytes compared so far */
    gsize last_len; /* the output after the last feed, before the end */
} Prefix;

/* The output so far is a prefix of what is expected: checked after every
 * feed. */
static void
check_prefix(MpPipeline *p, Sink *s, gpointer data)
{
    Prefix *pre = data;
    cr_assert_leq(s->out->len, pre->expect->len);
    cr_assert(memcmp(s->out->data + pre->checked,
                     pre->expect->data + pre->checked,
                     s->out->len - pre->checked)
              == 0);
    pre->checked = pre->last_len = s->out->len;
}

/* Held records come out, in order, when the stage releases them: at the
 * next sync point, or only at the end. */
Test(pipeline, hold_until_sync_or_end)
{
    g_autoptr(GByteArray) in = stage_util_load("busy-10.0");
    g_autoptr(GByteArray) fat = NULL;
    MpStage inflate;
    stage_util_inflate_init(&inflate);

    fat = run(in, &inflate, 0, FALSE);
    for (guint i = 0; i < G_N_ELEMENTS(splits); i++) {
        HoldStage h;
        Prefix pre = {.expect = in};
        hold_init(&h, FALSE);
        g_autoptr(GByteArray) out =
            run_ex(fat, &h.base, splits[i], TRUE, NULL, check_prefix, &pre);
        stage_util_assert_same(out, in);
        /* the stream's last sync point (EOF) released everything */
        cr_assert_eq(pre.last_len, in->len);
        cr_assert_gt(h.released_at_sync, 0);
        cr_assert_eq(h.released_at_end, 0);
        cr_assert_eq(h.base.stats.bytes_out + (fat->len - in->len),
                     h.base.stats.bytes_in);
        hold_clear(&h);
    }
    /* released only when told to release everything (the end, or the
     * pipeline's bound on what waits behind a held record) */
    HoldStage h;
    Prefix pre = {.expect = in};
    hold_init(&h, TRUE);
    g_autoptr(GByteArray) out =
        run_ex(in, &h.base, 65536, TRUE, NULL, check_prefix, &pre);
    stage_util_assert_same(out, in);
    cr_assert_lt(pre.last_len, in->len);
    cr_assert_gt(h.released_at_end, 0);
    cr_assert_eq(h.released_at_sync, 0);
    hold_clear(&h);
}

/* Worker threads finish out of order; the output is byte for byte what
 * the zero stage makes in line, whatever the split. */
Test(pipeline, worker_threads_in_order)
{
    g_autoptr(GByteArray) in = stage_util_load("busy-10.0");
    MpStage inflate;
    stage_util_inflate_init(&inflate);
    g_autoptr(GByteArray) fat = run(in, &inflate, 0, FALSE);

    for (guint i = 0; i < G_N_ELEMENTS(splits); i++) {
        WorkerStage w;
        worker_init(&w);
        g_autoptr(GByteArray) out = run(fat, &w.base, splits[i], i % 2);
        g_thread_pool_free(w.pool, FALSE, TRUE);
        stage_util_assert_same(out, in);
        cr_assert_gt(w.base.stats.records_changed, 15586);
        cr_assert_eq(w.base.stats.bytes_in - w.base.stats.bytes_out,
                     15586u * 4095);
    }
}

/* The zero stage's output does not depend on the split, in place or not,
 * and it says what it saved. */
Test(pipeline, any_split_same_output)
{
    g_autoptr(GByteArray) in = stage_util_load("busy-10.0");
    MpStage inflate;
    stage_util_inflate_init(&inflate);
    g_autoptr(GByteArray) fat = run(in, &inflate, 0, FALSE);
    static const gsize more[] = {0, 65536, 4096, 4099, 977, 8};

    for (guint i = 0; i < G_N_ELEMENTS(more); i++) {
        g_autoptr(MpStage) zero = mp_filter_zero_new();
        g_autoptr(GByteArray) out = run(fat, zero, more[i], i % 2 == 0);
        stage_util_assert_same(out, in);
        cr_assert_eq(zero->stats.records_changed, 15586);
        cr_assert_eq(zero->stats.bytes_in - zero->stats.bytes_out,
                     15586u * 4095);
        json_object *rep = mp_stage_report(zero);
        json_object *v;
        cr_assert(json_object_object_get_ex(rep, "bytes_saved", &v));
        cr_assert_eq(json_object_get_int64(v), 15586 * 4095);
        json_object_put(rep);
    }
}

/* Counts records; pauses on every RAM block list entry when asked. */
typedef struct {
    guint64 records, pauses;
    gboolean pause;
} Counter;

static MpRecordAction
count_record(MpPipeline *p, const MpRecord *rec, gpointer data)
{
    Counter *c = data;
    c->records++;
    if (c->pause && rec->kind == MP_REC_RAM_BLOCK) {
        c->pauses++;
        return MP_REC_PAUSE;
    }
    return MP_REC_CONTINUE;
}

static const MpPipelineObserver counter_observer = {.record = count_record};

/* A reader that pauses after some records (as the mapped-ram reader does
 * after each block's header) and goes on from there sees every record
 * once, and the parser uses every byte up to the stream's end. */
Test(pipeline, feed_until_pause_goes_on_where_it_paused)
{
    g_autoptr(GByteArray) in = stage_util_load("busy-10.0");
    Counter whole = {0}, paused = {.pause = TRUE};

    g_autoptr(MpPipeline) a = mp_pipeline_new(0, MP_DIR_TO_DST);
    mp_pipeline_set_kind(a, MP_CHAN_MAIN, NULL);
    mp_pipeline_observe(a, &counter_observer, &whole);
    mp_pipeline_feed(a, in->data, in->len, 0);
    mp_pipeline_end(a, MP_END_FIN, 0);
    cr_assert_eq(mp_pipeline_state(a), MP_PIPELINE_ENDED);

    g_autoptr(MpPipeline) b = mp_pipeline_new(0, MP_DIR_TO_DST);
    mp_pipeline_set_kind(b, MP_CHAN_MAIN, NULL);
    mp_pipeline_observe(b, &counter_observer, &paused);
    gsize at = 0;
    while (at < in->len && mp_pipeline_state(b) != MP_PIPELINE_ENDED) {
        /* pieces of 1 MiB at most, each resumed where the last stopped */
        gsize n = MIN(in->len - at, 1u << 20);
        gsize used = mp_pipeline_feed_until_pause(b, in->data + at, n, 0);
        cr_assert(used == n || mp_pipeline_state(b) == MP_PIPELINE_PAUSED
                      || mp_pipeline_state(b) == MP_PIPELINE_ENDED,
                  "stopped early: %s",
                  mp_pipeline_state_name(mp_pipeline_state(b)));
        cr_assert(used > 0 || n == 0);
        at += used;
    }
    cr_assert_eq(at, in->len);
    mp_pipeline_end(b, MP_END_FIN, 0);
    cr_assert_eq(mp_pipeline_state(b), MP_PIPELINE_ENDED);
    cr_assert_gt(paused.pauses, 0);
    cr_assert_eq(paused.records, whole.records);
}
