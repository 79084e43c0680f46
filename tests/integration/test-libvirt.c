/* test-libvirt.c: `migproxy analyze` on save images made by libvirt 9.0
 * (Debian's libvirt-daemon-system) with `virsh save`, raw and gzip
 * (issue 12).
 *
 * A domain boots the workload guest under TCG (QEMU 7.2 of the system,
 * as libvirt runs it), is suspended, its memory saved with pmemsave, then
 * `virsh save`d.  The analysis must give libvirt's own counts (`virsh
 * domjobinfo --completed`: "Normal pages", "Constant pages"), the
 * domain's name, memory and machine, and --dump-ram the guest's memory.
 *
 * libvirtd (and virtlogd) are started by the test where they are not
 * running, and stopped by their pid after.  The gzip image needs
 * save_image_format = "gzip" in qemu.conf, which libvirtd reads at start
 * from the fixed path /etc/libvirt/qemu.conf: a daemon the test starts
 * runs in a mount namespace of its own where a private copy (the host's
 * file plus the test's setting) is bind-mounted over that path, and an
 * empty directory of the test's over /etc/libvirt/qemu (where libvirtd
 * keeps the XML of a defined domain).  The host's files are never
 * written, so a test killed at any point leaves neither a changed
 * qemu.conf nor a defined domain behind (the gzip case checks qemu.conf
 * is unchanged while its daemon runs).
 * With a daemon it did not start, the gzip case is skipped with a
 * message.
 */
#include "config.h"
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <glib/gstdio.h>
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include "itest-util.h"

#define QEMU_CONF "/etc/libvirt/qemu.conf"

static struct {
    char *dir;
    char *domain;
    pid_t libvirtd, virtlogd; /* started here, or 0 */
} fx;

/* Runs argv; @return its exit status (-1 if it did not run). */
static int
run(const char *const *argv, char **out)
{
    g_autofree char *errout = NULL, *ignored = NULL;
    int status;
    if (!g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_SEARCH_PATH, NULL,
                      NULL, out ? out : &ignored, &errout, &status, NULL))
        return -1;
    if (!WIFEXITED(status) || WEXITSTATUS(status))
        cr_log_info("%s: status 0x%x: %s", argv[0], status, errout);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static int
virsh(const char *a, const char *b, const char *c, char **out)
{
    const char *argv[] = {"virsh", "-q", "-c", "qemu:///system", a, b, c,
                          NULL};
    return run(argv, out);
}

static pid_t
read_pid(const char *file)
{
    g_autofree char *s = NULL;
    for (int i = 0; i < 100; i++) {
        if (g_file_get_contents(file, &s, NULL, NULL) && atoi(s) > 0)
            return atoi(s);
        g_usleep(100 * 1000);
    }
    return 0;
}

static void
stop_pid(pid_t *pid)
{
    if (*pid <= 0)
        return;
    kill(*pid, SIGTERM);
    for (int i = 0; i < 100 && kill(*pid, 0) == 0; i++)
        g_usleep(100 * 1000);
    *pid = 0;
}

/* libvirtd listens once its drivers are up: it probes the QEMU binaries
 * first (seconds, more on a loaded machine) */
static gboolean
daemon_answers(void)
{
    for (int i = 0; i < 600; i++) {
        if (virsh("version", NULL, NULL, NULL) == 0)
            return TRUE;
        g_usleep(200 * 1000);
    }
    return FALSE;
}

/* Something listens on the unix socket `path` (a file left by a daemon
 * that is gone does not count). */
static gboolean
socket_alive(const char *path)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    g_strlcpy(a.sun_path, path, sizeof(a.sun_path));
    gboolean ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

/* Starts libvirtd (and virtlogd, which it needs to start a domain), the
 * daemon in a private mount namespace that sees `conf_extra` appended to
 * the host's qemu.conf (a copy in the test's directory bind-mounted over
 * it: libvirtd has no option for that file's path). */
