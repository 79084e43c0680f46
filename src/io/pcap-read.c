/* pcap-read.c: a packet capture's migrations (pcap-read.h).
 *
 * pcap-flows.c hands over each TCP connection's bytes in capture order;
 * here they are sorted into migration sessions as the relay sorts its
 * connections, and fed to one MpSession per migration with the packets'
 * timestamps, so rounds, downtime and page-request latency come out as
 * the relay would have measured them at the capture's point.
 *
 * A connection's kind is told by its first bytes towards the server
 * (mp_chan_classify()); its session by the server's address, where
 * QEMU's -incoming listens:
 *   main (QEVM)  starts a session, or completes one that its multifd
 *                channels started (they may speak first)
 *   multifd      joins the server's session (or starts one)
 *   TLS          joins the server's TLS session whose main is open, or
 *                starts one (not parsed)
 *   preempt      joins the server's session (which has a main channel)
 *   recovery     joins the server's session in post-copy, or else the
 *                latest session in post-copy (migrate-recover may listen
 *                elsewhere: that address then leads to it too)
 *   other        skipped, and said so in pcap.skipped
 * A connection whose server speaks first is no migration channel: QEMU's
 * source speaks first on every channel.
 */
#include "config.h"
#include <stdio.h>
#include <string.h>
#include <gio/gio.h>
#include "metrics.h"
#include "metrics-report.h"
#include "pcap-flows.h"
#include "pcap-read.h"
#include "record-format.h"
#include "session.h"

#define MAX_GAPS_LISTED 64

typedef struct {
    guint number;
    char *server;
    MpMetrics *metrics;
    MpSession *pipes;
    guint n_chans;
    gboolean has_main, tls;
    guint main_chan;
    gint64 start_us, last_us;
    GPtrArray *chans; /* ConnState* (borrowed), by channel */
} Sess;

typedef struct {
    Sess *sess;
    guint channel;
    MpChanKind kind;
    guint8 first[4];
    gsize first_have;
    gboolean skipped;
    gboolean partial[MP_DIR__MAX];
    /* gaps its parser has not resumed after yet: the first one, the
     * bytes fed since, and their entries in pcap.gap_list */
    guint unresumed[MP_DIR__MAX];
    guint64 gap_off[MP_DIR__MAX], gap_len[MP_DIR__MAX];
    MpTcpGapWhy gap_why[MP_DIR__MAX];
    guint64 after_gap[MP_DIR__MAX];
    GPtrArray *pending[MP_DIR__MAX]; /* json_object* (a ref each) */
} ConnState;

typedef struct {
    const char *path;
    gboolean events;
    const MpPipelineObserver *ops; /* on the first session's pipelines */
    gpointer ops_data;
    GPtrArray *sessions; /* Sess*, by number - 1 */
    GHashTable *by_server; /* server -> Sess* (borrowed) */
    GPtrArray *conns;      /* ConnState*, by connection index */
    json_object *gaps;     /* [{session, channel, dir, offset, bytes, ...}] */
    json_object *skipped;  /* connections skipped after their SYN */
    GString *line;
    Sess *printing; /* --events: the session being fed */
} Reader;

static void
sess_free(gpointer p)
{
    Sess *s = p;
    mp_session_free(s->pipes);
    mp_metrics_free(s->metrics);
    g_ptr_array_free(s->chans, TRUE);
    g_free(s->server);
    g_free(s);
}

static void
put_json(gpointer o)
{
    json_object_put(o);
}

static void
conn_state_free(gpointer p)
{
    ConnState *st = p;
    for (int d = 0; d < MP_DIR__MAX; d++)
        if (st->pending[d])
            g_ptr_array_free(st->pending[d], TRUE);
    g_free(st);
}

/* A parser resumed after a gap (or gaps) of its channel direction: their
 * entries say where, and the analysis keeps a line of it. */
