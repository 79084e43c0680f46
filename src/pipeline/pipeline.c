/* pipeline.c: parser, stage chain and observers of one channel direction
 * (see pipeline.h).
 *
 * Input offsets, all in the direction's stream:
 *
 *   hold_off     base              chunk_off               chunk_off+len
 *   |--- hold ---|                 |-------- chunk ---------|
 *                ^ next input byte to deal with   ^ safe: records complete
 *
 * `hold` keeps copies of bytes of earlier feeds not dealt with yet (a
 * record in progress); bytes before `safe` belong to complete records and
 * may go out; the rest waits for its record to complete.  Output that
 * cannot go to the sink yet (behind an unfilled slot) waits in `queue` as
 * owned bytes and slots.
 *
 * In-place budget: during a feed, an in-place sink has the fed bytes at
 * `gap` bytes past its end (gap: what the pipeline said it held).  Writing
 * `n` more bytes is safe while
 *     written_this_feed + n <= gap + (first fed byte still needed - feed_off)
 * i.e. the output never overtakes a fed byte not dealt with.
 * Fed bytes written as they are keep to it by construction; owned bytes
 * that would not go to the sink's insert().
 */
#include "config.h"
#include <string.h>
#include <time.h>
#include "mfd-parser.h"
#include "pipeline.h"
#include "qmig-parser.h"
#include "ram-parser.h"
#include "rp-parser.h"

/* Stages' time on the owner's thread is sampled from the monotonic clock
 * (MpStageStats.cpu_us is an estimate): the thread CPU clock is a system
 * call, and reading it twice per record took as long as the rest of the
 * relay's work on a stream of small records (50 % more CPU in
 * an in-process run of busy-10.0, 1 in 64 records timed). */
#define CPU_SAMPLE 64

typedef struct {
    MpPipelineObserver ops;
    gpointer data;
} Observer;

struct MpSlot {
    MpPipeline *p;
    MpStage *stage;
    gboolean filled; /* under p->lock */
    GBytes *bytes;
};

/* An output segment waiting in the queue: owned bytes or a slot. */
typedef struct {
    GBytes *bytes;
    MpSlot *slot;
} Seg;

struct MpPipeline {
    guint channel;
    MpDir dir;
    MpChanKind kind;
    MpPipelineState state;
    gboolean pausing; /* in mp_pipeline_feed_until_pause() */
    char *name;
    gboolean named; /* by mp_pipeline_set_name() */
    MpQmigParser *qmig; /* main, recovery */
    MpRamParser *ram;   /* preempt */
    MpMfdParser *mfd;   /* multifd */
    MpRpParser *rp;     /* the return path */
    MpVmdesc *vmdesc;
    guint64 off; /* bytes fed to the parser (or counted) */
    gboolean ended;
    guint8 first[4]; /* a kind-less stream's first bytes */
    gsize first_have;
    MpPipelineClassify classify;
    gpointer classify_data;
    GArray *observers; /* Observer */
    gint64 now_us;     /* of the feed in progress */

    /* output */
    gboolean has_sink;
    MpPipelineSink sink;
    gboolean in_place;
    gsize hold_limit;
    GPtrArray *stages; /* MpStage*, borrowed */
    gboolean any_flush, any_placed; /* a stage has flush(), placed() */
    gboolean passthrough;
    GByteArray *hold;
    guint64 hold_off;
    guint64 base;
    const guint8 *chunk; /* during a feed */
    gsize chunk_len;
    guint64 chunk_off;
    guint64 safe;
    guint64 no_edit_until; /* the end of a PACKAGED blob */
    GQueue queue;          /* Seg*, in output order */
    gsize queued;          /* owned bytes in `queue` */
    gsize gap;             /* what the sink was last told we hold */
    gboolean in_feed;
    guint64 feed_off, feed_end; /* the feed's input offsets */
    gboolean feed_copied;       /* its bytes are no longer needed */
    guint64 feed_written;       /* bytes written since the feed began */
    GByteArray *out;      /* a stage's replacement */
    GByteArray *wire;     /* a record split between hold and chunk */
    guint64 bytes_in, written, inserted;
    guint64 stage_calls; /* record() calls, for CPU_SAMPLE */

