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

typedef struct {
    guint index;
    int fd; /* -1: not connected */
    MpChanKind kind;
    gint64 open_rec; /* recorded open time; G_MININT64: at its first bytes */
    gboolean registered, src_ended, wr_shut, dst_closed;
    GQueue pending; /* GBytes, in order */
    gsize head_off; /* bytes of the head already written */
    guint64 sent;
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
        g_queue_init(&c->pending);
        g_ptr_array_add(r->chans, c);
    }
    return g_ptr_array_index(r->chans, index);
}

static void
chan_free(gpointer p)
{
    Chan *c = p;
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
        /* answered by the pages still to come in the capture (see
         * docs/replay.md); counted, and timed by the metrics */
        r->page_requests++;
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
    return TRUE;
}

static void
dst_closed(Replay *r, Chan *c, int err)
{
    gint64 now = now_us();
    c->dst_closed = TRUE;
    mp_session_end(r->pipes, c->index, MP_DIR_TO_SRC,
                   err ? MP_END_RESET : MP_END_FIN, now);
    /* bytes it did not take: refused.  A channel closed with nothing
     * waiting may be a destination that is done (QEMU 10.0 closes its
     * preempt channel before the source does, and sends no SHUT after a
     * post-copy with it): judged at the end (finish()) */
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

static void
write_chan(Replay *r, Chan *c, gint64 *ready_at)
{
    while (!g_queue_is_empty(&c->pending)) {
        GBytes *b = g_queue_peek_head(&c->pending);
        gsize blen;
        const guint8 *data = g_bytes_get_data(b, &blen);
        gsize n = MIN(blen - c->head_off, WRITE_MAX);
        guint64 may = allowance(r, now_us(), ready_at);
        if (!may)
            return;
        n = MIN(n, may);
        ssize_t w = send(c->fd, data + c->head_off, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (w < 0) {
            dst_closed(r, c, errno);
            return;
        }
        mp_session_feed(r->pipes, c->index, MP_DIR_TO_DST, data + c->head_off,
                        w, now_us());
        c->head_off += w;
        c->sent += w;
        r->last_write = now_us();
        r->sent += w;
        r->queued -= w;
        if (c->head_off == blen) {
            g_bytes_unref(g_queue_pop_head(&c->pending));
            c->head_off = 0;
        }
    }
    if (c->src_ended && !c->wr_shut && chan_kind(r, c) != MP_CHAN_MAIN) {
        /* the source closed it here (the main channel waits for the
         * destination's answer first) */
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
        if (!g_queue_is_empty(&c->pending) && ready_at == G_MAXINT64)
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
    g_queue_push_tail(&c->pending, g_bytes_new(buf, len));
    r->queued += len;
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
    c->src_ended = TRUE;
    service(r, 0);
}

/* Every byte out, then the destination's verdict. */
static void
finish(Replay *r)
{
    gint64 stalled_since = now_us();
    guint64 sent_then = r->sent;

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
        : r->rp_expected
            ? "the destination took the whole stream and closed, with no "
              "SHUT on its return path to confirm it"
            : "the destination took the whole stream and closed (no return "
              "path in this stream to confirm it)";
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
    mp_session_free(r.pipes);
    mp_metrics_free(r.metrics);
    g_object_unref(r.to);
    return doc;
}
