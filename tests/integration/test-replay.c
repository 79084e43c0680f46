/* test-replay.c: `migproxy replay` of captures of real migrations into a
 * fresh destination QEMU, whose memory must then be the source's at the
 * end of the captured migration (the captured migration's own
 * destination, paused, holds it).
 *
 *   capture_72_into_72_and_100  7.2 -> relay --capture -> 7.2; the
 *       capture replayed into a new 7.2 and into 10.0 (same machine
 *       type): both accept it (unconfirmed: no return path), same RAM.
 *   multifd_100             10.0, 4 multifd channels and return-path,
 *       captured by the relay: replayed with all 5 channels, SHUT 0.
 *   postcopy_72, preempt_72, preempt_100: post-copy (with
 *       postcopy-preempt: its channel as QEMU expects it) captured by the
 *       relay, replayed into a running destination: SHUT 0, its guest
 *       verifies every page.
 *   pcap_100                10.0 with return-path, captured by tcpdump on
 *       lo: the pcap replayed, SHUT 0, same RAM.
 *   stream_file_rate        7.2 `migrate exec:cat > FILE` replayed at
 *       --rate 24M: the replay's own duration is at least bytes / rate,
 *       the destination's RAM the stream's image (analyze --dump-ram);
 *       the same file cut in half: exit 1, said so.
 *   preempt_open_until_verdict  no QEMU: a hand-made capture with a
 *       preempt channel into a fake destination: the channel stays open
 *       until its SHUT (QEMU 10.0 pauses post-copy when it ends early).
 *   preempt_closed_by_destination_then_shut  the same; the destination
 *       closes the preempt channel with bytes still queued, then SHUT 0:
 *       accepted.
 *   malformed               no QEMU: missing file (3), unknown content (4),
 *       a broken capture index (1), nobody listening (5), bad options (2).
 */
#include "config.h"
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <glib/gstdio.h>
#include <criterion/criterion.h>
#include "itest-util.h"
#include "relay-itest.h"

#define MIGRATE_TIMEOUT_MS (180 * 1000)
#define RAM_BYTES          (128ull << 20)

static struct {
    MpQemu *src, *dst, *dst2;
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
    g_clear_pointer(&fx.dst2, mp_qemu_free);
    if (fx.dir)
        tu_remove_tree(fx.dir);
    g_clear_pointer(&fx.dir, g_free);
}

TestSuite(replay, .init = fx_init, .fini = fx_fini, .timeout = 600);

/* Runs `migproxy replay ARGS...`; @return its exit status, *out its
 * stdout, *err its stderr (caller frees). */
static int
replay(const char *const *args, char **out, char **err)
{
    g_autoptr(GError) e = NULL;
    g_autoptr(GPtrArray) argv = g_ptr_array_new();
    int status;

    g_ptr_array_add(argv, (char *)it_migproxy());
    g_ptr_array_add(argv, "replay");
    for (guint i = 0; args[i]; i++)
        g_ptr_array_add(argv, (char *)args[i]);
    g_ptr_array_add(argv, NULL);
    cr_assert(g_spawn_sync(NULL, (char **)argv->pdata, NULL, 0, NULL, NULL, out,
                           err, &status, &e),
              "%s", e ? e->message : "?");
    cr_assert(WIFEXITED(status), "migproxy replay died: %s", *err);
    return WEXITSTATUS(status);
}

/* The last 4 KiB of what QEMU `q` wrote on its stderr (caller frees): a
 * failure message says what the destination said. */
static char *
qemu_log_tail(MpQemu *q)
{
    g_autofree char *path = g_build_filename(mp_qemu_dir(q), "qemu.log", NULL);
    g_autofree char *text = NULL;
    gsize len = 0;
    if (!g_file_get_contents(path, &text, &len, NULL))
        return g_strdup("(no log)");
    return g_strdup(len > 4096 ? text + len - 4096 : text);
}

/* `out`, a --json output, is valid against docs/schema/replay.schema.json. */
static void
assert_valid_json(const char *out)
{
    g_autofree char *path = g_build_filename(fx.dir, "replay.json", NULL);
    cr_assert(g_file_set_contents(path, out, -1, NULL));
    it_validate_json("replay", path, FALSE);
}

/* Waits up to MIGRATE_TIMEOUT_MS for `dst`'s incoming migration to end
 * (completed, failed, or postcopy-paused, which only a new source can
 * end); asserts it completed, quoting its log if not. */