    GMutex lock; /* slots filled by workers */
    GCond filled;
    guint unfilled;
    void (*wake)(gpointer data);
    gpointer wake_data;
};

gint64
mp_stage_thread_cpu_us(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0)
        return 0;
    return (gint64)ts.tv_sec * G_USEC_PER_SEC + ts.tv_nsec / 1000;
}

json_object *
mp_stage_report(MpStage *st)
{
    json_object *o = st->report ? st->report(st) : json_object_new_object();
    json_object_object_add(o, "records_changed",
                           json_object_new_int64(st->stats.records_changed));
    json_object_object_add(o, "bytes_in",
                           json_object_new_int64(st->stats.bytes_in));
    json_object_object_add(o, "bytes_out",
                           json_object_new_int64(st->stats.bytes_out));
    json_object_object_add(o, "cpu_us", json_object_new_int64(st->stats.cpu_us));
    return o;
}

MpPipeline *
mp_pipeline_new(guint channel, MpDir dir)
{
    MpPipeline *p = g_new0(MpPipeline, 1);
    p->channel = channel;
    p->dir = dir;
    p->name = g_strdup_printf("channel %u %s", channel, mp_dir_name(dir));
    p->observers = g_array_new(FALSE, FALSE, sizeof(Observer));
    p->stages = g_ptr_array_new();
    p->hold = g_byte_array_new();
    p->out = g_byte_array_new();
    p->wire = g_byte_array_new();
    g_queue_init(&p->queue);
    g_mutex_init(&p->lock);
    g_cond_init(&p->filled);
    return p;
}

static void wait_slots(MpPipeline *p);

static void
seg_free(Seg *s)
{
    if (s->bytes)
        g_bytes_unref(s->bytes);
    if (s->slot) {
        if (s->slot->bytes)
            g_bytes_unref(s->slot->bytes);
        g_free(s->slot);
    }
    g_free(s);
}

void
mp_pipeline_free(MpPipeline *p)
{
    if (!p)
        return;
    /* a worker may still hold a slot */
    wait_slots(p);
    g_queue_clear_full(&p->queue, (GDestroyNotify)seg_free);
    mp_qmig_parser_free(p->qmig);
    mp_ram_parser_free(p->ram);
    mp_mfd_parser_free(p->mfd);
    mp_rp_parser_free(p->rp);
    mp_vmdesc_unref(p->vmdesc);
    g_array_unref(p->observers);
    g_ptr_array_unref(p->stages);
    g_byte_array_unref(p->hold);
    g_byte_array_unref(p->out);
    g_byte_array_unref(p->wire);
    g_mutex_clear(&p->lock);
    g_cond_clear(&p->filled);
    g_free(p->name);
    g_free(p);
}

/* ---- output ---- */

/* Owned or held bytes go out (queue empty). */
static void
write_owned(MpPipeline *p, const guint8 *buf, gsize len)
{
    if (!len)
        return;
    if (p->in_place && p->in_feed) {
        /* the first fed byte still needed where it was read */
        guint64 needed =
            p->feed_copied ? p->feed_end : MAX(p->base, p->feed_off);
        if (p->feed_written + len > p->gap + (needed - p->feed_off)) {
            /* longer than what it replaces: beside the fed bytes */
            p->inserted += len;
            p->sink.insert(p->sink.data, buf, len);
            return;
        }
    }
    p->written += len;
    p->feed_written += len;
    p->sink.write(p->sink.data, buf, len);
}

/* Fed bytes as they came (queue empty): in place. */
static void
write_fed(MpPipeline *p, const guint8 *buf, gsize len)
{
    if (!len)
        return;
    p->written += len;
    p->feed_written += len;
    p->sink.write(p->sink.data, buf, len);
}

static void
queue_bytes(MpPipeline *p, const guint8 *buf, gsize len)
{
    if (!len)
        return;
    Seg *s = g_new0(Seg, 1);
    s->bytes = g_bytes_new(buf, len);
    p->queued += len;
    g_queue_push_tail(&p->queue, s);
}

