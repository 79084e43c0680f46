/* test-tunnel.c: real migrations through `migproxy source` and `migproxy
 * dest` (docs/tunnel.md, "Use").
 *
 * Each case boots the workload guest in a source QEMU (TCG) and a
 * destination QEMU with `-incoming defer`, starts `migproxy dest --once`
 * (to the destination QEMU) and `migproxy source --once` (tunnel to dest,
 * with --report and --capture), migrates to the source side, and checks:
 *   - both QEMUs report "completed", both migproxy processes exit 0;
 *   - the destination's memory equals the source's (QEMU 10.0) or the RAM
 *     image of the stream the source side captured (7.2, which can leave a
 *     page behind even direct: docs/qemu-quirks.md);
 *   - with compression, the tunnel's link bytes are fewer than the bytes
 *     QEMU wrote (printed as "tunnel-bytes" lines with the durations).
 *   - the tunnel names each connection's channel as the relay does, and
 *     dest opens them in QEMU's order (multifd ids in order).
 * RAM pages of the main connection go as PAGES (docs/tunnel.md): the
 * reports say how many stream bytes went encoded, and dest wrote RAM
 * records of its own (so the byte counts differ; the memory must not).
 * Cases: pre-copy 7.2 and 10.0 (and 10.0 with --no-compress, with every
 * page encoder off, and a compressible guest whose link bytes must stay
 * under a quarter of QEMU's), multifd x4
 * on 10.0, post-copy on 10.0 (page requests over the tunnel's return
 * path), postcopy-preempt on 10.0 and 7.2 (silent channel).  And a tunnel
 * cut mid-pre-copy (dest killed) fails the migration: the source QEMU
 * reports "failed" and its guest runs on; a retry through a fresh pair
 * completes.  dest_allow: no QEMU, --allow at dest.  Issue 10 item 9:
 * 7.2 to 10.0 pre-copy; xbzrle on 7.2 and 10.0 (XBZRLE pages counted on
 * the wire); multifd x4 with multifd-compression zstd (10.0); block
 * migration on 7.2 (the destination's disk equals the source's).
 * precopy_100_tls: pre-copy 10.0 through a TLS tunnel (certificates made
 * by openssl at run time; the refusals are test-tunnel-tls.c's).
 */
#include "config.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <glib/gstdio.h>
#include <criterion/criterion.h>
#include "itest-util.h"
#include "relay-itest.h"
#include "tls-certs.h"

#define MIGRATE_TIMEOUT_MS (180 * 1000)
#define RAM_BYTES          (128ull << 20)
#define LISTEN_TIMEOUT_MS  15000

typedef struct {
    GPid pid;
    char *log;
    int status; /* waitpid status once exited, else -1 */
} Proc;

typedef struct {
    Proc src, dst;
    guint16 src_port, dst_port; /* source side's --listen, dest's */
    char *report, *dst_report, *capture;
} Pair;

static struct {
    MpQemu *src, *dst;
    Pair *pair, *pair2;
    char *dir;
    const char *const *dst_extra; /* more arguments of dest */
} fx;

static void
die_with_parent(gpointer user_data)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
}

static char *
log_text(const Proc *p)
{
    char *text = NULL;
    if (!g_file_get_contents(p->log, &text, NULL, NULL))
        text = g_strdup("");
    return text;
}

static gboolean
proc_exited(Proc *p)
{
    int st;
    if (p->status >= 0)
        return TRUE;
    if (p->pid && waitpid(p->pid, &st, WNOHANG) == p->pid) {
        p->status = st;
        g_spawn_close_pid(p->pid);
        return TRUE;
    }
    return FALSE;
}

static int
proc_wait(Proc *p, guint timeout_ms)
{
    gint64 deadline = g_get_monotonic_time() + timeout_ms * 1000ll;
    while (!proc_exited(p)) {
        if (g_get_monotonic_time() > deadline) {
            g_autofree char *text = log_text(p);
            cr_assert_fail("%s still runs after %u ms:\n%s", p->log,
                           timeout_ms, text);
        }
        g_usleep(20000);
    }
    g_autofree char *text = log_text(p);
    cr_assert(WIFEXITED(p->status), "%s: killed by signal %d:\n%s", p->log,
              WTERMSIG(p->status), text);
    return WEXITSTATUS(p->status);
}

static void
proc_kill(Proc *p)
{
    if (p->pid && !proc_exited(p)) {
        kill(p->pid, SIGKILL);
        int st;
        waitpid(p->pid, &st, 0);
        g_spawn_close_pid(p->pid);
        p->status = st;
    }
    g_clear_pointer(&p->log, g_free);
}

/* Starts `migproxy ARGS...` with stderr to `log` and waits for its
 * "listening on" line. */
