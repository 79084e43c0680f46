/* test-metrics-out.c: where --metrics lines go (metrics-out.h): stdout,
 * and a listening Unix socket whose reader keeps up, is slow, or goes
 * away and comes back; the socket never makes a write wait. */
#include "config.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <criterion/criterion.h>
#include <glib/gstdio.h>
#include "metrics-lines.h"
#include "metrics-out.h"
#include "test-util.h"

#define S (G_USEC_PER_SEC)

static struct {
    char *dir;
    char *path; /* the socket */
} fx;

static void
fx_init(void)
{
    signal(SIGPIPE, SIG_IGN); /* as the relay does */
    fx.dir = tu_tmpdir_new("mp-metrics-out");
    fx.path = g_build_filename(fx.dir, "mon.sock", NULL);
}

static void
fx_fini(void)
{
    g_free(fx.path);
    tu_tmpdir_remove(fx.dir);
}

TestSuite(metrics_out, .init = fx_init, .fini = fx_fini, .timeout = 30);

static int
listen_at(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert(fd >= 0);
    g_unlink(path);
    strcpy(sa.sun_path, path);
    cr_assert(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "bind: %s",
              g_strerror(errno));
    cr_assert(listen(fd, 4) == 0);
    return fd;
}

/* What arrived on `fd` until it has nothing more for 50 ms, the main
 * context iterated meanwhile (the output's writes wait there). */
static GString *
drain(int fd, GString *got)
{
    char buf[65536];
    gint64 idle_since = g_get_monotonic_time();

    fcntl(fd, F_SETFL, O_NONBLOCK);
    while (g_get_monotonic_time() - idle_since < 50000) {
        while (g_main_context_iteration(NULL, FALSE))
            ;
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n > 0) {
            g_string_append_len(got, buf, n);
            idle_since = g_get_monotonic_time();
        } else if (n == 0) {
            break;
        } else {
            g_usleep(1000);
        }
    }
    return got;
}

static json_object *
status_of(MpMetricsOut *o)
{
    return mp_metrics_out_status(o);
}

static gint64
status_int(json_object *st, const char *key)
{
    return tu_json_int(st, key);
}

static gboolean
status_bool(json_object *st, const char *key)
{
    return json_object_get_boolean(json_object_object_get(st, key));
}

Test(metrics_out, stdout_lines)
{
    int p[2], saved = dup(STDOUT_FILENO);
    cr_assert(pipe(p) == 0);
    dup2(p[1], STDOUT_FILENO);
    close(p[1]);
    g_autoptr(GError) err = NULL;
    MpMetricsOut *o = mp_metrics_out_new("-", &err);
    cr_assert_not_null(o);
    mp_metrics_out_write(o, "{\"a\":1}", 0);
    mp_metrics_out_write(o, "{\"b\":2}", 0);
    json_object *st = status_of(o);
    mp_metrics_out_free(o);
    dup2(saved, STDOUT_FILENO);
    close(saved);

    char buf[64] = {0};
    cr_assert_eq(read(p[0], buf, sizeof(buf) - 1), 16);
    cr_assert_str_eq(buf, "{\"a\":1}\n{\"b\":2}\n");
    close(p[0]);
    cr_assert(status_bool(st, "stdout"));
    cr_assert(status_bool(st, "complete"));
    cr_assert_eq(status_int(st, "lines"), 2);
    cr_assert_null(json_object_object_get(st, "error"));
    json_object_put(st);
}

/* A reader that went away: an error in the report, no later line. */
Test(metrics_out, stdout_reader_gone)
{
    int p[2], saved = dup(STDOUT_FILENO);
    cr_assert(pipe(p) == 0);
    dup2(p[1], STDOUT_FILENO);
    close(p[1]);
    close(p[0]);
    MpMetricsOut *o = mp_metrics_out_new("-", NULL);
    mp_metrics_out_write(o, "{\"a\":1}", 0);
    mp_metrics_out_write(o, "{\"b\":2}", 0);
    json_object *st = status_of(o);
    mp_metrics_out_free(o);
    dup2(saved, STDOUT_FILENO);
    close(saved);

    cr_assert(!status_bool(st, "complete"));
    cr_assert_eq(status_int(st, "lines"), 0);
    cr_assert_eq(status_int(st, "offset"), 0);
    cr_assert(
        strstr(json_object_get_string(json_object_object_get(st, "error")),
               g_strerror(EPIPE)));
    json_object_put(st);
}