static void
assert_dst_completed(MpQemu *dst)
{
    gint64 deadline = g_get_monotonic_time() + MIGRATE_TIMEOUT_MS * 1000ll;
    g_autofree char *st = NULL;
    for (;;) {
        g_free(st);
        st = it_migration_status(dst);
        if (!strcmp(st, "completed") || !strcmp(st, "failed")
            || !strcmp(st, "postcopy-paused")
            || g_get_monotonic_time() > deadline)
            break;
        g_usleep(100000);
    }
    g_autofree char *log = qemu_log_tail(dst);
    cr_assert_str_eq(st, "completed", "destination: %s; its log:\n%s", st,
                     log);
}

/* Replays `capture` into `dst` (waiting on `port`) with `extra`
 * options; asserts exit 0, and that the destination completed.
 * @return the --json document (caller owns). */
static json_object *
replay_ok(const char *capture, MpQemu *dst, guint16 port,
          const char *const *extra)
{
    g_autofree char *to = g_strdup_printf("--to=127.0.0.1:%u", port);
    const char *args[16] = {capture, to, "--json"};
    guint n = 3;
    for (guint i = 0; extra && extra[i]; i++)
        args[n++] = extra[i];
    g_autofree char *out = NULL, *err = NULL;
    int st = replay(args, &out, &err);
    if (st != 0) {
        /* what the destination itself says, for the failure message */
        g_autofree char *dst_st = it_migration_status(dst);
        g_autofree char *log = qemu_log_tail(dst);
        cr_assert_fail("replay exited %d:\n%s\n%s\ndestination: %s; its "
                       "log:\n%s",
                       st, err, out, dst_st, log);
    }
    json_object *doc = json_tokener_parse(out);
    cr_assert_not_null(doc, "not JSON: %s", out);
    assert_valid_json(out);
    cr_assert(json_object_get_boolean(it_jget(doc, "replay.accepted")));
    assert_dst_completed(dst);
    g_printerr("replay %s: %.0f bytes in %.1f ms, downtime %s ms, verdict: "
               "%s\n",
               capture, it_jnum(doc, "replay.bytes"),
               it_jnum(doc, "replay.duration_ms"),
               json_object_to_json_string(it_jget(doc, "downtime_ms")),
               json_object_get_string(it_jget(doc, "replay.verdict")));
    return doc;
}

/* A migration of fx.src through `relay --capture` to fx.dst (both set
 * up by the caller, fx.dst listening on dport). */
static void
migrate_captured(guint16 dport, guint postcopy_after_ms)
{
    it_migrate(fx.src, fx.relay->port, FALSE);
    if (postcopy_after_ms)
        it_start_postcopy(fx.src, postcopy_after_ms);
    json_object *src = it_wait_final(fx.src, MIGRATE_TIMEOUT_MS);
    cr_assert_str_eq(json_object_get_string(it_jget(src, "status")),
                     "completed");
    json_object_put(src);
    json_object *dst = it_wait_final(fx.dst, MIGRATE_TIMEOUT_MS);
    cr_assert_str_eq(json_object_get_string(it_jget(dst, "status")),
                     "completed");
    json_object_put(dst);
    cr_assert_eq(it_relay_wait(fx.relay, 30000), 0);
}

static guint16
free_port(void)
{
    g_autoptr(GError) err = NULL;
    guint16 port = mp_qemu_pick_free_port(&err);
    cr_assert(port, "%s", err ? err->message : "?");
    return port;
}

Test(replay, capture_72_into_72_and_100)
{
    fx.src = it_start_workload("7.2", "pc-i440fx-7.2", 128, "mem=64M rate=4000",
                               NULL);
    fx.dst = it_start_destination("7.2", "pc-i440fx-7.2", FALSE, NULL);
    guint16 dport = free_port();
    fx.relay = it_relay_start(fx.dir, dport, NULL);
    it_incoming(fx.dst, dport);
    it_set_int(fx.src, "max-bandwidth", 64 << 20);
    it_set_int(fx.src, "downtime-limit", 20);
    migrate_captured(dport, 0);

    /* into a new 7.2: as recorded */
    fx.dst2 = it_start_destination("7.2", "pc-i440fx-7.2", FALSE, NULL);
    guint16 p2 = free_port();
    it_incoming(fx.dst2, p2);
    json_object *doc = replay_ok(fx.relay->capture, fx.dst2, p2, NULL);
    cr_assert(!json_object_get_boolean(it_jget(doc, "replay.confirmed")));
    cr_assert(json_object_get_boolean(it_jget(doc, "replay.paced")));
    cr_assert_eq(it_jint(doc, "replay.return_path.page_requests"), 0);
    cr_assert_gt(it_jint(doc, "ram.pages.normal"), 0);
    it_assert_same_ram(fx.dst, fx.dst2, RAM_BYTES, fx.dir);
    json_object_put(doc);
    g_clear_pointer(&fx.dst2, mp_qemu_free);

    /* into 10.0, the planners' case: the same machine type, 4x faster */
    fx.dst2 = it_start_destination("10.0", "pc-i440fx-7.2", FALSE, NULL);
    p2 = free_port();
    it_incoming(fx.dst2, p2);
    const char *fast[] = {"--speed=4", NULL};
    doc = replay_ok(fx.relay->capture, fx.dst2, p2, fast);
    it_assert_same_ram(fx.dst, fx.dst2, RAM_BYTES, fx.dir);
    json_object_put(doc);
}

