/* test-qmig.c: the main-channel parser (parsers/qmig-parser.c) and the RAM
 * records it hands to ram-parser.c.
 *
 * Vectors are built with a small stream builder that writes the bytes of
 * each record and, independently of the parser, the log line the parser
 * must give for it (offset and length come from the builder).  Every
 * vector is fed whole, byte by byte and split at every point, each chunk
 * ending at a PROT_NONE page (feed-util.c), and once more with a callback
 * that pauses after every record.
 */
#include "config.h"
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>
#include <glib.h>
#include <criterion/criterion.h>
#include "feed-util.h"
#include "qmig-parser.h"
#include "record-format.h"
#include "vmdesc.h"
#include "xbzrle.h"

#define PS MP_TARGET_PAGE_SIZE
#define CH "src main"

/* ---- parser under test ------------------------------------------------ */

/* Criterion runs each test in its own process, so per-test globals are
 * safe: a test sets them before feeding. */
static MpVmdesc *g_vmdesc;
static gboolean g_headerless;
static MpQmigParser *g_prev; /* a recovery channel takes over from it */

static gpointer
qmig_create(MpRecordFunc cb, gpointer user_data)
{
    MpQmigParser *p = mp_qmig_parser_new(CH, cb, user_data);
    if (g_vmdesc)
        mp_qmig_parser_set_vmdesc(p, g_vmdesc);
    if (g_headerless)
        mp_qmig_parser_set_headerless(p);
    if (g_prev)
        mp_qmig_parser_resume_from(p, g_prev);
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
    return mp_qmig_parser_finish(p, error);
}

static void
qmig_destroy(gpointer p)
{
    mp_qmig_parser_free(p);
}

static const MpParserOps qmig_ops = {qmig_create, qmig_feed, qmig_finish,
                                     qmig_destroy};

/* The same parser behind a callback that pauses after every record: the
 * feeder resumes at buf + consumed, so the log must not change. */
typedef struct {
    MpRecordFunc cb;
    gpointer user_data;
    MpQmigParser *p;
    guint records; /* records reported during the current feed call */
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
    c->p = qmig_create(pause_record, c);
    return c;
}

static MpFeedStatus
pause_feed(gpointer p, const guint8 *buf, gsize len, gsize *consumed,
           GError **error)
{
    PauseCtx *c = p;
    c->records = 0;
    MpFeedStatus st = mp_qmig_parser_feed(c->p, buf, len, consumed, error);
    /* a pause is honoured: the feed stops right after the record */
    cr_assert(c->records <= 1, "%u records in one feed despite pausing",
              c->records);
    cr_assert(c->records == 0 || st != MP_FEED_MORE,
              "a record paused but the feed returned MORE");
    return st;
}

static gboolean
pause_finish(gpointer p, GError **error)
{
    return mp_qmig_parser_finish(((PauseCtx *)p)->p, error);
}

static void
pause_destroy(gpointer p)
{
    mp_qmig_parser_free(((PauseCtx *)p)->p);
    g_free(p);
}

static const MpParserOps pause_ops = {pause_create, pause_feed, pause_finish,
                                      pause_destroy};

/* ---- stream builder ---------------------------------------------------- */

static void
put_u8(GByteArray *b, guint8 v)
{
    g_byte_array_append(b, &v, 1);
}

static void
put_be16(GByteArray *b, guint16 v)
{
    guint8 x[2];
    mp_put_be16(x, v);
    g_byte_array_append(b, x, 2);
}

static void
put_be32(GByteArray *b, guint32 v)
{
    guint8 x[4];
    mp_put_be32(x, v);
    g_byte_array_append(b, x, 4);
}

static void
put_be64(GByteArray *b, guint64 v)
{
    guint8 x[8];
    mp_put_be64(x, v);
    g_byte_array_append(b, x, 8);
}

static void
put_mem(GByteArray *b, const void *p, gsize n)
{
    g_byte_array_append(b, p, n);
}

/* counted string: u8 len, bytes */
static void
put_str(GByteArray *b, const char *s)
{
    put_u8(b, strlen(s));
    put_mem(b, s, strlen(s));
}

typedef struct {
    guint8 type;
    guint32 id;
    char idstr[256];
    guint32 inst, ver;
} VecSection;

/* Bytes of a stream and the log the parser must give for them. */
typedef struct {
    GByteArray *b;
    GString *ex;
    char block[256]; /* current RAM block (CONTINUE) */
    VecSection sec[32];
    int nsec, cur;
} Vec;

