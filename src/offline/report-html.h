/* report-html.h: `migproxy report`, an analysis as one HTML page.
 *
 * The page is drawn from the document `analyze --json` prints (made by
 * mp_analyze_file()), nothing else, so that its numbers are analyze's:
 * the summary table, dirty pages per round, bandwidth over time (where
 * the input has times: a capture directory or a packet capture), page
 * kinds, device state sizes and the post-copy latency histogram.  Charts
 * are SVG written here; the page loads nothing (its Content-Security-
 * Policy forbids every fetch and every script), scales to a phone and
 * prints.  docs/report.md describes it.
 *
 * Every number drawn or tabled from the document carries where it came
 * from, so that a test can compare the page with `analyze --json`:
 *   data-src="PATH" data-v="NUMBER"
 * PATH is the value's place in the document, keys and array indices
 * joined by dots ("rounds.2.dirty_pages"); a "*" segment stands for every
 * element of an array and "[A:B]" for the elements A .. B-1, the number
 * then being the sum of the values the path reaches
 * ("channels.*.to_dst.series.bytes.[0:5]"); a final "#" is an array's
 * length ("rounds.#").  Each chart is an <svg class="chart"
 * data-chart="NAME">.
 */
#pragma once

#include <glib.h>
#include <json-c/json.h>

/* @return the page for `doc` (an analyze document of one stream or one
 * session; a pcap document's first session), the caller's to free. */
GString *mp_report_html(json_object *doc);
