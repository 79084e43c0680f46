/* relay-itest.c: helpers of the relay's integration tests (see
 * relay-itest.h). */
#include "config.h"
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <glib/gstdio.h>
#include <gio/gio.h>
#include <criterion/criterion.h>
#include "itest-util.h"
#include "relay-itest.h"

#define LISTEN_TIMEOUT_MS 10000

static void
die_with_parent(gpointer user_data)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
}

ItRelay *
it_relay_start(const char *dir, guint16 dst_port, const char *const *extra)
{
    return it_relay_start_full(dir, dst_port, TRUE, extra);
}

ItRelay *
it_relay_start_full(const char *dir, guint16 dst_port, gboolean once,
                    const char *const *extra)
{
    g_autoptr(GError) err = NULL;
    guint16 port = mp_qemu_pick_free_port(&err);
    cr_assert(port, "%s", err ? err->message : "?");
    return it_relay_start_at(dir, NULL, "127.0.0.1", port, "127.0.0.1",
                             dst_port, once, extra);
}

ItRelay *
it_relay_start_at(const char *dir, const char *const *wrapper,
                  const char *host, guint16 port, const char *dst_host,
                  guint16 dst_port, gboolean once, const char *const *extra)
{
    g_autoptr(GError) err = NULL;
    ItRelay *r = g_new0(ItRelay, 1);
    g_autoptr(GPtrArray) argv = g_ptr_array_new_with_free_func(g_free);

    r->status = -1;
    r->dst_port = dst_port;
    r->port = port;
    r->log = g_build_filename(dir, "relay.log", NULL);
    r->out = g_build_filename(dir, "relay.out", NULL);
    r->report = g_build_filename(dir, "report.json", NULL);
    r->metrics = g_build_filename(dir, "metrics.jsonl", NULL);
    r->capture = g_build_filename(dir, "capture", NULL);
    for (guint i = 0; wrapper && wrapper[i]; i++)
        g_ptr_array_add(argv, g_strdup(wrapper[i]));
    g_ptr_array_add(argv, g_strdup(it_migproxy()));
    g_ptr_array_add(argv, g_strdup("relay"));
    g_ptr_array_add(argv, g_strdup_printf("--listen=%s:%u", host, r->port));
    g_ptr_array_add(argv, g_strdup_printf("--to=%s:%u", dst_host, dst_port));
    g_ptr_array_add(argv, g_strdup_printf("--report=%s", r->report));
    g_ptr_array_add(argv, g_strdup_printf("--metrics=%s", r->metrics));
    g_ptr_array_add(argv, g_strdup_printf("--capture=%s", r->capture));
    if (once)
        g_ptr_array_add(argv, g_strdup("--once"));
    g_ptr_array_add(argv, g_strdup("--no-progress"));
    g_ptr_array_add(argv, g_strdup("--verbose"));
    for (guint i = 0; extra && extra[i]; i++)
        g_ptr_array_add(argv, g_strdup(extra[i]));
    g_ptr_array_add(argv, NULL);

    int fd = open(r->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    cr_assert(fd >= 0, "%s: %s", r->log, g_strerror(errno));
    /* its stdout apart: `--metrics -` writes there, logs go to stderr */
    int ofd = open(r->out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    cr_assert(ofd >= 0, "%s: %s", r->out, g_strerror(errno));
    gboolean ok = g_spawn_async_with_pipes_and_fds(
        NULL, (const char *const *)argv->pdata, NULL,
        G_SPAWN_DO_NOT_REAP_CHILD | G_SPAWN_SEARCH_PATH,
        die_with_parent, NULL, -1, ofd, fd, NULL, NULL, 0, &r->pid, NULL, NULL,
        NULL, &err);
    close(fd);
    close(ofd);
    cr_assert(ok, "starting migproxy relay: %s", err ? err->message : "?");

    gint64 deadline = g_get_monotonic_time() + LISTEN_TIMEOUT_MS * 1000ll;
    for (;;) {
        g_autofree char *text = it_relay_log_text(r);
        if (strstr(text, "listening on"))
            break;
        cr_assert(!it_relay_exited(r), "migproxy relay exited:\n%s", text);
        cr_assert(g_get_monotonic_time() < deadline,
                  "migproxy relay does not listen after %u ms:\n%s",
                  LISTEN_TIMEOUT_MS, text);
        g_usleep(20000);
    }
    return r;
}

gboolean
it_relay_exited(ItRelay *r)
{
    int st;
    if (r->status >= 0)
        return TRUE;
    if (waitpid(r->pid, &st, WNOHANG) == r->pid) {
        r->status = st;
        g_spawn_close_pid(r->pid);
        return TRUE;
    }
    return FALSE;
}

int
it_relay_wait(ItRelay *r, guint timeout_ms)
{
    gint64 deadline = g_get_monotonic_time() + timeout_ms * 1000ll;

    while (!it_relay_exited(r)) {
        if (g_get_monotonic_time() > deadline) {
            g_autofree char *text = it_relay_log_text(r);
            cr_assert_fail("migproxy relay still runs after %u ms:\n%s",
                           timeout_ms, text);
        }
        g_usleep(20000);
    }
    if (WIFEXITED(r->status))
        return WEXITSTATUS(r->status);
    g_autofree char *text = it_relay_log_text(r);
    cr_assert_fail("migproxy relay died with signal %d:\n%s",
                   WTERMSIG(r->status), text);
    return -1;
}

void
it_relay_free(ItRelay *r)
{
    if (!r)
        return;
    if (!it_relay_exited(r)) {
        kill(r->pid, SIGKILL);
        int st;
        waitpid(r->pid, &st, 0);
        g_spawn_close_pid(r->pid);
    }
    g_free(r->log);
    g_free(r->out);
    g_free(r->report);
    g_free(r->metrics);
    g_free(r->capture);
    g_free(r);
}

json_object *
it_relay_report(ItRelay *r)
{
    return it_relay_session_report(r, 1);
}

char *
it_relay_report_path(ItRelay *r, guint session)
{
    g_assert(g_str_has_suffix(r->report, ".json"));
    return session > 1 ? g_strdup_printf("%.*s-%u.json",
                                         (int)strlen(r->report) - 5,
                                         r->report, session)
                       : g_strdup(r->report);
}

json_object *
it_relay_session_report(ItRelay *r, guint session)
{
    g_autofree char *path = it_relay_report_path(r, session);
    json_object *doc = json_object_from_file(path);
    g_autofree char *text = it_relay_log_text(r);
    cr_assert_not_null(doc, "no report in %s; relay log:\n%s", path, text);
    /* what tools read: docs/schema/report.schema.json, and once the relay
     * is done, every --metrics line */
    it_validate_json("report", path, FALSE);
    if (session == 1 && it_relay_exited(r)
        && g_file_test(r->metrics, G_FILE_TEST_EXISTS))
        it_validate_json("metrics-line", r->metrics, TRUE);
    return doc;
}

char *
it_relay_log_text(ItRelay *r)
{
    char *text = NULL;
    if (!g_file_get_contents(r->log, &text, NULL, NULL))
        text = g_strdup("");
    return text;
}

void
it_relay_assert_log_has(ItRelay *r, const char *needle, guint timeout_ms)
{
    gint64 deadline = g_get_monotonic_time() + timeout_ms * 1000ll;
    for (;;) {
        g_autofree char *text = it_relay_log_text(r);
        if (strstr(text, needle))
            return;
        cr_assert(g_get_monotonic_time() < deadline,
                  "no \"%s\" in the relay's log:\n%s", needle, text);
        g_usleep(50000);
    }
}

GSocket *
it_connect_from(const char *from, guint16 port)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GInetAddress) lo =
        g_inet_address_new_loopback(G_SOCKET_FAMILY_IPV4);
    g_autoptr(GSocketAddress) a = g_inet_socket_address_new(lo, port);
    GSocket *s = g_socket_new(G_SOCKET_FAMILY_IPV4, G_SOCKET_TYPE_STREAM,
                              G_SOCKET_PROTOCOL_TCP, &err);
    cr_assert_not_null(s, "%s", err ? err->message : "?");
    if (from) {
        g_autoptr(GInetAddress) fa = g_inet_address_new_from_string(from);
        g_autoptr(GSocketAddress) fsa = g_inet_socket_address_new(fa, 0);
        cr_assert(g_socket_bind(s, fsa, FALSE, &err), "bind %s: %s", from,
                  err->message);
    }
    g_socket_set_timeout(s, 5);
    cr_assert(g_socket_connect(s, a, NULL, &err), "connect: %s",
              err ? err->message : "?");
    return s;
}

