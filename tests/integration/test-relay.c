/* test-relay.c: real migrations through `migproxy relay`.
 *
 * Each case boots the workload guest in a source QEMU (TCG), a destination
 * QEMU with `-incoming defer`, and a relay between them (--once, with
 * --report, --metrics and --capture), migrates, and checks:
 *   - both QEMUs report "completed" and the relay exits 0;
 *   - the report's page counts equal query-migrate's (normal, duplicate;
 *     multifd-bytes; postcopy-requests), with the exceptions QEMU itself
 *     forces (7.2 multifd, 7.2 compress: see the stream reference);
 *   - the destination's memory: equal to the source's (quiet guests, or
 *     QEMU 10.0), or, for a busy 7.2 guest (docs/qemu-quirks.md: 7.2 can
 *     leave a page behind even direct), equal to the RAM image of the
 *     stream the relay captured; with a running destination (post-copy),
 *     the guest's own self-check (verify=1) reports no CORRUPT page;
 *   - the capture, read back by `migproxy analyze DIR`, gives the same
 *     page counts; the metrics file (stdout for precopy_100) has samples
 *     and an end; the report, the metrics lines and the capture's
 *     analysis are valid against docs/schema/;
 *   - the downtime on the wire against QEMU's `downtime` (printed as
 *     "relay-downtime" lines; docs/relay.md).
 */
#include "config.h"
#include <signal.h>
#include <string.h>
#include <glib/gstdio.h>
#include <criterion/criterion.h>
#include "itest-util.h"
#include "relay-itest.h"

#define MIGRATE_TIMEOUT_MS (180 * 1000)
#define RAM_BYTES          (128ull << 20)

static ItRelayFixture fx;

static void
fx_init(void)
{
    it_relay_fixture_init(&fx);
}

static void
fx_fini(void)
{
    it_relay_fixture_fini(&fx);
}

TestSuite(relay, .init = fx_init, .fini = fx_fini, .timeout = 300);

typedef enum {
    MEM_SOURCE, /* destination == source, byte for byte */
    MEM_STREAM, /* destination == the captured stream's RAM image */
    MEM_GUEST,  /* running destination: the guest checks itself */
} MemCheck;

typedef struct {
    const char *name;
    const char *src_version; /* NULL: 7.2 */
    const char *dst_version; /* NULL: same as the source */
    const char *machine;     /* NULL: pc-q35-<source version> */
    const char *append;
    const char *caps[4];
    gint64 downtime_ms;
    gint64 bandwidth; /* bytes/s; 0: 256 MiB/s */
    guint multifd_channels;
    gboolean blk;
    const char *const *src_extra;
    const char *const *dst_extra;
    guint postcopy_after_ms; /* 0: pre-copy only */
    MemCheck mem;
    const char *zero_page_detection; /* source parameter [9.0+], or NULL */
    const char *multifd_compression; /* both sides: "zlib", "zstd", NULL */
    const char *relay_args[8]; /* extra `migproxy relay` arguments, NULL-ended */
} Case;

typedef struct {
    json_object *src, *dst; /* query-migrate, final */
    json_object *report;
} Result;

static void
result_clear(Result *r)
{
    json_object_put(r->src);
    json_object_put(r->dst);
    json_object_put(r->report);
}

static gint64
jint(json_object *o, const char *path)
{
    return it_jint(o, path);
}

static void
check_metrics_file(const char *path)
{
    g_autofree char *text = NULL;
    cr_assert(g_file_get_contents(path, &text, NULL, NULL), "no %s", path);
    g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
    guint samples = 0, ends = 0, starts = 0;
    for (guint i = 0; lines[i] && *lines[i]; i++) {
        json_object *o = json_tokener_parse(lines[i]);
        cr_assert_not_null(o, "metrics line %u is not JSON: %s", i + 1,
                           lines[i]);
        const char *ev = json_object_get_string(it_jget(o, "event"));
        samples += g_strcmp0(ev, "sample") == 0;
        ends += g_strcmp0(ev, "session-end") == 0;
        starts += g_strcmp0(ev, "session-start") == 0;
        json_object_put(o);
    }
    cr_assert_eq(starts, 1);
    cr_assert_geq(samples, 1, "no sample in %s", path);
    cr_assert_eq(ends, 1);
    it_validate_json("metrics-line", path, TRUE);
}

/* Does the case send its metrics lines to stdout (`--metrics -`)? */
static gboolean
metrics_to_stdout(const Case *c)
{
    for (guint i = 0; i < G_N_ELEMENTS(c->relay_args) && c->relay_args[i]; i++)
        if (g_str_equal(c->relay_args[i], "--metrics=-"))
            return TRUE;
    return FALSE;
}

