/* test-analyze.c: `migproxy analyze` on streams captured from real QEMU.
 *
 * Each case boots the workload guest in QEMU (TCG), migrates it with
 * `migrate "exec:cat > FILE"`, then checks the analysis of FILE against
 * QEMU's own query-migrate counters (exactly), and the --dump-ram image
 * against the source guest's memory (pmemsave) byte for byte.  The source
 * is paused once the migration completes, so its memory is what the
 * stream carried.
 */
#include "config.h"
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <glib/gstdio.h>
#include <criterion/criterion.h>
#include "itest-util.h"

#define MIGRATE_TIMEOUT_MS (240 * 1000)

static struct {
    MpQemu *src, *dst;
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
    g_clear_pointer(&fx.src, mp_qemu_free);
    g_clear_pointer(&fx.dst, mp_qemu_free);
    if (fx.dir)
        tu_remove_tree(fx.dir);
    g_clear_pointer(&fx.dir, g_free);
}

TestSuite(analyze, .init = fx_init, .fini = fx_fini, .timeout = 600);

typedef struct {
    const char *version;
    const char *machine;
    guint mem_mib;
    const char *append;
    const char *caps[4];
    gint64 downtime_ms; /* 0: QEMU's default */
    gint64 bandwidth;   /* bytes/s; 0: 256 MiB/s */
    const char *const *extra_args;
    gboolean blk; /* 7.2 block migration of the guest's disks */
} Case;

static json_object *
jget(json_object *o, const char *path)
{
    g_auto(GStrv) parts = g_strsplit(path, ".", -1);
    for (guint i = 0; parts[i]; i++)
        cr_assert(json_object_object_get_ex(o, parts[i], &o), "no %s", path);
    return o;
}

/* Migrates fx.src to a file; returns query-migrate's final answer. */
static json_object *
capture(const Case *c, const char *stream)
{
    g_autoptr(GError) err = NULL;
    json_object *info = NULL;

    fx.src = it_start_workload(c->version, c->machine, c->mem_mib, c->append,
                               c->extra_args);
    for (guint i = 0; i < G_N_ELEMENTS(c->caps) && c->caps[i]; i++)
        cr_assert(mp_qemu_set_capability(fx.src, c->caps[i], TRUE, &err),
                  "%s", err ? err->message : "?");
    cr_assert(mp_qemu_set_parameter_int(fx.src, "max-bandwidth",
                                        c->bandwidth ? c->bandwidth
                                                     : 256 << 20,
                                        &err),
              "%s", err ? err->message : "?");
    if (c->downtime_ms)
        cr_assert(mp_qemu_set_parameter_int(fx.src, "downtime-limit",
                                            c->downtime_ms, &err),
                  "%s", err ? err->message : "?");

    g_autofree char *uri = g_strdup_printf("exec:cat > '%s'", stream);
    json_object *args = json_object_new_object();
    json_object_object_add(args, "uri", json_object_new_string(uri));
    if (c->blk)
        json_object_object_add(args, "blk", json_object_new_boolean(TRUE));
    json_object *ret = mp_qemu_execute(fx.src, "migrate", args, &err);
    json_object_put(args);
    cr_assert_not_null(ret, "migrate: %s", err ? err->message : "?");
    json_object_put(ret);
    cr_assert(mp_qemu_wait_migration(fx.src, MIGRATE_TIMEOUT_MS, &info, &err),
              "%s", err ? err->message : "?");
    cr_assert_str_eq(json_object_get_string(jget(info, "status")),
                     "completed");
    return info;
}

/* The checks every case makes; returns the analysis (caller owns). */
static json_object *
check_stream(const Case *c, json_object *info, const char *stream,
             const char *dump)
{
    json_object *doc = it_analyze(stream, dump);
    json_object *errs = jget(doc, "errors");

    cr_assert_eq(json_object_array_length(errs), 0, "analysis errors: %s",
                 json_object_to_json_string(errs));
    cr_assert(json_object_get_boolean(jget(doc, "stream.complete")));
    g_autofree char *machine = g_strdup_printf(
        "pc-q35-%s", c->machine ? c->machine + strlen("pc-q35-") : c->version);
    cr_assert_str_eq(json_object_get_string(jget(doc, "stream.machine")),
                     machine);
    cr_assert_eq(it_jint(doc, "ram.pages.normal"),
                 it_jint(info, "ram.normal"),
                 "normal pages: stream %" G_GINT64_FORMAT
                 ", query-migrate %" G_GINT64_FORMAT,
                 it_jint(doc, "ram.pages.normal"), it_jint(info, "ram.normal"));
    cr_assert_eq(it_jint(doc, "ram.pages.zero"),
                 it_jint(info, "ram.duplicate"),
                 "zero pages: stream %" G_GINT64_FORMAT
                 ", query-migrate duplicate %" G_GINT64_FORMAT,
                 it_jint(doc, "ram.pages.zero"), it_jint(info, "ram.duplicate"));
    cr_assert_eq(it_jint(doc, "ram.total"), it_jint(info, "ram.total"));
    cr_assert_gt(json_object_array_length(jget(doc, "devices")), 10);
    /* every device section was sliced by the vmdesc */
    json_object *devs = jget(doc, "devices");
    for (size_t i = 0; i < json_object_array_length(devs); i++)
        cr_assert_not_null(jget(json_object_array_get_idx(devs, i), "bytes"),
                           "device %zu has no size", i);
    return doc;
}

