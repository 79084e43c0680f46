/* test-tunnel-mux.c: two tunnel ends (tunnel-mux.h) in one process, joined
 * by a socket pair, each with "QEMU" sockets (socket pairs whose far ends
 * threads write and read): bytes through both directions of several
 * connections arrive whole and in order, ends pass as ends, a connection
 * opened at the source reaches the destination in order, and a tunnel
 * that breaks resets every connection it carried; with resume, a tunnel
 * cut twice and joined again by new connections delivers every byte of
 * every connection whole and in order (frames kept until acknowledged,
 * sent again after each cut).  Migrations share a paced link per
 * migration, not per connection; a source side with several routes
 * refuses a peer that does not take them; a peer gone silent (no FIN, no
 * reset) is a drop after the ping timeout, and an idle one is not. */
#include "config.h"
#include <math.h>
#include <signal.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>
#include <gio/gio.h>
#include <criterion/criterion.h>
#include "tunnel-mux.h"
#include "tunnel-tls.h"

#define CONNS 3

typedef struct {
    int fd;          /* the "QEMU" end */
    gsize len;       /* bytes to write, then shutdown(SHUT_WR) */
    guint32 seed;
    gboolean keep_open; /* write: no shutdown after the bytes */
    gint *release;      /* write: shutdown only once this is set */
    guint64 got;     /* read: bytes */
    gboolean same;   /* read: equal to what the other end wrote */
    gboolean reset;  /* read: ended with an error, not EOF */
} Peer;

/* Compressible, but not trivially: runs of a counter and random bytes. */
static void
fill(guint8 *b, gsize n, guint64 at, guint32 seed)
{
    for (gsize i = 0; i < n; i++) {
        guint64 x = at + i;
        b[i] = (x / 4096) % 3 ? (guint8)(x * 7 + seed)
                              : (guint8)g_int64_hash(&x) ^ (guint8)seed;
    }
}

static gpointer
writer(gpointer data)
{
    Peer *p = data;
    guint8 buf[65536];
    gsize at = 0;
    while (at < p->len) {
        gsize n = MIN(sizeof(buf), p->len - at);
        fill(buf, n, at, p->seed);
        gsize off = 0;
        while (off < n) {
            ssize_t w = write(p->fd, buf + off, n - off);
            if (w <= 0)
                return NULL;
            off += w;
        }
        at += n;
    }
    while (p->release && !g_atomic_int_get(p->release))
        g_usleep(1000);
    if (!p->keep_open)
        shutdown(p->fd, SHUT_WR);
    return NULL;
}

static gpointer
reader(gpointer data)
{
    Peer *p = data;
    guint8 buf[65536], want[65536];
    p->same = TRUE;
    for (;;) {
        ssize_t n = read(p->fd, buf, sizeof(buf));
        if (n < 0) {
            p->reset = TRUE;
            break;
        }
        if (n == 0)
            break;
        fill(want, n, p->got, p->seed);
        if (memcmp(buf, want, n) != 0)
            p->same = FALSE;
        p->got += n;
    }
    return NULL;
}

typedef struct {
    MpTunMux *src, *dst;
    int dst_fds[CONNS]; /* the destination's "QEMU" sockets, in order */
    GSocket *dst_socks[CONNS];
    guint opened, done_src, done_dst, closed, suspended;
    GError *src_error, *dst_error;
    guint16 opens[CONNS];
} Fixture;

static void
on_open(MpTunMux *m, guint16 stream, const MpTunOpen *o, gpointer data)
{
    Fixture *f = data;
    cr_assert_lt(f->opened, CONNS);
    cr_assert_eq(o->connection, f->opened, "OPENs come in order");
    f->opens[f->opened] = stream;
    mp_tun_mux_attach(m, stream, f->dst_socks[f->opened]);
    f->opened++;
}

static void
on_done_src(MpTunMux *m, guint16 stream, gpointer data)
{
    ((Fixture *)data)->done_src++;
}

static void
on_done_dst(MpTunMux *m, guint16 stream, gpointer data)
{
    ((Fixture *)data)->done_dst++;
}

static void
on_closed_src(MpTunMux *m, const GError *e, guint8 code, gpointer data)
{
    Fixture *f = data;
    f->closed++;
    if (e)
        f->src_error = g_error_copy(e);
}

static void
on_closed_dst(MpTunMux *m, const GError *e, guint8 code, gpointer data)
{
    Fixture *f = data;
    f->closed++;
    if (e)
        f->dst_error = g_error_copy(e);
}

static GSocket *
gsock(int fd)
{
    GSocket *s = g_socket_new_from_fd(fd, NULL);
    cr_assert_not_null(s);
    return s;
}

static void
pair(int sv[2])
{
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
}

static void
spin_until(gboolean (*cond)(Fixture *), Fixture *f, guint ms)
{
    gint64 deadline = g_get_monotonic_time() + ms * 1000ll;
    while (!cond(f)) {
        cr_assert_lt(g_get_monotonic_time(), deadline, "timed out");
        g_main_context_iteration(NULL, FALSE);
        g_usleep(100);
    }
}

static gboolean
ready(Fixture *f)
{
    return mp_tun_mux_ready(f->src) && mp_tun_mux_ready(f->dst);
}

static gboolean
all_opened(Fixture *f)
{
    return f->opened == CONNS;
}

static gboolean
all_done(Fixture *f)
{
    return f->done_src == CONNS && f->done_dst == CONNS;
}

static gboolean
both_closed(Fixture *f)
{
    return f->closed == 2;
}

static void
on_suspended(MpTunMux *m, const GError *e, gpointer data)
{
    ((Fixture *)data)->suspended++;
}

static const MpTunMuxHooks src_hooks = {
    .stream_done = on_done_src,
    .closed = on_closed_src,
    .suspended = on_suspended,
};
static const MpTunMuxHooks dst_hooks = {
    .open = on_open,
    .stream_done = on_done_dst,
    .closed = on_closed_dst,
    .suspended = on_suspended,
};

static gboolean
both_suspended(Fixture *f)
{
    return mp_tun_mux_suspended(f->src) && mp_tun_mux_suspended(f->dst);
}

/* Lets the main loop run for about `ms`. */
static void
spin_for(guint ms)
{
    gint64 end = g_get_monotonic_time() + ms * 1000ll;
    while (g_get_monotonic_time() < end) {
        g_main_context_iteration(NULL, FALSE);
        g_usleep(100);
    }
}

/* A main connection of session 1 on `src`, its "QEMU" end a[0] written
 * by a thread (`len` bytes of `seed`, left open); @return the thread. */
static GThread *
add_fed_main(MpTunMux *src, int a[2], Peer *w, gsize len, guint32 seed)
{
    pair(a);
    *w = (Peer){.fd = a[0], .len = len, .seed = seed, .keep_open = TRUE};
    GThread *t = g_thread_new("w", writer, w);
    g_autoptr(GSocket) l = gsock(a[1]);
    MpTunOpen o = {.session = 1, .connection = 0, .channel = MP_TUN_CH_MAIN};
    cr_assert_neq(mp_tun_mux_add(src, l, &o), 0);
    return t;
}

/* Both ends and CONNS connections, 3 MiB * (i + 1) forward and an
 * eighth of that back; `cut`: 8 MiB each that never end, and the tunnel
 * breaks; `resumes`: the tunnel breaks that many times and is joined
 * again each time, and every byte arrives. */
