/* itest-util.c: helpers of the integration tests (see itest-util.h). */
#include "config.h"
#include <string.h>
#include <unistd.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <glib/gstdio.h>
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include "itest-util.h"

const char *
it_migproxy(void)
{
    const char *p = g_getenv("MP_MIGPROXY");
    cr_assert_not_null(p, "MP_MIGPROXY is not set (run through meson test)");
    return p;
}

const char *
it_workload(void)
{
    const char *p = g_getenv("MP_WORKLOAD");
    cr_assert_not_null(p, "MP_WORKLOAD is not set (run through meson test)");
    return p;
}

char *
it_tmpdir(void)
{
    GError *err = NULL;
    char *d = g_dir_make_tmp("mp-itest-XXXXXX", &err);
    cr_assert_not_null(d, "temp dir: %s", err ? err->message : "?");
    return d;
}

MpQemu *
it_start_workload(const char *version, const char *machine, guint mem_mib,
                  const char *append, const char *const *extra_args)
{
    return it_start_workload_bin(NULL, version, machine, mem_mib, append,
                                 extra_args);
}

MpQemu *
it_start_workload_bin(const char *binary, const char *version,
                      const char *machine, guint mem_mib, const char *append,
                      const char *const *extra_args)
{
    g_autoptr(GError) err = NULL;
    MpQemuConfig cfg = {
        .binary = binary,
        .version = version,
        .label = "src",
        .machine = machine,
        .memory_mib = mem_mib,
        .kernel = it_workload(),
        .append = append,
        .extra_args = extra_args,
    };
    MpQemu *q = mp_qemu_start(&cfg, &err);
    cr_assert_not_null(q, "%s", err ? err->message : "?");
    if (!mp_qemu_wait_console(q, "workload: READY", 120000, &err)) {
        mp_qemu_free(q);
        cr_assert_fail("%s", err->message);
    }
    return q;
}

json_object *
it_analyze(const char *stream, const char *dump_dir)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *out = NULL, *errout = NULL;
    int status = 0;
    const char *argv[] = {it_migproxy(), "analyze", "--json", "-q",
                          dump_dir ? "--dump-ram" : stream, dump_dir, stream,
                          NULL};
    if (!dump_dir)
        argv[5] = NULL;

    cr_assert(g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_DEFAULT, NULL,
                           NULL, &out, &errout, &status, &err),
              "running migproxy: %s", err ? err->message : "?");
    cr_assert(g_spawn_check_wait_status(status, NULL),
              "migproxy analyze %s failed (status %d):\n%s", stream, status,
              errout);
    json_object *doc = json_tokener_parse(out);
    cr_assert_not_null(doc, "migproxy analyze printed no JSON:\n%s", out);
    /* what tools read: docs/schema/analyze.schema.json */
    g_autofree char *tmp = NULL;
    int fd = g_file_open_tmp("mp-analyze-XXXXXX.json", &tmp, &err);
    cr_assert(fd >= 0, "%s", err ? err->message : "?");
    close(fd);
    cr_assert(g_file_set_contents(tmp, out, -1, &err), "%s",
              err ? err->message : "?");
    it_validate_json("analyze", tmp, FALSE);
    g_unlink(tmp);
    return doc;
}

void
it_validate_json(const char *schema, const char *path, gboolean lines)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *out = NULL;
    g_autofree char *script =
        g_build_filename(MP_SOURCE_ROOT, "tests", "validate-json.py", NULL);
    const char *argv[] = {"python3",
                          script,
                          lines ? "--lines" : schema,
                          lines ? schema : path,
                          lines ? path : NULL,
                          NULL};
    int status = 0;

    cr_assert(g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_SEARCH_PATH, NULL,
                           NULL, &out, NULL, &status, &err),
              "running %s: %s", script, err ? err->message : "?");
    cr_assert(g_spawn_check_wait_status(status, NULL),
              "%s is not valid against docs/schema/%s.schema.json:\n%s", path,
              schema, out);
}

gint64
it_jint(json_object *doc, const char *path)
{
    g_auto(GStrv) parts = g_strsplit(path, ".", -1);
    json_object *o = doc;
    for (guint i = 0; parts[i]; i++)
        cr_assert(json_object_object_get_ex(o, parts[i], &o),
                  "no %s in the analysis", path);
    return json_object_get_int64(o);
}

