/* test-capture.c: the relay's capture format (docs/capture-format.md),
 * written by MpCapture and read back by mp_capture_analyze. */
#include "config.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <glib/gstdio.h>
#include <criterion/criterion.h>
#include "analyze-file.h"
#include "capture-read.h"
#include "capture.h"
#include "parse-common.h"
#include "stream-input.h"
#include "test-util.h"

static char *dir;

static void
setup(void)
{
    dir = tu_tmpdir_new("mp-capture");
}

static void
teardown(void)
{
    g_clear_pointer(&dir, tu_tmpdir_remove);
}

TestSuite(capture, .init = setup, .fini = teardown);

/* Session 1: the sample as channel 0 in 3000-byte chunks 1 ms apart, and
 * a few return-path bytes; channel 1 opened and closed silent. */
static void
write_capture(GByteArray *stream)
{
    g_autoptr(GError) err = NULL;
    MpCapture *c = mp_capture_new(dir, "127.0.0.1:1", "127.0.0.1:2", &err);
    cr_assert_not_null(c, "%s", err ? err->message : "?");
    gint64 t0 = 1000000, now = t0;

    mp_capture_session(c, 1, t0, 1700000000000000ll);
    mp_capture_channel(c, 1, 0, "127.0.0.1:3", t0);
    mp_capture_channel(c, 1, 1, "127.0.0.1:4", t0 + 10);
    for (gsize off = 0; off < stream->len; off += 3000) {
        now += 1000;
        mp_capture_data(c, 1, 0, MP_DIR_TO_DST, stream->data + off,
                        MIN(3000, stream->len - off), now);
        if (off == 0)
            mp_capture_kind(c, 1, 0, MP_CHAN_MAIN);
    }
    mp_capture_end(c, 1, 0, MP_DIR_TO_DST, MP_END_FIN, now + 5);
    mp_capture_end(c, 1, 0, MP_DIR_TO_SRC, MP_END_FIN, now + 6);
    mp_capture_end(c, 1, 1, MP_DIR_TO_DST, MP_END_FIN, now + 7);
    mp_capture_end(c, 1, 1, MP_DIR_TO_SRC, MP_END_FIN, now + 8);
    cr_assert_null(mp_capture_error(c));
    mp_capture_free(c);
}

Test(capture, round_trip_like_the_file)
{
    g_autoptr(GByteArray) stream = tu_read_sample("busy-xbzrle-7.2.mig.zst");
    write_capture(stream);
    cr_assert(mp_capture_is_dir(dir));

    /* the raw bytes are the stream, the index has one entry per chunk */
    g_autofree char *bin = g_build_filename(dir, "s1-c0-to-dst.bin", NULL);
    g_autofree char *idx = g_build_filename(dir, "s1-c0-to-dst.idx", NULL);
    g_autofree char *data = NULL, *index = NULL;
    gsize len, ilen;
    cr_assert(g_file_get_contents(bin, &data, &len, NULL));
    cr_assert_eq(len, stream->len);
    cr_assert(memcmp(data, stream->data, len) == 0);
    cr_assert(g_file_get_contents(idx, &index, &ilen, NULL));
    cr_assert_eq(ilen, 16 * ((stream->len + 2999) / 3000));
    cr_assert_eq(mp_be64((guint8 *)index), 1000); /* us since the start */
    cr_assert_eq(mp_be64((guint8 *)index + 16 + 8), 3000);

    gboolean ok;
    json_object *cap = mp_capture_analyze(dir, 0, FALSE, &ok);
    cr_assert(ok, "%s", json_object_to_json_string(cap));
    g_autofree char *path = g_strdup_printf(
        "%s/samples/streams/busy-xbzrle-7.2.mig.zst", MP_SOURCE_ROOT);
    MpAnalyzeOptions opt = {.quiet = TRUE};
    json_object *file = mp_analyze_file(path, &opt, &ok);
    const char *keys[] = {"ram.pages.normal", "ram.pages.zero",
                          "ram.pages.xbzrle", "stream.sections.full"};
    for (guint k = 0; k < G_N_ELEMENTS(keys); k++)
        cr_assert_eq(tu_json_int(cap, keys[k]), tu_json_int(file, keys[k]),
                     "%s", keys[k]);
    /* the vmdesc at the end of the main channel slices the devices */
    json_object *v;
    json_object_object_get_ex(cap, "stream", &v);
    json_object_object_get_ex(v, "complete", &v);
    cr_assert(json_object_get_boolean(v));
    json_object_object_get_ex(cap, "channels", &v);
    cr_assert_eq(json_object_array_length(v), 2);
    cr_assert_eq(tu_json_int(cap, "session"), 1);
    json_object_put(cap);
    json_object_put(file);
}