static MpRecordAction
on_resync(MpPipeline *p, const MpRecord *rec, gpointer data)
{
    Sess *s = data;
    guint channel = mp_pipeline_channel(p);
    MpDir dir = mp_pipeline_dir(p);

    if (rec->kind != MP_REC_RESYNC || channel >= s->chans->len)
        return MP_REC_CONTINUE;
    ConnState *st = g_ptr_array_index(s->chans, channel);
    gint64 ms = mp_metrics_rel(s->metrics, mp_pipeline_now(p));
    for (guint i = 0; st->pending[dir] && i < st->pending[dir]->len; i++) {
        json_object *o = g_ptr_array_index(st->pending[dir], i);
        json_object_object_add(o, "resumed_offset",
                               json_object_new_uint64(rec->offset));
        json_object_object_add(o, "skipped_bytes",
                               json_object_new_uint64(rec->u.resync.skipped));
        json_object_object_add(o, "resumed_at",
                               json_object_new_string(rec->u.resync.what));
        json_object_object_add(o, "resumed_ms", mp_metrics_json_ms(ms));
    }
    if (st->pending[dir])
        g_ptr_array_set_size(st->pending[dir], 0);
    st->unresumed[dir] = 0;
    mp_analysis_anomaly(
        mp_metrics_analysis(s->metrics),
        "session %u channel %u (%s) %s: %" G_GUINT64_FORMAT
        " bytes missing from the capture at stream offset %" G_GUINT64_FORMAT
        "; parsing resumed at offset %" G_GUINT64_FORMAT
        " (%s), %" G_GUINT64_FORMAT " bytes after the gap skipped: counts "
        "after a gap may be incomplete",
        s->number, channel, mp_chan_kind_name(st->kind), mp_dir_name(dir),
        rec->u.resync.gap_bytes, rec->u.resync.gap_offset, rec->offset,
        rec->u.resync.what, rec->u.resync.skipped);
    return MP_REC_CONTINUE;
}

static const MpPipelineObserver resync_observer = {.record = on_resync};

static MpRecordAction
print_record(MpPipeline *p, const MpRecord *rec, gpointer user_data)
{
    Reader *r = user_data;
    g_string_printf(r->line, "s%u c%u %s ", r->printing->number,
                    mp_pipeline_channel(p), mp_dir_name(mp_pipeline_dir(p)));
    mp_record_describe(rec, r->line);
    puts(r->line->str);
    return MP_REC_CONTINUE;
}

static const MpPipelineObserver events_observer = {.record = print_record};

static Sess *
new_session(Reader *r, const MpPcapConn *c)
{
    Sess *s = g_new0(Sess, 1);
    s->chans = g_ptr_array_new();
    s->number = r->sessions->len + 1;
    s->server = g_strdup(c->server);
    /* pcap times are wall-clock: the session's start is its own origin */
    s->metrics = mp_metrics_new(s->number, c->open_us, c->open_us);
    s->pipes = mp_session_new(s->metrics, s->number);
    mp_session_set_logging(s->pipes, FALSE);
    mp_session_observe(s->pipes, &resync_observer, s);
    if (r->events)
        mp_session_observe(s->pipes, &events_observer, r);
    if (r->ops && s->number == 1)
        mp_session_observe(s->pipes, r->ops, r->ops_data);
    s->start_us = s->last_us = c->open_us;
    g_ptr_array_add(r->sessions, s);
    g_hash_table_replace(r->by_server, g_strdup(c->server), s);
    return s;
}

static void
skip_conn(Reader *r, ConnState *st, const MpPcapConn *c, const char *why)
{
    st->skipped = TRUE;
    if (json_object_array_length(r->skipped) >= 64)
        return;
    json_object *o = json_object_new_object();
    json_object_object_add(o, "client", json_object_new_string(c->client));
    json_object_object_add(o, "server", json_object_new_string(c->server));
    json_object_object_add(o, "why", json_object_new_string(why));
    json_object_array_add(r->skipped, o);
}

