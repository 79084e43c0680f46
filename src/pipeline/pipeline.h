/* pipeline.h: the pipeline of one direction of one channel.
 *
 * The channel pipeline
 * --------------------
 * Every byte of a channel direction (the relay's socket reads, a stream
 * file, a capture being replayed, a fuzz input) goes through one
 * MpPipeline, the only place that feeds a parser, runs stages and
 * tells observers:
 *
 *   feed(buf, len, now)
 *     |
 *     +--> byte observers (capture, metrics' byte counts)
 *     |
 *     +--> parser of the channel's kind -----> record observers
 *     |    (qmig: main, recovery;              (metrics and analysis,
 *     |     ram: preempt; mfd: multifd;         analyze --events, relay
 *     |     rp: the return path)                admission, page requests)
 *     |          |
 *     |          v  each complete record with its bytes as they came
 *     |     [stage] -> [stage] -> ...   (zero pages, the post-copy lane,
 *     |          |                       later the tunnel's encoders)
 *     v          v
 *   output, in stream order: a list of segments
 *     [input bytes, borrowed] [owned bytes] [slot] [input bytes] ...
 *                                             ^ filled later by a stage
 *                                               (a held record released,
 *                                               a worker thread's result)
 *     |
 *     v  up to the first unfilled slot
 *   sink: write(bytes) / insert(bytes) / held(n)
 *   (the relay: the channel's write queue; tests and fuzz: a buffer)
 *     ^
 *     |  out-scheduler.h: a stage that reorders the stream (the post-copy
 *     |  lane) learns where each record was placed (MpStage.placed) and
 *     |  asks the queue to send a queued record earlier or to write out
 *     |  its block name; the queued bytes never move
 *
 * Untouched bytes go to the sink as pointers into the fed buffer (no
 * copy): the relay reads into its write queue and the sink's write
 * leaves them where they are.  Bytes of a record that is still
 * incomplete at the end of a feed are copied and held (at most one
 * record, at most `hold_limit` bytes), so that a stage can still replace
 * it; bytes behind an unfilled slot are copied into the output list.
 *
 * In-place sinks (the relay) take the bytes of a feed where they were
 * read, `held` bytes past the end of what is queued.  The pipeline
 * never writes more than that ahead of the fed bytes it has passed; an
 * output longer than what it replaces goes to the sink's insert() instead
 * (the relay queues it beside its buffer), so a stage may lengthen
 * records there too.
 *
 * The pipeline follows its stream while its parser does.  When the parser
 * gives up (the error goes to the observers) or the stream ends, what is
 * held goes out and every later byte passes as it came: a stream the
 * pipeline cannot parse is never broken.  Records inside a PACKAGED blob
 * are never changed (its length is already on the wire); multifd, TLS and
 * foreign channels are only parsed, never changed.
 *
 * At most `hold_limit` bytes wait behind an unfilled slot: past that the
 * stages are told to release everything (MP_STAGE_FLUSH_END) and the
 * pipeline waits for its workers.  Only the direction towards the
 * destination is edited; a sink on the return path gets its bytes as
 * they came.
 *
 * One thread owns a pipeline; only mp_slot_fill() may be called from
 * other threads (stage workers), and the owner learns of it through the
 * wake function (mp_pipeline_set_wake()) or at its next feed or end.
 */
#pragma once

#include <glib.h>
#include <json-c/json.h>
#include "channel-types.h"
#include "mp-record.h"
#include "stage.h"
#include "vmdesc.h"

typedef struct MpPipeline MpPipeline;
typedef struct MpQmigParser MpQmigParser;

/* Where the output goes.  Every function gets `data`. */
typedef struct {
    /* `len` bytes go out next (borrowed for the call). */
    void (*write)(gpointer data, const guint8 *buf, gsize len);
    /* In-place sinks: `len` bytes (borrowed) go out next, but must not
     * take the place of fed bytes (the output outgrew the input). */
    void (*insert)(gpointer data, const guint8 *buf, gsize len);
    /* Optional: the pipeline now holds `held` bytes that go out ahead of
     * the next feed's bytes (an in-place sink leaves that much room). */
    void (*held)(gpointer data, gsize held);
    gpointer data;
} MpPipelineSink;

