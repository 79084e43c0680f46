/* mapped-ram.h: analysis of a mapped-ram file (QEMU 9+ `migrate file:`
 * with the mapped-ram capability, with or without multifd).
 *
 * The stream in such a file is not contiguous: each RAM block's entry in
 * the block list ends with a MappedRamHeader naming a bitmap (a bit per
 * page: set if the page was written) and a region where page i sits at
 * pages_offset + i * page_size; the stream goes on after that region.
 * Reading follows the bitmaps: a summary reads the stream and the bitmaps,
 * never the pages; --dump-ram reads the pages whose bit is set (the others
 * are zero pages). */
#pragma once

#include <glib.h>
#include <json-c/json.h>
#include "analyze-file.h"

/* As mp_analyze_file for a file whose stream, from offset `start` (0, or
 * a libvirt "sparse" image's data offset), lists mapped-ram.  The
 * headers' offsets are offsets in the file. */
json_object *mp_mapped_ram_analyze(const char *path,
                                   const MpAnalyzeOptions *opt, guint64 start,
                                   gboolean *ok);
