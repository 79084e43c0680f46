/* test-ram.c: the RAM record parser on its own, as it reads the
 * postcopy-preempt channel: bare RAM records (no magic, no sections), the
 * channel ends with EOS (7.2 postcopy_preempt_shutdown_file), block names
 * and ranges checked against the main channel's block list
 * (mp_ram_parser_share_blocks). */
#include <stdarg.h>
#include <string.h>
#include <unistd.h>
#include <glib.h>
#include <criterion/criterion.h>
#include "feed-util.h"
#include "ram-parser.h"
#include "record-format.h"

#define PS MP_TARGET_PAGE_SIZE
#define CH "preempt"

/* per test (Criterion forks a process per test) */
static MpRamParser *g_main;   /* block list to share, or NULL */
static guint64 g_summary;     /* POSTCOPY_ADVISE page-size summary */
static gboolean g_ignore_shared;

static gpointer
ram_create(MpRecordFunc cb, gpointer user_data)
{
    MpRamParser *p = mp_ram_parser_new(CH, PS, cb, user_data);
    if (g_main)
        mp_ram_parser_share_blocks(p, g_main);
    mp_ram_parser_set_postcopy_summary(p, g_summary);
    mp_ram_parser_set_ignore_shared(p, g_ignore_shared);
    return p;
}

static MpFeedStatus
ram_feed(gpointer p, const guint8 *buf, gsize len, gsize *consumed,
         GError **error)
{
    return mp_ram_parser_feed(p, buf, len, consumed, error);
}

static gboolean
ram_finish(gpointer p, GError **error)
{
    return mp_ram_parser_finish(p, error);
}

static void
ram_destroy(gpointer p)
{
    mp_ram_parser_free(p);
}

static const MpParserOps ram_ops = {ram_create, ram_feed, ram_finish,
                                    ram_destroy};

/* The same behind a callback that pauses after every record. */
typedef struct {
    MpRecordFunc cb;
    gpointer user_data;
    MpRamParser *p;
    guint records;
} PauseCtx;

static MpRecordAction
pause_record(const MpRecord *rec, gpointer user_data)
{
    PauseCtx *c = user_data;
    c->cb(rec, c->user_data);
    c->records++;
    return MP_REC_PAUSE;
}

static gpointer
pause_create(MpRecordFunc cb, gpointer user_data)
{
    PauseCtx *c = g_new0(PauseCtx, 1);
    c->cb = cb;
    c->user_data = user_data;
    c->p = ram_create(pause_record, c);
    return c;
}

static MpFeedStatus
pause_feed(gpointer p, const guint8 *buf, gsize len, gsize *consumed,
           GError **error)
{
    PauseCtx *c = p;
    c->records = 0;
    MpFeedStatus st = mp_ram_parser_feed(c->p, buf, len, consumed, error);
    cr_assert(c->records <= 1, "%u records in one feed despite pausing",
              c->records);
    cr_assert(c->records == 0 || st != MP_FEED_MORE);
    return st;
}

static gboolean
pause_finish(gpointer p, GError **error)
{
    return mp_ram_parser_finish(((PauseCtx *)p)->p, error);
}

static void
pause_destroy(gpointer p)
{
    mp_ram_parser_free(((PauseCtx *)p)->p);
    g_free(p);
}

static const MpParserOps pause_ops = {pause_create, pause_feed, pause_finish,
                                      pause_destroy};

/* ---- builder: bytes and the expected log ---------------------------- */

typedef struct {
    GByteArray *b;
    GString *ex;
    char block[256];
} Vec;

static Vec *
vec_new(void)
{
    Vec *v = g_new0(Vec, 1);
    v->b = g_byte_array_new();
    v->ex = g_string_new(NULL);
    return v;
}

