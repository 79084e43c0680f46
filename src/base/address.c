/* address.c: see address.h. */
#include "config.h"
#include <string.h>
#include <gio/gunixsocketaddress.h>
#include "address.h"

char *
mp_address_string(GSocketAddress *a)
{
    if (a && G_IS_UNIX_SOCKET_ADDRESS(a)) {
        GUnixSocketAddress *ua = G_UNIX_SOCKET_ADDRESS(a);
        switch (g_unix_socket_address_get_address_type(ua)) {
        case G_UNIX_SOCKET_ADDRESS_PATH:
            return g_strdup_printf("unix:%s",
                                   g_unix_socket_address_get_path(ua));
        case G_UNIX_SOCKET_ADDRESS_ANONYMOUS:
            return g_strdup("unix"); /* a local client of a unix:PATH */
        default:
            return g_strdup("?");
        }
    }
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

GSocketAddress *
mp_address_resolve_listen(const char *what, const char *spec, GError **error)
{
    if (!g_str_has_prefix(spec, "unix:"))
        return mp_address_resolve(what, spec, error);
    const char *path = spec + strlen("unix:");
    if (!*path) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                    "%s %s: no path (expected unix:PATH)", what, spec);
        return NULL;
    }
    return g_unix_socket_address_new(path);
}

GPtrArray *
mp_allow_parse(const char *const *values, GError **error)
{
    g_autoptr(GPtrArray) allow =
        g_ptr_array_new_with_free_func(g_object_unref);
    for (guint i = 0; values && values[i]; i++) {
        g_autoptr(GError) err = NULL;
        GInetAddressMask *m =
            g_inet_address_mask_new_from_string(values[i], &err);
        if (!m) {
            g_set_error(error, G_IO_ERROR, G_IO_ERROR_INVALID_ARGUMENT,
                        "--allow %s: %s (expected ADDR or ADDR/PREFIX)",
                        values[i], err->message);
            return NULL;
        }
        g_ptr_array_add(allow, m);
    }
    return g_steal_pointer(&allow);
}

gboolean
mp_allow_matches(const GPtrArray *allow, GInetAddress *host)
{
    for (guint i = 0; i < allow->len; i++)
        if (g_inet_address_mask_matches(g_ptr_array_index(allow, i), host))
            return TRUE;
    return FALSE;
}