Test(metrics_out, unix_no_listener_is_an_error)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *target = g_strdup_printf("unix:%s", fx.path);
    cr_assert_null(mp_metrics_out_new(target, &err));
    cr_assert(strstr(err->message, fx.path), "%s", err->message);
    cr_assert(strstr(err->message, "listening"), "%s", err->message);
}

/* A reader that keeps up gets every line, whole, in order; the lines of
 * a session are valid against docs/schema/metrics-line.schema.json. */
Test(metrics_out, unix_reader_gets_session_lines)
{
    int lfd = listen_at(fx.path);
    g_autofree char *target = g_strdup_printf("unix:%s", fx.path);
    g_autoptr(GError) err = NULL;
    MpMetricsOut *o = mp_metrics_out_new(target, &err);
    cr_assert_not_null(o, "%s", err ? err->message : "?");
    int cfd = accept(lfd, NULL, NULL);
    cr_assert(cfd >= 0);

    MpMetrics *m = mp_metrics_new(7, 1700000000000000LL, 0);
    mp_metrics_lines_attach(m, o);
    mp_metrics_channel_open(m, 0, "127.0.0.1:1", 10);
    mp_metrics_channel_kind(m, 0, MP_CHAN_MAIN, 20);
    mp_metrics_bytes(m, 0, MP_DIR_TO_DST, 1000, 30);
    for (gint64 t = 1; t <= 5; t++)
        mp_metrics_tick(m, t * 100000);
    mp_metrics_channel_end(m, 0, MP_DIR_TO_DST, MP_END_FIN, NULL, 600000);
    mp_metrics_finish(m, 600000, "interrupted: SIGTERM");
    mp_metrics_free(m);

    g_autoptr(GString) got = drain(cfd, g_string_new(NULL));
    json_object *st = status_of(o);
    cr_assert_eq(status_int(st, "dropped_lines"), 0);
    cr_assert_eq(status_int(st, "connects"), 1);
    cr_assert(status_bool(st, "connected"));
    cr_assert(status_bool(st, "complete"));
    g_autofree char *file = g_build_filename(fx.dir, "got.jsonl", NULL);
    cr_assert(g_file_set_contents(file, got->str, got->len, NULL));
    g_auto(GStrv) lines = g_strsplit(got->str, "\n", -1);
    cr_assert_eq(g_strv_length(lines) - 1, status_int(st, "lines"));
    tu_validate_json("metrics-line", file, TRUE);
    tu_validate_doc("report#/$defs/outputs/properties/metrics", st);
    json_object_put(st);
    mp_metrics_out_free(o);
    close(cfd);
    close(lfd);
}

/* A reader that does not read: writes return at once, lines beyond the
 * queue are dropped whole and counted; what was queued arrives when it
 * reads again, and every line that arrives is whole. */
