/* test-tunnel-tls.c: the tunnel's TLS refusals (docs/tunnel.md, "TLS"),
 * with certificates made at run time (tls-certs.h) and no QEMU: dest's
 * --to is a listener standing in for the destination QEMU, which must
 * never see a connection.  A migration through a TLS tunnel is
 * test-tunnel.c's precopy_100_tls.
 *
 * Cases: a source whose certificate another CA signed; a source that
 * trusts another CA (refuses dest); an expired source certificate; a
 * TLS client with no certificate; a plain source to a TLS dest; a TLS
 * source to a plain dest (which says at start that it is plain); dest's
 * certificate not naming --tls-name; something that is not a migproxy;
 * a source's and a dest's certificate named by --tls-name (accepted);
 * TLS options given in part (usage errors); a source stopped by a signal
 * before its tunnel is up.  Each checks the one-line
 * error on each side that has one, naming the peer's address.
 */
#include "config.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <gio/gio.h>
#include <criterion/criterion.h>
#include "itest-util.h"
#include "tls-certs.h"

#define WAIT_MS 15000

static struct {
    char *dir;
    GPid dest;
    char *dest_log;
    guint16 dest_port;
    GSocket *qemu; /* the stand-in for the destination QEMU */
    guint16 qemu_port;
} fx;

static void
die_with_parent(gpointer user_data)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
}

static char *
path(const char *name)
{
    return g_build_filename(fx.dir, name, NULL);
}

static char *
read_text(const char *file)
{
    char *text = NULL;
    if (!g_file_get_contents(file, &text, NULL, NULL))
        text = g_strdup("");
    return text;
}

static void
fx_init(void)
{
    g_autoptr(GError) err = NULL;
    fx.dir = it_tmpdir();
    it_make_certs(fx.dir);
    fx.qemu = g_socket_new(G_SOCKET_FAMILY_IPV4, G_SOCKET_TYPE_STREAM,
                           G_SOCKET_PROTOCOL_TCP, &err);
    cr_assert_not_null(fx.qemu);
    g_autoptr(GInetAddress) lo =
        g_inet_address_new_loopback(G_SOCKET_FAMILY_IPV4);
    g_autoptr(GSocketAddress) la = g_inet_socket_address_new(lo, 0);
    cr_assert(g_socket_bind(fx.qemu, la, TRUE, &err)
                  && g_socket_listen(fx.qemu, &err),
              "%s", err ? err->message : "?");
    g_socket_set_blocking(fx.qemu, FALSE);
    g_autoptr(GSocketAddress) bound = g_socket_get_local_address(fx.qemu, NULL);
    fx.qemu_port = g_inet_socket_address_get_port(G_INET_SOCKET_ADDRESS(bound));
}

static void
fx_fini(void)
{
    if (fx.dest) {
        kill(fx.dest, SIGKILL);
        waitpid(fx.dest, NULL, 0);
        g_spawn_close_pid(fx.dest);
        fx.dest = 0;
    }
    g_clear_object(&fx.qemu);
    g_clear_pointer(&fx.dest_log, g_free);
    if (fx.dir)
        tu_remove_tree(fx.dir);
    g_clear_pointer(&fx.dir, g_free);
}

TestSuite(tunnel_tls, .init = fx_init, .fini = fx_fini, .timeout = 120);

/* The stand-in QEMU saw no connection. */
static void
assert_qemu_untouched(void)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GSocket) s = g_socket_accept(fx.qemu, NULL, &err);
    cr_assert_null(s, "dest connected to the destination QEMU");
}

/* `migproxy dest --listen 127.0.0.1:0 --to <stand-in> ARGS...`, running
 * until the fixture ends; waits for its "listening on" line. */
