/* test-metrics.c: the metrics model fed by hand (records, byte counts,
 * ends) and read back through its accessors, with no I/O; then its
 * presentations (JSON lines, progress line, summary) on what it was fed. */
#include "config.h"
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <criterion/criterion.h>
#include <glib/gstdio.h>
#include "metrics.h"
#include "metrics-lines.h"
#include "metrics-log.h"
#include "metrics-progress.h"
#include "metrics-report.h"
#include "session.h"
#include "test-util.h"

/* the session starts at monotonic time 1000 */
#define T0 1000

static void
feed_rp(MpMetrics *m, guint16 type, const char *block, guint64 start,
        guint32 value, gint64 now)
{
    MpRecord rec = {.kind = MP_REC_RP_MESSAGE};
    rec.u.rp.type = type;
    rec.u.rp.block = block;
    rec.u.rp.start = start;
    rec.u.rp.value = value;
    mp_metrics_record(m, 0, MP_DIR_TO_SRC, &rec, now);
}

static void
feed_page(MpMetrics *m, guint channel, const char *block, guint64 addr,
          gint64 now)
{
    MpRecord rec = {.kind = MP_REC_RAM_PAGE};
    rec.u.page.block = block;
    rec.u.page.addr = addr;
    rec.u.page.kind = MP_PAGE_NORMAL;
    rec.u.page.size = 4096;
    mp_metrics_record(m, channel, MP_DIR_TO_DST, &rec, now);
}

Test(metrics, bytes_per_channel_direction_and_interval)
{
    g_autoptr(MpMetrics) m = mp_metrics_new(3, 0, T0);

    cr_assert_eq(mp_metrics_session(m), 3);
    cr_assert_eq(mp_metrics_n_channels(m), 0);
    cr_assert_eq(mp_metrics_last_us(m), -1);
    mp_metrics_channel_open(m, 0, "10.0.0.1:4000", T0);
    mp_metrics_channel_open(m, 2, NULL, T0 + 5);
    mp_metrics_channel_kind(m, 0, MP_CHAN_MAIN, T0 + 10);
    mp_metrics_bytes(m, 0, MP_DIR_TO_DST, 100, T0 + 20);
    mp_metrics_bytes(m, 0, MP_DIR_TO_DST, 50, T0 + 150000);
    mp_metrics_bytes(m, 0, MP_DIR_TO_SRC, 7, T0 + 250000);

    cr_assert_eq(mp_metrics_n_channels(m), 3);
    cr_assert_null(mp_metrics_channel(m, 1), "never opened");
    cr_assert_null(mp_metrics_channel(m, 99));
    const MpMetricsChannel *c = mp_metrics_channel(m, 0);
    cr_assert_str_eq(c->peer, "10.0.0.1:4000");
    cr_assert_eq(c->kind, MP_CHAN_MAIN);
    cr_assert_eq(c->open_us, 0);
    cr_assert_eq(c->kind_us, 10);
    cr_assert_eq(c->dir[MP_DIR_TO_DST].bytes, 150);
    cr_assert_eq(c->dir[MP_DIR_TO_SRC].bytes, 7);
    cr_assert_eq(c->dir[MP_DIR_TO_DST].last_us, 150000);
    /* 100 ms steps: 100 bytes in the first, 50 in the second */
    const GArray *s = c->dir[MP_DIR_TO_DST].series;
    cr_assert_eq(s->len, 2);
    cr_assert_eq(g_array_index(s, guint64, 0), 100);
    cr_assert_eq(g_array_index(s, guint64, 1), 50);
    cr_assert_eq(c->dir[MP_DIR_TO_SRC].series->len, 3);
    cr_assert_null(mp_metrics_channel(m, 2)->peer);
    cr_assert_eq(mp_metrics_total_bytes(m), 157);
    cr_assert_eq(mp_metrics_last_us(m), 250000);
    cr_assert_eq(mp_metrics_outcome(m), MP_METRICS_OUTCOME_RUNNING);
    cr_assert_null(mp_metrics_outcome_text(m));
}

