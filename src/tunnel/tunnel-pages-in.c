/* tunnel-pages-in.c: PAGES payloads back into QEMU RAM records (see
 * tunnel-pages-in.h). */
#include "config.h"
#include <string.h>
#include <gio/gio.h>
#include "mp-record.h"
#include "page-batch.h"
#include "parse-common.h"
#include "tunnel-pages-in.h"
#include "tunnel-pages-out.h"

struct MpTunPagesIn {
    guint32 page_size;
    guint64 cache_cap;
    MpPageCache *cache;
    MpBatchDec *dec;
    guint64 cache_bytes;
    char last_block[256]; /* block of the last record written; "" none */
    gboolean broken;
    gboolean bare; /* multifd: pages as bare bytes, no record headers */
    /* the batch being applied */
    GByteArray *out;
    gsize start, limit;
    gboolean over;
    GByteArray *copy; /* a first payload without its setup field */
    guint64 batches, pages, zero_pages, payload_bytes, records_bytes;
    /* lifted pages: waiting for a batch to go before; written, their
     * batch copy not seen yet ("index block" keys) */
    GQueue waiting; /* UPage* */
    GHashTable *ahead;
    guint64 u_frames, u_pages, u_at_once, u_before_batch, u_dropped;
};

typedef struct {
    char *block;
    guint64 index;
    guint8 *page; /* NULL: a zero page */
} UPage;

static void
upage_free(UPage *u)
{
    g_free(u->block);
    g_free(u->page);
    g_free(u);
}

MpTunPagesIn *
mp_tun_pages_in_new(guint32 page_size, guint64 cache_cap)
{
    MpTunPagesIn *pi = g_new0(MpTunPagesIn, 1);
    pi->page_size = page_size;
    pi->cache_cap = cache_cap;
    g_queue_init(&pi->waiting);
    pi->ahead = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    return pi;
}

void
mp_tun_pages_in_free(MpTunPagesIn *pi)
{
    if (!pi)
        return;
    mp_batch_dec_free(pi->dec);
    mp_pcache_free(pi->cache);
    if (pi->copy)
        g_byte_array_unref(pi->copy);
    g_queue_clear_full(&pi->waiting, (GDestroyNotify)upage_free);
    g_hash_table_unref(pi->ahead);
    g_free(pi);
}

void
mp_tun_pages_in_set_bare(MpTunPagesIn *pi)
{
    pi->bare = TRUE;
}

void
mp_tun_pages_in_data(MpTunPagesIn *pi)
{
    pi->last_block[0] = '\0';
}

/* One RAM record: be64 offset|flags, the block name unless CONTINUE. */
static void
put_header(MpTunPagesIn *pi, const char *block, guint64 index, guint32 flag)
{
    gboolean cont = strcmp(block, pi->last_block) == 0;
    guint8 h[8 + 1 + 255];
    gsize n = 8;
    guint64 v = index * pi->page_size | flag;

    if (cont) {
        v |= MP_RAM_SAVE_FLAG_CONTINUE;
    } else {
        gsize bl = strlen(block);
        h[8] = (guint8)bl;
        memcpy(h + 9, block, bl);
        n += 1 + bl;
        memcpy(pi->last_block, block, bl + 1);
    }
    mp_put_be64(h, v);
    g_byte_array_append(pi->out, h, n);
}

static gboolean
room(MpTunPagesIn *pi, gsize more)
{
    if (pi->over || pi->out->len - pi->start + more > pi->limit) {
        pi->over = TRUE;
        return FALSE;
    }
    return TRUE;
}

static char *
ahead_key(const char *block, guint64 index)
{
    return g_strdup_printf("%" G_GUINT64_FORMAT " %s", index, block);
}

/* The batch's copy of a page written from the urgent lane: dropped. */
static gboolean
dropped(MpTunPagesIn *pi, const char *block, guint64 index)
{
    if (!g_hash_table_size(pi->ahead))
        return FALSE;
    g_autofree char *k = ahead_key(block, index);
    if (!g_hash_table_remove(pi->ahead, k))
        return FALSE;
    pi->u_dropped++;
    return TRUE;
}

static void
put_page(MpTunPagesIn *pi, const char *block, guint64 index,
         const guint8 *page)
{
    put_header(pi, block, index,
               page ? MP_RAM_SAVE_FLAG_PAGE : MP_RAM_SAVE_FLAG_ZERO);
    if (page)
        g_byte_array_append(pi->out, page, pi->page_size);
    else
        g_byte_array_append(pi->out, (const guint8 *)"", 1);
}

/* The lifted pages that waited go before the batch about to be written. */
static void
write_waiting(MpTunPagesIn *pi, GByteArray *out)
{
    pi->out = out;
    for (UPage *u; (u = g_queue_pop_head(&pi->waiting));) {
        put_page(pi, u->block, u->index, u->page);
        pi->u_before_batch++;
        upage_free(u);
    }
    pi->out = NULL;
}

/* A multifd packet's pages, in the order of its offset list: their bytes
 * and nothing else (the packet header came as DATA before them). */
