/* metrics-log.c: log lines of the metrics model (see metrics-log.h). */
#include "config.h"
#include "json-util.h"
#include "metrics-log.h"

static void
on_phase(MpMetricsObserver *self, const MpMetrics *m, const char *phase,
         gint64 now_us)
{
    (void)self;
    g_message("session %u: phase %s at %.1f s", mp_metrics_session(m), phase,
              mp_metrics_rel(m, now_us) / 1e6);
}

static void
on_round(MpMetricsObserver *self, const MpMetrics *m, guint round,
         gint64 now_us)
{
    json_object *r = mp_analysis_round_json(mp_metrics_analysis(m), round);

    (void)self, (void)now_us;
    if (!r)
        return;
    g_message(
        "session %u: round %u: %" G_GINT64_FORMAT " pages (%" G_GINT64_FORMAT
        " dirty), %.1f MiB in %.0f ms",
        mp_metrics_session(m), round, mp_json_int_or(r, "pages", 0),
        mp_json_int_or(r, "dirty_pages", 0),
        mp_json_int_or(r, "bytes", 0) / 1048576.0,
        (mp_json_int_or(r, "end_us", 0) - mp_json_int_or(r, "start_us", 0))
            / 1000.0);
    json_object_put(r);
}

static void
log_free(MpMetricsObserver *self)
{
    g_free(self);
}

void
mp_metrics_log_attach(MpMetrics *m)
{
    MpMetricsObserver *o = g_new0(MpMetricsObserver, 1);
    o->phase = on_phase;
    o->round = on_round;
    o->free = log_free;
    mp_metrics_add_observer(m, o);
}

char *
mp_metrics_summary(const MpMetrics *m)
{
    json_object *doc = mp_analysis_to_json(mp_metrics_analysis(m)), *v, *pages;
    const char *outcome = mp_metrics_outcome_text(m);
    GString *s = g_string_new(NULL);
    MpAnalysisProgress pr;
    MpMetricsDowntime dt;

    mp_analysis_progress(mp_metrics_analysis(m), &pr);
    mp_metrics_downtime(m, &dt);
    g_string_append_printf(s, "session %u %s: %.1f s", mp_metrics_session(m),
                           outcome ? outcome : "running",
                           MAX(mp_metrics_last_us(m), 0) / 1e6);
    if (dt.stop_us >= 0)
        g_string_append_printf(s, ", downtime %.0f ms on the wire",
                               (dt.resume_us - dt.stop_us) / 1000.0);
    if (json_object_object_get_ex(doc, "ram", &v)
        && json_object_object_get_ex(v, "pages", &pages)) {
        g_string_append(s, ", pages");
        json_object_object_foreach(pages, k, val) g_string_append_printf(
            s, " %s %" G_GINT64_FORMAT, k, json_object_get_int64(val));
    }
    g_string_append_printf(s, ", %u rounds", pr.rounds);
    if (pr.postcopy_requests)
        g_string_append_printf(s, ", %" G_GUINT64_FORMAT " page requests",
                               pr.postcopy_requests);
    g_string_append_printf(s, ", %.1f MiB",
                           mp_metrics_total_bytes(m) / 1048576.0);
    json_object_put(doc);
    return g_string_free(s, FALSE);
}