static void
dest_start(const char *const *args)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) argv = g_ptr_array_new_with_free_func(g_free);

    g_ptr_array_add(argv, g_strdup(it_migproxy()));
    g_ptr_array_add(argv, g_strdup("dest"));
    g_ptr_array_add(argv, g_strdup("--listen=127.0.0.1:0"));
    g_ptr_array_add(argv, g_strdup_printf("--to=127.0.0.1:%u", fx.qemu_port));
    g_ptr_array_add(argv, g_strdup("--connect-timeout=5000"));
    for (guint i = 0; args[i]; i++)
        g_ptr_array_add(argv, g_strdup(args[i]));
    g_ptr_array_add(argv, NULL);
    fx.dest_log = path("dest.log");
    int fd = open(fx.dest_log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    cr_assert(fd >= 0);
    gboolean ok = g_spawn_async_with_pipes_and_fds(
        NULL, (const char *const *)argv->pdata, NULL, G_SPAWN_DO_NOT_REAP_CHILD,
        die_with_parent, NULL, -1, -1, fd, NULL, NULL, 0, &fx.dest, NULL, NULL,
        NULL, &err);
    close(fd);
    cr_assert(ok, "%s", err ? err->message : "?");
    gint64 deadline = g_get_monotonic_time() + WAIT_MS * 1000ll;
    while (!fx.dest_port) {
        g_autofree char *text = read_text(fx.dest_log);
        g_auto(GStrv) parts = g_strsplit(text, "listening on 127.0.0.1:", 2);
        if (parts[0] && parts[1]) {
            fx.dest_port = (guint16)g_ascii_strtoull(parts[1], NULL, 10);
            continue;
        }
        cr_assert(waitpid(fx.dest, NULL, WNOHANG) == 0, "dest exited:\n%s",
                  text);
        cr_assert(g_get_monotonic_time() < deadline, "dest:\n%s", text);
        g_usleep(20000);
    }
}

/* Waits until dest's log has `what`; returns the log. */
static char *
dest_log_wait(const char *what)
{
    gint64 deadline = g_get_monotonic_time() + WAIT_MS * 1000ll;
    for (;;) {
        char *text = read_text(fx.dest_log);
        if (strstr(text, what))
            return text;
        cr_assert(g_get_monotonic_time() < deadline,
                  "dest's log has no \"%s\":\n%s", what, text);
        g_free(text);
        g_usleep(20000);
    }
}

/* dest's line with `what` is one warning that names the connection's
 * address before it. */
static void
assert_dest_line(const char *dlog, const char *what)
{
    g_auto(GStrv) lines = g_strsplit(dlog, "\n", -1);
    for (guint i = 0; lines[i]; i++) {
        const char *at = strstr(lines[i], what);
        if (!at)
            continue;
        const char *who =
            strstr(lines[i], "warning: connection from 127.0.0.1:");
        cr_assert(who && who < at, "dest:\n%s", dlog);
        return;
    }
    cr_assert_fail("dest:\n%s", dlog);
}

/* Runs `migproxy source --listen 127.0.0.1:0 --peer <dest> --once ARGS`
 * to its end.  @return its exit status; `*log` its stderr. */
static int
source_run(const char *const *args, char **log)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) argv = g_ptr_array_new_with_free_func(g_free);
    int status = -1;

    g_ptr_array_add(argv, g_strdup(it_migproxy()));
    g_ptr_array_add(argv, g_strdup("source"));
    g_ptr_array_add(argv, g_strdup("--listen=127.0.0.1:0"));
    g_ptr_array_add(argv, g_strdup_printf("--peer=127.0.0.1:%u", fx.dest_port));
    g_ptr_array_add(argv, g_strdup("--once"));
    g_ptr_array_add(argv, g_strdup("--connect-timeout=5000"));
    for (guint i = 0; args[i]; i++)
        g_ptr_array_add(argv, g_strdup(args[i]));
    g_ptr_array_add(argv, NULL);
    gboolean ok = g_spawn_sync(NULL, (char **)argv->pdata, NULL,
                               G_SPAWN_STDOUT_TO_DEV_NULL, die_with_parent,
                               NULL, NULL, log, &status, &err);
    cr_assert(ok, "%s", err ? err->message : "?");
    cr_assert(WIFEXITED(status), "source killed:\n%s", *log);
    return WEXITSTATUS(status);
}

/* --tls-cert=DIR/CERT.pem --tls-key=DIR/CERT.key --tls-ca=DIR/CA */
typedef struct {
    char *a[3];
} TlsArgs;

static void
tls_args(TlsArgs *t, const char *cert, const char *ca)
{
    g_autofree char *c = path(cert);
    g_autofree char *k = g_strdup(c);
    g_autofree char *a = path(ca);
    t->a[0] = g_strdup_printf("--tls-cert=%s.pem", c);
    t->a[1] = g_strdup_printf("--tls-key=%s.key", k);
    t->a[2] = g_strdup_printf("--tls-ca=%s", a);
}

static void
tls_args_clear(TlsArgs *t)
{
    for (guint i = 0; i < 3; i++)
        g_free(t->a[i]);
}

