/* fuzz-relay.c: libFuzzer target for what the relay does with a
 * connection's bytes towards the destination (relay.c, on_data()): the
 * session classifies the connection, its pipeline parses it, the metrics
 * take the records, and the zero-page stage rewrites what it may, with
 * the output written in place as the relay does.
 *
 * Input: a selector byte, then the connection's bytes.  Bits 0-5: chunk
 * size (0: all at once); bit 6: the bytes are a second connection of a
 * session whose main channel (a bare stream header) came first, so that
 * multifd, preempt and recovery channels are told apart as the relay does.
 *
 * Checked, besides ASan and UBSan:
 *   - what is written in place never runs ahead of the input (the relay
 *     writes it where it read), and nothing is inserted beside it (the
 *     zero stage only shrinks);
 *   - output = input less what the zero-page stage saved, and exactly
 *     the input when it saved nothing;
 *   - the output does not depend on how the input was cut.
 */
#include <stdlib.h>
#include <string.h>
#include <glib.h>
#include "filter-zero.h"
#include "metrics.h"
#include "metrics-report.h"
#include "session.h"

int LLVMFuzzerTestOneInput(const guint8 *data, gsize size);

/* far above any fuzz input: holding never gives up editing */
#define HOLD_LIMIT (64u << 20)

static const guint8 main_header[] = {'Q', 'E', 'V', 'M', 0, 0, 0, 3};

typedef struct {
    GByteArray *out;
    guint64 fed; /* bytes given to the pipeline so far */
} Run;

static void
on_write(gpointer data, const guint8 *buf, gsize len)
{
    Run *r = data;
    g_byte_array_append(r->out, buf, len);
    if (r->out->len > r->fed)
        abort(); /* ahead of the input: the relay would overrun it */
}

static void
on_insert(gpointer data, const guint8 *buf, gsize len)
{
    abort(); /* the zero stage never lengthens a record */
}

static const MpPipelineSink sink = {.write = on_write, .insert = on_insert};

/* The pipeline's output for `data` cut into `chunk`-byte reads. */
static GByteArray *
run(const guint8 *data, gsize size, gsize chunk, gboolean second,
    guint64 *saved)
{
    MpMetrics *metrics = mp_metrics_new(1, 0, 0);
    MpSession *session = mp_session_new(metrics, 1);
    MpStage *zero = mp_filter_zero_new();
    Run r = {.out = g_byte_array_new()};
    guint channel = second ? 1 : 0;
    MpPipelineSink s = sink;

    mp_session_set_logging(session, FALSE);
    if (second) {
        mp_session_add(session, 0, "fuzz main", 0);
        mp_session_feed(session, 0, MP_DIR_TO_DST, main_header,
                        sizeof main_header, 0);
    }
    mp_session_add(session, channel, "fuzz", 0);
    MpPipeline *p = mp_session_pipeline(session, channel, MP_DIR_TO_DST);
    s.data = &r;
    mp_pipeline_set_sink(p, &s, TRUE, HOLD_LIMIT);
    mp_pipeline_add_stage(p, zero);
    for (gsize off = 0; off < size; off += chunk) {
        gsize len = MIN(chunk, size - off);
        /* exactly the read's size, so that ASan sees a read past it */
        guint8 *buf = g_memdup2(data + off, len);

        r.fed += len;
        mp_pipeline_feed(p, buf, len, (gint64)off);
        g_free(buf);
    }
    mp_pipeline_end(p, MP_END_FIN, (gint64)size);
    *saved = mp_filter_zero_bytes_saved(zero);
    if (r.out->len + *saved != size
        || (mp_filter_zero_rewritten(zero) == 0 && *saved != 0))
        abort();
    if (*saved == 0 && size && memcmp(r.out->data, data, size) != 0)
        abort(); /* nothing rewritten, yet not the input */

    mp_session_free(session);
    mp_stage_free(zero);
    mp_metrics_finish(metrics, (gint64)size, NULL);
    mp_metrics_free(metrics);
    return r.out;
}

int
LLVMFuzzerTestOneInput(const guint8 *data, gsize size)
{
    if (size < 1)
        return 0;
    guint8 sel = data[0];
    gsize chunk = sel & 0x3f;
    gboolean second = !!(sel & 0x40);
    guint64 saved_whole, saved_cut;

    data++;
    size--;
    GByteArray *whole = run(data, size, MAX(size, 1), second, &saved_whole);
    GByteArray *cut =
        run(data, size, chunk ? chunk : MAX(size, 1), second, &saved_cut);
    if (whole->len != cut->len
        || (whole->len && memcmp(whole->data, cut->data, whole->len)))
        abort(); /* the output depends on where the reads fell */
    g_byte_array_unref(whole);
    g_byte_array_unref(cut);
    return 0;
}
