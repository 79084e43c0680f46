/* workload-cmdline.c: options from the multiboot command line.
 *
 *   [kernel-path] key=value key=value ...
 *
 * QEMU's multiboot loader passes "<kernel path> <-append text>"; GRUB does
 * the same.  A first word without '=' is therefore the path and skipped.
 * Numbers are decimal or 0x-hex; mem= takes a K, M or G suffix (binary).
 */
#include "workload.h"

/* Percent of zero, dup, comp and rand pages when none is given. */
static const uint32_t default_shares[WL_KIND_COUNT] = {25, 10, 25, 40};

static bool
word_eq(const char *s, size_t n, const char *lit)
{
    return strlen(lit) == n && memcmp(s, lit, n) == 0;
}

/* Parse [s, s+n) as an unsigned number with an optional K/M/G suffix when
 * suffix is true.  @return false on junk or overflow past 2^64. */
static bool
parse_u64(const char *s, size_t n, bool suffix, uint64_t *out)
{
    uint32_t base = 10;
    uint64_t v = 0;
    size_t i = 0;
    unsigned shift = 0;

    if (n >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        i = 2;
    }
    if (i == n)
        return false;
    if (suffix) {
        switch (s[n - 1]) {
        case 'k':
        case 'K':
            shift = 10;
            break;
        case 'm':
        case 'M':
            shift = 20;
            break;
        case 'g':
        case 'G':
            shift = 30;
            break;
        }
        if (shift != 0 && base == 10)
            n--;
        else
            shift = 0; /* "0x1G" is ambiguous, 'G' is no hex digit anyway */
        if (i == n)
            return false;
    }
    for (; i < n; i++) {
        char c = s[i];
        uint32_t d;

        if (c >= '0' && c <= '9')
            d = (uint32_t)(c - '0');
        else if (base == 16 && c >= 'a' && c <= 'f')
            d = (uint32_t)(c - 'a' + 10);
        else if (base == 16 && c >= 'A' && c <= 'F')
            d = (uint32_t)(c - 'A' + 10);
        else
            return false;
        if (v > wl_div64(UINT64_MAX - d, base, NULL))
            return false;
        v = v * base + d;
    }
    if (shift != 0 && v > (UINT64_MAX >> shift))
        return false;
    *out = v << shift;
    return true;
}

/* Log "warning: <why> '<word>'"; word is not NUL-terminated. */
static void
warn_word(const char *why, const char *word, size_t n)
{
    char buf[64];

    if (n >= sizeof(buf))
        n = sizeof(buf) - 1;
    memcpy(buf, word, n);
    buf[n] = '\0';
    wl_log("warning: %s '%s'", why, buf);
}

static void
apply_option(WlConfig *cfg, uint32_t *given, const char *word, size_t n)
{
    static const char *const share_keys[WL_KIND_COUNT] = {
        [WL_KIND_ZERO] = "zero",
        [WL_KIND_DUP] = "dup",
        [WL_KIND_COMP] = "comp",
        [WL_KIND_RAND] = "rand",
    };
    const char *eq = NULL;
    const char *val;
    size_t klen, vlen;
    uint64_t v;

    for (size_t i = 0; i < n; i++) {
        if (word[i] == '=') {
            eq = word + i;
            break;
        }
    }
    if (eq == NULL)
        goto unknown;
    klen = (size_t)(eq - word);
    val = eq + 1;
    vlen = n - klen - 1;

    if (word_eq(word, klen, "mem")) {
        if (!parse_u64(val, vlen, true, &v))
            goto bad;
        cfg->mem = v;
        return;
    }
    if (word_eq(word, klen, "seed")) {
        if (!parse_u64(val, vlen, false, &v))
            goto bad;
        cfg->seed = v;
        return;
    }
    for (int k = 0; k < WL_KIND_COUNT; k++) {
        if (!word_eq(word, klen, share_keys[k]))
            continue;
        if (!parse_u64(val, vlen, false, &v) || v > 1000000u)
            goto bad;
        cfg->share[k] = (uint32_t)v;
        *given |= 1u << k;
        return;
    }
    if (word_eq(word, klen, "rate")) {
        if (!parse_u64(val, vlen, false, &v) || v > UINT32_MAX)
            goto bad;
        cfg->rate = (uint32_t)v;
        return;
    }
    if (word_eq(word, klen, "verify")) {
        if (!parse_u64(val, vlen, false, &v) || v > 1)
            goto bad;
        cfg->verify = v != 0;
        return;
    }
    if (word_eq(word, klen, "touch")) {
        if (!parse_u64(val, vlen, false, &v) || v > WL_PAGE_SIZE)
            goto bad;
        cfg->touch = (uint32_t)v;
        return;
    }
    if (word_eq(word, klen, "corrupt_after")) {
        if (!parse_u64(val, vlen, false, &v) || v > UINT32_MAX)
            goto bad;
        cfg->corrupt_after = (uint32_t)v;
        return;
    }

unknown:
    warn_word("unknown option ignored:", word, n);
    return;
bad:
    warn_word("bad value, default kept:", word, n);
}

