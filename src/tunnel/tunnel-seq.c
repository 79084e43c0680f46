/* tunnel-seq.c: sequence numbers, acknowledgements, kept frames (see
 * tunnel-seq.h). */
#include "config.h"
#include "parse-common.h"
#include "tunnel-seq.h"

typedef struct {
    guint64 next_send; /* seq the next frame gets */
    guint64 acked;     /* the peer holds every frame up to this */
    guint64 held;      /* we hold every frame up to this */
    GQueue kept;       /* GBytes of frames acked+1 .. next_send-1 kept */
    guint64 kept_first; /* seq of the queue's head */
} Lane;

typedef struct {
    guint16 id;
    Lane lane[2]; /* 0 bulk, 1 urgent */
} Stream;

struct MpTunSeq {
    gsize keep_limit;
    gsize kept_bytes;
    GPtrArray *streams;  /* Stream, in order of first use */
    GHashTable *by_id;   /* id -> Stream */
};

static void
stream_free(gpointer p)
{
    Stream *st = p;
    for (int l = 0; l < 2; l++)
        g_queue_clear_full(&st->lane[l].kept, (GDestroyNotify)g_bytes_unref);
    g_free(st);
}

MpTunSeq *
mp_tun_seq_new(gsize keep_limit)
{
    MpTunSeq *s = g_new0(MpTunSeq, 1);
    s->keep_limit = keep_limit;
    s->streams = g_ptr_array_new_with_free_func(stream_free);
    s->by_id = g_hash_table_new(g_direct_hash, g_direct_equal);
    return s;
}

void
mp_tun_seq_free(MpTunSeq *s)
{
    if (!s)
        return;
    g_hash_table_destroy(s->by_id);
    g_ptr_array_unref(s->streams);
    g_free(s);
}

static Stream *
stream_get(MpTunSeq *s, guint16 id)
{
    Stream *st = g_hash_table_lookup(s->by_id, GUINT_TO_POINTER(id));
    if (st)
        return st;
    if (s->streams->len >= MP_TUN_SEQ_MAX_STREAMS)
        return NULL;
    st = g_new0(Stream, 1);
    st->id = id;
    for (int l = 0; l < 2; l++) {
        st->lane[l].next_send = 1;
        g_queue_init(&st->lane[l].kept);
    }
    g_ptr_array_add(s->streams, st);
    g_hash_table_insert(s->by_id, GUINT_TO_POINTER(id), st);
    return st;
}

static const char *
lane_name(gboolean urgent)
{
    return urgent ? "urgent" : "bulk";
}

guint64
mp_tun_seq_next(MpTunSeq *s, guint16 stream, gboolean urgent)
{
    Stream *st = stream_get(s, stream);
    return st ? st->lane[urgent ? 1 : 0].next_send++ : 0;
}

gboolean
mp_tun_seq_keep(MpTunSeq *s, guint16 stream, gboolean urgent, guint64 seq,
                const guint8 *frame, gsize len)
{
    Stream *st = stream_get(s, stream);
    if (!st || s->kept_bytes + len > s->keep_limit)
        return FALSE;
    Lane *l = &st->lane[urgent ? 1 : 0];
    /* frames are kept in the order their seqs were given */
    g_assert(seq < l->next_send && seq > l->acked);
    if (g_queue_is_empty(&l->kept))
        l->kept_first = seq;
    else
        g_assert(seq == l->kept_first + g_queue_get_length(&l->kept));
    g_queue_push_tail(&l->kept, g_bytes_new(frame, len));
    s->kept_bytes += len;
    return TRUE;
}

static gboolean
ack_lane(MpTunSeq *s, Stream *st, gboolean urgent, guint64 seq,
         GError **error)
{
    Lane *l = &st->lane[urgent ? 1 : 0];
    if (seq >= l->next_send) {
        mp_parse_error_set(error, "tunnel acks", MP_PARSE_ERROR_SECTION,
                           "ACK of %s seq %" G_GUINT64_FORMAT
                           " on stream %u, but only %" G_GUINT64_FORMAT
                           " were sent",
                           lane_name(urgent), seq, st->id, l->next_send - 1);
        return FALSE;
    }
    if (seq <= l->acked)
        return TRUE; /* an older ACK: cumulative, nothing new */
    while (!g_queue_is_empty(&l->kept) && l->kept_first <= seq) {
        GBytes *b = g_queue_pop_head(&l->kept);
        s->kept_bytes -= g_bytes_get_size(b);
        g_bytes_unref(b);
        l->kept_first++;
    }
    l->acked = seq;
    return TRUE;
}

gboolean
mp_tun_seq_acked(MpTunSeq *s, const MpTunAckEntry *e, GError **error)
{
    Stream *st = g_hash_table_lookup(s->by_id, GUINT_TO_POINTER(e->stream));
    if (!st) {
        if (e->bulk_seq == 0 && e->urgent_seq == 0)
            return TRUE;
        mp_parse_error_set(error, "tunnel acks", MP_PARSE_ERROR_SECTION,
                           "ACK for stream %u, which this side never sent "
                           "on",
                           e->stream);
        return FALSE;
    }
    return ack_lane(s, st, FALSE, e->bulk_seq, error)
           && ack_lane(s, st, TRUE, e->urgent_seq, error);
}

gsize
mp_tun_seq_kept_bytes(const MpTunSeq *s)
{
    return s->kept_bytes;
}

void
mp_tun_seq_foreach_kept(const MpTunSeq *s,
                        void (*fn)(const guint8 *frame, gsize len,
                                   gpointer user_data),
                        gpointer user_data)
{
    for (guint i = 0; i < s->streams->len; i++) {
        Stream *st = s->streams->pdata[i];
        for (int l = 1; l >= 0; l--) {
            for (GList *k = st->lane[l].kept.head; k; k = k->next) {
                gsize n;
                const guint8 *d = g_bytes_get_data(k->data, &n);
                fn(d, n, user_data);
            }
        }
    }
}

MpTunSeqVerdict
mp_tun_seq_receive(MpTunSeq *s, guint16 stream, gboolean urgent, guint64 seq,
                   GError **error)
{
    Stream *st = stream_get(s, stream);
    if (!st) {
        mp_parse_error_set(error, "tunnel", MP_PARSE_ERROR_SECTION,
                           "stream %u: more than %u streams", stream,
                           MP_TUN_SEQ_MAX_STREAMS);
        return MP_TUN_SEQ_GAP;
    }
    Lane *l = &st->lane[urgent ? 1 : 0];
    if (seq <= l->held)
        return MP_TUN_SEQ_DUPLICATE;
    if (seq != l->held + 1) {
        mp_parse_error_set(error, "tunnel", MP_PARSE_ERROR_SECTION,
                           "stream %u, %s lane: seq %" G_GUINT64_FORMAT
                           ", expected %" G_GUINT64_FORMAT
                           " (frames are missing)",
                           stream, lane_name(urgent), seq, l->held + 1);
        return MP_TUN_SEQ_GAP;
    }
    l->held = seq;
    return MP_TUN_SEQ_NEW;
}

guint32
mp_tun_seq_ack_entries(const MpTunSeq *s, MpTunAckEntry *out, guint32 max)
{
    guint32 n = 0;
    for (guint i = 0; i < s->streams->len && n < max; i++) {
        const Stream *st = s->streams->pdata[i];
        if (st->lane[0].held == 0 && st->lane[1].held == 0)
            continue; /* a stream we only send on */
        out[n].stream = st->id;
        out[n].bulk_seq = st->lane[0].held;
        out[n].urgent_seq = st->lane[1].held;
        n++;
    }
    return n;
}
