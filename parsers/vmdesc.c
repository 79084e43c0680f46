/* vmdesc.c: VMDESCRIPTION JSON (QEMU migration/vmstate.c vmsd_desc_*). */
#include <string.h>
#include "vmdesc.h"
#include "json-util.h"
#include "parse-common.h"

/* Nesting of subsections is shallow in practice; a bound keeps hostile
 * JSON from recursing without end. */
#define MAX_DEPTH 32

/* Far above any device state, and low enough that sums of field sizes
 * (each up to 2^32 x 2^32 in hostile JSON) cannot overflow. */
#define MAX_SECTION_SIZE ((gint64)1 << 48)

struct MpVmdesc {
    gint ref;
    json_object *root;
    guint32 page_size;
    GArray *devices; /* MpVmdescDevice */
};

/* Bytes a vmsd object (device, or subsection) wrote; -1 if malformed. */
static gint64
vmsd_size(json_object *o, int depth)
{
    json_object *fields, *subs;
    gint64 total = 0;

    if (depth > MAX_DEPTH)
        return -1;
    if (json_object_object_get_ex(o, "fields", &fields)) {
        if (!json_object_is_type(fields, json_type_array))
            return -1;
        for (size_t i = 0; i < json_object_array_length(fields); i++) {
            json_object *f = json_object_array_get_idx(fields, i);
            gint64 size, n = 1;
            if (!mp_json_int(f, "size", &size) || size < 0
                || size > G_MAXUINT32)
                return -1;
            if (mp_json_int(f, "array_len", &n) && (n < 0 || n > G_MAXUINT32))
                return -1;
            if ((guint64)size * (guint64)n
                > (guint64)(MAX_SECTION_SIZE - total))
                return -1;
            total += size * n;
        }
    } else if (!mp_json_int(o, "size", &total) || total < 0
               || total > MAX_SECTION_SIZE) {
        return -1;
    }
    if (json_object_object_get_ex(o, "subsections", &subs)) {
        if (!json_object_is_type(subs, json_type_array))
            return -1;
        for (size_t i = 0; i < json_object_array_length(subs); i++) {
            json_object *s = json_object_array_get_idx(subs, i);
            const char *name = mp_json_string(s, "vmsd_name");
            gint64 body = vmsd_size(s, depth + 1);
            if (!name || strlen(name) > 255 || body < 0)
                return -1;
            gint64 sub = 1 + 1 + (gint64)strlen(name) + 4 + body;
            if (sub > MAX_SECTION_SIZE - total)
                return -1;
            total += sub;
        }
    }
    return total;
}

