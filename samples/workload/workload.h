/* workload.h: shared declarations of the workload guest.
 *
 * Freestanding i386 code: only the compiler's own headers (stdint.h,
 * stddef.h, stdbool.h, stdarg.h) are used, no libc and no libgcc, so there
 * is no 64-bit division except through wl_div64().
 */
#ifndef WORKLOAD_H
#define WORKLOAD_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WL_PAGE_SIZE  4096u
#define WL_PAGE_SHIFT 12

/* Physical layout; linker.ld keeps the kernel below WL_GEN_TABLE. */
#define WL_GEN_TABLE 0x00800000u /* u32 per page, verify=1 only */
#define WL_WS_BASE   0x01000000u /* first page of the working set */
/* The table has 4 MiB, one u32 per page: 1 Mi pages, all of 4 GiB. */
#define WL_MAX_PAGES ((WL_WS_BASE - WL_GEN_TABLE) / 4u)

/* ---- port I/O and CPU ---- */

static inline void
wl_outb(uint16_t port, uint8_t val)
{
    __asm__ volatile("outb %0, %1" : : "a"(val), "Nd"(port));
}

static inline uint8_t
wl_inb(uint16_t port)
{
    uint8_t v;

    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline uint64_t
wl_rdtsc(void)
{
    uint32_t lo, hi;

    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}

static inline void
wl_cpu_relax(void)
{
    __asm__ volatile("pause" ::: "memory");
}

/* Interrupts stay off for the whole run, so this never returns. */
__attribute__((noreturn)) static inline void
wl_halt_forever(void)
{
    for (;;)
        __asm__ volatile("cli; hlt" ::: "memory");
}

/* A pointer to a fixed physical address.  The empty asm hides the constant
 * from gcc 12, which otherwise warns (-Warray-bounds) on every access. */
static inline void *
wl_phys(uintptr_t addr)
{
    void *p = (void *)addr;

    __asm__("" : "+r"(p));
    return p;
}

/* ---- PRNGs: splitmix64 to derive seeds, xorshift128 for bulk data ---- */

/* Only 32-bit operations per output word: cheap on i386 and under TCG. */
typedef struct WlRng {
    uint32_t x, y, z, w;
} WlRng;

static inline uint64_t
wl_splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static inline void
wl_rng_seed(WlRng *r, uint64_t seed)
{
    uint64_t h1 = wl_splitmix64(seed);
    uint64_t h2 = wl_splitmix64(h1);

    r->x = (uint32_t)h1;
    r->y = (uint32_t)(h1 >> 32);
    r->z = (uint32_t)h2;
    r->w = (uint32_t)(h2 >> 32) | 1u; /* never the all-zero state */
}

/* Marsaglia's xorshift128, period 2^128 - 1. */
static inline uint32_t
wl_rng_next(WlRng *r)
{
    uint32_t t = r->x ^ (r->x << 11);

    r->x = r->y;
    r->y = r->z;
    r->z = r->w;
    r->w = r->w ^ (r->w >> 19) ^ t ^ (t >> 8);
    return r->w;
}

/* @return a number in [0, n) without a division. */
static inline uint32_t
wl_rng_below(WlRng *r, uint32_t n)
{
    return (uint32_t)(((uint64_t)wl_rng_next(r) * n) >> 32);
}

/* ---- workload-lib.c: what libc and libgcc would provide ---- */

void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);

/* @return n / d; the remainder goes to *rem unless rem is NULL.  d != 0. */
uint64_t wl_div64(uint64_t n, uint32_t d, uint32_t *rem);

/* ---- workload-console.c: debug console, I/O port 0xe9 ---- */

/* Print one line: "workload: " + formatted text + "\n".  Knows %s %c %d %u
 * %x and the ll forms of d, u, x; no width or padding. */
__attribute__((format(printf, 1, 2))) void wl_log(const char *fmt, ...);

/* ---- workload-timer.c: TSC calibrated against PIT channel 2 ---- */

/* Calibrate; logs the measured TSC rate.  Call once before wl_timer_ms(). */
void wl_timer_init(void);
/* @return milliseconds since wl_timer_init(). */
uint64_t wl_timer_ms(void);

/* ---- workload-cmdline.c: key=value options from -append ---- */

typedef enum {
    WL_KIND_ZERO,
    WL_KIND_DUP,
    WL_KIND_COMP,
    WL_KIND_RAND,
    WL_KIND_COUNT,
} WlKind;

typedef struct WlConfig {
    uint64_t mem;                  /* working-set bytes asked for */
    uint32_t rate;                 /* pages rewritten per second, 0: none */
    uint32_t share[WL_KIND_COUNT]; /* percent, summing to 100 */
    uint64_t seed;                 /* PRNG seed */
    bool verify;                   /* per-page header and checking */
    uint32_t corrupt_after;        /* debug: flip a byte after N passes */
    uint32_t touch; /* bytes changed per rewrite, 0: whole page (verify=0) */
} WlConfig;

/* Fill *cfg with defaults, then apply the options in cmdline (may be NULL).
 * Unknown keys and bad values are logged and ignored.  Shares come out as
 * whole percentages summing to 100 (see resolve_shares()). */
void wl_cmdline_parse(const char *cmdline, WlConfig *cfg);

/* ---- workload-fill.c: page contents ---- */

/* Header of every page when verify=1; the body is the rest of the page. */
typedef struct WlPageHeader {
    uint32_t magic; /* WL_PAGE_MAGIC */
    uint32_t index; /* page number within the working set */
    uint32_t gen;   /* 0 after the fill, +1 per rewrite */
    uint32_t kind;  /* WlKind */
    uint32_t csum;  /* wl_fill_csum() of index, gen and body */
    uint32_t seed;  /* low 32 bits of the seed, tells boots apart */
    uint32_t reserved[2];
} WlPageHeader;

#define WL_PAGE_MAGIC 0x47504c57u /* "WLPG" in memory */
#define WL_BODY_OFF   ((uint32_t)sizeof(WlPageHeader))

typedef struct WlFill {
    uint8_t *base; /* WL_WS_BASE */
    uint32_t npages;
    uint64_t seed;
    bool verify;
    uint64_t cut[WL_KIND_COUNT];   /* cumulative shares, out of 2^32 */
    uint32_t count[WL_KIND_COUNT]; /* pages of each kind written so far */
} WlFill;

/* Set up *f; shares must not all be zero. */
void wl_fill_init(WlFill *f, const WlConfig *cfg, uint32_t npages);
/* Write page idx as generation gen (deterministic in seed, idx, gen).
 * @return the kind written. */
WlKind wl_fill_page(WlFill *f, uint32_t idx, uint32_t gen);
/* Checksum of a verify-mode page, header fields other than csum included. */
uint32_t wl_fill_csum(const uint8_t *page, uint32_t idx, uint32_t gen);

static inline uint8_t *
wl_fill_page_addr(const WlFill *f, uint32_t idx)
{
    return f->base + ((size_t)idx << WL_PAGE_SHIFT);
}

extern const char *const wl_kind_names[WL_KIND_COUNT];

#endif /* WORKLOAD_H */
