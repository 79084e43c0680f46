/* tcp-info.c: <linux/tcp.h>'s struct tcp_info (see tcp-info.h). */
#include "config.h"
#include <stddef.h>
#include <netinet/in.h> /* IPPROTO_TCP */
#include <sys/socket.h>
#include <linux/tcp.h>
#include "tcp-info.h"

gboolean
mp_tcp_rwnd_limited_us(int fd, guint64 *us)
{
    struct tcp_info ti;
    socklen_t len = sizeof(ti);

    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0)
        return FALSE;
    /* an older kernel fills less of the struct */
    if (len < offsetof(struct tcp_info, tcpi_rwnd_limited)
                  + sizeof(ti.tcpi_rwnd_limited))
        return FALSE;
    *us = ti.tcpi_rwnd_limited;
    return TRUE;
}

gboolean
mp_tcp_rtt_us(int fd, guint32 *srtt_us, guint32 *min_rtt_us)
{
    struct tcp_info ti;
    socklen_t len = sizeof(ti);

    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0)
        return FALSE;
    if (len < offsetof(struct tcp_info, tcpi_min_rtt)
                  + sizeof(ti.tcpi_min_rtt))
        return FALSE;
    *srtt_us = ti.tcpi_rtt;
    *min_rtt_us = ti.tcpi_min_rtt;
    return TRUE;
}
