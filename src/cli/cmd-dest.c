/* cmd-dest.c: `migproxy dest`, the end of the tunnel next to the
 * destination QEMU (src/tunnel/tunnel-dest.h). */
#include "config.h"
#include <signal.h>
#include <stdio.h>
#include <glib.h>
#include <glib-unix.h>
#include "cli-log.h"
#include "commands.h"
#include "heap-reuse.h"
#include "tunnel-dest.h"
#include "tunnel-mux.h"

typedef struct {
    char *listen, *report;
    char *tls_cert, *tls_key, *tls_ca, *tls_name;
    GStrv allow, to;
    gboolean once, quiet, verbose, no_compress;
    gint connect_timeout, resume_timeout, ping_timeout;
} DestArgs;

static void
dest_args_clear(DestArgs *a)
{
    g_free(a->listen);
    g_free(a->report);
    g_free(a->tls_cert);
    g_free(a->tls_key);
    g_free(a->tls_ca);
    g_free(a->tls_name);
    g_strfreev(a->allow);
    g_strfreev(a->to);
}

typedef struct {
    MpTunDest *dest;
    const char *name;
} StopSignal;

static gboolean
on_stop_signal(gpointer user_data)
{
    const StopSignal *s = user_data;
    mp_tun_dest_stop(s->dest, s->name);
    return G_SOURCE_CONTINUE;
}

static int
dest_with(const DestArgs *a, int argc, char **argv)
{
    g_autoptr(GError) err = NULL;

    if (!a->listen || !a->to) {
        fprintf(stderr, "migproxy dest: --listen and --to are required\n"
                        "(see migproxy dest --help)\n");
        return 2;
    }
    if (argc > 1) {
        fprintf(stderr, "migproxy dest: unexpected argument '%s'\n", argv[1]);
        return 2;
    }
    if (a->connect_timeout <= 0 || a->resume_timeout < 0
        || a->ping_timeout < -1
        || (a->ping_timeout > 0
            && a->ping_timeout < (gint)MP_TUN_MUX_PING_TIMEOUT_LEAST)) {
        fprintf(stderr, "migproxy dest: --connect-timeout is positive "
                        "milliseconds, --resume-timeout 0 or more, "
                        "--ping-timeout 0 (never) or at least %u\n",
                MP_TUN_MUX_PING_TIMEOUT_LEAST);
        return 2;
    }
    MpTunTlsOptions tls = {a->tls_cert, a->tls_key, a->tls_ca, a->tls_name};
    if (!mp_tun_tls_options_check(&tls, &err)) {
        fprintf(stderr, "migproxy dest: %s\n", err->message);
        return 2;
    }
    MpCliLog lc = {
        .tag = "migproxy dest",
        .start_us = g_get_monotonic_time(),
        .verbose = a->verbose,
    };
    mp_cli_log_install(&lc);
    signal(SIGPIPE, SIG_IGN);

    MpTunDestOptions opt = {
        .listen = a->listen,
        .to = (const char *const *)a->to,
        .allow = (const char *const *)a->allow,
        .report = a->report,
        .once = a->once,
        .compress = !a->no_compress,
        .quiet = a->quiet,
        .connect_timeout_ms = a->connect_timeout,
        .resume_ms = (guint)a->resume_timeout,
        .ping_timeout_ms =
            a->ping_timeout < 0
                ? mp_tun_mux_default_ping_timeout((guint)a->resume_timeout)
                : (guint)a->ping_timeout,
        .tls = tls,
    };
    g_autoptr(MpTunDest) dest = mp_tun_dest_new(&opt, &err);
    if (!dest) {
        fprintf(stderr, "migproxy dest: %s\n", err->message);
        return g_error_matches(err, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT)
                   ? 2
                   : 1;
    }
    StopSignal stops[] = {
        {dest, "SIGINT"}, {dest, "SIGTERM"}, {dest, "SIGHUP"}};
    const int signums[] = {SIGINT, SIGTERM, SIGHUP};
    guint ids[G_N_ELEMENTS(stops)];
    for (guint i = 0; i < G_N_ELEMENTS(stops); i++)
        ids[i] = g_unix_signal_add(signums[i], on_stop_signal, &stops[i]);
    if (!a->tls_cert)
        g_warning("no TLS (no --tls-cert): the tunnel is plain TCP, guest "
                  "memory crosses the network unencrypted and the source is "
                  "not authenticated; accepting tunnels only from --allow "
                  "addresses");
    g_autofree char *to = g_strjoinv(", ", a->to);
    if (!a->quiet)
        g_message("listening on %s%s, relaying to %s%s",
                  mp_tun_dest_listen_address(dest),
                  a->tls_cert ? " (TLS, client certificate required)" : "", to,
                  a->once ? " (one tunnel)" : "");
    int status = mp_tun_dest_run(dest);
    for (guint i = 0; i < G_N_ELEMENTS(stops); i++)
        g_source_remove(ids[i]);
    return status;
}