static void
proc_start(Proc *p, const char *log, GPtrArray *args)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) argv = g_ptr_array_new();

    p->status = -1;
    p->log = g_strdup(log);
    g_ptr_array_add(argv, (gpointer)it_migproxy());
    for (guint i = 0; i < args->len; i++)
        g_ptr_array_add(argv, g_ptr_array_index(args, i));
    g_ptr_array_add(argv, NULL);
    int fd = open(p->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    cr_assert(fd >= 0, "%s: %s", p->log, g_strerror(errno));
    gboolean ok = g_spawn_async_with_pipes_and_fds(
        NULL, (const char *const *)argv->pdata, NULL, G_SPAWN_DO_NOT_REAP_CHILD,
        die_with_parent, NULL, -1, -1, fd, NULL, NULL, 0, &p->pid, NULL, NULL,
        NULL, &err);
    close(fd);
    cr_assert(ok, "starting migproxy: %s", err ? err->message : "?");
    gint64 deadline = g_get_monotonic_time() + LISTEN_TIMEOUT_MS * 1000ll;
    for (;;) {
        g_autofree char *text = log_text(p);
        if (strstr(text, "listening on"))
            break;
        cr_assert(!proc_exited(p), "migproxy exited:\n%s", text);
        cr_assert(g_get_monotonic_time() < deadline,
                  "migproxy does not listen after %u ms:\n%s",
                  LISTEN_TIMEOUT_MS, text);
        g_usleep(20000);
    }
}

static void
pair_free(Pair *p)
{
    if (!p)
        return;
    proc_kill(&p->src);
    proc_kill(&p->dst);
    g_free(p->report);
    g_free(p->dst_report);
    g_free(p->capture);
    g_free(p);
}

/* dest (--once, to 127.0.0.1:qemu_port), then source (--once, tunnel to
 * dest); files under dir/NAME-*. */
static Pair *
pair_start(const char *name, guint16 qemu_port, const char *const *src_extra)
{
    g_autoptr(GError) err = NULL;
    Pair *p = g_new0(Pair, 1);
    g_autoptr(GPtrArray) a = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GPtrArray) b = g_ptr_array_new_with_free_func(g_free);

    p->src.status = p->dst.status = -1;
    p->dst_port = mp_qemu_pick_free_port(&err);
    cr_assert(p->dst_port, "%s", err ? err->message : "?");
    p->report = g_strdup_printf("%s/%s-report.json", fx.dir, name);
    p->dst_report = g_strdup_printf("%s/%s-dest.json", fx.dir, name);
    p->capture = g_strdup_printf("%s/%s-capture", fx.dir, name);

    g_ptr_array_add(a, g_strdup("dest"));
    g_ptr_array_add(a, g_strdup_printf("--listen=127.0.0.1:%u", p->dst_port));
    g_ptr_array_add(a, g_strdup_printf("--to=127.0.0.1:%u", qemu_port));
    g_ptr_array_add(a, g_strdup("--allow=127.0.0.1"));
    g_ptr_array_add(a, g_strdup_printf("--report=%s", p->dst_report));
    g_ptr_array_add(a, g_strdup("--once"));
    g_ptr_array_add(a, g_strdup("--verbose"));
    for (guint i = 0; fx.dst_extra && fx.dst_extra[i]; i++)
        g_ptr_array_add(a, g_strdup(fx.dst_extra[i]));
    g_autofree char *dlog = g_strdup_printf("%s/%s-dest.log", fx.dir, name);
    proc_start(&p->dst, dlog, a);

    p->src_port = mp_qemu_pick_free_port(&err);
    cr_assert(p->src_port, "%s", err ? err->message : "?");
    g_ptr_array_add(b, g_strdup("source"));
    g_ptr_array_add(b, g_strdup_printf("--listen=127.0.0.1:%u", p->src_port));
    g_ptr_array_add(b, g_strdup_printf("--peer=127.0.0.1:%u", p->dst_port));
    g_ptr_array_add(b, g_strdup_printf("--report=%s", p->report));
    g_ptr_array_add(b, g_strdup_printf("--capture=%s", p->capture));
    g_ptr_array_add(b, g_strdup_printf("--metrics=%s/%s-metrics.jsonl",
                                       fx.dir, name));
    g_ptr_array_add(b, g_strdup("--once"));
    g_ptr_array_add(b, g_strdup("--no-progress"));
    g_ptr_array_add(b, g_strdup("--verbose"));
    for (guint i = 0; src_extra && src_extra[i]; i++)
        g_ptr_array_add(b, g_strdup(src_extra[i]));
    g_autofree char *slog = g_strdup_printf("%s/%s-source.log", fx.dir, name);
    proc_start(&p->src, slog, b);
    return p;
}

static json_object *
read_json(const char *path)
{
    json_object *o = json_object_from_file(path);
    cr_assert_not_null(o, "%s: no JSON", path);
    return o;
}

static void
fx_init(void)
{
    fx.dir = it_tmpdir();
}

static void
fx_fini(void)
{
    pair_free(fx.pair);
    pair_free(fx.pair2);
    fx.pair = fx.pair2 = NULL;
    g_clear_pointer(&fx.src, mp_qemu_free);
    g_clear_pointer(&fx.dst, mp_qemu_free);
    if (fx.dir)
        it_remove_tree(fx.dir);
    g_clear_pointer(&fx.dir, g_free);
}

TestSuite(tunnel, .init = fx_init, .fini = fx_fini, .timeout = 300);

