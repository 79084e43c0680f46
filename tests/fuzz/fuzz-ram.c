/* fuzz-ram.c: libFuzzer target for the RAM record parser on its own, as
 * it reads the postcopy-preempt channel.
 *
 * Input: a selector byte (fuzz-chunks.h: chunk size, pausing; bit 6 here:
 * block names and ranges are checked against a main channel's block
 * list), then RAM records.  The content of the block list depends on the
 * chunk bits too: huge-page postcopy (bit 0) and x-ignore-shared (bit 1).
 * Feeding goes on after EOS, as on the main channel where one parser
 * reads every RAM section.  XBZRLE data that passed must apply.
 */
#include <glib.h>
#include "fuzz-chunks.h"
#include "ram-parser.h"
#include "xbzrle.h"

int LLVMFuzzerTestOneInput(const guint8 *data, gsize size);

static MpRamParser *main_list; /* shared block list, or NULL */

static MpRecordAction
ignore(const MpRecord *rec, gpointer user_data)
{
    return MP_REC_CONTINUE;
}

static MpRamParser *
main_with_blocks(void)
{
    static const guint8 list[] = {
        0, 0, 0, 0, 0, 0x05, 0x00, 0x04, /* MEM_SIZE 0x50000 */
        6, 'p', 'c', '.', 'r', 'a', 'm', 0, 0, 0, 0, 0, 0x04, 0, 0,
        1, 'r', 0, 0, 0, 0, 0, 0x01, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0x10, /* EOS */
    };
    MpRamParser *m = mp_ram_parser_new("main", MP_TARGET_PAGE_SIZE, ignore,
                                       NULL);
    gsize used;
    g_assert(mp_ram_parser_feed(m, list, sizeof(list), &used, NULL)
             == MP_FEED_END);
    return m;
}

static gpointer
ram_create(guint8 sel, MpRecordFunc cb, gpointer user_data)
{
    MpRamParser *p =
        mp_ram_parser_new("fuzz preempt", MP_TARGET_PAGE_SIZE, cb, user_data);
    if (sel & 0x40)
        mp_ram_parser_share_blocks(p, main_list);
    if (sel & 0x01)
        mp_ram_parser_set_postcopy_summary(p, MP_TARGET_PAGE_SIZE
                                                  | (2u << 20));
    mp_ram_parser_set_ignore_shared(p, !!(sel & 0x02));
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
    (void)mp_ram_parser_ram_total(p);
    return mp_ram_parser_finish(p, error);
}

static void
ram_destroy(gpointer p)
{
    mp_ram_parser_free(p);
}

static gsize
ram_data_len(const MpRecord *rec, guint8 sel, const guint8 **data)
{
    if (rec->kind != MP_REC_RAM_PAGE || !rec->u.page.payload)
        return 0;
    const MpRamPage *pg = &rec->u.page;
    if (pg->kind == MP_PAGE_XBZRLE) {
        guint8 page[MP_TARGET_PAGE_SIZE] = {0};
        g_assert(mp_xbzrle_apply(page, sizeof(page), pg->payload,
                                 pg->payload_len));
    }
    g_assert(pg->kind != MP_PAGE_NORMAL
             || pg->payload_len == MP_TARGET_PAGE_SIZE);
    *data = pg->payload;
    return pg->payload_len;
}

static const MpFuzzOps ram_ops = {ram_create, ram_feed, ram_finish,
                                  ram_destroy, ram_data_len};

int
LLVMFuzzerTestOneInput(const guint8 *data, gsize size)
{
    if (!main_list)
        main_list = main_with_blocks();
    return mp_fuzz_chunks_run(&ram_ops, data, size);
}
