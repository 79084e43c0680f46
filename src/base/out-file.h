/* out-file.h: files the relay and the analyzer write (captures, reports,
 * metrics, RAM images) that no one else can read or redirect.
 *
 * Guest memory and migration reports are private to their user: files are
 * 0600 and directories created here 0700, whatever the umask.  A name is
 * never followed through a symbolic link and an existing file is never
 * written into: new files are created with O_EXCL | O_NOFOLLOW, and a file
 * that replaces another is written under a temporary name in the same
 * directory and renamed over it (a link planted at the path is replaced,
 * its target untouched).
 */
#pragma once

#include <glib.h>

/* Opens directory `path` for new files (openat), creating it and its
 * parents if needed: the directory itself 0700 (exactly), the parents as
 * the umask says.  An existing one must be a directory (not a link to
 * one) owned by this user; with `must_be_empty` it must hold nothing, and
 * it is then set to 0700 too (it is the capture's own).  Errors name the
 * path and what is wrong with it.
 * @return a directory fd (O_CLOEXEC, caller closes), or -1 with @error. */
int mp_out_dir_open(const char *path, gboolean must_be_empty, GError **error);

/* Creates file `name` in `dirfd`, 0600, for writing; fails if anything
 * has that name (EEXIST), a link included.
 * @return an fd (O_CLOEXEC), or -1 with @error naming `name`. */
int mp_out_file_create(int dirfd, const char *name, GError **error);

/* Writes `len` bytes of `data` to `name` in `dirfd`, replacing what is
 * there: through a new "name.tmpXXXXXX" (removed on failure) and rename();
 * no fsync.
 * @return TRUE, or FALSE with @error. */
gboolean mp_out_file_replace(int dirfd, const char *name, const char *data,
                             gsize len, GError **error);

/* The same for a path (its directory opened for the call). */
gboolean mp_out_path_replace(const char *path, const char *data, gsize len,
                             GError **error);

/* Checks that a file can be created next to `path` (its directory exists
 * and is writable), by creating and removing a temporary one.
 * @return TRUE, or FALSE with @error. */
gboolean mp_out_path_check(const char *path, GError **error);

/* A file of lines (--metrics) written whole: each line goes out in one
 * write(); when one cannot be written (disk full, I/O error), the part
 * written is cut off again, a warning is logged, and no later line is
 * written, so the file always ends with a whole line. */
typedef struct MpOutLines MpOutLines;

/* Creates a new file at `path` (0600) and renames it over whatever was
 * there.  @return the writer, or NULL with @error. */
MpOutLines *mp_out_lines_new(const char *path, GError **error);
void mp_out_lines_free(MpOutLines *f); /* accepts NULL */
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpOutLines, mp_out_lines_free)

/* Appends `line` and a newline.  @return FALSE once writing failed. */
gboolean mp_out_lines_write(MpOutLines *f, const char *line);

/* The path as given (borrowed). */
const char *mp_out_lines_path(const MpOutLines *f);
/* Why writing stopped, or NULL while it goes on (borrowed); `offset`, if
 * not NULL, gets where the file ends (the line that failed started
 * there). */
const char *mp_out_lines_error(const MpOutLines *f, guint64 *offset);