static void
start_daemons(const char *conf_extra)
{
    g_autofree char *lpid = g_build_filename(fx.dir, "libvirtd.pid", NULL);
    g_autofree char *vpid = g_build_filename(fx.dir, "virtlogd.pid", NULL);
    g_autofree char *conf = g_build_filename(fx.dir, "qemu.conf", NULL);
    g_autofree char *defs = g_build_filename(fx.dir, "qemu-domains", NULL);
    cr_assert(g_mkdir_with_parents(defs, 0700) == 0);
    g_autofree char *host_conf = NULL;
    cr_assert(g_file_get_contents(QEMU_CONF, &host_conf, NULL, NULL));
    g_autofree char *text = g_strconcat(host_conf, "\n", conf_extra, NULL);
    cr_assert(g_file_set_contents_full(conf, text, -1,
                                       G_FILE_SET_CONTENTS_CONSISTENT, 0600,
                                       NULL));
    if (!fx.virtlogd && !socket_alive("/run/libvirt/virtlogd-sock")) {
        const char *v[] = {"virtlogd", "-d", "-p", vpid, NULL};
        cr_assert_eq(run(v, NULL), 0, "virtlogd did not start");
        fx.virtlogd = read_pid(vpid);
    }
    /* the daemon (-d forks) stays in the namespace unshare made */
    const char *l[] = {"unshare", "--mount", "--propagation", "private", "--",
                       "sh", "-c",
                       "mount --bind \"$1\" " QEMU_CONF
                       " && mount --bind \"$2\" /etc/libvirt/qemu"
                       " && exec libvirtd -d -p \"$3\"",
                       "sh", conf, defs, lpid, NULL};
    g_unlink(lpid);
    cr_assert_eq(run(l, NULL), 0, "libvirtd did not start");
    fx.libvirtd = read_pid(lpid);
    cr_assert(daemon_answers(), "libvirtd does not answer");
}

static void
fx_init(void)
{
    fx.dir = it_tmpdir();
    /* QEMU runs as libvirt-qemu: it reads the kernel and writes the
     * console and pmemsave files here */
    cr_assert_eq(chmod(fx.dir, 0755), 0);
    fx.domain = g_strdup_printf("mp-workload-%d", (int)getpid());
}

/* In the test, not its init: a failed init skips the fini that stops
 * what it started. */
static void
need_daemons(void)
{
    if (virsh("version", NULL, NULL, NULL) != 0)
        start_daemons("");
}

static void
fx_fini(void)
{
    if (fx.domain) {
        virsh("destroy", fx.domain, NULL, NULL);
        virsh("undefine", fx.domain, NULL, NULL);
    }
    stop_pid(&fx.libvirtd);
    stop_pid(&fx.virtlogd);
    if (fx.dir)
        tu_remove_tree(fx.dir);
    g_clear_pointer(&fx.dir, g_free);
    g_clear_pointer(&fx.domain, g_free);
}

TestSuite(libvirt, .init = fx_init, .fini = fx_fini, .timeout = 600);

static gint64
field(const char *text, const char *name)
{
    const char *p = strstr(text, name);
    cr_assert_not_null(p, "no \"%s\" in: %s", name, text);
    return g_ascii_strtoll(p + strlen(name), NULL, 10);
}

/* Boots the workload in a new domain, suspends it, saves its memory to
 * DIR/mem.bin and the domain to `image`; @return domjobinfo's text. */
static char *
save_domain(const char *image)
{
    g_autofree char *kernel = g_build_filename(fx.dir, "workload.elf", NULL);
    g_autofree char *console = g_build_filename(fx.dir, "console.log", NULL);
    g_autofree char *mem = g_build_filename(fx.dir, "mem.bin", NULL);
    g_autofree char *xmlf = g_build_filename(fx.dir, "dom.xml", NULL);
    g_autofree char *elf = NULL;
    gsize len;

    cr_assert(g_file_get_contents(it_workload(), &elf, &len, NULL));
    cr_assert(g_file_set_contents(kernel, elf, len, NULL));
    cr_assert_eq(chmod(kernel, 0644), 0);
    cr_assert(g_file_set_contents(console, "", 0, NULL));
    cr_assert_eq(chmod(console, 0666), 0);
    g_autofree char *xml = g_strdup_printf(
        "<domain type='qemu' "
        "xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>\n"
        "  <name>%s</name>\n  <memory unit='MiB'>128</memory>\n"
        "  <vcpu>1</vcpu>\n"
        "  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type>\n"
        "    <kernel>%s</kernel><cmdline>mem=64M rate=4000</cmdline></os>\n"
        "  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator>\n"
        "    <memballoon model='none'/></devices>\n"
        "  <qemu:commandline>\n"
        "    <qemu:arg value='-chardev'/>\n"
        "    <qemu:arg value='file,id=mpcon,path=%s'/>\n"
        "    <qemu:arg value='-device'/>\n"
        "    <qemu:arg value='isa-debugcon,iobase=0xe9,chardev=mpcon'/>\n"
        "  </qemu:commandline>\n</domain>\n",
        fx.domain, kernel, console);
    cr_assert(g_file_set_contents(xmlf, xml, -1, NULL));
    cr_assert_eq(virsh("define", xmlf, NULL, NULL), 0);
    cr_assert_eq(virsh("start", fx.domain, NULL, NULL), 0);
    gboolean ready = FALSE;
    for (int i = 0; i < 1200 && !ready; i++) {
        g_autofree char *c = NULL;
        ready = g_file_get_contents(console, &c, NULL, NULL)
                && strstr(c, "workload: READY");
        if (!ready)
            g_usleep(100 * 1000);
    }
    cr_assert(ready, "the workload did not boot under libvirt");
    cr_assert_eq(virsh("suspend", fx.domain, NULL, NULL), 0);
    /* written by QEMU, which runs as libvirt-qemu */
    cr_assert(g_file_set_contents(mem, "", 0, NULL));
    cr_assert_eq(chmod(mem, 0666), 0);
    g_autofree char *cmd = g_strdup_printf(
        "{\"execute\":\"pmemsave\",\"arguments\":{\"val\":0,"
        "\"size\":134217728,\"filename\":\"%s\"}}",
        mem);
    g_autofree char *answer = NULL;
    cr_assert_eq(virsh("qemu-monitor-command", fx.domain, cmd, &answer), 0);
    cr_assert(!strstr(answer, "\"error\""), "pmemsave: %s", answer);
    cr_assert_eq(virsh("save", fx.domain, image, NULL), 0);
    char *info = NULL;
    const char *argv[] = {"virsh", "-c", "qemu:///system", "domjobinfo",
                          fx.domain, "--completed", NULL};
    cr_assert_eq(run(argv, &info), 0);
    cr_assert_eq(virsh("undefine", fx.domain, NULL, NULL), 0);
    return info;
}

