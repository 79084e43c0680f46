/* big-buf.c: see big-buf.h. */
#include "config.h"
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include "big-buf.h"

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
    void *m = b->map_len ? mremap(b->data, b->map_len, len, MREMAP_MAYMOVE)
                         : mmap(NULL, len, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        g_error("%s of %zu bytes failed: %s",
                b->map_len ? "mremap" : "mmap", len, g_strerror(errno));
    /* (only an advice: without THP the pages are small, as before) */
    madvise(m, len, MADV_HUGEPAGE);
    if (!b->map_len) {
        if (b->cap)
            memcpy(m, b->data, b->cap); /* (once: at most 2 MiB) */
        g_free(b->data);
    }
    b->data = m;
    b->cap = b->map_len = len;
}

void
mp_big_buf_clear(MpBigBuf *b)
{
    if (b->map_len)
        munmap(b->data, b->map_len);
    else
        g_free(b->data);
    *b = (MpBigBuf){0};
}
