/* cmd-relay.c: `migproxy relay`, the live relay between a source and a
 * destination QEMU (relay.c), with its command line, log output and
 * signal handling. */
#include "config.h"
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <glib.h>
#include <glib-unix.h>
#include "commands.h"
#include "parse-common.h"
#include "rate-pacer.h"
#include "relay.h"
#include "cli-log.h"

/* The log lines ("migproxy relay [  2.1 s] message", cli-log.h) and the
 * relay the signal handlers stop. */
typedef struct {
    MpCliLog log;
    MpRelay *relay;
} LogContext;

/* SIGINT, SIGTERM and SIGHUP (the terminal the relay was started from
 * went away) all stop it cleanly; g_unix_signal_add passes no signal
 * number, so each source carries its name. */
typedef struct {
    LogContext *lc;
    const char *name;
    int signum;
    guint source;
} StopSignal;

static gboolean
on_stop_signal(gpointer user_data)
{
    const StopSignal *s = user_data;
    mp_relay_stop(s->lc->relay, s->name);
    return G_SOURCE_CONTINUE;
}

typedef struct {
    char *listen, *to, *metrics, *report, *capture, *rate, *queue;
    GStrv allow;
    gboolean once, quiet, verbose, no_progress, no_zero_pages, no_priority;
    gint connect_timeout, handshake_timeout;
} RelayArgs;

static void
relay_args_clear(RelayArgs *a)
{
    g_free(a->listen);
    g_free(a->to);
    g_free(a->metrics);
    g_free(a->report);
    g_free(a->capture);
    g_free(a->rate);
    g_free(a->queue);
    g_strfreev(a->allow);
}

/* Runs the relay the parsed arguments `a` (caller keeps ownership) and
 * the remaining `argv` describe. */
static int
relay_with(const RelayArgs *a, int argc, char **argv)
{
    g_autoptr(GError) err = NULL;
    const char *listen = a->listen, *to = a->to;
    gboolean once = a->once, quiet = a->quiet;

    if (!listen || !to) {
        fprintf(stderr, "migproxy relay: --listen and --to are required\n"
                        "(see migproxy relay --help)\n");
        return 2;
    }
    if (argc > 1) {
        fprintf(stderr, "migproxy relay: unexpected argument '%s'\n", argv[1]);
        return 2;
    }
    if (a->connect_timeout <= 0 || a->handshake_timeout <= 0) {
        fprintf(stderr, "migproxy relay: timeouts are positive "
                        "milliseconds\n");
        return 2;
    }

    guint64 rate_bytes = 0, queue_bytes = 0;
    if (a->rate && !(rate_bytes = mp_rate_parse(a->rate, &err))) {
        fprintf(stderr, "migproxy relay: --rate: %s\n", err->message);
        return 2;
    }
    if (a->queue
        && (queue_bytes = mp_size_parse(a->queue, &err)) < (64u << 10)) {
        fprintf(stderr, "migproxy relay: --queue: %s\n",
                err ? err->message : "at least 64K");
        return 2;
    }

    gboolean tty = isatty(STDERR_FILENO) && !a->no_progress && !quiet;
    LogContext lc = {.log = {.tag = "migproxy relay",
                             .start_us = g_get_monotonic_time(),
                             .verbose = a->verbose,
                             .tty = tty}};
    mp_cli_log_install(&lc.log);
    signal(SIGPIPE, SIG_IGN);

    MpRelayOptions opt = {
        .listen = listen,
        .to = to,
        .metrics = a->metrics,
        .report = a->report,
        .capture = a->capture,
        .once = once,
        .quiet = quiet,
        .progress = tty,
        .connect_timeout_ms = a->connect_timeout,
        .handshake_timeout_ms = a->handshake_timeout,
        .no_zero_pages = a->no_zero_pages,
        .no_priority = a->no_priority,
        .rate = rate_bytes,
        .queue = queue_bytes,
        .allow = (const char *const *)a->allow,
    };
    g_autoptr(MpRelay) relay = mp_relay_new(&opt, &err);
    if (!relay) {
        fprintf(stderr, "migproxy relay: %s\n", err->message);
        return 1;
    }
    lc.relay = relay;
    StopSignal stops[] = {
        {&lc, "SIGINT", SIGINT, 0},
        {&lc, "SIGTERM", SIGTERM, 0},
        {&lc, "SIGHUP", SIGHUP, 0},
    };
    for (guint i = 0; i < G_N_ELEMENTS(stops); i++)
        stops[i].source =
            g_unix_signal_add(stops[i].signum, on_stop_signal, &stops[i]);
    if (!quiet)
        g_message("listening on %s, relaying to %s%s",
                  mp_relay_listen_address(relay), to,
                  once ? " (one migration)" : "");
    int status = mp_relay_run(relay);
    for (guint i = 0; i < G_N_ELEMENTS(stops); i++)
        g_source_remove(stops[i].source);
    g_clear_pointer(&relay, mp_relay_free);
    return status;
}

