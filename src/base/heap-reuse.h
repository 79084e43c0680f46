/* heap-reuse.h: the tunnel's processes keep freed buffers in their heap
 * for the next ones, instead of handing them back to the kernel at once.
 *
 * The pair allocates and frees a buffer of 64 KiB to a few MiB per batch
 * of pages: the batch, its compressed copy (in a zstd worker's own malloc
 * arena), its frame, kept until the peer acknowledges it.  By default
 * glibc serves such sizes with mmap() or trims them off its heap when
 * freed, so every new buffer is fresh memory: a page fault per 4 KiB,
 * each cleared by the kernel, and on a VM first backed by the host.  At 1
 * Gbit/s that was a tenth of the pair's CPU (perf, docs/benchmarks.md,
 * "The pair's floor at 1 Gbit/s").  Heap reuse serves buffers up to 32
 * MiB from the heap and returns memory to the kernel only above 64 MiB of
 * free heap (per arena); mp_heap_release() returns what is free when a
 * tunnel ends, so that an idle `dest` or `source` holds no more than it
 * needs.
 */
#pragma once

/* Call once, before any thread starts. */
void mp_heap_reuse(void);

/* Gives the heap's free memory back to the kernel (a tunnel ended). */
void mp_heap_release(void);
