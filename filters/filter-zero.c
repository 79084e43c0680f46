/* filter-zero.c: the stage that makes all-zero PAGE records ZERO records
 * (see filter-zero.h). */
#include "config.h"
#include <string.h>
#include "filter-zero.h"
#include "parse-common.h"

typedef struct {
    MpStage base;
    guint64 rewritten;
    guint64 saved;
} ZeroStage;

static gboolean
all_zero(const guint8 *p, gsize len)
{
    /* a page that is not zero almost always differs in its first bytes */
    if (len == 0 || p[0] != 0)
        return len == 0;
    return memcmp(p, p + 1, len - 1) == 0;
}

static MpStageVerdict
zero_record(MpStage *self, guint channel, MpDir dir, const MpRecord *rec,
            const guint8 *wire, MpStageOut *out)
{
    ZeroStage *z = (ZeroStage *)self;
    const MpRamPage *pg = &rec->u.page;
    static const guint8 fill = 0;

    (void)channel; /* every channel alike */
    (void)dir;
    if (rec->kind != MP_REC_RAM_PAGE || pg->kind != MP_PAGE_NORMAL
        || pg->payload_len != pg->size || rec->length < 8 + pg->payload_len
        || !all_zero(pg->payload, pg->payload_len))
        return MP_STAGE_PASS;
    /* header and block name as they came, PAGE turned into ZERO */
    guint8 hdr[8];
    guint64 v = mp_be64(wire);
    mp_put_be64(hdr, (v & ~(guint64)MP_RAM_SAVE_FLAG_PAGE)
                         | MP_RAM_SAVE_FLAG_ZERO);
    g_byte_array_append(out->bytes, hdr, sizeof(hdr));
    g_byte_array_append(out->bytes, wire + 8,
                        rec->length - 8 - pg->payload_len);
    g_byte_array_append(out->bytes, &fill, 1);
    z->rewritten++;
    z->saved += pg->payload_len - 1;
    return MP_STAGE_REPLACE;
}

static json_object *
zero_report(MpStage *self)
{
    ZeroStage *z = (ZeroStage *)self;
    json_object *o = json_object_new_object();
    json_object_object_add(o, "rewritten", json_object_new_int64(z->rewritten));
    json_object_object_add(o, "bytes_saved", json_object_new_int64(z->saved));
    return o;
}

static void
zero_destroy(MpStage *self)
{
    g_free(self);
}

MpStage *
mp_filter_zero_new(void)
{
    ZeroStage *z = g_new0(ZeroStage, 1);
    z->base.name = "zero_pages";
    z->base.record = zero_record;
    z->base.report = zero_report;
    z->base.destroy = zero_destroy;
    return &z->base;
}

guint64
mp_filter_zero_rewritten(const MpStage *f)
{
    return ((const ZeroStage *)f)->rewritten;
}

guint64
mp_filter_zero_bytes_saved(const MpStage *f)
{
    return ((const ZeroStage *)f)->saved;
}