static void
tls_dest(void)
{
    TlsArgs d;
    tls_args(&d, "dest", "ca.pem");
    const char *args[] = {d.a[0], d.a[1], d.a[2], "--verbose", NULL};
    dest_start(args);
    tls_args_clear(&d);
}

/* A source with `cert` trusting `ca` fails with `src_says` in its log
 * (NULL: not checked); dest's log gets `dest_says` on the connection's
 * line, with the source's address. */
static void
refused(const char *cert, const char *ca, const char *const *extra,
        const char *src_says, const char *dest_says)
{
    TlsArgs s;
    tls_args(&s, cert, ca);
    const char *args[8] = {s.a[0], s.a[1], s.a[2]};
    for (guint i = 0; extra && extra[i]; i++)
        args[3 + i] = extra[i];
    g_autofree char *slog = NULL;
    int st = source_run(args, &slog);
    tls_args_clear(&s);
    g_autofree char *dlog = dest_log_wait(dest_says);
    cr_assert_eq(st, 1, "source's status %d:\n%s", st, slog);
    g_autofree char *peer = g_strdup_printf("127.0.0.1:%u", fx.dest_port);
    g_autofree char *line =
        g_strdup_printf("migproxy source: --peer %s: ", peer);
    cr_assert(strstr(slog, line), "source:\n%s", slog);
    if (src_says)
        cr_assert(strstr(slog, src_says), "source:\n%s\ndest:\n%s", slog, dlog);
    assert_dest_line(dlog, dest_says);
    cr_assert(!strstr(dlog, "is up"), "dest:\n%s", dlog);
    assert_qemu_untouched();
}

Test(tunnel_tls, client_cert_from_another_ca)
{
    tls_dest();
    refused("other/source", "ca.pem", NULL,
            "did dest refuse this side's certificate?",
            "TLS: refused the peer's certificate: not signed by --tls-ca; "
            "refused");
}

Test(tunnel_tls, source_trusts_another_ca)
{
    tls_dest();
    refused("source", "other/ca.pem", NULL,
            "TLS: refused the peer's certificate: not signed by --tls-ca",
            "TLS: the peer broke off the handshake");
}

Test(tunnel_tls, client_cert_expired)
{
    tls_dest();
    refused("expired", "ca.pem", NULL,
            "did dest refuse this side's certificate?",
            "TLS: refused the peer's certificate: expired; refused");
}

Test(tunnel_tls, dest_not_named)
{
    tls_dest();
    const char *extra[] = {"--tls-name=other.test", NULL};
    refused("source", "ca.pem", extra,
            "TLS: refused the peer's certificate: does not name other.test",
            "TLS: the peer broke off the handshake");
}

/* dest with --tls-name: a source certificate without that name. */
Test(tunnel_tls, source_not_named)
{
    TlsArgs d;
    tls_args(&d, "dest", "ca.pem");
    const char *args[] = {d.a[0], d.a[1], d.a[2], "--tls-name=other.test",
                          NULL};
    dest_start(args);
    tls_args_clear(&d);
    refused("source", "ca.pem", NULL, NULL,
            "TLS: refused the peer's certificate: does not name other.test "
            "(--tls-name); refused");
}

/* Starts `argv` (a migproxy source) logging to `log_path`, waits until
 * its log says `ready`, stops it with SIGTERM and checks that it exited
 * cleanly.  @return its log (caller frees). */
static char *
source_stopped_after(const char *const *argv, const char *log_path,
                     const char *ready)
{
    g_autoptr(GError) err = NULL;
    int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    GPid pid = 0;
    gboolean ok = g_spawn_async_with_pipes_and_fds(
        NULL, argv, NULL, G_SPAWN_DO_NOT_REAP_CHILD, die_with_parent, NULL, -1,
        -1, fd, NULL, NULL, 0, &pid, NULL, NULL, NULL, &err);
    close(fd);
    cr_assert(ok, "%s", err ? err->message : "?");
    gint64 deadline = g_get_monotonic_time() + WAIT_MS * 1000ll;
    for (;;) {
        g_autofree char *slog = read_text(log_path);
        if (strstr(slog, ready))
            break;
        cr_assert(g_get_monotonic_time() < deadline, "source:\n%s", slog);
        g_usleep(20000);
    }
    kill(pid, SIGTERM);
    int st;
    waitpid(pid, &st, 0);
    g_spawn_close_pid(pid);
    char *slog = read_text(log_path);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "st=0x%x source:\n%s",
              st, slog);
    return slog;
}

