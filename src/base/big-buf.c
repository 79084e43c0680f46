/* big-buf.c: see big-buf.h. */
#include "config.h"
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include "big-buf.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14 */
#endif

/* The helper's step: one huge page, ~3 ms of a cold fault on this host,
 * the longest mp_big_buf_resize() waits for it. */
#define PREP_STEP MP_BIG_BUF_MAPPED

struct MpBigBufPrep {
    GMutex lock;
    GCond cond;
    GThread *thread;
    GSource *wake;
    gsize asked; /* the writer's thread only: the last `want` it gave */
    /* under lock: the mapping as the helper may touch it */
    guint8 *data;
    gsize map_len;
    gsize want;
    gboolean busy; /* faulting in, outside the lock */
    gboolean stop;
    /* atomic: faulted in from 0 to here; G_MAXSIZE when the kernel
     * cannot (the writer then faults on its own, as without a helper) */
    gsize ready;
};

static gsize
ready_get(const MpBigBufPrep *p)
{
    return __atomic_load_n(&p->ready, __ATOMIC_ACQUIRE);
}

static void
ready_set(MpBigBufPrep *p, gsize v)
{
    __atomic_store_n(&p->ready, v, __ATOMIC_RELEASE);
}

static gpointer
prep_run(gpointer data)
{
    MpBigBufPrep *p = data;

    g_mutex_lock(&p->lock);
    while (!p->stop) {
        gsize from = ready_get(p), to = MIN(p->want, p->map_len);
        if (from >= to) {
            g_cond_wait(&p->cond, &p->lock);
            continue;
        }
        to = MIN(to, from + PREP_STEP);
        guint8 *base = p->data;
        p->busy = TRUE;
        g_mutex_unlock(&p->lock);
        int rc;
        do {
            rc = madvise(base + from, to - from, MADV_POPULATE_WRITE);
        } while (rc != 0 && errno == EINTR);
        g_mutex_lock(&p->lock);
        p->busy = FALSE;
        g_cond_broadcast(&p->cond);
        /* (EINVAL before Linux 5.14; ENOMEM: the writer will meet it) */
        if (rc != 0)
            g_debug("big-buf: faulting in ahead stopped: %s",
                    g_strerror(errno));
        ready_set(p, rc == 0 ? to : G_MAXSIZE);
        g_source_set_ready_time(p->wake, 0);
        if (rc != 0)
            break;
    }
    g_mutex_unlock(&p->lock);
    return NULL;
}

static gsize
map_round(gsize n)
{
    return (n + MP_BIG_BUF_MAPPED - 1) & ~(gsize)(MP_BIG_BUF_MAPPED - 1);
}

void
mp_big_buf_resize(MpBigBuf *b, gsize cap)
{
    if (cap < MP_BIG_BUF_MAPPED && !b->map_len) {
        b->data = g_realloc(b->data, cap);
        b->cap = cap;
        return;
    }
    gsize len = map_round(MAX(cap, MP_BIG_BUF_MAPPED));
    if (b->map_len && len <= b->map_len) {
        b->cap = b->map_len; /* (never shrinks) */
        return;
    }
    MpBigBufPrep *p = b->prep;
    if (p) {
        /* the helper must not fault in where the mapping was */
        g_mutex_lock(&p->lock);
        while (p->busy)
            g_cond_wait(&p->cond, &p->lock);
    }
    void *m = b->map_len ? mremap(b->data, b->map_len, len, MREMAP_MAYMOVE)
                         : mmap(NULL, len, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        g_error("%s of %zu bytes failed: %s",
                b->map_len ? "mremap" : "mmap", len, g_strerror(errno));
    /* (only advice: without THP the pages are small, as before); the
     * queue holds guest memory: never in a core dump */
    madvise(m, len, MADV_HUGEPAGE);
    madvise(m, len, MADV_DONTDUMP);
    if (!b->map_len) {
        if (b->cap)
            memcpy(m, b->data, b->cap); /* (once: at most 2 MiB) */
        g_free(b->data);
    }
    b->data = m;
    b->cap = b->map_len = len;
    if (p) {
        p->data = m;
        p->map_len = len;
        g_cond_broadcast(&p->cond);
        g_mutex_unlock(&p->lock);
    }
}

void
mp_big_buf_prepare(MpBigBuf *b, gsize upto, GSource *wake)
{
    if (!b->map_len)
        return;
    MpBigBufPrep *p = b->prep;
    if (!p) {
        p = g_new0(MpBigBufPrep, 1);
        g_mutex_init(&p->lock);
        g_cond_init(&p->cond);
        p->wake = g_source_ref(wake);
        p->data = b->data;
        p->map_len = b->map_len;
        p->thread = g_thread_try_new("mp-prefault", prep_run, p, NULL);
        if (!p->thread)
            ready_set(p, G_MAXSIZE); /* the writer faults, as before */
        b->prep = p;
    }
    upto = map_round(upto); /* (madvise() takes whole pages) */
    if (upto <= p->asked)
        return; /* (the writer asks each loop turn: no lock then) */
    p->asked = upto;
    g_mutex_lock(&p->lock);
    p->want = upto;
    g_cond_signal(&p->cond);
    g_mutex_unlock(&p->lock);
}

gsize
mp_big_buf_ready(const MpBigBuf *b)
{
    return b->prep ? MIN(ready_get(b->prep), b->cap) : b->cap;
}

void
mp_big_buf_clear(MpBigBuf *b)
{
    MpBigBufPrep *p = b->prep;
    if (p) {
        g_mutex_lock(&p->lock);
        p->stop = TRUE;
        g_cond_broadcast(&p->cond);
        g_mutex_unlock(&p->lock);
        if (p->thread)
            g_thread_join(p->thread);
        g_source_unref(p->wake);
        g_mutex_clear(&p->lock);
        g_cond_clear(&p->cond);
        g_free(p);
    }
    if (b->map_len)
        munmap(b->data, b->map_len);
    else
        g_free(b->data);
    *b = (MpBigBuf){0};
}
