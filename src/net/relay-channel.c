/* relay-channel.c: one proxied connection (see relay-channel.h).
 *
 * One GSource per channel holds the two sockets' fds; an fd is in the
 * source only while the channel wants an event on it (poll() reports HUP
 * and ERR even with no events asked, so keeping an fd we cannot serve
 * would spin).  Each dispatch reads at most once and writes at most once
 * per direction: a busy channel cannot starve the others on the loop.
 */
#include "config.h"
#include <errno.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <linux/sockios.h>
#include "address.h"
#include "big-buf.h"
#include "rate-pacer.h"
#include "relay-channel.h"
#include "tcp-info.h"

/* Compact when the unwritten bytes start past half the buffer. */
#define COMPACT_AT (MP_RELAY_BUFFER / 2)

/* Filtered: the most one read takes.  Only a queue larger than the
 * buffer (the post-copy read-ahead) reads this much at once; the larger
 * the reads, the sooner the source's backlog is in the queue, where a
 * requested page can jump it (docs/benchmarks.md: smaller reads left
 * requested pages waiting in the source's socket). */
#define FILTERED_READ_MAX (4u << 20)
/* ... except into migproxy source's hop, where the tunnel encoder reads
 * the lane's bytes in the same main loop: a 4 MiB read and its parsing
 * (30-40 ms on this host, page faults of the growing queue included) held
 * the loop while the hop's 16 KiB (its size then) moved once per
 * turn, and the link carried 1 MB/s for the 2 s of read-ahead after the
 * switch to post-copy (docs/benchmarks.md, "The read-ahead starved the
 * tunnel"). */
#define HOP_READ_MAX (128u << 10)

/* A filtered queue allowed this deep (the post-copy read-ahead) reads
 * only into memory that big-buf's helper has faulted in, which it does
 * this far past the next read: the loop thread, which also serves page
 * requests, spent most of post-copy's first second clearing fresh pages
 * (docs/benchmarks.md, "Fresh memory"). */
#define PREP_AHEAD (32u << 20)

/* Read only with room for this much (or the whole bound, if smaller):
 * a nearly full queue would otherwise be topped up a few bytes at a time,
 * a system call and a loop iteration for each. */
#define READ_MIN (64u << 10)

typedef struct {
    MpBigBuf mem;     /* allocated on first read: MP_RELAY_BUFFER; more
                       * when filtered (the post-copy read-ahead) */
    guint64 moved;    /* bytes moved down to make room */
    gsize head, tail; /* [head, tail) waits to be written */
    gboolean eof;     /* the sender closed (FIN read) */
    gboolean shut;    /* the FIN was passed on */
    gboolean ended;   /* `end` hook called */
    gboolean filtered;
    gsize read_gap;       /* filtered: read this far past tail */
    const guint8 *reading; /* filtered: the bytes the hook has, in buf */
    gsize reading_len;
    gsize limit;          /* stop reading with this much queued */
    gsize early;          /* filtered: fault this much in before the
                           * limit is raised (post-copy may come) */
    gsize read_max;       /* filtered: the most one read takes */
    MpRatePacer *pacer;   /* borrowed, or NULL */
    gsize write_cap;      /* bytes per write, 0: no cap */
    guint64 bytes, sent;  /* read; queued (written + still queued) */
    GQueue edits;         /* Edit*, by `at` (mp_relay_channel_queue_edit) */
    /* mp_relay_channel_drain_sample(): since the last sample */
    guint64 wire;         /* bytes handed to the kernel, ever */
    guint64 acked;        /* of those, taken by the path at the last sample */
    gboolean pushed_back; /* the kernel took less than offered */
    gboolean went_idle;   /* the queue ran dry */
    guint64 rwnd_us;      /* receiver-limited time at the last sample */
    gint64 sampled_us;    /* when */
} Pump;

/* Where the queue goes out differently: at queue offset `at`, `len` bytes
 * go out instead of the `remove` queued ones.  The queued bytes never
 * move, so an edit costs its own bytes however long the queue. */
typedef struct {
    guint64 at;
    gsize remove;
    gsize len, done;
    gpointer tag;
    guint8 bytes[];
} Edit;

/* Paced writes wait for at least this many tokens (or the whole rest). */
#define PACE_MIN 4096

typedef struct {
    GSource base;
    MpRelayChannel *ch;
} ChanSource;

struct MpRelayChannel {
    GSocket *down, *up; /* the source's side, the destination's side */
    guint64 id;
    char *peer;
    MpRelayChannelHooks hooks;
    gpointer user_data;

    GSource *source;
    gpointer down_tag, up_tag;
    GIOCondition down_events, up_events;

    gboolean watching, started, connecting, connected, closed;
    GError *connect_error; /* to report from the next dispatch */
    gint64 connect_deadline;
    guint connect_timeout_ms;
    Pump pump[MP_DIR__MAX]; /* TO_DST: down -> up; TO_SRC: up -> down */
};