/* The capture, read back, counts the same pages as the live relay. */
static void
check_capture(json_object *report)
{
    json_object *doc = it_analyze(fx.relay->capture, NULL);
    const char *keys[] = {"ram.pages.normal", "ram.pages.zero",
                          "ram.pages.xbzrle", "ram.pages.compressed",
                          "postcopy.requests"};
    for (guint i = 0; i < G_N_ELEMENTS(keys); i++)
        if (it_jget(report, keys[i]))
            cr_assert_eq(jint(doc, keys[i]), jint(report, keys[i]),
                         "%s: capture %" G_GINT64_FORMAT
                         ", live %" G_GINT64_FORMAT,
                         keys[i], jint(doc, keys[i]), jint(report, keys[i]));
    cr_assert_eq(json_object_array_length(it_jget(doc, "channels")),
                 json_object_array_length(it_jget(report, "channels")));
    json_object_put(doc);
}

static void
run(const Case *c, Result *res)
{
    g_autoptr(GError) err = NULL;
    const char *sv = c->src_version ? c->src_version : "7.2";
    const char *dv = c->dst_version ? c->dst_version : sv;

    fx.src = it_start_workload(sv, c->machine, 128, c->append, c->src_extra);
    fx.dst =
        it_start_destination(dv, c->machine, c->mem == MEM_GUEST, c->dst_extra);
    guint16 dst_port = mp_qemu_pick_free_port(&err);
    cr_assert(dst_port, "%s", err ? err->message : "?");
    fx.relay = it_relay_start(fx.dir, dst_port,
                              c->relay_args[0] ? c->relay_args : NULL);

    for (guint i = 0; i < G_N_ELEMENTS(c->caps) && c->caps[i]; i++) {
        it_cap(fx.src, c->caps[i]);
        it_cap(fx.dst, c->caps[i]);
    }
    if (c->multifd_channels) {
        it_set_int(fx.src, "multifd-channels", c->multifd_channels);
        it_set_int(fx.dst, "multifd-channels", c->multifd_channels);
    }
    if (c->multifd_compression) {
        cr_assert(mp_qemu_set_parameter_str(fx.src, "multifd-compression",
                                            c->multifd_compression, &err),
                  "%s", err ? err->message : "?");
        cr_assert(mp_qemu_set_parameter_str(fx.dst, "multifd-compression",
                                            c->multifd_compression, &err),
                  "%s", err ? err->message : "?");
    }
    it_incoming(fx.dst, dst_port);
    it_set_int(fx.src, "max-bandwidth",
               c->bandwidth ? c->bandwidth : 256 << 20);
    if (c->downtime_ms)
        it_set_int(fx.src, "downtime-limit", c->downtime_ms);
    if (c->zero_page_detection)
        cr_assert(mp_qemu_set_parameter_str(fx.src, "zero-page-detection",
                                            c->zero_page_detection, &err),
                  "%s", err ? err->message : "?");
    /* post-copy pushes the rest unthrottled by default: in 100 ms on
     * loopback, before the destination guest may touch a missing page;
     * slower, it surely does (page requests > 0) */
    if (c->postcopy_after_ms)
        it_set_int(fx.src, "max-postcopy-bandwidth", 16 << 20);

    it_migrate(fx.src, fx.relay->port, c->blk);
    if (c->postcopy_after_ms)
        it_start_postcopy(fx.src, c->postcopy_after_ms);
    res->src = it_wait_final(fx.src, MIGRATE_TIMEOUT_MS);
    g_autofree char *log = it_relay_log_text(fx.relay);
    cr_assert_str_eq(json_object_get_string(it_jget(res->src, "status")),
                     "completed", "source: %s\nrelay log:\n%s",
                     json_object_to_json_string(res->src), log);
    res->dst = it_wait_final(fx.dst, MIGRATE_TIMEOUT_MS);
    cr_assert_str_eq(json_object_get_string(it_jget(res->dst, "status")),
                     "completed");
    cr_assert_eq(it_relay_wait(fx.relay, 30000), 0);

    json_object *rep = res->report = it_relay_report(fx.relay);
    g_free(log);
    log = it_relay_log_text(fx.relay);
    cr_assert_str_eq(json_object_get_string(it_jget(rep, "outcome")),
                     "completed", "relay log:\n%s", log);
    cr_assert_eq(json_object_array_length(it_jget(rep, "errors")), 0,
                 "errors: %s",
                 json_object_to_json_string(it_jget(rep, "errors")));
    cr_assert(!json_object_get_boolean(it_jget(rep, "partial")));
    cr_assert_str_eq(
        json_object_get_string(it_jget(
            json_object_array_get_idx(it_jget(rep, "channels"), 0), "kind")),
        "main");
    cr_assert_eq(jint(rep, "ram.total"), jint(res->src, "ram.total"));
    cr_assert_geq(json_object_array_length(it_jget(rep, "rounds")), 1);
    cr_assert_gt(it_jnum(rep, "total_ms"), 0);

    /* the downtime on the wire next to QEMU's (docs/relay.md) */
    json_object *dt = it_jget(rep, "downtime_ms");
    cr_assert_not_null(dt, "no downtime_ms in the report");
    double wire = json_object_get_double(dt);
    gint64 qemu = jint(res->src, "downtime");
    json_object *answer = it_jget(rep, "downtime.until_answer_ms");
    g_printerr("relay-downtime case=%s qemu_ms=%" G_GINT64_FORMAT
               " wire_ms=%.3f end=%s until_answer_ms=%.1f"
               " total_qemu_ms=%" G_GINT64_FORMAT " total_wire_ms=%.1f\n",
               c->name, qemu, wire,
               json_object_get_string(it_jget(rep, "downtime.end_marker")),
               answer ? json_object_get_double(answer) : -1.0,
               jint(res->src, "total-time"), it_jnum(rep, "total_ms"));
    /* Same order as QEMU's, not a timing: when the stop-and-copy is large
     * (zero_pages_off_100 sends full zero pages) the relay reads the last
     * bytes only as fast as the destination drains its queue, so the wire
     * value can exceed QEMU's by that drain (up to ~100 ms seen). */
    /* It starts at the main channel's last pre-copy read, before the
     * read that carries the first stop-and-copy record (docs/relay.md):
     * never 0, whatever QEMU buffered (it read 0.0 in several modes). */
    cr_assert_gt(wire, 0,
                 "wire downtime %.3f ms (QEMU %" G_GINT64_FORMAT
                 " ms), ended by %s",
                 wire, qemu,
                 json_object_get_string(it_jget(rep, "downtime.end_marker")));
    cr_assert_leq(wire, qemu + 500,
                  "wire downtime %.1f ms, QEMU %" G_GINT64_FORMAT " ms", wire,
                  qemu);

    if (metrics_to_stdout(c)) {
        /* every line of its stdout is a metrics line; logs stayed on
         * stderr */
        check_metrics_file(fx.relay->out);
        cr_assert(
            json_object_get_boolean(it_jget(rep, "outputs.metrics.stdout")));
        cr_assert(
            json_object_get_boolean(it_jget(rep, "outputs.metrics.complete")));
        cr_assert(!g_file_test(fx.relay->metrics, G_FILE_TEST_EXISTS));
    } else {
        check_metrics_file(fx.relay->metrics);
    }
    check_capture(rep);

    switch (c->mem) {
    case MEM_SOURCE:
        it_assert_same_ram(fx.src, fx.dst, RAM_BYTES, fx.dir);
        break;
    case MEM_STREAM: {
        g_autofree char *stream =
            g_build_filename(fx.relay->capture, "s1-c0-to-dst.bin", NULL);
        g_autofree char *ram = g_build_filename(fx.dir, "ram", NULL);
        g_autofree char *image = g_build_filename(ram, "pc.ram", NULL);
        json_object_put(it_analyze(stream, ram));
        it_assert_ram_equals(fx.dst, image, RAM_BYTES, fx.dir);
        break;
    }
    case MEM_GUEST:
        break;
    }
}