/* Loads `stream` into a paused QEMU of `version` (machine of the stream)
 * and waits for it; the destination is fx.dst. */
static void
load_into(const char *version, const char *machine, const char *stream)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *incoming = g_strdup_printf("exec:cat '%s'", stream);
    MpQemuConfig dcfg = {.version = version, .label = "dst",
                         .machine = machine, .memory_mib = 128,
                         .paused = TRUE, .incoming = incoming};
    json_object *dinfo = NULL;

    fx.dst = mp_qemu_start(&dcfg, &err);
    cr_assert_not_null(fx.dst, "%s", err ? err->message : "?");
    cr_assert(mp_qemu_wait_migration(fx.dst, MIGRATE_TIMEOUT_MS, &dinfo, &err),
              "%s", err ? err->message : "?");
    cr_assert_str_eq(json_object_get_string(jget(dinfo, "status")),
                     "completed");
    json_object_put(dinfo);
}

/* What the stream means is what a destination holds after loading it.
 * QEMU 7.2 under TCG misses pages that a busy guest dirties (a direct
 * 7.2-to-7.2 migration shows the same; see docs/qemu-quirks.md), so a
 * busy 7.2 stream is checked against a 7.2 destination, everything else
 * against the source itself. */
static void
check_image(const Case *c, const char *stream, const char *image,
            gboolean busy)
{
    if (busy && g_strcmp0(c->version, "7.2") == 0) {
        load_into("7.2", c->machine, stream);
        it_assert_ram_equals(fx.dst, image, (guint64)c->mem_mib << 20,
                             fx.dir);
    } else {
        it_assert_ram_equals(fx.src, image, (guint64)c->mem_mib << 20,
                             fx.dir);
    }
}

static void
run_case(const Case *c, gboolean expect_rounds)
{
    g_autofree char *stream = g_build_filename(fx.dir, "stream.mig", NULL);
    g_autofree char *dump = g_build_filename(fx.dir, "ram", NULL);
    g_autofree char *image = g_build_filename(dump, "pc.ram", NULL);
    json_object *info = capture(c, stream);
    json_object *doc = check_stream(c, info, stream, dump);

    if (expect_rounds) {
        json_object *rounds = jget(doc, "rounds");
        cr_assert_geq(json_object_array_length(rounds), 2);
        cr_assert_gt(it_jint(json_object_array_get_idx(rounds, 1),
                             "dirty_pages"),
                     0);
    }
    check_image(c, stream, image, expect_rounds);
    json_object_put(doc);
    json_object_put(info);
}

Test(analyze, precopy_idle_72)
{
    Case c = {.version = "7.2", .mem_mib = 128, .append = "mem=48M"};
    run_case(&c, FALSE);
}

Test(analyze, precopy_busy_72)
{
    Case c = {.version = "7.2", .mem_mib = 128,
              .append = "mem=64M rate=6000", .downtime_ms = 20};
    run_case(&c, TRUE);
}

