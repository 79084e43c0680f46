/* metrics-out.h: where the --metrics lines go: a file, the standard
 * output, or a listening Unix stream socket.
 *
 *   FILE        created 0600 and renamed over FILE (out-file.h); a line
 *               that cannot be written is cut off again and no later
 *               line is written
 *   -           the standard output (logs and the progress line stay on
 *               stderr); written like the file, one write() a line, and
 *               once a write fails no later line is written
 *   unix:PATH   a stream socket someone listens on.  The relay's event
 *               loop never waits for it: each line is queued whole in a
 *               buffer of MP_METRICS_OUT_QUEUE bytes and sent when the
 *               socket takes it; a line that does not fit (the reader is
 *               slow) is dropped and counted, and so are the lines queued
 *               when the reader goes away.  A line to write while not
 *               connected tries to reconnect, at most once per backoff
 *               (1 s, doubling to 60 s while it fails); in between lines
 *               are dropped and counted.  The reader gets whole lines
 *               only, except the one it was in the middle of when it
 *               went away.
 *
 * mp_metrics_out_status() is the report's `outputs.metrics`.
 */
#pragma once

#include <glib.h>
#include <json-c/json.h>

#define MP_METRICS_OUT_QUEUE        (256u << 10) /* unix: bytes queued at most */
#define MP_METRICS_OUT_RETRY_MIN_US G_USEC_PER_SEC
#define MP_METRICS_OUT_RETRY_MAX_US (60 * G_USEC_PER_SEC)

typedef struct MpMetricsOut MpMetricsOut;

/* Opens `target` ("-", "unix:PATH" or a file path).  A socket must be
 * listening already: a mistyped path is an error now, not lines dropped
 * for the whole migration.  A socket that takes a line only in part is
 * watched on the default main context (the relay's loop).
 * @return the output, or NULL with @error. */
MpMetricsOut *mp_metrics_out_new(const char *target, GError **error);
void mp_metrics_out_free(MpMetricsOut *o); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpMetricsOut, mp_metrics_out_free)

/* Writes `line` and a newline (see above: never blocks for a socket).
 * `now_us` is monotonic time (reconnection backoff). */
void mp_metrics_out_write(MpMetricsOut *o, const char *line, gint64 now_us);

/* {file | stdout | socket, complete, lines, error, offset, dropped_lines,
 * connects, connected} (report.schema.json, outputs.metrics).
 * @return a new object (caller owns). */
json_object *mp_metrics_out_status(const MpMetricsOut *o);

/* unix: lines dropped so far. */
guint64 mp_metrics_out_dropped(const MpMetricsOut *o);