static void
check_pages_exact(const Result *r)
{
    cr_assert_eq(
        jint(r->report, "ram.pages.normal"), jint(r->src, "ram.normal"),
        "normal pages: wire %" G_GINT64_FORMAT
        ", query-migrate %" G_GINT64_FORMAT,
        jint(r->report, "ram.pages.normal"), jint(r->src, "ram.normal"));
    cr_assert_eq(
        jint(r->report, "ram.pages.zero"), jint(r->src, "ram.duplicate"),
        "zero pages: wire %" G_GINT64_FORMAT ", query-migrate "
        "duplicate %" G_GINT64_FORMAT,
        jint(r->report, "ram.pages.zero"), jint(r->src, "ram.duplicate"));
}

/* A running destination: the workload (verify=1) goes on checking every
 * page; a few passes with no CORRUPT line. */
static void
check_guest_verifies(MpQemu *dst)
{
    const char *path = mp_qemu_console_path(dst);
    gint64 deadline = g_get_monotonic_time() + 20 * G_USEC_PER_SEC;
    guint passes = 0;

    for (;;) {
        g_autofree char *text = NULL;
        g_file_get_contents(path, &text, NULL, NULL);
        cr_assert(!text || !strstr(text, "CORRUPT"),
                  "the guest found corrupt pages after migrating:\n%s", text);
        passes = 0;
        for (const char *p = text; p && (p = strstr(p, "verify pass=")); p++)
            passes++;
        if (passes >= 3)
            break;
        cr_assert(g_get_monotonic_time() < deadline,
                  "the guest verified only %u passes on the destination:\n%s",
                  passes, text ? text : "");
        g_usleep(200000);
    }
}

static void
check_postcopy(const Result *r)
{
    gint64 requests = jint(r->report, "postcopy.requests");
    cr_assert_gt(jint(r->src, "ram.postcopy-requests"), 0,
                 "QEMU sent no page request");
    cr_assert_eq(requests, jint(r->src, "ram.postcopy-requests"),
                 "page requests: wire %" G_GINT64_FORMAT
                 ", query-migrate %" G_GINT64_FORMAT,
                 requests, jint(r->src, "ram.postcopy-requests"));
    gint64 n = jint(r->report, "postcopy.latency_us.count");
    cr_assert_leq(n, requests);
    if (n) {
        cr_assert_leq(jint(r->report, "postcopy.latency_us.p50"),
                      jint(r->report, "postcopy.latency_us.p99"));
        cr_assert_leq(jint(r->report, "postcopy.latency_us.p99"),
                      jint(r->report, "postcopy.latency_us.max"));
    }
    g_printerr("relay-postcopy requests=%" G_GINT64_FORMAT
               " answered=%" G_GINT64_FORMAT " p50_us=%s p99_us=%s max_us=%s\n",
               requests, n,
               json_object_to_json_string(
                   it_jget(r->report, "postcopy.latency_us.p50")),
               json_object_to_json_string(
                   it_jget(r->report, "postcopy.latency_us.p99")),
               json_object_to_json_string(
                   it_jget(r->report, "postcopy.latency_us.max")));
    check_guest_verifies(fx.dst);
}

