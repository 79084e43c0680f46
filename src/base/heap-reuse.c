/* heap-reuse.c: see heap-reuse.h. */
#include "config.h"
#include "heap-reuse.h"

#include <malloc.h>

/* glibc's ceiling for M_MMAP_THRESHOLD on 64-bit hosts */
#define MMAP_THRESHOLD (32 << 20)
#define TRIM_THRESHOLD (64 << 20)

void
mp_heap_reuse(void)
{
    /* setting either also turns off glibc's own adjustment of both */
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD);
}

void
mp_heap_release(void)
{
    malloc_trim(0);
}
