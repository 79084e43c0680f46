/* analysis.c: aggregates records into the stream's summary.
 *
 * Per page it does a bitmap test-and-set and a position compare, nothing
 * that touches the page's bytes, so the summary runs at parse speed.
 */
#include <string.h>
#include <stdarg.h>
#include "analysis.h"
#include "page-marks.h"
#include "parse-common.h"

typedef enum {
    CAT_HEADER,
    CAT_RAM_PAGES,
    CAT_RAM_CONTROL,
    CAT_DISK,
    CAT_SECTIONS,
    CAT_DEVICES,
    CAT_COMMANDS,
    CAT_VMDESC,
    CAT_OPAQUE,
    CAT__MAX,
} Category;

static const char *const category_names[CAT__MAX] = {
    [CAT_HEADER] = "header",       [CAT_RAM_PAGES] = "ram_pages",
    [CAT_RAM_CONTROL] = "ram_control", [CAT_DISK] = "disk",
    [CAT_SECTIONS] = "sections",   [CAT_DEVICES] = "devices",
    [CAT_COMMANDS] = "commands",   [CAT_VMDESC] = "vmdesc",
    [CAT_OPAQUE] = "opaque",
};

typedef enum {
    PHASE_SETUP,
    PHASE_PRECOPY,
    PHASE_STOPPED, /* stop-and-copy: the VM is stopped on the source */
    PHASE_POSTCOPY,
    PHASE__MAX,
} Phase;

static const char *const phase_names[PHASE__MAX] = {
    "setup", "precopy", "stop-copy", "postcopy"};

typedef struct {
    char *name;
    guint index;
    guint64 size;
    guint64 pages[MP_PAGE__MAX];
    MpPageMarks *marks; /* which pages were sent, this round or before */
    gboolean untracked; /* pages past the marks' limit seen (noted once) */
} BlockStat;

typedef struct {
    guint index;
    Phase phase;
    guint64 pages[MP_PAGE__MAX];
    guint64 dirty_pages;
    guint64 repeated; /* sent twice within this round */
    guint64 bytes;
    guint64 start_offset, end_offset;
    gint64 start_us, end_us;
    gboolean after_gap; /* bytes of it were missing: its counts may be low */
} Round;

typedef struct {
    char *name;
    guint32 instance, version;
    guint64 offset, bytes;
    gboolean sliced; /* size known (vmdesc) */
} DeviceStat;

/* Where the dirty-page scan was last seen on one channel.  Pages of one
 * channel come in scan order; across the multifd channels they do not. */
typedef struct {
    BlockStat *last_block;
    guint64 last_addr;
    guint round; /* the round this channel's pages are in */
    /* sync epoch: MULTIFD_FLUSH records on main, SYNC packets on multifd */
    guint syncs;
    gboolean sync_pending; /* a SYNC packet's own pages are the old epoch */
} Cursor;

#define MAX_CURSORS 256

typedef struct {
    guint64 channels; /* MultiFDInit_t seen */
    guint64 packets, sync_packets, device_state_packets;
    guint64 normal_pages, zero_pages;
    guint64 undecoded_packets; /* compressed, pages from the header */
    guint64 bytes; /* QEMU's multifd-bytes: header + normal pages */
    guint64 init_bytes; /* the 64-byte inits (counted by QEMU 10.0) */
    guint64 wire_bytes;
} MultifdStat;

struct MpAnalysis {
    char *machine;
    guint64 stream_bytes;
    gint64 now_us;
    gboolean live;

    GHashTable *blocks; /* name -> BlockStat* */
    GPtrArray *block_order;
    BlockStat *found; /* last find_block() result: pages come in runs */
    guint64 ram_total;
    guint64 pages[MP_PAGE__MAX];
    guint64 page_bytes[MP_PAGE__MAX]; /* wire bytes of the records */
    guint64 phase_pages[PHASE__MAX];
    guint64 phase_bytes[PHASE__MAX];
    guint64 ram_bytes;
    guint64 nonzero_fill;

    GArray *rounds; /* Round */
    GArray *cursors; /* Cursor, by channel (0: main) */
    gboolean compress_seen;
    /* [8.1+] MULTIFD_FLUSH marks each wrap of the scan */
    gboolean flush_rounds;
    GArray *epoch_round; /* guint: the round of each sync epoch (0: none) */
    guint64 distinct_pages; /* pages sent at least once */
    MultifdStat mfd;
    GHashTable *rp_messages; /* name -> count (GUINT_TO_POINTER) */
    guint64 rp_bytes;
    gint64 phase_start_us[PHASE__MAX];

    Phase phase;
    GHashTable *commands; /* name -> count (GUINT_TO_POINTER) */
    guint64 sections[5];
    guint64 discard_ranges;
    guint64 packaged_bytes;
    guint64 postcopy_requests;

    GArray *devices; /* DeviceStat */
    DeviceStat *cur_device;
    guint64 disk_chunks, disk_zero_chunks, disk_bytes;

