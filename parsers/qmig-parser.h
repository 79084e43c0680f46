/* qmig-parser.h: the main migration channel (source to destination). */
#pragma once

#include <glib.h>
#include "parse-common.h"
#include "ram-parser.h"
#include "vmdesc.h"

typedef struct MpQmigParser MpQmigParser;

/* `channel` names the channel in errors ("src main").  Records go to `cb`.
 * @return a parser; free with mp_qmig_parser_free(). */
MpQmigParser *mp_qmig_parser_new(const char *channel, MpRecordFunc cb,
                                 gpointer user_data);
void mp_qmig_parser_free(MpQmigParser *p);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpQmigParser, mp_qmig_parser_free)

/* With the stream's vmdesc (files: read from the tail first), device
 * sections are sliced exactly and parsing goes on to EOF and VMDESC.
 * Without it, the first device section turns the rest of the stream (or
 * of the PACKAGED blob) into MP_REC_OPAQUE.  Takes a reference. */
void mp_qmig_parser_set_vmdesc(MpQmigParser *p, MpVmdesc *vmdesc);

/* The caller reads a mapped-ram file (QEMU 9+ `file:` migration with the
 * mapped-ram capability): after each MP_REC_RAM_BLOCK, whose mapped_ram
 * fields say where the block's bitmap and pages are, it pauses and feeds
 * on from pages_offset + used_length, where the stream goes on.  Without
 * this, a stream whose configuration lists mapped-ram is refused. */
void mp_qmig_parser_allow_mapped_ram(MpQmigParser *p);

/* A postcopy recovery channel starts without magic and version. */
void mp_qmig_parser_set_headerless(MpQmigParser *p);

/* A postcopy recovery channel goes on with the stream of `prev`, the main
 * channel it replaces: after RECV_BITMAP and POSTCOPY_RESUME come PART
 * sections whose ids only `prev` has seen (postcopy_do_resume@7.2).  `p`
 * (new, not yet fed) takes a copy of the section table, configuration and
 * RAM state of `prev` and expects no header; `prev` may be freed after. */
void mp_qmig_parser_resume_from(MpQmigParser *p, const MpQmigParser *prev);

MpFeedStatus mp_qmig_parser_feed(MpQmigParser *p, const guint8 *buf,
                                 gsize len, gsize *consumed, GError **error);

/* `len` bytes of the stream are missing here (a capture's gap): the
 * record being read is abandoned and the parser looks in the bytes fed
 * next for a record it trusts (a walk through several records checked
 * against the sections, blocks and current block the stream announced
 * before), then resumes there with an MP_REC_RESYNC record
 * (stream-resync.h).  In opaque pass-through nothing changes.
 * @return FALSE if the parser has failed already (it stays failed). */
gboolean mp_qmig_parser_gap(MpQmigParser *p, guint64 len);

/* The input ended.  TRUE if it ended between records (or in opaque
 * pass-through); FALSE with MP_PARSE_ERROR_TRUNCATED otherwise. */
gboolean mp_qmig_parser_finish(MpQmigParser *p, GError **error);

guint64 mp_qmig_parser_offset(const MpQmigParser *p);

/* Offset from which the parser only passes bytes through, or G_MAXUINT64
 * if it follows the whole stream; `why` (may be NULL) tells the reason. */
guint64 mp_qmig_parser_opaque_from(const MpQmigParser *p, const char **why);

/* Sum of used_length of the RAM blocks (0 before MEM_SIZE). */
guint64 mp_qmig_parser_ram_total(const MpQmigParser *p);

/* The parser of the "ram" section bodies, for a postcopy-preempt
 * channel's mp_ram_parser_share_blocks().  @return borrowed, valid until
 * mp_qmig_parser_free(). */
const MpRamParser *mp_qmig_parser_ram(const MpQmigParser *p);
