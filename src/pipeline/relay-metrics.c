/* relay-metrics.c: live metrics of one migration session (see
 * relay-metrics.h and docs/relay.md).
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
#include <unistd.h>
#include "relay-metrics.h"

#define MAX_PENDING   4096
#define MAX_SERIES    (1u << 20) /* 100 ms steps: 29 hours */
#define MAX_LATENCIES (1u << 22)
#define RATE_WINDOW   10 /* ticks: the rate shown is over 1 s */
#define PAGE_SIZE     MP_TARGET_PAGE_SIZE
#define MAX_PINGS     64 /* QEMU sends 4 or 5 per migration */

typedef struct {
    guint index;
    MpChanKind kind;
    char *peer;
    gint64 open_us, kind_us;
    guint64 bytes[MP_DIR__MAX];
    guint64 tick_bytes[MP_DIR__MAX]; /* at the last tick */
    gint64 last_us[MP_DIR__MAX];     /* last byte, -1: none */
    gint64 end_us[MP_DIR__MAX];
    char *end[MP_DIR__MAX]; /* "fin", "reset", "aborted"; NULL: open */
    char *truncated[MP_DIR__MAX];
    gboolean partial[MP_DIR__MAX];
    guint64 partial_offset[MP_DIR__MAX];
    char *partial_why[MP_DIR__MAX];
    GArray *series[MP_DIR__MAX]; /* guint64 bytes per interval */
} ChanStat;

typedef struct {
    const char *block; /* interned */
    guint64 addr;
    gint64 t_us;
} Pending;

struct MpRelayMetrics {
    MpRelayMetricsConfig cfg;
    gint64 start_us;
    MpAnalysis *analysis;
    GPtrArray *channels; /* ChanStat*, by index (NULL gaps allowed) */

    /* post-copy requests */
    GHashTable *pending; /* Pending* -> same */
    GQueue pending_order;
    guint64 requests, matched, dropped;
    GArray *latencies; /* gint64 us */

    /* return path */
    gint64 shut_us;
    gint64 shut_value;
    gint64 main_last_us; /* last byte of the main channel to the dst */
    gint64 last_us;      /* last byte of any channel */

    /* Where the downtime starts on the wire (downtime()) */
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
    const char *phase_announced;
    guint rounds_announced;
    gboolean progress_shown;

    gboolean finished;
    gint64 end_us;
    char *outcome;
    MpRelayOutcome outcome_kind;
};

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
    ChanStat *c = p;
    if (!c)
        return;
    g_free(c->peer);
    for (int d = 0; d < MP_DIR__MAX; d++) {
        g_free(c->end[d]);
        g_free(c->truncated[d]);
        g_free(c->partial_why[d]);
        g_array_free(c->series[d], TRUE);
    }
    g_free(c);
}

MpRelayMetrics *
mp_relay_metrics_new(const MpRelayMetricsConfig *cfg, gint64 start_us)
{
    MpRelayMetrics *m = g_new0(MpRelayMetrics, 1);

    m->cfg = *cfg;
    m->start_us = start_us;
    m->analysis = mp_analysis_new();
    mp_analysis_set_time(m->analysis, 0);
    m->channels = g_ptr_array_new_with_free_func(chan_free);
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
    if (m->cfg.lines) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "event",
                               json_object_new_string("session-start"));
        json_object_object_add(o, "session",
                               json_object_new_int(m->cfg.session));
        g_autoptr(GDateTime) t = g_date_time_new_from_unix_utc(
            m->cfg.start_wall_us / G_USEC_PER_SEC);
        g_autofree char *iso = t ? g_date_time_format_iso8601(t) : NULL;
        json_object_object_add(o, "time",
                               iso ? json_object_new_string(iso) : NULL);
        mp_out_lines_write(m->cfg.lines, json_object_to_json_string_ext(
                                             o, JSON_C_TO_STRING_PLAIN));
        json_object_put(o);
    }
    return m;
}