typedef struct Case {
    const char *name;
    const char *version;     /* the source's; NULL: 7.2 */
    const char *dst_version; /* NULL: the source's */
    const char *machine;
    const char *append;
    const char *caps[4];
    guint multifd_channels;
    const char *multifd_compression; /* both sides, or NULL */
    gint64 bandwidth;                /* max-bandwidth; 0: the default */
    gboolean blk;                    /* migrate -b */
    const char *const *src_extra;    /* QEMU arguments */
    const char *const *dst_extra;
    guint postcopy_after_ms;
    gboolean mem_from_stream; /* 7.2: compare with the captured stream */
    /* QEMU's own compression: the tunnel's zstd may not shrink it */
    gboolean incompressible;
    const char *src_args[8]; /* NULL-terminated */
    /* more checks once memory compared: the source side's report, the
     * source QEMU's final query-migrate */
    void (*check)(const struct Case *c, json_object *rep, json_object *src);
    gpointer data; /* for check */
    /* the link carries at most this share of QEMU's bytes (0: only
     * fewer, or no check with --no-compress) */
    double max_ratio;
} Case;

static gint64
sum_channels(json_object *rep, const char *key)
{
    json_object *chans = it_jget(rep, "channels");
    gint64 n = 0;
    for (gsize i = 0; i < json_object_array_length(chans); i++)
        n += it_jint(json_object_array_get_idx(chans, i), key);
    return n;
}

/* The main connection's `to_dst.pages` in a tunnel report, or NULL
 * (pages not encoded). */
static json_object *
main_pages(json_object *tunnel)
{
    json_object *chans = it_jget(tunnel, "channels"), *pages = NULL;
    for (gsize i = 0; i < json_object_array_length(chans); i++) {
        json_object *ch = json_object_array_get_idx(chans, i), *d = NULL;
        if (strcmp(json_object_get_string(it_jget(ch, "kind")), "main") == 0
            && json_object_object_get_ex(ch, "to_dst", &d)
            && json_object_object_get_ex(d, "pages", &pages))
            return pages;
    }
    return NULL;
}

static gboolean
has_arg(const Case *c, const char *arg)
{
    for (guint i = 0; i < G_N_ELEMENTS(c->src_args) && c->src_args[i]; i++)
        if (strcmp(c->src_args[i], arg) == 0)
            return TRUE;
    return FALSE;
}

