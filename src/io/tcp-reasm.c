/* tcp-reasm.c: TCP reassembly of one direction (see tcp-reasm.h).
 *
 * Held segments are a list sorted by offset that never overlap: a new
 * segment only fills what no held one covers, so the first copy of a
 * byte wins and the held bytes never exceed the window.  Segments come
 * almost always in order, so the list is searched from its tail.
 */
#include "config.h"
#include <string.h>
#include "tcp-reasm.h"

typedef struct {
    guint64 off;
    gsize len;
    guint8 data[];
} Seg;

struct MpTcpReasm {
    MpTcpReasmOps ops;
    gpointer data;
    guint32 isn;   /* sequence number of stream offset 0 */
    guint64 next;  /* bytes delivered */
    GQueue held;   /* Seg*, by offset, disjoint, all past `next` */
    gsize held_bytes, window;
    guint64 max_end; /* the end of the furthest segment seen */
    gboolean fin_known;
    guint64 fin_off;
    gboolean snap_pending; /* bytes [snap_off, snap_end) were not captured */
    guint64 snap_off, snap_end;
    MpTcpReasmStats stats;
};

const char *
mp_tcp_gap_why(MpTcpGapWhy why)
{
    switch (why) {
    case MP_TCP_GAP_ACKED:
        return "the peer acknowledged bytes the capture does not hold "
               "(packets dropped by the capturing kernel, or not captured)";
    case MP_TCP_GAP_WINDOW:
        return "more bytes than the reassembly window came after them";
    case MP_TCP_GAP_SNAPLEN:
        return "a packet was cut by the capture's snaplen";
    case MP_TCP_GAP_END:
        return "the connection or the capture ended before they came";
    }
    return "?";
}

MpTcpReasm *
mp_tcp_reasm_new(guint32 isn_next, gsize window, const MpTcpReasmOps *ops,
                 gpointer data)
{
    MpTcpReasm *r = g_new0(MpTcpReasm, 1);
    r->ops = *ops;
    r->data = data;
    r->isn = isn_next;
    r->window = window ? window : MP_TCP_WINDOW_DEFAULT;
    g_queue_init(&r->held);
    return r;
}

void
mp_tcp_reasm_free(MpTcpReasm *r)
{
    if (!r)
        return;
    g_queue_clear_full(&r->held, g_free);
    g_free(r);
}

/* The stream offset of `seq`, taken within 2 GiB of where delivery stands
 * (sequence numbers wrap); negative: before the first byte. */
static gint64
offset_of(const MpTcpReasm *r, guint32 seq)
{
    gint32 d = (gint32)(seq - (guint32)(r->isn + r->next));
    return (gint64)r->next + d;
}

static void
emit(MpTcpReasm *r, const guint8 *buf, gsize len)
{
    guint64 off = r->next;
    r->next += len;
    if (len)
        r->ops.data(r->data, off, buf, len);
}

static void
gap(MpTcpReasm *r, guint64 to, MpTcpGapWhy why)
{
    guint64 off = r->next;
    if (to <= off)
        return;
    r->next = to;
    r->stats.gaps++;
    r->stats.gap_bytes += to - off;
    if (r->ops.gap)
        r->ops.gap(r->data, off, to - off, why);
}

/* Delivers the held segments that delivery reached, and the snaplen hole
 * once it stands there. */
static void
advance(MpTcpReasm *r)
{
    for (;;) {
        Seg *s = g_queue_peek_head(&r->held);
        if (s && s->off <= r->next) {
            g_queue_pop_head(&r->held);
            r->held_bytes -= s->len;
            if (s->off + s->len > r->next)
                emit(r, s->data + (r->next - s->off),
                     s->off + s->len - r->next);
            g_free(s);
            continue;
        }
        if (r->snap_pending && r->next >= r->snap_off) {
            r->snap_pending = FALSE;
            guint64 to = r->snap_end;
            if (s && s->off < to)
                to = s->off;
            gap(r, to, MP_TCP_GAP_SNAPLEN);
            continue;
        }
        return;
    }
}

/* Holds [off, off + len) where no held segment covers it yet. */
static void
hold(MpTcpReasm *r, guint64 off, const guint8 *buf, gsize len)
{
    guint64 pos = off, end = off + len;
    GList *l = r->held.tail;

    /* the first held segment that ends after `off` */
    while (l && ((Seg *)l->data)->off + ((Seg *)l->data)->len > off)
        l = l->prev;
    l = l ? l->next : r->held.head;
    r->stats.out_of_order++;
    while (pos < end) {
        Seg *s = l ? l->data : NULL;
        guint64 stop = s && s->off < end ? s->off : end;
        if (stop > pos) {
            Seg *n = g_malloc(sizeof(Seg) + (stop - pos));
            n->off = pos;
            n->len = stop - pos;
            memcpy(n->data, buf + (pos - off), n->len);
            if (l)
                g_queue_insert_before(&r->held, l, n);
            else
                g_queue_push_tail(&r->held, n);
            r->held_bytes += n->len;
            pos = stop;
        }
        if (!s || s->off >= end)
            break;
        guint64 s_end = s->off + s->len;
        if (s_end > pos) {
            r->stats.repeated += MIN(s_end, end) - pos;
            pos = s_end;
        }
        l = l->next;
    }
    r->stats.held_max = MAX(r->stats.held_max, r->held_bytes);
}

