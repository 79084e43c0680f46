/* feed-util.c: whole, per-byte and every-split feeders over guard pages. */
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