/* The latest session in post-copy, for a recovery channel. */
static Sess *
postcopy_session(Reader *r, const char *server)
{
    Sess *s = g_hash_table_lookup(r->by_server, server);
    if (s && mp_session_in_postcopy(s->pipes))
        return s;
    for (guint i = r->sessions->len; i-- > 0;) {
        s = g_ptr_array_index(r->sessions, i);
        if (mp_session_in_postcopy(s->pipes))
            return s;
    }
    return NULL;
}

/* The connection's kind is known: its session.  @return FALSE if it is
 * skipped. */
static gboolean
assign(Reader *r, ConnState *st, const MpPcapConn *c, MpChanKind kind,
       gint64 now_us)
{
    Sess *s = g_hash_table_lookup(r->by_server, c->server);

    switch (kind) {
    case MP_CHAN_MAIN:
        if (!s || s->has_main || s->tls)
            s = new_session(r, c);
        s->has_main = TRUE;
        s->main_chan = s->n_chans;
        break;
    case MP_CHAN_MULTIFD:
        if (!s || s->tls)
            s = new_session(r, c);
        break;
    case MP_CHAN_TLS:
        if (!s || !s->tls
            || mp_pipeline_ended(
                mp_session_pipeline(s->pipes, s->main_chan, MP_DIR_TO_DST))) {
            s = new_session(r, c);
            s->tls = TRUE;
            s->main_chan = 0;
        }
        break;
    case MP_CHAN_PREEMPT:
        break; /* (only classified so with a main channel at the server) */
    case MP_CHAN_RECOVERY:
        s = postcopy_session(r, c->server);
        if (!s) {
            skip_conn(r, st, c,
                      "a post-copy recovery stream (it starts with a "
                      "command), with no session in post-copy to resume in "
                      "the capture");
            return FALSE;
        }
        g_hash_table_replace(r->by_server, g_strdup(c->server), s);
        break;
    default: {
        g_autofree char *why = g_strdup_printf(
            "not a migration channel (it starts %02x %02x %02x %02x)",
            st->first[0], st->first[1], st->first[2], st->first[3]);
        skip_conn(r, st, c, why);
        return FALSE;
    }
    }
    st->sess = s;
    st->kind = kind;
    st->channel = s->n_chans++;
    g_ptr_array_add(s->chans, st);
    /* (a channel whose SYN came before the one that started the session:
     * opened at its start) */
    mp_session_add(s->pipes, st->channel, c->client,
                   MAX(c->open_us, s->start_us));
    mp_session_set_kind(s->pipes, st->channel, kind, now_us);
    return TRUE;
}

static ConnState *
state(Reader *r, const MpPcapConn *c)
{
    return g_ptr_array_index(r->conns, c->index);
}

static void
on_open(gpointer data, const MpPcapConn *c)
{
    Reader *r = data;
    while (r->conns->len <= c->index)
        g_ptr_array_add(r->conns, g_new0(ConnState, 1));
}

static void
feed(Reader *r, ConnState *st, MpDir dir, const guint8 *buf, gsize len,
     gint64 now_us)
{
    r->printing = st->sess;
    st->sess->last_us = MAX(st->sess->last_us, now_us);
    if (st->unresumed[dir])
        st->after_gap[dir] += len;
    mp_session_feed(st->sess->pipes, st->channel, dir, buf, len, now_us);
}

static void
on_data(gpointer data, const MpPcapConn *c, MpDir dir, guint64 off,
        const guint8 *buf, gsize len, gint64 now_us)
{
    Reader *r = data;
    ConnState *st = state(r, c);

    if (st->skipped)
        return;
    if (st->sess) {
        feed(r, st, dir, buf, len, now_us);
        return;
    }
    if (dir == MP_DIR_TO_SRC) {
        skip_conn(r, st, c,
                  "the server spoke first (a migration's source always "
                  "does): not a migration channel");
        return;
    }
    gsize n = MIN(len, sizeof(st->first) - st->first_have);
    memcpy(st->first + st->first_have, buf, n);
    st->first_have += n;
    Sess *at = g_hash_table_lookup(r->by_server, c->server);
    MpChanKind kind = mp_chan_classify(st->first, st->first_have,
                                       at && at->has_main);
    if (kind == MP_CHAN_UNKNOWN)
        return;
    if (!assign(r, st, c, kind, now_us))
        return;
    feed(r, st, dir, st->first, st->first_have, now_us);
    if (len > n)
        feed(r, st, dir, buf + n, len - n, now_us);
}