typedef enum {
    MP_PIPELINE_UNKNOWN,   /* the channel's kind is not known yet */
    MP_PIPELINE_FOLLOWING, /* the parser follows the stream */
    MP_PIPELINE_ENDED,     /* the stream's grammar ended (EOF, EOS) */
    MP_PIPELINE_GAVE_UP,   /* the parser failed (see the observers) */
    MP_PIPELINE_STOPPED,   /* an observer stopped it, or the owner */
    MP_PIPELINE_PAUSED,    /* mp_pipeline_feed_until_pause() stopped after
                              a record an observer paused on */
    MP_PIPELINE_UNPARSED,  /* a kind with no parser (TLS, foreign, ...) */
} MpPipelineState;

/* "unknown", "following", "ended", "gave-up", "stopped", "paused",
 * "unparsed": for logs and test messages. */
const char *mp_pipeline_state_name(MpPipelineState state);

/* What an observer may watch; every member is optional. */
typedef struct {
    /* A record (borrowed for the call).  MP_REC_PAUSE stops the
     * pipeline's parser (state STOPPED): the observer says why; in
     * mp_pipeline_feed_until_pause() it only pauses (state PAUSED). */
    MpRecordAction (*record)(MpPipeline *p, const MpRecord *rec,
                             gpointer data);
    /* `len` bytes were fed (borrowed). */
    void (*bytes)(MpPipeline *p, const guint8 *buf, gsize len, gint64 now_us,
                  gpointer data);
    /* The parser gave up at input offset `off`. */
    void (*gave_up)(MpPipeline *p, guint64 off, const GError *err,
                    gpointer data);
    /* `len` bytes followed the end of the stream's grammar at `off`. */
    void (*trailing)(MpPipeline *p, guint64 off, gsize len, gpointer data);
    /* The stream ended (`how` as mp_pipeline_end() got it); `cut`: the
     * parser's error if it ended inside a record, else NULL. */
    void (*end)(MpPipeline *p, MpEndReason how, const GError *cut,
                gint64 now_us, gpointer data);
} MpPipelineObserver;

/* A kind-less stream's first bytes (a capture replayed): @return the kind
 * (after calling mp_pipeline_set_kind() as it sees fit), or
 * MP_CHAN_UNKNOWN to wait for more; `closed`: no more will come. */
typedef MpChanKind (*MpPipelineClassify)(MpPipeline *p, const guint8 *buf,
                                         gsize len, gboolean closed,
                                         gpointer data);

/* A pipeline for direction `dir` of channel `channel`, kind not known
 * yet.  @return a new pipeline; free with mp_pipeline_free(). */
MpPipeline *mp_pipeline_new(guint channel, MpDir dir);
void mp_pipeline_free(MpPipeline *p); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpPipeline, mp_pipeline_free)

/* What the channel carries; picks its parser.  `main`: the session's main
 * channel's pipeline (same direction), or NULL: a recovery channel
 * resumes its parser's stream, a preempt channel shares its RAM block
 * list.  Before the first feed (a to-src pipeline fed before its kind is
 * known is only counted).  Once. */
void mp_pipeline_set_kind(MpPipeline *p, MpChanKind kind,
                          const MpPipeline *main);
/* For mp_pipeline_set_kind() with MP_CHAN_UNKNOWN streams. */
void mp_pipeline_set_classify(MpPipeline *p, MpPipelineClassify fn,
                              gpointer data);
/* The stream's vmdesc (known after the fact): device sections are
 * sliced.  Main channel, before its first section. */
void mp_pipeline_set_vmdesc(MpPipeline *p, MpVmdesc *vmdesc);
/* `name` in parse errors ("channel 2 multifd"); default from the kind. */
void mp_pipeline_set_name(MpPipeline *p, const char *name);

/* `fn(data)` is called, from the worker's thread, when a worker filled a
 * slot: the owner should call mp_pipeline_drain() from its own thread
 * (e.g. through g_main_context_invoke()). */
void mp_pipeline_set_wake(MpPipeline *p, void (*fn)(gpointer data),
                          gpointer data);

