/* test-json-util.c: checked reads of json-c members. */
#include "config.h"
#include <criterion/criterion.h>
#include "json-util.h"

static json_object *doc;

static void
setup(void)
{
    doc = json_tokener_parse(
        "{\"n\": 12, \"s\": \"12\", \"d\": 1.5, \"z\": null, \"l\": [1],"
        " \"o\": {\"pages\": {\"zero\": 7}}, \"pc.ram\": 3}");
    cr_assert_not_null(doc);
}

static void
teardown(void)
{
    json_object_put(doc);
}

TestSuite(json_util, .init = setup, .fini = teardown);

Test(json_util, types_are_checked)
{
    gint64 v = -5;

    cr_assert(mp_json_int(doc, "n", &v));
    cr_assert_eq(v, 12);
    /* no conversion: a string, a double, a null or a list is no integer */
    cr_assert_not(mp_json_int(doc, "s", &v));
    cr_assert_not(mp_json_int(doc, "d", &v));
    cr_assert_not(mp_json_int(doc, "z", &v));
    cr_assert_not(mp_json_int(doc, "missing", &v));
    cr_assert_eq(v, 12, "untouched when not found");
    cr_assert_eq(mp_json_int_or(doc, "s", -1), -1);
    cr_assert_eq(mp_json_int_or(doc, "n", -1), 12);

    cr_assert_str_eq(mp_json_string(doc, "s"), "12");
    cr_assert_null(mp_json_string(doc, "n"));
    cr_assert_null(mp_json_string(doc, "z"));

    cr_assert_not_null(mp_json_array(doc, "l"));
    cr_assert_null(mp_json_array(doc, "o"), "json-c aborts on a non-list");
}

Test(json_util, not_an_object)
{
    json_object *l = mp_json_get(doc, "l"), *n = mp_json_get(doc, "n");

    cr_assert_null(mp_json_get(NULL, "n"));
    cr_assert_null(mp_json_get(l, "n"));
    cr_assert_null(mp_json_string(n, "x"));
    cr_assert_eq(mp_json_int_or(NULL, "n", 9), 9);
    cr_assert_null(mp_json_get(doc, "z"), "a JSON null");
}

Test(json_util, keys_and_paths)
{
    /* a key is taken whole: RAM block names have dots */
    cr_assert_eq(mp_json_int_or(doc, "pc.ram", 0), 3);
    cr_assert_null(mp_json_get(doc, "o.pages"));
    /* a path goes down */
    cr_assert_eq(json_object_get_int64(mp_json_path(doc, "o.pages.zero")), 7);
    cr_assert_eq(mp_json_path(doc, "n"), mp_json_get(doc, "n"));
    cr_assert_null(mp_json_path(doc, "o.missing.zero"));
    cr_assert_null(mp_json_path(doc, "n.x"), "12 has no members");
    cr_assert_null(mp_json_path(doc, "z.x"));
}