static void
check_image(const char *format)
{
    g_autofree char *image = g_strdup_printf("%s/vm-%s.save", fx.dir, format);
    g_autofree char *dump = g_build_filename(fx.dir, "ram", NULL);
    g_autofree char *pcram = g_build_filename(dump, "pc.ram", NULL);
    g_autofree char *mem = g_build_filename(fx.dir, "mem.bin", NULL);
    g_autofree char *info = save_domain(image);

    json_object *doc = it_analyze(image, dump);
    json_object *errs = json_object_object_get(doc, "errors");
    cr_assert_eq(json_object_array_length(errs), 0, "%s",
                 json_object_to_json_string(errs));
    json_object *lv = json_object_object_get(doc, "libvirt");
    cr_assert_not_null(lv);
    cr_assert_str_eq(
        json_object_get_string(json_object_object_get(lv, "format")), format);
    cr_assert(json_object_get_boolean(json_object_object_get(lv, "complete")));
    json_object *d = json_object_object_get(lv, "domain");
    cr_assert_str_eq(json_object_get_string(json_object_object_get(d, "name")),
                     fx.domain);
    cr_assert_eq(json_object_get_int64(json_object_object_get(d, "memory")),
                 128 << 20);
    cr_assert_str_eq(
        json_object_get_string(json_object_object_get(d, "machine")),
        "pc-q35-7.2");
    cr_assert_eq(it_jint(doc, "ram.pages.normal"),
                 field(info, "Normal pages:"), "%s", info);
    cr_assert_eq(it_jint(doc, "ram.pages.zero"),
                 field(info, "Constant pages:"), "%s", info);

    g_autofree char *a = NULL, *b = NULL;
    gsize la, lb;
    cr_assert(g_file_get_contents(pcram, &a, &la, NULL));
    cr_assert(g_file_get_contents(mem, &b, &lb, NULL));
    cr_assert_eq(lb, 128u << 20);
    cr_assert_geq(la, lb);
    cr_assert(memcmp(a, b, 640 << 10) == 0, "RAM below 640 KiB differs");
    cr_assert(memcmp(a + (1 << 20), b + (1 << 20), lb - (1 << 20)) == 0,
              "RAM above 1 MiB differs");
    json_object_put(doc);
}

Test(libvirt, virsh_save_raw)
{
    need_daemons();
    check_image("raw");
}

Test(libvirt, virsh_save_gzip)
{
    need_daemons();
    if (!fx.libvirtd)
        cr_skip_test("libvirtd was running before the test: its qemu.conf "
                     "(save_image_format) is left alone");
    g_autofree char *before = NULL, *after = NULL;
    cr_assert(g_file_get_contents(QEMU_CONF, &before, NULL, NULL));
    stop_pid(&fx.libvirtd);
    start_daemons("save_image_format = \"gzip\"\n");
    /* the daemon reads the setting, the host's file stays as it was */
    cr_assert(g_file_get_contents(QEMU_CONF, &after, NULL, NULL));
    cr_assert_str_eq(after, before, QEMU_CONF " was changed");
    check_image("gzip");
}
