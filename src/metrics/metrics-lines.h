/* metrics-lines.h: the metrics model as JSON lines while a session runs
 * (--metrics): session-start, channel-open, channel-kind, partial,
 * channel-end, phase, round, sample (every tick) and session-end, one
 * JSON object a line, each with "schema", "event", "session" and (all but
 * session-start) "t_ms".  The keys are described in docs/relay.md and
 * docs/schema/metrics-line.schema.json. */
#pragma once

#include "metrics.h"
#include "metrics-out.h"

/* Writes the session-start line now and every later event of `m` to
 * `out` (not owned: it must outlive `m`). */
void mp_metrics_lines_attach(MpMetrics *m, MpMetricsOut *out);
