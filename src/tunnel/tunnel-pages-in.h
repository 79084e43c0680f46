/* tunnel-pages-in.h: the destination side's PAGES decoding of one forward
 * stream (docs/tunnel.md, "Encoded pages (PAGES)").
 *
 * Each PAGES payload is decoded (filters/page-batch.h: zero runs, the
 * mirrored page cache for deltas and dedup references, one zstd decoder
 * per source context) and written back as QEMU RAM records of the section
 * the source took them from:
 *
 *   be64 (page offset | PAGE or ZERO | CONTINUE when the block is the one
 *   of the previous record written) | [u8 n | block name] | the page, or
 *   the ZERO fill byte (0)
 *
 * The first record of a batch after raw stream bytes (DATA) always names
 * its block: those bytes may have changed the block QEMU reads into.  The
 * result need not be the source's bytes, only the same memory.
 *
 * The stream's first payload carries its cache budget (flag
 * MP_TUN_PAGES_SETUP, tunnel-pages-out.h), at most the negotiated
 * cache_bytes; a later one must not.  Source zstd contexts are numbered
 * below MP_TUN_PAGES_MAX_WORKERS (one decoder each, 8 MiB window).  Anything else wrong (a batch the
 * decoder refuses, more output than `limit`) fails the stream: the caches
 * may be out of step, so nothing more of it can be trusted.
 *
 * Lifted pages (urgent payloads, tunnel-pages-out.h): a copy of a page
 * the destination asked for, ahead of its batch.  Its records go out at
 * once when what was written last is a record of the same block (a
 * batch's or a lifted page's: a CONTINUE after it still means that
 * block), else just before the next batch's records (a batch starts at
 * a record boundary and names its own block).  The page's copy in its
 * batch is then dropped (QEMU fails on a page placed twice in
 * post-copy; in pre-copy the later copy is the newer one anyway).  The
 * caches are not touched.  At most MP_TUN_LIFT_MAX_WAITING pages wait
 * and MP_TUN_LIFT_MAX_AHEAD have no batch copy yet; more fails the
 * stream.
 *
 * Multifd streams (mp_tun_pages_in_set_bare(), docs/tunnel.md "Multifd
 * pages"): a batch holds the normal pages of a multifd packet (or a
 * part of them), whose header came before as raw bytes.  Its pages are
 * written as they are, in entry order, without record headers: a
 * ZERO_RUN as `count` zero pages, so that the packet's page data is
 * exactly as long as its header says and in its offsets' order.  No
 * lifted pages there.
 */
#pragma once

#include <glib.h>
#include <json-c/json.h>

typedef struct MpTunPagesIn MpTunPagesIn;

/* A decoder for one stream; its cache may use at most `cache_cap` bytes.
 * @return free with mp_tun_pages_in_free(). */
MpTunPagesIn *mp_tun_pages_in_new(guint32 page_size, guint64 cache_cap);
void mp_tun_pages_in_free(MpTunPagesIn *pi); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpTunPagesIn, mp_tun_pages_in_free)

/* Decodes one PAGES payload and appends its RAM records to `out`, at most
 * `limit` bytes of them.  @return FALSE with an error naming the batch's
 * block, the payload offset and what was expected; `out` may have grown
 * by the records before the fault.  After an error every call fails. */
gboolean mp_tun_pages_in_apply(MpTunPagesIn *pi, const guint8 *payload,
                               gsize len, GByteArray *out, gsize limit,
                               GError **error);
/* The stream is a multifd channel: batches become bare page bytes (see
 * above).  Before the first batch. */
void mp_tun_pages_in_set_bare(MpTunPagesIn *pi);
/* Raw stream bytes went to QEMU since the last batch. */
void mp_tun_pages_in_data(MpTunPagesIn *pi);

#define MP_TUN_LIFT_MAX_WAITING 1024
#define MP_TUN_LIFT_MAX_AHEAD   8192
/* An urgent payload: its RAM records are appended to `out` now, or wait
 * for the next batch (see above).  @return FALSE with an error naming
 * the payload offset and what was expected; nothing is written then. */
gboolean mp_tun_pages_in_urgent(MpTunPagesIn *pi, const guint8 *payload,
                                gsize len, GByteArray *out, GError **error);

/* {batches, pages, zero_pages, payload_bytes, records_bytes, cache_bytes,
 * cpu_s, lift {frames, pages, written_at_once, written_before_batch,
 * bulk_dropped, waiting}}.  Caller owns. */
json_object *mp_tun_pages_in_report(const MpTunPagesIn *pi);
