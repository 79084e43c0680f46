/* metrics.c: the metrics model of one migration session (see metrics.h
 * and docs/relay.md).
 *
 * Post-copy latency: a REQ_PAGES(_ID) on the return path starts a clock
 * for (block, start); the first RAM page record for that address read
 * from the source (main or preempt channel) stops it.  The table of
 * requests waiting for their page is bounded (MAX_PENDING, the oldest
 * give way), so a destination that asks for pages that never come
 * cannot grow it.
 */
#include "config.h"
#include <string.h>
#include "metrics.h"

#define MAX_PENDING   4096
#define MAX_SERIES    (1u << 20) /* 100 ms steps: 29 hours */
#define MAX_LATENCIES (1u << 22)
#define RATE_WINDOW   10 /* ticks: the rate shown is over 1 s */
#define PAGE_SIZE     MP_TARGET_PAGE_SIZE
#define MAX_PINGS     64 /* QEMU sends 4 or 5 per migration */

typedef struct {
    const char *block; /* interned */
    guint64 addr;
    gint64 t_us;
} Pending;

struct MpMetrics {
    guint session;
    gint64 start_wall_us;
    gint64 start_us;
    MpAnalysis *analysis;
    GPtrArray *channels;  /* MpMetricsChannel*, by index (NULL gaps) */
    GPtrArray *observers; /* MpMetricsObserver* */

    /* post-copy requests */
    GHashTable *pending; /* Pending* -> same */
    GQueue pending_order;
    guint64 matched, dropped;
    GArray *latencies; /* gint64 us */

    /* return path */
    gint64 shut_us;
    gint64 shut_value;
    gint64 main_last_us; /* last byte of the main channel to the dst */
    gint64 last_us;      /* last byte of any channel */

    /* Where the downtime starts on the wire (mp_metrics_downtime()) */
    gint64 main_prev_us;       /* the main channel's read before the latest */
    gint64 mfd_since_main_us;  /* first multifd read since the latest main
                                  read, -1: none */
    gint64 mfd_before_main_us; /* the same, before the latest main read */
    gint64 precopy_end_us;     /* main_prev_us when the stop was seen */
    gint64 mfd_stop_us;        /* mfd_before_main_us when the stop was seen */
    gboolean stop_seen;
    gboolean multifd;        /* a multifd channel took part */
    gboolean in_package;     /* inside the PACKAGED blob */
    gboolean package_passed; /* the blob's end was read */
    /* PINGs sent outside the blob (its own come after device sections
     * that are not parsed): a PONG to any other is the destination's
     * answer to the PING inside the blob, after it loaded the devices */
    GArray *pings; /* guint32, at most MAX_PINGS */
    gint64 package_pong_us;

    /* ticks */
    gint64 last_tick_us;
    guint64 rate_ring[RATE_WINDOW]; /* total bytes at each tick */
    guint64 pages_ring[RATE_WINDOW];
    gint64 time_ring[RATE_WINDOW];
    guint ring_pos, ring_fill;
    MpMetricsLive live;
    MpMetricsLink link;
    gboolean has_link;
    json_object *encoders; /* the embedder's, for the sample lines */
    const char *phase_announced;
    guint rounds_announced;

    gboolean finished;
    char *outcome;
    MpMetricsOutcome outcome_kind;
};

/* Tells every observer that has `cb`: NOTIFY(m, phase, "precopy", now). */
#define NOTIFY(m, cb, ...)                                                     \
    for (guint i_ = 0; i_ < (m)->observers->len; i_++) {                       \
        MpMetricsObserver *o_ = g_ptr_array_index((m)->observers, i_);         \
        if (o_->cb)                                                            \
            o_->cb(o_, (m), __VA_ARGS__);                                      \
    }

static guint
pending_hash(gconstpointer k)
{
    const Pending *p = k;
    return g_direct_hash(p->block) ^ (guint)(p->addr >> 12)
           ^ (guint)(p->addr >> 44);
}