    guint64 cat[CAT__MAX];
    GPtrArray *errors;
    GPtrArray *anomalies;
    guint64 opaque_from;
    char *opaque_why;
    gboolean eof, vmdesc_seen;
    MpVmdesc *vmdesc;
    /* a capture's gaps, and where parsing resumed after them */
    gboolean after_gap;
    guint64 resyncs, resync_skipped;
    guint marks_left; /* page-mark chunks all blocks may still make */
};

static void
block_stat_free(gpointer p)
{
    BlockStat *b = p;
    g_free(b->name);
    mp_page_marks_free(b->marks);
    g_free(b);
}

MpAnalysis *
mp_analysis_new(void)
{
    MpAnalysis *a = g_new0(MpAnalysis, 1);
    a->blocks = g_hash_table_new(g_str_hash, g_str_equal);
    a->block_order = g_ptr_array_new_with_free_func(block_stat_free);
    a->rounds = g_array_new(FALSE, TRUE, sizeof(Round));
    a->cursors = g_array_new(FALSE, TRUE, sizeof(Cursor));
    g_array_set_size(a->cursors, 1);
    a->epoch_round = g_array_new(FALSE, TRUE, sizeof(guint));
    a->rp_messages = g_hash_table_new(g_str_hash, g_str_equal);
    for (int ph = 0; ph < PHASE__MAX; ph++)
        a->phase_start_us[ph] = -1;
    a->commands = g_hash_table_new(g_str_hash, g_str_equal);
    a->devices = g_array_new(FALSE, TRUE, sizeof(DeviceStat));
    a->errors = g_ptr_array_new_with_free_func(g_free);
    a->anomalies = g_ptr_array_new_with_free_func(g_free);
    a->opaque_from = G_MAXUINT64;
    a->now_us = -1;
    a->marks_left = MP_PAGE_MARKS_MAX_CHUNKS;
    return a;
}

void
mp_analysis_free(MpAnalysis *a)
{
    if (!a)
        return;
    g_free(a->machine);
    g_hash_table_destroy(a->blocks);
    g_ptr_array_free(a->block_order, TRUE);
    g_array_free(a->rounds, TRUE);
    g_array_free(a->cursors, TRUE);
    g_array_free(a->epoch_round, TRUE);
    g_hash_table_destroy(a->rp_messages);
    g_hash_table_destroy(a->commands);
    for (guint i = 0; i < a->devices->len; i++)
        g_free(g_array_index(a->devices, DeviceStat, i).name);
    g_array_free(a->devices, TRUE);
    g_ptr_array_free(a->errors, TRUE);
    g_ptr_array_free(a->anomalies, TRUE);
    g_free(a->opaque_why);
    mp_vmdesc_unref(a->vmdesc);
    g_free(a);
}

void
mp_analysis_set_vmdesc(MpAnalysis *a, MpVmdesc *vmdesc)
{
    mp_vmdesc_unref(a->vmdesc);
    a->vmdesc = vmdesc ? mp_vmdesc_ref(vmdesc) : NULL;
}

void
mp_analysis_set_time(MpAnalysis *a, gint64 now_us)
{
    a->now_us = now_us;
    if (!a->live && a->phase_start_us[PHASE_SETUP] < 0)
        a->phase_start_us[PHASE_SETUP] = now_us;
    a->live = TRUE;
}

static void
set_phase(MpAnalysis *a, Phase ph)
{
    if (a->phase == ph)
        return;
    a->phase = ph;
    if (a->live && a->phase_start_us[ph] < 0)
        a->phase_start_us[ph] = a->now_us;
}

void
mp_analysis_error(MpAnalysis *a, const GError *err)
{
    g_ptr_array_add(a->errors, g_strdup(err->message));
}

void
mp_analysis_anomaly(MpAnalysis *a, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    /* bounded: a hostile stream must not grow the report without end */
    if (a->anomalies->len < 100)
        g_ptr_array_add(a->anomalies, g_strdup_vprintf(fmt, ap));
    else if (a->anomalies->len == 100)
        g_ptr_array_add(a->anomalies, g_strdup("(more anomalies omitted)"));
    va_end(ap);
}

static Round *
cur_round(MpAnalysis *a)
{
    return a->rounds->len ? &g_array_index(a->rounds, Round, a->rounds->len - 1)
                          : NULL;
}

void
mp_analysis_mark_gap(MpAnalysis *a)
{
    Round *r = cur_round(a);
    a->after_gap = TRUE;
    if (r)
        r->after_gap = TRUE;
}

static Round *
new_round(MpAnalysis *a, guint64 offset)
{
    Round nr = {0};
    nr.index = a->rounds->len + 1;
    nr.phase = a->phase;
    nr.start_offset = offset;
    nr.start_us = a->now_us;
    nr.end_us = -1;
    g_array_append_val(a->rounds, nr);
    /* pages of the round that ended now count as "sent before" */
    for (guint i = 0; i < a->block_order->len; i++) {
        BlockStat *b = g_ptr_array_index(a->block_order, i);
        mp_page_marks_next_round(b->marks);
    }
    return cur_round(a);
}