static void
on_gap(gpointer data, const MpPcapConn *c, MpDir dir, guint64 off,
       guint64 len, MpTcpGapWhy why, gint64 now_us)
{
    Reader *r = data;
    ConnState *st = state(r, c);

    if (st->skipped)
        return;
    if (!st->sess) {
        g_autofree char *msg = g_strdup_printf(
            "its first bytes are missing (%" G_GUINT64_FORMAT
            " bytes at offset %" G_GUINT64_FORMAT ": %s): what it carries "
            "cannot be told",
            len, off, mp_tcp_gap_why(why));
        skip_conn(r, st, c, msg);
        return;
    }
    Sess *s = st->sess;
    json_object *o = NULL;
    if (json_object_array_length(r->gaps) < MAX_GAPS_LISTED) {
        o = json_object_new_object();
        json_object_object_add(o, "session", json_object_new_int(s->number));
        json_object_object_add(o, "channel", json_object_new_int(st->channel));
        json_object_object_add(o, "dir", json_object_new_string(mp_dir_name(dir)));
        json_object_object_add(o, "offset", json_object_new_uint64(off));
        json_object_object_add(o, "bytes", json_object_new_uint64(len));
        json_object_object_add(
            o, "time_ms",
            mp_metrics_json_ms(mp_metrics_rel(s->metrics, now_us)));
        json_object_object_add(o, "why",
                               json_object_new_string(mp_tcp_gap_why(why)));
        /* (set where its parser resumes, if it does) */
        json_object_object_add(o, "resumed_offset", NULL);
        json_object_array_add(r->gaps, o);
    }
    mp_analysis_mark_gap(mp_metrics_analysis(s->metrics));
    if (st->partial[dir])
        return;
    /* the parser looks for the next record it trusts: until it finds
     * one, this gap waits for its resume (a parser in pass-through
     * resumes at once) */
    if (!st->unresumed[dir]) {
        st->gap_off[dir] = off;
        st->gap_len[dir] = 0;
        st->gap_why[dir] = why;
        st->after_gap[dir] = 0;
    }
    st->unresumed[dir]++;
    st->gap_len[dir] += len;
    if (o) {
        if (!st->pending[dir])
            st->pending[dir] =
                g_ptr_array_new_with_free_func(put_json);
        g_ptr_array_add(st->pending[dir], json_object_get(o));
    }
    r->printing = s;
    if (mp_pipeline_gap(mp_session_pipeline(s->pipes, st->channel, dir), len,
                        now_us))
        return;
    st->unresumed[dir] = 0;
    if (st->pending[dir])
        g_ptr_array_set_size(st->pending[dir], 0);
    /* the channel is partial from here on, never guessed across (its
     * later bytes are only counted) */
    st->partial[dir] = TRUE;
    g_autofree char *msg = g_strdup_printf(
        "session %u channel %u (%s, %s -> %s) %s: %" G_GUINT64_FORMAT
        " bytes missing from the capture at stream offset %" G_GUINT64_FORMAT
        " (%s); the channel is partial from there on (%s)",
        s->number, st->channel, mp_chan_kind_name(st->kind), c->client,
        c->server, mp_dir_name(dir), len, off, mp_tcp_gap_why(why),
        st->kind == MP_CHAN_MAIN || st->kind == MP_CHAN_RECOVERY
                || (st->kind == MP_CHAN_MULTIFD && dir == MP_DIR_TO_DST)
            ? "its parser had stopped before"
            : "only the main channel, its return path and the multifd "
              "channels are resynchronised");
    GError *err = g_error_new_literal(G_IO_ERROR, G_IO_ERROR_PARTIAL_INPUT,
                                      msg);
    mp_metrics_partial(s->metrics, st->channel, dir, off, msg, now_us);
    mp_analysis_error(mp_metrics_analysis(s->metrics), err);
    g_error_free(err);
}

