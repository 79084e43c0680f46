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

/* Adds one record of any channel of a live migration: main, preempt,
 * return path (MP_REC_RP_*) or multifd (MP_REC_MFD_*).  `channel` tells
 * the channels apart (0 is the main channel): pages of one channel come in
 * the order of the dirty-page scan, pages of different multifd channels
 * do not (docs/rounds.md). */
void mp_analysis_record_on(MpAnalysis *a, guint channel,
                           const MpRecord *rec);

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

/* Bytes of a channel were missing (a capture's gap): the current round
 * and the totals are marked "after_gap" (their counts may be low).  An
 * MP_REC_RESYNC record marks the round it comes in as well. */
void mp_analysis_mark_gap(MpAnalysis *a);

/* The stream ended (total bytes of the stream). */
void mp_analysis_finish(MpAnalysis *a, guint64 stream_bytes);

/* @return a new JSON document (caller owns it; json_object_put). */
json_object *mp_analysis_to_json(const MpAnalysis *a);

/* Where a live migration stands, for progress displays. */
typedef struct {
    const char *phase;         /* "setup", "precopy", "stop-copy", ... */
    guint rounds;              /* rounds so far (the last one may go on) */
    guint64 ram_total;         /* bytes of RAM (block list) */
    guint64 pages;             /* page records of any kind */
    guint64 distinct_pages;    /* pages sent at least once */
    guint64 round_pages;       /* pages of the last round */
    guint64 round_dirty_pages; /* of which sent in an earlier round */
    guint64 prev_round_pages;  /* pages of the round before it */
    gint64 round_start_us;     /* -1 for files */
    guint64 postcopy_requests;
    gint64 stop_us;     /* start of stop-and-copy, or -1 */
    gint64 postcopy_us; /* start of post-copy, or -1 */
    gboolean eof;       /* QEMU_VM_EOF seen */
    /* pages the guest dirties per second, live: the pages a round sends
     * again were dirtied while the round before it was sent */
    double dirty_pages_per_s;
} MpAnalysisProgress;

void mp_analysis_progress(const MpAnalysis *a, MpAnalysisProgress *out);

/* Round `index` (1-based) as in rounds[] of the document.
 * @return a new object (caller owns), or NULL if there is no such round. */
json_object *mp_analysis_round_json(const MpAnalysis *a, guint index);

/* The human summary of a document made by mp_analysis_to_json. */
void mp_analysis_print(json_object *doc, FILE *out);
