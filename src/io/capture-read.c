/* capture-read.c: replays a capture directory (docs/capture-format.md)
 * through the session's pipelines (session.h), chunk by chunk in the order of their
 * timestamps across all channels, so that rounds, phases, downtime and
 * page-request latency come out as the relay measured them live.
 */
#include "config.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <glib/gstdio.h>
#include "capture-read.h"
#include "json-util.h"
#include "parse-common.h"
#include "record-format.h"
#include "metrics.h"
#include "metrics-report.h"
#include "session.h"
#include "stream-input.h"

#define MAX_CHUNK (64u << 20) /* the relay reads at most 1 MiB at once */
/* index.json: 300 bytes a session and 400 a channel, so 40 000 channels;
 * its parse is bounded by MP_JSON_MAX_HEAP too */
#define MAX_INDEX_JSON (16u << 20)
/* .idx entries read at once (64 KiB): an index is never read whole */
#define IDX_WINDOW 4096u
#define IDX_ENTRY  16u

typedef struct {
    guint channel;
    MpDir dir;
    char *file;
    FILE *data;
    char *index;
    int idx_fd;
    guint8 *win; /* entries win_first .. win_first + win_n - 1 */
    gsize win_first, win_n;
    gsize checked; /* entries before this one were checked */
    guint64 prev_time, prev_off;
    gsize chunks, next;
    guint64 size;
    char *end; /* NULL: the capture has no end for it */
    gint64 end_us;
    gboolean end_done;
} Cursor;

typedef struct {
    const char *dir;
    MpMetrics *metrics; /* analyze; NULL for a walk */
    MpSession *pipes;
    const MpCaptureWalk *walk; /* a walk (replay); NULL for analyze */
    gpointer walk_data;
    char *first_error; /* a walk's first failure */
    gboolean stopped;  /* the walker stopped it */
    GArray *cursors; /* Cursor */
    GString *line;
    guint session;
    gboolean failed;
} Replay;

gboolean
mp_capture_is_dir(const char *path)
{
    g_autofree char *index = g_build_filename(path, "index.json", NULL);
    return g_file_test(path, G_FILE_TEST_IS_DIR)
           && g_file_test(index, G_FILE_TEST_IS_REGULAR);
}

static void fail(Replay *r, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static void
fail(Replay *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    g_autofree char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    r->failed = TRUE;
    if (!r->metrics) {
        if (!r->first_error)
            r->first_error = g_strdup_printf("capture %s: %s", r->dir, msg);
        return;
    }
    GError *err = g_error_new(G_FILE_ERROR, G_FILE_ERROR_FAILED,
                              "capture %s: %s", r->dir, msg);
    mp_analysis_error(mp_metrics_analysis(r->metrics), err);
    g_error_free(err);
}

/* Entry i's fields; idx_load() made it readable. */
static guint64
chunk_time(const Cursor *c, gsize i)
{
    return mp_be64(c->win + IDX_ENTRY * (i - c->win_first));
}

static guint64
chunk_offset(const Cursor *c, gsize i)
{
    return i < c->chunks ? mp_be64(c->win + IDX_ENTRY * (i - c->win_first) + 8)
                         : c->size;
}

/* Opens `path` for reading if it is a regular file (a capture's files
 * are: a FIFO would block, a device never end), with its size.
 * @return the fd, or -1 with the reason in `why`. */
static int
open_regular(const char *path, guint64 *size, const char **why)
{
    struct stat st;
    /* O_NONBLOCK: opening a FIFO must not wait for a writer */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);

    if (fd < 0 || fstat(fd, &st) < 0) {
        *why = g_strerror(errno);
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        *why = "not a regular file";
        close(fd);
        return -1;
    }
    *size = st.st_size;
    return fd;
}

/* Makes entries i and i + 1 (when there is one) readable, reading
 * IDX_WINDOW entries at i, and checks entries not seen yet: offsets from
 * 0, growing and within the data file, times not going back.  A bad or
 * unreadable entry ends the direction before it (c->chunks). */