static void
run_resuming(gboolean compress, gboolean cut, guint resumes)
{
    Fixture f = {0};
    int tv[2];
    Peer fwd_w[CONNS], fwd_r[CONNS], rev_w[CONNS], rev_r[CONNS];
    GThread *threads[4 * CONNS];
    int src_q[CONNS];
    gint release = 0; /* the connections end only after the cuts */

    signal(SIGPIPE, SIG_IGN); /* a reset "QEMU" end: EPIPE, not a kill */
    pair(tv);
    g_autoptr(GSocket) ts = gsock(tv[0]);
    g_autoptr(GSocket) td = gsock(tv[1]);
    MpTunMuxOptions so = {.role = MP_TUN_ROLE_SOURCE, .compress = compress};
    MpTunMuxOptions dop = {.role = MP_TUN_ROLE_DEST, .compress = compress};
    if (resumes) {
        so.resume_ms = dop.resume_ms = 10000;
        so.tunnel_id = 0x5eed;
        so.resume_any = TRUE;
    }
    g_autoptr(GIOStream) tss = mp_tun_plain_stream(ts);
    g_autoptr(GIOStream) tds = mp_tun_plain_stream(td);
    f.src = mp_tun_mux_new(tss, "tunnel to test", &so, &src_hooks, &f);
    f.dst = mp_tun_mux_new(tds, "tunnel from test", &dop, &dst_hooks, &f);
    spin_until(ready, &f, 5000);

    for (int i = 0; i < CONNS; i++) {
        int a[2], b[2];
        pair(a); /* a[0]: the source QEMU, a[1]: the source side's socket */
        pair(b); /* b[0]: the destination QEMU, b[1]: dest's socket */
        src_q[i] = a[0];
        f.dst_fds[i] = b[0];
        f.dst_socks[i] = gsock(b[1]);
        gsize len = cut ? (8u << 20) : (3u << 20) * (i + 1) + 12345;
        /* cut: the stream never ends by itself, so only the mux closing
         * the connection ends its reader */
        fwd_w[i] = (Peer){.fd = a[0], .len = len, .seed = i, .keep_open = cut};
        fwd_r[i] = (Peer){.fd = b[0], .seed = i};
        rev_w[i] = (Peer){.fd = b[0], .len = len / 8, .seed = 100 + i};
        if (resumes)
            fwd_w[i].release = rev_w[i].release = &release;
        rev_r[i] = (Peer){.fd = a[0], .seed = 100 + i};
        g_autoptr(GSocket) local = gsock(a[1]);
        MpTunOpen o = {.session = 1, .connection = i,
                       .channel = i ? MP_TUN_CH_MULTIFD : MP_TUN_CH_MAIN,
                       .index = i ? i - 1 : 0};
        cr_assert_neq(mp_tun_mux_add(f.src, local, &o), 0);
    }
    for (int i = 0; i < CONNS; i++) {
        threads[4 * i] = g_thread_new("fw", writer, &fwd_w[i]);
        threads[4 * i + 1] = g_thread_new("fr", reader, &fwd_r[i]);
        threads[4 * i + 2] = g_thread_new("rw", writer, &rev_w[i]);
        threads[4 * i + 3] = g_thread_new("rr", reader, &rev_r[i]);
    }
    for (guint r = 0; r < resumes; r++) {
        /* some bytes through, then the link breaks and comes back */
        spin_until(all_opened, &f, 5000);
        spin_until(ready, &f, 5000);
        spin_for(30);
        shutdown(r ? tv[0] : tv[1], SHUT_RDWR);
        spin_until(both_suspended, &f, 10000);
        cr_assert_eq(f.closed, 0, "the tunnel closed instead of waiting");
        pair(tv);
        g_autoptr(GSocket) ts2 = gsock(tv[0]);
        g_autoptr(GSocket) td2 = gsock(tv[1]);
        g_autoptr(GIOStream) tss2 = mp_tun_plain_stream(ts2);
        g_autoptr(GIOStream) tds2 = mp_tun_plain_stream(td2);
        mp_tun_mux_resume(f.src, tss2, "tunnel to test");
        mp_tun_mux_resume(f.dst, tds2, "tunnel from test");
    }
    g_atomic_int_set(&release, 1);
    if (cut) {
        /* some bytes through, then the tunnel breaks */
        spin_until(all_opened, &f, 5000);
        for (int k = 0; k < 200; k++) {
            g_main_context_iteration(NULL, FALSE);
            g_usleep(100);
        }
        shutdown(tv[1], SHUT_RDWR);
        spin_until(both_closed, &f, 10000);
        cr_assert_not_null(f.src_error, "a broken tunnel is an error");
    } else {
        spin_until(all_done, &f, 60000);
        cr_assert_null(f.src_error, "%s", f.src_error->message);
        cr_assert_null(f.dst_error, "%s", f.dst_error->message);
    }
    for (int i = 0; i < 4 * CONNS; i++)
        g_thread_join(threads[i]);
    for (int i = 0; i < CONNS; i++) {
        if (cut) {
            /* every connection was closed by the mux (its reader, joined
             * above, saw the end), with what got through intact */
            cr_assert_leq(fwd_r[i].got, fwd_w[i].len);
            cr_assert(fwd_r[i].same);
            continue;
        }
        cr_assert_eq(fwd_r[i].got, fwd_w[i].len, "conn %d: %" G_GUINT64_FORMAT
                     " of %zu bytes", i, fwd_r[i].got, fwd_w[i].len);
        cr_assert(fwd_r[i].same, "conn %d: bytes differ", i);
        cr_assert(!fwd_r[i].reset);
        cr_assert_eq(rev_r[i].got, rev_w[i].len);
        cr_assert(rev_r[i].same);
    }
    if (!cut) {
        json_object *rep = mp_tun_mux_report(f.src, 0);
        gint64 link = json_object_get_int64(
            json_object_object_get(rep, "link_bytes_out"));
        gsize raw = 0;
        for (int i = 0; i < CONNS; i++)
            raw += fwd_w[i].len;
        if (compress)
            cr_assert_lt(link, raw / 2, "%" G_GINT64_FORMAT " for %zu", link,
                         raw);
        else
            cr_assert_gt(link, raw);
        if (resumes) {
            json_object *rs = json_object_object_get(rep, "resume");
            json_object *drep = mp_tun_mux_report(f.dst, 0);
            json_object *rd = json_object_object_get(drep, "resume");
            cr_assert_eq(json_object_get_int(
                             json_object_object_get(rs, "resumed")),
                         resumes);
            cr_assert_eq(json_object_get_int(
                             json_object_object_get(rd, "drops")),
                         resumes);
            g_printerr("tunnel-mux resume x%u: source resent %" G_GINT64_FORMAT
                       " frames (%" G_GINT64_FORMAT " bytes), kept at most "
                       "%" G_GINT64_FORMAT "; dest resent %" G_GINT64_FORMAT
                       "\n",
                       resumes,
                       json_object_get_int64(
                           json_object_object_get(rs, "frames_resent")),
                       json_object_get_int64(
                           json_object_object_get(rs, "bytes_resent")),
                       json_object_get_int64(
                           json_object_object_get(rs, "kept_bytes_max")),
                       json_object_get_int64(
                           json_object_object_get(rd, "frames_resent")));
            json_object_put(drep);
        }
        json_object_put(rep);
        mp_tun_mux_end(f.src, MP_TUN_END_DONE, NULL);
        spin_until(both_closed, &f, 5000);
        cr_assert_null(f.src_error, "%s", f.src_error->message);
        cr_assert_null(f.dst_error, "%s", f.dst_error->message);
    }
    for (int i = 0; i < CONNS; i++) {
        close(src_q[i]);
        close(f.dst_fds[i]);
        g_object_unref(f.dst_socks[i]);
    }
    mp_tun_mux_free(f.src);
    mp_tun_mux_free(f.dst);
    g_clear_error(&f.src_error);
    g_clear_error(&f.dst_error);
}

static void
run(gboolean compress, gboolean cut)
{
    run_resuming(compress, cut, 0);
}

Test(tunnel_mux, both_directions_compressed)
{
    run(TRUE, FALSE);
}

/* Cut twice (once each side's socket) mid-stream, joined again by new
 * connections: every byte of every connection, both ways, arrives whole
 * and in order, and the tunnel ends cleanly. */
Test(tunnel_mux, cut_twice_and_resumed)
{
    run_resuming(TRUE, FALSE, 2);
}

Test(tunnel_mux, cut_and_resumed_raw)
{
    run_resuming(FALSE, FALSE, 1);
}

Test(tunnel_mux, both_directions_raw)
{
    run(FALSE, FALSE);
}

Test(tunnel_mux, cut_resets_every_connection)
{
    run(TRUE, TRUE);
}

/* dest refuses a connection (its QEMU cannot be reached) while the
 * source side's DATA for it is already on the way: those frames, and the
 * peer's CLOSE, are dropped for that connection alone; the tunnel stays
 * up and carries the next connection whole.  (Before, the refusal marked
 * the stream as closed by the peer, and its next frame failed the whole
 * tunnel: "DATA frame of stream 1 after its CLOSE"; found by
 * fuzz-tunnel-mux.) */
typedef struct {
    Fixture f; /* first: the hooks above take this as a Fixture */
} Refusing;

static void
on_open_refuse_first(MpTunMux *m, guint16 stream, const MpTunOpen *o,
                     gpointer data)
{
    Refusing *r = data;
    /* at once: the source side has sent this connection's first DATA
     * before it can read the CLOSE ABORT this sends */
    if (o->connection == 0)
        mp_tun_mux_refuse(m, stream, "no QEMU here");
    else
        mp_tun_mux_attach(m, stream, r->f.dst_socks[0]);
    r->f.opened++;
}

static gboolean
two_opened(Fixture *f)
{
    return f->opened == 2;
}