GSocket *
it_connect_port(guint16 port)
{
    return it_connect_from(NULL, port);
}

void
it_send_all(GSocket *s, const void *buf, gsize len)
{
    g_autoptr(GError) err = NULL;
    cr_assert_eq(g_socket_send(s, buf, len, NULL, &err), (gssize)len, "%s",
                 err ? err->message : "short send");
}

void
it_assert_closed_by_relay(GSocket *s, const char *what)
{
    g_autoptr(GError) err = NULL;
    char buf[64];
    gssize n = g_socket_receive(s, buf, sizeof(buf), NULL, &err);
    cr_assert(
        n == 0
            || (n < 0
                && !g_error_matches(err, G_IO_ERROR, G_IO_ERROR_TIMED_OUT)),
        "%s: the relay did not close the connection (%zd%s%s)", what, n,
        err ? ": " : "", err ? err->message : "");
}

GSocket *
it_fake_destination(guint16 *port)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GInetAddress) lo =
        g_inet_address_new_loopback(G_SOCKET_FAMILY_IPV4);
    g_autoptr(GSocketAddress) any = g_inet_socket_address_new(lo, 0);
    GSocket *fake = g_socket_new(G_SOCKET_FAMILY_IPV4, G_SOCKET_TYPE_STREAM,
                                 G_SOCKET_PROTOCOL_TCP, &err);
    cr_assert(fake && g_socket_bind(fake, any, TRUE, &err)
                  && g_socket_listen(fake, &err),
              "%s", err ? err->message : "?");
    /* non-blocking: it_assert_no_connection() polls it with accept() */
    g_socket_set_blocking(fake, FALSE);
    g_autoptr(GSocketAddress) bound = g_socket_get_local_address(fake, &err);
    *port = g_inet_socket_address_get_port(G_INET_SOCKET_ADDRESS(bound));
    return fake;
}

