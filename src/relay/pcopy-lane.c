/* pcopy-lane.c: requested post-copy pages ahead of the queue (see
 * pcopy-lane.h).
 *
 * The lane is a stage of the main channel's pipeline (it learns where each
 * record was placed) plus the output scheduler of that pipeline's queue
 * (out-scheduler.h).  The index holds the RAM page records queued since
 * post-copy began, in order, at their offsets in the queue (the
 * pipeline's output offsets).  The lane never moves queued bytes: it asks
 * the scheduler to send a page in front, or a header with its block name
 * in place of one with CONTINUE; the relay's channel applies that as its
 * writer reaches them (relay-channel.h).  So a move costs a page, however
 * deep the queue.
 */
#include "config.h"
#include <string.h>
#include "parse-common.h"
#include "pcopy-lane.h"

#define LOW_LATENCY_BYTES (16u << 10)
#define MAX_WAITING       256 /* requests for pages not queued yet */
/* Entries written out that are compacted away at once (prune()). */
#define PRUNE_STEP        4096

typedef struct {
    guint64 off; /* in the channel's queue */
    guint32 len; /* as queued */
    const char *block; /* interned */
    guint64 addr;
    gboolean cont;    /* queued with CONTINUE */
    gboolean named;   /* an edit writes its block name out */
    gboolean movable; /* PAGE or ZERO (xbzrle, compressed: not) */
    gboolean gone;    /* moved to the front */
    gboolean urgent;  /* requested: goes to the front at the next flush */
    gboolean name_due; /* must name its block (its predecessor moved) */
    gboolean arrival; /* urgent because it came after its request */
    gint64 t_req;     /* when it was requested (urgent) */
} Entry;

typedef struct {
    const char *block; /* interned */
    guint64 start, len;
    gint64 t;
} Waiting;

struct MpPcopyLane {
    MpStage stage; /* mp_pcopy_lane_stage() */
    MpOutScheduler out;
    gboolean attached; /* until mp_pcopy_lane_detach() */
    gsize queue;         /* 0 until post-copy when not given */
    gboolean queue_auto; /* not given: mp_pcopy_auto_queue() */
    guint64 ram_total, mem_available;
    gboolean advised;  /* POSTCOPY_ADVISE with postcopy-ram */
    gboolean prepared; /* the queue's memory is being readied */
    gboolean active;
    gboolean notsent_lowat; /* TCP_NOTSENT_LOWAT set once active */
    GArray *idx;      /* Entry, in queue order; [first, len) are live */
    guint first;
    guint64 dropped;  /* entries compacted away in front of idx[0] */
    /* page address -> dropped + index + 1 (last seen): compacting the
     * front never renumbers the rest (see prune()) */
    GHashTable *by_addr;
    GArray *due;      /* indices with work at the next flush */
    GArray *waiting;  /* Waiting, oldest first */
    gboolean name_next; /* the next page record must name its block */
    GByteArray *scratch;
    guint next_tag;
    GHashTable *inflight; /* tag -> request time (gint64*): moved, queued */
    GArray *latency_us;   /* guint32: request -> page written */
    void (*on_first)(gpointer data); /* mp_pcopy_lane_on_first() */
    gpointer on_first_data;
    guint64 requests, moved_queue, moved_arrival, jumped, names, host_pages;
};

guint64
mp_pcopy_auto_queue(guint64 ram_total, guint64 mem_available)
{
    guint64 bound = MIN(MP_PCOPY_QUEUE_AUTO_MAX, mem_available / 4);

    if (!ram_total || !mem_available)
        return MP_PCOPY_QUEUE_MIN;
    /* (the size is the stream's: no sum that could wrap) */
    if (ram_total < bound)
        bound = MIN(bound, ram_total + ram_total / 512 + (1u << 20));
    return MAX(bound, MP_PCOPY_QUEUE_MIN);
}

guint64
mp_pcopy_mem_available(void)
{
    g_autofree char *text = NULL;
    const char *line;

    /* a few KiB, read once per post-copy migration */
    if (!g_file_get_contents("/proc/meminfo", &text, NULL, NULL))
        return 0;
    line = strstr(text, "\nMemAvailable:");
    if (!line)
        return 0;
    guint64 kib = g_ascii_strtoull(line + strlen("\nMemAvailable:"), NULL, 10);
    return kib <= G_MAXUINT64 / 1024 ? kib * 1024 : 0;
}