static GSocket *
from_sock(MpRelayChannel *ch, MpDir d)
{
    return d == MP_DIR_TO_DST ? ch->down : ch->up;
}

static GSocket *
to_sock(MpRelayChannel *ch, MpDir d)
{
    return d == MP_DIR_TO_DST ? ch->up : ch->down;
}

static gboolean
prepares(const Pump *p)
{
    return p->filtered && p->limit >= PREP_AHEAD && p->mem.data;
}

static void make_room(Pump *p, gsize more);

/* A deep filtered queue: its buffer reaches PREP_AHEAD past the next
 * read, and the helper faults it in up to there.  Before that (pre-copy
 * with post-copy advised) the helper faults in the first `early` bytes,
 * so that the read-ahead after the switch starts in warm memory. */
static void
prep_ahead(MpRelayChannel *ch, Pump *p)
{
    if (p->reading) /* (the hook's bytes stay put) */
        return;
    if (prepares(p)) {
        if (p->tail + p->read_gap + PREP_AHEAD > p->mem.cap)
            make_room(p, p->read_gap + PREP_AHEAD);
        mp_big_buf_prepare(&p->mem, p->tail + p->read_gap + PREP_AHEAD,
                           ch->source);
    } else if (p->early && p->mem.data) {
        if (p->mem.cap < p->early)
            mp_big_buf_resize(&p->mem, p->early);
        mp_big_buf_prepare(&p->mem, p->early, ch->source);
    }
}

static gboolean
can_read(MpRelayChannel *ch, MpDir d)
{
    const Pump *p = &ch->pump[d];
    if (!ch->started || p->eof || p->ended)
        return FALSE;
    if (d == MP_DIR_TO_SRC && !ch->connected)
        return FALSE;
    gsize bound = p->limit ? p->limit : MP_RELAY_BUFFER;
    if (p->tail - p->head + MIN(READ_MIN, bound) > bound)
        return FALSE;
    /* (prep_ahead() asked for this much to be ready, and wakes us) */
    return !prepares(p)
           || mp_big_buf_ready(&p->mem) >= p->tail + p->read_gap + READ_MIN;
}

static gboolean
wants_write(MpRelayChannel *ch, MpDir d)
{
    const Pump *p = &ch->pump[d];
    if (!ch->connected || p->shut)
        return FALSE;
    return p->head < p->tail || p->eof || p->edits.length;
}

/* Queue offset of the next byte to be written. */
static guint64
head_at(const Pump *p)
{
    return p->sent - (p->tail - p->head);
}

static void
set_fd(MpRelayChannel *ch, GSocket *sock, gpointer *tag, GIOCondition *cur,
       GIOCondition want)
{
    if (!sock || want == *cur)
        return;
    if (*tag && !want) {
        g_source_remove_unix_fd(ch->source, *tag);
        *tag = NULL;
    } else if (*tag) {
        g_source_modify_unix_fd(ch->source, *tag, want);
    } else {
        *tag = g_source_add_unix_fd(ch->source, g_socket_get_fd(sock), want);
    }
    *cur = want;
}

/* The pacer lets `d` write now; else when it will, in *at. */
static gboolean
paced_ok(MpRelayChannel *ch, MpDir d, gint64 *at)
{
    Pump *p = &ch->pump[d];
    if (!p->pacer || p->head == p->tail)
        return TRUE;
    gint64 now = g_get_monotonic_time();
    *at = mp_rate_pacer_ready_at(p->pacer, MIN(p->tail - p->head, PACE_MIN),
                                 now);
    return *at <= now;
}

static void
update_watch(MpRelayChannel *ch)
{
    GIOCondition down = 0, up = 0;
    gint64 at = -1;

    if (ch->closed)
        return;
    if (!ch->connecting && !ch->connect_error)
        g_source_set_ready_time(ch->source, -1);
    prep_ahead(ch, &ch->pump[MP_DIR_TO_DST]);
    if (ch->watching || can_read(ch, MP_DIR_TO_DST))
        down |= G_IO_IN;
    if (wants_write(ch, MP_DIR_TO_SRC))
        down |= G_IO_OUT;
    if (ch->connecting)
        up |= G_IO_OUT;
    if (can_read(ch, MP_DIR_TO_SRC))
        up |= G_IO_IN;
    if (wants_write(ch, MP_DIR_TO_DST)) {
        if (paced_ok(ch, MP_DIR_TO_DST, &at))
            up |= G_IO_OUT;
        else
            g_source_set_ready_time(ch->source, at); /* tokens, then OUT */
    }
    set_fd(ch, ch->down, &ch->down_tag, &ch->down_events, down);
    set_fd(ch, ch->up, &ch->up_tag, &ch->up_events, up);
}