static Vec *
vec_new(void)
{
    Vec *v = g_new0(Vec, 1);
    v->b = g_byte_array_new();
    v->ex = g_string_new(NULL);
    v->cur = -1;
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

static gsize
at(const Vec *v)
{
    return v->b->len;
}

/* Expects one record from `start` to the current end. */
static void G_GNUC_PRINTF(3, 4)
ex(Vec *v, gsize start, const char *fmt, ...)
{
    va_list ap;
    g_string_append_printf(v->ex, "off=%zu len=%zu ", start, at(v) - start);
    va_start(ap, fmt);
    g_string_append_vprintf(v->ex, fmt, ap);
    va_end(ap);
    g_string_append_c(v->ex, '\n');
}

static void
v_header(Vec *v)
{
    put_be32(v->b, MP_QMIG_FILE_MAGIC);
    put_be32(v->b, MP_QMIG_FILE_VERSION);
    ex(v, 0, "header magic=0x5145564d version=3");
}

/* caps: NULL-terminated list or NULL for no capabilities subsection */
static void
v_config(Vec *v, const char *machine, guint32 page_bits,
         const char *const *caps, const guint8 *uuid)
{
    gsize s = at(v);
    gboolean xis = FALSE, mapped = FALSE;

    put_u8(v->b, MP_QMIG_CONFIGURATION);
    put_be32(v->b, strlen(machine));
    put_mem(v->b, machine, strlen(machine));
    if (page_bits) {
        put_u8(v->b, MP_QMIG_SUBSECTION);
        put_str(v->b, "configuration/target-page-bits");
        put_be32(v->b, 1);
        put_be32(v->b, page_bits);
    }
    if (caps) {
        put_u8(v->b, MP_QMIG_SUBSECTION);
        put_str(v->b, "configuration/capabilities");
        put_be32(v->b, 1);
        put_be32(v->b, g_strv_length((char **)caps));
        for (int i = 0; caps[i]; i++) {
            put_str(v->b, caps[i]);
            xis |= strcmp(caps[i], "x-ignore-shared") == 0;
            mapped |= strcmp(caps[i], "mapped-ram") == 0;
        }
    }
    if (uuid) {
        put_u8(v->b, MP_QMIG_SUBSECTION);
        put_str(v->b, "configuration/uuid");
        put_be32(v->b, 1);
        put_mem(v->b, uuid, 16);
    }
    ex(v, s, "configuration machine=\"%s\"%s%s", machine,
       xis ? " x-ignore-shared" : "", mapped ? " mapped-ram" : "");
}

static const char *
type_name(guint8 t)
{
    static const char *const n[] = {"?", "start", "part", "end", "full"};
    return t <= 4 ? n[t] : "?";
}

static void
ex_section(Vec *v, gsize s, const char *kind)
{
    const VecSection *c = &v->sec[v->cur];
    ex(v, s, "%s type=%s id=%u idstr=\"%s\" instance=%u version=%u", kind,
       type_name(c->type), c->id, c->idstr, c->inst, c->ver);
}

/* START or FULL header */
static void
v_sec_new(Vec *v, guint8 type, guint32 id, const char *idstr, guint32 inst,
          guint32 ver)
{
    gsize s = at(v);
    int i;

    put_u8(v->b, type);
    put_be32(v->b, id);
    put_str(v->b, idstr);
    put_be32(v->b, inst);
    put_be32(v->b, ver);
    for (i = 0; i < v->nsec && v->sec[i].id != id; i++)
        ;
    if (i == v->nsec)
        v->nsec++;
    v->sec[i] = (VecSection){type, id, "", inst, ver};
    g_strlcpy(v->sec[i].idstr, idstr, sizeof(v->sec[i].idstr));
    v->cur = i;
    ex_section(v, s, "section");
}

/* PART or END header of an announced section */
static void
v_sec_cont(Vec *v, guint8 type, guint32 id)
{
    gsize s = at(v);
    int i;

    put_u8(v->b, type);
    put_be32(v->b, id);
    for (i = 0; i < v->nsec && v->sec[i].id != id; i++)
        ;
    cr_assert(i < v->nsec, "builder: section %u not announced", id);
    v->sec[i].type = type;
    v->cur = i;
    ex_section(v, s, "section");
}

static void
v_footer(Vec *v)
{
    gsize s = at(v);
    put_u8(v->b, MP_QMIG_SECTION_FOOTER);
    put_be32(v->b, v->sec[v->cur].id);
    ex_section(v, s, "footer");
}

/* A command; `extra` is what the log adds after "len=N". */
static void
v_cmd(Vec *v, guint16 cmd, const void *payload, guint16 len,
      const char *extra)
{
    gsize s = at(v);
    put_u8(v->b, MP_QMIG_COMMAND);
    put_be16(v->b, cmd);
    put_be16(v->b, len);
    put_mem(v->b, payload, len);
    ex(v, s, "command cmd=%s len=%u%s", mp_qmig_command_name(cmd), len,
       extra ? extra : "");
}

static void
v_cmd0(Vec *v, guint16 cmd)
{
    v_cmd(v, cmd, NULL, 0, NULL);
}

static void
v_ping(Vec *v, guint32 value)
{
    guint8 x[4];
    g_autofree char *e = g_strdup_printf(" value=%u", value);
    mp_put_be32(x, value);
    v_cmd(v, MP_QMIG_CMD_PING, x, 4, e);
}

static void
v_advise(Vec *v, guint64 summary)
{
    guint8 x[16];
    g_autofree char *e = g_strdup_printf(
        " summary=0x%" G_GINT64_MODIFIER "x tps=%u", summary, PS);
    mp_put_be64(x, summary);
    mp_put_be64(x + 8, PS);
    v_cmd(v, MP_QMIG_CMD_POSTCOPY_ADVISE, x, 16, e);
}

static void
v_discard(Vec *v, const char *block, guint n)
{
    g_autoptr(GByteArray) p = g_byte_array_new();
    g_autofree char *e = g_strdup_printf(" block=\"%s\" ranges=%u", block, n);
    put_u8(p, 0);
    put_str(p, block);
    put_u8(p, 0);
    for (guint i = 0; i < n; i++) {
        put_be64(p, (guint64)i * 16 * PS);
        put_be64(p, 2 * PS);
    }
    v_cmd(v, MP_QMIG_CMD_POSTCOPY_RAM_DISCARD, p->data, p->len, e);
}

static void
v_recv_bitmap(Vec *v, const char *block)
{
    g_autoptr(GByteArray) p = g_byte_array_new();
    g_autofree char *e = g_strdup_printf(" block=\"%s\"", block);
    put_str(p, block);
    v_cmd(v, MP_QMIG_CMD_RECV_BITMAP, p->data, p->len, e);
}

/* PACKAGED: begin writes the command with a placeholder length and
 * returns a token for v_packaged_end, which patches N and the log. */
typedef struct {
    gsize cmd_start, ex_pos;
} Pkg;

static Pkg
v_packaged_begin(Vec *v)
{
    Pkg k = {at(v), v->ex->len};
    put_u8(v->b, MP_QMIG_COMMAND);
    put_be16(v->b, MP_QMIG_CMD_PACKAGED);
    put_be16(v->b, 4);
    put_be32(v->b, 0);
    return k;
}

static void
v_packaged_end(Vec *v, Pkg k)
{
    guint32 n = at(v) - (k.cmd_start + 9);
    g_autofree char *line = g_strdup_printf(
        "off=%zu len=9 command cmd=PACKAGED len=4 packaged=%u\n", k.cmd_start,
        n);
    mp_put_be32(v->b->data + k.cmd_start + 5, n);
    g_string_insert(v->ex, k.ex_pos, line);
    g_string_append_printf(v->ex, "off=%zu len=0 packaged_end\n", at(v));
}

/* RAM record header: block NULL means CONTINUE (same block as before) */
static void
ram_hdr(Vec *v, guint64 addr, guint32 flags, const char *block)
{
    if (!block)
        flags |= MP_RAM_SAVE_FLAG_CONTINUE;
    put_be64(v->b, addr | flags);
    if (block) {
        put_str(v->b, block);
        g_strlcpy(v->block, block, sizeof(v->block));
    }
}

static void
ex_page(Vec *v, gsize s, guint64 addr, gboolean cont, const char *kind,
        gint payload)
{
    g_autofree char *pl =
        payload >= 0 ? g_strdup_printf(" payload=%d", payload) : g_strdup("");
    ex(v, s, "ram_page block=\"%s\" addr=0x%" G_GINT64_MODIFIER "x kind=%s%s%s",
       v->block, addr, kind, cont ? " cont" : "", pl);
}

static void
v_zero(Vec *v, const char *block, guint64 addr)
{
    gsize s = at(v);
    ram_hdr(v, addr, MP_RAM_SAVE_FLAG_ZERO, block);
    put_u8(v->b, 0);
    ex_page(v, s, addr, !block, "zero", 1);
}

static void
fill_page(guint8 *page, guint seed)
{
    for (guint i = 0; i < PS; i++)
        page[i] = (guint8)(i * 7 + seed * 13 + (i >> 8));
}

static void
v_page(Vec *v, const char *block, guint64 addr, guint seed)
{
    guint8 page[PS];
    gsize s = at(v);
    fill_page(page, seed);
    ram_hdr(v, addr, MP_RAM_SAVE_FLAG_PAGE, block);
    put_mem(v->b, page, PS);
    ex_page(v, s, addr, !block, "normal", -1);
}

/* XBZRLE delta from page(seed) to page(seed) with a few bytes changed */
static void
v_xbzrle(Vec *v, const char *block, guint64 addr, guint seed)
{
    guint8 old[PS], new_page[PS], enc[PS];
    gsize s = at(v);

    fill_page(old, seed);
    memcpy(new_page, old, PS);
    new_page[0] ^= 0xff;
    for (guint i = 100; i < 140; i++)
        new_page[i] ^= 0x5a;
    new_page[PS - 1] ^= 1;
    gssize n = mp_xbzrle_encode(old, new_page, PS, enc, sizeof(enc));
    cr_assert(n > 0);
    ram_hdr(v, addr, MP_RAM_SAVE_FLAG_XBZRLE, block);
    put_u8(v->b, MP_ENCODING_FLAG_XBZRLE);
    put_be16(v->b, n);
    put_mem(v->b, enc, n);
    ex_page(v, s, addr, !block, "xbzrle", n);
}

static void
v_compressed(Vec *v, const char *block, guint64 addr, guint seed)
{
    guint8 page[PS], out[PS * 2];
    uLongf n = sizeof(out);
    gsize s = at(v);

    fill_page(page, seed);
    cr_assert(compress2(out, &n, page, PS, 6) == Z_OK);
    ram_hdr(v, addr, MP_RAM_SAVE_FLAG_COMPRESS_PAGE, block);
    put_be32(v->b, n);
    put_mem(v->b, out, n);
    ex_page(v, s, addr, !block, "compressed", (gint)n);
}

static void
v_eos(Vec *v)
{
    gsize s = at(v);
    put_be64(v->b, MP_RAM_SAVE_FLAG_EOS);
    ex(v, s, "ram_eos");
}

static void
v_flush(Vec *v)
{
    gsize s = at(v);
    put_be64(v->b, MP_RAM_SAVE_FLAG_MULTIFD_FLUSH);
    ex(v, s, "ram_multifd_flush");
}

static void
v_mem_size(Vec *v, guint64 total)
{
    gsize s = at(v);
    put_be64(v->b, total | MP_RAM_SAVE_FLAG_MEM_SIZE);
    ex(v, s, "ram_mem_size total=%" G_GUINT64_FORMAT, total);
}

/* page_size 0: no page_size field; has_mr: an mr_addr field */
static void
v_block(Vec *v, const char *name, guint64 used, guint64 page_size,
        gboolean has_mr, guint64 mr)
{
    gsize s = at(v);
    GString *e = g_string_new(NULL);

    put_str(v->b, name);
    put_be64(v->b, used);
    if (page_size) {
        put_be64(v->b, page_size);
        g_string_append_printf(e, " page_size=%" G_GUINT64_FORMAT, page_size);
    }
    if (has_mr) {
        put_be64(v->b, mr);
        g_string_append_printf(e, " mr_addr=0x%" G_GINT64_MODIFIER "x", mr);
    }
    ex(v, s, "ram_block block=\"%s\" used=%" G_GUINT64_FORMAT "%s", name, used,
       e->str);
    g_string_free(e, TRUE);
}

static void
v_eof(Vec *v)
{
    gsize s = at(v);
    put_u8(v->b, MP_QMIG_EOF);
    ex(v, s, "eof");
}

static void
v_vmdesc(Vec *v, const char *json)
{
    gsize s = at(v);
    put_u8(v->b, MP_QMIG_VMDESCRIPTION);
    put_be32(v->b, strlen(json));
    put_mem(v->b, json, strlen(json));
    ex(v, s, "vmdesc json_len=%zu", strlen(json));
}

static void
v_dev_data(Vec *v, gsize n, guint seed)
{
    gsize s = at(v);
    for (gsize i = 0; i < n; i++)
        put_u8(v->b, (guint8)(seed + i * 31));
    ex(v, s, "device_data bytes=%zu", n);
}

static void
v_blk_block(Vec *v, const char *dev, guint64 sector, gboolean zero)
{
    gsize s = at(v);
    put_be64(v->b, sector << MP_BLK_SECTOR_BITS | MP_BLK_MIG_FLAG_DEVICE_BLOCK
                       | (zero ? MP_BLK_MIG_FLAG_ZERO_BLOCK : 0));
    put_str(v->b, dev);
    if (!zero) {
        gsize d = at(v);
        g_byte_array_set_size(v->b, d + MP_BLK_MIG_BLOCK_SIZE);
        for (gsize i = 0; i < MP_BLK_MIG_BLOCK_SIZE; i++)
            v->b->data[d + i] = (guint8)(i ^ (i >> 11));
    }
    ex(v, s, "blk_block device=\"%s\" sector=%" G_GUINT64_FORMAT "%s", dev,
       sector, zero ? " zero" : "");
}

static void
v_blk_progress(Vec *v, guint pct)
{
    gsize s = at(v);
    put_be64(v->b, (guint64)pct << MP_BLK_SECTOR_BITS
                       | MP_BLK_MIG_FLAG_PROGRESS);
    ex(v, s, "blk_progress percent=%u", pct);
}

static void
v_blk_eos(Vec *v)
{
    gsize s = at(v);
    put_be64(v->b, MP_BLK_MIG_FLAG_EOS);
    ex(v, s, "blk_eos");
}

/* Bytes with no log line of their own (malformed tails, opaque data). */
static void
v_raw(Vec *v, const void *p, gsize n)
{
    put_mem(v->b, p, n);
}

/* ---- checks ------------------------------------------------------------ */

/* Opaque pass-through comes one record per chunk; merge neighbours so that
 * logs of different splits compare equal. */
static char *
coalesce_opaque(const char *log)
{
    g_auto(GStrv) lines = g_strsplit(log, "\n", -1);
    GString *out = g_string_new(NULL);
    guint64 o_off = 0, o_len = 0;
    char *why = NULL;
    gboolean in = FALSE;

    for (int i = 0; lines[i]; i++) {
        guint64 off, len;
        int n = 0;
        if (sscanf(lines[i], "off=%" G_GUINT64_FORMAT " len=%" G_GUINT64_FORMAT
                             " opaque %n",
                   &off, &len, &n) == 2
            && n > 0) {
            if (!in) {
                o_off = off;
                o_len = 0;
                const char *w = strstr(lines[i], " why=");
                why = w ? g_strdup(w) : NULL;
                in = TRUE;
            }
            o_len += len;
            continue;
        }
        if (in) {
            g_string_append_printf(out,
                                   "off=%" G_GUINT64_FORMAT
                                   " len=%" G_GUINT64_FORMAT
                                   " opaque bytes=%" G_GUINT64_FORMAT "%s\n",
                                   o_off, o_len, o_len, why ? why : "");
            g_clear_pointer(&why, g_free);
            in = FALSE;
        }
        if (lines[i][0] || lines[i + 1])
            g_string_append_printf(out, "%s%s", lines[i],
                                   lines[i + 1] ? "\n" : "");
    }
    return g_string_free(out, FALSE);
}

/* Every split, with opaque records merged. */
static char *
check_splits_opaque(const MpParserOps *ops, const guint8 *d, gsize len)
{
    g_autofree char *w = feed_log(ops, d, len, 0, 0);
    char *whole = coalesce_opaque(w);
    g_autofree char *b1 = feed_log(ops, d, len, 1, 0);
    g_autofree char *bytes = coalesce_opaque(b1);
    cr_assert_str_eq(bytes, whole, "byte-by-byte feed differs");
    for (gsize split = 1; split < len; split++) {
        g_autofree char *s1 = feed_log(ops, d, len, 0, split);
        g_autofree char *s = coalesce_opaque(s1);
        cr_assert_str_eq(s, whole, "split at %zu differs", split);
    }
    return whole;
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

/* Feeds `v` every way and compares with its expected log plus `status`
 * ("END", "MORE" or an "ERROR ..." line). */
static void
check_vec(Vec *v, const char *status)
{
    dump_vector(v->b);
    g_autofree char *log =
        feed_check_all_splits(&qmig_ops, v->b->data, v->b->len);
    g_string_append_printf(v->ex, "%s\n", status);
    cr_assert_str_eq(log, v->ex->str);
    g_autofree char *pw = feed_log(&pause_ops, v->b->data, v->b->len, 0, 0);
    cr_assert_str_eq(pw, v->ex->str, "pausing after every record differs");
    g_autofree char *pb = feed_log(&pause_ops, v->b->data, v->b->len, 1, 0);
    cr_assert_str_eq(pb, v->ex->str, "pausing, byte by byte, differs");
}

static void
check_vec_opaque(Vec *v, const char *status)
{
    dump_vector(v->b);
    g_autofree char *log =
        check_splits_opaque(&qmig_ops, v->b->data, v->b->len);
    g_string_append_printf(v->ex, "%s\n", status);
    cr_assert_str_eq(log, v->ex->str);
    g_autofree char *pw1 = feed_log(&pause_ops, v->b->data, v->b->len, 0, 0);
    g_autofree char *pw = coalesce_opaque(pw1);
    cr_assert_str_eq(pw, v->ex->str, "pausing after every record differs");
}

/* The vector's records, then an error with `code` whose message names the
 * channel and `offset`. */
static void
check_error(Vec *v, int code, guint64 offset)
{
    dump_vector(v->b);
    g_autofree char *log =
        feed_check_all_splits(&qmig_ops, v->b->data, v->b->len);
    g_autofree char *head = g_strdup_printf("ERROR %d " CH ": ", code);
    g_autofree char *where =
        g_strdup_printf("offset %" G_GUINT64_FORMAT, offset);

    cr_assert(g_str_has_prefix(log, v->ex->str), "records before the error:\n%s"
              "expected:\n%s", log, v->ex->str);
    const char *last = log + v->ex->len;
    cr_assert(g_str_has_prefix(last, head), "expected %s..., got:\n%s", head,
              last);
    cr_assert(strstr(last, where), "error does not name %s:\n%s", where, last);
    cr_assert(strchr(last, '\n') == last + strlen(last) - 1,
              "a line after the error:\n%s", last);
    g_autofree char *pw = feed_log(&pause_ops, v->b->data, v->b->len, 0, 0);
    cr_assert_str_eq(pw, log, "pausing after every record differs");
}

static MpVmdesc *
vmdesc_of(const char *json)
{
    g_autoptr(GError) err = NULL;
    MpVmdesc *vd = mp_vmdesc_new(json, strlen(json), &err);
    cr_assert(vd, "vmdesc: %s", err ? err->message : "?");
    return vd;
}

/* ---- common stream pieces ---------------------------------------------- */

#define RAM_ID 2

/* header, configuration, START ram with a two-block list, EOS, footer */
static void
v_precopy_start(Vec *v)
{
    v_header(v);
    v_config(v, "pc-q35-7.2", 0, NULL, NULL);
    v_sec_new(v, MP_QMIG_SECTION_START, RAM_ID, "ram", 0, 4);
    v_mem_size(v, 64 * PS + 4 * PS);
    v_block(v, "pc.ram", 64 * PS, 0, FALSE, 0);
    v_block(v, "/rom@etc/acpi/tables", 4 * PS, 0, FALSE, 0);
    v_eos(v);
    v_footer(v);
}

/* ---- valid streams ----------------------------------------------------- */

Test(qmig, header_only)
{
    g_autoptr(Vec) v = vec_new();
    v_header(v);
    check_vec(v, "MORE");
}

Test(qmig, configuration_plain)
{
    g_autoptr(Vec) v = vec_new();
    v_header(v);
    v_config(v, "pc-q35-7.2", 0, NULL, NULL);
    v_eof(v);
    check_vec(v, "MORE");
}

Test(qmig, configuration_capabilities)
{
    static const char *const caps[] = {"x-ignore-shared", NULL};
    g_autoptr(Vec) v = vec_new();
    v_header(v);
    v_config(v, "pc-q35-7.2", 0, caps, NULL);
    v_eof(v);
    check_vec(v, "MORE");
    cr_assert(strstr(v->ex->str, "machine=\"pc-q35-7.2\" x-ignore-shared\n"));
}

Test(qmig, configuration_no_capability_listed)
{
    static const char *const caps[] = {NULL};
    g_autoptr(Vec) v = vec_new();
    v_header(v);
    v_config(v, "pc-i440fx-7.2", 0, caps, NULL);
    v_eof(v);
    check_vec(v, "MORE");
}

Test(qmig, configuration_uuid)
{
    static const guint8 uuid[16] = {0x5e, 0x7e, 0x05, 0x00, 1, 2, 3, 4,
                                    5,    6,    7,    8,    9, 10, 11, 12};
    g_autoptr(Vec) v = vec_new();
    v_header(v);
    v_config(v, "pc-q35-7.2", 0, NULL, uuid);
    v_eof(v);
    check_vec(v, "MORE");
}

Test(qmig, configuration_all_subsections)
{
    static const char *const caps[] = {"x-ignore-shared", "mapped-ram",
                                       "some-future-cap", "", NULL};
    static const guint8 uuid[16] = {0};
    g_autoptr(Vec) v = vec_new();
    v_header(v);
    v_config(v, "virt-9.2", 12, caps, uuid);
    v_eof(v);
    check_vec(v, "MORE");
    cr_assert(strstr(v->ex->str, " x-ignore-shared mapped-ram\n"));
}

Test(qmig, configuration_empty_name)
{
    g_autoptr(Vec) v = vec_new();
    v_header(v);
    v_config(v, "", 0, NULL, NULL);
    v_eof(v);
    check_vec(v, "MORE");
}

Test(qmig, precopy_ram_sections_with_footers)
{
    g_autoptr(Vec) v = vec_new();
    v_precopy_start(v);
    v_sec_cont(v, MP_QMIG_SECTION_PART, RAM_ID);
    v_page(v, "pc.ram", 0, 1);
    v_zero(v, NULL, PS);
    v_zero(v, NULL, 2 * PS);
    v_page(v, "/rom@etc/acpi/tables", 3 * PS, 2);
    v_zero(v, "pc.ram", 63 * PS);
    v_eos(v);
    v_footer(v);
    v_sec_cont(v, MP_QMIG_SECTION_END, RAM_ID);
    v_eos(v);
    v_footer(v);
    v_eof(v);
    check_vec(v, "MORE");
}

/* Machine types <= 2.3: no configuration and no footers. */
Test(qmig, sections_without_footers)
{
    g_autoptr(MpVmdesc) vd = vmdesc_of(
        "{\"page_size\":4096,\"devices\":[{\"name\":\"timer\","
        "\"instance_id\":0,\"vmsd_name\":\"timer\",\"version\":2,"
        "\"fields\":[{\"name\":\"t\",\"type\":\"int64\",\"size\":8}]},"
        "{\"name\":\"cpu\",\"instance_id\":1,\"vmsd_name\":\"cpu\","
        "\"version\":12,\"fields\":[{\"name\":\"r\",\"type\":\"uint32\","
        "\"size\":4,\"array_len\":16}]}]}");
    g_autoptr(Vec) v = vec_new();

    g_vmdesc = vd;
    v_header(v);
    v_sec_new(v, MP_QMIG_SECTION_START, 3, "ram", 0, 4);
    v_mem_size(v, 16 * PS);
    v_block(v, "pc.ram", 16 * PS, 0, FALSE, 0);
    v_eos(v);
    v_sec_cont(v, MP_QMIG_SECTION_PART, 3);
    v_page(v, "pc.ram", 0, 3);
    v_eos(v);
    v_sec_cont(v, MP_QMIG_SECTION_END, 3);
    v_zero(v, NULL, PS);
    v_eos(v);
    v_sec_new(v, MP_QMIG_SECTION_FULL, 4, "timer", 0, 2);
    v_dev_data(v, 8, 1);
    v_sec_new(v, MP_QMIG_SECTION_FULL, 5, "cpu", 1, 12);
    v_dev_data(v, 64, 2);
    v_eof(v);
    v_vmdesc(v, "{}");
    check_vec(v, "END");
}

Test(qmig, every_command)
{
    g_autoptr(Vec) v = vec_new();
    v_header(v);
    v_config(v, "pc-q35-10.0", 0, NULL, NULL);
    v_cmd0(v, MP_QMIG_CMD_OPEN_RETURN_PATH);
    v_ping(v, 1);
    v_ping(v, 0xffffffffu);
    v_cmd0(v, MP_QMIG_CMD_POSTCOPY_ADVISE);
    v_advise(v, PS);
    v_cmd0(v, MP_QMIG_CMD_ENABLE_COLO);
    v_discard(v, "pc.ram", 1);
    v_discard(v, "/rom@etc/acpi/tables", 12);
    v_cmd0(v, MP_QMIG_CMD_POSTCOPY_LISTEN);
    v_cmd0(v, MP_QMIG_CMD_POSTCOPY_RUN);
    v_cmd0(v, MP_QMIG_CMD_POSTCOPY_RESUME);
    v_recv_bitmap(v, "pc.ram");
    v_cmd0(v, MP_QMIG_CMD_SWITCHOVER_START);
    v_eof(v);
    check_vec(v, "MORE");
}

/* The whole postcopy flow of 7.2 (savevm.c postcopy_start): huge-page
 * block list, discards, the package with LISTEN, devices, PING, RUN, then
 * RAM again after the package. */
static void
build_postcopy(Vec *v, gboolean sliced, gboolean last_psize)
{
    Pkg k;

    v_header(v);
    v_config(v, "pc-q35-7.2", 0, NULL, NULL);
    v_cmd0(v, MP_QMIG_CMD_OPEN_RETURN_PATH);
    v_ping(v, 1);
    v_advise(v, PS | (2u << 20));
    v_sec_new(v, MP_QMIG_SECTION_START, RAM_ID, "ram", 0, 4);
    v_mem_size(v, (4u << 20) + 8 * PS + (2u << 20));
    v_block(v, "pc.ram", 4u << 20, 2u << 20, FALSE, 0);
    v_block(v, "pc.bios", 8 * PS, 0, FALSE, 0);
    if (last_psize)
        v_block(v, "mem1", 2u << 20, 2u << 20, FALSE, 0);
    else
        v_block(v, "mem1", 2u << 20, 0, FALSE, 0);
    v_eos(v);
    v_footer(v);
    v_sec_cont(v, MP_QMIG_SECTION_PART, RAM_ID);
    v_page(v, "pc.ram", 0, 1);
    v_zero(v, NULL, PS);
    v_eos(v);
    v_footer(v);
    v_discard(v, "pc.ram", 3);
    v_discard(v, "mem1", 1);
    v_ping(v, 2);
    k = v_packaged_begin(v);
    v_cmd0(v, MP_QMIG_CMD_POSTCOPY_LISTEN);
    v_sec_new(v, MP_QMIG_SECTION_FULL, 7, "apic", 0, 3);
    if (sliced) {
        v_dev_data(v, 12, 7);
        v_footer(v);
        v_sec_new(v, MP_QMIG_SECTION_FULL, 8, "timer", 0, 2);
        v_dev_data(v, 8, 8);
        v_footer(v);
        v_ping(v, 3);
        v_cmd0(v, MP_QMIG_CMD_POSTCOPY_RUN);
    } else {
        gsize s = at(v);
        guint8 dev[12] = {1, 2, 3};
        v_raw(v, dev, sizeof(dev));
        put_u8(v->b, MP_QMIG_SECTION_FOOTER);
        put_be32(v->b, 7);
        /* PING(3) and RUN are inside the opaque part */
        put_u8(v->b, MP_QMIG_COMMAND);
        put_be16(v->b, MP_QMIG_CMD_PING);
        put_be16(v->b, 4);
        put_be32(v->b, 3);
        put_u8(v->b, MP_QMIG_COMMAND);
        put_be16(v->b, MP_QMIG_CMD_POSTCOPY_RUN);
        put_be16(v->b, 0);
        ex(v, s, "opaque bytes=%zu why=\"device state (no vmdesc to slice "
                 "it)\"",
           at(v) - s);
    }
    v_packaged_end(v, k);
    v_ping(v, 4);
    v_sec_cont(v, MP_QMIG_SECTION_PART, RAM_ID);
    v_page(v, NULL, 2 * PS, 2);
    v_page(v, "mem1", 0, 3);
    v_eos(v);
    v_footer(v);
    v_sec_cont(v, MP_QMIG_SECTION_END, RAM_ID);
    v_zero(v, NULL, PS);
    v_eos(v);
    v_footer(v);
    v_eof(v);
}

static const char *const postcopy_vmdesc =
    "{\"page_size\":4096,\"devices\":["
    "{\"name\":\"apic\",\"instance_id\":0,\"vmsd_name\":\"apic\","
    "\"version\":3,\"fields\":[{\"name\":\"a\",\"type\":\"uint32\","
    "\"size\":4},{\"name\":\"b\",\"type\":\"uint64\",\"size\":8}]},"
    "{\"name\":\"timer\",\"instance_id\":0,\"vmsd_name\":\"timer\","
    "\"version\":2,\"fields\":[{\"name\":\"t\",\"type\":\"int64\","
    "\"size\":8}]}]}";

Test(qmig, postcopy_package_opaque_devices)
{
    g_autoptr(Vec) v = vec_new();
    build_postcopy(v, FALSE, TRUE);
    check_vec_opaque(v, "MORE");
}

Test(qmig, postcopy_package_sliced_devices)
{
    g_autoptr(MpVmdesc) vd = vmdesc_of(postcopy_vmdesc);
    g_autoptr(Vec) v = vec_new();
    g_vmdesc = vd;
    build_postcopy(v, TRUE, TRUE);
    check_vec(v, "MORE");
}

/* The last block of the list has no page_size field: what follows it is
 * the EOS header, found by its flag bits. */
Test(qmig, postcopy_last_block_without_page_size)
{
    g_autoptr(MpVmdesc) vd = vmdesc_of(postcopy_vmdesc);
    g_autoptr(Vec) v = vec_new();
    g_vmdesc = vd;
    build_postcopy(v, TRUE, FALSE);
    check_vec(v, "MORE");
}

/* An ADVISE whose summary is the target page size: no page_size fields. */
Test(qmig, postcopy_small_pages_block_list)
{
    g_autoptr(Vec) v = vec_new();
    v_header(v);
    v_config(v, "pc-q35-7.2", 0, NULL, NULL);
    v_advise(v, PS);
    v_sec_new(v, MP_QMIG_SECTION_START, RAM_ID, "ram", 0, 4);
    v_mem_size(v, 3 * PS);
    v_block(v, "a", PS, 0, FALSE, 0);
    v_block(v, "b", 2 * PS, 0, FALSE, 0);
    v_eos(v);
    v_footer(v);
    v_eof(v);
    check_vec(v, "MORE");
}

/* A block list where every block has a huge page size, the first block
 * last in the list as well (a one-block list). */
Test(qmig, postcopy_single_huge_block)
{
    g_autoptr(Vec) v = vec_new();
    v_header(v);
    v_advise(v, 1u << 30);
    v_sec_new(v, MP_QMIG_SECTION_START, RAM_ID, "ram", 0, 4);
    v_mem_size(v, 1u << 30);
    v_block(v, "pc.ram", 1u << 30, 1u << 30, FALSE, 0);
    v_flush(v);
    v_eos(v);
    v_footer(v);
    v_eof(v);
    check_vec(v, "MORE");
}

Test(qmig, x_ignore_shared_block_list)
{
    static const char *const caps[] = {"x-ignore-shared", NULL};
    g_autoptr(Vec) v = vec_new();
    v_header(v);
    v_config(v, "pc-q35-7.2", 0, caps, NULL);
    v_sec_new(v, MP_QMIG_SECTION_START, RAM_ID, "ram", 0, 4);
    v_mem_size(v, 16 * PS + 2 * PS + PS);
    v_block(v, "pc.ram", 16 * PS, 0, TRUE, 0);
    v_block(v, "shm0", 2 * PS, 0, TRUE, 0x100000000ull);
    v_block(v, "pc.bios", PS, 0, TRUE, 0xfffc0000ull);
    v_eos(v);
    v_footer(v);
    v_sec_cont(v, MP_QMIG_SECTION_PART, RAM_ID);
    v_page(v, "pc.ram", 15 * PS, 4);
    v_zero(v, "pc.bios", 0);
    v_eos(v);
    v_footer(v);
    v_eof(v);
    check_vec(v, "MORE");
}

/* x-ignore-shared and postcopy with small pages: mr_addr only. */
Test(qmig, x_ignore_shared_with_small_page_postcopy)
{
    static const char *const caps[] = {"x-ignore-shared", NULL};
    g_autoptr(Vec) v = vec_new();
    v_header(v);
    v_config(v, "pc-q35-7.2", 0, caps, NULL);
    v_advise(v, PS);
    v_sec_new(v, MP_QMIG_SECTION_START, RAM_ID, "ram", 0, 4);
    v_mem_size(v, 2 * PS);
    v_block(v, "pc.ram", PS, 0, TRUE, 0);
    v_block(v, "x", PS, 0, TRUE, 0);
    v_eos(v);
    v_footer(v);
    v_eof(v);
    check_vec(v, "MORE");
}

Test(qmig, ram_record_kinds)
{
    g_autoptr(Vec) v = vec_new();
    v_precopy_start(v);
    v_sec_cont(v, MP_QMIG_SECTION_PART, RAM_ID);
    v_page(v, "pc.ram", 5 * PS, 1);
    v_zero(v, NULL, 6 * PS);
    v_xbzrle(v, NULL, 5 * PS, 1);
    v_compressed(v, NULL, 7 * PS, 2);
    v_xbzrle(v, "/rom@etc/acpi/tables", 0, 3);
    v_compressed(v, "pc.ram", 63 * PS, 4);
    v_flush(v);
    v_zero(v, NULL, 0);
    v_eos(v);
    v_footer(v);
    v_eof(v);
    check_vec(v, "MORE");
}

/* An XBZRLE record with an empty delta (QEMU's decoder accepts len 0). */
Test(qmig, xbzrle_empty_delta)
{
    g_autoptr(Vec) v = vec_new();
    v_precopy_start(v);
    v_sec_cont(v, MP_QMIG_SECTION_PART, RAM_ID);
    gsize s = at(v);
    ram_hdr(v, 0, MP_RAM_SAVE_FLAG_XBZRLE, "pc.ram");
    put_u8(v->b, 1);
    put_be16(v->b, 0);
    ex_page(v, s, 0, FALSE, "xbzrle", 0);
    v_eos(v);
    v_footer(v);
    check_vec(v, "MORE");
}

/* CONTINUE refers to the last block of the channel, across EOS and across
 * sections (ram.c ram_block_from_stream: last_recv_block persists). */
Test(qmig, continue_across_eos_and_sections)
{
    g_autoptr(Vec) v = vec_new();
    v_precopy_start(v);
    v_sec_cont(v, MP_QMIG_SECTION_PART, RAM_ID);
    v_zero(v, "/rom@etc/acpi/tables", PS);
    v_eos(v);
    v_footer(v);
    v_sec_cont(v, MP_QMIG_SECTION_PART, RAM_ID);
    v_zero(v, NULL, 2 * PS); /* still the ROM */
    v_compressed(v, NULL, 3 * PS, 9);
    v_eos(v);
    v_footer(v);
    v_sec_new(v, MP_QMIG_SECTION_FULL, 9, "globalstate", 0, 1);
    /* (opaque: no vmdesc; nothing follows) */
    {
        gsize s = at(v);
        v_raw(v, "\x00\x00\x00\x01", 4);
        ex(v, s, "opaque bytes=4 why=\"device state (no vmdesc to slice "
                 "it)\"");
    }
    check_vec_opaque(v, "MORE");
}

Test(qmig, continue_across_end_section)
{
    g_autoptr(Vec) v = vec_new();
    v_precopy_start(v);
    v_sec_cont(v, MP_QMIG_SECTION_PART, RAM_ID);
    v_page(v, "pc.ram", 9 * PS, 1);
    v_eos(v);
    v_footer(v);
    v_sec_cont(v, MP_QMIG_SECTION_END, RAM_ID);
    v_page(v, NULL, 10 * PS, 2);
    v_eos(v);
    v_footer(v);
    v_eof(v);
    check_vec(v, "MORE");
}

/* Block migration: a 1 MiB chunk is too big for every split, so split at
 * every point outside the chunk and at a stride inside it. */
Test(qmig, block_section, .timeout = 60)
{
    g_autoptr(Vec) v = vec_new();
    gsize data_from, data_to;

    v_precopy_start(v);
    v_sec_new(v, MP_QMIG_SECTION_START, 3, "block", 0, 1);
    v_blk_block(v, "drive0", 0, TRUE);
    v_blk_progress(v, 0);
    v_blk_eos(v);
    v_footer(v);
    v_sec_cont(v, MP_QMIG_SECTION_PART, 3);
    data_from = at(v) + 8 + 7;
    v_blk_block(v, "drive0", 2048, FALSE);
    data_to = at(v);
    v_blk_block(v, "drive1", 4096, TRUE);
    v_blk_progress(v, 50);
    v_blk_eos(v);
    v_footer(v);
    v_sec_cont(v, MP_QMIG_SECTION_END, 3);
    v_blk_progress(v, 100);
    v_blk_eos(v);
    v_footer(v);
    v_eof(v);
    g_string_append(v->ex, "MORE\n");

    g_autofree char *whole = feed_log(&qmig_ops, v->b->data, v->b->len, 0, 0);
    cr_assert_str_eq(whole, v->ex->str);
    for (gsize split = 1; split < v->b->len; split++) {
        if (split > data_from + 64 && split < data_to - 64)
            split = MIN(split + 16381 - 1, data_to - 64);
        g_autofree char *s =
            feed_log(&qmig_ops, v->b->data, v->b->len, 0, split);
        cr_assert_str_eq(s, whole, "split at %zu differs:\n%s", split, s);
    }
    /* (small chunks over 1 MiB cost a guard page each: use 4093) */
    g_autofree char *c = feed_log(&qmig_ops, v->b->data, v->b->len, 4093, 0);
    cr_assert_str_eq(c, whole, "4093-byte chunks differ");
    g_autofree char *pw = feed_log(&pause_ops, v->b->data, v->b->len, 0, 0);
    cr_assert_str_eq(pw, whole, "pausing differs");
}

/* A vmdesc with fields, array_len, an old-style device and nested
 * subsections (vmstate.c vmsd_desc_field_*, vmstate_subsection_save). */
static const char *const slice_vmdesc =
    "{\"page_size\":4096,\"devices\":["
    "{\"name\":\"timer\",\"instance_id\":0,\"vmsd_name\":\"timer\","
    "\"version\":2,\"fields\":[{\"name\":\"ticks_offset\",\"type\":\"int64\","
    "\"size\":8},{\"name\":\"regs\",\"type\":\"uint32\",\"size\":4,"
    "\"array_len\":5}],\"subsections\":[{\"vmsd_name\":\"timer/dt\","
    "\"version\":1,\"fields\":[{\"name\":\"dt\",\"type\":\"int64\","
    "\"size\":8}],\"subsections\":[{\"vmsd_name\":\"timer/dt/x\","
    "\"version\":1,\"fields\":[{\"name\":\"x\",\"type\":\"uint8\","
    "\"size\":1}]}]}]},"
    "{\"name\":\"slirp\",\"instance_id\":0,\"vmsd_name\":\"slirp\","
    "\"version\":4,\"size\":13,\"fields\":[{\"name\":\"data\",\"size\":13,"
    "\"type\":\"buffer\"}]},"
    "{\"name\":\"empty\",\"instance_id\":0,\"vmsd_name\":\"empty\","
    "\"version\":1,\"fields\":[]},"
    "{\"name\":\"cpu\",\"instance_id\":1,\"vmsd_name\":\"cpu\","
    "\"version\":12,\"fields\":[{\"name\":\"env\",\"type\":\"struct\","
    "\"size\":40,\"struct\":{\"vmsd_name\":\"env\",\"version\":1,"
    "\"fields\":[{\"name\":\"r\",\"type\":\"uint64\",\"size\":8,"
    "\"array_len\":5}]}}]},"
    "{\"name\":\"cpu\",\"instance_id\":0,\"vmsd_name\":\"cpu\","
    "\"version\":12,\"fields\":[{\"name\":\"env\",\"type\":\"struct\","
    "\"size\":40}]}"
    "]}";

/* timer: 8 + 5*4 + (1+1+8+4 + 8 + (1+1+10+4 + 1)) = 28 + 22 + 17 = 67 */
static void
build_devices(Vec *v, gsize timer_bytes)
{
    v_sec_new(v, MP_QMIG_SECTION_FULL, 10, "timer", 0, 2);
    v_dev_data(v, timer_bytes, 1);
    v_footer(v);
    v_sec_new(v, MP_QMIG_SECTION_FULL, 11, "slirp", 0, 4);
    v_dev_data(v, 13, 2);
    v_footer(v);
    v_sec_new(v, MP_QMIG_SECTION_FULL, 12, "empty", 0, 1);
    v_footer(v);
    /* out of vmdesc order: found by (idstr, instance), not position */
    v_sec_new(v, MP_QMIG_SECTION_FULL, 14, "cpu", 0, 12);
    v_dev_data(v, 40, 4);
    v_footer(v);
    v_sec_new(v, MP_QMIG_SECTION_FULL, 13, "cpu", 1, 12);
    v_dev_data(v, 40, 3);
    v_footer(v);
}

Test(qmig, vmdesc_slices_device_sections)
{
    g_autoptr(MpVmdesc) vd = vmdesc_of(slice_vmdesc);
    g_autoptr(Vec) v = vec_new();
    g_vmdesc = vd;
    cr_assert_eq(mp_vmdesc_device(vd, 0)->size, 67);
    v_precopy_start(v);
    v_sec_cont(v, MP_QMIG_SECTION_END, RAM_ID);
    v_page(v, "pc.ram", 0, 1);
    v_eos(v);
    v_footer(v);
    build_devices(v, 67);
    v_eof(v);
    v_vmdesc(v, slice_vmdesc);
    check_vec(v, "END");
}

/* Without a vmdesc, the first device section makes the rest opaque. */
Test(qmig, device_sections_opaque_without_vmdesc)
{
    g_autoptr(Vec) v = vec_new();
    v_precopy_start(v);
    v_sec_new(v, MP_QMIG_SECTION_FULL, 10, "timer", 0, 2);
    gsize s = at(v);
    v_raw(v, "\x7e\x00\x00\x00\x0a\x00\x06\x00\x00\x00\x02{}", 14);
    ex(v, s, "opaque bytes=14 why=\"device state (no vmdesc to slice it)\"");
    check_vec_opaque(v, "MORE");
}

/* An iterable section migproxy does not know (START of a device). */
Test(qmig, unknown_iterable_section_is_opaque)
{
    g_autoptr(Vec) v = vec_new();
    v_precopy_start(v);
    v_sec_new(v, MP_QMIG_SECTION_START, 5, "dirty-bitmap", 0, 1);
    gsize s = at(v);
    v_raw(v, "\x00\x00\x00\x00\x00\x00\x00\x01", 8);
    ex(v, s, "opaque bytes=8 why=\"an iterable section whose format "
             "migproxy does not follow\"");
    check_vec_opaque(v, "MORE");
}

Test(qmig, vmdesc_sizes_too_small_error_at_footer)
{
    g_autoptr(MpVmdesc) vd = vmdesc_of(slice_vmdesc);
    g_autoptr(Vec) v = vec_new();
    g_vmdesc = vd;
    v_precopy_start(v);
    v_sec_new(v, MP_QMIG_SECTION_FULL, 10, "timer", 0, 2);
    /* the stream's timer wrote 68 bytes, the vmdesc says 67 */
    gsize s = at(v);
    for (int i = 0; i < 67; i++)
        put_u8(v->b, 0x11);
    ex(v, s, "device_data bytes=67");
    gsize bad = at(v);
    put_u8(v->b, 0x11);
    put_u8(v->b, MP_QMIG_SECTION_FOOTER);
    put_be32(v->b, 10);
    put_u8(v->b, MP_QMIG_EOF);
    check_error(v, MP_PARSE_ERROR_SECTION, bad);
}

Test(qmig, vmdesc_sizes_too_large_error_at_footer)
{
    g_autoptr(MpVmdesc) vd = vmdesc_of(slice_vmdesc);
    g_autoptr(Vec) v = vec_new();
    g_vmdesc = vd;
    v_precopy_start(v);
    /* timer wrote 60 bytes, then its footer and the slirp section; the
     * vmdesc says 67, so the slice eats the footer and 2 more bytes */
    v_sec_new(v, MP_QMIG_SECTION_FULL, 10, "timer", 0, 2);
    gsize s = at(v);
    for (int i = 0; i < 60; i++)
        put_u8(v->b, 0x22);
    put_u8(v->b, MP_QMIG_SECTION_FOOTER);
    put_be32(v->b, 10);
    put_u8(v->b, MP_QMIG_SECTION_FULL);
    put_be32(v->b, 11);
    put_str(v->b, "slirp");
    /* 60 + 5 + 11 bytes follow s; the slice ends at s + 67 */
    g_string_append_printf(v->ex, "off=%zu len=67 device_data bytes=67\n", s);
    check_error(v, MP_PARSE_ERROR_SECTION, s + 67);
}

/* A vmdesc describing a device that the stream does not carry, and a
 * stream device that the vmdesc lacks (opaque from there). */
Test(qmig, vmdesc_lacks_device)
{
    g_autoptr(MpVmdesc) vd = vmdesc_of(slice_vmdesc);
    g_autoptr(Vec) v = vec_new();
    g_vmdesc = vd;
    v_precopy_start(v);
    v_sec_new(v, MP_QMIG_SECTION_FULL, 11, "slirp", 0, 4);
    v_dev_data(v, 13, 2);
    v_footer(v);
    v_sec_new(v, MP_QMIG_SECTION_FULL, 20, "virtio-net", 0, 11);
    gsize s = at(v);
    v_raw(v, "abcdef", 6);
    ex(v, s, "opaque bytes=6 why=\"a device section that the vmdesc does "
             "not describe\"");
    check_vec_opaque(v, "MORE");
}

/* The vmdesc comes from the stream: sizes that would overflow a sum are
 * refused, not wrapped (vmdesc.c used to overflow a gint64). */
Test(qmig, vmdesc_hostile_sizes)
{
    static const char *const bad[] = {
        "{\"devices\":[{\"name\":\"a\",\"fields\":["
        "{\"size\":4294967295,\"array_len\":4294967295},"
        "{\"size\":4294967295,\"array_len\":4294967295}]}]}",
        "{\"devices\":[{\"name\":\"a\",\"size\":9223372036854775807}]}",
        "{\"devices\":[{\"name\":\"a\",\"size\":281474976710000,"
        "\"subsections\":[{\"vmsd_name\":\"b\",\"size\":1000}]}]}",
        "{\"devices\":[{\"name\":\"a\",\"fields\":[{\"size\":-1}]}]}",
        "{\"devices\":[{\"name\":\"a\",\"fields\":[{\"size\":1,"
        "\"array_len\":-2}]}]}",
        "{\"devices\":[{\"fields\":[]}]}",
        "{\"devices\":{}}",
        "[]",
        "{\"devices\":[",
    };
    for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_autoptr(GError) err = NULL;
        g_autoptr(MpVmdesc) vd = mp_vmdesc_new(bad[i], strlen(bad[i]), &err);
        cr_assert_null(vd, "accepted: %s", bad[i]);
        cr_assert(err && err->code == MP_PARSE_ERROR_DECODE);
    }
    /* large but sane: 2^32-1 bytes x 16 */
    const char *ok = "{\"devices\":[{\"name\":\"a\",\"fields\":["
                     "{\"size\":4294967295,\"array_len\":16}]}]}";
    g_autoptr(MpVmdesc) vd = vmdesc_of(ok);
    cr_assert_eq(mp_vmdesc_device(vd, 0)->size, 16 * 4294967295ull);
}

Test(qmig, eof_then_vmdesc)
{
    g_autoptr(Vec) v = vec_new();
    v_precopy_start(v);
    v_eof(v);
    v_vmdesc(v, "{\"page_size\":4096,\"devices\":[]}");
    check_vec(v, "END");
}

Test(qmig, eof_then_empty_vmdesc)
{
    g_autoptr(Vec) v = vec_new();
    v_header(v);
    v_eof(v);
    v_vmdesc(v, "");
    check_vec(v, "END");
}

/* Bytes after the vmdesc are not the parser's: END, and they stay
 * unconsumed. */
Test(qmig, bytes_after_vmdesc_are_not_consumed)
{
    g_autoptr(Vec) v = vec_new();
    v_header(v);
    v_eof(v);
    v_vmdesc(v, "{}");
    gsize end = at(v);
    v_raw(v, "tail", 4);
    g_string_append(v->ex, "END\n");
    g_autofree char *log = feed_log(&qmig_ops, v->b->data, v->b->len, 0, 0);
    cr_assert_str_eq(log, v->ex->str);

    /* fed at once: consumed stops right after the JSON */
    g_autoptr(MpQmigParser) p = mp_qmig_parser_new(CH, NULL, NULL);
    (void)p;
    (void)end;
}

/* Postcopy recovery (savevm.c postcopy_do_resume): no magic or version;
 * RECV_BITMAP per block, RESUME, then the iteration goes on. */
Test(qmig, headerless_recovery_channel)
{
    g_autoptr(Vec) v = vec_new();
    g_headerless = TRUE;
    v_recv_bitmap(v, "pc.ram");
    v_recv_bitmap(v, "/rom@etc/acpi/tables");
    v_cmd0(v, MP_QMIG_CMD_POSTCOPY_RESUME);
    v_ping(v, 5);
    check_vec(v, "MORE");
}

static MpRecordAction
ignore_record(const MpRecord *rec, gpointer user_data)
{
    return MP_REC_CONTINUE;
}

/* The main channel breaks in postcopy; the new one (no header) resumes
 * with RECV_BITMAP and RESUME, then PART sections of the "ram" announced
 * on the old channel.  The source resets its last block
 * (ram_state_reset), the destination keeps its own: CONTINUE is legal
 * for the first record, as the old channel's block. */
Test(qmig, recovery_channel_resumes_sections)
{
    g_autoptr(Vec) old = vec_new();
    g_autoptr(Vec) v = vec_new();
    g_autoptr(GError) err = NULL;
    gsize used;

    g_headerless = TRUE; /* before resume_from(): no harm */

    /* the old channel breaks inside a PART, after a page of "mem1" */
    v_header(old);
    v_config(old, "pc-q35-7.2", 0, NULL, NULL);
    v_cmd0(old, MP_QMIG_CMD_OPEN_RETURN_PATH);
    v_advise(old, PS | (2u << 20));
    v_sec_new(old, MP_QMIG_SECTION_START, RAM_ID, "ram", 0, 4);
    v_mem_size(old, (4u << 20) + 8 * PS + (2u << 20));
    v_block(old, "pc.ram", 4u << 20, 2u << 20, FALSE, 0);
    v_block(old, "pc.bios", 8 * PS, 0, FALSE, 0);
    v_block(old, "mem1", 2u << 20, 2u << 20, FALSE, 0);
    v_eos(old);
    v_footer(old);
    v_sec_cont(old, MP_QMIG_SECTION_PART, RAM_ID);
    v_page(old, "mem1", 0, 3);
    put_be64(old->b, PS | MP_RAM_SAVE_FLAG_PAGE | MP_RAM_SAVE_FLAG_CONTINUE);
    put_mem(old->b, "partial", 7);
    g_prev = mp_qmig_parser_new(CH, ignore_record, NULL);
    cr_assert_eq(mp_qmig_parser_feed(g_prev, old->b->data, old->b->len, &used,
                                     &err),
                 MP_FEED_MORE);

    /* the new channel, with the builder's section table */
    memcpy(v->sec, old->sec, sizeof(v->sec));
    v->nsec = old->nsec;
    v->cur = old->cur;
    strcpy(v->block, "mem1");
    v_recv_bitmap(v, "pc.ram");
    v_recv_bitmap(v, "pc.bios");
    v_recv_bitmap(v, "mem1");
    v_cmd0(v, MP_QMIG_CMD_POSTCOPY_RESUME);
    v_sec_cont(v, MP_QMIG_SECTION_PART, RAM_ID);
    v_page(v, NULL, 0x1000, 5); /* mem1, from the old channel */
    v_page(v, "pc.ram", 0x3ff000, 6);
    v_eos(v);
    v_footer(v);
    v_sec_cont(v, MP_QMIG_SECTION_END, RAM_ID);
    v_zero(v, "pc.bios", 0x7000);
    v_eos(v);
    v_footer(v);
    v_eof(v);
    check_vec(v, "MORE");

    /* the old channel's block list still applies */
    g_autoptr(Vec) bad = vec_new();
    memcpy(bad->sec, old->sec, sizeof(bad->sec));
    bad->nsec = old->nsec;
    v_cmd0(bad, MP_QMIG_CMD_POSTCOPY_RESUME);
    v_sec_cont(bad, MP_QMIG_SECTION_PART, RAM_ID);
    gsize s = at(bad);
    put_be64(bad->b, 0x8000 | MP_RAM_SAVE_FLAG_PAGE);
    put_str(bad->b, "pc.bios");
    check_error(bad, MP_PARSE_ERROR_LENGTH, s);
    mp_qmig_parser_free(g_prev);
}

/* ---- malformed input --------------------------------------------------- */

Test(qmig, bad_magic)
{
    g_autoptr(Vec) v = vec_new();
    put_be32(v->b, 0x5145564e);
    put_be32(v->b, 3);
    check_error(v, MP_PARSE_ERROR_MAGIC, 0);
}

Test(qmig, bad_version)
{
    g_autoptr(Vec) v = vec_new();
    put_be32(v->b, MP_QMIG_FILE_MAGIC);
    put_be32(v->b, 2);
    check_error(v, MP_PARSE_ERROR_VERSION, 4);
}

Test(qmig, unknown_section_type)
{
    /* (0x05 right after the configuration would be a subsection) */
    static const guint8 types[] = {0x05, 0x09, 0x7e, 0x42, 0xff};
    for (gsize i = 0; i < G_N_ELEMENTS(types); i++) {
        g_autoptr(Vec) v = vec_new();
        v_header(v);
        v_config(v, "pc", 0, NULL, NULL);
        v_ping(v, 1);
        put_u8(v->b, types[i]);
        check_error(v, MP_PARSE_ERROR_SECTION_TYPE, at(v) - 1);
    }
}

Test(qmig, configuration_not_first)
{
    g_autoptr(Vec) v = vec_new();
    v_header(v);
    v_ping(v, 1);
    gsize s = at(v);
    put_u8(v->b, MP_QMIG_CONFIGURATION);
    put_be32(v->b, 2);
    put_mem(v->b, "pc", 2);
    check_error(v, MP_PARSE_ERROR_SECTION_TYPE, s);
}

Test(qmig, part_with_unknown_section_id)
{
    g_autoptr(Vec) v = vec_new();
    v_precopy_start(v);
    gsize s = at(v);
    put_u8(v->b, MP_QMIG_SECTION_PART);
    put_be32(v->b, 77);
    check_error(v, MP_PARSE_ERROR_SECTION, s);
}

Test(qmig, end_with_unknown_section_id)
{
    g_autoptr(Vec) v = vec_new();
    v_header(v);
    gsize s = at(v);
    put_u8(v->b, MP_QMIG_SECTION_END);
    put_be32(v->b, 0);
    put_be64(v->b, MP_RAM_SAVE_FLAG_EOS);
    check_error(v, MP_PARSE_ERROR_SECTION, s);
}

Test(qmig, footer_with_wrong_id)
{
    g_autoptr(Vec) v = vec_new();
    v_header(v);
    v_sec_new(v, MP_QMIG_SECTION_START, RAM_ID, "ram", 0, 4);
    v_mem_size(v, PS);
    v_block(v, "pc.ram", PS, 0, FALSE, 0);
    v_eos(v);
    gsize s = at(v);
    put_u8(v->b, MP_QMIG_SECTION_FOOTER);
    put_be32(v->b, RAM_ID + 1);
    check_error(v, MP_PARSE_ERROR_SECTION, s);
}

Test(qmig, footer_missing_after_footers_seen)
{
    g_autoptr(Vec) v = vec_new();
    v_precopy_start(v);
    v_sec_cont(v, MP_QMIG_SECTION_PART, RAM_ID);
    v_eos(v);
    gsize s = at(v);
    v_sec_cont(v, MP_QMIG_SECTION_PART, RAM_ID);
    g_string_truncate(v->ex, g_strrstr(v->ex->str, "off=") - v->ex->str);
    check_error(v, MP_PARSE_ERROR_SECTION, s);
}

Test(qmig, ram_section_version)
{
    g_autoptr(Vec) v = vec_new();
    v_header(v);
    gsize s = at(v);
    put_u8(v->b, MP_QMIG_SECTION_START);
    put_be32(v->b, 1);
    put_str(v->b, "ram");
    put_be32(v->b, 0);
    put_be32(v->b, 3);
    check_error(v, MP_PARSE_ERROR_VERSION, s);
}

static void
bad_command(guint16 cmd, const void *payload, guint16 len, int code)
{
    g_autoptr(Vec) v = vec_new();
    v_header(v);
    gsize s = at(v);
    put_u8(v->b, MP_QMIG_COMMAND);
    put_be16(v->b, cmd);
    put_be16(v->b, len);
    put_mem(v->b, payload, len);
    check_error(v, code, s);
}

Test(qmig, unknown_command)
{
    bad_command(MP_QMIG_CMD_INVALID, NULL, 0, MP_PARSE_ERROR_COMMAND);
    bad_command(12, NULL, 0, MP_PARSE_ERROR_COMMAND);
    bad_command(0xffff, "abcd", 4, MP_PARSE_ERROR_COMMAND);
}

Test(qmig, wrong_command_lengths)
{
    static const guint8 z[32] = {0};
    guint16 zero_len[] = {MP_QMIG_CMD_OPEN_RETURN_PATH,
                          MP_QMIG_CMD_POSTCOPY_LISTEN,
                          MP_QMIG_CMD_POSTCOPY_RUN,
                          MP_QMIG_CMD_ENABLE_COLO,
                          MP_QMIG_CMD_POSTCOPY_RESUME,
                          MP_QMIG_CMD_SWITCHOVER_START};
    for (gsize i = 0; i < G_N_ELEMENTS(zero_len); i++)
        bad_command(zero_len[i], z, 1, MP_PARSE_ERROR_COMMAND);
    bad_command(MP_QMIG_CMD_PING, z, 3, MP_PARSE_ERROR_COMMAND);
    bad_command(MP_QMIG_CMD_PING, z, 5, MP_PARSE_ERROR_COMMAND);
    bad_command(MP_QMIG_CMD_PING, z, 0, MP_PARSE_ERROR_COMMAND);
    bad_command(MP_QMIG_CMD_PACKAGED, z, 0, MP_PARSE_ERROR_COMMAND);
    bad_command(MP_QMIG_CMD_PACKAGED, z, 8, MP_PARSE_ERROR_COMMAND);
    bad_command(MP_QMIG_CMD_POSTCOPY_ADVISE, z, 8, MP_PARSE_ERROR_COMMAND);
    bad_command(MP_QMIG_CMD_POSTCOPY_ADVISE, z, 17, MP_PARSE_ERROR_COMMAND);
    bad_command(MP_QMIG_CMD_RECV_BITMAP, z, 0, MP_PARSE_ERROR_COMMAND);
    bad_command(MP_QMIG_CMD_RECV_BITMAP, "\x03" "ab", 3,
                MP_PARSE_ERROR_COMMAND);
    bad_command(MP_QMIG_CMD_RECV_BITMAP, "\x01" "ab", 3,
                MP_PARSE_ERROR_COMMAND);
    /* discard: version, nil, ranges, short */
    bad_command(MP_QMIG_CMD_POSTCOPY_RAM_DISCARD, "\x00\x01" "a", 3,
                MP_PARSE_ERROR_COMMAND);
    bad_command(MP_QMIG_CMD_POSTCOPY_RAM_DISCARD, z, 2,
                MP_PARSE_ERROR_COMMAND);
    bad_command(MP_QMIG_CMD_POSTCOPY_RAM_DISCARD,
                "\x01\x01" "a\x00" "0123456789abcdef", 20,
                MP_PARSE_ERROR_COMMAND);
    bad_command(MP_QMIG_CMD_POSTCOPY_RAM_DISCARD,
                "\x00\x01" "a\x01" "0123456789abcdef", 20,
                MP_PARSE_ERROR_COMMAND);
    bad_command(MP_QMIG_CMD_POSTCOPY_RAM_DISCARD,
                "\x00\x01" "a\x00" "0123456789abcde", 19,
                MP_PARSE_ERROR_COMMAND);
    bad_command(MP_QMIG_CMD_POSTCOPY_RAM_DISCARD,
                "\x00\x05" "a\x00" "0123456789abcdef", 20,
                MP_PARSE_ERROR_COMMAND);
}

/* loadvm_postcopy_ram_handle_discard@7.2 rejects len < 20: no ranges, or
 * one range for an empty id. */
Test(qmig, discard_without_ranges)
{
    bad_command(MP_QMIG_CMD_POSTCOPY_RAM_DISCARD, "\x00\x01" "a\x00", 4,
                MP_PARSE_ERROR_COMMAND);
    bad_command(MP_QMIG_CMD_POSTCOPY_RAM_DISCARD,
                "\x00\x00\x00" "0123456789abcdef", 19,
                MP_PARSE_ERROR_COMMAND);
}

Test(qmig, advise_with_other_target_page_size)
{
    guint8 x[16];
    mp_put_be64(x, PS);
    mp_put_be64(x + 8, 8192);
    bad_command(MP_QMIG_CMD_POSTCOPY_ADVISE, x, 16,
                MP_PARSE_ERROR_UNSUPPORTED);
}

Test(qmig, oversized_configuration_name)
{
    g_autoptr(Vec) v = vec_new();
    v_header(v);
    put_u8(v->b, MP_QMIG_CONFIGURATION);
    put_be32(v->b, 4097);
    check_error(v, MP_PARSE_ERROR_LENGTH, 9);
}

Test(qmig, configuration_bad_subsections)
{
    {
        g_autoptr(Vec) v = vec_new();
        v_header(v);
        put_u8(v->b, MP_QMIG_CONFIGURATION);
        put_be32(v->b, 2);
        put_mem(v->b, "pc", 2);
        put_u8(v->b, MP_QMIG_SUBSECTION);
        put_str(v->b, "configuration/unknown");
        gsize s = at(v);
        put_be32(v->b, 1);
        /* (the offset named is that of the version after the name) */
        check_error(v, MP_PARSE_ERROR_UNSUPPORTED, s);
    }
    {
        g_autoptr(Vec) v = vec_new();
        v_header(v);
        put_u8(v->b, MP_QMIG_CONFIGURATION);
        put_be32(v->b, 2);
        put_mem(v->b, "pc", 2);
        put_u8(v->b, MP_QMIG_SUBSECTION);
        put_str(v->b, "configuration/capabilities");
        put_be32(v->b, 1);
        gsize s = at(v);
        put_be32(v->b, 257);
        check_error(v, MP_PARSE_ERROR_LENGTH, s);
    }
    {
        g_autoptr(Vec) v = vec_new();
        v_header(v);
        put_u8(v->b, MP_QMIG_CONFIGURATION);
        put_be32(v->b, 2);
        put_mem(v->b, "pc", 2);
        put_u8(v->b, MP_QMIG_SUBSECTION);
        put_str(v->b, "configuration/target-page-bits");
        put_be32(v->b, 1);
        gsize s = at(v);
        put_be32(v->b, 16);
        check_error(v, MP_PARSE_ERROR_UNSUPPORTED, s);
    }
}

/* a RAM section body in progress: header, START ram with one block */
static void
v_ram_prefix(Vec *v)
{
    v_header(v);
    v_sec_new(v, MP_QMIG_SECTION_START, RAM_ID, "ram", 0, 4);
    v_mem_size(v, 16 * PS);
    v_block(v, "pc.ram", 16 * PS, 0, FALSE, 0);
}

/* ... EOS, footer and a PART header: a RAM body follows */
static void
v_ram_part(Vec *v)
{
    v_eos(v);
    v_footer(v);
    v_sec_cont(v, MP_QMIG_SECTION_PART, RAM_ID);
}

Test(qmig, continue_without_previous_block)
{
    g_autoptr(Vec) v = vec_new();
    v_ram_prefix(v);
    gsize s = at(v);
    put_be64(v->b, MP_RAM_SAVE_FLAG_ZERO | MP_RAM_SAVE_FLAG_CONTINUE);
    put_u8(v->b, 0);
    check_error(v, MP_PARSE_ERROR_NO_BLOCK, s);
}

Test(qmig, unknown_ram_flags)
{
    static const guint32 bad[] = {
        MP_RAM_SAVE_FLAG_FULL,
        MP_RAM_SAVE_FLAG_ZERO | MP_RAM_SAVE_FLAG_PAGE,
        MP_RAM_SAVE_FLAG_EOS | MP_RAM_SAVE_FLAG_ZERO,
        0x400,
        0x800 | MP_RAM_SAVE_FLAG_PAGE,
        MP_RAM_SAVE_FLAG_CONTINUE,
        MP_RAM_SAVE_FLAG_MEM_SIZE | MP_RAM_SAVE_FLAG_CONTINUE,
    };
    for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_autoptr(Vec) v = vec_new();
        v_ram_prefix(v);
        gsize s = at(v);
        put_be64(v->b, 0x3000 | bad[i]);
        put_str(v->b, "pc.ram");
        check_error(v, MP_PARSE_ERROR_RAM_FLAGS, s);
    }
}

