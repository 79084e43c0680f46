/* qemu-process.c: start, drive over QMP and stop a real QEMU.
 * See qemu-process.h for what is started and how; QMP commands used:
 * qmp_capabilities, quit, query-migrate, migrate, migrate-set-capabilities,
 * migrate-set-parameters, pmemsave (QEMU qapi/migration.json, misc.json).
 *
 *   <tmp>/mp-qemu-XXXXXX/   private directory, removed by mp_qemu_free()
 *     qmp.sock              -qmp unix:...,server=on,wait=off
 *     console.log           -chardev file + -device isa-debugcon
 *     qemu.log              QEMU's stdout and stderr
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <glib.h>
#include <glib/gstdio.h>
#include <gio/gio.h>

#include "json-util.h"
#include "qemu-process.h"

#define MP_QEMU72_BINARY      "/usr/bin/qemu-system-x86_64"
#define MP_QEMU_DEFAULT_MIB   128
#define MP_QEMU_DEBUGCON_PORT 0xe9 /* QEMU's -debugcon default */
/* Under TCG on a loaded 2-core machine QEMU 7.2 answers QMP after
 * 0.1-0.5 s; 30 s only bounds a machine that is swapping.
 */
#define MP_QEMU_START_TIMEOUT_MS 30000
/* quit is acted on at once; QEMU then tears down in well under 100 ms. */
#define MP_QEMU_QUIT_GRACE_MS   3000
#define MP_QEMU_POLL_US         (20 * 1000)
#define MP_QEMU_MIGRATE_POLL_US (50 * 1000)
/* Bytes of QEMU's stderr quoted in an error. */
#define MP_QEMU_LOG_TAIL 1024

struct MpQemu {
    char *name; /* "qemu 7.2 (src)" */
    char *dir;
    char *qmp_path;
    char *console_path;
    char *log_path;
    GPid pid;
    gboolean reaped;
    int wait_status;
    MpQmpClient *qmp;
};

G_DEFINE_QUARK(mp_qemu_error_quark, mp_qemu_error)

/* --- process --- */

gboolean
mp_qemu_exited(MpQemu *q, int *wait_status)
{
    if (!q->reaped && q->pid > 0) {
        int st;
        pid_t r;

        do
            r = waitpid(q->pid, &st, WNOHANG);
        while (r < 0 && errno == EINTR);
        if (r == q->pid || (r < 0 && errno == ECHILD)) {
            q->reaped = TRUE;
            q->wait_status = r == q->pid ? st : 0;
            g_spawn_close_pid(q->pid);
        }
    }
    if (q->reaped && wait_status != NULL)
        *wait_status = q->wait_status;
    return q->reaped;
}

/* "exited with status 1: <last lines of stderr>" for an exited QEMU. */
static char *
describe_exit(MpQemu *q)
{
    g_autofree char *log = NULL;
    gsize len = 0;
    const char *tail = "";
    GString *s = g_string_new(NULL);
    int st = q->wait_status;

    if (WIFEXITED(st))
        g_string_append_printf(s, "exited with status %d", WEXITSTATUS(st));
    else if (WIFSIGNALED(st))
        g_string_append_printf(s, "killed by signal %d (%s)", WTERMSIG(st),
                               g_strsignal(WTERMSIG(st)));
    else
        g_string_append_printf(s, "ended with wait status 0x%x", st);

    if (g_file_get_contents(q->log_path, &log, &len, NULL) && len > 0) {
        tail = log;
        if (len > MP_QEMU_LOG_TAIL)
            tail = log + len - MP_QEMU_LOG_TAIL;
        g_strstrip((char *)tail);
    }
    if (*tail != '\0')
        g_string_append_printf(s, ": %s", tail);
    return g_string_free(s, FALSE);
}