static GOptionEntry *
relay_entries(gpointer store)
{
    RelayArgs *a = store;
    const GOptionEntry entries[] = {
        {"listen", 'l', 0, G_OPTION_ARG_STRING, &a->listen,
         "Where the source migrates to (required): HOST:PORT, or unix:PATH "
         "for a source QEMU on this host (a socket only this user may open; "
         "--allow does not apply)",
         "HOST:PORT|unix:PATH"},
        {"to", 't', 0, G_OPTION_ARG_STRING, &a->to,
         "The destination QEMU's -incoming address (required)", "HOST:PORT"},
        {"allow", 'a', 0, G_OPTION_ARG_STRING_ARRAY, &a->allow,
         "Accept connections only from this address or network (repeat "
         "for more; default: any address that can reach --listen). Others "
         "are closed at once",
         "ADDR[/PREFIX]"},
        {"metrics", 'm', 0, G_OPTION_ARG_FILENAME, &a->metrics,
         "Write metrics as JSON lines while the migration runs (a sample "
         "every 100 ms, phases, rounds, the end; "
         "docs/schema/metrics-line.schema.json): to FILE (replaced, never "
         "written through a link), to stdout with '-' (logs stay on "
         "stderr), or with unix:PATH to a listening Unix stream socket "
         "(never waited for: lines a slow or absent reader cannot take "
         "are dropped and counted in the report)",
         "FILE|-|unix:PATH"},
        {"report", 'r', 0, G_OPTION_ARG_FILENAME, &a->report,
         "Write one JSON document per migration when it ends: pages, "
         "rounds, downtime, post-copy latency, channels; the first goes to "
         "FILE, the Nth to FILE with -N before its extension (report.json, "
         "report-2.json, ...)",
         "FILE"},
        {"capture", 'c', 0, G_OPTION_ARG_FILENAME, &a->capture,
         "Record every connection, both directions, with timestamps, into "
         "DIR, which must be new or empty (read it with 'migproxy analyze "
         "DIR')",
         "DIR"},
        {"once", '1', 0, G_OPTION_ARG_NONE, &a->once,
         "Exit when the first migration ends (status 0 if it completed)", NULL},
        {"quiet", 'q', 0, G_OPTION_ARG_NONE, &a->quiet,
         "Only warnings and errors on stderr", NULL},
        {"no-progress", 0, 0, G_OPTION_ARG_NONE, &a->no_progress,
         "Log lines instead of the live progress line on a terminal", NULL},
        {"verbose", 'v', 0, G_OPTION_ARG_NONE, &a->verbose,
         "Also log every connection and channel event", NULL},
        {"no-zero-pages", 0, 0, G_OPTION_ARG_NONE, &a->no_zero_pages,
         "Forward all-zero pages as they came (by default a full page of "
         "zeros becomes a ZERO record: 1 byte instead of 4096)",
         NULL},
        {"rate", 0, 0, G_OPTION_ARG_STRING, &a->rate,
         "Send towards the destination at most RATE, written as tc writes "
         "rates (95mbit, 1gbit, 12mbps), just below the link's rate, so "
         "that nothing queues in the network and requested post-copy pages "
         "get through at once. Default: for a migration with post-copy "
         "enabled, 97 % of the rate the relay measured while the path to "
         "the destination held it back (90 % for the first 0.5 s); no pacing "
         "when the path never did (a fast link, QEMU's max-bandwidth)",
         "RATE"},
        {"queue", 0, 0, G_OPTION_ARG_STRING, &a->queue,
         "In post-copy, read the main channel ahead from the source up to "
         "SIZE (K, M, G): the queue in which requested pages go ahead, and "
         "the relay's memory bound for it. Default: the guest's RAM (from "
         "the stream) plus 0.2 % and 1 MiB, so that QEMU sends a requested "
         "page at once, within a quarter of the host's MemAvailable and "
         "8G, at least 16M; allocated as it fills, except that once the "
         "stream advises post-copy its first 512M at most are faulted in "
         "during pre-copy. Before post-copy the relay queues 1 MiB per "
         "connection at most",
         "SIZE"},
        {"no-priority", 0, 0, G_OPTION_ARG_NONE, &a->no_priority,
         "Post-copy: forward requested pages in stream order (by default "
         "a page the destination asked for goes ahead of the queue)",
         NULL},
        {"connect-timeout", 0, 0, G_OPTION_ARG_INT, &a->connect_timeout,
         "Give up connecting to the destination after MS (default 10000)",
         "MS"},
        {"handshake-timeout", 0, 0, G_OPTION_ARG_INT, &a->handshake_timeout,
         "Close a new connection whose first bytes do not show a migration "
         "channel (a stream header and its first record, a multifd "
         "handshake, ...) after MS (default 10000)",
         "MS"},
        {NULL},
    };
    return g_memdup2(entries, sizeof(entries));
}

static int
relay_run(int argc, char **argv)
{
    RelayArgs a = {.connect_timeout = 10000, .handshake_timeout = 10000};
    g_autofree GOptionEntry *entries = relay_entries(&a);
    g_autoptr(GOptionContext) oc = mp_command_context(&mp_cmd_relay, entries);
    g_autoptr(GError) err = NULL;

    if (!g_option_context_parse(oc, &argc, &argv, &err)) {
        fprintf(stderr, "migproxy relay: %s\n(see migproxy relay --help)\n",
                err->message);
        relay_args_clear(&a);
        return 2;
    }
    int status = relay_with(&a, argc, argv);
    relay_args_clear(&a);
    return status;
}

