/* tunnel-mux.c: QEMU connections as streams of one tunnel (see
 * tunnel-mux.h). */
#include "config.h"
#include <errno.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <linux/sockios.h>
#include <gio/gio.h>
#include <zstd.h>
#include "tunnel-cap.h"
#include "tunnel-mux.h"
#include "tunnel-pages-in.h"

/* Stream ids are u16 and a side uses one parity: at most this many
 * connections over one tunnel connection's life. */
#define MAX_CONNS 32767
/* The decoder's window bound: a hostile peer cannot make it allocate
 * more (the encoder's level 1..19 windows stay below it). */
#define ZSTD_WINDOW_LOG_MAX 23

typedef struct {
    guint64 seq;
    guint64 n; /* sent: raw bytes of the frame; received: end offset */
    /* sent, when the tunnel can resume: the frame itself until the peer
     * holds it (shared with the connection's output queue) */
    GBytes *frame;
} Pend;

/* One migration: the connections of one session (MpTunOpen.session,
 * numbered by the source side across its routes) on one route.  The
 * bulk lane's room goes round the migrations, and within each round
 * robin its connections, so that a migration with four multifd channels
 * gets one share, as one with a main channel alone (bulk_round()). */
typedef struct {
    guint16 route;
    guint32 session;
    GPtrArray *conns; /* Conn*, borrowed (the mux's `conns` owns them) */
    guint next;       /* index in `conns` of the next one to read */
    guint live;       /* connections not done; none: it goes */
} Mig;

typedef struct {
    MpTunMux *m;
    Mig *mig;         /* its migration (NULL once that went: done) */
    guint number; /* in the order the connections came, from 0 */
    guint16 fwd, rev; /* forward (odd) and reverse (even, 0: not yet) */
    MpTunOpen open;   /* the forward stream's */
    GSocket *sock;    /* NULL: not attached yet, or closed */
    GSource *source;
    GIOCondition cond;
    gint prio; /* of `source` */
    /* the local socket read: our outgoing stream */
    guint16 out_id;
    gboolean out_urgent;
    guint64 out_seq;
    GQueue sent; /* Pend*: frames not acknowledged */
    guint64 unacked;
    /* the window (raw bytes unacknowledged) and what sets it: the bytes
     * acknowledged in all, and at the start of the rate's interval */
    guint64 window, window_max, acked, acked_at_t0;
    gint64 acked_t0;
    guint64 acked_in; /* the last seq we acknowledged (written) */
    gboolean rd_eof, close_sent;
    ZSTD_CCtx *cctx;
    guint64 read_bytes, link_out;
    /* the incoming stream written to the local socket */
    guint64 in_seq;
    gboolean in_urgent; /* its lane */
    GByteArray *wq;
    gsize wq_pos;
    guint64 queued_total, written_total;
    GQueue pend; /* Pend*: seq and end offset of frames not yet written */
    ZSTD_DCtx *dctx;
    gboolean peer_eof, shut_wr;
    guint64 link_in;
    gboolean aborted, done;
    MpTunPagesOut *po; /* source side, main streams: PAGES encoding */
    MpTunPagesIn *pi;  /* destination side: made by the first PAGES */
    /* lifted pages: the forward stream's urgent lane, its own seq */
    guint64 out_useq, in_useq;
    /* destination side: the bytes that waited toward QEMU in front of
     * each lifted page (the write queue's and the kernel's unsent) */
    guint64 lifted, lifted_behind_sum, lifted_behind_max, lifted_behind_1m;
    json_object *pages_report; /* theirs, kept when they are freed */
} Conn;

struct MpTunMux {
    MpTunMuxOptions opt;  /* as agreed with the peer */
    MpTunMuxOptions opt0; /* as given (what a HELLO offers) */
    MpTunMuxHooks hooks;
    gpointer data;
    MpTunConn *conn;
    MpTunAgreed agreed;
    gboolean ready, compress, closed;
    GHashTable *by_stream; /* id -> Conn* (both ids of a connection) */
    GPtrArray *conns;      /* Conn*, in order */
    guint16 next_id;
    guint live;
    GPtrArray *migs; /* Mig*, with a live connection, in order of arrival */
    guint mig_next;  /* the migration whose turn is next (bulk_round) */
    guint rr_id;     /* the next round, from the main loop */
    guint8 *rbuf, *zbuf;
    gsize zbuf_len;
    guint8 *dbuf;
    /* source side: is QEMU held at its max-bandwidth? (tunnel-cap.h) */
    MpTunCapWatch cap;
    guint cap_id;
    gboolean dry; /* a read of a bulk stream found nothing */
    /* source side: the encoder counters of the streams that ended
     * (mp_tun_pages_out_add_counters()), NULL before the first */
    json_object *enc_done;
    /* resume (docs/tunnel.md, "What the pair does on a drop"): `keep`
     * once RESUME was agreed; `conn` is NULL while suspended (the link
     * dropped, the QEMU connections wait), then a new connection's
     * handshake, then `resuming` until the peer's resume ACK came */
    char *name;
    gboolean keep, suspended, resuming;
    guint64 tunnel_id;
    guint resume_id; /* the resume timeout */
    GError *drop_error;
    gint64 down_since;
    guint64 link_in_before, link_out_before; /* of the dropped connections */
    gsize kept_bytes, kept_max;
    json_object *last_link; /* the dropped connection's link report */
    gboolean ending;        /* END asked: a drop now is not resumed */
    guint drops, resumes;
    guint64 frames_resent, bytes_resent, dups;
    double down_ms_max;
};

static void conn_watch(Conn *c);
static void queued_in(Conn *c, const MpTunFrame *f, gsize n);
static void on_resume_ack(MpTunMux *m, const MpTunFrame *f);

static void
pend_free(gpointer data)
{
    Pend *p = data;
    if (p->frame)
        g_bytes_unref(p->frame);
    g_free(p);
}

/* The kept copy of a sent frame goes (the peer holds it). */
static void
pend_unkeep(MpTunMux *m, Pend *p)
{
    if (!p->frame)
        return;
    m->kept_bytes -= g_bytes_get_size(p->frame);
    g_clear_pointer(&p->frame, g_bytes_unref);
}

/* May frames go to the peer now?  Not while the tunnel is down or
 * resuming (then sequenced frames are only kept, and sent again once the
 * peer said what it holds). */
static gboolean
linked(const MpTunMux *m)
{
    return m->conn && !m->closed && !m->resuming
           && mp_tun_conn_is_ready(m->conn);
}

/* A frame that is not kept (OPEN, ACK): lost while not linked; a resume
 * makes what is needed again. */
static void
ctl_send(MpTunMux *m, const guint8 *buf, gsize len, gboolean urgent)
{
    if (linked(m))
        mp_tun_conn_send(m->conn, buf, len, urgent);
}

static void
conn_free(Conn *c)
{
    if (c->source) {
        g_source_destroy(c->source);
        g_source_unref(c->source);
    }
    if (c->sock) {
        g_socket_close(c->sock, NULL);
        g_object_unref(c->sock);
    }
    g_queue_clear_full(&c->sent, pend_free);
    g_queue_clear_full(&c->pend, g_free);
    if (c->wq)
        g_byte_array_unref(c->wq);
    ZSTD_freeCCtx(c->cctx);
    ZSTD_freeDCtx(c->dctx);
    mp_tun_pages_out_free(c->po);
    mp_tun_pages_in_free(c->pi);
    if (c->pages_report)
        json_object_put(c->pages_report);
    g_free(c);
}

static const char *
kind_name(guint8 channel, gboolean reverse)
{
    if (reverse && channel == MP_TUN_CH_MAIN)
        return mp_tun_channel_name(MP_TUN_CH_RETURN_PATH);
    return mp_tun_channel_name(channel);
}

