/* out-file.c: private output files (out-file.h). */
#include "config.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <glib/gstdio.h>
#include "out-file.h"

#define FILE_MODE 0600
#define DIR_MODE  0700

static int set_errno_error(GError **error, int e, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);

/* "WHAT: strerror" as a G_FILE_ERROR; @return -1. */
static int
set_errno_error(GError **error, int e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *what = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(e), "%s: %s", what,
                e == ELOOP ? "is a symbolic link (not followed)"
                           : g_strerror(e));
    return -1;
}

/* `path` without trailing slashes ("cap/" would follow a link "cap"). */
static char *
strip_slashes(const char *path)
{
    char *p = g_strdup(path);
    gsize n = strlen(p);
    while (n > 1 && p[n - 1] == '/')
        p[--n] = '\0';
    return p;
}

static gboolean
dir_is_empty(int fd)
{
    int dup_fd = dup(fd);
    if (dup_fd < 0)
        return FALSE;
    DIR *d = fdopendir(dup_fd);
    if (!d) {
        close(dup_fd);
        return FALSE;
    }
    gboolean empty = TRUE;
    struct dirent *e;
    while (empty && (e = readdir(d)))
        empty = strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0;
    closedir(d);
    return empty;
}

int
mp_out_dir_open(const char *path, gboolean must_be_empty, GError **error)
{
    g_autofree char *p = strip_slashes(path);
    g_autofree char *parent = g_path_get_dirname(p);
    gboolean created = FALSE;

    if (g_mkdir_with_parents(parent, 0755) < 0)
        return set_errno_error(error, errno, "%s", parent);
    if (mkdir(p, DIR_MODE) == 0)
        created = TRUE;
    else if (errno != EEXIST)
        return set_errno_error(error, errno, "%s", p);
    int fd = open(p, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        struct stat lst;
        if (lstat(p, &lst) == 0 && S_ISLNK(lst.st_mode))
            e = ELOOP; /* "is a symbolic link" */
        return set_errno_error(error, e, "%s", p);
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        return set_errno_error(error, e, "%s", p);
    }
    if (st.st_uid != geteuid()) {
        close(fd);
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_PERM,
                    "%s: belongs to uid %u, not to this user", p,
                    (guint)st.st_uid);
        return -1;
    }
    if (!created && must_be_empty && !dir_is_empty(fd)) {
        close(fd);
        g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_EXIST,
                    "%s: not empty (an earlier capture?): give a new "
                    "directory, nothing in it is overwritten",
                    p);
        return -1;
    }
    /* the umask may have taken bits; an existing empty directory is
     * dedicated to us */
    if ((created || must_be_empty) && fchmod(fd, DIR_MODE) < 0) {
        int e = errno;
        close(fd);
        return set_errno_error(error, e, "%s", p);
    }
    return fd;
}

int
mp_out_file_create(int dirfd, const char *name, GError **error)
{
    int fd =
        openat(dirfd, name,
               O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, FILE_MODE);
    if (fd < 0)
        return set_errno_error(error, errno, "%s", name);
    if (fchmod(fd, FILE_MODE) < 0) { /* a umask of 0400 would leave 0200 */
        int e = errno;
        close(fd);
        unlinkat(dirfd, name, 0);
        return set_errno_error(error, e, "%s", name);
    }
    return fd;
}

static gboolean
write_all(int fd, const char *data, gsize len, int *err)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            *err = n < 0 ? errno : ENOSPC;
            return FALSE;
        }
        data += n;
        len -= n;
    }
    return TRUE;
}

/* A new file "NAME.tmpXXXXXX" in `dirfd` (a random name: in a shared
 * directory someone else's file under a fixed name would block us).
 * @return its fd, its name in *tmp; or -1 with @error. */
static int
create_temp(int dirfd, const char *name, char **tmp, GError **error)
{
    for (int i = 0;; i++) {
        g_autoptr(GError) err = NULL;
        *tmp = g_strdup_printf("%s.tmp%06x", name, g_random_int() & 0xffffff);
        int fd = mp_out_file_create(dirfd, *tmp, &err);
        if (fd >= 0)
            return fd;
        g_clear_pointer(tmp, g_free);
        if (i == 9 || !g_error_matches(err, G_FILE_ERROR, G_FILE_ERROR_EXIST)) {
            g_propagate_error(error, g_steal_pointer(&err));
            return -1;
        }
    }
}

