/* stream-editor.c: a filter chain applied to a byte stream (see
 * stream-editor.h).
 *
 * Offsets, all in the channel's stream:
 *
 *   hold_off     base              chunk_off               chunk_off+len
 *   |--- hold ---|                 |-------- chunk ---------|
 *                ^ next byte to go out      ^ safe: records complete
 *
 * `hold` keeps the bytes of earlier chunks not yet emitted; bytes up to
 * `safe` belong to complete records and may go out; the rest waits for
 * its record to complete.
 */
#include "config.h"
#include <string.h>
#include "stream-editor.h"

struct MpStreamEditor {
    GPtrArray *filters; /* MpFilter*, borrowed */
    guint channel;
    gsize hold_limit;
    gboolean shrink_only;
    MpStreamEmitFunc emit;
    gpointer user_data;

    GByteArray *hold;
    guint64 hold_off;
    guint64 base;
    const guint8 *chunk; /* between begin() and end() */
    gsize chunk_len;
    guint64 chunk_off;
    guint64 safe;
    guint64 no_edit_until; /* the end of a PACKAGED blob */
    gboolean passthrough;

    GByteArray *out;  /* a filter's replacement */
    GByteArray *wire; /* a record split between hold and chunk */
    guint64 bytes_in, bytes_out;
    /* the last record given to mp_stream_editor_record() */
    gboolean placed;
    guint64 placed_rec, placed_off;
    gsize placed_len;
};

MpStreamEditor *
mp_stream_editor_new(GPtrArray *filters, guint channel, gsize hold_limit,
                     gboolean shrink_only, MpStreamEmitFunc emit,
                     gpointer user_data)
{
    MpStreamEditor *ed = g_new0(MpStreamEditor, 1);
    ed->filters = filters;
    ed->channel = channel;
    ed->hold_limit = hold_limit;
    ed->shrink_only = shrink_only;
    ed->emit = emit;
    ed->user_data = user_data;
    ed->hold = g_byte_array_new();
    ed->out = g_byte_array_new();
    ed->wire = g_byte_array_new();
    return ed;
}

void
mp_stream_editor_free(MpStreamEditor *ed)
{
    if (!ed)
        return;
    g_byte_array_unref(ed->hold);
    g_byte_array_unref(ed->out);
    g_byte_array_unref(ed->wire);
    g_free(ed);
}

static void
put(MpStreamEditor *ed, const guint8 *buf, gsize len)
{
    if (!len)
        return;
    ed->bytes_out += len;
    ed->emit(buf, len, ed->user_data);
}

/* Emits [base, to): from the hold first, then from the chunk. */
static void
emit_to(MpStreamEditor *ed, guint64 to)
{
    if (to <= ed->base)
        return;
    if (ed->base < ed->chunk_off) {
        guint64 n = MIN(to, ed->chunk_off) - ed->base;
        put(ed, ed->hold->data + (ed->base - ed->hold_off), n);
        ed->base += n;
    }
    if (to > ed->base) {
        put(ed, ed->chunk + (ed->base - ed->chunk_off), to - ed->base);
        ed->base = to;
    }
}

void
mp_stream_editor_begin(MpStreamEditor *ed, const guint8 *buf, gsize len)
{
    ed->bytes_in += len;
    if (ed->passthrough) {
        put(ed, buf, len);
        ed->base += len;
        ed->hold_off = ed->chunk_off = ed->safe = ed->base;
        ed->chunk = NULL;
        ed->chunk_len = 0;
        return;
    }
    ed->chunk = buf;
    ed->chunk_len = len;
    ed->chunk_off = ed->hold_off + ed->hold->len;
}

/* The record's bytes in one piece. */
static const guint8 *
wire_of(MpStreamEditor *ed, const MpRecord *rec)
{
    guint64 start = rec->offset, end = rec->offset + rec->length;

    if (start >= ed->chunk_off)
        return ed->chunk + (start - ed->chunk_off);
    if (end <= ed->chunk_off)
        return ed->hold->data + (start - ed->hold_off);
    g_byte_array_set_size(ed->wire, 0);
    g_byte_array_append(ed->wire, ed->hold->data + (start - ed->hold_off),
                        ed->chunk_off - start);
    g_byte_array_append(ed->wire, ed->chunk, end - ed->chunk_off);
    return ed->wire->data;
}

