/* fuzz-vmdesc.c: libFuzzer target for the VMDESCRIPTION reader: the
 * JSON comes from the end of the stream, so it is input like the rest.
 * Input: a stream tail; the vmdesc is located in it (mp_vmdesc_locate),
 * or else the whole input is taken as the JSON. */
#include <string.h>
#include <glib.h>
#include "vmdesc.h"

int LLVMFuzzerTestOneInput(const guint8 *data, gsize size);

int
LLVMFuzzerTestOneInput(const guint8 *data, gsize size)
{
    gsize off = 0, len = size;
    guint cursor = 0;

    (void)mp_vmdesc_locate(data, size, &off, &len);
    g_autoptr(MpVmdesc) vd = mp_vmdesc_new((const char *)data + off, len,
                                           NULL);
    if (!vd)
        return 0;
    (void)mp_vmdesc_page_size(vd);
    for (guint i = 0; i < mp_vmdesc_n_devices(vd); i++) {
        const MpVmdescDevice *d = mp_vmdesc_device(vd, i);
        g_assert(d && d->name && d->size <= ((guint64)1 << 48));
        const MpVmdescDevice *f =
            mp_vmdesc_lookup(vd, d->name, d->instance_id, &cursor);
        g_assert(f && strcmp(f->name, d->name) == 0
                 && f->instance_id == d->instance_id);
    }
    g_assert(!mp_vmdesc_device(vd, mp_vmdesc_n_devices(vd)));
    g_assert(!mp_vmdesc_lookup(vd, "\x01no such device", 0, &cursor));
    return 0;
}
