/* record-format.h: text form of a record (one line, no newline). */
#pragma once

#include <glib.h>
#include "mp-record.h"

/* Appends the description of `rec` to `out`.  Caller keeps ownership. */
void mp_record_describe(const MpRecord *rec, GString *out);