static void
put_bare(MpTunPagesIn *pi, guint32 count, const guint8 *page)
{
    gsize n = (gsize)count * pi->page_size;

    if (!room(pi, n))
        return;
    if (page) {
        g_byte_array_append(pi->out, page, pi->page_size);
    } else {
        gsize at = pi->out->len;
        g_byte_array_set_size(pi->out, at + n);
        memset(pi->out->data + at, 0, n);
        pi->zero_pages += count;
    }
    pi->pages += count;
}

static void
on_page(const char *block, guint64 index, guint32 count, const guint8 *page,
        gpointer data)
{
    MpTunPagesIn *pi = data;

    if (pi->bare) {
        put_bare(pi, count, page);
        return;
    }
    if (!page) {
        for (guint32 k = 0; k < count; k++) {
            if (dropped(pi, block, index + k))
                continue;
            if (!room(pi, 8 + 256 + 1))
                return;
            put_header(pi, block, index + k, MP_RAM_SAVE_FLAG_ZERO);
            g_byte_array_append(pi->out, (const guint8 *)"", 1);
        }
        pi->pages += count;
        pi->zero_pages += count;
        return;
    }
    if (dropped(pi, block, index))
        return;
    if (!room(pi, 8 + 256 + pi->page_size))
        return;
    put_header(pi, block, index, MP_RAM_SAVE_FLAG_PAGE);
    g_byte_array_append(pi->out, page, pi->page_size);
    pi->pages++;
}

G_GNUC_PRINTF(2, 3)
static gboolean
refuse(GError **error, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error_literal(error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA, msg);
    return FALSE;
}

gboolean
mp_tun_pages_in_apply(MpTunPagesIn *pi, const guint8 *payload, gsize len,
                      GByteArray *out, gsize limit, GError **error)
{
    if (pi->broken)
        return refuse(error, "an earlier batch failed: the stream is lost");
    pi->broken = TRUE; /* until it succeeds */
    if (len < 2)
        return refuse(error, "page batch of %" G_GSIZE_FORMAT
                      " bytes, expected at least a header", len);
    /* one zstd decoder (8 MiB window) per source context: as many as a
     * source may have workers, not the 256 the byte allows */
    if (payload[1] >= MP_TUN_PAGES_MAX_WORKERS)
        return refuse(error, "payload offset 1: zstd context %u, expected "
                      "0..%u", payload[1], MP_TUN_PAGES_MAX_WORKERS - 1);
    gboolean setup = (payload[0] & MP_TUN_PAGES_SETUP) != 0;
    if (setup != !pi->dec)
        return refuse(error, "payload offset 0: %s",
                      setup ? "a second cache setup (flag 0x02) on the stream"
                            : "the stream's first batch has no cache setup "
                              "(flag 0x02)");
    if (setup) {
        if (len < 10)
            return refuse(error, "payload offset 2: cache setup cut short "
                          "(%" G_GSIZE_FORMAT " bytes)", len);
        guint64 cb = mp_be64(payload + 2);
        if (cb < pi->page_size || cb > pi->cache_cap)
            return refuse(error, "payload offset 2: page cache of %"
                          G_GUINT64_FORMAT " bytes, expected %u..%"
                          G_GUINT64_FORMAT " (negotiated)",
                          cb, pi->page_size, pi->cache_cap);
        pi->cache_bytes = cb;
        pi->cache = mp_pcache_new(pi->page_size, cb);
        pi->dec = mp_batch_dec_new(pi->page_size, pi->cache,
                                   MP_COMP_WINDOW_LOG_DEFAULT);
        pi->copy = g_byte_array_sized_new(len - 8);
        g_byte_array_append(pi->copy, payload, 2);
        pi->copy->data[0] &= ~MP_TUN_PAGES_SETUP;
        g_byte_array_append(pi->copy, payload + 10, len - 10);
        payload = pi->copy->data;
        len = pi->copy->len;
    }
    write_waiting(pi, out);
    pi->out = out;
    pi->start = out->len;
    pi->limit = limit;
    pi->over = FALSE;
    gboolean ok = mp_batch_decode(pi->dec, payload, len, on_page, pi, error);
    if (pi->copy)
        g_clear_pointer(&pi->copy, g_byte_array_unref);
    pi->out = NULL;
    if (!ok)
        return FALSE;
    if (pi->over)
        return refuse(error, "the batch gives more than %" G_GSIZE_FORMAT
                      " bytes of RAM records: more than the stream's window",
                      limit);
    pi->batches++;
    pi->payload_bytes += len;
    pi->records_bytes += out->len - pi->start;
    pi->broken = FALSE;
    return TRUE;
}

