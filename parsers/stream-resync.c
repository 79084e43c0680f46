/* stream-resync.c: the scan for the next trusted record after a gap
 * (stream-resync.h).  The parsers bring the probe; this file keeps the
 * bytes a probe still needs and hands the rest back to the parser.
 */
#include <string.h>
#include "stream-resync.h"

void
mp_resync_init(MpResync *r, gsize limit)
{
    memset(r, 0, sizeof(*r));
    r->buf = g_byte_array_new();
    r->limit = limit;
}

void
mp_resync_clear(MpResync *r)
{
    if (r->buf)
        g_byte_array_unref(r->buf);
    r->buf = NULL;
}

void
mp_resync_gap(MpResync *r, guint64 off, guint64 len)
{
    if (!r->scanning) {
        r->gap_off = off;
        r->gap_bytes = 0;
        r->skipped = 0;
    }
    /* held bytes lie before this gap: no record spans it.  (Bytes still
     * to replay after a paused resume are lost with them: a gap is only
     * told between feeds, which a paused owner does not make.) */
    r->skipped += r->buf->len;
    g_byte_array_set_size(r->buf, 0);
    r->replay = 0;
    r->gap_bytes += len;
    r->gaps++;
    r->scanning = TRUE;
    r->buf_off = off + len;
}

/* Drops the first `n` held bytes. */
static void
drop(MpResync *r, gsize n)
{
    if (!n)
        return;
    g_byte_array_remove_range(r->buf, 0, n);
    r->buf_off += n;
}

/* Parses the held bytes of a resume, up to a pause. */
static MpFeedStatus
replay(MpResync *r, const MpResyncOps *ops, gpointer parser, GError **error)
{
    if (!r->replay)
        return MP_FEED_MORE; /* (while scanning, buf is the candidates') */
    while (r->replay) {
        gsize used = 0;
        MpFeedStatus st =
            ops->feed(parser, r->buf->data, r->replay, &used, error);
        used = MIN(used, r->replay);
        drop(r, used);
        r->replay -= used;
        if (st == MP_FEED_PAUSED)
            return st;
        if (st != MP_FEED_MORE) {
            /* an error, or the grammar's end: what is held is not parsed */
            r->replay = 0;
            g_byte_array_set_size(r->buf, 0);
            return st;
        }
    }
    g_byte_array_set_size(r->buf, 0);
    return MP_FEED_MORE;
}

/* Tries every held position in order; resumes at the first trusted one. */
static MpFeedStatus
scan(MpResync *r, const MpResyncOps *ops, gpointer parser, GError **error)
{
    MpProbeResult res = MP_PROBE_NO;
    const char *what = NULL;
    int kind = 0;
    gsize pos = 0;

    while (pos < r->buf->len) {
        gsize have = r->buf->len - pos;
        res = ops->probe(parser, r->buf->data + pos, have, r->buf_off + pos,
                         &what, &kind);
        /* a probe asking for more than its bound has its answer */
        if (res == MP_PROBE_MORE && have >= r->limit)
            res = MP_PROBE_NO;
        if (res != MP_PROBE_NO)
            break;
        pos++;
    }
    r->skipped += pos;
    drop(r, pos);
    if (res != MP_PROBE_YES)
        return MP_FEED_MORE;

    MpRecord rec;
    memset(&rec, 0, sizeof(rec));
    rec.kind = MP_REC_RESYNC;
    rec.offset = r->buf_off;
    rec.u.resync.gap_offset = r->gap_off;
    rec.u.resync.gap_bytes = r->gap_bytes;
    rec.u.resync.skipped = r->skipped;
    rec.u.resync.what = what;
    r->scanning = FALSE;
    r->resumed++;
    r->replay = r->buf->len;
    if (ops->resume(parser, &rec, kind) == MP_REC_PAUSE)
        return MP_FEED_PAUSED;
    return replay(r, ops, parser, error);
}

static MpFeedStatus
feed(MpResync *r, const MpResyncOps *ops, gpointer parser,
     const guint8 *buf, gsize len, gsize *consumed, GError **error)
{
    MpFeedStatus st;
    gsize used = 0;

    *consumed = 0;
    st = replay(r, ops, parser, error);
    if (st != MP_FEED_MORE)
        return st;
    while (r->scanning) {
        if (*consumed == len)
            return MP_FEED_MORE;
        /* in chunks: what is held stays within twice the limit */
        gsize n = MIN(len - *consumed, r->limit);
        g_byte_array_append(r->buf, buf + *consumed, n);
        *consumed += n;
        st = scan(r, ops, parser, error);
        if (st != MP_FEED_MORE)
            return st;
    }
    if (*consumed == len)
        return MP_FEED_MORE;
    st = ops->feed(parser, buf + *consumed, len - *consumed, &used, error);
    *consumed += used;
    return st;
}

MpFeedStatus
mp_resync_feed(MpResync *r, const MpResyncOps *ops, gpointer parser,
               guint64 *off, const guint8 *buf, gsize len, gsize *consumed,
               GError **error)
{
    MpFeedStatus st = feed(r, ops, parser, buf, len, consumed, error);
    /* still scanning: the parser stands after the bytes held */
    if (r->scanning)
        *off = r->buf_off + r->buf->len;
    return st;
}

gboolean
mp_resync_finish(MpResync *r)
{
    if (!r->scanning)
        return FALSE;
    r->skipped += r->buf->len;
    g_byte_array_set_size(r->buf, 0);
    r->scanning = FALSE;
    return TRUE;
}