static void
run(const Case *c)
{
    g_autoptr(GError) err = NULL;
    const char *v = c->version ? c->version : "7.2";
    const char *dv = c->dst_version ? c->dst_version : v;

    fx.src = it_start_workload(v, c->machine, 128, c->append, c->src_extra);
    fx.dst = it_start_destination(dv, c->machine, c->postcopy_after_ms != 0,
                                  c->dst_extra);
    guint16 qport = mp_qemu_pick_free_port(&err);
    cr_assert(qport, "%s", err ? err->message : "?");
    fx.pair = pair_start(c->name, qport,
                         c->src_args[0] ? c->src_args : NULL);
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
    it_incoming(fx.dst, qport);
    /* pre-copy held to 16 MiB/s when post-copy is to start: the ~60 MB
     * stream then takes seconds, so it cannot complete before the switch
     * however idle the machine (at 256 MiB/s it did, in under 500 ms) */
    it_set_int(fx.src, "max-bandwidth",
               c->bandwidth           ? c->bandwidth
               : c->postcopy_after_ms ? 16 << 20
                                      : 256 << 20);
    it_set_int(fx.src, "downtime-limit", 20);
    if (c->postcopy_after_ms)
        it_set_int(fx.src, "max-postcopy-bandwidth", 16 << 20);

    it_migrate(fx.src, fx.pair->src_port, c->blk);
    if (c->postcopy_after_ms)
        it_start_postcopy(fx.src, c->postcopy_after_ms);
    json_object *src = it_wait_final(fx.src, MIGRATE_TIMEOUT_MS);
    g_autofree char *slog = log_text(&fx.pair->src);
    g_autofree char *dlog = log_text(&fx.pair->dst);
    cr_assert_str_eq(json_object_get_string(it_jget(src, "status")),
                     "completed", "source: %s\nsource side:\n%s\ndest:\n%s",
                     json_object_to_json_string(src), slog, dlog);
    json_object *dst = it_wait_final(fx.dst, MIGRATE_TIMEOUT_MS);
    cr_assert_str_eq(json_object_get_string(it_jget(dst, "status")),
                     "completed");
    cr_assert_eq(proc_wait(&fx.pair->src, 60000), 0, "source side:\n%s",
                 slog);
    cr_assert_eq(proc_wait(&fx.pair->dst, 30000), 0, "dest:\n%s", dlog);

    json_object *rep = read_json(fx.pair->report);
    json_object *drep = read_json(fx.pair->dst_report);
    /* the source's report, its tunnel part included, is what
     * docs/schema/report.schema.json says */
    it_validate_json("report", fx.pair->report, FALSE);
    cr_assert_str_eq(json_object_get_string(it_jget(rep, "outcome")),
                     "completed");
    cr_assert_str_eq(json_object_get_string(it_jget(drep, "outcome")),
                     "ended");
    /* QEMU's bytes (the relay's count) against the tunnel's */
    gint64 stream = sum_channels(rep, "to_dst.bytes");
    gint64 entered = sum_channels(it_jget(rep, "tunnel"), "to_dst.bytes_in");
    gint64 link = it_jint(rep, "tunnel.link_bytes_out");
    gint64 written = sum_channels(it_jget(drep, "tunnel"), "to_dst.bytes_out");
    guint conns = json_object_array_length(it_jget(rep, "channels"));
    cr_assert_eq(json_object_array_length(it_jget(rep, "tunnel.channels")),
                 conns);
    cr_assert_eq(json_object_array_length(it_jget(drep, "tunnel.channels")),
                 conns);
    /* the source side named each connection as the relay did, and dest
     * opened them in that order (multifd channels in the order they
     * connected, which need not be their ids' order: each id once) */
    guint ids = 0;
    for (guint i = 0; i < conns; i++) {
        json_object *rc = json_object_array_get_idx(it_jget(rep, "channels"),
                                                    i);
        json_object *tc = json_object_array_get_idx(
            it_jget(rep, "tunnel.channels"), i);
        json_object *dc = json_object_array_get_idx(
            it_jget(drep, "tunnel.channels"), i);
        const char *kind = json_object_get_string(it_jget(rc, "kind"));
        cr_assert_str_eq(json_object_get_string(it_jget(tc, "kind")), kind,
                         "connection %u", i);
        cr_assert_str_eq(json_object_get_string(it_jget(dc, "kind")), kind,
                         "connection %u at dest", i);
        if (strcmp(kind, "multifd") == 0) {
            gint64 id = it_jint(dc, "index");
            cr_assert_eq(id, it_jint(tc, "index"), "connection %u", i);
            cr_assert(id < 32 && !(ids & (1u << id)),
                      "multifd id %" G_GINT64_FORMAT, id);
            ids |= 1u << id;
        }
    }
    if (c->multifd_channels)
        cr_assert_eq(ids, (1u << c->multifd_channels) - 1);
    g_printerr("tunnel-bytes case=%s conns=%u qemu_stream=%" G_GINT64_FORMAT
               " into_tunnel=%" G_GINT64_FORMAT " link=%" G_GINT64_FORMAT
               " ratio=%.3f qemu_total_ms=%" G_GINT64_FORMAT
               " qemu_downtime_ms=%" G_GINT64_FORMAT " report_total_ms=%.0f\n",
               c->name, conns, stream, entered, link,
               stream ? (double)link / stream : 0.0,
               it_jint(src, "total-time"), it_jint(src, "downtime"),
               it_jnum(rep, "total_ms"));
    /* RAM pages went as PAGES unless --no-pages: the destination wrote
     * RAM records of its own (the memory check below says they mean the
     * same); otherwise what entered the tunnel came out at the
     * destination, byte for byte in count */
    json_object *sp = main_pages(it_jget(rep, "tunnel"));
    json_object *dp = main_pages(it_jget(drep, "tunnel"));
    if (has_arg(c, "--no-pages")) {
        cr_assert_null(sp);
        cr_assert_eq(entered, written);
    } else if (c->multifd_channels) {
        /* the pages are inside multifd packets, which stay DATA
         * (docs/tunnel.md, "Left to do"); the main stream's encoder ran */
        cr_assert(sp, "no pages in the source's report");
    } else {
        cr_assert(sp && dp, "no pages in the reports");
        g_printerr("tunnel-pages case=%s stream_bytes=%" G_GINT64_FORMAT
                   " payload_bytes=%" G_GINT64_FORMAT " batches=%"
                   G_GINT64_FORMAT " left_raw=%" G_GINT64_FORMAT
                   " zero=%" G_GINT64_FORMAT " skipped=%" G_GINT64_FORMAT
                   " dedup=%" G_GINT64_FORMAT " delta=%" G_GINT64_FORMAT
                   " zstd_cpu_s=%.3f dest_pages=%" G_GINT64_FORMAT "\n",
                   c->name, it_jint(sp, "stream_bytes"),
                   it_jint(sp, "payload_bytes"), it_jint(sp, "batches"),
                   it_jint(sp, "pages_left_raw"),
                   it_jint(sp, "zero_runs.zero_pages"),
                   it_jint(sp, "zero_runs.skipped"),
                   it_jint(sp, "dedup.hits"), it_jint(sp, "delta.used"),
                   it_jnum(sp, "zstd.cpu_s"), it_jint(dp, "pages"));
        cr_assert_gt(it_jint(sp, "batches"), 0);
        cr_assert_eq(it_jint(dp, "batches"), it_jint(sp, "batches"));
        /* most of the pages went encoded, not as raw stream bytes */
        cr_assert_gt(it_jint(sp, "stream_bytes"), stream / 2);
    }
    if (!has_arg(c, "--no-compress") && !c->incompressible)
        cr_assert_lt(link, stream, "the tunnel took %" G_GINT64_FORMAT
                                   " bytes for %" G_GINT64_FORMAT
                                   " of QEMU's",
                     link, stream);
    if (c->max_ratio)
        cr_assert_lt((double)link / stream, c->max_ratio,
                     "the tunnel took %" G_GINT64_FORMAT " bytes for %"
                     G_GINT64_FORMAT " of QEMU's",
                     link, stream);

    if (c->postcopy_after_ms) {
        /* the destination asked for pages over the return path, through
         * the tunnel's reverse stream, and got them */
        g_printerr("tunnel-postcopy requests=%" G_GINT64_FORMAT
                   " wire_requests=%" G_GINT64_FORMAT "\n",
                   it_jint(src, "ram.postcopy-requests"),
                   it_jint(rep, "postcopy.requests"));
        cr_assert_gt(it_jint(src, "ram.postcopy-requests"), 0);
        cr_assert_eq(it_jint(rep, "postcopy.requests"),
                     it_jint(src, "ram.postcopy-requests"));
        /* requested pages went in the urgent lane (docs/tunnel.md,
         * "Lifted pages"); dest wrote each once: their batch copies were
         * dropped, none left waiting */
        json_object *sl = it_jget(sp, "lift"), *dl = it_jget(dp, "lift");
        g_printerr("tunnel-lift case=%s source=%s dest=%s\n", c->name,
                   json_object_to_json_string(sl),
                   json_object_to_json_string(dl));
        gboolean lift = !has_arg(c, "--no-lift");
        cr_assert_eq(json_object_get_boolean(it_jget(sl, "enabled")), lift);
        cr_assert_eq(it_jint(sl, "requests"),
                     lift ? it_jint(rep, "postcopy.requests") : 0);
        /* plain post-copy: requested pages come on the main channel
         * (with preempt they take the preempt channel) */
        if (lift && !c->caps[1])
            cr_assert_gt(it_jint(sl, "pages"), 0);
        cr_assert_eq(it_jint(dl, "pages"),
                     it_jint(sl, "pages") + it_jint(sl, "neighbours"));
        cr_assert_eq(it_jint(dl, "bulk_dropped"), it_jint(dl, "pages"));
        cr_assert_eq(it_jint(dl, "waiting"), 0);
        /* the tunnel, not the relay, paces the link */
        cr_assert_str_eq(json_object_get_string(
                             it_jget(rep, "priority.rate_source")),
                         "none");
        /* running destination: the guest verifies itself */
        const char *path = mp_qemu_console_path(fx.dst);
        gint64 deadline = g_get_monotonic_time() + 20 * G_USEC_PER_SEC;
        for (;;) {
            g_autofree char *text = NULL;
            g_file_get_contents(path, &text, NULL, NULL);
            cr_assert(!text || !strstr(text, "CORRUPT"), "%s", text);
            guint passes = 0;
            for (const char *q = text; q && (q = strstr(q, "verify pass="));
                 q++)
                passes++;
            if (passes >= 3)
                break;
            cr_assert(g_get_monotonic_time() < deadline,
                      "%u verify passes:\n%s", passes, text ? text : "");
            g_usleep(200000);
        }
    } else if (c->mem_from_stream) {
        g_autofree char *capture =
            g_build_filename(fx.pair->capture, "s1-c0-to-dst.bin", NULL);
        g_autofree char *ram = g_build_filename(fx.dir, "ram", NULL);
        g_autofree char *image = g_build_filename(ram, "pc.ram", NULL);
        json_object_put(it_analyze(capture, ram));
        it_assert_ram_equals(fx.dst, image, RAM_BYTES, fx.dir);
    } else {
        it_assert_same_ram(fx.src, fx.dst, RAM_BYTES, fx.dir);
    }
    /* the tunnel's link (PINGs answered) in the report and the --metrics
     * lines, both as their schemas say */
    cr_assert_gt(it_jint(rep, "tunnel.link.pongs"), 0);
    it_validate_json("report", fx.pair->report, FALSE);
    g_autofree char *metrics =
        g_strdup_printf("%s/%s-metrics.jsonl", fx.dir, c->name);
    g_autofree char *lines = NULL;
    cr_assert(g_file_get_contents(metrics, &lines, NULL, NULL));
    cr_assert(strstr(lines, "\"link\""), "no link in %s", metrics);
    it_validate_json("metrics-line", metrics, TRUE);
    if (c->check)
        c->check(c, rep, src);
    json_object_put(rep);
    json_object_put(drep);
    json_object_put(src);
    json_object_put(dst);
}