static void
child_setup(gpointer data)
{
    pid_t parent = GPOINTER_TO_INT(data);

    /* Async-signal-safe only: we are between fork and exec. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(127);
}

static void
remove_tree(const char *path)
{
    g_autoptr(GDir) dir = g_dir_open(path, 0, NULL);
    const char *name;

    while (dir != NULL && (name = g_dir_read_name(dir)) != NULL) {
        g_autofree char *child = g_build_filename(path, name, NULL);
        GStatBuf st;

        if (g_lstat(child, &st) == 0 && S_ISDIR(st.st_mode))
            remove_tree(child);
        else
            g_unlink(child);
    }
    g_rmdir(path);
}

void
mp_qemu_free(MpQemu *q)
{
    gboolean quitting = FALSE;

    if (q == NULL)
        return;
    if (q->qmp != NULL && !mp_qemu_exited(q, NULL)) {
        g_autoptr(GError) err = NULL;
        json_object *ret;

        mp_qmp_set_timeout(q->qmp, 1000);
        ret = mp_qmp_execute(q->qmp, "quit", NULL, &err);
        /* No reply but a closed socket: QEMU is on its way out too. */
        quitting = ret != NULL
                   || g_error_matches(err, MP_QMP_ERROR, MP_QMP_ERROR_CLOSED);
        json_object_put(ret);
    }
    g_clear_pointer(&q->qmp, mp_qmp_free);
    if (q->pid > 0) {
        gint64 deadline = g_get_monotonic_time() + MP_QEMU_QUIT_GRACE_MS * 1000;

        while (quitting && !mp_qemu_exited(q, NULL)
               && g_get_monotonic_time() < deadline)
            g_usleep(10 * 1000);
        if (!q->reaped) {
            int st;

            kill(q->pid, SIGKILL);
            while (waitpid(q->pid, &st, 0) < 0 && errno == EINTR)
                ;
            q->reaped = TRUE;
            g_spawn_close_pid(q->pid);
        }
    }
    if (q->dir != NULL)
        remove_tree(q->dir);
    g_free(q->name);
    g_free(q->dir);
    g_free(q->qmp_path);
    g_free(q->console_path);
    g_free(q->log_path);
    g_free(q);
}

/* --- which QEMU --- */

char *
mp_qemu_default_prefix(void)
{
    const char *env = g_getenv("MP_QEMU10_PREFIX");

    if (env != NULL && *env != '\0')
        return g_strdup(env);
    return g_build_filename(MP_SOURCE_ROOT, ".qemu", "10.0", NULL);
}

/* <prefix>/usr/lib/<triplet>/qemu, or NULL. */
static char *
find_module_dir(const char *prefix)
{
    g_autofree char *lib = g_build_filename(prefix, "usr", "lib", NULL);
    g_autoptr(GDir) dir = g_dir_open(lib, 0, NULL);
    const char *name;

    while (dir != NULL && (name = g_dir_read_name(dir)) != NULL) {
        char *mod = g_build_filename(lib, name, "qemu", NULL);

        if (g_file_test(mod, G_FILE_TEST_IS_DIR))
            return mod;
        g_free(mod);
    }
    return NULL;
}

/* How to run one version: binary, extra leading args, environment. */
typedef struct {
    char *binary;
    char *module_dir; /* 10.0 only */
    char *prefix;     /* 10.0 only */
} QemuInstall;

static void
install_clear(QemuInstall *in)
{
    g_free(in->binary);
    g_free(in->module_dir);
    g_free(in->prefix);
}

