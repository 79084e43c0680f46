/* metrics-lines.h: the metrics model as JSON lines while a session runs
 * (--metrics): session-start, channel-open, channel-kind, partial,
 * channel-end, phase, round, sample (every tick) and session-end, one
 * JSON object a line, each with "event", "session" and "t_ms".  The keys
 * are described in docs/relay.md. */
#pragma once

#include "metrics.h"
#include "out-file.h"

/* Writes the session-start line now and every later event of `m` to
 * `lines` (not owned: it must outlive `m`). */
void mp_metrics_lines_attach(MpMetrics *m, MpOutLines *lines);
