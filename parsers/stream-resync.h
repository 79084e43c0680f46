/* stream-resync.h: finding the next record after a gap in a stream.
 *
 * A capture can lack bytes of a channel (the kernel dropped packets):
 * the parser then knows that `len` bytes are missing at its offset, but
 * not where the record it was reading ended nor where the next one
 * starts.  It scans the bytes after the gap for a position where a record
 * it trusts starts (its own probe: a multifd packet header, a section
 * header or a run of RAM records, each checked against what the stream
 * said before the gap), and resumes there with an MP_REC_RESYNC record;
 * the bytes passed over are counted, never parsed.
 *
 *   ... record | gap (missing) | skipped (present, not parsed) | record ...
 *                ^ gap_off       ^ gap_off + gap_len            ^ resume
 *
 * The decision at each position depends on the bytes from that position
 * on only (at most `limit` of them), never on how the input was split:
 * the scanner keeps the bytes from the first position not yet ruled out,
 * so that feeding byte by byte finds the same position as feeding
 * everything at once.  Memory: at most `limit` bytes plus one chunk of
 * `limit` bytes.
 */
#pragma once

#include <glib.h>
#include "parse-common.h"

typedef enum {
    MP_PROBE_NO,   /* no trusted record starts here */
    MP_PROBE_MORE, /* cannot tell from `len` bytes; more (in all at most
                      the scanner's limit) will tell */
    MP_PROBE_YES,  /* a trusted record starts here */
} MpProbeResult;

typedef struct {
    /* Does a record the parser trusts start at buf[0] (stream offset
     * `off`; `len` >= 1 bytes there)?  *what: a static description of
     * that record ("multifd packet header"), *kind: the parser's own tag
     * of how to resume.  Must not change the parser. */
    MpProbeResult (*probe)(gconstpointer parser, const guint8 *buf, gsize len,
                           guint64 off, const char **what, int *kind);
    /* The probe said YES at stream offset `off`: set the parser up to read
     * the record there (its state, its offset) and report `rec` (the
     * MP_REC_RESYNC the scanner filled).  @return the callback's answer. */
    MpRecordAction (*resume)(gpointer parser, MpRecord *rec, int kind);
    /* The parser's ordinary feed, for the bytes from `off` on. */
    MpFeedStatus (*feed)(gpointer parser, const guint8 *buf, gsize len,
                         gsize *consumed, GError **error);
} MpResyncOps;

typedef struct {
    gboolean scanning;     /* looking for a record after a gap */
    guint64 gap_off;       /* the first gap not yet resumed from */
    guint64 gap_bytes;     /* bytes missing in the gaps since then */
    guint64 skipped;       /* bytes after the gaps passed over so far */
    guint64 gaps, resumed; /* counts, for the parser's owner */
    GByteArray *buf;       /* bytes from the first candidate not ruled out */
    guint64 buf_off;       /* stream offset of buf[0] */
    gsize replay;          /* after a resume paused: bytes of buf still to
                              parse before any new input */
    gsize limit;
} MpResync;

/* `limit`: the most bytes a probe looks at from one position. */
void mp_resync_init(MpResync *r, gsize limit);
void mp_resync_clear(MpResync *r);

/* `len` bytes are missing at stream offset `off` (where the parser
 * stands: it abandons the record it was reading).  Bytes held from
 * before the gap are dropped (skipped): a record cannot span it. */
void mp_resync_gap(MpResync *r, guint64 off, guint64 len);

/* TRUE while the parser must feed through mp_resync_feed(). */
static inline gboolean
mp_resync_active(const MpResync *r)
{
    return r->scanning || r->replay > 0;
}

/* Feeds `len` bytes (caller keeps ownership) while scanning or
 * replaying: every byte is taken (copied where a probe needs more),
 * and once a position is trusted the parser parses from there through
 * ops->feed.  While still scanning, the parser's stream offset `*off`
 * is set after the bytes held.  Same contract as a parser's feed. */
MpFeedStatus mp_resync_feed(MpResync *r, const MpResyncOps *ops,
                            gpointer parser, guint64 *off, const guint8 *buf,
                            gsize len, gsize *consumed, GError **error);

/* The input ended while scanning: what was held is skipped.
 * @return TRUE if the parser was scanning (it resumed nowhere). */
gboolean mp_resync_finish(MpResync *r);