static void
end_dir(MpRelayChannel *ch, MpDir d, MpEndReason how)
{
    Pump *p = &ch->pump[d];
    if (p->ended)
        return;
    p->ended = TRUE;
    if (ch->hooks.end)
        ch->hooks.end(ch, d, how, ch->user_data);
}

static void
close_sockets(MpRelayChannel *ch)
{
    if (ch->source) {
        g_source_destroy(ch->source);
        g_source_unref(ch->source);
        ch->source = NULL;
        ch->down_tag = ch->up_tag = NULL;
    }
    if (ch->down) {
        g_socket_close(ch->down, NULL);
        g_clear_object(&ch->down);
    }
    if (ch->up) {
        g_socket_close(ch->up, NULL);
        g_clear_object(&ch->up);
    }
}

void
mp_relay_channel_abort(MpRelayChannel *ch)
{
    if (ch->closed)
        return;
    ch->closed = TRUE;
    ch->connecting = FALSE;
    close_sockets(ch);
    end_dir(ch, MP_DIR_TO_DST, MP_END_ABORTED);
    end_dir(ch, MP_DIR_TO_SRC, MP_END_ABORTED);
    if (ch->hooks.closed)
        ch->hooks.closed(ch, ch->user_data);
}

/* A connection broke while reading `d`: that side reset, everything else
 * is torn down with it. */
static void
broke(MpRelayChannel *ch, MpDir d)
{
    end_dir(ch, d, MP_END_RESET);
    mp_relay_channel_abort(ch);
}

static void
maybe_closed(MpRelayChannel *ch)
{
    if (ch->closed)
        return;
    for (int d = 0; d < MP_DIR__MAX; d++)
        if (!ch->pump[d].shut)
            return;
    ch->closed = TRUE;
    close_sockets(ch);
    if (ch->hooks.closed)
        ch->hooks.closed(ch, ch->user_data);
}

static void
compact(Pump *p)
{
    p->moved += p->tail - p->head;
    memmove(p->mem.data, p->mem.data + p->head, p->tail - p->head);
    p->tail -= p->head;
    p->head = 0;
}

/* Room for `more` bytes after tail. */
static void
make_room(Pump *p, gsize more)
{
    if (!p->mem.data)
        mp_big_buf_resize(&p->mem, MAX(MP_RELAY_BUFFER, more));
    gsize queued = p->tail - p->head;
    if (!queued) {
        p->head = p->tail = 0;
    } else if ((p->head >= COMPACT_AT && p->head >= queued)
               || (!more && p->tail == p->mem.cap)) {
        /* (moves no more than it frees; and never leaves a full end with
         * room at the front, where a readable socket would spin the loop:
         * unfiltered, the queue is at most MP_RELAY_BUFFER) */
        compact(p);
    }
    if (p->tail + more <= p->mem.cap)
        return;
    /* No room at the end.  The queue moves down when that frees a
     * quarter of what it moves (4 bytes moved per byte written out, at
     * worst); else the buffer grows by a quarter (so it is at most 1.6
     * times the queue and the read).  Moving it on every read to
     * free what the link took since the last one was quadratic: a
     * post-copy read-ahead queue of 100 MiB moved whole per read, the
     * loop blocked tens of ms while page requests waited. */
    if (p->head && p->head >= queued / 4)
        compact(p);
    if (p->tail + more > p->mem.cap) {
        /* filtered: a record held back, then released with a chunk */
        mp_big_buf_resize(&p->mem,
                          MAX(p->tail + more, p->mem.cap + p->mem.cap / 4));
    }
}

static void
pump_read(MpRelayChannel *ch, MpDir d)
{
    g_autoptr(GError) err = NULL;
    Pump *p = &ch->pump[d];
    guint8 *into;
    gsize room;

    if (p->filtered) {
        gsize bound = p->limit ? p->limit : MP_RELAY_BUFFER;
        gsize queued = p->tail - p->head;
        /* (at most FILTERED_READ_MAX: the hook's work comes in bounded
         * steps, whatever the --queue) */
        room = queued < bound ? MIN(bound - queued, p->read_max) : 0;
        /* in place: the hook's bytes that go out unchanged are queued
         * where they are; the gap takes what it sends ahead of them */
        make_room(p, p->read_gap + room);
        if (prepares(p)) {
            gsize ready = mp_big_buf_ready(&p->mem);
            gsize at = p->tail + p->read_gap;
            room = ready > at ? MIN(room, ready - at) : 0;
        }
        into = p->mem.data + p->tail + p->read_gap;
    } else {
        make_room(p, 0);
        into = p->mem.data + p->tail;
        room = MP_RELAY_BUFFER - p->tail;
    }
    if (!room)
        return;
    gssize n = g_socket_receive_with_blocking(from_sock(ch, d), (char *)into,
                                              room, FALSE, NULL, &err);
    if (n > 0) {
        /* The hook sees the bytes before they go anywhere: unfiltered,
         * they are forwarded verbatim; filtered, the hook sends what is
         * to go out. */
        p->bytes += n;
        if (!p->filtered) {
            p->tail += n;
            p->sent += n;
        }
        if (p->filtered) {
            p->reading = into;
            p->reading_len = n;
        }
        if (ch->hooks.data)
            ch->hooks.data(ch, d, into, n, ch->user_data);
        p->reading = NULL;
    } else if (n == 0) {
        p->eof = TRUE;
        end_dir(ch, d, MP_END_FIN);
    } else if (!g_error_matches(err, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK)) {
        g_debug("channel %" G_GUINT64_FORMAT " %s: read: %s", ch->id,
                mp_dir_name(d), err->message);
        broke(ch, d);
    }
}

