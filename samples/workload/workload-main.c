/* workload-main.c: entry of the workload guest, fill and dirty loop.
 *
 * Spec: Multiboot Specification 0.6.96, section 3.3 (boot information).
 *
 *   multiboot info (ebx):  0 flags | 4 mem_lower | 8 mem_upper (KiB above
 *   1 MiB) | 16 cmdline | 44 mmap_length | 48 mmap_addr
 *   mmap entry:  u32 size (not counting itself) | u64 addr | u64 len |
 *   u32 type (1 = RAM)
 *
 * Run: parse options, size the working set from the RAM map, fill it
 * (READY), then rewrite pages at rate= pages/s and, with verify=1, walk the
 * working set checking every page header against the generation table.
 */
#include "workload.h"

#define MB_LOADER_MAGIC 0x2badb002u
#define MB_INFO_MEM     (1u << 0)
#define MB_INFO_CMDLINE (1u << 2)
#define MB_INFO_MMAP    (1u << 6)
#define MB_MMAP_RAM     1u

#define GEN_MASK     0x7fffffffu
#define GEN_REPORTED 0x80000000u /* CORRUPT line printed for this page */
#define REPORT_MAX   64u         /* CORRUPT lines per boot */
#define DIRTY_BATCH  64u         /* rewrites between clock reads */
#define VERIFY_BATCH 16u         /* pages checked between clock reads */
#define STAT_MS      10000u

typedef struct MbInfo {
    uint32_t flags;
    uint32_t mem_lower;
    uint32_t mem_upper;
    uint32_t boot_device;
    uint32_t cmdline;
    uint32_t mods_count;
    uint32_t mods_addr;
    uint32_t syms[4];
    uint32_t mmap_length;
    uint32_t mmap_addr;
} MbInfo;

typedef struct WlRun {
    WlFill fill;
    uint32_t *gen; /* at WL_GEN_TABLE, verify=1 only */
    uint32_t rate;
    bool verify;
    uint32_t corrupt_after;
    uint32_t corrupt_page; /* UINT32_MAX: none; never rewritten */
    uint32_t touch;
    WlRng pick;
    uint64_t rewrites; /* also the generation when verify=0 */
    /* verify walk */
    uint32_t vpos;
    uint32_t pass;
    uint32_t ok, bad;
    uint32_t reported;
    uint64_t last_pass_log_ms;
} WlRun;

static char cmdline[1024];

/* @return the end of usable RAM that holds WL_WS_BASE, capped at 4 GiB;
 * 0 if the loader told us nothing. */
static uint64_t
ram_top(const MbInfo *mbi)
{
    uint64_t top = 0;

    if (mbi->flags & MB_INFO_MEM)
        top = 0x100000ull + (uint64_t)mbi->mem_upper * 1024;
    if (mbi->flags & MB_INFO_MMAP) {
        const uint8_t *p = wl_phys(mbi->mmap_addr);
        const uint8_t *end = p + mbi->mmap_length;

        while (p + 24 <= end) {
            uint32_t size, type;
            uint64_t addr, len;

            memcpy(&size, p, 4);
            memcpy(&addr, p + 4, 8);
            memcpy(&len, p + 12, 8);
            memcpy(&type, p + 20, 4);
            if (type == MB_MMAP_RAM && addr <= WL_WS_BASE
                && addr + len > WL_WS_BASE) {
                /* The BIOS reserves the top of RAM (ACPI tables): the map
                 * is tighter than mem_upper. */
                if (top == 0 || addr + len < top)
                    top = addr + len;
            }
            p += size + 4;
        }
    }
    if (top > 0x100000000ull)
        top = 0x100000000ull;
    return top;
}

/* @return the number of working-set pages, clamped to RAM; 0 if none. */
static uint32_t
size_working_set(const WlConfig *cfg, const MbInfo *mbi)
{
    uint64_t top = ram_top(mbi);
    uint64_t avail = top > WL_WS_BASE ? (top - WL_WS_BASE) >> WL_PAGE_SHIFT : 0;
    uint64_t want = cfg->mem >> WL_PAGE_SHIFT;

    wl_log("memory mem_upper=%u ram_top=0x%llx base=0x%x avail=%llu",
           (mbi->flags & MB_INFO_MEM) ? mbi->mem_upper : 0, top, WL_WS_BASE,
           avail << WL_PAGE_SHIFT);
    if (avail > WL_MAX_PAGES)
        avail = WL_MAX_PAGES;
    if (avail == 0) {
        wl_log("error: no RAM above 0x%x, give the guest more memory (-m)",
               WL_WS_BASE);
        return 0;
    }
    if (want == 0) {
        wl_log("warning: mem=%llu is less than a page, using one page",
               cfg->mem);
        want = 1;
    }
    if (want > avail) {
        wl_log("warning: mem=%llu clamped to %llu (RAM ends at 0x%llx)",
               cfg->mem, avail << WL_PAGE_SHIFT, top);
        want = avail;
    }
    return (uint32_t)want;
}