static void
compare_range(const char *what, const guint8 *a, const guint8 *b,
              guint64 start, guint64 len)
{
    if (memcmp(a + start, b + start, len) == 0)
        return;
    guint64 pages = 0, first = G_MAXUINT64;
    for (guint64 off = start; off < start + len; off += 4096)
        if (memcmp(a + off, b + off, MIN(4096, start + len - off))) {
            pages++;
            first = MIN(first, off);
        }
    cr_assert_fail("%s: %" G_GUINT64_FORMAT " pages differ, the first at "
                   "guest address 0x%" G_GINT64_MODIFIER "x",
                   what, pages, first);
}

void
it_assert_ram_equals(MpQemu *q, const char *image, guint64 ram_bytes,
                     const char *tmpdir)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *mem = g_build_filename(tmpdir, "pmemsave.bin", NULL);
    g_autofree guint8 *img = NULL, *ref = NULL;
    gsize img_len = 0;

    cr_assert(mp_qemu_pmemsave(q, 0, ram_bytes, mem, &err), "%s",
              err ? err->message : "?");
    cr_assert(g_file_get_contents(image, (char **)&img, &img_len, &err),
              "%s", err ? err->message : "?");
    cr_assert_geq(img_len, ram_bytes, "%s holds %zu bytes, the guest %"
                  G_GUINT64_FORMAT, image, img_len, ram_bytes);
    gsize ref_len = 0;
    cr_assert(g_file_get_contents(mem, (char **)&ref, &ref_len, &err), "%s",
              err ? err->message : "?");
    cr_assert_eq(ref_len, ram_bytes);
    compare_range("RAM below 640 KiB", img, ref, 0, IT_LOW_RAM_END);
    compare_range("RAM above 1 MiB", img, ref, IT_HIGH_RAM_START,
                  ram_bytes - IT_HIGH_RAM_START);
    g_unlink(mem);
}

GPid
it_tcpdump_start(const char *file, const char *filter, const char *log)
{
    g_autofree char *bin = g_find_program_in_path("tcpdump");
    if (!bin)
        bin = g_strdup("/usr/sbin/tcpdump");
    cr_assert(g_file_test(bin, G_FILE_TEST_IS_EXECUTABLE),
              "tcpdump is not installed (scripts/setup.sh installs it)");
    g_autofree char *cmd = g_strdup_printf(
        "exec '%s' -i lo -s 0 -B 262144 -U -n -Z root -w '%s' '%s' 2>'%s'", bin,
        file, filter, log);
    return it_spawn_until(cmd, log, "listening on", 15);
}

GPid
it_spawn_until(const char *cmd, const char *log, const char *ready,
               guint timeout_s)
{
    g_autoptr(GError) err = NULL;
    GPid pid = 0;
    const char *argv[] = {"/bin/sh", "-c", cmd, NULL};
    cr_assert(g_spawn_async(NULL, (char **)argv, NULL,
                            G_SPAWN_DO_NOT_REAP_CHILD, NULL, NULL, &pid, &err),
              "%s", err ? err->message : "?");
    gint64 deadline = g_get_monotonic_time() + timeout_s * G_USEC_PER_SEC;
    for (;;) {
        g_autofree char *text = NULL;
        g_file_get_contents(log, &text, NULL, NULL);
        if (text && strstr(text, ready))
            return pid;
        int status;
        cr_assert(waitpid(pid, &status, WNOHANG) == 0, "%s exited: %s", cmd,
                  text ? text : "");
        if (g_get_monotonic_time() >= deadline) {
            kill(pid, SIGKILL); /* the caller never got its pid */
            waitpid(pid, &status, 0);
            cr_assert_fail("no \"%s\" from %s in %u s: %s", ready, cmd,
                           timeout_s, text ? text : "");
        }
        g_usleep(50000);
    }
}