/* Writes at most `len` bytes from `buf`, within the write cap and the
 * pacer.  @return bytes written, 0 if none now, -1 if the connection was
 * torn down. */
static gssize
write_some(MpRelayChannel *ch, MpDir d, const guint8 *buf, gsize len)
{
    g_autoptr(GError) err = NULL;
    Pump *p = &ch->pump[d];

    if (p->write_cap)
        len = MIN(len, p->write_cap);
    if (p->pacer) {
        gsize allow = mp_rate_pacer_allowance(p->pacer, g_get_monotonic_time());
        if (allow < MIN(len, PACE_MIN))
            return 0; /* update_watch() sets the time to come back */
        len = MIN(len, allow);
    }
    gssize n = g_socket_send_with_blocking(to_sock(ch, d), (const char *)buf,
                                           len, FALSE, NULL, &err);
    if (n > 0) {
        if (p->pacer)
            mp_rate_pacer_spend(p->pacer, n);
        p->wire += n;
        if ((gsize)n < len)
            p->pushed_back = TRUE;
        return n;
    }
    if (g_error_matches(err, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK)) {
        p->pushed_back = TRUE;
        return 0;
    }
    /* the receiver is gone: so is the connection */
    g_debug("channel %" G_GUINT64_FORMAT " %s: write: %s", ch->id,
            mp_dir_name(d), err->message);
    mp_relay_channel_abort(ch);
    return -1;
}

static void
pump_write(MpRelayChannel *ch, MpDir d)
{
    Pump *p = &ch->pump[d];
    Edit *e = g_queue_peek_head(&p->edits);

    if (e && e->at == head_at(p)) {
        /* an edit's turn: its bytes, then past what it replaces */
        if (e->done < e->len) {
            gssize n = write_some(ch, d, e->bytes + e->done, e->len - e->done);
            if (n < 0)
                return;
            e->done += n;
        }
        if (e->done == e->len) {
            gpointer tag = e->tag;
            p->head += e->remove;
            g_free(g_queue_pop_head(&p->edits));
            if (tag && ch->hooks.edit_written)
                ch->hooks.edit_written(ch, d, tag, ch->user_data);
        }
    } else if (p->head < p->tail) {
        gsize len = p->tail - p->head;
        if (e)
            len = MIN(len, e->at - head_at(p));
        gssize n = write_some(ch, d, p->mem.data + p->head, len);
        if (n < 0)
            return;
        p->head += n;
    }
    if (p->head == p->tail && !p->edits.length)
        p->went_idle = TRUE;
    if (p->head == p->tail && !p->edits.length && p->eof && !p->shut) {
        /* pass the FIN on; the other direction keeps flowing */
        p->shut = TRUE;
        if (!g_socket_shutdown(to_sock(ch, d), FALSE, TRUE, NULL)) {
            mp_relay_channel_abort(ch);
            return;
        }
        maybe_closed(ch);
    }
}

static void
finish_connect(MpRelayChannel *ch)
{
    g_autoptr(GError) err = ch->connect_error;

    ch->connect_error = NULL;
    ch->connecting = FALSE;
    if (!err && !g_socket_check_connect_result(ch->up, &err)) {
        /* err set */
    }
    g_source_set_ready_time(ch->source, -1);
    if (!err)
        ch->connected = TRUE;
    if (ch->hooks.connected)
        ch->hooks.connected(ch, err, ch->user_data);
}

