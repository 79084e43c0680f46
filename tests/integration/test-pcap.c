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
 *   kernel_drops_72           QEMU 7.2 -> 7.2 captured by a tcpdump whose
 *       reader stops for a while mid-migration, so that the kernel drops
 *       packets: analyze reports the gaps, resumes after each, and counts
 *       at most QEMU's pages and most of them.
 *   kernel_drops_multifd_100  the same, 10.0 with two multifd channels.
 *   tshark_postcopy_100       QEMU 10.0 -> 10.0 with post-copy, captured
 *       by tshark (pcapng, dumpcap's format): the same counts as a
 *       tcpdump capture gives.
 *
 * tcpdump or tshark missing is a failure (scripts/setup.sh installs them),
 * as QEMU's.
 */
#include "config.h"
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>
#include <glib/gstdio.h>
#include <criterion/criterion.h>
#include "itest-util.h"
#include "relay-itest.h"

#define MIGRATE_TIMEOUT_MS (180 * 1000)

static struct {
    MpQemu *src, *dst;
    ItRelay *relay;
    GPid tcpdump; /* or tshark */
    char *capture; /* the file it writes */
    char *dir;
} fx;

static void
tcpdump_stop(void)
{
    if (fx.capture)
        it_tcpdump_stop(&fx.tcpdump, fx.capture); /* SIGINT stops tshark too */
    g_clear_pointer(&fx.capture, g_free);
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
        tu_remove_tree(fx.dir);
    g_clear_pointer(&fx.dir, g_free);
}

TestSuite(pcap, .init = fx_init, .fini = fx_fini, .timeout = 400);

/* tcpdump -i lo writing `file` for packets matching `filter`; returns once
 * it listens. */
static void
tcpdump_start(const char *file, const char *filter)
{
    g_autofree char *log = g_build_filename(fx.dir, "tcpdump.log", NULL);
    fx.capture = g_strdup(file);
    fx.tcpdump = it_tcpdump_start(file, filter, log);
}

/* tshark -i lo writing `file` (pcapng, through dumpcap) for packets
 * matching `filter`; returns once it captures. */
static void
tshark_start(const char *file, const char *filter)
{
    g_autofree char *log = g_build_filename(fx.dir, "tshark.log", NULL);
    g_autofree char *bin = g_find_program_in_path("tshark");
    cr_assert(bin, "tshark is not installed (scripts/setup.sh installs it)");
    /* -B 64: a 64 MiB kernel buffer, so that a busy machine does not drop */
    g_autofree char *cmd = g_strdup_printf(
        "exec '%s' -i lo -B 64 -q -f '%s' -w '%s' 2>'%s'", bin, filter, file,
        log);
    fx.capture = g_strdup(file);
    fx.tcpdump = it_spawn_until(cmd, log, "Capture started", 30);
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

/* A post-copy migration `qemu` -> `qemu` (direct), captured by tcpdump
 * (pcap) or by tshark (pcapng): the return path's page requests, matched
 * with the pages that answer them on the main channel, from the capture,
 * and the counts of a clean capture. */
static void
postcopy_captured(const char *qemu, const char *machine, gboolean tshark)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *file =
        g_build_filename(fx.dir, tshark ? "x.pcapng" : "x.pcap", NULL);

    fx.src = it_start_workload(qemu, machine, 128,
                               "mem=64M rate=5000 verify=1", NULL);
    fx.dst = it_start_destination(qemu, machine, TRUE, NULL);
    guint16 dport = mp_qemu_pick_free_port(&err);
    cr_assert(dport, "%s", err ? err->message : "?");
    it_cap(fx.src, "postcopy-ram");
    it_cap(fx.dst, "postcopy-ram");
    g_autofree char *filter = g_strdup_printf("tcp port %u", dport);
    if (tshark)
        tshark_start(file, filter);
    else
        tcpdump_start(file, filter);
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
    if (tshark) {
        g_autofree char *path = g_build_filename(fx.dir, "tshark.log", NULL);
        g_autofree char *log = NULL;
        g_file_get_contents(path, &log, NULL, NULL);
        /* tshark says "N packets dropped" only when it dropped some */
        cr_assert(log && strstr(log, "packets captured")
                      && !strstr(log, "dropped"),
                  "tshark's capture is not whole:\n%s", log ? log : "");
        guint8 magic[4] = {0};
        FILE *f = fopen(file, "rb");
        cr_assert_not_null(f);
        cr_assert_eq(fread(magic, 1, 4, f), 4);
        fclose(f);
        cr_assert(memcmp(magic, "\x0a\x0d\x0d\x0a", 4) == 0,
                  "tshark did not write pcapng");
    } else {
        assert_no_drops();
    }

    json_object *doc = it_analyze(file, NULL);
    cr_assert_str_eq(json_object_get_string(it_jget(doc, "format")), "pcap");
    cr_assert_eq(json_object_array_length(it_jget(doc, "pcap.sessions")), 1,
                 "%s", json_object_to_json_string(it_jget(doc, "pcap")));
    cr_assert_eq(it_jint(doc, "pcap.gaps"), 0);
    check_session(doc, src, TRUE);
    gint64 requests = it_jint(doc, "postcopy.requests");
    g_printerr("%s postcopy: requests %" G_GINT64_FORMAT
               " (query-migrate %" G_GINT64_FORMAT "), latency p50 %s us\n",
               tshark ? "pcapng" : "pcap", requests,
               it_jint(src, "ram.postcopy-requests"),
               json_object_to_json_string(
                   it_jget(doc, "postcopy.latency_us.p50")));
    cr_assert_gt(requests, 0);
    cr_assert_eq(requests, it_jint(src, "ram.postcopy-requests"));
    cr_assert_leq(it_jint(doc, "postcopy.latency_us.count"), requests);
    json_object_put(doc);
    json_object_put(src);
}

Test(pcap, postcopy_72)
{
    postcopy_captured("7.2", NULL, FALSE);
}

/* tshark writes pcapng (through dumpcap): the same counts. */
Test(pcap, tshark_postcopy_100)
{
    postcopy_captured("10.0", "pc-q35-10.0", TRUE);
}

/* ---- a capture with packets dropped by the kernel ---- */

/* tcpdump writing the capture to a pipe that a thread copies to a file;
 * while the thread stops reading, tcpdump blocks on the full pipe and the
 * kernel's capture buffer (-B 8192: 8 MiB, 125 ms of the migration at
 * 64 MiB/s) overflows: it drops packets, and tcpdump counts them when it
 * stops.  (With 64 KiB it drops all along: loopback packets are 64 KiB;
 * with 2 MiB too, though less, on a loaded machine.) */
typedef struct {
    GPid pid;
    int fd;
    FILE *out;
    GThread *thread;
    GMutex lock;
    gint64 pause_until; /* monotonic µs; under lock */
    glong written;      /* bytes copied; under lock */
} SlowDump;

static gpointer
slow_dump_copy(gpointer data)
{
    SlowDump *d = data;
    static guint8 buf[1 << 16];

    for (;;) {
        g_mutex_lock(&d->lock);
        gint64 wait = d->pause_until - g_get_monotonic_time();
        g_mutex_unlock(&d->lock);
        if (wait > 0) {
            g_usleep(MIN(wait, 10000));
            continue;
        }
        ssize_t n = read(d->fd, buf, sizeof(buf));
        /* (no assertion off the test's thread: a short file fails the
         * analysis instead) */
        if (n <= 0 || fwrite(buf, 1, n, d->out) != (size_t)n)
            break;
        g_mutex_lock(&d->lock);
        d->written += n;
        g_mutex_unlock(&d->lock);
    }
    fclose(d->out);
    return NULL;
}

static void
slow_dump_start(SlowDump *d, const char *file, const char *filter,
                const char *log)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *bin = g_find_program_in_path("tcpdump");
    if (!bin)
        bin = g_strdup("/usr/sbin/tcpdump");
    g_autofree char *cmd = g_strdup_printf(
        "exec '%s' -i lo -s 0 -B 8192 -U -n -Z root -w - '%s' 2>'%s'", bin,
        filter, log);
    const char *argv[] = {"/bin/sh", "-c", cmd, NULL};

    memset(d, 0, sizeof(*d));
    g_mutex_init(&d->lock);
    d->out = fopen(file, "wb");
    cr_assert_not_null(d->out);
    cr_assert(g_spawn_async_with_pipes(NULL, (char **)argv, NULL,
                                       G_SPAWN_DO_NOT_REAP_CHILD, NULL, NULL,
                                       &d->pid, NULL, &d->fd, NULL, &err),
              "%s", err ? err->message : "?");
    d->thread = g_thread_new("slow-dump", slow_dump_copy, d);
    fx.tcpdump = d->pid; /* stopped by the fixture if the test fails */
    fx.capture = g_strdup(file);
    gint64 deadline = g_get_monotonic_time() + 15 * G_USEC_PER_SEC;
    for (;;) {
        g_autofree char *text = NULL;
        g_file_get_contents(log, &text, NULL, NULL);
        if (text && strstr(text, "listening on"))
            return;
        cr_assert(g_get_monotonic_time() < deadline,
                  "tcpdump does not listen: %s", text ? text : "");
        g_usleep(50000);
    }
}

