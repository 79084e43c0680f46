/* pcopy-lane.c: requested post-copy pages ahead of the queue (see
 * pcopy-lane.h).
 *
 * The index holds the RAM page records still queued on the channel, in
 * order, at their offsets in the channel's queue (mp_relay_channel_queue_*
 * offsets).  Editor output offsets become queue offsets by adding `delta`,
 * the bytes the lane itself added (block names) or took out and put back.
 */
#include "config.h"
#include <string.h>
#include "parse-common.h"
#include "pcopy-lane.h"

#define LOW_LATENCY_BYTES (16u << 10)
#define MAX_WAITING       256 /* requests for pages not queued yet */

typedef struct {
    guint64 off; /* in the channel's queue */
    guint32 len;
    const char *block; /* interned */
    guint64 addr;
    gboolean cont;      /* CONTINUE: its block name is not on the wire */
    gboolean movable;   /* PAGE or ZERO (xbzrle, compressed: not) */
    gboolean urgent;    /* requested: goes ahead at the next flush */
    gboolean name_due;  /* must name its block (its predecessor moved) */
    gboolean arrival;   /* urgent because it arrived after its request */
} Entry;

typedef struct {
    const char *block; /* interned */
    guint64 start, len;
} Waiting;

struct MpPcopyLane {
    MpRelayChannel *ch;
    gboolean active;
    GArray *idx; /* Entry */
    gint64 delta;
    GArray *waiting;       /* Waiting, oldest first */
    gboolean name_next;    /* the next page record must name its block */
    GByteArray *scratch;
    guint64 requests, moved_queue, moved_arrival, jumped, names, host_pages;
};

MpPcopyLane *
mp_pcopy_lane_new(MpRelayChannel *ch)
{
    MpPcopyLane *l = g_new0(MpPcopyLane, 1);
    l->ch = ch;
    l->idx = g_array_new(FALSE, FALSE, sizeof(Entry));
    l->waiting = g_array_new(FALSE, FALSE, sizeof(Waiting));
    l->scratch = g_byte_array_new();
    return l;
}

void
mp_pcopy_lane_free(MpPcopyLane *l)
{
    if (!l)
        return;
    g_array_unref(l->idx);
    g_array_unref(l->waiting);
    g_byte_array_unref(l->scratch);
    g_free(l);
}

void
mp_pcopy_lane_detach(MpPcopyLane *l)
{
    l->ch = NULL;
    l->active = FALSE;
    g_array_set_size(l->idx, 0);
}

gboolean
mp_pcopy_lane_active(const MpPcopyLane *l)
{
    return l->active;
}

static Entry *
at(MpPcopyLane *l, guint i)
{
    return &g_array_index(l->idx, Entry, i);
}

static void
shift_from(MpPcopyLane *l, guint i, gint64 by)
{
    for (; i < l->idx->len; i++)
        at(l, i)->off += by;
}

/* Replaces [off, off + remove) of the queue; entries from `from` on move.
 * @return FALSE if the bytes are no longer all queued. */