gboolean
mp_out_file_replace(int dirfd, const char *name, const char *data, gsize len,
                    GError **error)
{
    g_autofree char *tmp = NULL;
    int fd, e = 0;

    if ((fd = create_temp(dirfd, name, &tmp, error)) < 0)
        return FALSE;
    gboolean ok = write_all(fd, data, len, &e);
    if (close(fd) < 0 && ok) {
        ok = FALSE;
        e = errno;
    }
    if (ok && renameat(dirfd, tmp, dirfd, name) < 0) {
        ok = FALSE;
        e = errno;
    }
    if (!ok) {
        unlinkat(dirfd, tmp, 0);
        set_errno_error(error, e, "%s", name);
    }
    return ok;
}

/* The directory of `path` opened (O_PATH is enough for *at calls), and
 * its base name. */
static int
open_parent(const char *path, char **base, GError **error)
{
    g_autofree char *dir = g_path_get_dirname(path);
    *base = g_path_get_basename(path);
    int fd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return set_errno_error(error, errno, "%s", dir);
    return fd;
}

gboolean
mp_out_path_replace(const char *path, const char *data, gsize len,
                    GError **error)
{
    g_autofree char *base = NULL;
    int dirfd = open_parent(path, &base, error);
    if (dirfd < 0)
        return FALSE;
    gboolean ok = mp_out_file_replace(dirfd, base, data, len, error);
    close(dirfd);
    if (!ok)
        g_prefix_error(error, "%s: ", path);
    return ok;
}

gboolean
mp_out_path_check(const char *path, GError **error)
{
    g_autofree char *base = NULL;
    int dirfd = open_parent(path, &base, error);
    if (dirfd < 0)
        return FALSE;
    g_autofree char *tmp = NULL;
    int fd = create_temp(dirfd, base, &tmp, error);
    if (fd >= 0) {
        close(fd);
        unlinkat(dirfd, tmp, 0);
    } else {
        g_prefix_error(error, "%s: ", path);
    }
    close(dirfd);
    return fd >= 0;
}

struct MpOutLines {
    char *path;
    int fd;
    guint64 offset; /* the file's size: whole lines only */
    char *error;
};

MpOutLines *
mp_out_lines_new(const char *path, GError **error)
{
    g_autofree char *base = NULL;
    int dirfd = open_parent(path, &base, error);
    if (dirfd < 0)
        return NULL;
    g_autofree char *tmp = NULL;
    int fd = create_temp(dirfd, base, &tmp, error);
    if (fd >= 0 && renameat(dirfd, tmp, dirfd, base) < 0) {
        set_errno_error(error, errno, "%s", path);
        unlinkat(dirfd, tmp, 0);
        close(fd);
        fd = -1;
    }
    close(dirfd);
    if (fd < 0)
        return NULL;
    MpOutLines *f = g_new0(MpOutLines, 1);
    f->path = g_strdup(path);
    f->fd = fd;
    return f;
}

void
mp_out_lines_free(MpOutLines *f)
{
    if (!f)
        return;
    if (f->fd >= 0 && close(f->fd) < 0 && !f->error)
        g_warning("%s: %s", f->path, g_strerror(errno));
    g_free(f->path);
    g_free(f->error);
    g_free(f);
}

gboolean
mp_out_lines_write(MpOutLines *f, const char *line)
{
    if (f->error)
        return FALSE;
    gsize n = strlen(line);
    g_autofree char *text = g_malloc(n + 1);
    memcpy(text, line, n);
    text[n] = '\n';
    int e = 0;
    if (write_all(f->fd, text, n + 1, &e)) {
        f->offset += n + 1;
        return TRUE;
    }
    /* no half line: cut the file back to its last whole one */
    gboolean cut = ftruncate(f->fd, (off_t)f->offset) == 0
                   && lseek(f->fd, (off_t)f->offset, SEEK_SET) >= 0;
    f->error = g_strdup_printf(
        "%s at offset %" G_GUINT64_FORMAT "%s", g_strerror(e), f->offset,
        cut ? "" : " (and a part of the line could not be removed)");
    g_warning("--metrics %s: %s; no more lines are written (the report "
              "says so)",
              f->path, f->error);
    return FALSE;
}

const char *
mp_out_lines_path(const MpOutLines *f)
{
    return f->path;
}

const char *
mp_out_lines_error(const MpOutLines *f, guint64 *offset)
{
    if (offset)
        *offset = f->offset;
    return f->error;
}
