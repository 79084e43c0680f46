/* relay.c: listener, sessions and channel classification of the relay
 * (see relay.h).
 *
 *   accept --> pending (peek, never read) --"QEVM" v3--> session main
 *                 |                                       + every pending
 *                 +-- multifd magic: waits for its main     connection
 *                 +-- 0x08 with a session paused in         accepted after it
 *                 |   post-copy: recovery channel
 *                 +-- other bytes, early close, silence: logged, closed
 *
 * Connections of a session are connected upstream one at a time in
 * accept order; each relays its bytes through its MpRelayChannel, and
 * every chunk read goes to the session's tap (parsers, metrics) and to
 * the capture on the way.
 */
#include "config.h"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <gio/gio.h>
#include "capture.h"
#include "filter-zero.h"
#include "pcopy-lane.h"
#include "rate-pacer.h"
#include "relay-channel.h"
#include "relay-metrics.h"
#include "relay.h"
#include "session-tap.h"
#include "stream-editor.h"

#define DEFAULT_TIMEOUT_MS 10000
#define REPEEK_MS          20 /* a header that came in pieces */
#define TICK_MS            (MP_RELAY_METRICS_INTERVAL_US / 1000)
#define HEADER_LEN         8 /* be32 "QEVM", be32 version 3 */
/* The longest record the editor may hold back: a 1 MiB disk chunk of
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
    MpStreamEditor *editor; /* to the destination, when filters run */
    gboolean waits_for_main;
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
    MpRelayMetrics *metrics;
    MpSessionTap *tap;
    GPtrArray *filters; /* MpFilter*, the chain of every channel */
    MpFilter *zero;     /* in `filters`, or NULL */
    MpPcopyLane *lane;  /* on the main channel, or NULL */
    MpRatePacer *pacer; /* --rate, shared by the channels, or NULL */
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
    GSource *accept_source;
    GSocketAddress *to;
    GMainLoop *loop;
    guint64 next_id;
    GPtrArray *pending;  /* Conn*, accept order */
    GPtrArray *sessions; /* Session*, not yet freed */
    Session *current;    /* the joinable session */
    guint session_count;
    FILE *metrics_file;
    MpCapture *capture;
    guint tick_id, reap_id;
    GPtrArray *dead; /* rejected Conn* to free from an idle */
    gboolean stopping, once_done;
    char *last_outcome;
};

static const MpRelayChannelHooks conn_hooks;
static void emit_to_dst(const guint8 *buf, gsize len, gpointer user_data);
static void on_record(guint channel, MpDir dir, const MpRecord *rec,
                      gpointer user_data);

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
    mp_stream_editor_free(c->editor);
    g_free(c);
}