const MpCommand mp_cmd_relay = {
    .name = "relay",
    .purpose = "relay a live migration between two QEMUs, measuring it on "
               "the wire",
    .summary =
        "Relay a live migration between two QEMUs and measure it on the "
        "wire.\n\n"
        "The source QEMU migrates to --listen instead of to the destination; "
        "the relay opens the same connections to --to, in the same order, "
        "and forwards the stream in both directions, so neither QEMU can "
        "tell it is there. Only where the destination's memory comes out "
        "the same does it change a record: a page of zeros is sent as a "
        "ZERO record (--no-zero-pages: not), and in post-copy a page the "
        "destination asked for goes ahead of the queued ones (--no-priority: "
        "not; see --rate and --queue). Every channel is parsed on the way "
        "(main channel and return path, multifd, postcopy-preempt, postcopy "
        "recovery): rounds, pages by kind, phases, the downtime as seen on "
        "the wire, post-copy page-request latency, multifd bytes. A channel "
        "the parsers cannot follow (TLS, an unknown section) is still "
        "forwarded byte for byte; its metrics are marked partial.",
    .description =
        "Examples:\n"
        "  # 1. the destination QEMU waits for the stream, as usual\n"
        "  qemu-system-x86_64 ... -incoming tcp:127.0.0.1:5555\n\n"
        "  # 2. the relay listens where the source will migrate to\n"
        "  migproxy relay --listen 127.0.0.1:4444 --to 127.0.0.1:5555 \\\n"
        "      --report report.json --metrics metrics.jsonl --once\n\n"
        "  # 3. the source migrates to the relay (monitor or QMP); set "
        "capabilities\n"
        "  #    (multifd, postcopy-ram, xbzrle, ...) on both QEMUs as for a "
        "direct\n"
        "  #    migration, the relay needs no option for them\n"
        "  (qemu) migrate -d tcp:127.0.0.1:4444\n"
        "  {\"execute\": \"migrate\", \"arguments\": {\"uri\": "
        "\"tcp:127.0.0.1:4444\"}}\n\n"
        "  # between two hosts: listen on the address the source reaches,\n"
        "  # and let only the source host in; everything recorded\n"
        "  migproxy relay -l 10.0.0.2:4444 -t 10.0.0.3:5555 --allow 10.0.0.1 "
        "\\\n"
        "      --capture cap/ --once\n"
        "  migproxy analyze cap/\n\n"
        "  # metrics lines to a pipe, or to a monitor's Unix socket\n"
        "  migproxy relay -l 127.0.0.1:4444 -t 127.0.0.1:5555 --metrics - "
        "| jq -c 'select(.event == \"sample\")'\n"
        "  migproxy relay -l 127.0.0.1:4444 -t 127.0.0.1:5555 "
        "--metrics unix:/run/mon/migproxy.sock\n\n"
        "Who may migrate: like QEMU's own -incoming tcp:, the relay "
        "authenticates no one. Anyone who can reach --listen can start a "
        "migration to the destination (0.0.0.0 means every interface of "
        "this host); --allow limits that to the source hosts. The channels "
        "of a migration must come from its main channel's address and pass "
        "checks of their first bytes before anything reaches the "
        "destination. On an untrusted network use QEMU's tls-creds: the "
        "relay then forwards the encrypted channels and measures timing "
        "only. See docs/relay.md.\n\n"
        "Sessions: one migration at a time goes through a relay. Without "
        "--once it "
        "serves one migration after another (each with its own report: "
        "report.json, report-2.json, ...; the report names its session) "
        "until SIGINT, SIGTERM or SIGHUP (its terminal closed), which close "
        "every connection and write the reports. A client that is not QEMU "
        "never reaches the destination: it is logged and closed; a second "
        "migration while one runs is refused. The metrics and the report "
        "are described in docs/relay.md, the capture format in "
        "docs/capture-format.md.\n\n"
        "Files: the report, the metrics and the capture are readable by "
        "their user only (0600, the capture directory 0700), and never "
        "written through a symbolic link or into a file that was there: a "
        "report or metrics file is replaced (written under a temporary "
        "name and renamed), a capture directory must be new or empty. A "
        "capture whose disk fails or falls behind by more than 64 MiB "
        "stops with an error (the migration goes on) and the report says "
        "where and why (outputs.capture); so for the metrics file "
        "(outputs.metrics).\n\n"
        "JSON: the report and every metrics line carry \"schema\": 1, "
        "the version of the JSON Schemas in docs/schema/ that describe "
        "them; additions keep the number, a key removed or changed in "
        "meaning bumps it.\n\n"
        "Exit status: 0; with --once, 1 if the migration did not complete "
        "or its report could not be written; 2 on usage errors.",
    .entries = relay_entries,
    .store_size = sizeof(RelayArgs),
    .run = relay_run,
};