Test(metrics, first_partial_and_end_count)
{
    g_autoptr(MpMetrics) m = mp_metrics_new(1, 0, T0);

    mp_metrics_partial(m, 1, MP_DIR_TO_DST, 4096, "bad byte", T0 + 1);
    mp_metrics_partial(m, 1, MP_DIR_TO_DST, 9999, "later", T0 + 2);
    mp_metrics_channel_end(m, 1, MP_DIR_TO_DST, MP_END_RESET, "RAM page", T0 + 3);
    mp_metrics_channel_end(m, 1, MP_DIR_TO_DST, MP_END_FIN, NULL, T0 + 4);
    const MpMetricsFlow *f = &mp_metrics_channel(m, 1)->dir[MP_DIR_TO_DST];
    cr_assert(f->partial);
    cr_assert_eq(f->partial_offset, 4096);
    cr_assert_str_eq(f->partial_why, "bad byte");
    cr_assert(f->ended);
    cr_assert_eq(f->end, MP_END_RESET);
    cr_assert_str_eq(f->truncated, "RAM page");
    cr_assert_eq(f->end_us, 3);
    cr_assert_not(mp_metrics_channel(m, 1)->dir[MP_DIR_TO_SRC].ended);
    mp_metrics_finish(m, T0 + 5, NULL);
    /* a reset and no stop: the migration did not get far */
    cr_assert_eq(mp_metrics_outcome(m), MP_METRICS_OUTCOME_FAILED);
    cr_assert_str_eq(mp_metrics_outcome_text(m),
                     "failed: ended before the source stopped");
}

/* A page request's clock runs from its first REQ_PAGES to the page;
 * a second request for the same page does not restart it. */
Test(metrics, postcopy_request_latency)
{
    g_autoptr(MpMetrics) m = mp_metrics_new(1, 0, T0);
    MpMetricsPostcopy pc;

    mp_metrics_postcopy(m, &pc);
    cr_assert_eq(pc.count, 0);
    cr_assert_eq(pc.p50_us, 0);
    feed_rp(m, MP_RP_MSG_REQ_PAGES_ID, "pc.ram", 0x1000, 0, T0 + 100);
    feed_rp(m, MP_RP_MSG_REQ_PAGES, "pc.ram", 0x1000, 0, T0 + 200);
    feed_rp(m, MP_RP_MSG_REQ_PAGES, "pc.ram", 0x2000, 0, T0 + 300);
    feed_rp(m, MP_RP_MSG_REQ_PAGES, "pc.ram", 0x3000, 0, T0 + 300);
    feed_page(m, 0, "pc.ram", 0x5000, T0 + 350); /* not asked for */
    feed_page(m, 0, "pc.ram", 0x1000, T0 + 400);
    feed_page(m, 1, "pc.ram", 0x2000, T0 + 1300);
    feed_page(m, 1, "pc.ram", 0x2000, T0 + 5000); /* answered already */
    mp_metrics_postcopy(m, &pc);
    cr_assert_eq(pc.answered, 2);
    cr_assert_eq(pc.unanswered, 1);
    cr_assert_eq(pc.count, 2);
    cr_assert_eq(pc.p50_us, 300);
    cr_assert_eq(pc.p99_us, 1000);
    cr_assert_eq(pc.max_us, 1000);
}

/* The histogram's buckets hold the kept latencies, each in the first
 * bucket whose bound is at least it (a bound is inclusive), the ones
 * above 1 s in the last; the buckets add up to the count. */
