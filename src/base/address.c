/* address.c: see address.h. */
#include "config.h"
#include <string.h>
#include "address.h"

char *
mp_address_string(GSocketAddress *a)
{
    if (!a || !G_IS_INET_SOCKET_ADDRESS(a))
        return g_strdup("?");
    GInetSocketAddress *ia = G_INET_SOCKET_ADDRESS(a);
    g_autofree char *ip =
        g_inet_address_to_string(g_inet_socket_address_get_address(ia));
    guint16 port = g_inet_socket_address_get_port(ia);
    return strchr(ip, ':') ? g_strdup_printf("[%s]:%u", ip, port)
                           : g_strdup_printf("%s:%u", ip, port);
}

GSocketAddress *
mp_address_resolve(const char *what, const char *hostport, GError **error)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GSocketConnectable) addr =
        g_network_address_parse(hostport, 0, &err);

    if (!addr) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                    "%s %s: %s (expected HOST:PORT)", what, hostport,
                    err->message);
        return NULL;
    }
    g_autoptr(GSocketAddressEnumerator) en =
        g_socket_connectable_enumerate(addr);
    GSocketAddress *sa = g_socket_address_enumerator_next(en, NULL, &err);
    if (!sa) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_HOST_NOT_FOUND, "%s %s: %s",
                    what, hostport, err ? err->message : "no address");
        return NULL;
    }
    return sa;
}