/* Frees the session's connections too. */
static void
session_free(Session *s)
{
    for (guint i = 0; i < s->conns->len; i++)
        conn_free(g_ptr_array_index(s->conns, i));
    g_ptr_array_free(s->conns, TRUE);
    mp_session_tap_free(s->tap);
    g_ptr_array_free(s->filters, TRUE);
    mp_pcopy_lane_free(s->lane);
    mp_rate_pacer_free(s->pacer);
    mp_rate_estimator_free(s->est);
    mp_relay_metrics_free(s->metrics);
    g_free(s->failure);
    g_free(s);
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
    if (r->once_done || (r->stopping && r->sessions->len == 0))
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

static void
bury(Conn *c)
{
    stop_timers(c);
    g_ptr_array_remove(c->relay->pending, c);
    g_ptr_array_add(c->relay->dead, c);
    schedule_reap(c->relay);
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

/* The filters' counters: `filters {chain[], NAME {...}, bytes_in,
 * bytes_out}` (bytes towards the destination of the edited channels). */
static json_object *
filters_report(Session *s)
{
    json_object *o = json_object_new_object(), *chain = json_object_new_array();
    guint64 in = 0, out = 0;

    for (guint i = 0; i < s->filters->len; i++) {
        MpFilter *f = g_ptr_array_index(s->filters, i);
        json_object_array_add(chain, json_object_new_string(f->name));
        json_object_object_add(o, f->name, f->report(f));
    }
    json_object_object_add(o, "chain", chain);
    for (guint i = 0; i < s->conns->len; i++) {
        Conn *c = g_ptr_array_index(s->conns, i);
        if (c->editor) {
            in += mp_stream_editor_bytes_in(c->editor);
            out += mp_stream_editor_bytes_out(c->editor);
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
    json_object *rep = mp_relay_metrics_report(s->metrics);
    json_object_object_add(rep, "filters", filters_report(s));
    json_object_object_add(rep, "priority", priority_report(s));
    return rep;
}

static void
write_report(MpRelay *r, Session *s)
{
    g_autoptr(GError) err = NULL;
    json_object *rep = session_report(s);
    const char *text = json_object_to_json_string_ext(
        rep, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE);

    if (r->report_path && !g_file_set_contents(r->report_path, text, -1, &err))
        g_warning("report %s: %s", r->report_path, err->message);
    json_object_put(rep);
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
    mp_relay_metrics_finish(s->metrics, g_get_monotonic_time(),
                            failure ? failure : s->failure);
    g_autofree char *summary = mp_relay_metrics_summary(s->metrics);
    if (!r->opt.quiet)
        g_message("%s", summary);
    if (s->zero && mp_filter_zero_rewritten(s->zero) && !r->opt.quiet)
        g_message("session %u: %" G_GUINT64_FORMAT
                  " all-zero pages sent as ZERO records, %.1f MiB less to "
                  "the destination",
                  s->number, mp_filter_zero_rewritten(s->zero),
                  mp_filter_zero_bytes_saved(s->zero) / 1048576.0);
    write_report(r, s);
    json_object *rep = mp_relay_metrics_report(s->metrics), *v;
    g_free(r->last_outcome);
    r->last_outcome = g_strdup(json_object_object_get_ex(rep, "outcome", &v)
                                   ? json_object_get_string(v)
                                   : "?");
    json_object_put(rep);
    if (r->capture)
        mp_capture_flush(r->capture);
    if (r->opt.once)
        r->once_done = TRUE;
    schedule_reap(r);
}

static void connect_next(Session *s);

static void
join(Session *s, Conn *c)
{
    MpRelay *r = s->relay;
    gint64 now = g_get_monotonic_time();

    stop_timers(c);
    g_ptr_array_remove(r->pending, c);
    c->session = s;
    c->index = s->conns->len;
    c->waits_for_main = FALSE;
    g_ptr_array_add(s->conns, c);
    if (s->filters->len || !r->opt.no_priority) {
        /* shrink-only: the channel writes what it read in place */
        c->editor = mp_stream_editor_new(s->filters, c->index, EDIT_HOLD_LIMIT,
                                         TRUE, emit_to_dst, c);
        mp_relay_channel_set_filtered(c->ch, MP_DIR_TO_DST);
    }
    if (c == s->main && c->editor && !r->opt.no_priority) {
        mp_pcopy_lane_free(s->lane); /* a recovery channel's new main */
        s->lane = mp_pcopy_lane_new(c->ch, r->opt.queue);
    }
    if (s->pacer)
        mp_relay_channel_set_pacer(c->ch, MP_DIR_TO_DST, s->pacer);
    s->open++;
    mp_session_tap_add(s->tap, c->index, mp_relay_channel_peer(c->ch), now);
    if (r->capture)
        mp_capture_channel(r->capture, s->number, c->index,
                           mp_relay_channel_peer(c->ch), now);
    g_debug("session %u: channel %u is connection %" G_GUINT64_FORMAT
            " from %s",
            s->number, c->index, c->id, mp_relay_channel_peer(c->ch));
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
                                     : DEFAULT_TIMEOUT_MS);
    }
}

static Session *
start_session(MpRelay *r, Conn *main)
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
    s->number = ++r->session_count;
    s->conns = g_ptr_array_new();
    s->start_us = main->accept_us;
    s->joinable = TRUE;
    s->main = main;
    MpRelayMetricsConfig cfg = {
        .lines = r->metrics_file,
        .progress = r->opt.progress && !r->opt.quiet,
        .log = !r->opt.quiet && !r->opt.progress,
        .session = s->number,
        .start_wall_us = g_get_real_time() - (now - s->start_us),
    };
    s->metrics = mp_relay_metrics_new(&cfg, s->start_us);
    s->tap = mp_session_tap_new(s->metrics, s->number);
    mp_session_tap_set_record_func(s->tap, on_record, s);
    s->filters = g_ptr_array_new_with_free_func((GDestroyNotify)mp_filter_free);
    if (!r->opt.no_zero_pages)
        g_ptr_array_add(s->filters, s->zero = mp_filter_zero_new());
    if (r->opt.rate)
        s->pacer = mp_rate_pacer_new(r->opt.rate, now);
    else if (!r->opt.no_priority)
        s->est = mp_rate_estimator_new();
    s->sample_us = now;
    g_ptr_array_add(r->sessions, s);
    r->current = s;
    if (r->capture)
        mp_capture_session(r->capture, s->number, s->start_us,
                           cfg.start_wall_us);
    if (!r->opt.quiet)
        g_message("session %u: migration stream from %s, relaying to %s",
                  s->number, mp_relay_channel_peer(main->ch), r->to_str);

    /* main first, then whatever was accepted after it, in order */
    g_autoptr(GPtrArray) later = g_ptr_array_new();
    for (guint i = 0; i < r->pending->len; i++) {
        Conn *c = g_ptr_array_index(r->pending, i);
        if (c->id > main->id)
            g_ptr_array_add(later, c);
    }
    join(s, main);
    for (guint i = 0; i < later->len; i++)
        join(s, g_ptr_array_index(later, i));
    return s;
}

/* ---- channel hooks ---- */

static void
emit_to_dst(const guint8 *buf, gsize len, gpointer user_data)
{
    Conn *c = user_data;
    mp_relay_channel_send(c->ch, MP_DIR_TO_DST, buf, len);
}

/* Every record of the session, from the tap: the editors see those of
 * their channel towards the destination. */
static void
on_record(guint channel, MpDir dir, const MpRecord *rec, gpointer user_data)
{
    Session *s = user_data;

    if (channel >= s->conns->len)
        return;
    Conn *c = g_ptr_array_index(s->conns, channel);
    gboolean lane = s->lane && c == s->main;
    if (dir == MP_DIR_TO_SRC) {
        if (lane && rec->kind == MP_REC_RP_MESSAGE
            && (rec->u.rp.type == MP_RP_MSG_REQ_PAGES
                || rec->u.rp.type == MP_RP_MSG_REQ_PAGES_ID))
            mp_pcopy_lane_request(s->lane, rec->u.rp.block, rec->u.rp.start,
                                  rec->u.rp.req_len, g_get_monotonic_time());
        return;
    }
    if (!c->editor)
        return;
    mp_stream_editor_record(c->editor, rec);
    guint64 off = 0;
    gsize len = 0;
    if (lane && (rec->kind != MP_REC_RAM_PAGE
                 || mp_stream_editor_placed(c->editor, rec, &off, &len)))
        mp_pcopy_lane_record(s->lane, rec, off, len);
}

static void
on_data(MpRelayChannel *ch, MpDir dir, const guint8 *buf, gsize len,
        gpointer user_data)
{
    Conn *c = user_data;
    Session *s = c->session;
    MpRelay *r = c->relay;
    gint64 now = g_get_monotonic_time();

    if (!s)
        return;
    if (r->capture)
        mp_capture_data(r->capture, s->number, c->index, dir, buf, len, now);
    MpStreamEditor *ed = dir == MP_DIR_TO_DST ? c->editor : NULL;
    if (ed)
        mp_stream_editor_begin(ed, buf, len);
    mp_session_tap_feed(s->tap, c->index, dir, buf, len, now);
    MpChanKind kind = mp_session_tap_kind(s->tap, c->index);
    if (ed)
        mp_stream_editor_end(
            ed, mp_chan_kind_editable(kind)
                    && mp_session_tap_following(s->tap, c->index, dir));
    if (ed) /* what it holds goes out ahead of the next read */
        mp_relay_channel_set_read_gap(ch, dir, mp_stream_editor_held(ed));
    if (ed && s->lane && c == s->main)
        mp_pcopy_lane_flush(s->lane); /* the records' bytes are queued now */
    if (kind != c->kind) {
        c->kind = kind;
        if (r->capture)
            mp_capture_kind(r->capture, s->number, c->index, kind);
        g_debug("session %u: channel %u is %s", s->number, c->index,
                mp_chan_kind_name(kind));
    }
}

static void
on_end(MpRelayChannel *ch, MpDir dir, const char *how, gpointer user_data)
{
    Conn *c = user_data;
    Session *s = c->session;
    MpRelay *r = c->relay;
    gint64 now = g_get_monotonic_time();

    if (!s)
        return;
    if (r->capture)
        mp_capture_end(r->capture, s->number, c->index, dir, how, now);
    if (dir == MP_DIR_TO_DST && c->editor)
        mp_stream_editor_flush(c->editor); /* before the FIN is passed on */
    mp_session_tap_end(s->tap, c->index, dir, how, now);
    g_debug("session %u: channel %u %s ended (%s)", s->number, c->index,
            mp_dir_name(dir), how);
    if (c == s->main && s->lane && strcmp(how, "fin") != 0)
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
    if (!s->failure && !r->stopping && mp_session_tap_in_postcopy(s->tap)) {
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
static void on_readable(MpRelayChannel *ch, gpointer user_data);

static gboolean
repeek(gpointer user_data)
{
    Conn *c = user_data;
    c->repeek = 0;
    on_readable(c->ch, c);
    return G_SOURCE_REMOVE;
}

static char *
hex_preview(const guint8 *b, gsize n)
{
    GString *s = g_string_new(NULL);
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

static void
on_readable(MpRelayChannel *ch, gpointer user_data)
{
    Conn *c = user_data;
    MpRelay *r = c->relay;
    g_autoptr(GError) err = NULL;
    guint8 buf[HEADER_LEN];
    gssize n = mp_relay_channel_peek(c->ch, buf, sizeof(buf), &err);

    if (c->session)
        return;
    if (n < 0) {
        if (!g_error_matches(err, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
            reject(c, "%s", err->message);
        return;
    }
    if (n == 0) {
        reject(c, "closed without sending anything");
        return;
    }
    g_autofree char *hex = hex_preview(buf, n);
    MpChanKind kind = mp_chan_classify(buf, n, FALSE);
    Session *paused = paused_session(r);

    if (kind == MP_CHAN_RECOVERY && n >= 5) {
        /* a postcopy recovery main channel has no header (section 8.4):
         * it starts with RECV_BITMAP (or POSTCOPY_RESUME) */
        guint16 cmd = buf[1] << 8 | buf[2], len = buf[3] << 8 | buf[4];
        if ((cmd != MP_QMIG_CMD_RECV_BITMAP
             && cmd != MP_QMIG_CMD_POSTCOPY_RESUME)
            || len > 256) {
            reject(c, "not a QEMU migration stream (it starts %s)", hex);
            return;
        }
        if (!paused) {
            /* the migration it resumes went through another relay (or
             * none): its sections are unknown here, parsing will give up
             * and the bytes are forwarded as they are */
            Session *s = start_session(r, c);
            if (!r->opt.quiet)
                g_message("session %u: a post-copy recovery stream with no "
                          "session to resume here",
                          s->number);
            return;
        }
        paused->paused = FALSE;
        paused->joinable = TRUE;
        r->current = paused;
        if (!r->opt.quiet)
            g_message("session %u: recovery channel from %s", paused->number,
                      mp_relay_channel_peer(c->ch));
        paused->main = c;
        join(paused, c);
        return;
    }
    if (kind == MP_CHAN_FOREIGN) {
        reject(c, "not a QEMU migration stream (it starts %s)", hex);
        return;
    }
    if (kind == MP_CHAN_MAIN && n == HEADER_LEN) {
        guint32 version =
            (guint32)buf[4] << 24 | buf[5] << 16 | buf[6] << 8 | buf[7];
        if (version != 3) {
            reject(c,
                   "migration stream version %u (QEMU writes 3; it starts "
                   "%s)",
                   version, hex);
            return;
        }
        start_session(r, c);
        return;
    }
    if (kind == MP_CHAN_TLS) {
        /* tls-creds: every channel is encrypted, the first one is main */
        start_session(r, c);
        return;
    }
    if (kind == MP_CHAN_MULTIFD) {
        /* its main channel was accepted before it and has not spoken */
        c->waits_for_main = TRUE;
        mp_relay_channel_watch(c->ch, FALSE);
        return;
    }
    /* a header in pieces: look again soon (peeking cannot wait for more) */
    mp_relay_channel_watch(c->ch, FALSE);
    if (mp_relay_channel_source_closed(c->ch)) {
        reject(c, "closed after %zd bytes (%s), before a stream header", n,
               hex);
        return;
    }
    if (!c->repeek)
        c->repeek = g_timeout_add(REPEEK_MS, repeek, c);
}

static gboolean
pending_timeout(gpointer user_data)
{
    Conn *c = user_data;
    guint8 buf[HEADER_LEN];
    gssize n = mp_relay_channel_peek(c->ch, buf, sizeof(buf), NULL);
    guint ms = c->relay->opt.handshake_timeout_ms
                   ? c->relay->opt.handshake_timeout_ms
                   : DEFAULT_TIMEOUT_MS;

    c->deadline = 0;
    if (c->waits_for_main)
        reject(c, "a multifd channel whose main channel never came (%u ms)",
               ms);
    else if (n > 0) {
        g_autofree char *hex = hex_preview(buf, n);
        reject(c, "sent only %zd bytes (%s) in %u ms", n, hex, ms);
    } else {
        reject(c, "sent nothing in %u ms", ms);
    }
    return G_SOURCE_REMOVE;
}

/* ---- listener ---- */

static gboolean
on_accept(GSocket *listener, GIOCondition cond, gpointer user_data)
{
    MpRelay *r = user_data;

    for (;;) {
        g_autoptr(GError) err = NULL;
        g_autoptr(GSocket) sock = g_socket_accept(listener, NULL, &err);
        if (!sock) {
            if (!g_error_matches(err, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
                g_warning("accept on %s: %s", r->listen_addr, err->message);
            break;
        }
        Conn *c = g_new0(Conn, 1);
        c->relay = r;
        c->id = ++r->next_id;
        c->accept_us = g_get_monotonic_time();
        c->kind = MP_CHAN_UNKNOWN;
        c->ch = mp_relay_channel_new(sock, c->id, &conn_hooks, c);
        g_debug("connection %" G_GUINT64_FORMAT " from %s", c->id,
                mp_relay_channel_peer(c->ch));
        if (r->current && r->current->joinable) {
            join(r->current, c);
            continue;
        }
        /* held, never read, until its first bytes say what it is */
        g_ptr_array_add(r->pending, c);
        c->deadline = g_timeout_add(r->opt.handshake_timeout_ms
                                        ? r->opt.handshake_timeout_ms
                                        : DEFAULT_TIMEOUT_MS,
                                    pending_timeout, c);
        mp_relay_channel_watch(c->ch, TRUE);
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
            mp_relay_metrics_tick(s->metrics, now);
            auto_pace(s, now);
        }
    }
    if (r->capture)
        mp_capture_flush(r->capture);
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

static GSocketAddress *
resolve(const char *what, const char *hostport, GError **error)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GSocketConnectable) addr =
        g_network_address_parse(hostport, 0, &err);

    if (!addr) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                    "%s %s: %s (expected HOST:PORT)", what, hostport,
                    err->message);
        return NULL;
    }
    g_autoptr(GSocketAddressEnumerator) en =
        g_socket_connectable_enumerate(addr);
    GSocketAddress *sa = g_socket_address_enumerator_next(en, NULL, &err);
    if (!sa) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_HOST_NOT_FOUND, "%s %s: %s",
                    what, hostport, err ? err->message : "no address");
        return NULL;
    }
    return sa;
}

static char *
address_string(GSocketAddress *a)
{
    g_autofree char *ip = g_inet_address_to_string(
        g_inet_socket_address_get_address(G_INET_SOCKET_ADDRESS(a)));
    guint16 port = g_inet_socket_address_get_port(G_INET_SOCKET_ADDRESS(a));
    return strchr(ip, ':') ? g_strdup_printf("[%s]:%u", ip, port)
                           : g_strdup_printf("%s:%u", ip, port);
}

MpRelay *
mp_relay_new(const MpRelayOptions *opt, GError **error)
{
    g_autoptr(MpRelay) r = g_new0(MpRelay, 1);
    g_autoptr(GSocketAddress) laddr = NULL;
    g_autoptr(GSocketAddress) bound = NULL;

    r->opt = *opt;
    r->listen_str = g_strdup(opt->listen);
    r->to_str = g_strdup(opt->to);
    r->metrics_path = g_strdup(opt->metrics);
    r->report_path = g_strdup(opt->report);
    r->capture_dir = g_strdup(opt->capture);
    r->pending = g_ptr_array_new();
    r->sessions = g_ptr_array_new();
    r->dead = g_ptr_array_new();
    r->loop = g_main_loop_new(NULL, FALSE);

    if (!(r->to = resolve("--to", opt->to, error)))
        return NULL;
    if (!(laddr = resolve("--listen", opt->listen, error)))
        return NULL;
    r->listener =
        g_socket_new(g_socket_address_get_family(laddr), G_SOCKET_TYPE_STREAM,
                     G_SOCKET_PROTOCOL_TCP, error);
    if (!r->listener)
        return NULL;
    g_socket_set_blocking(r->listener, FALSE);
    g_socket_set_listen_backlog(r->listener, 64);
    if (!g_socket_bind(r->listener, laddr, TRUE, error)
        || !g_socket_listen(r->listener, error)) {
        g_prefix_error(error, "--listen %s: ", opt->listen);
        return NULL;
    }
    bound = g_socket_get_local_address(r->listener, error);
    if (!bound)
        return NULL;
    r->listen_addr = address_string(bound);
    if (r->metrics_path) {
        r->metrics_file = fopen(r->metrics_path, "w");
        if (!r->metrics_file) {
            int e = errno;
            g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(e),
                        "--metrics %s: %s", r->metrics_path, g_strerror(e));
            return NULL;
        }
    }
    if (r->capture_dir) {
        r->capture =
            mp_capture_new(r->capture_dir, r->listen_addr, r->to_str, error);
        if (!r->capture)
            return NULL;
    }
    r->accept_source = g_socket_create_source(r->listener, G_IO_IN, NULL);
    g_source_set_callback(r->accept_source, G_SOURCE_FUNC(on_accept), r, NULL);
    g_source_attach(r->accept_source, NULL);
    r->tick_id = g_timeout_add(TICK_MS, on_tick, r);
    return g_steal_pointer(&r);
}

void
mp_relay_free(MpRelay *r)
{
    if (!r)
        return;
    if (r->accept_source) {
        g_source_destroy(r->accept_source);
        g_source_unref(r->accept_source);
    }
    if (r->tick_id)
        g_source_remove(r->tick_id);
    if (r->reap_id)
        g_source_remove(r->reap_id);
    for (guint i = 0; i < r->pending->len; i++)
        conn_free(g_ptr_array_index(r->pending, i));
    g_ptr_array_free(r->pending, TRUE);
    for (guint i = 0; i < r->sessions->len; i++)
        session_free(g_ptr_array_index(r->sessions, i));
    g_ptr_array_free(r->sessions, TRUE);
    for (guint i = 0; i < r->dead->len; i++)
        conn_free(g_ptr_array_index(r->dead, i));
    g_ptr_array_free(r->dead, TRUE);
    if (r->listener)
        g_socket_close(r->listener, NULL);
    g_clear_object(&r->listener);
    g_clear_object(&r->to);
    mp_capture_free(r->capture);
    if (r->metrics_file)
        fclose(r->metrics_file);
    if (r->loop)
        g_main_loop_unref(r->loop);
    g_free(r->listen_str);
    g_free(r->to_str);
    g_free(r->metrics_path);
    g_free(r->report_path);
    g_free(r->capture_dir);
    g_free(r->listen_addr);
    g_free(r->last_outcome);
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
    g_main_loop_run(r->loop);
    if (r->stopping || !r->opt.once)
        return 0;
    return g_strcmp0(r->last_outcome, "completed") == 0
                   || g_str_has_prefix(r->last_outcome ? r->last_outcome : "",
                                       "ended cleanly")
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