Test(capture, broken_index_is_an_error)
{
    g_autoptr(GByteArray) stream = tu_read_sample("idle-7.2.mig.zst");
    write_capture(stream);
    /* entry 1 points before entry 0 */
    g_autofree char *idx = g_build_filename(dir, "s1-c0-to-dst.idx", NULL);
    g_autofree char *index = NULL;
    gsize ilen;
    cr_assert(g_file_get_contents(idx, &index, &ilen, NULL));
    mp_put_be64((guint8 *)index + 16 + 8, (guint64)stream->len + 1);
    cr_assert(g_file_set_contents(idx, index, ilen, NULL));
    gboolean ok;
    json_object *cap = mp_capture_analyze(dir, 0, FALSE, &ok);
    cr_assert(!ok);
    json_object *errs;
    json_object_object_get_ex(cap, "errors", &errs);
    cr_assert_geq(json_object_array_length(errs), 1);
    cr_assert(strstr(json_object_get_string(json_object_array_get_idx(errs, 0)),
                     "out of order"),
              "%s", json_object_to_json_string(errs));
    json_object_put(cap);
}

Test(capture, not_a_capture)
{
    g_autofree char *path = g_build_filename(dir, "index.json", NULL);
    cr_assert(g_file_set_contents(path, "{\"format\": \"other\"}", -1, NULL));
    gboolean ok;
    json_object *cap = mp_capture_analyze(dir, 0, FALSE, &ok);
    cr_assert(!ok);
    json_object_put(cap);
}

/* index.json numbers the channels; a number far past the list (or one
 * used twice) is an error, not tables sized by it (3e9 made analyze
 * abort allocating 2 GiB of channel slots). */
Test(capture, channel_numbers_checked)
{
    const char *numbers[] = {"3000000000", "-1", "1"};
    for (guint i = 0; i < G_N_ELEMENTS(numbers); i++) {
        g_autofree char *bin = g_build_filename(dir, "a.bin", NULL);
        g_autofree char *idx = g_build_filename(dir, "a.idx", NULL);
        g_autofree char *path = g_build_filename(dir, "index.json", NULL);
        g_autofree char *text = g_strdup_printf(
            "{\"format\": \"migproxy-capture\", \"version\": 1, "
            "\"sessions\": [{\"session\": 1, \"channels\": ["
            "{\"channel\": %s, \"to_dst\": {\"file\": \"a.bin\", "
            "\"index\": \"a.idx\"}}]}]}",
            numbers[i]);
        cr_assert(g_file_set_contents(bin, "", 0, NULL));
        cr_assert(g_file_set_contents(idx, "", 0, NULL));
        cr_assert(g_file_set_contents(path, text, -1, NULL));
        gboolean ok;
        json_object *cap = mp_capture_analyze(dir, 0, FALSE, &ok);
        cr_assert(!ok, "channel %s taken", numbers[i]);
        json_object *errs;
        cr_assert(json_object_object_get_ex(cap, "errors", &errs));
        cr_assert(strstr(json_object_to_json_string(errs), "channel number"),
                  "%s", json_object_to_json_string(errs));
        json_object_put(cap);
    }
}

/* A list where index.json has something else is an error (json-c's array
 * calls abort on a wrong type). */