static void
fail(MpTunMux *m, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static void
fail(MpTunMux *m, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    if (!m->conn) {
        /* a local failure while the tunnel is down: the resume would
         * carry a stream in a broken state; the timeout ends it */
        g_warning("%s: %s", m->name, msg);
        return;
    }
    g_autoptr(GError) err = g_error_new(G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                                        "%s: %s", mp_tun_conn_name(m->conn),
                                        msg);
    mp_tun_conn_fail(m->conn, err);
}

/* The page codecs' memory goes with the connection; their counters
 * stay for the report. */
static void
pages_done(Conn *c)
{
    if (c->po) {
        c->pages_report = mp_tun_pages_out_report(c->po);
        if (!c->m->enc_done)
            c->m->enc_done = json_object_new_object();
        mp_tun_pages_out_add_counters(c->po, c->m->enc_done);
        g_clear_pointer(&c->po, mp_tun_pages_out_free);
    } else if (c->pi) {
        c->pages_report = mp_tun_pages_in_report(c->pi);
        g_clear_pointer(&c->pi, mp_tun_pages_in_free);
    }
}

/* Both directions are over: the socket goes, the counters stay. */
static void
conn_check_done(Conn *c)
{
    MpTunMux *m = c->m;

    if (c->done || !c->close_sent || !(c->shut_wr || c->aborted))
        return;
    c->done = TRUE;
    if (c->source) {
        g_source_destroy(c->source);
        g_clear_pointer(&c->source, g_source_unref);
    }
    if (c->sock) {
        g_socket_close(c->sock, NULL);
        g_clear_object(&c->sock);
    }
    g_clear_pointer(&c->cctx, ZSTD_freeCCtx);
    g_clear_pointer(&c->dctx, ZSTD_freeDCtx);
    g_clear_pointer(&c->wq, g_byte_array_unref);
    /* with resume, frames the peer may not hold yet (the CLOSE) stay
     * until it acknowledges them */
    if (!m->keep)
        g_queue_clear_full(&c->sent, pend_free);
    g_queue_clear_full(&c->pend, g_free);
    pages_done(c);
    m->live--;
    if (c->mig) /* (a migration left with none goes in bulk_round) */
        c->mig->live--;
    if (m->hooks.stream_done)
        m->hooks.stream_done(m, c->fwd, m->data);
}

/* Destination side: the reverse stream is opened by the first frame that
 * needs it. */
static void
ensure_out_open(Conn *c)
{
    MpTunMux *m = c->m;

    if (c->out_id)
        return;
    g_autoptr(GByteArray) b = g_byte_array_new();
    /* every destination-to-source direction is a return-path stream (on a
     * main connection it is QEMU's return path; on others QEMU writes
     * little or nothing), urgent: page requests must not wait */
    MpTunOpen o = c->open;
    o.reverse_of = c->fwd;
    o.channel = MP_TUN_CH_RETURN_PATH;
    c->rev = c->out_id = m->next_id;
    m->next_id += 2;
    g_hash_table_insert(m->by_stream, GUINT_TO_POINTER(c->rev), c);
    c->out_urgent = TRUE;
    mp_tun_write_open(b, c->out_id, &o);
    ctl_send(m, b->data, b->len, c->out_urgent);
}

/* A sequenced frame `b` (taken) of our stream, standing for `account`
 * bytes read from the local socket: sent now if linked, and with resume
 * kept until the peer holds it. */
static void
emit(Conn *c, GByteArray *b, guint64 seq, guint64 account)
{
    MpTunMux *m = c->m;
    GBytes *frame = g_byte_array_free_to_bytes(b);
    gsize len = g_bytes_get_size(frame);
    Pend *p = g_new0(Pend, 1);

    p->seq = seq;
    p->n = account;
    if (m->keep) {
        p->frame = g_bytes_ref(frame);
        m->kept_bytes += len;
        m->kept_max = MAX(m->kept_max, m->kept_bytes);
    }
    g_queue_push_tail(&c->sent, p);
    c->link_out += len;
    if (linked(m))
        mp_tun_conn_send_bytes(m->conn, frame, c->out_urgent);
    g_bytes_unref(frame);
}

static void
send_close(Conn *c, guint8 how, const char *reason)
{
    if (c->close_sent)
        return;
    ensure_out_open(c);
    GByteArray *b = g_byte_array_new();
    guint64 seq = ++c->out_seq;
    mp_tun_write_close(b, c->out_urgent ? MP_TUN_FLAG_URGENT : 0, c->out_id,
                       seq, how, reason);
    emit(c, b, seq, 0);
    c->close_sent = TRUE;
}

/* The local side is gone or must go: reset it (QEMU sees the connection
 * break) and tell the peer. */
static void
conn_abort(Conn *c, const char *reason)
{
    if (c->done)
        return;
    c->aborted = TRUE;
    c->rd_eof = TRUE;
    if (c->sock) {
        /* SO_LINGER 0: a reset, not a clean end QEMU could take for a
         * finished stream */
        struct linger l = {.l_onoff = 1, .l_linger = 0};
        setsockopt(g_socket_get_fd(c->sock), SOL_SOCKET, SO_LINGER, &l,
                   sizeof(l));
    }
    /* while the tunnel is down the CLOSE is kept for the resume */
    if (linked(c->m) || (c->m->keep && c->m->suspended))
        send_close(c, MP_TUN_CLOSE_ABORT, reason);
    c->close_sent = TRUE;
    conn_check_done(c);
}

guint64
mp_tun_mux_window_for(double acked_per_s)
{
    double w = acked_per_s * MP_TUN_MUX_WINDOW_US / 1e6;
    if (!(w > MP_TUN_MUX_WINDOW))
        return MP_TUN_MUX_WINDOW;
    return w < MP_TUN_MUX_WINDOW_MAX ? (guint64)w : MP_TUN_MUX_WINDOW_MAX;
}

/* The most raw bytes of one stream the peer may hold unwritten: twice
 * its window (a requested page's slack fits in it). */
static guint64
peer_window_limit(const MpTunMux *m)
{
    return 2 * (guint64)((m->agreed.features & MP_TUN_FEAT_WIDE_WINDOW)
                             ? MP_TUN_MUX_WINDOW_MAX
                             : MP_TUN_MUX_WINDOW);
}

/* `n` more raw bytes of the stream acknowledged: with WIDE_WINDOW, the
 * window follows the rate of the last interval (an interval that began
 * idle reads low, and the window shrinks: it grows again within one). */
static void
conn_acked(Conn *c, guint64 n)
{
    gint64 now = g_get_monotonic_time();

    c->acked += n;
    if (!(c->m->agreed.features & MP_TUN_FEAT_WIDE_WINDOW))
        return;
    if (!c->acked_t0) {
        c->acked_t0 = now;
        c->acked_at_t0 = c->acked;
        return;
    }
    if (now - c->acked_t0 < MP_TUN_MUX_WINDOW_SAMPLE_US)
        return;
    c->window = mp_tun_mux_window_for((double)(c->acked - c->acked_at_t0)
                                      * 1e6 / (double)(now - c->acked_t0));
    c->window_max = MAX(c->window_max, c->window);
    c->acked_t0 = now;
    c->acked_at_t0 = c->acked;
}

static gboolean
may_read(const Conn *c)
{
    const MpTunMux *m = c->m;
    if (!m->ready || !linked(m) || !c->sock || c->rd_eof || c->done)
        return FALSE;
    gboolean room = c->out_urgent
                        ? mp_tun_conn_queued(m->conn) < MP_TUN_CONN_QUEUE_HIGH
                        : mp_tun_conn_bulk_room(m->conn);
    if (room && c->unacked < c->window)
        return TRUE;
    /* a requested page is on its way: read it out of the buffers in
     * front of the tunnel, past the pace and a little past the window */
    return !c->out_urgent && c->po && mp_tun_pages_out_read_ahead(c->po)
           && c->unacked < c->window + MP_TUN_MUX_LIFT_SLACK
           && mp_tun_conn_queued(m->conn) < MP_TUN_CONN_QUEUE_HIGH;
}

/* Sends `n` raw stream bytes as one DATA frame standing for `account`
 * bytes read from the local socket. */
static void
send_data(Conn *c, const guint8 *raw, gsize n, guint64 account)
{
    MpTunMux *m = c->m;
    GByteArray *b = g_byte_array_sized_new(n + 64);
    guint8 flags = c->out_urgent ? MP_TUN_FLAG_URGENT : 0;
    guint64 seq = ++c->out_seq;
    if (m->compress) {
        if (!c->cctx) {
            c->cctx = ZSTD_createCCtx();
            ZSTD_CCtx_setParameter(c->cctx, ZSTD_c_compressionLevel,
                                   m->opt.level ? m->opt.level : 3);
        }
        ZSTD_inBuffer in = {raw, n, 0};
        ZSTD_outBuffer out = {m->zbuf, m->zbuf_len, 0};
        size_t left;
        do {
            left = ZSTD_compressStream2(c->cctx, &out, &in, ZSTD_e_flush);
        } while (!ZSTD_isError(left) && left && out.pos < out.size);
        if (ZSTD_isError(left) || left) {
            g_byte_array_unref(b);
            fail(m, "zstd: %s", ZSTD_isError(left) ? ZSTD_getErrorName(left)
                                                   : "output too long");
            return;
        }
        mp_tun_write_data(b, flags | MP_TUN_FLAG_COMPRESSED, c->out_id, seq,
                          n, m->zbuf, out.pos);
    } else {
        mp_tun_write_data(b, flags, c->out_id, seq, n, raw, n);
    }
    emit(c, b, seq, account);
}

/* The encoder's items that are ready, in order: DATA and PAGES frames of
 * one seq sequence.  After the local EOF, CLOSE follows the last. */
static void
pages_send(Conn *c)
{
    MpTunMux *m = c->m;
    MpTunOutItem it;
    GByteArray *u;

    /* lifted pages first, in the urgent lane (copies: no window).  While
     * the tunnel is down they are dropped: the batch that also holds each
     * one is kept and goes first on the resume, and a copy after it would
     * have dest place the page twice */
    while (c->po && !c->done && !c->aborted
           && (u = mp_tun_pages_out_pop_urgent(c->po))) {
        if (!linked(m)) {
            g_byte_array_unref(u);
            continue;
        }
        g_autoptr(GByteArray) b = g_byte_array_sized_new(u->len + 64);
        mp_tun_write_frame(b, MP_TUN_PAGES, MP_TUN_FLAG_URGENT, c->out_id,
                           ++c->out_useq, u->data, u->len);
        mp_tun_conn_send(m->conn, b->data, b->len, TRUE);
        c->link_out += b->len;
        g_byte_array_unref(u);
    }
    /* (while the tunnel is down the batches are kept for the resume) */
    while (c->po && !c->done && !c->aborted
           && (linked(m) || (m->keep && m->suspended))
           && mp_tun_pages_out_pop(c->po, &it)) {
        if (it.kind == MP_TUN_OUT_DATA) {
            send_data(c, it.bytes->data, it.bytes->len, it.raw);
        } else {
            GByteArray *b = g_byte_array_sized_new(it.bytes->len + 64);
            guint64 seq = ++c->out_seq;
            mp_tun_write_frame(b, MP_TUN_PAGES,
                               c->out_urgent ? MP_TUN_FLAG_URGENT : 0,
                               c->out_id, seq, it.bytes->data, it.bytes->len);
            emit(c, b, seq, it.raw);
        }
        g_byte_array_unref(it.bytes);
    }
    if (c->po && c->rd_eof && !c->close_sent && !c->aborted
        && mp_tun_pages_out_queued(c->po) == 0) {
        send_close(c, MP_TUN_CLOSE_EOF, NULL);
        conn_check_done(c);
    }
}

static void
pages_wake(gpointer data)
{
    Conn *c = data;
    pages_send(c);
    if (!c->done)
        conn_watch(c);
}

/* A multifd stream's cache budget, until its first page: the guest's RAM
 * as the session's main stream announced it, split among the session's
 * multifd channels (tunnel-pages-out.h): those open now, and at least as
 * many as this one's index says (QEMU numbers them from 0; a channel's
 * first page may come before its peers are open here). */
static void
pages_session(Conn *c)
{
    guint64 ram = 0;
    guint share = 0;

    for (guint i = 0; i < c->m->conns->len; i++) {
        const Conn *o = g_ptr_array_index(c->m->conns, i);
        if (o->open.session != c->open.session || !o->po)
            continue;
        if (o->open.channel == MP_TUN_CH_MAIN)
            ram = mp_tun_pages_out_ram(o->po);
        else if (o->open.channel == MP_TUN_CH_MULTIFD)
            share++;
    }
    mp_tun_pages_out_set_session(c->po, ram,
                                 MAX(share, (guint)c->open.index + 1));
}

/* `n` bytes read into m->rbuf go through the encoder. */
static void
pages_feed(Conn *c, gsize n)
{
    if (c->open.channel == MP_TUN_CH_MULTIFD && !mp_tun_pages_out_sized(c->po))
        pages_session(c);
    guint64 left = mp_tun_pages_out_feed(c->po, c->m->rbuf, n);
    /* post-copy may come: from now on the link is paced (tunnel-link.h) */
    if (mp_tun_pages_out_postcopy_advised(c->po) && c->m->conn)
        mp_tun_link_allow_pace(mp_tun_conn_link(c->m->conn));
    /* it runs: the kernel's unsent bytes stay short before the pace */
    if (mp_tun_pages_out_postcopy_running(c->po) && c->m->conn)
        mp_tun_link_postcopy_runs(mp_tun_conn_link(c->m->conn));
    c->unacked += n - left;
    c->read_bytes += n;
    pages_send(c);
}

/* One read of the local socket into one DATA frame (or, through the
 * encoder, DATA and PAGES frames). */
static void
conn_read(Conn *c)
{
    MpTunMux *m = c->m;
    g_autoptr(GError) err = NULL;
    /* a read the bulk lane had no room for: a requested page's way out */
    gboolean past = c->po && !c->out_urgent
                    && !mp_tun_conn_bulk_room(m->conn);

    gssize n = g_socket_receive(c->sock, (char *)m->rbuf,
                                MIN(MP_TUN_MUX_CHUNK,
                                    mp_tun_conn_chunk(m->conn)),
                                NULL, &err);
    if (n < 0) {
        if (g_error_matches(err, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK)) {
            m->dry |= !c->out_urgent;
            return;
        }
        g_debug("%s: connection %u (%s): %s; resetting it",
                mp_tun_conn_name(m->conn), c->number,
                kind_name(c->open.channel, c->out_id != c->fwd),
                err->message);
        conn_abort(c, err->message);
        return;
    }
    if (n == 0) {
        c->rd_eof = TRUE;
        if (c->po) {
            mp_tun_pages_out_finish(c->po);
            pages_send(c); /* CLOSE once the workers' batches are out */
            return;
        }
        send_close(c, MP_TUN_CLOSE_EOF, NULL);
        conn_check_done(c);
        return;
    }
    ensure_out_open(c);
    if (c->po) {
        if (past)
            mp_tun_pages_out_read_past(c->po, n);
        pages_feed(c, n);
        return;
    }
    send_data(c, m->rbuf, n, n);
    c->unacked += n;
    c->read_bytes += n;
}

static void
send_ack(Conn *c, guint64 seq)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    MpTunAckEntry e = {
        .stream = c->out_id == c->fwd ? c->rev : c->fwd,
        .bulk_seq = c->in_urgent ? 0 : seq,
        .urgent_seq = c->in_urgent ? seq : 0,
    };
    mp_tun_write_ack(b, &e, 1);
    c->acked_in = seq;
    ctl_send(c->m, b->data, b->len, TRUE);
}

