/* test-filters.c: the channel pipeline and the zero-page stage on real
 * streams.
 *
 * QEMU never sends an all-zero PAGE when it detects zero pages, so a
 * captured stream is first "inflated": a test filter turns every ZERO
 * record into a PAGE of 4096 zero bytes (the form QEMU 9.0+ sends with
 * zero-page-detection=none).  The zero stage must turn the inflated stream
 * back into the captured one byte for byte, however the bytes are split. */
#include "config.h"
#include <criterion/criterion.h>
#include <string.h>
#include "filter-zero.h"
#include "parse-common.h"
#include "pipeline.h"
#include "stream-input.h"

static GByteArray *
load(const char *name)
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

/* ZERO -> PAGE of zeros: the inverse of the zero stage, and a stage that
 * makes records longer. */
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
}

static MpStage inflate_stage = {
    .name = "inflate",
    .record = inflate_record,
    .destroy = inflate_destroy,
};

typedef struct {
    GByteArray *out;
    guint64 fed;
    guint64 inserted;
    gboolean in_place;
} Run;

static void
on_write(gpointer data, const guint8 *buf, gsize len)
{
    Run *r = data;
    g_byte_array_append(r->out, buf, len);
    /* in place: never ahead of the input (insertions are beside it) */
    if (r->in_place)
        cr_assert_leq(r->out->len - r->inserted, r->fed);
}

static void
on_insert(gpointer data, const guint8 *buf, gsize len)
{
    Run *r = data;
    g_byte_array_append(r->out, buf, len);
    r->inserted += len;
}

/* Runs `in` through a main-channel pipeline with `stage`, in chunks of
 * `chunk` bytes (0: whole), in place as the relay's are or not; the
 * parser stops following at `stop_following_at`.  @return the bytes that
 * came out; *inserted: of those, how many went beside the input. */
static GByteArray *
edit_ex(const GByteArray *in, MpStage *stage, gsize chunk,
        guint64 stop_following_at, gboolean in_place, gsize hold_limit,
        guint64 *inserted)
{
    Run r = {.out = g_byte_array_new(), .in_place = in_place};
    MpPipelineSink sink = {.write = on_write, .insert = on_insert, .data = &r};
    g_autoptr(MpPipeline) p = mp_pipeline_new(0, MP_DIR_TO_DST);

    mp_pipeline_set_kind(p, MP_CHAN_MAIN, NULL);
    mp_pipeline_set_sink(p, &sink, in_place, hold_limit);
    if (stage)
        mp_pipeline_add_stage(p, stage);
    for (gsize off = 0; off < in->len;) {
        gsize n = chunk ? MIN(chunk, in->len - off) : in->len;
        r.fed += n;
        mp_pipeline_feed(p, in->data + off, n, 0);
        cr_assert(mp_pipeline_state(p) != MP_PIPELINE_GAVE_UP);
        off += n;
        if (off >= stop_following_at && mp_pipeline_following(p))
            mp_pipeline_stop(p);
    }
    mp_pipeline_end(p, MP_END_FIN, 0);
    cr_assert_eq(mp_pipeline_bytes_in(p), in->len);
    cr_assert_eq(mp_pipeline_bytes_out(p), r.out->len);
    if (inserted)
        *inserted = r.inserted;
    return r.out;
}

static GByteArray *
edit(const GByteArray *in, MpStage *stage, gsize chunk,
     guint64 stop_following_at, gboolean in_place)
{
    return edit_ex(in, stage, chunk, stop_following_at, in_place, 2u << 20,
                   NULL);
}

static void
assert_same(const GByteArray *a, const GByteArray *b)
{
    cr_assert_eq(a->len, b->len, "length %u, expected %u", a->len, b->len);
    for (guint i = 0; i < a->len; i++)
        if (a->data[i] != b->data[i])
            cr_assert_fail("first difference at offset %u", i);
}

static void
round_trip(const char *name, guint64 zero_pages)
{
    g_autoptr(GByteArray) orig = load(name);
    g_autoptr(GByteArray) fat =
        edit(orig, &inflate_stage, 0, G_MAXUINT64, FALSE);
    cr_assert_eq(fat->len, orig->len + zero_pages * 4095,
                 "inflated by %u bytes", fat->len - orig->len);
    /* in place, a longer replacement goes beside the input */
    guint64 inserted = 0;
    g_autoptr(GByteArray) in_place =
        edit_ex(orig, &inflate_stage, 4096, G_MAXUINT64, TRUE, 2u << 20,
                &inserted);
    assert_same(in_place, fat);
    cr_assert_gt(inserted, 0);

    static const gsize chunks[] = {0, 1 << 20, 65536, 4099, 4096, 977, 8};
    for (guint i = 0; i < G_N_ELEMENTS(chunks); i++) {
        g_autoptr(MpStage) zero = mp_filter_zero_new();
        g_autoptr(GByteArray) back =
            edit(fat, zero, chunks[i], G_MAXUINT64, TRUE);
        assert_same(back, orig);
        cr_assert_eq(mp_filter_zero_rewritten(zero), zero_pages,
                     "chunk %zu: %" G_GUINT64_FORMAT " pages rewritten",
                     chunks[i], mp_filter_zero_rewritten(zero));
        cr_assert_eq(mp_filter_zero_bytes_saved(zero), zero_pages * 4095);
    }
}

Test(filters, zero_round_trip_10_0)
{
    round_trip("busy-10.0", 15586);
}

Test(filters, zero_round_trip_7_2_xbzrle)
{
    g_autoptr(GByteArray) orig = load("busy-xbzrle-7.2");
    /* xbzrle and CONTINUE records pass untouched between the pages */
    g_autoptr(MpStage) zero = mp_filter_zero_new();
    g_autoptr(GByteArray) same = edit(orig, zero, 4000, G_MAXUINT64, TRUE);
    assert_same(same, orig);
    cr_assert_eq(mp_filter_zero_rewritten(zero), 0);
}

/* A parser that stops following: from that chunk on every byte goes out
 * as it came, the pages before it were rewritten. */
Test(filters, passthrough_when_not_following)
{
    g_autoptr(GByteArray) orig = load("busy-10.0");
    g_autoptr(GByteArray) fat =
        edit(orig, &inflate_stage, 0, G_MAXUINT64, FALSE);
    g_autoptr(MpStage) zero = mp_filter_zero_new();
    guint64 cut = fat->len / 2;
    g_autoptr(GByteArray) out = edit(fat, zero, 65536, cut, TRUE);

    guint64 n = mp_filter_zero_rewritten(zero);
    cr_assert(n > 0 && n < 15586, "%" G_GUINT64_FORMAT " rewritten", n);
    cr_assert_eq(out->len, fat->len - n * 4095);
    /* the tail from the cut on is the inflated stream's */
    gsize tail = fat->len - ((cut + 65535) / 65536) * 65536;
    cr_assert(memcmp(out->data + out->len - tail, fat->data + fat->len - tail,
                     tail)
              == 0);
}

/* A record longer than the hold limit: the pipeline gives up editing and
 * passes every byte on as it came. */
Test(filters, hold_limit)
{
    g_autoptr(GByteArray) orig = load("busy-10.0");
    g_autoptr(MpStage) zero = mp_filter_zero_new();
    g_autoptr(GByteArray) out =
        edit_ex(orig, zero, 1000, G_MAXUINT64, TRUE, 2000, NULL);
    assert_same(out, orig);
}
