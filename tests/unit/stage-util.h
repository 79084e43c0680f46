/* stage-util.h: what the pipeline's tests share: captured streams and a
 * stage that makes records longer. */
#pragma once

#include <glib.h>
#include "pipeline.h"
#include "stage.h"

/* @return samples/streams/NAME.mig.zst, decompressed (the test fails if
 * it cannot be read). */
GByteArray *stage_util_load(const char *name);

/* Makes `st` a stage that turns every ZERO record of a zero page into a
 * PAGE record of 4096 zero bytes (the form QEMU 9.0+ sends with
 * zero-page-detection=none): the inverse of the zero stage, and longer
 * than what it replaces. */
void stage_util_inflate_init(MpStage *st);

/* What a stage_util_run() sink saw. */
typedef struct {
    GByteArray *out;     /* everything, in order */
    const guint8 *chunk; /* the feed in progress */
    gsize chunk_len;
    guint64 fed;
    guint64 inserted; /* bytes given to insert() */
    guint64 borrowed; /* bytes written straight from the fed buffer */
    gboolean in_place;
} StageUtilSink;

typedef struct {
    gsize chunk;               /* piece size, 0: the whole input at once */
    gboolean in_place;         /* as the relay's pipelines */
    gsize hold_limit;          /* 0: 2 MiB, the relay's */
    guint64 stop_following_at; /* the owner stops the parser after the
                                  piece that reaches it; 0: never */
    /* called after every feed, to look at the output so far */
    void (*after)(MpPipeline *p, StageUtilSink *s, gpointer data);
    gpointer after_data;
} StageUtilRun;

/* `in` through a main-channel pipeline with `stage` (may be NULL), each
 * piece a copy of exactly its bytes (as a socket read gives them).
 * Checks: the parser never gives up, in place the output never runs
 * ahead of the input, everything held goes out at the end.
 * @return the output; *sink (may be NULL): what the sink saw. */
GByteArray *stage_util_run(const GByteArray *in, MpStage *stage,
                           const StageUtilRun *opt, StageUtilSink *sink);

/* Fails the test at the first difference. */
void stage_util_assert_same(const GByteArray *a, const GByteArray *b);