/* Writes what the local socket takes; acknowledges the frames written. */
static void
conn_write(Conn *c)
{
    guint64 acked = 0;

    while (c->wq && c->wq_pos < c->wq->len) {
        g_autoptr(GError) err = NULL;
        gssize n = g_socket_send(c->sock, (const char *)c->wq->data + c->wq_pos,
                                 c->wq->len - c->wq_pos, NULL, &err);
        if (n < 0) {
            if (g_error_matches(err, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK))
                break;
            g_debug("%s: connection %u: writing: %s; resetting it",
                    mp_tun_conn_name(c->m->conn), c->number, err->message);
            conn_abort(c, err->message);
            return;
        }
        c->wq_pos += n;
        c->written_total += n;
    }
    for (Pend *p; (p = g_queue_peek_head(&c->pend))
                  && p->n <= c->written_total;) {
        acked = p->seq;
        g_free(g_queue_pop_head(&c->pend));
    }
    if (acked)
        send_ack(c, acked);
    if (c->wq && c->wq_pos == c->wq->len) {
        g_byte_array_set_size(c->wq, 0);
        c->wq_pos = 0;
    } else if (c->wq && c->wq_pos > (1u << 20)) {
        g_byte_array_remove_range(c->wq, 0, c->wq_pos);
        c->wq_pos = 0;
    }
    if (c->peer_eof && !c->shut_wr && (!c->wq || c->wq_pos == c->wq->len)) {
        g_socket_shutdown(c->sock, FALSE, TRUE, NULL);
        c->shut_wr = TRUE;
        send_ack(c, c->in_seq); /* the CLOSE: done with, the peer drops it */
        conn_check_done(c);
    }
}

static void schedule_round(MpTunMux *m);

/* A few reads of the local socket at once (while it gives bytes). */
static void
read_few(Conn *c)
{
    for (int i = 0; i < 4 && may_read(c); i++) {
        guint64 before = c->read_bytes;
        conn_read(c);
        if (c->done || c->read_bytes == before)
            break;
    }
}

static gboolean
on_local(GSocket *sock, GIOCondition cond, gpointer data)
{
    Conn *c = data;

    if (cond & G_IO_OUT || (cond & (G_IO_ERR | G_IO_HUP)))
        conn_write(c);
    if (c->out_urgent || (c->po && mp_tun_pages_out_read_ahead(c->po))) {
        /* urgent, or a requested page on its way: a few reads at once,
         * then the other connections' turn */
        read_few(c);
    } else if (may_read(c)) {
        /* the bulk lane's room is shared in turns (bulk_round), not
         * taken by whichever socket the loop dispatches first */
        schedule_round(c->m);
    }
    if (!c->done)
        conn_watch(c);
    return G_SOURCE_CONTINUE;
}

static void
conn_watch(Conn *c)
{
    if (c->done || !c->sock)
        return;
    GIOCondition want = (may_read(c) ? G_IO_IN : 0)
                        | (c->wq && c->wq_pos < c->wq->len ? G_IO_OUT : 0);
    /* a requested page on its way out of the hop: read before whatever
     * else the loop has ready (the relay's read-ahead in front of the hop
     * takes up to a millisecond a turn) */
    gint prio = c->po && mp_tun_pages_out_read_ahead(c->po)
                    ? G_PRIORITY_HIGH
                    : G_PRIORITY_DEFAULT;
    if (c->source && want == c->cond && prio == c->prio)
        return;
    if (c->source) {
        g_source_destroy(c->source);
        g_clear_pointer(&c->source, g_source_unref);
    }
    c->cond = want;
    if (!want)
        return;
    c->prio = prio;
    c->source = g_socket_create_source(c->sock, want, NULL);
    g_source_set_priority(c->source, prio);
    g_source_set_callback(c->source, G_SOURCE_FUNC(on_local), c, NULL);
    g_source_attach(c->source, NULL);
}

static void
mig_free(Mig *g)
{
    g_ptr_array_unref(g->conns);
    g_free(g);
}

/* The migration of a new connection: one that has a live connection on
 * the same route and session, else a new one, last in the round. */
static Mig *
mig_of(MpTunMux *m, const MpTunOpen *o)
{
    for (guint i = 0; i < m->migs->len; i++) {
        Mig *g = g_ptr_array_index(m->migs, i);
        if (g->live && g->route == o->route && g->session == o->session)
            return g;
    }
    Mig *g = g_new0(Mig, 1);
    g->route = o->route;
    g->session = o->session;
    g->conns = g_ptr_array_new();
    g_ptr_array_add(m->migs, g);
    return g;
}

static Conn *
conn_new(MpTunMux *m, guint16 fwd, const MpTunOpen *o)
{
    Conn *c = g_new0(Conn, 1);
    c->m = m;
    c->window = c->window_max = MP_TUN_MUX_WINDOW;
    c->mig = mig_of(m, o);
    g_ptr_array_add(c->mig->conns, c);
    c->mig->live++;
    c->number = m->conns->len;
    c->fwd = fwd;
    c->open = *o;
    c->wq = g_byte_array_new();
    g_queue_init(&c->sent);
    g_queue_init(&c->pend);
    g_ptr_array_add(m->conns, c);
    g_hash_table_insert(m->by_stream, GUINT_TO_POINTER(fwd), c);
    m->live++;
    return c;
}

/* ---- frames from the peer ---- */

static void
on_data(MpTunMux *m, Conn *c, const MpTunFrame *f)
{
    const guint8 *raw = f->u.data.body;
    gsize n = f->u.data.body_len;

    if (c->done || c->aborted)
        return; /* the connection is gone here; the peer learns it */
    c->in_urgent = (f->flags & MP_TUN_FLAG_URGENT) != 0;
    if (f->flags & MP_TUN_FLAG_COMPRESSED) {
        if (!(m->agreed.features & MP_TUN_FEAT_RAW_ZSTD)) {
            fail(m, "compressed DATA on stream %u, not negotiated", f->stream);
            return;
        }
        if (!c->dctx) {
            c->dctx = ZSTD_createDCtx();
            ZSTD_DCtx_setParameter(c->dctx, ZSTD_d_windowLogMax,
                                   ZSTD_WINDOW_LOG_MAX);
        }
        /* one byte of room more than announced tells a chunk that is
         * longer than its raw_len */
        ZSTD_inBuffer in = {f->u.data.body, f->u.data.body_len, 0};
        ZSTD_outBuffer out = {m->dbuf, (gsize)f->u.data.raw_len + 1, 0};
        while (in.pos < in.size) {
            gsize before_in = in.pos, before_out = out.pos;
            size_t r = ZSTD_decompressStream(c->dctx, &out, &in);
            if (ZSTD_isError(r)) {
                fail(m, "DATA frame of stream %u at offset %" G_GUINT64_FORMAT
                        ": zstd: %s",
                     f->stream, f->offset, ZSTD_getErrorName(r));
                return;
            }
            if (in.pos == before_in && out.pos == before_out)
                break;
        }
        if (in.pos != in.size || out.pos != f->u.data.raw_len) {
            fail(m, "DATA frame of stream %u at offset %" G_GUINT64_FORMAT
                    ": its zstd chunk gives %zu bytes, %u announced",
                 f->stream, f->offset, out.pos, f->u.data.raw_len);
            return;
        }
        raw = m->dbuf;
        n = out.pos;
    }
    /* source side: the return path's page requests */
    if (c->po)
        mp_tun_pages_out_return_path(c->po, raw, n);
    if (c->queued_total - c->written_total + n > peer_window_limit(m)) {
        fail(m, "stream %u: the peer sent %" G_GUINT64_FORMAT
                " bytes not yet written, more than twice its window (%"
                G_GUINT64_FORMAT ")",
             f->stream, c->queued_total - c->written_total + n,
             peer_window_limit(m) / 2);
        return;
    }
    g_byte_array_append(c->wq, raw, n);
    if (c->pi)
        mp_tun_pages_in_data(c->pi);
    queued_in(c, f, n);
}

/* `n` bytes of frame `f` were appended to the write queue. */
static void
queued_in(Conn *c, const MpTunFrame *f, gsize n)
{
    c->queued_total += n;
    c->link_in += f->len + MP_TUN_HEADER_LEN + MP_TUN_TRAILER_LEN;
    Pend *p = g_new(Pend, 1);
    p->seq = f->seq;
    p->n = c->queued_total;
    g_queue_push_tail(&c->pend, p);
    if (c->sock) {
        conn_write(c);
        conn_watch(c);
    }
}