Test(qmig, ram_hook_is_unsupported)
{
    g_autoptr(Vec) v = vec_new();
    v_ram_prefix(v);
    gsize s = at(v);
    put_be64(v->b, MP_RAM_SAVE_FLAG_HOOK);
    check_error(v, MP_PARSE_ERROR_UNSUPPORTED, s);
}

Test(qmig, xbzrle_bad_flag)
{
    g_autoptr(Vec) v = vec_new();
    v_ram_prefix(v);
    v_ram_part(v);
    ram_hdr(v, 0, MP_RAM_SAVE_FLAG_XBZRLE, "pc.ram");
    gsize s = at(v);
    put_u8(v->b, 0x02);
    put_be16(v->b, 3);
    put_mem(v->b, "\x00\x01\x55", 3);
    check_error(v, MP_PARSE_ERROR_DECODE, s);
}

Test(qmig, xbzrle_len_over_page)
{
    g_autoptr(Vec) v = vec_new();
    v_ram_prefix(v);
    v_ram_part(v);
    ram_hdr(v, 0, MP_RAM_SAVE_FLAG_XBZRLE, "pc.ram");
    put_u8(v->b, 0x01);
    gsize s = at(v);
    put_be16(v->b, PS + 1);
    check_error(v, MP_PARSE_ERROR_LENGTH, s);
}

