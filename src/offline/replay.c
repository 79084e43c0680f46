/* replay.c: a captured migration played into a destination QEMU
 * (replay.h, docs/replay.md).
 *
 * One thread, one loop.  The input's reader (a stream file, a capture
 * directory walked chunk by chunk, a packet capture's connections) hands
 * over events in recorded order: a channel opened, bytes the source sent
 * on it, its end.  Each event waits for its time (the recorded time over
 * --speed, from the first event), then its bytes join the channel's
 * queue.  The loop writes every channel's queue as the destination takes
 * it (never one channel held up behind another: the destination's
 * multifd threads wait for the main channel at each sync, and the main
 * channel for them) at most at --rate, reads the return path, and feeds
 * both directions to a session's pipelines (session.h) with the times
 * they really passed, so the report is the relay's for this replay.
 *
 *   reader --event--> [wait for its time] --> channel queue (<= 64 MiB in
 *                                             all; the reader waits)
 *   channel queues --write, paced--> destination sockets --> pipelines
 *   return path <--read-- main socket --> pipeline (SHUT, REQ_PAGES, ...)
 *
 * The verdict: SHUT(0) on the return path is the destination saying it
 * loaded the stream; SHUT(1), a connection closed or reset while bytes
 * were still to go, or closed with no SHUT when the stream opened a
 * return path is a refusal.  Without a return path a destination that
 * took every byte and then closed is taken as accepted, unconfirmed
 * (QEMU closes the same way when the last device state fails to load).
 */
#include "config.h"
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <gio/gio.h>
#include "address.h"
#include "capture-read.h"
#include "input-format.h"
#include "metrics-progress.h"
#include "metrics-report.h"
#include "metrics.h"
#include "pipeline.h"
#include "pcap-flows.h"
#include "replay.h"
#include "session.h"
#include "stream-input.h"

/* Bytes read from the input and not yet taken by the destination, all
 * channels together: past it the reader waits. */
#define QUEUE_MAX    (64u << 20)
#define WRITE_MAX    (256u << 10) /* one write() */
#define READ_MAX     (64u << 10)
#define STREAM_CHUNK (1u << 20)
/* The destination took nothing for this long while bytes waited. */
#define STALL_US           (60 * G_USEC_PER_SEC)
#define CONNECT_TIMEOUT_MS 10000
/* Connections opened to the destination at most: QEMU's own most (255
 * multifd channels, the main one, the preempt one), so that a capture
 * cannot make the replay open thousands. */
#define MAX_CHANNELS 257u
/* The post-copy page index holds at most this many pages (about 64 bytes
 * each with the hash table's share: at most 128 MiB, 8 GiB of guest pages
 * sent after the switch); pages past it are answered in stream order. */
#define PAGE_INDEX_MAX (1u << 21)
/* Record boundaries remembered per channel for inserting a requested page
 * in front of queued ones (32 bytes each): at most 8 MiB. */
#define BOUNDS_MAX (1u << 18)
#define EDIT_HOLD_LIMIT (16u << 20)

/* Where the latest copy of a post-copy page is in the capture (an offset
 * into the channel's .bin, not the page). */
enum { PG_LATER, PG_QUEUED, PG_EARLY, PG_SENT };
typedef struct {
    guint64 key;     /* addr | block << 52 */
    guint64 offset;  /* the record's stream offset on `channel` */
    guint32 length;  /* the record's bytes */
    guint32 payload; /* the payload's bytes, at the record's end */
    guint16 channel;
    guint16 flags; /* PAGE or ZERO, without CONTINUE */
    guint8 state;  /* PG_*: still to come, in a channel's queue (or
                      sent), waiting to go ahead of its turn, sent so */
} PageLoc;

/* A post-copy RAM page record in a channel's queue: a page may go in
 * front of it. */
typedef struct {
    guint64 out_off; /* the editing pipeline's output offset */
    guint64 hdr;     /* its be64 header, host order */
    const char *block;
    gboolean cont; /* goes out with CONTINUE */
} Bound;

typedef struct {
    guint index;
    int fd; /* -1: not connected */
    MpChanKind kind;
    gint64 open_rec; /* recorded open time; G_MININT64: at its first bytes */
    gboolean registered, src_ended, wr_shut, dst_closed;
    GQueue pending; /* GBytes, in order */
    gsize head_off; /* bytes of the head already written */
    guint64 sent;
    /* post-copy page answers (main and preempt channels of a capture
     * directory): the capture's bytes pass an editing pipeline before
     * the queue, which drops the later copy of a page sent ahead */
    MpPipeline *ed;
    struct EdStage {
        MpStage st;
        gpointer r, c;
    } stage;
    guint64 out_pos; /* the pipeline's output written (inserted not
                        counted) */
    GQueue bounds;   /* Bound*, in output order */
    gboolean tail_ok; /* the output so far ends where a RAM record may
                         follow */
    gboolean fix_next; /* the next RAM record must name its block */
    GQueue urgent;     /* PageLoc* to send ahead */
    GByteArray *ins;   /* being inserted */
    gsize ins_off;
    gsize skip; /* queued bytes to leave out (a CONTINUE header the
                   insertion wrote out with its block) */
    int cap_fd; /* the capture's .bin of this channel, -1 */
} Chan;

typedef struct {
    const MpReplayOptions *opt;
    const char *path;
    GSocketAddress *to;
    GPtrArray *chans; /* Chan*, by index */
    double speed;     /* 0: not paced by the recorded times */
    gboolean timed;   /* the input has times */
    gint64 start;     /* monotonic time of the first event */
    gint64 rec0;      /* its recorded time */
    gboolean started;
    guint64 queued, sent; /* all channels */
    gint64 last_write;    /* when the last byte went out */
    gint64 last_progress_us;
    gint64 next_tick;
    MpMetrics *metrics;
    MpSession *pipes;
    /* the destination */
    gboolean rp_expected; /* the main stream opened a return path */
    gboolean main_eof;    /* the main stream's QEMU_VM_EOF went out */
    gboolean main_opaque; /* its parser passes bytes it cannot follow
                             (device sections with no vmdesc to slice
                             them): it will not see the EOF */
    guint64 undelivered;  /* capture bytes for channels the destination
                             had closed */
    gint shut;            /* SHUT's value, -1: none */
    guint64 rp_messages, page_requests;
    /* the post-copy page index (capture directories) */
    GHashTable *pages;    /* key -> PageLoc* */
    GPtrArray *blocks;    /* block names, by number */
    guint page_shift;     /* log2 of the target page size */
    gboolean ix_postcopy; /* while indexing: past PACKAGED */
    gboolean ix_full;
    gboolean pc_live;     /* the replayed main channel is past PACKAGED */
    MpVmdesc *vmdesc;     /* the capture's, for the editing pipeline */
    guint64 req_early, req_in_order, pages_early, pages_dropped,
        pages_not_held, pages_queued;
    char *refused;     /* why the destination did not accept, or NULL */
    char *input_error; /* the input broke off, or NULL */
    gboolean stop;     /* stop reading the input */
} Replay;

static Chan *
chan(Replay *r, guint index)
{
    while (r->chans->len <= index) {
        Chan *c = g_new0(Chan, 1);
        c->index = r->chans->len;
        c->fd = -1;
        c->open_rec = G_MININT64;
        c->cap_fd = -1;
        g_queue_init(&c->pending);
        g_queue_init(&c->bounds);
        g_queue_init(&c->urgent);
        g_ptr_array_add(r->chans, c);
    }
    return g_ptr_array_index(r->chans, index);
}

static void
chan_free(gpointer p)
{
    Chan *c = p;
    mp_pipeline_free(c->ed);
    g_queue_clear_full(&c->bounds, g_free);
    g_queue_clear(&c->urgent);
    if (c->ins)
        g_byte_array_unref(c->ins);
    if (c->cap_fd >= 0)
        close(c->cap_fd);
    if (c->fd >= 0)
        close(c->fd);
    g_queue_clear_full(&c->pending, (GDestroyNotify)g_bytes_unref);
    g_free(c);
}

