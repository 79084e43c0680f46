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