Test(qmig, xbzrle_malformed_encoding)
{
    static const struct {
        const char *enc;
        gsize len;
    } bad[] = {
        {"\x00\x00", 2},             /* nzrun 0 */
        {"\x05", 1},                 /* fewer than 2 bytes before zrun */
        {"\x00\x01\xaa\x00\x01\xbb", 6}, /* a later zrun of 0 */
        {"\x00\x02\xaa", 3},         /* literal past the end */
        {"\x80\x20\x01\xaa", 4},     /* zrun 4096: nothing left */
        {"\xff\x1f\x01\xaa", 4},     /* zrun 4095, nzrun 1: ok... */
        {"\x81\x81\x01\x01\xaa", 5}, /* 3-byte uleb */
    };
    for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_autoptr(Vec) v = vec_new();
        v_ram_prefix(v);
        v_ram_part(v);
        gsize s = at(v);
        ram_hdr(v, 0, MP_RAM_SAVE_FLAG_XBZRLE, "pc.ram");
        put_u8(v->b, 0x01);
        put_be16(v->b, bad[i].len);
        put_mem(v->b, bad[i].enc, bad[i].len);
        if (i == 5) {
            /* zrun 4095 + 1 literal ends exactly at the page end */
            ex_page(v, s, 0, FALSE, "xbzrle", 4);
            v_eos(v);
            v_footer(v);
            check_vec(v, "MORE");
            continue;
        }
        check_error(v, MP_PARSE_ERROR_DECODE, s);
    }
}