static gboolean
chan_dispatch(GSource *source, GSourceFunc cb, gpointer user_data)
{
    MpRelayChannel *ch = ((ChanSource *)source)->ch;
    GIOCondition dc =
        ch->down_tag ? g_source_query_unix_fd(source, ch->down_tag) : 0;
    GIOCondition uc =
        ch->up_tag ? g_source_query_unix_fd(source, ch->up_tag) : 0;

    if (ch->connect_error
        || (ch->connecting && (uc & (G_IO_OUT | G_IO_ERR | G_IO_HUP)))) {
        finish_connect(ch);
        uc = 0;
    } else if (ch->connecting
               && g_source_get_time(source) >= ch->connect_deadline) {
        g_set_error(&ch->connect_error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT,
                    "no answer in %u ms", ch->connect_timeout_ms);
        finish_connect(ch);
        uc = 0;
    }
    if (ch->closed)
        return G_SOURCE_CONTINUE;
    if (ch->watching) {
        if (dc && ch->hooks.readable)
            ch->hooks.readable(ch, ch->user_data);
        if (ch->closed)
            return G_SOURCE_CONTINUE;
        if (ch->watching) {
            update_watch(ch);
            return G_SOURCE_CONTINUE;
        }
        dc = 0;
    }

    /* The return path first and what waits towards the destination next:
     * a page request moves its page to the front of the queue, which then
     * goes out before the next read towards the destination, a post-copy
     * read-ahead's (up to a millisecond of reading and parsing,
     * docs/benchmarks.md "The loop's order").  Then read, and write what
     * came in without another poll (the first write only when the
     * socket said it has room or a page was moved, whose reader may have
     * made room meanwhile: a plain relay's full socket costs no extra
     * system call). */
    if ((uc & (G_IO_IN | G_IO_HUP | G_IO_ERR)) && can_read(ch, MP_DIR_TO_SRC))
        pump_read(ch, MP_DIR_TO_SRC);
    if (!ch->closed
        && ((uc & G_IO_OUT) || !g_queue_is_empty(&ch->pump[MP_DIR_TO_DST].edits))
        && wants_write(ch, MP_DIR_TO_DST))
        pump_write(ch, MP_DIR_TO_DST);
    if (!ch->closed && (dc & (G_IO_IN | G_IO_HUP | G_IO_ERR))
        && can_read(ch, MP_DIR_TO_DST))
        pump_read(ch, MP_DIR_TO_DST);
    if (!ch->closed && wants_write(ch, MP_DIR_TO_DST))
        pump_write(ch, MP_DIR_TO_DST);
    if (!ch->closed && wants_write(ch, MP_DIR_TO_SRC))
        pump_write(ch, MP_DIR_TO_SRC);
    update_watch(ch);
    return G_SOURCE_CONTINUE;
}

static GSourceFuncs chan_source_funcs = {
    .dispatch = chan_dispatch,
};

static void
set_nodelay(GSocket *sock)
{
    /* page requests and the return path are small and latency-bound */
    g_socket_set_option(sock, IPPROTO_TCP, TCP_NODELAY, 1, NULL);
}

static char *
describe_address(GSocket *sock, gboolean remote)
{
    g_autoptr(GSocketAddress) a = remote
                                      ? g_socket_get_remote_address(sock, NULL)
                                      : g_socket_get_local_address(sock, NULL);
    return mp_address_string(a);
}

MpRelayChannel *
mp_relay_channel_new(GSocket *down, guint64 id,
                     const MpRelayChannelHooks *hooks, gpointer user_data)
{
    MpRelayChannel *ch = g_new0(MpRelayChannel, 1);

    ch->down = g_object_ref(down);
    ch->id = id;
    ch->hooks = *hooks;
    ch->user_data = user_data;
    ch->peer = describe_address(down, TRUE);
    g_socket_set_blocking(down, FALSE);
    set_nodelay(down);
    ch->source = g_source_new(&chan_source_funcs, sizeof(ChanSource));
    ((ChanSource *)ch->source)->ch = ch;
    g_source_set_name(ch->source, "migproxy relay channel");
    /* nothing in a dispatch runs the loop again; without this glib takes
     * the fds out of poll and puts them back around every dispatch (four
     * eventfd writes each time) */
    g_source_set_can_recurse(ch->source, TRUE);
    g_source_attach(ch->source, NULL);
    return ch;
}

void
mp_relay_channel_free(MpRelayChannel *ch)
{
    if (!ch)
        return;
    ch->closed = TRUE;
    close_sockets(ch);
    for (int d = 0; d < MP_DIR__MAX; d++) {
        mp_big_buf_clear(&ch->pump[d].mem);
        g_queue_clear_full(&ch->pump[d].edits, g_free);
    }
    g_clear_error(&ch->connect_error);
    g_free(ch->peer);
    g_free(ch);
}

void
mp_relay_channel_watch(MpRelayChannel *ch, gboolean on)
{
    ch->watching = on;
    update_watch(ch);
}

gssize
mp_relay_channel_peek(MpRelayChannel *ch, guint8 *buf, gsize len,
                      GError **error)
{
    GInputVector v = {buf, len};
    gint flags = G_SOCKET_MSG_PEEK;

    if (!ch->down) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_CLOSED, "closed");
        return -1;
    }
    return g_socket_receive_message(ch->down, NULL, &v, 1, NULL, NULL, &flags,
                                    NULL, error);
}

gboolean
mp_relay_channel_source_closed(MpRelayChannel *ch)
{
    struct tcp_info ti;
    socklen_t len = sizeof(ti);

    if (!ch->down)
        return TRUE;
    if (getsockopt(g_socket_get_fd(ch->down), IPPROTO_TCP, TCP_INFO, &ti, &len)
        < 0)
        return FALSE;
    return ti.tcpi_state == TCP_CLOSE_WAIT || ti.tcpi_state == TCP_CLOSE;
}