Test(analyze, xbzrle_72)
{
    g_autofree char *stream = g_build_filename(fx.dir, "x.mig", NULL);
    g_autofree char *dump = g_build_filename(fx.dir, "ram", NULL);
    g_autofree char *image = g_build_filename(dump, "pc.ram", NULL);
    Case c = {.version = "7.2", .mem_mib = 128,
              .append = "mem=64M rate=3000 touch=64",
              .caps = {"xbzrle"}, .downtime_ms = 20,
              /* 7.2 fills its cache in round 2 and sends deltas from
               * round 3 on: slow enough for three rounds */
              .bandwidth = 32 << 20};
    json_object *info = capture(&c, stream);
    json_object *doc = check_stream(&c, info, stream, dump);

    /* 7.2 counts xbzrle-cache.pages before encoding (so unchanged and
     * overflowing pages too), but its byte counter is exact: the XBZRLE
     * records less their 8-byte address, plus a page per overflow. */
    gint64 xp = it_jint(doc, "ram.pages.xbzrle");
    cr_assert_gt(xp, 0, "no XBZRLE pages in the stream");
    cr_assert_leq(xp + it_jint(info, "xbzrle-cache.overflow"),
                  it_jint(info, "xbzrle-cache.pages"));
    cr_assert_eq(it_jint(doc, "ram.bytes_by_kind.xbzrle") - 8 * xp
                     + 4096 * it_jint(info, "xbzrle-cache.overflow"),
                 it_jint(info, "xbzrle-cache.bytes"));
    check_image(&c, stream, image, TRUE);
    json_object_put(doc);
    json_object_put(info);
}

/* QEMU 7.2's compress mode loses pages on busy guests even without a
 * proxy, and its counters overcount (see the stream reference): a quiet
 * guest, and the page counts checked against the records on the wire. */
Test(analyze, compress_72)
{
    g_autofree char *stream = g_build_filename(fx.dir, "c.mig", NULL);
    g_autofree char *dump = g_build_filename(fx.dir, "ram", NULL);
    g_autofree char *image = g_build_filename(dump, "pc.ram", NULL);
    Case c = {.version = "7.2", .mem_mib = 128, .append = "mem=48M",
              .caps = {"compress"}};
    json_object *info = capture(&c, stream);
    json_object *doc = it_analyze(stream, dump);

    cr_assert_eq(json_object_array_length(jget(doc, "errors")), 0);
    gint64 comp = it_jint(doc, "ram.pages.compressed");
    cr_assert_gt(comp, 0, "no compressed pages in the stream");
    cr_assert_leq(comp, it_jint(info, "compression.pages"));
    cr_assert_leq(it_jint(doc, "ram.pages.zero"),
                  it_jint(info, "ram.duplicate"));

    /* the wire, counted a second way: one line per record */
    g_autofree char *events = NULL;
    const char *argv[] = {it_migproxy(), "analyze", "--events", stream, NULL};
    int status;
    cr_assert(g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_STDERR_TO_DEV_NULL,
                           NULL, NULL, &events, NULL, &status, NULL));
    gint64 lines = 0;
    for (const char *p = events; (p = strstr(p, "kind=compressed")); p++)
        lines++;
    cr_assert_eq(lines, comp);
    it_assert_ram_equals(fx.src, image, 128u << 20, fx.dir);
    json_object_put(doc);
    json_object_put(info);
}

Test(analyze, block_migration_72)
{
    g_autofree char *disk = g_build_filename(fx.dir, "disk.raw", NULL);
    g_autofree char *stream = g_build_filename(fx.dir, "b.mig", NULL);
    g_autofree char *dump = g_build_filename(fx.dir, "ram", NULL);
    g_autofree char *image = g_build_filename(dump, "pc.ram", NULL);
    g_autofree char *drive =
        g_strdup_printf("file=%s,format=raw,if=none,id=d0", disk);
    const char *extra[] = {"-drive", drive, "-device",
                           "virtio-blk-pci,drive=d0", NULL};

    /* 16 MiB: 6 MiB of data, the rest zero */
    gsize data_len = 6u << 20;
    g_autofree guint8 *data = g_malloc0(16u << 20);
    for (gsize i = 0; i < data_len; i++)
        data[i] = (guint8)(i * 2654435761u >> 13);
    cr_assert(g_file_set_contents(disk, (char *)data, 16u << 20, NULL));

    Case c = {.version = "7.2", .mem_mib = 128, .append = "mem=32M",
              .caps = {"zero-blocks"}, .extra_args = extra, .blk = TRUE};
    json_object *info = capture(&c, stream);
    json_object *doc = check_stream(&c, info, stream, dump);

    cr_assert_eq(it_jint(doc, "disk.chunks"), 16);
    cr_assert_eq(it_jint(doc, "disk.zero_chunks"), 10);
    cr_assert_eq(it_jint(doc, "disk.data_bytes"), 6 << 20);
    it_assert_ram_equals(fx.src, image, 128u << 20, fx.dir);
    json_object_put(doc);
    json_object_put(info);
}