void
it_assert_no_connection(GSocket *fake)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GSocket) s = g_socket_accept(fake, NULL, &err);
    cr_assert_null(s, "a client that is not QEMU reached the destination");
    cr_assert(g_error_matches(err, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK), "%s",
              err->message);
}

void
it_fake_destination_close(GSocket **fake)
{
    if (*fake)
        g_socket_close(*fake, NULL);
    g_clear_object(fake);
}

void
it_set_int(MpQemu *q, const char *name, gint64 v)
{
    g_autoptr(GError) err = NULL;
    cr_assert(mp_qemu_set_parameter_int(q, name, v, &err), "%s",
              err ? err->message : "?");
}

void
it_wait_status(MpQemu *q, const char *want, guint timeout_ms)
{
    gint64 deadline = g_get_monotonic_time() + timeout_ms * 1000ll;
    for (;;) {
        g_autofree char *st = it_migration_status(q);
        if (strcmp(st, want) == 0)
            return;
        cr_assert(g_get_monotonic_time() < deadline,
                  "%s: migration status %s, waited for %s",
                  mp_qemu_name(q), st, want);
        g_usleep(50000);
    }
}

void
it_start_postcopy(MpQemu *src, guint after_ms)
{
    g_autoptr(GError) err = NULL;
    gint64 t0 = g_get_monotonic_time();

    for (;;) {
        g_autofree char *st = it_migration_status(src);
        cr_assert(strcmp(st, "failed") && strcmp(st, "completed"),
                  "the migration ended (%s) before post-copy started", st);
        if (strcmp(st, "active") == 0
            && g_get_monotonic_time() - t0 >= after_ms * 1000ll)
            break;
        g_usleep(20000);
    }
    json_object *ret =
        mp_qemu_execute(src, "migrate-start-postcopy", NULL, &err);
    cr_assert_not_null(ret, "%s", err ? err->message : "?");
    json_object_put(ret);
}

MpQemu *
it_start_destination(const char *version, const char *machine, gboolean running,
                     const char *const *extra)
{
    return it_start_destination_bin(NULL, version, machine, running, extra);
}

MpQemu *
it_start_destination_bin(const char *binary, const char *version,
                         const char *machine, gboolean running,
                         const char *const *extra)
{
    g_autoptr(GError) err = NULL;
    MpQemuConfig cfg = {
        .binary = binary,
        .version = version,
        .label = "dst",
        .machine = machine,
        .memory_mib = 128,
        .paused = !running,
        .incoming = "defer",
        .extra_args = extra,
    };
    MpQemu *q = mp_qemu_start(&cfg, &err);
    cr_assert_not_null(q, "%s", err ? err->message : "?");
    return q;
}

void
it_incoming(MpQemu *dst, guint16 port)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *uri = g_strdup_printf("tcp:127.0.0.1:%u", port);
    json_object *args = json_object_new_object();
    json_object_object_add(args, "uri", json_object_new_string(uri));
    json_object *ret = mp_qemu_execute(dst, "migrate-incoming", args, &err);
    json_object_put(args);
    cr_assert_not_null(ret, "%s", err ? err->message : "?");
    json_object_put(ret);
}

void
it_cap(MpQemu *q, const char *cap)
{
    g_autoptr(GError) err = NULL;
    cr_assert(mp_qemu_set_capability(q, cap, TRUE, &err), "%s",
              err ? err->message : "?");
}

void
it_migrate(MpQemu *src, guint16 port, gboolean blk)
{
    g_autofree char *uri = g_strdup_printf("tcp:127.0.0.1:%u", port);
    it_migrate_uri(src, uri, blk);
}