static void
rewrite_one(WlRun *r)
{
    uint32_t n = r->fill.npages;
    uint32_t idx = wl_rng_below(&r->pick, n);
    uint32_t gen;

    if (idx == r->corrupt_page) {
        if (n == 1)
            return;
        idx = idx + 1 < n ? idx + 1 : 0;
    }
    if (r->verify) {
        gen = ((r->gen[idx] & GEN_MASK) + 1) & GEN_MASK;
        r->gen[idx] = (r->gen[idx] & GEN_REPORTED) | gen;
    } else {
        gen = (uint32_t)r->rewrites + 1;
        if (r->touch) {
            /* a small in-place change: what XBZRLE is made for */
            uint8_t *page = wl_fill_page_addr(&r->fill, idx);
            uint32_t at = (gen * 2654435761u) % (WL_PAGE_SIZE - r->touch + 1);
            for (uint32_t i = 0; i < r->touch; i++)
                page[at + i] = (uint8_t)(gen + i);
            r->rewrites++;
            return;
        }
    }
    wl_fill_page(&r->fill, idx, gen);
    r->rewrites++;
}

/* @return NULL if page idx is intact, else why not. */
static const char *
check_page(const WlRun *r, uint32_t idx, const WlPageHeader *hdr)
{
    uint32_t want = r->gen[idx] & GEN_MASK;

    if (hdr->magic != WL_PAGE_MAGIC)
        return "magic";
    if (hdr->index != idx)
        return "index";
    if (hdr->seed != (uint32_t)r->fill.seed)
        return "seed";
    if (hdr->gen != want)
        return hdr->gen < want ? "stale" : "gen";
    if (hdr->csum != wl_fill_csum((const uint8_t *)hdr, idx, hdr->gen))
        return "checksum";
    return NULL;
}

static void
report_corrupt(WlRun *r, uint32_t idx, const WlPageHeader *hdr, const char *why)
{
    if (r->gen[idx] & GEN_REPORTED)
        return;
    r->gen[idx] |= GEN_REPORTED;
    if (r->reported == REPORT_MAX) {
        wl_log("CORRUPT reports stop after %u pages, see bad= counts",
               REPORT_MAX);
    }
    if (r->reported++ >= REPORT_MAX)
        return;
    wl_log("CORRUPT page=%u gen=%u found_gen=%u found_index=%u reason=%s "
           "addr=0x%x",
           idx, r->gen[idx] & GEN_MASK, hdr->gen, hdr->index, why,
           (uint32_t)(uintptr_t)hdr);
}

static void
corrupt_one(WlRun *r)
{
    uint32_t idx = r->fill.npages / 2;
    uint8_t *p = wl_fill_page_addr(&r->fill, idx) + WL_BODY_OFF + 100;

    *p ^= 0xff;
    r->corrupt_page = idx;
    wl_log("corrupt_after=%u: flipped byte page=%u addr=0x%x", r->pass, idx,
           (uint32_t)(uintptr_t)p);
}

static void
end_pass(WlRun *r)
{
    uint64_t now = wl_timer_ms();

    r->pass++;
    if (r->pass == 1 || now - r->last_pass_log_ms >= 1000) {
        wl_log("verify pass=%u ok=%u bad=%u", r->pass, r->ok, r->bad);
        r->last_pass_log_ms = now;
    }
    r->ok = 0;
    r->bad = 0;
    r->vpos = 0;
    if (r->corrupt_after != 0 && r->pass == r->corrupt_after)
        corrupt_one(r);
}

static void
verify_some(WlRun *r, uint32_t count)
{
    while (count-- > 0) {
        uint32_t idx = r->vpos;
        const WlPageHeader *hdr =
            (const WlPageHeader *)wl_fill_page_addr(&r->fill, idx);
        const char *why = check_page(r, idx, hdr);

        if (why == NULL) {
            r->ok++;
        } else {
            r->bad++;
            report_corrupt(r, idx, hdr, why);
        }
        if (++r->vpos == r->fill.npages)
            end_pass(r);
    }
}

__attribute__((noreturn)) static void
run(WlRun *r)
{
    uint64_t start = wl_timer_ms();
    uint64_t due_done = 0; /* rewrites accounted against the schedule */
    uint64_t next_stat = STAT_MS, stat_rewrites = 0;
    bool warned = false;

    if (r->rate == 0 && !r->verify)
        wl_halt_forever();
    for (;;) {
        if (r->rate != 0) {
            uint64_t now = wl_timer_ms() - start;
            uint64_t due = wl_div64((uint64_t)r->rate * now, 1000, NULL);

            /* More than a second behind: drop the backlog rather than
             * burst to catch up later. */
            if (due > due_done + r->rate) {
                if (!warned) {
                    wl_log("warning: rate=%u not reached, dirtying as fast "
                           "as possible",
                           r->rate);
                    warned = true;
                }
                due_done = due - r->rate;
            }
            for (uint32_t i = 0; i < DIRTY_BATCH && due_done < due; i++) {
                rewrite_one(r);
                due_done++;
            }
            if (now >= next_stat) {
                wl_log("dirty t=%llu pages=%llu rate=%llu",
                       wl_div64(now, 1000, NULL), r->rewrites,
                       wl_div64((r->rewrites - stat_rewrites) * 1000, STAT_MS,
                                NULL));
                stat_rewrites = r->rewrites;
                next_stat += STAT_MS;
            }
        }
        if (r->verify)
            verify_some(r, VERIFY_BATCH);
        else
            wl_cpu_relax();
    }
}

