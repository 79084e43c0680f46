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
    guint32 page_size;
    GHashTable *blocks; /* block id -> Block */
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
    z->page_size = page_size;
    z->blocks = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL,
                                      block_free);
    return z;
}

void
mp_zrun_free(MpZeroRuns *z)
{
    if (!z)
        return;
    g_hash_table_destroy(z->blocks);
    g_free(z);
}

gboolean
mp_zrun_declare_block(MpZeroRuns *z, guint16 block, guint64 npages,
                      gboolean peer_zero)
{
    if (npages > G_MAXUINT32)
        return FALSE;
    Block *b = g_new0(Block, 1);
    gsize words = (npages + 63) / 64;
    b->npages = npages;
    b->bits = g_new0(guint64, MAX(words, 1));
    if (peer_zero && npages) {
        memset(b->bits, 0xff, words * 8);
        if (npages % 64)
            b->bits[words - 1] = (G_GUINT64_CONSTANT(1) << (npages % 64)) - 1;
    }
    g_hash_table_replace(z->blocks, GUINT_TO_POINTER(block), b);
    return TRUE;
}

static Block *
block_of(const MpZeroRuns *z, guint16 block, guint64 index)
{
    Block *b = g_hash_table_lookup(z->blocks, GUINT_TO_POINTER(block));
    return b && index < b->npages ? b : NULL;
}

gboolean
mp_zrun_peer_zero(const MpZeroRuns *z, guint16 block, guint64 index)
{
    Block *b = block_of(z, block, index);
    return b && (b->bits[index / 64] >> (index % 64) & 1);
}

static void
set_bit(const MpZeroRuns *z, guint16 block, guint64 index, gboolean v)
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
mp_zrun_classify(MpZeroRuns *z, guint16 block, guint64 index,
                 const guint8 *page, gboolean run_ends_here)
{
    guint64 t0 = mp_codec_now_ns();
    MpZeroVerdict v;
    guint64 out = 0;

    if (!mp_page_is_zero(page, z->page_size)) {
        set_bit(z, block, index, FALSE);
        v = MP_ZRUN_DATA;
    } else if (run_ends_here) {
        /* free on the wire, even for a page the peer holds as zero, and
         * it keeps the run whole for the pages after it */
        z->zero_pages++;
        v = MP_ZRUN_EXTEND;
    } else if (mp_zrun_peer_zero(z, block, index)) {
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
    return v;
}

void
mp_zrun_forget(MpZeroRuns *z, guint16 block, guint64 first, guint64 n)
{
    Block *b = g_hash_table_lookup(z->blocks, GUINT_TO_POINTER(block));
    if (!b || first >= b->npages)
        return;
    n = MIN(n, b->npages - first);
    for (guint64 i = first; i < first + n; i++)
        b->bits[i / 64] &= ~(G_GUINT64_CONSTANT(1) << (i % 64));
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

const MpCodecStats *
mp_zrun_stats(const MpZeroRuns *z)
{
    return &z->stats;
}

guint64
mp_zrun_skipped(const MpZeroRuns *z)
{
    return z->skipped;
}

guint64
mp_zrun_zero_pages(const MpZeroRuns *z)
{
    return z->zero_pages;
}

guint64
mp_zrun_runs(const MpZeroRuns *z)
{
    return z->runs;
}
