/* workload-lib.c: the few libc and libgcc pieces the guest needs.
 *
 * gcc may turn loops or struct copies into calls to memset/memcpy even with
 * -ffreestanding, so these must exist; they use string instructions, not
 * loops, so that the compiler cannot turn them back into calls to
 * themselves.
 */
#include "workload.h"

void *
memset(void *dst, int c, size_t n)
{
    void *d = dst;

    /* Whole words when possible: under TCG each rep iteration costs about
     * the same whatever its width, so stosl fills pages 4x faster. */
    if (((uintptr_t)dst & 3) == 0 && (n & 3) == 0) {
        uint32_t word = (uint8_t)c * 0x01010101u;
        size_t words = n / 4;

        __asm__ volatile("rep stosl"
                         : "+D"(d), "+c"(words)
                         : "a"(word)
                         : "memory");
        return dst;
    }
    __asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
    return dst;
}

void *
memcpy(void *dst, const void *src, size_t n)
{
    void *d = dst;

    __asm__ volatile("rep movsb" : "+D"(d), "+S"(src), "+c"(n) : : "memory");
    return dst;
}

void *
memmove(void *dst, const void *src, size_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;

    if (d <= s || d >= s + n)
        return memcpy(dst, src, n);
    while (n > 0) {
        n--;
        d[n] = s[n];
    }
    return dst;
}

int
memcmp(const void *a, const void *b, size_t n)
{
    const uint8_t *x = a, *y = b;

    for (size_t i = 0; i < n; i++) {
        if (x[i] != y[i])
            return x[i] < y[i] ? -1 : 1;
    }
    return 0;
}

size_t
strlen(const char *s)
{
    size_t n = 0;

    while (s[n] != '\0')
        n++;
    return n;
}

uint64_t
wl_div64(uint64_t n, uint32_t d, uint32_t *rem)
{
    uint32_t hi = (uint32_t)(n >> 32);
    uint32_t qhi = hi / d;
    uint32_t r = hi % d;
    uint32_t qlo;

    /* r < d, so the quotient of r:lo / d fits in 32 bits: no #DE. */
    __asm__("divl %4" : "=a"(qlo), "=d"(r) : "a"((uint32_t)n), "d"(r), "rm"(d));
    if (rem != NULL)
        *rem = r;
    return ((uint64_t)qhi << 32) | qlo;
}
