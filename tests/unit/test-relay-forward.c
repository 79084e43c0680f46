/* test-relay-forward.c: the relay's forwarding engine in-process, with
 * plain sockets instead of QEMU: every byte arrives unchanged in both
 * directions even when the parsers give up, a slow reader pushes back
 * without losing anything, half-closes pass through, and a channel the
 * destination leaves unread never holds up another one (the multifd
 * synchronisation pattern), and a silent postcopy-preempt channel is
 * admitted while the loop is never idle. */
#include "config.h"
#include <string.h>
#include <glib/gstdio.h>
#include <gio/gio.h>
#include <criterion/criterion.h>
#include <json-c/json.h>
#include "relay.h"

#define MAIN_BYTES (8u << 20)
#define BACK_BYTES (1u << 20)

static guint8
pattern(guint64 i, guint seed)
{
    return (guint8)((i + seed) * 2654435761u >> 13);
}

static GSocket *
listener(guint16 *port)
{
    g_autoptr(GInetAddress) lo =
        g_inet_address_new_loopback(G_SOCKET_FAMILY_IPV4);
    g_autoptr(GSocketAddress) a = g_inet_socket_address_new(lo, 0);
    GSocket *s = g_socket_new(G_SOCKET_FAMILY_IPV4, G_SOCKET_TYPE_STREAM,
                              G_SOCKET_PROTOCOL_TCP, NULL);
    cr_assert(g_socket_bind(s, a, TRUE, NULL) && g_socket_listen(s, NULL));
    g_autoptr(GSocketAddress) b = g_socket_get_local_address(s, NULL);
    *port = g_inet_socket_address_get_port(G_INET_SOCKET_ADDRESS(b));
    return s;
}

static GSocket *
dial(const char *hostport)
{
    g_autoptr(GSocketClient) c = g_socket_client_new();
    g_autoptr(GSocketConnection) conn =
        g_socket_client_connect_to_host(c, hostport, 0, NULL, NULL);
    cr_assert_not_null(conn, "connect %s", hostport);
    GSocket *s = g_object_ref(g_socket_connection_get_socket(conn));
    /* keep the socket open after the connection object goes */
    g_object_set_data_full(G_OBJECT(s), "conn", g_object_ref(conn),
                           g_object_unref);
    return s;
}

static void
send_all(GSocket *s, const guint8 *p, gsize n)
{
    while (n) {
        gssize w = g_socket_send(s, (const char *)p, MIN(n, 65536), NULL, NULL);
        cr_assert_gt(w, 0);
        p += w;
        n -= w;
    }
}

/* Reads to EOF; checks every byte against the pattern. */
static guint64
recv_check(GSocket *s, const guint8 *head, gsize head_len, guint seed)
{
    guint8 buf[65536];
    guint64 total = 0;
    gssize n;
    while ((n = g_socket_receive(s, (char *)buf, sizeof(buf), NULL, NULL))
           > 0) {
        for (gssize i = 0; i < n; i++, total++) {
            guint8 want = total < head_len ? head[total]
                                           : pattern(total - head_len, seed);
            cr_assert_eq(buf[i], want, "byte %" G_GUINT64_FORMAT, total);
        }
    }
    cr_assert_eq(n, 0);
    return total;
}

static GByteArray *
make(const guint8 *head, gsize head_len, gsize n, guint seed)
{
    GByteArray *a = g_byte_array_sized_new(head_len + n);
    g_byte_array_append(a, head, head_len);
    for (gsize i = 0; i < n; i++) {
        guint8 b = pattern(i, seed);
        g_byte_array_append(a, &b, 1);
    }
    return a;
}

/* What the relay's checks want to see before anything is forwarded: a
 * stream header and a whole first record (here OPEN_RETURN_PATH); a
 * multifd initial packet (magic, version 1, a UUID, id 0). */
static const guint8 qevm[] = {'Q', 'E', 'V', 'M', 0, 0, 0, 3,
                              0x08, 0, 1, 0, 0};
static const guint8 mfd[64] = {0x11, 0x22, 0x33, 0x44, 0, 0, 0, 1, 0xab};

typedef struct {
    char *relay_addr;
    GSocket *dst_listener;
    gboolean dst_slow;
    guint64 got_main, got_mfd, got_back;
} Ctx;

/* source: header and garbage on main, then reads what comes back */
static gpointer
source_main(gpointer data)
{
    Ctx *x = data;
    g_autoptr(GSocket) s = dial(x->relay_addr);
    g_autoptr(GByteArray) a = make(qevm, sizeof(qevm), MAIN_BYTES, 1);
    send_all(s, a->data, a->len);
    g_socket_shutdown(s, FALSE, TRUE, NULL); /* half-close: FIN */
    x->got_back = recv_check(s, NULL, 0, 7);
    g_socket_close(s, NULL);
    return NULL;
}