Test(replay, multifd_100)
{
    fx.src = it_start_workload("10.0", "pc-q35-10.0", 128, "mem=64M rate=3000",
                               NULL);
    fx.dst = it_start_destination("10.0", "pc-q35-10.0", FALSE, NULL);
    guint16 dport = free_port();
    fx.relay = it_relay_start(fx.dir, dport, NULL);
    const char *caps[] = {"multifd", "return-path"};
    for (guint i = 0; i < G_N_ELEMENTS(caps); i++) {
        it_cap(fx.src, caps[i]);
        it_cap(fx.dst, caps[i]);
    }
    it_set_int(fx.src, "multifd-channels", 4);
    it_set_int(fx.dst, "multifd-channels", 4);
    it_incoming(fx.dst, dport);
    it_set_int(fx.src, "max-bandwidth", 64 << 20);
    it_set_int(fx.src, "downtime-limit", 20);
    migrate_captured(dport, 0);

    fx.dst2 = it_start_destination("10.0", "pc-q35-10.0", FALSE, NULL);
    for (guint i = 0; i < G_N_ELEMENTS(caps); i++)
        it_cap(fx.dst2, caps[i]);
    it_set_int(fx.dst2, "multifd-channels", 4);
    guint16 p2 = free_port();
    it_incoming(fx.dst2, p2);
    json_object *doc = replay_ok(fx.relay->capture, fx.dst2, p2, NULL);
    cr_assert(json_object_get_boolean(it_jget(doc, "replay.confirmed")), "%s",
              json_object_get_string(it_jget(doc, "replay.verdict")));
    cr_assert_eq(it_jint(doc, "replay.return_path.shut"), 0);
    cr_assert_eq(json_object_array_length(it_jget(doc, "replay.channels")), 5);
    cr_assert_eq(it_jint(doc, "multifd.channels"), 4);
    cr_assert_not_null(it_jget(doc, "downtime_ms"));
    it_assert_same_ram(fx.dst, fx.dst2, RAM_BYTES, fx.dir);
    json_object_put(doc);
}

/* A running destination: the workload (verify=1) checks every page; a few
 * passes with no CORRUPT line. */
static void
check_guest_verifies(MpQemu *dst)
{
    const char *path = mp_qemu_console_path(dst);
    /* (a pass takes ~10 s on a loaded 2-core machine) */
    gint64 deadline = g_get_monotonic_time() + 90 * G_USEC_PER_SEC;

    for (;;) {
        g_autofree char *text = NULL;
        g_file_get_contents(path, &text, NULL, NULL);
        cr_assert(!text || !strstr(text, "CORRUPT"),
                  "the guest found corrupt pages after the replay:\n%s", text);
        guint passes = 0;
        for (const char *p = text; p && (p = strstr(p, "verify pass=")); p++)
            passes++;
        if (passes >= 3)
            return;
        cr_assert(g_get_monotonic_time() < deadline,
                  "the guest verified only %u passes:\n%s", passes,
                  text ? text : "");
        g_usleep(200000);
    }
}

/* A post-copy migration of `version` through the relay (`preempt`: with
 * postcopy-preempt), replayed into a running destination of the same
 * version: SHUT 0, and its guest verifies every page. */
