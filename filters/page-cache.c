/* page-cache.c: the mirrored page cache (see page-cache.h). */
#include "config.h"
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <xxhash.h>
#include "parse-common.h"
#include "page-cache.h"

/* Entries and page data live in two arrays made once, at the cache's
 * size: no allocation per page (each new 4 KiB allocation was a page
 * fault, most of the cost of a put on the development VM), and a budget
 * that is exactly what the cache can take.  The page data is a mapping
 * of its own (map_data()). */
typedef struct Entry Entry;
struct Entry {
    guint64 packed; /* by_key's key */
    MpPageKey key;
    guint64 hash; /* XXH3-64 of data */
    Entry *prev, *next; /* LRU list: head most recent */
    /* entries with the same content hash, newest first; doubly linked,
     * because guest RAM holds thousands of identical pages and unlinking
     * one must not walk them all */
    Entry *hash_prev, *hash_next;
    guint8 *data; /* page_size bytes in the data array */
};

struct MpPageCache {
    guint32 page_size;
    guint64 capacity; /* pages */
    guint64 count;
    guint64 evictions;
    Entry *entries;     /* capacity of them */
    guint8 *data;       /* capacity * page_size, data_len mapped */
    gsize data_len;
    Entry *free_list;   /* dropped entries, linked by next */
    guint64 fresh;      /* entries[fresh..capacity) never used yet */
    GHashTable *by_key;  /* &Entry.packed -> Entry */
    GHashTable *by_hash; /* &Entry.hash -> first Entry of that hash */
    Entry *head, *tail;
    gboolean unsearched; /* no content index (by_hash stays empty) */
    GHashTable *blocks; /* name -> id + 1 */
    GPtrArray *names;   /* id -> name (borrowed from blocks), or NULL */
};

static guint64
pack(MpPageKey k)
{
    /* page indexes stay below 2^48 (256 TiB blocks of 4 KiB pages) */
    return (guint64)k.block << 48 | (k.index & G_GUINT64_CONSTANT(0xffffffffffff));
}

static guint
u64_hash(gconstpointer p)
{
    guint64 v = *(const guint64 *)p;
    return (guint)(v ^ v >> 32);
}

static gboolean
u64_equal(gconstpointer a, gconstpointer b)
{
    return *(const guint64 *)a == *(const guint64 *)b;
}

/* The page data: guest memory, so kept out of core dumps
 * (MADV_DONTDUMP), and in transparent huge pages where the host has them
 * (MADV_HUGEPAGE, which `madvise` mode honours): the first pass through
 * the cache touches every page of it, and on the development VM a 4 KiB
 * fault cost 11 us, 10 to 15 % of either side's CPU in a 1 Gbit/s
 * migration (docs/benchmarks.md, "The page cache in huge pages").  Both
 * are advice; memory is still touched only as pages fill the cache. */