Test(metrics, postcopy_latency_histogram)
{
    g_autoptr(MpMetrics) m = mp_metrics_new(1, 0, T0);
    MpMetricsPostcopy pc;
    const gint64 lat[] = {100, 101, 500, 999, 1000, 2500000};

    for (guint i = 0; i < G_N_ELEMENTS(lat); i++) {
        feed_rp(m, MP_RP_MSG_REQ_PAGES, "pc.ram", 0x1000 * (i + 1), 0, T0);
        feed_page(m, 0, "pc.ram", 0x1000 * (i + 1), T0 + lat[i]);
    }
    mp_metrics_postcopy(m, &pc);
    cr_assert_eq(pc.count, G_N_ELEMENTS(lat));
    guint want[MP_METRICS_LATENCY_BUCKETS] = {[0] = 1, [1] = 1, [2] = 1,
                                              [3] = 2, [13] = 1};
    guint sum = 0;
    for (guint i = 0; i < MP_METRICS_LATENCY_BUCKETS; i++) {
        cr_expect_eq(pc.histogram[i], want[i], "bucket %u (le %" G_GINT64_FORMAT
                     " us): %u, want %u", i, mp_metrics_latency_le_us[i],
                     pc.histogram[i], want[i]);
        sum += pc.histogram[i];
    }
    cr_assert_eq(sum, pc.count);
}

Test(metrics, outcome_from_the_wire)
{
    /* the destination's SHUT 0 says it loaded everything */
    g_autoptr(MpMetrics) ok = mp_metrics_new(1, 0, T0);
    feed_rp(ok, MP_RP_MSG_SHUT, NULL, 0, 0, T0 + 10);
    mp_metrics_finish(ok, T0 + 20, NULL);
    cr_assert_eq(mp_metrics_outcome(ok), MP_METRICS_OUTCOME_COMPLETED);
    cr_assert_str_eq(mp_metrics_outcome_text(ok), "completed");

    g_autoptr(MpMetrics) bad = mp_metrics_new(1, 0, T0);
    feed_rp(bad, MP_RP_MSG_SHUT, NULL, 0, 1, T0 + 10);
    mp_metrics_finish(bad, T0 + 20, NULL);
    cr_assert_str_eq(mp_metrics_outcome_text(bad),
                     "failed: the destination reported an error");

    /* TLS: only how the connections ended is known */
    g_autoptr(MpMetrics) tls = mp_metrics_new(1, 0, T0);
    mp_metrics_channel_kind(tls, 0, MP_CHAN_TLS, T0);
    mp_metrics_channel_end(tls, 0, MP_DIR_TO_DST, MP_END_FIN, NULL, T0 + 1);
    mp_metrics_finish(tls, T0 + 2, NULL);
    cr_assert_eq(mp_metrics_outcome(tls), MP_METRICS_OUTCOME_TLS_CLEAN);

    /* the caller's word wins, and only the first finish counts */
    g_autoptr(MpMetrics) cut = mp_metrics_new(1, 0, T0);
    feed_rp(cut, MP_RP_MSG_SHUT, NULL, 0, 0, T0 + 10);
    mp_metrics_finish(cut, T0 + 20, "interrupted");
    mp_metrics_finish(cut, T0 + 30, NULL);
    cr_assert_eq(mp_metrics_outcome(cut), MP_METRICS_OUTCOME_FAILED);
    cr_assert_str_eq(mp_metrics_outcome_text(cut), "interrupted");
}

/* An observer that writes down what it is told, and the interval bytes
 * a sample sees. */
typedef struct {
    MpMetricsObserver base;
    GString *log;
} Recorder;

static void
rec_open(MpMetricsObserver *o, const MpMetrics *m, guint ch, gint64 now)
{
    g_string_append_printf(((Recorder *)o)->log, "open %u %s;", ch,
                           mp_metrics_channel(m, ch)->peer);
}

static void
rec_end(MpMetricsObserver *o, const MpMetrics *m, guint ch, MpDir dir,
        gint64 now)
{
    g_string_append_printf(((Recorder *)o)->log, "end %u %s %s;", ch,
                           mp_dir_name(dir),
                           mp_end_reason_name(mp_metrics_channel(m, ch)->dir[dir].end));
}