static void
run_postcopy(const char *version, const char *machine, gboolean preempt)
{
    const char *caps[] = {"postcopy-ram", preempt ? "postcopy-preempt" : NULL};
    fx.src = it_start_workload(version, machine, 128,
                               "mem=64M rate=5000 verify=1", NULL);
    fx.dst = it_start_destination(version, machine, TRUE, NULL);
    guint16 dport = free_port();
    fx.relay = it_relay_start(fx.dir, dport, NULL);
    for (guint i = 0; i < G_N_ELEMENTS(caps) && caps[i]; i++) {
        it_cap(fx.src, caps[i]);
        it_cap(fx.dst, caps[i]);
    }
    it_incoming(fx.dst, dport);
    it_set_int(fx.src, "max-bandwidth", 32 << 20);
    it_set_int(fx.src, "max-postcopy-bandwidth", 16 << 20);
    migrate_captured(dport, 500);

    fx.dst2 = it_start_destination(version, machine, TRUE, NULL);
    for (guint i = 0; i < G_N_ELEMENTS(caps) && caps[i]; i++)
        it_cap(fx.dst2, caps[i]);
    guint16 p2 = free_port();
    it_incoming(fx.dst2, p2);
    json_object *doc = replay_ok(fx.relay->capture, fx.dst2, p2, NULL);
    /* (10.0 with postcopy-preempt once closed without a SHUT: it had
     * paused post-copy, its preempt channel closed too early) */
    cr_assert(json_object_get_boolean(it_jget(doc, "replay.confirmed")), "%s",
              json_object_get_string(it_jget(doc, "replay.verdict")));
    cr_assert_eq(json_object_array_length(it_jget(doc, "replay.channels")),
                 preempt ? 2 : 1);
    gint64 requests = it_jint(doc, "replay.return_path.page_requests");
    gint64 early = it_jint(doc, "replay.page_answers.requests_early");
    g_printerr(
        "post-copy replay %s%s: %" G_GINT64_FORMAT " page requests, "
        "%" G_GINT64_FORMAT " answered early, %" G_GINT64_FORMAT
        " in stream order; %" G_GINT64_FORMAT " pages indexed, %"
        G_GINT64_FORMAT " sent early, %" G_GINT64_FORMAT " later copies "
        "dropped, %" G_GINT64_FORMAT " not in the capture; latency p50 %s "
        "p99 %s us\n",
        version, preempt ? " preempt" : "", requests, early,
        it_jint(doc, "replay.page_answers.requests_in_order"),
        it_jint(doc, "replay.page_answers.indexed_pages"),
        it_jint(doc, "replay.page_answers.pages_early"),
        it_jint(doc, "replay.page_answers.later_copies_dropped"),
        it_jint(doc, "replay.page_answers.pages_not_in_capture"),
        json_object_to_json_string(it_jget(doc, "postcopy.latency_us.p50")),
        json_object_to_json_string(it_jget(doc, "postcopy.latency_us.p99")));
    cr_assert_gt(it_jint(doc, "replay.page_answers.indexed_pages"), 0);
    /* every page sent ahead had its later copy left out (the guest's
     * check below proves the rest), and every request was answered */
    cr_assert_eq(it_jint(doc, "replay.page_answers.pages_early"),
                 it_jint(doc, "replay.page_answers.later_copies_dropped"));
    cr_assert_eq(early + it_jint(doc, "replay.page_answers.requests_in_order"),
                 requests);
    /* where the destination asked, pages went ahead of their turn; a
     * request for a page whose record is already queued waits for it,
     * and one run of preempt_100 had all of its 49 so: with many
     * requests some always find their page still to come */
    if (requests >= 100)
        cr_assert_gt(early, 0, "%" G_GINT64_FORMAT " requests, none early",
                     requests);
    check_guest_verifies(fx.dst2);
    json_object_put(doc);
}

Test(replay, postcopy_72)
{
    run_postcopy("7.2", NULL, FALSE);
}

/* 7.2 opens the preempt channel right after the main one, silent until
 * post-copy; 10.0 at the switch */
Test(replay, preempt_72)
{
    run_postcopy("7.2", NULL, TRUE);
}

Test(replay, preempt_100)
{
    run_postcopy("10.0", "pc-q35-10.0", TRUE);
}

static void
tcpdump_start(const char *file, const char *filter)
{
    g_autofree char *log = g_build_filename(fx.dir, "tcpdump.log", NULL);
    fx.tcpdump = it_tcpdump_start(file, filter, log);
}

