/* tunnel-dial.c: non-blocking TCP connects (see tunnel-dial.h). */
#include "config.h"
#include <gio/gio.h>
#include "tunnel-dial.h"

struct MpTunDial {
    GSocket *sock;
    GSource *source;  /* writable: the connect finished */
    guint timeout_id; /* or the timeout, or the idle of an early error */
    GError *error;
    guint timeout_ms;
    MpTunDialFunc fn;
    gpointer data;
};

static void
stop(MpTunDial *d)
{
    if (d->source) {
        g_source_destroy(d->source);
        g_clear_pointer(&d->source, g_source_unref);
    }
    if (d->timeout_id)
        g_source_remove(d->timeout_id);
    d->timeout_id = 0;
}

static void
done(MpTunDial *d, GError *error)
{
    stop(d);
    GSocket *sock = error ? NULL : g_steal_pointer(&d->sock);
    if (error && d->sock) {
        g_socket_close(d->sock, NULL);
        g_clear_object(&d->sock);
    }
    d->fn(d, sock, error, d->data);
    if (sock)
        g_object_unref(sock);
    g_clear_error(&error);
}

static gboolean
on_writable(GSocket *sock, GIOCondition cond, gpointer data)
{
    MpTunDial *d = data;
    GError *err = NULL;
    if (!g_socket_check_connect_result(sock, &err)) {
        done(d, err);
        return G_SOURCE_REMOVE;
    }
    done(d, NULL);
    return G_SOURCE_REMOVE;
}

static gboolean
on_timeout(gpointer data)
{
    MpTunDial *d = data;
    d->timeout_id = 0;
    GError *err = d->error
                      ? g_steal_pointer(&d->error)
                      : g_error_new(G_IO_ERROR, G_IO_ERROR_TIMED_OUT,
                                    "no answer in %u ms", d->timeout_ms);
    done(d, err);
    return G_SOURCE_REMOVE;
}

MpTunDial *
mp_tun_dial_new(GSocketAddress *to, guint timeout_ms, MpTunDialFunc fn,
                gpointer data)
{
    MpTunDial *d = g_new0(MpTunDial, 1);
    GError *err = NULL;

    d->fn = fn;
    d->data = data;
    d->timeout_ms = timeout_ms;
    d->sock = g_socket_new(g_socket_address_get_family(to),
                           G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_TCP, &err);
    if (d->sock) {
        g_socket_set_blocking(d->sock, FALSE);
        if (g_socket_connect(d->sock, to, NULL, &err)
            || g_error_matches(err, G_IO_ERROR, G_IO_ERROR_PENDING)) {
            g_clear_error(&err);
            d->source = g_socket_create_source(d->sock, G_IO_OUT, NULL);
            g_source_set_callback(d->source, G_SOURCE_FUNC(on_writable), d,
                                  NULL);
            g_source_attach(d->source, NULL);
            d->timeout_id = g_timeout_add(timeout_ms, on_timeout, d);
            return d;
        }
    }
    /* reported from the loop, as every other outcome */
    d->error = err;
    d->timeout_id = g_idle_add(on_timeout, d);
    return d;
}

void
mp_tun_dial_free(MpTunDial *d)
{
    if (!d)
        return;
    stop(d);
    if (d->sock) {
        g_socket_close(d->sock, NULL);
        g_object_unref(d->sock);
    }
    g_clear_error(&d->error);
    g_free(d);
}