static void
rec_phase(MpMetricsObserver *o, const MpMetrics *m, const char *phase,
          gint64 now)
{
    g_string_append_printf(((Recorder *)o)->log, "phase %s;", phase);
}

static void
rec_sample(MpMetricsObserver *o, const MpMetrics *m, gint64 interval,
           gint64 now)
{
    const MpMetricsFlow *f = &mp_metrics_channel(m, 0)->dir[MP_DIR_TO_DST];
    g_string_append_printf(((Recorder *)o)->log,
                           "sample %" G_GINT64_FORMAT " +%" G_GUINT64_FORMAT
                           ";",
                           interval, f->bytes - f->tick_bytes);
}

static void
rec_finish(MpMetricsObserver *o, const MpMetrics *m, gint64 now)
{
    g_string_append_printf(((Recorder *)o)->log, "finish %s;",
                           mp_metrics_outcome_text(m));
}

static void
rec_free(MpMetricsObserver *o)
{
    g_string_free(((Recorder *)o)->log, TRUE);
    g_free(o);
}

Test(metrics, observers_told_in_order)
{
    g_autoptr(MpMetrics) m = mp_metrics_new(1, 0, T0);
    Recorder *r = g_new0(Recorder, 1);
    r->base = (MpMetricsObserver){.channel_open = rec_open,
                                  .channel_end = rec_end,
                                  .phase = rec_phase,
                                  .sample = rec_sample,
                                  .finish = rec_finish,
                                  .free = rec_free};
    r->log = g_string_new(NULL);
    mp_metrics_add_observer(m, &r->base);

    mp_metrics_channel_open(m, 0, "a", T0);
    mp_metrics_bytes(m, 0, MP_DIR_TO_DST, 10, T0 + 1);
    mp_metrics_tick(m, T0 + 100000);
    mp_metrics_bytes(m, 0, MP_DIR_TO_DST, 5, T0 + 100001);
    mp_metrics_tick(m, T0 + 200000);
    mp_metrics_channel_end(m, 0, MP_DIR_TO_DST, MP_END_FIN, NULL, T0 + 200001);
    mp_metrics_finish(m, T0 + 200002, "interrupted");
    mp_metrics_tick(m, T0 + 300000); /* finished: no more samples */
    cr_assert_str_eq(r->log->str, "open 0 a;phase setup;sample 100000 +10;"
                                  "sample 100000 +5;end 0 to-dst fin;"
                                  "finish interrupted;");
}

Test(metrics, progress_line)
{
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    g_autoptr(MpMetrics) m = mp_metrics_new(4, 0, T0);

    mp_metrics_progress_attach(m, out);
    mp_metrics_bytes(m, 0, MP_DIR_TO_DST, 1000000, T0 + 1);
    mp_metrics_tick(m, T0 + 100000);
    mp_metrics_bytes(m, 0, MP_DIR_TO_DST, 3000000, T0 + 100001);
    mp_metrics_tick(m, T0 + 200000);
    mp_metrics_finish(m, T0 + 200001, "interrupted");
    fclose(out);
    cr_assert_str_eq(text,
                     "\r\033[Ksession 4: setup | RAM   0% sent | 0 kB/s | "
                     "dirty 0 pages/s | ETA -"
                     "\r\033[Ksession 4: setup | RAM   0% sent | 30 MB/s | "
                     "dirty 0 pages/s | ETA -"
                     "\r\033[K");
    free(text);
}

