/* capture-read.h: reads a relay capture directory (docs/capture-format.md)
 * back through the same parsers and metrics the relay ran live. */
#pragma once

#include <glib.h>
#include <json-c/json.h>
#include "channel-types.h"
#include "vmdesc.h"
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

/* What mp_capture_walk() tells, in the order the relay read the chunks
 * (all channels merged by their timestamps, microseconds from the
 * session's start).  Only the direction towards the destination. */
typedef struct {
    /* Channel `channel` of the session: its kind as the capture names it
     * ("main", "multifd", "preempt", ...; may be NULL), when it opened.
     * Told for every channel, in channel order, before any data. */
    void (*channel)(gpointer data, guint channel, const char *kind,
                    gint64 open_us);
    /* The next `len` bytes the source sent on `channel` (borrowed for the
     * call).  @return FALSE to stop the walk. */
    gboolean (*data)(gpointer data, guint channel, gint64 time_us,
                     const guint8 *buf, gsize len);
    /* The source's side of `channel` ended `how` (may be NULL). */
    void (*end)(gpointer data, guint channel, MpEndReason how, gint64 time_us);
    /* The vmdesc the main channel's stream ends with (pre-copy), before
     * any data (borrowed: take a reference to keep it; may be NULL). */
    void (*vmdesc)(gpointer data, MpVmdesc *vmdesc);
} MpCaptureWalk;

/* Walks session `session` (0: the first) of the capture in `dir`, the
 * chunks as the relay read them.  A walker that stops is no error.
 * @return FALSE with an error naming the file and what is wrong with it
 * (the walk may have told part of the capture before it). */
gboolean mp_capture_walk(const char *dir, guint session,
                         const MpCaptureWalk *walk, gpointer data,
                         GError **error);
/* The same, with `ops` (and `data`) also observing every pipeline of the
 * session (`migproxy plan` reads its pages); `ops` may be NULL. */
json_object *mp_capture_analyze_observed(const char *dir, guint session,
                                         gboolean events,
                                         const MpPipelineObserver *ops,
                                         gpointer data, gboolean *ok);