static guint8 *
map_data(gsize len)
{
    void *m = mmap(NULL, len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        g_error("page cache: mmap of %zu bytes failed: %s", len,
                g_strerror(errno));
    madvise(m, len, MADV_HUGEPAGE);
    madvise(m, len, MADV_DONTDUMP);
    return m;
}

MpPageCache *
mp_pcache_new(guint32 page_size, guint64 budget)
{
    MpPageCache *c = g_new0(MpPageCache, 1);
    g_assert(page_size > 0);
    c->page_size = page_size;
    c->capacity = MAX(budget / page_size, 1);
    c->entries = g_new0(Entry, c->capacity);
    c->data_len = (gsize)c->capacity * page_size;
    c->data = map_data(c->data_len);
    /* the entries are handed out in order as the cache fills
     * (take_entry()), not threaded onto a free list here: that wrote all
     * of them (2.3 MiB for a 512 MiB guest's cache, 576 fresh pages,
     * about 13 ms on the development VM) before the stream's first frame
     * could leave */
    c->by_key = g_hash_table_new(u64_hash, u64_equal);
    c->by_hash = g_hash_table_new(u64_hash, u64_equal);
    c->blocks = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    c->names = g_ptr_array_new();
    return c;
}

void
mp_pcache_free(MpPageCache *c)
{
    if (!c)
        return;
    g_free(c->entries);
    munmap(c->data, c->data_len);
    g_hash_table_destroy(c->by_key);
    g_hash_table_destroy(c->by_hash);
    g_hash_table_destroy(c->blocks);
    g_ptr_array_unref(c->names);
    g_free(c);
}

guint64
mp_pcache_auto_size(guint64 ram_bytes)
{
    guint64 mib = 1024 * 1024;
    guint64 s = CLAMP(ram_bytes / 4, 32 * mib, 2048 * mib);
    return MIN(s, ram_bytes);
}

gint
mp_pcache_block_id(MpPageCache *c, const char *name)
{
    gpointer v = g_hash_table_lookup(c->blocks, name);
    if (v)
        return GPOINTER_TO_INT(v) - 1;
    guint n = c->names->len;
    if (n >= MP_PCACHE_MAX_BLOCKS)
        return -1;
    char *key = g_strdup(name);
    g_hash_table_insert(c->blocks, key, GINT_TO_POINTER(n + 1));
    g_ptr_array_add(c->names, key);
    return (gint)n;
}

gboolean
mp_pcache_block_bind(MpPageCache *c, guint id, const char *name,
                     GError **error)
{
    gpointer v = g_hash_table_lookup(c->blocks, name);
    const char *bound = id < c->names->len ? c->names->pdata[id] : NULL;

    if (v && (guint)GPOINTER_TO_INT(v) - 1 == id)
        return TRUE;
    if (v) {
        mp_parse_error_set(error, "page cache", MP_PARSE_ERROR_DECODE,
                           "block \"%s\" came as id %d, now as %u: the "
                           "caches are out of step",
                           name, GPOINTER_TO_INT(v) - 1, id);
        return FALSE;
    }
    if (bound) {
        mp_parse_error_set(error, "page cache", MP_PARSE_ERROR_DECODE,
                           "block id %u is \"%s\", now \"%s\": the caches "
                           "are out of step",
                           id, bound, name);
        return FALSE;
    }
    if (id >= MP_PCACHE_MAX_BLOCKS) {
        mp_parse_error_set(error, "page cache", MP_PARSE_ERROR_DECODE,
                           "block id %u for \"%s\", expected below %u", id,
                           name, MP_PCACHE_MAX_BLOCKS);
        return FALSE;
    }
    if (id >= c->names->len)
        g_ptr_array_set_size(c->names, id + 1);
    char *key = g_strdup(name);
    g_hash_table_insert(c->blocks, key, GINT_TO_POINTER(id + 1));
    c->names->pdata[id] = key;
    return TRUE;
}

static void
lru_unlink(MpPageCache *c, Entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void
lru_push_head(MpPageCache *c, Entry *e)
{
    e->prev = NULL;
    e->next = c->head;
    if (c->head)
        c->head->prev = e;
    c->head = e;
    if (!c->tail)
        c->tail = e;
}

static void
touch(MpPageCache *c, Entry *e)
{
    if (c->head != e) {
        lru_unlink(c, e);
        lru_push_head(c, e);
    }
}

static void
hash_unlink(MpPageCache *c, Entry *e)
{
    if (c->unsearched)
        return;
    if (e->hash_prev) {
        e->hash_prev->hash_next = e->hash_next;
    } else if (e->hash_next) {
        /* the table's key must point into a live entry: the new head's */
        g_hash_table_replace(c->by_hash, &e->hash_next->hash, e->hash_next);
    } else {
        g_hash_table_remove(c->by_hash, &e->hash);
    }
    if (e->hash_next)
        e->hash_next->hash_prev = e->hash_prev;
    e->hash_prev = e->hash_next = NULL;
}

static void
hash_link(MpPageCache *c, Entry *e)
{
    if (c->unsearched)
        return;
    Entry *first = g_hash_table_lookup(c->by_hash, &e->hash);
    e->hash_prev = NULL;
    e->hash_next = first;
    if (first)
        first->hash_prev = e;
    g_hash_table_replace(c->by_hash, &e->hash, e);
}

static void
drop(MpPageCache *c, Entry *e)
{
    lru_unlink(c, e);
    hash_unlink(c, e);
    g_hash_table_remove(c->by_key, &e->packed);
    c->count--;
    e->next = c->free_list;
    c->free_list = e;
}

/* A dropped entry, else the next never used; the caller has made room
 * (count < capacity), so there is one. */
static Entry *
take_entry(MpPageCache *c)
{
    Entry *e = c->free_list;

    if (e) {
        c->free_list = e->next;
        return e;
    }
    g_assert(c->fresh < c->capacity);
    e = &c->entries[c->fresh];
    e->data = c->data + c->fresh * c->page_size;
    c->fresh++;
    return e;
}

static Entry *
lookup(MpPageCache *c, MpPageKey key)
{
    guint64 k = pack(key);
    return g_hash_table_lookup(c->by_key, &k);
}

const guint8 *
mp_pcache_get(MpPageCache *c, MpPageKey key)
{
    Entry *e = lookup(c, key);
    if (!e)
        return NULL;
    touch(c, e);
    return e->data;
}

guint64
mp_pcache_hash(const MpPageCache *c, const guint8 *page)
{
    return XXH3_64bits(page, c->page_size);
}

void
mp_pcache_set_unsearched(MpPageCache *c)
{
    g_assert(c->count == 0);
    c->unsearched = TRUE;
}

void
mp_pcache_put(MpPageCache *c, MpPageKey key, const guint8 *page)
{
    mp_pcache_put_hashed(c, key, page,
                         c->unsearched ? 0 : mp_pcache_hash(c, page));
}

void
mp_pcache_put_hashed(MpPageCache *c, MpPageKey key, const guint8 *page,
                     guint64 h)
{
    Entry *e = lookup(c, key);

    if (e) {
        if (e->hash != h) {
            hash_unlink(c, e);
            e->hash = h;
            hash_link(c, e);
        }
        memcpy(e->data, page, c->page_size);
        touch(c, e);
        return;
    }
    while (c->count >= c->capacity) {
        c->evictions++;
        drop(c, c->tail);
    }
    e = take_entry(c);
    e->packed = pack(key);
    e->key = key;
    e->hash = h;
    e->hash_prev = e->hash_next = NULL;
    memcpy(e->data, page, c->page_size);
    g_hash_table_insert(c->by_key, &e->packed, e);
    hash_link(c, e);
    lru_push_head(c, e);
    c->count++;
}

void
mp_pcache_forget(MpPageCache *c, MpPageKey key)
{
    Entry *e = lookup(c, key);
    if (e)
        drop(c, e);
}

gboolean
mp_pcache_find(MpPageCache *c, const guint8 *page, MpPageKey *key)
{
    return mp_pcache_find_hashed(c, page, mp_pcache_hash(c, page), key);
}

gboolean
mp_pcache_find_hashed(MpPageCache *c, const guint8 *page, guint64 h,
                      MpPageKey *key)
{
    /* the first match in chain order, which both sides build alike */
    for (Entry *e = g_hash_table_lookup(c->by_hash, &h); e;
         e = e->hash_next) {
        if (memcmp(e->data, page, c->page_size) == 0) {
            touch(c, e);
            *key = e->key;
            return TRUE;
        }
    }
    return FALSE;
}

guint64
mp_pcache_pages(const MpPageCache *c)
{
    return c->count;
}

guint64
mp_pcache_capacity(const MpPageCache *c)
{
    return c->capacity;
}

guint64
mp_pcache_evictions(const MpPageCache *c)
{
    return c->evictions;
}

guint32
mp_pcache_page_size(const MpPageCache *c)
{
    return c->page_size;
}

guint64
mp_pcache_digest(const MpPageCache *c)
{
    XXH3_state_t *st = XXH3_createState();
    XXH3_64bits_reset(st);
    for (const Entry *e = c->head; e; e = e->next) {
        guint64 k = pack(e->key);
        XXH3_64bits_update(st, &k, sizeof(k));
        XXH3_64bits_update(st, e->data, c->page_size);
    }
    guint64 d = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    return d;
}