void
mp_relay_channel_start(MpRelayChannel *ch)
{
    ch->watching = FALSE;
    ch->started = TRUE;
    update_watch(ch);
}

void
mp_relay_channel_connect(MpRelayChannel *ch, GSocketAddress *to,
                         guint timeout_ms, guint sndbuf)
{
    g_autoptr(GError) err = NULL;

    if (ch->closed)
        return;
    GSocketFamily family = g_socket_address_get_family(to);
    ch->up = g_socket_new(family, G_SOCKET_TYPE_STREAM,
                          family == G_SOCKET_FAMILY_UNIX
                              ? G_SOCKET_PROTOCOL_DEFAULT
                              : G_SOCKET_PROTOCOL_TCP,
                          &err);
    ch->connect_timeout_ms = timeout_ms;
    if (ch->up) {
        g_socket_set_blocking(ch->up, FALSE);
        set_nodelay(ch->up);
        if (sndbuf)
            g_socket_set_option(ch->up, SOL_SOCKET, SO_SNDBUF, (gint)sndbuf,
                                NULL);
        if (g_socket_connect(ch->up, to, NULL, &err)
            || g_error_matches(err, G_IO_ERROR, G_IO_ERROR_PENDING)) {
            g_clear_error(&err);
            ch->connecting = TRUE;
            ch->connect_deadline =
                timeout_ms ? g_get_monotonic_time() + timeout_ms * 1000ll
                           : G_MAXINT64;
            if (timeout_ms)
                g_source_set_ready_time(ch->source, ch->connect_deadline);
            update_watch(ch);
            return;
        }
    }
    /* reported from the loop, never from inside this call */
    ch->connect_error = g_steal_pointer(&err);
    g_source_set_ready_time(ch->source, 0);
}

guint64
mp_relay_channel_id(const MpRelayChannel *ch)
{
    return ch->id;
}

const char *
mp_relay_channel_peer(const MpRelayChannel *ch)
{
    return ch->peer;
}

guint64
mp_relay_channel_bytes(const MpRelayChannel *ch, MpDir dir)
{
    return ch->pump[dir].bytes;
}

guint64
mp_relay_channel_bytes_sent(const MpRelayChannel *ch, MpDir dir)
{
    return ch->pump[dir].sent;
}

void
mp_relay_channel_set_filtered(MpRelayChannel *ch, MpDir dir)
{
    ch->pump[dir].filtered = TRUE;
    ch->pump[dir].read_max = FILTERED_READ_MAX;
}

void
mp_relay_channel_set_limit(MpRelayChannel *ch, MpDir dir, gsize bytes)
{
    ch->pump[dir].limit = bytes;
}

void
mp_relay_channel_prepare_limit(MpRelayChannel *ch, MpDir dir, gsize bytes)
{
    Pump *p = &ch->pump[dir];
    if (p->filtered && bytes >= PREP_AHEAD)
        p->early = MAX(p->early, bytes); /* (prep_ahead(), next turn) */
}

void
mp_relay_channel_set_pacer(MpRelayChannel *ch, MpDir dir, MpRatePacer *pacer)
{
    ch->pump[dir].pacer = pacer;
}

gboolean
mp_relay_channel_set_low_latency(MpRelayChannel *ch, MpDir dir, gsize bytes,
                                 GError **error)
{
    Pump *p = &ch->pump[dir];
    GSocket *s = to_sock(ch, dir);

    p->write_cap = bytes;
    /* the kernel wakes us only when little is left unsent, so what waits
     * stays in our queue, where a page can still go ahead */
    if (!s) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_NOT_CONNECTED,
                    "TCP_NOTSENT_LOWAT: the channel has no socket towards "
                    "the %s",
                    dir == MP_DIR_TO_DST ? "destination" : "source");
        return FALSE;
    }
    if (g_socket_get_family(s) == G_SOCKET_FAMILY_UNIX) {
        /* (migproxy source's hop) a Unix socket's bytes count against
         * the writer until the reader took them: its send buffer is what
         * waits in front, and it shrinks at once.  A quarter of `bytes`,
         * which the kernel doubles for its overhead: about one page
         * record and a bit in front of a moved page, which the tunnel
         * must read and encode before it can lift the page (16 KiB there
         * gave 1.4 ms blocked per request, 8 KiB 1.0, 4 KiB 1.0:
         * docs/benchmarks.md, "The hop's size") */
        if (!g_socket_set_option(s, SOL_SOCKET, SO_SNDBUF, (gint)bytes / 4,
                                 error)) {
            g_prefix_error(error, "setsockopt(SO_SNDBUF, %zu): ", bytes / 4);
            return FALSE;
        }
        p->read_max = HOP_READ_MAX;
        return TRUE;
    }
    if (!g_socket_set_option(s, IPPROTO_TCP, TCP_NOTSENT_LOWAT, (gint)bytes,
                             error)) {
        g_prefix_error(error, "setsockopt(TCP_NOTSENT_LOWAT, %zu): ", bytes);
        return FALSE;
    }
    return TRUE;
}

