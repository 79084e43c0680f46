/* test-xbzrle.c: XBZRLE encode/apply (parsers/xbzrle.c) against the rules
 * of QEMU's decoder (migration/xbzrle.c xbzrle_decode_buffer and
 * util/cutils.c uleb128_decode_small, 7.2):
 *   - before each run length at least 2 bytes must be left;
 *   - a uleb128 is 1 or 2 bytes (the second without the 0x80 bit);
 *   - only the first zrun may be 0; every nzrun is at least 1;
 *   - runs never pass the end of the page or of the encoding.
 */
#include <string.h>
#include <glib.h>
#include <criterion/criterion.h>
#include "xbzrle.h"

#define PS 4096

static void
random_page(GRand *r, guint8 *p, gsize n)
{
    for (gsize i = 0; i < n; i++)
        p[i] = g_rand_int(r);
}

/* `new_page` = `old` with about `density` of its bytes changed, in runs */
static void
mutate(GRand *r, const guint8 *old, guint8 *new_page, gsize n, double density)
{
    memcpy(new_page, old, n);
    gsize i = 0;
    while (i < n) {
        gsize run = g_rand_int_range(r, 1, 64);
        if (g_rand_double(r) < density)
            for (gsize k = i; k < MIN(n, i + run); k++)
                new_page[k] = old[k] ^ (guint8)g_rand_int_range(r, 1, 256);
        i += run;
    }
}

Test(xbzrle, round_trip_random_pages)
{
    static const double densities[] = {0.0, 0.001, 0.01, 0.1, 0.3, 0.5, 0.9,
                                       1.0};
    GRand *r = g_rand_new_with_seed(20261122);
    guint8 old[PS], new_page[PS], out[PS], page[PS];
    guint encoded = 0, too_big = 0;

    for (int iter = 0; iter < 4000; iter++) {
        double d = densities[iter % G_N_ELEMENTS(densities)];
        random_page(r, old, PS);
        mutate(r, old, new_page, PS, d);
        if (iter % 7 == 0)
            new_page[0] ^= 0x80; /* a change at byte 0: first zrun is 0 */
        if (iter % 11 == 0)
            new_page[PS - 1] ^= 1; /* a change at the last byte */

        gssize n = mp_xbzrle_encode(old, new_page, PS, out, sizeof(out));
        if (memcmp(old, new_page, PS) == 0) {
            cr_assert_eq(n, 0);
            continue;
        }
        if (n < 0) {
            /* only when the delta cannot fit a page, as QEMU sends a
             * normal page then */
            too_big++;
            cr_assert(d >= 0.3, "density %g did not fit", d);
            continue;
        }
        encoded++;
        cr_assert(n > 0);
        cr_assert(mp_xbzrle_check(out, n, PS), "iter %d: own encoding "
                                               "rejected", iter);
        memcpy(page, old, PS);
        cr_assert(mp_xbzrle_apply(page, PS, out, n));
        cr_assert(memcmp(page, new_page, PS) == 0, "iter %d differs", iter);
        /* applying it to the new page changes nothing */
        cr_assert(mp_xbzrle_apply(page, PS, out, n));
        cr_assert(memcmp(page, new_page, PS) == 0);
        /* any shorter prefix of a valid encoding is either invalid or a
         * valid encoding of fewer runs; it never reads past its length */
        for (gsize k = 0; k < (gsize)n; k += 1 + n / 13) {
            guint8 *cut = g_memdup2(out, k);
            memcpy(page, old, PS);
            (void)mp_xbzrle_apply(page, PS, cut, k);
            g_free(cut);
        }
    }
    cr_assert(encoded > 2000);
    cr_assert(too_big > 0);
    g_rand_free(r);
}

Test(xbzrle, equal_pages_encode_to_nothing)
{
    guint8 a[PS] = {1, 2, 3}, out[16];
    cr_assert_eq(mp_xbzrle_encode(a, a, PS, out, sizeof(out)), 0);
    /* an empty encoding is valid and changes nothing (QEMU returns 0) */
    cr_assert(mp_xbzrle_check(NULL, 0, PS));
}

Test(xbzrle, encode_reports_small_buffer)
{
    guint8 a[PS] = {0}, b[PS] = {0}, out[PS];
    memset(b + 100, 0xff, 200);
    cr_assert_eq(mp_xbzrle_encode(a, b, PS, out, 100), -1);
    gssize n = mp_xbzrle_encode(a, b, PS, out, sizeof(out));
    /* zrun 100 (1 byte), nzrun 200 (2 bytes), 200 literals */
    cr_assert_eq(n, 1 + 2 + 200);
    cr_assert_eq(out[0], 100);
    cr_assert_eq(out[1], 0x80 | (200 & 0x7f));
    cr_assert_eq(out[2], 200 >> 7);
}

static gboolean
check(const char *enc, gsize len)
{
    return mp_xbzrle_check((const guint8 *)enc, len, PS);
}

