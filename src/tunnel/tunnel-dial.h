/* tunnel-dial.h: non-blocking TCP connects on the glib main loop, with a
 * timeout, for both ends of the tunnel (the source side's connection to
 * its peer, the destination side's connections to QEMU). */
#pragma once

#include <gio/gio.h>

typedef struct MpTunDial MpTunDial;

/* `sock` connected (borrowed: take a reference to keep it), or NULL with
 * `error`.  The dial
 * is over: the callback may free it. */
typedef void (*MpTunDialFunc)(MpTunDial *d, GSocket *sock,
                              const GError *error, gpointer data);

/* Starts connecting to `to`; `fn` is called from the main loop, never
 * from inside this call.  @return free with mp_tun_dial_free(). */
MpTunDial *mp_tun_dial_new(GSocketAddress *to, guint timeout_ms,
                           MpTunDialFunc fn, gpointer data);
/* Cancels the connect if it is still going (no callback).  Accepts NULL. */
void mp_tun_dial_free(MpTunDial *d);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpTunDial, mp_tun_dial_free)