Test(capture, wrong_types_in_index)
{
    const char *texts[] = {
        "{\"format\": \"migproxy-capture\", \"version\": 1, "
        "\"sessions\": \"main\"}",
        "{\"format\": \"migproxy-capture\", \"version\": 1, "
        "\"sessions\": [{\"session\": 1, \"channels\": 5}]}",
        "{\"format\": \"migproxy-capture\", \"version\": 1, "
        "\"sessions\": [{\"session\": 1, \"channels\": [\"x\", 3]}]}",
    };
    for (guint i = 0; i < G_N_ELEMENTS(texts); i++) {
        g_autofree char *path = g_build_filename(dir, "index.json", NULL);
        cr_assert(g_file_set_contents(path, texts[i], -1, NULL));
        gboolean ok;
        json_object *cap = mp_capture_analyze(dir, 0, FALSE, &ok);
        cr_assert(!ok, "%s taken", texts[i]);
        json_object_put(cap);
    }
}

/* ---- hostile capture directories: bounded memory, no hang ------------ */

static guint64
status_kib(const char *field)
{
    g_autofree char *status = NULL;
    cr_assert(g_file_get_contents("/proc/self/status", &status, NULL, NULL));
    g_autofree char *key = g_strdup_printf("\n%s:", field);
    const char *l = strstr(status, key);
    cr_assert(l, "no %s", field);
    return g_ascii_strtoull(l + strlen(key), NULL, 10);
}

#if defined(__SANITIZE_ADDRESS__)
#define MP_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MP_ASAN 1
#endif
#endif

/* Caps this test process's address space at its size now + `mib` (not
 * under ASan, whose shadow memory is terabytes of address space), so a
 * regression fails the test instead of taking the machine's memory. */
static void
limit_memory(guint mib)
{
#ifndef MP_ASAN
    struct rlimit rl;
    rl.rlim_cur = rl.rlim_max = (status_kib("VmSize") + mib * 1024ull) << 10;
    cr_assert_eq(setrlimit(RLIMIT_AS, &rl), 0);
#else
    (void)mib;
#endif
}

/* The first error of the report. */
static const char *
first_error(json_object *cap)
{
    json_object *errs;
    cr_assert(json_object_object_get_ex(cap, "errors", &errs));
    cr_assert_geq(json_object_array_length(errs), 1);
    return json_object_get_string(json_object_array_get_idx(errs, 0));
}

/* An .idx linked to /dev/zero (it grew analyze to 1 GB, read whole) and a
 * FIFO as data file (opening it waited for a writer) are refused as not
 * regular files, at once. */
Test(capture, index_and_data_must_be_regular_files, .timeout = 30)
{
    g_autoptr(GByteArray) stream = tu_read_sample("idle-7.2.mig.zst");
    write_capture(stream);
    limit_memory(256);
    g_autofree char *idx = g_build_filename(dir, "s1-c0-to-dst.idx", NULL);
    cr_assert_eq(g_unlink(idx), 0);
    cr_assert_eq(symlink("/dev/zero", idx), 0);
    gboolean ok;
    json_object *cap = mp_capture_analyze(dir, 0, FALSE, &ok);
    cr_assert(!ok);
    cr_assert(strstr(first_error(cap), "s1-c0-to-dst.idx: not a regular file"),
              "%s", first_error(cap));
    json_object_put(cap);

    g_autofree char *bin = g_build_filename(dir, "s1-c1-to-dst.bin", NULL);
    cr_assert_eq(g_unlink(bin), 0);
    cr_assert_eq(mkfifo(bin, 0600), 0);
    cap = mp_capture_analyze(dir, 0, FALSE, &ok);
    cr_assert(!ok);
    json_object *errs;
    json_object_object_get_ex(cap, "errors", &errs);
    cr_assert(strstr(json_object_to_json_string(errs),
                     "s1-c1-to-dst.bin: not a regular file"),
              "%s", json_object_to_json_string(errs));
    json_object_put(cap);
}

/* A 16 MiB .idx (1 Mi entries of zero-length chunks, sparse) is read in
 * 64 KiB windows: it was read whole (peak RSS +16 MiB; a 1 GB one, or
 * /dev/zero, as much). */
