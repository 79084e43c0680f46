/* metrics-lines.c: JSON lines of the metrics model (see metrics-lines.h
 * and docs/relay.md). */
#include "config.h"
#include "metrics-lines.h"
#include "metrics-report.h"

typedef struct {
    MpMetricsObserver base;
    MpMetricsOut *out; /* not owned */
} Lines;

static void
write_line(MpMetricsOut *out, json_object *line)
{
    mp_metrics_out_write(
        out, json_object_to_json_string_ext(line, JSON_C_TO_STRING_PLAIN),
        g_get_monotonic_time());
}

/* Writes {"schema", "event", "session", "t_ms", then the members of
 * `o`}; takes `o`. */
static void
emit(Lines *l, const MpMetrics *m, const char *event, json_object *o,
     gint64 now_us)
{
    json_object *line = json_object_new_object();
    json_object_object_add(line, "schema",
                           json_object_new_int(MP_JSON_SCHEMA_VERSION));
    json_object_object_add(line, "event", json_object_new_string(event));
    json_object_object_add(line, "session",
                           json_object_new_int(mp_metrics_session(m)));
    json_object_object_add(line, "t_ms",
                           mp_metrics_json_ms(mp_metrics_rel(m, now_us)));
    json_object_object_foreach(o, k, v)
        json_object_object_add(line, k, json_object_get(v));
    json_object_put(o);
    write_line(l->out, line);
    json_object_put(line);
}

static json_object *
channel_event(guint channel)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "channel", json_object_new_int(channel));
    return o;
}

/* {"channel", "direction"} of an event about one direction */
static json_object *
flow_event(guint channel, MpDir dir)
{
    json_object *o = channel_event(channel);
    json_object_object_add(o, "direction",
                           json_object_new_string(mp_dir_name(dir)));
    return o;
}

static void
on_channel_open(MpMetricsObserver *self, const MpMetrics *m, guint channel,
                gint64 now_us)
{
    const char *peer = mp_metrics_channel(m, channel)->peer;
    json_object *o = channel_event(channel);
    json_object_object_add(o, "peer",
                           peer ? json_object_new_string(peer) : NULL);
    emit((Lines *)self, m, "channel-open", o, now_us);
}

static void
on_channel_kind(MpMetricsObserver *self, const MpMetrics *m, guint channel,
                gint64 now_us)
{
    MpChanKind kind = mp_metrics_channel(m, channel)->kind;
    json_object *o = channel_event(channel);
    json_object_object_add(o, "kind",
                           json_object_new_string(mp_chan_kind_name(kind)));
    emit((Lines *)self, m, "channel-kind", o, now_us);
}

static void
on_partial(MpMetricsObserver *self, const MpMetrics *m, guint channel,
           MpDir dir, gint64 now_us)
{
    const MpMetricsFlow *f = &mp_metrics_channel(m, channel)->dir[dir];
    json_object *o = flow_event(channel, dir);
    json_object_object_add(o, "offset",
                           json_object_new_int64(f->partial_offset));
    json_object_object_add(o, "why", json_object_new_string(f->partial_why));
    emit((Lines *)self, m, "partial", o, now_us);
}

static void
on_channel_end(MpMetricsObserver *self, const MpMetrics *m, guint channel,
               MpDir dir, gint64 now_us)
{
    const MpMetricsFlow *f = &mp_metrics_channel(m, channel)->dir[dir];
    json_object *o = flow_event(channel, dir);
    json_object_object_add(o, "how", json_object_new_string(mp_end_reason_name(f->end)));
    if (f->truncated)
        json_object_object_add(o, "truncated",
                               json_object_new_string(f->truncated));
    emit((Lines *)self, m, "channel-end", o, now_us);
}

static void
on_phase(MpMetricsObserver *self, const MpMetrics *m, const char *phase,
         gint64 now_us)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "phase", json_object_new_string(phase));
    emit((Lines *)self, m, "phase", o, now_us);
}

static void
on_round(MpMetricsObserver *self, const MpMetrics *m, guint round,
         gint64 now_us)
{
    json_object *r = mp_analysis_round_json(mp_metrics_analysis(m), round);
    if (r)
        emit((Lines *)self, m, "round", r, now_us);
}

