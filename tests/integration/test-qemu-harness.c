/* test-qemu-harness.c: the QEMU harness (src/qemu/qemu-process.c, qmp-client.c)
 * against real QEMU 7.2 and 10.0 under TCG.
 *
 * Each migration case starts a source (128 MiB, no kernel: SeaBIOS runs
 * and idles) and a destination (-incoming tcp:127.0.0.1:PORT -S), migrates
 * over TCP, waits until both sides report "completed", pmemsaves
 *   [0, 0xa0000) and [0x100000, 128 MiB)
 * (RAM below the VGA window and above the BIOS area) on both and compares
 * them byte for byte.
 *
 * QEMU 10.0 comes from scripts/fetch-qemu10.sh; without it these tests
 * fail (never skip) and say so.  Every QEMU is freed in .fini, which
 * Criterion runs after a failed assertion too; PR_SET_PDEATHSIG kills
 * them if the test process dies outright.
 */
#include "config.h"

#include <string.h>

#include <glib.h>
#include <glib/gstdio.h>
#include <criterion/criterion.h>
#include <criterion/logging.h>

#include "qemu-process.h"

#define GUEST_MIB          128
#define LOW_RAM_END        0xa0000u
#define HIGH_RAM_START     0x100000u
#define MIGRATE_TIMEOUT_MS (180 * 1000)
#define PAGE               4096
/* SeaBIOS writes its log to port 0x402 when QEMU answers there; with no
 * disk it ends POST with this line, then idles in hlt for 60 s before it
 * reboots.
 */
#define SEABIOS_LOG_PORT 0x402
#define SEABIOS_IDLE     "No bootable device."
#define BOOT_TIMEOUT_MS  (60 * 1000)

/* What .fini must release, whatever the test reached. */
static struct {
    MpQemu *src;
    MpQemu *dst;
    char *dir;
} fx;

static void
remove_dir(const char *path)
{
    g_autoptr(GDir) dir = g_dir_open(path, 0, NULL);
    const char *name;

    while (dir != NULL && (name = g_dir_read_name(dir)) != NULL) {
        g_autofree char *child = g_build_filename(path, name, NULL);

        g_unlink(child);
    }
    g_rmdir(path);
}

static void
fx_init(void)
{
    GError *err = NULL;

    fx.dir = g_dir_make_tmp("mp-harness-XXXXXX", &err);
    cr_assert_not_null(fx.dir, "temp dir: %s", err ? err->message : "?");
}

static void
fx_fini(void)
{
    g_clear_pointer(&fx.src, mp_qemu_free);
    g_clear_pointer(&fx.dst, mp_qemu_free);
    if (fx.dir != NULL)
        remove_dir(fx.dir);
    g_clear_pointer(&fx.dir, g_free);
}

TestSuite(qemu_harness, .init = fx_init, .fini = fx_fini, .timeout = 300);

static void
require_qemu(const char *version)
{
    g_autoptr(GError) err = NULL;

    cr_assert(mp_qemu_available(version, NULL, &err), "%s", err->message);
}

static MpQemu *
start_or_fail(const MpQemuConfig *cfg)
{
    g_autoptr(GError) err = NULL;
    MpQemu *q = mp_qemu_start(cfg, &err);

    cr_assert_not_null(q, "%s", err ? err->message : "?");
    return q;
}

/* Compares two dumps page by page; fails naming the first difference.
 * @return the number of pages that are not all zero (the same on both).
 */