void
mp_relay_metrics_free(MpRelayMetrics *m)
{
    if (!m)
        return;
    mp_analysis_free(m->analysis);
    g_ptr_array_free(m->channels, TRUE);
    g_queue_clear(&m->pending_order);
    g_hash_table_destroy(m->pending);
    g_array_free(m->latencies, TRUE);
    g_array_free(m->pings, TRUE);
    g_free(m->outcome);
    g_free(m);
}

MpAnalysis *
mp_relay_metrics_analysis(MpRelayMetrics *m)
{
    return m->analysis;
}

static gint64
rel(const MpRelayMetrics *m, gint64 now_us)
{
    return now_us - m->start_us;
}

static double
ms(gint64 us)
{
    return us / 1000.0;
}

/* Milliseconds with microsecond digits, printed as such (json-c would
 * print 17.248 as 17.248000000000001). */
static json_object *
jms(gint64 us)
{
    char text[32];
    if (us < 0)
        return NULL;
    g_snprintf(text, sizeof(text), "%.3f", ms(us));
    return json_object_new_double_s(ms(us), text);
}

static json_object *
jint(gint64 v)
{
    return json_object_new_int64(v);
}

static void
emit(MpRelayMetrics *m, const char *event, json_object *o, gint64 now_us)
{
    if (!m->cfg.lines) {
        json_object_put(o);
        return;
    }
    json_object *line = json_object_new_object();
    json_object_object_add(line, "event", json_object_new_string(event));
    json_object_object_add(line, "session",
                           json_object_new_int(m->cfg.session));
    json_object_object_add(line, "t_ms", jms(rel(m, now_us)));
    json_object_object_foreach(o, k, v)
        json_object_object_add(line, k, json_object_get(v));
    json_object_put(o);
    mp_out_lines_write(m->cfg.lines, json_object_to_json_string_ext(
                                         line, JSON_C_TO_STRING_PLAIN));
    json_object_put(line);
}

static ChanStat *
chan(MpRelayMetrics *m, guint index)
{
    while (m->channels->len <= index)
        g_ptr_array_add(m->channels, NULL);
    ChanStat *c = g_ptr_array_index(m->channels, index);
    if (!c) {
        c = g_new0(ChanStat, 1);
        c->index = index;
        c->open_us = c->kind_us = -1;
        for (int d = 0; d < MP_DIR__MAX; d++) {
            c->last_us[d] = c->end_us[d] = -1;
            c->series[d] = g_array_new(FALSE, TRUE, sizeof(guint64));
        }
        g_ptr_array_index(m->channels, index) = c;
    }
    return c;
}

void
mp_relay_metrics_channel_open(MpRelayMetrics *m, guint channel,
                              const char *peer, gint64 now_us)
{
    ChanStat *c = chan(m, channel);
    g_free(c->peer);
    c->peer = g_strdup(peer);
    c->open_us = rel(m, now_us);
    json_object *o = json_object_new_object();
    json_object_object_add(o, "channel", json_object_new_int(channel));
    json_object_object_add(o, "peer",
                           peer ? json_object_new_string(peer) : NULL);
    emit(m, "channel-open", o, now_us);
}

void
mp_relay_metrics_channel_kind(MpRelayMetrics *m, guint channel, MpChanKind kind,
                              gint64 now_us)
{
    ChanStat *c = chan(m, channel);
    c->kind = kind;
    c->kind_us = rel(m, now_us);
    json_object *o = json_object_new_object();
    json_object_object_add(o, "channel", json_object_new_int(channel));
    json_object_object_add(o, "kind",
                           json_object_new_string(mp_chan_kind_name(kind)));
    emit(m, "channel-kind", o, now_us);
}