static gboolean
one_done_each(Fixture *f)
{
    return f->done_src >= 2 && f->done_dst >= 2;
}

Test(tunnel_mux, refused_connection_keeps_the_tunnel)
{
    Refusing r = {0};
    Fixture *fp = &r.f;
    int tv[2], a[2], b[2], c[2];
    static const MpTunMuxHooks refusing_hooks = {
        .open = on_open_refuse_first,
        .stream_done = on_done_dst,
        .closed = on_closed_dst,
    };

    signal(SIGPIPE, SIG_IGN);
    pair(tv);
    g_autoptr(GSocket) ts = gsock(tv[0]);
    g_autoptr(GSocket) td = gsock(tv[1]);
    g_autoptr(GIOStream) tss = mp_tun_plain_stream(ts);
    g_autoptr(GIOStream) tds = mp_tun_plain_stream(td);
    MpTunMuxOptions so = {.role = MP_TUN_ROLE_SOURCE, .compress = TRUE};
    MpTunMuxOptions dop = {.role = MP_TUN_ROLE_DEST, .compress = TRUE};
    fp->src = mp_tun_mux_new(tss, "tunnel to test", &so, &src_hooks, fp);
    fp->dst = mp_tun_mux_new(tds, "tunnel from test", &dop, &refusing_hooks, &r);
    spin_until(ready, fp, 5000);

    /* connection 0: 1 MiB and an end, in flight when dest refuses */
    pair(a);
    Peer w0 = {.fd = a[0], .len = 1u << 20, .seed = 7};
    GThread *t0 = g_thread_new("w0", writer, &w0);
    g_autoptr(GSocket) l0 = gsock(a[1]);
    MpTunOpen o0 = {.session = 1, .connection = 0, .channel = MP_TUN_CH_MAIN};
    cr_assert_neq(mp_tun_mux_add(fp->src, l0, &o0), 0);
    /* connection 1: attached, 2 MiB forward */
    pair(b); /* b[0]: the source QEMU */
    pair(c); /* c[0]: the destination QEMU */
    fp->dst_socks[0] = gsock(c[1]);
    shutdown(c[0], SHUT_WR); /* this QEMU says nothing back */
    Peer w1 = {.fd = b[0], .len = 2u << 20, .seed = 8};
    Peer r1 = {.fd = c[0], .seed = 8};
    GThread *t1 = g_thread_new("w1", writer, &w1);
    GThread *t2 = g_thread_new("r1", reader, &r1);
    g_autoptr(GSocket) l1 = gsock(b[1]);
    MpTunOpen o1 = {
        .session = 1, .connection = 1, .channel = MP_TUN_CH_MULTIFD};
    cr_assert_neq(mp_tun_mux_add(fp->src, l1, &o1), 0);
    spin_until(two_opened, fp, 5000);
    /* the source QEMU of connection 0 sees its connection end, with
     * nothing from the destination */
    Peer rr0 = {.fd = a[0], .seed = 0};
    GThread *t3 = g_thread_new("rr0", reader, &rr0);
    spin_until(one_done_each, fp, 30000);
    g_thread_join(t0);
    g_thread_join(t1);
    g_thread_join(t2);
    g_thread_join(t3);
    cr_assert_null(fp->src_error, "%s", fp->src_error->message);
    cr_assert_null(fp->dst_error, "%s", fp->dst_error->message);
    cr_assert_eq(fp->closed, 0, "the tunnel closed");
    cr_assert_eq(rr0.got, 0);
    cr_assert_eq(r1.got, w1.len);
    cr_assert(r1.same);
    mp_tun_mux_end(fp->src, MP_TUN_END_DONE, NULL);
    spin_until(both_closed, fp, 5000);
    cr_assert_null(fp->src_error, "%s", fp->src_error->message);
    cr_assert_null(fp->dst_error, "%s", fp->dst_error->message);
    close(a[0]);
    close(b[0]);
    close(c[0]);
    g_object_unref(fp->dst_socks[0]);
    mp_tun_mux_free(fp->src);
    mp_tun_mux_free(fp->dst);
}

static gboolean
all_opened_one(Fixture *f)
{
    return f->opened == 1;
}

static gboolean
src_suspended(Fixture *f)
{
    return mp_tun_mux_suspended(f->src);
}

static gboolean
second_done(Fixture *f)
{
    return f->done_src >= 2 && f->done_dst >= 1;
}

static gboolean
src_done_one(Fixture *f)
{
    return f->done_src >= 1;
}

/* The tunnel drops and the source side reconnects to a dest that does
 * not hold it (restarted): the connection it carried is reset at the
 * source (QEMU would pause post-copy and recover by itself), the tunnel
 * is not closed but goes on as a new one, and carries a new connection
 * whole. */
Test(tunnel_mux, resume_to_a_fresh_dest_is_a_new_tunnel)
{
    Fixture f = {0};
    int tv[2], a[2], b[2];

    signal(SIGPIPE, SIG_IGN);
    pair(tv);
    g_autoptr(GSocket) ts = gsock(tv[0]);
    g_autoptr(GSocket) td = gsock(tv[1]);
    g_autoptr(GIOStream) tss = mp_tun_plain_stream(ts);
    g_autoptr(GIOStream) tds = mp_tun_plain_stream(td);
    MpTunMuxOptions so = {.role = MP_TUN_ROLE_SOURCE, .compress = TRUE,
                          .resume_ms = 10000, .tunnel_id = 77,
                          .resume_any = TRUE};
    MpTunMuxOptions dop = {.role = MP_TUN_ROLE_DEST, .compress = TRUE,
                           .resume_ms = 10000};
    f.src = mp_tun_mux_new(tss, "tunnel to test", &so, &src_hooks, &f);
    f.dst = mp_tun_mux_new(tds, "tunnel from test", &dop, &dst_hooks, &f);
    spin_until(ready, &f, 5000);

    /* a connection that runs when the tunnel drops */
    pair(b);
    f.dst_socks[0] = gsock(b[1]);
    Peer w;
    GThread *tw = add_fed_main(f.src, a, &w, 1u << 20, 3);
    spin_until(all_opened_one, &f, 5000);
    spin_for(20);
    shutdown(tv[1], SHUT_RDWR);
    spin_until(src_suspended, &f, 10000);

    /* dest restarted: a fresh one, holding no tunnel */
    mp_tun_mux_free(f.dst);
    f.dst = NULL;
    g_object_unref(f.dst_socks[0]);
    close(b[0]);
    pair(tv);
    g_autoptr(GSocket) ts2 = gsock(tv[0]);
    g_autoptr(GSocket) td2 = gsock(tv[1]);
    g_autoptr(GIOStream) tss2 = mp_tun_plain_stream(ts2);
    g_autoptr(GIOStream) tds2 = mp_tun_plain_stream(td2);
    f.dst = mp_tun_mux_new(tds2, "tunnel from test", &dop, &dst_hooks, &f);
    mp_tun_mux_resume(f.src, tss2, "tunnel to test");
    spin_until(ready, &f, 5000);
    spin_until(src_done_one, &f, 5000);
    cr_assert_eq(f.closed, 0, "the tunnel closed");
    /* the source QEMU's connection was reset: its writer stops */
    g_thread_join(tw);
    close(a[0]);

    /* the tunnel carries a new connection */
    int c2[2], d2[2];
    pair(c2);
    pair(d2);
    f.opened = 0;
    f.dst_socks[0] = gsock(d2[1]);
    shutdown(d2[0], SHUT_WR);
    Peer w2 = {.fd = c2[0], .len = 2u << 20, .seed = 4};
    Peer r2 = {.fd = d2[0], .seed = 4};
    GThread *t1 = g_thread_new("w2", writer, &w2);
    GThread *t2 = g_thread_new("r2", reader, &r2);
    g_autoptr(GSocket) l2 = gsock(c2[1]);
    MpTunOpen o2 = {.session = 2, .connection = 0, .channel = MP_TUN_CH_MAIN};
    cr_assert_neq(mp_tun_mux_add(f.src, l2, &o2), 0);
    spin_until(second_done, &f, 30000);
    g_thread_join(t1);
    g_thread_join(t2);
    cr_assert_eq(r2.got, w2.len);
    cr_assert(r2.same);
    mp_tun_mux_end(f.src, MP_TUN_END_DONE, NULL);
    spin_until(both_closed, &f, 5000);
    cr_assert_null(f.src_error, "%s", f.src_error->message);
    close(c2[0]);
    close(d2[0]);
    g_object_unref(f.dst_socks[0]);
    mp_tun_mux_free(f.src);
    mp_tun_mux_free(f.dst);
    g_clear_error(&f.dst_error);
}

