/* vmdesc.h: the VMDESCRIPTION JSON that a precopy stream ends with.
 *
 * It describes every device (FULL) section in stream order, field by
 * field with the bytes each wrote, so with it the otherwise undelimited
 * device sections can be sliced exactly:
 *   body = sum(field.size * (field.array_len or 1))
 *        + sum over subsections (0x05, u8 n, name, be32 version, body)
 */
#pragma once

#include <glib.h>
#include <json-c/json.h>
#include "parse-common.h"

typedef struct {
    const char *name; /* section idstr */
    guint32 instance_id;
    const char *vmsd_name;
    guint32 version;
    guint64 size;          /* bytes of the section body */
    json_object *desc;     /* the device's JSON object (owned by the vmdesc) */
} MpVmdescDevice;

typedef struct MpVmdesc MpVmdesc;

/* A q35 guest's vmdesc is 44 KB and parses in 1.2 MB of heap: this bound
 * and MP_JSON_MAX_HEAP leave a hundredfold margin. */
#define MP_VMDESC_MAX_SIZE (16u << 20) /* bytes of JSON */

/* Parses `len` bytes of JSON: at most MP_VMDESC_MAX_SIZE bytes, and no
 * more values than fit MP_JSON_MAX_HEAP.  @return a new vmdesc (ref 1)
 * or NULL with an error. */
MpVmdesc *mp_vmdesc_new(const char *json, gsize len, GError **error);
MpVmdesc *mp_vmdesc_ref(MpVmdesc *vd);
void mp_vmdesc_unref(MpVmdesc *vd); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpVmdesc, mp_vmdesc_unref)

guint32 mp_vmdesc_page_size(const MpVmdesc *vd);
guint mp_vmdesc_n_devices(const MpVmdesc *vd);
const MpVmdescDevice *mp_vmdesc_device(const MpVmdesc *vd, guint i);

/* Finds the device of section (idstr, instance).  Devices come in stream
 * order, so `*cursor` (start at 0) makes the usual lookup O(1). */
const MpVmdescDevice *mp_vmdesc_lookup(const MpVmdesc *vd, const char *idstr,
                                       guint32 instance, guint *cursor);

/* Looks for "00 06 be32 L JSON" ending exactly at the end of `tail` (the
 * last bytes of a stream file).  @return TRUE and the JSON's position. */
gboolean mp_vmdesc_locate(const guint8 *tail, gsize len, gsize *json_off,
                          gsize *json_len);