/* Both --tls-name checks pass: the tunnel comes up, and ends when the
 * source (--once, no migration) is stopped; QEMU is never dialed since
 * no connection was carried. */
Test(tunnel_tls, names_accepted)
{
    TlsArgs d, s;
    tls_args(&d, "dest", "ca.pem");
    tls_args(&s, "source", "ca.pem");
    const char *dargs[] = {d.a[0], d.a[1], d.a[2], "--tls-name=source.test",
                           NULL};
    dest_start(dargs);
    g_autofree char *peer =
        g_strdup_printf("--peer=127.0.0.1:%u", fx.dest_port);
    g_autofree char *slog_path = path("source.log");
    const char *argv[] = {
        it_migproxy(), "source", "--listen=127.0.0.1:0", peer, s.a[0],
        s.a[1],        s.a[2],   "--tls-name=localhost", NULL};
    g_autofree char *slog = source_stopped_after(
        argv, slog_path, "TLS, both ends authenticated");
    g_free(dest_log_wait("is up"));
    cr_assert(!strstr(slog, "plain TCP"), "%s", slog);
    g_autofree char *dlog = read_text(fx.dest_log);
    cr_assert(!strstr(dlog, "plain TCP"), "%s", dlog);
    assert_qemu_untouched();
    tls_args_clear(&d);
    tls_args_clear(&s);
}

/* A stop signal while the source still waits for its tunnel (a peer
 * that accepts and never answers): a clean stop, exit 0, said in the log;
 * not the signal's default action (the handlers were installed only
 * after the tunnel was up, and names_accepted's SIGTERM right after "is
 * up" killed the source now and then). */
Test(tunnel_tls, source_stopped_before_the_tunnel_is_up)
{
    g_autofree char *peer =
        g_strdup_printf("--peer=127.0.0.1:%u", fx.qemu_port);
    g_autofree char *slog_path = path("source.log");
    const char *argv[] = {it_migproxy(), "source", "--listen=127.0.0.1:0",
                          peer, NULL};
    /* the handlers are in place before this warning is written */
    g_autofree char *slog =
        source_stopped_after(argv, slog_path, "plain TCP");
    cr_assert(strstr(slog, "SIGTERM: stopped before the tunnel was up"), "%s",
              slog);
}

/* A TLS client that sends no certificate (a GIO client here: migproxy
 * source always has one). */
Test(tunnel_tls, no_client_cert)
{
    tls_dest();
    g_autoptr(GError) err = NULL;
    g_autoptr(GSocketClient) cl = g_socket_client_new();
    g_autoptr(GSocketConnection) conn = g_socket_client_connect_to_host(
        cl, "127.0.0.1", fx.dest_port, NULL, &err);
    cr_assert_not_null(conn, "%s", err ? err->message : "?");
    g_autoptr(GIOStream) tls =
        g_tls_client_connection_new(G_IO_STREAM(conn), NULL, &err);
    cr_assert_not_null(tls, "%s", err ? err->message : "?");
    G_GNUC_BEGIN_IGNORE_DEPRECATIONS
    g_tls_client_connection_set_validation_flags(G_TLS_CLIENT_CONNECTION(tls),
                                                 0);
    G_GNUC_END_IGNORE_DEPRECATIONS
    /* TLS 1.2 fails here, 1.3 at the first read: either is a refusal */
    if (g_tls_connection_handshake(G_TLS_CONNECTION(tls), NULL, NULL)) {
        char b[16];
        g_output_stream_write(g_io_stream_get_output_stream(tls), "x", 1, NULL,
                              NULL);
        cr_assert_leq(g_input_stream_read(g_io_stream_get_input_stream(tls), b,
                                          sizeof(b), NULL, NULL),
                      0);
    }
    const char *says = "TLS: the peer sent no certificate (required: "
                       "--tls-cert on migproxy source); refused";
    g_autofree char *dlog = dest_log_wait(says);
    assert_dest_line(dlog, says);
    assert_qemu_untouched();
}

