/* test-relay-files.c: the files `migproxy relay` writes (--capture,
 * --report, --metrics), with small socket clients instead of QEMU: a
 * "source" that sends a stream header and some bytes, a "destination"
 * that reads everything.
 *   - the relay's fds stay bounded over many sessions with --capture;
 *   - each session has its own report, which names it;
 *   - links planted at the report and metrics paths are replaced, their
 *     targets untouched; a capture directory that is not empty is
 *     refused at start;
 *   - a full disk (a 64 KiB tmpfs mounted here) stops the capture, not
 *     the forwarding, and the report says where and why; the metrics
 *     file ends with a whole line; a report that cannot be written is an
 *     error and --once exits 1.
 */
#include "config.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <poll.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <glib/gstdio.h>
#include <gio/gio.h>
#include <criterion/criterion.h>
#include <json-c/json.h>
#include "itest-util.h"

#define WAIT_MS 20000

static const guint8 qevm[8] = {'Q', 'E', 'V', 'M', 0, 0, 0, 3};

typedef struct {
    GPid pid;
    char *log;
    guint16 port;
    int status;
} Relay;

static struct {
    char *dir;
    char *tmpfs; /* mounted here, or NULL */
    char *loop;  /* an ext4 image mounted here, or NULL */
    gboolean frozen;
    Relay *relay;
    GSocket *dst;
    GThread *dst_thread;
    guint64 dst_bytes; /* atomic: what the destination read, all conns */
    gint dst_conns;
} fx;

static const char *
migproxy(void)
{
    const char *p = g_getenv("MP_MIGPROXY");
    cr_assert_not_null(p, "MP_MIGPROXY is not set");
    return p;
}

static void
die_with_parent(gpointer user_data)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
}

static char *
log_text(Relay *r)
{
    char *text = NULL;
    g_file_get_contents(r->log, &text, NULL, NULL);
    return text ? text : g_strdup("");
}

/* `migproxy relay --listen 127.0.0.1:0 --to 127.0.0.1:dport ARGS...`,
 * started and listening (port parsed from its log), or exited (status
 * set) when `may_fail`. */
static Relay *
relay_start(guint16 dport, gboolean may_fail, const char *const *args)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) argv = g_ptr_array_new_with_free_func(g_free);
    Relay *r = g_new0(Relay, 1);
    r->status = -1;
    r->log = g_build_filename(fx.dir, "relay.log", NULL);
    g_ptr_array_add(argv, g_strdup(migproxy()));
    g_ptr_array_add(argv, g_strdup("relay"));
    g_ptr_array_add(argv, g_strdup("--listen=127.0.0.1:0"));
    g_ptr_array_add(argv, g_strdup_printf("--to=127.0.0.1:%u", dport));
    g_ptr_array_add(argv, g_strdup("--no-progress"));
    for (guint i = 0; args[i]; i++)
        g_ptr_array_add(argv, g_strdup(args[i]));
    g_ptr_array_add(argv, NULL);
    int fd = open(r->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    cr_assert(fd >= 0);
    cr_assert(g_spawn_async_with_pipes_and_fds(
                  NULL, (const char *const *)argv->pdata, NULL,
                  G_SPAWN_DO_NOT_REAP_CHILD, die_with_parent, NULL, -1, -1, fd,
                  NULL, NULL, 0, &r->pid, NULL, NULL, NULL, &err),
              "%s", err ? err->message : "?");
    close(fd);
    gint64 deadline = g_get_monotonic_time() + WAIT_MS * 1000ll;
    for (;;) {
        g_autofree char *text = log_text(r);
        const char *l = strstr(text, "listening on 127.0.0.1:");
        if (l) {
            r->port = atoi(l + strlen("listening on 127.0.0.1:"));
            return r;
        }
        int st;
        if (waitpid(r->pid, &st, WNOHANG) == r->pid) {
            r->status = st;
            r->pid = 0;
            cr_assert(may_fail, "the relay exited: %s", text);
            return r;
        }
        cr_assert(g_get_monotonic_time() < deadline, "not listening: %s", text);
        g_usleep(20000);
    }
}

