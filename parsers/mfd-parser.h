/* mfd-parser.h: one multifd channel, source to destination (QEMU
 * migration/multifd.c). */
#pragma once

#include <glib.h>
#include "parse-common.h"

typedef struct MpMfdParser MpMfdParser;

/* `channel` names the channel in errors ("src multifd-2").  `page_size`
 * is the target page size (4096 on x86; a power of two in 512..65536); it
 * fixes the packet header length (320 + 8 * 512 KiB / page_size).
 * Records go to `cb`:
 *   MP_REC_MFD_INIT          the 64-byte handshake
 *   MP_REC_MFD_PACKET        a RAM packet header; then, if pages_follow,
 *     MP_REC_MFD_PAGE        one per normal page (data: the whole page),
 *                            then one per zero page (zero, data NULL)
 *   MP_REC_MFD_DATA          compressed bytes, in chunks of at most 64 KiB
 *   MP_REC_MFD_DEVICE_STATE  [10.0+] a device-state packet header, whose
 *                            data follows as MP_REC_MFD_DATA
 * Nocomp pages span their bytes on the wire.  Compressed data is always
 * reported as MP_REC_MFD_DATA; the pages zstd decodes to follow it as
 * MP_REC_MFD_PAGE records of length 0 (a view, not wire bytes).  Zero
 * pages are length 0 too.  Pointers in records are valid during the call.
 * @return a parser; free with mp_mfd_parser_free(). */
MpMfdParser *mp_mfd_parser_new(const char *channel, guint32 page_size,
                               MpRecordFunc cb, gpointer user_data);
/* Accepts NULL. */
void mp_mfd_parser_free(MpMfdParser *p);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpMfdParser, mp_mfd_parser_free)

/* zstd packets are decoded by default (one decoder per channel for the
 * whole migration, as QEMU keeps one).  With FALSE, their normal pages
 * are not reported: count normal_pages of MP_REC_MFD_PACKET instead
 * (pages_follow is FALSE).  zlib, QPL, UADK and QATzip are never decoded.
 * Call before the first feed. */
void mp_mfd_parser_set_decode(MpMfdParser *p, gboolean decode);

/* Feeds `len` bytes of `buf` (caller keeps ownership).
 * @return MP_FEED_MORE when all of them were used (*consumed == len),
 * MP_FEED_PAUSED when the callback paused (resume at buf + *consumed,
 * even with no bytes left), MP_FEED_ERROR with `error` set; errors are
 * sticky.  A multifd channel has no end marker, so never MP_FEED_END. */
MpFeedStatus mp_mfd_parser_feed(MpMfdParser *p, const guint8 *buf, gsize len,
                                gsize *consumed, GError **error);

/* `len` bytes of the channel are missing here (a capture's gap): the
 * packet being read is abandoned, and the parser looks in the bytes fed
 * next for a packet header it trusts (magic, version, flags, counts,
 * block name, page offsets and sizes as it checks them, a packet number
 * above the channel's last, its compression method) and resumes there
 * with an MP_REC_RESYNC record (stream-resync.h).  Compressed packets
 * after a gap are not decoded (one zstd stream per channel).
 * @return FALSE if the parser has failed already (it stays failed). */
gboolean mp_mfd_parser_gap(MpMfdParser *p, guint64 len);

/* The channel was closed.
 * @return TRUE if that happened at a packet boundary (or before any
 * byte); FALSE with MP_PARSE_ERROR_TRUNCATED naming what was being read
 * (or the sticky error).  Records still owed after a pause are delivered
 * first. */
gboolean mp_mfd_parser_finish(MpMfdParser *p, GError **error);

/* @return the number of bytes consumed so far. */
guint64 mp_mfd_parser_offset(const MpMfdParser *p);