static void
count_command(MpAnalysis *a, const char *name)
{
    gpointer v = g_hash_table_lookup(a->commands, name);
    g_hash_table_insert(a->commands, (gpointer)name,
                        GUINT_TO_POINTER(GPOINTER_TO_UINT(v) + 1));
}

static void
add_block(MpAnalysis *a, const MpRamBlockInfo *bi)
{
    if (g_hash_table_lookup(a->blocks, bi->name))
        return;
    BlockStat *b = g_new0(BlockStat, 1);
    b->name = g_strdup(bi->name);
    b->index = a->block_order->len;
    b->size = bi->used_length;
    /* (marks made as pages come: the size is the stream's word only) */
    b->marks = mp_page_marks_new_shared(&a->marks_left);
    g_hash_table_insert(a->blocks, b->name, b);
    g_ptr_array_add(a->block_order, b);
}

/* A round ends where the scan wraps: a page at or before the previous
 * page's position (block order of the block list, then address).  Pages
 * of 7.2's compress threads come out up to a few pages out of order, so a
 * short step back within a block is not a wrap once compression is seen. */
static gboolean
is_wrap(MpAnalysis *a, const Cursor *c, BlockStat *b, guint64 addr)
{
    if (!c->last_block)
        return FALSE;
    if (b->index != c->last_block->index)
        return b->index < c->last_block->index;
    if (addr > c->last_addr)
        return FALSE;
    if (a->compress_seen
        && c->last_addr - addr <= 64 * (guint64)MP_TARGET_PAGE_SIZE)
        return FALSE;
    return TRUE;
}

static Cursor *
cursor_of(MpAnalysis *a, guint channel)
{
    channel = MIN(channel, MAX_CURSORS - 1);
    if (channel >= a->cursors->len)
        g_array_set_size(a->cursors, channel + 1);
    return &g_array_index(a->cursors, Cursor, channel);
}

/* The round a page belongs to.  Without multifd there is one cursor (the
 * main channel) and a page at or before the previous one starts a round.
 * With several channels, the first channel whose scan wraps starts the
 * round and the others catch up when they wrap too.  On 8.1+ with
 * multifd, every wrap is one sync: MULTIFD_FLUSH on main, a SYNC packet
 * on every multifd channel, so the sync epoch of the page's channel is
 * its round, whatever order the channels are read in (docs/rounds.md). */
static Round *
page_round(MpAnalysis *a, Cursor *c, BlockStat *b, guint64 addr,
           guint64 offset, gboolean multifd)
{
    Round *r = cur_round(a);

    if (a->phase == PHASE_POSTCOPY) {
        if (!r || r->phase != PHASE_POSTCOPY)
            r = new_round(a, offset);
    } else if (a->flush_rounds) {
        /* an epoch without pages (a sync that found nothing to send) is
         * no round */
        guint epoch = MIN(c->syncs, 1u << 20);
        if (a->epoch_round->len <= epoch)
            g_array_set_size(a->epoch_round, epoch + 1);
        guint *ri = &g_array_index(a->epoch_round, guint, epoch);
        if (!*ri)
            *ri = new_round(a, offset)->index;
        r = &g_array_index(a->rounds, Round, *ri - 1);
    } else if (!r) {
        r = new_round(a, offset);
    } else if (is_wrap(a, c, b, addr) && c->round == r->index
               /* 7.2 can repeat a packet's last page in the next packet */
               && !(multifd && c->last_block == b && c->last_addr == addr)) {
        r = new_round(a, offset);
    }
    c->round = r->index;
    c->last_block = b;
    c->last_addr = addr;
    return r;
}

/* Hashing the block name of every page was a quarter of the summary's
 * user-space instructions; consecutive pages are nearly always of one
 * block, so a strcmp against the last one usually settles it. */
static BlockStat *
find_block(MpAnalysis *a, const char *name)
{
    if (!name)
        return NULL;
    if (!a->found || strcmp(a->found->name, name) != 0)
        a->found = g_hash_table_lookup(a->blocks, name);
    return a->found;
}

/* One page of any channel: `length` is its wire size (0 for multifd zero
 * pages and decoded pages, which have none of their own). */