/* @return its exit code once it exited (within WAIT_MS). */
static int
relay_wait(Relay *r)
{
    gint64 deadline = g_get_monotonic_time() + WAIT_MS * 1000ll;
    while (r->pid) {
        int st;
        if (waitpid(r->pid, &st, WNOHANG) == r->pid) {
            r->status = st;
            r->pid = 0;
            break;
        }
        g_autofree char *text = log_text(r);
        cr_assert(g_get_monotonic_time() < deadline, "still running: %s", text);
        g_usleep(20000);
    }
    cr_assert(WIFEXITED(r->status));
    return WEXITSTATUS(r->status);
}

static void
relay_free(Relay *r)
{
    if (!r)
        return;
    if (r->pid) {
        kill(r->pid, SIGKILL);
        waitpid(r->pid, NULL, 0);
    }
    g_free(r->log);
    g_free(r);
}

static guint
relay_fds(Relay *r)
{
    g_autofree char *path = g_strdup_printf("/proc/%d/fd", r->pid);
    g_autoptr(GDir) d = g_dir_open(path, 0, NULL);
    guint n = 0;
    while (d && g_dir_read_name(d))
        n++;
    return n;
}

/* One connection of the destination: read to EOF, count, close. */
static gpointer
dst_conn(gpointer data)
{
    g_autoptr(GSocket) s = data;
    char buf[65536];
    gssize n;
    while ((n = g_socket_receive(s, buf, sizeof(buf), NULL, NULL)) > 0)
        g_atomic_pointer_add(&fx.dst_bytes, n);
    g_socket_close(s, NULL);
    return NULL;
}

static gpointer
dst_accept(gpointer data)
{
    GSocket *l = data;
    for (;;) {
        GSocket *s = g_socket_accept(l, NULL, NULL);
        if (!s)
            return NULL; /* the listener was shut down */
        g_atomic_int_inc(&fx.dst_conns);
        g_thread_unref(g_thread_new("dst-conn", dst_conn, s));
    }
}

static guint16
dst_start(void)
{
    g_autoptr(GInetAddress) lo =
        g_inet_address_new_loopback(G_SOCKET_FAMILY_IPV4);
    g_autoptr(GSocketAddress) a = g_inet_socket_address_new(lo, 0);
    fx.dst = g_socket_new(G_SOCKET_FAMILY_IPV4, G_SOCKET_TYPE_STREAM,
                          G_SOCKET_PROTOCOL_TCP, NULL);
    cr_assert(g_socket_bind(fx.dst, a, TRUE, NULL)
              && g_socket_listen(fx.dst, NULL));
    g_autoptr(GSocketAddress) b = g_socket_get_local_address(fx.dst, NULL);
    fx.dst_thread = g_thread_new("dst", dst_accept, fx.dst);
    return g_inet_socket_address_get_port(G_INET_SOCKET_ADDRESS(b));
}

/* A source: header, `extra` bytes of a pattern in sends of at most
 * `piece` bytes (a pause after each when `piece` is small), close. */
static void
source_pieces(guint16 port, gsize extra, gsize piece)
{
    g_autoptr(GSocketClient) c = g_socket_client_new();
    g_autofree char *hp = g_strdup_printf("127.0.0.1:%u", port);
    g_autoptr(GSocketConnection) conn =
        g_socket_client_connect_to_host(c, hp, 0, NULL, NULL);
    cr_assert_not_null(conn, "connect %s", hp);
    GSocket *s = g_socket_connection_get_socket(conn);
    /* a relay that stalls fails the test instead of hanging it */
    g_socket_set_timeout(s, WAIT_MS / 1000);
    cr_assert_eq(g_socket_send(s, (const char *)qevm, 8, NULL, NULL), 8);
    g_autofree guint8 *buf = g_malloc(65536);
    for (gsize i = 0; i < 65536; i++)
        buf[i] = (guint8)(i * 2654435761u >> 13);
    while (extra) {
        gssize n =
            g_socket_send(s, (const char *)buf, MIN(extra, piece), NULL, NULL);
        cr_assert_gt(n, 0, "the relay stopped reading");
        extra -= n;
        if (piece < 65536)
            g_usleep(1000); /* read as many chunks */
        /* the relay checks a connection before it forwards it: wait for
         * that, so that the first chunk is small too */
        gint64 deadline = g_get_monotonic_time() + WAIT_MS * 1000ll;
        while (piece < 65536 && !g_atomic_pointer_get(&fx.dst_bytes)) {
            cr_assert(g_get_monotonic_time() < deadline, "nothing forwarded");
            g_usleep(1000);
        }
    }
    g_socket_shutdown(s, FALSE, TRUE, NULL);
    /* the relay closes its side once the destination has it all */
    char b;
    while (g_socket_receive(s, &b, 1, NULL, NULL) > 0)
        ;
    g_socket_close(s, NULL);
}

