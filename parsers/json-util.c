/* json-util.c: see json-util.h. */
#include "config.h"
#include <string.h>
#include "json-util.h"

json_object *
mp_json_get(json_object *o, const char *key)
{
    json_object *v = NULL;
    return json_object_object_get_ex(o, key, &v) ? v : NULL;
}

json_object *
mp_json_path(json_object *o, const char *path)
{
    const char *dot;

    while (o && (dot = strchr(path, '.'))) {
        g_autofree char *key = g_strndup(path, dot - path);
        o = mp_json_get(o, key);
        path = dot + 1;
    }
    return mp_json_get(o, path);
}

const char *
mp_json_string(json_object *o, const char *key)
{
    json_object *v = mp_json_get(o, key);
    return json_object_is_type(v, json_type_string) ? json_object_get_string(v)
                                                    : NULL;
}

json_object *
mp_json_array(json_object *o, const char *key)
{
    json_object *v = mp_json_get(o, key);
    return json_object_is_type(v, json_type_array) ? v : NULL;
}

gboolean
mp_json_int(json_object *o, const char *key, gint64 *out)
{
    json_object *v = mp_json_get(o, key);
    if (!json_object_is_type(v, json_type_int))
        return FALSE;
    *out = json_object_get_int64(v);
    return TRUE;
}

gint64
mp_json_int_or(json_object *o, const char *key, gint64 dflt)
{
    gint64 v;
    return mp_json_int(o, key, &v) ? v : dflt;
}