guint64
mp_relay_channel_bytes_written(const MpRelayChannel *ch, MpDir dir)
{
    return head_at(&ch->pump[dir]);
}

const guint8 *
mp_relay_channel_queue_peek(MpRelayChannel *ch, MpDir dir, guint64 at,
                            gsize len)
{
    Pump *p = &ch->pump[dir];
    guint64 head = head_at(p);

    if (at < head || at + len > p->sent)
        return NULL;
    return p->mem.data + p->head + (at - head);
}

gboolean
mp_relay_channel_queue_edit(MpRelayChannel *ch, MpDir dir, guint64 at,
                            gsize remove, const guint8 *bytes, gsize len)
{
    return mp_relay_channel_queue_edit_tagged(ch, dir, at, remove, bytes, len,
                                              NULL);
}

gboolean
mp_relay_channel_queue_edit_tagged(MpRelayChannel *ch, MpDir dir, guint64 at,
                                   gsize remove, const guint8 *bytes,
                                   gsize len, gpointer tag)
{
    Pump *p = &ch->pump[dir];
    Edit *first = g_queue_peek_head(&p->edits);

    if (ch->closed || p->shut || at + remove > p->sent || at < head_at(p)
        || (first && first->at == at && first->done))
        return FALSE;
    /* after every edit before `at`; at `at`, insertions (remove 0) in
     * order, then the one edit that replaces bytes there */
    GList *l;
    for (l = p->edits.head; l; l = l->next) {
        Edit *o = l->data;
        if (o->at > at)
            break;
        if (o->at == at && o->remove) {
            if (remove)
                return FALSE; /* two edits replacing the same bytes */
            break;
        }
    }
    Edit *e = g_malloc(sizeof(Edit) + len);
    e->at = at;
    e->remove = remove;
    e->len = len;
    e->done = 0;
    e->tag = tag;
    if (len)
        memcpy(e->bytes, bytes, len);
    if (l)
        g_queue_insert_before(&p->edits, l, e);
    else
        g_queue_push_tail(&p->edits, e);
    return TRUE;
}

void
mp_relay_channel_queue_append(MpRelayChannel *ch, MpDir dir,
                              const guint8 *bytes, gsize len)
{
    Pump *p = &ch->pump[dir];

    if (ch->closed || p->shut || !len)
        return;
    /* every other edit lies before `sent`, or replaces bytes ending
     * there: this one goes out last */
    Edit *e = g_malloc(sizeof(Edit) + len);
    e->at = p->sent;
    e->remove = 0;
    e->len = len;
    e->done = 0;
    e->tag = NULL;
    memcpy(e->bytes, bytes, len);
    g_queue_push_tail(&p->edits, e);
}

gboolean
mp_relay_channel_queue_unedit(MpRelayChannel *ch, MpDir dir, guint64 at)
{
    Pump *p = &ch->pump[dir];

    for (GList *l = p->edits.head; l; l = l->next) {
        Edit *e = l->data;
        if (e->at > at)
            break;
        if (e->at == at && e->remove && !e->done) {
            g_queue_delete_link(&p->edits, l);
            g_free(e);
            return TRUE;
        }
    }
    return FALSE;
}

void
mp_relay_channel_set_read_gap(MpRelayChannel *ch, MpDir dir, gsize gap)
{
    ch->pump[dir].read_gap = gap;
}

void
mp_relay_channel_send(MpRelayChannel *ch, MpDir dir, const guint8 *buf,
                      gsize len)
{
    Pump *p = &ch->pump[dir];

    if (ch->closed || p->shut || !len)
        return;
    if (p->reading) {
        /* Inside the hook: the bytes read lie at tail + gap or later, and
         * the hook's contract keeps every write below the read bytes it
         * has not sent yet; make_room() must not run (it could move or
         * reallocate them), and need not (room was made for the read). */
        guint8 *to = p->mem.data + p->tail;
        gboolean read_bytes =
            buf >= p->reading && buf + len <= p->reading + p->reading_len;
        g_assert(read_bytes ? to <= buf : to + len <= p->mem.data + p->mem.cap);
        if (to != buf)
            memmove(to, buf, len);
    } else {
        make_room(p, len);
        memcpy(p->mem.data + p->tail, buf, len);
    }
    p->tail += len;
    p->sent += len;
}