Test(qmig, compressed_page_lengths)
{
    static const guint32 bad[] = {0, 4111, 0x7fffffff, 0xffffffff};
    for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_autoptr(Vec) v = vec_new();
        v_ram_prefix(v);
        v_ram_part(v);
        ram_hdr(v, 0, MP_RAM_SAVE_FLAG_COMPRESS_PAGE, "pc.ram");
        gsize s = at(v);
        put_be32(v->b, bad[i]);
        check_error(v, MP_PARSE_ERROR_LENGTH, s);
    }
    /* compressBound(4096) = 4110 is the largest accepted */
    g_autoptr(Vec) v = vec_new();
    v_ram_prefix(v);
    v_ram_part(v);
    gsize s = at(v);
    ram_hdr(v, 0, MP_RAM_SAVE_FLAG_COMPRESS_PAGE, "pc.ram");
    put_be32(v->b, 4110);
    for (int i = 0; i < 4110; i++)
        put_u8(v->b, i);
    ex_page(v, s, 0, FALSE, "compressed", 4110);
    v_eos(v);
    v_footer(v);
    check_vec(v, "MORE");
}

Test(qmig, page_for_unknown_block)
{
    g_autoptr(Vec) v = vec_new();
    v_ram_prefix(v);
    v_ram_part(v);
    gsize s = at(v);
    put_be64(v->b, MP_RAM_SAVE_FLAG_ZERO);
    put_str(v->b, "pc.ram2");
    put_u8(v->b, 0);
    check_error(v, MP_PARSE_ERROR_RAM_FLAGS, s);
}

