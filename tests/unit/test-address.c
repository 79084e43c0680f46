/* test-address.c: socket addresses as logs and reports write them. */
#include "config.h"
#include <string.h>
#include <criterion/criterion.h>
#include <gio/gunixsocketaddress.h>
#include "address.h"

static char *
format(const char *ip, guint16 port)
{
    g_autoptr(GSocketAddress) a =
        g_inet_socket_address_new_from_string(ip, port);
    cr_assert_not_null(a, "%s", ip);
    return mp_address_string(a);
}

Test(address, ipv4_and_ipv6)
{
    g_autofree char *v4 = format("192.0.2.1", 4444);
    g_autofree char *v6 = format("2001:db8::1", 80);
    cr_assert_str_eq(v4, "192.0.2.1:4444");
    /* brackets: the port stays apart from the address's colons */
    cr_assert_str_eq(v6, "[2001:db8::1]:80");
}

Test(address, not_tcp_ip)
{
    g_autoptr(GSocketAddress) unix_addr = g_unix_socket_address_new("/x");
    g_autoptr(GSocketAddress) abstract = g_unix_socket_address_new_with_type(
        "hop", -1, G_UNIX_SOCKET_ADDRESS_ABSTRACT);
    g_autoptr(GSocketAddress) client = g_unix_socket_address_new_with_type(
        "", 0, G_UNIX_SOCKET_ADDRESS_ANONYMOUS);
    g_autofree char *c = mp_address_string(client);
    g_autofree char *u = mp_address_string(unix_addr);
    g_autofree char *ab = mp_address_string(abstract);
    g_autofree char *none = mp_address_string(NULL);
    /* as --listen takes it */
    cr_assert_str_eq(u, "unix:/x");
    cr_assert_str_eq(c, "unix");
    cr_assert_str_eq(ab, "?");
    cr_assert_str_eq(none, "?");
}

/* --listen: HOST:PORT, or unix:PATH for a QEMU on this host. */
Test(address, listen_tcp_or_unix)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GSocketAddress) t =
        mp_address_resolve_listen("--listen", "127.0.0.1:4444", &err);
    g_autoptr(GSocketAddress) u =
        mp_address_resolve_listen("--listen", "unix:/run/m.sock", &err);
    cr_assert(t && G_IS_INET_SOCKET_ADDRESS(t));
    cr_assert(u && G_IS_UNIX_SOCKET_ADDRESS(u));
    cr_assert_str_eq(
        g_unix_socket_address_get_path(G_UNIX_SOCKET_ADDRESS(u)),
        "/run/m.sock");
    g_autoptr(GSocketAddress) bad =
        mp_address_resolve_listen("--listen", "unix:", &err);
    cr_assert_null(bad);
    cr_assert(strstr(err->message, "expected unix:PATH"), "%s",
              err->message);
}

static gboolean
allowed(const GPtrArray *allow, const char *ip)
{
    g_autoptr(GInetAddress) a = g_inet_address_new_from_string(ip);
    cr_assert_not_null(a, "%s", ip);
    return mp_allow_matches(allow, a);
}

Test(address, allow_addresses_and_networks)
{
    const char *values[] = {"192.0.2.7", "10.1.0.0/16", "2001:db8::/32", NULL};
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) allow = mp_allow_parse(values, &err);
    cr_assert_not_null(allow, "%s", err ? err->message : "?");
    cr_assert_eq(allow->len, 3);
    cr_assert(allowed(allow, "192.0.2.7"));
    cr_assert_not(allowed(allow, "192.0.2.8"));
    cr_assert(allowed(allow, "10.1.255.3"));
    cr_assert_not(allowed(allow, "10.2.0.1"));
    cr_assert(allowed(allow, "2001:db8::5"));
    cr_assert_not(allowed(allow, "2001:db9::5"));

    g_autoptr(GPtrArray) none = mp_allow_parse(NULL, &err);
    cr_assert_not_null(none);
    cr_assert_eq(none->len, 0);
    cr_assert_not(allowed(none, "192.0.2.7"));
}

Test(address, allow_names_the_bad_value)
{
    const char *values[] = {"192.0.2.7", "10.1.0.0/99", NULL};
    g_autoptr(GError) err = NULL;
    cr_assert_null(mp_allow_parse(values, &err));
    cr_assert_not_null(err);
    cr_assert(strstr(err->message, "--allow 10.1.0.0/99"), "%s", err->message);
    cr_assert(strstr(err->message, "ADDR/PREFIX"), "%s", err->message);
}