static void
source(guint16 port, gsize extra)
{
    source_pieces(port, extra, 65536);
}

static void
wait_for(const char *path)
{
    gint64 deadline = g_get_monotonic_time() + WAIT_MS * 1000ll;
    while (!g_file_test(path, G_FILE_TEST_EXISTS)) {
        g_autofree char *text = fx.relay ? log_text(fx.relay) : NULL;
        cr_assert(g_get_monotonic_time() < deadline, "no %s; log:\n%s", path,
                  text);
        g_usleep(20000);
    }
}

static json_object *
jget(json_object *o, const char *path)
{
    g_auto(GStrv) parts = g_strsplit(path, ".", -1);
    for (guint i = 0; o && parts[i]; i++)
        if (!json_object_object_get_ex(o, parts[i], &o))
            return NULL;
    return o;
}

static gboolean run_tool(const char *tool, const char *a1, const char *a2);

/* Runs a system tool; @return TRUE if it exited 0. */
static gboolean
run_tool(const char *tool, const char *a1, const char *a2)
{
    const char *argv[] = {tool, a1, a2, NULL};
    int status;
    return g_spawn_sync(NULL, (char **)argv, NULL,
                        G_SPAWN_SEARCH_PATH | G_SPAWN_STDOUT_TO_DEV_NULL
                            | G_SPAWN_STDERR_TO_DEV_NULL,
                        NULL, NULL, NULL, NULL, &status, NULL)
           && g_spawn_check_wait_status(status, NULL);
}

static void
setup(void)
{
    fx.dir = g_dir_make_tmp("mp-relay-files-XXXXXX", NULL);
    cr_assert_not_null(fx.dir);
    fx.dst_bytes = 0;
    fx.dst_conns = 0;
}

static void
teardown(void)
{
    /* thawed first: a process blocked on a frozen disk cannot be reaped */
    if (fx.frozen)
        run_tool("fsfreeze", "-u", fx.loop);
    fx.frozen = FALSE;
    relay_free(fx.relay);
    fx.relay = NULL;
    if (fx.dst) {
        g_socket_shutdown(fx.dst, TRUE, TRUE, NULL);
        g_socket_close(fx.dst, NULL);
        g_thread_join(fx.dst_thread);
        g_clear_object(&fx.dst);
    }
    if (fx.loop) {
        umount2(fx.loop, MNT_DETACH);
        g_clear_pointer(&fx.loop, g_free);
    }
    if (fx.tmpfs) {
        umount2(fx.tmpfs, MNT_DETACH);
        g_clear_pointer(&fx.tmpfs, g_free);
    }
    tu_remove_tree(fx.dir);
    g_clear_pointer(&fx.dir, g_free);
}

TestSuite(relay_files, .init = setup, .fini = teardown, .timeout = 120);

/* A small tmpfs at DIR/name (root only: skipped otherwise). */
static char *
mount_tmpfs(const char *name, const char *size)
{
    char *mnt = g_build_filename(fx.dir, name, NULL);
    cr_assert_eq(g_mkdir(mnt, 0700), 0);
    g_autofree char *opts = g_strdup_printf("size=%s,mode=0700", size);
    if (mount("mp-test", mnt, "tmpfs", MS_NOSUID | MS_NODEV, opts) < 0) {
        int e = errno;
        cr_skip_test("cannot mount a tmpfs: %s", g_strerror(e));
    }
    fx.tmpfs = g_strdup(mnt);
    return mnt;
}

/* 300 connect/header/close sessions with --capture left 1 208 fds open
 * (four per channel, for ever). */
Test(relay_files, fds_bounded_over_sessions)
{
    guint16 dport = dst_start();
    g_autofree char *cap = g_build_filename(fx.dir, "cap", NULL);
    g_autofree char *a_cap = g_strdup_printf("--capture=%s", cap);
    const char *args[] = {a_cap, NULL};
    fx.relay = relay_start(dport, FALSE, args);

    for (guint i = 0; i < 20; i++)
        source(fx.relay->port, 100);
    g_usleep(300000);
    guint early = relay_fds(fx.relay);
    for (guint i = 0; i < 200; i++)
        source(fx.relay->port, 100);
    g_usleep(300000);
    guint late = relay_fds(fx.relay);
    cr_assert_leq(late, early + 4,
                  "%u fds after 220 sessions, %u after 20: the capture "
                  "keeps files open",
                  late, early);
    cr_assert_lt(late, 40, "%u fds", late);
}

