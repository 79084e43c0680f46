/* test-pcap.c: `migproxy analyze FILE.pcap` on captures of real
 * migrations, made by tcpdump on loopback while QEMU migrates.
 *
 *   precopy_72_through_relay  QEMU 7.2 -> migproxy relay --capture -> 7.2;
 *       tcpdump sees both legs: two sessions (one migration seen twice),
 *       whose page counts equal query-migrate's and the relay capture's.
 *   multifd_100               QEMU 10.0 -> 10.0 directly, multifd with 4
 *       channels: one session of 5 connections, pages and multifd bytes
 *       equal to query-migrate's.
 *   postcopy_72               QEMU 7.2 -> 7.2 with post-copy: the page
 *       requests on the return path equal query-migrate's, with latencies.
 *
 * tcpdump missing is a failure (scripts/setup.sh installs it), as QEMU's.
 */
#include "config.h"
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <glib/gstdio.h>
#include <criterion/criterion.h>
#include "itest-util.h"
#include "relay-itest.h"

#define MIGRATE_TIMEOUT_MS (180 * 1000)

static struct {
    MpQemu *src, *dst;
    ItRelay *relay;
    GPid tcpdump;
    char *dir;
} fx;

static void
tcpdump_stop(void)
{
    g_autofree char *file = g_build_filename(fx.dir, "x.pcap", NULL);
    it_tcpdump_stop(&fx.tcpdump, file);
}

static void
fx_init(void)
{
    fx.dir = it_tmpdir();
}

static void
fx_fini(void)
{
    tcpdump_stop();
    it_relay_free(fx.relay);
    fx.relay = NULL;
    g_clear_pointer(&fx.src, mp_qemu_free);
    g_clear_pointer(&fx.dst, mp_qemu_free);
    if (fx.dir)
        it_remove_tree(fx.dir);
    g_clear_pointer(&fx.dir, g_free);
}

TestSuite(pcap, .init = fx_init, .fini = fx_fini, .timeout = 400);

/* tcpdump -i lo writing `file` for packets matching `filter`; returns once
 * it listens. */
static void
tcpdump_start(const char *file, const char *filter)
{
    g_autofree char *log = g_build_filename(fx.dir, "tcpdump.log", NULL);
    fx.tcpdump = it_tcpdump_start(file, filter, log);
}

/* What tcpdump said when it stopped ("N packets dropped by kernel"). */
static char *
tcpdump_log(void)
{
    g_autofree char *log = g_build_filename(fx.dir, "tcpdump.log", NULL);
    char *text = NULL;
    g_file_get_contents(log, &text, NULL, NULL);
    return text ? text : g_strdup("");
}

/* A clean capture is what these cases check: one with drops is not the
 * analyzer's fault (it reports them as gaps; see docs/pcap.md). */
static void
assert_no_drops(void)
{
    g_autofree char *text = tcpdump_log();
    cr_assert(strstr(text, "\n0 packets dropped by kernel"),
              "tcpdump dropped packets; the capture is not whole:\n%s", text);
}

static json_object *
session(json_object *doc, guint n)
{
    if (n == 1)
        return doc;
    json_object *more = it_jget(doc, "more_sessions");
    cr_assert_not_null(more, "no session %u", n);
    cr_assert_geq(json_object_array_length(more), n - 1);
    return json_object_array_get_idx(more, n - 2);
}

/* What every session of a clean capture shows. */
static void
check_session(json_object *s, json_object *src, gboolean exact_pages)
{
    cr_assert_str_eq(json_object_get_string(it_jget(s, "outcome")),
                     "completed");
    cr_assert_eq(json_object_array_length(it_jget(s, "errors")), 0, "%s",
                 json_object_to_json_string(it_jget(s, "errors")));
    cr_assert_geq(json_object_array_length(it_jget(s, "rounds")), 1);
    cr_assert_gt(it_jnum(s, "downtime_ms"), 0);
    gint64 normal = it_jint(s, "ram.pages.normal"),
           zero = it_jint(s, "ram.pages.zero");
    g_printerr("pcap session %" G_GINT64_FORMAT ": normal %" G_GINT64_FORMAT
               " zero %" G_GINT64_FORMAT " (query-migrate %" G_GINT64_FORMAT
               " %" G_GINT64_FORMAT "), downtime %.1f ms (QEMU %" G_GINT64_FORMAT
               ")\n",
               it_jint(s, "session"), normal, zero,
               it_jint(src, "ram.normal"), it_jint(src, "ram.duplicate"),
               it_jnum(s, "downtime_ms"), it_jint(src, "downtime"));
    if (exact_pages) {
        cr_assert_eq(normal, it_jint(src, "ram.normal"));
        cr_assert_eq(zero, it_jint(src, "ram.duplicate"));
    } else {
        /* behind the relay's zero-page stage: the same pages, some sent
         * as zero pages */
        cr_assert_eq(normal + zero,
                     it_jint(src, "ram.normal") + it_jint(src, "ram.duplicate"));
    }
}

