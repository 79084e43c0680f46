/* capture-read.h: reads a relay capture directory (docs/capture-format.md)
 * back through the same parsers and metrics the relay ran live. */
#pragma once

#include <glib.h>
#include <json-c/json.h>
#include "pipeline.h"

/* @return TRUE if `path` is a directory holding a capture index.json. */
gboolean mp_capture_is_dir(const char *path);

/* Replays session `session` of the capture in `dir` (0: the first one) in
 * the order its chunks were read, and reports it as the relay did: the
 * analysis document (ram, rounds, devices, ...) plus channels[],
 * downtime_ms, total_ms, postcopy.latency_us, "capture" and
 * "capture_sessions" (the session numbers in the capture).
 * `events`: print every record on stdout ("s1 c0 to-dst off=..." lines).
 * *ok is FALSE when the capture cannot be read or a channel could not be
 * parsed; the reasons are in errors[].
 * @return the document (caller owns). */
json_object *mp_capture_analyze(const char *dir, guint session, gboolean events,
                                gboolean *ok);
/* The same, with `ops` (and `data`) also observing every pipeline of the
 * session (`migproxy plan` reads its pages); `ops` may be NULL. */
json_object *mp_capture_analyze_observed(const char *dir, guint session,
                                         gboolean events,
                                         const MpPipelineObserver *ops,
                                         gpointer data, gboolean *ok);