/* ---- the lane as a stage of the main channel's pipeline ---- */

static MpStageVerdict
stage_record(MpStage *self, guint channel, MpDir dir, const MpRecord *rec,
             const guint8 *wire, MpStageOut *out)
{
    return MP_STAGE_PASS; /* it moves records, it never changes them */
}

static void
stage_placed(MpStage *self, const MpRecord *rec, gboolean placed,
             guint64 out_off, gsize out_len)
{
    MpPcopyLane *l = (MpPcopyLane *)self;
    /* a page it cannot find in the queue is never moved */
    if (rec->kind != MP_REC_RAM_PAGE || placed)
        mp_pcopy_lane_record(l, rec, placed ? out_off : 0,
                             placed ? out_len : 0);
}

static void
stage_written(MpStage *self)
{
    mp_pcopy_lane_flush((MpPcopyLane *)self);
}

static void
stage_destroy(MpStage *self)
{
    /* owned by whoever made the lane */
}

MpStage *
mp_pcopy_lane_stage(MpPcopyLane *l)
{
    return &l->stage;
}

MpPcopyLane *
mp_pcopy_lane_new(const MpOutScheduler *out, gsize queue)
{
    MpPcopyLane *l = g_new0(MpPcopyLane, 1);
    l->stage.name = "pcopy_lane";
    l->stage.record = stage_record;
    l->stage.placed = stage_placed;
    l->stage.written = stage_written;
    l->stage.destroy = stage_destroy;
    l->out = *out;
    l->attached = TRUE;
    l->queue = queue;
    l->queue_auto = queue == 0;
    l->idx = g_array_new(FALSE, FALSE, sizeof(Entry));
    l->by_addr = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free,
                                       NULL);
    l->due = g_array_new(FALSE, FALSE, sizeof(guint));
    l->waiting = g_array_new(FALSE, FALSE, sizeof(Waiting));
    l->scratch = g_byte_array_new();
    l->inflight = g_hash_table_new_full(NULL, NULL, NULL, g_free);
    l->latency_us = g_array_new(FALSE, FALSE, sizeof(guint32));
    return l;
}

void
mp_pcopy_lane_on_first(MpPcopyLane *l, void (*first)(gpointer data),
                       gpointer data)
{
    l->on_first = first;
    l->on_first_data = data;
}

static void
page_first(MpPcopyLane *l)
{
    if (l->on_first)
        l->on_first(l->on_first_data);
}

void
mp_pcopy_lane_free(MpPcopyLane *l)
{
    if (!l)
        return;
    g_array_unref(l->idx);
    g_hash_table_unref(l->by_addr);
    g_array_unref(l->due);
    g_array_unref(l->waiting);
    g_byte_array_unref(l->scratch);
    g_hash_table_unref(l->inflight);
    g_array_unref(l->latency_us);
    g_free(l);
}

void
mp_pcopy_lane_detach(MpPcopyLane *l)
{
    l->attached = FALSE;
    l->active = FALSE;
    g_array_set_size(l->idx, 0);
    g_array_set_size(l->due, 0);
    g_hash_table_remove_all(l->by_addr);
    l->first = 0;
    l->dropped = 0;
}

gboolean
mp_pcopy_lane_active(const MpPcopyLane *l)
{
    return l->active;
}

gboolean
mp_pcopy_lane_advised(const MpPcopyLane *l)
{
    return l->advised;
}

static Entry *
at(MpPcopyLane *l, guint i)
{
    return &g_array_index(l->idx, Entry, i);
}

/* The live entries around i (gone ones went to the front). */
static gint
prev_live(MpPcopyLane *l, guint i)
{
    while (i-- > l->first)
        if (!at(l, i)->gone)
            return i;
    return -1;
}

static gint
next_live(MpPcopyLane *l, guint i)
{
    for (i++; i < l->idx->len; i++)
        if (!at(l, i)->gone)
            return i;
    return -1;
}

/* Header without CONTINUE, then u8 len and the block name. */
static void
named_header(GByteArray *out, const guint8 *hdr, const char *block)
{
    guint8 h[8];
    guint8 n = strlen(block);
    mp_put_be64(h, mp_be64(hdr) & ~(guint64)MP_RAM_SAVE_FLAG_CONTINUE);
    g_byte_array_append(out, h, 8);
    g_byte_array_append(out, &n, 1);
    g_byte_array_append(out, (const guint8 *)block, n);
}

