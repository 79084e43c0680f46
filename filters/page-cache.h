/* page-cache.h: the mirrored page cache behind the delta and dedup
 * encoders.
 *
 * Each side of the tunnel keeps one cache per stream: the source side
 * records every page it sends, the destination side every page it
 * decodes, in the same order (the stream's frame order).  Contents and
 * evictions depend only on that sequence of operations and on the byte
 * budget, never on timing, addresses or hash-table iteration, so both
 * caches stay identical, and the source knows exactly which page versions
 * the destination holds: a delta against a cached page, or a reference to
 * one, always resolves on the other side.
 *
 * Pages are keyed by (block id, page index).  The source side's cache
 * hands out block ids (mp_pcache_block_id(), in order of first use); each
 * batch carries its block's id and name, and the destination's cache binds
 * that id to that name (mp_pcache_block_bind()), so the two use the same
 * ids whatever order the source assigned them in.  Eviction is least-recently-used; "use" is an update, a
 * delta base or a dedup reference, on both sides alike.
 *
 * Not thread-safe: one cache belongs to one stream's ordered stage.
 * Memory: budget bytes of page data, reserved at creation (touched as the
 * cache fills), plus about 130 bytes per page of entries and indexes.
 */
#pragma once

#include <glib.h>

#define MP_PCACHE_MAX_BLOCKS 4096

typedef struct MpPageCache MpPageCache;

typedef struct {
    guint16 block;
    guint64 index; /* page number within the block */
} MpPageKey;

/* @return a cache holding at most budget / page_size pages (at least one);
 * free with mp_pcache_free(). */
MpPageCache *mp_pcache_new(guint32 page_size, guint64 budget);
void mp_pcache_free(MpPageCache *c); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpPageCache, mp_pcache_free)

/* The cache size for a guest of `ram_bytes` when the operator gives none:
 * a quarter of its RAM, between 32 MiB and 2 GiB, never above the RAM
 * itself.  A quarter holds the working set that a migration re-sends
 * (pages dirtied again between rounds) for the guests we measured, and
 * both hosts can spare it next to the guest. */
guint64 mp_pcache_auto_size(guint64 ram_bytes);

/* @return the id of block `name`, assigned on first use (0, 1, ...), or -1
 * once MP_PCACHE_MAX_BLOCKS names are known. */
gint mp_pcache_block_id(MpPageCache *c, const char *name);

/* Destination side: block `id` is `name`, as the source's batch says.
 * @return FALSE with an error when the id is bound to another name, the
 * name to another id, or the id is out of range (the caches are then out
 * of step). */
gboolean mp_pcache_block_bind(MpPageCache *c, guint id, const char *name,
                              GError **error);

/* @return the cached version of a page (page_size bytes, valid until the
 * next change to the cache) and marks it used, or NULL. */
const guint8 *mp_pcache_get(MpPageCache *c, MpPageKey key);

/* Stores `page` (page_size bytes, copied) as the version the peer holds,
 * evicting the least recently used pages over budget. */
void mp_pcache_put(MpPageCache *c, MpPageKey key, const guint8 *page);

/* @return the content hash the cache finds pages by (XXH3-64). */
guint64 mp_pcache_hash(const MpPageCache *c, const guint8 *page);

/* mp_pcache_put() and mp_pcache_find() with `hash` =
 * mp_pcache_hash(c, page) given: a page looked up and then stored is
 * hashed once (an XXH3 of 4 KiB is a good part of a store). */
void mp_pcache_put_hashed(MpPageCache *c, MpPageKey key, const guint8 *page,
                          guint64 hash);
gboolean mp_pcache_find_hashed(MpPageCache *c, const guint8 *page,
                               guint64 hash, MpPageKey *key);

/* A cache that is never searched (the destination's mirror: references
 * name their key) keeps no content index: a store neither hashes the
 * page nor updates the index, and mp_pcache_find() finds nothing.  Call
 * before the first store.  Contents, order and evictions stay those of
 * an indexed cache, so the mirrors stay identical. */
void mp_pcache_set_unsearched(MpPageCache *c);

/* The peer's page is no longer known (it became zero, or was discarded). */
void mp_pcache_forget(MpPageCache *c, MpPageKey key);

/* Dedup: looks for a cached page with the same bytes as `page` (XXH3-64
 * match, then a full compare; never in an unsearched cache).  @return TRUE with *key set and the page
 * marked used. */
gboolean mp_pcache_find(MpPageCache *c, const guint8 *page, MpPageKey *key);

guint64 mp_pcache_pages(const MpPageCache *c);
guint64 mp_pcache_capacity(const MpPageCache *c);
guint64 mp_pcache_evictions(const MpPageCache *c);
guint32 mp_pcache_page_size(const MpPageCache *c);

/* @return a hash of the whole state: keys in LRU order and their bytes.
 * Two mirrors are in step iff their digests match (tests, and a resumed
 * tunnel checking both sides). */
guint64 mp_pcache_digest(const MpPageCache *c);
