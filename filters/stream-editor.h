/* stream-editor.h: applies a filter chain to one channel's byte stream.
 *
 * The channel's bytes are parsed as they pass; the editor sits between the
 * parser and the writer:
 *
 *   chunk --> mp_stream_editor_begin() --> parser --> records
 *                                                       |
 *        mp_stream_editor_record() <--------------------+
 *                 | the chain rewrites a record: the bytes before it
 *                 | go out, then its replacement
 *   mp_stream_editor_end() --> the bytes of complete records go out
 *
 * Bytes of a record still incomplete at the end of a chunk are held until
 * the record completes (a filter may still rewrite it): at most one record
 * (a page, a block chunk, a vmdesc), and never more than `hold_limit`
 * bytes, past which the editor gives up editing and passes everything on.
 * Records inside a PACKAGED blob are never rewritten (the blob's length is
 * already on the wire).  When the parser cannot follow any more, the caller
 * says so (`following` FALSE) and from then on the editor passes every
 * byte on as it comes, so editing never breaks a stream it cannot parse.
 *
 * It emits in stream order.  A `shrink_only` editor never lets the output
 * run ahead of the input: up to any byte of a chunk, it emits no more than
 * what it held before the chunk plus the chunk's bytes before that one (a
 * replacement longer than its record is not used).  So a writer may take
 * the chunk's bytes in place (relay-channel.h).
 */
#pragma once

#include <glib.h>
#include "filter.h"

typedef struct MpStreamEditor MpStreamEditor;

/* Where bytes go out (borrowed; copy them). */
typedef void (*MpStreamEmitFunc)(const guint8 *buf, gsize len,
                                 gpointer user_data);

/* `filters`: MpFilter* in order, borrowed (must outlive the editor), may
 * be empty.  `channel` is handed to the filters.  Bytes go to `emit`.
 * `shrink_only`: see above.
 * @return a new editor; free with mp_stream_editor_free(). */
MpStreamEditor *mp_stream_editor_new(GPtrArray *filters, guint channel,
                                     gsize hold_limit, gboolean shrink_only,
                                     MpStreamEmitFunc emit,
                                     gpointer user_data);
void mp_stream_editor_free(MpStreamEditor *ed); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpStreamEditor, mp_stream_editor_free)

/* The next `len` bytes of the stream arrive (borrowed until
 * mp_stream_editor_end()); their records follow. */
void mp_stream_editor_begin(MpStreamEditor *ed, const guint8 *buf, gsize len);

/* A record the parser reported while the chunk of the current
 * begin()/end() pair was fed (offsets in the same stream as the bytes:
 * the first byte given to the editor is offset 0). */
void mp_stream_editor_record(MpStreamEditor *ed, const MpRecord *rec);

/* Where `rec`, just given to mp_stream_editor_record(), goes out: at
 * output offset *out_off (bytes emitted before it), *out_len bytes (its
 * replacement's length if a filter rewrote it).  @return FALSE if it is
 * not placed (passthrough, or not in the bytes at hand). */
gboolean mp_stream_editor_placed(const MpStreamEditor *ed, const MpRecord *rec,
                                 guint64 *out_off, gsize *out_len);

/* The chunk was parsed.  `following` FALSE: the parser gave up or ended;
 * everything held goes out and so does every later byte, unedited. */
void mp_stream_editor_end(MpStreamEditor *ed, gboolean following);

/* The stream ended: whatever is held goes out. */
void mp_stream_editor_flush(MpStreamEditor *ed);

/* Bytes held back, to go out before any of the next chunk's. */
gsize mp_stream_editor_held(const MpStreamEditor *ed);

/* TRUE once the editor passes everything on (not following, or the hold
 * limit was hit). */
gboolean mp_stream_editor_passthrough(const MpStreamEditor *ed);

/* Bytes given to the editor, and bytes it emitted. */
guint64 mp_stream_editor_bytes_in(const MpStreamEditor *ed);
guint64 mp_stream_editor_bytes_out(const MpStreamEditor *ed);