Test(metrics_out, unix_slow_reader_drops_never_blocks)
{
    int lfd = listen_at(fx.path);
    g_autofree char *target = g_strdup_printf("unix:%s", fx.path);
    MpMetricsOut *o = mp_metrics_out_new(target, NULL);
    cr_assert_not_null(o);
    int cfd = accept(lfd, NULL, NULL);
    char line[1000];
    const guint n = 4000; /* 4 MB: far past the socket's and the queue's */

    memset(line, 'x', sizeof(line) - 1);
    line[sizeof(line) - 1] = '\0';
    gint64 start = g_get_monotonic_time();
    for (guint i = 0; i < n; i++) {
        g_snprintf(line, 12, "%010u", i);
        line[10] = 'x';
        mp_metrics_out_write(o, line, 0);
    }
    /* (a write that waited would hang here until the test's timeout) */
    guint64 dropped = mp_metrics_out_dropped(o);
    g_printerr("metrics-out: %u lines of 1 kB to a reader that does not "
               "read in %.1f ms, %" G_GUINT64_FORMAT " dropped\n",
               n, (g_get_monotonic_time() - start) / 1000.0, dropped);
    cr_assert_gt(dropped, 0);
    cr_assert_lt(dropped, n);

    g_autoptr(GString) got = drain(cfd, g_string_new(NULL));
    g_auto(GStrv) lines = g_strsplit(got->str, "\n", -1);
    guint received = g_strv_length(lines) - 1;
    cr_assert_eq(received + dropped, n,
                 "%u received, %" G_GUINT64_FORMAT " dropped", received,
                 dropped);
    guint last = 0;
    for (guint i = 0; i < received; i++) {
        cr_assert_eq(strlen(lines[i]), sizeof(line) - 1, "line %u torn", i);
        guint k = (guint)g_ascii_strtoull(lines[i], NULL, 10);
        cr_assert(i == 0 || k > last, "out of order");
        last = k;
    }
    json_object *st = status_of(o);
    cr_assert(!status_bool(st, "complete"));
    cr_assert_eq(status_int(st, "dropped_lines"), dropped);
    json_object_put(st);
    mp_metrics_out_free(o);
    close(cfd);
    close(lfd);
}

/* The reader goes away: lines are dropped, reconnecting is tried at most
 * once per backoff (1 s, then 2 s, ... as attempts fail), and a reader
 * listening again gets the lines from then on. */
Test(metrics_out, unix_reader_gone_and_back)
{
    int lfd = listen_at(fx.path);
    g_autofree char *target = g_strdup_printf("unix:%s", fx.path);
    MpMetricsOut *o = mp_metrics_out_new(target, NULL);
    int cfd = accept(lfd, NULL, NULL);
    mp_metrics_out_write(o, "one", 0);
    g_autoptr(GString) got = drain(cfd, g_string_new(NULL));
    cr_assert_str_eq(got->str, "one\n");

    /* gone: the write that finds out is dropped */
    close(cfd);
    close(lfd);
    g_unlink(fx.path);
    mp_metrics_out_write(o, "two", 10);
    cr_assert_eq(mp_metrics_out_dropped(o), 1);
    json_object *st = status_of(o);
    cr_assert(!status_bool(st, "connected"));
    cr_assert_not_null(json_object_object_get(st, "error"));
    json_object_put(st);

    /* back at once, but the output waits its backoff (1 s) */
    lfd = listen_at(fx.path);
    mp_metrics_out_write(o, "three", 10 + S / 2);
    cr_assert_eq(mp_metrics_out_dropped(o), 2);
    fcntl(lfd, F_SETFL, O_NONBLOCK);
    cr_assert_lt(accept(lfd, NULL, NULL), 0, "reconnected within backoff");

    /* gone again when it tries: the next try is 2 s later */
    close(lfd);
    g_unlink(fx.path);
    mp_metrics_out_write(o, "four", 10 + S);
    cr_assert_eq(mp_metrics_out_dropped(o), 3);
    lfd = listen_at(fx.path);
    mp_metrics_out_write(o, "five", 10 + 2 * S);
    cr_assert_eq(mp_metrics_out_dropped(o), 4);
    mp_metrics_out_write(o, "six", 10 + 3 * S);
    cr_assert_eq(mp_metrics_out_dropped(o), 4);
    cfd = accept(lfd, NULL, NULL);
    cr_assert(cfd >= 0);
    g_string_truncate(got, 0);
    drain(cfd, got);
    cr_assert_str_eq(got->str, "six\n");

    st = status_of(o);
    cr_assert_eq(status_int(st, "connects"), 2);
    cr_assert_eq(status_int(st, "lines"), 2);
    cr_assert_eq(status_int(st, "dropped_lines"), 4);
    cr_assert(status_bool(st, "connected"));
    cr_assert(!status_bool(st, "complete"));
    json_object_put(st);
    mp_metrics_out_free(o);
    close(cfd);
    close(lfd);
}
