/* session.c: the pipelines of one migration session (see session.h). */
#include "config.h"
#include <string.h>
#include "qmig-parser.h"
#include "session.h"

typedef struct {
    MpSession *session;
    guint index;
    MpChanKind kind;
    MpPipeline *pipe[MP_DIR__MAX];
} Chan;

struct MpSession {
    MpMetrics *metrics;
    guint number;
    GPtrArray *chans; /* Chan*, by index */
    Chan *main;       /* the latest main (or recovery) channel */
    GArray *observers; /* {MpPipelineObserver, data} for new pipelines */
    gint64 now_us;     /* of the feed in progress */
    MpVmdesc *vmdesc;
    gboolean quiet;
};

typedef struct {
    MpPipelineObserver ops;
    gpointer data;
} Observer;

MpChanKind
mp_chan_classify(const guint8 *buf, gsize len, gboolean later)
{
    static const guint8 qevm[4] = {0x51, 0x45, 0x56, 0x4d};
    static const guint8 mfd[4] = {0x11, 0x22, 0x33, 0x44};
    gsize n = MIN(len, 4);

    if (len == 0)
        return MP_CHAN_UNKNOWN;
    if (memcmp(buf, qevm, n) == 0)
        return len >= 4 ? MP_CHAN_MAIN : MP_CHAN_UNKNOWN;
    if (memcmp(buf, mfd, n) == 0)
        return len >= 4 ? MP_CHAN_MULTIFD : MP_CHAN_UNKNOWN;
    /* TLS: a handshake record, 0x16 then the major version 3 */
    if (buf[0] == 0x16 && (len < 2 || buf[1] == 0x03))
        return len >= 2 ? MP_CHAN_TLS : MP_CHAN_UNKNOWN;
    /* a preempt channel starts with a be64 page address, never 0x08.. */
    if (buf[0] == MP_QMIG_COMMAND)
        return MP_CHAN_RECOVERY;
    if (!later)
        return MP_CHAN_FOREIGN;
    return MP_CHAN_PREEMPT;
}

static void
chan_free(gpointer p)
{
    Chan *c = p;
    if (!c)
        return;
    for (int d = 0; d < MP_DIR__MAX; d++)
        mp_pipeline_free(c->pipe[d]);
    g_free(c);
}

MpSession *
mp_session_new(MpMetrics *metrics, guint session)
{
    MpSession *s = g_new0(MpSession, 1);
    s->metrics = metrics;
    s->number = session;
    s->chans = g_ptr_array_new_with_free_func(chan_free);
    s->observers = g_array_new(FALSE, FALSE, sizeof(Observer));
    return s;
}

void
mp_session_free(MpSession *s)
{
    if (!s)
        return;
    g_ptr_array_free(s->chans, TRUE);
    g_array_unref(s->observers);
    mp_vmdesc_unref(s->vmdesc);
    g_free(s);
}

void
mp_session_set_logging(MpSession *s, gboolean on)
{
    s->quiet = !on;
}

void
mp_session_set_vmdesc(MpSession *s, MpVmdesc *vmdesc)
{
    mp_vmdesc_unref(s->vmdesc);
    s->vmdesc = vmdesc ? mp_vmdesc_ref(vmdesc) : NULL;
    mp_analysis_set_vmdesc(mp_metrics_analysis(s->metrics), vmdesc);
}

void
mp_session_observe(MpSession *s, const MpPipelineObserver *ops,
                   gpointer data)
{
    Observer o = {*ops, data};
    g_array_append_val(s->observers, o);
}

MpChanKind
mp_session_kind(const MpSession *s, guint channel)
{
    const Chan *c =
        channel < s->chans->len ? g_ptr_array_index(s->chans, channel) : NULL;
    return c ? c->kind : MP_CHAN_UNKNOWN;
}

gboolean
mp_session_in_postcopy(const MpSession *s)
{
    MpAnalysisProgress pr;
    mp_analysis_progress(mp_metrics_analysis(s->metrics), &pr);
    return pr.postcopy_us >= 0 && !pr.eof;
}

/* ---- the metrics' observer of every pipeline ---- */

static MpRecordAction
on_record(MpPipeline *p, const MpRecord *rec, gpointer data)
{
    MpSession *s = data;
    mp_metrics_record(s->metrics, mp_pipeline_channel(p),
                            mp_pipeline_dir(p), rec, s->now_us);
    return MP_REC_CONTINUE;
}

static void
on_bytes(MpPipeline *p, const guint8 *buf, gsize len, gint64 now_us,
         gpointer data)
{
    MpSession *s = data;
    s->now_us = now_us;
    mp_metrics_bytes(s->metrics, mp_pipeline_channel(p),
                           mp_pipeline_dir(p), len, now_us);
}

/* The parser cannot follow: say so once, count from now on. */
static void
on_gave_up(MpPipeline *p, guint64 off, const GError *err, gpointer data)
{
    MpSession *s = data;
    MpDir dir = mp_pipeline_dir(p);

    /* the message names the channel and the offset */
    if (!s->quiet)
        g_message(
            "session %u %s: %s; forwarding the channel byte for byte, its "
            "metrics are partial from here on",
            s->number, mp_dir_name(dir), err->message);
    mp_metrics_partial(s->metrics, mp_pipeline_channel(p), dir, off,
                             err->message, s->now_us);
    mp_analysis_error(mp_metrics_analysis(s->metrics), err);
}

