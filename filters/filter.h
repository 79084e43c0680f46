/* filter.h: a record transformer between a channel's parser and its writer.
 *
 *   bytes --> parser --> records --> [filter] --> [filter] --> bytes out
 *                           |                                     ^
 *                           +--- kept: its bytes, verbatim -------+
 *
 * A filter sees every record of the channels it is given (main, recovery
 * and postcopy-preempt towards the destination) together with the record's
 * bytes as they came.  It either keeps the record (its bytes go out
 * untouched) or writes what replaces it.  Records pass the filters of a
 * session's chain in order; the first filter that rewrites a record is the
 * last to see it (a replacement is not parsed again).  The stream editor
 * (stream-editor.h) applies the chain to a byte stream.
 *
 * A replacement must be a valid encoding of the same meaning for the
 * destination QEMU: the destination's guest memory after loading the
 * stream must be the same as without the filter.  In the relay it is no
 * longer than the record (or the record is kept: the relay writes the
 * stream in place, see stream-editor.h).
 */
#pragma once

#include <glib.h>
#include <json-c/json.h>
#include "mp-record.h"

typedef struct MpFilter MpFilter;

struct MpFilter {
    const char *name;
    /* `rec` of session channel `channel` and its rec->length bytes on the
     * wire (`wire`, borrowed).  To change the record, append what replaces
     * it to `out` and return TRUE; FALSE keeps it as it came. */
    gboolean (*rewrite)(MpFilter *self, guint channel, const MpRecord *rec,
                        const guint8 *wire, GByteArray *out);
    /* @return the filter's counters as a new JSON object. */
    json_object *(*report)(MpFilter *self);
    void (*destroy)(MpFilter *self);
};

/* Destroys `f`.  Accepts NULL. */
static inline void
mp_filter_free(MpFilter *f)
{
    if (f)
        f->destroy(f);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpFilter, mp_filter_free)