static void
count_page(MpAnalysis *a, guint channel, const char *block, guint64 addr,
           MpPageKind kind, guint64 length, guint64 offset, gboolean multifd)
{
    BlockStat *b = find_block(a, block);

    /* no START section carries pages: a multifd page read before the
     * main channel's first PART header belongs to pre-copy already */
    if (a->phase == PHASE_SETUP)
        set_phase(a, PHASE_PRECOPY);
    a->pages[kind]++;
    a->page_bytes[kind] += length;
    a->phase_pages[a->phase]++;
    if (kind == MP_PAGE_COMPRESSED)
        a->compress_seen = TRUE;
    if (!b || addr >= b->size)
        return; /* the parser checks names when the list is known */
    b->pages[kind]++;

    Round *r = page_round(a, cursor_of(a, channel), b, addr, offset, multifd);
    guint was = mp_page_marks_mark(b->marks, addr / MP_TARGET_PAGE_SIZE);
    if (was & MP_PAGE_UNTRACKED) {
        if (!b->untracked)
            mp_analysis_anomaly(a,
                                "block %s: pages over more than %u GiB of "
                                "guest RAM (all blocks together); "
                                "from offset %" G_GUINT64_FORMAT " on, "
                                "dirty and distinct pages are not counted "
                                "for the rest",
                                b->name,
                                (guint)((guint64)MP_PAGE_MARKS_MAX_CHUNKS
                                        * MP_PAGE_MARKS_CHUNK
                                        * MP_TARGET_PAGE_SIZE >> 30),
                                offset);
        b->untracked = TRUE;
    } else {
        if (was & MP_PAGE_SENT_BEFORE)
            r->dirty_pages++;
        else if (!(was & MP_PAGE_SENT_THIS_ROUND))
            a->distinct_pages++;
        if (was & MP_PAGE_SENT_THIS_ROUND)
            r->repeated++;
    }
    r->pages[kind]++;
    r->bytes += length;
    r->end_offset = offset + length;
    r->end_us = a->now_us;
}

static void
ram_page(MpAnalysis *a, guint channel, const MpRecord *rec)
{
    const MpRamPage *pg = &rec->u.page;

    if (pg->kind == MP_PAGE_ZERO && pg->payload && pg->payload[0]
        && a->nonzero_fill++ == 0)
        mp_analysis_anomaly(a,
                            "ZERO record with fill 0x%02x at offset %"
                            G_GUINT64_FORMAT " (QEMU always sends 0)",
                            pg->payload[0], rec->offset);
    count_page(a, channel, pg->block, pg->addr, pg->kind, rec->length,
               rec->offset, FALSE);
}

/* A multifd packet header.  QEMU's multifd-bytes counts the header and
 * the uncompressed size of its normal pages (multifd_send_pages@7.2),
 * SYNC packets included; the 64-byte init is not counted. */
static void
mfd_packet(MpAnalysis *a, guint channel, const MpRecord *rec)
{
    const MpMfdInfo *m = &rec->u.mfd;
    Cursor *c = cursor_of(a, channel);

    if (c->sync_pending)
        c->syncs++;
    c->sync_pending = !!(m->flags & MP_MULTIFD_FLAG_SYNC);
    a->mfd.packets++;
    a->mfd.wire_bytes += rec->length;
    if (m->flags & MP_MULTIFD_FLAG_SYNC)
        a->mfd.sync_packets++;
    a->mfd.bytes += rec->length + (guint64)m->normal_pages
                                      * MP_TARGET_PAGE_SIZE;
    if (m->pages_follow)
        return;
    /* compressed and not decoded: the pages are known from the header */
    a->mfd.undecoded_packets++;
    for (guint32 i = 0; m->offsets && i < m->normal_pages + m->zero_pages;
         i++) {
        gboolean zero = i >= m->normal_pages;
        if (zero)
            a->mfd.zero_pages++;
        else
            a->mfd.normal_pages++;
        count_page(a, channel, m->block, mp_be64(m->offsets + 8 * i),
                   zero ? MP_PAGE_ZERO : MP_PAGE_NORMAL, 0, rec->offset, TRUE);
    }
}

static void
mfd_page(MpAnalysis *a, guint channel, const MpRecord *rec)
{
    const MpMfdInfo *m = &rec->u.mfd;

    if (m->zero)
        a->mfd.zero_pages++;
    else
        a->mfd.normal_pages++;
    count_page(a, channel, m->block, m->addr,
               m->zero ? MP_PAGE_ZERO : MP_PAGE_NORMAL, rec->length,
               rec->offset, TRUE);
}

static void
add_device_bytes(MpAnalysis *a, guint64 n)
{
    if (a->cur_device)
        a->cur_device->bytes += n;
}

void
mp_analysis_record(MpAnalysis *a, const MpRecord *rec)
{
    mp_analysis_record_on(a, 0, rec);
}

