/* test-relay-failures.c: `migproxy relay` when things go wrong.
 *
 *   - clients that are not QEMU (garbage, an early close, a bare connect,
 *     a wrong stream version) get a log line and a closed connection,
 *     never reach the destination, and the relay goes on serving: a real
 *     migration through the same relay afterwards completes;
 *   - a destination that refuses: the source's migration fails at once
 *     and its guest keeps running;
 *   - the destination QEMU, or the relay, killed mid-migration: the source
 *     fails, its guest keeps running, and a retry through a fresh relay
 *     completes;
 *   - SIGTERM mid-migration and SIGINT when idle: a clean exit, with the
 *     report written for the migration that was cut;
 *   - migrate_cancel mid-migration: the session ends, and the same relay
 *     serves the next migration.
 */
#include "config.h"
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <glib/gstdio.h>
#include <gio/gio.h>
#include <criterion/criterion.h>
#include "itest-util.h"
#include "relay-itest.h"

#define MIGRATE_TIMEOUT_MS (120 * 1000)
#define PROMPT_MS          10000 /* "promptly" */
#define LOG_WAIT_MS        5000  /* for a line in the relay's log */

static ItRelayFixture fx;

static void
fx_init(void)
{
    it_relay_fixture_init(&fx);
}

static void
fx_fini(void)
{
    it_relay_fixture_fini(&fx);
}

TestSuite(relay_failures, .init = fx_init, .fini = fx_fini, .timeout = 300);

static void
assert_src_failed_and_running(gint64 since_us)
{
    json_object *info = it_wait_final(fx.src, PROMPT_MS);
    gint64 took = (g_get_monotonic_time() - since_us) / 1000;
    cr_assert_str_eq(json_object_get_string(it_jget(info, "status")), "failed",
                     "%s", json_object_to_json_string(info));
    cr_assert_leq(took, PROMPT_MS,
                  "the source took %" G_GINT64_FORMAT " ms to fail", took);
    g_printerr("relay-failure source failed after %" G_GINT64_FORMAT
               " ms: %s\n",
               took, json_object_get_string(it_jget(info, "error-desc")));
    json_object_put(info);
    g_autofree char *state = it_run_state(fx.src);
    cr_assert_str_eq(state, "running", "the source guest is %s", state);
}

/* Migrates fx.src through a fresh relay to a fresh paused destination
 * and checks it completes; the page counts match query-migrate. */
static void
retry_through_fresh_relay(void)
{
    g_autoptr(GError) err = NULL;

    g_clear_pointer(&fx.dst, mp_qemu_free);
    fx.dst = it_start_destination("7.2", NULL, FALSE, NULL);
    guint16 dport = mp_qemu_pick_free_port(&err);
    cr_assert(dport, "%s", err ? err->message : "?");
    g_autofree char *dir2 = g_build_filename(fx.dir, "retry", NULL);
    g_mkdir(dir2, 0755);
    fx.relay2 = it_relay_start(dir2, dport, NULL);
    it_incoming(fx.dst, dport);
    it_set_int(fx.src, "max-bandwidth", 256 << 20);
    it_migrate(fx.src, fx.relay2->port, FALSE);
    json_object *info = it_wait_final(fx.src, MIGRATE_TIMEOUT_MS);
    cr_assert_str_eq(json_object_get_string(it_jget(info, "status")),
                     "completed", "retry: %s",
                     json_object_to_json_string(info));
    json_object *dinfo = it_wait_final(fx.dst, MIGRATE_TIMEOUT_MS);
    cr_assert_str_eq(json_object_get_string(it_jget(dinfo, "status")),
                     "completed");
    cr_assert_eq(it_relay_wait(fx.relay2, 30000), 0);
    json_object *rep = it_relay_report(fx.relay2);
    cr_assert_str_eq(json_object_get_string(it_jget(rep, "outcome")),
                     "completed");
    cr_assert_eq(it_jint(rep, "ram.pages.normal"), it_jint(info, "ram.normal"));
    cr_assert_eq(it_jint(rep, "ram.pages.zero"),
                 it_jint(info, "ram.duplicate"));
    json_object_put(rep);
    json_object_put(info);
    json_object_put(dinfo);
}