Test(relay, precopy_72)
{
    Case c = {.name = "precopy_72",
              .append = "mem=64M rate=4000",
              .downtime_ms = 20,
              .mem = MEM_STREAM};
    Result r = {0};
    run(&c, &r);
    check_pages_exact(&r);
    json_object *rounds = it_jget(r.report, "rounds");
    cr_assert_geq(json_object_array_length(rounds), 2);
    cr_assert_gt(jint(json_object_array_get_idx(rounds, 1), "dirty_pages"), 0);
    cr_assert_not_null(
        it_jget(json_object_array_get_idx(rounds, 0), "throughput_bps"));
    result_clear(&r);
}

/* (its metrics lines go to stdout: `--metrics -`) */
Test(relay, precopy_100)
{
    Case c = {.name = "precopy_100",
              .src_version = "10.0",
              .machine = "pc-q35-10.0",
              .append = "mem=64M rate=4000",
              .downtime_ms = 20,
              .mem = MEM_SOURCE,
              .relay_args = {"--metrics=-"}};
    Result r = {0};
    run(&c, &r);
    check_pages_exact(&r);
    cr_assert_eq(jint(r.report, "commands.SWITCHOVER_START"), 1);
    result_clear(&r);
}

Test(relay, return_path_100)
{
    Case c = {.name = "return_path_100",
              .src_version = "10.0",
              .machine = "pc-q35-10.0",
              .append = "mem=64M rate=4000",
              .caps = {"return-path"},
              .downtime_ms = 20,
              .mem = MEM_SOURCE};
    Result r = {0};
    run(&c, &r);
    check_pages_exact(&r);
    result_clear(&r);
}

/* QEMU 10.0 with zero-page detection off sends every zero page as a full
 * PAGE; the relay sends them on as ZERO records (1 byte instead of 4096)
 * and the destination's memory is still the source's. */
Test(relay, zero_pages_100)
{
    Case c = {.name = "zero_pages_100",
              .src_version = "10.0",
              .machine = "pc-q35-10.0",
              .append = "mem=48M zero=50",
              .zero_page_detection = "none",
              .mem = MEM_SOURCE};
    Result r = {0};
    run(&c, &r);
    check_pages_exact(&r); /* what the source sent: all normal */
    cr_assert_eq(jint(r.report, "ram.pages.zero"), 0);
    gint64 n = jint(r.report, "filters.zero_pages.rewritten");
    gint64 saved = jint(r.report, "filters.zero_pages.bytes_saved");
    /* 128 MiB of guest RAM, the workload's 48 MiB half zero: most pages */
    cr_assert_gt(n, 16384, "%" G_GINT64_FORMAT " pages rewritten", n);
    cr_assert_eq(saved, n * 4095);
    g_printerr("relay-zero-pages rewritten=%" G_GINT64_FORMAT
               " bytes_in=%" G_GINT64_FORMAT " bytes_out=%" G_GINT64_FORMAT
               "\n",
               n, jint(r.report, "filters.bytes_in"),
               jint(r.report, "filters.bytes_out"));
    cr_assert_eq(jint(r.report, "filters.bytes_in")
                     - jint(r.report, "filters.bytes_out"),
                 saved);
    json_object *main = json_object_array_get_idx(it_jget(r.report, "channels"),
                                                  0);
    cr_assert_eq(jint(r.report, "filters.bytes_in"), jint(main, "to_dst.bytes"));
    result_clear(&r);
}

/* --no-zero-pages: every byte as it came. */
Test(relay, zero_pages_off_100)
{
    Case c = {.name = "zero_pages_off_100",
              .src_version = "10.0",
              .machine = "pc-q35-10.0",
              .append = "mem=16M",
              .zero_page_detection = "none",
              .relay_args = {"--no-zero-pages"},
              .mem = MEM_SOURCE};
    Result r = {0};
    run(&c, &r);
    check_pages_exact(&r);
    cr_assert_null(it_jget(r.report, "filters.zero_pages"));
    cr_assert_eq(jint(r.report, "filters.bytes_out"),
                 jint(r.report, "filters.bytes_in")); /* not edited */
    result_clear(&r);
}

Test(relay, precopy_72_to_100)
{
    Case c = {.name = "precopy_72_to_100",
              .dst_version = "10.0",
              .machine = "pc-q35-7.2",
              .append = "mem=48M",
              .mem = MEM_SOURCE};
    Result r = {0};
    run(&c, &r);
    check_pages_exact(&r);
    result_clear(&r);
}