void
mp_stream_editor_record(MpStreamEditor *ed, const MpRecord *rec)
{
    guint64 end = rec->offset + rec->length;

    ed->placed = FALSE;
    if (ed->passthrough || !ed->chunk || rec->offset < ed->base
        || end > ed->chunk_off + ed->chunk_len)
        return; /* not in the bytes at hand: nothing to edit */
    /* kept: every byte before it goes out as it is */
    ed->placed = TRUE;
    ed->placed_rec = rec->offset;
    ed->placed_off = ed->bytes_out + (rec->offset - ed->base);
    ed->placed_len = rec->length;
    if (end > ed->safe)
        ed->safe = end;
    if (rec->kind == MP_REC_COMMAND && rec->u.cmd.cmd == MP_QMIG_CMD_PACKAGED)
        ed->no_edit_until = end + rec->u.cmd.packaged_len;
    if (rec->offset < ed->no_edit_until || !rec->length)
        return;
    for (guint i = 0; i < ed->filters->len; i++) {
        MpFilter *f = g_ptr_array_index(ed->filters, i);
        g_byte_array_set_size(ed->out, 0);
        if (f->rewrite(f, ed->channel, rec, wire_of(ed, rec), ed->out)
            && (!ed->shrink_only || ed->out->len <= rec->length)) {
            emit_to(ed, rec->offset);
            ed->placed_off = ed->bytes_out;
            ed->placed_len = ed->out->len;
            put(ed, ed->out->data, ed->out->len);
            ed->base = end;
            return;
        }
    }
}

void
mp_stream_editor_flush(MpStreamEditor *ed)
{
    gsize held = mp_stream_editor_held(ed);

    if (held) /* (an empty hold has no data pointer) */
        put(ed, ed->hold->data + ed->hold->len - held, held);
    ed->base = ed->hold_off + ed->hold->len;
    ed->hold_off = ed->chunk_off = ed->safe = ed->base;
    g_byte_array_set_size(ed->hold, 0);
}

void
mp_stream_editor_end(MpStreamEditor *ed, gboolean following)
{
    if (!ed->chunk)
        return; /* passthrough since begin() */
    guint64 chunk_end = ed->chunk_off + ed->chunk_len;

    if (!following) {
        ed->passthrough = TRUE;
        ed->safe = chunk_end;
    }
    emit_to(ed, MAX(ed->safe, ed->base));
    /* keep [base, chunk_end) for the record in progress */
    if (ed->base >= ed->chunk_off) {
        g_byte_array_set_size(ed->hold, 0);
        g_byte_array_append(ed->hold, ed->chunk + (ed->base - ed->chunk_off),
                            chunk_end - ed->base);
    } else {
        g_byte_array_remove_range(ed->hold, 0, ed->base - ed->hold_off);
        g_byte_array_append(ed->hold, ed->chunk, ed->chunk_len);
    }
    ed->hold_off = ed->base;
    ed->chunk_off = chunk_end;
    ed->chunk = NULL;
    ed->chunk_len = 0;
    if (ed->hold->len > ed->hold_limit) {
        /* no record is that long: the parser is not following after all */
        ed->passthrough = TRUE;
        mp_stream_editor_flush(ed);
    }
}

gboolean
mp_stream_editor_placed(const MpStreamEditor *ed, const MpRecord *rec,
                        guint64 *out_off, gsize *out_len)
{
    if (!ed->placed || ed->placed_rec != rec->offset)
        return FALSE;
    *out_off = ed->placed_off;
    *out_len = ed->placed_len;
    return TRUE;
}

gsize
mp_stream_editor_held(const MpStreamEditor *ed)
{
    return ed->hold->len - (ed->base - ed->hold_off);
}

gboolean
mp_stream_editor_passthrough(const MpStreamEditor *ed)
{
    return ed->passthrough;
}

guint64
mp_stream_editor_bytes_in(const MpStreamEditor *ed)
{
    return ed->bytes_in;
}

guint64
mp_stream_editor_bytes_out(const MpStreamEditor *ed)
{
    return ed->bytes_out;
}
