/* pcap-read.h: `migproxy analyze` of a packet capture (pcap, pcapng):
 * its migration connections, found by their content on any port and
 * grouped into sessions, replayed through the same session pipelines and
 * metrics as the relay's (session.h) with the packets' timestamps. */
#pragma once

#include <glib.h>
#include <json-c/json.h>
#include "pipeline.h"

/* Analyzes capture `path` (see docs/pcap.md): the report of its first
 * migration session (as mp_capture_analyze() gives it for a relay
 * capture) plus "pcap" (what the reader saw: link type, packets,
 * connections, the skipped ones and why, gaps, sessions[]) and
 * "more_sessions" (the reports of the other sessions, if any).
 * `events`: print every record on stdout ("s1 c0 to-dst off=..." lines).
 * `window`: reassembly bytes held per direction (0: the default).
 * *ok is FALSE when the capture cannot be read, holds no migration, or a
 * channel is partial (a gap its parser did not resume after, a parser
 * that gave up); errors[] says why.  Gaps that were resumed after are in
 * pcap.gap_list and anomalies[], and mark the counts "after_gap".
 * @return the document (caller owns). */
json_object *mp_pcap_analyze(const char *path, gboolean events, gsize window,
                             gboolean *ok);
/* The same, with `ops` (and `data`) also observing the pipelines of the
 * first session, the one the document reports (`migproxy plan` reads its
 * pages); `ops` may be NULL. */
json_object *mp_pcap_analyze_observed(const char *path, gboolean events,
                                      gsize window,
                                      const MpPipelineObserver *ops,
                                      gpointer data, gboolean *ok);
