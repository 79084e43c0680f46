/* stage.h: one step of a channel pipeline's stage chain (pipeline.h).
 *
 * A stage sees each complete record of its pipeline's stream (that no
 * earlier stage changed) together with the record's bytes as they came
 * (`wire`, borrowed for the call), and answers with one of:
 *
 *   MP_STAGE_PASS     the record goes on as it came (the next stage sees
 *                     it; the bytes leave without a copy when nothing is
 *                     pending before them)
 *   MP_STAGE_REPLACE  `out->bytes` holds what goes out instead: shorter
 *                     or longer than the record
 *   MP_STAGE_TAKE     the stage took the record and called
 *                     mp_stage_out_slot(): a slot in the output, in the
 *                     record's place, that it fills later (when it
 *                     releases a held record at a sync point, at the end
 *                     or on a timer, or from a worker thread); the
 *                     pipeline emits nothing past an unfilled slot, so
 *                     the output stays in stream order
 *
 * The first stage that replaces or takes a record is the last to see it
 * (its output is not parsed again).  A replacement or a filled slot must
 * be a valid encoding of the same meaning for the receiving QEMU.
 *
 * Each stage counts what it did in `stats` (bytes of the records it
 * changed before and after, records changed, CPU time it spent; the
 * pipeline adds the time of record() calls itself) and may add a report
 * of its own.
 */
#pragma once

#include <glib.h>
#include <json-c/json.h>
#include "channel-types.h"
#include "mp-record.h"

typedef struct MpStage MpStage;
typedef struct MpSlot MpSlot;
typedef struct MpStageOut MpStageOut;

typedef enum {
    MP_STAGE_PASS,
    MP_STAGE_REPLACE,
    MP_STAGE_TAKE,
} MpStageVerdict;

/* Why a stage is asked to release what it holds. */
typedef enum {
    MP_STAGE_FLUSH_SYNC,  /* a sync point of the stream (a RAM section's
                             end, a section footer, EOF, a command) */
    MP_STAGE_FLUSH_TIMER, /* the owner's timer (mp_pipeline_flush()) */
    MP_STAGE_FLUSH_END,   /* the stream ends, or is no longer followed */
} MpStageFlush;

/* What a stage saved or cost; the same for every stage, so that a
 * report can add them up. */
typedef struct {
    guint64 records_changed; /* replaced or taken */
    guint64 bytes_in;        /* of those records, as they came */
    guint64 bytes_out;       /* what went out for them */
    gint64 cpu_us;           /* time in the stage's calls on the owner's
                                thread (monotonic clock, estimated from
                                one record() call in 64: CPU time unless
                                the thread was preempted), plus the
                                thread CPU time its workers add
                                (mp_stage_thread_cpu_us()) */
} MpStageStats;

/* Where the record's output goes (given to record()). */
struct MpStageOut {
    GByteArray *bytes; /* MP_STAGE_REPLACE: append the replacement */
    MpSlot *slot;      /* MP_STAGE_TAKE: set by mp_stage_out_slot() */
    gpointer owner;    /* the pipeline's (private) */
    MpStage *stage;    /* the stage given the record */
};

struct MpStage {
    const char *name;
    /* `rec` of channel `channel` (direction `dir`), `wire` its
     * rec->length bytes (borrowed for the call).  @return the verdict. */
    MpStageVerdict (*record)(MpStage *self, guint channel, MpDir dir,
                             const MpRecord *rec, const guint8 *wire,
                             MpStageOut *out);
    /* Optional: fill every slot taken so far (or have workers fill them).
     * A stage holding records must release them at MP_STAGE_FLUSH_END. */
    void (*flush)(MpStage *self, MpStageFlush why);
    /* Optional: every record of an edited stream (also those an earlier
     * stage changed), in order.  `placed`: it goes out as `out_len` bytes
     * at output offset `out_off` (bytes written to the sink before it,
     * inserted ones not counted); FALSE when that is not known (behind a
     * slot, inserted, not edited: passthrough or inside a chunk's
     * first bytes). */
    void (*placed)(MpStage *self, const MpRecord *rec, gboolean placed,
                   guint64 out_off, gsize out_len);
    /* Optional: the output of every record seen so far is in the sink. */
    void (*written)(MpStage *self);
    /* Optional: @return the stage's own counters as a new JSON object. */
    json_object *(*report)(MpStage *self);
    void (*destroy)(MpStage *self);
    MpStageStats stats;
};

/* The record goes out through a slot that the stage fills later with
 * mp_slot_fill(); sets out->slot.  @return the slot (owned by the
 * pipeline, valid until filled). */
MpSlot *mp_stage_out_slot(MpStageOut *out);

/* Fills `slot` with `bytes` (takes them; NULL: nothing goes out).  Any
 * thread; the pipeline emits it from its own thread, in order. */
void mp_slot_fill(MpSlot *slot, GBytes *bytes);

/* @return the stats and the stage's report as a new JSON object:
 * {records_changed, bytes_in, bytes_out, cpu_us, ...report()}. */
json_object *mp_stage_report(MpStage *st);

/* @return the calling thread's CPU time in microseconds. */
gint64 mp_stage_thread_cpu_us(void);

/* Destroys `st`.  Accepts NULL. */
static inline void
mp_stage_free(MpStage *st)
{
    if (st)
        st->destroy(st);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpStage, mp_stage_free)
