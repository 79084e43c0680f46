/* tunnel-mux.c: QEMU connections as streams of one tunnel (see
 * tunnel-mux.h). */
#include "config.h"
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
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
} Pend;

typedef struct {
    MpTunMux *m;
    guint number; /* in the order the connections came, from 0 */
    guint16 fwd, rev; /* forward (odd) and reverse (even, 0: not yet) */
    MpTunOpen open;   /* the forward stream's */
    GSocket *sock;    /* NULL: not attached yet, or closed */
    GSource *source;
    GIOCondition cond;
    /* the local socket read: our outgoing stream */
    guint16 out_id;
    gboolean out_urgent;
    guint64 out_seq;
    GQueue sent; /* Pend*: frames not acknowledged */
    guint64 unacked;
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
    json_object *pages_report; /* theirs, kept when they are freed */
} Conn;

struct MpTunMux {
    MpTunMuxOptions opt;
    MpTunMuxHooks hooks;
    gpointer data;
    MpTunConn *conn;
    MpTunAgreed agreed;
    gboolean ready, compress, closed;
    GHashTable *by_stream; /* id -> Conn* (both ids of a connection) */
    GPtrArray *conns;      /* Conn*, in order */
    guint16 next_id;
    guint live;
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
};

static void conn_watch(Conn *c);
static void queued_in(Conn *c, const MpTunFrame *f, gsize n);
static void sent(Conn *c, guint64 seq, guint64 account, gsize link);

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
    g_queue_clear_full(&c->sent, g_free);
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
    g_queue_clear_full(&c->sent, g_free);
    g_queue_clear_full(&c->pend, g_free);
    pages_done(c);
    m->live--;
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
    mp_tun_conn_send(m->conn, b->data, b->len, c->out_urgent);
}

static void
send_close(Conn *c, guint8 how, const char *reason)
{
    MpTunMux *m = c->m;

    if (c->close_sent)
        return;
    ensure_out_open(c);
    g_autoptr(GByteArray) b = g_byte_array_new();
    mp_tun_write_close(b, c->out_urgent ? MP_TUN_FLAG_URGENT : 0, c->out_id,
                       ++c->out_seq, how, reason);
    mp_tun_conn_send(m->conn, b->data, b->len, c->out_urgent);
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
    if (mp_tun_conn_is_ready(c->m->conn))
        send_close(c, MP_TUN_CLOSE_ABORT, reason);
    c->close_sent = TRUE;
    conn_check_done(c);
}

static gboolean
may_read(const Conn *c)
{
    const MpTunMux *m = c->m;
    return m->ready && !m->closed && c->sock && !c->rd_eof && !c->done
           && c->unacked < MP_TUN_MUX_WINDOW
           && (c->out_urgent
                   ? mp_tun_conn_queued(m->conn) < MP_TUN_CONN_QUEUE_HIGH
                   : mp_tun_conn_bulk_room(m->conn)
                         /* a requested page is on its way: read it
                          * out of the buffers in front of the tunnel */
                         || (c->po && mp_tun_pages_out_read_ahead(c->po)
                             && mp_tun_conn_queued(m->conn)
                                    < MP_TUN_CONN_QUEUE_HIGH));
}

/* Sends `n` raw stream bytes as one DATA frame standing for `account`
 * bytes read from the local socket. */
static void
send_data(Conn *c, const guint8 *raw, gsize n, guint64 account)
{
    MpTunMux *m = c->m;
    g_autoptr(GByteArray) b = g_byte_array_sized_new(n + 64);
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
            fail(m, "zstd: %s", ZSTD_isError(left) ? ZSTD_getErrorName(left)
                                                   : "output too long");
            return;
        }
        mp_tun_write_data(b, flags | MP_TUN_FLAG_COMPRESSED, c->out_id, seq,
                          n, m->zbuf, out.pos);
    } else {
        mp_tun_write_data(b, flags, c->out_id, seq, n, raw, n);
    }
    mp_tun_conn_send(m->conn, b->data, b->len, c->out_urgent);
    sent(c, seq, account, b->len);
}

/* Frame `seq` stands for `account` bytes read; `link` bytes on the link. */
static void
sent(Conn *c, guint64 seq, guint64 account, gsize link)
{
    Pend *p = g_new(Pend, 1);
    p->seq = seq;
    p->n = account;
    g_queue_push_tail(&c->sent, p);
    c->link_out += link;
}