static void
on_trailing(MpPipeline *p, guint64 off, gsize len, gpointer data)
{
    MpSession *s = data;
    mp_analysis_anomaly(mp_metrics_analysis(s->metrics),
                        "%s: %zu bytes after the end of its stream at offset "
                        "%" G_GUINT64_FORMAT,
                        mp_pipeline_name(p), len, off);
}

/* A stream cut inside a record is normal for a cancelled or failed
 * migration; it is reported with the channel's end, not as an error. */
static void
on_end(MpPipeline *p, MpEndReason how, const GError *cut, gint64 now_us,
       gpointer data)
{
    MpSession *s = data;
    mp_metrics_channel_end(s->metrics, mp_pipeline_channel(p),
                                 mp_pipeline_dir(p), how,
                                 cut ? cut->message : NULL, now_us);
}

static const MpPipelineObserver metrics_observer = {
    .record = on_record,
    .bytes = on_bytes,
    .gave_up = on_gave_up,
    .trailing = on_trailing,
    .end = on_end,
};

/* What `c` carries is known. */
static void
set_kind(MpSession *s, Chan *c, MpChanKind kind)
{
    c->kind = kind;
    mp_metrics_channel_kind(s->metrics, c->index, kind, s->now_us);
    for (int d = 0; d < MP_DIR__MAX; d++)
        mp_pipeline_set_kind(c->pipe[d], kind,
                             s->main ? s->main->pipe[d] : NULL);
    switch (kind) {
    case MP_CHAN_MAIN:
    case MP_CHAN_RECOVERY:
        if (kind == MP_CHAN_MAIN && s->vmdesc && !s->main)
            mp_pipeline_set_vmdesc(c->pipe[MP_DIR_TO_DST], s->vmdesc);
        s->main = c;
        break;
    case MP_CHAN_MULTIFD:
    case MP_CHAN_PREEMPT:
        break;
    case MP_CHAN_TLS:
        if (!s->quiet)
            g_message("session %u channel %u: TLS (tls-creds): forwarded byte "
                      "for byte, not parsed",
                      s->number, c->index);
        mp_metrics_partial(s->metrics, c->index, MP_DIR_TO_DST, 0,
                                 "TLS: encrypted", s->now_us);
        break;
    default:
        mp_metrics_partial(s->metrics, c->index, MP_DIR_TO_DST, 0,
                                 "not a migration channel", s->now_us);
        break;
    }
}

/* A to-dst pipeline's first bytes, when nobody told its kind. */
static MpChanKind
classify(MpPipeline *p, const guint8 *buf, gsize len, gboolean closed,
         gpointer data)
{
    MpSession *s = data;
    Chan *c = g_ptr_array_index(s->chans, mp_pipeline_channel(p));
    MpChanKind kind =
        mp_chan_classify(buf, len, closed || (s->main && s->main != c));

    if (closed && kind == MP_CHAN_UNKNOWN)
        kind = MP_CHAN_FOREIGN; /* closed after fewer than 4 bytes */
    if (kind != MP_CHAN_UNKNOWN)
        set_kind(s, c, kind);
    return kind;
}

static Chan *
chan(MpSession *s, guint channel)
{
    while (s->chans->len <= channel)
        g_ptr_array_add(s->chans, NULL);
    Chan *c = g_ptr_array_index(s->chans, channel);
    if (c)
        return c;
    c = g_new0(Chan, 1);
    c->session = s;
    c->index = channel;
    for (int d = 0; d < MP_DIR__MAX; d++) {
        c->pipe[d] = mp_pipeline_new(channel, d);
        mp_pipeline_observe(c->pipe[d], &metrics_observer, s);
        for (guint i = 0; i < s->observers->len; i++) {
            Observer *o = &g_array_index(s->observers, Observer, i);
            mp_pipeline_observe(c->pipe[d], &o->ops, o->data);
        }
    }
    mp_pipeline_set_classify(c->pipe[MP_DIR_TO_DST], classify, s);
    g_ptr_array_index(s->chans, channel) = c;
    return c;
}

void
mp_session_add(MpSession *s, guint channel, const char *peer, gint64 now_us)
{
    chan(s, channel);
    mp_metrics_channel_open(s->metrics, channel, peer, now_us);
}

void
mp_session_set_kind(MpSession *s, guint channel, MpChanKind kind,
                    gint64 now_us)
{
    Chan *c = chan(s, channel);

    if (c->kind != MP_CHAN_UNKNOWN || kind == MP_CHAN_UNKNOWN)
        return;
    s->now_us = now_us;
    set_kind(s, c, kind);
}

MpPipeline *
mp_session_pipeline(MpSession *s, guint channel, MpDir dir)
{
    return chan(s, channel)->pipe[dir];
}

void
mp_session_feed(MpSession *s, guint channel, MpDir dir, const guint8 *buf,
                gsize len, gint64 now_us)
{
    mp_pipeline_feed(chan(s, channel)->pipe[dir], buf, len, now_us);
}

void
mp_session_end(MpSession *s, guint channel, MpDir dir, MpEndReason how,
               gint64 now_us)
{
    s->now_us = now_us;
    mp_pipeline_end(chan(s, channel)->pipe[dir], how, now_us);
}