/* Entry i was queued with CONTINUE: its block name goes out with it. */
static gboolean
name_block(MpPcopyLane *l, guint i)
{
    Entry *e = at(l, i);
    const guint8 *hdr = l->out.ops->peek(l->out.q, e->off, 8);
    e->name_due = FALSE;
    if (!e->cont || e->named)
        return TRUE;
    if (!hdr)
        return FALSE;
    g_byte_array_set_size(l->scratch, 0);
    named_header(l->scratch, hdr, e->block);
    if (!l->out.ops->rewrite_header(l->out.q, e->off, 8, l->scratch->data,
                                    l->scratch->len))
        return FALSE;
    e->named = TRUE;
    l->names++;
    return TRUE;
}

/* Entry k goes out before the first live entry not yet being written. */
static void
move_to_front(MpPcopyLane *l, guint k)
{
    guint64 head = l->out.ops->head(l->out.q);
    gint front = -1;

    for (guint i = l->first; i < l->idx->len && front < 0; i++)
        if (!at(l, i)->gone && at(l, i)->off > head)
            front = i;
    if (front < 0 || (guint)front >= k) {
        page_first(l); /* nothing queued before it: it is next anyway */
        return;
    }

    Entry *e = at(l, k);
    const guint8 *bytes = l->out.ops->peek(l->out.q, e->off, e->len);
    if (!bytes)
        return;
    /* the page as it will go out: naming its block */
    g_autoptr(GByteArray) page = g_byte_array_sized_new(e->len + 256);
    if (e->cont)
        named_header(page, bytes, e->block);
    else
        g_byte_array_append(page, bytes, 8);
    g_byte_array_append(page, bytes + 8, e->len - 8);

    /* its old successor follows another page now */
    gint n = next_live(l, k), p = prev_live(l, k);
    if (n < 0)
        l->name_next = TRUE;
    else if (at(l, n)->block != (p >= 0 ? at(l, p)->block : NULL)
             && !name_block(l, n))
        return;
    /* the page it goes in front of follows it now */
    if (at(l, front)->block != e->block && !name_block(l, front))
        return;

    e = at(l, k);
    gpointer tag = GUINT_TO_POINTER(++l->next_tag ? l->next_tag
                                                   : ++l->next_tag);
    if (!l->out.ops->move_to_front(l->out.q, e->off, e->len,
                                   at(l, front)->off, page->data, page->len,
                                   tag))
        return;
    e->named = FALSE; /* (its rewritten header went with it) */
    e->gone = TRUE;
    g_hash_table_insert(l->inflight, tag, g_memdup2(&e->t_req, sizeof(gint64)));
    l->jumped += e->off - at(l, front)->off;
    page_first(l);
    if (e->arrival)
        l->moved_arrival++;
    else
        l->moved_queue++;
}

/* Drops the entries being written (and compacts now and then). */
static void
prune(MpPcopyLane *l)
{
    guint64 head = l->out.ops->head(l->out.q);

    while (l->first < l->idx->len
           && (at(l, l->first)->gone || at(l, l->first)->off <= head))
        l->first++;
    if (l->first < PRUNE_STEP)
        return;
    /* the front's entries go, and their addresses with them unless a
     * later entry took the address over: work in proportion to what goes,
     * never to what stays (rebuilding the index of a queue of the whole
     * RAM, 50 000 entries and more, held a request for 15 ms) */
    for (guint j = 0; j < l->first; j++) {
        gint64 key = at(l, j)->addr;
        gsize v = GPOINTER_TO_SIZE(g_hash_table_lookup(l->by_addr, &key));
        if (v == l->dropped + j + 1)
            g_hash_table_remove(l->by_addr, &key);
    }
    g_array_remove_range(l->idx, 0, l->first);
    for (guint i = 0; i < l->due->len; i++)
        g_array_index(l->due, guint, i) -= MIN(g_array_index(l->due, guint, i),
                                               l->first);
    l->dropped += l->first;
    l->first = 0;
}

