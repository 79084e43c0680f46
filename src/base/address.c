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