Test(pcap, precopy_72_through_relay)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *pcap = g_build_filename(fx.dir, "x.pcap", NULL);

    fx.src = it_start_workload("7.2", NULL, 128, "mem=64M rate=4000", NULL);
    fx.dst = it_start_destination("7.2", NULL, FALSE, NULL);
    guint16 dport = mp_qemu_pick_free_port(&err);
    cr_assert(dport, "%s", err ? err->message : "?");
    fx.relay = it_relay_start(fx.dir, dport, NULL);
    g_autofree char *filter = g_strdup_printf("tcp port %u or tcp port %u",
                                              fx.relay->port, dport);
    tcpdump_start(pcap, filter);
    it_incoming(fx.dst, dport);
    it_set_int(fx.src, "max-bandwidth", 256 << 20);
    it_set_int(fx.src, "downtime-limit", 20);
    it_migrate(fx.src, fx.relay->port, FALSE);
    json_object *src = it_wait_final(fx.src, MIGRATE_TIMEOUT_MS);
    cr_assert_str_eq(json_object_get_string(it_jget(src, "status")),
                     "completed");
    json_object_put(it_wait_final(fx.dst, MIGRATE_TIMEOUT_MS));
    cr_assert_eq(it_relay_wait(fx.relay, 30000), 0);
    tcpdump_stop();
    assert_no_drops();

    json_object *doc = it_analyze(pcap, NULL);
    cr_assert_str_eq(json_object_get_string(it_jget(doc, "format")), "pcap");
    cr_assert_eq(json_object_array_length(it_jget(doc, "pcap.sessions")), 2,
                 "%s", json_object_to_json_string(it_jget(doc, "pcap")));
    cr_assert_eq(it_jint(doc, "pcap.gaps"), 0);
    /* the source's leg first (its SYN comes first), then the relay's */
    g_autofree char *relay_at = g_strdup_printf(":%u", fx.relay->port);
    cr_assert(g_str_has_suffix(
        json_object_get_string(it_jget(
            json_object_array_get_idx(it_jget(doc, "pcap.sessions"), 0),
            "server")),
        relay_at));
    check_session(session(doc, 1), src, TRUE);
    check_session(session(doc, 2), src, FALSE);

    /* the relay's own capture of the source's leg counts the same */
    json_object *cap = it_analyze(fx.relay->capture, NULL);
    /* (not the device sections: without the vmdesc at the stream's end,
     * which a relay capture's reader finds, they are not sliced) */
    const char *keys[] = {"ram.pages.normal", "ram.pages.zero"};
    for (guint i = 0; i < G_N_ELEMENTS(keys); i++)
        cr_assert_eq(it_jint(doc, keys[i]), it_jint(cap, keys[i]),
                     "%s: pcap %" G_GINT64_FORMAT ", relay capture %"
                     G_GINT64_FORMAT,
                     keys[i], it_jint(doc, keys[i]), it_jint(cap, keys[i]));
    cr_assert_eq(json_object_array_length(it_jget(doc, "rounds")),
                 json_object_array_length(it_jget(cap, "rounds")));
    json_object_put(cap);
    json_object_put(doc);
    json_object_put(src);
}

