/* relay.c: listener, sessions and channel classification of the relay
 * (see relay.h).
 *
 *   accept --(--allow, caps)--> pending: peeked, never read, until its
 *      first bytes pass relay-admit.c's checks:
 *        stream header + a first record,   starts a session (one at a
 *        TLS ClientHello                   time: refused while one runs)
 *        multifd initial packet            joins the running session if
 *        RAM records, or silence (7.2's    it agrees with it (same peer,
 *          preempt channel)                UUID, new id, post-copy ...)
 *        RECV_BITMAP / POSTCOPY_RESUME     resumes the paused session
 *        anything else, early close,       logged, closed: never reaches
 *          silence past the timeout          the destination
 *
 * Connections of a session are connected upstream one at a time in the
 * order they joined (main first); each relays its bytes through its
 * MpRelayChannel, and every chunk read goes to the pipeline of its
 * direction (session.h, pipeline.h): parser, metrics and capture
 * observe it; towards the destination the stages (zero pages, the
 * post-copy lane) write what goes out into the channel's queue.
 */
#include "config.h"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <gio/gio.h>
#include <gio/gunixsocketaddress.h>
#include "address.h"
#include "capture.h"
#include "out-file.h"
#include "filter-zero.h"
#include "pcopy-lane.h"
#include "rate-pacer.h"
#include "relay-admit.h"
#include "relay-channel.h"
#include "metrics.h"
#include "metrics-lines.h"
#include "metrics-log.h"
#include "metrics-progress.h"
#include "metrics-report.h"
#include "relay.h"
#include "session.h"

#define DEFAULT_TIMEOUT_MS 10000
#define REPEEK_MS          20 /* a header that came in pieces */
#define TICK_MS            (MP_METRICS_INTERVAL_US / 1000)
/* Connections held while their first bytes are checked: a migration with
 * 255 multifd channels fits, with room for strangers. */
#define MAX_PENDING 512
/* accept() out of file descriptors: stop accepting for this long. */
#define ACCEPT_BACKOFF_MS 1000
/* The longest record a pipeline may hold back: a 1 MiB disk chunk of
 * block migration and its header. */
#define EDIT_HOLD_LIMIT (2u << 20)

typedef struct Session Session;

typedef struct {
    MpRelay *relay;
    MpRelayChannel *ch;
    guint64 id; /* accept order, over the relay's life */
    gint64 accept_us;
    Session *session; /* NULL while pending */
    guint index;      /* in the session */
    MpChanKind kind;  /* as last told to the capture */
    guint deadline;   /* pending: the handshake timeout */
    guint repeek;     /* pending: a header that came in pieces */
    MpPipeline *out;        /* to the destination, when stages run */
    GInetAddress *host;     /* the peer's address (IPv4-mapped: IPv4) */
    gsize tls_hello;        /* TLS main: bytes of its ClientHello record */
    gboolean waits_for_main;
    gboolean waits_for_turn; /* passed, behind an earlier connection */
    gboolean closed;
} Conn;

struct Session {
    MpRelay *relay;
    guint number;
    GPtrArray *conns; /* Conn*, by index */
    guint connect_next;
    gboolean connecting;
    guint open;
    gboolean joinable; /* its main channel is open: new connections join */
    gboolean ended;
    gboolean paused; /* every connection closed in post-copy */
    Conn *main;
    MpMetrics *metrics;
    MpSession *pipes;   /* the pipelines of every connection */
    GPtrArray *stages;  /* MpStage*, the chain of every channel */
    MpStage *zero;      /* in `stages`, or NULL */
    MpPcopyLane *lane;  /* on the main channel, or NULL */
    GPtrArray *lanes;   /* MpPcopyLane*: this one and a recovered main's */
    MpRatePacer *pacer; /* --rate, shared by the channels, or NULL */
    MpAdmitSession *admit; /* who may join */
    guint64 after_main;    /* the first connection from the main's peer
                              after it (0: none yet): 7.2's preempt */
    MpRateEstimator *est; /* no --rate: the path's rate, or NULL */
    guint64 measured;     /* its estimate when pacing began */
    gint64 sample_us, paced_us;
    gint64 start_us;
    char *failure;
};

struct MpRelay {
    MpRelayOptions opt;
    char *listen_str, *to_str, *metrics_path, *report_path, *capture_dir;
    char *listen_addr;
    GSocket *listener;
    char *unix_path; /* --listen unix:PATH: removed when the relay ends */
    GSource *accept_source;
    GSocketAddress *to;
    GMainLoop *loop;
    guint64 next_id;
    GPtrArray *pending;  /* Conn*, accept order */
    GPtrArray *sessions; /* Session*, not yet freed */
    Session *current;    /* the joinable session */
    guint session_count;
    MpMetricsOut *metrics_out; /* --metrics: a file, stdout, a socket */
    MpCapture *capture;
    guint reports_pending; /* sessions ended, their capture not yet written */
    gboolean report_failed;
    guint tick_id, reap_id;
    GPtrArray *dead; /* rejected Conn* to free from an idle */
    GPtrArray *allow; /* GInetAddressMask*: --allow (empty: anyone) */
    guint admit_id;   /* an idle looking at pending connections again */
    guint backoff_id; /* accept() paused (out of fds) */
    guint refused;    /* at accept, since the last log line */
    gint64 refused_log_us;
    gboolean stopping, once_done;
    MpMetricsOutcome last_outcome;
};

static const MpRelayChannelHooks conn_hooks;
static const MpPipelineSink to_dst_sink;
static const MpPipelineObserver capture_observer, main_observer,
    return_path_observer;

/* ---- conns ---- */

static void
stop_timers(Conn *c)
{
    if (c->deadline)
        g_source_remove(c->deadline);
    if (c->repeek)
        g_source_remove(c->repeek);
    c->deadline = c->repeek = 0;
}

static void
conn_free(Conn *c)
{
    stop_timers(c);
    mp_relay_channel_free(c->ch);
    g_clear_object(&c->host);
    g_free(c);
}

/* Frees the session's connections too. */
static void
session_free(Session *s)
{
    for (guint i = 0; i < s->conns->len; i++)
        conn_free(g_ptr_array_index(s->conns, i));
    g_ptr_array_free(s->conns, TRUE);
    /* (the pipelines borrow the stages and the lanes) */
    mp_session_free(s->pipes);
    g_ptr_array_free(s->stages, TRUE);
    g_ptr_array_free(s->lanes, TRUE);
    mp_rate_pacer_free(s->pacer);
    mp_rate_estimator_free(s->est);
    mp_metrics_free(s->metrics);
    mp_admit_session_free(s->admit);
    g_free(s->failure);
    g_free(s);
}

/* Nothing left to serve: --once is satisfied, or stopped and every
 * session over, and every report written. */
static gboolean
finished(const MpRelay *r)
{
    return (r->once_done || (r->stopping && r->sessions->len == 0))
           && !r->reports_pending;
}