/* Writes the queue up to its first unfilled slot. */
static void
drain(MpPipeline *p)
{
    Seg *s;

    while ((s = g_queue_peek_head(&p->queue))) {
        if (s->slot) {
            g_mutex_lock(&p->lock);
            gboolean done = s->slot->filled;
            g_mutex_unlock(&p->lock);
            if (!done)
                break;
            gsize n = s->slot->bytes ? g_bytes_get_size(s->slot->bytes) : 0;
            s->slot->stage->stats.bytes_out += n;
            if (n)
                write_owned(p, g_bytes_get_data(s->slot->bytes, NULL), n);
        } else {
            gsize n = g_bytes_get_size(s->bytes);
            p->queued -= n;
            /* (bytes after a slot: copies of fed bytes, or owned) */
            write_owned(p, g_bytes_get_data(s->bytes, NULL), n);
        }
        seg_free(g_queue_pop_head(&p->queue));
    }
}

/* Input [base, to) goes out as it came. */
static void
emit_to(MpPipeline *p, guint64 to)
{
    while (p->base < to) {
        const guint8 *src;
        gsize n;
        gboolean fed = p->base >= p->chunk_off;
        if (!fed) {
            src = p->hold->data + (p->base - p->hold_off);
            n = MIN(to, p->chunk_off) - p->base;
        } else {
            src = p->chunk + (p->base - p->chunk_off);
            n = to - p->base;
        }
        if (p->queue.length)
            queue_bytes(p, src, n);
        else if (fed)
            write_fed(p, src, n);
        else
            write_owned(p, src, n);
        p->base += n;
    }
}

/* Owned output for what lies before base.  @return TRUE if it was written
 * to the sink (at output offset *at), not inserted or queued. */
static gboolean
emit_owned(MpPipeline *p, const guint8 *buf, gsize len, guint64 *at)
{
    if (p->queue.length) {
        queue_bytes(p, buf, len);
        return FALSE;
    }
    guint64 before = p->inserted;
    *at = p->written;
    write_owned(p, buf, len);
    return p->inserted == before;
}

static gsize
held(const MpPipeline *p)
{
    return p->queued + p->hold->len - (p->base - p->hold_off);
}

static void
tell_held(MpPipeline *p)
{
    p->gap = held(p);
    if (p->has_sink && p->sink.held)
        p->sink.held(p->sink.data, p->gap);
}

MpSlot *
mp_stage_out_slot(MpStageOut *out)
{
    MpPipeline *p = out->owner;
    MpSlot *s = g_new0(MpSlot, 1);

    g_assert(!out->slot);
    /* (a worker may fill it before record() returns) */
    s->p = p;
    s->stage = out->stage;
    g_mutex_lock(&p->lock);
    p->unfilled++;
    g_mutex_unlock(&p->lock);
    out->slot = s;
    return s;
}

void
mp_slot_fill(MpSlot *slot, GBytes *bytes)
{
    MpPipeline *p = slot->p;

    g_mutex_lock(&p->lock);
    g_assert(!slot->filled);
    slot->bytes = bytes;
    slot->filled = TRUE;
    p->unfilled--;
    g_cond_broadcast(&p->filled);
    /* (under the lock: the pipeline is not freed before it returns) */
    if (p->wake)
        p->wake(p->wake_data);
    g_mutex_unlock(&p->lock);
}

void
mp_pipeline_set_wake(MpPipeline *p, void (*fn)(gpointer data), gpointer data)
{
    p->wake = fn;
    p->wake_data = data;
}

static void
wait_slots(MpPipeline *p)
{
    g_mutex_lock(&p->lock);
    while (p->unfilled)
        g_cond_wait(&p->filled, &p->lock);
    g_mutex_unlock(&p->lock);
}

static void
flush_stages(MpPipeline *p, MpStageFlush why)
{
    for (guint i = 0; i < p->stages->len; i++) {
        MpStage *st = g_ptr_array_index(p->stages, i);
        if (st->flush) {
            gint64 t0 = g_get_monotonic_time();
            st->flush(st, why);
            st->stats.cpu_us += g_get_monotonic_time() - t0;
        }
    }
}