Test(replay, pcap_100)
{
    g_autofree char *pcap = g_build_filename(fx.dir, "x.pcap", NULL);

    fx.src = it_start_workload("10.0", "pc-q35-10.0", 128, "mem=64M rate=3000",
                               NULL);
    fx.dst = it_start_destination("10.0", "pc-q35-10.0", FALSE, NULL);
    guint16 dport = free_port();
    it_cap(fx.src, "return-path");
    it_cap(fx.dst, "return-path");
    g_autofree char *filter = g_strdup_printf("tcp port %u", dport);
    tcpdump_start(pcap, filter);
    it_incoming(fx.dst, dport);
    it_set_int(fx.src, "max-bandwidth", 64 << 20);
    it_set_int(fx.src, "downtime-limit", 20);
    it_migrate(fx.src, dport, FALSE);
    json_object *src = it_wait_final(fx.src, MIGRATE_TIMEOUT_MS);
    cr_assert_str_eq(json_object_get_string(it_jget(src, "status")),
                     "completed");
    json_object_put(src);
    json_object_put(it_wait_final(fx.dst, MIGRATE_TIMEOUT_MS));
    tcpdump_stop();
    g_autofree char *log = NULL;
    g_autofree char *logp = g_build_filename(fx.dir, "tcpdump.log", NULL);
    g_file_get_contents(logp, &log, NULL, NULL);
    cr_assert(log && strstr(log, "\n0 packets dropped by kernel"),
              "tcpdump dropped packets; the capture is not whole:\n%s", log);

    fx.dst2 = it_start_destination("10.0", "pc-q35-10.0", FALSE, NULL);
    it_cap(fx.dst2, "return-path");
    guint16 p2 = free_port();
    it_incoming(fx.dst2, p2);
    const char *fast[] = {"--rate=max", NULL};
    json_object *doc = replay_ok(pcap, fx.dst2, p2, fast);
    cr_assert(json_object_get_boolean(it_jget(doc, "replay.confirmed")), "%s",
              json_object_get_string(it_jget(doc, "replay.verdict")));
    cr_assert_str_eq(json_object_get_string(it_jget(doc, "replay.format")),
                     "pcap");
    cr_assert(!json_object_get_boolean(it_jget(doc, "replay.paced")));
    it_assert_same_ram(fx.dst, fx.dst2, RAM_BYTES, fx.dir);
    json_object_put(doc);
}

Test(replay, stream_file_rate)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *stream = g_build_filename(fx.dir, "vm.mig", NULL);
    json_object *info = NULL;

    fx.src = it_start_workload("7.2", NULL, 128, "mem=64M rate=2000", NULL);
    it_set_int(fx.src, "max-bandwidth", 256 << 20);
    g_autofree char *uri = g_strdup_printf("exec:cat > '%s'", stream);
    cr_assert(mp_qemu_migrate(fx.src, uri, &err), "%s",
              err ? err->message : "?");
    cr_assert(mp_qemu_wait_migration(fx.src, MIGRATE_TIMEOUT_MS, &info, &err),
              "%s", err ? err->message : "?");
    json_object_put(info);

    fx.dst2 = it_start_destination("7.2", NULL, FALSE, NULL);
    guint16 p2 = free_port();
    it_incoming(fx.dst2, p2);
    const guint64 rate = 24 << 20;
    const char *args[] = {"--rate=24M", NULL};
    json_object *doc = replay_ok(stream, fx.dst2, p2, args);
    double bytes = it_jnum(doc, "replay.bytes");
    double ms = it_jnum(doc, "replay.duration_ms");
    g_printerr("rate: %.0f bytes at --rate %" G_GUINT64_FORMAT " B/s: %.1f ms "
               "(at least %.1f)\n",
               bytes, rate, ms, bytes / rate * 1000);
    cr_assert_geq(ms, bytes / rate * 1000,
                  "%.0f bytes in %.1f ms at %" G_GUINT64_FORMAT " B/s", bytes,
                  ms, rate);
    cr_assert_eq(it_jint(doc, "replay.rate"), rate);
    /* against the RAM image the stream holds (the source, paused after
     * an exec: migration, has differed from its own stream by a page or
     * two, seen once: not the replay's doing) */
    g_autofree char *ram = g_build_filename(fx.dir, "ram", NULL);
    g_autofree char *image = g_build_filename(ram, "pc.ram", NULL);
    json_object_put(it_analyze(stream, ram));
    it_assert_ram_equals(fx.dst2, image, RAM_BYTES, fx.dir);
    json_object_put(doc);
    g_clear_pointer(&fx.dst2, mp_qemu_free);

    /* the same stream cut in half: said, exit 1 */
    g_autofree char *data = NULL;
    gsize len;
    cr_assert(g_file_get_contents(stream, &data, &len, NULL));
    g_autofree char *half = g_build_filename(fx.dir, "half.mig", NULL);
    cr_assert(g_file_set_contents(half, data, len / 2, NULL));
    fx.dst2 = it_start_destination("7.2", NULL, FALSE, NULL);
    p2 = free_port();
    it_incoming(fx.dst2, p2);
    g_autofree char *to = g_strdup_printf("--to=127.0.0.1:%u", p2);
    const char *hargs[] = {half, to, "-q", NULL};
    g_autofree char *out = NULL, *errout = NULL;
    int st = replay(hargs, &out, &errout);
    cr_assert_eq(st, 1, "exit %d:\n%s", st, errout);
    cr_assert(strstr(errout, "cut short"), "%s", errout);
    cr_assert(strstr(out, "NOT ACCEPTED"), "%s", out);
}