Test(relay_failures, not_qemu_clients)
{
    g_autoptr(GError) err = NULL;
    guint16 dport;
    fx.fake_dst = it_fake_destination(&dport);
    const char *extra[] = {"--handshake-timeout=500", NULL};
    fx.relay = it_relay_start(fx.dir, dport, extra);

    /* garbage */
    g_autoptr(GSocket) a = it_connect_port(fx.relay->port);
    const char http[] = "GET / HTTP/1.0\r\n\r\n";
    cr_assert_eq(g_socket_send(a, http, strlen(http), NULL, &err),
                 (gssize)strlen(http));
    it_assert_closed_by_relay(a, "garbage");
    it_relay_assert_log_has(fx.relay, "not a QEMU migration stream",
                            LOG_WAIT_MS);

    /* an early close, inside the header */
    g_autoptr(GSocket) b = it_connect_port(fx.relay->port);
    cr_assert_eq(g_socket_send(b, "QE", 2, NULL, &err), 2);
    g_socket_close(b, NULL);
    it_relay_assert_log_has(fx.relay, "closed after 2 bytes", LOG_WAIT_MS);

    /* a bare connect, closed at once */
    g_autoptr(GSocket) c = it_connect_port(fx.relay->port);
    g_socket_close(c, NULL);
    it_relay_assert_log_has(fx.relay, "closed without sending anything",
                            LOG_WAIT_MS);

    /* a bare connect that stays silent */
    g_autoptr(GSocket) d = it_connect_port(fx.relay->port);
    it_assert_closed_by_relay(d, "silent client");
    it_relay_assert_log_has(fx.relay, "sent nothing in 500 ms", LOG_WAIT_MS);

    /* a stream header of another version */
    g_autoptr(GSocket) e = it_connect_port(fx.relay->port);
    const guint8 v2[8] = {'Q', 'E', 'V', 'M', 0, 0, 0, 2};
    cr_assert_eq(g_socket_send(e, (const char *)v2, 8, NULL, &err), 8);
    it_assert_closed_by_relay(e, "version 2");
    it_relay_assert_log_has(fx.relay, "migration stream version 2",
                            LOG_WAIT_MS);

    it_assert_no_connection(fx.fake_dst);
    cr_assert(!it_relay_exited(fx.relay), "the relay exited");

    /* and it still serves: a real migration, the destination QEMU taking
     * over the port */
    it_fake_destination_close(&fx.fake_dst);
    it_relay_migrate_72(fx.relay, dport, &fx.src, &fx.dst, fx.dir);
}

Test(relay_failures, destination_refused)
{
    g_autoptr(GError) err = NULL;
    guint16 dport = mp_qemu_pick_free_port(&err); /* nobody listens */
    cr_assert(dport, "%s", err ? err->message : "?");
    fx.relay = it_relay_start(fx.dir, dport, NULL);
    fx.src = it_start_workload("7.2", NULL, 128, "mem=32M rate=1000", NULL);

    gint64 t0 = g_get_monotonic_time();
    it_migrate(fx.src, fx.relay->port, FALSE);
    assert_src_failed_and_running(t0);
    cr_assert_eq(it_relay_wait(fx.relay, 10000), 1,
                 "--once exits 1 when the migration failed");
    it_relay_assert_log_has(fx.relay, "cannot connect to the destination",
                            LOG_WAIT_MS);
    json_object *rep = it_relay_report(fx.relay);
    const char *outcome = json_object_get_string(it_jget(rep, "outcome"));
    cr_assert(g_str_has_prefix(outcome, "failed: destination"), "%s", outcome);
    json_object_put(rep);
}

/* A slow migration (8 MiB/s) of a busy guest, cut after 1.5 s by `kill`
 * on the destination QEMU or on the relay. */