Test(qmig, page_past_block_end)
{
    static const guint64 addrs[] = {16 * PS, 17 * PS, 0x7ffffffffffff000ull,
                                    0xfffffffffffff000ull};
    for (gsize i = 0; i < G_N_ELEMENTS(addrs); i++) {
        g_autoptr(Vec) v = vec_new();
        v_ram_prefix(v);
        v_ram_part(v);
        v_zero(v, "pc.ram", 15 * PS); /* the last page is fine */
        gsize s = at(v);
        put_be64(v->b, addrs[i] | MP_RAM_SAVE_FLAG_PAGE);
        put_str(v->b, "pc.ram");
        check_error(v, MP_PARSE_ERROR_LENGTH, s);
        /* and with CONTINUE */
        g_autoptr(Vec) w = vec_new();
        v_ram_prefix(w);
        v_ram_part(w);
        v_zero(w, "pc.ram", 15 * PS);
        s = at(w);
        put_be64(w->b, addrs[i] | MP_RAM_SAVE_FLAG_ZERO
                           | MP_RAM_SAVE_FLAG_CONTINUE);
        put_u8(w->b, 0);
        check_error(w, MP_PARSE_ERROR_LENGTH, s);
    }
}

Test(qmig, block_list_errors)
{
    {   /* a block larger than what MEM_SIZE has left */
        g_autoptr(Vec) v = vec_new();
        v_header(v);
        v_sec_new(v, MP_QMIG_SECTION_START, RAM_ID, "ram", 0, 4);
        v_mem_size(v, 2 * PS);
        v_block(v, "a", PS, 0, FALSE, 0);
        put_str(v->b, "b");
        gsize s = at(v);
        put_be64(v->b, 2 * PS);
        check_error(v, MP_PARSE_ERROR_LENGTH, s);
    }
    {   /* an empty id */
        g_autoptr(Vec) v = vec_new();
        v_header(v);
        v_sec_new(v, MP_QMIG_SECTION_START, RAM_ID, "ram", 0, 4);
        v_mem_size(v, 2 * PS);
        gsize s = at(v);
        put_u8(v->b, 0);
        check_error(v, MP_PARSE_ERROR_RAM_FLAGS, s);
    }
    {   /* x-ignore-shared with huge-page postcopy cannot be parsed */
        static const char *const caps[] = {"x-ignore-shared", NULL};
        g_autoptr(Vec) v = vec_new();
        v_header(v);
        v_config(v, "pc-q35-7.2", 0, caps, NULL);
        v_advise(v, PS | (2u << 20));
        v_sec_new(v, MP_QMIG_SECTION_START, RAM_ID, "ram", 0, 4);
        gsize s = at(v);
        put_be64(v->b, PS | MP_RAM_SAVE_FLAG_MEM_SIZE);
        check_error(v, MP_PARSE_ERROR_UNSUPPORTED, s);
    }
    {   /* mapped-ram streams are not followed */
        static const char *const caps[] = {"mapped-ram", NULL};
        g_autoptr(Vec) v = vec_new();
        v_header(v);
        v_config(v, "pc-q35-9.2", 0, caps, NULL);
        gsize s = at(v);
        put_u8(v->b, MP_QMIG_SECTION_START);
        put_be32(v->b, RAM_ID);
        put_str(v->b, "ram");
        put_be32(v->b, 0);
        put_be32(v->b, 4);
        check_error(v, MP_PARSE_ERROR_UNSUPPORTED, s);
    }
}