static gboolean
pending_equal(gconstpointer a, gconstpointer b)
{
    const Pending *x = a, *y = b;
    return x->block == y->block && x->addr == y->addr;
}

static void
chan_free(gpointer p)
{
    MpMetricsChannel *c = p;
    if (!c)
        return;
    g_free(c->peer);
    for (int d = 0; d < MP_DIR__MAX; d++) {
        g_free(c->dir[d].truncated);
        g_free(c->dir[d].partial_why);
        g_array_free(c->dir[d].series, TRUE);
    }
    g_free(c);
}

static void
observer_free(gpointer p)
{
    MpMetricsObserver *o = p;
    if (o->free)
        o->free(o);
}

MpMetrics *
mp_metrics_new(guint session, gint64 start_wall_us, gint64 start_us)
{
    MpMetrics *m = g_new0(MpMetrics, 1);

    m->session = session;
    m->start_wall_us = start_wall_us;
    m->start_us = start_us;
    m->analysis = mp_analysis_new();
    mp_analysis_set_time(m->analysis, 0);
    m->channels = g_ptr_array_new_with_free_func(chan_free);
    m->observers = g_ptr_array_new_with_free_func(observer_free);
    m->pending =
        g_hash_table_new_full(pending_hash, pending_equal, g_free, NULL);
    g_queue_init(&m->pending_order);
    m->latencies = g_array_new(FALSE, FALSE, sizeof(gint64));
    m->shut_us = m->main_last_us = m->last_us = -1;
    m->main_prev_us = m->precopy_end_us = m->mfd_stop_us = -1;
    m->mfd_since_main_us = m->mfd_before_main_us = -1;
    m->package_pong_us = -1;
    m->pings = g_array_new(FALSE, FALSE, sizeof(guint32));
    m->shut_value = -1;
    m->last_tick_us = start_us;
    m->live.eta_s = -1;
    return m;
}

void
mp_metrics_free(MpMetrics *m)
{
    if (!m)
        return;
    g_ptr_array_free(m->observers, TRUE);
    mp_analysis_free(m->analysis);
    g_ptr_array_free(m->channels, TRUE);
    g_queue_clear(&m->pending_order);
    g_hash_table_destroy(m->pending);
    g_array_free(m->latencies, TRUE);
    g_array_free(m->pings, TRUE);
    g_free(m->outcome);
    if (m->encoders)
        json_object_put(m->encoders);
    g_free(m);
}

void
mp_metrics_add_observer(MpMetrics *m, MpMetricsObserver *o)
{
    g_ptr_array_add(m->observers, o);
}

MpAnalysis *
mp_metrics_analysis(const MpMetrics *m)
{
    return m->analysis;
}

guint
mp_metrics_session(const MpMetrics *m)
{
    return m->session;
}

gint64
mp_metrics_start_wall_us(const MpMetrics *m)
{
    return m->start_wall_us;
}

char *
mp_metrics_start_time(const MpMetrics *m)
{
    g_autoptr(GDateTime) t =
        g_date_time_new_from_unix_utc(m->start_wall_us / G_USEC_PER_SEC);
    return t ? g_date_time_format_iso8601(t) : NULL;
}

gint64
mp_metrics_rel(const MpMetrics *m, gint64 now_us)
{
    return now_us - m->start_us;
}

guint
mp_metrics_n_channels(const MpMetrics *m)
{
    return m->channels->len;
}

const MpMetricsChannel *
mp_metrics_channel(const MpMetrics *m, guint index)
{
    return index < m->channels->len ? g_ptr_array_index(m->channels, index)
                                    : NULL;
}

gint64
mp_metrics_last_us(const MpMetrics *m)
{
    return m->last_us;
}

