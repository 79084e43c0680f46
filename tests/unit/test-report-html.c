/* test-report-html.c: the HTML page of an analyze document
 * (src/offline/report-html.c) on documents written here: what a hostile
 * stream can put in one (names with markup) stays text, and a page with
 * nothing to draw says so rather than drawing empty charts.  The pages
 * of real migrations, in a browser: tests/integration/test-report.c. */
#include "config.h"
#include <string.h>
#include <criterion/criterion.h>
#include "report-html.h"

/* A stream file's document (no channels: no times), one device section
 * whose name and one anomaly carry markup, as a stream may name them. */
static const char hostile_doc[] =
    "{\"schema\":1,\"file\":\"a<b>.mig\",\"format\":\"stream\","
    "\"stream\":{\"machine\":\"<script>alert(1)</script>\",\"bytes\":100,"
    "\"complete\":true,\"vmdesc\":true,"
    "\"sections\":{\"start\":0,\"part\":0,\"end\":0,\"full\":1}},"
    "\"ram\":{\"total\":4096,\"blocks\":[],\"pages\":{\"normal\":1,\"zero\":0,"
    "\"xbzrle\":0,\"compressed\":0},\"bytes\":4105,"
    "\"bytes_by_kind\":{\"normal\":4105,\"zero\":0,\"xbzrle\":0,"
    "\"compressed\":0},\"phases\":{}},"
    "\"rounds\":[{\"index\":1,\"phase\":\"precopy\",\"pages\":1,"
    "\"dirty_pages\":0,\"bytes\":4105}],"
    "\"devices\":[{\"name\":\"<img src=x onerror=alert(1)>\",\"instance\":0,"
    "\"version\":1,\"offset\":50,\"bytes\":7}],"
    "\"commands\":{},\"bytes\":{},\"errors\":[],"
    "\"anomalies\":[\"</p><iframe src=\\\"http://x/\\\">\"]}";

Test(report_html, markup_from_the_stream_is_text)
{
    json_object *doc = json_tokener_parse(hostile_doc);
    cr_assert_not_null(doc);
    g_autoptr(GString) page = mp_report_html(doc);
    json_object_put(doc);

    cr_assert_null(strstr(page->str, "<script"), "a <script> element");
    cr_assert_null(strstr(page->str, "<img"), "an <img> element");
    cr_assert_null(strstr(page->str, "<iframe"), "an <iframe> element");
    cr_assert_not_null(strstr(page->str, "&lt;script&gt;alert(1)"));
    cr_assert_not_null(strstr(page->str, "&lt;img src=x onerror=alert(1)&gt;"));
    /* fetches nothing, whatever the page holds */
    cr_assert_not_null(strstr(page->str, "content=\"default-src 'none'"));
    /* the device's bar and the round's */
    cr_assert_not_null(
        strstr(page->str, "data-src=\"devices.0.bytes\" data-v=\"7\""));
    cr_assert_not_null(
        strstr(page->str, "data-src=\"rounds.0.pages\" data-v=\"1\""));
    /* a stream file: no time axis, said */
    cr_assert_not_null(strstr(page->str, "No time axis"));
    cr_assert_null(strstr(page->str, "data-chart=\"bandwidth\""));
}

/* Nothing in it: every section says so, no chart is drawn. */
Test(report_html, empty_document_draws_no_empty_chart)
{
    json_object *doc = json_tokener_parse("{\"schema\":1}");
    g_autoptr(GString) page = mp_report_html(doc);
    json_object_put(doc);

    cr_assert_null(strstr(page->str, "<svg"), "a chart of nothing");
    cr_assert_not_null(strstr(page->str, "no RAM rounds"));
    cr_assert_not_null(strstr(page->str, "no RAM pages"));
    cr_assert_not_null(strstr(page->str, "no device sections"));
    cr_assert_not_null(strstr(page->str, "</html>"));
}

/* A long capture: more 100 ms steps than bars (240), so each bar sums a
 * range of steps over all channels, and its data-src says which. */
Test(report_html, long_series_summed_into_bars)
{
    json_object *doc = json_object_new_object();
    json_object *chans = json_object_new_array();
    for (guint c = 0; c < 2; c++) {
        json_object *bytes = json_object_new_array();
        for (guint i = 0; i < 500; i++)
            json_object_array_add(bytes, json_object_new_int64(c ? 1 : i));
        json_object *series = json_object_new_object();
        json_object_object_add(series, "interval_ms", json_object_new_int(100));
        json_object_object_add(series, "bytes", bytes);
        json_object *dir = json_object_new_object();
        json_object_object_add(dir, "bytes", json_object_new_int64(1));
        json_object_object_add(dir, "series", series);
        json_object *ch = json_object_new_object();
        json_object_object_add(ch, "channel", json_object_new_int(c));
        json_object_object_add(ch, "to_dst", dir);
        json_object_array_add(chans, ch);
    }
    json_object_object_add(doc, "channels", chans);
    g_autoptr(GString) page = mp_report_html(doc);
    json_object_put(doc);

    /* 500 steps: 3 a bar, 167 bars; the first sums 0+1+2 and 3 x 1 */
    cr_assert_not_null(strstr(page->str, "data-chart=\"bandwidth\""));
    cr_assert_not_null(strstr(
        page->str,
        "data-src=\"channels.*.to_dst.series.bytes.[0:3]\" data-v=\"6\""));
    /* the last bar: steps 498 and 499 only */
    cr_assert_not_null(strstr(
        page->str, "data-src=\"channels.*.to_dst.series.bytes.[498:500]\" "
                   "data-v=\"999\""));
    guint bars = 0;
    for (const char *p = page->str; (p = strstr(p, "class=\"b-bw\" x=")); p++)
        bars++;
    cr_assert_eq(bars, 167);
}

/* Our own labels keep their UTF-8 (a stream's strings are made
 * printable, ours are not: "\xc2\xb5s" once showed for "µs"). */
Test(report_html, latency_labels_in_utf8)
{
    json_object *doc = json_tokener_parse(
        "{\"channels\":[],\"postcopy\":{\"requests\":3,\"latency_us\":{"
        "\"p50\":90,\"p99\":1500,\"max\":1500,\"count\":3,\"histogram\":["
        "{\"le_us\":100,\"count\":2},{\"le_us\":2000,\"count\":1},"
        "{\"le_us\":null,\"count\":0}]}}}");
    cr_assert_not_null(doc);
    g_autoptr(GString) page = mp_report_html(doc);
    json_object_put(doc);

    cr_assert_not_null(strstr(page->str, "data-chart=\"latency\""));
    cr_assert_not_null(strstr(page->str, "\342\211\244100 \302\265s"),
                       "no label \"<=100 us\" in UTF-8");
    cr_assert_not_null(strstr(page->str, "\342\211\2442 ms"));
    cr_assert_null(strstr(page->str, "\\x"), "an escaped byte: %s",
                   strstr(page->str, "\\x"));
    cr_assert_not_null(strstr(
        page->str,
        "data-src=\"postcopy.latency_us.histogram.0.count\" data-v=\"2\""));
}
