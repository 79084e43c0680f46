/* feed-util.h: drive any incremental parser whole, byte by byte and split
 * at every point, with each chunk ending at a PROT_NONE guard page so that
 * a read past the input crashes the test instead of passing silently. */
#pragma once

#include <glib.h>
#include "parse-common.h"

/* How a test reaches one parser type. */
typedef struct {
    gpointer (*create)(MpRecordFunc cb, gpointer user_data);
    MpFeedStatus (*feed)(gpointer parser, const guint8 *buf, gsize len,
                         gsize *consumed, GError **error);
    /* end of input: FALSE with an error if it ended inside a record */
    gboolean (*finish)(gpointer parser, GError **error);
    void (*destroy)(gpointer parser);
} MpParserOps;

/* A copy of data whose last byte sits right before a PROT_NONE page. */
guint8 *guarded_dup(const void *data, gsize len);
void guarded_free(guint8 *p, gsize len);

/* Feeds `data` in chunks: chunk = 0 means whole, otherwise at most `chunk`
 * bytes a time; split > 0 (with chunk = 0) splits once at `split`.  Returns
 * the log: one line per record (mp_record_describe), then "END", "MORE" or
 * "ERROR <code> <message>".  Free with g_free. */
char *feed_log(const MpParserOps *ops, const guint8 *data, gsize len,
               gsize chunk, gsize split);

/* Asserts (Criterion) that the byte-by-byte feed and every single split
 * give the same log as the whole feed; returns the whole-feed log. */
char *feed_check_all_splits(const MpParserOps *ops, const guint8 *data,
                            gsize len);

/* Feeds data with bytes [gap_at, gap_at + gap_len) missing: the bytes
 * before, the gap through `gap` (the parser's mp_*_parser_gap()), then
 * the bytes after it in chunks of `chunk` (0: whole) over the first 24000
 * of them (where the parser looks for a record), the rest whole.  Returns
 * the log as feed_log() does. */
char *feed_log_gap(const MpParserOps *ops, gboolean (*gap)(gpointer, guint64),
                   const guint8 *data, gsize len, gsize gap_at, gsize gap_len,
                   gsize chunk);

/* Asserts (Criterion) that with that gap, fed whole, byte by byte and in
 * chunks of 4103 bytes after it, the log is the whole feed's records that end
 * before the gap, one resync record at `resume`, then the whole feed's
 * records from the first one of more than 0 bytes at `resume` on. */
void feed_check_gap(const MpParserOps *ops,
                    gboolean (*gap)(gpointer, guint64), const guint8 *data,
                    gsize len, gsize gap_at, gsize gap_len, gsize resume);