/* Turn the given shares into whole percentages summing to 100.  Shares not
 * given split what the given ones leave, in the ratio of their defaults, so
 * "zero=50" means half zero pages; given shares summing to 100 or more (or
 * all four given) are normalised among themselves. */
static void
resolve_shares(WlConfig *cfg, uint32_t given)
{
    const uint32_t *def = default_shares;
    uint32_t w[WL_KIND_COUNT], rem[WL_KIND_COUNT];
    uint32_t sum_given = 0, sum_free = 0, total = 0, assigned = 0;

    for (int k = 0; k < WL_KIND_COUNT; k++) {
        if (given & (1u << k))
            sum_given += cfg->share[k];
        else
            sum_free += def[k];
    }
    for (int k = 0; k < WL_KIND_COUNT; k++) {
        if (given & (1u << k))
            w[k] = sum_given >= 100 || sum_free == 0
                       ? cfg->share[k]
                       : cfg->share[k] * sum_free; /* <= 99 * 100 */
        else
            w[k] = sum_given >= 100 || sum_free == 0
                       ? 0
                       : def[k] * (100 - sum_given);
        total += w[k]; /* <= 4e6 */
    }
    if (total == 0) {
        wl_log("warning: all shares are 0, using rand=100");
        w[WL_KIND_RAND] = total = 1;
    }
    /* Largest remainder: floors first, then +1 to the biggest leftovers. */
    for (int k = 0; k < WL_KIND_COUNT; k++) {
        cfg->share[k] = w[k] * 100 / total; /* w[k] * 100 <= 1e8 */
        rem[k] = w[k] * 100 % total;
        assigned += cfg->share[k];
    }
    while (assigned < 100) {
        int best = 0;

        for (int k = 1; k < WL_KIND_COUNT; k++) {
            if (rem[k] > rem[best])
                best = k;
        }
        cfg->share[best]++;
        rem[best] = 0;
        assigned++;
    }
}

void
wl_cmdline_parse(const char *cmdline, WlConfig *cfg)
{
    const char *p = cmdline;
    bool first = true;
    uint32_t given = 0;

    *cfg = (WlConfig){
        .mem = 32u << 20,
        .rate = 0,
        .seed = 1,
        .verify = false,
        .corrupt_after = 0,
        .touch = 0,
    };
    memcpy(cfg->share, default_shares, sizeof(cfg->share));
    if (p == NULL)
        return;
    for (;;) {
        const char *word;
        size_t n = 0;
        bool has_eq = false;

        while (*p == ' ' || *p == '\t' || *p == '\n')
            p++;
        if (*p == '\0')
            break;
        word = p;
        while (word[n] != '\0' && word[n] != ' ' && word[n] != '\t'
               && word[n] != '\n') {
            has_eq = has_eq || word[n] == '=';
            n++;
        }
        p = word + n;
        if (first && !has_eq) {
            first = false;
            continue; /* kernel path */
        }
        first = false;
        apply_option(cfg, &given, word, n);
    }
    resolve_shares(cfg, given);
}
