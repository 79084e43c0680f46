/* fuzz-relay.c: libFuzzer target for what the relay does with a
 * connection's bytes towards the destination (relay.c, on_data()): the
 * session tap classifies the connection and parses it, the metrics take
 * the records, and the stream editor with the zero-page filter rewrites
 * what it may, shrink-only.
 *
 * Input: a selector byte, then the connection's bytes.  Bits 0-5: chunk
 * size (0: all at once); bit 6: the bytes are a second connection of a
 * session whose main channel (a bare stream header) came first, so that
 * multifd, preempt and recovery channels are told apart as the relay does.
 *
 * Checked, besides ASan and UBSan:
 *   - the output never runs ahead of the input (the relay writes it in
 *     place of the bytes it read);
 *   - output = input less what the zero-page filter saved, and exactly
 *     the input when it saved nothing;
 *   - the output does not depend on how the input was cut.
 */
#include <stdlib.h>
#include <string.h>
#include <glib.h>
#include "filter-zero.h"
#include "metrics.h"
#include "session-tap.h"
#include "stream-editor.h"

int LLVMFuzzerTestOneInput(const guint8 *data, gsize size);

/* far above any fuzz input: holding never gives up editing */
#define HOLD_LIMIT (64u << 20)

static const guint8 main_header[] = {'Q', 'E', 'V', 'M', 0, 0, 0, 3};

typedef struct {
    GByteArray *out;
    guint64 fed; /* bytes given to the editor so far */
    MpStreamEditor *ed;
    guint channel;
} Run;

static void
emit(const guint8 *buf, gsize len, gpointer user_data)
{
    Run *r = user_data;
    g_byte_array_append(r->out, buf, len);
    if (r->out->len > r->fed)
        abort(); /* ahead of the input: the relay would overrun it */
}

static void
on_record(guint channel, MpDir dir, const MpRecord *rec, gpointer user_data)
{
    Run *r = user_data;
    if (channel == r->channel && dir == MP_DIR_TO_DST)
        mp_stream_editor_record(r->ed, rec);
}

/* The editor's output for `data` cut into `chunk`-byte reads. */
static GByteArray *
run(const guint8 *data, gsize size, gsize chunk, gboolean second,
    guint64 *saved)
{
    MpMetrics *metrics = mp_metrics_new(1, 0, 0);
    MpSessionTap *tap = mp_session_tap_new(metrics, 1);
    GPtrArray *filters =
        g_ptr_array_new_with_free_func((GDestroyNotify)mp_filter_free);
    MpFilter *zero = mp_filter_zero_new();
    Run r = {.out = g_byte_array_new(), .channel = second ? 1 : 0};

    g_ptr_array_add(filters, zero);
    mp_session_tap_set_logging(tap, FALSE);
    mp_session_tap_set_record_func(tap, on_record, &r);
    r.ed = mp_stream_editor_new(filters, r.channel, HOLD_LIMIT, TRUE, emit, &r);
    if (second) {
        mp_session_tap_add(tap, 0, "fuzz main", 0);
        mp_session_tap_feed(tap, 0, MP_DIR_TO_DST, main_header,
                            sizeof main_header, 0);
    }
    mp_session_tap_add(tap, r.channel, "fuzz", 0);
    for (gsize off = 0; off < size; off += chunk) {
        gsize len = MIN(chunk, size - off);
        /* exactly the read's size, so that ASan sees a read past it */
        guint8 *buf = g_memdup2(data + off, len);

        r.fed += len;
        mp_stream_editor_begin(r.ed, buf, len);
        mp_session_tap_feed(tap, r.channel, MP_DIR_TO_DST, buf, len,
                            (gint64)off);
        MpChanKind kind = mp_session_tap_kind(tap, r.channel);
        mp_stream_editor_end(r.ed, mp_chan_kind_editable(kind)
                                       && mp_session_tap_following(
                                           tap, r.channel, MP_DIR_TO_DST));
        g_free(buf);
    }
    mp_stream_editor_flush(r.ed);
    *saved = mp_filter_zero_bytes_saved(zero);
    if (r.out->len + *saved != size
        || (mp_filter_zero_rewritten(zero) == 0 && *saved != 0))
        abort();
    if (*saved == 0 && size && memcmp(r.out->data, data, size) != 0)
        abort(); /* nothing rewritten, yet not the input */

    mp_stream_editor_free(r.ed);
    g_ptr_array_unref(filters);
    mp_session_tap_free(tap);
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
