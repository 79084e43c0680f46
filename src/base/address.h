/* address.h: socket addresses as the logs, reports and captures write
 * them. */
#pragma once

#include <gio/gio.h>

/* "192.0.2.1:4444", or "[2001:db8::1]:4444" for IPv6 (RFC 3986 style, so
 * the port stays readable), "unix:PATH" for a Unix socket's path,
 * "unix" for its unnamed client; "?" for NULL or another address.
 * @return a new string (caller frees). */
char *mp_address_string(GSocketAddress *a);

/* `hostport` ("HOST:PORT") resolved to its first address; `what` (an
 * option's name) starts the error.  @return a new address, or NULL with
 * *error set. */
GSocketAddress *mp_address_resolve(const char *what, const char *hostport,
                                   GError **error);

/* A --listen value: "HOST:PORT" as mp_address_resolve(), or
 * "unix:PATH", a Unix socket for a QEMU on the same host (`migrate
 * unix:PATH`).  @return a new address, or NULL with *error set. */
GSocketAddress *mp_address_resolve_listen(const char *what, const char *spec,
                                          GError **error);

/* The values of an --allow option (NULL-terminated, or NULL: none), each
 * "ADDR" or "ADDR/PREFIX".  @return a new array of GInetAddressMask
 * (empty for none), or NULL with *error naming the value that is
 * neither. */
GPtrArray *mp_allow_parse(const char *const *values, GError **error);

/* @return TRUE if `host` is in one of `allow`'s networks. */
gboolean mp_allow_matches(const GPtrArray *allow, GInetAddress *host);