Test(analyze, precopy_busy_100)
{
    g_autofree char *stream = g_build_filename(fx.dir, "s.mig", NULL);
    g_autofree char *dump = g_build_filename(fx.dir, "ram", NULL);
    g_autofree char *image = g_build_filename(dump, "pc.ram", NULL);
    Case c = {.version = "10.0", .machine = "pc-q35-10.0", .mem_mib = 128,
              .append = "mem=64M rate=6000", .downtime_ms = 20};
    json_object *info = capture(&c, stream);
    json_object *doc = check_stream(&c, info, stream, dump);

    cr_assert_eq(it_jint(doc, "commands.SWITCHOVER_START"), 1);
    cr_assert_geq(json_object_array_length(jget(doc, "rounds")), 2);
    it_assert_ram_equals(fx.src, image, 128u << 20, fx.dir);
    json_object_put(doc);
    json_object_put(info);
}

/* A 7.2 stream loaded by QEMU 10.0: the destination's memory equals the
 * analyzer's image of the same stream. */
Test(analyze, stream_72_into_100)
{
    g_autofree char *stream = g_build_filename(fx.dir, "m.mig", NULL);
    g_autofree char *dump = g_build_filename(fx.dir, "ram", NULL);
    g_autofree char *image = g_build_filename(dump, "pc.ram", NULL);
    Case c = {.version = "7.2", .mem_mib = 128,
              .append = "mem=64M rate=4000", .downtime_ms = 20};
    json_object *info = capture(&c, stream);
    json_object *doc = check_stream(&c, info, stream, dump);

    load_into("10.0", "pc-q35-7.2", stream);
    it_assert_ram_equals(fx.dst, image, 128u << 20, fx.dir);
    json_object_put(doc);
    json_object_put(info);
}

/* ---- hostile files: memory and time bounded, the magic first ---------- */

TestSuite(analyze_hostile, .init = fx_init, .fini = fx_fini, .timeout = 120);

/* Runs `migproxy analyze --json -q path` with its stdout in a file;
 * *maxrss_kib: the child's peak RSS (wait4).  @return the report. */
static json_object *
analyze_rusage(const char *path, long *maxrss_kib)
{
    g_autofree char *out = g_build_filename(fx.dir, "report.json", NULL);
    int status;
    struct rusage ru;
    pid_t pid = fork();

    cr_assert_geq(pid, 0);
    if (pid == 0) {
        int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0 || dup2(fd, STDOUT_FILENO) < 0)
            _exit(127);
        execl(it_migproxy(), it_migproxy(), "analyze", "--json", "-q", path,
              (char *)NULL);
        _exit(127);
    }
    cr_assert_eq(wait4(pid, &status, 0, &ru), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) <= 1,
              "migproxy analyze %s: status 0x%x", path, status);
    *maxrss_kib = ru.ru_maxrss;
    json_object *doc = json_object_from_file(out);
    cr_assert_not_null(doc, "no JSON report for %s", path);
    return doc;
}

static const char *
first_of(json_object *doc, const char *key)
{
    json_object *a = jget(doc, key);
    cr_assert_geq(json_object_array_length(a), 1, "no %s", key);
    return json_object_get_string(json_object_array_get_idx(a, 0));
}

/* A zstd frame of `blocks` RLE blocks of 128 KiB of `byte`: 4 bytes a
 * block, so 16 KiB make 512 MiB. */
static void
write_zstd_bomb(const char *path, const guint8 *prefix, gsize prefix_len,
                guint blocks)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    const guint8 magic[] = {0x28, 0xb5, 0x2f, 0xfd, 0x00, 7 << 3};
    g_byte_array_append(b, magic, sizeof(magic));
    if (prefix_len) {
        /* a raw block with the prefix first */
        guint32 h = (guint32)prefix_len << 3;
        guint8 hdr[3] = {h & 0xff, (h >> 8) & 0xff, h >> 16};
        g_byte_array_append(b, hdr, 3);
        g_byte_array_append(b, prefix, prefix_len);
    }
    for (guint i = 0; i < blocks; i++) {
        guint32 h = (131072u << 3) | (1u << 1) | (i == blocks - 1);
        guint8 blk[4] = {h & 0xff, (h >> 8) & 0xff, h >> 16, 0};
        g_byte_array_append(b, blk, 4);
    }
    cr_assert(g_file_set_contents(path, (const char *)b->data, b->len, NULL));
}

/* 16 KiB of .zst that decompress to 512 MiB of zeros: the magic is checked
 * on the first bytes, before the vmdesc search decompressed it all (which
 * took 1.4 s and a 37 MB peak for "bad magic at offset 0"). */