void
mp_pcopy_lane_flush(MpPcopyLane *l)
{
    if (!l->active || !l->attached)
        return;
    prune(l);
    /* in order: a name first, pages to the front in request order */
    for (guint d = 0; d < l->due->len; d++) {
        guint i = g_array_index(l->due, guint, d);
        if (i < l->first || i >= l->idx->len || at(l, i)->gone)
            continue;
        if (at(l, i)->name_due)
            name_block(l, i);
        if (at(l, i)->urgent) {
            at(l, i)->urgent = FALSE;
            move_to_front(l, i);
        }
    }
    g_array_set_size(l->due, 0);
}

static gboolean
in_range(const char *block, guint64 addr, const char *rblock, guint64 start,
         guint64 len)
{
    return block == rblock && addr >= start && addr - start < len;
}

/* Post-copy may come (advised) and the RAM's size is known (the ADVISE
 * comes first, the size with RAM's setup): the queue's memory is readied
 * during pre-copy, once. */
static void
prepare_early(MpPcopyLane *l)
{
    if (!l->advised || !l->ram_total || l->prepared || l->active
        || !l->out.ops->prepare_read_ahead)
        return;
    l->prepared = TRUE;
    guint64 q = l->queue_auto ? mp_pcopy_auto_queue(l->ram_total,
                                                    mp_pcopy_mem_available())
                              : l->queue;
    l->out.ops->prepare_read_ahead(l->out.q, MIN(q, MP_PCOPY_QUEUE_EARLY_MAX));
}

void
mp_pcopy_lane_record(MpPcopyLane *l, const MpRecord *rec, guint64 out_off,
                     gsize out_len)
{
    if (!l->attached)
        return;
    if (rec->kind == MP_REC_RAM_MEM_SIZE) {
        l->ram_total = rec->u.mem_size.total;
        prepare_early(l);
    }
    if (rec->kind == MP_REC_COMMAND
        && rec->u.cmd.cmd == MP_QMIG_CMD_POSTCOPY_ADVISE
        && rec->u.cmd.len > 0) { /* (empty: dirty bitmaps only) */
        l->advised = TRUE;
        prepare_early(l);
    }
    if (!l->active) {
        if (rec->kind == MP_REC_PACKAGED_END) {
            /* the destination runs the guest: page requests come now */
            g_autoptr(GError) err = NULL;
            l->active = TRUE;
            if (l->queue_auto) {
                l->mem_available = mp_pcopy_mem_available();
                l->queue = mp_pcopy_auto_queue(l->ram_total, l->mem_available);
            }
            l->notsent_lowat = l->out.ops->set_low_latency(
                l->out.q, LOW_LATENCY_BYTES, &err);
            if (!l->notsent_lowat)
                /* once per session: requested pages then wait behind what
                 * the kernel holds, and latency degrades silently */
                g_warning("post-copy priority: %s; requested pages may "
                          "wait behind the socket's send buffer",
                          err->message);
            l->out.ops->set_read_ahead(l->out.q, l->queue);
        }
        return;
    }
    if (rec->kind != MP_REC_RAM_PAGE)
        return;
    const MpRamPage *pg = &rec->u.page;
    Entry e = {
        .off = out_off,
        .len = out_len,
        .block = g_intern_string(pg->block),
        .addr = pg->addr,
        .cont = (pg->flags & MP_RAM_SAVE_FLAG_CONTINUE) != 0,
        .movable = pg->kind == MP_PAGE_NORMAL || pg->kind == MP_PAGE_ZERO,
        .name_due = l->name_next && (pg->flags & MP_RAM_SAVE_FLAG_CONTINUE),
    };
    l->name_next = FALSE;
    for (guint i = 0; e.movable && i < l->waiting->len; i++) {
        Waiting *w = &g_array_index(l->waiting, Waiting, i);
        if (in_range(e.block, e.addr, w->block, w->start, w->len)) {
            e.urgent = e.arrival = TRUE;
            e.t_req = w->t;
            g_array_remove_index(l->waiting, i);
            break;
        }
    }
    guint i = l->idx->len;
    g_array_append_val(l->idx, e);
    gint64 *key = g_new(gint64, 1);
    *key = e.addr;
    g_hash_table_replace(l->by_addr, key,
                         GSIZE_TO_POINTER((gsize)(l->dropped + i + 1)));
    if (e.urgent || e.name_due)
        g_array_append_val(l->due, i);
}