Test(relay, xbzrle_72)
{
    Case c = {.name = "xbzrle_72",
              .append = "mem=64M rate=3000 touch=64",
              .caps = {"xbzrle"},
              .downtime_ms = 20,
              /* 7.2 sends deltas from round 3 on: slow enough for it */
              .bandwidth = 32 << 20,
              .mem = MEM_STREAM};
    Result r = {0};
    run(&c, &r);
    check_pages_exact(&r);
    /* 7.2's byte counter is exact (docs/qemu-quirks.md) */
    gint64 xp = jint(r.report, "ram.pages.xbzrle");
    cr_assert_gt(xp, 0, "no XBZRLE page on the wire");
    cr_assert_eq(jint(r.report, "ram.bytes_by_kind.xbzrle") - 8 * xp
                     + 4096 * jint(r.src, "xbzrle-cache.overflow"),
                 jint(r.src, "xbzrle-cache.bytes"));
    result_clear(&r);
}

/* 7.2's compress mode loses pages on busy guests even direct, and its
 * counters overcount (stream reference): a quiet guest, the counts as
 * bounds. */
Test(relay, compress_72)
{
    Case c = {.name = "compress_72",
              .append = "mem=48M",
              .caps = {"compress"},
              .mem = MEM_SOURCE};
    Result r = {0};
    run(&c, &r);
    gint64 comp = jint(r.report, "ram.pages.compressed");
    cr_assert_gt(comp, 0, "no compressed page on the wire");
    cr_assert_leq(comp, jint(r.src, "compression.pages"));
    cr_assert_leq(jint(r.report, "ram.pages.zero"),
                  jint(r.src, "ram.duplicate"));
    result_clear(&r);
}

static void
check_multifd_channels(json_object *report, guint n)
{
    json_object *chans = it_jget(report, "channels");
    guint mfd = 0;
    for (size_t i = 0; i < json_object_array_length(chans); i++)
        mfd += g_strcmp0(json_object_get_string(it_jget(
                             json_object_array_get_idx(chans, i), "kind")),
                         "multifd")
               == 0;
    cr_assert_eq(mfd, n);
    cr_assert_eq(jint(report, "multifd.channels"), n);
}

/* 7.2 can send a page twice on multifd while counting it once (stream
 * reference): pages on the wire >= normal, within 1 %; the bytes are
 * exact.  A quiet guest: memory is compared with the source. */
Test(relay, multifd_72)
{
    Case c = {.name = "multifd_72",
              .append = "mem=64M",
              .caps = {"multifd"},
              .multifd_channels = 4,
              .mem = MEM_SOURCE};
    Result r = {0};
    run(&c, &r);
    check_multifd_channels(r.report, 4);
    cr_assert_eq(
        jint(r.report, "multifd.bytes"), jint(r.src, "ram.multifd-bytes"),
        "multifd bytes: wire %" G_GINT64_FORMAT
        ", query-migrate %" G_GINT64_FORMAT,
        jint(r.report, "multifd.bytes"), jint(r.src, "ram.multifd-bytes"));
    gint64 wire = jint(r.report, "ram.pages.normal"),
           normal = jint(r.src, "ram.normal");
    cr_assert_geq(wire, normal);
    cr_assert_leq(wire * 100, normal * 101,
                  "wire %" G_GINT64_FORMAT
                  " normal pages, query-migrate %" G_GINT64_FORMAT,
                  wire, normal);
    cr_assert_eq(jint(r.report, "ram.pages.zero"),
                 jint(r.src, "ram.duplicate"));
    result_clear(&r);
}

/* QEMU 10.0 counts each channel's 64-byte init in multifd-bytes, 7.2 does
 * not (docs/relay.md). */
Test(relay, multifd_100)
{
    Case c = {.name = "multifd_100",
              .src_version = "10.0",
              .machine = "pc-q35-10.0",
              .append = "mem=64M rate=3000",
              .caps = {"multifd"},
              .multifd_channels = 4,
              .downtime_ms = 20,
              .mem = MEM_SOURCE};
    Result r = {0};
    run(&c, &r);
    check_multifd_channels(r.report, 4);
    check_pages_exact(&r);
    cr_assert_eq(jint(r.report, "multifd.bytes")
                     + jint(r.report, "multifd.init_bytes"),
                 jint(r.src, "ram.multifd-bytes"));
    result_clear(&r);
}

/* Compressed multifd (10.0): one zstd or zlib stream per channel.  The
 * stop-and-copy pages travel on the multifd channels while the main
 * channel holds its END section in QEMU's buffer: the wire downtime must
 * still start at the stop (it read 0 ms against QEMU's 61). */
static void
multifd_compressed(const char *name, const char *method)
{
    Case c = {.name = name,
              .src_version = "10.0",
              .machine = "pc-q35-10.0",
              .append = "mem=64M rate=3000",
              .caps = {"multifd"},
              .multifd_channels = 4,
              .multifd_compression = method,
              .downtime_ms = 20,
              .mem = MEM_SOURCE};
    Result r = {0};
    run(&c, &r);
    check_multifd_channels(r.report, 4);
    check_pages_exact(&r);
    result_clear(&r);
}

