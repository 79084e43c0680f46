/* page-delta.h: a page as the difference from the version the peer holds
 * (that version comes from the mirrored page cache, page-cache.h).
 *
 * Like QEMU's XBZRLE, but run by migproxy instead of the source QEMU, so
 * it costs the guest neither CPU nor throttling.  The delta is the XOR of
 * the new and the old page, written as pairs:
 *
 *   { uleb128 same | uleb128 n | n bytes of (new XOR old) } ...
 *
 * `same` bytes are unchanged, the next n changed (n >= 1); bytes after the
 * last pair are unchanged.  Gaps of fewer than 4 unchanged bytes stay
 * inside a literal (a new pair would cost as much).  An identical page is
 * an empty delta.  The body it travels in is zstd-compressed afterwards,
 * where the XOR bytes (mostly small values) compress well.
 *
 * Codec contexts are plain functions: no state, thread-safe.
 */
#pragma once

#include <glib.h>

/* Encodes `page` against `old` (page_size bytes each) into `out` (at most
 * `cap` bytes).  @return the delta's length, or -1 when it would not fit
 * in `cap` bytes: then the delta does not pay and the page goes whole. */
gssize mp_delta_encode(const guint8 *old, const guint8 *page,
                       guint32 page_size, guint8 *out, gsize cap);

/* Applies a delta: `page` = `old` changed by it (page_size bytes each;
 * page may be old).  @return FALSE with an error naming the delta offset
 * when it runs past the page or is malformed; page is then undefined. */
gboolean mp_delta_decode(const guint8 *old, const guint8 *delta, gsize len,
                         guint32 page_size, guint8 *page, GError **error);