/* The record's bytes in one piece. */
static const guint8 *
wire_of(MpPipeline *p, const MpRecord *rec)
{
    guint64 start = rec->offset, end = rec->offset + rec->length;

    if (start >= p->chunk_off)
        return p->chunk + (start - p->chunk_off);
    if (end <= p->chunk_off)
        return p->hold->data + (start - p->hold_off);
    g_byte_array_set_size(p->wire, 0);
    g_byte_array_append(p->wire, p->hold->data + (start - p->hold_off),
                        p->chunk_off - start);
    g_byte_array_append(p->wire, p->chunk, end - p->chunk_off);
    return p->wire->data;
}

static gboolean
is_sync_point(const MpRecord *rec)
{
    switch (rec->kind) {
    case MP_REC_RAM_EOS:
    case MP_REC_RAM_MULTIFD_FLUSH:
    case MP_REC_SECTION_FOOTER:
    case MP_REC_COMMAND:
    case MP_REC_EOF:
        return TRUE;
    default:
        return FALSE;
    }
}

static void
tell_placed(MpPipeline *p, const MpRecord *rec, gboolean placed, guint64 at,
            gsize len)
{
    if (!p->any_placed)
        return; /* (the hot path: every record) */
    for (guint i = 0; i < p->stages->len; i++) {
        MpStage *st = g_ptr_array_index(p->stages, i);
        if (st->placed)
            st->placed(st, rec, placed, at, len);
    }
}

/* A complete record of the feed in progress: through the chain. */
static void
edit_record(MpPipeline *p, const MpRecord *rec)
{
    guint64 end = rec->offset + rec->length;

    if (p->passthrough || !p->chunk || rec->offset < p->base
        || end > p->chunk_off + p->chunk_len) {
        tell_placed(p, rec, FALSE, 0, 0); /* not in the bytes at hand */
        return;
    }
    if (end > p->safe)
        p->safe = end;
    if (rec->kind == MP_REC_COMMAND && rec->u.cmd.cmd == MP_QMIG_CMD_PACKAGED)
        p->no_edit_until = end + rec->u.cmd.packaged_len;
    if (p->any_flush && is_sync_point(rec))
        flush_stages(p, MP_STAGE_FLUSH_SYNC);
    if (rec->offset >= p->no_edit_until && rec->length) {
        for (guint i = 0; i < p->stages->len; i++) {
            MpStage *st = g_ptr_array_index(p->stages, i);
            MpStageOut out = {.bytes = p->out, .owner = p, .stage = st};
            g_byte_array_set_size(p->out, 0);
            /* one call in CPU_SAMPLE is timed, for CPU_SAMPLE calls */
            gboolean timed = (p->stage_calls++ % CPU_SAMPLE) == 0;
            gint64 t0 = timed ? g_get_monotonic_time() : 0;
            MpStageVerdict v = st->record(st, p->channel, p->dir, rec,
                                          wire_of(p, rec), &out);
            if (timed)
                st->stats.cpu_us += (g_get_monotonic_time() - t0) * CPU_SAMPLE;
            if (v == MP_STAGE_PASS)
                continue;
            st->stats.records_changed++;
            st->stats.bytes_in += rec->length;
            emit_to(p, rec->offset);
            p->base = end; /* its bytes are no longer needed */
            if (v == MP_STAGE_TAKE) {
                g_assert(out.slot);
                Seg *s = g_new0(Seg, 1);
                s->slot = out.slot;
                g_queue_push_tail(&p->queue, s);
                tell_placed(p, rec, FALSE, 0, 0);
                return;
            }
            guint64 at = 0;
            st->stats.bytes_out += p->out->len;
            gboolean placed = emit_owned(p, p->out->data, p->out->len, &at);
            tell_placed(p, rec, placed, at, p->out->len);
            return;
        }
    }
    /* kept: every byte before it goes out as it is */
    if (p->queue.length)
        tell_placed(p, rec, FALSE, 0, 0);
    else
        tell_placed(p, rec, TRUE, p->written + (rec->offset - p->base),
                    rec->length);
}

static void
go_passthrough(MpPipeline *p)
{
    if (p->passthrough)
        return;
    p->passthrough = TRUE;
    flush_stages(p, MP_STAGE_FLUSH_END);
}

static void
tell_written(MpPipeline *p)
{
    for (guint i = 0; i < p->stages->len; i++) {
        MpStage *st = g_ptr_array_index(p->stages, i);
        if (st->written)
            st->written(st);
    }
}