Test(tunnel, precopy_72)
{
    Case c = {.name = "precopy_72",
              .append = "mem=64M rate=4000",
              .mem_from_stream = TRUE};
    run(&c);
}

Test(tunnel, precopy_100)
{
    Case c = {.name = "precopy_100",
              .version = "10.0",
              .machine = "pc-q35-10.0",
              .append = "mem=64M rate=4000"};
    run(&c);
}

Test(tunnel, precopy_100_no_compress)
{
    Case c = {.name = "precopy_100_no_compress",
              .version = "10.0",
              .machine = "pc-q35-10.0",
              .append = "mem=32M rate=2000",
              .src_args = {"--no-compress"}};
    run(&c);
}

/* TLS both ways (tls-certs.h), memory identical; both sides say TLS and
 * neither that it is plain. */
Test(tunnel, precopy_100_tls)
{
    g_autofree char *certs = g_build_filename(fx.dir, "tls", NULL);
    g_mkdir(certs, 0700);
    it_make_certs(certs);
    g_autofree char *sc = g_strdup_printf("--tls-cert=%s/source.pem", certs);
    g_autofree char *sk = g_strdup_printf("--tls-key=%s/source.key", certs);
    g_autofree char *dc = g_strdup_printf("--tls-cert=%s/dest.pem", certs);
    g_autofree char *dk = g_strdup_printf("--tls-key=%s/dest.key", certs);
    g_autofree char *ca = g_strdup_printf("--tls-ca=%s/ca.pem", certs);
    const char *dst[] = {dc, dk, ca, NULL};
    fx.dst_extra = dst;
    Case c = {.name = "precopy_100_tls",
              .version = "10.0",
              .machine = "pc-q35-10.0",
              .append = "mem=64M rate=4000",
              .src_args = {sc, sk, ca}};
    run(&c);
    g_autofree char *slog = log_text(&fx.pair->src);
    g_autofree char *dlog = log_text(&fx.pair->dst);
    cr_assert(strstr(slog, "TLS, both ends authenticated"), "%s", slog);
    cr_assert(strstr(dlog, "(TLS, client certificate required)"), "%s", dlog);
    cr_assert(!strstr(slog, "plain TCP") && !strstr(dlog, "plain TCP"),
              "%s\n%s", slog, dlog);
    fx.dst_extra = NULL;
}