void
mp_relay_metrics_bytes(MpRelayMetrics *m, guint channel, MpDir dir, gsize n,
                       gint64 now_us)
{
    ChanStat *c = chan(m, channel);
    gint64 t = rel(m, now_us);
    guint64 bucket = t > 0 ? (guint64)t / MP_RELAY_METRICS_INTERVAL_US : 0;

    c->bytes[dir] += n;
    c->last_us[dir] = t;
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
        GArray *s = c->series[dir];
        if (s->len <= bucket)
            g_array_set_size(s, bucket + 1);
        g_array_index(s, guint64, bucket) += n;
    }
}

static void
pending_add(MpRelayMetrics *m, const char *block, guint64 addr, gint64 t)
{
    Pending key = {g_intern_string(block), addr, t};

    m->requests++;
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
pending_match(MpRelayMetrics *m, const char *block, guint64 addr, gint64 t)
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
ping_seen(const MpRelayMetrics *m, guint32 value)
{
    for (guint i = 0; i < m->pings->len; i++)
        if (g_array_index(m->pings, guint32, i) == value)
            return TRUE;
    return FALSE;
}

void
mp_relay_metrics_record(MpRelayMetrics *m, guint channel, MpDir dir,
                        const MpRecord *rec, gint64 now_us)
{
    gint64 t = rel(m, now_us);

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
mp_relay_metrics_partial(MpRelayMetrics *m, guint channel, MpDir dir,
                         guint64 offset, const char *why, gint64 now_us)
{
    ChanStat *c = chan(m, channel);
    if (c->partial[dir])
        return;
    c->partial[dir] = TRUE;
    c->partial_offset[dir] = offset;
    c->partial_why[dir] = g_strdup(why);
    json_object *o = json_object_new_object();
    json_object_object_add(o, "channel", json_object_new_int(channel));
    json_object_object_add(o, "direction",
                           json_object_new_string(mp_dir_name(dir)));
    json_object_object_add(o, "offset", jint(offset));
    json_object_object_add(o, "why", json_object_new_string(why));
    emit(m, "partial", o, now_us);
}

void
mp_relay_metrics_channel_end(MpRelayMetrics *m, guint channel, MpDir dir,
                             const char *how, const char *truncated,
                             gint64 now_us)
{
    ChanStat *c = chan(m, channel);
    if (c->end[dir])
        return;
    c->end[dir] = g_strdup(how);
    c->end_us[dir] = rel(m, now_us);
    c->truncated[dir] = g_strdup(truncated);
    json_object *o = json_object_new_object();
    json_object_object_add(o, "channel", json_object_new_int(channel));
    json_object_object_add(o, "direction",
                           json_object_new_string(mp_dir_name(dir)));
    json_object_object_add(o, "how", json_object_new_string(how));
    if (truncated)
        json_object_object_add(o, "truncated",
                               json_object_new_string(truncated));
    emit(m, "channel-end", o, now_us);
}

/* ---- derived numbers ---- */

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

typedef struct {
    gint64 stop_us, resume_us;
    const char *end_marker;
    gint64 answer_us; /* the destination's answer, or -1 */
    const char *answer;
} Downtime;

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
static Downtime
downtime(const MpRelayMetrics *m)
{
    MpAnalysisProgress pr;
    Downtime d = {-1, -1, NULL, -1, NULL};
    const ChanStat *mc = NULL;

    mp_analysis_progress(m->analysis, &pr);
    if (pr.stop_us < 0)
        return d;
    d.stop_us = pr.stop_us;
    gint64 before = m->multifd ? m->mfd_stop_us : m->precopy_end_us;
    if (before >= 0 && before < d.stop_us)
        d.stop_us = before;
    for (guint i = 0; i < m->channels->len && !mc; i++) {
        const ChanStat *c = g_ptr_array_index(m->channels, i);
        if (c && c->kind == MP_CHAN_MAIN)
            mc = c;
    }

    if (pr.postcopy_us >= 0) {
        d.resume_us = pr.postcopy_us;
        d.end_marker = "PACKAGED blob sent (post-copy starts)";
    } else if (m->shut_us >= d.stop_us) {
        d.resume_us = m->shut_us;
        d.end_marker = "return-path SHUT";
    } else if (m->main_last_us >= d.stop_us) {
        d.resume_us = m->main_last_us;
        d.end_marker = "last byte of the main channel";
    } else {
        d.stop_us = -1;
        return d;
    }

    if (pr.postcopy_us >= 0 && m->package_pong_us >= pr.postcopy_us) {
        d.answer_us = m->package_pong_us;
        d.answer = "PONG to the PING in the PACKAGED blob";
    } else if (pr.postcopy_us < 0 && m->shut_us >= d.stop_us) {
        d.answer_us = m->shut_us;
        d.answer = "return-path SHUT";
    } else if (pr.postcopy_us < 0 && mc
               && mc->end_us[MP_DIR_TO_SRC] >= d.stop_us
               && mc->end[MP_DIR_TO_SRC]
               && strcmp(mc->end[MP_DIR_TO_SRC], "aborted") != 0) {
        d.answer_us = mc->end_us[MP_DIR_TO_SRC];
        d.answer = "destination closed the main channel";
    }
    return d;
}

static guint64
total_bytes(const MpRelayMetrics *m)
{
    guint64 t = 0;
    for (guint i = 0; i < m->channels->len; i++) {
        const ChanStat *c = g_ptr_array_index(m->channels, i);
        if (c)
            t += c->bytes[MP_DIR_TO_DST] + c->bytes[MP_DIR_TO_SRC];
    }
    return t;
}

static char *
human_rate(double bytes_per_s)
{
    if (bytes_per_s >= 1e9)
        return g_strdup_printf("%.2f GB/s", bytes_per_s / 1e9);
    if (bytes_per_s >= 1e6)
        return g_strdup_printf("%.0f MB/s", bytes_per_s / 1e6);
    return g_strdup_printf("%.0f kB/s", bytes_per_s / 1e3);
}

typedef struct {
    double rate;       /* bytes/s over the last second */
    double pages_rate; /* pages/s */
    double dirty_rate; /* pages/s re-sent in the current round */
    double ram_sent;   /* share of RAM pages sent at least once */
    double eta_s;      /* -1: unknown */
} Live;

static Live
live_numbers(const MpRelayMetrics *m, const MpAnalysisProgress *pr,
             gint64 now_rel)
{
    Live l = {0, 0, 0, 0, -1};
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
announce_rounds(MpRelayMetrics *m, guint upto, gint64 now_us)
{
    while (m->rounds_announced < upto) {
        json_object *r =
            mp_analysis_round_json(m->analysis, ++m->rounds_announced);
        if (!r)
            break;
        if (m->cfg.log) {
            json_object *v;
            gint64 pages = 0, dirty = 0, bytes = 0, s = 0, e = 0;
            if (json_object_object_get_ex(r, "pages", &v))
                pages = json_object_get_int64(v);
            if (json_object_object_get_ex(r, "dirty_pages", &v))
                dirty = json_object_get_int64(v);
            if (json_object_object_get_ex(r, "bytes", &v))
                bytes = json_object_get_int64(v);
            if (json_object_object_get_ex(r, "start_us", &v))
                s = json_object_get_int64(v);
            if (json_object_object_get_ex(r, "end_us", &v))
                e = json_object_get_int64(v);
            g_message("session %u: round %u: %" G_GINT64_FORMAT
                      " pages (%" G_GINT64_FORMAT " dirty), %.1f MiB in "
                      "%.0f ms",
                      m->cfg.session, m->rounds_announced, pages, dirty,
                      bytes / 1048576.0, (e - s) / 1000.0);
        }
        emit(m, "round", r, now_us);
    }
}

static void
announce_phase(MpRelayMetrics *m, const MpAnalysisProgress *pr, gint64 now_us)
{
    if (m->phase_announced && strcmp(m->phase_announced, pr->phase) == 0)
        return;
    m->phase_announced = pr->phase;
    if (m->cfg.log)
        g_message("session %u: phase %s at %.1f s", m->cfg.session, pr->phase,
                  rel(m, now_us) / 1e6);
    json_object *o = json_object_new_object();
    json_object_object_add(o, "phase", json_object_new_string(pr->phase));
    emit(m, "phase", o, now_us);
}

void
mp_relay_metrics_tick(MpRelayMetrics *m, gint64 now_us)
{
    MpAnalysisProgress pr;
    gint64 t = rel(m, now_us);

    if (m->finished)
        return;
    mp_analysis_set_time(m->analysis, t);
    mp_analysis_progress(m->analysis, &pr);
    m->rate_ring[m->ring_pos] = total_bytes(m);
    m->pages_ring[m->ring_pos] = pr.pages;
    m->time_ring[m->ring_pos] = now_us;
    m->ring_pos = (m->ring_pos + 1) % RATE_WINDOW;
    m->ring_fill = MIN(m->ring_fill + 1, RATE_WINDOW);

    announce_phase(m, &pr, now_us);
    if (pr.rounds > 1)
        announce_rounds(m, pr.rounds - 1, now_us);
    Live l = live_numbers(m, &pr, t);

    if (m->cfg.lines) {
        json_object *o = json_object_new_object();
        json_object *chs = json_object_new_array();
        gint64 dt = MAX(now_us - m->last_tick_us, 1);
        for (guint i = 0; i < m->channels->len; i++) {
            ChanStat *c = g_ptr_array_index(m->channels, i);
            if (!c)
                continue;
            json_object *co = json_object_new_object();
            json_object_object_add(co, "channel", json_object_new_int(i));
            json_object_object_add(
                co, "kind", json_object_new_string(mp_chan_kind_name(c->kind)));
            for (int d = 0; d < MP_DIR__MAX; d++) {
                guint64 n = c->bytes[d] - c->tick_bytes[d];
                g_autofree char *k =
                    g_strdup_printf("%s_bytes", d ? "to_src" : "to_dst");
                g_autofree char *kr =
                    g_strdup_printf("%s_bps", d ? "to_src" : "to_dst");
                json_object_object_add(co, k, jint(n));
                json_object_object_add(co, kr,
                                       jint(n * 8 * G_USEC_PER_SEC / dt));
            }
            json_object_array_add(chs, co);
        }
        json_object_object_add(o, "interval_ms", jms(dt));
        json_object_object_add(o, "channels", chs);
        json_object_object_add(o, "phase", json_object_new_string(pr.phase));
        json_object_object_add(o, "round", json_object_new_int(pr.rounds));
        json_object_object_add(o, "pages", jint(pr.pages));
        json_object_object_add(o, "ram_sent",
                               json_object_new_double(l.ram_sent));
        json_object_object_add(o, "rate_bps", jint((gint64)(l.rate * 8)));
        json_object_object_add(o, "dirty_pages_per_s",
                               jint((gint64)l.dirty_rate));
        json_object_object_add(
            o, "eta_s", l.eta_s >= 0 ? json_object_new_double(l.eta_s) : NULL);
        json_object_object_add(o, "postcopy_requests",
                               jint(pr.postcopy_requests));
        emit(m, "sample", o, now_us);
    }
    for (guint i = 0; i < m->channels->len; i++) {
        ChanStat *c = g_ptr_array_index(m->channels, i);
        if (c)
            memcpy(c->tick_bytes, c->bytes, sizeof(c->bytes));
    }
    m->last_tick_us = now_us;

    if (m->cfg.progress) {
        g_autofree char *rate = human_rate(l.rate);
        g_autofree char *eta =
            l.eta_s >= 0 ? g_strdup_printf("%.1f s", l.eta_s) : g_strdup("-");
        g_autofree char *round =
            pr.rounds ? g_strdup_printf("round %u ", pr.rounds) : g_strdup("");
        fprintf(stderr,
                "\r\033[Ksession %u: %s%s | RAM %3.0f%% sent | %s | "
                "dirty %.0f pages/s | ETA %s",
                m->cfg.session, round, pr.phase, l.ram_sent * 100, rate,
                l.dirty_rate, eta);
        fflush(stderr);
        m->progress_shown = TRUE;
    }
}

static gboolean
all_clean(const MpRelayMetrics *m)
{
    for (guint i = 0; i < m->channels->len; i++) {
        const ChanStat *c = g_ptr_array_index(m->channels, i);
        for (int d = 0; c && d < MP_DIR__MAX; d++)
            if (c->end[d] && strcmp(c->end[d], "fin") != 0)
                return FALSE;
    }
    return TRUE;
}

void
mp_relay_metrics_finish(MpRelayMetrics *m, gint64 now_us, const char *failure)
{
    if (m->finished)
        return;
    m->finished = TRUE;
    m->end_us = rel(m, now_us);
    mp_analysis_set_time(m->analysis, m->last_us >= 0 ? m->last_us : 0);
    mp_analysis_finish(m->analysis, total_bytes(m));

    MpAnalysisProgress pr;
    mp_analysis_progress(m->analysis, &pr);
    gboolean tls = FALSE;
    for (guint i = 0; i < m->channels->len; i++) {
        const ChanStat *c = g_ptr_array_index(m->channels, i);
        tls |= c && c->kind == MP_CHAN_TLS;
    }
    m->outcome_kind = MP_RELAY_OUTCOME_FAILED;
    if (failure)
        m->outcome = g_strdup(failure);
    else if (tls && all_clean(m)) {
        /* encrypted: only how the connections ended is known */
        m->outcome = g_strdup("ended cleanly (TLS, not parsed)");
        m->outcome_kind = MP_RELAY_OUTCOME_TLS_CLEAN;
    } else if (tls)
        m->outcome = g_strdup("failed: a connection broke");
    else if (m->shut_value == 0
             || (m->shut_value < 0 && pr.stop_us >= 0 && all_clean(m))) {
        m->outcome = g_strdup("completed");
        m->outcome_kind = MP_RELAY_OUTCOME_COMPLETED;
    } else if (m->shut_value > 0)
        m->outcome = g_strdup("failed: the destination reported an error");
    else if (pr.stop_us < 0)
        m->outcome = g_strdup("failed: ended before the source stopped");
    else
        m->outcome = g_strdup("failed: a connection broke");

    if (m->progress_shown) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
    }
    announce_phase(m, &pr, now_us);
    announce_rounds(m, pr.rounds, now_us);
    json_object *o = json_object_new_object();
    json_object_object_add(o, "outcome", json_object_new_string(m->outcome));
    json_object *rep = mp_relay_metrics_report(m), *v;
    const char *keys[] = {"total_ms", "downtime_ms", "postcopy"};
    for (guint i = 0; i < G_N_ELEMENTS(keys); i++)
        if (json_object_object_get_ex(rep, keys[i], &v))
            json_object_object_add(o, keys[i], json_object_get(v));
    json_object *ram;
    if (json_object_object_get_ex(rep, "ram", &ram)
        && json_object_object_get_ex(ram, "pages", &v))
        json_object_object_add(o, "ram_pages", json_object_get(v));
    json_object_put(rep);
    emit(m, "session-end", o, now_us);
}

static json_object *
series_json(const GArray *s)
{
    json_object *a = json_object_new_array_ext(s->len);
    for (guint i = 0; i < s->len; i++)
        json_object_array_add(a, jint(g_array_index(s, guint64, i)));
    return a;
}

static json_object *
channel_json(const ChanStat *c)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "channel", json_object_new_int(c->index));
    json_object_object_add(o, "kind",
                           json_object_new_string(mp_chan_kind_name(c->kind)));
    json_object_object_add(o, "peer",
                           c->peer ? json_object_new_string(c->peer) : NULL);
    json_object_object_add(o, "open_ms", jms(c->open_us));
    gboolean partial = FALSE;
    for (int d = 0; d < MP_DIR__MAX; d++) {
        json_object *dj = json_object_new_object();
        json_object_object_add(dj, "bytes", jint(c->bytes[d]));
        json_object_object_add(
            dj, "end", c->end[d] ? json_object_new_string(c->end[d]) : NULL);
        json_object_object_add(dj, "end_ms", jms(c->end_us[d]));
        json_object_object_add(dj, "last_byte_ms", jms(c->last_us[d]));
        json_object_object_add(dj, "partial",
                               json_object_new_boolean(c->partial[d]));
        if (c->partial[d]) {
            partial = TRUE;
            json_object_object_add(dj, "partial_offset",
                                   jint(c->partial_offset[d]));
            json_object_object_add(dj, "partial_reason",
                                   json_object_new_string(c->partial_why[d]));
        }
        if (c->truncated[d])
            json_object_object_add(dj, "truncated",
                                   json_object_new_string(c->truncated[d]));
        json_object *series = json_object_new_object();
        json_object_object_add(series, "interval_ms",
                               jint(MP_RELAY_METRICS_INTERVAL_US / 1000));
        json_object_object_add(series, "bytes", series_json(c->series[d]));
        json_object_object_add(dj, "series", series);
        json_object_object_add(o, d ? "to_src" : "to_dst", dj);
    }
    json_object_object_add(o, "partial", json_object_new_boolean(partial));
    return o;
}

