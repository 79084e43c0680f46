/* workload-console.c: line output on QEMU's debug console (port 0xe9).
 *
 * QEMU: -debugcon file:PATH, or -device isa-debugcon,iobase=0xe9,chardev=ID.
 * Every line starts with "workload: " and ends with "\n" so that tests can
 * grep the log of a guest that shares the file with nothing else.
 */
#include "workload.h"

#define WL_DEBUGCON_PORT 0xe9

static void
con_putc(char c)
{
    wl_outb(WL_DEBUGCON_PORT, (uint8_t)c);
}

static void
con_puts(const char *s)
{
    while (*s != '\0')
        con_putc(*s++);
}

static void
con_putu(uint64_t v, uint32_t base)
{
    char buf[24];
    int n = 0;

    do {
        uint32_t digit;

        v = wl_div64(v, base, &digit);
        buf[n++] = "0123456789abcdef"[digit];
    } while (v != 0);
    while (n > 0)
        con_putc(buf[--n]);
}

static void
con_vprintf(const char *fmt, va_list ap)
{
    for (const char *p = fmt; *p != '\0'; p++) {
        bool ll = false;
        uint64_t u;
        int64_t s;

        if (*p != '%') {
            con_putc(*p);
            continue;
        }
        p++;
        if (p[0] == 'l' && p[1] == 'l') {
            ll = true;
            p += 2;
        }
        switch (*p) {
        case 's': {
            const char *str = va_arg(ap, const char *);

            con_puts(str != NULL ? str : "(null)");
            break;
        }
        case 'c':
            con_putc((char)va_arg(ap, int));
            break;
        case 'd':
            s = ll ? va_arg(ap, int64_t) : va_arg(ap, int32_t);
            if (s < 0) {
                con_putc('-');
                u = (uint64_t)0 - (uint64_t)s;
            } else {
                u = (uint64_t)s;
            }
            con_putu(u, 10);
            break;
        case 'u':
        case 'x':
            u = ll ? va_arg(ap, uint64_t) : va_arg(ap, uint32_t);
            con_putu(u, *p == 'u' ? 10 : 16);
            break;
        case '%':
            con_putc('%');
            break;
        case '\0':
            return;
        default:
            con_putc('%');
            con_putc(*p);
            break;
        }
    }
}

void
wl_log(const char *fmt, ...)
{
    va_list ap;

    con_puts("workload: ");
    va_start(ap, fmt);
    con_vprintf(fmt, ap);
    va_end(ap);
    con_putc('\n');
}