static void
idx_load(Replay *r, Cursor *c, gsize i)
{
    if (i >= c->win_first && MIN(i + 2, c->chunks) <= c->win_first + c->win_n)
        return;
    gsize n = MIN(IDX_WINDOW, c->chunks - i);
    ssize_t got = pread(c->idx_fd, c->win, n * IDX_ENTRY, (off_t)i * IDX_ENTRY);
    if (got != (ssize_t)(n * IDX_ENTRY)) {
        fail(r, "%s: cannot read entry %zu: %s", c->index, i,
             got < 0 ? g_strerror(errno) : "the file shrank");
        c->chunks = i;
        c->win_n = 0;
        return;
    }
    c->win_first = i;
    c->win_n = n;
    for (gsize k = MAX(i, c->checked); k < i + n; k++) {
        guint64 t = chunk_time(c, k),
                off = mp_be64(c->win + IDX_ENTRY * (k - i) + 8);
        if (off > c->size || (k == 0 && off != 0)
            || (k && (off < c->prev_off || t < c->prev_time))) {
            fail(r,
                 "%s: entry %zu (offset %" G_GUINT64_FORMAT
                 ") is out of order or past the end of %s (%" G_GUINT64_FORMAT
                 " bytes)",
                 c->index, k, off, c->file, c->size);
            c->chunks = k;
            c->win_n = k - i;
            return;
        }
        c->prev_time = t;
        c->prev_off = off;
        c->checked = k + 1;
    }
}

/* Opens one direction's files; its index is read as the replay goes. */
static gboolean
open_cursor(Replay *r, Cursor *c, json_object *dj)
{
    const char *file = mp_json_string(dj, "file"),
               *index = mp_json_string(dj, "index");
    const char *why;
    guint64 len;
    int fd;

    if (!file || !index || strchr(file, '/') || strchr(index, '/')) {
        fail(r, "channel %u %s: no valid file names in index.json", c->channel,
             mp_dir_name(c->dir));
        return FALSE;
    }
    c->file = g_build_filename(r->dir, file, NULL);
    c->index = g_build_filename(r->dir, index, NULL);
    c->idx_fd = open_regular(c->index, &len, &why);
    if (c->idx_fd < 0) {
        fail(r, "%s: %s", c->index, why);
        return FALSE;
    }
    fd = open_regular(c->file, &c->size, &why);
    if (fd < 0 || !(c->data = fdopen(fd, "rb"))) {
        fail(r, "%s: %s", c->file, fd < 0 ? why : g_strerror(errno));
        if (fd >= 0)
            close(fd);
        return FALSE;
    }
    c->win = g_malloc(IDX_WINDOW * IDX_ENTRY);
    c->chunks = len / IDX_ENTRY;
    if (len % IDX_ENTRY)
        fail(r,
             "%s: %" G_GUINT64_FORMAT " bytes, not a whole number of "
             "16-byte entries (the last one is ignored)",
             index, len);
    return TRUE;
}

static void
cursor_clear(gpointer p)
{
    Cursor *c = p;
    if (c->data)
        fclose(c->data);
    if (c->idx_fd >= 0)
        close(c->idx_fd);
    g_free(c->win);
    g_free(c->index);
    g_free(c->file);
    g_free(c->end);
}

static MpRecordAction
print_record(MpPipeline *p, const MpRecord *rec, gpointer user_data)
{
    Replay *r = user_data;
    g_string_printf(r->line, "s%u c%u %s ", r->session,
                    mp_pipeline_channel(p), mp_dir_name(mp_pipeline_dir(p)));
    mp_record_describe(rec, r->line);
    puts(r->line->str);
    return MP_REC_CONTINUE;
}

static const MpPipelineObserver events_observer = {.record = print_record};

/* The next event: a chunk, or the end of a direction.  Ties go to the
 * lower channel, then to-dst: a main channel is classified before the
 * channels that need its block list. */
