/* session.h: the pipelines of one migration session, and what they share.
 *
 * The relay (live) and the capture reader (replay) have one MpSession per
 * migration: it makes the two pipelines (pipeline.h) of every connection,
 * tells each connection's kind from its first bytes (channel-types.h)
 * when nobody else did, and keeps what channels share: the main channel
 * whose block list a preempt channel reads and whose stream a recovery
 * channel resumes, the vmdesc, whether the migration is in post-copy.
 * It observes every pipeline for the session's metrics.  It never
 * decides anything about forwarding: when a parser gives up, it logs it
 * once (channel, direction, offset, why), marks the metrics of that
 * direction partial and only counts its bytes from there on.
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
#include "pipeline.h"
#include "metrics.h"
#include "vmdesc.h"

typedef struct MpSession MpSession;

/* Classifies a connection from its first `len` bytes (section 12 of the
 * stream reference).  `later`: a main channel exists in the session.
 * @return MP_CHAN_UNKNOWN while fewer than 4 bytes could still turn out to
 * be a magic number; MP_CHAN_RECOVERY for a command byte; MP_CHAN_FOREIGN
 * for a first connection that is none of main, multifd, recovery. */
MpChanKind mp_chan_classify(const guint8 *buf, gsize len, gboolean later);

/* `metrics` is borrowed and must outlive the session.
 * @return a new session; free with mp_session_free(). */
MpSession *mp_session_new(MpMetrics *metrics, guint session);
void mp_session_free(MpSession *s); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpSession, mp_session_free)

/* Log lines (a parser giving up, TLS) as g_message: on by default; the
 * capture reader turns them off (the errors are in the document). */
void mp_session_set_logging(MpSession *s, gboolean on);

/* Every pipeline made from now on also gets observer `ops` (e.g.
 * `analyze --events`); `data` is handed to it. */
void mp_session_observe(MpSession *s, const MpPipelineObserver *ops,
                        gpointer data);

/* The stream's vmdesc, known only after the fact (a capture's main
 * channel ends with it): device sections are then sliced and the stream
 * followed to its EOF.  Call before the first feed; takes a reference. */
void mp_session_set_vmdesc(MpSession *s, MpVmdesc *vmdesc);

/* Connection `channel` (0, 1, ... in accept order) joined the session:
 * its two pipelines are made. */
void mp_session_add(MpSession *s, guint channel, const char *peer,
                    gint64 now_us);

/* The relay's checks told what `channel` carries (before its first
 * bytes): it is parsed as that kind, not classified from its bytes. */
void mp_session_set_kind(MpSession *s, guint channel, MpChanKind kind,
                         gint64 now_us);

/* @return the pipeline of `dir` of `channel` (added before). */
MpPipeline *mp_session_pipeline(MpSession *s, guint channel, MpDir dir);

/* `len` bytes passed in `dir` (caller keeps ownership): fed to its
 * pipeline. */
void mp_session_feed(MpSession *s, guint channel, MpDir dir,
                     const guint8 *buf, gsize len, gint64 now_us);

/* `dir` ended (its pipeline too). */
void mp_session_end(MpSession *s, guint channel, MpDir dir, MpEndReason how,
                    gint64 now_us);

/* @return what `channel` carries (MP_CHAN_UNKNOWN before its first
 * bytes). */
MpChanKind mp_session_kind(const MpSession *s, guint channel);

/* @return TRUE if the main channel's stream has reached post-copy and has
 * not ended with its EOF: a recovery channel may come. */
gboolean mp_session_in_postcopy(const MpSession *s);