static void
slow_dump_pause(SlowDump *d, guint ms)
{
    g_mutex_lock(&d->lock);
    d->pause_until = g_get_monotonic_time() + ms * 1000;
    g_mutex_unlock(&d->lock);
}

/* Stops tcpdump (it writes its counts to its log), waits for the copy. */
static void
slow_dump_stop(SlowDump *d)
{
    int status;
    if (!d->pid)
        return;
    /* the last packets through the pipe: tcpdump may still be catching up
     * with its buffer, and what it has not read at SIGINT is lost (the
     * connections' FINs with it) */
    glong last = -1;
    for (int i = 0; i < 60; i++) {
        g_usleep(500000);
        g_mutex_lock(&d->lock);
        glong size = d->written;
        g_mutex_unlock(&d->lock);
        if (size == last)
            break;
        last = size;
    }
    kill(d->pid, SIGINT);
    for (int i = 0; i < 100 && waitpid(d->pid, &status, WNOHANG) == 0; i++)
        g_usleep(50000);
    if (waitpid(d->pid, &status, WNOHANG) == 0) {
        kill(d->pid, SIGKILL);
        waitpid(d->pid, &status, 0);
    }
    g_spawn_close_pid(d->pid);
    d->pid = fx.tcpdump = 0;
    g_clear_pointer(&fx.capture, g_free);
    g_thread_join(d->thread);
    close(d->fd);
    g_mutex_clear(&d->lock);
}

