/* metrics-report.h: the metrics model as one JSON document, the report
 * of a session (--report, and `migproxy analyze DIR` of a capture): the
 * analysis document plus session, outcome, start_time, total_ms,
 * downtime_ms, downtime{}, phases[], postcopy{requests, latency_us, ...},
 * channels[] and partial.  The keys are described in docs/relay.md. */
#pragma once

#include <json-c/json.h>
#include "metrics.h"

/* @return the report (caller owns). */
json_object *mp_metrics_report(const MpMetrics *m);

/* Milliseconds with microsecond digits, printed as such ("17.248": json-c
 * would print 17.248000000000001).  @return NULL for a negative time. */
json_object *mp_metrics_json_ms(gint64 us);