static gboolean
reap(gpointer user_data)
{
    MpRelay *r = user_data;

    r->reap_id = 0;
    for (guint i = 0; i < r->dead->len; i++)
        conn_free(g_ptr_array_index(r->dead, i));
    g_ptr_array_set_size(r->dead, 0);
    for (guint i = 0; i < r->sessions->len;) {
        Session *s = g_ptr_array_index(r->sessions, i);
        if (s->ended) {
            g_ptr_array_remove_index(r->sessions, i);
            session_free(s);
        } else {
            i++;
        }
    }
    if (finished(r))
        g_main_loop_quit(r->loop);
    return G_SOURCE_REMOVE;
}

/* Channels are never freed inside their own hooks: later, from an idle. */
static void
schedule_reap(MpRelay *r)
{
    if (!r->reap_id)
        r->reap_id = g_idle_add(reap, r);
}

static void schedule_admit(MpRelay *r);

static void
bury(Conn *c)
{
    stop_timers(c);
    g_ptr_array_remove(c->relay->pending, c);
    g_ptr_array_add(c->relay->dead, c);
    schedule_reap(c->relay);
    schedule_admit(c->relay); /* one waiting for its turn may go */
}

/* A pending connection that will not be relayed. */
static void reject(Conn *c, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static void
reject(Conn *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *why = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_message("connection %" G_GUINT64_FORMAT " from %s: %s; closed", c->id,
              mp_relay_channel_peer(c->ch), why);
    /* closes the sockets now; on_closed() buries it, freed from an idle */
    mp_relay_channel_abort(c->ch);
}

/* ---- sessions ---- */

/* The stages' counters: `filters {chain[], NAME {records_changed,
 * bytes_in, bytes_out, cpu_us, ...}, bytes_in, bytes_out}` (bytes towards
 * the destination of the edited channels). */
static json_object *
filters_report(Session *s)
{
    json_object *o = json_object_new_object(), *chain = json_object_new_array();
    guint64 in = 0, out = 0;

    for (guint i = 0; i < s->stages->len; i++) {
        MpStage *st = g_ptr_array_index(s->stages, i);
        json_object_array_add(chain, json_object_new_string(st->name));
        json_object_object_add(o, st->name, mp_stage_report(st));
    }
    json_object_object_add(o, "chain", chain);
    for (guint i = 0; i < s->conns->len; i++) {
        Conn *c = g_ptr_array_index(s->conns, i);
        if (c->out) {
            in += mp_pipeline_bytes_in(c->out);
            out += mp_pipeline_bytes_out(c->out);
        }
    }
    json_object_object_add(o, "bytes_in", json_object_new_int64(in));
    json_object_object_add(o, "bytes_out", json_object_new_int64(out));
    return o;
}

/* `priority {enabled, rate_bps, rate_source, measured_bps, + the lane's
 * queue and counters}` */
static json_object *
priority_report(Session *s)
{
    MpRelay *r = s->relay;
    json_object *o = s->lane ? mp_pcopy_lane_report(s->lane)
                             : json_object_new_object();
    guint64 measured = s->measured ? s->measured
                       : s->est    ? mp_rate_estimator_rate(s->est)
                                   : 0;

    json_object_object_add(o, "enabled", json_object_new_boolean(s->lane != NULL));
    json_object_object_add(
        o, "rate_bps",
        json_object_new_int64(s->pacer ? mp_rate_pacer_rate(s->pacer) * 8 : 0));
    json_object_object_add(o, "rate_source",
                           json_object_new_string(r->opt.rate ? "given"
                                                  : s->pacer  ? "measured"
                                                              : "none"));
    json_object_object_add(o, "measured_bps",
                           measured ? json_object_new_int64(measured * 8)
                                    : NULL);
    return o;
}

static json_object *
session_report(Session *s)
{
    json_object *rep = mp_metrics_report(s->metrics);
    json_object_object_add(rep, "filters", filters_report(s));
    json_object_object_add(rep, "priority", priority_report(s));
    if (s->relay->opt.report_extra)
        json_object_object_add(
            rep, s->relay->opt.report_key,
            s->relay->opt.report_extra(s->number, s->relay->opt.report_data));
    return rep;
}

/* Session 1's report goes to --report itself (what --once users read),
 * session N's to the same name with "-N" before the extension:
 * report.json, report-2.json, ... */
static char *
report_path(const char *path, guint session)
{
    if (session <= 1)
        return g_strdup(path);
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *dot = strrchr(base, '.');
    if (!dot || dot == base)
        return g_strdup_printf("%s-%u", path, session);
    return g_strdup_printf("%.*s-%u%s", (int)(dot - path), path, session, dot);
}

/* `outputs {capture, metrics}`: whether the files the relay writes are
 * whole, and if not where they stop and why. */
static json_object *
outputs_report(MpRelay *r)
{
    json_object *o = json_object_new_object();
    if (r->capture)
        json_object_object_add(o, "capture", mp_capture_status(r->capture));
    if (r->metrics_out)
        json_object_object_add(o, "metrics",
                               mp_metrics_out_status(r->metrics_out));
    return o;
}

/* Writes (and takes) session `number`'s report.  A report that cannot be
 * written is an error (and --once's exit status says so), not a warning:
 * it is what the relay is run for. */
static void
write_report(MpRelay *r, guint number, json_object *rep)
{
    g_autoptr(GError) err = NULL;

    if (r->report_path) {
        g_autofree char *path = report_path(r->report_path, number);
        json_object_object_add(rep, "outputs", outputs_report(r));
        const char *text = json_object_to_json_string_ext(
            rep, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE);
        if (!mp_out_path_replace(path, text, strlen(text), &err)) {
            g_critical("session %u: the report is lost: %s", number,
                       err->message);
            r->report_failed = TRUE;
        }
    }
    json_object_put(rep);
}

/* Did a migration reach the destination, for --once?  A session's main
 * channel passed the checks; an encrypted one only proves itself by
 * going on past its ClientHello (a stranger's `16 03 ...` must not end
 * --once). */
static gboolean
session_was_migration(Session *s)
{
    Conn *m = s->main;
    return !m->tls_hello
           || mp_relay_channel_bytes(m->ch, MP_DIR_TO_DST) > m->tls_hello;
}

typedef struct {
    MpRelay *relay;
    json_object *report;
} PendingReport;

static void
pending_report_free(gpointer p)
{
    PendingReport *pr = p;
    json_object_put(pr->report);
    pr->relay->reports_pending--;
    schedule_reap(pr->relay);
    g_free(pr);
}

/* The capture of the session is written: its report can say so. */
static void
capture_done(MpCapture *cap, guint session, gpointer data)
{
    PendingReport *pr = data;
    write_report(pr->relay, session, g_steal_pointer(&pr->report));
}

static void
end_session(Session *s, const char *failure)
{
    MpRelay *r = s->relay;

    if (s->ended)
        return;
    s->ended = TRUE;
    s->joinable = FALSE;
    if (r->current == s)
        r->current = NULL;
    mp_metrics_finish(s->metrics, g_get_monotonic_time(),
                      failure ? failure : s->failure);
    g_autofree char *summary = mp_metrics_summary(s->metrics);
    if (!r->opt.quiet)
        g_message("%s", summary);
    if (s->zero && mp_filter_zero_rewritten(s->zero) && !r->opt.quiet)
        g_message("session %u: %" G_GUINT64_FORMAT
                  " all-zero pages sent as ZERO records, %.1f MiB less to "
                  "the destination",
                  s->number, mp_filter_zero_rewritten(s->zero),
                  mp_filter_zero_bytes_saved(s->zero) / 1048576.0);
    json_object *rep = session_report(s);
    if (r->capture) {
        /* written once the capture thread has the session's last bytes
         * on disk (or failed): the report tells which */
        PendingReport *pr = g_new0(PendingReport, 1);
        pr->relay = r;
        pr->report = rep;
        r->reports_pending++;
        mp_capture_session_end(r->capture, s->number, g_get_monotonic_time(),
                               capture_done, pr, pending_report_free);
    } else {
        write_report(r, s->number, rep);
    }
    if (r->opt.once && session_was_migration(s)) {
        r->last_outcome = mp_metrics_outcome(s->metrics);
        r->once_done = TRUE;
    } else if (r->opt.once && !r->opt.quiet) {
        g_message("session %u: a TLS client that went no further than its "
                  "ClientHello; --once waits for a migration",
                  s->number);
    }
    schedule_reap(r);
}

static void connect_next(Session *s);

/* `c` passed the checks: it is channel `kind` of `s`. */
static void
join(Session *s, Conn *c, MpChanKind kind)
{
    MpRelay *r = s->relay;
    gint64 now = g_get_monotonic_time();

    stop_timers(c);
    g_ptr_array_remove(r->pending, c);
    schedule_admit(r); /* one waiting for its turn may go */
    c->session = s;
    c->index = s->conns->len;
    c->waits_for_main = FALSE;
    g_ptr_array_add(s->conns, c);
    mp_session_add(s->pipes, c->index, mp_relay_channel_peer(c->ch), now);
    /* the checks told its kind: the session does not guess again */
    mp_session_set_kind(s->pipes, c->index, kind, now);
    MpPipeline *to_dst = mp_session_pipeline(s->pipes, c->index, MP_DIR_TO_DST);
    MpPipeline *to_src = mp_session_pipeline(s->pipes, c->index, MP_DIR_TO_SRC);
    if (r->capture)
        for (int d = 0; d < MP_DIR__MAX; d++)
            mp_pipeline_observe(d == MP_DIR_TO_DST ? to_dst : to_src,
                                &capture_observer, c);
    if (c == s->main) {
        mp_pipeline_observe(to_dst, &main_observer, c);
        mp_pipeline_observe(to_src, &return_path_observer, c);
    }
    if (s->stages->len || !r->opt.no_priority) {
        /* in place: the channel writes what it read where it read it */
        MpPipelineSink sink = to_dst_sink;
        sink.data = c;
        c->out = to_dst;
        mp_pipeline_set_sink(to_dst, &sink, TRUE, EDIT_HOLD_LIMIT);
        mp_relay_channel_set_filtered(c->ch, MP_DIR_TO_DST);
        for (guint i = 0; i < s->stages->len; i++)
            mp_pipeline_add_stage(to_dst, g_ptr_array_index(s->stages, i));
    }
    if (c == s->main && c->out && !r->opt.no_priority) {
        /* (a recovery channel's new main: the old lane stays with the old
         * main's pipeline) */
        MpOutScheduler out = mp_relay_channel_scheduler(c->ch);
        s->lane = mp_pcopy_lane_new(&out, r->opt.queue);
        if (r->opt.page_first)
            mp_pcopy_lane_on_first(s->lane, r->opt.page_first,
                                   r->opt.report_data);
        g_ptr_array_add(s->lanes, s->lane);
        mp_pipeline_add_stage(to_dst, mp_pcopy_lane_stage(s->lane));
    }
    if (s->pacer)
        mp_relay_channel_set_pacer(c->ch, MP_DIR_TO_DST, s->pacer);
    s->open++;
    if (r->capture)
        mp_capture_channel(r->capture, s->number, c->index,
                           mp_relay_channel_peer(c->ch), now);
    g_debug("session %u: channel %u (%s) is connection %" G_GUINT64_FORMAT
            " from %s",
            s->number, c->index, mp_chan_kind_name(kind), c->id,
            mp_relay_channel_peer(c->ch));
    mp_relay_channel_start(c->ch);
    connect_next(s);
}

/* Upstream connections go out one at a time, in accept order. */
static void
connect_next(Session *s)
{
    MpRelay *r = s->relay;

    while (!s->connecting && s->connect_next < s->conns->len) {
        Conn *c = g_ptr_array_index(s->conns, s->connect_next);
        if (c->closed) {
            s->connect_next++;
            continue;
        }
        s->connecting = TRUE;
        mp_relay_channel_connect(c->ch, r->to,
                                 r->opt.connect_timeout_ms
                                     ? r->opt.connect_timeout_ms
                                     : DEFAULT_TIMEOUT_MS,
                                 r->opt.local_sockbuf);
    }
}

/* The first pending connection from the main channel's host accepted
 * after it (QEMU 7.2 opens its preempt channel there), or 0. */
static guint64
first_after(MpRelay *r, Conn *main)
{
    for (guint i = 0; i < r->pending->len; i++) {
        Conn *c = g_ptr_array_index(r->pending, i);
        if (c->id > main->id && mp_admit_same_host(c->host, main->host))
            return c->id;
    }
    return 0;
}

static Session *
start_session(MpRelay *r, Conn *main, MpChanKind kind)
{
    Session *s = g_new0(Session, 1);
    gint64 now = g_get_monotonic_time();

    /* a session paused in post-copy that never recovered is over */
    for (guint i = 0; i < r->sessions->len; i++) {
        Session *old = g_ptr_array_index(r->sessions, i);
        if (old->paused && !old->ended)
            end_session(old, "failed: post-copy paused and not recovered");
    }
    s->relay = r;
    s->admit = mp_admit_session_new(main->host, kind == MP_CHAN_TLS,
                                    kind == MP_CHAN_RECOVERY);
    s->after_main = first_after(r, main);
    s->number = ++r->session_count;
    s->conns = g_ptr_array_new();
    s->start_us = main->accept_us;
    s->joinable = TRUE;
    s->main = main;
    s->metrics = mp_metrics_new(s->number,
                                g_get_real_time() - (now - s->start_us),
                                s->start_us);
    if (r->metrics_out)
        mp_metrics_lines_attach(s->metrics, r->metrics_out);
    if (r->opt.progress && !r->opt.quiet)
        mp_metrics_progress_attach(s->metrics, stderr);
    else if (!r->opt.quiet)
        mp_metrics_log_attach(s->metrics);
    s->pipes = mp_session_new(s->metrics, s->number);
    s->stages = g_ptr_array_new_with_free_func((GDestroyNotify)mp_stage_free);
    s->lanes =
        g_ptr_array_new_with_free_func((GDestroyNotify)mp_pcopy_lane_free);
    if (!r->opt.no_zero_pages)
        g_ptr_array_add(s->stages, s->zero = mp_filter_zero_new());
    if (r->opt.rate)
        s->pacer = mp_rate_pacer_new(r->opt.rate, now);
    else if (!r->opt.no_priority && !r->opt.no_pace)
        s->est = mp_rate_estimator_new();
    s->sample_us = now;
    g_ptr_array_add(r->sessions, s);
    r->current = s;
    if (r->capture)
        mp_capture_session(r->capture, s->number, s->start_us,
                           mp_metrics_start_wall_us(s->metrics));
    if (!r->opt.quiet)
        g_message("session %u: migration stream from %s, relaying to %s",
                  s->number, mp_relay_channel_peer(main->ch), r->to_str);

    join(s, main, kind);
    /* multifd channels that came before it spoke, 7.2's silent preempt */
    schedule_admit(r);
    return s;
}

/* ---- channel hooks ---- */

/* The pipeline towards the destination writes into the channel's queue:
 * in place for the bytes it read, beside it for output that outgrew
 * them; what it holds is the room left before the next read. */
static void
sink_write(gpointer data, const guint8 *buf, gsize len)
{
    Conn *c = data;
    mp_relay_channel_send(c->ch, MP_DIR_TO_DST, buf, len);
}

static void
sink_insert(gpointer data, const guint8 *buf, gsize len)
{
    Conn *c = data;
    mp_relay_channel_queue_append(c->ch, MP_DIR_TO_DST, buf, len);
}

static void
sink_held(gpointer data, gsize held)
{
    Conn *c = data;
    mp_relay_channel_set_read_gap(c->ch, MP_DIR_TO_DST, held);
}

static const MpPipelineSink to_dst_sink = {
    .write = sink_write,
    .insert = sink_insert,
    .held = sink_held,
};

static void
capture_bytes(MpPipeline *p, const guint8 *buf, gsize len, gint64 now_us,
              gpointer data)
{
    Conn *c = data;
    mp_capture_data(c->relay->capture, c->session->number, c->index,
                    mp_pipeline_dir(p), buf, len, now_us);
}

static void
capture_end(MpPipeline *p, MpEndReason how, const GError *cut, gint64 now_us,
            gpointer data)
{
    Conn *c = data;
    mp_capture_end(c->relay->capture, c->session->number, c->index,
                   mp_pipeline_dir(p), how, now_us);
}

/* (added before the stages' sink writes at the end: the capture has the
 * bytes as they came) */
static const MpPipelineObserver capture_observer = {
    .bytes = capture_bytes,
    .end = capture_end,
};

/* The main channel towards the destination: post-copy lets a preempt
 * channel join. */
static MpRecordAction
main_record(MpPipeline *p, const MpRecord *rec, gpointer data)
{
    Conn *c = data;
    Session *s = c->session;

    if (c == s->main && mp_admit_session_record(s->admit, rec))
        schedule_admit(s->relay);
    return MP_REC_CONTINUE;
}

static const MpPipelineObserver main_observer = {.record = main_record};

/* The return path: the destination's page requests go to the lane. */
static MpRecordAction
return_path_record(MpPipeline *p, const MpRecord *rec, gpointer data)
{
    Conn *c = data;
    Session *s = c->session;

    if (s->lane && c == s->main && rec->kind == MP_REC_RP_MESSAGE
        && (rec->u.rp.type == MP_RP_MSG_REQ_PAGES
            || rec->u.rp.type == MP_RP_MSG_REQ_PAGES_ID))
        mp_pcopy_lane_request(s->lane, rec->u.rp.block, rec->u.rp.start,
                              rec->u.rp.req_len, g_get_monotonic_time());
    return MP_REC_CONTINUE;
}

static const MpPipelineObserver return_path_observer = {
    .record = return_path_record,
};

static void
on_data(MpRelayChannel *ch, MpDir dir, const guint8 *buf, gsize len,
        gpointer user_data)
{
    Conn *c = user_data;
    Session *s = c->session;
    MpRelay *r = c->relay;

    if (!s)
        return;
    mp_session_feed(s->pipes, c->index, dir, buf, len, g_get_monotonic_time());
    MpChanKind kind = mp_session_kind(s->pipes, c->index);
    if (kind != c->kind) {
        c->kind = kind;
        if (r->capture)
            mp_capture_kind(r->capture, s->number, c->index, kind);
        g_debug("session %u: channel %u is %s", s->number, c->index,
                mp_chan_kind_name(kind));
    }
}

static void
on_end(MpRelayChannel *ch, MpDir dir, MpEndReason how, gpointer user_data)
{
    Conn *c = user_data;
    Session *s = c->session;
    MpRelay *r = c->relay;

    if (!s)
        return;
    /* (what the pipeline holds goes out before the FIN is passed on) */
    mp_session_end(s->pipes, c->index, dir, how, g_get_monotonic_time());
    g_debug("session %u: channel %u %s ended (%s)", s->number, c->index,
            mp_dir_name(dir), mp_end_reason_name(how));
    if (c == s->main && s->lane && how != MP_END_FIN)
        mp_pcopy_lane_detach(s->lane); /* its queue is gone */
    if (dir == MP_DIR_TO_DST && c == s->main) {
        /* the migration's main stream is over: no more channels join */
        s->joinable = FALSE;
        if (r->current == s)
            r->current = NULL;
    }
}

static void
on_closed(MpRelayChannel *ch, gpointer user_data)
{
    Conn *c = user_data;
    Session *s = c->session;
    MpRelay *r = c->relay;

    c->closed = TRUE;
    if (!s) {
        bury(c);
        return;
    }
    if (s->connecting && s->connect_next == c->index) {
        s->connecting = FALSE;
        s->connect_next++;
        connect_next(s);
    }
    if (--s->open > 0 || s->ended)
        return;
    if (!s->failure && !r->stopping && mp_session_in_postcopy(s->pipes)) {
        /* QEMU pauses post-copy on a broken connection and can resume it
         * over a new one (migrate-recover / migrate -r) */
        s->paused = TRUE;
        if (!r->opt.quiet)
            g_message("session %u: every connection closed during "
                      "post-copy; waiting for a recovery channel",
                      s->number);
        if (!r->opt.once)
            return;
    }
    end_session(s, NULL);
}

static void
on_connected(MpRelayChannel *ch, const GError *error, gpointer user_data)
{
    Conn *c = user_data;
    Session *s = c->session;
    MpRelay *r = c->relay;

    s->connecting = FALSE;
    if (error) {
        g_message("session %u: cannot connect to the destination %s for "
                  "channel %u: %s; closing the migration's connections",
                  s->number, r->to_str, c->index, error->message);
        if (!s->failure)
            s->failure = g_strdup_printf("failed: destination %s: %s",
                                         r->to_str, error->message);
        /* the source sees its connections close and fails at once */
        g_autoptr(GPtrArray) conns = g_ptr_array_copy(s->conns, NULL, NULL);
        for (guint i = 0; i < conns->len; i++)
            mp_relay_channel_abort(((Conn *)g_ptr_array_index(conns, i))->ch);
        return;
    }
    s->connect_next++;
    connect_next(s);
}

/* ---- pending connections ---- */

static gboolean pending_timeout(gpointer user_data);
static void consider(Conn *c);

static gboolean
repeek(gpointer user_data)
{
    Conn *c = user_data;
    c->repeek = 0;
    consider(c);
    return G_SOURCE_REMOVE;
}

static void
on_readable(MpRelayChannel *ch, gpointer user_data)
{
    Conn *c = user_data;
    if (!c->session)
        consider(c);
}

static char *
hex_preview(const guint8 *b, gsize n)
{
    GString *s = g_string_new(NULL);
    n = MIN(n, 16);
    for (gsize i = 0; i < n; i++)
        g_string_append_printf(s, "%s%02x", i ? " " : "", b[i]);
    g_string_append(s, " \"");
    for (gsize i = 0; i < n; i++)
        g_string_append_c(s, g_ascii_isprint(b[i]) ? b[i] : '.');
    g_string_append_c(s, '"');
    return g_string_free(s, FALSE);
}

static Session *
paused_session(MpRelay *r)
{
    for (guint i = r->sessions->len; i-- > 0;) {
        Session *s = g_ptr_array_index(r->sessions, i);
        if (s->paused && !s->ended)
            return s;
    }
    return NULL;
}

static gboolean
is_pending(Conn *c)
{
    return !c->session && !c->closed
           && g_ptr_array_find(c->relay->pending, c, NULL);
}

/* Is a connection from the migration's host, accepted after its main
 * channel and before `c`, still undecided?  Channels join in the order
 * they were accepted (QEMU 7.2's destination counts them in that order),
 * and a client that connects after QEMU's channel cannot take its
 * multifd id by speaking first. */
static gboolean
earlier_undecided(MpRelay *r, Session *s, Conn *c)
{
    for (guint i = 0; i < r->pending->len; i++) {
        Conn *p = g_ptr_array_index(r->pending, i);
        if (p != c && p->id > s->main->id && p->id < c->id
            && mp_admit_same_host(p->host, s->main->host))
            return TRUE;
    }
    return FALSE;
}

/* A channel of the running session, if its checks let it in. */
static void
join_checked(Session *s, Conn *c, const MpAdmitInfo *info, MpChanKind kind)
{
    char why[256];

    if (c->id < s->main->id) {
        reject(c, "a %s channel accepted before the migration's main channel",
               mp_chan_kind_name(kind));
        return;
    }
    if (mp_admit_same_host(c->host, s->main->host)
        && earlier_undecided(s->relay, s, c)) {
        /* looked at again when that one is decided (schedule_admit) */
        c->waits_for_turn = TRUE;
        mp_relay_channel_watch(c->ch, FALSE);
        return;
    }
    if (!mp_admit_session_join(s->admit, c->host, info, why, sizeof why)) {
        reject(c, "a %s channel refused for session %u: %s",
               mp_chan_kind_name(kind), s->number, why);
        return;
    }
    join(s, c, kind);
}

/* The paused session `s` resumes over `c` (reference 8.4). */
static void
resume(Session *s, Conn *c, const MpAdmitInfo *info)
{
    MpRelay *r = s->relay;
    char why[256];

    if (!mp_admit_session_join(s->admit, c->host, info, why, sizeof why)) {
        reject(c, "a post-copy recovery channel refused for session %u: %s",
               s->number, why);
        return;
    }
    s->paused = FALSE;
    s->joinable = TRUE;
    r->current = s;
    if (!r->opt.quiet)
        g_message("session %u: recovery channel from %s", s->number,
                  mp_relay_channel_peer(c->ch));
    s->main = c;
    s->after_main = first_after(r, c);
    join(s, c, MP_CHAN_RECOVERY);
    schedule_admit(r);
}

/* A connection that has sent nothing: 7.2's preempt channel, or nobody. */
static void
consider_silent(Conn *c)
{
    Session *s = c->relay->current;

    if (!s || c->waits_for_main || c->id < s->main->id
        || !mp_admit_session_join_silent(s->admit, c->host,
                                         c->id == s->after_main))
        return; /* held until it speaks or its timeout */
    if (!c->relay->opt.quiet)
        g_message("session %u: connection %" G_GUINT64_FORMAT
                  " from %s is its postcopy-preempt channel (silent until "
                  "post-copy)",
                  s->number, c->id, mp_relay_channel_peer(c->ch));
    join(s, c, MP_CHAN_PREEMPT);
}

/* What a pending connection's first bytes (peeked, never read) make of
 * it: a new session, a channel of the running one, a refusal, or
 * nothing yet. */
static void
consider(Conn *c)
{
    MpRelay *r = c->relay;
    g_autoptr(GError) err = NULL;
    g_autofree guint8 *buf = g_malloc(MP_ADMIT_PEEK);
    MpAdmitInfo info;

    if (!is_pending(c))
        return;
    /* closed before the peek, so the peek has every byte: asked after
     * it, bytes and FIN that came in between made a cut-short header of a
     * whole first record (integration-relay-files failed so on CI) */
    gboolean closed = mp_relay_channel_source_closed(c->ch);
    gssize n = mp_relay_channel_peek(c->ch, buf, MP_ADMIT_PEEK, &err);
    if (n < 0) {
        if (!g_error_matches(err, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
            reject(c, "%s", err->message);
        else
            consider_silent(c);
        return;
    }
    MpAdmitKind kind = mp_admit_classify(buf, n, n == 0 || closed, &info);
    g_autofree char *hex = hex_preview(buf, n);
    Session *cur = r->current, *paused;

    switch (kind) {
    case MP_ADMIT_MORE:
        /* peeking cannot wait for more: look again soon */
        mp_relay_channel_watch(c->ch, FALSE);
        if (!c->repeek)
            c->repeek = g_timeout_add(REPEEK_MS, repeek, c);
        return;
    case MP_ADMIT_REFUSE:
        if (n == 0)
            reject(c, "%s", info.why);
        else
            reject(c, "%s (it starts %s)", info.why, hex);
        return;
    case MP_ADMIT_MAIN:
    case MP_ADMIT_TLS:
        if (cur && kind == MP_ADMIT_TLS && cur->main->tls_hello) {
            join_checked(cur, c, &info, MP_CHAN_TLS);
        } else if (cur) {
            reject(c,
                   "a second migration stream while session %u runs (one "
                   "migration at a time through a relay; it starts %s)",
                   cur->number, hex);
        } else {
            if (kind == MP_ADMIT_TLS)
                c->tls_hello = 5 + (buf[3] << 8 | buf[4]);
            start_session(r, c, kind == MP_ADMIT_TLS ? MP_CHAN_TLS
                                                     : MP_CHAN_MAIN);
        }
        return;
    case MP_ADMIT_RECOVERY:
        if ((paused = paused_session(r))) {
            resume(paused, c, &info);
        } else if (cur) {
            reject(c,
                   "a post-copy recovery stream while session %u runs and "
                   "is not paused",
                   cur->number);
        } else {
            /* the migration it resumes went through another relay (or
             * none): its sections are unknown here, parsing will give up
             * and the bytes are forwarded as they are */
            Session *s = start_session(r, c, MP_CHAN_RECOVERY);
            if (!r->opt.quiet)
                g_message("session %u: a post-copy recovery stream with no "
                          "session to resume here",
                          s->number);
        }
        return;
    case MP_ADMIT_MULTIFD:
        if (cur) {
            join_checked(cur, c, &info, MP_CHAN_MULTIFD);
        } else {
            /* its main channel may not have spoken yet */
            c->waits_for_main = TRUE;
            mp_relay_channel_watch(c->ch, FALSE);
        }
        return;
    case MP_ADMIT_PREEMPT:
        if (cur)
            join_checked(cur, c, &info, MP_CHAN_PREEMPT);
        else
            reject(c, "RAM records with no migration running (it starts %s)",
                   hex);
        return;
    }
}

static gboolean
admit_idle(gpointer user_data)
{
    MpRelay *r = user_data;
    g_autoptr(GPtrArray) pending = g_ptr_array_copy(r->pending, NULL, NULL);

    r->admit_id = 0;
    for (guint i = 0; i < pending->len; i++)
        consider(g_ptr_array_index(pending, i));
    return G_SOURCE_REMOVE;
}

/* Look at every pending connection again: a session started, or its
 * stream told something that lets a held connection in.  At the
 * channels' own priority, not an idle one: a loop that always has a
 * socket ready (`migproxy source`, whose relay writes into the tunnel's
 * hop at the link's pace through post-copy) never runs idle sources, and
 * a silent preempt channel, which only this admits, would wait past its
 * handshake timeout and be closed. */
static void
schedule_admit(MpRelay *r)
{
    if (!r->admit_id && !r->stopping)
        r->admit_id = g_idle_add_full(G_PRIORITY_DEFAULT, admit_idle, r, NULL);
}

static gboolean
pending_timeout(gpointer user_data)
{
    Conn *c = user_data;
    guint8 buf[16];
    gssize n = mp_relay_channel_peek(c->ch, buf, sizeof(buf), NULL);
    guint ms = c->relay->opt.handshake_timeout_ms
                   ? c->relay->opt.handshake_timeout_ms
                   : DEFAULT_TIMEOUT_MS;

    c->deadline = 0;
    if (c->waits_for_turn) {
        /* it passed; the one it waits for has a deadline of its own,
         * reached about now (accepted a moment earlier) */
        c->waits_for_turn = FALSE;
        consider(c);
        /* still waiting, or now for something else (its session ended):
         * a deadline of its own again, so nothing waits forever */
        if (is_pending(c) && !c->deadline)
            c->deadline = g_timeout_add(REPEEK_MS, pending_timeout, c);
        return G_SOURCE_REMOVE;
    }
    if (c->waits_for_main)
        reject(c, "a multifd channel whose main channel never came (%u ms)",
               ms);

    else if (n > 0) {
        g_autofree char *hex = hex_preview(buf, n);
        reject(c, "sent only %zd bytes (%s), not enough to tell a migration "
                  "channel, in %u ms",
               n, hex, ms);
    } else {
        reject(c, "sent nothing in %u ms", ms);
    }
    return G_SOURCE_REMOVE;
}

/* ---- listener ---- */

/* --listen unix:PATH: a socket file left by a relay that ended without
 * removing it is replaced; anything else at PATH is an error (never a
 * file of someone's deleted). */
static gboolean
unix_listen_prepare(MpRelay *r, GSocketAddress *a, GError **error)
{
    const char *path =
        g_unix_socket_address_get_path(G_UNIX_SOCKET_ADDRESS(a));
    struct stat st;

    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            g_set_error(error, G_IO_ERROR, G_IO_ERROR_EXISTS,
                        "--listen unix:%s: exists and is not a socket",
                        path);
            return FALSE;
        }
        /* a live one answers (a Unix connect does not wait) */
        g_autoptr(GSocket) probe = g_socket_new(
            G_SOCKET_FAMILY_UNIX, G_SOCKET_TYPE_STREAM,
            G_SOCKET_PROTOCOL_DEFAULT, NULL);
        if (probe && g_socket_connect(probe, a, NULL, NULL)) {
            g_set_error(error, G_IO_ERROR, G_IO_ERROR_ADDRESS_IN_USE,
                        "--listen unix:%s: another process listens there",
                        path);
            return FALSE;
        }
        unlink(path);
    }
    r->unix_path = g_strdup(path);
    return TRUE;
}

/* The socket file, bound and not yet listening: this user's alone before
 * anyone can connect (the directory may be open to others; the umask is
 * the process's, not ours to change). */
static gboolean
unix_listen_private(const char *path, GError **error)
{
    if (chmod(path, 0600) == 0)
        return TRUE;
    int e = errno;
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(e),
                "--listen unix:%s: chmod 0600: %s", path, g_strerror(e));
    return FALSE;
}

