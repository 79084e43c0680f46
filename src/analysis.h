/* analysis.h: what a migration stream contains, aggregated from records.
 *
 * Feeds on the records of the parsers (any channel) and produces one JSON
 * document: the model behind `analyze --json`, the human summary, and the
 * relay's report.  Rounds, phases and the recognition rules are described
 * in docs/rounds.md.
 */
#pragma once

#include <stdio.h>
#include <glib.h>
#include <json-c/json.h>
#include "mp-record.h"
#include "vmdesc.h"

typedef struct MpAnalysis MpAnalysis;

MpAnalysis *mp_analysis_new(void);
void mp_analysis_free(MpAnalysis *a); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpAnalysis, mp_analysis_free)

/* Adds one record of the main channel (or of the preempt channel). */
void mp_analysis_record(MpAnalysis *a, const MpRecord *rec);

/* The stream's vmdesc, for device field lists.  Takes a reference. */
void mp_analysis_set_vmdesc(MpAnalysis *a, MpVmdesc *vmdesc);

/* Current time in microseconds for live streams (rounds get times);
 * never called for files. */
void mp_analysis_set_time(MpAnalysis *a, gint64 now_us);

/* An error that stopped parsing (goes to errors[]). */
void mp_analysis_error(MpAnalysis *a, const GError *err);
/* Something odd but not fatal (goes to anomalies[]). */
void mp_analysis_anomaly(MpAnalysis *a, const char *fmt, ...)
    G_GNUC_PRINTF(2, 3);

/* The stream ended (total bytes of the stream). */
void mp_analysis_finish(MpAnalysis *a, guint64 stream_bytes);

/* @return a new JSON document (caller owns it; json_object_put). */
json_object *mp_analysis_to_json(const MpAnalysis *a);

/* The human summary of a document made by mp_analysis_to_json. */
void mp_analysis_print(json_object *doc, FILE *out);
