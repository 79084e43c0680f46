/* test-big-buf.c: the relay's growing queue buffer keeps its bytes
 * across the switch from malloc() to its own mapping and across
 * mremap(). */
#include "config.h"
#include <string.h>
#include <criterion/criterion.h>
#include "big-buf.h"

static void
fill(guint8 *p, gsize n, guint seed)
{
    for (gsize i = 0; i < n; i++)
        p[i] = (guint8)(i * 31 + seed);
}

static void
check(const guint8 *p, gsize n, guint seed)
{
    for (gsize i = 0; i < n; i++)
        if (p[i] != (guint8)(i * 31 + seed))
            cr_assert_fail("byte %zu of %zu differs", i, n);
}

Test(big_buf, keeps_bytes_while_growing)
{
    MpBigBuf b = {0};
    mp_big_buf_resize(&b, 1u << 20);
    cr_assert_eq(b.map_len, 0, "small buffers stay malloc()ed");
    cr_assert_geq(b.cap, 1u << 20);
    fill(b.data, b.cap, 7);
    gsize had = b.cap;

    mp_big_buf_resize(&b, 3u << 20);
    cr_assert_geq(b.cap, 3u << 20);
    cr_assert_eq(b.map_len, b.cap, "a mapping from MP_BIG_BUF_MAPPED on");
    cr_assert_eq(b.cap % MP_BIG_BUF_MAPPED, 0);
    check(b.data, had, 7);
    fill(b.data, b.cap, 9);

    had = b.cap;
    mp_big_buf_resize(&b, 40u << 20); /* mremap */
    cr_assert_geq(b.cap, 40u << 20);
    check(b.data, had, 9);
    memset(b.data + had, 0xab, b.cap - had); /* the new part is writable */

    mp_big_buf_resize(&b, 8u << 20); /* never shrinks */
    cr_assert_geq(b.cap, 40u << 20);
    check(b.data, had, 9);
    mp_big_buf_clear(&b);
    cr_assert_null(b.data);
    cr_assert_eq(b.cap, 0);
}
