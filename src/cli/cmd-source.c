/* cmd-source.c: `migproxy source`, the end of the tunnel next to the
 * source QEMU: the relay (admission, pipelines, metrics, report, capture)
 * whose destination is the tunnel (src/tunnel/tunnel-source.h). */
#include "config.h"
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <glib.h>
#include <glib-unix.h>
#include "cli-log.h"
#include "commands.h"
#include "heap-reuse.h"
#include "out-file.h"
#include "rate-pacer.h"
#include "relay.h"
#include "tunnel-frame.h"
#include "tunnel-mux.h"
#include "tunnel-source.h"

#define FINISH_TIMEOUT_MS 30000

typedef struct {
    char *peer, *metrics, *report, *capture, *rate;
    char *tls_cert, *tls_key, *tls_ca, *tls_name;
    GStrv allow, listen;
    gboolean once, quiet, verbose, no_progress, no_compress, no_zero_pages;
    gboolean no_zero_runs, no_delta, no_dedup, no_pages, no_adapt, no_lift;
    gint level, connect_timeout, workers, resume_timeout, ping_timeout;
    char *cache;
} SourceArgs;

static void
source_args_clear(SourceArgs *a)
{
    g_strfreev(a->listen);
    g_free(a->peer);
    g_free(a->metrics);
    g_free(a->report);
    g_free(a->capture);
    g_free(a->tls_cert);
    g_free(a->tls_key);
    g_free(a->tls_ca);
    g_free(a->tls_name);
    g_free(a->cache);
    g_free(a->rate);
    g_strfreev(a->allow);
}

/* What a stop signal stops: the relays made so far, and whatever comes
 * later (`by` set: the tunnel's wait and the relays made after it stop
 * too).  The handlers are in place before the tunnel is dialled, so that
 * a signal is never the default action that kills the process. */
typedef struct {
    GPtrArray *relays; /* MpRelay*, one per --listen */
    const char *by;    /* the signal that came, or NULL */
} Stop;

typedef struct {
    Stop *stop;
    const char *name;
} StopSignal;

static gboolean
on_stop_signal(gpointer user_data)
{
    const StopSignal *s = user_data;
    s->stop->by = s->name;
    for (guint i = 0; i < s->stop->relays->len; i++)
        mp_relay_stop(g_ptr_array_index(s->stop->relays, i), s->name);
    return G_SOURCE_CONTINUE;
}

static void
stop_signals_remove(guint *ids, guint n)
{
    for (guint i = 0; i < n; i++)
        g_source_remove(ids[i]);
}

/* One --listen: its relay, and the tunnel's route it uses. */
typedef struct {
    MpTunSource *tun;
    guint route;
    char *report, *metrics, *capture; /* this relay's files */
} Route;

static void
route_clear(Route *r)
{
    g_free(r->report);
    g_free(r->metrics);
    g_free(r->capture);
}

static json_object *
tunnel_report(guint session, gpointer data)
{
    const Route *r = data;
    return mp_tun_source_report(r->tun, r->route);
}

/* With several --listen, each relay writes its own files: FILE becomes
 * FILE-listenN (before the extension: report-listen2.json), DIR
 * DIR-listenN; stdout (-) and a socket (unix:PATH) are shared.  One
 * --listen: FILE itself. */
static char *
route_path(const char *path, guint route, guint routes, gboolean dir)
{
    if (!path || routes <= 1 || strcmp(path, "-") == 0
        || g_str_has_prefix(path, "unix:"))
        return g_strdup(path);
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    const char *dot = dir ? NULL : strrchr(base, '.');
    if (!dot || dot == base)
        return g_strdup_printf("%s-listen%u", path, route + 1);
    return g_strdup_printf("%.*s-listen%u%s", (int)(dot - path), path,
                           route + 1, dot);
}

/* (the relay passes its report_data, the Route, to these too) */
static void
tunnel_link(gint64 *measured_bps, gint64 *paced_bps, double *rtt_ms,
            gpointer data)
{
    const Route *r = data;
    mp_tun_source_link(r->tun, measured_bps, paced_bps, rtt_ms);
}