static gboolean
both_closed_src(Fixture *f)
{
    return f->closed >= 1;
}

static gboolean
second_done_dst(Fixture *f)
{
    return f->done_src >= 2 && f->done_dst >= 2;
}

static gboolean
three_closed(Fixture *f)
{
    return f->closed >= 3;
}

static gboolean
dst_suspended(Fixture *f)
{
    return mp_tun_mux_suspended(f->dst);
}

static gboolean
dst_done_one(Fixture *f)
{
    return f->done_dst >= 1;
}

/* dest holds a dropped tunnel and the source side comes back with a new
 * one (it did not resume: a pre-copy drop, or a restarted source side):
 * dest resets the old connection to its QEMU, is not closed, and carries
 * the new tunnel's connection whole. */
Test(tunnel_mux, dest_holding_a_tunnel_takes_a_new_one)
{
    Fixture f = {0};
    int tv[2], a[2], b[2];

    signal(SIGPIPE, SIG_IGN);
    pair(tv);
    g_autoptr(GSocket) ts = gsock(tv[0]);
    g_autoptr(GSocket) td = gsock(tv[1]);
    g_autoptr(GIOStream) tss = mp_tun_plain_stream(ts);
    g_autoptr(GIOStream) tds = mp_tun_plain_stream(td);
    MpTunMuxOptions so = {.role = MP_TUN_ROLE_SOURCE, .compress = TRUE,
                          .resume_ms = 10000, .tunnel_id = 78};
    MpTunMuxOptions dop = {.role = MP_TUN_ROLE_DEST, .compress = TRUE,
                           .resume_ms = 10000};
    f.src = mp_tun_mux_new(tss, "tunnel to test", &so, &src_hooks, &f);
    f.dst = mp_tun_mux_new(tds, "tunnel from test", &dop, &dst_hooks, &f);
    spin_until(ready, &f, 5000);

    pair(b);
    f.dst_socks[0] = gsock(b[1]);
    Peer w;
    GThread *tw = add_fed_main(f.src, a, &w, 1u << 20, 5);
    spin_until(all_opened_one, &f, 5000);
    spin_for(20);
    /* the source side does not resume (no post-copy): its tunnel closes,
     * dest waits */
    shutdown(tv[1], SHUT_RDWR);
    spin_until(dst_suspended, &f, 10000);
    spin_until(both_closed_src, &f, 10000);
    g_thread_join(tw);
    close(a[0]);
    mp_tun_mux_free(f.src);
    so.tunnel_id = 79; /* a new tunnel */
    pair(tv);
    g_autoptr(GSocket) ts2 = gsock(tv[0]);
    g_autoptr(GSocket) td2 = gsock(tv[1]);
    g_autoptr(GIOStream) tss2 = mp_tun_plain_stream(ts2);
    g_autoptr(GIOStream) tds2 = mp_tun_plain_stream(td2);
    f.src = mp_tun_mux_new(tss2, "tunnel to test", &so, &src_hooks, &f);
    mp_tun_mux_resume(f.dst, tds2, "tunnel from test");
    spin_until(ready, &f, 5000);
    spin_until(dst_done_one, &f, 5000);
    cr_assert_eq(f.closed, 1, "dest closed");
    /* its QEMU connection was closed: what it got, then the end */
    guint8 x[65536];
    while (read(b[0], x, sizeof(x)) > 0)
        ;
    close(b[0]);
    g_object_unref(f.dst_socks[0]);
    cr_assert_eq(mp_tun_mux_tunnel_id(f.dst), 79);

    int c2[2], d2[2];
    pair(c2);
    pair(d2);
    f.opened = 0;
    f.dst_socks[0] = gsock(d2[1]);
    shutdown(d2[0], SHUT_WR);
    Peer w2 = {.fd = c2[0], .len = 2u << 20, .seed = 6};
    Peer r2 = {.fd = d2[0], .seed = 6};
    GThread *t1 = g_thread_new("w2", writer, &w2);
    GThread *t2 = g_thread_new("r2", reader, &r2);
    g_autoptr(GSocket) l2 = gsock(c2[1]);
    MpTunOpen o2 = {.session = 1, .connection = 0, .channel = MP_TUN_CH_MAIN};
    cr_assert_neq(mp_tun_mux_add(f.src, l2, &o2), 0);
    spin_until(second_done_dst, &f, 30000);
    g_thread_join(t1);
    g_thread_join(t2);
    cr_assert_eq(r2.got, w2.len);
    cr_assert(r2.same);
    mp_tun_mux_end(f.src, MP_TUN_END_DONE, NULL);
    spin_until(three_closed, &f, 5000);
    close(c2[0]);
    close(d2[0]);
    g_object_unref(f.dst_socks[0]);
    mp_tun_mux_free(f.src);
    mp_tun_mux_free(f.dst);
    g_clear_error(&f.src_error);
    g_clear_error(&f.dst_error);
}

/* Four migrations (sessions, routes) at once over a link paced at 16
 * MB/s, each connection with more to send than the link takes: the bulk
 * lane's room goes round, so each gets about a quarter.  (Before, the
 * connection whose socket source was made first took the room after
 * every drain: one session had nearly everything.) */
#define SHARERS 4

typedef struct {
    Fixture f; /* first: the hooks above take this as a Fixture */
    GSocket *socks[SHARERS];
} Sharing;

static void
on_open_any_order(MpTunMux *m, guint16 stream, const MpTunOpen *o,
                  gpointer data)
{
    Sharing *s = data;
    cr_assert_lt(o->route, SHARERS);
    cr_assert_eq(o->session, o->route + 1u);
    mp_tun_mux_attach(m, stream, s->socks[o->route]);
    s->f.opened++;
}

static gboolean
sharers_opened(Fixture *f)
{
    return f->opened == SHARERS;
}

Test(tunnel_mux, sessions_share_a_paced_link)
{
    Sharing s = {0};
    Fixture *fp = &s.f;
    int tv[2], src_q[SHARERS], dst_q[SHARERS];
    Peer w[SHARERS], r[SHARERS];
    GThread *threads[2 * SHARERS];
    static const MpTunMuxHooks sharing_hooks = {
        .open = on_open_any_order,
        .stream_done = on_done_dst,
        .closed = on_closed_dst,
    };

    signal(SIGPIPE, SIG_IGN);
    pair(tv);
    g_autoptr(GSocket) ts = gsock(tv[0]);
    g_autoptr(GSocket) td = gsock(tv[1]);
    g_autoptr(GIOStream) tss = mp_tun_plain_stream(ts);
    g_autoptr(GIOStream) tds = mp_tun_plain_stream(td);
    MpTunMuxOptions so = {.role = MP_TUN_ROLE_SOURCE, .rate = 16000000};
    MpTunMuxOptions dop = {.role = MP_TUN_ROLE_DEST};
    fp->src = mp_tun_mux_new(tss, "tunnel to test", &so, &src_hooks, fp);
    fp->dst = mp_tun_mux_new(tds, "tunnel from test", &dop, &sharing_hooks, &s);
    spin_until(ready, fp, 5000);

    for (int i = 0; i < SHARERS; i++) {
        int a[2], b[2];
        pair(a); /* a[0]: the source QEMU i */
        pair(b); /* b[0]: the destination QEMU i */
        src_q[i] = a[0];
        dst_q[i] = b[0];
        s.socks[i] = gsock(b[1]);
        /* more than the link takes in the time below; never ends */
        w[i] =
            (Peer){.fd = a[0], .len = 256u << 20, .seed = i, .keep_open = TRUE};
        r[i] = (Peer){.fd = b[0], .seed = i};
        g_autoptr(GSocket) local = gsock(a[1]);
        MpTunOpen o = {.session = i + 1,
                       .connection = 0,
                       .channel = MP_TUN_CH_MAIN,
                       .route = i};
        cr_assert_neq(mp_tun_mux_add(fp->src, local, &o), 0);
    }
    for (int i = 0; i < SHARERS; i++) {
        threads[2 * i] = g_thread_new("w", writer, &w[i]);
        threads[2 * i + 1] = g_thread_new("r", reader, &r[i]);
    }
    spin_until(sharers_opened, fp, 5000);
    /* 1.5 s of the link: about 24 MB, 6 MB each when shared */
    gint64 until = g_get_monotonic_time() + 1500 * 1000;
    while (g_get_monotonic_time() < until) {
        g_main_context_iteration(NULL, FALSE);
        g_usleep(50);
    }

    json_object *rep = mp_tun_mux_report(fp->src, 0);
    json_object *chans = json_object_object_get(rep, "channels");
    gint64 got[SHARERS], total = 0;
    for (int i = 0; i < SHARERS; i++) {
        json_object *ch = json_object_array_get_idx(chans, i);
        cr_assert_eq(json_object_get_int(json_object_object_get(ch, "route")),
                     i);
        got[i] = json_object_get_int64(json_object_object_get(
            json_object_object_get(ch, "to_dst"), "bytes_out"));
        total += got[i];
    }
    /* a paced write takes a quantum, not the few bytes the bucket gained
     * since the last one (before: 20 to 40 bytes a write, the loop never
     * idle) */
    gint64 write_bytes = json_object_get_int64(json_object_object_get(
        json_object_object_get(rep, "link"), "paced_write_bytes"));
    json_object_put(rep);
    cr_assert_geq(write_bytes, 4096, "%" G_GINT64_FORMAT " bytes a write",
                  write_bytes);
    for (int i = 0; i < SHARERS; i++) {
        g_printerr("sessions_share_a_paced_link: session %d: %.2f MB of "
                   "%.2f MB on the link (%.0f %%)\n",
                   i + 1, got[i] / 1e6, total / 1e6, 100.0 * got[i] / total);
    }
    /* enough went through to tell (10 to 23 MB here, load 15; the pace
     * allows 24), and each had its share: within a factor of 1.5 either
     * way of a quarter (before, session 1 had 99 to 100 %) */
    cr_assert_gt(total, 4000000, "%" G_GINT64_FORMAT " bytes", total);
    for (int i = 0; i < SHARERS; i++) {
        cr_assert_gt(got[i] * SHARERS * 3, total * 2,
                     "session %d: %" G_GINT64_FORMAT " of %" G_GINT64_FORMAT
                     " bytes",
                     i + 1, got[i], total);
        cr_assert_lt(got[i] * SHARERS * 2, total * 3,
                     "session %d: %" G_GINT64_FORMAT " of %" G_GINT64_FORMAT
                     " bytes",
                     i + 1, got[i], total);
    }
    /* the end: the tunnel breaks, every connection is reset, so the
     * writers (EPIPE) and readers (end) stop */
    shutdown(tv[1], SHUT_RDWR);
    spin_until(both_closed, fp, 10000);
    for (int i = 0; i < 2 * SHARERS; i++)
        g_thread_join(threads[i]);
    for (int i = 0; i < SHARERS; i++) {
        cr_assert(r[i].same, "session %d: bytes differ", i + 1);
        close(src_q[i]);
        close(dst_q[i]);
        g_object_unref(s.socks[i]);
    }
    mp_tun_mux_free(fp->src);
    mp_tun_mux_free(fp->dst);
    g_clear_error(&fp->src_error);
    g_clear_error(&fp->dst_error);
}