Test(capture, large_index_read_in_windows, .timeout = 120)
{
    g_autoptr(GByteArray) stream = tu_read_sample("idle-7.2.mig.zst");
    write_capture(stream);
    g_autofree char *idx = g_build_filename(dir, "s1-c1-to-dst.idx", NULL);
    int fd = open(idx, O_WRONLY | O_TRUNC);
    cr_assert_geq(fd, 0);
    cr_assert_eq(ftruncate(fd, 16u << 20), 0);
    close(fd);
    guint64 before = status_kib("VmHWM");
    gboolean ok;
    json_object *cap = mp_capture_analyze(dir, 0, FALSE, &ok);
    guint64 grown = status_kib("VmHWM") - before;
    cr_assert(ok, "%s", json_object_to_json_string(cap));
    json_object_put(cap);
#ifndef MP_ASAN /* (its quarantine keeps freed memory resident) */
    cr_assert_lt(grown, 8u << 10, "peak RSS grew by %" G_GUINT64_FORMAT
                 " KiB", grown);
#else
    (void)grown;
#endif
}

/* index.json over 16 MiB, or one whose JSON would take json-c over
 * MP_JSON_MAX_HEAP (3 MiB of "{}," took it about 900 MB), is refused
 * with its size or the estimate. */
Test(capture, index_json_bounded, .timeout = 30)
{
    g_autofree char *path = g_build_filename(dir, "index.json", NULL);
    g_autoptr(GString) text = g_string_new("{\"format\": \"migproxy-capture\"");
    while (text->len < (17u << 20))
        g_string_append(text, "                                ");
    g_string_append(text, "}");
    cr_assert(g_file_set_contents(path, text->str, text->len, NULL));
    limit_memory(256);
    gboolean ok;
    json_object *cap = mp_capture_analyze(dir, 0, FALSE, &ok);
    cr_assert(!ok);
    cr_assert(strstr(first_error(cap), "index.json: 17825822 bytes (at most "
                                       "16777216 read)"),
              "%s", first_error(cap));
    json_object_put(cap);

    g_string_assign(text, "{\"format\": \"migproxy-capture\", \"x\": [");
    while (text->len < (3u << 20))
        g_string_append(text, "{},");
    g_string_append(text, "{}]}");
    cr_assert(g_file_set_contents(path, text->str, text->len, NULL));
    cap = mp_capture_analyze(dir, 0, FALSE, &ok);
    cr_assert(!ok);
    cr_assert(strstr(first_error(cap), "MiB to parse (at most 128 MiB)"), "%s",
              first_error(cap));
    json_object_put(cap);
}

/* ---- the writer's files: private, never through a link, never over an
 * earlier capture, and a write error that leaves what was written
 * readable ---- */

static guint
open_fds(void)
{
    g_autoptr(GDir) d = g_dir_open("/proc/self/fd", 0, NULL);
    guint n = 0;
    while (d && g_dir_read_name(d))
        n++;
    return n;
}

static mode_t
mode_of(const char *path)
{
    struct stat st;
    cr_assert_eq(lstat(path, &st), 0, "%s: %s", path, g_strerror(errno));
    return st.st_mode & 07777;
}

/* Guest memory is the user's alone, whatever the umask (0755/0644
 * before). */