static json_object *
tunnel_encoders(gpointer data)
{
    const Route *r = data;
    return mp_tun_source_encoders(r->tun);
}

static void
tunnel_page_first(gpointer data)
{
    const Route *r = data;
    mp_tun_source_page_first(r->tun, r->route);
}

/* --once: the report the relay wrote gets the tunnel's final counters
 * (the relay reported when its side closed, a moment before the tunnel
 * had every byte). */
static gboolean
final_tunnel_report(const char *path, MpTunSource *tun, guint route)
{
    g_autoptr(GError) err = NULL;
    json_object *rep = json_object_from_file(path);

    if (!rep)
        return TRUE; /* none written: the relay said why */
    json_object_object_add(rep, "tunnel",
                           mp_tun_source_report_again(tun, route));
    const char *text = json_object_to_json_string_ext(
        rep, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE);
    gboolean ok = mp_out_path_replace(path, text, strlen(text), &err);
    if (!ok)
        g_critical("the report is lost: %s", err->message);
    json_object_put(rep);
    return ok;
}

/* "auto", or a byte count with an optional K, M, G or T (powers of
 * 1024).  @return FALSE if it does not parse. */
static gboolean
parse_size(const char *s, guint64 *out)
{
    char *end = NULL;

    if (!s || g_strcmp0(s, "auto") == 0) {
        *out = 0;
        return TRUE;
    }
    guint64 v = g_ascii_strtoull(s, &end, 10);
    if (end == s)
        return FALSE;
    const char *units = "KMGT";
    const char *u = *end ? strchr(units, g_ascii_toupper(*end)) : NULL;
    if (*end && (!u || (end[1] && g_ascii_strcasecmp(end + 1, "iB") != 0
                        && g_ascii_strcasecmp(end + 1, "B") != 0)))
        return FALSE;
    for (int i = u ? (int)(u - units) + 1 : 0; i > 0; i--) {
        if (v > G_MAXUINT64 / 1024)
            return FALSE;
        v *= 1024;
    }
    *out = v;
    return TRUE;
}

