/* feed-util.c: whole, per-byte and every-split feeders over guard pages. */
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>
#include <string.h>
#include <criterion/criterion.h>
#include "feed-util.h"
#include "record-format.h"

static gsize
page_size(void)
{
    return (gsize)sysconf(_SC_PAGESIZE);
}

static gsize
guarded_span(gsize len)
{
    gsize ps = page_size();
    return ((len + ps - 1) / ps + 1) * ps;
}

guint8 *
guarded_dup(const void *data, gsize len)
{
    gsize span = guarded_span(len);
    guint8 *base = mmap(NULL, span, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    cr_assert(base != MAP_FAILED);
    cr_assert(mprotect(base + span - page_size(), page_size(), PROT_NONE)
              == 0);
    guint8 *p = base + span - page_size() - len;
    if (len)
        memcpy(p, data, len);
    return p;
}

void
guarded_free(guint8 *p, gsize len)
{
    gsize span = guarded_span(len);
    guint8 *base = p + len + page_size() - span;
    munmap(base, span);
}

typedef struct {
    GString *log;
} LogCtx;

static MpRecordAction
log_record(const MpRecord *rec, gpointer user_data)
{
    LogCtx *ctx = user_data;
    mp_record_describe(rec, ctx->log);
    g_string_append_c(ctx->log, '\n');
    return MP_REC_CONTINUE;
}

/* Feeds one chunk; returns FALSE when the parser stopped (end or error). */
static gboolean
feed_chunk(const MpParserOps *ops, gpointer p, const guint8 *data, gsize len,
           GString *log, gboolean *ended)
{
    guint8 *g = guarded_dup(data, len);
    gsize off = 0;
    gboolean go_on = TRUE;

    for (;;) {
        g_autoptr(GError) err = NULL;
        gsize used = 0;
        MpFeedStatus st = ops->feed(p, g + off, len - off, &used, &err);
        cr_assert(used <= len - off, "consumed more than given");
        off += used;
        if (st == MP_FEED_PAUSED)
            continue;
        if (st == MP_FEED_ERROR) {
            cr_assert(err != NULL, "error status without GError");
            g_string_append_printf(log, "ERROR %d %s\n", err->code,
                                   err->message);
            go_on = FALSE;
        } else if (st == MP_FEED_END) {
            g_string_append(log, "END\n");
            *ended = TRUE;
            go_on = FALSE;
        } else {
            cr_assert(off == len, "MORE without consuming everything");
        }
        break;
    }
    guarded_free(g, len);
    return go_on;
}

char *
feed_log(const MpParserOps *ops, const guint8 *data, gsize len, gsize chunk,
         gsize split)
{
    LogCtx ctx = {g_string_new(NULL)};
    gpointer p = ops->create(log_record, &ctx);
    gboolean ended = FALSE;
    gboolean go_on = TRUE;

    if (chunk) {
        for (gsize off = 0; go_on && off < len; off += chunk)
            go_on = feed_chunk(ops, p, data + off, MIN(chunk, len - off),
                               ctx.log, &ended);
    } else if (split) {
        go_on = feed_chunk(ops, p, data, split, ctx.log, &ended);
        if (go_on)
            go_on = feed_chunk(ops, p, data + split, len - split, ctx.log,
                               &ended);
    } else {
        go_on = feed_chunk(ops, p, data, len, ctx.log, &ended);
    }
    if (go_on) {
        g_autoptr(GError) err = NULL;
        if (ops->finish(p, &err))
            g_string_append(ctx.log, "MORE\n");
        else
            g_string_append_printf(ctx.log, "ERROR %d %s\n", err->code,
                                   err->message);
    }
    ops->destroy(p);
    return g_string_free(ctx.log, FALSE);
}

char *
feed_check_all_splits(const MpParserOps *ops, const guint8 *data, gsize len)
{
    char *whole = feed_log(ops, data, len, 0, 0);
    g_autofree char *bytes = feed_log(ops, data, len, 1, 0);
    cr_assert_str_eq(bytes, whole, "byte-by-byte feed differs");
    for (gsize split = 1; split < len; split++) {
        g_autofree char *s = feed_log(ops, data, len, 0, split);
        cr_assert_str_eq(s, whole, "split at %zu differs", split);
    }
    return whole;
}

#define FEED_GAP_CHUNKED 24000

char *
feed_log_gap(const MpParserOps *ops, gboolean (*gap)(gpointer, guint64),
             const guint8 *data, gsize len, gsize gap_at, gsize gap_len,
             gsize chunk)
{
    LogCtx ctx = {g_string_new(NULL)};
    gpointer p = ops->create(log_record, &ctx);
    gboolean ended = FALSE;
    gboolean go_on = feed_chunk(ops, p, data, gap_at, ctx.log, &ended);

    if (go_on)
        cr_assert(gap(p, gap_len), "the parser does not look for a record");
    /* in chunks over where the parser looks for a record (a position and
     * the records a probe walks from it), whole after that: a guard page
     * per byte of a long stream costs more than it tells */
    gsize chunked_end = gap_at + gap_len + FEED_GAP_CHUNKED;
    for (gsize off = gap_at + gap_len; go_on && off < len;) {
        gsize n = chunk && off < chunked_end ? MIN(chunk, len - off)
                                             : len - off;
        go_on = feed_chunk(ops, p, data + off, n, ctx.log, &ended);
        off += n;
    }
    if (go_on) {
        g_autoptr(GError) err = NULL;
        if (ops->finish(p, &err))
            g_string_append(ctx.log, "MORE\n");
        else
            g_string_append_printf(ctx.log, "ERROR %d %s\n", err->code,
                                   err->message);
    }
    ops->destroy(p);
    return g_string_free(ctx.log, FALSE);
}

void
feed_check_gap(const MpParserOps *ops, gboolean (*gap)(gpointer, guint64),
               const guint8 *data, gsize len, gsize gap_at, gsize gap_len,
               gsize resume)
{
    static const gsize chunks[] = {0, 1, 4103};
    g_autofree char *ref = feed_log(ops, data, len, 0, 0);
    g_auto(GStrv) lines = g_strsplit(ref, "\n", -1);
    g_autoptr(GPtrArray) want = g_ptr_array_new_with_free_func(g_free);
    gboolean tail = FALSE;

    for (guint i = 0; lines[i]; i++) {
        guint64 o, n;
        if (!*lines[i])
            continue;
        if (sscanf(lines[i], "off=%" G_GUINT64_FORMAT " len=%" G_GUINT64_FORMAT,
                   &o, &n)
            != 2) {
            if (tail) /* MORE, END, an error */
                g_ptr_array_add(want, g_strdup(lines[i]));
            continue;
        }
        if (!tail && o + n <= gap_at) {
            g_ptr_array_add(want, g_strdup(lines[i]));
        } else if (!tail && o == resume && n > 0) {
            tail = TRUE;
            g_ptr_array_add(
                want, g_strdup_printf("off=%zu len=0 resync gap_offset=%zu "
                                      "gap_bytes=%zu skipped=%zu at=",
                                      resume, gap_at, gap_len,
                                      resume - gap_at - gap_len));
            g_ptr_array_add(want, g_strdup(lines[i]));
        } else if (tail) {
            g_ptr_array_add(want, g_strdup(lines[i]));
        }
    }
    cr_assert(tail, "no record starts at %zu in the whole feed", resume);
    for (guint c = 0; c < G_N_ELEMENTS(chunks); c++) {
        g_autofree char *log =
            feed_log_gap(ops, gap, data, len, gap_at, gap_len, chunks[c]);
        g_auto(GStrv) got = g_strsplit(log, "\n", -1);
        guint n = 0;
        for (guint i = 0; got[i]; i++) {
            if (!*got[i])
                continue;
            cr_assert(n < want->len, "chunk %zu: more records than expected: "
                                     "%s\n(log:\n%s)",
                      chunks[c], got[i], log);
            const char *w = g_ptr_array_index(want, n);
            if (strstr(w, " resync "))
                cr_assert(g_str_has_prefix(got[i], w),
                          "chunk %zu: line %u\n got: %s\nwant: %s...\n(log:\n%s)",
                          chunks[c], n, got[i], w, log);
            else
                cr_assert_str_eq(got[i], w,
                                 "chunk %zu: line %u differs\n(log:\n%s)",
                                 chunks[c], n, log);
            n++;
        }
        cr_assert_eq(n, want->len, "chunk %zu: %u lines, %u expected\n%s",
                     chunks[c], n, want->len, log);
    }
}