static void
cut_migration(gboolean kill_relay)
{
    g_autoptr(GError) err = NULL;

    fx.src = it_start_workload("7.2", NULL, 128, "mem=64M rate=2000", NULL);
    fx.dst = it_start_destination("7.2", NULL, FALSE, NULL);
    guint16 dport = mp_qemu_pick_free_port(&err);
    cr_assert(dport, "%s", err ? err->message : "?");
    fx.relay = it_relay_start(fx.dir, dport, NULL);
    it_incoming(fx.dst, dport);
    it_set_int(fx.src, "max-bandwidth", 8 << 20);
    it_migrate(fx.src, fx.relay->port, FALSE);
    g_usleep(1500 * 1000);
    g_autofree char *st = it_migration_status(fx.src);
    cr_assert_str_eq(st, "active");

    gint64 t0 = g_get_monotonic_time();
    if (kill_relay) {
        cr_assert_eq(kill(fx.relay->pid, SIGKILL), 0);
    } else {
        cr_assert_eq(kill(mp_qemu_pid(fx.dst), SIGKILL), 0);
    }
    assert_src_failed_and_running(t0);
    if (!kill_relay) {
        /* the relay saw its session break, reported it and exited */
        cr_assert_eq(it_relay_wait(fx.relay, 10000), 1);
        json_object *rep = it_relay_report(fx.relay);
        const char *outcome = json_object_get_string(it_jget(rep, "outcome"));
        cr_assert(g_str_has_prefix(outcome, "failed"), "%s", outcome);
        json_object_put(rep);
    }
    retry_through_fresh_relay();
}

Test(relay_failures, destination_killed)
{
    cut_migration(FALSE);
}

Test(relay_failures, relay_killed)
{
    cut_migration(TRUE);
}

Test(relay_failures, sigterm_mid_migration)
{
    g_autoptr(GError) err = NULL;

    fx.src = it_start_workload("7.2", NULL, 128, "mem=64M rate=2000", NULL);
    fx.dst = it_start_destination("7.2", NULL, FALSE, NULL);
    guint16 dport = mp_qemu_pick_free_port(&err);
    cr_assert(dport, "%s", err ? err->message : "?");
    fx.relay = it_relay_start(fx.dir, dport, NULL);
    it_incoming(fx.dst, dport);
    it_set_int(fx.src, "max-bandwidth", 8 << 20);
    it_migrate(fx.src, fx.relay->port, FALSE);
    g_usleep(1500 * 1000);

    gint64 t0 = g_get_monotonic_time();
    cr_assert_eq(kill(fx.relay->pid, SIGTERM), 0);
    cr_assert_eq(it_relay_wait(fx.relay, 5000), 0, "a clean shutdown exits 0");
    it_relay_assert_log_has(fx.relay, "stopping (SIGTERM)", LOG_WAIT_MS);
    json_object *rep = it_relay_report(fx.relay);
    cr_assert_str_eq(json_object_get_string(it_jget(rep, "outcome")),
                     "interrupted: SIGTERM");
    cr_assert_gt(it_jint(rep, "ram.pages.normal"), 0);
    cr_assert_geq(json_object_array_length(it_jget(rep, "channels")), 1);
    json_object_put(rep);
    /* the capture is complete up to the cut and reads back */
    json_object *cap = it_analyze(fx.relay->capture, NULL);
    cr_assert_gt(it_jint(cap, "ram.pages.normal"), 0);
    json_object_put(cap);
    assert_src_failed_and_running(t0);
}

Test(relay_failures, sigint_idle)
{
    g_autoptr(GError) err = NULL;
    guint16 dport = mp_qemu_pick_free_port(&err);
    cr_assert(dport, "%s", err ? err->message : "?");
    fx.relay = it_relay_start(fx.dir, dport, NULL);
    g_autoptr(GSocket) pending = it_connect_port(fx.relay->port);
    cr_assert_eq(kill(fx.relay->pid, SIGINT), 0);
    cr_assert_eq(it_relay_wait(fx.relay, 5000), 0);
    it_relay_assert_log_has(fx.relay, "stopping (SIGINT)", LOG_WAIT_MS);
    it_assert_closed_by_relay(pending, "pending client at shutdown");
}

/* SIGHUP (the terminal went away) stops the relay like SIGTERM, with its
 * name in the log; it used to say "stopping (signal)", undocumented. */