static int
source_with(const SourceArgs *a, int argc, char **argv)
{
    g_autoptr(GError) err = NULL;

    if (!a->listen || !a->peer) {
        fprintf(stderr, "migproxy source: --listen and --peer are required\n"
                        "(see migproxy source --help)\n");
        return 2;
    }
    if (argc > 1) {
        fprintf(stderr, "migproxy source: unexpected argument '%s'\n",
                argv[1]);
        return 2;
    }
    guint routes = g_strv_length(a->listen);
    if (routes > MP_TUN_ROUTES_MAX) {
        fprintf(stderr, "migproxy source: --listen: %u given, at most %u\n",
                routes, MP_TUN_ROUTES_MAX);
        return 2;
    }
    if (a->level < -7 || a->level > 19 || a->connect_timeout <= 0
        || a->resume_timeout < 0 || a->ping_timeout < -1
        || (a->ping_timeout > 0
            && a->ping_timeout < (gint)MP_TUN_MUX_PING_TIMEOUT_LEAST)) {
        fprintf(stderr, "migproxy source: --level is -7..19 (0: adapt), "
                        "--connect-timeout positive milliseconds, "
                        "--resume-timeout 0 or more, --ping-timeout 0 "
                        "(never) or at least %u\n",
                MP_TUN_MUX_PING_TIMEOUT_LEAST);
        return 2;
    }
    MpTunTlsOptions tls = {a->tls_cert, a->tls_key, a->tls_ca, a->tls_name};
    if (!mp_tun_tls_options_check(&tls, &err)) {
        fprintf(stderr, "migproxy source: %s\n", err->message);
        return 2;
    }
    guint64 cache = 0;
    if (!parse_size(a->cache, &cache) || (a->cache && cache && cache < 4096)
        || a->workers < 0 || a->workers > MP_TUN_PAGES_MAX_WORKERS) {
        fprintf(stderr, "migproxy source: --cache is auto or a size of at "
                        "least 4K (e.g. 512M, 2G); --workers 0..%d\n",
                MP_TUN_PAGES_MAX_WORKERS);
        return 2;
    }
    guint64 rate_bytes = 0;
    if (a->rate && !(rate_bytes = mp_rate_parse(a->rate, &err))) {
        fprintf(stderr, "migproxy source: --rate: %s\n", err->message);
        return 2;
    }
    MpCliLog lc = {
        .tag = "migproxy source",
        .start_us = g_get_monotonic_time(),
        .verbose = a->verbose,
        .tty = isatty(STDERR_FILENO) && !a->no_progress && !a->quiet,
    };
    mp_cli_log_install(&lc);
    signal(SIGPIPE, SIG_IGN);

    MpTunSourceOptions to = {
        .peer = a->peer,
        .compress = !a->no_compress,
        .level = a->level,
        .rate = rate_bytes,
        .quiet = a->quiet,
        .tls = tls,
        .timeout_ms = a->connect_timeout,
        .resume_ms = (guint)a->resume_timeout,
        .ping_timeout_ms =
            a->ping_timeout < 0
                ? mp_tun_mux_default_ping_timeout((guint)a->resume_timeout)
                : (guint)a->ping_timeout,
        .pages = !a->no_pages,
        .pages_opt = {
            .zero_runs = !a->no_zero_runs,
            .delta = !a->no_delta,
            .dedup = !a->no_dedup,
            .compress = !a->no_compress,
            .level = a->level,
            .cache_bytes = cache,
            .workers = (guint)a->workers,
            .adapt = !a->no_adapt,
            .urgent = !a->no_lift,
        },
        .routes = routes,
    };
    g_autoptr(GPtrArray) relays =
        g_ptr_array_new_with_free_func((GDestroyNotify)mp_relay_free);
    Stop stop = {relays, NULL};
    StopSignal stops[] = {
        {&stop, "SIGINT"}, {&stop, "SIGTERM"}, {&stop, "SIGHUP"}};
    const int signums[] = {SIGINT, SIGTERM, SIGHUP};
    guint ids[G_N_ELEMENTS(stops)];
    for (guint i = 0; i < G_N_ELEMENTS(stops); i++)
        ids[i] = g_unix_signal_add(signums[i], on_stop_signal, &stops[i]);
    if (!a->tls_cert)
        g_warning("the tunnel to %s is plain TCP (no --tls-cert): guest "
                  "memory crosses the network unencrypted and dest is not "
                  "authenticated; use it on a network you trust",
                  a->peer);
    g_autoptr(MpTunSource) tun = mp_tun_source_new(&to, &err);
    if (!tun
        || !mp_tun_source_wait_ready(tun, a->connect_timeout, &stop.by,
                                     &err)) {
        stop_signals_remove(ids, G_N_ELEMENTS(ids));
        if (g_error_matches(err, G_IO_ERROR, G_IO_ERROR_CANCELLED)) {
            g_message("%s: stopped before the tunnel was up", stop.by);
            return 0;
        }
        fprintf(stderr, "migproxy source: %s\n", err->message);
        return g_error_matches(err, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT)
                   ? 2
                   : 1;
    }

    /* one relay per --listen, each one migration at a time, all on the
     * one tunnel: route i's hop, dest's i-th --to */
    g_autofree Route *rt = g_new0(Route, routes);
    for (guint i = 0; i < routes; i++) {
        Route *r = &rt[i];
        r->tun = tun;
        r->route = i;
        r->report = route_path(a->report, i, routes, FALSE);
        r->metrics = route_path(a->metrics, i, routes, FALSE);
        r->capture = route_path(a->capture, i, routes, TRUE);
        MpRelayOptions opt = {
            .listen = a->listen[i],
            .to = mp_tun_source_hop(tun, i),
            .to_addr = mp_tun_source_hop_address(tun, i),
            .metrics = r->metrics,
            .report = r->report,
            .capture = r->capture,
            .once = a->once,
            .quiet = a->quiet,
            .progress = lc.tty && routes == 1,
            .connect_timeout_ms = a->connect_timeout,
            .no_zero_pages = a->no_zero_pages,
            /* The tunnel, not the relay, paces the link (the hop is
             * local).  The relay's post-copy lane reads the main channel
             * ahead and puts a requested page first, so that it does not
             * wait behind the source QEMU's socket (docs/tunnel.md, "What
             * the pair does today") */
            .no_priority = FALSE,
            .no_pace = TRUE,
            .local_sockbuf = MP_TUN_SOURCE_LOCAL_SOCKBUF,
            .allow = (const char *const *)a->allow,
            .report_extra = tunnel_report,
            .report_key = "tunnel",
            .report_data = r,
            .link_info = tunnel_link,
            .encoders_info = tunnel_encoders,
            .page_first = tunnel_page_first,
        };
        MpRelay *relay = mp_relay_new(&opt, &err);
        if (!relay) {
            fprintf(stderr, "migproxy source: %s\n", err->message);
            stop_signals_remove(ids, G_N_ELEMENTS(ids));
            g_ptr_array_set_size(relays, 0);
            for (guint k = 0; k < routes; k++)
                route_clear(&rt[k]);
            return 1;
        }
        g_ptr_array_add(relays, relay);
        if (stop.by) /* the signal came while it was made */
            mp_relay_stop(relay, stop.by);
    }
    if (!a->quiet) {
        g_autoptr(GString) where = g_string_new(NULL);
        for (guint i = 0; i < relays->len; i++)
            g_string_append_printf(
                where, "%s%s", i ? ", " : "",
                mp_relay_listen_address(g_ptr_array_index(relays, i)));
        g_message("listening on %s, tunnel to %s%s", where->str, a->peer,
                  !a->once      ? ""
                  : routes == 1 ? " (one migration)"
                                : " (one migration per --listen)");
    }
    /* the relays share the main context: each one's loop runs until it
     * is done, the others' migrations going on meanwhile */
    int status = 0;
    for (guint i = 0; i < relays->len; i++)
        status |= mp_relay_run(g_ptr_array_index(relays, i));
    stop_signals_remove(ids, G_N_ELEMENTS(ids));
    g_ptr_array_set_size(relays, 0);
    if (!mp_tun_source_finish(tun, FINISH_TIMEOUT_MS) && status == 0
        && a->once) {
        g_warning("the tunnel did not end cleanly");
        status = 1;
    }
    for (guint i = 0; i < routes; i++) {
        if (a->once && rt[i].report
            && !final_tunnel_report(rt[i].report, tun, i))
            status = 1;
        route_clear(&rt[i]);
    }
    return status;
}

