/* fuzz-rp.c: libFuzzer target for the return-path parser. */
#include "fuzz-util.h"
#include "rp-parser.h"

static gpointer
rp_create(guint8 sel, MpRecordFunc cb, gpointer user_data)
{
    return mp_rp_parser_new("dst return-path", cb, user_data);
}

static MpFeedStatus
rp_feed(gpointer p, const guint8 *buf, gsize len, gsize *consumed,
        GError **error)
{
    return mp_rp_parser_feed(p, buf, len, consumed, error);
}

static gboolean
rp_finish(gpointer p, GError **error)
{
    return mp_rp_parser_finish(p, error);
}

static void
rp_destroy(gpointer p)
{
    mp_rp_parser_free(p);
}

static gsize
rp_data_len(const MpRecord *rec, guint8 sel, const guint8 **data)
{
    if (rec->kind != MP_REC_RP_MESSAGE)
        return 0;
    *data = rec->u.rp.payload;
    return rec->u.rp.len;
}

static const MpFuzzOps rp_ops = {rp_create, rp_feed, rp_finish, rp_destroy,
                                 rp_data_len};

int LLVMFuzzerTestOneInput(const guint8 *data, gsize size);

int
LLVMFuzzerTestOneInput(const guint8 *data, gsize size)
{
    return mp_fuzz_run(&rp_ops, data, size);
}