static gint64
transferred(MpQemu *q)
{
    g_autoptr(GError) err = NULL;
    json_object *ret = mp_qemu_execute(q, "query-migrate", NULL, &err);
    cr_assert_not_null(ret, "%s", err ? err->message : "?");
    json_object *v = it_jget(ret, "ram.transferred");
    gint64 n = v ? json_object_get_int64(v) : 0;
    json_object_put(ret);
    return n;
}

/* One migration captured with a pause of `pause_ms` once 16 MiB went:
 * @return the number of packets the kernel dropped (-1: not told). */
static gint64
migrate_with_drops(const char *pcap, guint pause_ms, gboolean multifd,
                   json_object **src)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *log = g_build_filename(fx.dir, "tcpdump.log", NULL);
    const char *ver = multifd ? "10.0" : "7.2";
    const char *machine = multifd ? "pc-q35-10.0" : NULL;
    SlowDump d;

    fx.src = it_start_workload(ver, machine, 128, "mem=64M rate=4000", NULL);
    fx.dst = it_start_destination(ver, machine, FALSE, NULL);
    guint16 dport = mp_qemu_pick_free_port(&err);
    cr_assert(dport, "%s", err ? err->message : "?");
    if (multifd) {
        it_cap(fx.src, "multifd");
        it_cap(fx.dst, "multifd");
        it_set_int(fx.src, "multifd-channels", 2);
        it_set_int(fx.dst, "multifd-channels", 2);
    }
    g_autofree char *filter = g_strdup_printf("tcp port %u", dport);
    slow_dump_start(&d, pcap, filter, log);
    it_incoming(fx.dst, dport);
    /* 64 MiB/s: a pause of 300 ms misses about 11 MB of ~100 */
    it_set_int(fx.src, "max-bandwidth", 64 << 20);
    it_set_int(fx.src, "downtime-limit", 20);
    it_migrate(fx.src, dport, FALSE);
    gint64 deadline = g_get_monotonic_time() + 60 * G_USEC_PER_SEC;
    while (transferred(fx.src) < (16 << 20)) {
        cr_assert(g_get_monotonic_time() < deadline,
                  "the migration does not start");
        g_usleep(20000);
    }
    slow_dump_pause(&d, pause_ms);
    *src = it_wait_final(fx.src, MIGRATE_TIMEOUT_MS);
    cr_assert_str_eq(json_object_get_string(it_jget(*src, "status")),
                     "completed");
    json_object_put(it_wait_final(fx.dst, MIGRATE_TIMEOUT_MS));
    slow_dump_stop(&d);
    g_clear_pointer(&fx.src, mp_qemu_free);
    g_clear_pointer(&fx.dst, mp_qemu_free);

    g_autofree char *text = NULL;
    g_file_get_contents(log, &text, NULL, NULL);
    const char *at = text ? strstr(text, " packets dropped by kernel") : NULL;
    if (!at)
        return -1;
    while (at > text && g_ascii_isdigit(at[-1]))
        at--;
    g_printerr("tcpdump (pause %u ms): %" G_GINT64_FORMAT
               " packets dropped by kernel\n",
               pause_ms, g_ascii_strtoll(at, NULL, 10));
    return g_ascii_strtoll(at, NULL, 10);
}