static GOptionEntry *
source_entries(gpointer store)
{
    SourceArgs *a = store;
    const GOptionEntry entries[] = {
        {"listen", 'l', 0, G_OPTION_ARG_STRING_ARRAY, &a->listen,
         "Where the source QEMU migrates to (required): 127.0.0.1:PORT, or "
         "better unix:PATH (QEMU's 'migrate unix:PATH'; a socket only this "
         "user may open, and in post-copy a requested page waits behind "
         "less of QEMU's stream than over TCP). Repeat it for migrations "
         "side by side over the one tunnel, one at a time each: the Nth "
         "--listen goes to dest's Nth --to",
         "HOST:PORT|unix:PATH"},
        {"peer", 'p', 0, G_OPTION_ARG_STRING, &a->peer,
         "The 'migproxy dest --listen' address on the destination host "
         "(required)",
         "HOST:PORT"},
        {"allow", 'a', 0, G_OPTION_ARG_STRING_ARRAY, &a->allow,
         "Accept QEMU's connections only from this address or network "
         "(repeat for more; default: any address that can reach --listen)",
         "ADDR[/PREFIX]"},
        {"no-compress", 0, 0, G_OPTION_ARG_NONE, &a->no_compress,
         "Compress neither stream bytes nor page batches (by default "
         "stream bytes are zstd-compressed, one context per QEMU "
         "connection, and page batches with a long window on --workers "
         "threads)",
         NULL},
        {"level", 0, 0, G_OPTION_ARG_INT, &a->level,
         "zstd level, -7 (fastest) to 19; pins the level of page batches "
         "(default 0: it adapts, from 1, to what limits the migration: "
         "higher while the link is full and the zstd workers have time, "
         "lower while batches wait for them; stream bytes use 3)",
         "N"},
        {"no-zero-runs", 0, 0, G_OPTION_ARG_NONE, &a->no_zero_runs,
         "Send zero pages as QEMU's own ZERO records (by default "
         "consecutive zero pages go as one run, and a zero page the "
         "destination already holds as zero is not sent at all)",
         NULL},
        {"no-delta", 0, 0, G_OPTION_ARG_NONE, &a->no_delta,
         "Send changed pages whole (by default a page the destination "
         "holds an older version of in its page cache goes as the "
         "difference)",
         NULL},
        {"no-dedup", 0, 0, G_OPTION_ARG_NONE, &a->no_dedup,
         "Send repeated pages whole (by default a page whose bytes the "
         "destination's page cache holds goes as a reference)",
         NULL},
        {"no-pages", 0, 0, G_OPTION_ARG_NONE, &a->no_pages,
         "Send RAM pages as stream bytes like everything else, without "
         "the page encoders",
         NULL},
        {"cache", 0, 0, G_OPTION_ARG_STRING, &a->cache,
         "Page cache per migration on each side, for delta and dedup "
         "(default auto: a quarter of the guest's RAM, 32M to 2G)",
         "SIZE"},
        {"workers", 0, 0, G_OPTION_ARG_INT, &a->workers,
         "Threads compressing the main connection's pages (default 0: "
         "one per core; each multifd connection has one of its own)",
         "N"},
        {"no-adapt", 0, 0, G_OPTION_ARG_NONE, &a->no_adapt,
         "Keep zstd, dedup and delta on pages as the options set them "
         "(by default each goes off while it costs more time than it "
         "saves: zstd when the link, --rate or measured, is faster than "
         "compressing, any of them on pages it cannot shrink, such as "
         "random data; and back on when it pays again), and the zstd level "
         "of page batches at 3 (or --level)",
         NULL},
        {"no-lift", 0, 0, G_OPTION_ARG_NONE, &a->no_lift,
         "Send a page the destination asks for in post-copy with the "
         "other pages (by default it, and the next few of its block, go "
         "in the tunnel's urgent lane as soon as the source QEMU sends "
         "them)",
         NULL},
        {"rate", 0, 0, G_OPTION_ARG_STRING, &a->rate,
         "Pace the tunnel's bulk frames at RATE, as tc writes rates "
         "(95mbit, 1gbit, 12mbps): just below the link's rate (default: "
         "97 % of the rate the tunnel measured on the link once it held "
         "the tunnel back)",
         "RATE"},
        {"no-zero-pages", 0, 0, G_OPTION_ARG_NONE, &a->no_zero_pages,
         "Send all-zero pages as they came (by default a full page of "
         "zeros becomes a ZERO record before the tunnel)",
         NULL},
        {"metrics", 'm', 0, G_OPTION_ARG_FILENAME, &a->metrics,
         "Write metrics as JSON lines while the migration runs, as "
         "'migproxy relay' does (with several --listen, FILE-listenN for "
         "the Nth; - and unix:PATH are shared)",
         "FILE"},
        {"report", 'r', 0, G_OPTION_ARG_FILENAME, &a->report,
         "Write one JSON document per migration when it ends: the relay's "
         "report (pages, rounds, downtime, QEMU's bytes per channel) and "
         "under 'tunnel' the bytes each connection put into the tunnel and "
         "the frame bytes they took on the link, and per page encoder its "
         "bytes before and after and its CPU seconds (FILE, FILE-2, ... as "
         "for 'migproxy relay'; with several --listen, FILE-listenN for the "
         "Nth: report-listen2.json, report-listen2-2.json, ...)",
         "FILE"},
        {"capture", 'c', 0, G_OPTION_ARG_FILENAME, &a->capture,
         "Record every QEMU connection, both directions, into DIR (new or "
         "empty), as 'migproxy relay' does (with several --listen, "
         "DIR-listenN for the Nth)",
         "DIR"},
        {"once", '1', 0, G_OPTION_ARG_NONE, &a->once,
         "Exit when the first migration ends (of every --listen) and the "
         "tunnel has ended cleanly (status 0 if all)",
         NULL},
        {"tls-cert", 0, 0, G_OPTION_ARG_FILENAME, &a->tls_cert,
         "Run the tunnel over TLS with this PEM certificate (with "
         "--tls-key and --tls-ca; dest needs them too): encrypted, both "
         "ends authenticated",
         "FILE"},
        {"tls-key", 0, 0, G_OPTION_ARG_FILENAME, &a->tls_key,
         "The PEM private key of --tls-cert", "FILE"},
        {"tls-ca", 0, 0, G_OPTION_ARG_FILENAME, &a->tls_ca,
         "Trust only this PEM CA: dest's certificate must be signed by it "
         "and name the --peer host (or --tls-name)",
         "FILE"},
        {"tls-name", 0, 0, G_OPTION_ARG_STRING, &a->tls_name,
         "The name dest's certificate must carry (default: the host of "
         "--peer)",
         "NAME"},
        {"connect-timeout", 0, 0, G_OPTION_ARG_INT, &a->connect_timeout,
         "Give up reaching --peer at start after MS (default 10000); also "
         "the bound on a TLS handshake",
         "MS"},
        {"resume-timeout", 0, 0, G_OPTION_ARG_INT, &a->resume_timeout,
         "When the tunnel drops while a migration is in post-copy, keep "
         "QEMU's connections open and reconnect to --peer for up to MS "
         "(default 30000): the tunnel resumes where it was, without a lost "
         "page, and neither QEMU notices; after MS (or with 0) the "
         "connections are reset",
         "MS"},
        {"ping-timeout", 0, 0, G_OPTION_ARG_INT, &a->ping_timeout,
         "Take the tunnel as dropped when nothing at all came from dest "
         "for MS (it sends a PING every second): its host or the network "
         "went without closing the connection. A drop as any other: in "
         "pre-copy the migration fails and the guest runs on here, in "
         "post-copy the tunnel resumes. Default: a third of "
         "--resume-timeout, 3000 to 10000 (10000 with --resume-timeout "
         "0); 0: never; else at least 2000",
         "MS"},
        {"quiet", 'q', 0, G_OPTION_ARG_NONE, &a->quiet,
         "Only warnings and errors on stderr", NULL},
        {"no-progress", 0, 0, G_OPTION_ARG_NONE, &a->no_progress,
         "Log lines instead of the live progress line on a terminal", NULL},
        {"verbose", 'v', 0, G_OPTION_ARG_NONE, &a->verbose,
         "Also log every connection and stream event", NULL},
        {NULL},
    };
    return g_memdup2(entries, sizeof(entries));
}