/* The feed's bytes were parsed: what may go out goes, the rest is held. */
static void
end_chunk(MpPipeline *p, gboolean following)
{
    guint64 chunk_end = p->chunk_off + p->chunk_len;

    if (!following) {
        go_passthrough(p);
        p->safe = chunk_end;
    }
    emit_to(p, MAX(p->safe, p->base));
    /* keep [base, chunk_end) for the record in progress */
    if (p->base >= p->chunk_off) {
        g_byte_array_set_size(p->hold, 0);
        g_byte_array_append(p->hold, p->chunk + (p->base - p->chunk_off),
                            chunk_end - p->base);
    } else {
        g_byte_array_remove_range(p->hold, 0, p->base - p->hold_off);
        g_byte_array_append(p->hold, p->chunk, p->chunk_len);
    }
    p->hold_off = p->base;
    p->chunk_off = chunk_end;
    p->chunk = NULL;
    p->chunk_len = 0;
    p->feed_copied = TRUE;
    if (p->hold->len > p->hold_limit) {
        /* no record is that long: the parser is not following after all */
        go_passthrough(p);
        p->safe = chunk_end;
        emit_to(p, chunk_end);
        g_byte_array_set_size(p->hold, 0);
        p->hold_off = p->base;
    }
    drain(p);
    if (p->queued > p->hold_limit) {
        /* a slot holds up this much: the stages must release now */
        flush_stages(p, MP_STAGE_FLUSH_END);
        wait_slots(p);
        drain(p);
    }
    p->in_feed = FALSE;
    tell_held(p);
    tell_written(p);
}

/* Everything held goes out (the stream ended). */
static void
flush_output(MpPipeline *p)
{
    if (!p->has_sink)
        return;
    go_passthrough(p);
    wait_slots(p);
    p->safe = p->chunk_off;
    emit_to(p, p->chunk_off);
    g_byte_array_set_size(p->hold, 0);
    p->hold_off = p->base;
    drain(p);
    tell_held(p);
}

/* ---- parsing ---- */

static MpRecordAction
on_record(const MpRecord *rec, gpointer user_data)
{
    MpPipeline *p = user_data;
    MpRecordAction act = MP_REC_CONTINUE;

    for (guint i = 0; i < p->observers->len; i++) {
        Observer *o = &g_array_index(p->observers, Observer, i);
        if (o->ops.record && o->ops.record(p, rec, o->data) == MP_REC_PAUSE)
            act = MP_REC_PAUSE;
    }
    if (p->has_sink && p->dir == MP_DIR_TO_DST)
        edit_record(p, rec);
    if (act == MP_REC_PAUSE)
        p->state = p->pausing ? MP_PIPELINE_PAUSED : MP_PIPELINE_STOPPED;
    return act;
}

static const char *
default_name(MpPipeline *p)
{
    if (p->dir == MP_DIR_TO_DST)
        return mp_chan_kind_name(p->kind);
    return p->kind == MP_CHAN_MAIN || p->kind == MP_CHAN_RECOVERY
               ? "return-path"
               : "reverse";
}

void
mp_pipeline_set_name(MpPipeline *p, const char *name)
{
    g_free(p->name);
    p->name = g_strdup(name);
    p->named = TRUE;
}

