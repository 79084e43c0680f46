/* fuzz-util.c: the differential driver behind every fuzz target. */
#include <stdio.h>
#include <stdlib.h>
#include "fuzz-util.h"
#include "record-format.h"

typedef struct {
    const MpFuzzOps *ops;
    guint8 sel;
    GString *log;
    gboolean pausing;
    guint records;
    guint64 fed_end;  /* stream offset just past the bytes of this feed */
    guint64 last_off; /* offset of the previous record */
} Run;

static guint32
fnv1a(const guint8 *p, gsize n)
{
    guint32 h = 2166136261u;
    for (gsize i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

static void
die(const char *what, const Run *r)
{
    fprintf(stderr, "fuzz: %s\n--- log so far ---\n%s\n", what, r->log->str);
    abort();
}

static MpRecordAction
on_record(const MpRecord *rec, gpointer user_data)
{
    Run *r = user_data;
    const guint8 *data = NULL;
    gsize n = r->ops->data_len(rec, r->sel, &data);

    if (rec->offset + rec->length > r->fed_end)
        die("record ends past the bytes fed so far", r);
    if (rec->offset < r->last_off)
        die("record offsets go backwards", r);
    r->last_off = rec->offset;
    mp_record_describe(rec, r->log);
    if (n)
        g_string_append_printf(r->log, " h=%08x", fnv1a(data, n));
    g_string_append_c(r->log, '\n');
    r->records++;
    return r->pausing && r->records % 2 ? MP_REC_PAUSE : MP_REC_CONTINUE;
}

/* Feeds one chunk to the end, resuming after pauses.  @return FALSE once
 * the parser stopped (error or end). */
static gboolean
feed_chunk(Run *r, gpointer p, const guint8 *buf, gsize len,
           guint64 *stream_off)
{
    gsize off = 0;

    r->fed_end = *stream_off + len;
    for (;;) {
        g_autoptr(GError) err = NULL;
        gsize used = 0;
        MpFeedStatus st = r->ops->feed(p, buf + off, len - off, &used, &err);
        if (used > len - off)
            die("consumed more than given", r);
        off += used;
        *stream_off += used;
        switch (st) {
        case MP_FEED_PAUSED:
            if (!r->pausing)
                die("paused without being asked", r);
            continue;
        case MP_FEED_MORE:
            if (off != len)
                die("MORE without consuming everything", r);
            return TRUE;
        case MP_FEED_END:
            g_string_append(r->log, "END\n");
            return FALSE;
        case MP_FEED_ERROR: {
            if (!err)
                die("error status without GError", r);
            g_string_append_printf(r->log, "ERROR %d %s\n", err->code,
                                   err->message);
            /* sticky: the same error again, nothing consumed */
            g_autoptr(GError) again = NULL;
            static const guint8 one = 0;
            if (r->ops->feed(p, &one, 1, &used, &again) != MP_FEED_ERROR
                || used != 0 || !again || again->code != err->code)
                die("error is not sticky", r);
            return FALSE;
        }
        }
    }
}

/* Splits: `n` cut points taken from the selector. */
static char *
run(const MpFuzzOps *ops, guint8 sel, const guint8 *data, gsize size,
    gboolean split)
{
    Run r = {ops, sel, g_string_new(NULL), split, 0, 0, 0};
    gpointer p = ops->create(sel, on_record, &r);
    gsize cuts[4] = {0, 0, 0, size};
    guint64 stream_off = 0;
    gboolean go_on = TRUE;

    if (split) {
        /* low nibble and high nibble: two cuts in sixteenths of the
         * input, plus one 1 byte after the first to split a field */
        gsize a = size * (sel & 0x0f) / 16, b = size * (sel >> 4) / 16;
        cuts[1] = MIN(a, b);
        cuts[2] = MIN(MAX(a, b), size);
        if (cuts[2] == cuts[1] && cuts[1] < size)
            cuts[2] = cuts[1] + 1;
    }
    for (guint i = 0; i < 3 && go_on; i++)
        if (cuts[i + 1] > cuts[i] || (i == 0 && size == 0))
            go_on = feed_chunk(&r, p, data + cuts[i], cuts[i + 1] - cuts[i],
                               &stream_off);
    if (go_on) {
        g_autoptr(GError) err = NULL;
        r.fed_end = stream_off;
        if (ops->finish(p, &err))
            g_string_append(r.log, "FINISHED\n");
        else if (!err)
            die("finish failed without GError", &r);
        else
            g_string_append_printf(r.log, "ERROR %d %s\n", err->code,
                                   err->message);
    }
    ops->destroy(p);
    return g_string_free(r.log, FALSE);
}

int
mp_fuzz_run(const MpFuzzOps *ops, const guint8 *data, gsize size)
{
    if (size < 1)
        return 0;
    guint8 sel = data[0];
    g_autofree char *whole = run(ops, sel, data + 1, size - 1, FALSE);
    g_autofree char *split = run(ops, sel, data + 1, size - 1, TRUE);
    if (g_strcmp0(whole, split) != 0) {
        fprintf(stderr,
                "fuzz: whole and split feeds differ\n"
                "--- whole ---\n%s--- split ---\n%s",
                whole, split);
        abort();
    }
    return 0;
}