json_object *
mp_relay_metrics_report(MpRelayMetrics *m)
{
    json_object *doc = mp_analysis_to_json(m->analysis);
    MpAnalysisProgress pr;
    Downtime dt = downtime(m);

    mp_analysis_progress(m->analysis, &pr);
    json_object_object_add(doc, "session", json_object_new_int(m->cfg.session));
    json_object_object_add(doc, "outcome",
                           m->outcome ? json_object_new_string(m->outcome)
                                      : json_object_new_string("running"));
    g_autoptr(GDateTime) start =
        g_date_time_new_from_unix_utc(m->cfg.start_wall_us / G_USEC_PER_SEC);
    g_autofree char *iso = start ? g_date_time_format_iso8601(start) : NULL;
    json_object_object_add(doc, "start_time",
                           iso ? json_object_new_string(iso) : NULL);
    json_object_object_add(doc, "total_ms", jms(MAX(m->last_us, 0)));
    json_object_object_add(doc, "downtime_ms",
                           dt.stop_us >= 0 ? jms(dt.resume_us - dt.stop_us)
                                           : NULL);
    json_object *dto = json_object_new_object();
    json_object_object_add(dto, "stop_ms", jms(dt.stop_us));
    json_object_object_add(dto, "resume_ms",
                           dt.stop_us >= 0 ? jms(dt.resume_us) : NULL);
    json_object_object_add(dto, "end_marker",
                           dt.end_marker ? json_object_new_string(dt.end_marker)
                                         : NULL);
    json_object_object_add(dto, "first_record_ms",
                           dt.stop_us >= 0 ? jms(pr.stop_us) : NULL);
    json_object_object_add(dto, "until_answer_ms",
                           dt.answer_us >= 0 ? jms(dt.answer_us - dt.stop_us)
                                             : NULL);
    json_object_object_add(
        dto, "answer", dt.answer ? json_object_new_string(dt.answer) : NULL);
    json_object_object_add(doc, "downtime", dto);

    /* phases with their spans, from the analysis' phase start times */
    json_object *phases = json_object_new_array(), *starts;
    if (json_object_object_get_ex(doc, "phase_start_us", &starts)) {
        const char *order[] = {"setup", "precopy", "stop-copy", "postcopy"};
        gint64 st[4];
        for (int i = 0; i < 4; i++) {
            json_object *v;
            st[i] = json_object_object_get_ex(starts, order[i], &v) && v
                        ? json_object_get_int64(v)
                        : -1;
        }
        for (int i = 0; i < 4; i++) {
            if (st[i] < 0)
                continue;
            gint64 end = MAX(m->last_us, st[i]);
            for (int k = i + 1; k < 4; k++)
                if (st[k] >= 0) {
                    end = st[k];
                    break;
                }
            json_object *p = json_object_new_object();
            json_object_object_add(p, "phase",
                                   json_object_new_string(order[i]));
            json_object_object_add(p, "start_ms", jms(st[i]));
            json_object_object_add(p, "end_ms", jms(end));
            json_object_array_add(phases, p);
        }
    }
    json_object_object_add(doc, "phases", phases);

    json_object *pc;
    if (!json_object_object_get_ex(doc, "postcopy", &pc)) {
        pc = json_object_new_object();
        json_object_object_add(pc, "requests", jint(pr.postcopy_requests));
        json_object_object_add(doc, "postcopy", pc);
    }
    g_autofree gint64 *sorted =
        g_memdup2(m->latencies->data, m->latencies->len * sizeof(gint64));
    if (sorted)
        qsort(sorted, m->latencies->len, sizeof(gint64), cmp_i64);
    json_object *lat = json_object_new_object();
    guint n = m->latencies->len;
    json_object_object_add(lat, "p50",
                           n ? jint(percentile(sorted, n, 50)) : NULL);
    json_object_object_add(lat, "p99",
                           n ? jint(percentile(sorted, n, 99)) : NULL);
    json_object_object_add(lat, "max", n ? jint(sorted[n - 1]) : NULL);
    json_object_object_add(lat, "count", jint(n));
    json_object_object_add(pc, "latency_us", lat);
    json_object_object_add(pc, "requests_answered", jint(m->matched));
    json_object_object_add(pc, "requests_unanswered",
                           jint(g_hash_table_size(m->pending) + m->dropped));

    json_object *chs = json_object_new_array();
    gboolean partial = FALSE;
    for (guint i = 0; i < m->channels->len; i++) {
        const ChanStat *c = g_ptr_array_index(m->channels, i);
        if (!c)
            continue;
        json_object *cj = channel_json(c), *v;
        if (json_object_object_get_ex(cj, "partial", &v)
            && json_object_get_boolean(v))
            partial = TRUE;
        json_object_array_add(chs, cj);
    }
    json_object_object_add(doc, "channels", chs);
    json_object_object_add(doc, "partial", json_object_new_boolean(partial));
    return doc;
}

