/* test-plan.c: `migproxy plan` on the capture of a real migration.
 *
 *   input_errors      no QEMU: a missing file, one of no known format, a
 *       missing or bad --bandwidth, an unknown encoder: the exit statuses.
 *   multifd_relay_capture_100  the same with QEMU 10.0 and 4 multifd
 *       channels: the pages of every channel go through the encoders.
 *   relay_capture_72  QEMU 7.2 with the workload guest (a known dirty
 *       rate) -> migproxy relay --capture -> 7.2; then plan on the
 *       capture directory: at 1 Mbit/s the guest's 2000 pages/s (8 MB/s)
 *       obviously cannot converge, at 10 Gbit/s (QEMU's 128 MiB/s cap) it
 *       obviously does; both documents valid against
 *       docs/schema/plan.schema.json.
 *
 * Structure only: how long a migration takes is noise on a shared
 * machine; bench/bench-plan.py compares predicted and measured times.
 */
#include "config.h"
#include <sys/wait.h>
#include <glib/gstdio.h>
#include <criterion/criterion.h>
#include "itest-util.h"
#include "relay-itest.h"

#define MIGRATE_TIMEOUT_MS (180 * 1000)

static struct {
    MpQemu *src, *dst;
    ItRelay *relay;
    char *dir;
} fx;

static void
fx_init(void)
{
    fx.dir = it_tmpdir();
}

static void
fx_fini(void)
{
    it_relay_free(fx.relay);
    fx.relay = NULL;
    g_clear_pointer(&fx.src, mp_qemu_free);
    g_clear_pointer(&fx.dst, mp_qemu_free);
    if (fx.dir)
        tu_remove_tree(fx.dir);
    g_clear_pointer(&fx.dir, g_free);
}

TestSuite(plan, .init = fx_init, .fini = fx_fini, .timeout = 400);

/* Runs `migproxy plan CAPTURE --bandwidth RATE --json`; asserts it exits
 * 0 and prints a document valid against the schema.  @return it. */
static json_object *
run_plan(const char *capture, const char *rate)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *out = NULL, *errout = NULL;
    int status = 0;
    const char *argv[] = {it_migproxy(), "plan",   capture, "--bandwidth",
                          rate,          "--json", NULL};

    cr_assert(g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_DEFAULT, NULL,
                           NULL, &out, &errout, &status, &err),
              "running migproxy: %s", err ? err->message : "?");
    cr_assert(g_spawn_check_wait_status(status, NULL),
              "migproxy plan %s --bandwidth %s failed (status %d):\n%s",
              capture, rate, status, errout);
    g_autofree char *path = g_strdup_printf("%s/plan-%s.json", fx.dir, rate);
    cr_assert(g_file_set_contents(path, out, -1, &err), "%s",
              err ? err->message : "?");
    it_validate_json("plan", path, FALSE);
    json_object *doc = json_tokener_parse(out);
    cr_assert_not_null(doc);
    g_printerr("plan at %s: qemu converges %d rounds %d total %s, pair "
               "converges %d; guest %.0f pages/s, working set %.0f\n",
               rate, json_object_get_boolean(it_jget(doc, "qemu.converges")),
               json_object_get_int(it_jget(doc, "qemu.rounds")),
               json_object_to_json_string(it_jget(doc, "qemu.total_s")),
               json_object_get_boolean(it_jget(doc, "pair.converges")),
               it_jnum(doc, "guest.dirty_pages_per_s"),
               it_jnum(doc, "guest.working_set_pages"));
    return doc;
}

Test(plan, relay_capture_72)
{
    g_autoptr(GError) err = NULL;

    /* a 16 MiB working set rewritten at 2000 pages/s: at QEMU's rate
     * through the relay (here held to 16 MiB/s) some rounds, then it
     * converges */
    fx.src = it_start_workload("7.2", NULL, 128, "mem=16M rate=2000", NULL);
    fx.dst = it_start_destination("7.2", NULL, FALSE, NULL);
    guint16 dport = mp_qemu_pick_free_port(&err);
    cr_assert(dport, "%s", err ? err->message : "?");
    fx.relay = it_relay_start(fx.dir, dport, NULL);
    it_incoming(fx.dst, dport);
    it_set_int(fx.src, "max-bandwidth", 16 << 20);
    it_migrate(fx.src, fx.relay->port, FALSE);
    json_object *src = it_wait_final(fx.src, MIGRATE_TIMEOUT_MS);
    cr_assert_str_eq(json_object_get_string(it_jget(src, "status")),
                     "completed");
    json_object_put(src);
    it_relay_wait(fx.relay, 30000);

    json_object *slow = run_plan(fx.relay->capture, "1mbit");
    cr_assert_str_eq(json_object_get_string(it_jget(slow, "guest.timing")),
                     "captured");
    cr_assert_gt(it_jnum(slow, "guest.dirty_pages_per_s"), 0);
    /* 128 MiB of RAM, and the ROMs */
    cr_assert_geq(it_jint(slow, "guest.ram_pages"), 32768);
    cr_assert_gt(it_jint(slow, "codecs.bulk_pages"), 0);
    cr_assert_not(json_object_get_boolean(it_jget(slow, "qemu.converges")));
    cr_assert_null(it_jget(slow, "qemu.total_s"));
    cr_assert_not(json_object_get_boolean(it_jget(slow, "pair.converges")));
    /* the least rate lies between the two */
    double least = it_jnum(slow, "qemu.least_bandwidth_bps");
    cr_assert(least > 1e6 && least < 10e9, "least rate %g", least);

    json_object *fast = run_plan(fx.relay->capture, "10gbit");
    cr_assert(json_object_get_boolean(it_jget(fast, "qemu.converges")));
    cr_assert(json_object_get_boolean(it_jget(fast, "pair.converges")));
    cr_assert_gt(it_jnum(fast, "qemu.total_s"), 0);
    /* at 10 Gbit/s the link is not what holds QEMU back: its 128 MiB/s,
     * or the hosts as the capture showed them */
    cr_assert_str_neq(json_object_get_string(it_jget(fast, "qemu.limited_by")),
                      "link");
    json_object_put(slow);
    json_object_put(fast);
}