static int
source_run(int argc, char **argv)
{
    SourceArgs a = {.level = 0, .connect_timeout = 10000,
                    .resume_timeout = 30000, .ping_timeout = -1};
    g_autofree GOptionEntry *entries = source_entries(&a);
    g_autoptr(GOptionContext) oc = mp_command_context(&mp_cmd_source, entries);
    g_autoptr(GError) err = NULL;

    mp_heap_reuse();
    if (!g_option_context_parse(oc, &argc, &argv, &err)) {
        fprintf(stderr, "migproxy source: %s\n(see migproxy source --help)\n",
                err->message);
        source_args_clear(&a);
        return 2;
    }
    int status = source_with(&a, argc, argv);
    source_args_clear(&a);
    return status;
}

const MpCommand mp_cmd_source = {
    .name = "source",
    .purpose = "the source host's end of a compressing migration tunnel",
    .summary =
        "The source host's end of migproxy's tunnel: the source QEMU "
        "migrates to --listen, and every connection of the migration "
        "(main, multifd, postcopy-preempt, recovery) travels, compressed, "
        "through one TCP connection to 'migproxy dest' on the destination "
        "host, which opens the same connections to the destination QEMU in "
        "the same order. The return path comes back on its own stream. "
        "Neither QEMU can tell the pair is there; the destination's guest "
        "memory is the source's.\n\n"
        "QEMU's connections are admitted and measured as 'migproxy relay' "
        "admits and measures them (one migration at a time, --allow, the "
        "checks of their first bytes; --report, --metrics, --capture). "
        "What QEMU writes is read only as fast as the tunnel and the "
        "destination take it (in flight per connection: at most 80 ms of the "
        "destination's rate, 4 to 16 MiB), so "
        "QEMU's own bandwidth and downtime estimates see the tunnel's rate. "
        "With several --listen, several migrations (different guests) go "
        "through the one tunnel at once, one per --listen, sharing the link "
        "in turns; dest sends the migrations of the Nth --listen to its Nth "
        "--to.",
    .description =
        "Examples:\n"
        "  # on the destination host (10.0.0.3): QEMU waits, then dest\n"
        "  qemu-system-x86_64 ... -incoming tcp:127.0.0.1:5555\n"
        "  migproxy dest --listen 10.0.0.3:7000 --to 127.0.0.1:5555 "
        "--allow 10.0.0.1\n\n"
        "  # on the source host (10.0.0.1); a Unix socket, or 127.0.0.1:4444\n"
        "  # and tcp:127.0.0.1:4444 (docs/tunnel.md, \"Use\")\n"
        "  migproxy source --listen unix:/run/migproxy/src.sock \\\n"
        "      --peer 10.0.0.3:7000 --report report.json --once\n"
        "  (qemu) migrate -d unix:/run/migproxy/src.sock\n\n"
        "  # the same over TLS (certificates: docs/tunnel.md)\n"
        "  migproxy dest --listen 10.0.0.3:7000 --to 127.0.0.1:5555 \\\n"
        "      --tls-cert dest.pem --tls-key dest.key --tls-ca ca.pem\n"
        "  migproxy source --listen 127.0.0.1:4444 --peer 10.0.0.3:7000 \\\n"
        "      --tls-cert source.pem --tls-key source.key --tls-ca ca.pem\n\n"
        "  # two guests at once, to dest's two --to (in the same order)\n"
        "  migproxy source --listen 127.0.0.1:4444 --listen 127.0.0.1:4445 "
        "\\\n"
        "      --peer 10.0.0.3:7000 --report report.json\n\n"
        "Failures: if the tunnel drops while the migration is in post-copy "
        "(the guest runs on the destination), source keeps QEMU's "
        "connections open, reconnects to --peer (after 200 ms, then again "
        "until it gets through), and the tunnel resumes where it was (frames are kept "
        "until the far side has them): neither QEMU notices. If that fails "
        "within --resume-timeout, or dest no longer holds the tunnel (it "
        "restarted), the connections are reset: both QEMUs pause "
        "post-copy, and QEMU's own recovery goes through the pair "
        "(migrate-recover on the destination, migrate with resume to "
        "--listen here; without --once). Before post-copy a drop resets "
        "every connection it carried: the source QEMU sees its migration "
        "fail and its guest goes on running; a new tunnel is tried every "
        "second for the next migration. A migration that starts while the "
        "tunnel is down fails at once. A tunnel from which nothing comes "
        "for --ping-timeout (dest's host died, the network went silently) "
        "has dropped.\n\n"
        "Security: with --tls-cert, --tls-key and --tls-ca (on both ends) "
        "the tunnel is TLS: encrypted, dest's certificate must chain to "
        "--tls-ca and name the --peer host (or --tls-name), and dest checks "
        "this side's certificate against its own --tls-ca. A refusal is one "
        "line saying why; at start, source exits with status 1. Without "
        "them the tunnel is plain TCP and source says so when it starts; "
        "'migproxy dest' then accepts tunnels only from its --allow "
        "addresses. How to make the certificates: docs/tunnel.md, "
        "\"TLS\".\n\n"
        "Exit status: 0; with --once, 1 if the migration did not complete, "
        "its report could not be written or the tunnel did not end "
        "cleanly; 1 if --peer cannot be reached at start or refused (TLS); "
        "2 on usage errors (also TLS files that do not load).",
    .entries = source_entries,
    .store_size = sizeof(SourceArgs),
    .run = source_run,
};