Test(pcap, multifd_100)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *pcap = g_build_filename(fx.dir, "x.pcap", NULL);

    fx.src = it_start_workload("10.0", "pc-q35-10.0", 128, "mem=64M rate=3000",
                               NULL);
    fx.dst = it_start_destination("10.0", "pc-q35-10.0", FALSE, NULL);
    guint16 dport = mp_qemu_pick_free_port(&err);
    cr_assert(dport, "%s", err ? err->message : "?");
    it_cap(fx.src, "multifd");
    it_cap(fx.dst, "multifd");
    it_set_int(fx.src, "multifd-channels", 4);
    it_set_int(fx.dst, "multifd-channels", 4);
    g_autofree char *filter = g_strdup_printf("tcp port %u", dport);
    tcpdump_start(pcap, filter);
    it_incoming(fx.dst, dport);
    it_set_int(fx.src, "max-bandwidth", 256 << 20);
    it_set_int(fx.src, "downtime-limit", 20);
    it_migrate(fx.src, dport, FALSE);
    json_object *src = it_wait_final(fx.src, MIGRATE_TIMEOUT_MS);
    cr_assert_str_eq(json_object_get_string(it_jget(src, "status")),
                     "completed");
    json_object_put(it_wait_final(fx.dst, MIGRATE_TIMEOUT_MS));
    tcpdump_stop();
    assert_no_drops();

    json_object *doc = it_analyze(pcap, NULL);
    cr_assert_eq(json_object_array_length(it_jget(doc, "pcap.sessions")), 1,
                 "%s", json_object_to_json_string(it_jget(doc, "pcap")));
    cr_assert_eq(it_jint(doc, "pcap.gaps"), 0);
    check_session(doc, src, TRUE);
    cr_assert_eq(json_object_array_length(it_jget(doc, "channels")), 5);
    cr_assert_eq(it_jint(doc, "multifd.channels"), 4);
    cr_assert_eq(it_jint(doc, "multifd.bytes")
                     + it_jint(doc, "multifd.init_bytes"),
                 it_jint(src, "ram.multifd-bytes"));
    json_object_put(doc);
    json_object_put(src);
}

/* Post-copy (7.2, direct): the return path's page requests, matched with
 * the pages that answer them on the main channel, from the capture. */
Test(pcap, postcopy_72)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *pcap = g_build_filename(fx.dir, "x.pcap", NULL);

    fx.src =
        it_start_workload("7.2", NULL, 128, "mem=64M rate=5000 verify=1", NULL);
    fx.dst = it_start_destination("7.2", NULL, TRUE, NULL);
    guint16 dport = mp_qemu_pick_free_port(&err);
    cr_assert(dport, "%s", err ? err->message : "?");
    it_cap(fx.src, "postcopy-ram");
    it_cap(fx.dst, "postcopy-ram");
    g_autofree char *filter = g_strdup_printf("tcp port %u", dport);
    tcpdump_start(pcap, filter);
    it_incoming(fx.dst, dport);
    it_set_int(fx.src, "max-bandwidth", 32 << 20);
    it_set_int(fx.src, "max-postcopy-bandwidth", 16 << 20);
    it_migrate(fx.src, dport, FALSE);
    it_start_postcopy(fx.src, 500);
    json_object *src = it_wait_final(fx.src, MIGRATE_TIMEOUT_MS);
    cr_assert_str_eq(json_object_get_string(it_jget(src, "status")),
                     "completed");
    json_object_put(it_wait_final(fx.dst, MIGRATE_TIMEOUT_MS));
    tcpdump_stop();
    assert_no_drops();

    json_object *doc = it_analyze(pcap, NULL);
    cr_assert_eq(json_object_array_length(it_jget(doc, "pcap.sessions")), 1,
                 "%s", json_object_to_json_string(it_jget(doc, "pcap")));
    check_session(doc, src, TRUE);
    gint64 requests = it_jint(doc, "postcopy.requests");
    g_printerr("pcap postcopy: requests %" G_GINT64_FORMAT
               " (query-migrate %" G_GINT64_FORMAT "), latency p50 %s us\n",
               requests, it_jint(src, "ram.postcopy-requests"),
               json_object_to_json_string(
                   it_jget(doc, "postcopy.latency_us.p50")));
    cr_assert_gt(requests, 0);
    cr_assert_eq(requests, it_jint(src, "ram.postcopy-requests"));
    cr_assert_leq(it_jint(doc, "postcopy.latency_us.count"), requests);
    json_object_put(doc);
    json_object_put(src);
}
