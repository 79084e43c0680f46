/* rp-parser.h: the return path, destination to source on the main
 * connection (QEMU migration.c source_return_path_thread). */
#pragma once

#include <glib.h>
#include "parse-common.h"

typedef struct MpRpParser MpRpParser;

/* `channel` names the channel in errors ("dst return-path").  Records
 * (MP_REC_RP_MESSAGE, MP_REC_RP_BITMAP) go to `cb`; see mp-record.h for
 * their lifetime.
 * @return a parser; free with mp_rp_parser_free(). */
MpRpParser *mp_rp_parser_new(const char *channel, MpRecordFunc cb,
                             gpointer user_data);
/* Accepts NULL. */
void mp_rp_parser_free(MpRpParser *p);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpRpParser, mp_rp_parser_free)

/* Feeds `len` bytes of `buf` (caller keeps ownership).
 * @return MP_FEED_MORE when all of them were used (*consumed == len),
 * MP_FEED_PAUSED when the callback paused (resume at buf + *consumed),
 * MP_FEED_ERROR with `error` set; errors are sticky.  The return path has
 * no end marker (SHUT is followed by the close), so never MP_FEED_END. */
MpFeedStatus mp_rp_parser_feed(MpRpParser *p, const guint8 *buf, gsize len,
                               gsize *consumed, GError **error);

/* `len` bytes of the return path are missing here (a capture's gap): the
 * message being read is abandoned, and the parser looks in the bytes fed
 * next for two messages in a row of known types and fitting lengths, and
 * resumes at the first with an MP_REC_RESYNC record (stream-resync.h).
 * A REQ_PAGES whose block was named before the gap is reported without
 * its block (NULL).  @return FALSE if the parser has failed already. */
gboolean mp_rp_parser_gap(MpRpParser *p, guint64 len);

/* The input ended.
 * @return TRUE if it ended between two records; FALSE with
 * MP_PARSE_ERROR_TRUNCATED naming what was being read (or the sticky
 * error). */
gboolean mp_rp_parser_finish(MpRpParser *p, GError **error);

/* @return the number of bytes consumed so far. */
guint64 mp_rp_parser_offset(const MpRpParser *p);
