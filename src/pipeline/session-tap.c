/* session-tap.c: parsers of every connection of one migration session
 * (see session-tap.h). */
#include "config.h"
#include <string.h>
#include "mfd-parser.h"
#include "qmig-parser.h"
#include "ram-parser.h"
#include "rp-parser.h"
#include "session-tap.h"

typedef struct TapChan TapChan;

/* user_data of one direction's parser */
typedef struct {
    MpSessionTap *tap;
    TapChan *chan;
    MpDir dir;
} Sink;

struct TapChan {
    guint index;
    MpChanKind kind;
    guint8 first[4]; /* the first bytes to the destination, until known */
    gsize first_have;
    MpQmigParser *qmig;         /* main, recovery */
    MpRamParser *ram;           /* preempt */
    MpMfdParser *mfd;           /* multifd */
    MpRpParser *rp;             /* the return path of main and recovery */
    gboolean done[MP_DIR__MAX]; /* no parser (any more): only counted */
    gboolean ended[MP_DIR__MAX];
    guint64 off[MP_DIR__MAX]; /* bytes fed */
    char *name[MP_DIR__MAX];  /* in parse errors: "channel 2 multifd" */
    Sink sink[MP_DIR__MAX];
};

struct MpSessionTap {
    MpMetrics *metrics;
    guint session;
    GPtrArray *chans; /* TapChan*, by index */
    TapChan *main;    /* the latest main (or recovery) channel */
    MpTapRecordFunc fn;
    gpointer fn_data;
    gint64 now_us; /* of the feed in progress */
    MpVmdesc *vmdesc;
    gboolean quiet;
};

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
    TapChan *c = p;
    if (!c)
        return;
    mp_qmig_parser_free(c->qmig);
    mp_ram_parser_free(c->ram);
    mp_mfd_parser_free(c->mfd);
    mp_rp_parser_free(c->rp);
    for (int d = 0; d < MP_DIR__MAX; d++)
        g_free(c->name[d]);
    g_free(c);
}

MpSessionTap *
mp_session_tap_new(MpMetrics *metrics, guint session)
{
    MpSessionTap *t = g_new0(MpSessionTap, 1);
    t->metrics = metrics;
    t->session = session;
    t->chans = g_ptr_array_new_with_free_func(chan_free);
    return t;
}

void
mp_session_tap_free(MpSessionTap *t)
{
    if (!t)
        return;
    g_ptr_array_free(t->chans, TRUE);
    mp_vmdesc_unref(t->vmdesc);
    g_free(t);
}

void
mp_session_tap_set_logging(MpSessionTap *t, gboolean on)
{
    t->quiet = !on;
}

void
mp_session_tap_set_vmdesc(MpSessionTap *t, MpVmdesc *vmdesc)
{
    mp_vmdesc_unref(t->vmdesc);
    t->vmdesc = vmdesc ? mp_vmdesc_ref(vmdesc) : NULL;
    mp_analysis_set_vmdesc(mp_metrics_analysis(t->metrics), vmdesc);
}

void
mp_session_tap_set_record_func(MpSessionTap *t, MpTapRecordFunc fn,
                               gpointer user_data)
{
    t->fn = fn;
    t->fn_data = user_data;
}

static TapChan *
chan(MpSessionTap *t, guint index)
{
    while (t->chans->len <= index)
        g_ptr_array_add(t->chans, NULL);
    TapChan *c = g_ptr_array_index(t->chans, index);
    if (!c) {
        c = g_new0(TapChan, 1);
        c->index = index;
        for (int d = 0; d < MP_DIR__MAX; d++) {
            c->sink[d].tap = t;
            c->sink[d].chan = c;
            c->sink[d].dir = d;
        }
        g_ptr_array_index(t->chans, index) = c;
    }
    return c;
}

void
mp_session_tap_add(MpSessionTap *t, guint channel, const char *peer,
                   gint64 now_us)
{
    chan(t, channel);
    mp_metrics_channel_open(t->metrics, channel, peer, now_us);
}

MpChanKind
mp_session_tap_kind(const MpSessionTap *t, guint channel)
{
    const TapChan *c =
        channel < t->chans->len ? g_ptr_array_index(t->chans, channel) : NULL;
    return c ? c->kind : MP_CHAN_UNKNOWN;
}

gboolean
mp_session_tap_following(const MpSessionTap *t, guint channel, MpDir dir)
{
    if (channel >= t->chans->len || !g_ptr_array_index(t->chans, channel))
        return TRUE;
    const TapChan *c = g_ptr_array_index(t->chans, channel);
    return c->kind == MP_CHAN_UNKNOWN || !c->done[dir];
}

