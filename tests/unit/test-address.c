/* test-address.c: socket addresses as logs and reports write them. */
#include "config.h"
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
    g_autofree char *u = mp_address_string(unix_addr);
    g_autofree char *none = mp_address_string(NULL);
    cr_assert_str_eq(u, "?");
    cr_assert_str_eq(none, "?");
}