static Cursor *
next_cursor(Replay *r, gint64 *t)
{
    Cursor *best = NULL;
    gint64 best_t = G_MAXINT64;

    for (guint i = 0; i < r->cursors->len; i++) {
        Cursor *c = &g_array_index(r->cursors, Cursor, i);
        gint64 ct;
        if (c->next < c->chunks)
            idx_load(r, c, c->next); /* may end the direction there */
        if (c->next < c->chunks)
            ct = (gint64)chunk_time(c, c->next);
        else if (!c->end_done)
            ct = c->end ? c->end_us : G_MAXINT64 - 1;
        else
            continue;
        if (ct < best_t) {
            best = c;
            best_t = ct;
        }
    }
    *t = best_t;
    return best;
}

/* The vmdesc at the end of the main channel's stream, if it ended with
 * one (pre-copy), so that device sections are sliced as for a file. */
static MpVmdesc *
find_vmdesc(Replay *r, json_object *chans)
{
    for (size_t i = 0; i < json_object_array_length(chans); i++) {
        json_object *cj = json_object_array_get_idx(chans, i), *dj;
        if (g_strcmp0(mp_json_string(cj, "kind"), "main") != 0
            || !json_object_object_get_ex(cj, "to_dst", &dj)
            || !mp_json_string(dj, "file")
            || strchr(mp_json_string(dj, "file"), '/'))
            continue;
        g_autofree char *path =
            g_build_filename(r->dir, mp_json_string(dj, "file"), NULL);
        g_autoptr(GError) err = NULL;
        const char *why;
        guint64 file_size;
        int fd = open_regular(path, &file_size, &why);
        if (fd < 0)
            return NULL; /* open_cursor() says why */
        close(fd);
        /* (a capture's data files are raw bytes) */
        MpVmdesc *vd = mp_input_find_vmdesc(path, FALSE, &err);
        if (err && r->metrics)
            mp_analysis_anomaly(mp_metrics_analysis(r->metrics),
                                "%s; device sections are not sliced",
                                err->message);
        return vd;
    }
    return NULL;
}

static void
replay(Replay *r)
{
    gsize cap = 0;
    g_autofree guint8 *buf = NULL;
    gint64 t, last = 0;
    Cursor *c;

    while (!r->stopped && (c = next_cursor(r, &t))) {
        if (t == G_MAXINT64 - 1)
            t = last; /* no recorded end: the capture was cut */
        last = MAX(last, t);
        if (c->next >= c->chunks) {
            c->end_done = TRUE;
            if (r->pipes)
                mp_session_end(r->pipes, c->channel, c->dir,
                               mp_end_reason_from_name(c->end), t);
            else if (c->dir == MP_DIR_TO_DST && r->walk->end)
                r->walk->end(r->walk_data, c->channel,
                             mp_end_reason_from_name(c->end), t);
            continue;
        }
        if (!r->pipes && c->dir != MP_DIR_TO_DST) {
            c->next++; /* a walk gives what the source sent */
            continue;
        }
        guint64 off = chunk_offset(c, c->next);
        gsize len = chunk_offset(c, c->next + 1) - off;
        c->next++;
        if (len > MAX_CHUNK) {
            fail(r,
                 "%s: a chunk of %zu bytes at offset %" G_GUINT64_FORMAT
                 " (at most %u expected)",
                 c->file, len, off, MAX_CHUNK);
            c->next = c->chunks;
            continue;
        }
        if (len > cap) {
            cap = MAX(len, 1u << 20);
            buf = g_realloc(buf, cap);
        }
        if (fseeko(c->data, (off_t)off, SEEK_SET) != 0
            || fread(buf, 1, len, c->data) != len) {
            fail(r, "%s: cannot read %zu bytes at offset %" G_GUINT64_FORMAT,
                 c->file, len, off);
            c->next = c->chunks;
            continue;
        }
        if (r->pipes)
            mp_session_feed(r->pipes, c->channel, c->dir, buf, len, t);
        else if (!r->walk->data(r->walk_data, c->channel, t, buf, len))
            r->stopped = TRUE;
    }
    if (r->metrics)
        mp_metrics_finish(r->metrics, last, NULL);
}