static void refuse(Replay *r, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

/* The first reason wins: later ones are its consequences. */
static void
refuse(Replay *r, const char *fmt, ...)
{
    va_list ap;
    if (r->refused)
        return;
    va_start(ap, fmt);
    r->refused = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    r->stop = TRUE;
}

static void input_error(Replay *r, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static void
input_error(Replay *r, const char *fmt, ...)
{
    va_list ap;
    if (r->input_error)
        return;
    va_start(ap, fmt);
    r->input_error = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    r->stop = TRUE;
}

static const char *
chan_name(const Chan *c)
{
    return mp_chan_kind_name(c->kind);
}

/* A channel whose kind the input did not say: as its first bytes told
 * the session. */
static MpChanKind
chan_kind(Replay *r, Chan *c)
{
    if (c->kind == MP_CHAN_UNKNOWN && c->fd >= 0)
        c->kind = mp_session_kind(r->pipes, c->index);
    return c->kind;
}

/* ---- post-copy pages answered ahead of their turn ---- */

static guint16
block_number(Replay *r, const char *name, gboolean add)
{
    for (guint i = 0; i < r->blocks->len; i++)
        if (g_str_equal(g_ptr_array_index(r->blocks, i), name))
            return i;
    if (!add || r->blocks->len >= 4096)
        return G_MAXUINT16;
    g_ptr_array_add(r->blocks, g_strdup(name));
    return r->blocks->len - 1;
}

static PageLoc *
page_find(Replay *r, const char *block, guint64 addr)
{
    if (!r->pages || !block || addr >> 52)
        return NULL;
    guint16 b = block_number(r, block, FALSE);
    if (b == G_MAXUINT16)
        return NULL;
    guint64 key = addr | (guint64)b << 52;
    return g_hash_table_lookup(r->pages, &key);
}

/* Index pass: every RAM page record after the switch to post-copy (the
 * main channel past PACKAGED, the preempt channel), its latest copy. */
static MpRecordAction
ix_record(MpPipeline *p, const MpRecord *rec, gpointer data)
{
    Replay *r = data;
    MpChanKind k = mp_pipeline_kind(p);

    if (mp_pipeline_dir(p) != MP_DIR_TO_DST
        || (k != MP_CHAN_MAIN && k != MP_CHAN_PREEMPT))
        return MP_REC_CONTINUE;
    if (k == MP_CHAN_MAIN && rec->kind == MP_REC_COMMAND
        && rec->u.cmd.cmd == MP_QMIG_CMD_PACKAGED)
        r->ix_postcopy = TRUE;
    if (rec->kind != MP_REC_RAM_PAGE || (k == MP_CHAN_MAIN && !r->ix_postcopy)
        || !rec->u.page.block || rec->u.page.addr >> 52)
        return MP_REC_CONTINUE;
    const MpRamPage *pg = &rec->u.page;
    guint16 b = block_number(r, pg->block, TRUE);
    if (b == G_MAXUINT16)
        return MP_REC_CONTINUE;
    guint64 key = pg->addr | (guint64)b << 52;
    PageLoc *pl = g_hash_table_lookup(r->pages, &key);
    gboolean usable = (pg->kind == MP_PAGE_NORMAL || pg->kind == MP_PAGE_ZERO)
                      && pg->payload_len <= rec->length
                      && pg->payload_len <= 65536
                      && mp_pipeline_channel(p) < MAX_CHANNELS;
    if (!usable) {
        /* its latest copy cannot be sent on its own: in stream order */
        if (pl)
            g_hash_table_remove(r->pages, &key);
        return MP_REC_CONTINUE;
    }
    if (!pl) {
        if (g_hash_table_size(r->pages) >= PAGE_INDEX_MAX) {
            r->ix_full = TRUE;
            return MP_REC_CONTINUE;
        }
        pl = g_new0(PageLoc, 1);
        pl->key = key;
        g_hash_table_insert(r->pages, pl, pl);
    }
    pl->offset = rec->offset;
    pl->length = rec->length;
    pl->payload = pg->payload_len;
    pl->channel = mp_pipeline_channel(p);
    pl->flags = pg->flags & ~MP_RAM_SAVE_FLAG_CONTINUE;
    if (pg->size && !r->page_shift)
        r->page_shift = g_bit_storage(pg->size) - 1;
    return MP_REC_CONTINUE;
}

/* Indexes the post-copy pages of a capture directory and opens its
 * channels' .bin files to read them from.  Without any (a pre-copy
 * capture, an unreadable one) the replay goes on as recorded. */
static void
index_capture(Replay *r)
{
    const MpPipelineObserver ops = {.record = ix_record};
    gboolean ok = FALSE;
    r->pages = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, g_free);
    r->blocks = g_ptr_array_new_with_free_func(g_free);
    json_object *doc = mp_capture_analyze_observed(r->path, r->opt->session,
                                                   FALSE, &ops, r, &ok);
    json_object *nums = NULL, *chans = NULL, *cj, *dj;
    guint session = r->opt->session;
    if (!session && json_object_object_get_ex(doc, "capture_sessions", &nums)
        && json_object_array_length(nums))
        session = json_object_get_int(json_object_array_get_idx(nums, 0));
    g_autofree char *sname = g_strdup_printf("s%u.json", session);
    g_autofree char *spath = g_build_filename(r->path, sname, NULL);
    json_object *sj = json_object_from_file(spath);
    if (!g_hash_table_size(r->pages) || !sj
        || !json_object_object_get_ex(sj, "channels", &chans)
        || !json_object_is_type(chans, json_type_array)) {
        g_hash_table_remove_all(r->pages);
    } else {
        for (size_t i = 0; i < json_object_array_length(chans); i++) {
            cj = json_object_array_get_idx(chans, i);
            json_object *num = NULL, *file = NULL;
            if (!json_object_object_get_ex(cj, "channel", &num)
                || !json_object_object_get_ex(cj, "to_dst", &dj)
                || !json_object_object_get_ex(dj, "file", &file))
                continue;
            gint64 n = json_object_get_int64(num);
            const char *f = json_object_get_string(file);
            if (n < 0 || n >= MAX_CHANNELS || !f || strchr(f, '/'))
                continue;
            g_autofree char *fp = g_build_filename(r->path, f, NULL);
            Chan *c = chan(r, n);
            if (c->cap_fd < 0)
                c->cap_fd = open(fp, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        }
    }
    if (sj)
        json_object_put(sj);
    json_object_put(doc);
    if (!r->page_shift)
        r->page_shift = 12;
}

static void
put_be64(GByteArray *a, guint64 v)
{
    guint64 be = GUINT64_TO_BE(v);
    g_byte_array_append(a, (const guint8 *)&be, 8);
}

/* A RAM record `hdr` (its header, host order, without CONTINUE) that
 * names its block, then `payload`. */
static void
ram_record(GByteArray *a, guint64 hdr, const char *block,
           const guint8 *payload, gsize len)
{
    guint8 n = strlen(block);
    put_be64(a, hdr & ~(guint64)MP_RAM_SAVE_FLAG_CONTINUE);
    g_byte_array_append(a, &n, 1);
    g_byte_array_append(a, (const guint8 *)block, n);
    if (len)
        g_byte_array_append(a, payload, len);
}

/* The editing stage: drops the later copy of a page sent ahead, and
 * writes out the block of the RAM record after a dropped or inserted
 * one when it had CONTINUE (the destination's "same block as the
 * record before" on this channel changed). */
static MpStageVerdict
ed_record(MpStage *self, guint channel, MpDir dir, const MpRecord *rec,
          const guint8 *wire, MpStageOut *out)
{
    struct EdStage *es = (struct EdStage *)self;
    Replay *r = es->r;
    Chan *c = es->c;

    if (rec->kind != MP_REC_RAM_PAGE || (c->kind == MP_CHAN_MAIN && !r->pc_live)
        || !rec->u.page.block)
        return MP_STAGE_PASS;
    PageLoc *pl = page_find(r, rec->u.page.block, rec->u.page.addr);
    if (pl && pl->state == PG_EARLY) {
        /* not inserted yet (no place for it so far): it goes here, in
         * stream order, and not ahead */
        for (guint i = 0; i < r->chans->len; i++)
            g_queue_remove(&((Chan *)g_ptr_array_index(r->chans, i))->urgent,
                           pl);
        pl->state = PG_QUEUED;
        r->pages_early--;
        r->pages_queued++;
        /* (a request is one host page: one page here) */
        if (r->req_early) {
            r->req_early--;
            r->req_in_order++;
        }
    }
    if (pl && pl->state == PG_SENT) {
        r->pages_dropped++;
        c->fix_next = TRUE;
        self->stats.records_changed++;
        self->stats.bytes_in += rec->length;
        return MP_STAGE_REPLACE; /* nothing */
    }
    if (pl)
        pl->state = PG_QUEUED;
    if (!c->fix_next)
        return MP_STAGE_PASS;
    c->fix_next = FALSE;
    if (!(rec->u.page.flags & MP_RAM_SAVE_FLAG_CONTINUE) || rec->length < 8)
        return MP_STAGE_PASS;
    guint64 hdr;
    memcpy(&hdr, wire, sizeof(hdr)); /* (wire is not aligned) */
    hdr = GUINT64_FROM_BE(hdr);
    ram_record(out->bytes, hdr, rec->u.page.block, wire + 8, rec->length - 8);
    self->stats.records_changed++;
    self->stats.bytes_in += rec->length;
    self->stats.bytes_out += out->bytes->len;
    return MP_STAGE_REPLACE;
}

static void
ed_placed(MpStage *self, const MpRecord *rec, gboolean placed,
          guint64 out_off, gsize out_len)
{
    struct EdStage *es = (struct EdStage *)self;
    Replay *r = es->r;
    Chan *c = es->c;

    if (!out_len)
        return;
    gboolean page = rec->kind == MP_REC_RAM_PAGE && rec->u.page.block
                    && (c->kind == MP_CHAN_PREEMPT || r->pc_live);
    c->tail_ok = placed && (page || c->kind == MP_CHAN_PREEMPT);
    if (!placed || !page || c->bounds.length >= BOUNDS_MAX)
        return;
    Bound *b = g_new0(Bound, 1);
    b->out_off = out_off;
    b->hdr = rec->u.page.addr | rec->u.page.flags;
    guint16 n = block_number(r, rec->u.page.block, TRUE);
    b->block = n == G_MAXUINT16 ? NULL : g_ptr_array_index(r->blocks, n);
    b->cont = (rec->u.page.flags & MP_RAM_SAVE_FLAG_CONTINUE)
              && out_len == rec->length;
    if (b->cont && !b->block) {
        g_free(b);
        return;
    }
    g_queue_push_tail(&c->bounds, b);
}

/* The main channel's switch to post-copy (stages do not see PACKAGED). */
static MpRecordAction
ed_observe(MpPipeline *p, const MpRecord *rec, gpointer data)
{
    Replay *r = data;
    if (rec->kind == MP_REC_COMMAND && rec->u.cmd.cmd == MP_QMIG_CMD_PACKAGED)
        r->pc_live = TRUE;
    return MP_REC_CONTINUE;
}

static void
ed_destroy(MpStage *self)
{
    (void)self; /* part of its Chan */
}

static void
ed_write(gpointer data, const guint8 *buf, gsize len)
{
    struct EdStage *es = data;
    Replay *r = es->r;
    Chan *c = es->c;
    g_queue_push_tail(&c->pending, g_bytes_new(buf, len));
    r->queued += len;
}

static Chan *
chan_of_kind(Replay *r, MpChanKind kind)
{
    for (guint i = 0; i < r->chans->len; i++) {
        Chan *c = g_ptr_array_index(r->chans, i);
        if (c->registered && c->kind == kind)
            return c;
    }
    return NULL;
}

/* The editing pipeline of a capture's main or preempt channel, when the
 * capture holds post-copy pages. */
static void
ed_setup(Replay *r, Chan *c)
{
    if (c->ed || !r->pages || !g_hash_table_size(r->pages)
        || (c->kind != MP_CHAN_MAIN && c->kind != MP_CHAN_PREEMPT))
        return;
    Chan *m = NULL;
    for (guint i = 0; i < r->chans->len && !m; i++) {
        Chan *o = g_ptr_array_index(r->chans, i);
        if (o->kind == MP_CHAN_MAIN && o->ed)
            m = o;
    }
    c->stage.st = (MpStage){.name = "replay-pages",
                            .record = ed_record,
                            .placed = ed_placed,
                            .destroy = ed_destroy};
    c->stage.r = r;
    c->stage.c = c;
    c->tail_ok = c->kind == MP_CHAN_PREEMPT;
    c->ed = mp_pipeline_new(c->index, MP_DIR_TO_DST);
    mp_pipeline_set_kind(c->ed, c->kind, m ? m->ed : NULL);
    if (r->vmdesc && c->kind == MP_CHAN_MAIN)
        mp_pipeline_set_vmdesc(c->ed, r->vmdesc);
    const MpPipelineSink sink = {.write = ed_write,
                                 .insert = ed_write,
                                 .data = &c->stage};
    mp_pipeline_set_sink(c->ed, &sink, FALSE, EDIT_HOLD_LIMIT);
    mp_pipeline_add_stage(c->ed, &c->stage.st);
    if (c->kind == MP_CHAN_MAIN) {
        const MpPipelineObserver obs = {.record = ed_observe};
        mp_pipeline_observe(c->ed, &obs, r);
    }
}

/* REQ_PAGES: each page still to come later in the capture goes out now,
 * on the preempt channel if the capture has one, else on the main
 * channel at its next RAM record boundary. */
static void
request_pages(Replay *r, const MpRpInfo *rp)
{
    gboolean early = FALSE;
    if (!r->pages || !g_hash_table_size(r->pages) || !rp->block) {
        r->req_in_order++;
        return;
    }
    guint64 psize = (guint64)1 << r->page_shift;
    guint64 a = rp->start & ~(psize - 1);
    guint64 last = (rp->start + MAX(rp->req_len, 1) - 1) & ~(psize - 1);
    /* (a request is at most a host page; bounded all the same) */
    for (guint n = 0; n < 65536 && a <= last; n++, a += psize) {
        PageLoc *pl = page_find(r, rp->block, a);
        if (!pl) {
            r->pages_not_held++;
            continue;
        }
        if (pl->state != PG_LATER) {
            r->pages_queued++;
            continue;
        }
        Chan *src = pl->channel < r->chans->len
                        ? g_ptr_array_index(r->chans, pl->channel)
                        : NULL;
        Chan *to = chan_of_kind(r, MP_CHAN_PREEMPT);
        if (!to || to->fd < 0 || !to->ed || !mp_pipeline_following(to->ed))
            to = chan_of_kind(r, MP_CHAN_MAIN);
        /* its later copy must pass a pipeline that follows, or it would
         * reach the destination twice */
        if (!src || src->cap_fd < 0
            || (src->ed && !mp_pipeline_following(src->ed))
            || (!src->ed && src->kind != MP_CHAN_PREEMPT) || !to || !to->ed
            || to->fd < 0 || !mp_pipeline_following(to->ed)) {
            r->pages_queued++;
            continue;
        }
        pl->state = PG_EARLY;
        g_queue_push_tail(&to->urgent, pl);
        r->pages_early++;
        early = TRUE;
    }
    if (early)
        r->req_early++;
    else
        r->req_in_order++;
}

/* The bytes that go in front of the queue's next record: the requested
 * pages, read from the capture, and the next record's header with its
 * block when it had CONTINUE.  @return FALSE when `c` is not at a place
 * where a RAM record may go. */
static gboolean
insert_urgent(Replay *r, Chan *c)
{
    Bound *b;
    while ((b = g_queue_peek_head(&c->bounds)) && b->out_off < c->out_pos)
        g_free(g_queue_pop_head(&c->bounds));
    if (c->skip)
        return FALSE;
    gboolean at_bound = b && b->out_off == c->out_pos;
    if (!at_bound
        && !(g_queue_is_empty(&c->pending) && c->tail_ok && c->ed
             && mp_pipeline_following(c->ed)))
        return FALSE;
    GByteArray *a = g_byte_array_new();
    PageLoc *pl;
    while ((pl = g_queue_pop_head(&c->urgent))) {
        Chan *src = g_ptr_array_index(r->chans, pl->channel);
        guint8 payload[65536];
        guint32 n = MIN(pl->payload, sizeof(payload));
        ssize_t got = pread(src->cap_fd, payload, n,
                            pl->offset + pl->length - pl->payload);
        if (got != (ssize_t)n || n != pl->payload) {
            /* its later copy may be left out already: the replay cannot
             * go on without it */
            input_error(r,
                        "%s: channel %u: cannot read the page record at "
                        "stream offset %" G_GUINT64_FORMAT " back from the "
                        "capture (%s)",
                        r->path, pl->channel, pl->offset,
                        got < 0 ? g_strerror(errno) : "short read");
            continue;
        }
        pl->state = PG_SENT;
        ram_record(a, (pl->key & ((G_GUINT64_CONSTANT(1) << 52) - 1))
                          | pl->flags,
                   g_ptr_array_index(r->blocks, pl->key >> 52), payload, n);
    }
    if (at_bound) {
        if (b->cont) {
            ram_record(a, b->hdr, b->block, NULL, 0);
            c->skip = 8;
        }
        g_free(g_queue_pop_head(&c->bounds));
    } else {
        c->fix_next = TRUE;
    }
    if (!a->len) {
        g_byte_array_unref(a);
        return TRUE;
    }
    if (c->ins)
        g_byte_array_unref(c->ins);
    c->ins = a;
    c->ins_off = 0;
    return TRUE;
}

/* @return how many queued bytes may go before the next place a
 * requested page waits for. */
static gsize
until_bound(Chan *c, gsize n)
{
    if (g_queue_is_empty(&c->urgent))
        return n;
    for (GList *l = c->bounds.head; l; l = l->next) {
        Bound *b = l->data;
        if (b->out_off > c->out_pos)
            return MIN(n, b->out_off - c->out_pos);
    }
    return n;
}

/* ---- what the pipelines see ---- */

static MpRecordAction
on_record(MpPipeline *p, const MpRecord *rec, gpointer data)
{
    Replay *r = data;

    if (mp_pipeline_dir(p) == MP_DIR_TO_DST) {
        if (rec->kind == MP_REC_COMMAND
            && rec->u.cmd.cmd == MP_QMIG_CMD_OPEN_RETURN_PATH)
            r->rp_expected = TRUE;
        if (rec->kind == MP_REC_EOF)
            r->main_eof = TRUE;
        if (rec->kind == MP_REC_OPAQUE)
            r->main_opaque = TRUE;
        return MP_REC_CONTINUE;
    }
    if (rec->kind != MP_REC_RP_MESSAGE)
        return MP_REC_CONTINUE;
    r->rp_messages++;
    switch (rec->u.rp.type) {
    case MP_RP_MSG_SHUT:
        if (r->shut < 0)
            r->shut = (gint)rec->u.rp.value;
        if (rec->u.rp.value)
            refuse(r,
                   "the destination ended the migration with an error "
                   "(return path SHUT %u)",
                   rec->u.rp.value);
        break;
    case MP_RP_MSG_REQ_PAGES:
    case MP_RP_MSG_REQ_PAGES_ID:
        /* answered from the capture's pages ahead of their turn, or by
         * the pages still to come (docs/replay.md); counted, and timed
         * by the metrics */
        r->page_requests++;
        request_pages(r, &rec->u.rp);
        break;
    default:
        break; /* PONG, SWITCHOVER_ACK: a source has nothing to answer */
    }
    return MP_REC_CONTINUE;
}

static const MpPipelineObserver observer = {.record = on_record};

/* ---- the destination's sockets ---- */

static gint64
now_us(void)
{
    return g_get_monotonic_time();
}

static void
tick(Replay *r)
{
    gint64 now = now_us();
    if (now < r->next_tick)
        return;
    mp_metrics_tick(r->metrics, now);
    r->next_tick = now + MP_METRICS_INTERVAL_US;
}

static gboolean
connect_chan(Replay *r, Chan *c)
{
    struct sockaddr_storage sa;
    gsize len = g_socket_address_get_native_size(r->to);
    g_autoptr(GError) err = NULL;
    g_autofree char *where = mp_address_string(r->to);

    if (!g_socket_address_to_native(r->to, &sa, sizeof(sa), &err)) {
        refuse(r, "%s: %s", where, err->message);
        return FALSE;
    }
    int fd =
        socket(sa.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        refuse(r, "socket: %s", g_strerror(errno));
        return FALSE;
    }
    int e = 0;
    if (connect(fd, (struct sockaddr *)&sa, len) < 0) {
        e = errno;
        if (e == EINPROGRESS) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            socklen_t el = sizeof(e);
            int n = poll(&pfd, 1, CONNECT_TIMEOUT_MS);
            if (n == 0)
                e = ETIMEDOUT;
            else if (n < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &el) < 0)
                e = errno;
        }
    }
    if (e) {
        refuse(r,
               "cannot connect channel %u (%s) to the destination %s: %s "
               "(is it started with -incoming tcp:%s, or migrate-incoming?)",
               c->index, chan_name(c), where, g_strerror(e), where);
        close(fd);
        return FALSE;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->fd = fd;
    gint64 now = now_us();
    mp_session_add(r->pipes, c->index, where, now);
    if (c->kind != MP_CHAN_UNKNOWN)
        mp_session_set_kind(r->pipes, c->index, c->kind, now);
    ed_setup(r, c);
    return TRUE;
}

static void
dst_closed(Replay *r, Chan *c, int err)
{
    gint64 now = now_us();
    c->dst_closed = TRUE;
    mp_session_end(r->pipes, c->index, MP_DIR_TO_SRC,
                   err ? MP_END_RESET : MP_END_FIN, now);
    /* bytes it did not take: refused.  Another channel than the main
     * one may be closed by a destination that is done (QEMU 10.0 closes
     * its preempt channel itself at the end of a post-copy, before its
     * SHUT, and pages the source sent there last may still wait): its
     * bytes are dropped and judged at the end (finish(): refused unless
     * SHUT 0 came) */
    if (!g_queue_is_empty(&c->pending) && chan_kind(r, c) != MP_CHAN_MAIN) {
        guint64 left = 0;
        for (GList *l = c->pending.head; l; l = l->next)
            left += g_bytes_get_size(l->data);
        left -= c->head_off;
        r->queued -= left;
        r->undelivered += left;
        g_queue_clear_full(&c->pending, (GDestroyNotify)g_bytes_unref);
        c->head_off = 0;
    }
    if (!g_queue_is_empty(&c->pending) && r->shut != 0)
        refuse(r,
               "the destination %s channel %u (%s) after %" G_GUINT64_FORMAT
               " bytes, with more of the capture to send: it did not load "
               "the stream (its log says why)",
               err ? "reset" : "closed", c->index, chan_name(c), c->sent);
}

/* Reads what the destination sends on `c`: the return path on the main
 * channel (parsed), nothing on the others (counted). */
static void
read_chan(Replay *r, Chan *c)
{
    guint8 buf[READ_MAX];
    for (;;) {
        ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
        if (n > 0) {
            mp_session_feed(r->pipes, c->index, MP_DIR_TO_SRC, buf, n,
                            now_us());
            continue;
        }
        if (n < 0 && (errno == EINTR))
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        dst_closed(r, c, n < 0 ? errno : 0);
        return;
    }
}

/* Bytes --rate lets out now (G_MAXUINT64 without a rate). */
static guint64
allowance(Replay *r, gint64 now, gint64 *ready_at)
{
    if (!r->opt->rate || !r->started)
        return G_MAXUINT64;
    /* no burst: the n-th byte leaves no earlier than n / rate after the
     * start, so the replay of N bytes takes at least N / rate */
    double may = (double)(now - r->start) * r->opt->rate / G_USEC_PER_SEC;
    if (may > r->sent)
        return (guint64)(may - r->sent);
    *ready_at =
        r->start + (gint64)((r->sent + 4096.0) * G_USEC_PER_SEC / r->opt->rate);
    return 0;
}

/* Writes `len` bytes of `data` to `c`, paced.  @return the bytes
 * written, 0 when the socket or the pace says wait, -1 when closed. */
static gssize
send_paced(Replay *r, Chan *c, const guint8 *data, gsize len,
           gint64 *ready_at)
{
    for (;;) {
        guint64 may = allowance(r, now_us(), ready_at);
        if (!may)
            return 0;
        gsize n = MIN(MIN(len, WRITE_MAX), may);
        ssize_t w = send(c->fd, data, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (w < 0) {
            dst_closed(r, c, errno);
            return -1;
        }
        mp_session_feed(r->pipes, c->index, MP_DIR_TO_DST, data, w, now_us());
        c->sent += w;
        r->last_write = now_us();
        r->sent += w;
        return w;
    }
}

static void
write_chan(Replay *r, Chan *c, gint64 *ready_at)
{
    for (;;) {
        if (c->ins) {
            gssize w = send_paced(r, c, c->ins->data + c->ins_off,
                                  c->ins->len - c->ins_off, ready_at);
            if (w <= 0)
                return;
            c->ins_off += w;
            if (c->ins_off == c->ins->len) {
                g_byte_array_unref(c->ins);
                c->ins = NULL;
            }
            continue;
        }
        if (!g_queue_is_empty(&c->urgent) && insert_urgent(r, c)
            && (c->ins || !g_queue_is_empty(&c->urgent)))
            continue;
        if (g_queue_is_empty(&c->pending))
            break;
        GBytes *b = g_queue_peek_head(&c->pending);
        gsize blen;
        const guint8 *data = g_bytes_get_data(b, &blen);
        gsize n = until_bound(c, blen - c->head_off);
        if (c->skip) {
            /* a header the insertion wrote out with its block */
            n = MIN(n, c->skip);
            c->skip -= n;
        } else {
            gssize w = send_paced(r, c, data + c->head_off, n, ready_at);
            if (w <= 0)
                return;
            n = w;
        }
        c->head_off += n;
        c->out_pos += n;
        r->queued -= n;
        if (c->head_off == blen) {
            g_bytes_unref(g_queue_pop_head(&c->pending));
            c->head_off = 0;
        }
    }
    if (c->src_ended && !c->wr_shut && !r->rp_expected
        && chan_kind(r, c) != MP_CHAN_MAIN) {
        /* the source closed it here.  Not with a return path: QEMU's
         * source closes its channels only after the destination's SHUT,
         * and the destination takes an early end of one as a broken
         * migration (10.0's post-copy loader checks the preempt
         * channel's error at each section of the main one, finds the
         * EOF and pauses post-copy: preempt_100 did, whenever the
         * recorded close came before the new destination had loaded its
         * last section).  finish() closes them once it answered. */
        shutdown(c->fd, SHUT_WR);
        c->wr_shut = TRUE;
        mp_session_end(r->pipes, c->index, MP_DIR_TO_DST, MP_END_FIN, now_us());
    }
}

/* One round of I/O, waiting at most until `deadline` (monotonic; 0: do
 * not wait) for the sockets. */
static void
service(Replay *r, gint64 deadline)
{
    g_autofree struct pollfd *pfd = g_new0(struct pollfd, r->chans->len);
    g_autofree Chan **who = g_new0(Chan *, r->chans->len);
    guint n = 0;
    gint64 ready_at = G_MAXINT64;

    for (guint i = 0; i < r->chans->len; i++) {
        Chan *c = g_ptr_array_index(r->chans, i);
        if (c->fd < 0 || c->dst_closed)
            continue;
        write_chan(r, c, &ready_at);
        if (c->dst_closed)
            continue;
        pfd[n].fd = c->fd;
        pfd[n].events = POLLIN;
        if ((!g_queue_is_empty(&c->pending) || c->ins)
            && ready_at == G_MAXINT64)
            pfd[n].events |= POLLOUT;
        who[n++] = c;
    }
    gint64 now = now_us();
    gint64 until = MIN(MIN(deadline, ready_at), r->next_tick);
    int timeout = until <= now ? 0 : (int)MIN((until - now + 999) / 1000, 1000);
    if (poll(pfd, n, timeout) > 0)
        for (guint i = 0; i < n; i++) {
            if (pfd[i].revents & (POLLIN | POLLHUP | POLLERR))
                read_chan(r, who[i]);
            if (!who[i]->dst_closed && (pfd[i].revents & POLLOUT))
                write_chan(r, who[i], &ready_at);
        }
    tick(r);
}

/* ---- the events of the input ---- */

static gint64
due(Replay *r, gint64 rec)
{
    if (!r->speed || rec == G_MININT64)
        return 0;
    return r->start + (gint64)((rec - r->rec0) / r->speed);
}

static void
start(Replay *r, gint64 rec)
{
    if (r->started)
        return;
    r->started = TRUE;
    r->start = now_us();
    r->rec0 = rec;
    r->next_tick = r->start;
}

/* Waits (doing the I/O) until `when`. */
static void
wait_until(Replay *r, gint64 when)
{
    while (!r->stop && now_us() < when)
        service(r, when);
}

/* Channels whose recorded open time has come are connected, in order. */
static void
open_due(Replay *r, gint64 rec)
{
    for (guint i = 0; i < r->chans->len && !r->stop; i++) {
        Chan *c = g_ptr_array_index(r->chans, i);
        if (!c->registered || c->fd >= 0 || c->dst_closed
            || (c->open_rec != G_MININT64 && c->open_rec > rec))
            continue;
        wait_until(r, due(r, c->open_rec));
        if (!r->stop && !connect_chan(r, c))
            return;
    }
}

/* Channel `index` exists in the capture, `kind` if known, opened at
 * `open_rec` (G_MININT64: with its first bytes). */
static void
ev_channel(Replay *r, guint index, MpChanKind kind, gint64 open_rec)
{
    if (index >= MAX_CHANNELS) {
        input_error(r,
                    "%s: channel %u: more channels than a QEMU migration has "
                    "(at most %u are replayed)",
                    r->path, index, MAX_CHANNELS);
        return;
    }
    Chan *c = chan(r, index);
    c->registered = TRUE;
    c->kind = kind;
    c->open_rec = open_rec;
}

static void
progress(Replay *r)
{
    /* a line a minute when no terminal draws the progress line */
    gint64 now = now_us();
    if (!r->opt->progress || now - r->last_progress_us < 60 * G_USEC_PER_SEC)
        return;
    r->last_progress_us = now;
    if (!isatty(STDERR_FILENO))
        g_printerr("migproxy replay: %.1f s, %" G_GUINT64_FORMAT " MiB sent\n",
                   (now - r->start) / 1e6, r->sent >> 20);
}

/* The source sent `len` bytes on `index` at `rec`.  @return FALSE to stop
 * reading the input. */
static gboolean
ev_data(Replay *r, guint index, gint64 rec, const guint8 *buf, gsize len)
{
    if (r->stop || index >= MAX_CHANNELS)
        return FALSE;
    Chan *c = chan(r, index);

    start(r, rec);
    wait_until(r, due(r, rec));
    open_due(r, rec);
    if (c->fd < 0 && !r->stop && !connect_chan(r, c))
        return FALSE;
    /* bounded: the reader waits for the destination */
    gint64 stalled_since = now_us();
    guint64 sent_then = r->sent;
    while (!r->stop && r->queued + len > QUEUE_MAX && r->queued) {
        service(r, now_us() + 100000);
        if (r->sent != sent_then) {
            sent_then = r->sent;
            stalled_since = now_us();
        } else if (now_us() - stalled_since > STALL_US) {
            refuse(
                r,
                "the destination took nothing for %d s with %" G_GUINT64_FORMAT
                " bytes waiting",
                (int)(STALL_US / G_USEC_PER_SEC), r->queued);
        }
    }
    if (c->dst_closed) {
        r->undelivered += len;
        return !r->stop;
    }
    if (r->stop)
        return FALSE;
    ed_setup(r, c);
    if (c->ed) {
        mp_pipeline_feed(c->ed, buf, len, now_us());
    } else {
        g_queue_push_tail(&c->pending, g_bytes_new(buf, len));
        r->queued += len;
    }
    service(r, 0);
    progress(r);
    return !r->stop;
}

static void
ev_end(Replay *r, guint index, gint64 rec)
{
    if (r->stop || index >= MAX_CHANNELS)
        return;
    Chan *c = chan(r, index);
    start(r, rec);
    wait_until(r, due(r, rec));
    if (c->ed && !mp_pipeline_ended(c->ed))
        mp_pipeline_end(c->ed, MP_END_FIN, now_us());
    c->src_ended = TRUE;
    service(r, 0);
}

/* Every byte out, then the destination's verdict. */
static void
finish(Replay *r)
{
    gint64 stalled_since = now_us();
    guint64 sent_then = r->sent;

    for (guint i = 0; i < r->chans->len; i++) {
        Chan *c = g_ptr_array_index(r->chans, i);
        if (c->ed && !mp_pipeline_ended(c->ed))
            mp_pipeline_end(c->ed, MP_END_FIN, now_us());
    }
    while (!r->stop && r->queued) {
        service(r, now_us() + 100000);
        if (r->sent != sent_then) {
            sent_then = r->sent;
            stalled_since = now_us();
        } else if (now_us() - stalled_since > STALL_US) {
            refuse(
                r,
                "the destination took nothing for %d s with %" G_GUINT64_FORMAT
                " bytes still to send",
                (int)(STALL_US / G_USEC_PER_SEC), r->queued);
        }
    }
    Chan *main_c = NULL;
    for (guint i = 0; i < r->chans->len; i++) {
        Chan *c = g_ptr_array_index(r->chans, i);
        if (chan_kind(r, c) == MP_CHAN_MAIN && c->fd >= 0 && !main_c)
            main_c = c;
        c->src_ended = TRUE;
    }
    if (main_c && !r->stop && !r->main_eof && !r->main_opaque
        && mp_pipeline_state(
               mp_session_pipeline(r->pipes, main_c->index, MP_DIR_TO_DST))
               == MP_PIPELINE_FOLLOWING)
        /* the destination closes the same way after failing on a cut
         * stream as after loading a whole one: the input must be whole
         * (told where the parser follows the stream to its EOF) */
        input_error(
            r,
            "%s: the main channel's stream ends after %" G_GUINT64_FORMAT
            " bytes, inside a record or before its QEMU_VM_EOF: the "
            "capture is cut short, the destination cannot load it",
            r->path, main_c->sent);
    if (!r->stop && !r->rp_expected)
        /* nothing will answer: the end of the stream is told by closing,
         * and the destination closes once it has loaded it */
        for (guint i = 0; i < r->chans->len; i++) {
            Chan *c = g_ptr_array_index(r->chans, i);
            if (c->fd >= 0 && !c->wr_shut && !c->dst_closed) {
                shutdown(c->fd, SHUT_WR);
                c->wr_shut = TRUE;
                mp_session_end(r->pipes, c->index, MP_DIR_TO_DST, MP_END_FIN,
                               now_us());
            }
        }
    gint64 deadline = now_us() + (gint64)r->opt->wait_s * G_USEC_PER_SEC;
    while (!r->stop && main_c && !main_c->dst_closed && r->shut < 0
           && now_us() < deadline)
        service(r, deadline);
    if (!r->stop && main_c && !main_c->dst_closed && r->shut < 0)
        refuse(r,
               "the destination did not answer within %u s of the stream's "
               "end (%s)",
               r->opt->wait_s,
               r->rp_expected ? "no SHUT on its return path"
                              : "it did not close the main channel");
    if (!r->stop && main_c && main_c->dst_closed && r->shut < 0
        && r->rp_expected)
        /* a QEMU destination with a return path that loaded the stream
         * says SHUT 0 before it closes: closing without one is one that
         * failed (7.2 exits without a SHUT), paused post-copy or died */
        refuse(r,
               "the destination closed the main channel without a SHUT on "
               "its return path: it did not finish loading the stream (a "
               "post-copy it paused, or it failed; its log says why)");
    if (!main_c && !r->stop)
        input_error(r, "the input holds no main channel");
    if (!r->stop && r->shut != 0 && r->undelivered)
        refuse(r,
               "the destination closed a channel with %" G_GUINT64_FORMAT
               " bytes of the capture still to send on it: it did not load "
               "the stream",
               r->undelivered);
    gint64 now = now_us();
    for (guint i = 0; i < r->chans->len; i++) {
        Chan *c = g_ptr_array_index(r->chans, i);
        if (c->fd < 0)
            continue;
        if (!c->wr_shut)
            mp_session_end(r->pipes, c->index, MP_DIR_TO_DST,
                           r->stop ? MP_END_ABORTED : MP_END_FIN, now);
        if (!c->dst_closed)
            mp_session_end(r->pipes, c->index, MP_DIR_TO_SRC,
                           r->stop ? MP_END_ABORTED : MP_END_FIN, now);
        close(c->fd);
        c->fd = -1;
    }
}

/* ---- the inputs ---- */

static void
replay_stream(Replay *r, GError **error)
{
    g_autoptr(MpInput) in = mp_input_open(r->path, error);
    if (!in)
        return;
    g_autoptr(GError) verr = NULL;
    g_autoptr(MpVmdesc) vd = mp_input_find_vmdesc_of(in, &verr);
    if (vd)
        mp_session_set_vmdesc(r->pipes, vd);
    g_autofree guint8 *buf = g_malloc(STREAM_CHUNK);
    ev_channel(r, 0, MP_CHAN_MAIN, 0);
    for (;;) {
        gssize n = mp_input_read(in, buf, STREAM_CHUNK, error);
        if (n < 0) {
            input_error(r, "%s: %s", r->path, (*error)->message);
            g_clear_error(error);
            return;
        }
        if (n == 0 || !ev_data(r, 0, 0, buf, n))
            break;
    }
    ev_end(r, 0, 0);
}

static MpChanKind
kind_from_name(const char *name)
{
    for (int k = 0; name && k < MP_CHAN__MAX; k++)
        if (g_str_equal(name, mp_chan_kind_name(k)))
            return k;
    return MP_CHAN_UNKNOWN;
}

static void
cap_channel(gpointer data, guint channel, const char *kind, gint64 open_us)
{
    Replay *r = data;
    MpChanKind k = kind_from_name(kind);
    /* what the relay let through but is no channel of QEMU's is not
     * replayed; one that sent nothing ("unknown") is: 7.2's preempt
     * channel when post-copy never came, which its destination waits for
     * before it starts */
    if (k == MP_CHAN_FOREIGN)
        return;
    ev_channel(r, channel, k, open_us);
}

static gboolean
cap_data(gpointer data, guint channel, gint64 time_us, const guint8 *buf,
         gsize len)
{
    Replay *r = data;
    if (channel >= r->chans->len || !chan(r, channel)->registered)
        return TRUE;
    return ev_data(r, channel, time_us, buf, len);
}

static void
cap_end(gpointer data, guint channel, MpEndReason how, gint64 time_us)
{
    Replay *r = data;
    if (channel < r->chans->len && chan(r, channel)->registered)
        ev_end(r, channel, time_us);
}

/* device sections are sliced, so the main channel is followed to its
 * EOF (a stream cut short is told from one that ended) */
static void
cap_vmdesc(gpointer data, MpVmdesc *vmdesc)
{
    Replay *r = data;
    mp_session_set_vmdesc(r->pipes, vmdesc);
    mp_vmdesc_unref(r->vmdesc);
    r->vmdesc = vmdesc ? mp_vmdesc_ref(vmdesc) : NULL;
}

static const MpCaptureWalk capture_walk = {
    .channel = cap_channel,
    .data = cap_data,
    .end = cap_end,
    .vmdesc = cap_vmdesc,
};

static void
replay_capture(Replay *r)
{
    g_autoptr(GError) err = NULL;
    index_capture(r);
    if (!mp_capture_walk(r->path, r->opt->session, &capture_walk, r, &err))
        input_error(r, "%s", err->message);
}

/* A packet capture: its first migration session, the connections to the
 * server its main channel went to (docs/replay.md). */
typedef struct {
    gint channel; /* -1: not (yet) a channel of the session */
    gboolean skipped;
    guint8 first[4];
    gsize first_have;
    gint64 open_us;
    char *server;
} PcapConn;

typedef struct {
    Replay *r;
    GPtrArray *conns; /* PcapConn*, by connection index */
    char *server;     /* where the session's main channel went */
    guint n_chans;
    gboolean main_ended;
} PcapReplay;

static void
pconn_free(gpointer p)
{
    PcapConn *c = p;
    g_free(c->server);
    g_free(c);
}

static void
pc_join(PcapReplay *pr, PcapConn *pc, MpChanKind kind)
{
    pc->channel = pr->n_chans++;
    ev_channel(pr->r, pc->channel, kind, pc->open_us);
}

static void
pc_open(gpointer data, const MpPcapConn *c)
{
    PcapReplay *pr = data;
    while (pr->conns->len <= c->index) {
        PcapConn *pc = g_new0(PcapConn, 1);
        pc->channel = -1;
        g_ptr_array_add(pr->conns, pc);
    }
    PcapConn *pc = g_ptr_array_index(pr->conns, c->index);
    pc->open_us = c->open_us;
    pc->server = g_strdup(c->server);
    if (pr->r->stop || pr->main_ended)
        return;
    start(pr->r, c->open_us);
    if (pr->server && g_str_equal(pr->server, c->server)) {
        /* a later channel of the session (multifd, 7.2's silent preempt
         * channel): opened when the source opened it */
        pc_join(pr, pc, MP_CHAN_UNKNOWN);
        open_due(pr->r, c->open_us);
    }
}

static void
pc_data(gpointer data, const MpPcapConn *c, MpDir dir, guint64 off,
        const guint8 *buf, gsize len, gint64 now_us)
{
    PcapReplay *pr = data;
    PcapConn *pc = g_ptr_array_index(pr->conns, c->index);

    if (dir != MP_DIR_TO_DST || pc->skipped || pr->r->stop)
        return;
    if (pc->channel >= 0) {
        ev_data(pr->r, pc->channel, now_us, buf, len);
        return;
    }
    if (pr->server) {
        pc->skipped = TRUE; /* another server's, or after the session */
        return;
    }
    gsize n = MIN(len, sizeof(pc->first) - pc->first_have);
    memcpy(pc->first + pc->first_have, buf, n);
    pc->first_have += n;
    MpChanKind kind = mp_chan_classify(pc->first, pc->first_have, FALSE);
    if (kind == MP_CHAN_UNKNOWN)
        return;
    if (kind != MP_CHAN_MAIN && kind != MP_CHAN_MULTIFD) {
        pc->skipped = TRUE; /* no migration's first channel */
        return;
    }
    /* the session: this connection's server; its channels in the order
     * their SYNs came (later ones join in pc_open()) */
    pr->server = g_strdup(c->server);
    for (guint i = 0; i < pr->conns->len; i++) {
        PcapConn *o = g_ptr_array_index(pr->conns, i);
        if (o->skipped || !o->server || !g_str_equal(o->server, pr->server))
            continue;
        MpChanKind k = o == pc ? kind
                       : o->first_have
                           ? mp_chan_classify(o->first, o->first_have, TRUE)
                           : MP_CHAN_UNKNOWN;
        pc_join(pr, o, k);
    }
    for (guint i = 0; i < pr->conns->len && !pr->r->stop; i++) {
        PcapConn *o = g_ptr_array_index(pr->conns, i);
        if (o->channel >= 0 && o->first_have)
            ev_data(pr->r, o->channel, now_us, o->first, o->first_have);
    }
    if (len > n && !pr->r->stop)
        ev_data(pr->r, pc->channel, now_us, buf + n, len - n);
}

static void
pc_gap(gpointer data, const MpPcapConn *c, MpDir dir, guint64 off, guint64 len,
       MpTcpGapWhy why, gint64 now_us)
{
    PcapReplay *pr = data;
    PcapConn *pc = g_ptr_array_index(pr->conns, c->index);
    if (dir != MP_DIR_TO_DST || pc->channel < 0)
        return;
    input_error(pr->r,
                "%s: channel %d (%s -> %s): %" G_GUINT64_FORMAT " bytes are "
                "missing from the capture at stream offset %" G_GUINT64_FORMAT
                " (%s); the destination cannot load a stream with a hole, "
                "the replay stops there",
                pr->r->path, pc->channel, c->client, c->server, len, off,
                mp_tcp_gap_why(why));
}

static void
pc_end(gpointer data, const MpPcapConn *c, MpDir dir, MpEndReason how,
       gint64 now_us)
{
    PcapReplay *pr = data;
    PcapConn *pc = g_ptr_array_index(pr->conns, c->index);
    if (dir != MP_DIR_TO_DST || pc->channel < 0)
        return;
    if ((guint)pc->channel < pr->r->chans->len
        && chan(pr->r, pc->channel)->kind == MP_CHAN_MAIN)
        pr->main_ended = TRUE;
    ev_end(pr->r, pc->channel, now_us);
}

static const MpPcapOps pcap_ops = {
    .open = pc_open,
    .data = pc_data,
    .gap = pc_gap,
    .end = pc_end,
};

static void
replay_pcap(Replay *r, GError **error)
{
    PcapReplay pr = {.r = r};
    pr.conns = g_ptr_array_new_with_free_func(pconn_free);
    g_autoptr(MpPcapFlows) f =
        mp_pcap_flows_open(r->path, 0, &pcap_ops, &pr, error);
    if (f && !mp_pcap_flows_run(f, error)) {
        input_error(r, "%s: %s", r->path, (*error)->message);
        g_clear_error(error);
    }
    if (f && !pr.server && !r->stop)
        input_error(r,
                    "%s: no migration in the capture (no TCP connection "
                    "whose first bytes towards the server are a "
                    "migration stream)",
                    r->path);
    g_ptr_array_free(pr.conns, TRUE);
    g_free(pr.server);
}

/* ---- the report ---- */

static json_object *
input_error_doc(const char *path, const char *kind, const char *msg)
{
    json_object *doc = json_object_new_object(),
                *errs = json_object_new_array();
    json_object_object_add(doc, "file", json_object_new_string(path));
    json_object_object_add(doc, "input_error", json_object_new_string(kind));
    json_object_array_add(errs, json_object_new_string(msg));
    json_object_object_add(doc, "errors", errs);
    return mp_json_with_schema(doc);
}

static json_object *
replay_section(Replay *r, MpInputFormat format, gint64 end)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "input", json_object_new_string(r->path));
    json_object_object_add(
        o, "format", json_object_new_string(mp_input_format_name(format)));
    g_autofree char *to = mp_address_string(r->to);
    json_object_object_add(o, "to", json_object_new_string(to));
    json_object_object_add(o, "paced", json_object_new_boolean(r->speed > 0));
    json_object_object_add(o, "speed", json_object_new_double(r->speed));
    json_object_object_add(
        o, "rate", r->opt->rate ? json_object_new_uint64(r->opt->rate) : NULL);
    json_object_object_add(o, "bytes", json_object_new_uint64(r->sent));
    json_object_object_add(o, "duration_ms",
                           mp_metrics_json_ms(r->started ? end - r->start : 0));
    json_object_object_add(
        o, "send_ms",
        mp_metrics_json_ms(r->sent ? r->last_write - r->start : 0));
    json_object *ch = json_object_new_array();
    for (guint i = 0; i < r->chans->len; i++) {
        Chan *c = g_ptr_array_index(r->chans, i);
        if (!c->registered)
            continue;
        json_object *co = json_object_new_object();
        json_object_object_add(co, "channel", json_object_new_int(c->index));
        json_object_object_add(co, "kind",
                               json_object_new_string(chan_name(c)));
        json_object_object_add(co, "bytes", json_object_new_uint64(c->sent));
        json_object_array_add(ch, co);
    }
    json_object_object_add(o, "channels", ch);
    gboolean accepted = !r->refused && !r->input_error;
    json_object_object_add(o, "accepted", json_object_new_boolean(accepted));
    json_object_object_add(o, "confirmed",
                           json_object_new_boolean(accepted && r->shut == 0));
    const char *verdict =
        r->input_error ? r->input_error
        : r->refused   ? r->refused
        : r->shut == 0 ? "the destination loaded the stream (SHUT 0 on its "
                         "return path)"
                       : "the destination took the whole stream and closed (no "
                         "return path in this stream to confirm it)";
    json_object_object_add(o, "verdict", json_object_new_string(verdict));
    json_object *rp = json_object_new_object();
    json_object_object_add(rp, "opened",
                           json_object_new_boolean(r->rp_expected));
    json_object_object_add(rp, "messages",
                           json_object_new_uint64(r->rp_messages));
    json_object_object_add(rp, "shut",
                           r->shut >= 0 ? json_object_new_int(r->shut) : NULL);
    json_object_object_add(rp, "page_requests",
                           json_object_new_uint64(r->page_requests));
    json_object_object_add(o, "return_path", rp);
    json_object *pa = json_object_new_object();
    json_object_object_add(
        pa, "indexed_pages",
        json_object_new_uint64(r->pages ? g_hash_table_size(r->pages) : 0));
    json_object_object_add(pa, "index_full", json_object_new_boolean(r->ix_full));
    json_object_object_add(pa, "requests_early",
                           json_object_new_uint64(r->req_early));
    json_object_object_add(pa, "requests_in_order",
                           json_object_new_uint64(r->req_in_order));
    json_object_object_add(pa, "pages_early",
                           json_object_new_uint64(r->pages_early));
    json_object_object_add(pa, "later_copies_dropped",
                           json_object_new_uint64(r->pages_dropped));
    json_object_object_add(pa, "pages_in_order",
                           json_object_new_uint64(r->pages_queued));
    json_object_object_add(pa, "pages_not_in_capture",
                           json_object_new_uint64(r->pages_not_held));
    json_object_object_add(o, "page_answers", pa);
    return o;
}

