/* tcp-info.h: what the kernel knows of a TCP connection that glibc's
 * <netinet/tcp.h> does not declare (its struct tcp_info stops at Linux
 * 2.6 fields); read from <linux/tcp.h>'s, kept to this one file because
 * the two headers cannot be included together. */
#pragma once

#include <glib.h>

/* The time connection `fd` has spent, since it began, unable to send
 * because the receiver's window was full (tcpi_rwnd_limited, Linux 4.10+):
 * the receiver, not the network, held the sender back.
 * @return TRUE with *us set, FALSE if the kernel does not say. */
gboolean mp_tcp_rwnd_limited_us(int fd, guint64 *us);
/* The kernel's smoothed round trip of connection `fd` and the least one
 * it has seen lately (tcpi_rtt, tcpi_min_rtt, Linux 4.10+), microseconds:
 * their difference is the queue that stands in front of the path's
 * bottleneck.  @return TRUE with both set, FALSE if the kernel does not
 * say. */
gboolean mp_tcp_rtt_us(int fd, guint32 *srtt_us, guint32 *min_rtt_us);