void
mp_analysis_record_on(MpAnalysis *a, guint channel, const MpRecord *rec)
{
    switch (rec->kind) {
    case MP_REC_STREAM_HEADER:
        a->cat[CAT_HEADER] += rec->length;
        break;
    case MP_REC_CONFIGURATION:
        a->cat[CAT_HEADER] += rec->length;
        g_free(a->machine);
        a->machine = g_strdup(rec->u.config.machine);
        break;
    case MP_REC_SECTION_HEADER: {
        const MpSectionInfo *s = &rec->u.sect;
        a->cat[CAT_SECTIONS] += rec->length;
        if (s->type < G_N_ELEMENTS(a->sections))
            a->sections[s->type]++;
        a->cur_device = NULL;
        if (s->type == MP_QMIG_SECTION_PART && a->phase == PHASE_SETUP)
            set_phase(a, PHASE_PRECOPY);
        if (s->type == MP_QMIG_SECTION_END && a->phase <= PHASE_PRECOPY)
            set_phase(a, PHASE_STOPPED);
        if (s->type == MP_QMIG_SECTION_FULL) {
            DeviceStat d = {0};
            d.name = g_strdup(s->idstr);
            d.instance = s->instance_id;
            d.version = s->version_id;
            d.offset = rec->offset;
            d.bytes = rec->length;
            g_array_append_val(a->devices, d);
            a->cur_device =
                &g_array_index(a->devices, DeviceStat, a->devices->len - 1);
        }
        break;
    }
    case MP_REC_SECTION_FOOTER:
        a->cat[CAT_SECTIONS] += rec->length;
        add_device_bytes(a, rec->length);
        break;
    case MP_REC_DEVICE_DATA:
        a->cat[CAT_DEVICES] += rec->length;
        add_device_bytes(a, rec->length);
        if (a->cur_device)
            a->cur_device->sliced = TRUE;
        break;
    case MP_REC_OPAQUE:
        a->cat[CAT_OPAQUE] += rec->length;
        if (rec->u.raw.why && a->opaque_from == G_MAXUINT64) {
            a->opaque_from = rec->offset;
            a->opaque_why = g_strdup(rec->u.raw.why);
        }
        break;
    case MP_REC_COMMAND:
        a->cat[CAT_COMMANDS] += rec->length;
        count_command(a, mp_qmig_command_name(rec->u.cmd.cmd));
        switch (rec->u.cmd.cmd) {
        case MP_QMIG_CMD_SWITCHOVER_START:
        case MP_QMIG_CMD_POSTCOPY_RAM_DISCARD:
            if (a->phase <= PHASE_PRECOPY)
                set_phase(a, PHASE_STOPPED);
            a->discard_ranges += rec->u.cmd.discard_count;
            break;
        case MP_QMIG_CMD_PACKAGED:
            if (a->phase <= PHASE_PRECOPY)
                set_phase(a, PHASE_STOPPED);
            a->packaged_bytes += rec->u.cmd.packaged_len;
            break;
        default:
            break;
        }
        break;
    case MP_REC_PACKAGED_END:
        set_phase(a, PHASE_POSTCOPY);
        a->cur_device = NULL;
        break;
    case MP_REC_EOF:
        a->cat[CAT_VMDESC] += rec->length;
        a->eof = TRUE;
        break;
    case MP_REC_VMDESC:
        a->cat[CAT_VMDESC] += rec->length;
        a->vmdesc_seen = TRUE;
        break;
    case MP_REC_RAM_MEM_SIZE:
        a->cat[CAT_RAM_CONTROL] += rec->length;
        a->ram_total = rec->u.mem_size.total;
        break;
    case MP_REC_RAM_BLOCK:
        a->cat[CAT_RAM_CONTROL] += rec->length;
        add_block(a, &rec->u.block);
        break;
    case MP_REC_RAM_EOS:
        a->cat[CAT_RAM_CONTROL] += rec->length;
        a->ram_bytes += rec->length;
        break;
    case MP_REC_RAM_MULTIFD_FLUSH:
        a->cat[CAT_RAM_CONTROL] += rec->length;
        a->ram_bytes += rec->length;
        /* only multifd streams carry it, so rounds come from it alone */
        a->flush_rounds = TRUE;
        cursor_of(a, channel)->syncs++;
        break;
    case MP_REC_RAM_PAGE:
        a->cat[CAT_RAM_PAGES] += rec->length;
        a->ram_bytes += rec->length;
        a->phase_bytes[a->phase] += rec->length;
        ram_page(a, channel, rec);
        break;
    case MP_REC_BLK_BLOCK:
        a->cat[CAT_DISK] += rec->length;
        a->disk_chunks++;
        if (rec->u.blk.zero)
            a->disk_zero_chunks++;
        else
            a->disk_bytes += MP_BLK_MIG_BLOCK_SIZE;
        break;
    case MP_REC_BLK_PROGRESS:
    case MP_REC_BLK_EOS:
        a->cat[CAT_DISK] += rec->length;
        break;
    case MP_REC_RP_MESSAGE: {
        const char *name = mp_rp_message_name(rec->u.rp.type);
        gpointer v = g_hash_table_lookup(a->rp_messages, name);
        g_hash_table_insert(a->rp_messages, (gpointer)name,
                            GUINT_TO_POINTER(GPOINTER_TO_UINT(v) + 1));
        a->rp_bytes += rec->length;
        if (rec->u.rp.type == MP_RP_MSG_REQ_PAGES
            || rec->u.rp.type == MP_RP_MSG_REQ_PAGES_ID)
            a->postcopy_requests++;
        break;
    }
    case MP_REC_RP_BITMAP:
        a->rp_bytes += rec->length;
        break;
    case MP_REC_MFD_INIT:
        a->mfd.channels++;
        a->mfd.init_bytes += rec->length;
        a->mfd.wire_bytes += rec->length;
        break;
    case MP_REC_MFD_PACKET:
        mfd_packet(a, channel, rec);
        break;
    case MP_REC_MFD_PAGE:
        a->mfd.wire_bytes += rec->length;
        mfd_page(a, channel, rec);
        break;
    case MP_REC_MFD_DATA:
        a->mfd.wire_bytes += rec->length;
        break;
    case MP_REC_MFD_DEVICE_STATE:
        a->mfd.device_state_packets++;
        a->mfd.wire_bytes += rec->length;
        break;
    case MP_REC_RESYNC:
        a->resyncs++;
        a->resync_skipped += rec->u.resync.skipped;
        mp_analysis_mark_gap(a);
        break;
    default:
        break;
    }
}