json_object *
mp_replay_run(const char *path, const MpReplayOptions *opt,
              MpReplayStatus *status)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *why = NULL;
    MpInputFormat format;

    if (!mp_input_format_detect(path, &format, &why, &err)) {
        *status = MP_REPLAY_NO_INPUT;
        return input_error_doc(path, "open", err->message);
    }
    switch (format) {
    case MP_FORMAT_STREAM:
    case MP_FORMAT_ZSTD:
    case MP_FORMAT_LIBVIRT:
    case MP_FORMAT_CAPTURE:
    case MP_FORMAT_PCAP:
        break;
    default: {
        g_autofree char *msg = g_strdup_printf(
            "%s: not a format replay reads (%s); it reads a QEMU stream file "
            "(plain, zstd or in a "
            "libvirt save image), a relay capture directory or a packet "
            "capture",
            path,
            format == MP_FORMAT_UNKNOWN ? why
            : format == MP_FORMAT_MAPPED_RAM
                ? "a mapped-ram file (QEMU reads it only from file:, "
                  "never over a socket)"
                : "a qcow2 image (its snapshots' state is loaded by "
                  "loadvm, not by -incoming)");
        *status = MP_REPLAY_FORMAT;
        return input_error_doc(path, "format", msg);
    }
    }

    Replay r = {.opt = opt, .path = path, .shut = -1};
    r.to = mp_address_resolve("--to", opt->to, &err);
    if (!r.to) {
        *status = MP_REPLAY_REFUSED;
        json_object *doc = input_error_doc(path, "destination", err->message);
        return doc;
    }
    r.timed = format == MP_FORMAT_CAPTURE || format == MP_FORMAT_PCAP;
    r.speed = opt->speed < 0 ? (r.timed ? 1 : 0) : r.timed ? opt->speed : 0;
    r.chans = g_ptr_array_new_with_free_func(chan_free);
    gint64 t0 = now_us();
    r.metrics = mp_metrics_new(1, g_get_real_time(), t0);
    r.pipes = mp_session_new(r.metrics, 1);
    mp_session_set_logging(r.pipes, FALSE);
    mp_session_observe(r.pipes, &observer, &r);
    if (opt->progress && isatty(STDERR_FILENO))
        mp_metrics_progress_attach(r.metrics, stderr);

    switch (format) {
    case MP_FORMAT_CAPTURE:
        replay_capture(&r);
        break;
    case MP_FORMAT_PCAP:
        replay_pcap(&r, &err);
        break;
    default:
        replay_stream(&r, &err);
        break;
    }
    if (err && !r.started) {
        /* (libpcap or the stream reader could not open it) */
        gboolean unsupported =
            g_error_matches(err, G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED);
        *status = unsupported ? MP_REPLAY_FORMAT : MP_REPLAY_NO_INPUT;
        json_object *doc = input_error_doc(
            path, unsupported ? "format" : "open", err->message);
        g_ptr_array_free(r.chans, TRUE);
        if (r.pages)
            g_hash_table_destroy(r.pages);
        if (r.blocks)
            g_ptr_array_free(r.blocks, TRUE);
        mp_vmdesc_unref(r.vmdesc);
        mp_session_free(r.pipes);
        mp_metrics_free(r.metrics);
        g_object_unref(r.to);
        return doc;
    }
    if (!r.started && !r.stop)
        input_error(&r, "%s: no migration channel to replay", path);
    finish(&r);
    gint64 end = now_us();
    mp_metrics_finish(r.metrics, end,
                      r.input_error ? "interrupted: the input broke off"
                      : r.refused   ? "failed: the destination did not accept "
                                      "the stream"
                                    : NULL);

    json_object *doc = mp_metrics_report(r.metrics);
    json_object_object_add(doc, "replay", replay_section(&r, format, end));
    json_object *errs;
    if (!json_object_object_get_ex(doc, "errors", &errs)) {
        errs = json_object_new_array();
        json_object_object_add(doc, "errors", errs);
    }
    if (r.input_error)
        json_object_array_add(errs, json_object_new_string(r.input_error));
    if (r.refused)
        json_object_array_add(errs, json_object_new_string(r.refused));
    *status = r.input_error ? MP_REPLAY_INVALID
              : r.refused   ? MP_REPLAY_REFUSED
                            : MP_REPLAY_ACCEPTED;
    g_free(r.refused);
    g_free(r.input_error);
    g_ptr_array_free(r.chans, TRUE);
    if (r.pages)
        g_hash_table_destroy(r.pages);
    if (r.blocks)
        g_ptr_array_free(r.blocks, TRUE);
    mp_vmdesc_unref(r.vmdesc);
    mp_session_free(r.pipes);
    mp_metrics_free(r.metrics);
    g_object_unref(r.to);
    return doc;
}