guint64
mp_relay_channel_drain_sample(MpRelayChannel *ch, MpDir dir,
                              gboolean *saturated)
{
    Pump *p = &ch->pump[dir];
    GSocket *s = to_sock(ch, dir);
    int outq = 0, unsent = 0;
    guint64 acked, n = 0;

    *saturated = FALSE;
    if (ch->closed || !ch->connected || !s)
        return 0;
    /* SIOCOUTQ (TCP): bytes written and not yet acknowledged;
     * SIOCOUTQNSD: of those, not yet sent (the network or the receiver
     * holds them back) */
    if (ioctl(g_socket_get_fd(s), SIOCOUTQ, &outq) < 0 || outq < 0)
        outq = 0;
    if (ioctl(g_socket_get_fd(s), SIOCOUTQNSD, &unsent) < 0)
        unsent = 0;
    acked = p->wire - MIN((guint64)outq, p->wire);
    if (acked > p->acked) {
        n = acked - p->acked;
        p->acked = acked;
    }
    /* held back all along: bytes waited here the whole interval (the
     * queue never ran dry, and holds some now) and the kernel's buffer
     * was full at least once, or holds unsent bytes now (a full buffer is
     * not written to at all: poll() does not say it is writable); a
     * channel our own pacer holds back is not pushed back by the kernel */
    *saturated = (p->pushed_back || unsent > 0) && !p->went_idle
                 && (p->head < p->tail || p->edits.length);
    /* but not by the network when the receiver's window held the kernel
     * back for more than a tenth of the time: a destination busy
     * elsewhere (a loaded host, the guest's first accesses) reads at a
     * rate that says nothing of the link's, and pacing post-copy at it
     * would slow the migration down (docs/benchmarks.md, item 14) */
    gint64 now = g_get_monotonic_time();
    guint64 rwnd;
    if (mp_tcp_rwnd_limited_us(g_socket_get_fd(s), &rwnd)) {
        if (p->sampled_us && rwnd > p->rwnd_us
            && (gint64)(rwnd - p->rwnd_us) * 10 > now - p->sampled_us)
            *saturated = FALSE;
        p->rwnd_us = rwnd;
    }
    p->sampled_us = now;
    p->pushed_back = p->went_idle = FALSE;
    return n;
}

gboolean
mp_relay_channel_ended(const MpRelayChannel *ch, MpDir dir)
{
    return ch->pump[dir].ended;
}

/* ---- the to-dst queue as an output scheduler (out-scheduler.h) ---- */

static guint64
sched_head(gpointer q)
{
    return mp_relay_channel_bytes_written(q, MP_DIR_TO_DST);
}

static const guint8 *
sched_peek(gpointer q, guint64 at, gsize len)
{
    return mp_relay_channel_queue_peek(q, MP_DIR_TO_DST, at, len);
}

static gboolean
sched_move_to_front(gpointer q, guint64 at, gsize len, guint64 front,
                    const guint8 *bytes, gsize n, gpointer tag)
{
    MpRelayChannel *ch = q;

    /* (a rewritten header of the record goes with it) */
    mp_relay_channel_queue_unedit(ch, MP_DIR_TO_DST, at);
    if (!mp_relay_channel_queue_edit(ch, MP_DIR_TO_DST, at, len, NULL, 0))
        return FALSE;
    if (!mp_relay_channel_queue_edit_tagged(ch, MP_DIR_TO_DST, front, 0,
                                            bytes, n, tag)) {
        /* (front is queued: cannot happen) put the record back */
        mp_relay_channel_queue_unedit(ch, MP_DIR_TO_DST, at);
        return FALSE;
    }
    return TRUE;
}

static gboolean
sched_rewrite_header(gpointer q, guint64 at, gsize len, const guint8 *bytes,
                     gsize n)
{
    return mp_relay_channel_queue_edit(q, MP_DIR_TO_DST, at, len, bytes, n);
}

static void
sched_set_read_ahead(gpointer q, gsize bytes)
{
    mp_relay_channel_set_limit(q, MP_DIR_TO_DST, bytes);
}

static void
sched_prepare_read_ahead(gpointer q, gsize bytes)
{
    mp_relay_channel_prepare_limit(q, MP_DIR_TO_DST, bytes);
}

static gboolean
sched_set_low_latency(gpointer q, gsize bytes, GError **error)
{
    return mp_relay_channel_set_low_latency(q, MP_DIR_TO_DST, bytes, error);
}

static const MpOutSchedulerOps scheduler_ops = {
    .head = sched_head,
    .peek = sched_peek,
    .move_to_front = sched_move_to_front,
    .rewrite_header = sched_rewrite_header,
    .set_read_ahead = sched_set_read_ahead,
    .prepare_read_ahead = sched_prepare_read_ahead,
    .set_low_latency = sched_set_low_latency,
};

MpOutScheduler
mp_relay_channel_scheduler(MpRelayChannel *ch)
{
    return (MpOutScheduler){&scheduler_ops, ch};
}

guint64
mp_relay_channel_bytes_moved(const MpRelayChannel *ch, MpDir dir)
{
    return ch->pump[dir].moved;
}