/* QEMU 10.0 with 4 multifd channels through the relay: the pages come on
 * the multifd channels (zero pages as MFD zero pages), rounds from the
 * flushes; plan reads them all. */
Test(plan, multifd_relay_capture_100)
{
    g_autoptr(GError) err = NULL;

    fx.src = it_start_workload("10.0", "pc-q35-10.0", 128, "mem=16M rate=2000",
                               NULL);
    fx.dst = it_start_destination("10.0", "pc-q35-10.0", FALSE, NULL);
    guint16 dport = mp_qemu_pick_free_port(&err);
    cr_assert(dport, "%s", err ? err->message : "?");
    it_cap(fx.src, "multifd");
    it_cap(fx.dst, "multifd");
    it_set_int(fx.src, "multifd-channels", 4);
    it_set_int(fx.dst, "multifd-channels", 4);
    fx.relay = it_relay_start(fx.dir, dport, NULL);
    it_incoming(fx.dst, dport);
    it_set_int(fx.src, "max-bandwidth", 16 << 20);
    it_migrate(fx.src, fx.relay->port, FALSE);
    json_object *src = it_wait_final(fx.src, MIGRATE_TIMEOUT_MS);
    cr_assert_str_eq(json_object_get_string(it_jget(src, "status")),
                     "completed");
    json_object_put(src);
    it_relay_wait(fx.relay, 30000);

    json_object *fast = run_plan(fx.relay->capture, "10gbit");
    cr_assert(json_object_get_boolean(it_jget(fast, "qemu.converges")));
    /* every page of guest RAM went through the encoders once */
    cr_assert_geq(it_jint(fast, "codecs.bulk_pages"), 32768);
    cr_assert_eq(it_jint(fast, "codecs.skipped_pages"), 0);
    cr_assert_gt(it_jnum(fast, "guest.pair_bulk_bytes_per_page"), 0);
    cr_assert_lt(it_jnum(fast, "guest.pair_bulk_bytes_per_page"),
                 it_jnum(fast, "guest.qemu_bulk_bytes_per_page"));
    json_object *slow = run_plan(fx.relay->capture, "1mbit");
    cr_assert_not(json_object_get_boolean(it_jget(slow, "qemu.converges")));
    json_object_put(fast);
    json_object_put(slow);
}

/* Runs migproxy plan with `args`; @return its exit status. */
static int
plan_status(const char *const *args)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) argv = g_ptr_array_new();
    g_autofree char *errout = NULL;
    int status = 0;

    g_ptr_array_add(argv, (char *)it_migproxy());
    g_ptr_array_add(argv, "plan");
    for (guint i = 0; args[i]; i++)
        g_ptr_array_add(argv, (char *)args[i]);
    g_ptr_array_add(argv, NULL);
    cr_assert(g_spawn_sync(NULL, (char **)argv->pdata, NULL,
                           G_SPAWN_STDOUT_TO_DEV_NULL, NULL, NULL, NULL,
                           &errout, &status, &err),
              "%s", err ? err->message : "?");
    cr_assert(WIFEXITED(status), "migproxy plan died: %s", errout);
    return WEXITSTATUS(status);
}

/* No QEMU: inputs with nothing to plan from get analyze's exit statuses
 * (the status was read from a freed document before: ASan caught it). */
Test(plan, input_errors)
{
    g_autofree char *junk = g_build_filename(fx.dir, "junk.bin", NULL);
    cr_assert(g_file_set_contents(junk, "not a stream at all", -1, NULL));
    const char *missing[] = {"/nonexistent/x.pcap", "-b", "1mbit", NULL};
    const char *unknown[] = {junk, "-b", "1mbit", NULL};
    const char *no_rate[] = {junk, NULL};
    const char *bad_rate[] = {junk, "-b", "fast", NULL};
    const char *bad_enc[] = {junk, "-b", "1mbit", "-e", "lz4", NULL};

    cr_assert_eq(plan_status(missing), 3);
    cr_assert_eq(plan_status(unknown), 4);
    cr_assert_eq(plan_status(no_rate), 2);
    cr_assert_eq(plan_status(bad_rate), 2);
    cr_assert_eq(plan_status(bad_enc), 2);
}