static GOptionEntry *
dest_entries(gpointer store)
{
    DestArgs *a = store;
    const GOptionEntry entries[] = {
        {"listen", 'l', 0, G_OPTION_ARG_STRING, &a->listen,
         "Where 'migproxy source --peer' connects (required)", "HOST:PORT"},
        {"to", 't', 0, G_OPTION_ARG_STRING_ARRAY, &a->to,
         "The destination QEMU's -incoming address (required). Repeat it "
         "for migrations side by side: the source side's first --listen "
         "goes to the first --to, its second to the second, ...",
         "HOST:PORT"},
        {"allow", 'a', 0, G_OPTION_ARG_STRING_ARRAY, &a->allow,
         "Accept tunnels only from this address or network (repeat for "
         "more; required without TLS, optional with it)",
         "ADDR[/PREFIX]"},
        {"tls-cert", 0, 0, G_OPTION_ARG_FILENAME, &a->tls_cert,
         "Take the tunnel over TLS only, with this PEM certificate (with "
         "--tls-key and --tls-ca): encrypted, and the source must present "
         "a certificate --tls-ca signed",
         "FILE"},
        {"tls-key", 0, 0, G_OPTION_ARG_FILENAME, &a->tls_key,
         "The PEM private key of --tls-cert", "FILE"},
        {"tls-ca", 0, 0, G_OPTION_ARG_FILENAME, &a->tls_ca,
         "Trust only this PEM CA for the source's certificate", "FILE"},
        {"tls-name", 0, 0, G_OPTION_ARG_STRING, &a->tls_name,
         "Also require the source's certificate to carry this name "
         "(default: any certificate --tls-ca signed)",
         "NAME"},
        {"report", 'r', 0, G_OPTION_ARG_FILENAME, &a->report,
         "When a tunnel ends, write a JSON document: its duration, outcome, "
         "link bytes, and per QEMU connection the tunnel bytes it took and "
         "the bytes written to QEMU (the Nth tunnel to FILE-N); replaced, "
         "readable by its user only",
         "FILE"},
        {"once", '1', 0, G_OPTION_ARG_NONE, &a->once,
         "Exit when the first tunnel ends (status 0 if it ended cleanly)",
         NULL},
        {"no-compress", 0, 0, G_OPTION_ARG_NONE, &a->no_compress,
         "Do not offer zstd to the source side", NULL},
        {"connect-timeout", 0, 0, G_OPTION_ARG_INT, &a->connect_timeout,
         "Give up connecting to the destination QEMU after MS (default "
         "10000); also the bound on a new tunnel's first bytes and TLS "
         "handshake",
         "MS"},
        {"resume-timeout", 0, 0, G_OPTION_ARG_INT, &a->resume_timeout,
         "When the tunnel drops, keep its connections to the destination "
         "QEMU open for MS (default 30000) for the source side to "
         "reconnect and resume it without a lost byte; 0: a drop resets "
         "them at once",
         "MS"},
        {"ping-timeout", 0, 0, G_OPTION_ARG_INT, &a->ping_timeout,
         "Take the tunnel as dropped when nothing at all came from the "
         "source side for MS (it sends a PING every second): its host or "
         "the network went without closing the connection. A drop as any "
         "other (resumed within --resume-timeout). Default: a third of "
         "--resume-timeout, 3000 to 10000 (10000 with --resume-timeout "
         "0); 0: never; else at least 2000",
         "MS"},
        {"quiet", 'q', 0, G_OPTION_ARG_NONE, &a->quiet,
         "Only warnings and errors on stderr", NULL},
        {"verbose", 'v', 0, G_OPTION_ARG_NONE, &a->verbose,
         "Also log every connection and stream event", NULL},
        {NULL},
    };
    return g_memdup2(entries, sizeof(entries));
}