/* ---- a peer written by hand: an older dest, or one that went silent ---- */

/* What the source side sent to the hand-written peer. */
typedef struct {
    MpTunParser *parser;
    gboolean end;
    guint8 end_code;
    char *end_reason;
    guint opens;
    guint32 open_len; /* the last OPEN's payload length */
    guint64 data_raw; /* the DATA frames' stream bytes */
    guint16 data_stream;
    guint64 data_seq; /* the last DATA frame's */
} Seen;

static MpRecordAction
seen_frame(const MpTunFrame *f, gpointer data)
{
    Seen *s = data;
    if (f->type == MP_TUN_OPEN) {
        s->opens++;
        s->open_len = f->len;
    } else if (f->type == MP_TUN_DATA) {
        s->data_raw += f->u.data.raw_len;
        s->data_stream = f->stream;
        s->data_seq = f->seq;
    } else if (f->type == MP_TUN_END) {
        s->end = TRUE;
        s->end_code = f->u.end.code;
        g_free(s->end_reason);
        s->end_reason = g_strdup(f->u.end.reason ? f->u.end.reason : "");
    }
    return MP_REC_CONTINUE;
}

/* Reads and parses whatever waits on `fd` (non-blocking). */
static void
seen_read(Seen *s, int fd)
{
    guint8 buf[65536];
    ssize_t n;

    while ((n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT)) > 0) {
        gsize at = 0;
        while (at < (gsize)n) {
            gsize used = 0;
            g_autoptr(GError) err = NULL;
            MpFeedStatus st =
                mp_tun_parser_feed(s->parser, buf + at, n - at, &used, &err);
            cr_assert_neq(st, MP_FEED_ERROR, "%s", err ? err->message : "");
            at += used;
            if (st != MP_FEED_PAUSED)
                break;
        }
    }
}

/* The preamble and a destination side's HELLO offering `features` (an
 * older dest: no MP_TUN_FEAT_ROUTES), written on `fd`. */
static void
hand_hello(int fd, guint32 features)
{
    g_autoptr(GByteArray) b = g_byte_array_new();
    MpTunHello h = {.version_min = MP_TUN_VERSION,
                    .version_max = MP_TUN_VERSION,
                    .role = MP_TUN_ROLE_DEST,
                    .features = features,
                    .page_size = 4096,
                    .cache_bytes = MP_TUN_MUX_CACHE_MAX,
                    .max_payload = MP_TUN_MAX_PAYLOAD_DEFAULT,
                    .software = "migproxy (older)"};
    mp_tun_write_preamble(b);
    mp_tun_write_hello(b, &h);
    cr_assert_eq(write(fd, b->data, b->len), (ssize_t)b->len);
}

static gboolean
src_closed(Fixture *f)
{
    return f->closed >= 1;
}

static gboolean
src_ready(Fixture *f)
{
    return mp_tun_mux_ready(f->src);
}

/* A source side with two routes (two --listen) and a dest that does not
 * offer MP_TUN_FEAT_ROUTES: the tunnel is refused at the handshake, with
 * an error that says why and what to do, and the peer gets END REFUSED
 * with the reason; it never sees an OPEN.  With one route the same peer
 * is fine: a route other than 0 is not sent to it (mp_tun_mux_add()
 * refuses it), route 0 goes as the 10-byte OPEN it reads. */
Test(tunnel_mux, routes_only_to_a_peer_that_takes_them)
{
    Fixture f = {0};
    int tv[2];
    Seen seen = {0};
    guint32 old = MP_TUN_FEATS_KNOWN & ~MP_TUN_FEAT_ROUTES;

    signal(SIGPIPE, SIG_IGN);
    pair(tv);
    g_autoptr(GSocket) ts = gsock(tv[0]);
    g_autoptr(GIOStream) tss = mp_tun_plain_stream(ts);
    MpTunMuxOptions so = {.role = MP_TUN_ROLE_SOURCE, .routes = 2};
    hand_hello(tv[1], old);
    f.src = mp_tun_mux_new(tss, "tunnel to test", &so, &src_hooks, &f);
    spin_until(src_closed, &f, 5000);
    cr_assert_not(mp_tun_mux_ready(f.src));
    cr_assert_not_null(f.src_error);
    cr_assert(g_error_matches(f.src_error, MP_PARSE_ERROR,
                              MP_PARSE_ERROR_UNSUPPORTED),
              "%s", f.src_error->message);
    cr_assert(strstr(f.src_error->message,
                     "the peer does not offer routes (HELLO feature "
                     "0x0100"),
              "%s", f.src_error->message);
    cr_assert(strstr(f.src_error->message, "this side has 2 --listen"), "%s",
              f.src_error->message);
    seen.parser = mp_tun_parser_new("the older dest", seen_frame, &seen);
    seen_read(&seen, tv[1]);
    cr_assert(seen.end, "no END");
    cr_assert_eq(seen.end_code, MP_TUN_END_REFUSED);
    cr_assert(strstr(seen.end_reason, "does not offer routes"), "%s",
              seen.end_reason);
    cr_assert_eq(seen.opens, 0);
    mp_tun_mux_free(f.src);
    mp_tun_parser_free(seen.parser);
    g_free(seen.end_reason);
    g_clear_error(&f.src_error);
    close(tv[1]);

    /* one route: the tunnel comes up; route 1 is refused, route 0 goes
     * as a 10-byte OPEN */
    memset(&seen, 0, sizeof(seen));
    f = (Fixture){0};
    pair(tv);
    g_autoptr(GSocket) ts2 = gsock(tv[0]);
    g_autoptr(GIOStream) tss2 = mp_tun_plain_stream(ts2);
    so.routes = 1;
    hand_hello(tv[1], old);
    f.src = mp_tun_mux_new(tss2, "tunnel to test", &so, &src_hooks, &f);
    spin_until(src_ready, &f, 5000);
    int a[2], b[2];
    pair(a);
    pair(b);
    g_autoptr(GSocket) la = gsock(a[1]);
    g_autoptr(GSocket) lb = gsock(b[1]);
    MpTunOpen o = {.session = 1, .channel = MP_TUN_CH_MAIN, .route = 1};
    cr_assert_eq(mp_tun_mux_add(f.src, la, &o), 0);
    o.route = 0;
    cr_assert_neq(mp_tun_mux_add(f.src, lb, &o), 0);
    spin_for(50);
    seen.parser = mp_tun_parser_new("the older dest", seen_frame, &seen);
    seen_read(&seen, tv[1]);
    cr_assert_eq(seen.opens, 1);
    cr_assert_eq(seen.open_len, 10);
    cr_assert_eq(f.closed, 0);
    mp_tun_mux_free(f.src);
    mp_tun_parser_free(seen.parser);
    g_free(seen.end_reason);
    close(tv[1]);
    close(a[0]);
    close(b[0]);
}

