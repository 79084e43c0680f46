/* test-session.c: the relay's parsing side without sockets: channel
 * classification, and a captured stream fed through a session in
 * chunks of every size gives the same pages as the file analysis. */
#include "config.h"
#include <string.h>
#include <criterion/criterion.h>
#include "analyze-file.h"
#include "metrics.h"
#include "metrics-report.h"
#include "session.h"
#include "stream-input.h"
#include "test-util.h"

static const guint8 qevm[] = {'Q', 'E', 'V', 'M', 0, 0, 0, 3};
static const guint8 mfd[] = {0x11, 0x22, 0x33, 0x44, 0, 0, 0, 1};

Test(session, classify_by_first_bytes)
{
    /* first connection: main or multifd, else not QEMU */
    cr_assert_eq(mp_chan_classify(qevm, 4, FALSE), MP_CHAN_MAIN);
    cr_assert_eq(mp_chan_classify(qevm, 3, FALSE), MP_CHAN_UNKNOWN);
    cr_assert_eq(mp_chan_classify(qevm, 0, FALSE), MP_CHAN_UNKNOWN);
    cr_assert_eq(mp_chan_classify(mfd, 4, FALSE), MP_CHAN_MULTIFD);
    cr_assert_eq(mp_chan_classify(mfd, 2, TRUE), MP_CHAN_UNKNOWN);
    cr_assert_eq(mp_chan_classify((const guint8 *)"GET ", 4, FALSE),
                 MP_CHAN_FOREIGN);
    cr_assert_eq(mp_chan_classify((const guint8 *)"QEVX", 4, FALSE),
                 MP_CHAN_FOREIGN);
    /* later connections: a command starts a recovery channel, anything
     * else is the preempt channel's first page header */
    const guint8 cmd[] = {0x08, 0x00, 0x0a, 0x00};
    const guint8 page[] = {0x00, 0x00, 0x00, 0x00};
    cr_assert_eq(mp_chan_classify(cmd, 1, TRUE), MP_CHAN_RECOVERY);
    cr_assert_eq(mp_chan_classify(page, 1, TRUE), MP_CHAN_PREEMPT);
    cr_assert_eq(mp_chan_classify(qevm, 4, TRUE), MP_CHAN_MAIN);
    /* TLS: a handshake record */
    const guint8 tls[] = {0x16, 0x03, 0x01, 0x02};
    cr_assert_eq(mp_chan_classify(tls, 1, FALSE), MP_CHAN_UNKNOWN);
    cr_assert_eq(mp_chan_classify(tls, 3, FALSE), MP_CHAN_TLS);
    cr_assert_eq(mp_chan_classify(tls, 3, TRUE), MP_CHAN_TLS);
    /* a recovery channel may reach a relay that saw nothing before */
    cr_assert_eq(mp_chan_classify(cmd, 1, FALSE), MP_CHAN_RECOVERY);
}

/* Feeds `stream` as channel 0 in chunks whose sizes cycle through
 * `sizes`, one millisecond apart. */
static json_object *
tap_report(GByteArray *stream, const gsize *sizes, guint n_sizes)
{
    g_autoptr(MpMetrics) m = mp_metrics_new(1, 0, 0);
    g_autoptr(MpSession) t = mp_session_new(m, 1);
    gsize off = 0;
    gint64 now = 0;

    mp_session_add(t, 0, "test", 0);
    for (guint i = 0; off < stream->len; i++) {
        gsize n = MIN(sizes[i % n_sizes], stream->len - off);
        now += 1000;
        mp_session_feed(t, 0, MP_DIR_TO_DST, stream->data + off, n, now);
        off += n;
    }
    cr_assert_eq(mp_session_kind(t, 0), MP_CHAN_MAIN);
    mp_session_end(t, 0, MP_DIR_TO_DST, MP_END_FIN, now);
    mp_session_end(t, 0, MP_DIR_TO_SRC, MP_END_FIN, now);
    mp_metrics_finish(m, now, NULL);
    return mp_metrics_report(m);
}