/* `migproxy analyze --json` of a capture with drops: exit 0 when every
 * gap was resumed after, 1 when one was not (a gap with nothing the
 * parser trusts after it, e.g. in a multifd migration's sparse main
 * channel); the document follows the schema either way.  *status: the
 * exit status. */
static json_object *
analyze_with_gaps(const char *pcap, int *status)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *out = NULL, *errout = NULL;
    int ws = 0;
    const char *argv[] = {it_migproxy(), "analyze", "--json", "-q", pcap,
                          NULL};

    cr_assert(g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_DEFAULT, NULL,
                           NULL, &out, &errout, &ws, &err),
              "running migproxy: %s", err ? err->message : "?");
    cr_assert(WIFEXITED(ws) && WEXITSTATUS(ws) <= 1,
              "migproxy analyze %s: status %d:\n%s", pcap, ws, errout);
    *status = WEXITSTATUS(ws);
    json_object *doc = json_tokener_parse(out);
    cr_assert_not_null(doc, "migproxy analyze printed no JSON:\n%s", out);
    g_autofree char *tmp = g_build_filename(fx.dir, "drops.json", NULL);
    cr_assert(g_file_set_contents(tmp, out, -1, NULL));
    it_validate_json("analyze", tmp, FALSE);
    return doc;
}