void
mp_analysis_finish(MpAnalysis *a, guint64 stream_bytes)
{
    Round *r = cur_round(a);
    if (r && r->end_us < 0)
        r->end_us = a->now_us;
    a->stream_bytes = stream_bytes;
    if (!a->eof && !a->errors->len && a->opaque_from == G_MAXUINT64)
        mp_analysis_anomaly(a, "the stream ends without QEMU_VM_EOF");
    guint64 repeated = 0;
    for (guint i = 0; i < a->rounds->len; i++)
        repeated += g_array_index(a->rounds, Round, i).repeated;
    if (repeated)
        mp_analysis_anomaly(a,
                            "%" G_GUINT64_FORMAT " pages were sent twice "
                            "within one round",
                            repeated);
}

/* ---- JSON ---- */

static json_object *
jint(guint64 v)
{
    return json_object_new_int64((gint64)v);
}

static json_object *
pages_json(const guint64 *pages)
{
    json_object *o = json_object_new_object();
    for (int k = 0; k < MP_PAGE__MAX; k++)
        json_object_object_add(o, mp_page_kind_name(k), jint(pages[k]));
    return o;
}

static guint64
sum_pages(const guint64 *pages)
{
    guint64 s = 0;
    for (int k = 0; k < MP_PAGE__MAX; k++)
        s += pages[k];
    return s;
}

static json_object *
round_json(const Round *r)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "index", jint(r->index));
    json_object_object_add(o, "phase",
                           json_object_new_string(phase_names[r->phase]));
    json_object_object_add(o, "pages", jint(sum_pages(r->pages)));
    json_object_object_add(o, "dirty_pages", jint(r->dirty_pages));
    json_object_object_add(o, "bytes", jint(r->bytes));
    json_object_object_add(o, "by_kind", pages_json(r->pages));
    json_object_object_add(o, "start_offset", jint(r->start_offset));
    json_object_object_add(o, "end_offset", jint(r->end_offset));
    if (r->after_gap)
        json_object_object_add(o, "after_gap", json_object_new_boolean(TRUE));
    if (r->start_us >= 0) {
        gint64 end = MAX(r->end_us, r->start_us);
        json_object_object_add(o, "start_us", jint(r->start_us));
        json_object_object_add(o, "end_us", jint(end));
        /* bits per second over the round's span (live streams) */
        json_object_object_add(
            o, "throughput_bps",
            jint(end > r->start_us
                     ? r->bytes * 8 * G_USEC_PER_SEC / (end - r->start_us)
                     : 0));
    }
    return o;
}

static json_object *
device_fields(const MpAnalysis *a, const DeviceStat *d, guint *cursor)
{
    if (!a->vmdesc)
        return NULL;
    const MpVmdescDevice *vd =
        mp_vmdesc_lookup(a->vmdesc, d->name, d->instance, cursor);
    if (!vd)
        return NULL;
    json_object *fields = json_object_new_array();
    json_object *src;
    if (json_object_object_get_ex(vd->desc, "fields", &src)) {
        for (size_t i = 0; i < json_object_array_length(src); i++) {
            json_object *f = json_object_array_get_idx(src, i);
            json_object *o = json_object_new_object(), *v;
            const char *keys[] = {"name", "type", "size", "array_len",
                                  "index"};
            for (guint k = 0; k < G_N_ELEMENTS(keys); k++)
                if (json_object_object_get_ex(f, keys[k], &v))
                    json_object_object_add(o, keys[k], json_object_get(v));
            json_object_array_add(fields, o);
        }
    }
    if (json_object_object_get_ex(vd->desc, "subsections", &src)) {
        for (size_t i = 0; i < json_object_array_length(src); i++) {
            json_object *s = json_object_array_get_idx(src, i), *v;
            json_object *o = json_object_new_object();
            if (json_object_object_get_ex(s, "vmsd_name", &v))
                json_object_object_add(o, "subsection", json_object_get(v));
            json_object_array_add(fields, o);
        }
    }
    return fields;
}

