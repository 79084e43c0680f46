/* json-util.h: reading members of json-c objects, checked.
 *
 * Documents we read may come from a file or a peer (index.json of a
 * capture, a vmdesc, QMP replies), so a member of the wrong type reads as
 * missing rather than converted: json-c would read "12" as 12, and its
 * list calls abort on anything that is not a list.
 *
 * `o` may be NULL or not an object: then nothing is found.  `key` is one
 * member's name, taken as it is (a RAM block is called "pc.ram").
 * Results are borrowed from `o`.
 */
#pragma once

#include <glib.h>
#include <json-c/json.h>

/* @return the member (NULL for a JSON null), or NULL. */
json_object *mp_json_get(json_object *o, const char *key);

/* Goes down nested objects: `path` is member names joined by dots,
 * "ram.pages.zero".  @return the member at its end, or NULL. */
json_object *mp_json_path(json_object *o, const char *path);

/* @return the member's string if it is a string, else NULL. */
const char *mp_json_string(json_object *o, const char *key);

/* @return the member if it is a list, else NULL. */
json_object *mp_json_array(json_object *o, const char *key);

/* @return TRUE and the member's value in *out if it is an integer. */
gboolean mp_json_int(json_object *o, const char *key, gint64 *out);

/* @return the member's value if it is an integer, else `dflt`. */
gint64 mp_json_int_or(json_object *o, const char *key, gint64 dflt);