Test(metrics, json_lines)
{
    char *dir = tu_tmpdir_new("mp-metrics");
    g_autofree char *path = g_build_filename(dir, "m.jsonl", NULL);
    g_autoptr(GError) err = NULL;
    MpMetricsOut *lines = mp_metrics_out_new(path, &err);
    cr_assert_not_null(lines, "%s", err ? err->message : "?");
    /* 2023-11-14T22:13:20Z */
    MpMetrics *m = mp_metrics_new(2, 1700000000000000LL, T0);

    mp_metrics_lines_attach(m, lines);
    mp_metrics_channel_open(m, 0, "h:1", T0 + 1500);
    mp_metrics_channel_kind(m, 0, MP_CHAN_MULTIFD, T0 + 1600);
    mp_metrics_partial(m, 0, MP_DIR_TO_DST, 12, "odd", T0 + 1700);
    mp_metrics_channel_end(m, 0, MP_DIR_TO_DST, MP_END_RESET, "page", T0 + 1800);
    mp_metrics_free(m);
    json_object *status = mp_metrics_out_status(lines);
    mp_metrics_out_free(lines);

    g_autofree char *text = NULL;
    cr_assert(g_file_get_contents(path, &text, NULL, NULL));
    cr_assert_str_eq(text,
                     "{\"schema\":1,\"event\":\"session-start\",\"session\":2,"
                     "\"time\":\"2023-11-14T22:13:20Z\"}\n"
                     "{\"schema\":1,\"event\":\"channel-open\",\"session\":2,"
                     "\"t_ms\":1.500,\"channel\":0,\"peer\":\"h:1\"}\n"
                     "{\"schema\":1,\"event\":\"channel-kind\",\"session\":2,"
                     "\"t_ms\":1.600,\"channel\":0,\"kind\":\"multifd\"}\n"
                     "{\"schema\":1,\"event\":\"partial\",\"session\":2,"
                     "\"t_ms\":1.700,\"channel\":0,\"direction\":\"to-dst\","
                     "\"offset\":12,\"why\":\"odd\"}\n"
                     "{\"schema\":1,\"event\":\"channel-end\",\"session\":2,"
                     "\"t_ms\":1.800,\"channel\":0,\"direction\":\"to-dst\","
                     "\"how\":\"reset\",\"truncated\":\"page\"}\n");
    tu_validate_json("metrics-line", path, TRUE);
    /* the report's outputs.metrics */
    cr_assert_eq(tu_json_int(status, "lines"), 5);
    cr_assert_str_eq(
        json_object_get_string(json_object_object_get(status, "file")), path);
    cr_assert(
        json_object_get_boolean(json_object_object_get(status, "complete")));
    json_object_put(status);
    tu_tmpdir_remove(dir);
}

Test(metrics, report_of_a_running_session)
{
    g_autoptr(MpMetrics) m = mp_metrics_new(5, 0, T0);
    mp_metrics_channel_open(m, 0, NULL, T0);
    mp_metrics_bytes(m, 0, MP_DIR_TO_DST, 42, T0 + 17248);
    json_object *rep = mp_metrics_report(m), *v, *ch;

    cr_assert(json_object_object_get_ex(rep, "outcome", &v));
    cr_assert_str_eq(json_object_get_string(v), "running");
    cr_assert(json_object_object_get_ex(rep, "total_ms", &v));
    /* microsecond digits as such, not 17.248000000000001 */
    cr_assert_str_eq(json_object_to_json_string(v), "17.248");
    cr_assert(json_object_object_get_ex(rep, "downtime_ms", &v));
    cr_assert_null(v);
    cr_assert(json_object_object_get_ex(rep, "channels", &ch));
    ch = json_object_array_get_idx(ch, 0);
    cr_assert(json_object_object_get_ex(ch, "to_dst", &v));
    cr_assert(json_object_object_get_ex(v, "bytes", &v));
    cr_assert_eq(json_object_get_int64(v), 42);
    cr_assert_eq(tu_json_int(rep, "schema"), MP_JSON_SCHEMA_VERSION);
    tu_validate_doc("report#/$defs/session", rep);
    json_object_put(rep);
}

/* A sample stream (rounds, device sections, the end) through a session,
 * ticked every 100 ms: every line and the report are valid against
 * docs/schema/, as is a report with post-copy requests and a partial
 * channel. */
