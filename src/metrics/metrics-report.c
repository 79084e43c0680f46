/* metrics-report.c: the report document of the metrics model (see
 * metrics-report.h and docs/relay.md). */
#include "config.h"
#include <string.h>
#include "json-util.h"
#include "metrics-report.h"

json_object *
mp_metrics_json_ms(gint64 us)
{
    char text[32];
    if (us < 0)
        return NULL;
    g_snprintf(text, sizeof(text), "%.3f", us / 1000.0);
    return json_object_new_double_s(us / 1000.0, text);
}

static json_object *
jint(gint64 v)
{
    return json_object_new_int64(v);
}

static json_object *
jstr_or_null(const char *s)
{
    return s ? json_object_new_string(s) : NULL;
}

static json_object *
series_json(const GArray *s)
{
    json_object *a = json_object_new_array_ext(s->len);
    for (guint i = 0; i < s->len; i++)
        json_object_array_add(a, jint(g_array_index(s, guint64, i)));
    return a;
}

static json_object *
flow_json(const MpMetricsFlow *f)
{
    json_object *dj = json_object_new_object();
    json_object_object_add(dj, "bytes", jint(f->bytes));
    json_object_object_add(
        dj, "end",
        f->ended ? json_object_new_string(mp_end_reason_name(f->end)) : NULL);
    json_object_object_add(dj, "end_ms", mp_metrics_json_ms(f->end_us));
    json_object_object_add(dj, "last_byte_ms", mp_metrics_json_ms(f->last_us));
    json_object_object_add(dj, "partial", json_object_new_boolean(f->partial));
    if (f->partial) {
        json_object_object_add(dj, "partial_offset", jint(f->partial_offset));
        json_object_object_add(dj, "partial_reason",
                               json_object_new_string(f->partial_why));
    }
    if (f->truncated)
        json_object_object_add(dj, "truncated",
                               json_object_new_string(f->truncated));
    json_object *series = json_object_new_object();
    json_object_object_add(series, "interval_ms",
                           jint(MP_METRICS_INTERVAL_US / 1000));
    json_object_object_add(series, "bytes", series_json(f->series));
    json_object_object_add(dj, "series", series);
    return dj;
}

static json_object *
channel_json(const MpMetricsChannel *c)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "channel", json_object_new_int(c->index));
    json_object_object_add(o, "kind",
                           json_object_new_string(mp_chan_kind_name(c->kind)));
    json_object_object_add(o, "peer", jstr_or_null(c->peer));
    json_object_object_add(o, "open_ms", mp_metrics_json_ms(c->open_us));
    for (int d = 0; d < MP_DIR__MAX; d++)
        json_object_object_add(o, d ? "to_src" : "to_dst",
                               flow_json(&c->dir[d]));
    json_object_object_add(
        o, "partial",
        json_object_new_boolean(c->dir[MP_DIR_TO_DST].partial
                                || c->dir[MP_DIR_TO_SRC].partial));
    return o;
}

static json_object *
downtime_json(const MpMetricsDowntime *dt)
{
    gboolean stopped = dt->stop_us >= 0;
    json_object *o = json_object_new_object();
    json_object_object_add(o, "stop_ms", mp_metrics_json_ms(dt->stop_us));
    json_object_object_add(o, "resume_ms",
                           stopped ? mp_metrics_json_ms(dt->resume_us) : NULL);
    json_object_object_add(o, "end_marker", jstr_or_null(dt->end_marker));
    json_object_object_add(o, "first_record_ms",
                           stopped ? mp_metrics_json_ms(dt->first_record_us)
                                   : NULL);
    json_object_object_add(o, "until_answer_ms",
                           dt->answer_us >= 0
                               ? mp_metrics_json_ms(dt->answer_us - dt->stop_us)
                               : NULL);
    json_object_object_add(o, "answer", jstr_or_null(dt->answer));
    return o;
}

/* The phases with their spans, from the analysis' phase start times. */
static json_object *
phases_json(const MpMetrics *m, json_object *doc)
{
    json_object *phases = json_object_new_array(), *starts;
    const char *order[] = {"setup", "precopy", "stop-copy", "postcopy"};
    gint64 st[G_N_ELEMENTS(order)];

    if (!json_object_object_get_ex(doc, "phase_start_us", &starts))
        return phases;
    for (guint i = 0; i < G_N_ELEMENTS(order); i++)
        st[i] = mp_json_int_or(starts, order[i], -1);
    for (guint i = 0; i < G_N_ELEMENTS(order); i++) {
        if (st[i] < 0)
            continue;
        gint64 end = MAX(mp_metrics_last_us(m), st[i]);
        for (guint k = i + 1; k < G_N_ELEMENTS(order); k++)
            if (st[k] >= 0) {
                end = st[k];
                break;
            }
        json_object *p = json_object_new_object();
        json_object_object_add(p, "phase", json_object_new_string(order[i]));
        json_object_object_add(p, "start_ms", mp_metrics_json_ms(st[i]));
        json_object_object_add(p, "end_ms", mp_metrics_json_ms(end));
        json_object_array_add(phases, p);
    }
    return phases;
}