static int
dest_run(int argc, char **argv)
{
    DestArgs a = {.connect_timeout = 10000, .resume_timeout = 30000,
                  .ping_timeout = -1};
    g_autofree GOptionEntry *entries = dest_entries(&a);
    g_autoptr(GOptionContext) oc = mp_command_context(&mp_cmd_dest, entries);
    g_autoptr(GError) err = NULL;

    mp_heap_reuse();
    if (!g_option_context_parse(oc, &argc, &argv, &err)) {
        fprintf(stderr, "migproxy dest: %s\n(see migproxy dest --help)\n",
                err->message);
        dest_args_clear(&a);
        return 2;
    }
    int status = dest_with(&a, argc, argv);
    dest_args_clear(&a);
    return status;
}

const MpCommand mp_cmd_dest = {
    .name = "dest",
    .purpose = "the destination host's end of a compressing migration "
               "tunnel",
    .summary =
        "The destination host's end of migproxy's tunnel: 'migproxy "
        "source' on the source host connects to --listen; for every QEMU "
        "connection the tunnel carries, dest opens a TCP connection to the "
        "destination QEMU at --to, one at a time in the order the source "
        "QEMU opened them (main first, multifd channels in order), writes "
        "the stream, and sends back what QEMU writes (the return path). One "
        "tunnel at a time; another is refused while one runs. Several "
        "migrations at once share the tunnel: with several --to, a "
        "migration that came to the source side's Nth --listen goes to the "
        "Nth --to, each migration's connections in its own order; one "
        "whose --listen has no --to here is reset, and the others go on.",
    .description =
        "Examples:\n"
        "  qemu-system-x86_64 ... -incoming tcp:127.0.0.1:5555\n"
        "  migproxy dest --listen 10.0.0.3:7000 --to 127.0.0.1:5555 "
        "--allow 10.0.0.1 \\\n"
        "      --report tunnel.json --once\n"
        "  # over TLS (certificates: docs/tunnel.md, \"TLS\")\n"
        "  migproxy dest --listen 10.0.0.3:7000 --to 127.0.0.1:5555 \\\n"
        "      --tls-cert dest.pem --tls-key dest.key --tls-ca ca.pem\n"
        "  # two migrations at once (two guests, two destination QEMUs); "
        "the source side\n"
        "  # has two --listen, in the same order\n"
        "  migproxy dest --listen 10.0.0.3:7000 --to 127.0.0.1:5555 "
        "--to 127.0.0.1:5556 \\\n"
        "      --allow 10.0.0.1\n\n"
        "Security: with --tls-cert, --tls-key and --tls-ca dest takes only "
        "TLS tunnels whose source presents a certificate --tls-ca signed "
        "(and naming --tls-name if given); --allow is then optional. A "
        "connection that fails (a wrong CA, no certificate, an expired one, "
        "a plain tunnel, something that is not a migproxy) is refused with "
        "one line naming its address and why, before anything reaches "
        "QEMU. Without TLS dest says so when it starts and accepts tunnels "
        "only from --allow addresses. See docs/tunnel.md.\n\n"
        "Failures: when the tunnel drops, dest keeps its connections to "
        "the destination QEMU open for --resume-timeout: the source side "
        "reconnects (from the same host, with the same certificate) and "
        "the tunnel resumes where it was, neither QEMU noticing; a new "
        "tunnel instead, or the timeout, resets them (in post-copy QEMU "
        "then pauses, and its own recovery, migrate-recover and migrate "
        "with resume, goes through the pair). A tunnel from which nothing "
        "comes for --ping-timeout (a source host that died, a network "
        "that went silently) is taken as dropped.\n\n"
        "Exit status: 0; with --once, 1 if the tunnel did not end cleanly or "
        "its report could not be written; 2 on usage errors.",
    .entries = dest_entries,
    .store_size = sizeof(DestArgs),
    .run = dest_run,
};