/* One direction of a hand-made capture channel: `len` bytes of `data`
 * in chunks of at most `chunk` bytes (1 MiB at most: the relay's), the
 * first at `t_us`; its files are s1-cC-DIR.bin/.idx in `dir`. */
static void
write_direction(const char *dir, guint c, const char *d, const guint8 *data,
                gsize len, gsize chunk, guint64 t_us)
{
    g_autofree char *bin = g_strdup_printf("%s/s1-c%u-%s.bin", dir, c, d);
    g_autofree char *idx = g_strdup_printf("%s/s1-c%u-%s.idx", dir, c, d);
    g_autoptr(GByteArray) entries = g_byte_array_new();
    for (gsize off = 0; off < len; off += chunk) {
        guint64 e[2] = {GUINT64_TO_BE(t_us + off / chunk),
                        GUINT64_TO_BE(off)};
        g_byte_array_append(entries, (const guint8 *)e, sizeof(e));
    }
    cr_assert(g_file_set_contents(bin, (const char *)data, len, NULL));
    cr_assert(g_file_set_contents(idx, (const char *)entries->data,
                                  entries->len, NULL));
}

/* A capture directory `cap` of a post-copy with postcopy-preempt as QEMU
 * 10.0 makes it, by hand: the main channel (the header,
 * OPEN_RETURN_PATH, EOF) and the preempt channel opened after it with
 * `preempt` (its last byte recorded before the main channel's end). */
static void
write_preempt_capture(const char *cap, const guint8 *preempt, gsize len)
{
    static const guint8 main_stream[] = {'Q', 'E', 'V', 'M', 0, 0, 0, 3,
                                         0x08, 0, 1, 0, 0, 0x00};
    cr_assert_eq(g_mkdir(cap, 0700), 0);
    g_autofree char *index = g_build_filename(cap, "index.json", NULL);
    cr_assert(g_file_set_contents(index,
                                  "{\"format\": \"migproxy-capture\", "
                                  "\"version\": 2}",
                                  -1, NULL));
    g_autofree char *s1 = g_build_filename(cap, "s1.json", NULL);
    GString *sj = g_string_new(
        "{\"format\": \"migproxy-capture-session\", \"version\": 2, "
        "\"session\": 1, \"ended\": true, \"channels\": [");
    static const char *kinds[] = {"main", "preempt"};
    for (guint c = 0; c < 2; c++)
        g_string_append_printf(
            sj,
            "%s{\"channel\": %u, \"kind\": \"%s\", \"open_us\": %u, "
            "\"to_dst\": {\"file\": \"s1-c%u-to-dst.bin\", \"index\": "
            "\"s1-c%u-to-dst.idx\", \"end\": \"fin\", \"end_us\": %u}, "
            "\"to_src\": {\"file\": \"s1-c%u-to-src.bin\", \"index\": "
            "\"s1-c%u-to-src.idx\", \"end\": \"fin\", \"end_us\": 5000}}",
            c ? ", " : "", c, kinds[c], c * 100, c, c, c ? 3000 : 4000, c,
            c);
    g_string_append(sj, "]}");
    cr_assert(g_file_set_contents(s1, sj->str, -1, NULL));
    g_string_free(sj, TRUE);
    write_direction(cap, 0, "to-dst", main_stream, sizeof(main_stream), 1024,
                    0);
    write_direction(cap, 1, "to-dst", preempt, len, 1 << 20, 200);
    write_direction(cap, 0, "to-src", NULL, 0, 1, 0);
    write_direction(cap, 1, "to-src", NULL, 0, 1, 0);
}

/* A destination standing for QEMU 10.0 with postcopy-preempt: it takes
 * the main and the preempt channel and answers SHUT 0 at its end. */
typedef struct {
    GSocket *listener;
    gsize preempt_bytes;  /* read on the preempt channel */
    gboolean close_first; /* it closes the preempt channel before SHUT
                             (reset: it reads no more of it) */
    gboolean ok;          /* it got to its SHUT */
    gboolean preempt_closed_early; /* EOF before its SHUT */
    gboolean closed_after;         /* the replay closed after its SHUT */
    char *error;
} FakeDst;