/* A dest that stops without closing (its host died, the network went:
 * no FIN, no reset), drawn as a socket whose far end, after its HELLO,
 * is never read nor written: the source side's --ping-timeout (1 s here)
 * drops the link as a socket error would, no earlier than the timeout
 * and long before TCP would; a connection it carried is reset (pre-copy:
 * the migration fails, the guest runs on).  With resume (`resume`), the
 * same drop suspends the tunnel for a resume instead.  (Before, nothing
 * came: the source side waited for ever.) */
static void
silent_peer(gboolean resume)
{
    Fixture f = {0};
    int tv[2], a[2];

    signal(SIGPIPE, SIG_IGN);
    pair(tv);
    g_autoptr(GSocket) ts = gsock(tv[0]);
    g_autoptr(GIOStream) tss = mp_tun_plain_stream(ts);
    MpTunMuxOptions so = {.role = MP_TUN_ROLE_SOURCE, .ping_timeout_ms = 1000};
    if (resume) {
        so.resume_ms = 10000;
        so.tunnel_id = 0x51e7;
        so.resume_any = TRUE;
    }
    /* the peer's HELLO is its last byte: the source side hears it after
     * t0, so the timeout cannot pass before t0 + 1 s */
    gint64 t0 = g_get_monotonic_time();
    hand_hello(tv[1], MP_TUN_FEATS_KNOWN);
    f.src = mp_tun_mux_new(tss, "tunnel to test", &so, &src_hooks, &f);
    spin_until(src_ready, &f, 5000);
    /* a migration's connection, more than the socket pair holds: the
     * source side's writes to the silent peer stall too */
    Peer w;
    GThread *t = add_fed_main(f.src, a, &w, 64u << 20, 9);
    if (resume) {
        spin_until(src_suspended, &f, 10000);
        cr_assert_eq(f.suspended, 1);
        cr_assert_eq(f.closed, 0, "closed instead of waiting to resume");
        cr_assert_eq(mp_tun_mux_live(f.src), 1, "the connection was reset");
    } else {
        spin_until(src_closed, &f, 10000);
    }
    gint64 ms = (g_get_monotonic_time() - t0) / 1000;
    g_printerr("silent peer%s: dropped after %" G_GINT64_FORMAT " ms "
               "(--ping-timeout 1000)\n",
               resume ? " (resume)" : "", ms);
    cr_assert_geq(ms, 1000, "dropped before the timeout");
    if (!resume) {
        cr_assert_not_null(f.src_error);
        cr_assert(g_error_matches(f.src_error, G_IO_ERROR,
                                  G_IO_ERROR_TIMED_OUT),
                  "%s", f.src_error->message);
        cr_assert(strstr(f.src_error->message,
                         "nothing from the peer for 1000 ms"),
                  "%s", f.src_error->message);
        /* the "QEMU" connection was reset: its writer stops */
        g_thread_join(t);
    }
    mp_tun_mux_free(f.src);
    if (resume)
        g_thread_join(t); /* (freeing the mux closed its socket) */
    close(a[0]);
    close(tv[1]);
    g_clear_error(&f.src_error);
}

Test(tunnel_mux, silent_peer_is_a_drop)
{
    silent_peer(FALSE);
}

Test(tunnel_mux, silent_peer_is_a_drop_to_resume)
{
    silent_peer(TRUE);
}

/* Two live ends with --ping-timeout 2000 (the least the CLI takes) and
 * nothing to carry for 5 s: their PINGs (and PONGs) keep the link;
 * neither drops it. */
Test(tunnel_mux, idle_tunnel_lives_on_pings)
{
    Fixture f = {0};
    int tv[2];

    pair(tv);
    g_autoptr(GSocket) ts = gsock(tv[0]);
    g_autoptr(GSocket) td = gsock(tv[1]);
    g_autoptr(GIOStream) tss = mp_tun_plain_stream(ts);
    g_autoptr(GIOStream) tds = mp_tun_plain_stream(td);
    MpTunMuxOptions so = {.role = MP_TUN_ROLE_SOURCE, .ping_timeout_ms = 2000};
    MpTunMuxOptions dop = {.role = MP_TUN_ROLE_DEST, .ping_timeout_ms = 2000};
    f.src = mp_tun_mux_new(tss, "tunnel to test", &so, &src_hooks, &f);
    f.dst = mp_tun_mux_new(tds, "tunnel from test", &dop, &dst_hooks, &f);
    spin_until(ready, &f, 5000);
    spin_for(5000);
    cr_assert_eq(f.closed, 0, "%s",
                 f.src_error   ? f.src_error->message
                 : f.dst_error ? f.dst_error->message
                               : "closed");
    cr_assert(ready(&f));
    mp_tun_mux_end(f.src, MP_TUN_END_DONE, NULL);
    spin_until(both_closed, &f, 5000);
    cr_assert_null(f.src_error, "%s", f.src_error->message);
    cr_assert_null(f.dst_error, "%s", f.dst_error->message);
    mp_tun_mux_free(f.src);
    mp_tun_mux_free(f.dst);
}

/* Two migrations over a link paced at 16 MB/s, each connection with more
 * to send than the link takes: migration 1 with five connections (main
 * and four multifd channels), migration 2 with its main connection
 * alone.  The share is per migration: each gets about half of the link
 * (within 10 % of each other).  (Before, the room went round the
 * connections, and migration 1 had five shares to migration 2's one:
 * 83 % of the link.) */
#define MIG1_CONNS  5
#define SHARE_CONNS (MIG1_CONNS + 1)

typedef struct {
    Fixture f; /* first: the hooks above take this as a Fixture */
    GSocket *socks[SHARE_CONNS]; /* dest's: migration 1's, then 2's */
} MigSharing;

static void
on_open_by_route(MpTunMux *m, guint16 stream, const MpTunOpen *o, gpointer data)
{
    MigSharing *s = data;
    guint k = o->route == 0 ? o->connection : MIG1_CONNS;
    cr_assert_lt(o->route, 2);
    cr_assert_eq(o->session, o->route + 1u);
    cr_assert_lt(k, SHARE_CONNS);
    mp_tun_mux_attach(m, stream, s->socks[k]);
    s->f.opened++;
}

static gboolean
share_conns_opened(Fixture *f)
{
    return f->opened == SHARE_CONNS;
}