Test(qmig, block_section_bad_flags)
{
    static const guint32 bad[] = {0, 0x10, 0x100, MP_BLK_MIG_FLAG_ZERO_BLOCK};
    for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_autoptr(Vec) v = vec_new();
        v_header(v);
        v_sec_new(v, MP_QMIG_SECTION_START, 3, "block", 0, 1);
        gsize s = at(v);
        put_be64(v->b, 5 << MP_BLK_SECTOR_BITS | bad[i]);
        put_u8(v->b, MP_QMIG_SECTION_FOOTER);
        put_be32(v->b, 3);
        check_error(v, MP_PARSE_ERROR_RAM_FLAGS, s);
    }
}

Test(qmig, record_past_package_end)
{
    /* a PING whose payload crosses the end of the blob */
    g_autoptr(Vec) v = vec_new();
    v_header(v);
    gsize c = at(v);
    put_u8(v->b, MP_QMIG_COMMAND);
    put_be16(v->b, MP_QMIG_CMD_PACKAGED);
    put_be16(v->b, 4);
    put_be32(v->b, 5 + 2);
    ex(v, c, "command cmd=PACKAGED len=4 packaged=7");
    v_cmd0(v, MP_QMIG_CMD_POSTCOPY_LISTEN);
    gsize s = at(v);
    v_ping(v, 3);
    g_string_truncate(v->ex, g_strrstr(v->ex->str, "off=") - v->ex->str);
    check_error(v, MP_PARSE_ERROR_COMMAND, s);
}

Test(qmig, section_past_package_end)
{
    /* a FULL section header crossing the end; then a RAM body crossing it */
    g_autoptr(Vec) v = vec_new();
    v_precopy_start(v);
    gsize c = at(v);
    put_u8(v->b, MP_QMIG_COMMAND);
    put_be16(v->b, MP_QMIG_CMD_PACKAGED);
    put_be16(v->b, 4);
    put_be32(v->b, 5 + 8);
    ex(v, c, "command cmd=PACKAGED len=4 packaged=13");
    v_sec_cont(v, MP_QMIG_SECTION_PART, RAM_ID);
    v_eos(v);
    gsize s = at(v);
    v_footer(v);
    g_string_truncate(v->ex, g_strrstr(v->ex->str, "off=") - v->ex->str);
    check_error(v, MP_PARSE_ERROR_COMMAND, s);

    g_autoptr(Vec) w = vec_new();
    v_precopy_start(w);
    c = at(w);
    put_u8(w->b, MP_QMIG_COMMAND);
    put_be16(w->b, MP_QMIG_CMD_PACKAGED);
    put_be16(w->b, 4);
    put_be32(w->b, 5 + 12);
    ex(w, c, "command cmd=PACKAGED len=4 packaged=17");
    /* the error names the RAM section that runs past the blob */
    s = at(w);
    v_sec_cont(w, MP_QMIG_SECTION_PART, RAM_ID);
    put_be64(w->b, MP_RAM_SAVE_FLAG_ZERO);
    put_str(w->b, "pc.ram");
    put_u8(w->b, 0);
    check_error(w, MP_PARSE_ERROR_COMMAND, s);
}

Test(qmig, nested_packaged)
{
    g_autoptr(Vec) v = vec_new();
    v_header(v);
    gsize c = at(v);
    put_u8(v->b, MP_QMIG_COMMAND);
    put_be16(v->b, MP_QMIG_CMD_PACKAGED);
    put_be16(v->b, 4);
    put_be32(v->b, 9 + 5);
    ex(v, c, "command cmd=PACKAGED len=4 packaged=14");
    gsize s = at(v);
    put_u8(v->b, MP_QMIG_COMMAND);
    put_be16(v->b, MP_QMIG_CMD_PACKAGED);
    put_be16(v->b, 4);
    put_be32(v->b, 5);
    put_mem(v->b, "\x08\x00\x04\x00\x00", 5);
    check_error(v, MP_PARSE_ERROR_COMMAND, s);
}

Test(qmig, eof_inside_packaged)
{
    g_autoptr(Vec) v = vec_new();
    v_header(v);
    gsize c = at(v);
    put_u8(v->b, MP_QMIG_COMMAND);
    put_be16(v->b, MP_QMIG_CMD_PACKAGED);
    put_be16(v->b, 4);
    put_be32(v->b, 2);
    ex(v, c, "command cmd=PACKAGED len=4 packaged=2");
    gsize s = at(v);
    put_u8(v->b, MP_QMIG_EOF);
    put_u8(v->b, MP_QMIG_EOF);
    check_error(v, MP_PARSE_ERROR_SECTION_TYPE, s);
}

Test(qmig, empty_package)
{
    g_autoptr(Vec) v = vec_new();
    v_header(v);
    Pkg k = v_packaged_begin(v);
    v_packaged_end(v, k);
    v_ping(v, 4);
    Pkg k2 = v_packaged_begin(v);
    v_cmd0(v, MP_QMIG_CMD_POSTCOPY_RUN);
    v_packaged_end(v, k2);
    check_vec(v, "MORE");
}

Test(qmig, truncated_package)
{
    g_autoptr(Vec) v = vec_new();
    v_header(v);
    gsize c = at(v);
    put_u8(v->b, MP_QMIG_COMMAND);
    put_be16(v->b, MP_QMIG_CMD_PACKAGED);
    put_be16(v->b, 4);
    put_be32(v->b, 100);
    ex(v, c, "command cmd=PACKAGED len=4 packaged=100");
    v_cmd0(v, MP_QMIG_CMD_POSTCOPY_LISTEN);
    check_error(v, MP_PARSE_ERROR_TRUNCATED, at(v));
}

Test(qmig, garbage_after_eof)
{
    g_autoptr(Vec) v = vec_new();
    v_precopy_start(v);
    v_eof(v);
    gsize s = at(v);
    put_u8(v->b, MP_QMIG_SECTION_FULL);
    check_error(v, MP_PARSE_ERROR_SECTION_TYPE, s);
}

Test(qmig, oversized_vmdesc)
{
    g_autoptr(Vec) v = vec_new();
    v_header(v);
    v_eof(v);
    gsize s = at(v);
    put_u8(v->b, MP_QMIG_VMDESCRIPTION);
    put_be32(v->b, 0xffffffffu);
    check_error(v, MP_PARSE_ERROR_LENGTH, s);
}

/* ---- truncation everywhere ---------------------------------------------- */

/* One stream with most record kinds, complete. */
static void
build_everything(Vec *v)
{
    Pkg k;

    v_header(v);
    v_config(v, "pc-q35-7.2", 0, (const char *const[]){"x-ignore-shared",
                                                       NULL},
             NULL);
    v_cmd0(v, MP_QMIG_CMD_OPEN_RETURN_PATH);
    v_ping(v, 1);
    v_cmd0(v, MP_QMIG_CMD_POSTCOPY_ADVISE);
    v_sec_new(v, MP_QMIG_SECTION_START, RAM_ID, "ram", 0, 4);
    v_mem_size(v, 64 * PS + 4 * PS);
    v_block(v, "pc.ram", 64 * PS, 0, TRUE, 0);
    v_block(v, "/rom@etc/acpi/tables", 4 * PS, 0, TRUE, 0xfffff000ull);
    v_eos(v);
    v_footer(v);
    v_sec_new(v, MP_QMIG_SECTION_START, 3, "block", 0, 1);
    v_blk_block(v, "drive0", 0, TRUE);
    v_blk_progress(v, 10);
    v_blk_eos(v);
    v_footer(v);
    v_sec_cont(v, MP_QMIG_SECTION_PART, RAM_ID);
    v_page(v, "pc.ram", 0, 1);
    v_zero(v, NULL, PS);
    v_xbzrle(v, NULL, 0, 1);
    v_compressed(v, "/rom@etc/acpi/tables", 0, 2);
    v_flush(v);
    v_eos(v);
    v_footer(v);
    v_discard(v, "pc.ram", 2);
    k = v_packaged_begin(v);
    v_cmd0(v, MP_QMIG_CMD_POSTCOPY_LISTEN);
    v_sec_new(v, MP_QMIG_SECTION_FULL, 11, "slirp", 0, 4);
    v_dev_data(v, 13, 2);
    v_footer(v);
    v_ping(v, 3);
    v_cmd0(v, MP_QMIG_CMD_POSTCOPY_RUN);
    v_packaged_end(v, k);
    v_ping(v, 4);
    v_sec_cont(v, MP_QMIG_SECTION_END, RAM_ID);
    v_zero(v, NULL, 2 * PS);
    v_eos(v);
    v_footer(v);
    v_sec_cont(v, MP_QMIG_SECTION_END, 3);
    v_blk_eos(v);
    v_footer(v);
    build_devices(v, 67);
    v_eof(v);
    v_vmdesc(v, slice_vmdesc);
}

Test(qmig, everything_split_everywhere)
{
    g_autoptr(MpVmdesc) vd = vmdesc_of(slice_vmdesc);
    g_autoptr(Vec) v = vec_new();
    g_vmdesc = vd;
    build_everything(v);
    check_vec(v, "END");
}

/* Feeding any prefix and then finishing must fail as truncated, naming the
 * prefix length, except where a record ends (finish may then succeed);
 * the records reported are always a prefix of the whole stream's. */
Test(qmig, truncated_at_every_offset, .timeout = 60)
{
    g_autoptr(MpVmdesc) vd = vmdesc_of(slice_vmdesc);
    g_autoptr(Vec) v = vec_new();
    g_autoptr(GHashTable) ends = g_hash_table_new(NULL, NULL);
    g_auto(GStrv) lines = NULL;

    g_vmdesc = vd;
    build_everything(v);
    lines = g_strsplit(v->ex->str, "\n", -1);
    for (int i = 0; lines[i] && lines[i][0]; i++) {
        guint64 off, len;
        cr_assert(sscanf(lines[i], "off=%" G_GUINT64_FORMAT
                                   " len=%" G_GUINT64_FORMAT,
                         &off, &len) == 2);
        g_hash_table_add(ends, GSIZE_TO_POINTER(off + len));
    }
    for (gsize k = 0; k < v->b->len; k++) {
        g_autofree char *log = feed_log(&qmig_ops, v->b->data, k, 0, 0);
        char *last = g_strrstr(log, "\n");
        *last = 0;
        last = strrchr(log, '\n');
        last = last ? last + 1 : log;
        cr_assert(strncmp(log, v->ex->str, last - log) == 0,
                  "prefix %zu: records differ:\n%s", k, log);
        if (strcmp(last, "MORE") == 0) {
            cr_assert(k == 0 || g_hash_table_contains(ends,
                                                      GSIZE_TO_POINTER(k)),
                      "prefix %zu: finish succeeded inside a record", k);
            continue;
        }
        g_autofree char *head =
            g_strdup_printf("ERROR %d " CH ": ", MP_PARSE_ERROR_TRUNCATED);
        g_autofree char *where = g_strdup_printf("offset %zu", k);
        cr_assert(g_str_has_prefix(last, head), "prefix %zu: %s", k, last);
        cr_assert(strstr(last, where), "prefix %zu: %s", k, last);
    }
}

/* A PACKAGED blob has a length: a stream that ends inside it is
 * truncated, even where the parser passes the blob's device state through
 * opaquely (no vmdesc in postcopy). */
Test(qmig, truncated_inside_opaque_package)
{
    g_autoptr(Vec) v = vec_new();
    build_postcopy(v, FALSE, TRUE);
    const char *pk = strstr(v->ex->str, "command cmd=PACKAGED");
    const char *pe = strstr(v->ex->str, "packaged_end");
    cr_assert(pk && pe);
    /* offsets of the blob: after the 9-byte command, up to packaged_end */
    guint64 cmd_off, end_off;
    cr_assert(sscanf(g_strrstr_len(v->ex->str, pk - v->ex->str, "off="),
                     "off=%" G_GUINT64_FORMAT, &cmd_off) == 1);
    cr_assert(sscanf(g_strrstr_len(v->ex->str, pe - v->ex->str, "off="),
                     "off=%" G_GUINT64_FORMAT, &end_off) == 1);
    for (gsize k = cmd_off + 9 + 1; k < end_off; k++) {
        g_autofree char *log = feed_log(&qmig_ops, v->b->data, k, 0, 0);
        g_autofree char *want = g_strdup_printf(
            "ERROR %d " CH ": stream ends at offset %zu",
            MP_PARSE_ERROR_TRUNCATED, k);
        cr_assert(strstr(log, want), "prefix %zu:\n%s", k, log);
    }
}

/* ---- a real stream ------------------------------------------------------ */

static guint8 *
load_golden(gsize *len)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *zst = NULL;
    gsize zlen;
    const char *path = MP_SOURCE_ROOT "/samples/golden/idle-7.2.mig.zst";

    cr_assert(g_file_get_contents(path, &zst, &zlen, &err), "%s",
              err ? err->message : "");
    unsigned long long n = ZSTD_getFrameContentSize(zst, zlen);
    cr_assert(n != ZSTD_CONTENTSIZE_ERROR && n != ZSTD_CONTENTSIZE_UNKNOWN
              && n < (64u << 20));
    guint8 *data = g_malloc(n);
    size_t r = ZSTD_decompress(data, n, zst, zlen);
    cr_assert(!ZSTD_isError(r) && r == n);
    *len = n;
    return data;
}

