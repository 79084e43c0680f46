/* address.h: socket addresses as the logs, reports and captures write
 * them. */
#pragma once

#include <gio/gio.h>

/* "192.0.2.1:4444", or "[2001:db8::1]:4444" for IPv6 (RFC 3986 style, so
 * the port stays readable); "?" for NULL or an address that is not
 * TCP/IP.  @return a new string (caller frees). */
char *mp_address_string(GSocketAddress *a);

/* `hostport` ("HOST:PORT") resolved to its first address; `what` (an
 * option's name) starts the error.  @return a new address, or NULL with
 * *error set. */
GSocketAddress *mp_address_resolve(const char *what, const char *hostport,
                                   GError **error);