Test(tunnel_tls, plain_source_to_tls_dest)
{
    tls_dest();
    const char *args[] = {NULL};
    g_autofree char *slog = NULL;
    int st = source_run(args, &slog);
    const char *says = "a plain migproxy tunnel (source without "
                       "--tls-cert), and this dest requires TLS; refused";
    g_autofree char *dlog = dest_log_wait(says);
    assert_dest_line(dlog, says);
    cr_assert_eq(st, 1, "%s", slog);
    cr_assert(strstr(slog, "the tunnel to 127.0.0.1:")
                  && strstr(slog, "is plain TCP (no --tls-cert)"),
              "%s", slog);
    cr_assert(strstr(slog, "tunnel handshake: TLS expected by the peer's "
                           "side only"),
              "source:\n%s\ndest:\n%s", slog, dlog);
    assert_qemu_untouched();
}

Test(tunnel_tls, tls_source_to_plain_dest)
{
    const char *dargs[] = {"--allow=127.0.0.1", NULL};
    dest_start(dargs);
    g_autofree char *start = read_text(fx.dest_log);
    cr_assert(strstr(start, "no TLS (no --tls-cert): the tunnel is plain TCP"), "%s",
              start);
    TlsArgs s;
    tls_args(&s, "source", "ca.pem");
    const char *args[] = {s.a[0], s.a[1], s.a[2], NULL};
    g_autofree char *slog = NULL;
    int st = source_run(args, &slog);
    tls_args_clear(&s);
    const char *says = "it speaks TLS (a migproxy source with --tls-cert?), "
                       "and this dest runs without TLS; refused";
    g_autofree char *dlog = dest_log_wait(says);
    assert_dest_line(dlog, says);
    cr_assert_eq(st, 1, "%s", slog);
    cr_assert(strstr(slog, ": TLS: "), "source:\n%s\ndest:\n%s", slog, dlog);
    assert_qemu_untouched();
}

Test(tunnel_tls, not_a_migproxy)
{
    tls_dest();
    g_autoptr(GError) err = NULL;
    g_autoptr(GSocketClient) cl = g_socket_client_new();
    g_autoptr(GSocketConnection) conn = g_socket_client_connect_to_host(
        cl, "127.0.0.1", fx.dest_port, NULL, &err);
    cr_assert_not_null(conn, "%s", err ? err->message : "?");
    const char req[] = "GET / HTTP/1.0\r\n\r\n";
    g_output_stream_write_all(g_io_stream_get_output_stream(G_IO_STREAM(conn)),
                              req, sizeof(req) - 1, NULL, NULL, NULL);
    /* as many of the first bytes as were in (the segments may split) */
    const char *says = "not a migproxy tunnel: neither TLS nor the tunnel "
                       "preamble (first bytes 47";
    g_autofree char *dlog = dest_log_wait(says);
    assert_dest_line(dlog, says);
    assert_qemu_untouched();
}

/* Usage: the three go together; --tls-name needs them; a CA file that is
 * not there; dest without TLS needs --allow. */
Test(tunnel_tls, usage)
{
    g_autofree char *cert = path("source.pem");
    g_autofree char *key = path("source.key");
    g_autofree char *c1 = g_strdup_printf("--tls-cert=%s", cert);
    g_autofree char *k1 = g_strdup_printf("--tls-key=%s", key);
    struct {
        const char *argv[8];
        const char *says;
    } cases[] = {
        {{it_migproxy(), "source", "--listen=127.0.0.1:0", "--peer=127.0.0.1:9",
          c1, NULL},
         "--tls-cert, --tls-key and --tls-ca go together"},
        {{it_migproxy(), "dest", "--listen=127.0.0.1:0", "--to=127.0.0.1:9",
          "--allow=127.0.0.1", "--tls-name=x", NULL},
         "--tls-name needs --tls-cert, --tls-key and --tls-ca"},
        {{it_migproxy(), "dest", "--listen=127.0.0.1:0", "--to=127.0.0.1:9", c1,
          k1, "--tls-ca=/nonexistent/ca.pem", NULL},
         "--tls-ca /nonexistent/ca.pem: "},
        {{it_migproxy(), "dest", "--listen=127.0.0.1:0", "--to=127.0.0.1:9",
          NULL},
         "--allow is required without TLS"},
    };
    for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
        g_autofree char *err_text = NULL;
        int status = -1;
        cr_assert(g_spawn_sync(NULL, (char **)cases[i].argv, NULL,
                               G_SPAWN_STDOUT_TO_DEV_NULL, NULL, NULL, NULL,
                               &err_text, &status, NULL));
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 2,
                  "case %u: status %d: %s", i, status, err_text);
        cr_assert(strstr(err_text, cases[i].says), "case %u: %s", i, err_text);
    }
}