Test(analyze_hostile, zstd_magic_checked_first)
{
    g_autofree char *path = g_build_filename(fx.dir, "bomb.mig.zst", NULL);
    write_zstd_bomb(path, NULL, 0, 4096);
    long rss;
    json_object *doc = analyze_rusage(path, &rss);
    cr_assert(strstr(first_of(doc, "errors"),
                     "main: bad magic 0x00000000 at offset 0"),
              "%s", first_of(doc, "errors"));
    cr_assert_eq(it_jint(doc, "stream.bytes"), 8);
    if (!IT_ASAN) /* there the RSS is AddressSanitizer's */
        cr_assert_lt(rss, 16 << 10, "peak RSS %ld KiB", rss);
    json_object_put(doc);
}

/* A stream whose vmdesc is 15 MiB of [[],[],...] (798 MB and 4.5 s in
 * json-c): skipped with an anomaly that says why, within the documented
 * analyze bound (README: 16 MiB tail + the 15 MiB vmdesc the parser
 * gathers + buffers). */
Test(analyze_hostile, huge_vmdesc_skipped)
{
    g_autofree char *path = g_build_filename(fx.dir, "vmdesc.mig", NULL);
    g_autoptr(GString) json = g_string_new("{\"devices\":[");
    while (json->len < (15u << 20))
        g_string_append(json, "[],");
    g_string_append(json, "[]]}");
    g_autoptr(GByteArray) b = g_byte_array_new();
    guint8 hdr[14] = {'Q', 'E', 'V', 'M', 0, 0, 0, 3, 0x00, 0x06};
    hdr[10] = json->len >> 24;
    hdr[11] = json->len >> 16;
    hdr[12] = json->len >> 8;
    hdr[13] = json->len;
    g_byte_array_append(b, hdr, sizeof(hdr));
    g_byte_array_append(b, (const guint8 *)json->str, json->len);
    cr_assert(g_file_set_contents(path, (const char *)b->data, b->len, NULL));

    long rss;
    json_object *doc = analyze_rusage(path, &rss);
    cr_assert(strstr(first_of(doc, "anomalies"),
                     "vmdesc: 15728644 bytes of JSON would take about"),
              "%s", first_of(doc, "anomalies"));
    cr_assert(json_object_get_boolean(jget(doc, "stream.vmdesc")));
    if (!IT_ASAN) /* there the RSS is AddressSanitizer's */
        cr_assert_lt(rss, 96 << 10, "peak RSS %ld KiB", rss);
    json_object_put(doc);
}

/* `migproxy analyze ARGS SAMPLE > /dev/full`: a full disk is an error
 * (exit 1, the reason on stderr), not a silently short output; every
 * output form exited 0. */
static void
assert_full_disk_fails(const char *what, const char *arg)
{
    g_autofree char *sample = g_build_filename(
        MP_SOURCE_ROOT, "samples", "streams", "idle-7.2.mig.zst", NULL);
    const char *argv[] = {
        "/bin/sh",     "-c", "exec \"$0\" analyze -q $1 \"$2\" > /dev/full",
        it_migproxy(), arg,  sample,
        NULL};
    g_autofree char *out = NULL, *errout = NULL;
    int status = 0;
    g_autoptr(GError) err = NULL;
    cr_assert(g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_DEFAULT, NULL,
                           NULL, &out, &errout, &status, &err),
              "%s", err ? err->message : "?");
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1,
              "%s to a full disk: status %d, stderr: %s", what, status, errout);
    cr_assert(strstr(errout, "No space left on device"), "%s: stderr: %s", what,
              errout);
}

Test(analyze, output_to_full_disk)
{
    assert_full_disk_fails("summary", "");
    assert_full_disk_fails("--json", "--json");
    assert_full_disk_fails("--events", "--events");
}

/* `migproxy analyze ARGS FILE`: its exit status, stdout and stderr. */
static int
run_analyze(const char *arg, const char *file, char **out, char **errout)
{
    const char *argv[] = {it_migproxy(), "analyze", "-q", arg, file, NULL};
    int status = 0;
    g_autoptr(GError) err = NULL;
    if (!arg[0]) {
        argv[3] = file;
        argv[4] = NULL;
    }
    cr_assert(g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_DEFAULT, NULL,
                           NULL, out, errout, &status, &err),
              "%s", err ? err->message : "?");
    cr_assert(WIFEXITED(status), "status 0x%x", status);
    return WEXITSTATUS(status);
}

