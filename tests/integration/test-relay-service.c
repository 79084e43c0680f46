/* test-relay-service.c: `migproxy relay` as migproxy-relay@.service runs
 * it, and `systemctl stop` stops it.  systemd is not PID 1 in the test
 * machines, so the test does systemd's part by hand, from the unit the
 * build wrote (MP_RELAY_UNIT, dist/systemd/):
 *
 *   - ExecStart= with %S (the state root), %i ("test") and
 *     $MIGPROXY_ARGS (split at white space, from a .conf as in
 *     docs/operators.md) expanded; a clean environment, UMask=, stdin
 *     /dev/null, stderr not a terminal (the journal);
 *   - the StateDirectory= made 0700 beforehand, owned by the user the
 *     relay runs as;
 *   - the unit's sandbox as far as it can be made without systemd
 *     (unit-sandbox.sh, MP_UNIT_SANDBOX: a dynamic user's uid, no new
 *     privileges, no capabilities, every mount read-only but the state
 *     directory, a private /tmp, /home and /root closed; not the
 *     system-call filter, the address families and the rest that need
 *     systemd: unit-sandbox.sh lists them);
 *   - a real migration (QEMU 7.2) through it, cut by SIGTERM (what
 *     `systemctl stop` sends): the relay exits 0 within the unit's
 *     TimeoutStopSec=, its report (outcome "interrupted: SIGTERM") and
 *     metrics are in the state directory, owned by the service's user
 *     and readable by it only, and the source's guest runs on.
 */
#include "config.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <glib/gstdio.h>
#include <criterion/criterion.h>
#include "itest-util.h"
#include "relay-itest.h"

#define LISTEN_TIMEOUT_MS 10000
#define PROMPT_MS         10000
/* a uid in systemd's range for DynamicUser= (61184-65519), no one's */
#define DYNAMIC_UID 61184

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

TestSuite(relay_service, .init = fx_init, .fini = fx_fini, .timeout = 300);

/* The value of `key`= in the unit's text (the last one); caller frees. */
static char *
unit_value(const char *unit, const char *key)
{
    g_auto(GStrv) lines = g_strsplit(unit, "\n", -1);
    g_autofree char *prefix = g_strconcat(key, "=", NULL);
    char *value = NULL;
    for (guint i = 0; lines[i]; i++)
        if (g_str_has_prefix(lines[i], prefix)) {
            g_free(value);
            value = g_strdup(lines[i] + strlen(prefix));
        }
    cr_assert_not_null(value, "the unit has no %s=", key);
    return value;
}

/* ExecStart= as systemd would run it: the words split at spaces, %S and
 * %i replaced, $MIGPROXY_ARGS replaced by `args`' words; the program is
 * the build's (MP_MIGPROXY) instead of the installed path. */
static GPtrArray *
expand_exec_start(const char *exec_start, const char *state_root,
                  const char *args)
{
    GPtrArray *argv = g_ptr_array_new_with_free_func(g_free);
    g_auto(GStrv) words = g_strsplit(exec_start, " ", -1);
    for (guint i = 0; words[i]; i++) {
        if (!*words[i])
            continue;
        if (i == 0) {
            cr_assert(g_str_has_suffix(words[0], "/migproxy"), "%s", words[0]);
            g_ptr_array_add(argv, g_strdup(it_migproxy()));
            continue;
        }
        if (strcmp(words[i], "$MIGPROXY_ARGS") == 0) {
            g_auto(GStrv) a = g_strsplit_set(args, " \t", -1);
            for (guint k = 0; a[k]; k++)
                if (*a[k])
                    g_ptr_array_add(argv, g_strdup(a[k]));
            continue;
        }
        GString *w = g_string_new(NULL);
        for (const char *p = words[i]; *p; p++) {
            if (*p == '%' && p[1] == 'S') {
                g_string_append(w, state_root);
                p++;
            } else if (*p == '%' && p[1] == 'i') {
                g_string_append(w, "test");
                p++;
            } else {
                cr_assert(*p != '%' && *p != '$',
                          "ExecStart= word %s: a specifier or variable the "
                          "test does not know",
                          words[i]);
                g_string_append_c(w, *p);
            }
        }
        g_ptr_array_add(argv, g_string_free(w, FALSE));
    }
    g_ptr_array_add(argv, NULL);
    return argv;
}