void
mp_tcp_reasm_segment(MpTcpReasm *r, guint32 seq, const guint8 *buf, gsize len,
                     gsize wire_len)
{
    if (!wire_len)
        return;
    len = MIN(len, wire_len);
    r->stats.segments++;
    gint64 a = offset_of(r, seq);
    gint64 end_cap = a + (gint64)len, end_wire = a + (gint64)wire_len;

    if (end_wire > 0 && (guint64)end_wire > r->max_end)
        r->max_end = end_wire;
    if (len < wire_len && end_wire > (gint64)r->next
        && (!r->snap_pending || (guint64)MAX(end_cap, 0) < r->snap_off)) {
        r->snap_pending = TRUE;
        r->snap_off = MAX(end_cap, 0);
        r->snap_end = end_wire;
    }
    if (end_cap <= (gint64)r->next) {
        r->stats.repeated += len;
        advance(r);
        return;
    }
    if (a < (gint64)r->next) {
        gsize skip = r->next - a;
        r->stats.repeated += skip;
        buf += skip;
        a = r->next;
    }
    /* past the window: the hole before it will not be filled in time */
    while ((guint64)a > r->next && (guint64)end_cap > r->next + r->window) {
        Seg *s = g_queue_peek_head(&r->held);
        guint64 to = s && s->off < (guint64)a ? s->off : (guint64)a;
        gap(r, to, MP_TCP_GAP_WINDOW);
        advance(r);
    }
    if ((guint64)a > r->next) {
        hold(r, a, buf, end_cap - a);
        return;
    }
    if (a < (gint64)r->next) { /* advance() delivered part of it */
        if (end_cap <= (gint64)r->next)
            return;
        buf += r->next - a;
        a = r->next;
    }
    emit(r, buf, end_cap - a);
    /* held segments it covered were copies of the same bytes */
    Seg *s;
    while ((s = g_queue_peek_head(&r->held)) && s->off + s->len <= r->next) {
        r->stats.repeated += s->len;
        r->held_bytes -= s->len;
        g_free(g_queue_pop_head(&r->held));
    }
    advance(r);
}

void
mp_tcp_reasm_fin(MpTcpReasm *r, guint32 seq)
{
    gint64 off = offset_of(r, seq);
    if (off < 0 || (r->fin_known && (guint64)off >= r->fin_off))
        return;
    r->fin_known = TRUE;
    r->fin_off = off;
}

void
mp_tcp_reasm_ack(MpTcpReasm *r, guint32 ack)
{
    gint64 off = offset_of(r, ack);
    /* an ACK of the FIN counts it as one byte; without the FIN captured,
     * that last "byte" is not taken for a missing one */
    guint64 limit = r->fin_known ? MIN((guint64)MAX(off, 0), r->fin_off)
                                 : (guint64)MAX(off - 1, 0);

    while (limit > r->next) {
        Seg *s = g_queue_peek_head(&r->held);
        gap(r, s && s->off < limit ? s->off : limit, MP_TCP_GAP_ACKED);
        advance(r);
    }
}

void
mp_tcp_reasm_skip(MpTcpReasm *r, MpTcpGapWhy why)
{
    Seg *s = g_queue_peek_head(&r->held);
    if (s)
        gap(r, s->off, why);
    advance(r);
}

void
mp_tcp_reasm_finish(MpTcpReasm *r)
{
    guint64 target = r->fin_known ? r->fin_off : r->max_end;

    advance(r);
    while (r->next < target || r->held.length) {
        Seg *s = g_queue_peek_head(&r->held);
        gap(r, s ? s->off : target, MP_TCP_GAP_END);
        advance(r);
    }
    r->snap_pending = FALSE;
}

gboolean
mp_tcp_reasm_done(const MpTcpReasm *r)
{
    return r->fin_known && r->next >= r->fin_off && !r->held.length;
}

guint64
mp_tcp_reasm_offset(const MpTcpReasm *r)
{
    return r->next;
}

gsize
mp_tcp_reasm_held(const MpTcpReasm *r)
{
    return r->held_bytes;
}

void
mp_tcp_reasm_stats(const MpTcpReasm *r, MpTcpReasmStats *out)
{
    *out = r->stats;
}