/* A page batch, written to QEMU as RAM records (tunnel-pages-in.h). */
static void
on_pages(MpTunMux *m, Conn *c, const MpTunFrame *f)
{
    g_autoptr(GError) err = NULL;

    if (c->done || c->aborted)
        return;
    gboolean mfd = c->open.channel == MP_TUN_CH_MULTIFD
                   && (m->agreed.features & MP_TUN_FEAT_MFD_PAGES);
    if (m->opt.role != MP_TUN_ROLE_DEST
        || (c->open.channel != MP_TUN_CH_MAIN && !mfd)) {
        fail(m, "PAGES frame of stream %u at offset %" G_GUINT64_FORMAT
                ": pages go only to the destination, on a main stream (or "
                "a multifd one when negotiated)",
             f->stream, f->offset);
        return;
    }
    c->in_urgent = (f->flags & MP_TUN_FLAG_URGENT) != 0;
    if (!c->pi) {
        c->pi = mp_tun_pages_in_new(m->agreed.page_size,
                                    m->agreed.cache_bytes);
        if (mfd)
            mp_tun_pages_in_set_bare(c->pi);
    }
    guint64 held = c->queued_total - c->written_total;
    guint64 limit = peer_window_limit(m);
    gsize before = c->wq->len;
    if (held >= limit
        || !mp_tun_pages_in_apply(c->pi, f->payload, f->len, c->wq,
                                  limit - held, &err)) {
        fail(m, "PAGES frame of stream %u at offset %" G_GUINT64_FORMAT
                ": %s",
             f->stream, f->offset,
             err ? err->message : "the stream's window is full");
        return;
    }
    queued_in(c, f, c->wq->len - before);
}

/* What a lifted page arriving now waits behind on its way to QEMU: the
 * write queue's bytes and those the kernel has not passed to QEMU's
 * socket yet (SIOCOUTQ).  A page requested in post-copy waits for them
 * all (docs/tunnel.md, "Lifted pages"). */
static void
note_lifted_behind(Conn *c)
{
    guint64 behind = c->wq->len - c->wq_pos;
    int queued = 0;
    if (c->sock && ioctl(g_socket_get_fd(c->sock), SIOCOUTQ, &queued) == 0
        && queued > 0)
        behind += (guint64)queued;
    c->lifted++;
    c->lifted_behind_sum += behind;
    c->lifted_behind_max = MAX(c->lifted_behind_max, behind);
    if (behind >= (1u << 20))
        c->lifted_behind_1m++;
}

/* `{pages, bytes_mean, bytes_max, over_1mib}` of note_lifted_behind(),
 * or NULL before the first lifted page. */
static json_object *
lifted_behind_report(const Conn *c)
{
    if (!c->lifted)
        return NULL;
    json_object *o = json_object_new_object();
    json_object_object_add(o, "pages", json_object_new_int64(c->lifted));
    json_object_object_add(
        o, "bytes_mean",
        json_object_new_int64(c->lifted_behind_sum / c->lifted));
    json_object_object_add(o, "bytes_max",
                           json_object_new_int64(c->lifted_behind_max));
    json_object_object_add(o, "over_1mib",
                           json_object_new_int64(c->lifted_behind_1m));
    return o;
}

/* Destination side: lifted pages (urgent PAGES of a main stream, their
 * own seq), merged into what is written to QEMU (tunnel-pages-in.h);
 * acknowledged at once (copies: the batch copy stands for the bytes). */
static void
on_urgent_pages(MpTunMux *m, Conn *c, const MpTunFrame *f)
{
    g_autoptr(GError) err = NULL;

    if (m->opt.role != MP_TUN_ROLE_DEST || c->open.channel != MP_TUN_CH_MAIN
        || !(m->agreed.features & MP_TUN_FEAT_URGENT_PAGES)) {
        fail(m, "urgent PAGES frame of stream %u at offset %" G_GUINT64_FORMAT
                ": lifted pages go only to the destination, on a main "
                "stream, when negotiated",
             f->stream, f->offset);
        return;
    }
    /* with resume, lifted frames lost in a drop leave a gap: they are
     * copies, never kept nor sent again (their batches are) */
    if (f->seq <= c->in_useq || (!m->keep && f->seq != c->in_useq + 1)
        || c->peer_eof) {
        fail(m, "urgent PAGES frame of stream %u: seq %" G_GUINT64_FORMAT
                ", expected %" G_GUINT64_FORMAT "%s",
             f->stream, f->seq, c->in_useq + 1,
             c->peer_eof ? ", before the stream's CLOSE" : "");
        return;
    }
    c->in_useq = f->seq;
    if (c->done || c->aborted)
        return;
    if (!c->pi)
        c->pi = mp_tun_pages_in_new(m->agreed.page_size,
                                    m->agreed.cache_bytes);
    gsize before = c->wq->len;
    note_lifted_behind(c);
    if (!mp_tun_pages_in_urgent(c->pi, f->payload, f->len, c->wq, &err)) {
        fail(m, "urgent PAGES frame of stream %u at offset %" G_GUINT64_FORMAT
                ": %s",
             f->stream, f->offset, err->message);
        return;
    }
    c->queued_total += c->wq->len - before;
    c->link_in += f->len + MP_TUN_HEADER_LEN + MP_TUN_TRAILER_LEN;
    g_autoptr(GByteArray) b = g_byte_array_new();
    MpTunAckEntry e = {.stream = c->fwd, .urgent_seq = f->seq};
    mp_tun_write_ack(b, &e, 1);
    mp_tun_conn_send(m->conn, b->data, b->len, TRUE);
    if (c->sock) {
        conn_write(c);
        conn_watch(c);
    }
}

static void
on_open(MpTunMux *m, const MpTunFrame *f)
{
    const MpTunOpen *o = &f->u.open;
    gboolean src = m->opt.role == MP_TUN_ROLE_SOURCE;

    /* the peer's streams have the peer's parity */
    if ((f->stream & 1) != (src ? 0 : 1)
        || g_hash_table_contains(m->by_stream, GUINT_TO_POINTER(f->stream))) {
        fail(m, "OPEN of stream %u: %s", f->stream,
             g_hash_table_contains(m->by_stream, GUINT_TO_POINTER(f->stream))
                 ? "already open"
                 : "an id of our parity");
        return;
    }
    if (src) {
        Conn *c = g_hash_table_lookup(m->by_stream,
                                      GUINT_TO_POINTER(o->reverse_of));
        if (!o->reverse_of || !c || c->fwd != o->reverse_of || c->rev) {
            fail(m, "OPEN of stream %u: reverse of stream %u, which has no "
                    "reverse to open",
                 f->stream, o->reverse_of);
            return;
        }
        c->rev = f->stream;
        g_hash_table_insert(m->by_stream, GUINT_TO_POINTER(c->rev), c);
        return;
    }
    if (o->reverse_of || m->conns->len >= MAX_CONNS) {
        fail(m, "OPEN of stream %u: %s", f->stream,
             o->reverse_of ? "a reverse stream from the source side"
                           : "too many connections");
        return;
    }
    Conn *c = conn_new(m, f->stream, o);
    c->in_seq = 0;
    if (m->hooks.open)
        m->hooks.open(m, f->stream, o, m->data);
}

static void
on_ack(MpTunMux *m, const MpTunFrame *f)
{
    for (guint32 i = 0; i < f->u.ack.count; i++) {
        MpTunAckEntry e = mp_tun_ack_entry(f, i);
        Conn *c = g_hash_table_lookup(m->by_stream, GUINT_TO_POINTER(e.stream));
        if (!c || c->out_id != e.stream) {
            fail(m, "ACK of stream %u, which is not ours", e.stream);
            return;
        }
        /* a bulk stream's urgent lane holds its lifted pages (their own
         * seq, nothing kept for them) */
        guint64 seq = c->out_urgent ? MAX(e.bulk_seq, e.urgent_seq)
                                    : e.bulk_seq;
        if (!c->out_urgent && e.urgent_seq > c->out_useq) {
            fail(m, "ACK of stream %u up to urgent seq %" G_GUINT64_FORMAT
                    ", only %" G_GUINT64_FORMAT " sent",
                 e.stream, e.urgent_seq, c->out_useq);
            return;
        }
        if (seq > c->out_seq) {
            fail(m, "ACK of stream %u up to seq %" G_GUINT64_FORMAT
                    ", only %" G_GUINT64_FORMAT " sent",
                 e.stream, seq, c->out_seq);
            return;
        }
        guint64 unacked = c->unacked;
        for (Pend *p; (p = g_queue_peek_head(&c->sent)) && p->seq <= seq;) {
            c->unacked -= p->n;
            pend_unkeep(m, p);
            pend_free(g_queue_pop_head(&c->sent));
        }
        conn_acked(c, unacked - c->unacked);
        conn_watch(c);
    }
}

static void
on_frame(MpTunConn *tc, const MpTunFrame *f, gpointer data)
{
    MpTunMux *m = data;

    switch (f->type) {
    case MP_TUN_OPEN:
        on_open(m, f);
        return;
    case MP_TUN_ACK:
        if (m->resuming) {
            if (mp_tun_ack_entry(f, 0).stream != MP_TUN_STREAM_CONTROL) {
                fail(m, "an ACK that is not a resume ACK (stream %u first) "
                        "after a resumed handshake",
                     mp_tun_ack_entry(f, 0).stream);
                return;
            }
            on_resume_ack(m, f);
            return;
        }
        on_ack(m, f);
        return;
    case MP_TUN_PING: {
        g_autoptr(GByteArray) b = g_byte_array_new();
        mp_tun_write_ping(b, MP_TUN_PONG, f->u.ping.token, f->u.ping.time_ns);
        mp_tun_conn_send(m->conn, b->data, b->len, TRUE);
        return;
    }
    case MP_TUN_PONG:
        return;
    case MP_TUN_DATA:
    case MP_TUN_PAGES:
    case MP_TUN_CLOSE:
        break;
    default:
        fail(m, "%s frame on stream %u: not supported by this version",
             mp_tun_frame_type_name(f->type), f->stream);
        return;
    }
    if (m->resuming) {
        fail(m, "%s frame of stream %u before the peer's resume ACK",
             mp_tun_frame_type_name(f->type), f->stream);
        return;
    }
    Conn *c = g_hash_table_lookup(m->by_stream, GUINT_TO_POINTER(f->stream));
    if (!c || c->out_id == f->stream) {
        fail(m, "%s frame of stream %u, which the peer did not open",
             mp_tun_frame_type_name(f->type), f->stream);
        return;
    }
    /* lifted pages: their own seq, never kept nor sent again (the page
     * also goes in its batch), so no duplicate check */
    if (f->type == MP_TUN_PAGES && (f->flags & MP_TUN_FLAG_URGENT)) {
        on_urgent_pages(m, c, f);
        return;
    }
    if (m->keep && f->seq <= c->in_seq) {
        m->dups++; /* sent again after a resume, held already */
        return;
    }
    if (f->seq != c->in_seq + 1) {
        fail(m, "%s frame of stream %u: seq %" G_GUINT64_FORMAT
                ", expected %" G_GUINT64_FORMAT,
             mp_tun_frame_type_name(f->type), f->stream, f->seq,
             c->in_seq + 1);
        return;
    }
    c->in_seq = f->seq;
    if (c->peer_eof) {
        fail(m, "%s frame of stream %u after its CLOSE",
             mp_tun_frame_type_name(f->type), f->stream);
        return;
    }
    if (f->type == MP_TUN_DATA) {
        on_data(m, c, f);
        return;
    }
    if (f->type == MP_TUN_PAGES) {
        on_pages(m, c, f);
        return;
    }
    if (f->u.close.how == MP_TUN_CLOSE_ABORT) {
        g_debug("%s: connection %u aborted by the peer: %s",
                mp_tun_conn_name(m->conn), c->number,
                f->u.close.reason ? f->u.close.reason : "");
        c->peer_eof = TRUE;
        c->in_urgent = (f->flags & MP_TUN_FLAG_URGENT) != 0;
        conn_abort(c, "the peer's side broke");
        send_ack(c, f->seq);
        return;
    }
    c->in_urgent = (f->flags & MP_TUN_FLAG_URGENT) != 0;
    c->peer_eof = TRUE;
    if (c->sock) {
        conn_write(c);
        conn_watch(c);
    }
}