static void
on_sample(MpMetricsObserver *self, const MpMetrics *m, gint64 interval_us,
          gint64 now_us)
{
    MpAnalysisProgress pr;
    MpMetricsLive l;
    json_object *o = json_object_new_object();
    json_object *chs = json_object_new_array();

    mp_analysis_progress(mp_metrics_analysis(m), &pr);
    mp_metrics_live(m, &l);
    for (guint i = 0; i < mp_metrics_n_channels(m); i++) {
        const MpMetricsChannel *c = mp_metrics_channel(m, i);
        if (!c)
            continue;
        json_object *co = channel_event(i);
        json_object_object_add(
            co, "kind", json_object_new_string(mp_chan_kind_name(c->kind)));
        for (int d = 0; d < MP_DIR__MAX; d++) {
            guint64 n = c->dir[d].bytes - c->dir[d].tick_bytes;
            const char *side = d ? "to_src" : "to_dst";
            g_autofree char *k = g_strdup_printf("%s_bytes", side);
            g_autofree char *kr = g_strdup_printf("%s_bps", side);
            json_object_object_add(co, k, json_object_new_int64(n));
            json_object_object_add(
                co, kr,
                json_object_new_int64(n * 8 * G_USEC_PER_SEC / interval_us));
        }
        json_object_array_add(chs, co);
    }
    json_object_object_add(o, "interval_ms", mp_metrics_json_ms(interval_us));
    json_object_object_add(o, "channels", chs);
    json_object_object_add(o, "phase", json_object_new_string(pr.phase));
    json_object_object_add(o, "round", json_object_new_int(pr.rounds));
    json_object_object_add(o, "pages", json_object_new_int64(pr.pages));
    json_object_object_add(o, "ram_sent", json_object_new_double(l.ram_sent));
    json_object_object_add(o, "rate_bps",
                           json_object_new_int64((gint64)(l.rate * 8)));
    json_object_object_add(o, "dirty_pages_per_s",
                           json_object_new_int64((gint64)l.dirty_rate));
    json_object_object_add(
        o, "eta_s", l.eta_s >= 0 ? json_object_new_double(l.eta_s) : NULL);
    json_object_object_add(o, "postcopy_requests",
                           json_object_new_int64(pr.postcopy_requests));
    MpMetricsLink ln;
    if (mp_metrics_link(m, &ln)) {
        json_object *lo = json_object_new_object();
        json_object_object_add(lo, "measured_bps",
                               ln.measured_bps < 0
                                   ? NULL
                                   : json_object_new_int64(ln.measured_bps));
        json_object_object_add(lo, "paced_bps",
                               ln.paced_bps < 0
                                   ? NULL
                                   : json_object_new_int64(ln.paced_bps));
        json_object *rtt =
            ln.rtt_ms < 0 ? NULL : json_object_new_double(ln.rtt_ms);
        json_object_object_add(lo, "rtt_ms", rtt);
        json_object_object_add(o, "link", lo);
    }
    json_object *enc = mp_metrics_encoders(m);
    if (enc)
        json_object_object_add(o, "encoders", json_object_get(enc));
    emit((Lines *)self, m, "sample", o, now_us);
}

/* The outcome and the report's headline numbers. */
static void
on_finish(MpMetricsObserver *self, const MpMetrics *m, gint64 now_us)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "outcome",
                           json_object_new_string(mp_metrics_outcome_text(m)));
    json_object *rep = mp_metrics_report(m), *v;
    const char *keys[] = {"total_ms", "downtime_ms", "postcopy"};
    for (guint i = 0; i < G_N_ELEMENTS(keys); i++)
        if (json_object_object_get_ex(rep, keys[i], &v))
            json_object_object_add(o, keys[i], json_object_get(v));
    json_object *ram;
    if (json_object_object_get_ex(rep, "ram", &ram)
        && json_object_object_get_ex(ram, "pages", &v))
        json_object_object_add(o, "ram_pages", json_object_get(v));
    json_object_put(rep);
    emit((Lines *)self, m, "session-end", o, now_us);
}

static void
lines_free(MpMetricsObserver *self)
{
    g_free(self);
}

void
mp_metrics_lines_attach(MpMetrics *m, MpMetricsOut *out)
{
    Lines *l = g_new0(Lines, 1);

    l->base = (MpMetricsObserver){
        .channel_open = on_channel_open,
        .channel_kind = on_channel_kind,
        .partial = on_partial,
        .channel_end = on_channel_end,
        .phase = on_phase,
        .round = on_round,
        .sample = on_sample,
        .finish = on_finish,
        .free = lines_free,
    };
    l->out = out;

    /* no t_ms: the session's wall-clock start instead */
    json_object *o = json_object_new_object();
    json_object_object_add(o, "schema",
                           json_object_new_int(MP_JSON_SCHEMA_VERSION));
    json_object_object_add(o, "event", json_object_new_string("session-start"));
    json_object_object_add(o, "session",
                           json_object_new_int(mp_metrics_session(m)));
    g_autofree char *iso = mp_metrics_start_time(m);
    json_object_object_add(o, "time", iso ? json_object_new_string(iso) : NULL);
    write_line(out, o);
    json_object_put(o);
    mp_metrics_add_observer(m, &l->base);
}
