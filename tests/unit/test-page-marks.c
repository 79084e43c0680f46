/* test-page-marks.c: the per-page sent marks behind dirty-page counting
 * (src/analysis/page-marks.c). */
#include "config.h"
#include <criterion/criterion.h>
#include "page-marks.h"

Test(page_marks, rounds)
{
    g_autoptr(MpPageMarks) m = mp_page_marks_new();

    cr_assert_eq(mp_page_marks_mark(m, 7), 0);
    cr_assert_eq(mp_page_marks_mark(m, 7), MP_PAGE_SENT_THIS_ROUND);
    cr_assert_eq(mp_page_marks_mark(m, 8), 0);
    mp_page_marks_next_round(m);
    cr_assert_eq(mp_page_marks_mark(m, 7), MP_PAGE_SENT_BEFORE);
    cr_assert_eq(mp_page_marks_mark(m, 7),
                 MP_PAGE_SENT_BEFORE | MP_PAGE_SENT_THIS_ROUND);
    cr_assert_eq(mp_page_marks_mark(m, 9), 0);
    mp_page_marks_next_round(m);
    mp_page_marks_next_round(m); /* an empty round changes nothing */
    cr_assert_eq(mp_page_marks_mark(m, 8), MP_PAGE_SENT_BEFORE);
    cr_assert_eq(mp_page_marks_mark(m, 9), MP_PAGE_SENT_BEFORE);
    cr_assert_eq(mp_page_marks_mark(m, 10), 0);
}

/* Pages far apart, as a stream that claims a huge block may send them:
 * each costs one chunk, whatever lies between. */
Test(page_marks, far_apart)
{
    g_autoptr(MpPageMarks) m = mp_page_marks_new();
    const guint64 far[] = {0, MP_PAGE_MARKS_CHUNK - 1, MP_PAGE_MARKS_CHUNK,
                           G_GUINT64_CONSTANT(1) << 40,
                           (G_GUINT64_CONSTANT(1) << 52) - 1};

    for (guint i = 0; i < G_N_ELEMENTS(far); i++)
        cr_assert_eq(mp_page_marks_mark(m, far[i]), 0);
    mp_page_marks_next_round(m);
    for (guint i = 0; i < G_N_ELEMENTS(far); i++)
        cr_assert_eq(mp_page_marks_mark(m, far[i]), MP_PAGE_SENT_BEFORE);
    cr_assert_eq(mp_page_marks_mark(m, 1), 0);
}

/* Past MP_PAGE_MARKS_MAX_CHUNKS chunks nothing more is tracked (and no
 * more memory taken); what is tracked stays right. */
Test(page_marks, bounded)
{
    g_autoptr(MpPageMarks) m = mp_page_marks_new();

    for (guint64 c = 0; c < MP_PAGE_MARKS_MAX_CHUNKS; c++)
        cr_assert_eq(mp_page_marks_mark(m, c * MP_PAGE_MARKS_CHUNK), 0);
    cr_assert_eq(mp_page_marks_mark(m, (guint64)MP_PAGE_MARKS_MAX_CHUNKS
                                           * MP_PAGE_MARKS_CHUNK),
                 MP_PAGE_UNTRACKED);
    cr_assert_eq(mp_page_marks_mark(m, 1), 0); /* a chunk it has */
    mp_page_marks_next_round(m);
    cr_assert_eq(mp_page_marks_mark(m, 1), MP_PAGE_SENT_BEFORE);
}

/* Blocks of one stream share a chunk budget: a stream listing 4096 blocks
 * could otherwise make 2^18 chunks (290 MiB) in each. */
Test(page_marks, shared_budget)
{
    guint left = 3;
    g_autoptr(MpPageMarks) a = mp_page_marks_new_shared(&left);
    g_autoptr(MpPageMarks) b = mp_page_marks_new_shared(&left);

    cr_assert_eq(mp_page_marks_mark(a, 0), 0);
    cr_assert_eq(mp_page_marks_mark(a, MP_PAGE_MARKS_CHUNK), 0);
    cr_assert_eq(mp_page_marks_mark(b, 5), 0);
    cr_assert_eq(left, 0);
    /* chunks made go on; new ones, in either block, are not made */
    cr_assert_eq(mp_page_marks_mark(a, 1), 0);
    cr_assert_eq(mp_page_marks_mark(b, 5), MP_PAGE_SENT_THIS_ROUND);
    cr_assert_eq(mp_page_marks_mark(a, 2 * MP_PAGE_MARKS_CHUNK),
                 MP_PAGE_UNTRACKED);
    cr_assert_eq(mp_page_marks_mark(b, MP_PAGE_MARKS_CHUNK),
                 MP_PAGE_UNTRACKED);
}