/* What the two HELLOs agreed applies to the tunnel (its first
 * connection, or one that replaces a tunnel the peer no longer held). */
static void
apply_agreed(MpTunMux *m, const MpTunAgreed *agreed)
{
    m->agreed = *agreed;
    m->compress = m->opt.compress && (agreed->features & MP_TUN_FEAT_RAW_ZSTD);
    if (m->opt.pages) {
        MpTunPagesOptions *p = &m->opt.pages_opt;
        guint32 f = agreed->features;
        p->zero_runs = p->zero_runs && (f & MP_TUN_FEAT_ZERO_RUNS);
        p->compress = p->compress && (f & MP_TUN_FEAT_ZSTD_PAGES);
        p->delta = p->delta && (f & MP_TUN_FEAT_DELTA);
        p->dedup = p->dedup && (f & MP_TUN_FEAT_DEDUP);
        p->urgent = p->urgent && (f & MP_TUN_FEAT_URGENT_PAGES);
        /* pages need a page cache on both sides, of the agreed size */
        m->opt.pages = agreed->cache_bytes >= agreed->page_size
                       && agreed->page_size == 4096;
    }
    m->tunnel_id = agreed->tunnel_id;
    m->keep = m->opt.resume_ms && agreed->tunnel_id
              && (agreed->features & MP_TUN_FEAT_RESUME);
}

/* An ACK entry's bytes (tunnel-frame.c): the resume ACK names every
 * stream, and must fit in one frame. */
#define ACK_ENTRY_BYTES 18

/* After a resumed handshake, first thing: one ACK that starts with an
 * entry for stream 0 (the mark of a resume ACK) and names every stream of
 * the peer's this side knows, with the seq it holds (0: opened, no frame
 * yet); then an ordinary ACK of what it wrote to QEMU, which the peer may
 * have missed. */
static void
send_resume_ack(MpTunMux *m)
{
    g_autoptr(GArray) held = g_array_new(FALSE, TRUE, sizeof(MpTunAckEntry));
    g_autoptr(GArray) written = g_array_new(FALSE, TRUE,
                                            sizeof(MpTunAckEntry));
    g_autoptr(GByteArray) b = g_byte_array_new();
    MpTunAckEntry mark = {0};
    gboolean src = m->opt.role == MP_TUN_ROLE_SOURCE;

    g_array_append_val(held, mark);
    for (guint i = 0; i < m->conns->len; i++) {
        const Conn *c = g_ptr_array_index(m->conns, i);
        guint16 peer = src ? c->rev : c->fwd;
        if (!peer)
            continue;
        MpTunAckEntry e = {.stream = peer};
        *(c->in_urgent ? &e.urgent_seq : &e.bulk_seq) = c->in_seq;
        g_array_append_val(held, e);
        if (c->acked_in) {
            MpTunAckEntry w = {.stream = peer};
            *(c->in_urgent ? &w.urgent_seq : &w.bulk_seq) = c->acked_in;
            g_array_append_val(written, w);
        }
    }
    mp_tun_write_ack(b, (const MpTunAckEntry *)(gpointer)held->data,
                     held->len);
    if (written->len)
        mp_tun_write_ack(b, (const MpTunAckEntry *)(gpointer)written->data,
                         written->len);
    mp_tun_conn_send(m->conn, b->data, b->len, TRUE);
}

/* The QEMU connections the tunnel carried are lost to the peer (it does
 * not hold the tunnel): reset them here, and forget their stream ids, so
 * that a new tunnel over this mux starts clean. */
static void
drop_conns(MpTunMux *m, const char *reason)
{
    for (guint i = 0; i < m->conns->len; i++) {
        Conn *c = g_ptr_array_index(m->conns, i);
        if (!c->done) {
            c->close_sent = TRUE;
            conn_abort(c, reason);
        }
        for (Pend *p; (p = g_queue_pop_head(&c->sent));) {
            pend_unkeep(m, p);
            pend_free(p);
        }
        g_hash_table_remove(m->by_stream, GUINT_TO_POINTER(c->fwd));
        if (c->rev)
            g_hash_table_remove(m->by_stream, GUINT_TO_POINTER(c->rev));
    }
}

static void
stop_resume_timer(MpTunMux *m)
{
    if (m->resume_id)
        g_source_remove(m->resume_id);
    m->resume_id = 0;
}

/* Source side: can this peer take the routes this side uses?  A dest
 * without MP_TUN_FEAT_ROUTES (a build before routes) reads only the
 * 10-byte OPEN, route 0: it would refuse a 12-byte one or, worse, send
 * every migration to its one --to.  @return FALSE with `error`. */
static gboolean
routes_ok(const MpTunMux *m, MpTunConn *tc, const MpTunAgreed *agreed,
          GError **error)
{
    if (m->opt.role != MP_TUN_ROLE_SOURCE || m->opt.routes <= 1
        || (agreed->features & MP_TUN_FEAT_ROUTES))
        return TRUE;
    g_set_error(error, MP_PARSE_ERROR, MP_PARSE_ERROR_UNSUPPORTED,
                "%s: the peer does not offer routes (HELLO feature "
                "0x%04x: an older migproxy dest): this side has %u "
                "--listen, which need them; upgrade migproxy dest, or run "
                "one --listen",
                mp_tun_conn_name(tc), MP_TUN_FEAT_ROUTES, m->opt.routes);
    return FALSE;
}

static void
on_ready(MpTunConn *tc, const MpTunAgreed *agreed, gpointer data)
{
    MpTunMux *m = data;
    g_autoptr(GError) err = NULL;

    if (!routes_ok(m, tc, agreed, &err)) {
        /* the peer learns why (END REFUSED), and this side closes with
         * the error: a refusal that another try would meet again */
        mp_tun_conn_end(tc, MP_TUN_END_REFUSED, err->message);
        mp_tun_conn_fail(tc, err);
        return;
    }
    if (!m->ready) {
        apply_agreed(m, agreed);
        m->ready = TRUE;
        if (m->hooks.ready)
            m->hooks.ready(m, m->data);
        return;
    }
    /* a connection made to resume the tunnel that dropped: the same
     * tunnel on both sides, on the same terms, with room to say what
     * each holds */
    const MpTunAgreed *o = &m->agreed;
    if (agreed->resumed && agreed->tunnel_id == m->tunnel_id
        && agreed->version == o->version && agreed->features == o->features
        && agreed->page_size == o->page_size
        && agreed->cache_bytes == o->cache_bytes
        && agreed->max_payload == o->max_payload
        && (gsize)(m->conns->len + 1) * ACK_ENTRY_BYTES
               <= agreed->max_payload) {
        m->resuming = TRUE;
        send_resume_ack(m);
        return;
    }
    /* the peer does not hold this tunnel (dest restarted, or gave it up;
     * or a source side that started over): what it carried is lost, and
     * this connection is a new tunnel */
    g_warning("%s: the peer does not hold tunnel %016" G_GINT64_MODIFIER
              "x (%s): the %u QEMU connections it carried are reset (in "
              "post-copy QEMU pauses, and its own recovery, migrate-recover "
              "and migrate with resume, goes on through the pair); this "
              "connection is a new tunnel",
              mp_tun_conn_name(tc), m->tunnel_id,
              agreed->tunnel_id != m->tunnel_id ? "it names another"
                                                : "it started afresh",
              m->live);
    stop_resume_timer(m);
    drop_conns(m, "the tunnel's peer no longer holds it");
    m->suspended = m->resuming = FALSE;
    g_clear_error(&m->drop_error);
    apply_agreed(m, agreed);
    if (m->hooks.ready)
        m->hooks.ready(m, m->data);
}

/* The peer's resume ACK: what it holds of each of our streams.  Frames
 * after that go again, in order (an OPEN first where it never got it);
 * then the tunnel runs on. */