Test(capture, private_whatever_the_umask)
{
    const mode_t masks[] = {0, 022, 0277};
    for (guint i = 0; i < G_N_ELEMENTS(masks); i++) {
        g_autoptr(GError) err = NULL;
        g_autofree char *sub = g_strdup_printf("%s/cap%u", dir, i);
        mode_t old = umask(masks[i]);
        MpCapture *c = mp_capture_new(sub, "a", "b", &err);
        cr_assert_not_null(c, "%s", err ? err->message : "?");
        mp_capture_session(c, 1, 0, 0);
        mp_capture_channel(c, 1, 0, "p", 0);
        mp_capture_data(c, 1, 0, MP_DIR_TO_DST, (const guint8 *)"QEVM", 4, 1);
        mp_capture_free(c);
        umask(old);
        cr_assert_eq(mode_of(sub), 0700, "umask %o: dir %o", masks[i],
                     mode_of(sub));
        const char *files[] = {"index.json", "s1.json", "s1-c0-to-dst.bin",
                               "s1-c0-to-src.idx"};
        for (guint k = 0; k < G_N_ELEMENTS(files); k++) {
            g_autofree char *p = g_build_filename(sub, files[k], NULL);
            cr_assert_eq(mode_of(p), 0600, "umask %o: %s %o", masks[i],
                         files[k], mode_of(p));
            g_unlink(p);
        }
        g_autoptr(GDir) d = g_dir_open(sub, 0, NULL);
        const char *n;
        while ((n = g_dir_read_name(d))) {
            g_autofree char *p = g_build_filename(sub, n, NULL);
            g_unlink(p);
        }
        cr_assert_eq(g_rmdir(sub), 0);
    }
}

/* A directory holding anything (an earlier capture) is refused, so that
 * nothing in it is truncated; so is a link to a directory. */
Test(capture, refuses_non_empty_or_linked_directory)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *old = g_build_filename(dir, "s1-c0-to-dst.bin", NULL);
    cr_assert(g_file_set_contents(old, "earlier", -1, NULL));
    MpCapture *c = mp_capture_new(dir, "a", "b", &err);
    cr_assert_null(c);
    cr_assert(strstr(err->message, "not empty"), "%s", err->message);
    g_autofree char *text = NULL;
    cr_assert(g_file_get_contents(old, &text, NULL, NULL));
    cr_assert_str_eq(text, "earlier");

    g_clear_error(&err);
    g_autofree char *target = g_dir_make_tmp("mp-capture-target-XXXXXX", NULL);
    g_autofree char *link = g_build_filename(dir, "link", NULL);
    cr_assert_eq(symlink(target, link), 0);
    g_autofree char *slash = g_strdup_printf("%s/", link);
    c = mp_capture_new(slash, "a", "b", &err);
    cr_assert_null(c, "a link to a directory was followed");
    cr_assert(strstr(err->message, "symbolic link"), "%s", err->message);
    cr_assert_eq(g_rmdir(target), 0, "something was written in the target");
    g_unlink(link);
    g_unlink(old);
}

/* A file planted under a capture file's name (a link to a victim) is
 * neither followed nor overwritten: the capture fails, naming it. */
Test(capture, planted_link_not_followed)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *sub = g_build_filename(dir, "cap", NULL);
    g_autofree char *victim = g_build_filename(dir, "victim", NULL);
    cr_assert(g_file_set_contents(victim, "precious", -1, NULL));
    MpCapture *c = mp_capture_new(sub, "a", "b", &err);
    cr_assert_not_null(c, "%s", err ? err->message : "?");
    g_autofree char *bin = g_build_filename(sub, "s1-c0-to-dst.bin", NULL);
    cr_assert_eq(symlink(victim, bin), 0);
    mp_capture_session(c, 1, 0, 0);
    mp_capture_channel(c, 1, 0, "p", 0);
    mp_capture_data(c, 1, 0, MP_DIR_TO_DST, (const guint8 *)"QEVMxxxx", 8, 1);
    mp_capture_sync(c);
    const GError *e = mp_capture_error(c);
    cr_assert_not_null(e, "the link was taken");
    cr_assert(strstr(e->message, "s1-c0-to-dst.bin"), "%s", e->message);
    mp_capture_free(c);
    g_autofree char *text = NULL;
    cr_assert(g_file_get_contents(victim, &text, NULL, NULL));
    cr_assert_str_eq(text, "precious");
    g_autoptr(GDir) d = g_dir_open(sub, 0, NULL);
    const char *n;
    while ((n = g_dir_read_name(d))) {
        g_autofree char *p = g_build_filename(sub, n, NULL);
        g_unlink(p);
    }
    g_rmdir(sub);
    g_unlink(victim);
}

/* A write that fails half-way (here the file size limit, as a full disk
 * would): the capture stops with an error naming file and offset, the
 * .bin is cut back to the last whole chunk, the .idx matches it, and
 * analyze reads what was captured. */
