/* page-marks.c: per-page sent marks in lazily made chunks (page-marks.h). */
#include "config.h"
#include <string.h>
#include "page-marks.h"

#define CHUNK_BYTES (MP_PAGE_MARKS_CHUNK / 8)

typedef struct {
    guint8 before[CHUNK_BYTES]; /* sent in an earlier round */
    guint8 now[CHUNK_BYTES];    /* sent in the current round */
    gboolean in_round;          /* listed in `round_chunks` */
} Chunk;

struct MpPageMarks {
    GHashTable *chunks;     /* chunk number -> Chunk* (owned) */
    GPtrArray *round_chunks; /* Chunk* with marks of the current round */
    guint64 last_no;        /* pages come in runs: the last chunk looked up */
    Chunk *last;
    guint own_left; /* chunks these marks may still make, unless shared */
    guint *left;    /* &own_left, or the budget of all blocks of a stream */
};

MpPageMarks *
mp_page_marks_new(void)
{
    MpPageMarks *m = g_new0(MpPageMarks, 1);
    /* (chunk numbers are below 2^52: they fit a pointer on 64-bit hosts;
     * g_int64 keys keep 32-bit hosts right) */
    m->chunks = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free,
                                      g_free);
    m->round_chunks = g_ptr_array_new();
    m->own_left = MP_PAGE_MARKS_MAX_CHUNKS;
    m->left = &m->own_left;
    return m;
}

MpPageMarks *
mp_page_marks_new_shared(guint *chunks_left)
{
    MpPageMarks *m = mp_page_marks_new();
    m->left = chunks_left;
    return m;
}

void
mp_page_marks_free(MpPageMarks *m)
{
    if (!m)
        return;
    g_hash_table_unref(m->chunks);
    g_ptr_array_unref(m->round_chunks);
    g_free(m);
}

/* The chunk of chunk number `no`, made if need be; NULL over the limit. */
static Chunk *
chunk_of(MpPageMarks *m, guint64 no)
{
    if (m->last && m->last_no == no)
        return m->last;
    Chunk *c = g_hash_table_lookup(m->chunks, &no);
    if (!c) {
        if (*m->left == 0)
            return NULL;
        (*m->left)--;
        c = g_new0(Chunk, 1);
        g_hash_table_insert(m->chunks, g_memdup2(&no, sizeof no), c);
    }
    m->last_no = no;
    m->last = c;
    return c;
}

guint
mp_page_marks_mark(MpPageMarks *m, guint64 index)
{
    Chunk *c = chunk_of(m, index / MP_PAGE_MARKS_CHUNK);
    if (!c)
        return MP_PAGE_UNTRACKED;
    guint bit = index % MP_PAGE_MARKS_CHUNK;
    guint8 mask = 1u << (bit % 8);
    guint was = (c->before[bit / 8] & mask ? MP_PAGE_SENT_BEFORE : 0)
                | (c->now[bit / 8] & mask ? MP_PAGE_SENT_THIS_ROUND : 0);

    c->now[bit / 8] |= mask;
    if (!c->in_round) {
        c->in_round = TRUE;
        g_ptr_array_add(m->round_chunks, c);
    }
    return was;
}

void
mp_page_marks_next_round(MpPageMarks *m)
{
    for (guint i = 0; i < m->round_chunks->len; i++) {
        Chunk *c = g_ptr_array_index(m->round_chunks, i);
        for (guint k = 0; k < CHUNK_BYTES; k++)
            c->before[k] |= c->now[k];
        memset(c->now, 0, CHUNK_BYTES);
        c->in_round = FALSE;
    }
    g_ptr_array_set_size(m->round_chunks, 0);
}