static MpMetricsChannel *
chan(MpMetrics *m, guint index)
{
    while (m->channels->len <= index)
        g_ptr_array_add(m->channels, NULL);
    MpMetricsChannel *c = g_ptr_array_index(m->channels, index);
    if (!c) {
        c = g_new0(MpMetricsChannel, 1);
        c->index = index;
        c->open_us = c->kind_us = -1;
        for (int d = 0; d < MP_DIR__MAX; d++) {
            c->dir[d].last_us = c->dir[d].end_us = -1;
            c->dir[d].series = g_array_new(FALSE, TRUE, sizeof(guint64));
        }
        g_ptr_array_index(m->channels, index) = c;
    }
    return c;
}

void
mp_metrics_channel_open(MpMetrics *m, guint channel, const char *peer,
                        gint64 now_us)
{
    MpMetricsChannel *c = chan(m, channel);
    g_free(c->peer);
    c->peer = g_strdup(peer);
    c->open_us = mp_metrics_rel(m, now_us);
    NOTIFY(m, channel_open, channel, now_us);
}

void
mp_metrics_channel_kind(MpMetrics *m, guint channel, MpChanKind kind,
                        gint64 now_us)
{
    MpMetricsChannel *c = chan(m, channel);
    c->kind = kind;
    c->kind_us = mp_metrics_rel(m, now_us);
    NOTIFY(m, channel_kind, channel, now_us);
}

void
mp_metrics_bytes(MpMetrics *m, guint channel, MpDir dir, gsize n, gint64 now_us)
{
    MpMetricsChannel *c = chan(m, channel);
    MpMetricsFlow *f = &c->dir[dir];
    gint64 t = mp_metrics_rel(m, now_us);
    guint64 bucket = t > 0 ? (guint64)t / MP_METRICS_INTERVAL_US : 0;

    f->bytes += n;
    f->last_us = t;
    m->last_us = MAX(m->last_us, t);
    if (dir == MP_DIR_TO_DST
        && (c->kind == MP_CHAN_MAIN || c->kind == MP_CHAN_RECOVERY)) {
        m->main_prev_us = m->main_last_us;
        m->main_last_us = t;
        m->mfd_before_main_us = m->mfd_since_main_us;
        m->mfd_since_main_us = -1;
    } else if (dir == MP_DIR_TO_DST && c->kind == MP_CHAN_MULTIFD) {
        m->multifd = TRUE;
        if (m->mfd_since_main_us < 0)
            m->mfd_since_main_us = t;
    }
    if (bucket < MAX_SERIES) {
        GArray *s = f->series;
        if (s->len <= bucket)
            g_array_set_size(s, bucket + 1);
        g_array_index(s, guint64, bucket) += n;
    }
}

static void
pending_add(MpMetrics *m, const char *block, guint64 addr, gint64 t)
{
    Pending key = {g_intern_string(block), addr, t};

    if (g_hash_table_contains(m->pending, &key))
        return; /* asked again: the clock runs from the first request */
    if (g_hash_table_size(m->pending) >= MAX_PENDING) {
        Pending *old = g_queue_pop_head(&m->pending_order);
        g_hash_table_remove(m->pending, old);
        m->dropped++;
    }
    Pending *p = g_memdup2(&key, sizeof(key));
    g_hash_table_add(m->pending, p);
    g_queue_push_tail(&m->pending_order, p);
}

static void
pending_match(MpMetrics *m, const char *block, guint64 addr, gint64 t)
{
    if (!block || g_hash_table_size(m->pending) == 0)
        return;
    Pending key = {g_intern_string(block), addr, 0};
    Pending *p = g_hash_table_lookup(m->pending, &key);
    if (!p)
        return;
    gint64 lat = MAX(t - p->t_us, 0);
    if (m->latencies->len < MAX_LATENCIES)
        g_array_append_val(m->latencies, lat);
    m->matched++;
    g_queue_remove(&m->pending_order, p);
    g_hash_table_remove(m->pending, p);
}

