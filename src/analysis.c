/* analysis.c: aggregates records into the stream's summary.
 *
 * Per page it does a bitmap test-and-set and a position compare, nothing
 * that touches the page's bytes, so the summary runs at parse speed.
 */
#include <string.h>
#include <stdarg.h>
#include "analysis.h"

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
    guint8 *sent; /* bit per page: sent in an earlier round */
    guint8 *round_sent; /* bit per page: sent in the current round */
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
} Round;

typedef struct {
    char *name;
    guint32 instance, version;
    guint64 offset, bytes;
    gboolean sliced; /* size known (vmdesc) */
} DeviceStat;

struct MpAnalysis {
    char *machine;
    guint64 stream_bytes;
    gint64 now_us;
    gboolean live;

    GHashTable *blocks; /* name -> BlockStat* */
    GPtrArray *block_order;
    guint64 ram_total;
    guint64 pages[MP_PAGE__MAX];
    guint64 page_bytes[MP_PAGE__MAX]; /* wire bytes of the records */
    guint64 phase_pages[PHASE__MAX];
    guint64 phase_bytes[PHASE__MAX];
    guint64 ram_bytes;
    guint64 nonzero_fill;

    GArray *rounds; /* Round */
    BlockStat *last_block;
    guint64 last_addr;
    gboolean compress_seen;

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
};

static void
block_stat_free(gpointer p)
{
    BlockStat *b = p;
    g_free(b->name);
    g_free(b->sent);
    g_free(b->round_sent);
    g_free(b);
}

MpAnalysis *
mp_analysis_new(void)
{
    MpAnalysis *a = g_new0(MpAnalysis, 1);
    a->blocks = g_hash_table_new(g_str_hash, g_str_equal);
    a->block_order = g_ptr_array_new_with_free_func(block_stat_free);
    a->rounds = g_array_new(FALSE, TRUE, sizeof(Round));
    a->commands = g_hash_table_new(g_str_hash, g_str_equal);
    a->devices = g_array_new(FALSE, TRUE, sizeof(DeviceStat));
    a->errors = g_ptr_array_new_with_free_func(g_free);
    a->anomalies = g_ptr_array_new_with_free_func(g_free);
    a->opaque_from = G_MAXUINT64;
    a->now_us = -1;
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
    a->live = TRUE;
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

static Round *
new_round(MpAnalysis *a, guint64 offset)
{
    Round *r = cur_round(a);
    if (r)
        r->end_us = a->now_us;
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
        gsize n = b->size / MP_TARGET_PAGE_SIZE / 8 + 1;
        for (gsize k = 0; k < n; k++)
            b->sent[k] |= b->round_sent[k];
        memset(b->round_sent, 0, n);
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
    b->sent = g_malloc0(b->size / MP_TARGET_PAGE_SIZE / 8 + 1);
    b->round_sent = g_malloc0(b->size / MP_TARGET_PAGE_SIZE / 8 + 1);
    g_hash_table_insert(a->blocks, b->name, b);
    g_ptr_array_add(a->block_order, b);
}

/* A round ends where the scan wraps: a page at or before the previous
 * page's position (block order of the block list, then address).  Pages
 * of 7.2's compress threads come out up to a few pages out of order, so a
 * short step back within a block is not a wrap once compression is seen. */
static gboolean
is_wrap(MpAnalysis *a, BlockStat *b, guint64 addr)
{
    if (!a->last_block)
        return FALSE;
    if (b->index != a->last_block->index)
        return b->index < a->last_block->index;
    if (addr > a->last_addr)
        return FALSE;
    if (a->compress_seen
        && a->last_addr - addr <= 64 * (guint64)MP_TARGET_PAGE_SIZE)
        return FALSE;
    return TRUE;
}

static void
ram_page(MpAnalysis *a, const MpRecord *rec)
{
    const MpRamPage *pg = &rec->u.page;
    BlockStat *b = g_hash_table_lookup(a->blocks, pg->block);

    a->pages[pg->kind]++;
    a->page_bytes[pg->kind] += rec->length;
    a->phase_pages[a->phase]++;
    if (pg->kind == MP_PAGE_COMPRESSED)
        a->compress_seen = TRUE;
    if (pg->kind == MP_PAGE_ZERO && pg->payload && pg->payload[0]
        && a->nonzero_fill++ == 0)
        mp_analysis_anomaly(a,
                            "ZERO record with fill 0x%02x at offset %"
                            G_GUINT64_FORMAT " (QEMU always sends 0)",
                            pg->payload[0], rec->offset);
    if (!b)
        return; /* the parser checks names when the list is known */
    b->pages[pg->kind]++;

    Round *r = cur_round(a);
    if (a->phase == PHASE_POSTCOPY) {
        if (!r || r->phase != PHASE_POSTCOPY)
            r = new_round(a, rec->offset);
    } else if (!r || is_wrap(a, b, pg->addr)) {
        r = new_round(a, rec->offset);
    }
    a->last_block = b;
    a->last_addr = pg->addr;

    guint64 idx = pg->addr / MP_TARGET_PAGE_SIZE;
    guint8 bit = 1u << (idx % 8);
    if (b->sent[idx / 8] & bit)
        r->dirty_pages++;
    if (b->round_sent[idx / 8] & bit)
        r->repeated++;
    b->round_sent[idx / 8] |= bit;
    r->pages[pg->kind]++;
    r->bytes += rec->length;
    r->end_offset = rec->offset + rec->length;
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
            a->phase = PHASE_PRECOPY;
        if (s->type == MP_QMIG_SECTION_END && a->phase <= PHASE_PRECOPY)
            a->phase = PHASE_STOPPED;
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
                a->phase = PHASE_STOPPED;
            a->discard_ranges += rec->u.cmd.discard_count;
            break;
        case MP_QMIG_CMD_PACKAGED:
            if (a->phase <= PHASE_PRECOPY)
                a->phase = PHASE_STOPPED;
            a->packaged_bytes += rec->u.cmd.packaged_len;
            break;
        default:
            break;
        }
        break;
    case MP_REC_PACKAGED_END:
        a->phase = PHASE_POSTCOPY;
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
    case MP_REC_RAM_MULTIFD_FLUSH:
        a->cat[CAT_RAM_CONTROL] += rec->length;
        a->ram_bytes += rec->length;
        break;
    case MP_REC_RAM_PAGE:
        a->cat[CAT_RAM_PAGES] += rec->length;
        a->ram_bytes += rec->length;
        a->phase_bytes[a->phase] += rec->length;
        ram_page(a, rec);
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
    case MP_REC_RP_MESSAGE:
        if (rec->u.rp.type == MP_RP_MSG_REQ_PAGES
            || rec->u.rp.type == MP_RP_MSG_REQ_PAGES_ID)
            a->postcopy_requests++;
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
    json_object_object_add(doc, "ram", ram);

    json_object *rounds = json_object_new_array();
    for (guint i = 0; i < a->rounds->len; i++) {
        const Round *r = &g_array_index(a->rounds, Round, i);
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
        if (r->start_us >= 0) {
            json_object_object_add(o, "start_us", jint(r->start_us));
            json_object_object_add(o, "end_us", jint(MAX(r->end_us, 0)));
        }
        json_object_array_add(rounds, o);
    }
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