void
mp_pipeline_set_kind(MpPipeline *p, MpChanKind kind, const MpPipeline *main)
{
    if (p->kind != MP_CHAN_UNKNOWN || kind == MP_CHAN_UNKNOWN)
        return;
    p->kind = kind;
    if (!p->named) {
        g_free(p->name);
        p->name =
            g_strdup_printf("channel %u %s", p->channel, default_name(p));
    }
    p->state = MP_PIPELINE_UNPARSED;
    if (p->dir == MP_DIR_TO_SRC) {
        /* nothing should come back, or it came before we knew what to
         * parse */
        if ((kind == MP_CHAN_MAIN || kind == MP_CHAN_RECOVERY) && !p->off) {
            p->rp = mp_rp_parser_new(p->name, on_record, p);
            p->state = MP_PIPELINE_FOLLOWING;
        }
        return;
    }
    switch (kind) {
    case MP_CHAN_MAIN:
    case MP_CHAN_RECOVERY:
        p->qmig = mp_qmig_parser_new(p->name, on_record, p);
        if (kind == MP_CHAN_RECOVERY && main && main->qmig)
            mp_qmig_parser_resume_from(p->qmig, main->qmig);
        else if (kind == MP_CHAN_RECOVERY)
            mp_qmig_parser_set_headerless(p->qmig);
        if (p->vmdesc)
            mp_qmig_parser_set_vmdesc(p->qmig, p->vmdesc);
        break;
    case MP_CHAN_MULTIFD:
        p->mfd = mp_mfd_parser_new(p->name, MP_TARGET_PAGE_SIZE, on_record, p);
        break;
    case MP_CHAN_PREEMPT:
        p->ram = mp_ram_parser_new(p->name, MP_TARGET_PAGE_SIZE, on_record, p);
        if (main && main->qmig)
            mp_ram_parser_share_blocks(p->ram, mp_qmig_parser_ram(main->qmig));
        break;
    default:
        return; /* TLS, foreign: never parsed */
    }
    p->state = MP_PIPELINE_FOLLOWING;
}

void
mp_pipeline_set_classify(MpPipeline *p, MpPipelineClassify fn, gpointer data)
{
    p->classify = fn;
    p->classify_data = data;
}

void
mp_pipeline_set_vmdesc(MpPipeline *p, MpVmdesc *vmdesc)
{
    mp_vmdesc_unref(p->vmdesc);
    p->vmdesc = vmdesc ? mp_vmdesc_ref(vmdesc) : NULL;
    if (p->qmig && vmdesc)
        mp_qmig_parser_set_vmdesc(p->qmig, vmdesc);
}

void
mp_pipeline_observe(MpPipeline *p, const MpPipelineObserver *ops,
                    gpointer data)
{
    Observer o = {*ops, data};
    g_array_append_val(p->observers, o);
}

void
mp_pipeline_set_sink(MpPipeline *p, const MpPipelineSink *sink,
                     gboolean in_place, gsize hold_limit)
{
    p->has_sink = TRUE;
    p->sink = *sink;
    p->in_place = in_place;
    p->hold_limit = hold_limit;
}

void
mp_pipeline_add_stage(MpPipeline *p, MpStage *stage)
{
    g_ptr_array_add(p->stages, stage);
    p->any_flush |= stage->flush != NULL;
    p->any_placed |= stage->placed != NULL;
}

/* The parser cannot follow: tell the observers once. */
static void
give_up(MpPipeline *p, const GError *err)
{
    p->state = MP_PIPELINE_GAVE_UP;
    for (guint i = 0; i < p->observers->len; i++) {
        Observer *o = &g_array_index(p->observers, Observer, i);
        if (o->ops.gave_up)
            o->ops.gave_up(p, p->off, err, o->data);
    }
}

/* @return the bytes the parser used; the rest (after an error, the end
 * or a stop) is counted as passed, unless it paused. */
static gsize
parse(MpPipeline *p, const guint8 *buf, gsize len)
{
    g_autoptr(GError) err = NULL;
    gsize used_all = 0;

    while (len && p->state == MP_PIPELINE_FOLLOWING) {
        MpFeedStatus st;
        gsize used = 0;
        if (p->rp)
            st = mp_rp_parser_feed(p->rp, buf, len, &used, &err);
        else if (p->qmig)
            st = mp_qmig_parser_feed(p->qmig, buf, len, &used, &err);
        else if (p->mfd)
            st = mp_mfd_parser_feed(p->mfd, buf, len, &used, &err);
        else
            st = mp_ram_parser_feed(p->ram, buf, len, &used, &err);
        p->off += used;
        used_all += used;
        buf += used;
        len -= used;
        if (p->state != MP_PIPELINE_FOLLOWING)
            break; /* an observer stopped it */
        if (st == MP_FEED_ERROR) {
            give_up(p, err);
            break;
        }
        if (st == MP_FEED_END) {
            /* the channel's grammar ended (EOF + vmdesc, preempt EOS) */
            p->state = MP_PIPELINE_ENDED;
            for (guint i = 0; len && i < p->observers->len; i++) {
                Observer *o = &g_array_index(p->observers, Observer, i);
                if (o->ops.trailing)
                    o->ops.trailing(p, p->off, len, o->data);
            }
            break;
        }
        if (st == MP_FEED_MORE)
            break; /* all used */
    }
    if (p->state != MP_PIPELINE_PAUSED)
        p->off += len; /* what is left after an error or the end */
    return used_all;
}

