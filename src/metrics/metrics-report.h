/* metrics-report.h: the metrics model as one JSON document, the report
 * of a session (--report, and `migproxy analyze DIR` of a capture): the
 * analysis document plus schema, session, outcome, start_time, total_ms,
 * downtime_ms, downtime{}, phases[], postcopy{requests, latency_us, ...},
 * channels[] and partial.  The keys are described in docs/relay.md and
 * docs/schema/report.schema.json. */
#pragma once

#include <json-c/json.h>
#include "metrics.h"

/* The version of migproxy's JSON output, the "schema" key of every
 * report, --metrics line and `analyze --json` document (docs/schema/):
 * additions keep it; a key removed, renamed or whose meaning or unit
 * changes bumps it (docs/relay.md, "Machine-readable output"). */
#define MP_JSON_SCHEMA_VERSION 1

/* @return a new object: "schema" first, then the members of `doc`
 * (taken). */
json_object *mp_json_with_schema(json_object *doc);

/* @return the report (caller owns). */
json_object *mp_metrics_report(const MpMetrics *m);

/* Milliseconds with microsecond digits, printed as such ("17.248": json-c
 * would print 17.248000000000001).  @return NULL for a negative time. */
json_object *mp_metrics_json_ms(gint64 us);