static gboolean
ping_seen(const MpMetrics *m, guint32 value)
{
    for (guint i = 0; i < m->pings->len; i++)
        if (g_array_index(m->pings, guint32, i) == value)
            return TRUE;
    return FALSE;
}

void
mp_metrics_record(MpMetrics *m, guint channel, MpDir dir, const MpRecord *rec,
                  gint64 now_us)
{
    gint64 t = mp_metrics_rel(m, now_us);

    (void)dir;
    mp_analysis_set_time(m->analysis, t);
    mp_analysis_record_on(m->analysis, channel, rec);
    switch (rec->kind) {
    case MP_REC_SECTION_HEADER:
    case MP_REC_COMMAND:
        /* (only these records start the stop-and-copy phase) */
        if (!m->stop_seen) {
            MpAnalysisProgress pr;
            mp_analysis_progress(m->analysis, &pr);
            if (pr.stop_us >= 0) {
                m->stop_seen = TRUE;
                m->precopy_end_us = m->main_prev_us;
                m->mfd_stop_us = m->mfd_before_main_us;
            }
        }
        if (rec->kind != MP_REC_COMMAND)
            break;
        if (rec->u.cmd.cmd == MP_QMIG_CMD_PACKAGED)
            m->in_package = TRUE;
        else if (rec->u.cmd.cmd == MP_QMIG_CMD_PING && !m->in_package
                 && m->pings->len < MAX_PINGS)
            g_array_append_val(m->pings, rec->u.cmd.ping_value);
        break;
    case MP_REC_PACKAGED_END:
        m->in_package = FALSE;
        m->package_passed = TRUE;
        break;
    case MP_REC_RP_MESSAGE:
        if (rec->u.rp.type == MP_RP_MSG_REQ_PAGES
            || rec->u.rp.type == MP_RP_MSG_REQ_PAGES_ID) {
            if (rec->u.rp.block)
                pending_add(m, rec->u.rp.block, rec->u.rp.start, t);
        } else if (rec->u.rp.type == MP_RP_MSG_SHUT) {
            m->shut_us = t;
            m->shut_value = rec->u.rp.value;
        } else if (rec->u.rp.type == MP_RP_MSG_PONG && m->package_pong_us < 0
                   && m->package_passed && !ping_seen(m, rec->u.rp.value)) {
            m->package_pong_us = t;
        }
        break;
    case MP_REC_RAM_PAGE:
        pending_match(m, rec->u.page.block, rec->u.page.addr, t);
        break;
    case MP_REC_MFD_PAGE:
        pending_match(m, rec->u.mfd.block, rec->u.mfd.addr, t);
        break;
    default:
        break;
    }
}

void
mp_metrics_partial(MpMetrics *m, guint channel, MpDir dir, guint64 offset,
                   const char *why, gint64 now_us)
{
    MpMetricsFlow *f = &chan(m, channel)->dir[dir];
    if (f->partial)
        return;
    f->partial = TRUE;
    f->partial_offset = offset;
    f->partial_why = g_strdup(why);
    NOTIFY(m, partial, channel, dir, now_us);
}

void
mp_metrics_channel_end(MpMetrics *m, guint channel, MpDir dir, MpEndReason how,
                       const char *truncated, gint64 now_us)
{
    MpMetricsFlow *f = &chan(m, channel)->dir[dir];
    if (f->ended)
        return;
    f->ended = TRUE;
    f->end = how;
    f->end_us = mp_metrics_rel(m, now_us);
    f->truncated = g_strdup(truncated);
    NOTIFY(m, channel_end, channel, dir, now_us);
}

/* ---- derived numbers ---- */

const gint64 mp_metrics_latency_le_us[MP_METRICS_LATENCY_BUCKETS] = {
    100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000,
    100000, 200000, 500000, 1000000, -1,
};