Test(capture, write_error_leaves_a_readable_capture)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GByteArray) stream = tu_read_sample("idle-7.2.mig.zst");
    g_autofree char *sub = g_build_filename(dir, "cap", NULL);
    MpCapture *c = mp_capture_new(sub, "a", "b", &err);
    cr_assert_not_null(c, "%s", err ? err->message : "?");
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim = {.rlim_cur = 100000, .rlim_max = RLIM_INFINITY};
    cr_assert_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);

    mp_capture_session(c, 1, 0, 0);
    mp_capture_channel(c, 1, 0, "p", 0);
    gsize sent = 0;
    for (gsize off = 0; off < MIN(stream->len, 300000); off += 7000) {
        gsize n = MIN(7000, stream->len - off);
        mp_capture_data(c, 1, 0, MP_DIR_TO_DST, stream->data + off, n,
                        1000 + off);
        sent += n;
    }
    mp_capture_end(c, 1, 0, MP_DIR_TO_DST, MP_END_FIN, 400000);
    mp_capture_sync(c);
    const GError *e = mp_capture_error(c);
    cr_assert_not_null(e);
    cr_assert(strstr(e->message, "s1-c0-to-dst.bin at offset 98000"), "%s",
              e->message);
    json_object *st = mp_capture_status(c), *v;
    cr_assert(json_object_object_get_ex(st, "complete", &v)
              && !json_object_get_boolean(v));
    cr_assert(json_object_object_get_ex(st, "offset", &v));
    cr_assert_eq(json_object_get_int64(v), 98000);
    json_object_put(st);
    mp_capture_free(c);

    g_autofree char *bin = g_build_filename(sub, "s1-c0-to-dst.bin", NULL);
    g_autofree char *idx = g_build_filename(sub, "s1-c0-to-dst.idx", NULL);
    g_autofree char *data = NULL, *index = NULL;
    gsize len, ilen;
    cr_assert(g_file_get_contents(bin, &data, &len, NULL));
    cr_assert(g_file_get_contents(idx, &index, &ilen, NULL));
    cr_assert_eq(len, 98000, "the half-written chunk was not cut off");
    cr_assert_eq(ilen, 16 * 14);
    cr_assert(memcmp(data, stream->data, len) == 0);
    gboolean ok;
    json_object *cap = mp_capture_analyze(sub, 0, FALSE, &ok);
    cr_assert(json_object_object_get_ex(cap, "capture_error", &v), "%s",
              json_object_to_json_string(cap));
    json_object_object_get_ex(cap, "channels", &v);
    v = json_object_array_get_idx(v, 0);
    json_object_object_get_ex(v, "to_dst", &v);
    json_object_object_get_ex(v, "bytes", &v);
    cr_assert_eq(json_object_get_int64(v), 98000);
    json_object_put(cap);
}

/* A direction's files are closed when it ends (four fds per channel
 * stayed open for ever: 1 208 after 300 sessions). */
Test(capture, files_closed_when_channels_end)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *sub = g_build_filename(dir, "cap", NULL);
    MpCapture *c = mp_capture_new(sub, "a", "b", &err);
    cr_assert_not_null(c, "%s", err ? err->message : "?");
    mp_capture_sync(c);
    guint before = open_fds();
    for (guint s = 1; s <= 50; s++) {
        mp_capture_session(c, s, 0, 0);
        mp_capture_channel(c, s, 0, "p", 0);
        mp_capture_data(c, s, 0, MP_DIR_TO_DST, (const guint8 *)"QEVM", 4, 1);
        mp_capture_end(c, s, 0, MP_DIR_TO_DST, MP_END_FIN, 2);
        mp_capture_end(c, s, 0, MP_DIR_TO_SRC, MP_END_FIN, 2);
        if (s % 2) /* half of them end as a session too */
            mp_capture_session_end(c, s, 3, NULL, NULL, NULL);
    }
    mp_capture_sync(c);
    cr_assert_leq(open_fds(), before, "%u fds open, %u before", open_fds(),
                  before);
    mp_capture_free(c);
}

