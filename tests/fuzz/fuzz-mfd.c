/* fuzz-mfd.c: libFuzzer target for the multifd channel parser.
 * Selector bit 7 turns zstd decoding off, bit 6 picks 64 KiB pages (a
 * 384-byte packet header) instead of 4 KiB ones. */
#include "fuzz-util.h"
#include "mfd-parser.h"

static guint32
page_size(guint8 sel)
{
    return sel & 0x40 ? 65536 : 4096;
}

static gpointer
mfd_create(guint8 sel, MpRecordFunc cb, gpointer user_data)
{
    MpMfdParser *p =
        mp_mfd_parser_new("src multifd-0", page_size(sel), cb, user_data);
    mp_mfd_parser_set_decode(p, !(sel & 0x80));
    return p;
}

static MpFeedStatus
mfd_feed(gpointer p, const guint8 *buf, gsize len, gsize *consumed,
         GError **error)
{
    return mp_mfd_parser_feed(p, buf, len, consumed, error);
}

static gboolean
mfd_finish(gpointer p, GError **error)
{
    return mp_mfd_parser_finish(p, error);
}

static void
mfd_destroy(gpointer p)
{
    mp_mfd_parser_free(p);
}

static gsize
mfd_data_len(const MpRecord *rec, guint8 sel, const guint8 **data)
{
    switch (rec->kind) {
    case MP_REC_MFD_INIT:
        *data = rec->u.mfd.uuid;
        return 16;
    case MP_REC_MFD_PACKET:
        *data = rec->u.mfd.offsets;
        return 8 * ((gsize)rec->u.mfd.normal_pages + rec->u.mfd.zero_pages);
    case MP_REC_MFD_PAGE:
        *data = rec->u.mfd.data;
        return rec->u.mfd.zero ? 0 : page_size(sel);
    case MP_REC_MFD_DATA:
        *data = rec->u.mfd.data;
        return rec->length;
    default:
        return 0;
    }
}

static const MpFuzzOps mfd_ops = {mfd_create, mfd_feed, mfd_finish, mfd_destroy,
                                  mfd_data_len};

int LLVMFuzzerTestOneInput(const guint8 *data, gsize size);

int
LLVMFuzzerTestOneInput(const guint8 *data, gsize size)
{
    return mp_fuzz_run(&mfd_ops, data, size);
}