char *
mp_relay_metrics_summary(MpRelayMetrics *m)
{
    json_object *rep = mp_relay_metrics_report(m), *v, *pages;
    GString *s = g_string_new(NULL);
    MpAnalysisProgress pr;
    Downtime dt = downtime(m);

    mp_analysis_progress(m->analysis, &pr);
    g_string_append_printf(s, "session %u %s: %.1f s", m->cfg.session,
                           m->outcome ? m->outcome : "running",
                           MAX(m->last_us, 0) / 1e6);
    if (dt.stop_us >= 0)
        g_string_append_printf(s, ", downtime %.0f ms on the wire",
                               ms(dt.resume_us - dt.stop_us));
    if (json_object_object_get_ex(rep, "ram", &v)
        && json_object_object_get_ex(v, "pages", &pages)) {
        g_string_append(s, ", pages");
        json_object_object_foreach(pages, k, val) g_string_append_printf(
            s, " %s %" G_GINT64_FORMAT, k, json_object_get_int64(val));
    }
    g_string_append_printf(s, ", %u rounds", pr.rounds);
    if (pr.postcopy_requests)
        g_string_append_printf(s, ", %" G_GUINT64_FORMAT " page requests",
                               pr.postcopy_requests);
    g_string_append_printf(s, ", %.1f MiB", total_bytes(m) / 1048576.0);
    json_object_put(rep);
    return g_string_free(s, FALSE);
}

MpRelayOutcome
mp_relay_metrics_outcome(const MpRelayMetrics *m)
{
    return m->finished ? m->outcome_kind : MP_RELAY_OUTCOME_RUNNING;
}