static void
on_resume_ack(MpTunMux *m, const MpTunFrame *f)
{
    guint64 frames = 0, bytes = 0;
    gboolean src = m->opt.role == MP_TUN_ROLE_SOURCE;

    for (guint32 k = 1; k < f->u.ack.count; k++) {
        MpTunAckEntry e = mp_tun_ack_entry(f, k);
        Conn *c = g_hash_table_lookup(m->by_stream,
                                      GUINT_TO_POINTER(e.stream));
        if (!c || c->out_id != e.stream
            || MAX(e.bulk_seq, e.urgent_seq) > c->out_seq) {
            fail(m, "resume ACK: stream %u up to seq %" G_GUINT64_FORMAT
                    ", which this side did not send",
                 e.stream, MAX(e.bulk_seq, e.urgent_seq));
            return;
        }
    }
    for (guint i = 0; i < m->conns->len; i++) {
        Conn *c = g_ptr_array_index(m->conns, i);
        gboolean known = FALSE;
        guint64 held = 0;
        if (!c->out_id)
            continue;
        for (guint32 k = 1; k < f->u.ack.count && !known; k++) {
            MpTunAckEntry e = mp_tun_ack_entry(f, k);
            if (e.stream == c->out_id) {
                known = TRUE;
                held = MAX(e.bulk_seq, e.urgent_seq);
            }
        }
        if (!known && g_queue_is_empty(&c->sent))
            continue; /* nothing of it is owed */
        if (!known) {
            /* its OPEN was lost with the connection */
            g_autoptr(GByteArray) b = g_byte_array_new();
            MpTunOpen o = c->open;
            if (!src) {
                o.reverse_of = c->fwd;
                o.channel = MP_TUN_CH_RETURN_PATH;
            }
            mp_tun_write_open(b, c->out_id, &o);
            mp_tun_conn_send(m->conn, b->data, b->len, c->out_urgent);
        }
        for (GList *l = c->sent.head; l; l = l->next) {
            Pend *p = l->data;
            if (p->seq <= held) {
                pend_unkeep(m, p);
                continue;
            }
            if (!p->frame) {
                fail(m, "stream %u: frame %" G_GUINT64_FORMAT " is owed "
                        "to the peer and not kept",
                     c->out_id, p->seq);
                return;
            }
            mp_tun_conn_send_bytes(m->conn, p->frame, c->out_urgent);
            frames++;
            bytes += g_bytes_get_size(p->frame);
        }
    }
    double down_ms = (g_get_monotonic_time() - m->down_since) / 1e3;
    stop_resume_timer(m);
    m->suspended = m->resuming = FALSE;
    m->resumes++;
    m->frames_resent += frames;
    m->bytes_resent += bytes;
    m->down_ms_max = MAX(m->down_ms_max, down_ms);
    g_clear_error(&m->drop_error);
    if (!m->opt.quiet)
        g_message("%s: tunnel %016" G_GINT64_MODIFIER "x resumed after %.0f "
                  "ms (drop %u): %u QEMU connections kept, %" G_GUINT64_FORMAT
                  " frames (%" G_GUINT64_FORMAT " bytes) sent again that the "
                  "peer did not hold",
                  mp_tun_conn_name(m->conn), m->tunnel_id, down_ms, m->drops,
                  m->live, frames, bytes);
    for (guint i = 0; i < m->conns->len; i++) {
        Conn *c = g_ptr_array_index(m->conns, i);
        pages_send(c);
        if (!c->done)
            conn_watch(c);
    }
}

/* Does a drop leave something worth resuming?  dest cannot tell pre-copy
 * from post-copy and holds any live connection (the source side decides:
 * a source side that does not resume starts a new tunnel, which makes
 * dest give this one up); the source side resumes once a migration's
 * guest runs on the destination (its post-copy package went), where failing would
 * stop it; in pre-copy a failure is cheap and clean (the guest runs on at
 * the source), so the migration fails at once as without resume. */
static gboolean
resumable(const MpTunMux *m)
{
    if (!m->live)
        return FALSE;
    if (m->opt.role == MP_TUN_ROLE_DEST || m->opt.resume_any)
        return TRUE;
    for (guint i = 0; i < m->conns->len; i++) {
        const Conn *c = g_ptr_array_index(m->conns, i);
        if (!c->done && c->po && mp_tun_pages_out_postcopy_running(c->po))
            return TRUE;
    }
    return FALSE;
}

static void final_close(MpTunMux *m, const GError *error, guint8 end_code);

static gboolean
resume_expired(gpointer data)
{
    MpTunMux *m = data;
    m->resume_id = 0;
    g_autoptr(GError) err = g_error_new(
        G_IO_ERROR, G_IO_ERROR_TIMED_OUT,
        "%s: dropped (%s) and not resumed in %u ms; the QEMU connections "
        "it carried are reset",
        m->name, m->drop_error ? m->drop_error->message : "?",
        m->opt.resume_ms);
    if (m->conn) {
        m->link_in_before += mp_tun_conn_bytes_in(m->conn);
        m->link_out_before += mp_tun_conn_bytes_out(m->conn);
        g_clear_pointer(&m->conn, mp_tun_conn_free);
    }
    m->suspended = m->resuming = FALSE;
    final_close(m, err, 0);
    return G_SOURCE_REMOVE;
}

/* The link dropped (or a connection made to resume it failed): the QEMU
 * connections stay open and unread while the owner brings a new
 * connection (mp_tun_mux_resume()), for opt.resume_ms. */
static void
suspend(MpTunMux *m, MpTunConn *tc, const GError *why)
{
    gboolean again = m->suspended;
    /* `why` belongs to `tc`, which goes below */
    g_autoptr(GError) error = g_error_copy(why);

    m->link_in_before += mp_tun_conn_bytes_in(tc);
    m->link_out_before += mp_tun_conn_bytes_out(tc);
    if (!m->last_link || mp_tun_conn_is_ready(tc)) {
        if (m->last_link)
            json_object_put(m->last_link);
        m->last_link = mp_tun_link_report(mp_tun_conn_link(tc));
    }
    mp_tun_conn_free(tc); /* inside its own `closed` hook: allowed */
    m->conn = NULL;
    m->resuming = FALSE;
    if (!again) {
        m->suspended = TRUE;
        m->drops++;
        m->down_since = g_get_monotonic_time();
        g_clear_error(&m->drop_error);
        m->drop_error = g_error_copy(error);
        m->resume_id = g_timeout_add(m->opt.resume_ms, resume_expired, m);
        g_warning("%s; the %u QEMU connections it carried stay open for "
                  "up to %u ms while the tunnel resumes",
                  error->message, m->live, m->opt.resume_ms);
    } else {
        g_message("%s: not resumed yet: %s", m->name, error->message);
    }
    for (guint i = 0; i < m->conns->len; i++)
        conn_watch(g_ptr_array_index(m->conns, i));
    if (m->hooks.suspended)
        m->hooks.suspended(m, error, m->data);
}

/* A round's reads at most before the loop's other sources get a turn
 * (a read of a main stream also runs its page encoders). */
#define ROUND_READS 8

/* One read of migration `g`'s next connection that has bytes and may
 * read.  @return TRUE if one read something. */
static gboolean
mig_read(Mig *g)
{
    guint n = g->conns->len;

    for (guint k = 0; k < n; k++) {
        guint i = (g->next + k) % n;
        Conn *c = g_ptr_array_index(g->conns, i);
        if (c->out_urgent || !may_read(c))
            continue;
        guint64 before = c->read_bytes;
        conn_read(c);
        if (c->read_bytes != before) {
            g->next = (i + 1) % n;
            return TRUE;
        }
    }
    return FALSE;
}

/* Migrations with no live connection left go (their connections stay in
 * the mux's list for the reports). */
static void
migs_prune(MpTunMux *m)
{
    for (guint i = m->migs->len; i-- > 0;) {
        Mig *g = g_ptr_array_index(m->migs, i);
        if (g->live)
            continue;
        for (guint k = 0; k < g->conns->len; k++)
            ((Conn *)g_ptr_array_index(g->conns, k))->mig = NULL;
        g_ptr_array_remove_index(m->migs, i);
        if (m->mig_next > i)
            m->mig_next--;
    }
    if (m->mig_next >= m->migs->len)
        m->mig_next = 0;
}

/* The bulk lane's room goes round the migrations, one read each from
 * the one after the last served, and within a migration round its
 * connections, so that each migration that has bytes gets an equal turn
 * whatever its number of connections (main, multifd, preempt's bulk
 * peers: test-tunnel-mux `migrations_share_not_connections`).  Every
 * read of a bulk connection goes through here (on_local only asks for a
 * round): left to their sockets' sources, the connection whose source
 * was made first would be dispatched first after every drain and take
 * all the room (test-tunnel-mux `sessions_share_a_paced_link`).  Reads
 * are the unit: up to a DATA frame's raw bytes each
 * (mp_tun_conn_chunk()), so migrations that keep the link busy move
 * about equal stream bytes (their link bytes differ as their pages
 * compress). */
static gboolean
bulk_round(gpointer data)
{
    MpTunMux *m = data;
    guint reads = 0;
    gboolean more = TRUE;

    m->rr_id = 0;
    migs_prune(m);
    while (more && reads < ROUND_READS) {
        guint n = m->migs->len, start = m->mig_next;
        more = FALSE;
        /* the link may drop meanwhile (suspended for a resume) */
        for (guint k = 0; k < n && reads < ROUND_READS && linked(m)
                          && mp_tun_conn_bulk_room(m->conn);
             k++) {
            guint i = (start + k) % n;
            if (mig_read(g_ptr_array_index(m->migs, i))) {
                m->mig_next = (i + 1) % n;
                more = TRUE;
                reads++;
            }
        }
        more = more && linked(m) && mp_tun_conn_bulk_room(m->conn);
    }
    for (guint i = 0; i < m->migs->len; i++) {
        Mig *g = g_ptr_array_index(m->migs, i);
        for (guint k = 0; k < g->conns->len; k++)
            conn_watch(g_ptr_array_index(g->conns, k));
    }
    /* room and bytes left: the rest after the loop's other sources */
    if (more)
        schedule_round(m);
    return G_SOURCE_REMOVE;
}

static void
schedule_round(MpTunMux *m)
{
    if (!m->rr_id)
        m->rr_id = g_idle_add_full(G_PRIORITY_DEFAULT, bulk_round, m, NULL);
}

/* From the main loop, not here: the writer that drained may be inside a
 * frame's handling (a failure flushes the queue), and a read reuses the
 * read buffer. */
static void
on_drained(MpTunConn *tc, gpointer data)
{
    schedule_round(data);
}

static void
on_paced(MpTunConn *tc, gpointer data)
{
    MpTunMux *m = data;
    if (!m->opt.quiet)
        g_message("%s: the link takes %.1f Mbit/s; pacing bulk frames at "
                  "%.1f Mbit/s",
                  mp_tun_conn_name(tc),
                  mp_tun_link_rate(mp_tun_conn_link(tc)) * 8 / 1e6,
                  mp_tun_link_pace(mp_tun_conn_link(tc)) * 8 / 1e6);
}

/* The tunnel is over: every QEMU connection is reset. */
static void
final_close(MpTunMux *m, const GError *error, guint8 end_code)
{
    stop_resume_timer(m);
    m->closed = TRUE;
    for (guint i = 0; i < m->conns->len; i++) {
        Conn *c = g_ptr_array_index(m->conns, i);
        if (!c->done) {
            c->close_sent = TRUE;
            conn_abort(c, "the tunnel is gone");
        }
    }
    if (m->hooks.closed)
        m->hooks.closed(m, error, end_code, m->data);
}