/* Compressible pages (no random ones): the encoders must shrink the link
 * far below QEMU's bytes. */
Test(tunnel, precopy_100_compressible)
{
    Case c = {.name = "precopy_100_compressible",
              .version = "10.0",
              .machine = "pc-q35-10.0",
              .append = "mem=64M rate=4000 rand=0",
              .max_ratio = 0.25};
    run(&c);
}

/* Every page encoder off: pages still go as PAGES (whole pages), and the
 * memory is the same. */
Test(tunnel, precopy_100_encoders_off)
{
    Case c = {.name = "precopy_100_encoders_off",
              .version = "10.0",
              .machine = "pc-q35-10.0",
              .append = "mem=32M rate=2000",
              .src_args = {"--no-compress", "--no-zero-runs", "--no-delta",
                           "--no-dedup"}};
    run(&c);
}

/* The link rate given far above what one zstd thread encodes: zstd goes
 * off adaptively (logged with its numbers, off in the report and in the
 * --metrics lines' encoders), pages go on through the other encoders,
 * and the memory is the same. */
static void
check_adapt(const Case *c, json_object *rep, json_object *src)
{
    g_autofree char *slog = log_text(&fx.pair->src);
    cr_assert(strstr(slog, "zstd off: CPU-bound"), "%s", slog);
    json_object *sp = main_pages(it_jget(rep, "tunnel"));
    cr_assert_not(json_object_get_boolean(it_jget(sp, "zstd.on")));
    cr_assert_geq(it_jint(sp, "zstd.switches"), 1);
    g_autofree char *metrics =
        g_strdup_printf("%s/%s-metrics.jsonl", fx.dir, c->name);
    g_autofree char *lines = NULL;
    cr_assert(g_file_get_contents(metrics, &lines, NULL, NULL));
    cr_assert(strstr(lines, "\"encoders\""), "no encoders in %s", metrics);
    g_printerr("tunnel-adapt zstd_in=%" G_GINT64_FORMAT " zstd_out=%"
               G_GINT64_FORMAT " zstd_cpu_s=%.3f payload=%" G_GINT64_FORMAT
               " stream=%" G_GINT64_FORMAT "\n",
               it_jint(sp, "zstd.bytes_in"), it_jint(sp, "zstd.bytes_out"),
               it_jnum(sp, "zstd.cpu_s"), it_jint(sp, "payload_bytes"),
               it_jint(sp, "stream_bytes"));
}

Test(tunnel, precopy_100_adapt)
{
    Case c = {.name = "precopy_100_adapt",
              .version = "10.0",
              .machine = "pc-q35-10.0",
              .append = "mem=64M rate=4000",
              .src_args = {"--rate=100gbit", "--workers=1"},
              /* 32 MiB/s: the stream lasts over 2 s, so the once-a-second
               * decision comes with the 4 MiB zstd needs in hand */
              .bandwidth = 32 << 20,
              /* zstd goes off: the link may carry what QEMU sent */
              .incompressible = TRUE,
              .check = check_adapt};
    run(&c);
}

Test(tunnel, multifd4_100)
{
    Case c = {.name = "multifd4_100",
              .version = "10.0",
              .machine = "pc-q35-10.0",
              .append = "mem=64M rate=4000",
              .caps = {"multifd"},
              .multifd_channels = 4};
    run(&c);
}

Test(tunnel, postcopy_100)
{
    Case c = {.name = "postcopy_100",
              .version = "10.0",
              .machine = "pc-q35-10.0",
              .append = "mem=64M rate=5000 verify=1",
              .caps = {"postcopy-ram"},
              .postcopy_after_ms = 500};
    run(&c);
}

/* The same without lifting requested pages (--no-lift): the lane's
 * counters say nothing went urgent. */
Test(tunnel, postcopy_100_no_lift)
{
    Case c = {.name = "postcopy_100_no_lift",
              .version = "10.0",
              .machine = "pc-q35-10.0",
              .append = "mem=64M rate=5000 verify=1",
              .caps = {"postcopy-ram"},
              .postcopy_after_ms = 500,
              .src_args = {"--no-lift"}};
    run(&c);
}

/* The tunnel cut mid-pre-copy (dest killed): the source side resets the
 * migration's connections, the source QEMU fails at once and its guest
 * runs on; the source side reports the failure and exits 1; a retry
 * through a fresh pair completes. */
