/* fuzz-qmig.c: libFuzzer target for the main-channel parser.
 *
 * Input: a selector byte (fuzz-chunks.h: chunk size, pausing; bit 6 here:
 * a headerless recovery channel), then the stream.  A vmdesc at the end
 * of the stream, where a file has it, is located and used to slice the
 * device sections, so the vmdesc reader is fuzzed as well.
 */
#include <glib.h>
#include "fuzz-chunks.h"
#include "qmig-parser.h"
#include "vmdesc.h"

int LLVMFuzzerTestOneInput(const guint8 *data, gsize size);

static MpVmdesc *vmdesc; /* of the current input, or NULL */

static gpointer
qmig_create(guint8 sel, MpRecordFunc cb, gpointer user_data)
{
    MpQmigParser *p = mp_qmig_parser_new("fuzz main", cb, user_data);
    if (vmdesc)
        mp_qmig_parser_set_vmdesc(p, vmdesc);
    if (sel & 0x40)
        mp_qmig_parser_set_headerless(p);
    return p;
}

static MpFeedStatus
qmig_feed(gpointer p, const guint8 *buf, gsize len, gsize *consumed,
          GError **error)
{
    return mp_qmig_parser_feed(p, buf, len, consumed, error);
}

static gboolean
qmig_finish(gpointer p, GError **error)
{
    gboolean ok = mp_qmig_parser_finish(p, error);
    (void)mp_qmig_parser_opaque_from(p, NULL);
    (void)mp_qmig_parser_ram_total(p);
    return ok;
}

static void
qmig_destroy(gpointer p)
{
    mp_qmig_parser_free(p);
}

static volatile guint8 sink;

/* Reads what a record points to; hashes it where the pointer does not
 * depend on how the input was cut. */
static gsize
qmig_data_len(const MpRecord *rec, guint8 sel, const guint8 **data)
{
    const guint8 *p = NULL;
    gsize n = 0;

    switch (rec->kind) {
    case MP_REC_RAM_PAGE:
        *data = rec->u.page.payload;
        return rec->u.page.payload ? rec->u.page.payload_len : 0;
    case MP_REC_COMMAND:
        *data = rec->u.cmd.payload;
        return rec->u.cmd.len;
    case MP_REC_VMDESC:
        *data = (const guint8 *)rec->u.vmdesc.json;
        return rec->u.vmdesc.len;
    case MP_REC_DEVICE_DATA: /* NULL when split across feeds */
    case MP_REC_OPAQUE:      /* one record per feed */
        p = rec->u.raw.data;
        n = rec->u.raw.len;
        break;
    case MP_REC_BLK_BLOCK:
        p = rec->u.blk.data;
        n = p ? MP_BLK_MIG_BLOCK_SIZE : 0;
        break;
    default:
        break;
    }
    for (gsize i = 0; p && i < n; i++)
        sink ^= p[i];
    return 0;
}

static const MpFuzzOps qmig_ops = {qmig_create, qmig_feed, qmig_finish,
                                   qmig_destroy, qmig_data_len};

int
LLVMFuzzerTestOneInput(const guint8 *data, gsize size)
{
    gsize off, len;

    if (size > 1 && mp_vmdesc_locate(data + 1, size - 1, &off, &len))
        vmdesc = mp_vmdesc_new((const char *)data + 1 + off, len, NULL);
    mp_fuzz_chunks_run(&qmig_ops, data, size);
    g_clear_pointer(&vmdesc, mp_vmdesc_unref);
    return 0;
}