/* A JSON file (index.json, s<S>.json), if it is a regular file of at
 * most MAX_INDEX_JSON bytes that json-c can parse within
 * MP_JSON_MAX_HEAP.  @return the document
 * or NULL with the reason in *why (g_free it). */
static json_object *
read_json_file(const char *path, char **why)
{
    const char *err;
    guint64 size;
    int fd = open_regular(path, &size, &err);

    if (fd < 0) {
        *why = g_strdup_printf("%s: %s", path, err);
        return NULL;
    }
    if (size > MAX_INDEX_JSON) {
        *why = g_strdup_printf("%s: %" G_GUINT64_FORMAT " bytes (at most %u "
                               "read)",
                               path, size, MAX_INDEX_JSON);
        close(fd);
        return NULL;
    }
    g_autofree char *text = g_malloc(size + 1);
    gsize have = 0;
    while (have < size) {
        ssize_t n = read(fd, text + have, size - have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        have += n;
    }
    close(fd);
    if (have < size) {
        *why = g_strdup_printf(
            "%s: cannot read its %" G_GUINT64_FORMAT " bytes", path, size);
        return NULL;
    }
    text[have] = 0;
    guint64 cost = mp_json_heap_estimate(text, have);
    if (cost > MP_JSON_MAX_HEAP) {
        *why = g_strdup_printf(
            "%s: %zu bytes of JSON would take about %" G_GUINT64_FORMAT
            " MiB to parse (at most %u "
            "MiB)",
            path, have, cost >> 20, MP_JSON_MAX_HEAP >> 20);
        return NULL;
    }
    json_tokener *tok = json_tokener_new();
    json_object *doc = json_tokener_parse_ex(tok, text, (int)have);
    if (json_tokener_get_error(tok) != json_tokener_success) {
        *why = g_strdup_printf(
            "%s: invalid JSON: %s", path,
            json_tokener_error_desc(json_tokener_get_error(tok)));
        json_object_put(doc);
        doc = NULL;
    }
    json_tokener_free(tok);
    return doc;
}

/* The number of "s<S>.json", or 0 for another name. */
static guint
session_file_number(const char *name)
{
    char *end;
    if (name[0] != 's' || !g_ascii_isdigit(name[1]))
        return 0;
    guint64 n = g_ascii_strtoull(name + 1, &end, 10);
    return strcmp(end, ".json") == 0 && n <= G_MAXUINT ? (guint)n : 0;
}

static gint
cmp_uint(gconstpointer a, gconstpointer b)
{
    guint x = *(const guint *)a, y = *(const guint *)b;
    return x < y ? -1 : x > y;
}

/* Version 2: one s<S>.json per session next to index.json.  Adds the
 * session numbers found to `numbers` and loads the one asked for (0: the
 * first).  @return it (caller owns), or NULL. */
static json_object *
load_session_file(const char *dir, guint session, json_object *numbers)
{
    g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
    g_autoptr(GArray) found = g_array_new(FALSE, FALSE, sizeof(guint));
    const char *name;
    guint n;

    while (d && (name = g_dir_read_name(d)))
        if ((n = session_file_number(name)))
            g_array_append_val(found, n);
    g_array_sort(found, cmp_uint);
    for (guint i = 0; i < found->len; i++)
        json_object_array_add(
            numbers, json_object_new_int(g_array_index(found, guint, i)));
    if (!found->len)
        return NULL;
    n = session ? session : g_array_index(found, guint, 0);
    g_autofree char *file = g_strdup_printf("s%u.json", n);
    g_autofree char *path = g_build_filename(dir, file, NULL);
    g_autofree char *why = NULL;
    json_object *sj = read_json_file(path, &why);
    if (sj && !json_object_is_type(sj, json_type_object))
        g_clear_pointer(&sj, json_object_put);
    return sj;
}

/* Reads the capture's index and finds session `session` (0: the first)
 * in it, setting r->session; the session numbers found go to `numbers`.
 * *index, *sj_file (version 2) and *index_why (why index.json cannot be
 * read) are the caller's to free.  @return the session's object
 * (borrowed from one of them), or NULL. */
static json_object *
load(Replay *r, guint session, json_object *numbers, json_object **index_out,
     json_object **sj_file, char **index_why)
{
    g_autofree char *ipath = g_build_filename(r->dir, "index.json", NULL);
    json_object *index = read_json_file(ipath, index_why), *sessions = NULL;
    json_object *sj = NULL;
    gint64 version = index ? mp_json_int_or(index, "version", 0) : 0;

    *index_out = index;
    *sj_file = NULL;
    if (version == 2)
        sj = *sj_file = load_session_file(r->dir, session, numbers);
    else if (index && (sessions = mp_json_array(index, "sessions"))) {
        for (size_t i = 0; i < json_object_array_length(sessions); i++) {
            json_object *s = json_object_array_get_idx(sessions, i);
            guint n = mp_json_int_or(s, "session", 0);
            json_object_array_add(numbers, json_object_new_int(n));
            if (!sj && (session == 0 || n == session))
                sj = s;
        }
    }
    r->session = sj ? mp_json_int_or(sj, "session", 0) : session;
    return sj;
}

/* Checks the index load() read and sets up the channels of `sj`: each
 * is added to r->pipes (analyze) or told to the walker, and its two
 * directions get a cursor.  @return the channel array (borrowed), or NULL after fail(). */
static json_object *
setup(Replay *r, json_object *index, json_object *sj, guint session,
      const char *index_why)
{
    json_object *chans = NULL;
    gint64 version = index ? mp_json_int_or(index, "version", 0) : 0;

    if (index_why)
        fail(r, "%s", index_why);
    else if (!index
             || g_strcmp0(mp_json_string(index, "format"), "migproxy-capture")
                    != 0)
        fail(r, "index.json is missing or not a migproxy capture index");
    else if (version != 1 && version != 2)
        fail(r,
             "index.json has version %" G_GINT64_FORMAT
             " (this migproxy reads versions 1 and 2)",
             version);
    else if (!sj)
        fail(r,
             session ? "no session %u in index.json"
                     : "index.json lists no session%u",
             session);
    else if (!(chans = mp_json_array(sj, "channels")))
        fail(r, "session %u lists no channels", r->session);

    if (chans && (r->pipes || r->walk->vmdesc)) {
        g_autoptr(MpVmdesc) vmdesc = find_vmdesc(r, chans);
        if (vmdesc && r->pipes)
            mp_session_set_vmdesc(r->pipes, vmdesc);
        else if (vmdesc)
            r->walk->vmdesc(r->walk_data, vmdesc);
    }
    gsize n_chans = chans ? json_object_array_length(chans) : 0;
    g_autofree gboolean *seen = g_new0(gboolean, n_chans);
    for (size_t i = 0; i < n_chans; i++) {
        json_object *cj = json_object_array_get_idx(chans, i), *dj;
        if (!json_object_is_type(cj, json_type_object)) {
            fail(r, "session %u: channel entry %zu is not an object",
                 r->session, i);
            continue;
        }
        gint64 number = mp_json_int_or(cj, "channel", i);
        /* channels are numbered 0, 1, ... in the session: any other
         * number would size the tables by what the file claims */
        if (number < 0 || (guint64)number >= n_chans || seen[number]) {
            fail(r,
                 "session %u: channel number %" G_GINT64_FORMAT
                 " at position %zu (0 to %zu, each once, expected)",
                 r->session, number, i, n_chans - 1);
            continue;
        }
        seen[number] = TRUE;
        guint channel = (guint)number;
        if (r->pipes)
            mp_session_add(r->pipes, channel, mp_json_string(cj, "peer"),
                           mp_json_int_or(cj, "open_us", 0));
        else
            r->walk->channel(r->walk_data, channel,
                             mp_json_string(cj, "kind"),
                             mp_json_int_or(cj, "open_us", 0));
        for (int d = 0; d < MP_DIR__MAX; d++) {
            if (!json_object_object_get_ex(cj, d ? "to_src" : "to_dst", &dj))
                continue;
            Cursor c = {.channel = channel, .dir = d, .idx_fd = -1};
            if (!open_cursor(r, &c, dj)) {
                cursor_clear(&c);
                continue;
            }
            if (mp_json_string(dj, "end")) {
                c.end = g_strdup(mp_json_string(dj, "end"));
                c.end_us = mp_json_int_or(dj, "end_us", 0);
            }
            g_array_append_val(r->cursors, c);
        }
    }
    return chans;
}

json_object *
mp_capture_analyze(const char *dir, guint session, gboolean events,
                   gboolean *ok)
{
    return mp_capture_analyze_observed(dir, session, events, NULL, NULL, ok);
}

json_object *
mp_capture_analyze_observed(const char *dir, guint session, gboolean events,
                            const MpPipelineObserver *ops, gpointer data,
                            gboolean *ok)
{
    g_autofree char *index_why = NULL;
    Replay r = {.dir = dir};
    json_object *numbers = json_object_new_array();
    json_object *index, *sj_file, *sj, *chans;

    /* (first: the metrics need the session's number and start) */
    sj = load(&r, session, numbers, &index, &sj_file, &index_why);
    r.metrics = mp_metrics_new(
        r.session, sj ? mp_json_int_or(sj, "start_unix_us", 0) : 0, 0);
    r.pipes = mp_session_new(r.metrics, r.session);
    mp_session_set_logging(r.pipes, FALSE);
    r.cursors = g_array_new(FALSE, TRUE, sizeof(Cursor));
    g_array_set_clear_func(r.cursors, cursor_clear);
    r.line = g_string_new(NULL);
    if (events)
        mp_session_observe(r.pipes, &events_observer, &r);
    if (ops)
        mp_session_observe(r.pipes, ops, data);

    chans = setup(&r, index, sj, session, index_why);
    if (chans)
        replay(&r);
    else
        mp_metrics_finish(r.metrics, 0, "unreadable capture");

    json_object *doc = mp_metrics_report(r.metrics), *errs;
    json_object_object_add(doc, "capture", json_object_new_string(dir));
    json_object_object_add(doc, "capture_sessions", numbers);
    /* the relay's capture stopped early (disk full, ...): say so */
    const char *cap_err = sj ? mp_json_string(sj, "capture_error") : NULL;
    if (cap_err)
        json_object_object_add(doc, "capture_error",
                               json_object_new_string(cap_err));
    *ok = !r.failed
          && !(json_object_object_get_ex(doc, "errors", &errs)
               && json_object_array_length(errs) > 0);
    g_array_free(r.cursors, TRUE);
    g_string_free(r.line, TRUE);
    mp_session_free(r.pipes);
    mp_metrics_free(r.metrics);
    json_object_put(index);
    json_object_put(sj_file);
    return doc;
}

gboolean
mp_capture_walk(const char *dir, guint session, const MpCaptureWalk *walk,
                gpointer data, GError **error)
{
    g_autofree char *index_why = NULL;
    Replay r = {.dir = dir, .walk = walk, .walk_data = data};
    json_object *numbers = json_object_new_array();
    json_object *index, *sj_file, *sj;

    sj = load(&r, session, numbers, &index, &sj_file, &index_why);
    r.cursors = g_array_new(FALSE, TRUE, sizeof(Cursor));
    g_array_set_clear_func(r.cursors, cursor_clear);
    if (setup(&r, index, sj, session, index_why) && !r.failed)
        replay(&r);
    gboolean ok = !r.failed;
    if (!ok)
        g_set_error_literal(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                            r.first_error);
    g_free(r.first_error);
    g_array_free(r.cursors, TRUE);
    json_object_put(numbers);
    json_object_put(index);
    json_object_put(sj_file);
    return ok;
}