static gboolean
fake_read(GSocket *s, gsize want, char **error)
{
    g_autoptr(GError) err = NULL;
    char buf[256];
    for (gsize got = 0; got < want;) {
        gssize n = g_socket_receive(s, buf, MIN(sizeof(buf), want - got),
                                    NULL, &err);
        if (n <= 0) {
            *error = g_strdup_printf("read %zu of %zu bytes: %s", got, want,
                                     err ? err->message : "EOF");
            return FALSE;
        }
        got += n;
    }
    return TRUE;
}

static gboolean
fake_eof(GSocket *s)
{
    char b;
    return g_socket_receive(s, &b, 1, NULL, NULL) <= 0;
}

static gpointer
fake_dst_run(gpointer data)
{
    FakeDst *f = data;
    g_autoptr(GError) err = NULL;
    g_socket_set_blocking(f->listener, TRUE);
    g_socket_set_timeout(f->listener, 10);
    g_autoptr(GSocket) m = g_socket_accept(f->listener, NULL, &err);
    if (m)
        g_socket_set_timeout(m, 10);
    if (!m || !fake_read(m, 14, &f->error)) /* the whole main stream */
        return NULL;
    g_autoptr(GSocket) p = g_socket_accept(f->listener, NULL, &err);
    if (p)
        g_socket_set_timeout(p, 10);
    if (!p || !fake_read(p, f->preempt_bytes, &f->error)) {
        if (!f->error)
            f->error = g_strdup(err ? err->message : "no preempt channel");
        return NULL;
    }
    if (f->close_first) {
        /* as QEMU 10.0 at its end: with bytes of the replay unread */
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(g_socket_get_fd(p), SOL_SOCKET, SO_LINGER, &lg,
                   sizeof(lg));
        g_socket_close(p, NULL);
        /* the replay, writing there, sees the reset before the SHUT */
        g_usleep(500 * 1000);
    } else if (g_socket_condition_timed_wait(p, G_IO_IN, 2 * G_USEC_PER_SEC,
                                             NULL, NULL)) {
        /* the replay has sent every byte and waits for the answer:
         * QEMU's source closes nothing now (2 s: long enough to see a
         * close that was sent; no timing is asserted) */
        f->preempt_closed_early = fake_eof(p);
    }
    static const guint8 shut[] = {0, 1, 0, 4, 0, 0, 0, 0}; /* SHUT 0 */
    if (g_socket_send(m, (const char *)shut, sizeof(shut), NULL, &err)
        != sizeof(shut)) {
        f->error = g_strdup(err ? err->message : "short send");
        return NULL;
    }
    f->closed_after =
        fake_eof(m)
        && (f->close_first || f->preempt_closed_early || fake_eof(p));
    f->ok = TRUE;
    return NULL;
}

/* Replays `cap` into a fake destination `f`; asserts it got to its end
 * and the replay exited 0 with SHUT 0.  @return the --json document. */
static json_object *
replay_into_fake(const char *cap, FakeDst *f)
{
    guint16 port;
    f->listener = it_fake_destination(&port);
    GThread *t = g_thread_new("fake-dst", fake_dst_run, f);
    g_autofree char *to = g_strdup_printf("--to=127.0.0.1:%u", port);
    const char *args[] = {cap, to, "--json", "-q", NULL};
    g_autofree char *out = NULL, *err = NULL;
    int st = replay(args, &out, &err);
    g_thread_join(t);
    g_object_unref(f->listener);
    g_autofree char *ferr = f->error;
    cr_assert(f->ok, "the fake destination: %s", ferr ? ferr : "?");
    cr_assert(!f->preempt_closed_early,
              "the replay closed the preempt channel before the "
              "destination's SHUT");
    cr_assert_eq(st, 0, "exit %d:\n%s\n%s", st, err, out);
    json_object *doc = json_tokener_parse(out);
    cr_assert_not_null(doc, "not JSON: %s", out);
    assert_valid_json(out);
    cr_assert(json_object_get_boolean(it_jget(doc, "replay.confirmed")), "%s",
              json_object_get_string(it_jget(doc, "replay.verdict")));
    cr_assert_eq(json_object_array_length(it_jget(doc, "replay.channels")), 2);
    return doc;
}

/* No QEMU: a post-copy capture's preempt channel stays open until the
 * destination answered, as QEMU's source keeps it (10.0's destination
 * pauses post-copy when it ends while the main stream still loads: the
 * replay closed it at its recorded end, and preempt_100 ended
 * postcopy-paused whenever that came before the new destination's last
 * section). */
