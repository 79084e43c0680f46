/* cli-log.c: log lines of the long-running commands (see cli-log.h). */
#include "config.h"
#include <stdio.h>
#include <string.h>
#include <glib.h>
#include "cli-log.h"
#include "parse-common.h"

static GLogWriterOutput
log_writer(GLogLevelFlags level, const GLogField *fields, gsize n_fields,
           gpointer user_data)
{
    MpCliLog *lc = user_data;
    const char *message = NULL;

    if ((level & G_LOG_LEVEL_DEBUG) && !lc->verbose)
        return G_LOG_WRITER_HANDLED;
    for (gsize i = 0; i < n_fields; i++)
        if (strcmp(fields[i].key, "MESSAGE") == 0)
            message = fields[i].value;
    /* no log line can clear the terminal or forge a line of its own */
    g_autofree char *clean = NULL;
    for (const char *p = message; p && *p; p++) {
        if ((guchar)*p < 0x20 || (guchar)*p >= 0x7f) {
            message = clean = mp_printable(message);
            break;
        }
    }
    const char *tag = level & (G_LOG_LEVEL_ERROR | G_LOG_LEVEL_CRITICAL)
                          ? "error: "
                      : level & G_LOG_LEVEL_WARNING ? "warning: "
                                                    : "";
    fprintf(stderr, "%s%s [%6.1f s] %s%s\n", lc->tty ? "\r\033[K" : "",
            lc->tag, (g_get_monotonic_time() - lc->start_us) / 1e6, tag,
            message ? message : "");
    fflush(stderr);
    return G_LOG_WRITER_HANDLED;
}

void
mp_cli_log_install(MpCliLog *log)
{
    g_log_set_writer_func(log_writer, log, NULL);
}