/* `dir` ended before its parser found a record to resume at after its
 * last gap: partial from that gap on. */
static void
never_resumed(ConnState *st, const MpPcapConn *c, MpDir dir, gint64 now_us)
{
    Sess *s = st->sess;

    st->partial[dir] = TRUE;
    g_autofree char *msg = g_strdup_printf(
        "session %u channel %u (%s, %s -> %s) %s: %" G_GUINT64_FORMAT
        " bytes missing from the capture at stream offset %" G_GUINT64_FORMAT
        " (%s); no record to resume at was found in the %" G_GUINT64_FORMAT
        " bytes after it: the channel is partial from there on",
        s->number, st->channel, mp_chan_kind_name(st->kind), c->client,
        c->server, mp_dir_name(dir), st->gap_len[dir], st->gap_off[dir],
        mp_tcp_gap_why(st->gap_why[dir]), st->after_gap[dir]);
    GError *err = g_error_new_literal(G_IO_ERROR, G_IO_ERROR_PARTIAL_INPUT,
                                      msg);
    mp_metrics_partial(s->metrics, st->channel, dir, st->gap_off[dir], msg,
                       now_us);
    mp_analysis_error(mp_metrics_analysis(s->metrics), err);
    g_error_free(err);
}

static void
on_end(gpointer data, const MpPcapConn *c, MpDir dir, MpEndReason how,
       gint64 now_us)
{
    Reader *r = data;
    ConnState *st = state(r, c);

    if (st->skipped)
        return;
    if (!st->sess) {
        if (dir != MP_DIR_TO_DST)
            return; /* told by its to-dst end */
        if (!st->first_have) {
            skip_conn(r, st, c, "no data towards the server");
            return;
        }
        g_autofree char *why = g_strdup_printf(
            "closed after %zu bytes (too few to tell a migration channel)",
            st->first_have);
        skip_conn(r, st, c, why);
        return;
    }
    st->sess->last_us = MAX(st->sess->last_us, now_us);
    r->printing = st->sess;
    if (st->unresumed[dir])
        never_resumed(st, c, dir, now_us);
    mp_session_end(st->sess->pipes, st->channel, dir, how, now_us);
}

static const MpPcapOps reader_ops = {
    .open = on_open,
    .data = on_data,
    .gap = on_gap,
    .end = on_end,
};

static void
add_error(json_object *doc, const char *msg)
{
    json_object *errs;
    if (!json_object_object_get_ex(doc, "errors", &errs)) {
        errs = json_object_new_array();
        json_object_object_add(doc, "errors", errs);
    }
    json_object_array_add(errs, json_object_new_string(msg));
}

static gboolean
has_errors(json_object *doc)
{
    json_object *errs;
    return json_object_object_get_ex(doc, "errors", &errs)
           && json_object_array_length(errs) > 0;
}

/* One line per session for pcap.sessions. */
static json_object *
session_line(const Sess *s)
{
    json_object *o = json_object_new_object();
    const char *outcome = mp_metrics_outcome_text(s->metrics);
    json_object_object_add(o, "session", json_object_new_int(s->number));
    json_object_object_add(o, "server", json_object_new_string(s->server));
    json_object_object_add(o, "channels", json_object_new_int(s->n_chans));
    json_object_object_add(o, "outcome",
                           json_object_new_string(outcome ? outcome : "?"));
    json_object_object_add(
        o, "bytes", json_object_new_uint64(mp_metrics_total_bytes(s->metrics)));
    return o;
}

json_object *
mp_pcap_analyze(const char *path, gboolean events, gsize window, gboolean *ok)
{
    return mp_pcap_analyze_observed(path, events, window, NULL, NULL, ok);
}