MpVmdesc *
mp_vmdesc_new(const char *json, gsize len, GError **error)
{
    if (len > MP_VMDESC_MAX_SIZE) {
        g_set_error(error, MP_PARSE_ERROR, MP_PARSE_ERROR_LENGTH,
                    "vmdesc: %zu bytes of JSON (at most %u parsed)", len,
                    MP_VMDESC_MAX_SIZE);
        return NULL;
    }
    guint64 cost = mp_json_heap_estimate(json, len);
    if (cost > MP_JSON_MAX_HEAP) {
        g_set_error(
            error, MP_PARSE_ERROR, MP_PARSE_ERROR_LENGTH,
            "vmdesc: %zu bytes of JSON would take about %" G_GUINT64_FORMAT
            " MiB to parse (at most %u MiB)",
            len, cost >> 20, MP_JSON_MAX_HEAP >> 20);
        return NULL;
    }

    g_autoptr(MpVmdesc) vd = g_new0(MpVmdesc, 1);
    json_tokener *tok = json_tokener_new_ex(64);
    gint64 ps = 0;

    vd->ref = 1;
    vd->devices = g_array_new(FALSE, TRUE, sizeof(MpVmdescDevice));
    vd->root = json_tokener_parse_ex(tok, json, (int)len);
    if (!vd->root || json_tokener_get_error(tok) != json_tokener_success) {
        g_set_error(error, MP_PARSE_ERROR, MP_PARSE_ERROR_DECODE,
                    "vmdesc: invalid JSON: %s",
                    json_tokener_error_desc(json_tokener_get_error(tok)));
        json_tokener_free(tok);
        return NULL;
    }
    json_tokener_free(tok);
    if (mp_json_int(vd->root, "page_size", &ps) && ps > 0 && ps <= G_MAXUINT32)
        vd->page_size = ps;
    json_object *devices = mp_json_array(vd->root, "devices");
    if (!devices) {
        g_set_error(error, MP_PARSE_ERROR, MP_PARSE_ERROR_DECODE,
                    "vmdesc: no \"devices\" array");
        return NULL;
    }
    for (size_t i = 0; i < json_object_array_length(devices); i++) {
        json_object *o = json_object_array_get_idx(devices, i);
        MpVmdescDevice dev = {0};
        gint64 inst = 0, ver = 0, size;

        dev.name = mp_json_string(o, "name");
        dev.vmsd_name = mp_json_string(o, "vmsd_name");
        mp_json_int(o, "instance_id", &inst);
        mp_json_int(o, "version", &ver);
        size = vmsd_size(o, 0);
        if (!dev.name || size < 0) {
            g_set_error(error, MP_PARSE_ERROR, MP_PARSE_ERROR_DECODE,
                        "vmdesc: device %zu (%s) is malformed", i,
                        dev.name ? dev.name : "no name");
            return NULL;
        }
        dev.instance_id = inst;
        dev.version = ver;
        dev.size = size;
        dev.desc = o;
        g_array_append_val(vd->devices, dev);
    }
    return g_steal_pointer(&vd);
}

MpVmdesc *
mp_vmdesc_ref(MpVmdesc *vd)
{
    g_atomic_int_inc(&vd->ref);
    return vd;
}

void
mp_vmdesc_unref(MpVmdesc *vd)
{
    if (!vd || !g_atomic_int_dec_and_test(&vd->ref))
        return;
    g_array_free(vd->devices, TRUE);
    if (vd->root)
        json_object_put(vd->root);
    g_free(vd);
}

guint32
mp_vmdesc_page_size(const MpVmdesc *vd)
{
    return vd->page_size;
}

guint
mp_vmdesc_n_devices(const MpVmdesc *vd)
{
    return vd->devices->len;
}

const MpVmdescDevice *
mp_vmdesc_device(const MpVmdesc *vd, guint i)
{
    return i < vd->devices->len
               ? &g_array_index(vd->devices, MpVmdescDevice, i)
               : NULL;
}

const MpVmdescDevice *
mp_vmdesc_lookup(const MpVmdesc *vd, const char *idstr, guint32 instance,
                 guint *cursor)
{
    guint n = vd->devices->len;

    for (guint k = 0; k < n; k++) {
        guint i = (*cursor + k) % n;
        const MpVmdescDevice *d = mp_vmdesc_device(vd, i);
        if (d->instance_id == instance && strcmp(d->name, idstr) == 0) {
            *cursor = i + 1;
            return d;
        }
    }
    return NULL;
}

gboolean
mp_vmdesc_locate(const guint8 *tail, gsize len, gsize *json_off,
                 gsize *json_len)
{
    /* The JSON is the last thing in the stream and ends with '}'. */
    if (len < 8 || tail[len - 1] != '}')
        return FALSE;
    for (gsize i = len - 7; i-- > 0;) {
        if (tail[i] != MP_QMIG_EOF || tail[i + 1] != MP_QMIG_VMDESCRIPTION
            || tail[i + 6] != '{')
            continue;
        guint32 l = mp_be32(tail + i + 2);
        if ((gsize)l == len - (i + 6)) {
            *json_off = i + 6;
            *json_len = l;
            return TRUE;
        }
    }
    return FALSE;
}
