/* relay-metrics.h: what one migration session looks like on the wire,
 * live: per-channel byte counts and a time series every 100 ms, rounds and
 * phases (from the analysis), the downtime as seen on the wire, post-copy
 * page-request latency, multifd bytes.  Emits JSON lines while it runs
 * (--metrics), a one-line progress display, and the report at the end
 * (--report, and `migproxy analyze DIR` of a capture).  The keys are
 * described in docs/relay.md.
 *
 * Times are monotonic microseconds (g_get_monotonic_time(), or a
 * capture's timestamps); everything reported is relative to the session
 * start given to mp_relay_metrics_new().
 */
#pragma once

#include <stdio.h>
#include <glib.h>
#include <json-c/json.h>
#include "analysis.h"
#include "channel-types.h"
#include "mp-record.h"
#include "out-file.h"

#define MP_RELAY_METRICS_INTERVAL_US 100000 /* time series step */

typedef struct MpRelayMetrics MpRelayMetrics;

typedef struct {
    MpOutLines *lines;    /* JSON lines (--metrics), or NULL; not owned */
    gboolean progress;    /* one-line live display on stderr */
    gboolean log;         /* log lines (g_message) for phases, rounds, end */
    guint session;        /* session number, in JSON lines and the report */
    gint64 start_wall_us; /* g_get_real_time() at the start (report) */
} MpRelayMetricsConfig;

/* @cfg: copied.  @return new metrics; free with mp_relay_metrics_free(). */
MpRelayMetrics *mp_relay_metrics_new(const MpRelayMetricsConfig *cfg,
                                     gint64 start_us);
void mp_relay_metrics_free(MpRelayMetrics *m); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpRelayMetrics, mp_relay_metrics_free)

/* The analysis the records go into.  @return borrowed. */
MpAnalysis *mp_relay_metrics_analysis(MpRelayMetrics *m);

/* Connection `channel` (0, 1, ... in accept order) opened; `peer` is
 * copied (may be NULL). */
void mp_relay_metrics_channel_open(MpRelayMetrics *m, guint channel,
                                   const char *peer, gint64 now_us);
/* Its first bytes told what it carries. */
void mp_relay_metrics_channel_kind(MpRelayMetrics *m, guint channel,
                                   MpChanKind kind, gint64 now_us);
/* `n` bytes passed in `dir` (counted whether parsed or not). */
void mp_relay_metrics_bytes(MpRelayMetrics *m, guint channel, MpDir dir,
                            gsize n, gint64 now_us);
/* One record parsed from `dir` of `channel` (borrowed for the call). */
void mp_relay_metrics_record(MpRelayMetrics *m, guint channel, MpDir dir,
                             const MpRecord *rec, gint64 now_us);
/* The parser of `dir` gave up at `offset`: from there on the bytes are
 * only counted.  `why` is copied. */
void mp_relay_metrics_partial(MpRelayMetrics *m, guint channel, MpDir dir,
                              guint64 offset, const char *why, gint64 now_us);
/* `dir` ended: `how` is "fin" (orderly close), "reset" or "aborted";
 * `truncated` (may be NULL) says what record the stream ended inside. */
void mp_relay_metrics_channel_end(MpRelayMetrics *m, guint channel, MpDir dir,
                                  const char *how, const char *truncated,
                                  gint64 now_us);

/* Every MP_RELAY_METRICS_INTERVAL_US: a JSON line "sample", new phases
 * and finished rounds, the progress display. */
void mp_relay_metrics_tick(MpRelayMetrics *m, gint64 now_us);

/* The session ended.  `failure` (may be NULL: judged from the wire)
 * becomes the outcome, e.g. "interrupted" or "failed: ...". */
void mp_relay_metrics_finish(MpRelayMetrics *m, gint64 now_us,
                             const char *failure);

/* How the session ended, once mp_relay_metrics_finish() was called. */
typedef enum {
    MP_RELAY_OUTCOME_RUNNING,   /* not finished */
    MP_RELAY_OUTCOME_COMPLETED, /* "completed" */
    MP_RELAY_OUTCOME_TLS_CLEAN, /* "ended cleanly (TLS, not parsed)" */
    MP_RELAY_OUTCOME_FAILED,    /* "failed: ...", "interrupted: ..." */
} MpRelayOutcome;
MpRelayOutcome mp_relay_metrics_outcome(const MpRelayMetrics *m);

/* @return the report (caller owns): the analysis document plus session,
 * outcome, total_ms, downtime_ms, downtime, phases[], postcopy (requests,
 * latency_us), channels[]. */
json_object *mp_relay_metrics_report(MpRelayMetrics *m);

/* The one-line summary logged at the end ("completed in 2.1 s, ..."). */
char *mp_relay_metrics_summary(MpRelayMetrics *m);
