/* metrics-progress.c: the live progress line of the metrics model (see
 * metrics-progress.h). */
#include "config.h"
#include "metrics-progress.h"

typedef struct {
    MpMetricsObserver base;
    FILE *out;
    gboolean shown; /* a line is on the terminal: erase it at the end */
} Progress;

static char *
human_rate(double bytes_per_s)
{
    if (bytes_per_s >= 1e9)
        return g_strdup_printf("%.2f GB/s", bytes_per_s / 1e9);
    if (bytes_per_s >= 1e6)
        return g_strdup_printf("%.0f MB/s", bytes_per_s / 1e6);
    return g_strdup_printf("%.0f kB/s", bytes_per_s / 1e3);
}

static void
on_sample(MpMetricsObserver *self, const MpMetrics *m, gint64 interval_us,
          gint64 now_us)
{
    Progress *p = (Progress *)self;
    MpAnalysisProgress pr;
    MpMetricsLive l;

    (void)interval_us, (void)now_us;
    mp_analysis_progress(mp_metrics_analysis(m), &pr);
    mp_metrics_live(m, &l);
    g_autofree char *rate = human_rate(l.rate);
    g_autofree char *eta =
        l.eta_s >= 0 ? g_strdup_printf("%.1f s", l.eta_s) : g_strdup("-");
    g_autofree char *round =
        pr.rounds ? g_strdup_printf("round %u ", pr.rounds) : g_strdup("");
    fprintf(p->out,
            "\r\033[Ksession %u: %s%s | RAM %3.0f%% sent | %s | "
            "dirty %.0f pages/s | ETA %s",
            mp_metrics_session(m), round, pr.phase, l.ram_sent * 100, rate,
            l.dirty_rate, eta);
    fflush(p->out);
    p->shown = TRUE;
}

static void
on_finish(MpMetricsObserver *self, const MpMetrics *m, gint64 now_us)
{
    Progress *p = (Progress *)self;

    (void)m, (void)now_us;
    if (p->shown) {
        fputs("\r\033[K", p->out);
        fflush(p->out);
    }
}

static void
progress_free(MpMetricsObserver *self)
{
    g_free(self);
}

void
mp_metrics_progress_attach(MpMetrics *m, FILE *out)
{
    Progress *p = g_new0(Progress, 1);
    p->base.sample = on_sample;
    p->base.finish = on_finish;
    p->base.free = progress_free;
    p->out = out;
    mp_metrics_add_observer(m, &p->base);
}
