/* workload-timer.c: milliseconds from the TSC, calibrated against the PIT.
 *
 * PIT channel 2 (ports 0x42/0x43, gate and OUT2 on port 0x61) counts down
 * once in mode 0; OUT2 rises at terminal count.  The TSC ticks over that
 * interval give the TSC rate.  No interrupts are needed, so the guest runs
 * with IF=0 throughout.
 *
 * Under TCG the TSC follows the host clock and the PIT follows
 * QEMU_CLOCK_VIRTUAL (host time as well, without -icount); both stop while
 * the VM is stopped, so the rate holds across migration downtime.  The
 * result is approximate; that is all the rate control needs.
 */
#include "workload.h"

#define PIT_HZ       1193182u
#define PIT_CH2      0x42
#define PIT_CMD      0x43
#define PIT_CTRL     0x61 /* bit 0: gate 2, bit 1: speaker, bit 5: OUT2 */
#define CAL_MS       50u
#define CAL_COUNT    (PIT_HZ * CAL_MS / 1000u) /* 59659 < 65536 */
#define FALLBACK_KHZ 1000000u                  /* 1 GHz if the PIT is mute */

static uint64_t tsc_start;
static uint32_t tsc_khz;

static uint32_t
calibrate_once(void)
{
    uint8_t ctrl = wl_inb(PIT_CTRL);
    uint64_t t0, t1;
    uint32_t spins = 0;

    wl_outb(PIT_CTRL, (uint8_t)((ctrl & ~0x02u) | 0x01u)); /* gate on */
    wl_outb(PIT_CMD, 0xb0); /* channel 2, lobyte/hibyte, mode 0, binary */
    wl_outb(PIT_CH2, CAL_COUNT & 0xff);
    t0 = wl_rdtsc();
    wl_outb(PIT_CH2, CAL_COUNT >> 8); /* counting starts here */
    while ((wl_inb(PIT_CTRL) & 0x20) == 0) {
        /* TCG: one inb costs well under 10 us, so this is far over 50 ms. */
        if (++spins == 50000000u)
            return 0;
    }
    t1 = wl_rdtsc();
    return (uint32_t)wl_div64(t1 - t0, CAL_MS, NULL);
}

void
wl_timer_init(void)
{
    uint32_t best = 0;

    /* Loop and exit overheads only lengthen the measured interval, so
     * the smallest of three is the closest. */
    for (int i = 0; i < 3; i++) {
        uint32_t khz = calibrate_once();

        if (khz != 0 && (best == 0 || khz < best))
            best = khz;
    }
    if (best == 0) {
        wl_log("warning: PIT channel 2 did not count, assuming TSC %u kHz",
               FALLBACK_KHZ);
        best = FALLBACK_KHZ;
    }
    tsc_khz = best;
    tsc_start = wl_rdtsc();
    wl_log("timer tsc_khz=%u", tsc_khz);
}

uint64_t
wl_timer_ms(void)
{
    return wl_div64(wl_rdtsc() - tsc_start, tsc_khz, NULL);
}