static int
cmp_i64(const void *a, const void *b)
{
    gint64 x = *(const gint64 *)a, y = *(const gint64 *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of the sorted array. */
static gint64
percentile(const gint64 *v, guint n, guint pct)
{
    if (!n)
        return 0;
    guint rank = (guint)(((guint64)pct * n + 99) / 100);
    return v[MAX(rank, 1) - 1];
}

void
mp_metrics_postcopy(const MpMetrics *m, MpMetricsPostcopy *out)
{
    guint n = m->latencies->len;
    g_autofree gint64 *sorted =
        g_memdup2(m->latencies->data, n * sizeof(gint64));

    if (sorted)
        qsort(sorted, n, sizeof(gint64), cmp_i64);
    *out = (MpMetricsPostcopy){
        .answered = m->matched,
        .unanswered = g_hash_table_size(m->pending) + m->dropped,
        .count = n,
        .p50_us = percentile(sorted, n, 50),
        .p99_us = percentile(sorted, n, 99),
        .max_us = n ? sorted[n - 1] : 0,
    };
    /* sorted: each bucket takes the run of latencies up to its bound */
    guint b = 0;
    for (guint i = 0; i < n; i++) {
        while (b < MP_METRICS_LATENCY_BUCKETS - 1
               && sorted[i] > mp_metrics_latency_le_us[b])
            b++;
        out->histogram[b]++;
    }
}

/* The downtime as the wire shows it (docs/relay.md), measured as QEMU
 * measures its own `downtime`: on the source's side.
 *
 * QEMU holds the records of the stop-and-copy phase in the main
 * channel's buffer until it fills or the phase ends, so the first of them
 * (END section, SWITCHOVER_START, DISCARD, PACKAGED) often came in the same
 * read as the end, and the downtime read 0 ms (multifd with zstd: against
 * QEMU's 61 ms).  It starts earlier:
 *   - with multifd, at the first multifd read after the main channel's
 *     last pre-copy read: the final pages and SYNC packets leave on the
 *     multifd channels before the main channel's buffer (QEMU waits for
 *     the SYNCs to be sent before it flushes it);
 *   - without, where the main channel's last pre-copy read ended: QEMU
 *     flushes it at the end of every pre-copy iteration and stops the
 *     guest right after the last one (or after a rate-limit wait of up to
 *     100 ms, when max-bandwidth held that iteration back).
 * With no such read it starts at that first record.
 *
 * It ends where QEMU's ends: the PACKAGED blob passed in post-copy, else
 * the return path's SHUT (QEMU waits for it), else the last byte of the
 * main channel.  `answer` is when the destination answered (the PONG to
 * the PING inside the PACKAGED blob, SHUT, or its close of the main
 * channel, which QEMU does once it has loaded everything): what the guest
 * waits for, the destination's loading included. */
void
mp_metrics_downtime(const MpMetrics *m, MpMetricsDowntime *d)
{
    MpAnalysisProgress pr;
    const MpMetricsChannel *mc = NULL;

    *d = (MpMetricsDowntime){-1, -1, NULL, -1, -1, NULL};
    mp_analysis_progress(m->analysis, &pr);
    if (pr.stop_us < 0)
        return;
    d->stop_us = d->first_record_us = pr.stop_us;
    gint64 before = m->multifd ? m->mfd_stop_us : m->precopy_end_us;
    if (before >= 0 && before < d->stop_us)
        d->stop_us = before;
    for (guint i = 0; i < m->channels->len && !mc; i++) {
        const MpMetricsChannel *c = g_ptr_array_index(m->channels, i);
        if (c && c->kind == MP_CHAN_MAIN)
            mc = c;
    }

    if (pr.postcopy_us >= 0) {
        d->resume_us = pr.postcopy_us;
        d->end_marker = "PACKAGED blob sent (post-copy starts)";
    } else if (m->shut_us >= d->stop_us) {
        d->resume_us = m->shut_us;
        d->end_marker = "return-path SHUT";
    } else if (m->main_last_us >= d->stop_us) {
        d->resume_us = m->main_last_us;
        d->end_marker = "last byte of the main channel";
    } else {
        d->stop_us = -1;
        return;
    }

    const MpMetricsFlow *back = mc ? &mc->dir[MP_DIR_TO_SRC] : NULL;
    if (pr.postcopy_us >= 0 && m->package_pong_us >= pr.postcopy_us) {
        d->answer_us = m->package_pong_us;
        d->answer = "PONG to the PING in the PACKAGED blob";
    } else if (pr.postcopy_us < 0 && m->shut_us >= d->stop_us) {
        d->answer_us = m->shut_us;
        d->answer = "return-path SHUT";
    } else if (pr.postcopy_us < 0 && back && back->end_us >= d->stop_us
               && back->ended && back->end != MP_END_ABORTED) {
        d->answer_us = back->end_us;
        d->answer = "destination closed the main channel";
    }
}

guint64
mp_metrics_total_bytes(const MpMetrics *m)
{
    guint64 t = 0;
    for (guint i = 0; i < m->channels->len; i++) {
        const MpMetricsChannel *c = g_ptr_array_index(m->channels, i);
        if (c)
            t += c->dir[MP_DIR_TO_DST].bytes + c->dir[MP_DIR_TO_SRC].bytes;
    }
    return t;
}

void
mp_metrics_live(const MpMetrics *m, MpMetricsLive *out)
{
    *out = m->live;
}

void
mp_metrics_set_link(MpMetrics *m, const MpMetricsLink *link)
{
    m->link = *link;
    m->has_link = TRUE;
}

gboolean
mp_metrics_link(const MpMetrics *m, MpMetricsLink *out)
{
    if (m->has_link)
        *out = m->link;
    return m->has_link;
}

void
mp_metrics_set_encoders(MpMetrics *m, json_object *encoders)
{
    if (m->encoders)
        json_object_put(m->encoders);
    m->encoders = encoders;
}

json_object *
mp_metrics_encoders(const MpMetrics *m)
{
    return m->encoders;
}

static MpMetricsLive
live_numbers(const MpMetrics *m, const MpAnalysisProgress *pr)
{
    MpMetricsLive l = {0, 0, 0, 0, -1};
    if (m->ring_fill >= 2) {
        guint newest = (m->ring_pos + RATE_WINDOW - 1) % RATE_WINDOW;
        guint oldest = m->ring_fill < RATE_WINDOW ? 0 : m->ring_pos;
        double dt = (m->time_ring[newest] - m->time_ring[oldest]) / 1e6;
        if (dt > 0) {
            l.rate = (m->rate_ring[newest] - m->rate_ring[oldest]) / dt;
            l.pages_rate = (m->pages_ring[newest] - m->pages_ring[oldest]) / dt;
        }
    }
    guint64 ram_pages = pr->ram_total / PAGE_SIZE;
    if (ram_pages)
        l.ram_sent = MIN(1.0, (double)pr->distinct_pages / ram_pages);
    l.dirty_rate = pr->dirty_pages_per_s;
    if (l.pages_rate > 0 && strcmp(pr->phase, "precopy") == 0) {
        guint64 left;
        if (pr->rounds <= 1)
            left = ram_pages > pr->distinct_pages
                       ? ram_pages - pr->distinct_pages
                       : 0;
        else
            left = pr->prev_round_pages > pr->round_pages
                       ? pr->prev_round_pages - pr->round_pages
                       : 0;
        l.eta_s = left / l.pages_rate;
    }
    return l;
}

static void
announce_rounds(MpMetrics *m, guint upto, gint64 now_us)
{
    while (m->rounds_announced < upto) {
        guint round = ++m->rounds_announced;
        NOTIFY(m, round, round, now_us);
    }
}

static void
announce_phase(MpMetrics *m, const MpAnalysisProgress *pr, gint64 now_us)
{
    if (m->phase_announced && strcmp(m->phase_announced, pr->phase) == 0)
        return;
    m->phase_announced = pr->phase;
    NOTIFY(m, phase, pr->phase, now_us);
}

void
mp_metrics_tick(MpMetrics *m, gint64 now_us)
{
    MpAnalysisProgress pr;

    if (m->finished)
        return;
    mp_analysis_set_time(m->analysis, mp_metrics_rel(m, now_us));
    mp_analysis_progress(m->analysis, &pr);
    m->rate_ring[m->ring_pos] = mp_metrics_total_bytes(m);
    m->pages_ring[m->ring_pos] = pr.pages;
    m->time_ring[m->ring_pos] = now_us;
    m->ring_pos = (m->ring_pos + 1) % RATE_WINDOW;
    m->ring_fill = MIN(m->ring_fill + 1, RATE_WINDOW);
    m->live = live_numbers(m, &pr);

    announce_phase(m, &pr, now_us);
    if (pr.rounds > 1)
        announce_rounds(m, pr.rounds - 1, now_us);
    NOTIFY(m, sample, MAX(now_us - m->last_tick_us, 1), now_us);
    for (guint i = 0; i < m->channels->len; i++) {
        MpMetricsChannel *c = g_ptr_array_index(m->channels, i);
        for (int d = 0; c && d < MP_DIR__MAX; d++)
            c->dir[d].tick_bytes = c->dir[d].bytes;
    }
    m->last_tick_us = now_us;
}

static gboolean
all_clean(const MpMetrics *m)
{
    for (guint i = 0; i < m->channels->len; i++) {
        const MpMetricsChannel *c = g_ptr_array_index(m->channels, i);
        for (int d = 0; c && d < MP_DIR__MAX; d++)
            if (c->dir[d].ended && c->dir[d].end != MP_END_FIN)
                return FALSE;
    }
    return TRUE;
}

void
mp_metrics_finish(MpMetrics *m, gint64 now_us, const char *failure)
{
    if (m->finished)
        return;
    m->finished = TRUE;
    mp_analysis_set_time(m->analysis, m->last_us >= 0 ? m->last_us : 0);
    mp_analysis_finish(m->analysis, mp_metrics_total_bytes(m));

    MpAnalysisProgress pr;
    mp_analysis_progress(m->analysis, &pr);
    gboolean tls = FALSE;
    for (guint i = 0; i < m->channels->len; i++) {
        const MpMetricsChannel *c = g_ptr_array_index(m->channels, i);
        tls |= c && c->kind == MP_CHAN_TLS;
    }
    m->outcome_kind = MP_METRICS_OUTCOME_FAILED;
    if (failure)
        m->outcome = g_strdup(failure);
    else if (tls && all_clean(m)) {
        /* encrypted: only how the connections ended is known */
        m->outcome = g_strdup("ended cleanly (TLS, not parsed)");
        m->outcome_kind = MP_METRICS_OUTCOME_TLS_CLEAN;
    } else if (tls)
        m->outcome = g_strdup("failed: a connection broke");
    else if (m->shut_value == 0
             || (m->shut_value < 0 && pr.stop_us >= 0 && all_clean(m))) {
        m->outcome = g_strdup("completed");
        m->outcome_kind = MP_METRICS_OUTCOME_COMPLETED;
    } else if (m->shut_value > 0)
        m->outcome = g_strdup("failed: the destination reported an error");
    else if (pr.stop_us < 0)
        m->outcome = g_strdup("failed: ended before the source stopped");
    else
        m->outcome = g_strdup("failed: a connection broke");

    announce_phase(m, &pr, now_us);
    announce_rounds(m, pr.rounds, now_us);
    NOTIFY(m, finish, now_us);
}

MpMetricsOutcome
mp_metrics_outcome(const MpMetrics *m)
{
    return m->finished ? m->outcome_kind : MP_METRICS_OUTCOME_RUNNING;
}

const char *
mp_metrics_outcome_text(const MpMetrics *m)
{
    return m->outcome;
}