Test(relay, multifd_zstd_100)
{
    multifd_compressed("multifd_zstd_100", "zstd");
}

Test(relay, multifd_zlib_100)
{
    multifd_compressed("multifd_zlib_100", "zlib");
}

/* No --queue, no --rate: the read-ahead holds the guest's RAM (MEM_SIZE
 * of the stream); the source is held to 32 MiB/s by its max-bandwidth on
 * loopback, so the path to the destination never held the relay back and
 * nothing is paced (issue 9, item 14). */
static void
check_auto_priority(const Result *r)
{
    gint64 ram = jint(r->report, "priority.ram_bytes");
    cr_assert_str_eq(json_object_get_string(
                         it_jget(r->report, "priority.queue_source")),
                     "auto");
    cr_assert_geq(ram, 64 << 20, "ram_bytes %" G_GINT64_FORMAT, ram);
    cr_assert_geq(jint(r->report, "priority.queue_bytes"), ram);
    cr_assert_gt(jint(r->report, "priority.mem_available"), 0);
    cr_assert_str_eq(json_object_get_string(
                         it_jget(r->report, "priority.rate_source")),
                     "none");
    cr_assert_eq(jint(r->report, "priority.rate_bps"), 0);
}

Test(relay, postcopy_72)
{
    Case c = {.name = "postcopy_72",
              .append = "mem=64M rate=5000 verify=1",
              .caps = {"postcopy-ram"},
              .bandwidth = 32 << 20,
              .postcopy_after_ms = 500,
              .mem = MEM_GUEST};
    Result r = {0};
    run(&c, &r);
    check_pages_exact(&r);
    check_postcopy(&r);
    check_auto_priority(&r);
    cr_assert_not_null(it_jget(r.report, "downtime.end_marker"));
    result_clear(&r);
}

/* The relay is the bottleneck (--rate below the source's bandwidth), so
 * its queue fills and a requested page goes ahead of it: moved, its
 * CONTINUE rewritten, and the guest, running on the destination, still
 * finds every page right. */
static void
check_priority(const Result *r, const char *name)
{
    g_printerr("relay-priority case=%s requests=%" G_GINT64_FORMAT
               " moved=%" G_GINT64_FORMAT " from_queue=%" G_GINT64_FORMAT
               " on_arrival=%" G_GINT64_FORMAT " bytes_jumped=%" G_GINT64_FORMAT
               " names=%" G_GINT64_FORMAT " latency_p50_us=%" G_GINT64_FORMAT
               " moved_latency_us p50=%" G_GINT64_FORMAT " p99=%" G_GINT64_FORMAT
               "\n",
               name, jint(r->report, "priority.requests"),
               jint(r->report, "priority.moved"),
               jint(r->report, "priority.moved_from_queue"),
               jint(r->report, "priority.moved_on_arrival"),
               jint(r->report, "priority.bytes_jumped"),
               jint(r->report, "priority.names_written"),
               jint(r->report, "postcopy.latency_us.p50"),
               jint(r->report, "priority.latency_us.p50"),
               jint(r->report, "priority.latency_us.p99"));
    cr_assert_eq(jint(r->report, "priority.latency_us.count"),
                 jint(r->report, "priority.moved"));
    cr_assert(json_object_get_boolean(it_jget(r->report, "priority.enabled")));
    cr_assert(
        json_object_get_boolean(it_jget(r->report, "priority.notsent_lowat")),
        "TCP_NOTSENT_LOWAT was not set on the destination's socket");
    cr_assert_eq(jint(r->report, "priority.rate_bps"), 80000000);
    cr_assert_eq(jint(r->report, "priority.requests"),
                 jint(r->report, "postcopy.requests"));
    cr_assert_gt(jint(r->report, "priority.moved"), 0);
    cr_assert_gt(jint(r->report, "priority.bytes_jumped"), 0);
}

Test(relay, priority_72)
{
    Case c = {.name = "priority_72",
              .append = "mem=48M rate=5000 verify=1",
              .caps = {"postcopy-ram"},
              .bandwidth = 32 << 20,
              .postcopy_after_ms = 500,
              .relay_args = {"--rate", "80mbit", "--queue", "4M"},
              .mem = MEM_GUEST};
    Result r = {0};
    run(&c, &r);
    check_pages_exact(&r);
    check_postcopy(&r);
    check_priority(&r, c.name);
    result_clear(&r);
}

Test(relay, priority_100)
{
    Case c = {.name = "priority_100",
              .src_version = "10.0",
              .machine = "pc-q35-10.0",
              .append = "mem=48M rate=5000 verify=1",
              .caps = {"postcopy-ram"},
              .bandwidth = 32 << 20,
              .postcopy_after_ms = 500,
              .relay_args = {"--rate", "80mbit", "--queue", "4M"},
              .mem = MEM_GUEST};
    Result r = {0};
    run(&c, &r);
    check_pages_exact(&r);
    check_postcopy(&r);
    check_priority(&r, c.name);
    result_clear(&r);
}