static gboolean on_accept(GSocket *listener, GIOCondition cond,
                          gpointer user_data);

static void
watch_listener(MpRelay *r)
{
    r->accept_source = g_socket_create_source(r->listener, G_IO_IN, NULL);
    g_source_set_callback(r->accept_source, G_SOURCE_FUNC(on_accept), r, NULL);
    g_source_attach(r->accept_source, NULL);
}

static gboolean
end_backoff(gpointer user_data)
{
    MpRelay *r = user_data;
    r->backoff_id = 0;
    if (!r->stopping)
        watch_listener(r);
    return G_SOURCE_REMOVE;
}

/* Out of file descriptors: accept() would fail at once again and again.
 * Stop watching the listener for a while (the kernel keeps new
 * connections in its backlog) and say so once. */
static void
back_off(MpRelay *r, const GError *err)
{
    g_warning("accept on %s: %s; not accepting for %u ms (%u connections "
              "pending, %u sessions)",
              r->listen_addr, err->message, ACCEPT_BACKOFF_MS, r->pending->len,
              r->sessions->len);
    g_source_destroy(r->accept_source);
    g_clear_pointer(&r->accept_source, g_source_unref);
    r->backoff_id = g_timeout_add(ACCEPT_BACKOFF_MS, end_backoff, r);
}