static gboolean
install_resolve(const char *version, const char *prefix, const char *binary,
                QemuInstall *in, GError **error)
{
    memset(in, 0, sizeof(*in));
    if (g_strcmp0(version, "7.2") == 0) {
        in->binary = g_strdup(binary != NULL ? binary : MP_QEMU72_BINARY);
        if (!g_file_test(in->binary, G_FILE_TEST_IS_EXECUTABLE)) {
            g_set_error(error, MP_QEMU_ERROR, MP_QEMU_ERROR_NOT_INSTALLED,
                        "qemu 7.2: %s not found: "
                        "apt-get install qemu-system-x86",
                        in->binary);
            install_clear(in);
            return FALSE;
        }
        return TRUE;
    }
    if (g_strcmp0(version, "10.0") == 0) {
        g_autofree char *stamp = NULL;

        in->prefix =
            prefix != NULL ? g_strdup(prefix) : mp_qemu_default_prefix();
        in->binary = binary != NULL
                         ? g_strdup(binary)
                         : g_build_filename(in->prefix, "usr", "bin",
                                            "qemu-system-x86_64", NULL);
        stamp = g_build_filename(in->prefix, ".mp-installed", NULL);
        in->module_dir = find_module_dir(in->prefix);
        if (!g_file_test(stamp, G_FILE_TEST_EXISTS)
            || !g_file_test(in->binary, G_FILE_TEST_IS_EXECUTABLE)
            || in->module_dir == NULL) {
            g_set_error(error, MP_QEMU_ERROR, MP_QEMU_ERROR_NOT_INSTALLED,
                        "qemu 10.0: not installed in %s: "
                        "run scripts/fetch-qemu10.sh",
                        in->prefix);
            install_clear(in);
            return FALSE;
        }
        return TRUE;
    }
    g_set_error(error, MP_QEMU_ERROR, MP_QEMU_ERROR_CONFIG,
                "qemu %s: unknown version (known: 7.2, 10.0)", version);
    return FALSE;
}

gboolean
mp_qemu_available(const char *version, const char *prefix, GError **error)
{
    QemuInstall in;

    if (!install_resolve(version, prefix, NULL, &in, error))
        return FALSE;
    install_clear(&in);
    return TRUE;
}

/* --- start --- */

static GPtrArray *
build_argv(const MpQemuConfig *cfg, const char *version, const QemuInstall *in,
           const MpQemu *q)
{
    GPtrArray *argv = g_ptr_array_new_with_free_func(g_free);
    guint iobase =
        cfg->debugcon_iobase ? cfg->debugcon_iobase : MP_QEMU_DEBUGCON_PORT;

#define ARG(s)    g_ptr_array_add(argv, g_strdup(s))
#define ARGF(...) g_ptr_array_add(argv, g_strdup_printf(__VA_ARGS__))
    ARG(in->binary);
    if (in->prefix != NULL) {
        /* QEMU 10 needs its own firmware: seabios >= 1.16.3 and the
         * option ROMs of its qemu-system-data.
         */
        ARG("-L");
        ARGF("%s/usr/share/qemu", in->prefix);
        ARG("-L");
        ARGF("%s/usr/share/seabios", in->prefix);
    }
    ARG("-machine");
    if (cfg->machine != NULL)
        ARG(cfg->machine);
    else
        ARGF("pc-q35-%s", version);
    ARG("-accel");
    ARG("tcg");
    ARG("-m");
    ARGF("%u", cfg->memory_mib ? cfg->memory_mib : MP_QEMU_DEFAULT_MIB);
    ARG("-display");
    ARG("none");
    ARG("-nodefaults");
    ARG("-no-user-config");
    ARG("-qmp");
    ARGF("unix:%s,server=on,wait=off", q->qmp_path);
    ARG("-chardev");
    ARGF("file,id=mp-console,path=%s", q->console_path);
    ARG("-device");
    ARGF("isa-debugcon,iobase=0x%x,chardev=mp-console", iobase);
    if (cfg->kernel != NULL) {
        ARG("-kernel");
        ARG(cfg->kernel);
    }
    if (cfg->initrd != NULL) {
        ARG("-initrd");
        ARG(cfg->initrd);
    }
    if (cfg->append != NULL) {
        ARG("-append");
        ARG(cfg->append);
    }
    if (cfg->paused)
        ARG("-S");
    if (cfg->incoming != NULL) {
        ARG("-incoming");
        ARG(cfg->incoming);
    }
    for (guint i = 0; cfg->extra_args != NULL && cfg->extra_args[i]; i++)
        ARG(cfg->extra_args[i]);
#undef ARG
#undef ARGF
    g_ptr_array_add(argv, NULL);
    return argv;
}