static guint
assert_same_file(const char *a, const char *b, guint64 base)
{
    static const char zero[PAGE];
    guint nonzero = 0;
    g_autofree char *da = NULL, *db = NULL;
    gsize la = 0, lb = 0;
    guint64 first = G_MAXUINT64;
    guint ndiff = 0;
    GError *err = NULL;

    cr_assert(g_file_get_contents(a, &da, &la, &err), "%s", err->message);
    cr_assert(g_file_get_contents(b, &db, &lb, &err), "%s", err->message);
    cr_assert_eq(la, lb, "%s: %zu bytes, %s: %zu bytes", a, la, b, lb);
    for (gsize off = 0; off < la; off += PAGE) {
        gsize n = MIN(PAGE, la - off);

        if (memcmp(da + off, db + off, n) != 0) {
            if (ndiff++ == 0)
                first = base + off;
        }
        if (memcmp(da + off, zero, n) != 0)
            nonzero++;
    }
    cr_assert_eq(ndiff, 0,
                 "%u pages differ between source and destination, "
                 "first at guest address 0x%" G_GINT64_MODIFIER "x",
                 ndiff, first);
    return nonzero;
}

static void
dump_range(MpQemu *q, const char *side, guint64 addr, guint64 size,
           char **path_out)
{
    g_autoptr(GError) err = NULL;
    char *path = g_strdup_printf("%s/%s-%" G_GINT64_MODIFIER "x.bin", fx.dir,
                                 side, addr);

    cr_assert(mp_qemu_pmemsave(q, addr, size, path, &err), "%s", err->message);
    *path_out = path;
}

static void
migrate_and_compare(const char *src_version, const char *dst_version,
                    const char *machine)
{
    static const struct {
        guint64 addr, size;
    } ranges[] = {
        {0, LOW_RAM_END},
        {HIGH_RAM_START, (guint64)GUEST_MIB * 1024 * 1024 - HIGH_RAM_START},
    };
    g_autoptr(GError) err = NULL;
    g_autofree char *uri = NULL;
    json_object *info = NULL;
    json_object *ram, *v;
    guint16 port;
    guint nonzero = 0;
    gint64 t0;

    require_qemu(src_version);
    require_qemu(dst_version);

    port = mp_qemu_pick_free_port(&err);
    cr_assert_neq(port, 0, "%s", err->message);
    uri = g_strdup_printf("tcp:127.0.0.1:%u", port);

    fx.dst = start_or_fail(&(MpQemuConfig){
        .version = dst_version,
        .label = "dst",
        .machine = machine,
        .memory_mib = GUEST_MIB,
        .paused = TRUE,
        .incoming = uri,
        .debugcon_iobase = SEABIOS_LOG_PORT,
    });
    fx.src = start_or_fail(&(MpQemuConfig){
        .version = src_version,
        .label = "src",
        .machine = machine,
        .memory_mib = GUEST_MIB,
        .debugcon_iobase = SEABIOS_LOG_PORT,
    });
    /* Migrate a guest that has done its POST, so the RAM compared below
     * holds what SeaBIOS wrote, not just zeroes.
     */
    cr_assert(mp_qemu_wait_console(fx.src, SEABIOS_IDLE, BOOT_TIMEOUT_MS, &err),
              "%s", err->message);

    t0 = g_get_monotonic_time();
    cr_assert(mp_qemu_migrate(fx.src, uri, &err), "%s", err->message);
    cr_assert(mp_qemu_wait_migration(fx.src, MIGRATE_TIMEOUT_MS, &info, &err),
              "%s", err->message);
    cr_assert(json_object_object_get_ex(info, "ram", &ram)
                  && json_object_object_get_ex(ram, "transferred", &v)
                  && json_object_get_int64(v) > 0,
              "%s: query-migrate has no ram.transferred: %s",
              mp_qemu_name(fx.src), json_object_to_json_string(info));
    cr_log_info("%s -> %s (%s): %" G_GINT64_FORMAT " bytes in %.2f s",
                src_version, dst_version, machine ? machine : "default",
                json_object_get_int64(v), (g_get_monotonic_time() - t0) / 1e6);
    json_object_put(info);
    cr_assert(mp_qemu_wait_migration(fx.dst, MIGRATE_TIMEOUT_MS, NULL, &err),
              "%s", err->message);

    for (gsize i = 0; i < G_N_ELEMENTS(ranges); i++) {
        g_autofree char *a = NULL, *b = NULL;

        dump_range(fx.src, "src", ranges[i].addr, ranges[i].size, &a);
        dump_range(fx.dst, "dst", ranges[i].addr, ranges[i].size, &b);
        nonzero += assert_same_file(a, b, ranges[i].addr);
        g_unlink(a);
        g_unlink(b);
    }
    /* SeaBIOS has filled the IVT, the BDA, its high-memory copy and the
     * ACPI tables by now: an all-zero guest would compare equal whatever
     * the migration did.
     */
    cr_assert_gt(nonzero, 16, "only %u non-zero pages: did the guest run?",
                 nonzero);
    cr_log_info("%u non-zero pages identical on both sides", nonzero);
}