/* Parses and edits one piece of input. */
static void
feed_edit(MpPipeline *p, const guint8 *buf, gsize len)
{
    if (!p->has_sink) {
        parse(p, buf, len);
        return;
    }
    p->bytes_in += len;
    p->chunk = buf;
    p->chunk_len = len;
    p->chunk_off = p->hold_off + p->hold->len;
    p->feed_off = p->chunk_off;
    p->feed_end = p->chunk_off + len;
    p->feed_copied = FALSE;
    p->feed_written = 0;
    p->in_feed = TRUE;
    drain(p); /* what workers finished meanwhile goes first */
    if (p->passthrough) {
        /* (the hold is empty) */
        emit_to(p, p->feed_end);
        p->chunk = NULL;
        p->chunk_len = 0;
        p->safe = p->chunk_off = p->hold_off = p->base;
        parse(p, buf, len);
        p->in_feed = FALSE;
        tell_held(p);
        tell_written(p);
        return;
    }
    parse(p, buf, len);
    /* (the return path is only passed on) */
    end_chunk(p, p->dir == MP_DIR_TO_DST && mp_chan_kind_editable(p->kind)
                     && p->state == MP_PIPELINE_FOLLOWING);
}

void
mp_pipeline_feed(MpPipeline *p, const guint8 *buf, gsize len, gint64 now_us)
{
    p->now_us = now_us;
    for (guint i = 0; i < p->observers->len; i++) {
        Observer *o = &g_array_index(p->observers, Observer, i);
        if (o->ops.bytes)
            o->ops.bytes(p, buf, len, now_us, o->data);
    }
    if (!len)
        return;
    if (p->kind == MP_CHAN_UNKNOWN && p->dir == MP_DIR_TO_DST
        && p->classify) {
        gsize n = MIN(len, sizeof(p->first) - p->first_have);
        memcpy(p->first + p->first_have, buf, n);
        p->first_have += n;
        buf += n;
        len -= n;
        if (p->classify(p, p->first, p->first_have, FALSE, p->classify_data)
            == MP_CHAN_UNKNOWN)
            return;
        feed_edit(p, p->first, p->first_have);
    }
    /* (a kind still unknown: only counted, no parser starts in the
     * middle) */
    if (len)
        feed_edit(p, buf, len);
}

const char *
mp_pipeline_state_name(MpPipelineState state)
{
    static const char *const names[] = {
        [MP_PIPELINE_UNKNOWN] = "unknown",   [MP_PIPELINE_FOLLOWING] = "following",
        [MP_PIPELINE_ENDED] = "ended",       [MP_PIPELINE_GAVE_UP] = "gave-up",
        [MP_PIPELINE_STOPPED] = "stopped",   [MP_PIPELINE_PAUSED] = "paused",
        [MP_PIPELINE_UNPARSED] = "unparsed",
    };
    return state < G_N_ELEMENTS(names) && names[state] ? names[state] : "?";
}

gsize
mp_pipeline_feed_until_pause(MpPipeline *p, const guint8 *buf, gsize len,
                             gint64 now_us)
{
    g_return_val_if_fail(!p->has_sink && p->kind != MP_CHAN_UNKNOWN, 0);
    p->now_us = now_us;
    if (p->state == MP_PIPELINE_PAUSED)
        p->state = MP_PIPELINE_FOLLOWING;
    p->pausing = TRUE;
    gsize used = parse(p, buf, len);
    p->pausing = FALSE;
    for (guint i = 0; i < p->observers->len; i++) {
        Observer *o = &g_array_index(p->observers, Observer, i);
        if (o->ops.bytes)
            o->ops.bytes(p, buf, used, now_us, o->data);
    }
    return used;
}

void
mp_pipeline_allow_mapped_ram(MpPipeline *p)
{
    if (p->qmig)
        mp_qmig_parser_allow_mapped_ram(p->qmig);
}

