/* analyze-file.h: analysis of one stream file (plain or zstd). */
#pragma once

#include <glib.h>
#include <json-c/json.h>
#include "pipeline.h"

typedef struct {
    gboolean json;      /* (used by the command) */
    gboolean events;    /* print every record on stdout */
    gboolean no_vmdesc; /* do not slice device sections with the vmdesc */
    gboolean quiet;     /* no progress on stderr */
    char *dump_ram;     /* write RAM images into this directory */
    char *snapshot;     /* qcow2: analyze this snapshot's VM state */
    /* also observes every pipeline of the (first) migration: stream
     * files, captures, pcaps (`migproxy plan` reads the pages); NULL:
     * none */
    const MpPipelineObserver *observer;
    gpointer observer_data;
} MpAnalyzeOptions;

/* Analyzes `path` into a JSON document (mp_analysis_to_json plus
 * "schema" and "file"; docs/schema/analyze.schema.json).
 * *ok is FALSE when the file could not be read or holds an invalid
 * stream; the reasons are in the document's errors[].
 * @return the document; the caller owns it. */
json_object *mp_analyze_file(const char *path, const MpAnalyzeOptions *opt,
                             gboolean *ok);