json_object *
mp_analysis_to_json(const MpAnalysis *a)
{
    json_object *doc = json_object_new_object();

    json_object *stream = json_object_new_object();
    json_object_object_add(stream, "machine",
                           a->machine ? json_object_new_string(a->machine)
                                      : NULL);
    json_object_object_add(stream, "bytes", jint(a->stream_bytes));
    json_object_object_add(stream, "complete", json_object_new_boolean(a->eof));
    json_object_object_add(stream, "vmdesc",
                           json_object_new_boolean(a->vmdesc_seen));
    json_object *secs = json_object_new_object();
    const char *sec_names[] = {NULL, "start", "part", "end", "full"};
    for (int t = 1; t <= 4; t++)
        json_object_object_add(secs, sec_names[t], jint(a->sections[t]));
    json_object_object_add(stream, "sections", secs);
    if (a->opaque_from != G_MAXUINT64) {
        json_object_object_add(stream, "opaque_from", jint(a->opaque_from));
        json_object_object_add(stream, "opaque_reason",
                               json_object_new_string(a->opaque_why));
    }
    json_object_object_add(doc, "stream", stream);

    json_object *ram = json_object_new_object();
    json_object *blocks = json_object_new_array();
    for (guint i = 0; i < a->block_order->len; i++) {
        BlockStat *b = g_ptr_array_index(a->block_order, i);
        json_object *o = json_object_new_object();
        json_object_object_add(o, "name", json_object_new_string(b->name));
        json_object_object_add(o, "size", jint(b->size));
        json_object_object_add(o, "pages", pages_json(b->pages));
        json_object_array_add(blocks, o);
    }
    json_object_object_add(ram, "total", jint(a->ram_total));
    json_object_object_add(ram, "blocks", blocks);
    json_object_object_add(ram, "pages", pages_json(a->pages));
    json_object_object_add(ram, "bytes", jint(a->ram_bytes));
    json_object_object_add(ram, "bytes_by_kind", pages_json(a->page_bytes));
    json_object *phases = json_object_new_object();
    for (int ph = PHASE_PRECOPY; ph < PHASE__MAX; ph++) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "pages", jint(a->phase_pages[ph]));
        json_object_object_add(o, "bytes", jint(a->phase_bytes[ph]));
        json_object_object_add(phases, phase_names[ph], o);
    }
    json_object_object_add(ram, "phases", phases);
    if (a->after_gap) {
        /* counts are of the bytes the input held: a capture's gaps make
         * them a lower bound */
        json_object_object_add(ram, "after_gap", json_object_new_boolean(TRUE));
        json_object_object_add(ram, "resyncs", jint(a->resyncs));
        json_object_object_add(ram, "resync_skipped_bytes",
                               jint(a->resync_skipped));
    }
    json_object_object_add(doc, "ram", ram);

    json_object *rounds = json_object_new_array();
    for (guint i = 0; i < a->rounds->len; i++)
        json_object_array_add(rounds,
                              round_json(&g_array_index(a->rounds, Round, i)));
    json_object_object_add(doc, "rounds", rounds);

    json_object *devices = json_object_new_array();
    guint cursor = 0;
    for (guint i = 0; i < a->devices->len; i++) {
        const DeviceStat *d = &g_array_index(a->devices, DeviceStat, i);
        json_object *o = json_object_new_object();
        json_object_object_add(o, "name", json_object_new_string(d->name));
        json_object_object_add(o, "instance", jint(d->instance));
        json_object_object_add(o, "version", jint(d->version));
        json_object_object_add(o, "offset", jint(d->offset));
        json_object_object_add(o, "bytes", d->sliced ? jint(d->bytes) : NULL);
        json_object *fields = device_fields(a, d, &cursor);
        if (fields)
            json_object_object_add(o, "fields", fields);
        json_object_array_add(devices, o);
    }
    json_object_object_add(doc, "devices", devices);

    json_object *cmds = json_object_new_object();
    GHashTableIter it;
    gpointer k, v;
    g_hash_table_iter_init(&it, a->commands);
    while (g_hash_table_iter_next(&it, &k, &v))
        json_object_object_add(cmds, k, jint(GPOINTER_TO_UINT(v)));
    json_object_object_add(doc, "commands", cmds);

    if (a->disk_chunks) {
        json_object *disk = json_object_new_object();
        json_object_object_add(disk, "chunks", jint(a->disk_chunks));
        json_object_object_add(disk, "zero_chunks", jint(a->disk_zero_chunks));
        json_object_object_add(disk, "data_bytes", jint(a->disk_bytes));
        json_object_object_add(doc, "disk", disk);
    }
    if (a->packaged_bytes || a->discard_ranges || a->postcopy_requests) {
        json_object *pc = json_object_new_object();
        json_object_object_add(pc, "packaged_bytes", jint(a->packaged_bytes));
        json_object_object_add(pc, "discard_ranges", jint(a->discard_ranges));
        json_object_object_add(pc, "requests", jint(a->postcopy_requests));
        json_object_object_add(doc, "postcopy", pc);
    }

    if (a->mfd.channels || a->mfd.packets) {
        json_object *m = json_object_new_object();
        json_object_object_add(m, "channels", jint(a->mfd.channels));
        json_object_object_add(m, "packets", jint(a->mfd.packets));
        json_object_object_add(m, "sync_packets", jint(a->mfd.sync_packets));
        json_object_object_add(m, "normal_pages", jint(a->mfd.normal_pages));
        json_object_object_add(m, "zero_pages", jint(a->mfd.zero_pages));
        json_object_object_add(m, "undecoded_packets",
                               jint(a->mfd.undecoded_packets));
        json_object_object_add(m, "device_state_packets",
                               jint(a->mfd.device_state_packets));
        json_object_object_add(m, "bytes", jint(a->mfd.bytes));
        json_object_object_add(m, "init_bytes", jint(a->mfd.init_bytes));
        json_object_object_add(m, "wire_bytes", jint(a->mfd.wire_bytes));
        json_object_object_add(doc, "multifd", m);
    }
    if (g_hash_table_size(a->rp_messages)) {
        json_object *rp = json_object_new_object();
        json_object *msgs = json_object_new_object();
        GHashTableIter rit;
        gpointer rk, rv;
        g_hash_table_iter_init(&rit, a->rp_messages);
        while (g_hash_table_iter_next(&rit, &rk, &rv))
            json_object_object_add(msgs, rk, jint(GPOINTER_TO_UINT(rv)));
        json_object_object_add(rp, "messages", msgs);
        json_object_object_add(rp, "bytes", jint(a->rp_bytes));
        json_object_object_add(doc, "return_path", rp);
    }
    if (a->live) {
        json_object *t = json_object_new_object();
        for (int ph = 0; ph < PHASE__MAX; ph++)
            json_object_object_add(t, phase_names[ph],
                                   a->phase_start_us[ph] >= 0
                                       ? jint(a->phase_start_us[ph])
                                       : NULL);
        json_object_object_add(doc, "phase_start_us", t);
    }

    json_object *bytes = json_object_new_object();
    for (int c = 0; c < CAT__MAX; c++)
        json_object_object_add(bytes, category_names[c], jint(a->cat[c]));
    json_object_object_add(doc, "bytes", bytes);

    json_object *errs = json_object_new_array();
    for (guint i = 0; i < a->errors->len; i++)
        json_object_array_add(
            errs, json_object_new_string(g_ptr_array_index(a->errors, i)));
    json_object_object_add(doc, "errors", errs);
    json_object *anom = json_object_new_array();
    for (guint i = 0; i < a->anomalies->len; i++)
        json_object_array_add(
            anom, json_object_new_string(g_ptr_array_index(a->anomalies, i)));
    json_object_object_add(doc, "anomalies", anom);
    return doc;
}