Test(tunnel_mux, migrations_share_not_connections)
{
    MigSharing s = {0};
    Fixture *fp = &s.f;
    int tv[2], src_q[SHARE_CONNS], dst_q[SHARE_CONNS];
    Peer w[SHARE_CONNS], r[SHARE_CONNS];
    GThread *threads[2 * SHARE_CONNS];
    static const MpTunMuxHooks hooks = {
        .open = on_open_by_route,
        .stream_done = on_done_dst,
        .closed = on_closed_dst,
    };

    signal(SIGPIPE, SIG_IGN);
    pair(tv);
    g_autoptr(GSocket) ts = gsock(tv[0]);
    g_autoptr(GSocket) td = gsock(tv[1]);
    g_autoptr(GIOStream) tss = mp_tun_plain_stream(ts);
    g_autoptr(GIOStream) tds = mp_tun_plain_stream(td);
    MpTunMuxOptions so = {
        .role = MP_TUN_ROLE_SOURCE, .rate = 16000000, .routes = 2};
    MpTunMuxOptions dop = {.role = MP_TUN_ROLE_DEST};
    fp->src = mp_tun_mux_new(tss, "tunnel to test", &so, &src_hooks, fp);
    fp->dst = mp_tun_mux_new(tds, "tunnel from test", &dop, &hooks, &s);
    spin_until(ready, fp, 5000);

    for (int i = 0; i < SHARE_CONNS; i++) {
        int a[2], b[2];
        gboolean first = i < MIG1_CONNS;
        pair(a); /* a[0]: a source QEMU's connection */
        pair(b); /* b[0]: the destination QEMU's */
        src_q[i] = a[0];
        dst_q[i] = b[0];
        s.socks[i] = gsock(b[1]);
        /* more than the link takes in the time below; never ends */
        w[i] =
            (Peer){.fd = a[0], .len = 256u << 20, .seed = i, .keep_open = TRUE};
        r[i] = (Peer){.fd = b[0], .seed = i};
        g_autoptr(GSocket) local = gsock(a[1]);
        MpTunOpen o = {
            .session = first ? 1 : 2,
            .connection = first ? i : 0,
            .channel = first && i ? MP_TUN_CH_MULTIFD : MP_TUN_CH_MAIN,
            .index = first && i ? i - 1 : 0,
            .route = first ? 0 : 1,
        };
        cr_assert_neq(mp_tun_mux_add(fp->src, local, &o), 0);
    }
    for (int i = 0; i < SHARE_CONNS; i++) {
        threads[2 * i] = g_thread_new("w", writer, &w[i]);
        threads[2 * i + 1] = g_thread_new("r", reader, &r[i]);
    }
    spin_until(share_conns_opened, fp, 5000);
    /* 1.5 s of the link: about 24 MB, 12 MB each when shared */
    gint64 until = g_get_monotonic_time() + 1500 * 1000;
    while (g_get_monotonic_time() < until) {
        g_main_context_iteration(NULL, FALSE);
        g_usleep(50);
    }

    json_object *rep = mp_tun_mux_report(fp->src, 0);
    json_object *chans = json_object_object_get(rep, "channels");
    gint64 got[2] = {0, 0};
    cr_assert_eq(json_object_array_length(chans), SHARE_CONNS);
    for (int i = 0; i < SHARE_CONNS; i++) {
        json_object *ch = json_object_array_get_idx(chans, i);
        int route = json_object_get_int(json_object_object_get(ch, "route"));
        cr_assert_eq(route, i < MIG1_CONNS ? 0 : 1);
        got[route] += json_object_get_int64(json_object_object_get(
            json_object_object_get(ch, "to_dst"), "bytes_out"));
    }
    json_object_put(rep);
    gint64 total = got[0] + got[1];
    g_printerr("migrations_share_not_connections: migration 1 (%d "
               "connections) %.2f MB, migration 2 (1) %.2f MB of %.2f MB "
               "(%.1f %% / %.1f %%)\n",
               MIG1_CONNS, got[0] / 1e6, got[1] / 1e6, total / 1e6,
               100.0 * got[0] / total, 100.0 * got[1] / total);
    /* enough went through to tell (the pace allows 24 MB), and the two
     * are within 10 % of each other */
    cr_assert_gt(total, 4000000, "%" G_GINT64_FORMAT " bytes", total);
    gint64 diff = got[0] > got[1] ? got[0] - got[1] : got[1] - got[0];
    cr_assert_leq(diff * 10, MAX(got[0], got[1]),
                  "migration 1: %" G_GINT64_FORMAT ", migration 2: %"
                  G_GINT64_FORMAT " bytes",
                  got[0], got[1]);
    /* the end: the tunnel breaks, every connection is reset, so the
     * writers (EPIPE) and readers (end) stop */
    shutdown(tv[1], SHUT_RDWR);
    spin_until(both_closed, fp, 10000);
    for (int i = 0; i < 2 * SHARE_CONNS; i++)
        g_thread_join(threads[i]);
    for (int i = 0; i < SHARE_CONNS; i++) {
        cr_assert(r[i].same, "connection %d: bytes differ", i);
        close(src_q[i]);
        close(dst_q[i]);
        g_object_unref(s.socks[i]);
    }
    mp_tun_mux_free(fp->src);
    mp_tun_mux_free(fp->dst);
    g_clear_error(&fp->src_error);
    g_clear_error(&fp->dst_error);
}

/* The QEMU connections (dest) and the relay's (source) go without Nagle:
 * a lifted page written behind unacknowledged bytes waited for QEMU's
 * ACK (4.8 ms from its arrival to QEMU placing it, 0.08 ms without). */
static gboolean
first_opened(Fixture *f)
{
    return f->opened == 1;
}

static GSocket *
tcp_pair(GSocket **accepted)
{
    g_autoptr(GInetAddress) lo =
        g_inet_address_new_loopback(G_SOCKET_FAMILY_IPV4);
    g_autoptr(GSocketAddress) any = g_inet_socket_address_new(lo, 0);
    g_autoptr(GSocket) l = g_socket_new(G_SOCKET_FAMILY_IPV4,
                                        G_SOCKET_TYPE_STREAM,
                                        G_SOCKET_PROTOCOL_TCP, NULL);
    cr_assert(g_socket_bind(l, any, TRUE, NULL) && g_socket_listen(l, NULL));
    g_autoptr(GSocketAddress) at = g_socket_get_local_address(l, NULL);
    GSocket *c = g_socket_new(G_SOCKET_FAMILY_IPV4, G_SOCKET_TYPE_STREAM,
                              G_SOCKET_PROTOCOL_TCP, NULL);
    cr_assert(g_socket_connect(c, at, NULL, NULL));
    *accepted = g_socket_accept(l, NULL, NULL);
    cr_assert_not_null(*accepted);
    return c;
}

static int
nodelay(GSocket *s)
{
    int v = 0;
    socklen_t len = sizeof(v);
    cr_assert_eq(getsockopt(g_socket_get_fd(s), IPPROTO_TCP, TCP_NODELAY, &v,
                            &len),
                 0);
    return v;
}

Test(tunnel_mux, local_connections_without_nagle)
{
    Fixture f = {0};
    int tv[2];

    pair(tv);
    g_autoptr(GSocket) ts = gsock(tv[0]);
    g_autoptr(GSocket) td = gsock(tv[1]);
    g_autoptr(GIOStream) tss = mp_tun_plain_stream(ts);
    g_autoptr(GIOStream) tds = mp_tun_plain_stream(td);
    MpTunMuxOptions so = {.role = MP_TUN_ROLE_SOURCE};
    MpTunMuxOptions dop = {.role = MP_TUN_ROLE_DEST};
    f.src = mp_tun_mux_new(tss, "tunnel to test", &so, &src_hooks, &f);
    f.dst = mp_tun_mux_new(tds, "tunnel from test", &dop, &dst_hooks, &f);
    spin_until(ready, &f, 5000);

    g_autoptr(GSocket) relay_end = NULL, qemu_end = NULL;
    g_autoptr(GSocket) hop = tcp_pair(&relay_end);
    g_autoptr(GSocket) qemu = tcp_pair(&qemu_end);
    f.dst_socks[0] = qemu_end;
    cr_assert_not(nodelay(relay_end));
    cr_assert_not(nodelay(qemu_end));
    MpTunOpen o = {.session = 1, .connection = 0, .channel = MP_TUN_CH_MAIN};
    cr_assert_neq(mp_tun_mux_add(f.src, relay_end, &o), 0);
    spin_until(first_opened, &f, 5000);
    cr_assert(nodelay(relay_end), "the source's local connection");
    cr_assert(nodelay(qemu_end), "the destination's QEMU connection");
    mp_tun_mux_free(f.src);
    mp_tun_mux_free(f.dst);
}

static gboolean
one_done(Fixture *f)
{
    return f->done_src == 1 && f->done_dst == 1;
}

/* The window per stream in link time: 80 ms of the rate the peer
 * acknowledges, never under the 4 MiB of a peer without
 * MP_TUN_FEAT_WIDE_WINDOW, never over 16 MiB. */
Test(tunnel_mux, window_follows_the_acknowledged_rate)
{
    cr_assert_eq(mp_tun_mux_window_for(0), MP_TUN_MUX_WINDOW);
    cr_assert_eq(mp_tun_mux_window_for(-1), MP_TUN_MUX_WINDOW);
    cr_assert_eq(mp_tun_mux_window_for(NAN), MP_TUN_MUX_WINDOW);
    /* 100 Mbit/s of pages that compress to a quarter: 50 MB/s of stream,
     * 4 MB in 80 ms: the least window */
    cr_assert_eq(mp_tun_mux_window_for(50e6), MP_TUN_MUX_WINDOW);
    /* 1 Gbit/s of random pages: 10 MB */
    cr_assert_eq(mp_tun_mux_window_for(125e6), 10000000);
    cr_assert_eq(mp_tun_mux_window_for(10e9), MP_TUN_MUX_WINDOW_MAX);
    cr_assert_eq(mp_tun_mux_window_for(INFINITY), MP_TUN_MUX_WINDOW_MAX);
}