static void
on_closed(MpTunConn *tc, const GError *error, guint8 end_code, gpointer data)
{
    MpTunMux *m = data;

    /* a link that broke, not a peer that ended the tunnel */
    if (m->ready && m->keep && error && !m->ending
        && !mp_tun_conn_peer_ended(tc) && resumable(m)) {
        suspend(m, tc, error);
        return;
    }
    if (m->suspended) {
        /* a connection made to resume failed, and nothing is left to
         * resume (`error` belongs to `tc`) */
        g_autoptr(GError) err = error ? g_error_copy(error) : NULL;
        m->link_in_before += mp_tun_conn_bytes_in(tc);
        m->link_out_before += mp_tun_conn_bytes_out(tc);
        mp_tun_conn_free(tc);
        m->conn = NULL;
        m->suspended = m->resuming = FALSE;
        final_close(m, m->drop_error ? m->drop_error : err, end_code);
        return;
    }
    final_close(m, error, end_code);
}

/* Every second on the source side: tells once when the source QEMU's
 * stream arrives at a steady rate that neither the tunnel nor the link
 * holds back: QEMU's own max-bandwidth, most likely. */
static gboolean
cap_tick(gpointer data)
{
    MpTunMux *m = data;
    guint64 bytes = 0;

    if (!linked(m))
        return G_SOURCE_CONTINUE; /* the tunnel is down: nothing to say */
    for (guint i = 0; i < m->conns->len; i++) {
        const Conn *c = g_ptr_array_index(m->conns, i);
        if (!c->out_urgent)
            bytes += c->read_bytes;
    }
    gboolean held = mp_tun_link_take_held(mp_tun_conn_link(m->conn));
    double rate = mp_tun_cap_sample(&m->cap, g_get_monotonic_time(), bytes,
                                    m->dry && !held && m->live);
    m->dry = FALSE;
    /* the encoders back off where they do not pay: the rate given, or
     * measured; none yet, they stay as they are */
    double link = m->opt.rate ? (double)m->opt.rate
                              : (double)mp_tun_link_rate(
                                    mp_tun_conn_link(m->conn));
    for (guint i = 0; i < m->conns->len; i++) {
        Conn *c = g_ptr_array_index(m->conns, i);
        if (c->po)
            mp_tun_pages_out_adapt(c->po, link);
    }
    if (rate > 0)
        g_message("%s: the source QEMU sends a steady %.1f MiB/s of stream "
                  "while the tunnel and the link have room: QEMU's "
                  "max-bandwidth (default 128 MiB/s, in stream bytes before "
                  "compression) is what limits this migration; raise it "
                  "(migrate-set-parameters max-bandwidth) to use the link",
                  mp_tun_conn_name(m->conn), rate / (1024.0 * 1024.0));
    return G_SOURCE_CONTINUE;
}

static const MpTunConnHooks conn_hooks = {
    .ready = on_ready,
    .frame = on_frame,
    .drained = on_drained,
    .closed = on_closed,
    .paced = on_paced,
};

/* What this side offers for PAGES: the destination decodes every
 * encoder; the source offers those it runs. */
static guint32
pages_features(const MpTunMuxOptions *opt)
{
    const MpTunPagesOptions *p = &opt->pages_opt;

    if (opt->role == MP_TUN_ROLE_DEST)
        return MP_TUN_FEAT_ZERO_RUNS | MP_TUN_FEAT_ZSTD_PAGES
               | MP_TUN_FEAT_DELTA | MP_TUN_FEAT_DEDUP
               | MP_TUN_FEAT_ZERO_HELD | MP_TUN_FEAT_URGENT_PAGES
               | MP_TUN_FEAT_MFD_PAGES;
    if (!opt->pages)
        return 0;
    return MP_TUN_FEAT_MFD_PAGES
           | (p->zero_runs ? MP_TUN_FEAT_ZERO_RUNS | MP_TUN_FEAT_ZERO_HELD : 0)
           | (p->compress ? MP_TUN_FEAT_ZSTD_PAGES : 0)
           | (p->delta ? MP_TUN_FEAT_DELTA : 0)
           | (p->dedup ? MP_TUN_FEAT_DEDUP : 0)
           | (p->urgent ? MP_TUN_FEAT_URGENT_PAGES : 0);
}

/* The page cache a side offers per stream: the source its --cache (or the
 * ceiling of the automatic size), the destination the ceiling; both then
 * use the smaller. */
static guint64
pages_cache(const MpTunMuxOptions *opt)
{
    if (opt->role == MP_TUN_ROLE_DEST)
        return MP_TUN_MUX_CACHE_MAX;
    if (!opt->pages)
        return 0;
    return opt->pages_opt.cache_bytes ? opt->pages_opt.cache_bytes
                                      : MP_TUN_MUX_CACHE_MAX;
}

/* This side's HELLO (the options as given: a resume offers what the
 * first connection offered, so that the two agree alike). */
static MpTunHello
make_hello(const MpTunMux *m)
{
    const MpTunMuxOptions *opt = &m->opt0;
    gboolean resume = opt->resume_ms
                      && (opt->role == MP_TUN_ROLE_DEST || opt->tunnel_id);
    MpTunHello h = {
        .version_min = MP_TUN_VERSION,
        .version_max = MP_TUN_VERSION,
        .role = opt->role,
        .tls = opt->tls ? MP_TUN_TLS_REQUIRED : MP_TUN_TLS_NONE,
        /* both sides understand routes (a source side with one route
         * sends none) */
        .features = (opt->compress ? MP_TUN_FEAT_RAW_ZSTD : 0)
                    | pages_features(opt) | (resume ? MP_TUN_FEAT_RESUME : 0)
                    | MP_TUN_FEAT_ROUTES | MP_TUN_FEAT_WIDE_WINDOW,
        .page_size = 4096,
        .cache_bytes = pages_cache(opt),
        .max_payload = MP_TUN_MAX_PAYLOAD_DEFAULT,
        .tunnel_id = m->tunnel_id,
        .software = "migproxy " MP_VERSION,
    };
    return h;
}

MpTunMux *
mp_tun_mux_new(GIOStream *stream, const char *name, const MpTunMuxOptions *opt,
               const MpTunMuxHooks *hooks, gpointer data)
{
    MpTunMux *m = g_new0(MpTunMux, 1);
    m->opt = *opt;
    m->opt0 = *opt;
    m->hooks = *hooks;
    m->data = data;
    m->by_stream = g_hash_table_new(NULL, NULL);
    m->conns = g_ptr_array_new_with_free_func((GDestroyNotify)conn_free);
    m->migs = g_ptr_array_new_with_free_func((GDestroyNotify)mig_free);
    m->next_id = opt->role == MP_TUN_ROLE_SOURCE ? 1 : 2;
    m->rbuf = g_malloc(MP_TUN_MUX_CHUNK);
    m->zbuf_len = ZSTD_compressBound(MP_TUN_MUX_CHUNK);
    m->zbuf = g_malloc(m->zbuf_len);
    m->dbuf = g_malloc(MP_TUN_MAX_PAYLOAD_LIMIT + 1);
    m->name = g_strdup(name);
    /* the source side names a new tunnel; dest learns the name from it */
    m->tunnel_id = opt->role == MP_TUN_ROLE_SOURCE ? opt->tunnel_id : 0;

    MpTunHello h = make_hello(m);
    m->conn = mp_tun_conn_new(stream, name, &h, &conn_hooks, m);
    mp_tun_conn_set_ping_timeout(m->conn, opt->ping_timeout_ms);
    if (opt->rate)
        mp_tun_conn_set_rate(m->conn, opt->rate);
    if (opt->role == MP_TUN_ROLE_SOURCE) {
        mp_tun_cap_init(&m->cap, g_get_monotonic_time());
        m->cap_id = g_timeout_add(1000, cap_tick, m);
    }
    return m;
}

void
mp_tun_mux_free(MpTunMux *m)
{
    if (!m)
        return;
    if (m->cap_id)
        g_source_remove(m->cap_id);
    if (m->rr_id)
        g_source_remove(m->rr_id);
    if (m->enc_done)
        json_object_put(m->enc_done);
    if (m->last_link)
        json_object_put(m->last_link);
    stop_resume_timer(m);
    g_clear_error(&m->drop_error);
    mp_tun_conn_free(m->conn);
    g_ptr_array_unref(m->migs);
    g_ptr_array_unref(m->conns);
    g_hash_table_unref(m->by_stream);
    g_free(m->name);
    g_free(m->rbuf);
    g_free(m->zbuf);
    g_free(m->dbuf);
    g_free(m);
}

/* Source side: a main stream's pages go through the encoders, and a
 * multifd stream's when dest can write them back (MP_TUN_FEAT_MFD_PAGES).
 * A page carried by another channel of the session (multifd, preempt) is
 * not seen by the main stream's encoder, so then none of the session's
 * encoders skips a zero page (tunnel-pages-out.h). */
static void
pages_attach(MpTunMux *m, Conn *c)
{
    gboolean main = c->open.channel == MP_TUN_CH_MAIN;
    gboolean mfd = c->open.channel == MP_TUN_CH_MULTIFD
                   && (m->agreed.features & MP_TUN_FEAT_MFD_PAGES);

    if (m->opt.role != MP_TUN_ROLE_SOURCE || !m->opt.pages)
        return;
    gboolean shared = FALSE;
    for (guint i = 0; i + 1 < m->conns->len; i++) {
        Conn *o = g_ptr_array_index(m->conns, i);
        if (o->open.session != c->open.session)
            continue;
        if (o->po && !main)
            mp_tun_pages_out_set_shared(o->po);
        if (o->open.channel != MP_TUN_CH_MAIN)
            shared = TRUE;
    }
    if (!main && !mfd)
        return;
    g_autofree char *name = g_strdup_printf(
        "%s: stream %u", mp_tun_conn_name(m->conn), c->fwd);
    MpTunPagesOptions popt = m->opt.pages_opt;
    popt.multifd = mfd;
    c->po = mp_tun_pages_out_new(&popt, m->agreed.page_size,
                                 m->agreed.cache_bytes, m->agreed.max_payload,
                                 name, pages_wake, c);
    if (shared)
        mp_tun_pages_out_set_shared(c->po);
}

/* A QEMU connection (dest) or the relay's (source): non-blocking, and
 * without Nagle: a lifted page or a page request written while earlier
 * bytes are unacknowledged would wait for the peer's ACK, and on loopback
 * (a 64 KiB MSS) nearly every write is a small one (dest: 4.8 ms from a
 * lifted page's arrival to QEMU placing it, 0.08 ms without). */
static void
local_socket_setup(GSocket *local)
{
    g_socket_set_blocking(local, FALSE);
    g_socket_set_option(local, IPPROTO_TCP, TCP_NODELAY, 1, NULL);
}

