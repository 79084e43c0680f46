/* capture.h: the relay's --capture DIR writer.
 *
 * Every connection of every session, both directions, byte for byte, with
 * the time each chunk was read, in the format of docs/capture-format.md:
 *   DIR/index.json                 sessions, channels, files
 *   DIR/s<S>-c<C>-<to-dst|to-src>.bin   the bytes
 *   DIR/s<S>-c<C>-<to-dst|to-src>.idx   be64 time_us, be64 offset per chunk
 * index.json is rewritten (atomically) whenever a channel opens, is
 * classified or ends, so a capture cut short by a crash stays readable up
 * to the last buffered write.
 */
#pragma once

#include <glib.h>
#include "channel-types.h"

typedef struct MpCapture MpCapture;

/* Creates DIR (and parents) and an empty index.json; `listen` and `to`
 * are recorded in it.
 * @return a new writer, or NULL with @error set. */
MpCapture *mp_capture_new(const char *dir, const char *listen, const char *to,
                          GError **error);
/* Flushes and closes every file and writes index.json.  Accepts NULL. */
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
/* `len` bytes read in `dir` at `now_us` (caller keeps the bytes). */
void mp_capture_data(MpCapture *c, guint session, guint channel, MpDir dir,
                     const guint8 *buf, gsize len, gint64 now_us);
/* `dir` ended: "fin", "reset", "aborted". */
void mp_capture_end(MpCapture *c, guint session, guint channel, MpDir dir,
                    const char *how, gint64 now_us);
/* Flushes buffered data to the files (the relay calls it every tick). */
void mp_capture_flush(MpCapture *c);

/* The first write error, if any (the capture stops writing then; the
 * relay goes on).  @return borrowed, or NULL. */
const GError *mp_capture_error(const MpCapture *c);
