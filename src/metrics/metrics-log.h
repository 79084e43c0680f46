/* metrics-log.h: the metrics model as log lines (g_message): a line when
 * the session enters a phase and when a round is over, and the one-line
 * summary logged at the end. */
#pragma once

#include "metrics.h"

/* Logs the phases and rounds of `m` from now on. */
void mp_metrics_log_attach(MpMetrics *m);

/* @return the summary (caller frees): "session 1 completed: 2.1 s,
 * downtime 12 ms on the wire, pages normal ..., 3 rounds, 210.4 MiB". */
char *mp_metrics_summary(const MpMetrics *m);
