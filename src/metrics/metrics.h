/* metrics.h: the metrics model of one migration session.
 *
 * MpMetrics counts what one session looks like on the wire, per channel
 * and direction: bytes (in total and as a time series of 100 ms steps),
 * when each channel opened, what it carries, how it ended and where its
 * parser gave up.  The records go into its MpAnalysis (rounds, phases,
 * pages).  From both it derives the downtime as the wire shows it,
 * post-copy page-request latency, the live rate and ETA, and the outcome.
 * Whoever sees the bytes and records feeds it: the relay's session tap,
 * a capture replayed by `analyze`, later the two ends of the tunnel.  It
 * does no I/O and knows nothing of sockets; times are the caller's.
 *
 * What it shows is up to its presentations, one file each, which watch
 * it as observers (MpMetricsObserver) or read it at the end:
 *   metrics-lines.c     JSON lines while the session runs (--metrics),
 *                       written by metrics-out.c to a file, stdout or a
 *                       Unix socket
 *   metrics-progress.c  the one-line progress display on a terminal
 *   metrics-log.c       log lines for phases and rounds; the summary line
 *   metrics-report.c    the report document (--report, and `analyze` of
 *                       a capture)
 * The keys are described in docs/relay.md and, with their units, by the
 * JSON Schemas in docs/schema/ ("schema": MP_JSON_SCHEMA_VERSION).
 *
 * Times are monotonic microseconds (g_get_monotonic_time(), or a
 * capture's timestamps); the model keeps them relative to the session
 * start given to mp_metrics_new().
 */
#pragma once

#include <glib.h>
#include "analysis.h"
#include "channel-types.h"
#include "mp-record.h"

#define MP_METRICS_INTERVAL_US 100000 /* time series step */

typedef struct MpMetrics MpMetrics;

/* One direction of one channel.  Times are relative to the session
 * start; -1: not yet. */
typedef struct {
    guint64 bytes;
    guint64 tick_bytes; /* bytes at the previous tick: during a sample
                           event, bytes - tick_bytes is the interval's */
    gint64 last_us;     /* last byte */
    gint64 end_us;
    gboolean ended;
    MpEndReason end; /* once `ended` */
    char *truncated; /* the record the stream ended inside, or NULL */
    gboolean partial;
    guint64 partial_offset; /* where the parser gave up */
    char *partial_why;
    GArray *series; /* guint64 bytes per MP_METRICS_INTERVAL_US */
} MpMetricsFlow;

typedef struct {
    guint index; /* 0, 1, ... in accept order */
    MpChanKind kind;
    char *peer; /* or NULL */
    gint64 open_us, kind_us;
    MpMetricsFlow dir[MP_DIR__MAX];
} MpMetricsChannel;

/* The downtime as the wire shows it (see metrics.c); relative times. */
typedef struct {
    gint64 stop_us;         /* -1: the guest has not stopped (yet) */
    gint64 resume_us;       /* where the downtime ends */
    const char *end_marker; /* what ends it, e.g. "return-path SHUT" */
    gint64 first_record_us; /* the first record of stop-and-copy */
    gint64 answer_us;       /* the destination's answer, or -1 */
    const char *answer;     /* what the answer was, or NULL */
} MpMetricsDowntime;

/* The latency histogram's buckets: bucket i counts latencies up to
 * mp_metrics_latency_le_us[i] microseconds (and above the bucket before);
 * the last bucket, whose bound is -1, counts the rest.  Steps of 1, 2, 5
 * from 100 us to 1 s: a page from a queue on loopback takes well under a
 * millisecond, one behind a slow link's backlog a good part of a second,
 * and the HTML report (report-html.c) draws the buckets as they are. */
#define MP_METRICS_LATENCY_BUCKETS 14
extern const gint64 mp_metrics_latency_le_us[MP_METRICS_LATENCY_BUCKETS];

/* Post-copy page requests and how long their pages took. */
typedef struct {
    guint64 answered;   /* a requested page came */
    guint64 unanswered; /* still waiting, or given up on (bounded table) */
    guint count;        /* latencies kept */
    gint64 p50_us, p99_us, max_us; /* 0 when count is 0 */
    guint histogram[MP_METRICS_LATENCY_BUCKETS]; /* of the `count` kept */
} MpMetricsPostcopy;

/* Live numbers, as of the last tick. */
typedef struct {
    double rate;       /* bytes/s over the last second */
    double pages_rate; /* pages/s */
    double dirty_rate; /* pages/s the guest dirties */
    double ram_sent;   /* share of RAM pages sent at least once */
    double eta_s;      /* -1: unknown */
} MpMetricsLive;

/* The link as its owner measured it (`migproxy source`: the tunnel's,
 * docs/tunnel.md "Link rate and pacing"); a value < 0 is not known. */
typedef struct {
    gint64 measured_bps, paced_bps; /* bits per second */
    double rtt_ms;
} MpMetricsLink;

/* How the session ended, once mp_metrics_finish() was called. */
typedef enum {
    MP_METRICS_OUTCOME_RUNNING,   /* not finished */
    MP_METRICS_OUTCOME_COMPLETED, /* "completed" */
    MP_METRICS_OUTCOME_TLS_CLEAN, /* "ended cleanly (TLS, not parsed)" */
    MP_METRICS_OUTCOME_FAILED,    /* "failed: ...", "interrupted: ..." */
} MpMetricsOutcome;

/* A presentation: told what changed, it reads the model (borrowed for
 * the call).  Every callback may be NULL.  Observers are told in the
 * order they were added. */
