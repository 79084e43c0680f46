/* cmd-demo.c: `migproxy demo`, a real live migration of the workload guest
 * between two QEMU processes on this machine, through `migproxy relay`,
 * captured and analyzed, with the analysis checked against QEMU's own
 * counters and the destination's memory. */
#include "config.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <glib.h>
#include <glib/gstdio.h>
#include "analysis.h"
#include "analyze-file.h"
#include "commands.h"
#include "json-util.h"
#include "qemu-process.h"

#define READY_TIMEOUT_MS   (120 * 1000)
#define MIGRATE_TIMEOUT_MS (300 * 1000)
#define LOW_RAM_END        0xa0000u  /* RAM below the VGA window */
#define HIGH_RAM_START     0x100000u /* RAM above the BIOS area */

typedef struct {
    char *qemu;
    char *machine;
    gint mem_mib;
    char *workload;
    char *kernel;
    char *keep;
    gboolean json;
} DemoOptions;

static gint64 t0;

static void step(const char *fmt, ...) G_GNUC_PRINTF(1, 2);

static void
step(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "[%5.1f s] ", (g_get_monotonic_time() - t0) / 1e6);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* QMP's and the report's numbers; -1: missing */
static gint64
jint(json_object *o, const char *path)
{
    json_object *v = mp_json_path(o, path);
    return json_object_is_type(v, json_type_int) ? json_object_get_int64(v)
                                                 : -1;
}

/* Compares guest RAM of `q` with the RAM image `image`. */
static gboolean
memory_equals_image(MpQemu *q, const char *image, guint64 ram, const char *dir,
                    guint64 *differing, GError **error)
{
    g_autofree char *mem = g_build_filename(dir, "destination.bin", NULL);
    g_autofree char *a = NULL, *b = NULL;
    gsize alen, blen;

    if (!mp_qemu_pmemsave(q, 0, ram, mem, error)
        || !g_file_get_contents(mem, &a, &alen, error)
        || !g_file_get_contents(image, &b, &blen, error))
        return FALSE;
    g_unlink(mem);
    *differing = 0;
    for (guint64 off = 0; off < ram && off + 4096 <= MIN(alen, blen);
         off += 4096) {
        if (off >= LOW_RAM_END && off < HIGH_RAM_START)
            continue; /* VGA window and ROMs, not RAM */
        if (memcmp(a + off, b + off, 4096))
            (*differing)++;
    }
    return TRUE;
}

static void
die_with_parent(gpointer user_data)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
}

/* `migproxy relay --once` (this very binary) from 127.0.0.1:`listen` to
 * 127.0.0.1:`to`, its report, capture and log in `dir`; returns once it
 * listens. */
static gboolean
start_relay(const char *dir, guint16 listen, guint16 to, GPid *pid,
            GError **error)
{
    g_autofree char *self = g_file_read_link("/proc/self/exe", error);
    g_autofree char *log = g_build_filename(dir, "relay.log", NULL);
    g_autofree char *a_listen =
        g_strdup_printf("--listen=127.0.0.1:%u", listen);
    g_autofree char *a_to = g_strdup_printf("--to=127.0.0.1:%u", to);
    g_autofree char *a_report = g_strdup_printf("--report=%s/report.json", dir);
    g_autofree char *a_capture = g_strdup_printf("--capture=%s/capture", dir);
    const char *argv[] = {self,     "relay",   a_listen,        a_to, "--once",
                          a_report, a_capture, "--no-progress", NULL};

    if (!self)
        return FALSE;
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(e), "%s: %s",
                    log, g_strerror(e));
        return FALSE;
    }
    gboolean ok = g_spawn_async_with_pipes_and_fds(
        NULL, argv, NULL, G_SPAWN_DO_NOT_REAP_CHILD, die_with_parent, NULL, -1,
        -1, fd, NULL, NULL, 0, pid, NULL, NULL, NULL, error);
    close(fd);
    if (!ok)
        return FALSE;
    for (int i = 0; i < 500; i++) {
        g_autofree char *text = NULL;
        int st;
        g_file_get_contents(log, &text, NULL, NULL);
        if (text && strstr(text, "listening on"))
            return TRUE;
        if (waitpid(*pid, &st, WNOHANG) == *pid) {
            *pid = 0;
            g_set_error(error, G_SPAWN_ERROR, G_SPAWN_ERROR_FAILED,
                        "migproxy relay exited: %s", text ? text : "");
            return FALSE;
        }
        g_usleep(20000);
    }
    g_set_error(error, G_SPAWN_ERROR, G_SPAWN_ERROR_FAILED,
                "migproxy relay does not listen after 10 s");
    return FALSE;
}