void wl_main(uint32_t magic, const MbInfo *mbi);

void
wl_main(uint32_t magic, const MbInfo *mbi)
{
    static WlRun r;
    WlConfig cfg;
    uint64_t t0, t1;
    uint32_t npages;

    if (magic != MB_LOADER_MAGIC) {
        wl_log("error: not started by a multiboot loader (eax=0x%x)", magic);
        wl_halt_forever();
    }
    /* The info and the command line lie above _end, where nothing of ours
     * is written before the fill, but copy the command line anyway. */
    if (mbi->flags & MB_INFO_CMDLINE) {
        const char *s = wl_phys(mbi->cmdline);
        size_t n = strlen(s);

        if (n >= sizeof(cmdline)) {
            wl_log("warning: command line cut to %u bytes",
                   (uint32_t)sizeof(cmdline) - 1);
            n = sizeof(cmdline) - 1;
        }
        memcpy(cmdline, s, n);
        cmdline[n] = '\0';
    }
    wl_cmdline_parse(cmdline, &cfg);
    if (cfg.corrupt_after != 0) {
        wl_log("start mem=%llu rate=%u zero=%u dup=%u comp=%u rand=%u "
               "seed=%llu verify=%u corrupt_after=%u",
               cfg.mem, cfg.rate, cfg.share[WL_KIND_ZERO],
               cfg.share[WL_KIND_DUP], cfg.share[WL_KIND_COMP],
               cfg.share[WL_KIND_RAND], cfg.seed, cfg.verify ? 1u : 0u,
               cfg.corrupt_after);
    } else {
        wl_log("start mem=%llu rate=%u zero=%u dup=%u comp=%u rand=%u "
               "seed=%llu verify=%u touch=%u",
               cfg.mem, cfg.rate, cfg.share[WL_KIND_ZERO],
               cfg.share[WL_KIND_DUP], cfg.share[WL_KIND_COMP],
               cfg.share[WL_KIND_RAND], cfg.seed, cfg.verify ? 1u : 0u,
               cfg.touch);
    }
    if (cfg.verify && cfg.share[WL_KIND_ZERO] != 0) {
        wl_log("verify=1: zero=%u ignored, every page carries a header",
               cfg.share[WL_KIND_ZERO]);
        cfg.share[WL_KIND_ZERO] = 0;
    }
    if (!cfg.verify && cfg.corrupt_after != 0) {
        wl_log("warning: corrupt_after needs verify=1, ignored");
        cfg.corrupt_after = 0;
    }
    if (cfg.share[WL_KIND_DUP] + cfg.share[WL_KIND_COMP]
            + cfg.share[WL_KIND_RAND]
        == 0) {
        wl_log("warning: verify=1 and only zero pages asked for, "
               "using rand=100");
        cfg.share[WL_KIND_RAND] = 100;
    }

    npages = size_working_set(&cfg, mbi);
    if (npages == 0)
        wl_halt_forever();
    wl_timer_init();

    r.rate = cfg.rate;
    r.verify = cfg.verify;
    r.corrupt_after = cfg.corrupt_after;
    r.touch = cfg.verify ? 0 : cfg.touch;
    r.corrupt_page = UINT32_MAX;
    r.gen = wl_phys(WL_GEN_TABLE);
    wl_rng_seed(&r.pick, wl_splitmix64(cfg.seed) ^ 0x5049434bu /* PICK */);
    wl_fill_init(&r.fill, &cfg, npages);

    t0 = wl_timer_ms();
    if (r.verify)
        memset(r.gen, 0, (size_t)npages * sizeof(*r.gen));
    for (uint32_t i = 0; i < npages; i++)
        wl_fill_page(&r.fill, i, 0);
    t1 = wl_timer_ms();
    wl_log("READY pages=%u base=0x%x bytes=%llu zero_pages=%u dup_pages=%u "
           "comp_pages=%u rand_pages=%u fill_ms=%llu",
           npages, WL_WS_BASE, (uint64_t)npages << WL_PAGE_SHIFT,
           r.fill.count[WL_KIND_ZERO], r.fill.count[WL_KIND_DUP],
           r.fill.count[WL_KIND_COMP], r.fill.count[WL_KIND_RAND], t1 - t0);
    run(&r);
}