/* Adds latency_us and the answered counts to the analysis' postcopy{}
 * (or to a new one when the analysis saw no post-copy). */
static void
add_postcopy(const MpMetrics *m, json_object *doc)
{
    MpMetricsPostcopy pc;
    json_object *o;

    mp_metrics_postcopy(m, &pc);
    if (!json_object_object_get_ex(doc, "postcopy", &o)) {
        MpAnalysisProgress pr;
        mp_analysis_progress(mp_metrics_analysis(m), &pr);
        o = json_object_new_object();
        json_object_object_add(o, "requests", jint(pr.postcopy_requests));
        json_object_object_add(doc, "postcopy", o);
    }
    json_object *lat = json_object_new_object();
    json_object_object_add(lat, "p50", pc.count ? jint(pc.p50_us) : NULL);
    json_object_object_add(lat, "p99", pc.count ? jint(pc.p99_us) : NULL);
    json_object_object_add(lat, "max", pc.count ? jint(pc.max_us) : NULL);
    json_object_object_add(lat, "count", jint(pc.count));
    json_object *hist = json_object_new_array();
    for (guint i = 0; i < MP_METRICS_LATENCY_BUCKETS; i++) {
        json_object *b = json_object_new_object();
        json_object_object_add(b, "le_us",
                               mp_metrics_latency_le_us[i] >= 0
                                   ? jint(mp_metrics_latency_le_us[i])
                                   : NULL);
        json_object_object_add(b, "count", jint(pc.histogram[i]));
        json_object_array_add(hist, b);
    }
    json_object_object_add(lat, "histogram", hist);
    json_object_object_add(o, "latency_us", lat);
    json_object_object_add(o, "requests_answered", jint(pc.answered));
    json_object_object_add(o, "requests_unanswered", jint(pc.unanswered));
}

json_object *
mp_json_with_schema(json_object *doc)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "schema",
                           json_object_new_int(MP_JSON_SCHEMA_VERSION));
    json_object_object_foreach(doc, k, v)
    {
        if (strcmp(k, "schema") != 0)
            json_object_object_add(o, k, json_object_get(v));
    }
    json_object_put(doc);
    return o;
}

json_object *
mp_metrics_report(const MpMetrics *m)
{
    json_object *doc =
        mp_json_with_schema(mp_analysis_to_json(mp_metrics_analysis(m)));
    const char *outcome = mp_metrics_outcome_text(m);
    MpMetricsDowntime dt;

    mp_metrics_downtime(m, &dt);
    json_object_object_add(doc, "session",
                           json_object_new_int(mp_metrics_session(m)));
    json_object_object_add(
        doc, "outcome", json_object_new_string(outcome ? outcome : "running"));
    g_autofree char *iso = mp_metrics_start_time(m);
    json_object_object_add(doc, "start_time", jstr_or_null(iso));
    json_object_object_add(doc, "total_ms",
                           mp_metrics_json_ms(MAX(mp_metrics_last_us(m), 0)));
    json_object_object_add(
        doc, "downtime_ms",
        dt.stop_us >= 0 ? mp_metrics_json_ms(dt.resume_us - dt.stop_us) : NULL);
    json_object_object_add(doc, "downtime", downtime_json(&dt));
    json_object_object_add(doc, "phases", phases_json(m, doc));
    add_postcopy(m, doc);

    json_object *chs = json_object_new_array();
    gboolean partial = FALSE;
    for (guint i = 0; i < mp_metrics_n_channels(m); i++) {
        const MpMetricsChannel *c = mp_metrics_channel(m, i);
        if (!c)
            continue;
        partial |=
            c->dir[MP_DIR_TO_DST].partial || c->dir[MP_DIR_TO_SRC].partial;
        json_object_array_add(chs, channel_json(c));
    }
    json_object_object_add(doc, "channels", chs);
    json_object_object_add(doc, "partial", json_object_new_boolean(partial));
    return doc;
}
