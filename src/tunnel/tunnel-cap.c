/* tunnel-cap.c: the source QEMU held at its max-bandwidth (see
 * tunnel-cap.h). */
#include "config.h"
#include <math.h>
#include "tunnel-cap.h"

/* Each second's rate within this share of their mean: QEMU's limiter
 * (max-bandwidth / 10 per 100 ms) gives a rate steadier than any guest's
 * dirtying or any link's. */
#define CLOSE 0.03
#define MIB (1024.0 * 1024.0)
/* QEMU's default max-bandwidth; its limiter delivers a little below it.
 * A steady rate elsewhere is not taken for the cap: a source QEMU short of
 * CPU (its vCPUs and the tunnel's encoders on the same cores) also sends
 * steadily, at 47 MiB/s in one benchmark run, and raising max-bandwidth
 * would not help it. */
#define DEFAULT_CAP (128.0 * MIB)
#define CAP_LOW 0.90
#define CAP_HIGH 1.02

void
mp_tun_cap_init(MpTunCapWatch *w, gint64 now_us)
{
    *w = (MpTunCapWatch){.last_us = now_us};
}

double
mp_tun_cap_sample(MpTunCapWatch *w, gint64 now_us, guint64 bytes,
                  gboolean room)
{
    gint64 span = now_us - w->last_us;
    guint64 n = bytes - w->last_bytes;

    if (span <= 0)
        return 0;
    w->last_us = now_us;
    w->last_bytes = bytes;
    if (!room || w->told) {
        w->n = 0; /* the link held it back: that is the link's rate */
        return 0;
    }
    w->rates[w->next] = n * 1e6 / span;
    w->next = (w->next + 1) % MP_TUN_CAP_SECONDS;
    if (w->n < MP_TUN_CAP_SECONDS)
        w->n++;
    if (w->n < MP_TUN_CAP_SECONDS)
        return 0;
    double sum = 0;
    for (guint i = 0; i < MP_TUN_CAP_SECONDS; i++)
        sum += w->rates[i];
    double mean = sum / MP_TUN_CAP_SECONDS;
    if (mean < DEFAULT_CAP * CAP_LOW || mean > DEFAULT_CAP * CAP_HIGH)
        return 0;
    for (guint i = 0; i < MP_TUN_CAP_SECONDS; i++)
        if (fabs(w->rates[i] - mean) > mean * CLOSE)
            return 0;
    w->told = TRUE;
    return mean;
}