static void
child_setup(gpointer user_data)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    umask(0077); /* the unit's UMask= */
}

static void
assert_private_file(const char *path)
{
    struct stat st;
    cr_assert_eq(g_stat(path, &st), 0, "%s: %s", path, g_strerror(errno));
    cr_assert_eq(st.st_mode & 077, 0, "%s has mode 0%o", path,
                 st.st_mode & 0777);
    cr_assert_eq(st.st_uid, DYNAMIC_UID, "%s is owned by %u", path,
                 (unsigned)st.st_uid);
}

/* A service of the unit in `env_unit` (MP_RELAY_UNIT, MP_DEST_UNIT),
 * instance "test", started as systemd would start it: its state
 * directory STATE (`kind`-test under DIR/var-lib/migproxy) made 0700 for
 * the service's user, /etc/migproxy/KIND-test.conf's MIGPROXY_ARGS =
 * `args`, ExecStart= in unit-sandbox.sh.  Sets *state and *stop_ms
 * (TimeoutStopSec=); @return it once it logs "listening on" (its
 * stderr, the journal, in DIR/journal-KIND.log; its report
 * STATE/report.json). */
static ItRelay *
start_service(const char *env_unit, const char *kind, const char *args,
              char **state, guint *stop_ms)
{
    g_autoptr(GError) err = NULL;
    const char *unit_path = g_getenv(env_unit);
    cr_assert_not_null(unit_path, "%s is not set", env_unit);
    g_autofree char *unit = NULL;
    cr_assert(g_file_get_contents(unit_path, &unit, NULL, &err), "%s",
              err ? err->message : "?");
    g_autofree char *exec_start = unit_value(unit, "ExecStart");
    g_autofree char *state_dir = unit_value(unit, "StateDirectory");
    g_autofree char *stop_timeout = unit_value(unit, "TimeoutStopSec");
    *stop_ms = (guint)g_ascii_strtoull(stop_timeout, NULL, 10) * 1000;
    cr_assert(*stop_ms > 0, "TimeoutStopSec=%s", stop_timeout);

    /* StateDirectory=migproxy/KIND-%i, StateDirectoryMode=0700 */
    g_autofree char *root = g_build_filename(fx.dir, "var-lib", NULL);
    g_autofree char *want = g_strdup_printf("migproxy/%s-%%i", kind);
    cr_assert_str_eq(state_dir, want);
    g_autofree char *leaf = g_strdup_printf("%s-test", kind);
    *state = g_build_filename(root, "migproxy", leaf, NULL);
    cr_assert_eq(g_mkdir_with_parents(*state, 0700), 0);
    /* systemd makes it for the dynamic user, mode StateDirectoryMode= */
    cr_assert_eq(chown(*state, DYNAMIC_UID, DYNAMIC_UID), 0);
    cr_assert_eq(chmod(*state, 0700), 0);

    g_autoptr(GPtrArray) argv = expand_exec_start(exec_start, root, args);
    /* the sandbox around it: its pid becomes the service's */
    const char *sandbox = g_getenv("MP_UNIT_SANDBOX");
    cr_assert_not_null(sandbox, "MP_UNIT_SANDBOX is not set");
    g_ptr_array_insert(argv, 0, g_strdup_printf("%d", DYNAMIC_UID));
    g_ptr_array_insert(argv, 0, g_strdup(*state));
    g_ptr_array_insert(argv, 0, g_strdup(sandbox));
    const char *envp[] = {"PATH=/usr/bin:/bin", "LANG=C.UTF-8", NULL};

    ItRelay *r = g_new0(ItRelay, 1);
    r->status = -1;
    r->log = g_strdup_printf("%s/journal-%s.log", fx.dir, kind);
    r->report = g_build_filename(*state, "report.json", NULL);
    int fd = open(r->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    cr_assert(fd >= 0);
    gboolean ok = g_spawn_async_with_pipes_and_fds(
        NULL, (const char *const *)argv->pdata, envp,
        G_SPAWN_DO_NOT_REAP_CHILD | G_SPAWN_STDIN_FROM_DEV_NULL, child_setup,
        NULL, -1, fd, fd, NULL, NULL, 0, &r->pid, NULL, NULL, NULL, &err);
    close(fd);
    if (!ok) {
        it_relay_free(r);
        cr_assert_fail("%s", err ? err->message : "?");
    }
    it_relay_assert_log_has(r, "listening on", LISTEN_TIMEOUT_MS);
    return r;
}

/* The state directory as StateDirectoryMode= left it: 0700, the
 * service's user's. */
static void
assert_state_dir(const char *state)
{
    struct stat st;
    cr_assert_eq(g_stat(state, &st), 0, "%s: %s", state, g_strerror(errno));
    cr_assert_eq(st.st_mode & 0777, 0700, "%s has mode 0%o", state,
                 st.st_mode & 0777);
    cr_assert_eq(st.st_uid, DYNAMIC_UID);
}

Test(relay_service, stop_writes_report)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *state = NULL;
    guint stop_ms;

    fx.src = it_start_workload("7.2", NULL, 128, "mem=64M rate=2000", NULL);
    fx.dst = it_start_destination("7.2", NULL, FALSE, NULL);
    guint16 dport = mp_qemu_pick_free_port(&err);
    guint16 port = mp_qemu_pick_free_port(&err);
    cr_assert(dport && port, "%s", err ? err->message : "?");

    /* /etc/migproxy/relay-test.conf as docs/operators.md shows it; the
     * state directory's path is known before it is made */
    g_autofree char *args = g_strdup_printf(
        "--listen 127.0.0.1:%u --to 127.0.0.1:%u  --metrics "
        "%s/var-lib/migproxy/relay-test/metrics.jsonl",
        port, dport, fx.dir);
    fx.relay = start_service("MP_RELAY_UNIT", "relay", args, &state, &stop_ms);
    fx.relay->port = port;
    fx.relay->dst_port = dport;

    it_incoming(fx.dst, dport);
    it_set_int(fx.src, "max-bandwidth", 8 << 20);
    it_migrate(fx.src, port, FALSE);
    it_wait_status(fx.src, "active", PROMPT_MS);
    g_usleep(1500 * 1000);

    /* systemctl stop: SIGTERM, then SIGKILL after TimeoutStopSec= */
    gint64 t0 = g_get_monotonic_time();
    cr_assert_eq(kill(fx.relay->pid, SIGTERM), 0);
    cr_assert_eq(it_relay_wait(fx.relay, stop_ms), 0,
                 "a stopped relay exits 0 (systemd: inactive, not failed)");
    g_printerr("relay-service: exited %.0f ms after SIGTERM "
               "(TimeoutStopSec=%u s)\n",
               (g_get_monotonic_time() - t0) / 1e3, stop_ms / 1000);
    it_relay_assert_log_has(fx.relay, "stopping (SIGTERM)", PROMPT_MS);

    json_object *rep = it_relay_report(fx.relay);
    cr_assert_str_eq(json_object_get_string(it_jget(rep, "outcome")),
                     "interrupted: SIGTERM");
    cr_assert_gt(it_jint(rep, "ram.pages.normal"), 0);
    json_object_put(rep);
    assert_private_file(fx.relay->report);
    assert_state_dir(state);
    g_autofree char *metrics = g_build_filename(state, "metrics.jsonl", NULL);
    assert_private_file(metrics);

    json_object *info = it_wait_final(fx.src, PROMPT_MS);
    cr_assert_str_eq(json_object_get_string(it_jget(info, "status")), "failed");
    json_object_put(info);
    g_autofree char *run = it_run_state(fx.src);
    cr_assert_str_eq(run, "running", "the source guest is %s", run);
}

