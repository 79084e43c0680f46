/* page-marks.h: which pages of a RAM block were sent, and when.
 *
 * Two marks per page: sent in an earlier round, sent in the current one
 * (dirty pages are those sent again; analysis.c).  The marks live in
 * chunks of MP_PAGE_MARKS_CHUNK pages, made when a page of the chunk is
 * first marked, so memory follows the pages seen, not the block size the
 * stream claims: a hostile stream that announces a block of 2^64 bytes
 * costs nothing until it sends pages, and at most MP_PAGE_MARKS_MAX_CHUNKS
 * chunks (4 TiB of guest RAM, 256 MiB of marks, 290 MiB with the hash
 * table) per block, or per stream with mp_page_marks_new_shared();
 * pages past that are not tracked (mp_page_marks_mark() says so).
 */
#pragma once

#include <glib.h>

#define MP_PAGE_MARKS_CHUNK      4096u      /* pages: 16 MiB of guest RAM */
#define MP_PAGE_MARKS_MAX_CHUNKS (1u << 18) /* 4 TiB of guest RAM */

typedef struct MpPageMarks MpPageMarks;

/* What mp_page_marks_mark() found, flags. */
enum {
    MP_PAGE_SENT_BEFORE = 1u << 0, /* in an earlier round */
    MP_PAGE_SENT_THIS_ROUND = 1u << 1,
    MP_PAGE_UNTRACKED = 1u << 2, /* over the chunk limit: nothing known */
};

/* @return empty marks that make at most MP_PAGE_MARKS_MAX_CHUNKS chunks;
 * free with mp_page_marks_free(). */
MpPageMarks *mp_page_marks_new(void);
/* The same, making chunks while *chunks_left > 0 and counting them down:
 * one budget for all blocks of a stream, which may list 4096 of them
 * (ram-parser.c), bounds the stream's marks, not just each block's.
 * *chunks_left must outlive the marks; freeing them gives nothing back. */
MpPageMarks *mp_page_marks_new_shared(guint *chunks_left);
void mp_page_marks_free(MpPageMarks *m); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpPageMarks, mp_page_marks_free)

/* Page `index` (address / page size) was sent in the current round.
 * @return its marks before this call (MP_PAGE_* flags). */
guint mp_page_marks_mark(MpPageMarks *m, guint64 index);

/* The current round ended: its pages now count as sent before. */
void mp_page_marks_next_round(MpPageMarks *m);