typedef struct MpMetricsObserver MpMetricsObserver;
struct MpMetricsObserver {
    void (*channel_open)(MpMetricsObserver *o, const MpMetrics *m,
                         guint channel, gint64 now_us);
    void (*channel_kind)(MpMetricsObserver *o, const MpMetrics *m,
                         guint channel, gint64 now_us);
    void (*partial)(MpMetricsObserver *o, const MpMetrics *m, guint channel,
                    MpDir dir, gint64 now_us);
    void (*channel_end)(MpMetricsObserver *o, const MpMetrics *m, guint channel,
                        MpDir dir, gint64 now_us);
    /* the analysis entered `phase` (a static string) */
    void (*phase)(MpMetricsObserver *o, const MpMetrics *m, const char *phase,
                  gint64 now_us);
    /* round `round` (1-based) is over: mp_analysis_round_json() has it */
    void (*round)(MpMetricsObserver *o, const MpMetrics *m, guint round,
                  gint64 now_us);
    /* a tick, `interval_us` (> 0) after the one before */
    void (*sample)(MpMetricsObserver *o, const MpMetrics *m, gint64 interval_us,
                   gint64 now_us);
    /* the session ended: the outcome is set */
    void (*finish)(MpMetricsObserver *o, const MpMetrics *m, gint64 now_us);
    void (*free)(MpMetricsObserver *o); /* NULL: nothing to free */
};

/* `session` numbers the session in every output; `start_wall_us` is
 * g_get_real_time() at `start_us` (0: unknown).
 * @return new metrics; free with mp_metrics_free(). */
MpMetrics *mp_metrics_new(guint session, gint64 start_wall_us, gint64 start_us);
void mp_metrics_free(MpMetrics *m); /* accepts NULL; frees the observers */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpMetrics, mp_metrics_free)

/* Takes ownership of `o`. */
void mp_metrics_add_observer(MpMetrics *m, MpMetricsObserver *o);

/* ---- feeding ---- */

/* Connection `channel` (0, 1, ... in accept order) opened; `peer` is
 * copied (may be NULL). */
void mp_metrics_channel_open(MpMetrics *m, guint channel, const char *peer,
                             gint64 now_us);
/* Its first bytes told what it carries. */
void mp_metrics_channel_kind(MpMetrics *m, guint channel, MpChanKind kind,
                             gint64 now_us);
/* `n` bytes passed in `dir` (counted whether parsed or not). */
void mp_metrics_bytes(MpMetrics *m, guint channel, MpDir dir, gsize n,
                      gint64 now_us);
/* One record parsed from `dir` of `channel` (borrowed for the call). */
void mp_metrics_record(MpMetrics *m, guint channel, MpDir dir,
                       const MpRecord *rec, gint64 now_us);
/* The parser of `dir` gave up at `offset`: from there on the bytes are
 * only counted.  `why` is copied; only the first call counts. */
void mp_metrics_partial(MpMetrics *m, guint channel, MpDir dir, guint64 offset,
                        const char *why, gint64 now_us);
/* `dir` ended, `how`; `truncated` (may be NULL, copied) says what record
 * the stream ended inside.  Only the first call counts. */
void mp_metrics_channel_end(MpMetrics *m, guint channel, MpDir dir,
                            MpEndReason how, const char *truncated,
                            gint64 now_us);
/* Every MP_METRICS_INTERVAL_US: the live numbers, new phases and
 * finished rounds, a sample to the observers. */
void mp_metrics_tick(MpMetrics *m, gint64 now_us);
/* The session ended.  `failure` (may be NULL: judged from the wire)
 * becomes the outcome, e.g. "interrupted" or "failed: ...".  Only the
 * first call counts. */
void mp_metrics_finish(MpMetrics *m, gint64 now_us, const char *failure);

/* ---- reading ---- */

/* The analysis the records go into.  @return borrowed. */
MpAnalysis *mp_metrics_analysis(const MpMetrics *m);
guint mp_metrics_session(const MpMetrics *m);
gint64 mp_metrics_start_wall_us(const MpMetrics *m);
/* @return the start as ISO 8601 in UTC (caller frees), or NULL. */
char *mp_metrics_start_time(const MpMetrics *m);
/* `now_us` relative to the session start. */
gint64 mp_metrics_rel(const MpMetrics *m, gint64 now_us);

/* Channels are numbered 0 .. mp_metrics_n_channels() - 1; a number never
 * opened has no entry.  @return borrowed, or NULL. */
guint mp_metrics_n_channels(const MpMetrics *m);
const MpMetricsChannel *mp_metrics_channel(const MpMetrics *m, guint index);

/* Bytes of every channel in both directions. */
guint64 mp_metrics_total_bytes(const MpMetrics *m);
/* The last byte of any channel, relative; -1: none. */
gint64 mp_metrics_last_us(const MpMetrics *m);

void mp_metrics_downtime(const MpMetrics *m, MpMetricsDowntime *out);
void mp_metrics_postcopy(const MpMetrics *m, MpMetricsPostcopy *out);
void mp_metrics_live(const MpMetrics *m, MpMetricsLive *out);
/* Set before a tick: the sample lines carry it.  @return FALSE (and
 * nothing in `out`) while none was set. */
void mp_metrics_set_link(MpMetrics *m, const MpMetricsLink *link);
gboolean mp_metrics_link(const MpMetrics *m, MpMetricsLink *out);
/* Set before a tick (takes `encoders`; NULL: none): the embedder's
 * per-encoder counters (`migproxy source`: mp_tun_mux_encoders()), which
 * the sample lines carry as they are.  Borrowed from the model. */
void mp_metrics_set_encoders(MpMetrics *m, json_object *encoders);
json_object *mp_metrics_encoders(const MpMetrics *m);

MpMetricsOutcome mp_metrics_outcome(const MpMetrics *m);
/* "completed", "failed: ...", ...; NULL while running. */
const char *mp_metrics_outcome_text(const MpMetrics *m);