Test(relay_failures, sighup_idle)
{
    g_autoptr(GError) err = NULL;
    guint16 dport = mp_qemu_pick_free_port(&err);
    cr_assert(dport, "%s", err ? err->message : "?");
    fx.relay = it_relay_start(fx.dir, dport, NULL);
    cr_assert_eq(kill(fx.relay->pid, SIGHUP), 0);
    cr_assert_eq(it_relay_wait(fx.relay, 5000), 0);
    it_relay_assert_log_has(fx.relay, "stopping (SIGHUP)", LOG_WAIT_MS);
}

/* A stream whose RAMBlock name clears the terminal and starts a forged
 * line: the relay's log quotes it escaped (it cleared the terminal and
 * printed "session 1 completed"). */
Test(relay_failures, stream_names_escaped_in_log)
{
    g_autoptr(GError) err = NULL;
    guint16 dport;
    fx.fake_dst = it_fake_destination(&dport);
    fx.relay = it_relay_start(fx.dir, dport, NULL);
    static const char evil[] = "\033[2J\nsession 1 completed";
    GByteArray *b = g_byte_array_new();
    /* header, START of "ram" (id 1, version 4), MEM_SIZE 4096 with the
     * block list "pc.ram" of 4096, then a PAGE for the evil block */
    static const guint8 head[] = {
        'Q', 'E', 'V', 'M',  0,    0, 0,   3,   0x01, 0,   0,   0,   1, 3,
        'r', 'a', 'm', 0,    0,    0, 0,   0,   0,    0,   4,   0,   0, 0,
        0,   0,   0,   0x10, 0x04, 6, 'p', 'c', '.',  'r', 'a', 'm', 0, 0,
        0,   0,   0,   0,    0x10, 0, 0,   0,   0,    0,   0,   0,   0, 0x08};
    g_byte_array_append(b, head, sizeof head);
    guint8 len = strlen(evil);
    g_byte_array_append(b, &len, 1);
    g_byte_array_append(b, (const guint8 *)evil, len);
    g_autoptr(GSocket) a = it_connect_port(fx.relay->port);
    cr_assert_eq(g_socket_send(a, (const char *)b->data, b->len, NULL, &err),
                 (gssize)b->len);
    g_byte_array_unref(b);
    it_relay_assert_log_has(
        fx.relay, "unknown RAMBlock \"\\x1b[2J\\nsession 1 completed\"",
        LOG_WAIT_MS);
    g_autofree char *log = it_relay_log_text(fx.relay);
    for (const char *p = log; *p; p++)
        cr_assert((guchar)*p >= 0x20 || *p == '\n',
                  "byte 0x%02x in the relay's log:\n%s", (guchar)*p, log);
    cr_assert_null(strstr(log, "\nsession 1 completed"), "%s", log);
}

/* `migproxy relay ARGS...` with a bad option: exit 2 and `message` on
 * stderr. */
static void
assert_usage_error(const char *const *args, const char *message)
{
    g_autoptr(GPtrArray) argv = g_ptr_array_new();
    g_ptr_array_add(argv, (gpointer)it_migproxy());
    g_ptr_array_add(argv, "relay");
    g_ptr_array_add(argv, "--listen=127.0.0.1:0");
    g_ptr_array_add(argv, "--to=127.0.0.1:9");
    for (guint i = 0; args[i]; i++)
        g_ptr_array_add(argv, (gpointer)args[i]);
    g_ptr_array_add(argv, NULL);
    g_autofree char *out = NULL, *errs = NULL;
    gint status = 0;
    g_autoptr(GError) err = NULL;
    cr_assert(g_spawn_sync(NULL, (char **)argv->pdata, NULL, G_SPAWN_DEFAULT,
                           NULL, NULL, &out, &errs, &status, &err),
              "%s", err ? err->message : "?");
    cr_assert(WIFEXITED(status), "%s: killed by signal %d (stderr: %s)",
              args[0], WTERMSIG(status), errs);
    cr_assert_eq(WEXITSTATUS(status), 2, "%s: exit %d (stderr: %s)", args[0],
                 WEXITSTATUS(status), errs);
    cr_assert(strstr(errs, message), "%s: stderr is \"%s\"", args[0], errs);
}