static gboolean
splice(MpPcopyLane *l, guint64 off, gsize remove, const guint8 *ins,
       gsize ins_len, guint from)
{
    if (!mp_relay_channel_queue_splice(l->ch, MP_DIR_TO_DST, off, remove, ins,
                                       ins_len))
        return FALSE;
    gint64 by = (gint64)ins_len - (gint64)remove;
    shift_from(l, from, by);
    l->delta += by;
    return TRUE;
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

/* Entry i had CONTINUE: write its block name out. */
static gboolean
name_block(MpPcopyLane *l, guint i)
{
    Entry *e = at(l, i);
    const guint8 *hdr = mp_relay_channel_queue_peek(l->ch, MP_DIR_TO_DST,
                                                    e->off, 8);
    if (!hdr)
        return FALSE;
    g_byte_array_set_size(l->scratch, 0);
    named_header(l->scratch, hdr, e->block);
    gsize grow = l->scratch->len - 8;
    if (!splice(l, e->off, 8, l->scratch->data, l->scratch->len, i + 1))
        return FALSE;
    e = at(l, i);
    e->len += grow;
    e->cont = FALSE;
    e->name_due = FALSE;
    l->names++;
    return TRUE;
}

/* Moves entry k to the front of the queue (before entry 0). */
static void
move_to_front(MpPcopyLane *l, guint k)
{
    Entry e = *at(l, k);
    const guint8 *bytes =
        mp_relay_channel_queue_peek(l->ch, MP_DIR_TO_DST, e.off, e.len);

    if (!bytes)
        return;
    if (k == 0) {
        /* already next: later requests go after it */
        g_array_remove_index(l->idx, 0);
        return;
    }
    /* the page as it will go out: naming its block */
    g_autoptr(GByteArray) page = g_byte_array_sized_new(e.len + 256);
    if (e.cont)
        named_header(page, bytes, e.block);
    else
        g_byte_array_append(page, bytes, 8);
    g_byte_array_append(page, bytes + 8, e.len - 8);

    /* its old successor follows another page now */
    if (k + 1 < l->idx->len) {
        Entry *n = at(l, k + 1);
        if (n->cont && n->block != at(l, k - 1)->block && !name_block(l, k + 1))
            return;
    } else {
        l->name_next = TRUE;
    }
    e = *at(l, k);
    if (!splice(l, e.off, e.len, NULL, 0, k + 1))
        return;
    g_array_remove_index(l->idx, k);

    /* the page it goes in front of follows it now */
    Entry *c = at(l, 0);
    if (c->cont && c->block != e.block && !name_block(l, 0))
        return;
    guint64 front = at(l, 0)->off;
    if (!splice(l, front, 0, page->data, page->len, 0))
        return;
    l->jumped += e.off - front;
    if (e.arrival)
        l->moved_arrival++;
    else
        l->moved_queue++;
}

void
mp_pcopy_lane_flush(MpPcopyLane *l)
{
    if (!l->active || !l->ch)
        return;
    /* entries whose first byte went to the kernel cannot change */
    guint64 written = mp_relay_channel_bytes_written(l->ch, MP_DIR_TO_DST);
    guint drop = 0;
    while (drop < l->idx->len && at(l, drop)->off < written)
        drop++;
    if (drop)
        g_array_remove_range(l->idx, 0, drop);

    for (guint i = 0; i < l->idx->len; i++)
        if (at(l, i)->name_due && at(l, i)->cont)
            name_block(l, i);
    for (guint i = 0; i < l->idx->len; i++) {
        if (!at(l, i)->urgent)
            continue;
        at(l, i)->urgent = FALSE;
        move_to_front(l, i);
        /* entries before i are unchanged; the one now at i is the next */
        if (i < l->idx->len && at(l, i)->urgent)
            i--;
    }
}

static gboolean
in_range(const char *block, guint64 addr, const char *rblock, guint64 start,
         guint64 len)
{
    return block == rblock && addr >= start && addr - start < len;
}

void
mp_pcopy_lane_record(MpPcopyLane *l, const MpRecord *rec, guint64 out_off,
                     gsize out_len)
{
    if (!l->ch)
        return;
    if (!l->active) {
        if (rec->kind == MP_REC_PACKAGED_END) {
            /* the destination runs the guest: page requests come now */
            l->active = TRUE;
            mp_relay_channel_set_low_latency(l->ch, MP_DIR_TO_DST,
                                             LOW_LATENCY_BYTES);
        }
        return;
    }
    if (rec->kind != MP_REC_RAM_PAGE)
        return;
    const MpRamPage *pg = &rec->u.page;
    Entry e = {
        .off = out_off + l->delta,
        .len = out_len,
        .block = g_intern_string(pg->block),
        .addr = pg->addr,
        .cont = (pg->flags & MP_RAM_SAVE_FLAG_CONTINUE) != 0,
        .movable = pg->kind == MP_PAGE_NORMAL || pg->kind == MP_PAGE_ZERO,
        .name_due = l->name_next,
    };
    l->name_next = FALSE;
    for (guint i = 0; e.movable && i < l->waiting->len; i++) {
        Waiting *w = &g_array_index(l->waiting, Waiting, i);
        if (in_range(e.block, e.addr, w->block, w->start, w->len)) {
            e.urgent = e.arrival = TRUE;
            g_array_remove_index(l->waiting, i);
            break;
        }
    }
    g_array_append_val(l->idx, e);
}

void
mp_pcopy_lane_request(MpPcopyLane *l, const char *block, guint64 start,
                      guint64 len)
{
    if (!l->active || !l->ch || !block)
        return;
    l->requests++;
    if (len != MP_TARGET_PAGE_SIZE) {
        /* a host page of several target pages must arrive whole */
        l->host_pages++;
        return;
    }
    const char *b = g_intern_string(block);
    gboolean found = FALSE;
    for (guint i = 0; i < l->idx->len; i++) {
        Entry *e = at(l, i);
        if (e->movable && in_range(e->block, e->addr, b, start, len)) {
            e->urgent = found = TRUE;
            break;
        }
    }
    if (found) {
        mp_pcopy_lane_flush(l);
        return;
    }
    /* QEMU sends it soon (or sent it already: then it is never matched
     * and ages out) */
    if (l->waiting->len >= MAX_WAITING)
        g_array_remove_index(l->waiting, 0);
    Waiting w = {b, start, len};
    g_array_append_val(l->waiting, w);
}

json_object *
mp_pcopy_lane_report(const MpPcopyLane *l)
{
    json_object *o = json_object_new_object();
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
    return o;
}
