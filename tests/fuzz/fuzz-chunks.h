/* fuzz-chunks.h: a differential driver for parsers whose records may
 * depend on how the input was cut (the main channel's opaque
 * pass-through) and whose data pointers may be NULL when a field was
 * split (device sections, disk blocks).
 *
 * The first input byte selects the chunk size (bits 0-5; 0 is all at once)
 * and whether the callback pauses after every record (bit 7); bit 6 is the
 * target's.  The rest is fed once whole and once in chunks, each chunk
 * copied to a buffer of exactly its size so that ASan sees any read past
 * it; then finish.  The two logs must agree once neighbouring opaque
 * records are merged.  Uses MpFuzzOps from fuzz-util.h: data_len() may
 * read bytes itself and return 0 for records whose pointer depends on the
 * cut. */
#pragma once

#include <glib.h>
#include "fuzz-util.h"

int mp_fuzz_chunks_run(const MpFuzzOps *ops, const guint8 *data, gsize size);