/* Waits for the relay to exit (it does once the migration's connections
 * have closed); kills it after 30 s. */
static void
stop_relay(GPid pid)
{
    int st;
    if (!pid)
        return;
    for (int i = 0; i < 1500; i++) {
        if (waitpid(pid, &st, WNOHANG) == pid)
            return;
        g_usleep(20000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
}

static void
remove_tree(const char *path)
{
    g_autoptr(GDir) d = g_dir_open(path, 0, NULL);
    const char *name;
    while (d && (name = g_dir_read_name(d))) {
        g_autofree char *p = g_build_filename(path, name, NULL);
        if (g_file_test(p, G_FILE_TEST_IS_DIR))
            remove_tree(p);
        else
            g_unlink(p);
    }
    g_rmdir(path);
}

/* The workload guest: $MP_WORKLOAD; else, for the binary in the build
 * tree, the one built beside it; else the one installed with it, found
 * from the binary's own place (so that a package unpacked anywhere finds
 * its guest too). */
static char *
default_kernel(void)
{
    const char *env = g_getenv("MP_WORKLOAD");
    if (env)
        return g_strdup(env);
    g_autofree char *self = g_file_read_link("/proc/self/exe", NULL);
    g_autofree char *built =
        g_build_filename(MP_BUILD_ROOT, "src", "migproxy", NULL);
    g_autofree char *built_real = realpath(built, NULL);
    if (!self || (built_real && strcmp(self, built_real) == 0))
        return g_build_filename(MP_BUILD_ROOT, "samples", "workload",
                                "workload.elf", NULL);
    if (g_path_is_absolute(MP_WORKLOAD_FROM_BINDIR))
        return g_strdup(MP_WORKLOAD_FROM_BINDIR);
    g_autofree char *bindir = g_path_get_dirname(self);
    g_autofree char *installed =
        g_build_filename(bindir, MP_WORKLOAD_FROM_BINDIR, NULL);
    g_autofree char *installed_real = realpath(installed, NULL);
    return g_strdup(installed_real ? installed_real : installed);
}

static int
run_demo(const DemoOptions *o, const char *dir)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(MpQemu) src = NULL;
    g_autoptr(MpQemu) dst = NULL;
    /* the main channel as the relay captured it: the whole stream */
    g_autofree char *stream =
        g_build_filename(dir, "capture", "s1-c0-to-dst.bin", NULL);
    g_autofree char *report = g_build_filename(dir, "report.json", NULL);
    GPid relay = 0;
    g_autofree char *ramdir = g_build_filename(dir, "ram", NULL);
    g_autofree char *image = g_build_filename(ramdir, "pc.ram", NULL);
    g_autofree char *incoming = NULL, *uri = NULL;
    json_object *info = NULL;

    if (!mp_qemu_available(o->qemu, NULL, &err)) {
        fprintf(stderr, "migproxy demo: %s\n", err->message);
        return 1;
    }
    if (!g_file_test(o->kernel, G_FILE_TEST_EXISTS)) {
        fprintf(stderr,
                "migproxy demo: the workload guest %s is missing: build it "
                "(ninja -C build), install it or give --kernel\n",
                o->kernel);
        return 1;
    }

    MpQemuConfig scfg = {.version = o->qemu,
                         .label = "src",
                         .machine = o->machine,
                         .memory_mib = o->mem_mib,
                         .kernel = o->kernel,
                         .append = o->workload};
    step("source: QEMU %s, %d MiB, workload guest \"%s\"", o->qemu, o->mem_mib,
         o->workload);
    src = mp_qemu_start(&scfg, &err);
    if (!src
        || !mp_qemu_wait_console(src, "workload: READY", READY_TIMEOUT_MS,
                                 &err))
        goto fail;
    step("source guest has filled its memory (READY)");

    guint16 port = mp_qemu_pick_free_port(&err);
    if (!port)
        goto fail;
    incoming = g_strdup_printf("tcp:127.0.0.1:%u", port);
    MpQemuConfig dcfg = {.version = o->qemu,
                         .label = "dst",
                         .machine = o->machine,
                         .memory_mib = o->mem_mib,
                         .paused = TRUE,
                         .incoming = incoming};
    step("destination: QEMU %s, -incoming %s, paused (-S)", o->qemu, incoming);
    dst = mp_qemu_start(&dcfg, &err);
    if (!dst)
        goto fail;

    /* The source migrates to the relay, which forwards to the destination
     * and records every channel on the way. */
    guint16 relay_port = mp_qemu_pick_free_port(&err);
    if (!relay_port || !start_relay(dir, relay_port, port, &relay, &err))
        goto fail;
    step("relay: migproxy relay --listen 127.0.0.1:%u --to 127.0.0.1:%u "
         "--once (log, report and capture in %s)",
         relay_port, port, dir);
    uri = g_strdup_printf("tcp:127.0.0.1:%u", relay_port);
    if (!mp_qemu_set_parameter_int(src, "downtime-limit", 50, &err)
        || !mp_qemu_set_parameter_int(src, "max-bandwidth", 256 << 20, &err))
        goto fail;
    step("migrating live through the relay: migrate %s", uri);
    if (!mp_qemu_migrate(src, uri, &err)
        || !mp_qemu_wait_migration(src, MIGRATE_TIMEOUT_MS, &info, &err))
        goto fail;
    const char *status = mp_json_string(info, "status");
    if (g_strcmp0(status, "completed") != 0) {
        fprintf(stderr, "migproxy demo: the migration ended as %s\n",
                status ? status : "?");
        json_object_put(info);
        return 1;
    }
    json_object *dinfo = NULL;
    if (!mp_qemu_wait_migration(dst, MIGRATE_TIMEOUT_MS, &dinfo, &err))
        goto fail;
    json_object_put(dinfo);
    step("migration completed: %" G_GINT64_FORMAT
         " ms, downtime %" G_GINT64_FORMAT " ms (query-migrate)",
         jint(info, "total-time"), jint(info, "downtime"));
    stop_relay(relay);
    relay = 0;
    json_object *rep = json_object_from_file(report), *v;
    if (rep) {
        json_object *rounds = mp_json_array(rep, "rounds");
        step("relay report: %.0f ms, downtime %.1f ms on the wire, %zu "
             "rounds, normal %" G_GINT64_FORMAT " zero %" G_GINT64_FORMAT
             " pages (%s)",
             json_object_object_get_ex(rep, "total_ms", &v)
                 ? json_object_get_double(v)
                 : -1.0,
             json_object_object_get_ex(rep, "downtime_ms", &v)
                 ? json_object_get_double(v)
                 : -1.0,
             rounds ? json_object_array_length(rounds) : (size_t)0,
             jint(rep, "ram.pages.normal"), jint(rep, "ram.pages.zero"),
             report);
    }

    step("analyzing the stream");
    MpAnalyzeOptions aopt = {.quiet = TRUE, .dump_ram = ramdir};
    gboolean ok;
    json_object *doc = mp_analyze_file(stream, &aopt, &ok);

    guint64 differing = 0;
    gboolean mem_ok =
        ok
        && memory_equals_image(dst, image, (guint64)o->mem_mib << 20, dir,
                               &differing, &err);
    if (o->json) {
        json_object *checks = json_object_new_object();
        json_object_object_add(checks, "query_migrate", json_object_get(info));
        json_object_object_add(
            checks, "destination_equals_image",
            json_object_new_boolean(mem_ok && differing == 0));
        if (rep)
            json_object_object_add(checks, "relay_report",
                                   json_object_get(rep));
        json_object_object_add(doc, "demo", checks);
        puts(json_object_to_json_string_ext(doc, JSON_C_TO_STRING_PRETTY));
    } else {
        printf("\n");
        mp_analysis_print(doc, stdout);
    }

    gint64 normal = jint(doc, "ram.pages.normal"),
           zero = jint(doc, "ram.pages.zero");
    gboolean counts_ok = normal == jint(info, "ram.normal")
                         && zero == jint(info, "ram.duplicate");
    gboolean relay_ok = rep && jint(rep, "ram.pages.normal") == normal
                        && jint(rep, "ram.pages.zero") == zero;
    FILE *out = o->json ? stderr : stdout;
    fprintf(out,
            "\nChecks:\n"
            "  pages in the stream vs QEMU's query-migrate: normal "
            "%" G_GINT64_FORMAT " / %" G_GINT64_FORMAT
            ", zero %" G_GINT64_FORMAT " / duplicate %" G_GINT64_FORMAT
            ": %s\n",
            normal, jint(info, "ram.normal"), zero, jint(info, "ram.duplicate"),
            counts_ok ? "equal" : "DIFFERENT");
    fprintf(out, "  pages the relay counted live vs the stream: %s\n",
            relay_ok ? "equal" : "DIFFERENT");
    if (mem_ok)
        fprintf(out,
                "  destination's memory vs the stream's RAM image (%d MiB): "
                "%s\n",
                o->mem_mib,
                differing ? "DIFFERENT" : "identical, byte for byte");
    else
        fprintf(out, "  memory comparison failed: %s\n",
                err ? err->message : "the stream did not parse");
    json_object_put(doc);
    json_object_put(info);
    json_object_put(rep);
    return counts_ok && relay_ok && mem_ok && differing == 0 ? 0 : 1;

fail:
    fprintf(stderr, "migproxy demo: %s\n", err ? err->message : "failed");
    if (relay) {
        kill(relay, SIGKILL);
        stop_relay(relay);
    }
    if (info)
        json_object_put(info);
    return 1;
}

static GOptionEntry *
demo_entries(gpointer store)
{
    DemoOptions *o = store;
    const GOptionEntry entries[] = {
        {"qemu", 0, 0, G_OPTION_ARG_STRING, &o->qemu,
         "QEMU version on both sides: 7.2 (system) or 10.0 (from "
         "scripts/fetch-qemu10.sh); default 7.2",
         "VERSION"},
        {"machine", 0, 0, G_OPTION_ARG_STRING, &o->machine,
         "Machine type (default pc-q35-VERSION)", "TYPE"},
        {"memory", 'm', 0, G_OPTION_ARG_INT, &o->mem_mib,
         "Guest RAM in MiB (default 128)", "MIB"},
        {"workload", 'w', 0, G_OPTION_ARG_STRING, &o->workload,
         "The workload guest's settings (default \"mem=64M rate=2000\"; see "
         "samples/workload/README.md)",
         "ARGS"},
        {"kernel", 0, 0, G_OPTION_ARG_FILENAME, &o->kernel,
         "The workload guest (default: the one installed with migproxy, or "
         "built beside it in the build tree)",
         "FILE"},
        {"keep", 'k', 0, G_OPTION_ARG_FILENAME, &o->keep,
         "Keep the stream and RAM images in DIR", "DIR"},
        {"json", 'j', 0, G_OPTION_ARG_NONE, &o->json,
         "Print the analysis as JSON, with query-migrate's answer", NULL},
        {NULL},
    };
    return g_memdup2(entries, sizeof(entries));
}

static void
demo_options_clear(DemoOptions *o)
{
    g_free(o->qemu);
    g_free(o->machine);
    g_free(o->workload);
    g_free(o->kernel);
    g_free(o->keep);
}

/* Checks the parsed options `o`, fills in the defaults, runs the demo. */
static int
demo_with(DemoOptions *o)
{
    g_autoptr(GError) err = NULL;

    if (!o->qemu)
        o->qemu = g_strdup("7.2");
    if (strcmp(o->qemu, "7.2") && strcmp(o->qemu, "10.0")) {
        fprintf(stderr, "migproxy demo: --qemu is 7.2 or 10.0\n");
        return 2;
    }
    if (o->mem_mib < 32 || o->mem_mib > 4096) {
        fprintf(stderr, "migproxy demo: --memory is 32..4096 MiB\n");
        return 2;
    }
    if (!o->workload)
        o->workload = g_strdup("mem=64M rate=2000");
    if (!o->kernel)
        o->kernel = default_kernel();

    t0 = g_get_monotonic_time();
    g_autofree char *dir = NULL;
    if (o->keep) {
        /* the relay never writes over a capture: say so before the QEMUs
         * start, not after */
        g_autofree char *cap = g_build_filename(o->keep, "capture", NULL);
        if (g_file_test(cap, G_FILE_TEST_EXISTS)) {
            fprintf(stderr,
                    "migproxy demo: %s holds an earlier capture: remove it "
                    "or --keep another directory\n",
                    cap);
            return 1;
        }
        g_mkdir_with_parents(o->keep, 0755);
        dir = g_strdup(o->keep);
    } else {
        dir = g_dir_make_tmp("migproxy-demo-XXXXXX", &err);
        if (!dir) {
            fprintf(stderr, "migproxy demo: %s\n", err->message);
            return 1;
        }
    }
    int status = run_demo(o, dir);
    if (!o->keep)
        remove_tree(dir);
    return status;
}

static int
demo_run(int argc, char **argv)
{
    DemoOptions o = {.mem_mib = 128};
    g_autofree GOptionEntry *entries = demo_entries(&o);
    g_autoptr(GOptionContext) oc = mp_command_context(&mp_cmd_demo, entries);
    g_autoptr(GError) err = NULL;
    int status;

    if (!g_option_context_parse(oc, &argc, &argv, &err)) {
        fprintf(stderr, "migproxy demo: %s\n", err->message);
        status = 2;
    } else {
        status = demo_with(&o);
    }
    demo_options_clear(&o);
    return status;
}

const MpCommand mp_cmd_demo = {
    .name = "demo",
    .purpose = "migrate a sample guest live between two local QEMUs and "
               "analyze it",
    .summary =
        "Migrate the workload guest live between two QEMUs on this "
        "machine through `migproxy relay`, capture the stream and "
        "analyze it.\n\n"
        "Checks that the pages counted in the stream equal QEMU's "
        "query-migrate counters and that the destination's memory equals "
        "the RAM image migproxy decodes from the stream.",
    .description =
        "Examples:\n"
        "  migproxy demo\n"
        "  migproxy demo --qemu 10.0 --workload \"mem=96M rate=5000\"\n"
        "  migproxy demo --keep /tmp/demo && migproxy analyze "
        "/tmp/demo/capture\n\n"
        "Exit status: 0 if every check passed, 1 if one failed or the demo "
        "could not run (QEMU or the workload guest missing, a migration "
        "that failed), 2 on usage errors.\n\n"
        "Environment: MP_WORKLOAD is the workload guest when --kernel is "
        "not given; MP_QEMU10_PREFIX is the directory QEMU 10.0 was "
        "unpacked into (default: .qemu/10.0 in the source tree, where "
        "scripts/fetch-qemu10.sh puts it).",
    .entries = demo_entries,
    .store_size = sizeof(DemoOptions),
    .run = demo_run,
};
