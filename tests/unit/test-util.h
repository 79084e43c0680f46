/* test-util.h: what several unit tests of src/ need (Criterion). */
#pragma once

#include <glib.h>
#include <json-c/json.h>

/* A new private directory under $TMPDIR.  @return its path (caller frees
 * with tu_tmpdir_remove()). */
char *tu_tmpdir_new(const char *prefix);
/* Removes `dir` with everything in it (tests write subdirectories too:
 * a capture's own directory inside the temp one); symlinks are unlinked,
 * not followed.  The integration tests use it for theirs too. */
void tu_remove_tree(const char *dir);
/* tu_remove_tree(), then frees the path. */
void tu_tmpdir_remove(char *dir);

/* The integer at `path` ("ram.pages.zero") of a document; a missing one
 * fails the test. */
gint64 tu_json_int(json_object *doc, const char *path);

/* The whole content of samples/streams/`name` (plain or .zst).  @return a
 * new array (caller frees); a file it cannot read fails the test. */
GByteArray *tu_read_sample(const char *name);

/* Runs tests/validate-json.py: `path` holds one JSON document (each line
 * one with `lines`) that must be valid against `schema` (report,
 * metrics-line, analyze, or a pointer into one, "report#/$defs/session");
 * an invalid one fails the test with the validator's errors. */
void tu_validate_json(const char *schema, const char *path, gboolean lines);
/* The same for a document in memory (borrowed). */
void tu_validate_doc(const char *schema, json_object *doc);

/* The VmFlags line of the mapping that holds `addr`, from
 * /proc/self/smaps ("hg": MADV_HUGEPAGE, "dd": MADV_DONTDUMP, ...).
 * @return a new string (caller frees); no mapping there fails the test. */
char *tu_vm_flags(const void *addr);