/* A file that cannot be opened (3) or is no known format (4): one line on
 * stderr, no summary (issue 12: it printed the summary of an empty
 * stream, "Stream: incomplete (no EOF) ... 0 bytes", with status 1). */
Test(analyze_hostile, no_input_one_line_no_summary)
{
    g_autofree char *missing = g_build_filename(fx.dir, "gone.save", NULL);
    g_autofree char *text = g_build_filename(fx.dir, "notes.mig", NULL);
    g_autofree char *pcap = g_build_filename(fx.dir, "x.mig", NULL);
    /* a pcap of link type 105 (802.11): recognised, not decoded */
    const guint8 pcap_hdr[24] = {0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0,
                                 0,    0,    0,    0,    0, 0, 0, 0,
                                 0,    0,    4,    0,    105};
    cr_assert(g_file_set_contents(text, "not a stream\n", -1, NULL));
    cr_assert(g_file_set_contents(pcap, (const char *)pcap_hdr,
                                  sizeof(pcap_hdr), NULL));
    static const struct {
        const char *arg;
    } forms[] = {{""}, {"--json"}};
    for (guint f = 0; f < G_N_ELEMENTS(forms); f++) {
        struct {
            const char *file;
            int status;
            const char *says;
        } cases[] = {
            {missing, 3, "cannot open: No such file or directory"},
            {text, 4, "not a known format"},
            {pcap, 4, "is not one migproxy decodes"},
        };
        for (guint i = 0; i < G_N_ELEMENTS(cases); i++) {
            g_autofree char *out = NULL, *errout = NULL;
            int st = run_analyze(forms[f].arg, cases[i].file, &out, &errout);
            cr_assert_eq(st, cases[i].status, "%s %s: status %d, stderr %s",
                         forms[f].arg, cases[i].file, st, errout);
            cr_assert(strstr(errout, cases[i].says), "stderr: %s", errout);
            /* one line */
            cr_assert_eq(strchr(errout, '\n'), errout + strlen(errout) - 1,
                         "stderr: %s", errout);
            if (!forms[f].arg[0])
                cr_assert_str_empty(out, "a summary: %s", out);
            else
                cr_assert(strstr(out, "\"input_error\""), "%s", out);
        }
    }
    /* several files: the highest status */
    const char *argv[] = {it_migproxy(), "analyze", "-q", text, missing, NULL};
    int status;
    g_autofree char *o = NULL, *e = NULL;
    cr_assert(g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_DEFAULT, NULL,
                           NULL, &o, &e, &status, NULL));
    cr_assert_eq(WEXITSTATUS(status), 4, "%s", e);
}

/* ---- state files: mapped-ram (issue 12) ------------------------------- */

/* QEMU 10.0 `migrate file:PATH` with mapped-ram, of a stopped guest (as
 * `virsh save` stops it): the file's bitmaps give QEMU's own counts (a
 * page in the file is a normal page, a clear bit a zero page) and
 * --dump-ram the guest's memory. */
static void
run_mapped_ram(gboolean multifd)
{
    g_autofree char *file = g_build_filename(fx.dir, "vm.mig", NULL);
    g_autofree char *dump = g_build_filename(fx.dir, "ram", NULL);
    g_autofree char *image = g_build_filename(dump, "pc.ram", NULL);
    g_autoptr(GError) err = NULL;
    json_object *info = NULL, *ret;

    fx.src = it_start_workload("10.0", "pc-q35-10.0", 128, "mem=64M rate=4000",
                               NULL);
    cr_assert(mp_qemu_set_capability(fx.src, "mapped-ram", TRUE, &err), "%s",
              err ? err->message : "?");
    if (multifd)
        cr_assert(mp_qemu_set_capability(fx.src, "multifd", TRUE, &err), "%s",
                  err ? err->message : "?");
    ret = mp_qemu_execute(fx.src, "stop", NULL, &err);
    cr_assert_not_null(ret, "stop: %s", err ? err->message : "?");
    json_object_put(ret);
    g_autofree char *uri = g_strdup_printf("file:%s", file);
    json_object *args = json_object_new_object();
    json_object_object_add(args, "uri", json_object_new_string(uri));
    ret = mp_qemu_execute(fx.src, "migrate", args, &err);
    json_object_put(args);
    cr_assert_not_null(ret, "migrate: %s", err ? err->message : "?");
    json_object_put(ret);
    cr_assert(mp_qemu_wait_migration(fx.src, MIGRATE_TIMEOUT_MS, &info, &err),
              "%s", err ? err->message : "?");
    cr_assert_str_eq(json_object_get_string(jget(info, "status")),
                     "completed");

    json_object *doc = it_analyze(file, dump);
    json_object *errs = jget(doc, "errors");
    cr_assert_eq(json_object_array_length(errs), 0, "analysis errors: %s",
                 json_object_to_json_string(errs));
    cr_assert_str_eq(json_object_get_string(jget(doc, "format")),
                     "mapped-ram");
    cr_assert(json_object_get_boolean(jget(doc, "stream.complete")));
    cr_assert_str_eq(json_object_get_string(jget(doc, "stream.machine")),
                     "pc-q35-10.0");
    cr_assert_eq(it_jint(doc, "ram.pages.normal"), it_jint(info, "ram.normal"),
                 "normal pages: file %" G_GINT64_FORMAT
                 ", query-migrate %" G_GINT64_FORMAT,
                 it_jint(doc, "ram.pages.normal"), it_jint(info, "ram.normal"));
    cr_assert_eq(it_jint(doc, "ram.pages.zero"), it_jint(info, "ram.duplicate"),
                 "zero pages: file %" G_GINT64_FORMAT
                 ", query-migrate duplicate %" G_GINT64_FORMAT,
                 it_jint(doc, "ram.pages.zero"),
                 it_jint(info, "ram.duplicate"));
    cr_assert_eq(it_jint(doc, "ram.total"), it_jint(info, "ram.total"));
    cr_assert_gt(json_object_array_length(jget(doc, "devices")), 10);
    it_assert_ram_equals(fx.src, image, 128u << 20, fx.dir);
    json_object_put(doc);
    json_object_put(info);
}

