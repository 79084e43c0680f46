/* cmd-demo.c: `migproxy demo`, a real live migration of the workload guest
 * between two QEMU processes on this machine, through the pair (`migproxy
 * source` and `migproxy dest` with their tunnel on loopback) or through
 * `migproxy relay`, captured and analyzed, with the analysis checked
 * against QEMU's own counters and the destination's memory. */
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
    char *through; /* "pair" or "relay" */
    gboolean json;
} DemoOptions;

static void step(gint64 t0, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

/* A line of progress on stderr, `t0` the demo's start. */
static void
step(gint64 t0, const char *fmt, ...)
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

/* `migproxy ARGS...` (this very binary: `args` from the command on, NULL
 * at the end), its log in `dir`/COMMAND.log; returns once it listens. */
static gboolean
start_self(const char *dir, const char *const *args, GPid *pid,
           GError **error)
{
    g_autofree char *self = g_file_read_link("/proc/self/exe", error);
    g_autofree char *name = g_strdup_printf("%s.log", args[0]);
    g_autofree char *log = g_build_filename(dir, name, NULL);
    g_autoptr(GPtrArray) argv = g_ptr_array_new();

    if (!self)
        return FALSE;
    g_ptr_array_add(argv, self);
    for (guint i = 0; args[i]; i++)
        g_ptr_array_add(argv, (gpointer)args[i]);
    g_ptr_array_add(argv, NULL);
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e = errno;
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(e), "%s: %s",
                    log, g_strerror(e));
        return FALSE;
    }
    gboolean ok = g_spawn_async_with_pipes_and_fds(
        NULL, (const char *const *)argv->pdata, NULL, G_SPAWN_DO_NOT_REAP_CHILD, die_with_parent, NULL, -1,
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
                        "migproxy %s exited: %s", args[0], text ? text : "");
            return FALSE;
        }
        g_usleep(20000);
    }
    g_set_error(error, G_SPAWN_ERROR, G_SPAWN_ERROR_FAILED,
                "migproxy %s does not listen after 10 s", args[0]);
    return FALSE;
}

/* Waits for a migproxy started with --once to exit (it does once the
 * migration's connections have closed); kills it after 30 s. */
static void
stop_self(GPid pid)
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

/* What the tunnel carried against what QEMU sent, from the source side's
 * report `rep`, and how the main connection's pages went. */
static void
print_tunnel(json_object *rep, gint64 t0)
{
    json_object *channels = mp_json_array(rep, "channels");
    gint64 stream = 0;
    for (gsize i = 0; channels && i < json_object_array_length(channels); i++)
        stream += MAX(jint(json_object_array_get_idx(channels, i),
                           "to_dst.bytes"),
                      0);
    gint64 link = jint(rep, "tunnel.link_bytes_out");
    if (stream <= 0 || link <= 0)
        return;
    step(t0, "tunnel: QEMU sent %.1f MiB, the tunnel carried %.1f MiB (%.1fx "
         "smaller)",
         stream / 1048576.0, link / 1048576.0, (double)stream / link);
    json_object *tch = mp_json_array(mp_json_get(rep, "tunnel"), "channels");
    json_object *main_ch = tch && json_object_array_length(tch)
                               ? json_object_array_get_idx(tch, 0)
                               : NULL;
    json_object *pages =
        main_ch ? mp_json_path(main_ch, "to_dst.pages") : NULL;
    if (!pages)
        return;
    GString *line = g_string_new(NULL);
    g_string_append_printf(
        line,
        "%" G_GINT64_FORMAT " zero pages in runs and %" G_GINT64_FORMAT
        " not sent (dest holds them as zero), %" G_GINT64_FORMAT
        " as references to pages dest holds (dedup), %" G_GINT64_FORMAT
        " as deltas, %" G_GINT64_FORMAT " whole; zstd %.1f -> %.1f MiB",
        jint(pages, "zero_runs.zero_pages"), jint(pages, "zero_runs.skipped"),
        jint(pages, "dedup.hits"), jint(pages, "delta.used"),
        jint(pages, "whole.pages"),
        MAX(jint(pages, "zstd.bytes_in"), 0) / 1048576.0,
        MAX(jint(pages, "zstd.bytes_out"), 0) / 1048576.0);
    step(t0, "tunnel, main connection's pages: %s", line->str);
    g_string_free(line, TRUE);
}

