/* session-tap.h: the parsing side of one migration session.
 *
 * The relay (live) and the capture reader (replay) hand it the bytes of
 * every connection of one migration, per direction and in order, with
 * the time they passed.  It tells each connection's kind from its first
 * bytes (channel-types.h), runs the parser of that kind on each direction
 * and hands the records to the session's metrics.  Parsing never decides
 * anything about forwarding: when a parser gives up, the tap logs it once
 * (channel, direction, offset, why), marks the metrics of that direction
 * partial and only counts its bytes from there on.
 *
 *   to-dst  main      qmig-parser (recovery: headerless, resumes the
 *                     previous main channel's stream)
 *           multifd   mfd-parser
 *           preempt   ram-parser, with the main channel's block list
 *   to-src  main      rp-parser (the return path); other kinds carry
 *                     nothing and are only counted
 */
#pragma once

#include <glib.h>
#include "channel-types.h"
#include "mp-record.h"
#include "metrics.h"
#include "vmdesc.h"

typedef struct MpSessionTap MpSessionTap;

/* Classifies a connection from its first `len` bytes (section 12 of the
 * stream reference).  `later`: a main channel exists in the session.
 * @return MP_CHAN_UNKNOWN while fewer than 4 bytes could still turn out to
 * be a magic number; MP_CHAN_RECOVERY for a command byte; MP_CHAN_FOREIGN
 * for a first connection that is none of main, multifd, recovery. */
MpChanKind mp_chan_classify(const guint8 *buf, gsize len, gboolean later);

/* `metrics` is borrowed and must outlive the tap.
 * @return a new tap; free with mp_session_tap_free(). */
MpSessionTap *mp_session_tap_new(MpMetrics *metrics, guint session);
void mp_session_tap_free(MpSessionTap *t); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpSessionTap, mp_session_tap_free)

/* Log lines (a parser giving up, TLS) as g_message: on by default; the
 * capture reader turns them off (the errors are in the document). */
void mp_session_tap_set_logging(MpSessionTap *t, gboolean on);

/* Every record also goes to `fn` (e.g. `analyze --events`). */
typedef void (*MpTapRecordFunc)(guint channel, MpDir dir, const MpRecord *rec,
                                gpointer user_data);
void mp_session_tap_set_record_func(MpSessionTap *t, MpTapRecordFunc fn,
                                    gpointer user_data);

/* The stream's vmdesc, known only after the fact (a capture's main
 * channel ends with it): device sections are then sliced and the stream
 * followed to its EOF.  Call before the first feed; takes a reference. */
void mp_session_tap_set_vmdesc(MpSessionTap *t, MpVmdesc *vmdesc);

/* Connection `channel` (0, 1, ... in accept order) joined the session. */
void mp_session_tap_add(MpSessionTap *t, guint channel, const char *peer,
                        gint64 now_us);

/* The relay's checks told what `channel` carries (before its first
 * bytes): it is parsed as that kind, not classified from its bytes. */
void mp_session_tap_set_kind(MpSessionTap *t, guint channel, MpChanKind kind,
                             gint64 now_us);

/* `len` bytes passed in `dir` (caller keeps ownership). */
void mp_session_tap_feed(MpSessionTap *t, guint channel, MpDir dir,
                         const guint8 *buf, gsize len, gint64 now_us);

/* `dir` ended: how = "fin", "reset" or "aborted" (see metrics.h). */
void mp_session_tap_end(MpSessionTap *t, guint channel, MpDir dir,
                        const char *how, gint64 now_us);

/* @return what `channel` carries (MP_CHAN_UNKNOWN before its first
 * bytes). */
MpChanKind mp_session_tap_kind(const MpSessionTap *t, guint channel);

/* @return TRUE while `dir` of `channel` is parsed (or its kind is still
 * unknown); FALSE once its parser gave up or its stream ended, or for a
 * kind that has no parser. */
gboolean mp_session_tap_following(const MpSessionTap *t, guint channel,
                                  MpDir dir);

/* @return TRUE if the main channel's stream has reached post-copy and has
 * not ended with its EOF: a recovery channel may come. */
gboolean mp_session_tap_in_postcopy(const MpSessionTap *t);