/* migproxy-dest@.service stopped mid-migration: `migproxy dest` (in the
 * unit's sandbox) ends the tunnel, writes its report into the state
 * directory and exits 0 within TimeoutStopSec=; the source QEMU's
 * migration fails and its guest runs on. */
Test(relay_service, dest_stop_writes_report)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *state = NULL;
    guint stop_ms;

    fx.src = it_start_workload("7.2", NULL, 128, "mem=64M rate=2000", NULL);
    fx.dst = it_start_destination("7.2", NULL, FALSE, NULL);
    guint16 dport = mp_qemu_pick_free_port(&err);
    guint16 tport = mp_qemu_pick_free_port(&err);
    guint16 sport = mp_qemu_pick_free_port(&err);
    cr_assert(dport && tport && sport, "%s", err ? err->message : "?");

    /* /etc/migproxy/dest-test.conf as the example dest.conf */
    g_autofree char *args = g_strdup_printf(
        "--listen 127.0.0.1:%u --to 127.0.0.1:%u --allow 127.0.0.1", tport,
        dport);
    fx.relay = start_service("MP_DEST_UNIT", "dest", args, &state, &stop_ms);

    /* the source host's end, outside any sandbox */
    g_autofree char *listen = g_strdup_printf("--listen=127.0.0.1:%u", sport);
    g_autofree char *peer = g_strdup_printf("--peer=127.0.0.1:%u", tport);
    fx.relay2 = g_new0(ItRelay, 1);
    fx.relay2->status = -1;
    fx.relay2->log = g_build_filename(fx.dir, "source.log", NULL);
    const char *sargv[] = {it_migproxy(), "source", listen, peer,
                           "--no-progress", "--once", NULL};
    int fd = open(fx.relay2->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
                  0600);
    cr_assert(fd >= 0);
    gboolean ok = g_spawn_async_with_pipes_and_fds(
        NULL, sargv, NULL, G_SPAWN_DO_NOT_REAP_CHILD, child_setup, NULL, -1,
        fd, fd, NULL, NULL, 0, &fx.relay2->pid, NULL, NULL, NULL, &err);
    close(fd);
    cr_assert(ok, "%s", err ? err->message : "?");
    it_relay_assert_log_has(fx.relay2, "listening on", LISTEN_TIMEOUT_MS);

    it_incoming(fx.dst, dport);
    it_set_int(fx.src, "max-bandwidth", 8 << 20);
    it_migrate(fx.src, sport, FALSE);
    it_wait_status(fx.src, "active", PROMPT_MS);
    g_usleep(1500 * 1000);

    gint64 t0 = g_get_monotonic_time();
    cr_assert_eq(kill(fx.relay->pid, SIGTERM), 0);
    g_autofree char *dlog = NULL;
    int st = it_relay_wait(fx.relay, stop_ms);
    dlog = it_relay_log_text(fx.relay);
    cr_assert_eq(st, 0, "a stopped dest exits 0:\n%s", dlog);
    g_printerr("dest-service: exited %.0f ms after SIGTERM "
               "(TimeoutStopSec=%u s)\n",
               (g_get_monotonic_time() - t0) / 1e3, stop_ms / 1000);
    cr_assert(strstr(dlog, "stopping (SIGTERM)"), "%s", dlog);

    json_object *rep = json_object_from_file(fx.relay->report);
    cr_assert_not_null(rep, "no report in %s:\n%s", fx.relay->report, dlog);
    g_printerr("dest-service: report %s\n",
               json_object_to_json_string(rep));
    cr_assert_gt(it_jint(rep, "tunnel.link_bytes_in"), 0);
    json_object_put(rep);
    assert_private_file(fx.relay->report);
    assert_state_dir(state);

    json_object *info = it_wait_final(fx.src, PROMPT_MS);
    cr_assert_str_eq(json_object_get_string(it_jget(info, "status")), "failed");
    json_object_put(info);
    g_autofree char *run = it_run_state(fx.src);
    cr_assert_str_eq(run, "running", "the source guest is %s", run);
}