/* Adds an observer (`ops` copied), called after those added before. */
void mp_pipeline_observe(MpPipeline *p, const MpPipelineObserver *ops,
                         gpointer data);

/* The output goes to `sink` (copied).  Without a sink the pipeline only
 * parses and observes (the caller forwards the bytes).  `in_place`: see
 * above.  `hold_limit`: the most it copies and holds (a record longer
 * than that stops editing: everything passes on).  Before the first
 * feed. */
void mp_pipeline_set_sink(MpPipeline *p, const MpPipelineSink *sink,
                          gboolean in_place, gsize hold_limit);
/* Appends `stage` (borrowed: must outlive the pipeline) to the chain. */
void mp_pipeline_add_stage(MpPipeline *p, MpStage *stage);

/* `len` more bytes of the stream (borrowed for the call). */
void mp_pipeline_feed(MpPipeline *p, const guint8 *buf, gsize len,
                      gint64 now_us);
/* A reader that skips parts of its input (a mapped-ram file: each RAM
 * block's bitmap and pages lie between two records of the stream): feeds
 * up to `len` bytes and stops right after a record an observer answered
 * with MP_REC_PAUSE (state PAUSED; the next call goes on from there, at
 * whatever input the reader gives it).  Only for a pipeline without a
 * sink whose kind is set.  @return the bytes the parser used: all of
 * them unless it paused, ended (the rest trails the stream) or gave up. */
gsize mp_pipeline_feed_until_pause(MpPipeline *p, const guint8 *buf,
                                   gsize len, gint64 now_us);
/* The main channel's parser accepts mapped-ram (QEMU 9+ `file:`
 * migration with the mapped-ram capability), whose blocks carry a header
 * after their list entry.  After mp_pipeline_set_kind(). */
void mp_pipeline_allow_mapped_ram(MpPipeline *p);

/* Asks the stages to release what they hold (a timer), and writes what
 * can go out. */
void mp_pipeline_flush(MpPipeline *p);
/* Writes what workers finished (the owner's thread, after a wake-up). */
void mp_pipeline_drain(MpPipeline *p);
/* The owner stops parsing: what is held goes out, later bytes pass. */
void mp_pipeline_stop(MpPipeline *p);
/* `len` bytes of the stream are missing here (a capture's gap; a
 * pipeline without a sink only).  The main channel's and multifd
 * channels' parsers look for the next record they trust and resume there
 * (an MP_REC_RESYNC record to the observers, stream-resync.h); the
 * others stop as mp_pipeline_stop() does.  @return TRUE if the parser
 * looks for a record to resume at. */
gboolean mp_pipeline_gap(MpPipeline *p, guint64 len, gint64 now_us);
/* The stream ended: stages release everything, workers are waited for,
 * everything goes out, the parser checks the end.  Once. */
void mp_pipeline_end(MpPipeline *p, MpEndReason how, gint64 now_us);

MpChanKind mp_pipeline_kind(const MpPipeline *p);
/* The time of the feed (or gap, or end) in progress, or of the last. */
gint64 mp_pipeline_now(const MpPipeline *p);
guint mp_pipeline_channel(const MpPipeline *p);
MpDir mp_pipeline_dir(const MpPipeline *p);
const char *mp_pipeline_name(const MpPipeline *p);
MpPipelineState mp_pipeline_state(const MpPipeline *p);
/* TRUE while the parser follows (or the kind is not known yet). */
gboolean mp_pipeline_following(const MpPipeline *p);
/* TRUE once mp_pipeline_end() ran. */
gboolean mp_pipeline_ended(const MpPipeline *p);
/* The main channel's parser (for a recovery channel's), or NULL. */
const MpQmigParser *mp_pipeline_qmig(const MpPipeline *p);
/* Bytes fed; bytes given to the sink (written and inserted). */
guint64 mp_pipeline_bytes_in(const MpPipeline *p);
guint64 mp_pipeline_bytes_out(const MpPipeline *p);
/* Bytes held to go out ahead of the next feed's. */
gsize mp_pipeline_held(const MpPipeline *p);
/* TRUE once every byte passes on unchanged. */
gboolean mp_pipeline_passthrough(const MpPipeline *p);