static gpointer
destination_one(gpointer data)
{
    Ctx *x = data;
    g_autoptr(GSocket) s = g_socket_accept(x->dst_listener, NULL, NULL);
    cr_assert_not_null(s);
    if (x->dst_slow)
        g_usleep(300000); /* the relay's buffer fills: back-pressure */
    x->got_main = recv_check(s, qevm, sizeof(qevm), 1);
    /* the return path flows after the source's FIN */
    g_autoptr(GByteArray) back = make(NULL, 0, BACK_BYTES, 7);
    send_all(s, back->data, back->len);
    g_socket_close(s, NULL);
    return NULL;
}

static MpRelay *
start_relay(Ctx *x, const char *report)
{
    g_autoptr(GError) err = NULL;
    guint16 dport;
    x->dst_listener = listener(&dport);
    g_autofree char *to = g_strdup_printf("127.0.0.1:%u", dport);
    MpRelayOptions opt = {.listen = "127.0.0.1:0",
                          .to = to,
                          .report = report,
                          .once = TRUE,
                          .quiet = TRUE};
    MpRelay *r = mp_relay_new(&opt, &err);
    cr_assert_not_null(r, "%s", err ? err->message : "?");
    x->relay_addr = g_strdup(mp_relay_listen_address(r));
    return r;
}

Test(relay_forward, bytes_unchanged_when_parsing_fails, .timeout = 60)
{
    g_autofree char *dir = g_dir_make_tmp("mp-fwd-XXXXXX", NULL);
    g_autofree char *report = g_build_filename(dir, "report.json", NULL);
    Ctx x = {.dst_slow = TRUE};
    g_autoptr(MpRelay) r = start_relay(&x, report);

    GThread *dst = g_thread_new("dst", destination_one, &x);
    GThread *src = g_thread_new("src", source_main, &x);
    cr_assert_eq(mp_relay_run(r), 1, "a migration that never completed");
    g_thread_join(src);
    g_thread_join(dst);
    cr_assert_eq(x.got_main, sizeof(qevm) + MAIN_BYTES);
    cr_assert_eq(x.got_back, BACK_BYTES);

    json_object *rep = json_object_from_file(report), *v, *ch;
    cr_assert_not_null(rep);
    json_object_object_get_ex(rep, "partial", &v);
    cr_assert(json_object_get_boolean(v), "the garbage parsed?");
    json_object_object_get_ex(rep, "channels", &ch);
    ch = json_object_array_get_idx(ch, 0);
    json_object_object_get_ex(ch, "to_dst", &v);
    json_object_object_get_ex(v, "bytes", &v);
    cr_assert_eq(json_object_get_int64(v), sizeof(qevm) + MAIN_BYTES);
    json_object_put(rep);
    g_unlink(report);
    g_rmdir(dir);
    g_socket_close(x.dst_listener, NULL);
    g_object_unref(x.dst_listener);
    g_free(x.relay_addr);
}

/* main and a "multifd" channel; the destination drains main completely
 * before it reads the multifd channel at all, while the source writes the
 * multifd channel first.  A relay that let one channel wait on another
 * would never finish. */
static gpointer
source_two(gpointer data)
{
    Ctx *x = data;
    g_autoptr(GSocket) m = dial(x->relay_addr);
    send_all(m, qevm, sizeof(qevm));
    g_usleep(100000); /* main is accepted (and connected) first */
    g_autoptr(GSocket) f = dial(x->relay_addr);
    g_autoptr(GByteArray) fa = make(mfd, sizeof(mfd), MAIN_BYTES, 3);
    send_all(f, fa->data, fa->len); /* blocks until dst reads it */
    g_socket_close(f, NULL);
    g_socket_close(m, NULL);
    return NULL;
}

static gpointer
destination_two(gpointer data)
{
    Ctx *x = data;
    g_autoptr(GSocket) m = g_socket_accept(x->dst_listener, NULL, NULL);
    g_autoptr(GSocket) f = g_socket_accept(x->dst_listener, NULL, NULL);
    cr_assert(m && f);
    x->got_main = recv_check(m, qevm, sizeof(qevm), 1);
    x->got_mfd = recv_check(f, mfd, sizeof(mfd), 3);
    g_socket_close(m, NULL);
    g_socket_close(f, NULL);
    return NULL;
}

