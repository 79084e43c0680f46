/* stage-util.c: see stage-util.h. */
#include "config.h"
#include <string.h>
#include <criterion/criterion.h>
#include "parse-common.h"
#include "stage-util.h"
#include "stream-input.h"

GByteArray *
stage_util_load(const char *name)
{
    g_autofree char *path = g_strdup_printf("%s/samples/streams/%s.mig.zst",
                                            MP_SOURCE_ROOT, name);
    g_autoptr(GError) err = NULL;
    g_autoptr(MpInput) in = mp_input_open(path, &err);
    cr_assert(in, "%s", err ? err->message : "");
    GByteArray *b = g_byte_array_new();
    guint8 buf[65536];
    gssize n;
    while ((n = mp_input_read(in, buf, sizeof(buf), &err)) > 0)
        g_byte_array_append(b, buf, n);
    cr_assert(n == 0, "%s", err ? err->message : "");
    return b;
}

static MpStageVerdict
inflate_record(MpStage *self, guint channel, MpDir dir, const MpRecord *rec,
               const guint8 *wire, MpStageOut *out)
{
    const MpRamPage *pg = &rec->u.page;
    if (rec->kind != MP_REC_RAM_PAGE || pg->kind != MP_PAGE_ZERO
        || pg->payload[0] != 0)
        return MP_STAGE_PASS;
    guint8 hdr[8];
    mp_put_be64(hdr, (mp_be64(wire) & ~(guint64)MP_RAM_SAVE_FLAG_ZERO)
                         | MP_RAM_SAVE_FLAG_PAGE);
    g_byte_array_append(out->bytes, hdr, 8);
    g_byte_array_append(out->bytes, wire + 8, rec->length - 9);
    guint old = out->bytes->len;
    g_byte_array_set_size(out->bytes, old + pg->size);
    memset(out->bytes->data + old, 0, pg->size);
    return MP_STAGE_REPLACE;
}

static void
inflate_destroy(MpStage *self)
{
    /* the caller's */
}

void
stage_util_inflate_init(MpStage *st)
{
    *st = (MpStage){
        .name = "inflate",
        .record = inflate_record,
        .destroy = inflate_destroy,
    };
}

static void
on_write(gpointer data, const guint8 *buf, gsize len)
{
    StageUtilSink *s = data;
    g_byte_array_append(s->out, buf, len);
    if (s->chunk && buf >= s->chunk && buf + len <= s->chunk + s->chunk_len)
        s->borrowed += len;
    /* in place: never ahead of the input (insertions are beside it) */
    if (s->in_place)
        cr_assert_leq(s->out->len - s->inserted, s->fed);
}

static void
on_insert(gpointer data, const guint8 *buf, gsize len)
{
    StageUtilSink *s = data;
    g_byte_array_append(s->out, buf, len);
    s->inserted += len;
}

GByteArray *
stage_util_run(const GByteArray *in, MpStage *stage, const StageUtilRun *opt,
               StageUtilSink *sink_out)
{
    StageUtilSink s = {.out = g_byte_array_new(), .in_place = opt->in_place};
    MpPipelineSink sink = {.write = on_write, .insert = on_insert, .data = &s};
    g_autoptr(MpPipeline) p = mp_pipeline_new(0, MP_DIR_TO_DST);

    mp_pipeline_set_kind(p, MP_CHAN_MAIN, NULL);
    mp_pipeline_set_sink(p, &sink, opt->in_place,
                         opt->hold_limit ? opt->hold_limit : 2u << 20);
    if (stage)
        mp_pipeline_add_stage(p, stage);
    for (gsize off = 0; off < in->len;) {
        gsize n = opt->chunk ? MIN(opt->chunk, in->len - off) : in->len;
        g_autofree guint8 *buf = g_memdup2(in->data + off, n);
        s.chunk = buf;
        s.chunk_len = n;
        s.fed += n;
        mp_pipeline_feed(p, buf, n, 0);
        s.chunk = NULL;
        cr_assert_neq(mp_pipeline_state(p), MP_PIPELINE_GAVE_UP);
        if (opt->after)
            opt->after(p, &s, opt->after_data);
        off += n;
        if (opt->stop_following_at && off >= opt->stop_following_at
            && mp_pipeline_following(p))
            mp_pipeline_stop(p);
    }
    mp_pipeline_end(p, MP_END_FIN, 0);
    cr_assert_eq(mp_pipeline_held(p), 0);
    cr_assert_eq(mp_pipeline_bytes_in(p), in->len);
    cr_assert_eq(mp_pipeline_bytes_out(p), s.out->len);
    if (sink_out)
        *sink_out = s;
    return s.out;
}

void
stage_util_assert_same(const GByteArray *a, const GByteArray *b)
{
    cr_assert_eq(a->len, b->len, "length %u, expected %u", a->len, b->len);
    for (guint i = 0; i < a->len; i++)
        if (a->data[i] != b->data[i])
            cr_assert_fail("first difference at offset %u", i);
}