/* A version 1 capture (one index.json with every session, migproxy up to
 * 765a17d) still reads: the same session as a v2 s1.json. */
Test(capture, version_1_still_read)
{
    g_autoptr(GByteArray) stream = tu_read_sample("idle-7.2.mig.zst");
    write_capture(stream);
    gboolean ok;
    json_object *v2 = mp_capture_analyze(dir, 0, FALSE, &ok);
    cr_assert(ok);

    g_autofree char *s1 = g_build_filename(dir, "s1.json", NULL);
    g_autofree char *index = g_build_filename(dir, "index.json", NULL);
    json_object *session = json_object_from_file(s1);
    cr_assert_not_null(session);
    json_object *doc = json_object_new_object(), *list = json_object_new_array();
    json_object_object_add(doc, "format",
                           json_object_new_string("migproxy-capture"));
    json_object_object_add(doc, "version", json_object_new_int(1));
    json_object_array_add(list, session);
    json_object_object_add(doc, "sessions", list);
    cr_assert_eq(json_object_to_file(index, doc), 0);
    json_object_put(doc);
    cr_assert_eq(g_unlink(s1), 0);

    json_object *v1 = mp_capture_analyze(dir, 0, FALSE, &ok);
    cr_assert(ok, "%s", json_object_to_json_string(v1));
    const char *keys[] = {"ram.pages.normal", "ram.pages.zero", "session",
                          "stream.bytes"};
    for (guint k = 0; k < G_N_ELEMENTS(keys); k++)
        cr_assert_eq(tu_json_int(v1, keys[k]), tu_json_int(v2, keys[k]), "%s",
                     keys[k]);
    json_object_put(v1);
    json_object_put(v2);
}

typedef struct {
    const char *dir;
    gint64 bin_size; /* of s<S>-c0-to-dst.bin when done() ran */
    guint done, destroyed;
} DoneCtx;

static void
on_done(MpCapture *c, guint session, gpointer data)
{
    DoneCtx *x = data;
    g_autofree char *name = g_strdup_printf("s%u-c0-to-dst.bin", session);
    g_autofree char *p = g_build_filename(x->dir, name, NULL);
    struct stat st;
    x->bin_size = stat(p, &st) == 0 ? st.st_size : -1;
    x->done++;
}

static void
on_destroy(gpointer data)
{
    ((DoneCtx *)data)->destroyed++;
}

/* mp_capture_session_end()'s callback runs on the main context once the
 * session's bytes are on disk (the relay writes the report then); one
 * that has not run when the capture is freed is dropped, its data freed
 * once. */
Test(capture, session_end_callback)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *sub = g_build_filename(dir, "cap", NULL);
    MpCapture *c = mp_capture_new(sub, "a", "b", &err);
    cr_assert_not_null(c, "%s", err ? err->message : "?");
    DoneCtx x = {.dir = sub}, y = {.dir = sub};
    static guint8 chunk[100000];

    mp_capture_session(c, 1, 0, 0);
    mp_capture_channel(c, 1, 0, "p", 0);
    for (guint i = 0; i < 20; i++)
        mp_capture_data(c, 1, 0, MP_DIR_TO_DST, chunk, sizeof(chunk), i);
    mp_capture_session_end(c, 1, 30, on_done, &x, on_destroy);
    gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
    while (!x.done && g_get_monotonic_time() < deadline)
        g_main_context_iteration(NULL, FALSE);
    cr_assert_eq(x.done, 1);
    cr_assert_eq(x.bin_size, 20 * (gint64)sizeof(chunk));
    cr_assert_eq(x.destroyed, 1);

    mp_capture_session(c, 2, 0, 0);
    mp_capture_channel(c, 2, 0, "p", 0);
    mp_capture_session_end(c, 2, 30, on_done, &y, on_destroy);
    mp_capture_free(c); /* before the main context ran */
    while (g_main_context_iteration(NULL, FALSE))
        ;
    cr_assert_eq(y.done, 0);
    cr_assert_eq(y.destroyed, 1);
}

