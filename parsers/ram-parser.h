/* ram-parser.h: RAM records, the body of the "ram" section on the main
 * channel and the whole content of the postcopy-preempt channel. */
#pragma once

#include <glib.h>
#include "parse-common.h"

typedef struct MpRamParser MpRamParser;

/* `channel` names the channel in errors ("src main", "preempt").
 * `page_size` is the target page size (4096 on x86).
 * @return a parser; free with mp_ram_parser_free(). */
MpRamParser *mp_ram_parser_new(const char *channel, guint32 page_size,
                               MpRecordFunc cb, gpointer user_data);
void mp_ram_parser_free(MpRamParser *p);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpRamParser, mp_ram_parser_free)

/* What the block list looks like depends on earlier parts of the stream:
 * POSTCOPY_ADVISE's page-size summary (block entries may carry a page
 * size) and the x-ignore-shared capability (entries carry an address). */
void mp_ram_parser_set_postcopy_summary(MpRamParser *p, guint64 summary);
void mp_ram_parser_set_ignore_shared(MpRamParser *p, gboolean on);
/* mapped-ram: each block list entry ends with a MappedRamHeader. */
void mp_ram_parser_set_mapped_ram(MpRamParser *p, gboolean on);

/* Records are tagged with this section (the caller keeps it alive). */
void mp_ram_parser_set_section(MpRamParser *p, const MpSectionInfo *section);

/* The stream offset of the next byte fed (the main-channel parser hands
 * over between its own grammar and this one). */
void mp_ram_parser_set_offset(MpRamParser *p, guint64 offset);
guint64 mp_ram_parser_offset(const MpRamParser *p);

/* Makes `p` check block names and addresses against the block list that
 * `main` learned from MEM_SIZE (used for the preempt channel, whose stream
 * has no block list).  `main` must outlive `p`. */
void mp_ram_parser_share_blocks(MpRamParser *p, const MpRamParser *main);

/* Copies the block list, block-list options and current block of `prev`
 * into `p` (a recovery channel taking over from a broken one). */
void mp_ram_parser_inherit(MpRamParser *p, const MpRamParser *prev);

/* Feeds bytes.  Returns MP_FEED_END just after an EOS record (the end of
 * a section body, or of the preempt channel). */
MpFeedStatus mp_ram_parser_feed(MpRamParser *p, const guint8 *buf, gsize len,
                                gsize *consumed, GError **error);

/* The input ended: TRUE if that happened between two records. */
gboolean mp_ram_parser_finish(MpRamParser *p, GError **error);

/* Total used_length of the blocks in the list (0 before MEM_SIZE). */
guint64 mp_ram_parser_ram_total(const MpRamParser *p);

/* For the main channel's resync after a gap (qmig-parser.c). */
guint32 mp_ram_parser_page_size(const MpRamParser *p);
/* @return TRUE if the block list has block `name` (`n` bytes, not
 * NUL-terminated), with its used_length in *used. */
gboolean mp_ram_parser_block_used(const MpRamParser *p, const guint8 *name,
                                  gsize n, guint64 *used);
/* @return the channel's current block (what CONTINUE refers to), or NULL;
 * *used: its used_length (0: unknown). */
const char *mp_ram_parser_current_block(const MpRamParser *p, guint64 *used);
/* Drops the record being read (bytes are missing): the next byte fed
 * starts a record.  The block list and current block stay. */
void mp_ram_parser_resync(MpRamParser *p);
