/* codec-stats.h: what every page codec counts about itself: bytes in and
 * out and the time it spent working, measured on the calling thread, so a
 * codec context used by one worker counts that worker's work only.
 *
 * The time is CLOCK_MONOTONIC around the codec's work (busy time), not the
 * thread's CPU clock: that one is a system call (4 us measured on the
 * development VM, against 0.09 us), which per 4 KiB page would cost more
 * than the codecs themselves.  Busy time equals CPU time unless the thread
 * was preempted; the tunnel reads each worker's CPU seconds per round from
 * the kernel for the metrics. */
#pragma once

#include <time.h>
#include <glib.h>

typedef struct {
    guint64 calls;
    guint64 pages_in;  /* pages handed to the codec */
    guint64 bytes_in;  /* their bytes (encode: raw; decode: encoded) */
    guint64 bytes_out; /* what came out */
    guint64 busy_ns;   /* time inside the codec on its thread */
} MpCodecStats;

/* @return a monotonic time in nanoseconds, for busy time. */
static inline guint64
mp_codec_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (guint64)ts.tv_sec * G_GUINT64_CONSTANT(1000000000) + ts.tv_nsec;
}

/* Adds one call's counts; `t0` is mp_codec_now_ns() at its start. */
static inline void
mp_codec_stats_add(MpCodecStats *s, guint64 pages, guint64 in, guint64 out,
                   guint64 t0)
{
    s->calls++;
    s->pages_in += pages;
    s->bytes_in += in;
    s->bytes_out += out;
    s->busy_ns += mp_codec_now_ns() - t0;
}