static void
check_drops(gboolean multifd)
{
    g_autofree char *pcap = g_build_filename(fx.dir, "x.pcap", NULL);
    json_object *src = NULL;
    gint64 dropped = migrate_with_drops(pcap, 300, multifd, &src);

    cr_assert_geq(dropped, 0, "tcpdump did not say what it dropped");
    if (dropped == 0) {
        /* (a machine fast enough to drain 64 KiB in time: once more, with
         * a longer stop) */
        json_object_put(src);
        dropped = migrate_with_drops(pcap, 1000, multifd, &src);
        cr_assert_geq(dropped, 0, "tcpdump did not say what it dropped");
    }
    if (dropped == 0) {
        json_object_put(src);
        cr_skip_test("the kernel dropped no packet although tcpdump's reader "
                "stopped for 300 and then 1000 ms mid-migration (a capture "
                "buffer of 8 MiB): nothing to resume after");
    }

    int status;
    json_object *doc = analyze_with_gaps(pcap, &status);
    gint64 gaps = it_jint(doc, "pcap.gaps");
    gint64 normal = it_jint(doc, "ram.pages.normal"),
           zero = it_jint(doc, "ram.pages.zero");
    gint64 q_normal = it_jint(src, "ram.normal"),
           q_zero = it_jint(src, "ram.duplicate");
    g_printerr("pcap with drops: %" G_GINT64_FORMAT " gaps (%" G_GINT64_FORMAT
               " bytes), %" G_GINT64_FORMAT " resyncs skipping %" G_GINT64_FORMAT
               " bytes; pages normal %" G_GINT64_FORMAT " zero %" G_GINT64_FORMAT
               " (query-migrate %" G_GINT64_FORMAT " %" G_GINT64_FORMAT ")\n",
               gaps, it_jint(doc, "pcap.gap_bytes"), it_jint(doc, "ram.resyncs"),
               it_jint(doc, "ram.resync_skipped_bytes"), normal, zero,
               q_normal, q_zero);
    cr_assert_gt(gaps, 0, "the kernel dropped %" G_GINT64_FORMAT
                 " packets but the capture has no gap",
                 dropped);
    /* every error is a gap not resumed after, and says so; each gap
     * resumed after resumes past its end */
    json_object *errors = it_jget(doc, "errors");
    size_t n_errors = json_object_array_length(errors);
    for (size_t i = 0; i < n_errors; i++) {
        const char *e =
            json_object_get_string(json_object_array_get_idx(errors, i));
        cr_assert(strstr(e, "missing from the capture"), "error %zu: %s", i,
                  e);
    }
    cr_assert_eq(status != 0, n_errors > 0, "exit %d, %zu errors", status,
                 n_errors);
    json_object *list = it_jget(doc, "pcap.gap_list");
    guint unresumed = 0;
    for (size_t i = 0; i < json_object_array_length(list); i++) {
        json_object *g = json_object_array_get_idx(list, i);
        if (!it_jget(g, "resumed_offset")) {
            unresumed++;
            continue;
        }
        cr_assert_geq(it_jint(g, "resumed_offset"),
                      it_jint(g, "offset") + it_jint(g, "bytes"));
    }
    cr_assert_leq(n_errors, unresumed, "%zu errors, %u gaps not resumed",
                  n_errors, unresumed);
    g_printerr("pcap with drops: exit %d, %u gaps not resumed after\n",
               status, unresumed);
    cr_assert(json_object_get_boolean(it_jget(doc, "ram.after_gap")));
    cr_assert_geq(it_jint(doc, "ram.resyncs"), 1);
    /* what the capture held, no more than QEMU sent, most of it */
    cr_assert_leq(normal, q_normal);
    cr_assert_leq(zero, q_zero);
    cr_assert_geq(normal + zero, (q_normal + q_zero) / 2,
                  "%" G_GINT64_FORMAT " of %" G_GINT64_FORMAT " pages",
                  normal + zero, q_normal + q_zero);
    /* completed, unless the kernel dropped a channel's FIN too (the
     * capture cannot tell how that connection ended), or a gap in the
     * main channel took the records that say the source stopped (the
     * last rounds' pages and the device state) */
    const char *outcome = json_object_get_string(it_jget(doc, "outcome"));
    guint main_gaps = 0;
    for (size_t i = 0; i < json_object_array_length(list); i++) {
        json_object *g = json_object_array_get_idx(list, i);
        main_gaps += it_jint(g, "channel") == 0
                     && g_str_equal(json_object_get_string(it_jget(g, "dir")),
                                    "to-dst");
    }
    if (g_str_equal(outcome, "failed: ended before the source stopped")
        && main_gaps > 0) {
        g_printerr("pcap with drops: outcome \"%s\" after %u gaps in the "
                   "main channel\n",
                   outcome, main_gaps);
    } else if (!g_str_equal(outcome, "completed")) {
        json_object *chans = it_jget(doc, "channels");
        guint unclean = 0;
        for (size_t i = 0; i < json_object_array_length(chans); i++) {
            json_object *c = json_object_array_get_idx(chans, i);
            const char *e1 = json_object_get_string(it_jget(c, "to_dst.end"));
            const char *e2 = json_object_get_string(it_jget(c, "to_src.end"));
            unclean += !e1 || !g_str_equal(e1, "fin");
            unclean += !e2 || !g_str_equal(e2, "fin");
        }
        g_printerr("pcap with drops: outcome \"%s\", %u channel ends not "
                   "captured as FIN\n",
                   outcome, unclean);
        cr_assert_gt(unclean, 0, "outcome %s: %s", outcome,
                     json_object_to_json_string(chans));
    }
    if (multifd) {
        /* the multifd channels' packets: at most QEMU's pages, and the
         * parsers resumed on them too when a gap fell there */
        guint on_multifd = 0;
        for (size_t i = 0; i < json_object_array_length(list); i++)
            on_multifd += it_jint(json_object_array_get_idx(list, i),
                                  "channel") > 0;
        g_printerr("pcap with drops: %u gaps on multifd channels; multifd "
                   "pages normal %" G_GINT64_FORMAT " zero %" G_GINT64_FORMAT
                   "\n",
                   on_multifd, it_jint(doc, "multifd.normal_pages"),
                   it_jint(doc, "multifd.zero_pages"));
        cr_assert_eq(it_jint(doc, "multifd.channels"), 2);
    }
    json_object_put(doc);
    json_object_put(src);
}

Test(pcap, kernel_drops_72)
{
    check_drops(FALSE);
}

/* The same with QEMU 10.0 and two multifd channels: pages and zero pages
 * go in multifd packets, the main channel carries the sections. */
Test(pcap, kernel_drops_multifd_100)
{
    check_drops(TRUE);
}