Test(tunnel, tunnel_killed)
{
    g_autoptr(GError) err = NULL;

    fx.src = it_start_workload("7.2", NULL, 128, "mem=64M rate=2000", NULL);
    fx.dst = it_start_destination("7.2", NULL, FALSE, NULL);
    guint16 qport = mp_qemu_pick_free_port(&err);
    cr_assert(qport, "%s", err ? err->message : "?");
    fx.pair = pair_start("killed", qport, NULL);
    it_incoming(fx.dst, qport);
    it_set_int(fx.src, "max-bandwidth", 8 << 20);
    it_migrate(fx.src, fx.pair->src_port, FALSE);
    g_usleep(1500 * 1000);
    g_autofree char *st = it_migration_status(fx.src);
    cr_assert_str_eq(st, "active");

    gint64 t0 = g_get_monotonic_time();
    cr_assert_eq(kill(fx.pair->dst.pid, SIGKILL), 0);
    json_object *info = it_wait_final(fx.src, 30000);
    g_autofree char *slog = log_text(&fx.pair->src);
    cr_assert_str_eq(json_object_get_string(it_jget(info, "status")), "failed",
                     "%s\nsource side:\n%s", json_object_to_json_string(info),
                     slog);
    g_printerr("tunnel-failure source failed after %" G_GINT64_FORMAT
               " ms: %s\n",
               (g_get_monotonic_time() - t0) / 1000,
               json_object_get_string(it_jget(info, "error-desc")));
    json_object_put(info);
    g_autofree char *state = it_run_state(fx.src);
    cr_assert_str_eq(state, "running", "the source guest is %s", state);
    cr_assert_eq(proc_wait(&fx.pair->src, 40000), 1);
    g_free(slog);
    slog = log_text(&fx.pair->src);
    cr_assert(strstr(slog, "the tunnel failed"), "%s", slog);
    json_object *rep = read_json(fx.pair->report);
    const char *outcome = json_object_get_string(it_jget(rep, "outcome"));
    cr_assert(g_str_has_prefix(outcome, "failed"), "%s", outcome);
    json_object_put(rep);

    /* the retry: a fresh destination QEMU and pair */
    g_clear_pointer(&fx.dst, mp_qemu_free);
    fx.dst = it_start_destination("7.2", NULL, FALSE, NULL);
    guint16 qport2 = mp_qemu_pick_free_port(&err);
    cr_assert(qport2, "%s", err ? err->message : "?");
    fx.pair2 = pair_start("retry", qport2, NULL);
    it_incoming(fx.dst, qport2);
    it_set_int(fx.src, "max-bandwidth", 256 << 20);
    it_migrate(fx.src, fx.pair2->src_port, FALSE);
    json_object *fin = it_wait_final(fx.src, MIGRATE_TIMEOUT_MS);
    g_autofree char *slog2 = log_text(&fx.pair2->src);
    cr_assert_str_eq(json_object_get_string(it_jget(fin, "status")),
                     "completed", "%s\n%s", json_object_to_json_string(fin),
                     slog2);
    json_object_put(fin);
    cr_assert_eq(proc_wait(&fx.pair2->src, 60000), 0);
    cr_assert_eq(proc_wait(&fx.pair2->dst, 30000), 0);
}

/* Without TLS, dest takes tunnels only from --allow: none given is a
 * usage error; a source side from another address is closed at accept,
 * so that source side never gets a tunnel and says so (exit 1), and no
 * QEMU is involved. */
Test(tunnel, dest_allow)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *out = NULL, *errtext = NULL;
    int status;

    const char *noallow[] = {it_migproxy(), "dest", "--listen=127.0.0.1:0",
                             "--to=127.0.0.1:1", NULL};
    cr_assert(g_spawn_sync(NULL, (char **)noallow, NULL, G_SPAWN_DEFAULT, NULL,
                           NULL, &out, &errtext, &status, &err));
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 2, "%s", errtext);
    cr_assert(strstr(errtext, "--allow is required"), "%s", errtext);

    fx.pair = g_new0(Pair, 1);
    fx.pair->src.status = fx.pair->dst.status = -1;
    fx.pair->dst_port = mp_qemu_pick_free_port(&err);
    cr_assert(fx.pair->dst_port);
    g_autoptr(GPtrArray) a = g_ptr_array_new_with_free_func(g_free);
    g_ptr_array_add(a, g_strdup("dest"));
    g_ptr_array_add(a, g_strdup_printf("--listen=127.0.0.1:%u",
                                       fx.pair->dst_port));
    g_ptr_array_add(a, g_strdup("--to=127.0.0.1:1"));
    g_ptr_array_add(a, g_strdup("--allow=127.0.0.2"));
    g_autofree char *dlog = g_strdup_printf("%s/allow-dest.log", fx.dir);
    proc_start(&fx.pair->dst, dlog, a);
    g_autofree char *dtext = log_text(&fx.pair->dst);
    cr_assert(strstr(dtext, "no TLS"), "dest does not say it has no TLS:\n%s",
              dtext);

    g_autofree char *peer = g_strdup_printf("--peer=127.0.0.1:%u",
                                            fx.pair->dst_port);
    const char *src[] = {it_migproxy(), "source", "--listen=127.0.0.1:0", peer,
                         "--connect-timeout=3000", NULL};
    g_clear_pointer(&errtext, g_free);
    g_clear_pointer(&out, g_free);
    cr_assert(g_spawn_sync(NULL, (char **)src, NULL, G_SPAWN_DEFAULT, NULL,
                           NULL, &out, &errtext, &status, &err));
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 1, "%s", errtext);
    cr_assert(strstr(errtext, "--peer") && strstr(errtext, "--allow"), "%s",
              errtext);
    g_free(dtext);
    dtext = log_text(&fx.pair->dst);
    cr_assert(strstr(dtext, "not in --allow"), "%s", dtext);
}

