/* xbzrle.h: QEMU's XBZRLE page delta encoding.
 *
 * An encoded page is a sequence of pairs
 *     uleb128 zrun | uleb128 nzrun | nzrun literal bytes
 * where each uleb128 is 1 or 2 bytes (at most 0x3fff).  zrun bytes of the
 * destination's current page stay as they are ("unchanged", not "zero"),
 * then nzrun bytes are replaced by the literals.  Only the first zrun may
 * be 0; every nzrun is at least 1; runs never pass the page end.
 */
#pragma once

#include <glib.h>

/* TRUE if `enc` is a well-formed encoding for a page of `page_size` bytes
 * (the same rules QEMU's loader applies). */
gboolean mp_xbzrle_check(const guint8 *enc, gsize len, gsize page_size);

/* Applies `enc` to `page` in place.  FALSE (page partly written) if the
 * encoding is malformed; check first to keep the page intact. */
gboolean mp_xbzrle_apply(guint8 *page, gsize page_size, const guint8 *enc,
                         gsize len);

/* Encodes the change from `old` to `new` (page_size bytes each) into
 * `out` (capacity `cap`).  Returns the encoded length, 0 if the pages are
 * equal, or -1 if the encoding would not fit in `cap`. */
gssize mp_xbzrle_encode(const guint8 *old, const guint8 *new_page,
                        gsize page_size, guint8 *out, gsize cap);