static void
vec_free(Vec *v)
{
    g_byte_array_unref(v->b);
    g_string_free(v->ex, TRUE);
    g_free(v);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC(Vec, vec_free)

static void
put_u8(Vec *v, guint8 x)
{
    g_byte_array_append(v->b, &x, 1);
}

static void
put_be64(Vec *v, guint64 x)
{
    guint8 b[8];
    mp_put_be64(b, x);
    g_byte_array_append(v->b, b, 8);
}

static void
put_str(Vec *v, const char *s)
{
    put_u8(v, strlen(s));
    g_byte_array_append(v->b, (const guint8 *)s, strlen(s));
}

static void G_GNUC_PRINTF(3, 4)
ex(Vec *v, gsize start, const char *fmt, ...)
{
    va_list ap;
    g_string_append_printf(v->ex, "off=%zu len=%zu ", start,
                           (gsize)v->b->len - start);
    va_start(ap, fmt);
    g_string_append_vprintf(v->ex, fmt, ap);
    va_end(ap);
    g_string_append_c(v->ex, '\n');
}

/* block NULL: CONTINUE */
static void
hdr(Vec *v, guint64 addr, guint32 flags, const char *block)
{
    put_be64(v, addr | flags | (block ? 0 : MP_RAM_SAVE_FLAG_CONTINUE));
    if (block) {
        put_str(v, block);
        g_strlcpy(v->block, block, sizeof(v->block));
    }
}

static void
v_page(Vec *v, const char *block, guint64 addr)
{
    gsize s = v->b->len;
    hdr(v, addr, MP_RAM_SAVE_FLAG_PAGE, block);
    for (guint i = 0; i < PS; i++)
        put_u8(v, (guint8)(addr >> 12) + i);
    ex(v, s, "ram_page block=\"%s\" addr=0x%" G_GINT64_MODIFIER "x kind=normal%s",
       v->block, addr, block ? "" : " cont");
}

static void
v_zero(Vec *v, const char *block, guint64 addr)
{
    gsize s = v->b->len;
    hdr(v, addr, MP_RAM_SAVE_FLAG_ZERO, block);
    put_u8(v, 0);
    ex(v, s,
       "ram_page block=\"%s\" addr=0x%" G_GINT64_MODIFIER "x kind=zero%s "
       "payload=1",
       v->block, addr, block ? "" : " cont");
}

static void
v_eos(Vec *v)
{
    gsize s = v->b->len;
    put_be64(v, MP_RAM_SAVE_FLAG_EOS);
    ex(v, s, "ram_eos");
}

static void
v_mem_size(Vec *v, guint64 total)
{
    gsize s = v->b->len;
    put_be64(v, total | MP_RAM_SAVE_FLAG_MEM_SIZE);
    ex(v, s, "ram_mem_size total=%" G_GUINT64_FORMAT, total);
}

static void
v_block(Vec *v, const char *name, guint64 used, guint64 psize)
{
    gsize s = v->b->len;
    put_str(v, name);
    put_be64(v, used);
    if (psize)
        put_be64(v, psize);
    if (psize)
        ex(v, s, "ram_block block=\"%s\" used=%" G_GUINT64_FORMAT
                 " page_size=%" G_GUINT64_FORMAT,
           name, used, psize);
    else
        ex(v, s, "ram_block block=\"%s\" used=%" G_GUINT64_FORMAT, name, used);
}

/* MP_TEST_DUMP_DIR=dir writes every vector to dir (fuzz seed corpus). */
static void
dump_vector(const GByteArray *b)
{
    static guint n;
    const char *dir = g_getenv("MP_TEST_DUMP_DIR");
    if (!dir)
        return;
    g_autofree char *path =
        g_strdup_printf("%s/%d-%u.bin", dir, (int)getpid(), n++);
    g_file_set_contents(path, (const char *)b->data, b->len, NULL);
}

static void
check_vec(Vec *v, const char *status)
{
    dump_vector(v->b);
    g_autofree char *log =
        feed_check_all_splits(&ram_ops, v->b->data, v->b->len);
    g_string_append_printf(v->ex, "%s\n", status);
    cr_assert_str_eq(log, v->ex->str);
    g_autofree char *pw = feed_log(&pause_ops, v->b->data, v->b->len, 0, 0);
    cr_assert_str_eq(pw, v->ex->str, "pausing after every record differs");
    g_autofree char *pb = feed_log(&pause_ops, v->b->data, v->b->len, 1, 0);
    cr_assert_str_eq(pb, v->ex->str, "pausing, byte by byte, differs");
}

static void
check_error(Vec *v, int code, gsize offset)
{
    dump_vector(v->b);
    g_autofree char *log =
        feed_check_all_splits(&ram_ops, v->b->data, v->b->len);
    g_autofree char *head = g_strdup_printf("ERROR %d " CH ": ", code);
    g_autofree char *where = g_strdup_printf("offset %zu", offset);
    cr_assert(g_str_has_prefix(log, v->ex->str), "%s", log);
    const char *last = log + v->ex->len;
    cr_assert(g_str_has_prefix(last, head), "expected %s..., got %s", head,
              last);
    cr_assert(strstr(last, where), "%s does not name %s", last, where);
}

/* A main-channel RAM parser that has read a block list. */
static MpRecordAction
ignore_record(const MpRecord *rec, gpointer user_data)
{
    return MP_REC_CONTINUE;
}

static MpRamParser *
main_parser_with_blocks(void)
{
    g_autoptr(Vec) v = vec_new();
    MpRamParser *m = mp_ram_parser_new("main", PS, ignore_record, NULL);
    g_autoptr(GError) err = NULL;
    gsize used;

    v_mem_size(v, 0x50000);
    v_block(v, "pc.ram", 0x40000, 0);
    v_block(v, "rom1", 0x10000, 0);
    v_eos(v);
    cr_assert_eq(mp_ram_parser_feed(m, v->b->data, v->b->len, &used, &err),
                 MP_FEED_END);
    cr_assert_eq(used, v->b->len);
    cr_assert_eq(mp_ram_parser_ram_total(m), 0x50000);
    return m;
}

/* ---- valid streams ------------------------------------------------- */

Test(ram, preempt_channel_pages_then_eos)
{
    g_autoptr(Vec) v = vec_new();
    v_page(v, "pc.ram", 0x3f000);
    v_page(v, NULL, 0x3e000);
    v_zero(v, "rom1", 0);
    v_page(v, "pc.ram", 0);
    v_zero(v, NULL, 0x1000);
    v_eos(v);
    check_vec(v, "END");
}

Test(ram, preempt_channel_checked_against_main_blocks)
{
    g_main = main_parser_with_blocks();
    g_autoptr(Vec) v = vec_new();
    v_page(v, "pc.ram", 0x3f000); /* the last page of pc.ram */
    v_zero(v, "rom1", 0xf000);
    v_eos(v);
    check_vec(v, "END");
    mp_ram_parser_free(g_main);
}

Test(ram, empty_channel)
{
    g_autoptr(Vec) v = vec_new();
    v_eos(v);
    check_vec(v, "END");
    /* no bytes at all: ends between records */
    g_autofree char *log = feed_log(&ram_ops, (const guint8 *)"", 0, 0, 0);
    cr_assert_str_eq(log, "MORE\n");
}

/* Records before the EOS, then the channel closes: finish succeeds only
 * between records. */
Test(ram, closed_without_eos)
{
    g_autoptr(Vec) v = vec_new();
    v_page(v, "pc.ram", 0);
    v_zero(v, NULL, 0x1000);
    check_vec(v, "MORE");
}

/* The standalone parser reads a block list too (MEM_SIZE), including
 * huge-page postcopy fields and the last entry's field found by peeking
 * at the next header. */
Test(ram, block_list_with_page_sizes)
{
    g_summary = PS | (2u << 20);
    g_autoptr(Vec) v = vec_new();
    v_mem_size(v, (2u << 20) + 2 * PS + (4u << 20));
    v_block(v, "pc.ram", 2u << 20, 2u << 20);
    v_block(v, "pc.bios", 2 * PS, 0);
    v_block(v, "mem0", 4u << 20, 2u << 20);
    v_eos(v);
    check_vec(v, "END");

    g_autoptr(Vec) w = vec_new();
    v_mem_size(w, (2u << 20) + 2 * PS);
    v_block(w, "pc.ram", 2u << 20, 2u << 20);
    v_block(w, "pc.bios", 2 * PS, 0);
    v_zero(w, "pc.bios", PS);
    v_eos(w);
    check_vec(w, "END");
}

Test(ram, block_list_ignore_shared)
{
    g_ignore_shared = TRUE;
    g_autoptr(Vec) v = vec_new();
    gsize s;
    v_mem_size(v, 3 * PS);
    s = v->b->len;
    put_str(v, "a");
    put_be64(v, PS);
    put_be64(v, 0xc0000);
    ex(v, s, "ram_block block=\"a\" used=4096 mr_addr=0xc0000");
    s = v->b->len;
    put_str(v, "b");
    put_be64(v, 2 * PS);
    put_be64(v, 0);
    ex(v, s, "ram_block block=\"b\" used=8192 mr_addr=0x0");
    v_zero(v, "b", PS);
    v_eos(v);
    check_vec(v, "END");
}

static MpRecordAction
log_record(const MpRecord *rec, gpointer user_data)
{
    mp_record_describe(rec, user_data);
    g_string_append_c(user_data, '\n');
    return MP_REC_CONTINUE;
}

/* CONTINUE belongs to the channel and survives EOS: feeding on after END
 * goes on with the same block (as the main channel does across sections). */
Test(ram, continue_survives_eos)
{
    g_autoptr(Vec) v = vec_new();
    g_autoptr(GString) log = g_string_new(NULL);
    g_autoptr(GError) err = NULL;
    g_autoptr(MpRamParser) p = mp_ram_parser_new(CH, PS, log_record, log);
    gsize used;

    v_zero(v, "rom1", 0);
    v_eos(v);
    gsize cut = v->b->len;
    v_zero(v, NULL, 0x1000);
    v_eos(v);

    cr_assert_eq(mp_ram_parser_feed(p, v->b->data, v->b->len, &used, &err),
                 MP_FEED_END);
    cr_assert_eq(used, cut);
    cr_assert_eq(mp_ram_parser_feed(p, v->b->data + cut, v->b->len - cut,
                                    &used, &err),
                 MP_FEED_END);
    cr_assert_eq(used, v->b->len - cut);
    cr_assert(mp_ram_parser_finish(p, &err));
    cr_assert_str_eq(log->str, v->ex->str);
}

/* Errors are sticky: every later feed and finish repeats them. */
Test(ram, errors_are_sticky)
{
    g_autoptr(GString) log = g_string_new(NULL);
    g_autoptr(MpRamParser) p = mp_ram_parser_new(CH, PS, log_record, log);
    g_autoptr(GError) e1 = NULL, e2 = NULL, e3 = NULL;
    static const guint8 bad[8] = {0, 0, 0, 0, 0, 0, 0, 0x01};
    gsize used;

    cr_assert_eq(mp_ram_parser_feed(p, bad, 8, &used, &e1), MP_FEED_ERROR);
    cr_assert_eq(e1->code, MP_PARSE_ERROR_RAM_FLAGS);
    cr_assert_eq(mp_ram_parser_feed(p, bad, 8, &used, &e2), MP_FEED_ERROR);
    cr_assert_eq(used, 0);
    cr_assert_str_eq(e2->message, e1->message);
    cr_assert_not(mp_ram_parser_finish(p, &e3));
    cr_assert_str_eq(e3->message, e1->message);
}

/* ---- malformed ------------------------------------------------------ */

Test(ram, continue_first_on_the_channel)
{
    g_autoptr(Vec) v = vec_new();
    put_be64(v, 0x5000 | MP_RAM_SAVE_FLAG_PAGE | MP_RAM_SAVE_FLAG_CONTINUE);
    check_error(v, MP_PARSE_ERROR_NO_BLOCK, 0);
}

Test(ram, unknown_block_of_main_list)
{
    g_main = main_parser_with_blocks();
    g_autoptr(Vec) v = vec_new();
    v_zero(v, "rom1", 0);
    gsize s = v->b->len;
    put_be64(v, MP_RAM_SAVE_FLAG_PAGE);
    put_str(v, "rom2");
    check_error(v, MP_PARSE_ERROR_RAM_FLAGS, s);
    mp_ram_parser_free(g_main);
}

Test(ram, page_past_end_of_main_block)
{
    g_main = main_parser_with_blocks();
    g_autoptr(Vec) v = vec_new();
    v_zero(v, "rom1", 0xf000);
    gsize s = v->b->len;
    put_be64(v, 0x10000 | MP_RAM_SAVE_FLAG_ZERO | MP_RAM_SAVE_FLAG_CONTINUE);
    put_u8(v, 0);
    check_error(v, MP_PARSE_ERROR_LENGTH, s);
    g_autoptr(Vec) w = vec_new();
    s = w->b->len;
    put_be64(w, 0x40000 | MP_RAM_SAVE_FLAG_PAGE);
    put_str(w, "pc.ram");
    check_error(w, MP_PARSE_ERROR_LENGTH, s);
    mp_ram_parser_free(g_main);
}

/* Without a shared list (or before MEM_SIZE) names cannot be checked. */
Test(ram, any_block_without_a_list)
{
    g_autoptr(Vec) v = vec_new();
    v_zero(v, "anything", 0x7ffff000);
    v_eos(v);
    check_vec(v, "END");
}

Test(ram, truncated_inside_records)
{
    g_autoptr(Vec) v = vec_new();
    v_page(v, "pc.ram", 0);
    v_zero(v, NULL, 0x1000);
    v_eos(v);
    for (gsize k = 1; k < v->b->len; k++) {
        g_autofree char *log = feed_log(&ram_ops, v->b->data, k, 0, 0);
        gboolean boundary = k == 4111 || k == 4120;
        if (boundary) {
            cr_assert(g_str_has_suffix(log, "\nMORE\n"), "%zu: %s", k, log);
            continue;
        }
        g_autofree char *want = g_strdup_printf(
            "ERROR %d " CH ": stream ends at offset %zu inside",
            MP_PARSE_ERROR_TRUNCATED, k);
        cr_assert(strstr(log, want), "%zu: %s", k, log);
    }
}

Test(ram, main_channel_records_on_preempt)
{
    /* MEM_SIZE with CONTINUE, HOOK and unknown flags fail as on main */
    g_autoptr(Vec) v = vec_new();
    put_be64(v, MP_RAM_SAVE_FLAG_HOOK);
    check_error(v, MP_PARSE_ERROR_UNSUPPORTED, 0);
    g_autoptr(Vec) w = vec_new();
    put_be64(w, 0x1000 | MP_RAM_SAVE_FLAG_MEM_SIZE
                    | MP_RAM_SAVE_FLAG_CONTINUE);
    check_error(w, MP_PARSE_ERROR_RAM_FLAGS, 0);
}