gboolean
mp_session_tap_in_postcopy(const MpSessionTap *t)
{
    MpAnalysisProgress pr;
    mp_analysis_progress(mp_metrics_analysis(t->metrics), &pr);
    return pr.postcopy_us >= 0 && !pr.eof;
}

static MpRecordAction
on_record(const MpRecord *rec, gpointer user_data)
{
    Sink *s = user_data;
    MpSessionTap *t = s->tap;

    mp_metrics_record(t->metrics, s->chan->index, s->dir, rec, t->now_us);
    if (t->fn)
        t->fn(s->chan->index, s->dir, rec, t->fn_data);
    return MP_REC_CONTINUE;
}

/* The first bytes to the destination told what `c` carries. */
static void
set_kind(MpSessionTap *t, TapChan *c, MpChanKind kind)
{
    c->kind = kind;
    mp_metrics_channel_kind(t->metrics, c->index, kind, t->now_us);
    c->name[MP_DIR_TO_DST] =
        g_strdup_printf("channel %u %s", c->index, mp_chan_kind_name(kind));
    c->name[MP_DIR_TO_SRC] = g_strdup_printf(
        "channel %u %s", c->index,
        kind == MP_CHAN_MAIN || kind == MP_CHAN_RECOVERY ? "return-path"
                                                         : "reverse");
    Sink *to_dst = &c->sink[MP_DIR_TO_DST];
    switch (kind) {
    case MP_CHAN_MAIN:
    case MP_CHAN_RECOVERY:
        c->qmig = mp_qmig_parser_new(c->name[MP_DIR_TO_DST], on_record, to_dst);
        if (kind == MP_CHAN_RECOVERY && t->main && t->main->qmig)
            mp_qmig_parser_resume_from(c->qmig, t->main->qmig);
        else if (kind == MP_CHAN_RECOVERY)
            mp_qmig_parser_set_headerless(c->qmig);
        if (kind == MP_CHAN_MAIN && t->vmdesc && !t->main)
            mp_qmig_parser_set_vmdesc(c->qmig, t->vmdesc);
        c->rp = mp_rp_parser_new(c->name[MP_DIR_TO_SRC], on_record,
                                 &c->sink[MP_DIR_TO_SRC]);
        t->main = c;
        break;
    case MP_CHAN_MULTIFD:
        c->mfd = mp_mfd_parser_new(c->name[MP_DIR_TO_DST], MP_TARGET_PAGE_SIZE,
                                   on_record, to_dst);
        break;
    case MP_CHAN_PREEMPT:
        c->ram = mp_ram_parser_new(c->name[MP_DIR_TO_DST], MP_TARGET_PAGE_SIZE,
                                   on_record, to_dst);
        if (t->main && t->main->qmig)
            mp_ram_parser_share_blocks(c->ram,
                                       mp_qmig_parser_ram(t->main->qmig));
        break;
    case MP_CHAN_TLS:
        c->done[MP_DIR_TO_DST] = TRUE;
        if (!t->quiet)
            g_message("session %u channel %u: TLS (tls-creds): forwarded byte "
                      "for byte, not parsed",
                      t->session, c->index);
        mp_metrics_partial(t->metrics, c->index, MP_DIR_TO_DST, 0,
                           "TLS: encrypted", t->now_us);
        break;
    default:
        c->done[MP_DIR_TO_DST] = TRUE;
        mp_metrics_partial(t->metrics, c->index, MP_DIR_TO_DST, 0,
                           "not a migration channel", t->now_us);
        break;
    }
    /* nothing should come back, or it came before we knew what to parse */
    if (!c->rp || c->off[MP_DIR_TO_SRC])
        c->done[MP_DIR_TO_SRC] = TRUE;
}

void
mp_session_tap_set_kind(MpSessionTap *t, guint channel, MpChanKind kind,
                        gint64 now_us)
{
    TapChan *c = chan(t, channel);

    if (c->kind != MP_CHAN_UNKNOWN || kind == MP_CHAN_UNKNOWN)
        return;
    t->now_us = now_us;
    set_kind(t, c, kind);
}

/* The parser of `dir` cannot follow: say so once, count from now on. */
static void
give_up(MpSessionTap *t, TapChan *c, MpDir dir, const GError *err)
{
    c->done[dir] = TRUE;
    /* the message names the channel and the offset */
    if (!t->quiet)
        g_message(
            "session %u %s: %s; forwarding the channel byte for byte, its "
            "metrics are partial from here on",
            t->session, mp_dir_name(dir), err->message);
    mp_metrics_partial(t->metrics, c->index, dir, c->off[dir], err->message,
                       t->now_us);
    mp_analysis_error(mp_metrics_analysis(t->metrics), err);
}