/* mp_capture_walk() (migproxy replay): the source's bytes of every
 * channel, in order, with their times; the return path left out. */
typedef struct {
    GByteArray *bytes;
    guint channels, chunks, ends;
    gint64 last_us;
    gboolean vmdesc, in_order;
    char *kinds;
} Walked;

static void
walk_channel(gpointer data, guint channel, const char *kind, gint64 open_us)
{
    Walked *w = data;
    w->channels++;
    char *k = g_strdup_printf("%s%u:%s ", w->kinds ? w->kinds : "", channel,
                              kind ? kind : "(none)");
    g_free(w->kinds);
    w->kinds = k;
}

static gboolean
walk_data(gpointer data, guint channel, gint64 time_us, const guint8 *buf,
          gsize len)
{
    Walked *w = data;
    cr_assert_eq(channel, 0);
    w->in_order = w->in_order && time_us >= w->last_us;
    w->last_us = time_us;
    w->chunks++;
    g_byte_array_append(w->bytes, buf, len);
    return TRUE;
}

static void
walk_end(gpointer data, guint channel, MpEndReason how, gint64 time_us)
{
    Walked *w = data;
    cr_assert_eq(how, MP_END_FIN);
    w->ends++;
}

static void
walk_vmdesc(gpointer data, MpVmdesc *vmdesc)
{
    Walked *w = data;
    w->vmdesc = vmdesc != NULL;
}

static const MpCaptureWalk walker = {
    .channel = walk_channel,
    .data = walk_data,
    .end = walk_end,
    .vmdesc = walk_vmdesc,
};

Test(capture, walk_gives_the_source_bytes_in_order)
{
    g_autoptr(GByteArray) stream = tu_read_sample("busy-xbzrle-7.2.mig.zst");
    write_capture(stream);
    Walked w = {.bytes = g_byte_array_new(), .in_order = TRUE};
    g_autoptr(GError) err = NULL;

    cr_assert(mp_capture_walk(dir, 0, &walker, &w, &err), "%s",
              err ? err->message : "?");
    cr_assert_eq(w.channels, 2);
    cr_assert_str_eq(w.kinds, "0:main 1:unknown ");
    cr_assert_eq(w.bytes->len, stream->len);
    cr_assert(memcmp(w.bytes->data, stream->data, stream->len) == 0);
    cr_assert_eq(w.chunks, (stream->len + 2999) / 3000);
    cr_assert(w.in_order);
    cr_assert_eq(w.ends, 2); /* to-dst of both channels only */
    cr_assert(w.vmdesc);
    g_byte_array_unref(w.bytes);
    g_free(w.kinds);
}

Test(capture, walk_of_a_broken_capture_says_why)
{
    g_autoptr(GByteArray) stream = tu_read_sample("idle-7.2.mig.zst");
    write_capture(stream);
    g_autofree char *idx = g_build_filename(dir, "s1-c0-to-dst.idx", NULL);
    g_autofree char *index = NULL;
    gsize ilen;
    cr_assert(g_file_get_contents(idx, &index, &ilen, NULL));
    mp_put_be64((guint8 *)index + 16 + 8, (guint64)stream->len + 1);
    cr_assert(g_file_set_contents(idx, index, ilen, NULL));
    Walked w = {.bytes = g_byte_array_new(), .in_order = TRUE};
    g_autoptr(GError) err = NULL;
    cr_assert_not(mp_capture_walk(dir, 0, &walker, &w, &err));
    cr_assert(strstr(err->message, "out of order"), "%s", err->message);
    cr_assert(strstr(err->message, "s1-c0-to-dst.idx"), "%s", err->message);
    g_byte_array_unref(w.bytes);
    g_free(w.kinds);

    g_autofree char *none = g_build_filename(dir, "nothing", NULL);
    g_clear_error(&err);
    cr_assert_not(mp_capture_walk(none, 0, &walker, &w, &err));
    cr_assert(strstr(err->message, "index.json"), "%s", err->message);
}