void
it_migrate_uri(MpQemu *src, const char *uri, gboolean blk)
{
    g_autoptr(GError) err = NULL;
    json_object *args = json_object_new_object();
    json_object_object_add(args, "uri", json_object_new_string(uri));
    if (blk)
        json_object_object_add(args, "blk", json_object_new_boolean(TRUE));
    json_object *ret = mp_qemu_execute(src, "migrate", args, &err);
    json_object_put(args);
    cr_assert_not_null(ret, "migrate: %s", err ? err->message : "?");
    json_object_put(ret);
}

void
it_postcopy_recover(MpQemu *src, MpQemu *dst, guint16 recover_port,
                    guint16 resume_port)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *duri = g_strdup_printf("tcp:127.0.0.1:%u", recover_port);
    json_object *args = json_object_new_object();
    json_object_object_add(args, "uri", json_object_new_string(duri));
    json_object *ret = mp_qemu_execute(dst, "migrate-recover", args, &err);
    json_object_put(args);
    cr_assert_not_null(ret, "migrate-recover: %s", err ? err->message : "?");
    json_object_put(ret);
    g_autofree char *suri = g_strdup_printf("tcp:127.0.0.1:%u", resume_port);
    args = json_object_new_object();
    json_object_object_add(args, "uri", json_object_new_string(suri));
    json_object_object_add(args, "resume", json_object_new_boolean(TRUE));
    ret = mp_qemu_execute(src, "migrate", args, &err);
    json_object_put(args);
    cr_assert_not_null(ret, "migrate resume: %s", err ? err->message : "?");
    json_object_put(ret);
}

json_object *
it_wait_final(MpQemu *q, guint timeout_ms)
{
    g_autoptr(GError) err = NULL;
    json_object *info = NULL;
    mp_qemu_wait_migration(q, timeout_ms, &info, &err);
    cr_assert_not_null(info, "%s: %s", mp_qemu_name(q),
                       err ? err->message : "no final migration status");
    return info;
}

static char *
query_string(MpQemu *q, const char *command, const char *key)
{
    g_autoptr(GError) err = NULL;
    json_object *ret = mp_qemu_execute(q, command, NULL, &err), *v;
    cr_assert_not_null(ret, "%s", err ? err->message : "?");
    char *s = g_strdup(json_object_object_get_ex(ret, key, &v)
                           ? json_object_get_string(v)
                           : "");
    json_object_put(ret);
    return s;
}

char *
it_migration_status(MpQemu *q)
{
    return query_string(q, "query-migrate", "status");
}

char *
it_run_state(MpQemu *q)
{
    return query_string(q, "query-status", "status");
}

json_object *
it_jget(json_object *doc, const char *path)
{
    g_auto(GStrv) parts = g_strsplit(path, ".", -1);
    json_object *o = doc;
    for (guint i = 0; o && parts[i]; i++)
        if (!json_object_object_get_ex(o, parts[i], &o))
            return NULL;
    return o;
}

double
it_jnum(json_object *doc, const char *path)
{
    json_object *o = it_jget(doc, path);
    cr_assert_not_null(o, "no %s", path);
    return json_object_get_double(o);
}

void
it_assert_same_ram(MpQemu *a, MpQemu *b, guint64 ram_bytes, const char *tmpdir)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *path = g_build_filename(tmpdir, "reference.bin", NULL);

    cr_assert(mp_qemu_pmemsave(a, 0, ram_bytes, path, &err), "%s",
              err ? err->message : "?");
    it_assert_ram_equals(b, path, ram_bytes, tmpdir);
    g_unlink(path);
}

void
it_relay_migrate_72(ItRelay *r, guint16 dport, MpQemu **src, MpQemu **dst,
                    const char *dir)
{
    *src = it_start_workload("7.2", NULL, 128, "mem=32M", NULL);
    *dst = it_start_destination("7.2", NULL, FALSE, NULL);
    it_incoming(*dst, dport);
    it_migrate(*src, r->port, FALSE);
    json_object *info = it_wait_final(*src, 120 * 1000);
    g_autofree char *log = it_relay_log_text(r);
    cr_assert_str_eq(json_object_get_string(it_jget(info, "status")),
                     "completed", "relay log:\n%s", log);
    json_object_put(info);
    cr_assert_eq(it_relay_wait(r, 30000), 0);
    it_assert_same_ram(*src, *dst, 128ull << 20, dir);
}

void
it_relay_fixture_init(ItRelayFixture *fx)
{
    fx->dir = it_tmpdir();
}

void
it_relay_fixture_fini(ItRelayFixture *fx)
{
    g_clear_pointer(&fx->relay, it_relay_free);
    g_clear_pointer(&fx->relay2, it_relay_free);
    g_clear_pointer(&fx->src, mp_qemu_free);
    g_clear_pointer(&fx->dst, mp_qemu_free);
    it_fake_destination_close(&fx->fake_dst);
    if (fx->dir)
        tu_remove_tree(fx->dir);
    g_clear_pointer(&fx->dir, g_free);
}
