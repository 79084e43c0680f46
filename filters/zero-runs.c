/* zero-runs.c: zero-page runs and peer-holds-zero tracking (see
 * zero-runs.h). */
#include "config.h"
#include <string.h>
#include "parse-common.h"
#include "zero-runs.h"


typedef struct {
    guint64 npages;
    guint64 *bits; /* 1: the peer holds the page as zero */
} Block;

struct MpZeroRuns {
    GMutex lock; /* every call: the session's streams share the tracker */
    guint32 page_size;
    GHashTable *blocks; /* block id -> Block */
    GHashTable *names;  /* name -> id + 1 */
    MpCodecStats stats;
    guint64 skipped, zero_pages, runs;
};

gboolean
mp_page_is_zero(const guint8 *p, gsize len)
{
    /* a page that is not zero almost always differs in its first bytes */
    if (len == 0)
        return TRUE;
    if (p[0] != 0)
        return FALSE;
    return memcmp(p, p + 1, len - 1) == 0;
}

static void
block_free(gpointer b)
{
    Block *blk = b;
    g_free(blk->bits);
    g_free(blk);
}

MpZeroRuns *
mp_zrun_new(guint32 page_size)
{
    MpZeroRuns *z = g_new0(MpZeroRuns, 1);
    g_mutex_init(&z->lock);
    z->page_size = page_size;
    z->blocks = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL,
                                      block_free);
    z->names = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    return z;
}

void
mp_zrun_free(MpZeroRuns *z)
{
    if (!z)
        return;
    g_hash_table_destroy(z->blocks);
    g_hash_table_destroy(z->names);
    g_mutex_clear(&z->lock);
    g_free(z);
}

gint
mp_zrun_declare_block(MpZeroRuns *z, const char *name, guint64 npages,
                      gboolean peer_zero)
{
    if (npages > G_MAXUINT32)
        return -1;
    g_mutex_lock(&z->lock);
    gint id = GPOINTER_TO_INT(g_hash_table_lookup(z->names, name)) - 1;
    if (id < 0) {
        guint n = g_hash_table_size(z->names);
        if (n >= MP_ZRUN_MAX_BLOCKS) {
            g_mutex_unlock(&z->lock);
            return -1;
        }
        id = (gint)n;
        g_hash_table_insert(z->names, g_strdup(name), GINT_TO_POINTER(id + 1));
    }
    Block *b = g_new0(Block, 1);
    gsize words = (npages + 63) / 64;
    b->npages = npages;
    b->bits = g_new0(guint64, MAX(words, 1));
    if (peer_zero && npages) {
        memset(b->bits, 0xff, words * 8);
        if (npages % 64)
            b->bits[words - 1] = (G_GUINT64_CONSTANT(1) << (npages % 64)) - 1;
    }
    g_hash_table_replace(z->blocks, GINT_TO_POINTER(id), b);
    g_mutex_unlock(&z->lock);
    return id;
}

gint
mp_zrun_block_id(MpZeroRuns *z, const char *name)
{
    g_mutex_lock(&z->lock);
    gint id = GPOINTER_TO_INT(g_hash_table_lookup(z->names, name)) - 1;
    g_mutex_unlock(&z->lock);
    return id;
}

static Block *
block_of(const MpZeroRuns *z, gint block, guint64 index)
{
    if (block < 0)
        return NULL;
    Block *b = g_hash_table_lookup(z->blocks, GINT_TO_POINTER(block));
    return b && index < b->npages ? b : NULL;
}

static gboolean
peer_zero(const MpZeroRuns *z, gint block, guint64 index)
{
    Block *b = block_of(z, block, index);
    return b && (b->bits[index / 64] >> (index % 64) & 1);
}

gboolean
mp_zrun_peer_zero(const MpZeroRuns *z, gint block, guint64 index)
{
    MpZeroRuns *mz = (MpZeroRuns *)z; /* the lock, not the state */
    g_mutex_lock(&mz->lock);
    gboolean r = peer_zero(z, block, index);
    g_mutex_unlock(&mz->lock);
    return r;
}