/* postcopy-preempt (10.0 connects it at the switchover): the channel
 * goes through the tunnel in its own urgent stream, named preempt. */
Test(tunnel, preempt_100)
{
    Case c = {.name = "preempt_100",
              .version = "10.0",
              .machine = "pc-q35-10.0",
              .append = "mem=64M rate=5000 verify=1",
              .caps = {"postcopy-ram", "postcopy-preempt"},
              .postcopy_after_ms = 500};
    run(&c);
}

/* QEMU 7.2 connects its preempt channel right after the main one and
 * says nothing on it until post-copy: the source side names it preempt
 * after 100 ms of silence, and dest still opens it second. */
Test(tunnel, preempt_72)
{
    Case c = {.name = "preempt_72",
              .append = "mem=64M rate=5000 verify=1",
              .caps = {"postcopy-ram", "postcopy-preempt"},
              .postcopy_after_ms = 500};
    run(&c);
}

/* A 7.2 source to a 10.0 destination (machine pc-q35-7.2 on both): the
 * 10.0 destination loads the 7.2 stream that came through the pair. */
Test(tunnel, precopy_72_to_100)
{
    Case c = {.name = "precopy_72_to_100",
              .dst_version = "10.0",
              .machine = "pc-q35-7.2",
              .append = "mem=64M rate=4000",
              .mem_from_stream = TRUE};
    run(&c);
}

/* XBZRLE pages crossed the tunnel (the source side's relay counts them);
 * on 7.2 its byte count is exact (docs/qemu-quirks.md), checked as the
 * relay's xbzrle_72 does. */
static void
check_xbzrle(const Case *c, json_object *rep, json_object *src)
{
    gint64 xp = it_jint(rep, "ram.pages.xbzrle");
    g_printerr("tunnel-xbzrle case=%s pages=%" G_GINT64_FORMAT
               " cache_bytes=%" G_GINT64_FORMAT "\n",
               c->name, xp, it_jint(src, "xbzrle-cache.bytes"));
    cr_assert_gt(xp, 0, "no XBZRLE page on the wire");
    if (!c->version)
        cr_assert_eq(it_jint(rep, "ram.bytes_by_kind.xbzrle") - 8 * xp
                         + 4096 * it_jint(src, "xbzrle-cache.overflow"),
                     it_jint(src, "xbzrle-cache.bytes"));
}

/* 32 MiB/s: XBZRLE pages come from round 3 on (as in the relay's
 * xbzrle_72); touch=64 dirties 64 bytes of a page, so deltas are small */
Test(tunnel, xbzrle_72)
{
    Case c = {.name = "xbzrle_72",
              .append = "mem=64M rate=3000 touch=64",
              .caps = {"xbzrle"},
              .bandwidth = 32 << 20,
              .mem_from_stream = TRUE,
              .check = check_xbzrle};
    run(&c);
}

Test(tunnel, xbzrle_100)
{
    Case c = {.name = "xbzrle_100",
              .version = "10.0",
              .machine = "pc-q35-10.0",
              .append = "mem=64M rate=3000 touch=64",
              .caps = {"xbzrle"},
              .bandwidth = 32 << 20,
              .check = check_xbzrle};
    run(&c);
}

/* multifd x4 with QEMU's zstd on the channels: the pages are already
 * compressed, so the tunnel's own zstd gains little on them (not
 * asserted; the tunnel-bytes line shows it). */
Test(tunnel, multifd4_zstd_100)
{
    Case c = {.name = "multifd4_zstd_100",
              .version = "10.0",
              .machine = "pc-q35-10.0",
              .append = "mem=64M rate=3000",
              .caps = {"multifd"},
              .multifd_channels = 4,
              .multifd_compression = "zstd",
              .incompressible = TRUE};
    run(&c);
}

/* The disk arrived: 16 chunks of 1 MiB, 10 of them zero (zero-blocks),
 * and the destination's file equals the source's once its QEMU quit. */
static void
check_disk(const Case *c, json_object *rep, json_object *src)
{
    const guint8 *want = c->data;
    gsize size = 16u << 20;
    cr_assert_eq(it_jint(rep, "disk.chunks"), 16);
    cr_assert_eq(it_jint(rep, "disk.zero_chunks"), 10);
    cr_assert_eq(it_jint(rep, "disk.data_bytes"), 6 << 20);
    g_clear_pointer(&fx.dst, mp_qemu_free); /* quit: the disk is flushed */
    g_autofree char *ddisk = g_build_filename(fx.dir, "dst.raw", NULL);
    g_autofree char *got = NULL;
    gsize got_len = 0;
    cr_assert(g_file_get_contents(ddisk, &got, &got_len, NULL));
    cr_assert_eq(got_len, size);
    cr_assert(memcmp(got, want, size) == 0,
              "the destination's disk differs from the source's");
}

/* Block migration (7.2, `migrate -b`): a 16 MiB disk, 6 MiB of data, to
 * an all-zero one.  A quiet guest, so its memory is compared with the
 * source's. */
Test(tunnel, block_72)
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
              .check = check_disk,
              .data = data};
    run(&c);
}
