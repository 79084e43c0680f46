/* test-big-buf.c: the relay's growing queue buffer keeps its bytes
 * across the switch from malloc() to its own mapping and across
 * mremap(). */
#include "config.h"
#include <string.h>
#include <criterion/criterion.h>
#include "big-buf.h"
#include "test-util.h"

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

    /* the queue holds guest memory: its mapping never in a core dump,
     * before and after the mremap() */
    g_autofree char *flags = tu_vm_flags(b.data + b.cap - 1);
    cr_assert(strstr(flags, " dd"), "MADV_DONTDUMP: VmFlags%s", flags);

    mp_big_buf_resize(&b, 8u << 20); /* never shrinks */
    cr_assert_geq(b.cap, 40u << 20);
    check(b.data, had, 9);
    mp_big_buf_clear(&b);
    cr_assert_null(b.data);
    cr_assert_eq(b.cap, 0);
}

/* Waits (bounded) until the helper has readied `n` bytes. */
static void
wait_ready(const MpBigBuf *b, gsize n)
{
    for (int i = 0; i < 2000 && mp_big_buf_ready(b) < n; i++)
        g_usleep(5000);
    cr_assert_geq(mp_big_buf_ready(b), n, "the helper readied %zu of %zu",
                  mp_big_buf_ready(b), n);
}

Test(big_buf, helper_faults_in_ahead_and_keeps_bytes)
{
    MpBigBuf b = {0};
    GSource *wake = g_idle_source_new();

    mp_big_buf_resize(&b, 1u << 20);
    mp_big_buf_prepare(&b, 1u << 20, wake);
    cr_assert_null(b.prep, "a malloc()ed buffer needs no helper");
    cr_assert_eq(mp_big_buf_ready(&b), b.cap);

    mp_big_buf_resize(&b, 16u << 20);
    fill(b.data, 4u << 20, 3); /* what the writer had */
    mp_big_buf_prepare(&b, (6u << 20) + 123, wake);
    cr_assert_not_null(b.prep);
    wait_ready(&b, (6u << 20) + 123);
    /* whole huge pages, and no further: the helper did it (when the
     * kernel cannot, ready() is the whole buffer) */
    cr_assert_eq(mp_big_buf_ready(&b), 8u << 20);
    mp_big_buf_prepare(&b, 16u << 20, wake);
    wait_ready(&b, 16u << 20);
    check(b.data, 4u << 20, 3); /* faulting in never writes */

    /* growing while the helper works: it waits for the step, the bytes
     * move with the mapping, and it goes on in the new one */
    mp_big_buf_prepare(&b, 64u << 20, wake);
    mp_big_buf_resize(&b, 64u << 20);
    fill(b.data + (4u << 20), 12u << 20, 5);
    wait_ready(&b, 64u << 20);
    check(b.data, 4u << 20, 3);
    check(b.data + (4u << 20), 12u << 20, 5);
    cr_assert_leq(mp_big_buf_ready(&b), b.cap);

    mp_big_buf_clear(&b); /* joins the helper */
    cr_assert_null(b.prep);
    g_source_unref(wake);
}