static int
run_demo(const DemoOptions *o, const char *dir, gint64 t0)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(MpQemu) src = NULL;
    g_autoptr(MpQemu) dst = NULL;
    /* the main channel as the relay captured it: the whole stream */
    g_autofree char *stream =
        g_build_filename(dir, "capture", "s1-c0-to-dst.bin", NULL);
    g_autofree char *report = g_build_filename(dir, "report.json", NULL);
    g_autofree char *dreport = g_build_filename(dir, "dest-report.json", NULL);
    gboolean pair = strcmp(o->through, "pair") == 0;
    GPid proxy = 0, dest = 0; /* migproxy relay or source; dest */
    g_autofree char *a_to = NULL, *a_report = NULL, *a_capture = NULL;
    g_autofree char *a_peer = NULL, *a_listen = NULL;
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
    step(t0, "source: QEMU %s, %d MiB, workload guest \"%s\"", o->qemu, o->mem_mib,
         o->workload);
    src = mp_qemu_start(&scfg, &err);
    if (!src
        || !mp_qemu_wait_console(src, "workload: READY", READY_TIMEOUT_MS,
                                 &err))
        goto fail;
    step(t0, "source guest has filled its memory (READY)");

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
    step(t0, "destination: QEMU %s, -incoming %s, paused (-S)", o->qemu, incoming);
    dst = mp_qemu_start(&dcfg, &err);
    if (!dst)
        goto fail;

    /* The source migrates to migproxy (the pair's source side, or the
     * relay), which records every channel on the way; the pair carries
     * the stream through its tunnel to dest, which writes it to the
     * destination QEMU. */
    a_to = g_strdup_printf("--to=127.0.0.1:%u", port);
    a_report = g_strdup_printf("--report=%s", report);
    a_capture = g_strdup_printf("--capture=%s/capture", dir);
    if (pair) {
        guint16 tunnel_port = mp_qemu_pick_free_port(&err);
        if (!tunnel_port)
            goto fail;
        g_autofree char *a_tunnel =
            g_strdup_printf("--listen=127.0.0.1:%u", tunnel_port);
        g_autofree char *a_dreport = g_strdup_printf("--report=%s", dreport);
        const char *dargs[] = {"dest",   a_tunnel,  a_to, "--allow=127.0.0.1",
                               "--once", a_dreport, NULL};
        if (!start_self(dir, dargs, &dest, &err))
            goto fail;
        step(t0, "dest: migproxy dest --listen 127.0.0.1:%u --to "
             "127.0.0.1:%u --allow 127.0.0.1 --once",
             tunnel_port, port);
        a_peer = g_strdup_printf("--peer=127.0.0.1:%u", tunnel_port);
    }
    guint16 listen_port = mp_qemu_pick_free_port(&err);
    if (!listen_port)
        goto fail;
    a_listen = g_strdup_printf("--listen=127.0.0.1:%u", listen_port);
    const char *pargs[] = {pair ? "source" : "relay",
                           a_listen,
                           pair ? a_peer : a_to,
                           "--once",
                           a_report,
                           a_capture,
                           "--no-progress",
                           NULL};
    if (!start_self(dir, pargs, &proxy, &err))
        goto fail;
    if (pair)
        step(t0, "source: migproxy source --listen 127.0.0.1:%u --peer "
             "127.0.0.1:%s --once (logs, reports and capture in %s)",
             listen_port, strrchr(a_peer, ':') + 1, dir);
    else
        step(t0, "relay: migproxy relay --listen 127.0.0.1:%u --to "
             "127.0.0.1:%u --once (log, report and capture in %s)",
             listen_port, port, dir);
    uri = g_strdup_printf("tcp:127.0.0.1:%u", listen_port);
    if (!mp_qemu_set_parameter_int(src, "downtime-limit", 50, &err)
        || !mp_qemu_set_parameter_int(src, "max-bandwidth", 256 << 20, &err))
        goto fail;
    step(t0, "migrating live through the %s: migrate %s",
         pair ? "pair" : "relay", uri);
    if (!mp_qemu_migrate(src, uri, &err)
        || !mp_qemu_wait_migration(src, MIGRATE_TIMEOUT_MS, &info, &err))
        goto fail;
    const char *status = mp_json_string(info, "status");
    if (g_strcmp0(status, "completed") != 0) {
        g_set_error(&err, G_SPAWN_ERROR, G_SPAWN_ERROR_FAILED,
                    "the migration ended as %s (see the logs in %s)",
                    status ? status : "?", dir);
        goto fail;
    }
    json_object *dinfo = NULL;
    if (!mp_qemu_wait_migration(dst, MIGRATE_TIMEOUT_MS, &dinfo, &err))
        goto fail;
    json_object_put(dinfo);
    step(t0, "migration completed: %" G_GINT64_FORMAT
         " ms, downtime %" G_GINT64_FORMAT " ms (query-migrate)",
         jint(info, "total-time"), jint(info, "downtime"));
    stop_self(proxy);
    stop_self(dest);
    proxy = dest = 0;
    json_object *rep = json_object_from_file(report), *v;
    if (rep) {
        json_object *rounds = mp_json_array(rep, "rounds");
        step(t0, "%s report: %.0f ms, downtime %.1f ms on the wire, %zu "
             "rounds, normal %" G_GINT64_FORMAT " zero %" G_GINT64_FORMAT
             " pages (%s)",
             pair ? "source side's" : "relay",
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

    json_object *drep = pair ? json_object_from_file(dreport) : NULL;
    if (pair && rep)
        print_tunnel(rep, t0);

    step(t0, "analyzing the stream");
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
            json_object_object_add(checks,
                                   pair ? "source_report" : "relay_report",
                                   json_object_get(rep));
        if (drep)
            json_object_object_add(checks, "dest_report",
                                   json_object_get(drep));
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
    fprintf(out, "  pages %s counted live vs the stream: %s\n",
            pair ? "migproxy source" : "the relay",
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
    json_object_put(drep);
    return counts_ok && relay_ok && mem_ok && differing == 0 ? 0 : 1;

fail:
    fprintf(stderr, "migproxy demo: %s\n", err ? err->message : "failed");
    for (guint i = 0; i < 2; i++) {
        GPid pid = i ? dest : proxy;
        if (pid) {
            kill(pid, SIGKILL);
            stop_self(pid);
        }
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
        {"through", 0, 0, G_OPTION_ARG_STRING, &o->through,
         "pair (default): through `migproxy source` and `migproxy dest` "
         "and their tunnel on this machine; relay: through `migproxy "
         "relay`",
         "pair|relay"},
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
    g_free(o->through);
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

    if (!o->through)
        o->through = g_strdup("pair");
    if (strcmp(o->through, "pair") && strcmp(o->through, "relay")) {
        fprintf(stderr, "migproxy demo: --through is pair or relay\n");
        return 2;
    }

    gint64 t0 = g_get_monotonic_time();
    g_autofree char *dir = NULL;
    if (o->keep) {
        /* migproxy never writes over a capture: say so before the QEMUs
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
    int status = run_demo(o, dir, t0);
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
        "machine through the pair (`migproxy source`, its tunnel, "
        "`migproxy dest`), capture the stream and analyze it.\n\n"
        "Shows what the tunnel carried against what QEMU sent, and checks "
        "that the pages counted in the stream equal QEMU's query-migrate "
        "counters, that migproxy counted the same pages live, and that the "
        "destination's memory equals the RAM image migproxy decodes from "
        "the stream.",
    .description =
        "Examples:\n"
        "  migproxy demo\n"
        "  migproxy demo --qemu 10.0 --workload \"mem=96M rate=5000\"\n"
        "  migproxy demo --through relay\n"
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