Test(metrics, sample_session_lines_and_report_valid)
{
    char *dir = tu_tmpdir_new("mp-metrics");
    g_autofree char *path = g_build_filename(dir, "m.jsonl", NULL);
    g_autoptr(GError) err = NULL;
    g_autoptr(GByteArray) stream = tu_read_sample("busy-10.0.mig.zst");
    MpMetricsOut *out = mp_metrics_out_new(path, &err);
    cr_assert_not_null(out, "%s", err ? err->message : "?");
    MpMetrics *m = mp_metrics_new(1, 1700000000000000LL, T0);
    MpSession *t = mp_session_new(m, 1);
    gint64 now = T0;

    mp_metrics_lines_attach(m, out);
    mp_session_add(t, 0, "127.0.0.1:40000", now);
    mp_session_add(t, 1, "127.0.0.1:40002", now);
    for (gsize off = 0; off < stream->len; off += 65536) {
        now += 20000;
        mp_session_feed(t, 0, MP_DIR_TO_DST, stream->data + off,
                        MIN(65536, stream->len - off), now);
        mp_metrics_tick(m, now);
    }
    /* a second connection that is not a migration channel */
    mp_session_feed(t, 1, MP_DIR_TO_DST, (const guint8 *)"GET / HTTP/1.0", 14,
                    now);
    feed_rp(m, MP_RP_MSG_REQ_PAGES, "pc.ram", 0x1000, 4096, now + 1);
    feed_page(m, 0, "pc.ram", 0x1000, now + 500);
    for (guint c = 0; c < 2; c++)
        for (int d = 0; d < MP_DIR__MAX; d++)
            mp_session_end(t, c, d, MP_END_FIN, now + 1000);
    mp_metrics_tick(m, now + 100000);
    mp_metrics_finish(m, now + 100000, NULL);
    json_object *rep = mp_metrics_report(m);
    mp_session_free(t);
    mp_metrics_free(m);
    mp_metrics_out_free(out);

    tu_validate_json("metrics-line", path, TRUE);
    tu_validate_doc("report#/$defs/session", rep);
    cr_assert_geq(
        json_object_array_length(json_object_object_get(rep, "rounds")), 1);
    cr_assert_eq(tu_json_int(rep, "postcopy.requests_answered"), 1);
    /* strict: a key renamed in the report is caught */
    json_object *ram = json_object_object_get(rep, "ram");
    json_object_object_add(
        ram, "page", json_object_get(json_object_object_get(ram, "pages")));
    json_object_object_del(ram, "pages");
    char *bad_dir = tu_tmpdir_new("mp-metrics");
    g_autofree char *bad = g_build_filename(bad_dir, "bad.json", NULL);
    cr_assert_eq(json_object_to_file(bad, rep), 0);
    g_autofree char *script =
        g_build_filename(MP_SOURCE_ROOT, "tests", "validate-json.py", NULL);
    const char *argv[] = {"python3", script, "report#/$defs/session", bad,
                          NULL};
    int status = 0;
    cr_assert(g_spawn_sync(NULL, (char **)argv, NULL,
                           G_SPAWN_SEARCH_PATH | G_SPAWN_STDOUT_TO_DEV_NULL,
                           NULL, NULL, NULL, NULL, &status, NULL));
    cr_assert(!g_spawn_check_wait_status(status, NULL),
              "a report with ram.pages renamed was accepted");
    json_object_put(rep);
    tu_tmpdir_remove(bad_dir);
    tu_tmpdir_remove(dir);
}

Test(metrics, summary_line)
{
    g_autoptr(MpMetrics) m = mp_metrics_new(6, 0, T0);
    mp_metrics_bytes(m, 0, MP_DIR_TO_DST, 3 << 20, T0 + 2500000);
    feed_rp(m, MP_RP_MSG_SHUT, NULL, 0, 0, T0 + 2500000);
    mp_metrics_finish(m, T0 + 2600000, NULL);
    g_autofree char *s = mp_metrics_summary(m);
    cr_assert_str_eq(s, "session 6 completed: 2.5 s, pages normal 0 zero 0 "
                        "xbzrle 0 compressed 0, 0 rounds, 3.0 MiB");
}
