/* metrics-out.c: the --metrics destinations (see metrics-out.h). */
#include "config.h"
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <glib-unix.h>
#include "metrics-out.h"
#include "out-file.h"

typedef enum {
    OUT_FILE,
    OUT_STDOUT,
    OUT_UNIX,
} OutKind;

struct MpMetricsOut {
    OutKind kind;
    char *where;      /* the file's path, or the socket's */
    guint64 lines;    /* written (unix: sent or queued, not lost) */
    MpOutLines *file; /* OUT_FILE */
    guint64 offset;   /* OUT_STDOUT: bytes written */
    char *error;      /* OUT_STDOUT: why writing stopped; OUT_UNIX: the
                         last connection error */
    /* OUT_UNIX */
    int fd;            /* -1: not connected */
    GByteArray *queue; /* [head, len): not sent yet, whole lines */
    gsize head;
    guint watch; /* waiting for the socket to take more */
    guint64 dropped, connects;
    gint64 now_us; /* of the last write: the caller's clock */
    gint64 retry_us, backoff_us;
};

static void set_error(MpMetricsOut *o, const char *fmt, ...)
    G_GNUC_PRINTF(2, 3);

static void
set_error(MpMetricsOut *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_free(o->error);
    o->error = g_strdup_vprintf(fmt, ap);
    va_end(ap);
}

/* ---- unix: ---- */

/* A new non-blocking connection to the socket, or -1 with errno set
 * (a listener whose backlog is full answers EAGAIN at once). */