Test(qemu_harness, migrate_7_2)
{
    migrate_and_compare("7.2", "7.2", NULL);
}

Test(qemu_harness, migrate_10_0)
{
    migrate_and_compare("10.0", "10.0", NULL);
}

Test(qemu_harness, migrate_7_2_to_10_0)
{
    migrate_and_compare("7.2", "10.0", "pc-q35-7.2");
}

/* QMP errors keep QEMU's class and description; events are queued. */
Test(qemu_harness, qmp_errors_and_events)
{
    g_autoptr(GError) err = NULL;
    json_object *ret, *ev;
    MpQmpClient *qmp;

    require_qemu("7.2");
    fx.src = start_or_fail(&(MpQemuConfig){.label = "src"});
    qmp = mp_qemu_qmp(fx.src);

    ret = mp_qmp_execute(qmp, "no-such-command", NULL, &err);
    cr_assert_null(ret);
    cr_assert(
        g_error_matches(err, MP_QMP_ERROR, MP_QMP_ERROR_COMMAND_NOT_FOUND),
        "%s", err->message);
    cr_assert(strstr(err->message, "qmp: no-such-command: CommandNotFound")
                  != NULL,
              "%s", err->message);
    g_clear_error(&err);

    /* A reply and an event arrive together: the event waits in line. */
    ret = mp_qmp_execute(qmp, "stop", NULL, &err);
    cr_assert_not_null(ret, "%s", err->message);
    json_object_put(ret);
    ev = mp_qmp_next_event(qmp, 5000, &err);
    cr_assert_not_null(ev, "no STOP event: %s", err ? err->message : "timeout");
    cr_assert_str_eq(
        json_object_get_string(json_object_object_get(ev, "event")), "STOP");
    json_object_put(ev);
    cr_assert_null(mp_qmp_next_event(qmp, 0, &err));
    cr_assert_null(err, "%s", err->message);
}

/* A QEMU that refuses its arguments is reported with its own words. */
Test(qemu_harness, start_failure_quotes_stderr)
{
    g_autoptr(GError) err = NULL;
    MpQemu *q;

    require_qemu("7.2");
    q = mp_qemu_start(
        &(MpQemuConfig){.label = "bad", .machine = "no-such-machine"}, &err);
    cr_assert_null(q);
    cr_assert(g_error_matches(err, MP_QEMU_ERROR, MP_QEMU_ERROR_EXITED), "%s",
              err->message);
    cr_assert(strstr(err->message, "qemu 7.2 (bad): starting: exited") != NULL
                  && strstr(err->message, "unsupported machine type") != NULL,
              "%s", err->message);
}

/* Without the private prefix the message tells how to get QEMU 10.0. */
Test(qemu_harness, missing_qemu10_says_how_to_fetch)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *nowhere = g_build_filename(fx.dir, "none", NULL);
    MpQemu *q;

    q = mp_qemu_start(
        &(MpQemuConfig){.version = "10.0", .qemu10_prefix = nowhere}, &err);
    cr_assert_null(q);
    cr_assert(g_error_matches(err, MP_QEMU_ERROR, MP_QEMU_ERROR_NOT_INSTALLED),
              "%s", err->message);
    cr_assert(strstr(err->message, "scripts/fetch-qemu10.sh") != NULL, "%s",
              err->message);
}