/* The encoder's items that are ready, in order: DATA and PAGES frames of
 * one seq sequence.  After the local EOF, CLOSE follows the last. */
static void
pages_send(Conn *c)
{
    MpTunMux *m = c->m;
    MpTunOutItem it;
    GByteArray *u;

    /* lifted pages first, in the urgent lane (copies: no window) */
    while (c->po && !c->done && !c->aborted && mp_tun_conn_is_ready(m->conn)
           && (u = mp_tun_pages_out_pop_urgent(c->po))) {
        g_autoptr(GByteArray) b = g_byte_array_sized_new(u->len + 64);
        mp_tun_write_frame(b, MP_TUN_PAGES, MP_TUN_FLAG_URGENT, c->out_id,
                           ++c->out_useq, u->data, u->len);
        mp_tun_conn_send(m->conn, b->data, b->len, TRUE);
        c->link_out += b->len;
        g_byte_array_unref(u);
    }
    while (c->po && !c->done && !c->aborted && mp_tun_conn_is_ready(m->conn)
           && mp_tun_pages_out_pop(c->po, &it)) {
        if (it.kind == MP_TUN_OUT_DATA) {
            send_data(c, it.bytes->data, it.bytes->len, it.raw);
        } else {
            g_autoptr(GByteArray) b = g_byte_array_sized_new(it.bytes->len
                                                             + 64);
            guint64 seq = ++c->out_seq;
            mp_tun_write_frame(b, MP_TUN_PAGES,
                               c->out_urgent ? MP_TUN_FLAG_URGENT : 0,
                               c->out_id, seq, it.bytes->data, it.bytes->len);
            mp_tun_conn_send(m->conn, b->data, b->len, c->out_urgent);
            sent(c, seq, it.raw, b->len);
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

/* `n` bytes read into m->rbuf go through the encoder. */
static void
pages_feed(Conn *c, gsize n)
{
    guint64 left = mp_tun_pages_out_feed(c->po, c->m->rbuf, n);
    /* post-copy may come: from now on the link is paced (tunnel-link.h) */
    if (mp_tun_pages_out_postcopy_advised(c->po))
        mp_tun_link_allow_pace(mp_tun_conn_link(c->m->conn));
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
    mp_tun_conn_send(c->m->conn, b->data, b->len, TRUE);
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
        conn_check_done(c);
    }
}

static gboolean
on_local(GSocket *sock, GIOCondition cond, gpointer data)
{
    Conn *c = data;

    if (cond & G_IO_OUT || (cond & (G_IO_ERR | G_IO_HUP)))
        conn_write(c);
    /* a few reads, then the other connections' turn */
    for (int i = 0; i < 4 && may_read(c); i++) {
        guint64 before = c->read_bytes;
        conn_read(c);
        if (c->read_bytes == before)
            break;
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
    if (c->source && want == c->cond)
        return;
    if (c->source) {
        g_source_destroy(c->source);
        g_clear_pointer(&c->source, g_source_unref);
    }
    c->cond = want;
    if (!want)
        return;
    c->source = g_socket_create_source(c->sock, want, NULL);
    g_source_set_callback(c->source, G_SOURCE_FUNC(on_local), c, NULL);
    g_source_attach(c->source, NULL);
}

static Conn *
conn_new(MpTunMux *m, guint16 fwd, const MpTunOpen *o)
{
    Conn *c = g_new0(Conn, 1);
    c->m = m;
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
    if (c->queued_total - c->written_total + n > 2 * (guint64)MP_TUN_MUX_WINDOW) {
        fail(m, "stream %u: the peer sent %" G_GUINT64_FORMAT
                " bytes not yet written, more than its window (%u)",
             f->stream, c->queued_total - c->written_total + n,
             MP_TUN_MUX_WINDOW);
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
    if (m->opt.role != MP_TUN_ROLE_DEST || c->open.channel != MP_TUN_CH_MAIN) {
        fail(m, "PAGES frame of stream %u at offset %" G_GUINT64_FORMAT
                ": pages go only to the destination, on a main stream",
             f->stream, f->offset);
        return;
    }
    c->in_urgent = (f->flags & MP_TUN_FLAG_URGENT) != 0;
    if (!c->pi)
        c->pi = mp_tun_pages_in_new(m->agreed.page_size,
                                    m->agreed.cache_bytes);
    guint64 held = c->queued_total - c->written_total;
    guint64 limit = 2 * (guint64)MP_TUN_MUX_WINDOW;
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
    if (f->seq != c->in_useq + 1 || c->peer_eof) {
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
        for (Pend *p; (p = g_queue_peek_head(&c->sent)) && p->seq <= seq;) {
            c->unacked -= p->n;
            g_free(g_queue_pop_head(&c->sent));
        }
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
    Conn *c = g_hash_table_lookup(m->by_stream, GUINT_TO_POINTER(f->stream));
    if (!c || c->out_id == f->stream) {
        fail(m, "%s frame of stream %u, which the peer did not open",
             mp_tun_frame_type_name(f->type), f->stream);
        return;
    }
    if (f->type == MP_TUN_PAGES && (f->flags & MP_TUN_FLAG_URGENT)) {
        on_urgent_pages(m, c, f);
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
        conn_abort(c, "the peer's side broke");
        return;
    }
    c->peer_eof = TRUE;
    if (c->sock) {
        conn_write(c);
        conn_watch(c);
    }
}

static void
on_ready(MpTunConn *tc, const MpTunAgreed *agreed, gpointer data)
{
    MpTunMux *m = data;
    m->agreed = *agreed;
    m->ready = TRUE;
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
    if (m->hooks.ready)
        m->hooks.ready(m, m->data);
}

static void
on_drained(MpTunConn *tc, gpointer data)
{
    MpTunMux *m = data;
    for (guint i = 0; i < m->conns->len; i++)
        conn_watch(g_ptr_array_index(m->conns, i));
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

static void
on_closed(MpTunConn *tc, const GError *error, guint8 end_code, gpointer data)
{
    MpTunMux *m = data;

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

/* Every second on the source side: tells once when the source QEMU's
 * stream arrives at a steady rate that neither the tunnel nor the link
 * holds back: QEMU's own max-bandwidth, most likely. */
static gboolean
cap_tick(gpointer data)
{
    MpTunMux *m = data;
    guint64 bytes = 0;

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
               | MP_TUN_FEAT_ZERO_HELD | MP_TUN_FEAT_URGENT_PAGES;
    if (!opt->pages)
        return 0;
    return (p->zero_runs ? MP_TUN_FEAT_ZERO_RUNS | MP_TUN_FEAT_ZERO_HELD : 0)
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

MpTunMux *
mp_tun_mux_new(GIOStream *stream, const char *name, const MpTunMuxOptions *opt,
               const MpTunMuxHooks *hooks, gpointer data)
{
    MpTunMux *m = g_new0(MpTunMux, 1);
    m->opt = *opt;
    m->hooks = *hooks;
    m->data = data;
    m->by_stream = g_hash_table_new(NULL, NULL);
    m->conns = g_ptr_array_new_with_free_func((GDestroyNotify)conn_free);
    m->next_id = opt->role == MP_TUN_ROLE_SOURCE ? 1 : 2;
    m->rbuf = g_malloc(MP_TUN_MUX_CHUNK);
    m->zbuf_len = ZSTD_compressBound(MP_TUN_MUX_CHUNK);
    m->zbuf = g_malloc(m->zbuf_len);
    m->dbuf = g_malloc(MP_TUN_MAX_PAYLOAD_LIMIT + 1);

    MpTunHello h = {
        .version_min = MP_TUN_VERSION,
        .version_max = MP_TUN_VERSION,
        .role = opt->role,
        .tls = opt->tls ? MP_TUN_TLS_REQUIRED : MP_TUN_TLS_NONE,
        .features = (opt->compress ? MP_TUN_FEAT_RAW_ZSTD : 0)
                    | pages_features(opt),
        .page_size = 4096,
        .cache_bytes = pages_cache(opt),
        .max_payload = MP_TUN_MAX_PAYLOAD_DEFAULT,
        .software = "migproxy " MP_VERSION,
    };
    m->conn = mp_tun_conn_new(stream, name, &h, &conn_hooks, m);
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
    if (m->enc_done)
        json_object_put(m->enc_done);
    mp_tun_conn_free(m->conn);
    g_ptr_array_unref(m->conns);
    g_hash_table_unref(m->by_stream);
    g_free(m->rbuf);
    g_free(m->zbuf);
    g_free(m->dbuf);
    g_free(m);
}

/* Source side: a main stream's pages go through the encoders.  A page
 * carried by another channel of the session (multifd, preempt) is not
 * seen by them, so then none of the session's encoders skips a zero page
 * (tunnel-pages-out.h). */
static void
pages_attach(MpTunMux *m, Conn *c)
{
    gboolean main = c->open.channel == MP_TUN_CH_MAIN;

    if (m->opt.role != MP_TUN_ROLE_SOURCE || !m->opt.pages)
        return;
    gboolean shared = FALSE;
    for (guint i = 0; i + 1 < m->conns->len; i++) {
        Conn *o = g_ptr_array_index(m->conns, i);
        if (o->open.session != c->open.session)
            continue;
        if (o->po && !main)
            mp_tun_pages_out_set_shared(o->po);
        if (o->po && c->open.channel == MP_TUN_CH_PREEMPT)
            mp_tun_pages_out_set_preempt(o->po);
        if (o->open.channel != MP_TUN_CH_MAIN)
            shared = TRUE;
    }
    if (!main)
        return;
    g_autofree char *name = g_strdup_printf(
        "%s: stream %u", mp_tun_conn_name(m->conn), c->fwd);
    c->po = mp_tun_pages_out_new(&m->opt.pages_opt, m->agreed.page_size,
                                 m->agreed.cache_bytes, m->agreed.max_payload,
                                 name, pages_wake, c);
    if (shared)
        mp_tun_pages_out_set_shared(c->po);
}

guint16
mp_tun_mux_add(MpTunMux *m, GSocket *local, const MpTunOpen *o)
{
    if (!m->ready || m->closed || m->conns->len >= MAX_CONNS) {
        g_socket_close(local, NULL);
        return 0;
    }
    guint16 id = m->next_id;
    m->next_id += 2;
    Conn *c = conn_new(m, id, o);
    c->out_id = id;
    c->out_urgent = o->channel == MP_TUN_CH_PREEMPT;
    c->sock = g_object_ref(local);
    g_socket_set_blocking(local, FALSE);
    pages_attach(m, c);
    g_autoptr(GByteArray) b = g_byte_array_new();
    mp_tun_write_open(b, id, o);
    mp_tun_conn_send(m->conn, b->data, b->len, c->out_urgent);
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
    g_socket_set_blocking(local, FALSE);
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
    mp_tun_conn_end(m->conn, code, reason);
}

guint
mp_tun_mux_live(const MpTunMux *m)
{
    return m->live;
}

gboolean
mp_tun_mux_ready(const MpTunMux *m)
{
    return m->ready && !m->closed;
}

MpTunLink *
mp_tun_mux_link(const MpTunMux *m)
{
    return mp_tun_conn_link(m->conn);
}

guint
mp_tun_mux_connections(const MpTunMux *m)
{
    return m->conns->len;
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
    json_object *o = json_object_new_object(), *chans = json_object_new_array();
    gboolean src = m->opt.role == MP_TUN_ROLE_SOURCE;

    for (guint i = since; i < m->conns->len; i++) {
        const Conn *c = g_ptr_array_index(m->conns, i);
        json_object *j = json_object_new_object();
        json_object_object_add(j, "connection", json_object_new_int(c->number));
        json_object_object_add(j, "session",
                               json_object_new_int64(c->open.session));
        json_object_object_add(j, "stream", json_object_new_int(c->fwd));
        json_object_object_add(
            j, "kind", json_object_new_string(kind_name(c->open.channel, 0)));
        if (c->open.channel == MP_TUN_CH_MULTIFD)
            json_object_object_add(j, "index",
                                   json_object_new_int(c->open.index));
        /* the direction this side reads: QEMU's bytes in, link bytes out;
         * the other: link bytes in, QEMU's bytes out */
        json_object *rd = dir_report(c->read_bytes, c->link_out);
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
        json_object_array_add(chans, j);
    }
    json_object_object_add(o, "compress", json_object_new_boolean(m->compress));
    if (src)
        json_object_object_add(o, "pages",
                               json_object_new_boolean(m->opt.pages));
    json_object_object_add(o, "link_bytes_in",
                           json_object_new_int64(mp_tun_conn_bytes_in(m->conn)));
    json_object_object_add(o, "link_bytes_out",
                           json_object_new_int64(mp_tun_conn_bytes_out(m->conn)));
    json_object_object_add(o, "link",
                           mp_tun_link_report(mp_tun_conn_link(m->conn)));
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