void
it_tcpdump_stop(GPid *pid, const char *file)
{
    int status;
    if (!*pid)
        return;
    goffset last = -1;
    for (int i = 0; i < 60; i++) {
        g_usleep(500000);
        GStatBuf st;
        goffset size = g_stat(file, &st) == 0 ? st.st_size : 0;
        if (size == last)
            break;
        last = size;
    }
    kill(*pid, SIGINT);
    for (int i = 0; i < 100 && waitpid(*pid, &status, WNOHANG) == 0; i++)
        g_usleep(50000);
    if (waitpid(*pid, &status, WNOHANG) == 0) {
        kill(*pid, SIGKILL);
        waitpid(*pid, &status, 0);
    }
    g_spawn_close_pid(*pid);
    *pid = 0;
}

/* scripts/netns-link.sh `what` with the link's names; @return its exit
 * status (its stderr into `err` if not NULL). */
static int
netlink_run(const ItNetLink *l, const char *what, const char *rate,
            char **err)
{
    g_autofree char *script =
        g_build_filename(MP_SOURCE_ROOT, "scripts", "netns-link.sh", NULL);
    g_autofree char *prefix = g_strndup(l->addr_src,
                                        strrchr(l->addr_src, '.')
                                            - l->addr_src);
    g_auto(GStrv) env = g_get_environ();
    env = g_environ_setenv(env, "MP_NS_SRC", l->ns_src, TRUE);
    env = g_environ_setenv(env, "MP_NS_DST", l->ns_dst, TRUE);
    env = g_environ_setenv(env, "MP_NET_PREFIX", prefix, TRUE);
    if (rate)
        env = g_environ_setenv(env, "MP_NET_RATE", rate, TRUE);
    const char *argv[] = {script, what, NULL};
    int status = -1;
    if (!g_spawn_sync(NULL, (char **)argv, env, G_SPAWN_STDOUT_TO_DEV_NULL,
                      NULL, NULL, NULL, err, &status, NULL))
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

ItNetLink *
it_netlink_up(const char *rate, const char *dir)
{
    if (geteuid() != 0)
        cr_skip_test("a shaped link needs root (network namespaces, tc)");
    int pid = (int)getpid();
    ItNetLink *l = g_new0(ItNetLink, 1);
    l->ns_src = g_strdup_printf("mpit-s%d", pid);
    l->ns_dst = g_strdup_printf("mpit-d%d", pid);
    /* 10.252.0.0/16: the benchmarks take 10.253 and 10.254, the libvirt
     * test 10.251 */
    l->addr_src = g_strdup_printf("10.252.%d.1", pid % 250 + 1);
    l->addr_dst = g_strdup_printf("10.252.%d.2", pid % 250 + 1);
    l->dir = g_strdup(dir);
    g_autofree char *err = NULL;
    int st = netlink_run(l, "up", rate, &err);
    if (st != 0) {
        netlink_run(l, "down", NULL, NULL);
        cr_assert_fail("scripts/netns-link.sh up: status %d: %s", st,
                       err ? err : "");
    }
    return l;
}

void
it_netlink_down(ItNetLink *l)
{
    if (!l)
        return;
    g_autofree char *err = NULL;
    if (netlink_run(l, "down", NULL, &err) != 0)
        cr_log_error("scripts/netns-link.sh down: %s", err ? err : "");
    g_free(l->ns_src);
    g_free(l->ns_dst);
    g_free(l->addr_src);
    g_free(l->addr_dst);
    g_free(l->dir);
    g_free(l);
}

char *
it_netlink_qemu(ItNetLink *l, gboolean dst, const char *version)
{
    g_autofree char *prefix = mp_qemu_default_prefix();
    g_autofree char *bin =
        g_strcmp0(version, "10.0") == 0
            ? g_build_filename(prefix, "usr", "bin", "qemu-system-x86_64",
                               NULL)
            : g_strdup("/usr/bin/qemu-system-x86_64");
    const char *ns = dst ? l->ns_dst : l->ns_src;
    char *path = g_strdup_printf("%s/qemu-%s-%s.sh", l->dir, ns, version);
    g_autofree char *text =
        g_strdup_printf("#!/bin/sh\nexec ip netns exec %s %s \"$@\"\n", ns,
                        bin);
    cr_assert(g_file_set_contents(path, text, -1, NULL), "%s", path);
    cr_assert_eq(chmod(path, 0755), 0, "%s", path);
    return path;
}