/* Each session has its own report: the first at --report, the Nth at
 * report-N.json; a later session (a stranger's) never replaces an
 * earlier one's. */
Test(relay_files, one_report_per_session)
{
    guint16 dport = dst_start();
    g_autofree char *report = g_build_filename(fx.dir, "report.json", NULL);
    g_autofree char *report2 = g_build_filename(fx.dir, "report-2.json", NULL);
    g_autofree char *a_rep = g_strdup_printf("--report=%s", report);
    const char *args[] = {a_rep, NULL};
    fx.relay = relay_start(dport, FALSE, args);

    source(fx.relay->port, 5000);
    wait_for(report);
    source(fx.relay->port, 100);
    wait_for(report2);
    json_object *r1 = json_object_from_file(report);
    json_object *r2 = json_object_from_file(report2);
    cr_assert(r1 && r2);
    it_validate_json("report", report, FALSE);
    it_validate_json("report", report2, FALSE);
    cr_assert_eq(json_object_get_int(jget(r1, "session")), 1);
    cr_assert_eq(json_object_get_int(jget(r2, "session")), 2);
    json_object *ch = json_object_array_get_idx(jget(r1, "channels"), 0);
    cr_assert_eq(json_object_get_int64(jget(ch, "to_dst.bytes")), 5008);
    json_object_put(r1);
    json_object_put(r2);
    struct stat st;
    cr_assert_eq(stat(report, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600, "report %o", st.st_mode & 0777);
}

/* What a monitor read on `fd` from the relay until a line with `until`
 * came (5 s at most). */
static GString *
read_lines_until(int fd, const char *until)
{
    GString *got = g_string_new(NULL);
    gint64 deadline = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
    char buf[4096];

    while (!strstr(got->str, until)) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        cr_assert(g_get_monotonic_time() < deadline, "no %s line in:\n%s",
                  until, got->str);
        if (poll(&p, 1, 100) <= 0)
            continue;
        ssize_t n = read(fd, buf, sizeof(buf));
        cr_assert_gt(n, 0, "the relay closed the metrics socket");
        g_string_append_len(got, buf, n);
    }
    return got;
}

/* --metrics unix:PATH: a monitor listening there gets the session's
 * lines, valid; when it goes away the relay goes on, the next session's
 * lines are dropped and counted, and its report says so. */
