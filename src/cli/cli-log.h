/* cli-log.h: the log lines of the long-running commands (`migproxy
 * relay`, `source`, `dest`): "migproxy dest [  2.1 s] message", one line
 * each on stderr, escaped so that no line can clear the terminal or forge
 * another; on a terminal a progress line is erased first (it is drawn
 * again at the next tick). */
#pragma once

#include <glib.h>

typedef struct {
    const char *tag;  /* "migproxy dest" */
    gint64 start_us;
    gboolean verbose; /* debug messages too */
    gboolean tty;     /* a progress line may be drawn: erase it first */
} MpCliLog;

/* Sends every glib log message of the process to `log` (which must
 * outlive the process's logging). */
void mp_cli_log_install(MpCliLog *log);
