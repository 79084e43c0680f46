/* filter-zero.h: a full page whose bytes are all zero becomes a ZERO
 * record.
 *
 *   PAGE  be64 addr|flags [u8 len, idstr] page[4096]
 *   ZERO  be64 addr|flags [u8 len, idstr] u8 0
 *
 * The flags keep CONTINUE and the block name stays as it was, so the
 * channel's current block on the destination is the same either way.  The
 * destination fills a ZERO page with zeros (or leaves an already zero page
 * alone), which gives the same memory as copying 4096 zero bytes.  QEMU
 * sends such pages when zero-page detection is off (9.0+:
 * zero-page-detection=none) or when a page turned zero between its check
 * and its copy.  Pages inside multifd packets are left alone.
 */
#pragma once

#include "stage.h"

/* @return a new stage (stage.h); free with mp_stage_free(). */
MpStage *mp_filter_zero_new(void);

/* Pages rewritten so far, and the bytes that saved. */
guint64 mp_filter_zero_rewritten(const MpStage *f);
guint64 mp_filter_zero_bytes_saved(const MpStage *f);