Test(xbzrle, first_zrun_may_be_zero)
{
    guint8 page[PS] = {0};
    cr_assert(check("\x00\x01\xaa", 3));
    cr_assert(mp_xbzrle_apply(page, PS, (const guint8 *)"\x00\x01\xaa", 3));
    cr_assert_eq(page[0], 0xaa);
    cr_assert_eq(page[1], 0);
}

Test(xbzrle, later_zrun_must_not_be_zero)
{
    cr_assert(check("\x00\x01\xaa\x01\x01\xbb", 6));
    cr_assert_not(check("\x00\x01\xaa\x00\x01\xbb", 6));
    cr_assert_not(check("\x05\x01\xaa\x00\x01\xbb", 6));
}

Test(xbzrle, nzrun_at_least_one)
{
    cr_assert_not(check("\x00\x00", 2));
    cr_assert_not(check("\x05\x00\x00", 3));
    cr_assert_not(check("\x01\x01\xaa\x02\x00\x00", 6));
}

/* xbzrle_decode_buffer: "if ((slen - i) < 2) return -1" before each run */
Test(xbzrle, two_bytes_left_rule)
{
    cr_assert_not(check("\x05", 1));          /* zrun with nothing after */
    cr_assert_not(check("\x05\x01", 2));      /* nzrun with no literal */
    cr_assert_not(check("\x01\x01\xaa\x05", 4)); /* a trailing byte */
    /* a 2-byte zrun is fine with 2 left, but then no nzrun fits */
    cr_assert_not(check("\x81\x01", 2));
    cr_assert(check("\x81\x01\x01\xcc", 4));
}

Test(xbzrle, two_byte_uleb)
{
    guint8 page[PS] = {0};
    /* zrun 200 = c8 01, nzrun 130 = 82 01 */
    GByteArray *e = g_byte_array_new();
    g_byte_array_append(e, (const guint8 *)"\xc8\x01\x82\x01", 4);
    for (int i = 0; i < 130; i++)
        g_byte_array_append(e, (const guint8 *)"\x77", 1);
    cr_assert(mp_xbzrle_apply(page, PS, e->data, e->len));
    cr_assert_eq(page[199], 0);
    cr_assert_eq(page[200], 0x77);
    cr_assert_eq(page[329], 0x77);
    cr_assert_eq(page[330], 0);
    /* the largest value: ff 7f = 0x3fff */
    cr_assert_not(check("\xff\x7f\x01\xaa", 4)); /* 16383 > page */
    cr_assert(mp_xbzrle_check((const guint8 *)"\xff\x7f\x01\xaa", 4, 65536));
    /* a third byte is never allowed */
    cr_assert_not(check("\x81\x80\x01\x01\xaa", 5));
    cr_assert_not(check("\x00\x81\x81\x01", 4));
    g_byte_array_unref(e);
}

Test(xbzrle, overflow)
{
    /* zrun up to the page end is fine; a literal past it is not */
    cr_assert(check("\xff\x1f\x01\xaa", 4));      /* 4095 + 1 */
    cr_assert_not(check("\x80\x20\x01\xaa", 4));  /* 4096 + 1 */
    cr_assert_not(check("\xff\x1f\x02\xaa\xbb", 5)); /* 4095 + 2 */
    cr_assert_not(check("\x81\x20\x01\xaa", 4));  /* zrun 4097 > page */
    /* a literal run longer than what is left of the encoding */
    cr_assert_not(check("\x00\x03\xaa\xbb", 4));
    /* runs that add up past the page */
    GByteArray *e = g_byte_array_new();
    for (int i = 0; i < 40; i++)
        g_byte_array_append(e, (const guint8 *)"\x64\x01\x11", 3);
    cr_assert(check((const char *)e->data, e->len)); /* 40 * 101 = 4040 */
    g_byte_array_append(e, (const guint8 *)"\x37\x01\x11", 3); /* +56 */
    cr_assert(check((const char *)e->data, e->len)); /* 4096 exactly */
    g_byte_array_append(e, (const guint8 *)"\x01\x01\x11", 3);
    cr_assert_not(check((const char *)e->data, e->len));
    g_byte_array_unref(e);
}

Test(xbzrle, apply_reads_only_its_input)
{
    /* every prefix of a valid encoding, copied to an exact-size heap
     * buffer (ASan sees an over-read) */
    static const guint8 enc[] = {0x00, 0x02, 0x11, 0x22, 0x81, 0x01, 0x01,
                                 0x33, 0x05, 0x03, 0x44, 0x55, 0x66};
    guint8 page[PS];
    for (gsize k = 0; k <= sizeof(enc); k++) {
        guint8 *cut = g_memdup2(enc, k);
        memset(page, 0, PS);
        gboolean ok = mp_xbzrle_apply(page, PS, cut, k);
        cr_assert_eq(ok, k == 0 || k == 4 || k == 8 || k == 13, "prefix %zu",
                     k);
        g_free(cut);
    }
}