/* Rates and sizes that overflow 64 bits: the relay crashed on --rate
 * 1e17tbit (a NULL error dereferenced). */
Test(relay_failures, rate_and_queue_out_of_range)
{
    assert_usage_error((const char *[]){"--rate", "1e17tbit", NULL},
                       "--rate: rate '1e17tbit' is above 8000tbit");
    assert_usage_error((const char *[]){"--rate", "1e400mbit", NULL},
                       "--rate: rate '1e400mbit' is above");
    assert_usage_error((const char *[]){"--queue", "1e17G", NULL},
                       "--queue: size '1e17G' is above");
    assert_usage_error((const char *[]){"--queue", "0.1", NULL},
                       "--queue: size '0.1' is below 1 byte");
    assert_usage_error((const char *[]){"--queue", "1K", NULL},
                       "--queue: at least 64K");
}

static void
wait_report_outcome(const char *prefix, guint session)
{
    gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
    g_autofree char *path = it_relay_report_path(fx.relay, session);
    for (;;) {
        json_object *rep = json_object_from_file(path);
        if (rep) {
            const char *o = json_object_get_string(it_jget(rep, "outcome"));
            gint64 s = json_object_get_int64(it_jget(rep, "session"));
            gboolean ok = s == session && g_str_has_prefix(o, prefix);
            json_object_put(rep);
            if (ok)
                return;
        }
        g_autofree char *log = it_relay_log_text(fx.relay);
        cr_assert(g_get_monotonic_time() < deadline,
                  "no report for session %u with outcome %s...; log:\n%s",
                  session, prefix, log);
        g_usleep(50000);
    }
}

/* migrate-cancel mid-migration: the connections close, the session ends
 * (reported), and the same relay serves the next migration. */
Test(relay_failures, cancel_then_migrate_again)
{
    g_autoptr(GError) err = NULL;

    fx.src = it_start_workload("7.2", NULL, 128, "mem=64M rate=2000", NULL);
    fx.dst = it_start_destination("7.2", NULL, FALSE, NULL);
    guint16 dport = mp_qemu_pick_free_port(&err);
    cr_assert(dport, "%s", err ? err->message : "?");
    fx.relay = it_relay_start_full(fx.dir, dport, FALSE, NULL);
    it_incoming(fx.dst, dport);
    it_set_int(fx.src, "max-bandwidth", 8 << 20);
    it_migrate(fx.src, fx.relay->port, FALSE);
    g_usleep(1500 * 1000);

    json_object *ret = mp_qemu_execute(fx.src, "migrate_cancel", NULL, &err);
    cr_assert_not_null(ret, "%s", err ? err->message : "?");
    json_object_put(ret);
    json_object *info = it_wait_final(fx.src, PROMPT_MS);
    cr_assert_str_eq(json_object_get_string(it_jget(info, "status")),
                     "cancelled");
    json_object_put(info);
    g_autofree char *state = it_run_state(fx.src);
    cr_assert_str_eq(state, "running");
    wait_report_outcome("failed", 1);
    cr_assert(!it_relay_exited(fx.relay), "the relay exited");

    /* the destination gave up on its stream; a new one on the same port */
    g_clear_pointer(&fx.dst, mp_qemu_free);
    fx.dst = it_start_destination("7.2", NULL, FALSE, NULL);
    it_incoming(fx.dst, dport);
    it_set_int(fx.src, "max-bandwidth", 256 << 20);
    it_migrate(fx.src, fx.relay->port, FALSE);
    info = it_wait_final(fx.src, MIGRATE_TIMEOUT_MS);
    cr_assert_str_eq(json_object_get_string(it_jget(info, "status")),
                     "completed");
    json_object_put(info);
    wait_report_outcome("completed", 2);
    kill(fx.relay->pid, SIGTERM);
    cr_assert_eq(it_relay_wait(fx.relay, 5000), 0);
}