static void
check_against_file(const char *name)
{
    g_autofree char *path =
        g_strdup_printf("%s/samples/streams/%s", MP_SOURCE_ROOT, name);
    MpAnalyzeOptions opt = {.quiet = TRUE, .no_vmdesc = TRUE};
    gboolean ok;
    json_object *file = mp_analyze_file(path, &opt, &ok);
    cr_assert(ok);
    g_autoptr(GByteArray) stream = tu_read_sample(name);
    const gsize odd[] = {1, 2, 3, 5, 8, 13, 4096, 4097, 65536, 7};
    const gsize whole[] = {G_MAXSIZE};
    const gsize *sets[] = {odd, whole};
    const guint lens[] = {G_N_ELEMENTS(odd), 1};

    for (guint s = 0; s < 2; s++) {
        json_object *rep = tap_report(stream, sets[s], lens[s]);
        const char *keys[] = {"ram.pages.normal", "ram.pages.zero",
                              "ram.pages.xbzrle", "ram.total",
                              "stream.sections.part"};
        for (guint k = 0; k < G_N_ELEMENTS(keys); k++)
            cr_assert_eq(
                tu_json_int(rep, keys[k]), tu_json_int(file, keys[k]),
                "%s %s: tap %" G_GINT64_FORMAT ", file %" G_GINT64_FORMAT, name,
                keys[k], tu_json_int(rep, keys[k]), tu_json_int(file, keys[k]));
        json_object *rounds, *frounds;
        json_object_object_get_ex(rep, "rounds", &rounds);
        json_object_object_get_ex(file, "rounds", &frounds);
        cr_assert_eq(json_object_array_length(rounds),
                     json_object_array_length(frounds));
        json_object_put(rep);
    }
    json_object_put(file);
}

Test(session, idle_72_like_the_file)
{
    check_against_file("idle-7.2.mig.zst");
}

Test(session, xbzrle_72_like_the_file)
{
    check_against_file("busy-xbzrle-7.2.mig.zst");
}

/* A parser that cannot follow marks the channel partial and counts on. */
Test(session, garbage_after_the_header_is_partial)
{
    g_autoptr(MpMetrics) m = mp_metrics_new(1, 0, 0);
    g_autoptr(MpSession) t = mp_session_new(m, 1);
    guint8 junk[4096];
    memset(junk, 0xee, sizeof(junk));

    mp_session_add(t, 0, "test", 0);
    mp_session_feed(t, 0, MP_DIR_TO_DST, qevm, sizeof(qevm), 1);
    mp_session_feed(t, 0, MP_DIR_TO_DST, junk, sizeof(junk), 2);
    mp_session_feed(t, 0, MP_DIR_TO_DST, junk, sizeof(junk), 3);
    mp_session_end(t, 0, MP_DIR_TO_DST, MP_END_FIN, 4);
    mp_metrics_finish(m, 4, NULL);
    json_object *rep = mp_metrics_report(m), *ch, *v;
    json_object_object_get_ex(rep, "channels", &ch);
    ch = json_object_array_get_idx(ch, 0);
    json_object_object_get_ex(ch, "partial", &v);
    cr_assert(json_object_get_boolean(v));
    cr_assert_eq(tu_json_int(ch, "to_dst.bytes"),
                 sizeof(qevm) + 2 * sizeof(junk));
    /* where the parser stopped: at or just past the bad byte */
    cr_assert_geq(tu_json_int(ch, "to_dst.partial_offset"), sizeof(qevm));
    cr_assert_leq(tu_json_int(ch, "to_dst.partial_offset"), sizeof(qevm) + 1);
    json_object_object_get_ex(rep, "errors", &v);
    cr_assert_eq(json_object_array_length(v), 1);
    json_object_put(rep);
}

/* The relay tells the kind it checked: a channel joined as 7.2's silent
 * preempt channel is "preempt" before any byte, and a multifd channel is
 * parsed as one even though no main channel came first. */
Test(session, kind_told_by_the_relay)
{
    g_autoptr(MpMetrics) m = mp_metrics_new(1, 0, 0);
    g_autoptr(MpSession) t = mp_session_new(m, 1);

    mp_session_add(t, 0, "test", 0);
    mp_session_set_kind(t, 0, MP_CHAN_MULTIFD, 0);
    mp_session_add(t, 1, "test", 0);
    mp_session_set_kind(t, 1, MP_CHAN_PREEMPT, 0);
    cr_assert_eq(mp_session_kind(t, 0), MP_CHAN_MULTIFD);
    cr_assert_eq(mp_session_kind(t, 1), MP_CHAN_PREEMPT);
    /* told once: bytes that look like another kind change nothing */
    mp_session_set_kind(t, 1, MP_CHAN_MAIN, 1);
    mp_session_feed(t, 1, MP_DIR_TO_DST, qevm, sizeof(qevm), 2);
    cr_assert_eq(mp_session_kind(t, 1), MP_CHAN_PREEMPT);
    mp_metrics_finish(m, 3, NULL);
    json_object *rep = mp_metrics_report(m), *ch;
    json_object_object_get_ex(rep, "channels", &ch);
    json_object *k;
    json_object_object_get_ex(json_object_array_get_idx(ch, 0), "kind", &k);
    cr_assert_str_eq(json_object_get_string(k), "multifd");
    json_object_object_get_ex(json_object_array_get_idx(ch, 1), "kind", &k);
    cr_assert_str_eq(json_object_get_string(k), "preempt");
    json_object_put(rep);
}