static void
check_preempt_channel(json_object *report)
{
    json_object *chans = it_jget(report, "channels");
    cr_assert_eq(json_object_array_length(chans), 2,
                 "main and preempt expected: %s",
                 json_object_to_json_string(chans));
    const char *kind = json_object_get_string(
        it_jget(json_object_array_get_idx(chans, 1), "kind"));
    /* a preempt channel the source never used has no kind */
    cr_assert(g_strcmp0(kind, "preempt") == 0
                  || g_strcmp0(kind, "unknown") == 0,
              "channel 1 is %s", kind);
}

Test(relay, preempt_72)
{
    Case c = {.name = "preempt_72",
              .append = "mem=64M rate=5000 verify=1",
              .caps = {"postcopy-ram", "postcopy-preempt"},
              .bandwidth = 32 << 20,
              .postcopy_after_ms = 500,
              .mem = MEM_GUEST};
    Result r = {0};
    run(&c, &r);
    check_pages_exact(&r);
    check_preempt_channel(r.report);
    check_postcopy(&r);
    check_auto_priority(&r);
    result_clear(&r);
}

Test(relay, preempt_100)
{
    Case c = {.name = "preempt_100",
              .src_version = "10.0",
              .machine = "pc-q35-10.0",
              .append = "mem=64M rate=5000 verify=1",
              .caps = {"postcopy-ram", "postcopy-preempt"},
              .bandwidth = 32 << 20,
              .postcopy_after_ms = 500,
              .mem = MEM_GUEST};
    Result r = {0};
    run(&c, &r);
    check_pages_exact(&r);
    check_preempt_channel(r.report);
    check_postcopy(&r);
    result_clear(&r);
}

/* Block migration (7.2): the destination's disk equals the source's. */
Test(relay, block_72)
{
    g_autofree char *sdisk = g_build_filename(fx.dir, "src.raw", NULL);
    g_autofree char *ddisk = g_build_filename(fx.dir, "dst.raw", NULL);
    g_autofree char *sdrive =
        g_strdup_printf("file=%s,format=raw,if=none,id=d0", sdisk);
    g_autofree char *ddrive =
        g_strdup_printf("file=%s,format=raw,if=none,id=d0", ddisk);
    const char *sextra[] = {"-drive", sdrive, "-device",
                            "virtio-blk-pci,drive=d0", NULL};
    const char *dextra[] = {"-drive", ddrive, "-device",
                            "virtio-blk-pci,drive=d0", NULL};
    gsize size = 16u << 20, data_len = 6u << 20;
    g_autofree guint8 *data = g_malloc0(size);
    for (gsize i = 0; i < data_len; i++)
        data[i] = (guint8)(i * 2654435761u >> 13);
    cr_assert(g_file_set_contents(sdisk, (char *)data, size, NULL));
    g_autofree guint8 *zero = g_malloc0(size);
    cr_assert(g_file_set_contents(ddisk, (char *)zero, size, NULL));

    Case c = {.name = "block_72",
              .append = "mem=32M",
              .caps = {"zero-blocks"},
              .blk = TRUE,
              .src_extra = sextra,
              .dst_extra = dextra,
              .mem = MEM_SOURCE};
    Result r = {0};
    run(&c, &r);
    check_pages_exact(&r);
    cr_assert_eq(jint(r.report, "disk.chunks"), 16);
    cr_assert_eq(jint(r.report, "disk.zero_chunks"), 10);
    cr_assert_eq(jint(r.report, "disk.data_bytes"), 6 << 20);
    g_clear_pointer(&fx.dst, mp_qemu_free); /* quit: the disk is flushed */
    g_autofree char *got = NULL;
    gsize got_len = 0;
    cr_assert(g_file_get_contents(ddisk, &got, &got_len, NULL));
    cr_assert_eq(got_len, size);
    cr_assert(memcmp(got, data, size) == 0,
              "the destination's disk differs from the source's");
    result_clear(&r);
}

/* Post-copy recovery: the relay dies in post-copy, both QEMUs pause, and
 * the migration resumes through a new relay over a new main connection
 * that carries no header (stream reference 8.4). */