static gboolean
spawn(MpQemu *q, const MpQemuConfig *cfg, const char *version,
      const QemuInstall *in, GError **error)
{
    g_autoptr(GPtrArray) argv = build_argv(cfg, version, in, q);
    g_auto(GStrv) envp = g_get_environ();
    g_autofree char *cmdline = NULL;
    int log_fd;
    gboolean ok;

    if (in->module_dir != NULL)
        envp = g_environ_setenv(envp, "QEMU_MODULE_DIR", in->module_dir, TRUE);
    else
        envp = g_environ_unsetenv(envp, "QEMU_MODULE_DIR");

    log_fd =
        g_open(q->log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (log_fd < 0) {
        g_set_error(error, MP_QEMU_ERROR, MP_QEMU_ERROR_IO, "creating %s: %s",
                    q->log_path, g_strerror(errno));
        return FALSE;
    }
    cmdline = g_strjoinv(" ", (char **)argv->pdata);
    g_debug("%s: %s", q->name, cmdline);
    ok = g_spawn_async_with_pipes_and_fds(
        NULL, (const char *const *)argv->pdata, (const char *const *)envp,
        G_SPAWN_DO_NOT_REAP_CHILD | G_SPAWN_STDIN_FROM_DEV_NULL, child_setup,
        GINT_TO_POINTER(getpid()), -1, log_fd, log_fd, NULL, NULL, 0, &q->pid,
        NULL, NULL, NULL, error);
    close(log_fd);
    if (!ok)
        g_prefix_error(error, "%s: ", (char *)argv->pdata[0]);
    return ok;
}

/* Connects to QMP once QEMU has created the socket, noticing if it exits
 * first (bad arguments, missing firmware: it does so within ~100 ms).
 */
static gboolean
connect_qmp(MpQemu *q, guint timeout_ms, GError **error)
{
    gint64 deadline = g_get_monotonic_time() + (gint64)timeout_ms * 1000;

    for (;;) {
        g_autoptr(GError) err = NULL;
        gint64 left = deadline - g_get_monotonic_time();

        if (mp_qemu_exited(q, NULL)) {
            g_autofree char *why = describe_exit(q);

            g_set_error(error, MP_QEMU_ERROR, MP_QEMU_ERROR_EXITED, "%s", why);
            return FALSE;
        }
        if (left <= 0) {
            g_set_error(error, MP_QEMU_ERROR, MP_QEMU_ERROR_TIMEOUT,
                        "QMP socket %s did not answer within %u ms",
                        q->qmp_path, timeout_ms);
            return FALSE;
        }
        q->qmp = mp_qmp_connect_once(q->qmp_path, MAX(left / 1000, 1000), &err);
        if (q->qmp != NULL)
            return TRUE;
        if (!g_error_matches(err, MP_QMP_ERROR, MP_QMP_ERROR_CONNECT)) {
            /* Connected, but the greeting or capabilities failed. */
            if (mp_qemu_exited(q, NULL)) {
                g_autofree char *why = describe_exit(q);

                g_set_error(error, MP_QEMU_ERROR, MP_QEMU_ERROR_EXITED,
                            "%s (%s)", why, err->message);
            } else {
                g_set_error(error, MP_QEMU_ERROR, MP_QEMU_ERROR_START, "%s",
                            err->message);
            }
            return FALSE;
        }
        g_usleep(MP_QEMU_POLL_US);
    }
}

MpQemu *
mp_qemu_start(const MpQemuConfig *cfg, GError **error)
{
    static const MpQemuConfig defaults = {0};
    const char *version;
    g_autoptr(MpQemu) q = NULL;
    QemuInstall in;
    gboolean ok;

    if (cfg == NULL)
        cfg = &defaults;
    version = cfg->version != NULL ? cfg->version : "7.2";
    if (!install_resolve(version, cfg->qemu10_prefix, cfg->binary, &in, error))
        return NULL;

    q = g_new0(MpQemu, 1);
    q->name = cfg->label != NULL
                  ? g_strdup_printf("qemu %s (%s)", version, cfg->label)
                  : g_strdup_printf("qemu %s", version);
    q->dir = g_dir_make_tmp("mp-qemu-XXXXXX", error);
    if (q->dir == NULL) {
        g_prefix_error(error, "%s: starting: private directory: ", q->name);
        install_clear(&in);
        return NULL;
    }
    q->qmp_path = g_build_filename(q->dir, "qmp.sock", NULL);
    q->console_path = g_build_filename(q->dir, "console.log", NULL);
    q->log_path = g_build_filename(q->dir, "qemu.log", NULL);

    ok = spawn(q, cfg, version, &in, error);
    install_clear(&in);
    if (!ok) {
        g_prefix_error(error, "%s: starting: ", q->name);
        return NULL;
    }
    if (!connect_qmp(q,
                     cfg->start_timeout_ms ? cfg->start_timeout_ms
                                           : MP_QEMU_START_TIMEOUT_MS,
                     error)) {
        g_prefix_error(error, "%s: starting: ", q->name);
        return NULL;
    }
    return g_steal_pointer(&q);
}

/* --- accessors --- */

MpQmpClient *
mp_qemu_qmp(MpQemu *q)
{
    return q->qmp;
}

const char *
mp_qemu_name(MpQemu *q)
{
    return q->name;
}

GPid
mp_qemu_pid(MpQemu *q)
{
    return q->pid;
}

const char *
mp_qemu_dir(MpQemu *q)
{
    return q->dir;
}

const char *
mp_qemu_console_path(MpQemu *q)
{
    return q->console_path;
}

/* --- QMP helpers --- */

/* Sets *error to "<name>: <what>: QEMU exited ..." if QEMU is gone. */
static gboolean
check_alive(MpQemu *q, const char *what, GError **error)
{
    g_autofree char *why = NULL;

    if (!mp_qemu_exited(q, NULL))
        return TRUE;
    why = describe_exit(q);
    g_set_error(error, MP_QEMU_ERROR, MP_QEMU_ERROR_EXITED, "%s: %s: %s",
                q->name, what, why);
    return FALSE;
}

/* mp_qmp_execute(); if QEMU died, the error says how.  Errors are not
 * prefixed with the QEMU's name: callers add it with their context.
 */
static json_object *
execute_raw(MpQemu *q, const char *command, json_object *args, GError **error)
{
    g_autoptr(GError) err = NULL;
    json_object *ret;

    if (q->qmp == NULL) {
        g_set_error(error, MP_QEMU_ERROR, MP_QEMU_ERROR_START,
                    "qmp: %s: no QMP connection", command);
        return NULL;
    }
    ret = mp_qmp_execute(q->qmp, command, args, &err);
    if (ret != NULL)
        return ret;
    if (g_error_matches(err, MP_QMP_ERROR, MP_QMP_ERROR_CLOSED)
        || g_error_matches(err, MP_QMP_ERROR, MP_QMP_ERROR_IO)) {
        /* Give a dying QEMU a moment to be reapable: its exit status and
         * stderr say more than "connection closed".
         */
        for (int i = 0; i < 50 && !mp_qemu_exited(q, NULL); i++)
            g_usleep(10 * 1000);
        if (mp_qemu_exited(q, NULL)) {
            g_autofree char *why = describe_exit(q);

            g_set_error(error, MP_QEMU_ERROR, MP_QEMU_ERROR_EXITED,
                        "%s (QEMU %s)", err->message, why);
            return NULL;
        }
    }
    g_propagate_error(error, g_steal_pointer(&err));
    return NULL;
}

json_object *
mp_qemu_execute(MpQemu *q, const char *command, json_object *args,
                GError **error)
{
    json_object *ret = execute_raw(q, command, args, error);

    if (ret == NULL)
        g_prefix_error(error, "%s: ", q->name);
    return ret;
}

static gboolean
execute_void(MpQemu *q, const char *command, json_object *args, GError **error)
{
    json_object *ret = mp_qemu_execute(q, command, args, error);

    json_object_put(ret);
    return ret != NULL;
}

gboolean
mp_qemu_set_capability(MpQemu *q, const char *capability, gboolean on,
                       GError **error)
{
    json_object *args = json_object_new_object();
    json_object *caps = json_object_new_array();
    json_object *cap = json_object_new_object();
    gboolean ok;

    json_object_object_add(cap, "capability",
                           json_object_new_string(capability));
    json_object_object_add(cap, "state", json_object_new_boolean(on));
    json_object_array_add(caps, cap);
    json_object_object_add(args, "capabilities", caps);
    ok = execute_void(q, "migrate-set-capabilities", args, error);
    json_object_put(args);
    return ok;
}

/* migrate-set-parameters {name: value}; takes `value`. */
static gboolean
set_parameter(MpQemu *q, const char *name, json_object *value, GError **error)
{
    json_object *args = json_object_new_object();
    gboolean ok;

    json_object_object_add(args, name, value);
    ok = execute_void(q, "migrate-set-parameters", args, error);
    json_object_put(args);
    return ok;
}

gboolean
mp_qemu_set_parameter_int(MpQemu *q, const char *name, gint64 value,
                          GError **error)
{
    return set_parameter(q, name, json_object_new_int64(value), error);
}

gboolean
mp_qemu_set_parameter_str(MpQemu *q, const char *name, const char *value,
                          GError **error)
{
    return set_parameter(q, name, json_object_new_string(value), error);
}

gboolean
mp_qemu_migrate(MpQemu *q, const char *uri, GError **error)
{
    json_object *args = json_object_new_object();
    gboolean ok;

    json_object_object_add(args, "uri", json_object_new_string(uri));
    ok = execute_void(q, "migrate", args, error);
    json_object_put(args);
    return ok;
}

/* --- waiting --- */

gboolean
mp_qemu_wait_console(MpQemu *q, const char *substring, guint timeout_ms,
                     GError **error)
{
    gint64 deadline = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
    g_autoptr(GString) text = g_string_new(NULL);
    gsize sublen = strlen(substring);
    int fd = g_open(q->console_path, O_RDONLY | O_CLOEXEC, 0);
    gboolean found = FALSE;

    if (fd < 0) {
        g_set_error(error, MP_QEMU_ERROR, MP_QEMU_ERROR_IO,
                    "%s: waiting for \"%s\" on the console: opening %s: %s",
                    q->name, substring, q->console_path, g_strerror(errno));
        return FALSE;
    }
    for (;;) {
        gsize scanned = text->len;
        char buf[65536];
        ssize_t n;

        while ((n = read(fd, buf, sizeof(buf))) > 0)
            g_string_append_len(text, buf, n);
        /* Search only what is new, plus the tail a match may span. */
        if (text->len >= sublen) {
            gsize from = scanned >= sublen ? scanned - sublen + 1 : 0;

            if (g_strstr_len(text->str + from, text->len - from, substring)) {
                found = TRUE;
                break;
            }
        }
        if (!check_alive(q, "waiting for the console", error))
            break;
        if (g_get_monotonic_time() >= deadline) {
            g_set_error(error, MP_QEMU_ERROR, MP_QEMU_ERROR_TIMEOUT,
                        "%s: \"%s\" not on the console after %u ms "
                        "(%" G_GSIZE_FORMAT " bytes of output in %s)",
                        q->name, substring, timeout_ms, text->len,
                        q->console_path);
            break;
        }
        g_usleep(MP_QEMU_POLL_US);
    }
    close(fd);
    return found;
}

gboolean
mp_qemu_wait_migration(MpQemu *q, guint timeout_ms, json_object **final_info,
                       GError **error)
{
    gint64 deadline = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
    g_autofree char *last = g_strdup("none");

    if (final_info != NULL)
        *final_info = NULL;
    for (;;) {
        GError *err = NULL;
        json_object *info = execute_raw(q, "query-migrate", NULL, &err);
        const char *status = NULL;

        if (info == NULL) {
            g_propagate_prefixed_error(error, err,
                                       "%s: waiting for migration: ", q->name);
            return FALSE;
        }
        status = mp_json_string(info, "status");
        /* QEMU (7.2 at least) says completed on the source a moment
         * before it sets total-time and downtime: read 0 for both, poll
         * again (a destination has no total-time) */
        if (g_strcmp0(status, "completed") == 0
            && mp_json_int_or(info, "total-time", -1) == 0
            && g_get_monotonic_time() < deadline) {
            json_object_put(info);
            g_usleep(MP_QEMU_POLL_US);
            continue;
        }
        if (g_strcmp0(status, "completed") == 0
            || g_strcmp0(status, "failed") == 0
            || g_strcmp0(status, "cancelled") == 0) {
            gboolean ok = g_strcmp0(status, "completed") == 0;

            if (!ok) {
                const char *desc = mp_json_string(info, "error-desc");

                g_set_error(error, MP_QEMU_ERROR, MP_QEMU_ERROR_MIGRATION,
                            "%s: migration %s: %s", q->name, status,
                            desc != NULL ? desc : "(no error-desc)");
            }
            if (final_info != NULL)
                *final_info = info;
            else
                json_object_put(info);
            return ok;
        }
        if (status != NULL && g_strcmp0(status, last) != 0) {
            g_free(last);
            last = g_strdup(status);
        }
        json_object_put(info);
        if (g_get_monotonic_time() >= deadline) {
            g_set_error(error, MP_QEMU_ERROR, MP_QEMU_ERROR_TIMEOUT,
                        "%s: migration not finished after %u ms "
                        "(status %s)",
                        q->name, timeout_ms, last);
            return FALSE;
        }
        g_usleep(MP_QEMU_MIGRATE_POLL_US);
    }
}

/* --- memory --- */

gboolean
mp_qemu_pmemsave(MpQemu *q, guint64 addr, guint64 size, const char *path,
                 GError **error)
{
    g_autofree char *abs = g_canonicalize_filename(path, NULL);
    json_object *args = json_object_new_object();
    json_object *ret;
    GStatBuf st;

    json_object_object_add(args, "val", json_object_new_int64(addr));
    json_object_object_add(args, "size", json_object_new_int64(size));
    json_object_object_add(args, "filename", json_object_new_string(abs));
    ret = execute_raw(q, "pmemsave", args, error);
    json_object_put(args);
    if (ret == NULL) {
        g_prefix_error(error,
                       "%s: pmemsave 0x%" G_GINT64_MODIFIER
                       "x+0x%" G_GINT64_MODIFIER "x to %s: ",
                       q->name, addr, size, abs);
        return FALSE;
    }
    json_object_put(ret);
    if (g_stat(abs, &st) != 0) {
        g_set_error(error, MP_QEMU_ERROR, MP_QEMU_ERROR_IO,
                    "%s: pmemsave to %s: %s", q->name, abs, g_strerror(errno));
        return FALSE;
    }
    if ((guint64)st.st_size != size) {
        g_set_error(error, MP_QEMU_ERROR, MP_QEMU_ERROR_IO,
                    "%s: pmemsave to %s: %" G_GUINT64_FORMAT
                    " bytes written, 0x%" G_GINT64_MODIFIER "x asked",
                    q->name, abs, (guint64)st.st_size, size);
        return FALSE;
    }
    return TRUE;
}

/* --- network --- */

guint16
mp_qemu_pick_free_port(GError **error)
{
    g_autoptr(GSocket) sock = NULL;
    g_autoptr(GSocketAddress) any = NULL;
    g_autoptr(GSocketAddress) bound = NULL;
    guint16 port;

    sock = g_socket_new(G_SOCKET_FAMILY_IPV4, G_SOCKET_TYPE_STREAM,
                        G_SOCKET_PROTOCOL_TCP, error);
    if (sock == NULL)
        goto error;
    any = g_inet_socket_address_new_from_string("127.0.0.1", 0);
    if (!g_socket_bind(sock, any, FALSE, error))
        goto error;
    bound = g_socket_get_local_address(sock, error);
    if (bound == NULL)
        goto error;
    port = g_inet_socket_address_get_port(G_INET_SOCKET_ADDRESS(bound));
    g_socket_close(sock, NULL);
    return port;

error:
    g_prefix_error(error, "picking a free TCP port on 127.0.0.1: ");
    return 0;
}