guint16
mp_tun_mux_add(MpTunMux *m, GSocket *local, const MpTunOpen *o)
{
    /* a route goes only to a peer that said it takes them (routes_ok()
     * refused the others when the tunnel came up) */
    if (!m->ready || !linked(m) || m->suspended || m->conns->len >= MAX_CONNS
        || (o->route && !(m->agreed.features & MP_TUN_FEAT_ROUTES))) {
        g_socket_close(local, NULL);
        return 0;
    }
    guint16 id = m->next_id;
    m->next_id += 2;
    Conn *c = conn_new(m, id, o);
    c->out_id = id;
    c->out_urgent = o->channel == MP_TUN_CH_PREEMPT;
    c->sock = g_object_ref(local);
    local_socket_setup(local);
    pages_attach(m, c);
    g_autoptr(GByteArray) b = g_byte_array_new();
    mp_tun_write_open(b, id, o);
    ctl_send(m, b->data, b->len, c->out_urgent);
    conn_watch(c);
    return id;
}

void
mp_tun_mux_attach(MpTunMux *m, guint16 stream, GSocket *local)
{
    Conn *c = g_hash_table_lookup(m->by_stream, GUINT_TO_POINTER(stream));

    if (!c || c->done || m->closed) {
        g_socket_close(local, NULL);
        return;
    }
    c->sock = g_object_ref(local);
    local_socket_setup(local);
    if (c->aborted) {
        conn_abort(c, "aborted before it was connected");
        return;
    }
    conn_write(c);
    conn_watch(c);
}

void
mp_tun_mux_refuse(MpTunMux *m, guint16 stream, const char *reason)
{
    Conn *c = g_hash_table_lookup(m->by_stream, GUINT_TO_POINTER(stream));
    if (!c || c->done)
        return;
    /* the peer's frames for it still come until it reads our CLOSE: they
     * are dropped (on_data), not a protocol error */
    conn_abort(c, reason);
}

void
mp_tun_mux_end(MpTunMux *m, guint8 code, const char *reason)
{
    m->ending = TRUE;
    if (m->suspended) {
        /* nobody to tell: the tunnel ends now (from an idle, as a
         * closed connection would) */
        stop_resume_timer(m);
        m->resume_id = g_idle_add(resume_expired, m);
        return;
    }
    mp_tun_conn_end(m->conn, code, reason);
}

void
mp_tun_mux_resume(MpTunMux *m, GIOStream *stream, const char *name)
{
    g_return_if_fail(m->suspended && !m->conn);
    MpTunHello h = make_hello(m);
    m->conn = mp_tun_conn_new(stream, name, &h, &conn_hooks, m);
    mp_tun_conn_set_ping_timeout(m->conn, m->opt.ping_timeout_ms);
    if (m->opt.rate)
        mp_tun_conn_set_rate(m->conn, m->opt.rate);
    for (guint i = 0; i < m->conns->len; i++) {
        const Conn *c = g_ptr_array_index(m->conns, i);
        if (c->po && mp_tun_pages_out_postcopy_advised(c->po))
            mp_tun_link_allow_pace(mp_tun_conn_link(m->conn));
    }
}

guint
mp_tun_mux_default_ping_timeout(guint resume_ms)
{
    if (!resume_ms)
        return MP_TUN_MUX_PING_TIMEOUT_MAX;
    return CLAMP(resume_ms / 3, MP_TUN_MUX_PING_TIMEOUT_MIN,
                 MP_TUN_MUX_PING_TIMEOUT_MAX);
}

gboolean
mp_tun_mux_suspended(const MpTunMux *m)
{
    return m->suspended && !m->conn && !m->closed;
}

guint64
mp_tun_mux_tunnel_id(const MpTunMux *m)
{
    return m->tunnel_id;
}

guint
mp_tun_mux_live(const MpTunMux *m)
{
    return m->live;
}

void
mp_tun_mux_page_first(MpTunMux *m, guint16 route)
{
    for (guint i = 0; i < m->conns->len; i++) {
        Conn *c = g_ptr_array_index(m->conns, i);
        if (c->po && !c->done && c->open.route == route
            && c->open.channel == MP_TUN_CH_MAIN) {
            mp_tun_pages_out_page_first(c->po);
            /* at once, not at the loop's next turn: the relay that called
             * reads ahead in front of the hop before that (a millisecond
             * per turn); reading makes room in the hop for the page, and
             * once the relay wrote it the next call takes it */
            read_few(c);
            conn_watch(c);
        }
    }
}

guint
mp_tun_mux_session_live(const MpTunMux *m, guint32 session)
{
    guint n = 0;
    for (guint i = 0; i < m->conns->len; i++) {
        const Conn *c = g_ptr_array_index(m->conns, i);
        n += c->open.session == session && !c->done;
    }
    return n;
}

gboolean
mp_tun_mux_ready(const MpTunMux *m)
{
    return m->ready && !m->closed && !m->suspended;
}

MpTunLink *
mp_tun_mux_link(const MpTunMux *m)
{
    return m->conn ? mp_tun_conn_link(m->conn) : NULL;
}

guint
mp_tun_mux_connections(const MpTunMux *m)
{
    return m->conns->len;
}

/* docs/tunnel.md, "What the pair does on a drop" */
static json_object *
resume_report(const MpTunMux *m)
{
    json_object *o = json_object_new_object();
    g_autofree char *id = g_strdup_printf("%016" G_GINT64_MODIFIER "x",
                                          m->tunnel_id);
    json_object_object_add(o, "on", json_object_new_boolean(m->keep));
    json_object_object_add(o, "tunnel_id", json_object_new_string(id));
    json_object_object_add(o, "drops", json_object_new_int(m->drops));
    json_object_object_add(o, "resumed", json_object_new_int(m->resumes));
    json_object_object_add(o, "frames_resent",
                           json_object_new_int64(m->frames_resent));
    json_object_object_add(o, "bytes_resent",
                           json_object_new_int64(m->bytes_resent));
    json_object_object_add(o, "duplicates_dropped",
                           json_object_new_int64(m->dups));
    json_object_object_add(o, "down_ms_max",
                           json_object_new_double(m->down_ms_max));
    json_object_object_add(o, "kept_bytes_max",
                           json_object_new_int64(m->kept_max));
    return o;
}

static json_object *
dir_report(guint64 qemu_bytes, guint64 link_bytes)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "bytes_in", json_object_new_int64(qemu_bytes));
    json_object_object_add(o, "bytes_out", json_object_new_int64(link_bytes));
    return o;
}

json_object *
mp_tun_mux_report(const MpTunMux *m, guint since)
{
    return mp_tun_mux_report_route(m, since, -1);
}

json_object *
mp_tun_mux_report_route(const MpTunMux *m, guint since, int route)
{
    json_object *o = json_object_new_object(), *chans = json_object_new_array();
    gboolean src = m->opt.role == MP_TUN_ROLE_SOURCE;
    guint64 frames_out = 0, frames_in = 0;

    for (guint i = since; i < m->conns->len; i++) {
        const Conn *c = g_ptr_array_index(m->conns, i);
        if (route >= 0 && c->open.route != route)
            continue;
        frames_out += c->link_out;
        frames_in += c->link_in;
        json_object *j = json_object_new_object();
        json_object_object_add(j, "connection", json_object_new_int(c->number));
        json_object_object_add(j, "session",
                               json_object_new_int64(c->open.session));
        json_object_object_add(j, "route", json_object_new_int(c->open.route));
        json_object_object_add(j, "stream", json_object_new_int(c->fwd));
        json_object_object_add(
            j, "kind", json_object_new_string(kind_name(c->open.channel, 0)));
        if (c->open.channel == MP_TUN_CH_MULTIFD)
            json_object_object_add(j, "index",
                                   json_object_new_int(c->open.index));
        /* the direction this side reads: QEMU's bytes in, link bytes out;
         * the other: link bytes in, QEMU's bytes out */
        json_object *rd = dir_report(c->read_bytes, c->link_out);
        json_object_object_add(
            rd, "window_max_bytes",
            json_object_new_int64((gint64)c->window_max));
        json_object *wr = dir_report(c->link_in, c->written_total);
        json_object_object_add(j, "to_dst", src ? rd : wr);
        json_object_object_add(j, "to_src", src ? wr : rd);
        json_object_object_add(j, "aborted", json_object_new_boolean(c->aborted));
        json_object *pg = c->pages_report ? json_object_get(c->pages_report)
                          : c->po         ? mp_tun_pages_out_report(c->po)
                          : c->pi         ? mp_tun_pages_in_report(c->pi)
                                          : NULL;
        if (pg)
            json_object_object_add(src ? rd : wr, "pages", pg);
        json_object *lb = lifted_behind_report(c);
        if (lb)
            json_object_object_add(wr, "lifted_behind", lb);
        json_object_array_add(chans, j);
    }
    json_object_object_add(o, "compress", json_object_new_boolean(m->compress));
    if (src)
        json_object_object_add(o, "pages",
                               json_object_new_boolean(m->opt.pages));
    json_object_object_add(
        o, "link_bytes_in",
        json_object_new_int64(m->link_in_before
                              + (m->conn ? mp_tun_conn_bytes_in(m->conn) : 0)));
    json_object_object_add(
        o, "link_bytes_out",
        json_object_new_int64(m->link_out_before
                              + (m->conn ? mp_tun_conn_bytes_out(m->conn)
                                         : 0)));
    json_object_object_add(
        o, "link",
        m->conn && (mp_tun_conn_is_ready(m->conn) || !m->last_link)
            ? mp_tun_link_report(mp_tun_conn_link(m->conn))
            : json_object_get(m->last_link));
    json_object_object_add(o, "resume", resume_report(m));
    /* the link bytes of the connections listed (their DATA and PAGES
     * frames): a session's share when several run at once */
    json_object_object_add(o, "channels_link_bytes_out",
                           json_object_new_int64(frames_out));
    json_object_object_add(o, "channels_link_bytes_in",
                           json_object_new_int64(frames_in));
    json_object_object_add(o, "channels", chans);
    return o;
}

json_object *
mp_tun_mux_encoders(const MpTunMux *m)
{
    json_object *acc = json_object_new_object();
    gboolean any = m->enc_done != NULL;

    /* the ended streams' bytes and seconds; `on` is the live streams' */
    if (m->enc_done) {
        json_object_object_foreach(m->enc_done, k, v)
        {
            json_object *o = NULL;
            json_object_deep_copy(v, &o, NULL);
            json_object_object_add(o, "on", json_object_new_boolean(FALSE));
            json_object_object_add(acc, k, o);
        }
    }
    for (guint i = 0; i < m->conns->len; i++) {
        const Conn *c = g_ptr_array_index(m->conns, i);
        if (c->po) {
            mp_tun_pages_out_add_counters(c->po, acc);
            any = TRUE;
        }
    }
    if (!any) {
        json_object_put(acc);
        return NULL;
    }
    return acc;
}