Test(replay, preempt_open_until_verdict)
{
    g_autofree char *cap = g_build_filename(fx.dir, "cap", NULL);
    static const guint8 preempt[] = {0, 0, 0, 0, 0, 0, 0, 0x10}; /* EOS */
    write_preempt_capture(cap, preempt, sizeof(preempt));
    FakeDst f = {.preempt_bytes = sizeof(preempt)};
    json_object *doc = replay_into_fake(cap, &f);
    cr_assert(f.closed_after, "the replay left a channel open after SHUT");
    json_object_put(doc);
}

/* No QEMU: the destination closes the preempt channel with bytes of the
 * capture still queued for it, then says SHUT 0 (QEMU 10.0 closes it
 * itself when it is done, before its SHUT): accepted, the bytes left
 * counted, not a refusal. */
Test(replay, preempt_closed_by_destination_then_shut)
{
    g_autofree char *cap = g_build_filename(fx.dir, "cap", NULL);
    /* more than loopback's socket buffers hold: bytes stay queued */
    gsize len = 32u << 20;
    g_autofree guint8 *preempt = g_malloc0(len);
    write_preempt_capture(cap, preempt, len);
    FakeDst f = {.preempt_bytes = 8, .close_first = TRUE};
    json_object *doc = replay_into_fake(cap, &f);
    cr_assert(f.closed_after, "the replay left the main channel open");
    cr_assert_lt(it_jint(doc, "replay.bytes"), len);
    json_object_put(doc);
}

/* No QEMU: what replay says of what it cannot replay. */
Test(replay, malformed)
{
    g_autofree char *out = NULL, *err = NULL;
    g_autofree char *missing = g_build_filename(fx.dir, "nope", NULL);
    g_autofree char *junk = g_build_filename(fx.dir, "junk", NULL);
    g_autofree char *capdir = g_build_filename(fx.dir, "cap", NULL);
    g_autofree char *index = g_build_filename(capdir, "index.json", NULL);
    g_autofree char *stream = g_build_filename(fx.dir, "head.mig", NULL);
    static const guint8 head[] = {'Q', 'E', 'V', 'M', 0, 0, 0, 3};
    guint16 port = free_port(); /* nobody listens there */
    g_autofree char *to = g_strdup_printf("--to=127.0.0.1:%u", port);

    cr_assert(g_file_set_contents(junk, "not a migration at all", -1, NULL));
    cr_assert_eq(g_mkdir(capdir, 0700), 0);
    cr_assert(g_file_set_contents(index,
                                  "{\"format\": \"migproxy-capture\", "
                                  "\"version\": 2}",
                                  -1, NULL));
    cr_assert(
        g_file_set_contents(stream, (const char *)head, sizeof(head), NULL));
    static const struct {
        const char *what;
        int status;
        const char *says;
    } cases[] = {
        {"missing", 3, "nope"},
        {"junk", 4, "not a format replay reads"},
        {"capdir", 1, "lists no session"},
        {"stream", 5, "cannot connect"},
    };
    const char *paths[] = {missing, junk, capdir, stream};
    for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
        const char *args[] = {paths[i], to, "-q", NULL};
        g_clear_pointer(&out, g_free);
        g_clear_pointer(&err, g_free);
        int st = replay(args, &out, &err);
        cr_assert_eq(st, cases[i].status, "%s: exit %d:\n%s", cases[i].what, st,
                     err);
        cr_assert(strstr(err, cases[i].says), "%s: %s", cases[i].what, err);
        /* the same with --json: the document its schema says */
        const char *jargs[] = {paths[i], to, "-q", "--json", NULL};
        g_clear_pointer(&out, g_free);
        g_clear_pointer(&err, g_free);
        cr_assert_eq(replay(jargs, &out, &err), cases[i].status);
        assert_valid_json(out);
    }
    /* usage */
    const char *no_to[] = {stream, NULL};
    g_clear_pointer(&out, g_free);
    g_clear_pointer(&err, g_free);
    cr_assert_eq(replay(no_to, &out, &err), 2);
    const char *bad_rate[] = {stream, to, "--rate=fast", NULL};
    g_clear_pointer(&out, g_free);
    g_clear_pointer(&err, g_free);
    cr_assert_eq(replay(bad_rate, &out, &err), 2);
    cr_assert(strstr(err, "--rate"), "%s", err);
    const char *bad_speed[] = {stream, to, "--speed=0", NULL};
    g_clear_pointer(&out, g_free);
    g_clear_pointer(&err, g_free);
    cr_assert_eq(replay(bad_speed, &out, &err), 2);
}
