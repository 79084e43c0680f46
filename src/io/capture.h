/* capture.h: the relay's --capture DIR writer.
 *
 * Every connection of every session, both directions, byte for byte, with
 * the time each chunk was read, in the format of docs/capture-format.md
 * (version 2):
 *   DIR/index.json                      the relay's addresses, once
 *   DIR/s<S>.json                       session S: its channels and files
 *   DIR/s<S>-c<C>-<to-dst|to-src>.bin   the bytes
 *   DIR/s<S>-c<C>-<to-dst|to-src>.idx   be64 time_us, be64 offset per chunk
 *
 * The calls below only queue work: a writer thread does every write, so a
 * slow or full disk never stalls the relay's event loop.  The queue holds
 * at most MP_CAPTURE_QUEUE_LIMIT bytes (the chunks and their bookkeeping);
 * a capture whose disk falls that far behind stops, as one whose writes
 * fail does, with an error saying where (file, offset) and why, and what
 * was written up to there reads back.  The relay goes on either way.  A
 * direction's files are closed when it ends, a session's when it ends.
 *
 * DIR must be new or empty: an earlier capture is never overwritten.  It
 * is 0700 and every file 0600, created with O_EXCL | O_NOFOLLOW.
 */
#pragma once

#include <glib.h>
#include <json-c/json.h>
#include "channel-types.h"

/* The writer thread's backlog at most: a few seconds of a fast stream for
 * a disk that hiccups, and the bound on the memory a capture takes. */
#define MP_CAPTURE_QUEUE_LIMIT (64u << 20)

typedef struct MpCapture MpCapture;

/* Creates DIR (see above) and its index.json (`listen` and `to` are
 * recorded in it), and starts the writer thread; callbacks of
 * mp_capture_session_end() run on the thread-default main context.
 * @return a new writer, or NULL with @error set. */
MpCapture *mp_capture_new(const char *dir, const char *listen, const char *to,
                          GError **error);
/* Writes what is queued, closes every file (sessions still open keep no
 * end) and stops the thread; session-end callbacks not yet run are dropped
 * (their destroy notify runs).  After an overflow it waits at most 5 s for
 * a writer stuck on its disk, then leaves it to finish (and free the
 * rest) on its own.  Accepts NULL. */
void mp_capture_free(MpCapture *c);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpCapture, mp_capture_free)

/* A session starts (monotonic `start_us`; wall clock for the index). */
void mp_capture_session(MpCapture *c, guint session, gint64 start_us,
                        gint64 start_wall_us);
/* Connection `channel` of `session` opened (peer copied; may be NULL). */
void mp_capture_channel(MpCapture *c, guint session, guint channel,
                        const char *peer, gint64 now_us);
void mp_capture_kind(MpCapture *c, guint session, guint channel,
                     MpChanKind kind);
/* `len` bytes read in `dir` at `now_us` (copied: the caller keeps them). */
void mp_capture_data(MpCapture *c, guint session, guint channel, MpDir dir,
                     const guint8 *buf, gsize len, gint64 now_us);
/* `dir` ended, `how`; its files are closed. */
void mp_capture_end(MpCapture *c, guint session, guint channel, MpDir dir,
                    MpEndReason how, gint64 now_us);

/* Called on the main context once everything of the session is written
 * (or failed) and its files are closed. */
typedef void (*MpCaptureDone)(MpCapture *c, guint session, gpointer data);

/* The session is over: its files are closed and s<S>.json written for the
 * last time; then `done` (may be NULL) is called.  `destroy` (may be
 * NULL) frees `data` after `done`, or if `done` never runs. */
void mp_capture_session_end(MpCapture *c, guint session, gint64 now_us,
                            MpCaptureDone done, gpointer data,
                            GDestroyNotify destroy);

/* Blocks until the writer thread has done everything queued (tests). */
void mp_capture_sync(MpCapture *c);

/* The first error, if any (the capture stops writing then; the relay
 * goes on).  @return borrowed (valid until mp_capture_free), or NULL. */
const GError *mp_capture_error(MpCapture *c);

/* For the report: `{dir, complete, error, file, offset, session}`: the
 * capture as written so far; `complete` is FALSE and the rest says where
 * and why once it failed (`session`: in which one).
 * @return a new object (caller owns). */
json_object *mp_capture_status(MpCapture *c);