void
mp_analysis_progress(const MpAnalysis *a, MpAnalysisProgress *out)
{
    const Round *r = a->rounds->len ? &g_array_index(a->rounds, Round,
                                                     a->rounds->len - 1)
                                    : NULL;
    memset(out, 0, sizeof(*out));
    out->phase = phase_names[a->phase];
    out->rounds = a->rounds->len;
    out->ram_total = a->ram_total;
    out->distinct_pages = a->distinct_pages;
    for (int k = 0; k < MP_PAGE__MAX; k++)
        out->pages += a->pages[k];
    if (r) {
        out->round_pages = sum_pages(r->pages);
        out->round_dirty_pages = r->dirty_pages;
        out->round_start_us = r->start_us;
        if (a->rounds->len > 1) {
            const Round *p = r - 1;
            out->prev_round_pages = sum_pages(p->pages);
        }
        /* the last finished round if there is one to pair it with, else
         * the current one so far */
        const Round *k = a->rounds->len >= 3 ? r - 1 : r;
        if (a->live && a->rounds->len >= 2 && k[-1].end_us > k[-1].start_us)
            out->dirty_pages_per_s = k->dirty_pages * 1e6
                                     / (double)(k[-1].end_us - k[-1].start_us);
    }
    out->postcopy_requests = a->postcopy_requests;
    out->stop_us = a->phase_start_us[PHASE_STOPPED];
    out->postcopy_us = a->phase_start_us[PHASE_POSTCOPY];
    out->eof = a->eof;
}

json_object *
mp_analysis_round_json(const MpAnalysis *a, guint index)
{
    if (index < 1 || index > a->rounds->len)
        return NULL;
    return round_json(&g_array_index(a->rounds, Round, index - 1));
}