static void
set_bit(const MpZeroRuns *z, gint block, guint64 index, gboolean v)
{
    Block *b = block_of(z, block, index);
    guint64 m = G_GUINT64_CONSTANT(1) << (index % 64);
    if (!b)
        return;
    if (v)
        b->bits[index / 64] |= m;
    else
        b->bits[index / 64] &= ~m;
}

MpZeroVerdict
mp_zrun_classify(MpZeroRuns *z, gint block, guint64 index,
                 const guint8 *page, gboolean run_ends_here)
{
    guint64 t0 = mp_codec_now_ns();
    MpZeroVerdict v;
    guint64 out = 0;

    /* the zero check needs no lock: only the bitmap is shared */
    gboolean zero = mp_page_is_zero(page, z->page_size);
    g_mutex_lock(&z->lock);
    if (!zero) {
        set_bit(z, block, index, FALSE);
        v = MP_ZRUN_DATA;
    } else if (run_ends_here) {
        /* free on the wire, even for a page the peer holds as zero, and
         * it keeps the run whole for the pages after it */
        z->zero_pages++;
        v = MP_ZRUN_EXTEND;
    } else if (peer_zero(z, block, index)) {
        z->skipped++;
        v = MP_ZRUN_SKIP;
    } else {
        z->zero_pages++;
        z->runs++;
        out = MP_ZRUN_WIRE_LEN;
        v = MP_ZRUN_START;
    }
    if (v != MP_ZRUN_DATA)
        set_bit(z, block, index, TRUE);
    mp_codec_stats_add(&z->stats, 1, z->page_size, out, t0);
    g_mutex_unlock(&z->lock);
    return v;
}

void
mp_zrun_forget(MpZeroRuns *z, gint block, guint64 first, guint64 n)
{
    g_mutex_lock(&z->lock);
    Block *b = block_of(z, block, first);
    if (b) {
        n = MIN(n, b->npages - first);
        for (guint64 i = first; i < first + n; i++)
            b->bits[i / 64] &= ~(G_GUINT64_CONSTANT(1) << (i % 64));
    }
    g_mutex_unlock(&z->lock);
}

gboolean
mp_zrun_check(const MpZeroRun *r, guint64 npages, GError **error)
{
    if (r->count == 0 || r->first + r->count < r->first
        || (npages && r->first + r->count > npages)) {
        mp_parse_error_set(error, "zero run", MP_PARSE_ERROR_LENGTH,
                           "run of %u pages from page %" G_GUINT64_FORMAT
                           " in block %u, expected 1 or more pages inside "
                           "its %" G_GUINT64_FORMAT " pages",
                           r->count, r->first, r->block, npages);
        return FALSE;
    }
    return TRUE;
}

MpCodecStats
mp_zrun_stats(const MpZeroRuns *z)
{
    MpZeroRuns *mz = (MpZeroRuns *)z; /* the lock, not the state */
    g_mutex_lock(&mz->lock);
    MpCodecStats s = z->stats;
    g_mutex_unlock(&mz->lock);
    return s;
}

static guint64
locked_read(const MpZeroRuns *z, const guint64 *v)
{
    MpZeroRuns *mz = (MpZeroRuns *)z;
    g_mutex_lock(&mz->lock);
    guint64 r = *v;
    g_mutex_unlock(&mz->lock);
    return r;
}

guint64
mp_zrun_skipped(const MpZeroRuns *z)
{
    return locked_read(z, &z->skipped);
}

guint64
mp_zrun_zero_pages(const MpZeroRuns *z)
{
    return locked_read(z, &z->zero_pages);
}

guint64
mp_zrun_runs(const MpZeroRuns *z)
{
    return locked_read(z, &z->runs);
}
