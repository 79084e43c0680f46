/* out-scheduler.h: what a stage may ask of the queue a pipeline's output
 * waits in before it is written (the relay: the write queue of a
 * channel's direction to the destination, relay-channel.h).
 *
 * A stage that reorders the stream (the post-copy lane, pcopy-lane.h)
 * does not change records as they pass: it learns where each record was
 * placed (MpStage.placed) and later asks the scheduler to send a queued
 * record earlier.  The queued bytes never move; the scheduler applies
 * such changes as the writer reaches them.  Offsets are the pipeline's
 * output offsets (bytes written to its sink; inserted ones not counted).
 */
#pragma once

#include <glib.h>

typedef struct {
    /* @return the offset of the next byte to be written (everything
     * before it is gone). */
    guint64 (*head)(gpointer q);
    /* @return the queued bytes [at, at + len), valid until the queue
     * changes, or NULL if they are not all queued. */
    const guint8 *(*peek)(gpointer q, guint64 at, gsize len);
    /* The queued record [at, at + len) goes out before the queued byte
     * `front` instead, as the `n` bytes `bytes` (copied; its header may
     * differ, e.g. name its block); `tag` (not NULL) comes back through
     * the owner's "written" notice once its last byte is written.
     * @return FALSE if nothing changed. */
    gboolean (*move_to_front)(gpointer q, guint64 at, gsize len,
                              guint64 front, const guint8 *bytes, gsize n,
                              gpointer tag);
    /* The queued record header [at, at + len) goes out as the `n` bytes
     * `bytes` (copied: a CONTINUE header that names its block).  @return
     * FALSE if nothing changed (not queued, already being written, or
     * already rewritten). */
    gboolean (*rewrite_header)(gpointer q, guint64 at, gsize len,
                               const guint8 *bytes, gsize n);
    /* Read ahead: up to `bytes` may wait in the queue. */
    void (*set_read_ahead)(gpointer q, gsize bytes);
    /* set_read_ahead(about `bytes`) may come later: ready the memory for
     * it now, without reading ahead yet. */
    void (*prepare_read_ahead)(gpointer q, gsize bytes);
    /* Keep at most `bytes` in the kernel below the queue, so that what
     * waits stays where it can still be moved.  @return FALSE with
     * @error set if that cannot be had. */
    gboolean (*set_low_latency)(gpointer q, gsize bytes, GError **error);
} MpOutSchedulerOps;

typedef struct {
    const MpOutSchedulerOps *ops;
    gpointer q;
} MpOutScheduler;
