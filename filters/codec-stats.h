/* codec-stats.h: what every page codec counts about itself: bytes in and
 * out and the CPU time it spent, measured on the calling thread, so a
 * codec context used by one worker counts that worker's work only. */
#pragma once

#include <time.h>
#include <glib.h>

typedef struct {
    guint64 calls;
    guint64 pages_in;  /* pages handed to the codec */
    guint64 bytes_in;  /* their bytes (encode: raw; decode: encoded) */
    guint64 bytes_out; /* what came out */
    guint64 cpu_ns;    /* thread CPU time inside the codec */
} MpCodecStats;

/* @return the calling thread's CPU time in nanoseconds. */
static inline guint64
mp_codec_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (guint64)ts.tv_sec * G_GUINT64_CONSTANT(1000000000) + ts.tv_nsec;
}

/* Adds one call's counts; `t0` is mp_codec_cpu_ns() at its start. */
static inline void
mp_codec_stats_add(MpCodecStats *s, guint64 pages, guint64 in, guint64 out,
                   guint64 t0)
{
    s->calls++;
    s->pages_in += pages;
    s->bytes_in += in;
    s->bytes_out += out;
    s->cpu_ns += mp_codec_cpu_ns() - t0;
}