static void
parse(MpSessionTap *t, TapChan *c, MpDir dir, const guint8 *buf, gsize len)
{
    g_autoptr(GError) err = NULL;
    MpFeedStatus st = MP_FEED_MORE;
    gsize used = 0;

    if (c->done[dir]) {
        c->off[dir] += len;
        return;
    }
    while (len) {
        used = 0;
        if (dir == MP_DIR_TO_SRC)
            st = mp_rp_parser_feed(c->rp, buf, len, &used, &err);
        else if (c->qmig)
            st = mp_qmig_parser_feed(c->qmig, buf, len, &used, &err);
        else if (c->mfd)
            st = mp_mfd_parser_feed(c->mfd, buf, len, &used, &err);
        else
            st = mp_ram_parser_feed(c->ram, buf, len, &used, &err);
        c->off[dir] += used;
        buf += used;
        len -= used;
        if (st == MP_FEED_ERROR) {
            give_up(t, c, dir, err);
            break;
        }
        if (st == MP_FEED_END) {
            /* the channel's grammar ended (EOF + vmdesc, preempt EOS) */
            c->done[dir] = TRUE;
            if (len)
                mp_analysis_anomaly(mp_metrics_analysis(t->metrics),
                                    "%s: %zu bytes after the end of its "
                                    "stream at offset %" G_GUINT64_FORMAT,
                                    c->name[dir], len, c->off[dir]);
            break;
        }
        if (st == MP_FEED_MORE)
            break; /* all used */
    }
    c->off[dir] += len; /* what is left after an error or the end */
}

void
mp_session_tap_feed(MpSessionTap *t, guint channel, MpDir dir,
                    const guint8 *buf, gsize len, gint64 now_us)
{
    TapChan *c = chan(t, channel);

    t->now_us = now_us;
    mp_metrics_bytes(t->metrics, channel, dir, len, now_us);
    if (!len)
        return;
    if (c->kind == MP_CHAN_UNKNOWN) {
        if (dir == MP_DIR_TO_SRC) {
            /* the destination speaks first: nothing QEMU does */
            c->off[dir] += len;
            return;
        }
        gsize n = MIN(len, sizeof(c->first) - c->first_have);
        memcpy(c->first + c->first_have, buf, n);
        c->first_have += n;
        buf += n;
        len -= n;
        MpChanKind kind = mp_chan_classify(c->first, c->first_have,
                                           t->main != NULL && t->main != c);
        if (kind == MP_CHAN_UNKNOWN)
            return;
        set_kind(t, c, kind);
        parse(t, c, dir, c->first, c->first_have);
    }
    parse(t, c, dir, buf, len);
}

void
mp_session_tap_end(MpSessionTap *t, guint channel, MpDir dir, const char *how,
                   gint64 now_us)
{
    TapChan *c = chan(t, channel);
    g_autoptr(GError) err = NULL;
    gboolean ok = TRUE;

    t->now_us = now_us;
    if (c->ended[dir])
        return;
    c->ended[dir] = TRUE;
    if (dir == MP_DIR_TO_DST && c->kind == MP_CHAN_UNKNOWN && c->first_have) {
        /* closed after fewer than 4 bytes */
        MpChanKind kind = mp_chan_classify(c->first, c->first_have, TRUE);
        set_kind(t, c, kind == MP_CHAN_UNKNOWN ? MP_CHAN_FOREIGN : kind);
        parse(t, c, dir, c->first, c->first_have);
    }
    if (!c->done[dir]) {
        /* (a direction may end before the channel's kind is known) */
        if (dir == MP_DIR_TO_SRC && c->rp)
            ok = mp_rp_parser_finish(c->rp, &err);
        else if (dir == MP_DIR_TO_SRC)
            ok = TRUE;
        else if (c->qmig)
            ok = mp_qmig_parser_finish(c->qmig, &err);
        else if (c->mfd)
            ok = mp_mfd_parser_finish(c->mfd, &err);
        else if (c->ram)
            ok = mp_ram_parser_finish(c->ram, &err);
        c->done[dir] = TRUE;
    }
    /* A stream cut inside a record is normal for a cancelled or failed
     * migration; it is reported with the channel's end, not as an error. */
    mp_metrics_channel_end(t->metrics, channel, dir, how,
                           ok ? NULL : err->message, now_us);
}
