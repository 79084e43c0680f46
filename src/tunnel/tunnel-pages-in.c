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
    /* the batch being applied */
    GByteArray *out;
    gsize start, limit;
    gboolean over;
    GByteArray *copy; /* a first payload without its setup field */
    guint64 batches, pages, zero_pages, payload_bytes, records_bytes;
};

MpTunPagesIn *
mp_tun_pages_in_new(guint32 page_size, guint64 cache_cap)
{
    MpTunPagesIn *pi = g_new0(MpTunPagesIn, 1);
    pi->page_size = page_size;
    pi->cache_cap = cache_cap;
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
    g_free(pi);
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

static void
on_page(const char *block, guint64 index, guint32 count, const guint8 *page,
        gpointer data)
{
    MpTunPagesIn *pi = data;

    if (!page) {
        for (guint32 k = 0; k < count; k++) {
            if (!room(pi, 8 + 256 + 1))
                return;
            put_header(pi, block, index + k, MP_RAM_SAVE_FLAG_ZERO);
            g_byte_array_append(pi->out, (const guint8 *)"", 1);
        }
        pi->pages += count;
        pi->zero_pages += count;
        return;
    }
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
    return o;
}