static gboolean
allowed(MpRelay *r, GInetAddress *host)
{
    return r->allow->len == 0 || mp_allow_matches(r->allow, host);
}

/* Closed at accept (--allow, too many pending): a log line, at most
 * about one a second under a flood. */
static void
refuse_at_accept(MpRelay *r, GSocket *sock, const char *peer, const char *why)
{
    gint64 now = g_get_monotonic_time();

    g_socket_close(sock, NULL);
    if (now - r->refused_log_us < G_USEC_PER_SEC) {
        r->refused++;
        return;
    }
    if (r->refused)
        g_message("connection from %s: %s; closed (and %u more closed at "
                  "accept since the last such line)",
                  peer, why, r->refused);
    else
        g_message("connection from %s: %s; closed", peer, why);
    r->refused = 0;
    r->refused_log_us = now;
}

static gboolean
on_accept(GSocket *listener, GIOCondition cond, gpointer user_data)
{
    MpRelay *r = user_data;
    guint failed = 0;

    for (;;) {
        g_autoptr(GError) err = NULL;
        g_autoptr(GSocket) sock = g_socket_accept(listener, NULL, &err);
        if (!sock) {
            if (g_error_matches(err, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
                break;
            /* EMFILE, ENFILE; ENOMEM; or (GIO's FAILED) ENOBUFS, and
             * ECONNABORTED, EPROTO for one connection that went away:
             * those may be skipped, but not forever */
            if (g_error_matches(err, G_IO_ERROR,
                                G_IO_ERROR_TOO_MANY_OPEN_FILES)
                || g_error_matches(err, G_IO_ERROR, G_IO_ERROR_NO_SPACE)
                || ++failed >= 8) {
                back_off(r, err);
                return G_SOURCE_REMOVE;
            }
            g_debug("accept on %s: %s", r->listen_addr, err->message);
            continue;
        }
        g_autoptr(GSocketAddress) pa = g_socket_get_remote_address(sock, NULL);
        g_autoptr(GInetAddress) host = NULL;
        if (r->unix_path) {
            /* a process of this host that may open the socket's file
             * (0600: this user's); --allow is for addresses */
            host = g_inet_address_new_loopback(G_SOCKET_FAMILY_IPV4);
        } else if (!pa || !G_IS_INET_SOCKET_ADDRESS(pa)) {
            g_socket_close(sock, NULL);
            continue;
        } else {
            host = mp_admit_host(
                g_inet_socket_address_get_address(G_INET_SOCKET_ADDRESS(pa)));
        }
        if (!r->unix_path && !allowed(r, host)) {
            g_autofree char *ip = g_inet_address_to_string(host);
            refuse_at_accept(r, sock, ip, "not in --allow");
            continue;
        }
        if (r->pending->len >= MAX_PENDING) {
            g_autofree char *ip = g_inet_address_to_string(host);
            refuse_at_accept(r, sock, ip,
                             "too many connections waiting to be told "
                             "apart (" G_STRINGIFY(MAX_PENDING) ")");
            continue;
        }
        Conn *c = g_new0(Conn, 1);
        c->relay = r;
        c->id = ++r->next_id;
        c->accept_us = g_get_monotonic_time();
        c->kind = MP_CHAN_UNKNOWN;
        c->host = g_steal_pointer(&host);
        c->ch = mp_relay_channel_new(sock, c->id, &conn_hooks, c);
        g_debug("connection %" G_GUINT64_FORMAT " from %s", c->id,
                mp_relay_channel_peer(c->ch));
        if (r->current && !r->current->after_main
            && mp_admit_same_host(c->host, r->current->main->host))
            r->current->after_main = c->id;
        /* held, never read, until its first bytes say what it is */
        g_ptr_array_add(r->pending, c);
        c->deadline = g_timeout_add(r->opt.handshake_timeout_ms
                                        ? r->opt.handshake_timeout_ms
                                        : DEFAULT_TIMEOUT_MS,
                                    pending_timeout, c);
        mp_relay_channel_watch(c->ch, TRUE);
        schedule_admit(r); /* silent: a preempt channel, maybe */
    }
    return G_SOURCE_CONTINUE;
}

/* No --rate: measures the path's rate while it holds the relay back and,
 * for a migration that may switch to post-copy, paces every channel from
 * that estimate (rate-pacer.h); the estimate is kept once pacing began
 * (paced, the path no longer shows its rate). */
static void
auto_pace(Session *s, gint64 now)
{
    guint64 all = 0, saturated = 0;

    if (!s->est)
        return;
    if (s->pacer) {
        mp_rate_pacer_set_rate(
            s->pacer, mp_rate_auto_pace(s->measured, now - s->paced_us));
        return;
    }
    for (guint i = 0; i < s->conns->len; i++) {
        Conn *c = g_ptr_array_index(s->conns, i);
        gboolean full;
        guint64 n = mp_relay_channel_drain_sample(c->ch, MP_DIR_TO_DST, &full);
        all += n;
        saturated += full ? n : 0;
    }
    mp_rate_estimator_add(s->est, now - s->sample_us, all, saturated);
    s->sample_us = now;
    s->measured = mp_rate_estimator_rate(s->est);
    if (!s->measured || !s->lane || !mp_pcopy_lane_advised(s->lane)) {
        s->measured = 0;
        return;
    }
    s->paced_us = now;
    s->pacer = mp_rate_pacer_new(mp_rate_auto_pace(s->measured, 0), now);
    for (guint i = 0; i < s->conns->len; i++)
        mp_relay_channel_set_pacer(((Conn *)g_ptr_array_index(s->conns, i))->ch,
                                   MP_DIR_TO_DST, s->pacer);
    if (!s->relay->opt.quiet)
        g_message("session %u: the path to the destination takes %.1f "
                  "Mbit/s; pacing at %.1f Mbit/s for post-copy",
                  s->number, s->measured * 8 / 1e6,
                  mp_rate_auto_pace(s->measured, G_MAXINT64) * 8 / 1e6);
}

static gboolean
on_tick(gpointer user_data)
{
    MpRelay *r = user_data;
    gint64 now = g_get_monotonic_time();

    for (guint i = 0; i < r->sessions->len; i++) {
        Session *s = g_ptr_array_index(r->sessions, i);
        if (!s->ended && !s->paused) {
            if (r->opt.link_info) {
                MpMetricsLink ln;
                r->opt.link_info(&ln.measured_bps, &ln.paced_bps,
                                 &ln.rtt_ms, r->opt.report_data);
                mp_metrics_set_link(s->metrics, &ln);
            }
            if (r->opt.encoders_info)
                mp_metrics_set_encoders(s->metrics,
                                        r->opt.encoders_info(
                                            r->opt.report_data));
            mp_metrics_tick(s->metrics, now);
            auto_pace(s, now);
        }
    }
    return G_SOURCE_CONTINUE;
}

static void
on_edit_written(MpRelayChannel *ch, MpDir dir, gpointer tag,
                gpointer user_data)
{
    Conn *c = user_data;
    if (c->session && c->session->lane && c == c->session->main)
        mp_pcopy_lane_written(c->session->lane, tag, g_get_monotonic_time());
}

static const MpRelayChannelHooks conn_hooks = {
    .edit_written = on_edit_written,
    .data = on_data,
    .end = on_end,
    .closed = on_closed,
    .connected = on_connected,
    .readable = on_readable,
};

MpRelay *
mp_relay_new(const MpRelayOptions *opt, GError **error)
{
    g_autoptr(MpRelay) r = g_new0(MpRelay, 1);
    g_autoptr(GSocketAddress) laddr = NULL;
    g_autoptr(GSocketAddress) bound = NULL;

    r->opt = *opt;
    r->opt.to_addr = NULL; /* (held in r->to) */
    r->listen_str = g_strdup(opt->listen);
    r->to_str = g_strdup(opt->to);
    r->metrics_path = g_strdup(opt->metrics);
    r->report_path = g_strdup(opt->report);
    r->capture_dir = g_strdup(opt->capture);
    r->pending = g_ptr_array_new();
    r->sessions = g_ptr_array_new();
    r->dead = g_ptr_array_new();
    r->loop = g_main_loop_new(NULL, FALSE);

    r->allow = mp_allow_parse(opt->allow, error);
    if (!r->allow)
        return NULL;

    if (opt->to_addr)
        r->to = g_object_ref(opt->to_addr);
    else if (!(r->to = mp_address_resolve("--to", opt->to, error)))
        return NULL;
    if (!(laddr = mp_address_resolve_listen("--listen", opt->listen, error)))
        return NULL;
    gboolean unix_listen = G_IS_UNIX_SOCKET_ADDRESS(laddr);
    r->listener = g_socket_new(g_socket_address_get_family(laddr),
                               G_SOCKET_TYPE_STREAM,
                               unix_listen ? G_SOCKET_PROTOCOL_DEFAULT
                                           : G_SOCKET_PROTOCOL_TCP,
                               error);
    if (!r->listener)
        return NULL;
    if (unix_listen && !unix_listen_prepare(r, laddr, error))
        return NULL;
    g_socket_set_blocking(r->listener, FALSE);
    g_socket_set_listen_backlog(r->listener, 64);
    /* on the listener, so that accepted connections start with it (their
     * window is scaled for it) */
    if (opt->local_sockbuf)
        g_socket_set_option(r->listener, SOL_SOCKET, SO_RCVBUF,
                            (gint)opt->local_sockbuf, NULL);
    if (!g_socket_bind(r->listener, laddr, TRUE, error)
        || (r->unix_path && !unix_listen_private(r->unix_path, error))
        || !g_socket_listen(r->listener, error)) {
        g_prefix_error(error, "--listen %s: ", opt->listen);
        return NULL;
    }
    bound = g_socket_get_local_address(r->listener, error);
    if (!bound)
        return NULL;
    r->listen_addr = mp_address_string(bound);
    if (r->metrics_path) {
        r->metrics_out = mp_metrics_out_new(r->metrics_path, error);
        if (!r->metrics_out) {
            g_prefix_error(error, "--metrics: ");
            return NULL;
        }
    }
    /* a report that could not be written would be found missing only
     * after the migration */
    if (r->report_path && !mp_out_path_check(r->report_path, error)) {
        g_prefix_error(error, "--report: ");
        return NULL;
    }
    if (r->capture_dir) {
        r->capture =
            mp_capture_new(r->capture_dir, r->listen_addr, r->to_str, error);
        if (!r->capture)
            return NULL;
    }
    watch_listener(r);
    r->tick_id = g_timeout_add(TICK_MS, on_tick, r);
    return g_steal_pointer(&r);
}

void
mp_relay_free(MpRelay *r)
{
    if (!r)
        return;
    /* first: a report it still owes is dropped, and schedules a reap */
    g_clear_pointer(&r->capture, mp_capture_free);
    if (r->accept_source) {
        g_source_destroy(r->accept_source);
        g_source_unref(r->accept_source);
    }
    if (r->tick_id)
        g_source_remove(r->tick_id);
    if (r->reap_id)
        g_source_remove(r->reap_id);
    if (r->admit_id)
        g_source_remove(r->admit_id);
    if (r->backoff_id)
        g_source_remove(r->backoff_id);
    for (guint i = 0; i < r->pending->len; i++)
        conn_free(g_ptr_array_index(r->pending, i));
    g_ptr_array_free(r->pending, TRUE);
    for (guint i = 0; i < r->sessions->len; i++)
        session_free(g_ptr_array_index(r->sessions, i));
    g_ptr_array_free(r->sessions, TRUE);
    for (guint i = 0; i < r->dead->len; i++)
        conn_free(g_ptr_array_index(r->dead, i));
    g_ptr_array_free(r->dead, TRUE);
    g_clear_pointer(&r->allow, g_ptr_array_unref);
    if (r->listener)
        g_socket_close(r->listener, NULL);
    g_clear_object(&r->listener);
    if (r->unix_path && r->listen_addr)
        unlink(r->unix_path); /* ours: bound by this relay */
    g_free(r->unix_path);
    g_clear_object(&r->to);
    mp_metrics_out_free(r->metrics_out);
    if (r->loop)
        g_main_loop_unref(r->loop);
    g_free(r->listen_str);
    g_free(r->to_str);
    g_free(r->metrics_path);
    g_free(r->report_path);
    g_free(r->capture_dir);
    g_free(r->listen_addr);
    g_free(r);
}

const char *
mp_relay_listen_address(const MpRelay *r)
{
    return r->listen_addr;
}

int
mp_relay_run(MpRelay *r)
{
    /* several relays share the main context (`migproxy source` with
     * several --listen, run one after the other): this one may have
     * finished while another's loop ran, and its quit came before */
    if (!finished(r))
        g_main_loop_run(r->loop);
    if (r->opt.once && r->report_failed)
        return 1;
    if (r->stopping || !r->opt.once)
        return 0;
    return r->last_outcome == MP_METRICS_OUTCOME_COMPLETED
                   || r->last_outcome == MP_METRICS_OUTCOME_TLS_CLEAN
               ? 0
               : 1;
}

void
mp_relay_stop(MpRelay *r, const char *why)
{
    if (r->stopping)
        return;
    r->stopping = TRUE;
    if (!r->opt.quiet)
        g_message("stopping (%s)", why);
    if (r->accept_source) {
        g_source_destroy(r->accept_source);
        g_clear_pointer(&r->accept_source, g_source_unref);
    }
    if (r->backoff_id)
        g_source_remove(r->backoff_id);
    r->backoff_id = 0;
    while (r->pending->len)
        reject(g_ptr_array_index(r->pending, 0), "the relay is stopping");
    g_autofree char *failure = g_strdup_printf("interrupted: %s", why);
    g_autoptr(GPtrArray) sessions = g_ptr_array_copy(r->sessions, NULL, NULL);
    for (guint i = 0; i < sessions->len; i++) {
        Session *s = g_ptr_array_index(sessions, i);
        if (s->ended)
            continue;
        if (!s->failure)
            s->failure = g_strdup(failure);
        g_autoptr(GPtrArray) conns = g_ptr_array_copy(s->conns, NULL, NULL);
        for (guint k = 0; k < conns->len; k++) {
            Conn *c = g_ptr_array_index(conns, k);
            if (!c->closed)
                mp_relay_channel_abort(c->ch);
        }
        end_session(s, NULL); /* if it had no open connection */
    }
    schedule_reap(r);
}