Test(relay_files, metrics_to_a_unix_socket)
{
    guint16 dport = dst_start();
    g_autofree char *sock = g_build_filename(fx.dir, "mon.sock", NULL);
    g_autofree char *report = g_build_filename(fx.dir, "report.json", NULL);
    g_autofree char *report2 = g_build_filename(fx.dir, "report-2.json", NULL);
    g_autofree char *lines = g_build_filename(fx.dir, "got.jsonl", NULL);
    g_autofree char *a_rep = g_strdup_printf("--report=%s", report);
    g_autofree char *a_met = g_strdup_printf("--metrics=unix:%s", sock);
    const char *args[] = {a_rep, a_met, NULL};
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    g_strlcpy(sa.sun_path, sock, sizeof(sa.sun_path));
    cr_assert(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    cr_assert(listen(lfd, 1) == 0);
    fx.relay = relay_start(dport, FALSE, args);
    int cfd = accept(lfd, NULL, NULL); /* it connected when it started */
    cr_assert(cfd >= 0);

    source(fx.relay->port, 5000);
    g_autoptr(GString) got = read_lines_until(cfd, "\"session-end\"");
    cr_assert(g_file_set_contents(lines, got->str, got->len, NULL));
    it_validate_json("metrics-line", lines, TRUE);
    wait_for(report);
    it_validate_json("report", report, FALSE);
    json_object *r = json_object_from_file(report);
    cr_assert_str_eq(json_object_get_string(jget(r, "outputs.metrics.socket")),
                     sock);
    cr_assert_eq(
        json_object_get_int64(jget(r, "outputs.metrics.dropped_lines")), 0);
    cr_assert(json_object_get_boolean(jget(r, "outputs.metrics.connected")));
    json_object_put(r);

    /* the monitor goes away */
    close(cfd);
    close(lfd);
    g_unlink(sock);
    source(fx.relay->port, 100);
    wait_for(report2);
    it_validate_json("report", report2, FALSE);
    r = json_object_from_file(report2);
    cr_assert_gt(
        json_object_get_int64(jget(r, "outputs.metrics.dropped_lines")), 0,
        "%s", json_object_to_json_string(r));
    cr_assert(!json_object_get_boolean(jget(r, "outputs.metrics.complete")));
    cr_assert(!json_object_get_boolean(jget(r, "outputs.metrics.connected")));
    cr_assert_eq(json_object_get_int(jget(r, "session")), 2);
    json_object_put(r);
}

/* Links planted at --report and --metrics are replaced, not followed;
 * their targets keep their bytes.  A capture directory holding a planted
 * link (or anything) is refused at start, never written through. */
Test(relay_files, planted_links_not_followed)
{
    guint16 dport = dst_start();
    g_autofree char *victim = g_build_filename(fx.dir, "victim", NULL);
    cr_assert(g_file_set_contents(victim, "precious", -1, NULL));
    g_autofree char *report = g_build_filename(fx.dir, "report.json", NULL);
    g_autofree char *metrics = g_build_filename(fx.dir, "m.jsonl", NULL);
    cr_assert_eq(symlink(victim, report), 0);
    cr_assert_eq(symlink(victim, metrics), 0);
    g_autofree char *a_rep = g_strdup_printf("--report=%s", report);
    g_autofree char *a_met = g_strdup_printf("--metrics=%s", metrics);
    const char *args[] = {a_rep, a_met, "--once", NULL};
    fx.relay = relay_start(dport, FALSE, args);
    source(fx.relay->port, 5000);
    relay_wait(fx.relay);

    g_autofree char *text = NULL;
    cr_assert(g_file_get_contents(victim, &text, NULL, NULL));
    cr_assert_str_eq(text, "precious");
    cr_assert(!g_file_test(report, G_FILE_TEST_IS_SYMLINK));
    cr_assert(!g_file_test(metrics, G_FILE_TEST_IS_SYMLINK));
    json_object *r = json_object_from_file(report);
    cr_assert_not_null(r);
    json_object_put(r);
    it_validate_json("report", report, FALSE);
    it_validate_json("metrics-line", metrics, TRUE);

    /* a capture directory with a link planted in it */
    g_autofree char *cap = g_build_filename(fx.dir, "cap", NULL);
    cr_assert_eq(g_mkdir(cap, 0700), 0);
    g_autofree char *bin = g_build_filename(cap, "s1-c0-to-dst.bin", NULL);
    cr_assert_eq(symlink(victim, bin), 0);
    g_autofree char *a_cap = g_strdup_printf("--capture=%s", cap);
    const char *args2[] = {a_cap, "--once", NULL};
    relay_free(fx.relay);
    fx.relay = relay_start(dport, TRUE, args2);
    if (fx.relay->pid) /* old behaviour: it ran; show that it followed */
        source(fx.relay->port, 5000);
    cr_assert_eq(relay_wait(fx.relay), 1);
    g_autofree char *log = log_text(fx.relay);
    cr_assert(strstr(log, "not empty"), "%s", log);
    g_free(text);
    cr_assert(g_file_get_contents(victim, &text, NULL, NULL));
    cr_assert_str_eq(text, "precious");
}

/* The capture on a 64 KiB tmpfs, 1 MiB through the relay: every byte
 * reaches the destination, the report (elsewhere) says the capture
 * failed, in which file, at which offset and why, and what was captured
 * reads back with `migproxy analyze`. */
Test(relay_files, disk_full_capture)
{
    guint16 dport = dst_start();
    g_autofree char *mnt = mount_tmpfs("small", "64k");
    g_autofree char *cap = g_build_filename(mnt, "cap", NULL);
    g_autofree char *report = g_build_filename(fx.dir, "report.json", NULL);
    g_autofree char *a_cap = g_strdup_printf("--capture=%s", cap);
    g_autofree char *a_rep = g_strdup_printf("--report=%s", report);
    const char *args[] = {a_cap, a_rep, "--once", NULL};
    fx.relay = relay_start(dport, FALSE, args);
    source_pieces(fx.relay->port, 1 << 20, 4096);
    relay_wait(fx.relay);
    cr_assert_eq(g_atomic_pointer_get(&fx.dst_bytes), 8 + (1 << 20),
                 "forwarding stopped with the capture");

    json_object *r = json_object_from_file(report);
    cr_assert_not_null(r, "no report");
    it_validate_json("report", report, FALSE); /* outputs.capture.error */
    json_object *c = jget(r, "outputs.capture");
    cr_assert_not_null(c, "%s", json_object_to_json_string(r));
    cr_assert(!json_object_get_boolean(jget(c, "complete")));
    cr_assert_str_eq(json_object_get_string(jget(c, "file")),
                     "s1-c0-to-dst.bin");
    gint64 off = json_object_get_int64(jget(c, "offset"));
    cr_assert_gt(off, 0);
    cr_assert_lt(off, 64 << 10);
    cr_assert(strstr(json_object_get_string(jget(c, "error")),
                     "No space left on device"),
              "%s", json_object_get_string(jget(c, "error")));
    json_object_put(r);

    /* what was written is consistent: .bin ends where the entry says */
    g_autofree char *bin = g_build_filename(cap, "s1-c0-to-dst.bin", NULL);
    struct stat st;
    cr_assert_eq(stat(bin, &st), 0);
    cr_assert_eq(st.st_size, off);
    g_autofree char *out = NULL;
    int status;
    const char *argv[] = {migproxy(), "analyze", "--json", cap, NULL};
    cr_assert(g_spawn_sync(NULL, (char **)argv, NULL,
                           G_SPAWN_STDERR_TO_DEV_NULL, NULL, NULL, &out, NULL,
                           &status, NULL));
    json_object *a = json_tokener_parse(out);
    cr_assert_not_null(a, "%s", out);
    json_object *ch = json_object_array_get_idx(jget(a, "channels"), 0);
    cr_assert_eq(json_object_get_int64(jget(ch, "to_dst.bytes")), off);
    cr_assert_not_null(jget(a, "capture_error"));
    json_object_put(a);
}

/* The metrics file on a full disk ends with a whole line, with a warning
 * and a mark in the report; a report that cannot be written is an error
 * and --once exits 1. */
Test(relay_files, disk_full_metrics_and_report)
{
    guint16 dport = dst_start();
    g_autofree char *mnt = mount_tmpfs("small", "8k");
    g_autofree char *metrics = g_build_filename(mnt, "m.jsonl", NULL);
    g_autofree char *report = g_build_filename(fx.dir, "report.json", NULL);
    g_autofree char *a_met = g_strdup_printf("--metrics=%s", metrics);
    g_autofree char *a_rep = g_strdup_printf("--report=%s", report);
    const char *args[] = {a_met, a_rep, NULL};
    fx.relay = relay_start(dport, FALSE, args);
    /* sessions until the metrics no longer fit */
    for (guint i = 0; i < 40; i++)
        source(fx.relay->port, 1000);
    g_autofree char *last = g_strdup_printf("%s/report-40.json", fx.dir);
    wait_for(last);
    g_autofree char *text = NULL;
    gsize len;
    cr_assert(g_file_get_contents(metrics, &text, &len, NULL));
    cr_assert_gt(len, 0);
    cr_assert_eq(text[len - 1], '\n', "the metrics file ends mid-line");
    g_autofree char *log = log_text(fx.relay);
    cr_assert(strstr(log, "warning: --metrics"), "%s", log);
    json_object *r = json_object_from_file(last);
    cr_assert_not_null(r);
    it_validate_json("report", last, FALSE);         /* outputs.metrics.error */
    it_validate_json("metrics-line", metrics, TRUE); /* whole lines */
    cr_assert(!json_object_get_boolean(jget(r, "outputs.metrics.complete")),
              "%s", json_object_to_json_string(r));
    cr_assert_eq(json_object_get_int64(jget(r, "outputs.metrics.offset")),
                 (gint64)len);
    json_object_put(r);
    kill(fx.relay->pid, SIGTERM);
    relay_wait(fx.relay);

    /* now the report on the full disk: an error, exit status 1 */
    g_autofree char *filler = g_build_filename(mnt, "filler", NULL);
    g_autofree char *big = g_malloc0(64 << 10);
    g_file_set_contents(filler, big, 64 << 10, NULL); /* fills it up */
    g_autofree char *report_full = g_build_filename(mnt, "r.json", NULL);
    g_autofree char *a_rep2 = g_strdup_printf("--report=%s", report_full);
    const char *args2[] = {a_rep2, "--once", NULL};
    relay_free(fx.relay);
    fx.relay = relay_start(dport, FALSE, args2);
    source(fx.relay->port, 1 << 20);
    cr_assert_eq(relay_wait(fx.relay), 1, "a lost report exits 1");
    g_free(log);
    log = log_text(fx.relay);
    cr_assert(strstr(log, "error: session 1: the report is lost"), "%s", log);
}

/* A disk that stops answering (an ext4 image, frozen with fsfreeze:
 * every write blocks) must not stall forwarding: 160 MiB go through
 * while nothing can be written, the capture stops once 64 MiB wait, and
 * the report says so at once; after the thaw, what was queued is
 * written and reads back up to the offset the report gave. */
Test(relay_files, frozen_disk_never_stalls_forwarding)
{
    guint16 dport = dst_start();
    g_autofree char *img = g_build_filename(fx.dir, "disk.img", NULL);
    g_autofree char *mnt = g_build_filename(fx.dir, "disk", NULL);
    cr_assert_eq(g_mkdir(mnt, 0700), 0);
    int fd = open(img, O_WRONLY | O_CREAT | O_EXCL, 0600);
    cr_assert(fd >= 0 && ftruncate(fd, 256 << 20) == 0);
    close(fd);
    if (!run_tool("mkfs.ext4", "-qF", img))
        cr_skip_test("mkfs.ext4 failed");
    const char *argv[] = {"mount", "-o", "loop", img, mnt, NULL};
    int status;
    if (!g_spawn_sync(NULL, (char **)argv, NULL,
                      G_SPAWN_SEARCH_PATH | G_SPAWN_STDERR_TO_DEV_NULL, NULL,
                      NULL, NULL, NULL, &status, NULL)
        || !g_spawn_check_wait_status(status, NULL))
        cr_skip_test("cannot mount a loop device");
    fx.loop = g_strdup(mnt);

    g_autofree char *cap = g_build_filename(mnt, "cap", NULL);
    g_autofree char *report = g_build_filename(fx.dir, "report.json", NULL);
    g_autofree char *a_cap = g_strdup_printf("--capture=%s", cap);
    g_autofree char *a_rep = g_strdup_printf("--report=%s", report);
    const char *args[] = {a_cap, a_rep, "--once", NULL};
    fx.relay = relay_start(dport, FALSE, args);
    source_pieces(fx.relay->port, 1 << 20, 65536); /* session 1 written */
    relay_wait(fx.relay);
    relay_free(fx.relay);
    fx.relay = NULL;
    tu_remove_tree(cap);
    g_unlink(report);
    g_atomic_pointer_set(&fx.dst_bytes, 0);

    fx.relay = relay_start(dport, FALSE, args);
    cr_assert(run_tool("fsfreeze", "-f", mnt), "fsfreeze failed");
    fx.frozen = TRUE;
    gint64 t0 = g_get_monotonic_time();
    source(fx.relay->port, 160u << 20);
    gint64 t1 = g_get_monotonic_time();
    cr_assert_eq(g_atomic_pointer_get(&fx.dst_bytes), 8 + (160u << 20),
                 "forwarding stalled behind the frozen disk");
    cr_log_info("160 MiB forwarded in %.2f s with the capture's disk frozen",
                (t1 - t0) / 1e6);
    wait_for(report); /* written while the disk is still frozen */
    json_object *r = json_object_from_file(report);
    cr_assert_not_null(r);
    json_object *c = jget(r, "outputs.capture");
    cr_assert(!json_object_get_boolean(jget(c, "complete")), "%s",
              json_object_to_json_string(r));
    cr_assert(
        strstr(json_object_get_string(jget(c, "error")), "did not keep up"),
        "%s", json_object_get_string(jget(c, "error")));
    gint64 off = json_object_get_int64(jget(c, "offset"));
    cr_assert_gt(off, 0);
    cr_assert_leq(off, 64 << 20);
    json_object_put(r);

    cr_assert(run_tool("fsfreeze", "-u", mnt));
    fx.frozen = FALSE;
    relay_wait(fx.relay);
    g_autofree char *bin = g_build_filename(cap, "s1-c0-to-dst.bin", NULL);
    struct stat st;
    cr_assert_eq(stat(bin, &st), 0);
    cr_assert_eq(st.st_size, off, "what was queued is written after the thaw");
}