static MpVmdesc *
golden_vmdesc(const guint8 *data, gsize len)
{
    gsize off, jlen;
    cr_assert(mp_vmdesc_locate(data, len, &off, &jlen));
    g_autoptr(GError) err = NULL;
    MpVmdesc *vd = mp_vmdesc_new((const char *)data + off, jlen, &err);
    cr_assert(vd, "%s", err ? err->message : "");
    return vd;
}

Test(qmig, golden_idle_7_2, .timeout = 90)
{
    gsize len, glen;
    g_autofree guint8 *data = load_golden(&len);
    g_autoptr(MpVmdesc) vd = golden_vmdesc(data, len);
    g_autofree char *golden = NULL;
    g_autoptr(GError) err = NULL;

    cr_assert(g_file_get_contents(MP_SOURCE_ROOT
                                  "/samples/golden/idle-7.2.events",
                                  &golden, &glen, &err));
    g_vmdesc = vd;
    g_autofree char *expect = g_strconcat(golden, "END\n", NULL);

    g_autofree char *whole = feed_log(&qmig_ops, data, len, 0, 0);
    cr_assert(strcmp(whole, expect) == 0, "whole feed differs from golden");
    g_autofree char *c4093 = feed_log(&qmig_ops, data, len, 4093, 0);
    cr_assert(strcmp(c4093, expect) == 0, "4093-byte chunks differ");
    g_autofree char *c64k = feed_log(&qmig_ops, data, len, 65536, 0);
    cr_assert(strcmp(c64k, expect) == 0, "64 KiB chunks differ");
    GRand *r = g_rand_new_with_seed(0x51e7);
    for (int i = 0; i < 3; i++) {
        gsize split = g_rand_int_range(r, 1, len);
        g_autofree char *s = feed_log(&qmig_ops, data, len, 0, split);
        cr_assert(strcmp(s, expect) == 0, "split at %zu differs", split);
    }
    g_rand_free(r);

    /* the first 64 KiB in small chunks: same records, truncated at the
     * same place */
    gsize head = 65536;
    g_autofree char *h_whole = feed_log(&qmig_ops, data, head, 0, 0);
    static const gsize chunks[] = {1, 7, 4093, 65536};
    for (gsize i = 0; i < G_N_ELEMENTS(chunks); i++) {
        g_autofree char *h = feed_log(&qmig_ops, data, head, chunks[i], 0);
        cr_assert_str_eq(h, h_whole, "chunks of %zu differ", chunks[i]);
    }
    char *last = g_strrstr(h_whole, "\n");
    *last = 0;
    last = strrchr(h_whole, '\n') + 1;
    cr_assert(strncmp(h_whole, golden, last - h_whole) == 0);
    cr_assert(g_str_has_prefix(last, "ERROR 9 " CH ": stream ends at offset "
                                     "65536"),
              "%s", last);
}

/* Address space of this process (VmSize), which a reservation grows even
 * before it is touched. */
static guint64
vm_size_kib(void)
{
    g_autofree char *status = NULL;
    cr_assert(g_file_get_contents("/proc/self/status", &status, NULL, NULL));
    const char *l = strstr(status, "\nVmSize:");
    cr_assert(l);
    return g_ascii_strtoull(l + 8, NULL, 10);
}

/* A vmdesc length of 64 MiB followed by 1000 bytes costs about 1000
 * bytes, not 64 MiB reserved at the length (it did before the buffer
 * grew with the data: VmSize +65536 KiB). */
Test(qmig, vmdesc_length_reserves_nothing_before_data)
{
    g_autoptr(Vec) v = vec_new();
    v_header(v);
    v_eof(v);
    put_u8(v->b, MP_QMIG_VMDESCRIPTION);
    put_be32(v->b, 64u << 20);
    put_u8(v->b, '{');
    for (int i = 0; i < 999; i++)
        put_u8(v->b, ' ');

    g_autoptr(MpQmigParser) p = mp_qmig_parser_new(CH, ignore_record, NULL);
    guint64 before = vm_size_kib();
    gsize used;
    cr_assert_eq(mp_qmig_parser_feed(p, v->b->data, v->b->len, &used, NULL),
                 MP_FEED_MORE);
    cr_assert_eq(used, v->b->len);
    guint64 grown = vm_size_kib() - before;
    cr_assert_lt(grown, 8192, "VmSize grew by %" G_GUINT64_FORMAT " KiB",
                 grown);
}

/* A vmdesc larger than the first buffer, split anywhere, comes out
 * whole. */
Test(qmig, vmdesc_grows_as_it_comes)
{
    g_autoptr(Vec) v = vec_new();
    g_autoptr(GString) json = g_string_new("{\"devices\": [");
    for (int i = 0; i < 20000; i++)
        g_string_append_printf(json, "%s{\"name\": \"d%d\", \"size\": 0}",
                               i ? ", " : "", i);
    g_string_append(json, "]}");
    cr_assert_gt(json->len, 256u << 10);
    v_header(v);
    v_eof(v);
    v_vmdesc(v, json->str);
    g_string_append(v->ex, "END\n");
    const gsize chunks[] = {0, 1000, 65535, 65537, 100000};
    for (guint i = 0; i < G_N_ELEMENTS(chunks); i++) {
        g_autofree char *log =
            feed_log(&qmig_ops, v->b->data, v->b->len, chunks[i], 0);
        cr_assert(g_str_equal(log, v->ex->str), "chunk %zu: %.300s",
                  chunks[i], log);
    }
}

/* Peak RSS of this process in KiB (VmHWM). */
static guint64
vm_hwm_kib(void)
{
    g_autofree char *status = NULL;
    cr_assert(g_file_get_contents("/proc/self/status", &status, NULL, NULL));
    const char *l = strstr(status, "\nVmHWM:");
    cr_assert(l);
    return g_ascii_strtoull(l + 7, NULL, 10);
}

/* A vmdesc that would cost json-c more than MP_VMDESC_MAX_HEAP (15 MiB of
 * "[],": 778 MB and seconds before the bound) is refused before json-c
 * sees it, naming the estimate; one over MP_VMDESC_MAX_SIZE too.  A real
 * vmdesc scaled 100 times (a q35 guest's devices, 4.4 MB) still parses. */
Test(qmig, vmdesc_parse_bounded)
{
    g_autoptr(GString) json = g_string_new("{\"devices\":[");
    while (json->len < (15u << 20))
        g_string_append(json, "[],");
    g_string_append(json, "[]]}");

    guint64 before = vm_hwm_kib();
    g_autoptr(GError) err = NULL;
    MpVmdesc *vd = mp_vmdesc_new(json->str, json->len, &err);
    cr_assert_null(vd);
    cr_assert(err && err->code == MP_PARSE_ERROR_LENGTH);
    cr_assert(strstr(err->message, "vmdesc: 15728644 bytes of JSON would "
                                   "take about 1935 MiB to parse (at most "
                                   "128 MiB)"),
              "%s", err->message);
    cr_assert_lt(vm_hwm_kib() - before, 16384);

    g_string_set_size(json, 0);
    g_string_append(json, "{\"devices\":[],\"x\":\"");
    while (json->len <= MP_VMDESC_MAX_SIZE)
        g_string_append(json, "0123456789abcdef");
    g_string_append(json, "\"}");
    g_clear_error(&err);
    cr_assert_null(mp_vmdesc_new(json->str, json->len, &err));
    cr_assert(strstr(err->message, "(at most 16777216 parsed)"), "%s",
              err->message);

    /* strings hide brackets from the estimate, escapes included */
    g_string_set_size(json, 0);
    g_string_append(json,
                    "{\"devices\":[{\"name\":\"a\\\"[[[{{{\",\"size\":1}");
    for (int i = 0; i < 100 * 29; i++)
        g_string_append_printf(
            json, ",{\"name\":\"d%d\",\"fields\":[{\"size\":4},{\"size\":8}],"
                  "\"subsections\":[{\"vmsd_name\":\"s\",\"fields\":"
                  "[{\"size\":1}]}]}",
            i);
    g_string_append(json, "]}");
    vd = mp_vmdesc_new(json->str, json->len, &err);
    cr_assert_not_null(vd);
    cr_assert_eq(mp_vmdesc_n_devices(vd), 1 + 100 * 29);
    mp_vmdesc_unref(vd);
}

/* ---- gaps: resuming at the next trusted record ------------------------ */

static gboolean
qmig_gap(gpointer p, guint64 len)
{
    return mp_qmig_parser_gap(p, len);
}

typedef struct {
    gsize part[3], page[3][12], eos[3], footer[3], eof;
} GapMarks;

/* Three RAM sections of 12 pages each in pc.ram, ascending (the first of
 * each section names its block, every third is a zero page), then EOF. */
static void
v_gap_stream(Vec *v, GapMarks *m)
{
    v_precopy_start(v);
    for (int s = 0; s < 3; s++) {
        m->part[s] = at(v);
        v_sec_cont(v, s == 2 ? MP_QMIG_SECTION_END : MP_QMIG_SECTION_PART,
                   RAM_ID);
        for (int i = 0; i < 12; i++) {
            guint64 addr = (guint64)(s * 12 + i) * PS;
            m->page[s][i] = at(v);
            if (i == 0)
                v_page(v, "pc.ram", addr, i);
            else if (i % 3 == 0)
                v_zero(v, NULL, addr);
            else
                v_page(v, NULL, addr, s * 12 + i);
        }
        m->eos[s] = at(v);
        v_eos(v);
        m->footer[s] = at(v);
        v_footer(v);
    }
    m->eof = at(v);
    v_eof(v);
}

/* A gap inside a page's data: parsing resumes at the next page (CONTINUE,
 * in the block before the gap), the records after it as without the gap;
 * whole, byte by byte and in odd chunks. */
Test(qmig, gap_resumes_at_next_page)
{
    g_autoptr(Vec) v = vec_new();
    GapMarks m;
    v_gap_stream(v, &m);
    gsize a = m.page[0][5] + 100;
    feed_check_gap(&qmig_ops, qmig_gap, v->b->data, v->b->len, a,
                   m.page[0][7] + 9 - a, m.page[0][8]);
    /* a gap that ends right where a page starts: nothing skipped */
    feed_check_gap(&qmig_ops, qmig_gap, v->b->data, v->b->len, a,
                   m.page[0][7] - a, m.page[0][7]);
}

/* Across EOS, footer and the next section's header: the next section's
 * first page names its block. */
Test(qmig, gap_across_sections_resumes_at_named_page)
{
    g_autoptr(Vec) v = vec_new();
    GapMarks m;
    v_gap_stream(v, &m);
    gsize a = m.page[0][10] + 4000;
    feed_check_gap(&qmig_ops, qmig_gap, v->b->data, v->b->len, a,
                   m.part[1] + 2 - a, m.page[1][0]);
    /* ending inside a footer: the next section header */
    feed_check_gap(&qmig_ops, qmig_gap, v->b->data, v->b->len, a,
                   m.footer[1] + 2 - a, m.part[2]);
    /* ending inside a page near the end: its last pages, EOS, footer and
     * EOF are enough to trust it */
    a = m.page[2][9] + 7;
    feed_check_gap(&qmig_ops, qmig_gap, v->b->data, v->b->len, a, 100,
                   m.page[2][11]);
}

/* The block changed in the gap: pages of pc.ram past the end of the ROM
 * (the block before the gap) are not taken for the ROM's; parsing
 * resumes at EOS, whose walk meets the next section's named page. */
Test(qmig, gap_block_changed_is_not_guessed)
{
    g_autoptr(Vec) v = vec_new();
    v_precopy_start(v);
    v_sec_cont(v, MP_QMIG_SECTION_PART, RAM_ID);
    v_page(v, "/rom@etc/acpi/tables", 0, 1);
    v_page(v, NULL, PS, 2);
    gsize a = at(v) + 50;
    v_page(v, NULL, 2 * PS, 3);
    v_page(v, "pc.ram", 40 * PS, 4);
    gsize b = at(v) - 10;
    for (int i = 41; i < 48; i++)
        v_page(v, NULL, i * PS, i);
    gsize eos = at(v);
    v_eos(v);
    v_footer(v);
    v_sec_cont(v, MP_QMIG_SECTION_END, RAM_ID);
    v_zero(v, "pc.ram", 50 * PS);
    v_page(v, NULL, 51 * PS, 9);
    v_eos(v);
    v_footer(v);
    v_eof(v);
    feed_check_gap(&qmig_ops, qmig_gap, v->b->data, v->b->len, a, b - a, eos);
}

/* Nothing trusted after the gap: the stream ends without a resume, which
 * is no truncation (the owner tells the gap). */
Test(qmig, gap_without_resume_point)
{
    g_autoptr(Vec) v = vec_new();
    GapMarks m;
    v_gap_stream(v, &m);
    g_autofree char *log = feed_log_gap(&qmig_ops, qmig_gap, v->b->data,
                                        v->b->len, m.page[2][2] + 5,
                                        m.eof - m.page[2][2] - 5, 1);
    cr_assert(!strstr(log, "resync"), "%s", log);
    cr_assert(g_str_has_suffix(log, "MORE\n"), "%s", log);
}
