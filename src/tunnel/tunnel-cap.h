/* tunnel-cap.h: is the source QEMU held at its own max-bandwidth?
 *
 * QEMU paces its migration stream at `max-bandwidth` (default 128 MiB/s),
 * counted in stream bytes, before the tunnel compresses them: a tunnel
 * whose compression pays can take more than that, and then QEMU, not the
 * link, sets the migration's pace.  Seen from the source side: the stream
 * arrives at a steady rate (each second within 3 % of the others) while
 * the tunnel waited for it (its reads of the stream found nothing) and the
 * link had room (it never held the tunnel back), and that rate is QEMU's
 * default cap (90 % to 102 % of 128 MiB/s: a source QEMU short of CPU is
 * steady too, elsewhere).  The watch says so once per tunnel, so that the
 * log can tell the operator to raise it.
 */
#pragma once

#include <glib.h>

/* Seconds in a row that must agree. */
#define MP_TUN_CAP_SECONDS 3

typedef struct {
    guint64 last_bytes;
    gint64 last_us;
    double rates[MP_TUN_CAP_SECONDS]; /* bytes/s, a ring */
    guint n, next;
    gboolean told;
} MpTunCapWatch;

void mp_tun_cap_init(MpTunCapWatch *w, gint64 now_us);
/* About once a second: `bytes` read from the source QEMU so far (stream
 * bytes), `room`: the tunnel waited for the stream and the link had room
 * all along.  @return the rate in bytes/s the first time it sat steady
 * there, else 0. */
double mp_tun_cap_sample(MpTunCapWatch *w, gint64 now_us, guint64 bytes,
                        gboolean room);
