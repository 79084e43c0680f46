/* workload-fill.c: deterministic page contents.
 *
 * Page idx at generation gen is a pure function of (seed, idx, gen): the
 * kind is drawn from the shares, then the content from a PRNG seeded with
 * the same hash, so two boots with the same command line fill identical
 * memory.
 *
 *   zero  all zero bytes
 *   dup   one of WL_DUP_TEMPLATES random pages: equal to every other dup
 *         page with the same template
 *   comp  English-like text from a 32-word list, about 1 bit of entropy per
 *         byte: zlib/zstd shrink it 3-5x
 *   rand  xorshift128 output, incompressible
 *
 * verify=1 page (zero pages are impossible: the header is never zero):
 *
 *   0        4      8     12     16     20     24          32          4096
 *   | magic | index | gen | kind | csum | seed | reserved  | body ...   |
 *
 * The body is the content above, shortened to 4064 bytes, so dup pages
 * share their body but not their header.
 */
#include "workload.h"

#define WL_DUP_TEMPLATES 8u

/* Tags keep the hash streams of different uses apart. */
#define TAG_PAGE 0x50414745u /* "PAGE" */
#define TAG_DUP  0x44555030u /* "DUP0" */

const char *const wl_kind_names[WL_KIND_COUNT] = {
    [WL_KIND_ZERO] = "zero",
    [WL_KIND_DUP] = "dup",
    [WL_KIND_COMP] = "comp",
    [WL_KIND_RAND] = "rand",
};

static const char *const words[32] = {
    "the",     "guest",     "memory", "page",        "is",     "sent",
    "to",      "a",         "dirty",  "bitmap",      "of",     "ram",
    "and",     "migration", "stream", "with",        "zero",   "copy",
    "proxy",   "channel",   "device", "state",       "round",  "until",
    "qemu",    "converges", "on",     "destination", "source", "block",
    "section", "downtime",
};

static uint64_t
page_hash(uint64_t seed, uint32_t tag, uint32_t idx, uint32_t gen)
{
    uint64_t h = wl_splitmix64(seed ^ ((uint64_t)tag << 32));

    h = wl_splitmix64(h ^ idx);
    return wl_splitmix64(h ^ ((uint64_t)gen << 32));
}

static void
fill_random(uint8_t *dst, uint32_t len, uint64_t seed)
{
    uint32_t *w = (uint32_t *)dst;
    WlRng r;

    wl_rng_seed(&r, seed);
    for (uint32_t i = 0; i < len / 4; i++)
        w[i] = wl_rng_next(&r);
}

static void
fill_text(uint8_t *dst, uint32_t len, uint64_t seed)
{
    uint32_t pos = 0, col = 0, bits = 0, nbits = 0;
    WlRng r;

    wl_rng_seed(&r, seed);
    while (pos < len) {
        const char *w;
        uint32_t sep;

        if (nbits < 8) {
            bits = wl_rng_next(&r);
            nbits = 32;
        }
        w = words[bits & 31];
        sep = (bits >> 5) & 7;
        bits >>= 8;
        nbits -= 8;
        while (*w != '\0' && pos < len) {
            dst[pos++] = (uint8_t)*w++;
            col++;
        }
        if (col >= 64) {
            if (pos < len)
                dst[pos++] = '\n';
            col = 0;
            continue;
        }
        if (sep == 0 && pos < len) {
            dst[pos++] = '.';
            col++;
        }
        if (pos < len) {
            dst[pos++] = ' ';
            col++;
        }
    }
}

void
wl_fill_init(WlFill *f, const WlConfig *cfg, uint32_t npages)
{
    uint64_t total = 0, cum = 0;

    *f = (WlFill){
        .base = wl_phys(WL_WS_BASE),
        .npages = npages,
        .seed = cfg->seed,
        .verify = cfg->verify,
    };
    for (int k = 0; k < WL_KIND_COUNT; k++)
        total += cfg->share[k];
    for (int k = 0; k < WL_KIND_COUNT; k++) {
        cum += cfg->share[k];
        f->cut[k] = wl_div64(cum << 32, (uint32_t)total, NULL);
    }
}

uint32_t
wl_fill_csum(const uint8_t *page, uint32_t idx, uint32_t gen)
{
    const uint32_t *w = (const uint32_t *)(page + WL_BODY_OFF);
    uint32_t h = 0x811c9dc5u ^ idx;

    h = (h ^ gen) * 0x9e3779b1u;
    /* Each step is a bijection of h for a given word (odd multiplier), so
     * a change in any single word always changes the result. */
    for (uint32_t i = 0; i < (WL_PAGE_SIZE - WL_BODY_OFF) / 4; i++)
        h = (h ^ w[i]) * 0x9e3779b1u;
    return h ^ (h >> 15);
}

static WlKind
pick_kind(const WlFill *f, uint32_t r)
{
    for (int k = 0; k < WL_KIND_COUNT; k++) {
        if (r < f->cut[k])
            return (WlKind)k;
    }
    return WL_KIND_RAND; /* not reached: cut[last] == 2^32 */
}

WlKind
wl_fill_page(WlFill *f, uint32_t idx, uint32_t gen)
{
    uint64_t h = page_hash(f->seed, TAG_PAGE, idx, gen);
    uint8_t *page = wl_fill_page_addr(f, idx);
    uint32_t off = f->verify ? WL_BODY_OFF : 0;
    uint8_t *body = page + off;
    uint32_t len = WL_PAGE_SIZE - off;
    WlKind kind = pick_kind(f, (uint32_t)h);

    switch (kind) {
    case WL_KIND_ZERO:
        memset(body, 0, len);
        break;
    case WL_KIND_DUP: {
        uint32_t t = (uint32_t)(h >> 32) % WL_DUP_TEMPLATES;

        fill_random(body, len, page_hash(f->seed, TAG_DUP, t, 0));
        break;
    }
    case WL_KIND_COMP:
        fill_text(body, len, h);
        break;
    case WL_KIND_RAND:
    default:
        fill_random(body, len, h);
        break;
    }
    if (f->verify) {
        WlPageHeader *hdr = (WlPageHeader *)page;

        *hdr = (WlPageHeader){
            .magic = WL_PAGE_MAGIC,
            .index = idx,
            .gen = gen,
            .kind = kind,
            .seed = (uint32_t)f->seed,
        };
        hdr->csum = wl_fill_csum(page, idx, gen);
    }
    f->count[kind]++;
    return kind;
}
