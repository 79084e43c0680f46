/* tcp-info.c: <linux/tcp.h>'s struct tcp_info (see tcp-info.h). */
#include "config.h"
#include <stddef.h>
#include <netinet/in.h> /* IPPROTO_TCP */
#include <sys/socket.h>
#include <linux/tcp.h>
#include "tcp-info.h"

/* The end of `field` in struct tcp_info. */
#define INFO_END(field) \
    (offsetof(struct tcp_info, field) + sizeof(((struct tcp_info *)0)->field))

/* TCP_INFO of `fd` into `ti`: FALSE if it fails or the kernel (an older
 * one fills less of the struct) stops before byte `need`. */
static gboolean
read_info(int fd, struct tcp_info *ti, size_t need)
{
    socklen_t len = sizeof(*ti);

    return getsockopt(fd, IPPROTO_TCP, TCP_INFO, ti, &len) == 0
           && len >= need;
}

gboolean
mp_tcp_rwnd_limited_us(int fd, guint64 *us)
{
    struct tcp_info ti;

    if (!read_info(fd, &ti, INFO_END(tcpi_rwnd_limited)))
        return FALSE;
    *us = ti.tcpi_rwnd_limited;
    return TRUE;
}

gboolean
mp_tcp_rtt_us(int fd, guint32 *srtt_us, guint32 *min_rtt_us)
{
    struct tcp_info ti;

    if (!read_info(fd, &ti, INFO_END(tcpi_min_rtt)))
        return FALSE;
    *srtt_us = ti.tcpi_rtt;
    *min_rtt_us = ti.tcpi_min_rtt;
    return TRUE;
}