Test(relay_forward, one_channel_never_waits_for_another, .timeout = 60)
{
    Ctx x = {0};
    g_autoptr(MpRelay) r = start_relay(&x, NULL);

    GThread *dst = g_thread_new("dst", destination_two, &x);
    GThread *src = g_thread_new("src", source_two, &x);
    mp_relay_run(r);
    g_thread_join(src);
    g_thread_join(dst);
    cr_assert_eq(x.got_main, sizeof(qevm));
    cr_assert_eq(x.got_mfd, sizeof(mfd) + MAIN_BYTES);
    g_socket_close(x.dst_listener, NULL);
    g_object_unref(x.dst_listener);
    g_free(x.relay_addr);
}

/* A loop that always has something ready at the default priority, as
 * `migproxy source`'s has while its relay writes into the tunnel's hop
 * through post-copy.  A silent postcopy-preempt channel (7.2 opens it
 * right after the main channel and says nothing until a page is
 * requested) is still admitted and connected towards the destination,
 * not closed at its handshake timeout. */
typedef struct {
    char *relay_addr;
    GSocket *dst_listener;
    gint main_seen; /* atomic: the destination has main's records */
    gint done;      /* atomic: the preempt channel came, or never will */
    gboolean preempt_connected;
} Busy;

/* header, OPEN_RETURN_PATH, POSTCOPY_ADVISE (no payload) */
static const guint8 advise_stream[] = {'Q', 'E', 'V', 'M', 0, 0, 0, 3,
                                       0x08, 0,   1,   0,   0,
                                       0x08, 0,   3,   0,   0};

static gboolean
always_ready(gpointer data)
{
    Busy *b = data;
    return g_atomic_int_get(&b->done) ? G_SOURCE_REMOVE : G_SOURCE_CONTINUE;
}

static gpointer
busy_destination(gpointer data)
{
    Busy *b = data;
    g_autoptr(GSocket) m = g_socket_accept(b->dst_listener, NULL, NULL);
    cr_assert_not_null(m, "the relay never connected the main channel");
    guint8 buf[sizeof advise_stream];
    gsize got = 0;
    while (got < sizeof buf) {
        gssize n = g_socket_receive(m, (char *)buf + got, sizeof buf - got,
                                    NULL, NULL);
        cr_assert_gt(n, 0);
        got += n;
    }
    cr_assert(memcmp(buf, advise_stream, sizeof buf) == 0);
    g_atomic_int_set(&b->main_seen, 1);
    /* the relay connects the preempt channel once it has admitted it;
     * one closed at its handshake timeout never comes (the listener's
     * timeout bounds the wait) */
    g_autoptr(GSocket) p = g_socket_accept(b->dst_listener, NULL, NULL);
    b->preempt_connected = p != NULL;
    g_atomic_int_set(&b->done, 1);
    if (p)
        g_socket_close(p, NULL);
    g_socket_close(m, NULL);
    return NULL;
}

static gpointer
busy_source(gpointer data)
{
    Busy *b = data;
    g_autoptr(GSocket) m = dial(b->relay_addr);
    send_all(m, advise_stream, sizeof advise_stream);
    while (!g_atomic_int_get(&b->main_seen))
        g_usleep(10000);
    g_autoptr(GSocket) p = dial(b->relay_addr); /* and says nothing */
    while (!g_atomic_int_get(&b->done))
        g_usleep(10000);
    g_socket_close(p, NULL);
    g_socket_close(m, NULL);
    return NULL;
}

Test(relay_forward, silent_preempt_admitted_in_a_busy_loop, .timeout = 90)
{
    g_autoptr(GError) err = NULL;
    guint16 dport;
    Busy b = {0};
    b.dst_listener = listener(&dport);
    g_socket_set_timeout(b.dst_listener, 15);
    g_autofree char *to = g_strdup_printf("127.0.0.1:%u", dport);
    MpRelayOptions opt = {.listen = "127.0.0.1:0",
                          .to = to,
                          .once = TRUE,
                          .quiet = TRUE,
                          .handshake_timeout_ms = 2000};
    g_autoptr(MpRelay) r = mp_relay_new(&opt, &err);
    cr_assert_not_null(r, "%s", err ? err->message : "?");
    b.relay_addr = g_strdup(mp_relay_listen_address(r));

    g_idle_add_full(G_PRIORITY_DEFAULT, always_ready, &b, NULL);
    GThread *dst = g_thread_new("dst", busy_destination, &b);
    GThread *src = g_thread_new("src", busy_source, &b);
    mp_relay_run(r);
    g_thread_join(src);
    g_thread_join(dst);
    cr_assert(b.preempt_connected,
              "the silent preempt channel was never admitted (closed at "
              "its handshake timeout)");
    g_socket_close(b.dst_listener, NULL);
    g_object_unref(b.dst_listener);
    g_free(b.relay_addr);
}