Test(relay, postcopy_recovery_72)
{
    g_autoptr(GError) err = NULL;

    fx.src =
        it_start_workload("7.2", NULL, 128, "mem=64M rate=5000 verify=1", NULL);
    fx.dst = it_start_destination("7.2", NULL, TRUE, NULL);
    guint16 dport = mp_qemu_pick_free_port(&err);
    cr_assert(dport, "%s", err ? err->message : "?");
    fx.relay = it_relay_start(fx.dir, dport, NULL);
    it_cap(fx.src, "postcopy-ram");
    it_cap(fx.dst, "postcopy-ram");
    it_incoming(fx.dst, dport);
    it_set_int(fx.src, "max-bandwidth", 32 << 20);
    it_set_int(fx.src, "max-postcopy-bandwidth", 8 << 20);
    it_migrate(fx.src, fx.relay->port, FALSE);
    it_start_postcopy(fx.src, 500);
    it_wait_status(fx.src, "postcopy-active", 10000);
    g_usleep(1000 * 1000);

    /* the connection breaks: both sides pause */
    kill(fx.relay->pid, SIGKILL);
    it_wait_status(fx.src, "postcopy-paused", 20000);
    it_wait_status(fx.dst, "postcopy-paused", 20000);

    /* resume through a new relay */
    guint16 dport2 = mp_qemu_pick_free_port(&err);
    cr_assert(dport2, "%s", err ? err->message : "?");
    g_autofree char *dir2 = g_build_filename(fx.dir, "recovery", NULL);
    g_mkdir(dir2, 0755);
    ItRelay *relay2 = fx.relay2 = it_relay_start(dir2, dport2, NULL);
    it_postcopy_recover(fx.src, fx.dst, dport2, relay2->port);

    json_object *info = it_wait_final(fx.src, MIGRATE_TIMEOUT_MS);
    g_autofree char *log2 = it_relay_log_text(relay2);
    cr_assert_str_eq(json_object_get_string(it_jget(info, "status")),
                     "completed", "%s\nrelay log:\n%s",
                     json_object_to_json_string(info), log2);
    json_object *dinfo = it_wait_final(fx.dst, MIGRATE_TIMEOUT_MS);
    cr_assert_str_eq(json_object_get_string(it_jget(dinfo, "status")),
                     "completed");
    int rc = it_relay_wait(relay2, 30000);
    json_object *rep = it_relay_report(relay2);
    g_free(log2);
    log2 = it_relay_log_text(relay2);
    cr_assert_eq(rc, 0, "%s", log2);
    cr_assert_str_eq(
        json_object_get_string(it_jget(
            json_object_array_get_idx(it_jget(rep, "channels"), 0), "kind")),
        "recovery");
    cr_assert_str_eq(json_object_get_string(it_jget(rep, "outcome")),
                     "completed");
    g_printerr("relay-recovery requests=%" G_GINT64_FORMAT
               " (query-migrate %" G_GINT64_FORMAT ") partial=%d\n",
               it_jint(rep, "postcopy.requests"),
               it_jint(info, "ram.postcopy-requests"),
               json_object_get_boolean(it_jget(rep, "partial")));
    check_guest_verifies(fx.dst);
    json_object_put(rep);
    json_object_put(info);
    json_object_put(dinfo);
}

/* TLS (tls-creds, here a pre-shared key): the relay cannot parse, it
 * forwards every channel byte for byte and says so. */
Test(relay, tls_72)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *keys = g_build_filename(fx.dir, "keys.psk", NULL);
    cr_assert(g_file_set_contents(
        keys, "qemu:0123456789abcdef0123456789abcdef\n", -1, NULL));
    g_autofree char *server =
        g_strdup_printf("tls-creds-psk,id=tls0,endpoint=server,dir=%s", fx.dir);
    g_autofree char *client =
        g_strdup_printf("tls-creds-psk,id=tls0,endpoint=client,dir=%s", fx.dir);
    const char *sextra[] = {"-object", client, NULL};
    const char *dextra[] = {"-object", server, NULL};

    fx.src = it_start_workload("7.2", NULL, 128, "mem=32M", sextra);
    fx.dst = it_start_destination("7.2", NULL, FALSE, dextra);
    guint16 dport = mp_qemu_pick_free_port(&err);
    cr_assert(dport, "%s", err ? err->message : "?");
    fx.relay = it_relay_start(fx.dir, dport, NULL);
    cr_assert(mp_qemu_set_parameter_str(fx.src, "tls-creds", "tls0", &err),
              "%s", err ? err->message : "?");
    cr_assert(mp_qemu_set_parameter_str(fx.dst, "tls-creds", "tls0", &err),
              "%s", err ? err->message : "?");
    it_incoming(fx.dst, dport);
    it_migrate(fx.src, fx.relay->port, FALSE);
    json_object *info = it_wait_final(fx.src, MIGRATE_TIMEOUT_MS);
    cr_assert_str_eq(json_object_get_string(it_jget(info, "status")),
                     "completed");
    json_object *dinfo = it_wait_final(fx.dst, MIGRATE_TIMEOUT_MS);
    cr_assert_str_eq(json_object_get_string(it_jget(dinfo, "status")),
                     "completed");
    cr_assert_eq(it_relay_wait(fx.relay, 30000), 0);
    json_object *rep = it_relay_report(fx.relay);
    cr_assert_str_eq(json_object_get_string(it_jget(rep, "outcome")),
                     "ended cleanly (TLS, not parsed)");
    cr_assert(json_object_get_boolean(it_jget(rep, "partial")));
    json_object *ch0 = json_object_array_get_idx(it_jget(rep, "channels"), 0);
    cr_assert_str_eq(json_object_get_string(it_jget(ch0, "kind")), "tls");
    cr_assert_gt(it_jnum(ch0, "to_dst.bytes"), 1 << 20);
    it_assert_same_ram(fx.src, fx.dst, RAM_BYTES, fx.dir);
    json_object_put(rep);
    json_object_put(info);
    json_object_put(dinfo);
}
