/* fuzz-chunks.c: whole versus chunked feeds over exact-size buffers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fuzz-chunks.h"
#include "record-format.h"

typedef struct {
    const MpFuzzOps *ops;
    guint8 sel;
    gboolean pause;
    GString *log;
    guint64 fed_end, last_off;
    guint records; /* during the current feed call */
    /* an opaque run being merged */
    gboolean in_opaque;
    guint64 opaque_off, opaque_len;
} Run;

static void
die(const char *what, const Run *r)
{
    fprintf(stderr, "fuzz: %s\n--- log so far ---\n%s\n", what, r->log->str);
    abort();
}

static void
flush_opaque(Run *r)
{
    if (!r->in_opaque)
        return;
    g_string_append_printf(r->log,
                           "off=%" G_GUINT64_FORMAT " len=%" G_GUINT64_FORMAT
                           " opaque (merged)\n",
                           r->opaque_off, r->opaque_len);
    r->in_opaque = FALSE;
}

static guint32
fnv1a(const guint8 *p, gsize n)
{
    guint32 h = 2166136261u;
    for (gsize i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
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
    r->records++;
    if (rec->kind == MP_REC_OPAQUE) {
        if (r->in_opaque && r->opaque_off + r->opaque_len != rec->offset)
            die("opaque records with a gap", r);
        if (!r->in_opaque) {
            r->in_opaque = TRUE;
            r->opaque_off = rec->offset;
            r->opaque_len = 0;
        }
        r->opaque_len += rec->length;
    } else {
        flush_opaque(r);
        mp_record_describe(rec, r->log);
        if (n)
            g_string_append_printf(r->log, " h=%08x", fnv1a(data, n));
        g_string_append_c(r->log, '\n');
    }
    return r->pause ? MP_REC_PAUSE : MP_REC_CONTINUE;
}

/* @return FALSE once the parser stopped (error or end) */
static gboolean
feed_chunk(Run *r, gpointer p, const guint8 *data, gsize len, guint64 *at)
{
    guint8 *buf = g_memdup2(data, len);
    gsize off = 0;
    gboolean go_on = TRUE;

    r->fed_end = *at + len;
    for (;;) {
        g_autoptr(GError) err = NULL;
        gsize used = 0;
        r->records = 0;
        MpFeedStatus st = r->ops->feed(p, buf + off, len - off, &used, &err);
        if (used > len - off)
            die("consumed more than given", r);
        if (r->pause && r->records > 1)
            die("more than one record in a feed despite pausing", r);
        off += used;
        *at += used;
        if (st == MP_FEED_PAUSED) {
            if (!r->pause)
                die("paused without being asked", r);
            continue;
        }
        if (st == MP_FEED_MORE) {
            if (r->pause && r->records)
                die("MORE after a record that paused", r);
            if (off != len)
                die("MORE without consuming everything", r);
            break;
        }
        if (st == MP_FEED_END) {
            /* END with nothing taken: the grammar is over for good */
            if (used == 0 && r->records == 0) {
                go_on = FALSE;
                break;
            }
            /* else go on: the RAM parser reads the next section body */
            flush_opaque(r);
            g_string_append(r->log, "END\n");
            if (off == len)
                break;
            continue;
        }
        flush_opaque(r);
        {
            g_autoptr(GError) again = NULL;
            if (!err || err->domain != MP_PARSE_ERROR)
                die("error status without a parse GError", r);
            g_string_append_printf(r->log, "ERROR %d %s\n", err->code,
                                   err->message);
            if (r->ops->feed(p, buf, len, &used, &again) != MP_FEED_ERROR
                || used != 0 || !again || again->code != err->code)
                die("error is not sticky", r);
        }
        go_on = FALSE;
        break;
    }
    g_free(buf);
    return go_on;
}

static char *
run(const MpFuzzOps *ops, guint8 sel, const guint8 *data, gsize size,
    gsize chunk, gboolean pause)
{
    Run r = {ops, sel, pause, g_string_new(NULL)};
    gpointer p = ops->create(sel, on_record, &r);
    guint64 at = 0;
    gboolean go_on = TRUE;

    for (gsize off = 0; go_on && off < size; off += chunk)
        go_on = feed_chunk(&r, p, data + off, MIN(chunk, size - off), &at);
    if (go_on) {
        g_autoptr(GError) err = NULL;
        r.fed_end = at;
        flush_opaque(&r);
        if (ops->finish(p, &err))
            g_string_append(r.log, "FINISHED\n");
        else if (!err || err->domain != MP_PARSE_ERROR)
            die("finish failed without a parse GError", &r);
        else
            g_string_append_printf(r.log, "ERROR %d %s\n", err->code,
                                   err->message);
    }
    ops->destroy(p);
    return g_string_free(r.log, FALSE);
}

int
mp_fuzz_chunks_run(const MpFuzzOps *ops, const guint8 *data, gsize size)
{
    if (size < 1)
        return 0;
    guint8 sel = data[0];
    gsize chunk = sel & 0x3f;
    data++;
    size--;
    g_autofree char *whole = run(ops, sel, data, size, MAX(size, 1), FALSE);
    g_autofree char *cut = run(ops, sel, data, size, chunk ? chunk : MAX(size, 1),
                               !!(sel & 0x80));
    if (strcmp(whole, cut) != 0) {
        fprintf(stderr, "fuzz: whole and chunked feeds differ\n"
                        "--- whole ---\n%s--- chunks of %zu ---\n%s",
                whole, chunk, cut);
        abort();
    }
    return 0;
}
