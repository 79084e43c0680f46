/* fuzz-util.h: one differential driver for every parser's libFuzzer
 * target.  The first input byte selects the parser's options and where
 * the rest is split; the driver feeds the rest whole, then in chunks with
 * a callback that pauses, and aborts if the two runs disagree on any
 * record (offsets, lengths, fields, data) or on the error. */
#pragma once

#include <glib.h>
#include "parse-common.h"

typedef struct {
    /* `sel` is the first input byte; options may be taken from it */
    gpointer (*create)(guint8 sel, MpRecordFunc cb, gpointer user_data);
    MpFeedStatus (*feed)(gpointer parser, const guint8 *buf, gsize len,
                         gsize *consumed, GError **error);
    gboolean (*finish)(gpointer parser, GError **error);
    void (*destroy)(gpointer parser);
    /* bytes that the record's data pointer covers (0: none); the driver
     * reads them all, so an over-short buffer trips ASan */
    gsize (*data_len)(const MpRecord *rec, guint8 sel, const guint8 **data);
} MpFuzzOps;

/* Runs `data` (selector byte first) through `ops`; aborts on a mismatch.
 * @return 0, as LLVMFuzzerTestOneInput wants. */
int mp_fuzz_run(const MpFuzzOps *ops, const guint8 *data, gsize size);
