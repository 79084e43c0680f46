/* fuzz-tunnel-mux.c: libFuzzer target for the receiving side of
 * `migproxy dest` after the handshake: a destination mux (tunnel-mux.c)
 * fed arbitrary frames from a source side that did its handshake
 * properly, with no QEMU behind it ("QEMU" connections are socket pairs
 * whose far ends this target drains, or refuses).
 *
 * The first input byte selects:
 *   bit 0  the source side's HELLO offers raw-stream zstd (COMPRESSED DATA
 *          is then legal; else it must be refused)
 *   bit 1  OPENs are refused (mp_tun_mux_refuse) instead of attached
 *   bit 2  the frames' checks are fixed up first (else mutations rarely
 *          get past them and the mux behind them goes unexplored)
 *   bit 3  each attached "QEMU" writes a few bytes and closes, so the mux
 *          opens reverse streams and sends their DATA and CLOSE
 *   bit 4  "QEMU" never reads: the mux must bound what it holds for it
 *          (a peer that sends past its window is refused) and still close
 *   bits 5-7  the input goes in chunks of (bits + 1) * 193 bytes
 * The rest follows the preamble and the HELLO on the tunnel.  Whatever
 * comes, the mux must not crash, must close the tunnel once its peer's
 * bytes end (EOF), and must leave nothing behind (LeakSanitizer). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "tunnel-mux.h"
#include "tunnel-tls.h"

int LLVMFuzzerTestOneInput(const guint8 *data, gsize size);

#define CLOSE_DEADLINE_US (5 * G_USEC_PER_SEC)

typedef struct {
    guint16 stream;
    GSocket *mine; /* the mux's end, until attached */
    int far;       /* "QEMU", drained here */
} Local;

typedef struct {
    guint8 sel;
    GPtrArray *locals; /* Local* */
    GArray *pending;   /* stream ids opened, not yet attached or refused */
    gboolean closed;
} Fz;

static void
die(const char *what)
{
    fprintf(stderr, "fuzz-tunnel-mux: %s\n", what);
    abort();
}

static void
local_free(Local *l)
{
    if (l->mine)
        g_object_unref(l->mine);
    if (l->far >= 0)
        close(l->far);
    g_free(l);
}

static void
on_open(MpTunMux *m, guint16 stream, const MpTunOpen *o, gpointer data)
{
    Fz *fz = data;
    /* attached later, from the loop, as tunnel-dest.c does after its
     * connect */
    g_array_append_val(fz->pending, stream);
}

static void
on_closed(MpTunMux *m, const GError *error, guint8 end_code, gpointer data)
{
    Fz *fz = data;
    fz->closed = TRUE;
    /* G_MESSAGES_DEBUG=all shows how a seed ends */
    g_debug("tunnel closed: %s (end code %u)",
            error ? error->message : "END both ways", end_code);
}

static const MpTunMuxHooks hooks = {
    .open = on_open,
    .closed = on_closed,
};

static void
attach_pending(Fz *fz, MpTunMux *m)
{
    while (fz->pending->len) {
        guint16 stream = g_array_index(fz->pending, guint16, 0);
        g_array_remove_index(fz->pending, 0);
        if (fz->sel & 2) {
            mp_tun_mux_refuse(m, stream, "refused by the fuzzer");
            continue;
        }
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0,
                       sv)
            < 0)
            die("socketpair");
        Local *l = g_new0(Local, 1);
        l->stream = stream;
        l->far = sv[1];
        l->mine = g_socket_new_from_fd(sv[0], NULL);
        if (!l->mine)
            die("g_socket_new_from_fd");
        g_socket_set_blocking(l->mine, FALSE);
        if (fz->sel & 8) {
            static const char hello[] = "QEMU return path";
            if (write(l->far, hello, sizeof(hello)) < 0)
                die("write to the local socket");
            shutdown(l->far, SHUT_WR);
        }
        mp_tun_mux_attach(m, stream, l->mine);
        g_clear_object(&l->mine);
        g_ptr_array_add(fz->locals, l);
    }
}

/* Reads what the mux wrote to "QEMU" (and discards it), unless this
 * QEMU is stalled (bit 4). */
static void
drain_locals(Fz *fz)
{
    guint8 buf[65536];
    if (fz->sel & 16)
        return;
    for (guint i = 0; i < fz->locals->len; i++) {
        Local *l = g_ptr_array_index(fz->locals, i);
        while (read(l->far, buf, sizeof(buf)) > 0) {
        }
    }
}