json_object *
mp_pcap_analyze_observed(const char *path, gboolean events, gsize window,
                         const MpPipelineObserver *ops, gpointer data,
                         gboolean *ok)
{
    g_autoptr(GError) err = NULL;
    Reader r = {.path = path, .events = events, .ops = ops, .ops_data = data};
    json_object *doc, *pj;

    r.sessions = g_ptr_array_new_with_free_func(sess_free);
    r.by_server = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    r.conns = g_ptr_array_new_with_free_func(conn_state_free);
    r.gaps = json_object_new_array();
    r.skipped = json_object_new_array();
    r.line = g_string_new(NULL);

    g_autoptr(MpPcapFlows) f =
        mp_pcap_flows_open(path, window, &reader_ops, &r, &err);
    gboolean read_ok = f && mp_pcap_flows_run(f, &err);

    for (guint i = 0; i < r.sessions->len; i++) {
        Sess *s = g_ptr_array_index(r.sessions, i);
        mp_metrics_finish(s->metrics, s->last_us, NULL);
    }
    if (r.sessions->len) {
        doc = mp_metrics_report(((Sess *)g_ptr_array_index(r.sessions, 0))
                                    ->metrics);
    } else {
        g_autoptr(MpMetrics) none = mp_metrics_new(0, 0, 0);
        mp_metrics_finish(none, 0, "no migration in the capture");
        doc = mp_metrics_report(none);
    }
    json_object_object_add(doc, "file", json_object_new_string(path));
    if (!f) {
        add_error(doc, err->message);
        *ok = FALSE;
        goto out;
    }
    pj = mp_pcap_flows_stats(f);
    /* skipped after their SYN (here) and without one (the reader) */
    json_object *fs;
    if (json_object_object_get_ex(pj, "skipped", &fs))
        for (size_t i = 0; i < json_object_array_length(fs); i++)
            json_object_array_add(
                r.skipped, json_object_get(json_object_array_get_idx(fs, i)));
    json_object_object_add(pj, "skipped", json_object_get(r.skipped));
    json_object_object_add(pj, "gap_list", json_object_get(r.gaps));
    json_object *lines = json_object_new_array();
    for (guint i = 0; i < r.sessions->len; i++)
        json_object_array_add(lines,
                              session_line(g_ptr_array_index(r.sessions, i)));
    json_object_object_add(pj, "sessions", lines);
    json_object_object_add(doc, "pcap", pj);

    if (r.sessions->len > 1) {
        json_object *more = json_object_new_array();
        for (guint i = 1; i < r.sessions->len; i++) {
            Sess *s = g_ptr_array_index(r.sessions, i);
            json_object *rep = mp_metrics_report(s->metrics);
            json_object_array_add(more, rep);
        }
        json_object_object_add(doc, "more_sessions", more);
    }
    if (!read_ok)
        add_error(doc, err->message);
    if (mp_pcap_flows_truncated(f)) {
        g_autofree char *msg = g_strdup_printf(
            "the capture's snaplen (%d bytes) is smaller than its "
            "packets: %" G_GUINT64_FORMAT " packets were cut (capture with "
            "tcpdump -s 0)",
            mp_pcap_flows_snaplen(f), mp_pcap_flows_truncated(f));
        add_error(doc, msg);
    }
    if (!r.sessions->len) {
        add_error(doc, "no migration connection in the capture (a TCP "
                       "connection whose first bytes towards the server are "
                       "a migration stream, a multifd channel or TLS; see "
                       "pcap.skipped)");
    }
    *ok = !has_errors(doc);
    json_object *more;
    if (json_object_object_get_ex(doc, "more_sessions", &more))
        for (size_t i = 0; i < json_object_array_length(more); i++)
            if (has_errors(json_object_array_get_idx(more, i)))
                *ok = FALSE;
out:
    json_object_put(r.gaps);
    json_object_put(r.skipped);
    g_string_free(r.line, TRUE);
    g_ptr_array_free(r.conns, TRUE);
    g_hash_table_destroy(r.by_server);
    g_clear_pointer(&f, mp_pcap_flows_free);
    g_ptr_array_free(r.sessions, TRUE);
    return doc;
}