void
mp_pcopy_lane_written(MpPcopyLane *l, gpointer tag, gint64 now_us)
{
    gint64 *t = g_hash_table_lookup(l->inflight, tag);
    if (!t)
        return;
    guint32 us = MIN(now_us - *t, G_MAXUINT32);
    g_array_append_val(l->latency_us, us);
    g_hash_table_remove(l->inflight, tag);
    page_first(l); /* in the kernel now: what comes next takes it */
}

void
mp_pcopy_lane_request(MpPcopyLane *l, const char *block, guint64 start,
                      guint64 len, gint64 now_us)
{
    if (!l->active || !l->attached || !block)
        return;
    l->requests++;
    if (len != MP_TARGET_PAGE_SIZE) {
        /* a host page of several target pages must arrive whole */
        l->host_pages++;
        return;
    }
    const char *b = g_intern_string(block);
    gint64 key = start;
    gsize v = GPOINTER_TO_SIZE(g_hash_table_lookup(l->by_addr, &key));
    guint i = v > l->dropped ? (guint)(v - l->dropped) : 0;
    if (i && i - 1 < l->idx->len && at(l, i - 1)->block == b
        && at(l, i - 1)->addr == start) {
        Entry *e = at(l, i - 1);
        if (i - 1 >= l->first && e->movable && !e->gone) {
            e->urgent = TRUE;
            e->t_req = now_us;
            i--;
            g_array_append_val(l->due, i);
            mp_pcopy_lane_flush(l);
            return;
        }
        if (i - 1 < l->first || e->gone) {
            /* being written, or moved for an earlier request: on its
             * way, but what comes after the queue must still take it */
            page_first(l);
            return;
        }
    }
    /* QEMU sends it soon (or sent it already: then it is never matched
     * and ages out) */
    if (l->waiting->len >= MAX_WAITING)
        g_array_remove_index(l->waiting, 0);
    Waiting w = {b, start, len, now_us};
    g_array_append_val(l->waiting, w);
}

static gint
cmp_u32(gconstpointer a, gconstpointer b)
{
    guint32 x = *(const guint32 *)a, y = *(const guint32 *)b;
    return x < y ? -1 : x > y;
}

json_object *
mp_pcopy_lane_report(const MpPcopyLane *l)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "queue_bytes",
                           l->queue ? json_object_new_int64(l->queue) : NULL);
    json_object_object_add(
        o, "queue_source",
        json_object_new_string(l->queue_auto ? "auto" : "given"));
    json_object_object_add(o, "ram_bytes", json_object_new_int64(l->ram_total));
    if (l->queue_auto)
        json_object_object_add(
            o, "mem_available",
            l->mem_available ? json_object_new_int64(l->mem_available) : NULL);
    json_object_object_add(o, "requests", json_object_new_int64(l->requests));
    json_object_object_add(
        o, "moved", json_object_new_int64(l->moved_queue + l->moved_arrival));
    json_object_object_add(o, "moved_from_queue",
                           json_object_new_int64(l->moved_queue));
    json_object_object_add(o, "moved_on_arrival",
                           json_object_new_int64(l->moved_arrival));
    json_object_object_add(o, "bytes_jumped", json_object_new_int64(l->jumped));
    json_object_object_add(o, "names_written", json_object_new_int64(l->names));
    json_object_object_add(o, "not_moved_host_pages",
                           json_object_new_int64(l->host_pages));
    /* null until post-copy starts */
    json_object_object_add(o, "notsent_lowat",
                           l->active ? json_object_new_boolean(l->notsent_lowat)
                                     : NULL);
    json_object *lat = json_object_new_object();
    guint n = l->latency_us->len;
    g_autoptr(GArray) v = g_array_copy(l->latency_us);
    g_array_sort(v, cmp_u32);
    json_object_object_add(lat, "count", json_object_new_int64(n));
    json_object_object_add(
        lat, "p50",
        n ? json_object_new_int64(g_array_index(v, guint32, (n - 1) / 2))
          : NULL);
    json_object_object_add(
        lat, "p99",
        n ? json_object_new_int64(g_array_index(v, guint32, (n - 1) * 99 / 100))
          : NULL);
    json_object_object_add(
        lat, "max",
        n ? json_object_new_int64(g_array_index(v, guint32, n - 1)) : NULL);
    json_object_object_add(o, "latency_us", lat);
    return o;
}
