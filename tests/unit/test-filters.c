/* test-filters.c: the stream editor and the zero-page filter on real
 * streams.
 *
 * QEMU never sends an all-zero PAGE when it detects zero pages, so a
 * captured stream is first "inflated": a test filter turns every ZERO
 * record into a PAGE of 4096 zero bytes (the form QEMU 9.0+ sends with
 * zero-page-detection=none).  The zero filter must turn the inflated stream
 * back into the captured one byte for byte, however the bytes are split. */
#include "config.h"
#include <criterion/criterion.h>
#include <string.h>
#include "filter-zero.h"
#include "parse-common.h"
#include "qmig-parser.h"
#include "stream-editor.h"
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

/* ZERO -> PAGE of zeros: the inverse of the zero filter. */
static gboolean
inflate_rewrite(MpFilter *self, guint channel, const MpRecord *rec,
                const guint8 *wire, GByteArray *out)
{
    const MpRamPage *pg = &rec->u.page;
    if (rec->kind != MP_REC_RAM_PAGE || pg->kind != MP_PAGE_ZERO
        || pg->payload[0] != 0)
        return FALSE;
    guint8 hdr[8];
    mp_put_be64(hdr, (mp_be64(wire) & ~(guint64)MP_RAM_SAVE_FLAG_ZERO)
                         | MP_RAM_SAVE_FLAG_PAGE);
    g_byte_array_append(out, hdr, 8);
    g_byte_array_append(out, wire + 8, rec->length - 9);
    guint old = out->len;
    g_byte_array_set_size(out, old + pg->size);
    memset(out->data + old, 0, pg->size);
    return TRUE;
}

static void
inflate_destroy(MpFilter *self)
{
}

static MpFilter inflate_filter = {
    .name = "inflate",
    .rewrite = inflate_rewrite,
    .destroy = inflate_destroy,
};

typedef struct {
    MpStreamEditor *ed;
    GByteArray *out;
    guint64 stop_following_at; /* G_MAXUINT64: never */
    guint64 fed;
} Run;

static MpRecordAction
on_record(const MpRecord *rec, gpointer user_data)
{
    Run *r = user_data;
    mp_stream_editor_record(r->ed, rec);
    return MP_REC_CONTINUE;
}

static void
on_emit(const guint8 *buf, gsize len, gpointer user_data)
{
    g_byte_array_append(((Run *)user_data)->out, buf, len);
}

/* Runs `in` through a qmig parser and an editor with `filter`, in chunks
 * of `chunk` bytes (0: whole), shrink-only as the relay's editors are or
 * not.  @return the bytes that came out. */
static GByteArray *
edit(const GByteArray *in, MpFilter *filter, gsize chunk,
     guint64 stop_following_at, gboolean shrink_only)
{
    g_autoptr(GPtrArray) chain = g_ptr_array_new();
    Run r = {.out = g_byte_array_new(),
             .stop_following_at = stop_following_at};
    g_autoptr(MpQmigParser) p = mp_qmig_parser_new("test", on_record, &r);
    gboolean following = TRUE;

    g_ptr_array_add(chain, filter);
    r.ed =
        mp_stream_editor_new(chain, 0, 2u << 20, shrink_only, on_emit, &r);
    for (gsize off = 0; off < in->len;) {
        gsize n = chunk ? MIN(chunk, in->len - off) : in->len;
        mp_stream_editor_begin(r.ed, in->data + off, n);
        if (following) {
            g_autoptr(GError) err = NULL;
            gsize used = 0;
            MpFeedStatus st =
                mp_qmig_parser_feed(p, in->data + off, n, &used, &err);
            cr_assert(st != MP_FEED_ERROR, "%s", err->message);
            following = st == MP_FEED_MORE && off + n < stop_following_at;
        }
        mp_stream_editor_end(r.ed, following);
        off += n;
    }
    mp_stream_editor_flush(r.ed);
    cr_assert_eq(mp_stream_editor_bytes_in(r.ed), in->len);
    cr_assert_eq(mp_stream_editor_bytes_out(r.ed), r.out->len);
    mp_stream_editor_free(r.ed);
    return r.out;
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
        edit(orig, &inflate_filter, 0, G_MAXUINT64, FALSE);
    cr_assert_eq(fat->len, orig->len + zero_pages * 4095,
                 "inflated by %u bytes", fat->len - orig->len);
    /* a shrink-only editor keeps a record whose replacement is longer */
    g_autoptr(GByteArray) kept =
        edit(orig, &inflate_filter, 4096, G_MAXUINT64, TRUE);
    assert_same(kept, orig);

    static const gsize chunks[] = {0, 1 << 20, 65536, 4099, 4096, 977, 8};
    for (guint i = 0; i < G_N_ELEMENTS(chunks); i++) {
        g_autoptr(MpFilter) zero = mp_filter_zero_new();
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
    g_autoptr(MpFilter) zero = mp_filter_zero_new();
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
        edit(orig, &inflate_filter, 0, G_MAXUINT64, FALSE);
    g_autoptr(MpFilter) zero = mp_filter_zero_new();
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

/* An editor that never sees a record gives up after its hold limit. */
Test(filters, hold_limit)
{
    g_autoptr(GPtrArray) chain = g_ptr_array_new();
    Run r = {.out = g_byte_array_new()};
    guint8 buf[1000];

    memset(buf, 0x5a, sizeof(buf));
    r.ed = mp_stream_editor_new(chain, 0, 4096, FALSE, on_emit, &r);
    for (int i = 0; i < 4; i++) {
        mp_stream_editor_begin(r.ed, buf, sizeof(buf));
        mp_stream_editor_end(r.ed, TRUE);
    }
    cr_assert_eq(r.out->len, 0); /* held: 4000 bytes */
    cr_assert(!mp_stream_editor_passthrough(r.ed));
    mp_stream_editor_begin(r.ed, buf, sizeof(buf));
    mp_stream_editor_end(r.ed, TRUE);
    cr_assert(mp_stream_editor_passthrough(r.ed));
    cr_assert_eq(r.out->len, 5000);
    mp_stream_editor_begin(r.ed, buf, 10);
    cr_assert_eq(r.out->len, 5010);
    mp_stream_editor_free(r.ed);
    g_byte_array_unref(r.out);
}