gboolean
mp_tun_pages_in_urgent(MpTunPagesIn *pi, const guint8 *payload, gsize len,
                       GByteArray *out, GError **error)
{
    if (pi->broken)
        return refuse(error, "an earlier batch failed: the stream is lost");
    if (pi->bare)
        return refuse(error, "urgent pages on a multifd stream");
    if (len < 1 + 1 + 4 || payload[0] == 0 || 1u + payload[0] + 4 > len)
        return refuse(error, "urgent pages: payload offset 0: a header "
                      "(block name, count) expected, %" G_GSIZE_FORMAT
                      " bytes", len);
    gsize n = payload[0];
    char block[256];
    memcpy(block, payload + 1, n);
    block[n] = '\0';
    if (strlen(block) != n)
        return refuse(error, "urgent pages: payload offset 1: a NUL in "
                      "the block name");
    guint32 count = mp_be32(payload + 1 + n);
    gsize at = 1 + n + 4;
    if (count == 0
        || g_queue_get_length(&pi->waiting) + count > MP_TUN_LIFT_MAX_WAITING
        || g_hash_table_size(pi->ahead) + count > MP_TUN_LIFT_MAX_AHEAD)
        return refuse(error, "urgent pages: payload offset %" G_GSIZE_FORMAT
                      ": %u pages, expected 1 or more, with at most %u "
                      "waiting (%u now) and %u whose batch copy has not "
                      "come (%u now)",
                      at - 4, count, MP_TUN_LIFT_MAX_WAITING,
                      g_queue_get_length(&pi->waiting),
                      MP_TUN_LIFT_MAX_AHEAD,
                      g_hash_table_size(pi->ahead));
    /* all checked before anything is kept */
    for (guint32 i = 0; i < count; i++) {
        if (at + 9 > len)
            return refuse(error, "urgent pages: payload offset %"
                          G_GSIZE_FORMAT ": page %u of %u cut short",
                          at, i, count);
        guint8 kind = payload[at + 8];
        guint64 index = mp_be64(payload + at);
        if ((kind != MP_TUN_LIFT_ZERO && kind != MP_TUN_LIFT_PAGE)
            || index >= (G_GUINT64_CONSTANT(1) << 48) / pi->page_size)
            return refuse(error, "urgent pages: payload offset %"
                          G_GSIZE_FORMAT ": page index %" G_GUINT64_FORMAT
                          " kind %u, expected kind 1 or 2 and an index "
                          "below 2^48 bytes",
                          at, index, kind);
        at += 9 + (kind == MP_TUN_LIFT_PAGE ? pi->page_size : 0);
        if (at > len)
            return refuse(error, "urgent pages: payload offset %"
                          G_GSIZE_FORMAT ": page %u of %u cut short",
                          at - pi->page_size, i, count);
    }
    if (at != len)
        return refuse(error, "urgent pages: payload offset %" G_GSIZE_FORMAT
                      ": %" G_GSIZE_FORMAT " bytes after the last page",
                      at, len - at);
    /* QEMU still reads records of this block: the pages go in now */
    gboolean now = g_queue_is_empty(&pi->waiting) && pi->last_block[0]
                   && strcmp(pi->last_block, block) == 0;
    at = 1 + n + 4;
    pi->out = out;
    for (guint32 i = 0; i < count; i++) {
        guint64 index = mp_be64(payload + at);
        const guint8 *page = payload[at + 8] == MP_TUN_LIFT_PAGE
                                 ? payload + at + 9
                                 : NULL;
        at += 9 + (page ? pi->page_size : 0);
        g_hash_table_add(pi->ahead, ahead_key(block, index));
        if (now) {
            put_page(pi, block, index, page);
            pi->u_at_once++;
            continue;
        }
        UPage *u = g_new0(UPage, 1);
        u->block = g_strdup(block);
        u->index = index;
        u->page = page ? g_memdup2(page, pi->page_size) : NULL;
        g_queue_push_tail(&pi->waiting, u);
    }
    pi->out = NULL;
    pi->u_frames++;
    pi->u_pages += count;
    return TRUE;
}

json_object *
mp_tun_pages_in_report(const MpTunPagesIn *pi)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "batches", json_object_new_int64(pi->batches));
    json_object_object_add(o, "pages", json_object_new_int64(pi->pages));
    json_object_object_add(o, "zero_pages",
                           json_object_new_int64(pi->zero_pages));
    json_object_object_add(o, "payload_bytes",
                           json_object_new_int64(pi->payload_bytes));
    json_object_object_add(o, "records_bytes",
                           json_object_new_int64(pi->records_bytes));
    json_object_object_add(o, "cache_bytes",
                           json_object_new_int64(pi->cache_bytes));
    const MpCodecStats *s = pi->dec ? mp_batch_dec_stats(pi->dec) : NULL;
    json_object_object_add(o, "cpu_s",
                           json_object_new_double(s ? s->busy_ns / 1e9 : 0));
    json_object *l = json_object_new_object();
    json_object_object_add(l, "frames", json_object_new_int64(pi->u_frames));
    json_object_object_add(l, "pages", json_object_new_int64(pi->u_pages));
    json_object_object_add(l, "written_at_once",
                           json_object_new_int64(pi->u_at_once));
    json_object_object_add(l, "written_before_batch",
                           json_object_new_int64(pi->u_before_batch));
    json_object_object_add(l, "bulk_dropped",
                           json_object_new_int64(pi->u_dropped));
    json_object_object_add(l, "waiting",
                           json_object_new_int64(
                               g_queue_get_length((GQueue *)&pi->waiting)));
    json_object_object_add(o, "lift", l);
    return o;
}