void
mp_pipeline_drain(MpPipeline *p)
{
    if (!p->has_sink)
        return;
    drain(p);
    tell_held(p);
}

void
mp_pipeline_flush(MpPipeline *p)
{
    flush_stages(p, MP_STAGE_FLUSH_TIMER);
    mp_pipeline_drain(p);
}

void
mp_pipeline_stop(MpPipeline *p)
{
    if (p->state == MP_PIPELINE_FOLLOWING || p->state == MP_PIPELINE_UNKNOWN)
        p->state = MP_PIPELINE_STOPPED;
    flush_output(p);
}

gboolean
mp_pipeline_gap(MpPipeline *p, guint64 len, gint64 now_us)
{
    gboolean resumes = FALSE;

    g_return_val_if_fail(!p->has_sink, FALSE);
    p->now_us = now_us;
    if (p->state == MP_PIPELINE_FOLLOWING) {
        if (p->qmig)
            resumes = mp_qmig_parser_gap(p->qmig, len);
        else if (p->mfd)
            resumes = mp_mfd_parser_gap(p->mfd, len);
        else if (p->rp)
            resumes = mp_rp_parser_gap(p->rp, len);
    }
    if (!resumes)
        mp_pipeline_stop(p);
    p->off += len;
    return resumes;
}

void
mp_pipeline_end(MpPipeline *p, MpEndReason how, gint64 now_us)
{
    g_autoptr(GError) err = NULL;
    gboolean ok = TRUE;

    if (p->ended)
        return;
    p->ended = TRUE;
    p->now_us = now_us;
    if (p->kind == MP_CHAN_UNKNOWN && p->first_have && p->classify) {
        /* closed after fewer than 4 bytes */
        p->classify(p, p->first, p->first_have, TRUE, p->classify_data);
        feed_edit(p, p->first, p->first_have);
    }
    flush_output(p);
    if (p->state == MP_PIPELINE_FOLLOWING || p->state == MP_PIPELINE_PAUSED) {
        if (p->rp)
            ok = mp_rp_parser_finish(p->rp, &err);
        else if (p->qmig)
            ok = mp_qmig_parser_finish(p->qmig, &err);
        else if (p->mfd)
            ok = mp_mfd_parser_finish(p->mfd, &err);
        else if (p->ram)
            ok = mp_ram_parser_finish(p->ram, &err);
        p->state = MP_PIPELINE_ENDED;
    }
    for (guint i = 0; i < p->observers->len; i++) {
        Observer *o = &g_array_index(p->observers, Observer, i);
        if (o->ops.end)
            o->ops.end(p, how, ok ? NULL : err, now_us, o->data);
    }
}

gint64
mp_pipeline_now(const MpPipeline *p)
{
    return p->now_us;
}

MpChanKind
mp_pipeline_kind(const MpPipeline *p)
{
    return p->kind;
}

guint
mp_pipeline_channel(const MpPipeline *p)
{
    return p->channel;
}

MpDir
mp_pipeline_dir(const MpPipeline *p)
{
    return p->dir;
}

const char *
mp_pipeline_name(const MpPipeline *p)
{
    return p->name;
}

MpPipelineState
mp_pipeline_state(const MpPipeline *p)
{
    return p->state;
}

gboolean
mp_pipeline_following(const MpPipeline *p)
{
    return p->state == MP_PIPELINE_UNKNOWN
           || p->state == MP_PIPELINE_FOLLOWING
           || p->state == MP_PIPELINE_PAUSED;
}

gboolean
mp_pipeline_ended(const MpPipeline *p)
{
    return p->ended;
}

const MpQmigParser *
mp_pipeline_qmig(const MpPipeline *p)
{
    return p->qmig;
}

guint64
mp_pipeline_bytes_in(const MpPipeline *p)
{
    return p->bytes_in;
}

guint64
mp_pipeline_bytes_out(const MpPipeline *p)
{
    return p->written + p->inserted;
}

gsize
mp_pipeline_held(const MpPipeline *p)
{
    return held(p);
}

gboolean
mp_pipeline_passthrough(const MpPipeline *p)
{
    return p->passthrough;
}