static void
drain_fd(int fd)
{
    guint8 buf[65536];
    while (read(fd, buf, sizeof(buf)) > 0) {
    }
}

/* Rewrites the header and payload checks of every frame that lies whole
 * in the input, as a writer would have made them. */
static void
fix_checks(guint8 *in, gsize len)
{
    gsize at = 0;

    while (at + MP_TUN_HEADER_LEN <= len) {
        guint8 *h = in + at;
        guint32 plen = (guint32)h[4] << 24 | (guint32)h[5] << 16
                       | (guint32)h[6] << 8 | h[7];
        if (plen > len - at - MP_TUN_HEADER_LEN
            || len - at - MP_TUN_HEADER_LEN - plen < MP_TUN_TRAILER_LEN)
            return;
        g_autoptr(GByteArray) again = g_byte_array_new();
        mp_tun_write_frame(again, h[0], h[1], (guint16)(h[2] << 8 | h[3]),
                           (guint64)mp_be32(h + 8) << 32 | mp_be32(h + 12),
                           h + MP_TUN_HEADER_LEN, plen);
        memcpy(h, again->data, again->len);
        at += again->len;
    }
}

int
LLVMFuzzerTestOneInput(const guint8 *data, gsize size)
{
    if (size < 1)
        return 0;
    Fz fz = {
        .sel = data[0],
        .locals = g_ptr_array_new_with_free_func((GDestroyNotify)local_free),
        .pending = g_array_new(FALSE, FALSE, sizeof(guint16)),
    };
    gsize chunk = ((fz.sel >> 5) + 1) * 193;

    g_autoptr(GByteArray) in = g_byte_array_new();
    mp_tun_write_preamble(in);
    MpTunHello h = {
        .version_min = MP_TUN_VERSION,
        .version_max = MP_TUN_VERSION,
        .role = MP_TUN_ROLE_SOURCE,
        .tls = MP_TUN_TLS_NONE,
        .features = fz.sel & 1 ? MP_TUN_FEAT_RAW_ZSTD : 0,
        .page_size = 4096,
        .max_payload = MP_TUN_MAX_PAYLOAD_DEFAULT,
        .software = "fuzz",
    };
    mp_tun_write_hello(in, &h);
    gsize head = in->len;
    g_byte_array_append(in, data + 1, size - 1);
    if (fz.sel & 4)
        fix_checks(in->data + head, in->len - head);

    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv)
        < 0)
        die("socketpair");
    GSocket *sock = g_socket_new_from_fd(sv[0], NULL);
    if (!sock)
        die("g_socket_new_from_fd");
    g_socket_set_blocking(sock, FALSE);
    MpTunMuxOptions mo = {.role = MP_TUN_ROLE_DEST, .compress = TRUE};
    GIOStream *stream = mp_tun_plain_stream(sock);
    MpTunMux *m = mp_tun_mux_new(stream, "fuzz tunnel", &mo, &hooks, &fz);
    g_object_unref(stream);
    g_object_unref(sock);

    gsize at = 0;
    gboolean eof = FALSE;
    gint64 eof_at = 0;
    while (!fz.closed) {
        if (at < in->len) {
            ssize_t w = write(sv[1], in->data + at, MIN(chunk, in->len - at));
            if (w > 0)
                at += w;
            else if (w < 0 && errno != EAGAIN)
                at = in->len; /* the mux closed its end */
        } else if (!eof) {
            shutdown(sv[1], SHUT_WR);
            eof = TRUE;
            eof_at = g_get_monotonic_time();
        } else if (g_get_monotonic_time() - eof_at > CLOSE_DEADLINE_US) {
            die("the mux did not close after its tunnel ended (EOF)");
        }
        drain_fd(sv[1]);
        drain_locals(&fz);
        while (g_main_context_iteration(NULL, FALSE) && !fz.closed) {
        }
        attach_pending(&fz, m);
        if (eof && !fz.closed)
            g_usleep(100);
    }
    mp_tun_mux_free(m);
    /* what the closed hook left queued (a reap idle, ...) */
    while (g_main_context_iteration(NULL, FALSE)) {
    }
    close(sv[1]);
    g_ptr_array_unref(fz.locals);
    g_array_unref(fz.pending);
    return 0;
}