/* A hand-written dest offering `features` acknowledges every DATA frame
 * at once for 400 ms, then nothing: @return the stream bytes the source
 * side sent past the last acknowledgement (its window then), in *rate
 * the acknowledged bytes a second before, and in *window_max the
 * largest window the source side's report gives. */
static guint64
sent_past_the_acks(guint32 features, double *rate, gint64 *window_max)
{
    Fixture f = {0};
    int tv[2], a[2];
    Seen seen = {0};

    signal(SIGPIPE, SIG_IGN);
    pair(tv);
    g_autoptr(GSocket) ts = gsock(tv[0]);
    g_autoptr(GIOStream) tss = mp_tun_plain_stream(ts);
    MpTunMuxOptions so = {.role = MP_TUN_ROLE_SOURCE};
    hand_hello(tv[1], features);
    f.src = mp_tun_mux_new(tss, "tunnel to test", &so, &src_hooks, &f);
    spin_until(src_ready, &f, 5000);
    Peer w;
    GThread *t = add_fed_main(f.src, a, &w, 512u << 20, 5);
    seen.parser = mp_tun_parser_new("the hand-written dest", seen_frame,
                                    &seen);
    mp_tun_parser_set_max_payload(seen.parser, MP_TUN_MAX_PAYLOAD_DEFAULT);
    gint64 t0 = g_get_monotonic_time(), stop = t0 + 400000;
    guint64 acked = 0;
    while (g_get_monotonic_time() < stop + 300000) {
        for (int k = 0; k < 8; k++)
            g_main_context_iteration(NULL, FALSE);
        seen_read(&seen, tv[1]);
        if (g_get_monotonic_time() < stop && seen.data_seq) {
            g_autoptr(GByteArray) ack = g_byte_array_new();
            MpTunAckEntry e = {.stream = seen.data_stream,
                               .bulk_seq = seen.data_seq};
            mp_tun_write_ack(ack, &e, 1);
            cr_assert_eq(write(tv[1], ack->data, ack->len),
                         (ssize_t)ack->len);
            acked = seen.data_raw;
        } else if (g_get_monotonic_time() >= stop) {
            g_usleep(1000);
        }
    }
    *rate = acked / 0.4;
    json_object *rep = mp_tun_mux_report(f.src, 0);
    *window_max = json_object_get_int64(json_object_object_get(
        json_object_object_get(json_object_array_get_idx(
                                   json_object_object_get(rep, "channels"), 0),
                               "to_dst"),
        "window_max_bytes"));
    json_object_put(rep);
    mp_tun_mux_free(f.src);
    g_thread_join(t); /* (freeing the mux closed its socket) */
    close(a[0]);
    close(tv[1]);
    mp_tun_parser_free(seen.parser);
    g_free(seen.end_reason);
    g_clear_error(&f.src_error);
    return seen.data_raw - acked;
}

/* An older dest (no MP_TUN_FEAT_WIDE_WINDOW) refuses more than twice 4
 * MiB of a stream unwritten: however fast it acknowledged, the source
 * side never has more than 4 MiB out unacknowledged.  A dest with the
 * feature that acknowledged as fast gets a larger window (when the host
 * was fast enough for the rule to grow it: 4 MiB in 80 ms, twice over;
 * some 100 ms interval was at least as fast as the average). */
Test(tunnel_mux, window_stays_at_4_mib_for_an_older_peer)
{
    double rate_old, rate_new;
    gint64 win_old, win_new;
    guint64 old = sent_past_the_acks(
        MP_TUN_FEATS_KNOWN & ~MP_TUN_FEAT_WIDE_WINDOW, &rate_old, &win_old);
    guint64 wide = sent_past_the_acks(MP_TUN_FEATS_KNOWN, &rate_new,
                                      &win_new);
    g_printerr("past the last ACK: %" G_GUINT64_FORMAT " bytes to an older "
               "dest (acked %.0f MB/s, window %" G_GINT64_FORMAT "), %"
               G_GUINT64_FORMAT " to a current one (%.0f MB/s, window at "
               "most %" G_GINT64_FORMAT ")\n",
               old, rate_old / 1e6, win_old, wide, rate_new / 1e6, win_new);
    cr_assert_leq(old, MP_TUN_MUX_WINDOW + MP_TUN_MUX_CHUNK);
    cr_assert_eq(win_old, MP_TUN_MUX_WINDOW);
    cr_assert_leq(wide, MP_TUN_MUX_WINDOW_MAX + MP_TUN_MUX_CHUNK);
    if (rate_new > 2 * MP_TUN_MUX_WINDOW / 0.08)
        cr_assert_gt(win_new, MP_TUN_MUX_WINDOW);
}

/* Two sides with MP_TUN_FEAT_WIDE_WINDOW and a fast path (socket pairs):
 * the window grows past 4 MiB where the destination takes the stream
 * faster than 4 MiB in 80 ms, and never past 16 MiB. */
Test(tunnel_mux, window_grows_on_a_fast_path)
{
    Fixture f = {0};
    int tv[2], a[2], b[2];

    signal(SIGPIPE, SIG_IGN);
    pair(tv);
    g_autoptr(GSocket) ts = gsock(tv[0]);
    g_autoptr(GSocket) td = gsock(tv[1]);
    MpTunMuxOptions so = {.role = MP_TUN_ROLE_SOURCE};
    MpTunMuxOptions dop = {.role = MP_TUN_ROLE_DEST};
    g_autoptr(GIOStream) tss = mp_tun_plain_stream(ts);
    g_autoptr(GIOStream) tds = mp_tun_plain_stream(td);
    f.src = mp_tun_mux_new(tss, "tunnel to test", &so, &src_hooks, &f);
    f.dst = mp_tun_mux_new(tds, "tunnel from test", &dop, &dst_hooks, &f);
    spin_until(ready, &f, 5000);
    pair(a);
    pair(b);
    f.dst_fds[0] = b[0];
    f.dst_socks[0] = gsock(b[1]);
    Peer w = {.fd = a[0], .len = 256u << 20, .seed = 3};
    Peer r = {.fd = b[0], .seed = 3};
    Peer rw = {.fd = b[0], .len = 0, .seed = 4};
    Peer rr = {.fd = a[0], .seed = 4};
    g_autoptr(GSocket) l = gsock(a[1]);
    MpTunOpen o = {.session = 1, .channel = MP_TUN_CH_MAIN};
    cr_assert_neq(mp_tun_mux_add(f.src, l, &o), 0);
    gint64 t0 = g_get_monotonic_time();
    GThread *th[] = {g_thread_new("fw", writer, &w),
                     g_thread_new("fr", reader, &r),
                     g_thread_new("rw", writer, &rw),
                     g_thread_new("rr", reader, &rr)};
    spin_until(one_done, &f, 120000);
    double s = (g_get_monotonic_time() - t0) / 1e6;
    for (guint i = 0; i < G_N_ELEMENTS(th); i++)
        g_thread_join(th[i]);
    cr_assert_eq(r.got, w.len);
    cr_assert(r.same);
    json_object *rep = mp_tun_mux_report(f.src, 0);
    json_object *ch = json_object_array_get_idx(
        json_object_object_get(rep, "channels"), 0);
    gint64 win = json_object_get_int64(json_object_object_get(
        json_object_object_get(ch, "to_dst"), "window_max_bytes"));
    double rate = w.len / s;
    g_printerr("fast path: %.0f MB/s, window at most %" G_GINT64_FORMAT
               " bytes\n", rate / 1e6, win);
    cr_assert_leq(win, MP_TUN_MUX_WINDOW_MAX);
    cr_assert_geq(win, MP_TUN_MUX_WINDOW);
    /* a host too slow (a sanitizer on a loaded machine) to take 4 MiB
     * in 80 ms twice over says nothing about the rule */
    if (rate > 2 * MP_TUN_MUX_WINDOW / 0.08)
        cr_assert_gt(win, MP_TUN_MUX_WINDOW, "%.0f MB/s, window %"
                     G_GINT64_FORMAT, rate / 1e6, win);
    json_object_put(rep);
    mp_tun_mux_end(f.src, MP_TUN_END_DONE, NULL);
    spin_until(both_closed, &f, 5000);
    close(a[0]);
    close(b[0]);
    g_object_unref(f.dst_socks[0]);
    mp_tun_mux_free(f.src);
    mp_tun_mux_free(f.dst);
    g_clear_error(&f.src_error);
    g_clear_error(&f.dst_error);
}