Test(analyze, mapped_ram_100)
{
    run_mapped_ram(FALSE);
}

Test(analyze, mapped_ram_multifd_100)
{
    run_mapped_ram(TRUE);
}

/* ---- state files: qcow2 internal snapshots (issue 12) ----------------- */

static void
hmp(MpQemu *q, const char *line)
{
    g_autoptr(GError) err = NULL;
    json_object *args = json_object_new_object();
    json_object_object_add(args, "command-line", json_object_new_string(line));
    json_object *ret = mp_qemu_execute(q, "human-monitor-command", args, &err);
    json_object_put(args);
    cr_assert_not_null(ret, "%s: %s", line, err ? err->message : "?");
    /* HMP says what went wrong in its output; success says nothing */
    const char *out = json_object_get_string(ret);
    cr_assert(!out || !*out || !strstr(out, "rror"), "%s: %s", line, out);
    json_object_put(ret);
}

static void
qmp(MpQemu *q, const char *command)
{
    g_autoptr(GError) err = NULL;
    json_object *ret = mp_qemu_execute(q, command, NULL, &err);
    cr_assert_not_null(ret, "%s: %s", command, err ? err->message : "?");
    json_object_put(ret);
}

/* `migproxy analyze --json -q ARGS... FILE`: its document; asserts the
 * exit status. */
static json_object *
analyze_args(const char *const *args, int expect_status)
{
    g_autoptr(GPtrArray) argv = g_ptr_array_new();
    g_ptr_array_add(argv, (char *)it_migproxy());
    g_ptr_array_add(argv, "analyze");
    g_ptr_array_add(argv, "--json");
    g_ptr_array_add(argv, "-q");
    for (guint i = 0; args[i]; i++)
        g_ptr_array_add(argv, (char *)args[i]);
    g_ptr_array_add(argv, NULL);
    g_autofree char *out = NULL, *errout = NULL;
    int status = 0;
    g_autoptr(GError) err = NULL;
    cr_assert(g_spawn_sync(NULL, (char **)argv->pdata, NULL, G_SPAWN_DEFAULT,
                           NULL, NULL, &out, &errout, &status, &err),
              "%s", err ? err->message : "?");
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == expect_status,
              "status 0x%x, stderr: %s", status, errout);
    json_object *doc = json_tokener_parse(out);
    cr_assert_not_null(doc, "not JSON: %s", out);
    return doc;
}

/* RAM below 640 KiB and above 1 MiB (what pmemsave can read) equal. */
static void
assert_same_ram(const char *image, const char *mem, guint64 bytes)
{
    g_autofree char *a = NULL, *b = NULL;
    gsize la, lb;
    cr_assert(g_file_get_contents(image, &a, &la, NULL), "%s", image);
    cr_assert(g_file_get_contents(mem, &b, &lb, NULL), "%s", mem);
    cr_assert_geq(la, bytes);
    cr_assert_eq(lb, bytes);
    cr_assert(memcmp(a, b, 640 << 10) == 0, "RAM below 640 KiB differs");
    cr_assert(memcmp(a + (1 << 20), b + (1 << 20), bytes - (1 << 20)) == 0,
              "RAM above 1 MiB differs");
}

