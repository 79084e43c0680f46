/* metrics-progress.h: the metrics model as a one-line live display on a
 * terminal, drawn again at every tick and erased at the end:
 *   session 1: round 2 precopy | RAM  87% sent | 112 MB/s | dirty 1200
 *   pages/s | ETA 0.4 s
 */
#pragma once

#include <stdio.h>
#include "metrics.h"

/* Draws the line of `m` on `out` (not owned: a terminal, stderr). */
void mp_metrics_progress_attach(MpMetrics *m, FILE *out);