static int
unix_connect(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd;

    if (strlen(path) >= sizeof(sa.sun_path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(sa.sun_path, path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static guint64
queued_lines(const MpMetricsOut *o)
{
    guint64 n = 0;
    for (gsize i = o->head; i < o->queue->len; i++)
        n += o->queue->data[i] == '\n';
    return n;
}

/* The reader went away (or never came back): what was queued for it is
 * lost, counted as dropped; the next line tries again after the backoff. */
static void
disconnect(MpMetricsOut *o, int err, gint64 now_us)
{
    if (o->watch)
        g_source_remove(o->watch);
    o->watch = 0;
    if (o->fd >= 0) {
        close(o->fd);
        o->fd = -1;
        o->backoff_us = 0; /* it worked: retry soon */
        g_warning("--metrics unix:%s: %s; lines are dropped until it "
                  "listens again",
                  o->where, g_strerror(err));
    }
    guint64 lost = queued_lines(o);
    o->dropped += lost;
    o->lines -= lost; /* lines + dropped: every line written */
    g_byte_array_set_size(o->queue, 0);
    o->head = 0;
    set_error(o, "%s", g_strerror(err));
    o->backoff_us = CLAMP(o->backoff_us * 2, MP_METRICS_OUT_RETRY_MIN_US,
                          MP_METRICS_OUT_RETRY_MAX_US);
    o->retry_us = now_us + o->backoff_us;
}

static gboolean on_writable(gint fd, GIOCondition cond, gpointer data);

/* Sends what the socket takes now; waits for POLLOUT for the rest. */
static void
flush(MpMetricsOut *o)
{
    while (o->head < o->queue->len) {
        ssize_t n = send(o->fd, o->queue->data + o->head,
                         o->queue->len - o->head, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0) {
            o->head += n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!o->watch)
                o->watch = g_unix_fd_add(o->fd, G_IO_OUT, on_writable, o);
            return;
        }
        disconnect(o, n < 0 ? errno : EPIPE, o->now_us);
        return;
    }
    g_byte_array_set_size(o->queue, 0);
    o->head = 0;
    if (o->watch)
        g_source_remove(o->watch);
    o->watch = 0;
}

static gboolean
on_writable(gint fd, GIOCondition cond, gpointer data)
{
    MpMetricsOut *o = data;
    o->watch = 0;
    flush(o); /* adds a new watch if it has to wait again */
    return G_SOURCE_REMOVE;
}

static void
unix_write(MpMetricsOut *o, const char *line, gsize n, gint64 now_us)
{
    o->now_us = now_us;
    if (o->fd < 0) {
        if (now_us < o->retry_us) {
            o->dropped++;
            return;
        }
        o->fd = unix_connect(o->where);
        if (o->fd < 0) {
            disconnect(o, errno, now_us);
            o->dropped++;
            return;
        }
        o->connects++;
        g_message("--metrics unix:%s: connected again", o->where);
    }
    /* the part already sent leaves room at the front */
    if (o->head > 0 && o->head >= o->queue->len / 2) {
        memmove(o->queue->data, o->queue->data + o->head,
                o->queue->len - o->head);
        g_byte_array_set_size(o->queue, o->queue->len - o->head);
        o->head = 0;
    }
    if (o->queue->len - o->head + n + 1 > MP_METRICS_OUT_QUEUE) {
        o->dropped++; /* a slow reader: whole lines or none */
        return;
    }
    g_byte_array_append(o->queue, (const guint8 *)line, n);
    g_byte_array_append(o->queue, (const guint8 *)"\n", 1);
    o->lines++;
    if (!o->watch)
        flush(o);
}

/* ---- stdout ---- */

static void
stdout_write(MpMetricsOut *o, const char *line, gsize n)
{
    g_autofree char *text = g_malloc(n + 1);
    gsize done = 0;

    if (o->error)
        return;
    memcpy(text, line, n);
    text[n] = '\n';
    while (done < n + 1) {
        ssize_t w = write(STDOUT_FILENO, text + done, n + 1 - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            set_error(o, "%s at offset %" G_GUINT64_FORMAT,
                      g_strerror(w < 0 ? errno : ENOSPC), o->offset + done);
            g_warning("--metrics -: %s; no more lines are written (the "
                      "report says so)",
                      o->error);
            o->offset += done;
            return;
        }
        done += w;
    }
    o->offset += done;
    o->lines++;
}

/* ---- the output ---- */

MpMetricsOut *
mp_metrics_out_new(const char *target, GError **error)
{
    g_autoptr(MpMetricsOut) o = g_new0(MpMetricsOut, 1);

    o->fd = -1;
    if (g_str_equal(target, "-")) {
        o->kind = OUT_STDOUT;
        o->where = g_strdup("-");
    } else if (g_str_has_prefix(target, "unix:")) {
        o->kind = OUT_UNIX;
        o->where = g_strdup(target + strlen("unix:"));
        o->queue = g_byte_array_new();
        o->fd = unix_connect(o->where);
        if (o->fd < 0) {
            int e = errno;
            g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(e),
                        "unix:%s: %s (a listening Unix stream socket is "
                        "expected)",
                        o->where, g_strerror(e));
            return NULL;
        }
        o->connects = 1;
    } else {
        o->kind = OUT_FILE;
        o->where = g_strdup(target);
        if (!(o->file = mp_out_lines_new(target, error)))
            return NULL;
    }
    return g_steal_pointer(&o);
}

void
mp_metrics_out_free(MpMetricsOut *o)
{
    if (!o)
        return;
    if (o->watch)
        g_source_remove(o->watch);
    if (o->fd >= 0 && o->head < o->queue->len) {
        /* one last try: the lines that end the session matter most (and a
         * reader that keeps up takes them) */
        send(o->fd, o->queue->data + o->head, o->queue->len - o->head,
             MSG_DONTWAIT | MSG_NOSIGNAL);
    }
    if (o->fd >= 0)
        close(o->fd);
    mp_out_lines_free(o->file);
    if (o->queue)
        g_byte_array_free(o->queue, TRUE);
    g_free(o->where);
    g_free(o->error);
    g_free(o);
}

void
mp_metrics_out_write(MpMetricsOut *o, const char *line, gint64 now_us)
{
    gsize n = strlen(line);

    switch (o->kind) {
    case OUT_FILE:
        if (mp_out_lines_write(o->file, line))
            o->lines++;
        break;
    case OUT_STDOUT:
        stdout_write(o, line, n);
        break;
    case OUT_UNIX:
        unix_write(o, line, n, now_us);
        break;
    }
}

guint64
mp_metrics_out_dropped(const MpMetricsOut *o)
{
    return o->dropped;
}

json_object *
mp_metrics_out_status(const MpMetricsOut *o)
{
    json_object *m = json_object_new_object();
    const char *err = o->error;
    guint64 off = o->offset;

    switch (o->kind) {
    case OUT_FILE:
        json_object_object_add(m, "file", json_object_new_string(o->where));
        err = mp_out_lines_error(o->file, &off);
        break;
    case OUT_STDOUT:
        json_object_object_add(m, "stdout", json_object_new_boolean(TRUE));
        break;
    case OUT_UNIX:
        json_object_object_add(m, "socket", json_object_new_string(o->where));
        break;
    }
    json_object_object_add(
        m, "complete",
        json_object_new_boolean(o->kind == OUT_UNIX ? o->dropped == 0 : !err));
    json_object_object_add(m, "lines", json_object_new_int64(o->lines));
    if (err)
        json_object_object_add(m, "error", json_object_new_string(err));
    if (err && o->kind != OUT_UNIX)
        json_object_object_add(m, "offset", json_object_new_int64(off));
    if (o->kind == OUT_UNIX) {
        json_object_object_add(m, "dropped_lines",
                               json_object_new_int64(o->dropped));
        json_object_object_add(m, "connects",
                               json_object_new_int64(o->connects));
        json_object_object_add(m, "connected",
                               json_object_new_boolean(o->fd >= 0));
    }
    return m;
}