/* Two `savevm` snapshots of a running guest in a qcow2 image made by
 * qemu-img, a disk-only one between them: the image lists them; each
 * one's VM state is analyzed whole (its size is the snapshot table's,
 * every page of RAM once) and its --dump-ram equals the guest's memory
 * at the snapshot (pmemsave while stopped). */
Test(analyze, qcow2_savevm_snapshots_100)
{
    g_autofree char *disk = g_build_filename(fx.dir, "disk.qcow2", NULL);
    g_autofree char *m1 = g_build_filename(fx.dir, "m1.bin", NULL);
    g_autofree char *m2 = g_build_filename(fx.dir, "m2.bin", NULL);
    g_autoptr(GError) err = NULL;
    const char *mk[] = {"qemu-img", "create", "-q", "-f", "qcow2", disk, "16M",
                        NULL};
    int status;
    cr_assert(g_spawn_sync(NULL, (char **)mk, NULL, G_SPAWN_SEARCH_PATH, NULL,
                           NULL, NULL, NULL, &status, &err)
                  && WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "qemu-img create: %s", err ? err->message : "exit status");
    g_autofree char *drive =
        g_strdup_printf("file=%s,if=none,id=d0,format=qcow2", disk);
    const char *extra[] = {"-drive", drive, NULL};

    fx.src = it_start_workload("10.0", "pc-q35-10.0", 128, "mem=64M rate=4000",
                               extra);
    qmp(fx.src, "stop");
    hmp(fx.src, "savevm first");
    cr_assert(mp_qemu_pmemsave(fx.src, 0, 128u << 20, m1, &err), "%s",
              err ? err->message : "?");
    qmp(fx.src, "cont");
    g_usleep(500 * 1000); /* the guest dirties pages between the two */
    qmp(fx.src, "stop");
    /* a disk-only snapshot is listed, with no state to analyze */
    hmp(fx.src, "snapshot_blkdev_internal d0 diskonly");
    hmp(fx.src, "savevm second");
    cr_assert(mp_qemu_pmemsave(fx.src, 0, 128u << 20, m2, &err), "%s",
              err ? err->message : "?");
    g_clear_pointer(&fx.src, mp_qemu_free); /* its image flushed and closed */

    const char *list_args[] = {disk, NULL};
    json_object *list = analyze_args(list_args, 0);
    json_object *snaps = jget(list, "qcow2.snapshots");
    cr_assert_eq(json_object_array_length(snaps), 3);
    const char *names[] = {"first", "diskonly", "second"};
    const char *dumps[] = {m1, NULL, m2};
    for (guint i = 0; i < 3; i++) {
        json_object *s = json_object_array_get_idx(snaps, i);
        cr_assert_str_eq(json_object_get_string(jget(s, "name")), names[i]);
        gint64 vm = it_jint(s, "vm_state_size");
        if (!dumps[i]) {
            cr_assert_eq(vm, 0);
            const char *args[] = {"--snapshot", names[i], disk, NULL};
            json_object *doc = analyze_args(args, 1);
            cr_assert(strstr(json_object_to_json_string(doc),
                             "holds no VM state"),
                      "%s", json_object_to_json_string(doc));
            json_object_put(doc);
            continue;
        }
        g_autofree char *dump = g_strdup_printf("%s/ram-%s", fx.dir, names[i]);
        g_autofree char *image = g_build_filename(dump, "pc.ram", NULL);
        const char *args[] = {"--snapshot", names[i], "--dump-ram", dump, disk,
                              NULL};
        json_object *doc = analyze_args(args, 0);
        cr_assert_eq(json_object_array_length(jget(doc, "errors")), 0, "%s",
                     json_object_to_json_string(jget(doc, "errors")));
        cr_assert(json_object_get_boolean(jget(doc, "stream.complete")));
        cr_assert_eq(it_jint(doc, "stream.bytes"), vm);
        cr_assert_gt(json_object_array_length(jget(doc, "devices")), 10);
        /* savevm sends every page once */
        cr_assert_eq(it_jint(doc, "ram.pages.normal")
                         + it_jint(doc, "ram.pages.zero"),
                     it_jint(doc, "ram.total") / 4096);
        assert_same_ram(image, dumps[i], 128u << 20);
        json_object_put(doc);
    }
    json_object_put(list);
}
