/* capture.c: writes the relay's capture directory (docs/capture-format.md).
 *
 * The relay's calls turn into jobs on a queue; one writer thread takes
 * them in order and does every open, write, rename and close, so the
 * event loop only copies a chunk and signals.  Each chunk is written with
 * two write() calls, data then its 16-byte index entry, and a failed
 * write is cut off again (ftruncate), so an .idx never points past its
 * .bin and a .bin ends where its last entry's chunk does: what was
 * captured up to an error reads back.  Nothing is fsynced: a capture is a
 * record, not a database, and an fsync would stall the thread for the
 * whole backlog.
 *
 *   relay (main loop)                     writer thread
 *   mp_capture_data() --copy--> [job queue <= 64 MiB] --> write .bin, .idx
 *   mp_capture_channel/kind/end()     --> open/close files, s<S>.json
 *   mp_capture_session_end()          --> close, s<S>.json, then
 *          <-- done() on the main context --+
 */
#include "config.h"
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include "capture.h"
#include "out-file.h"
#include "parse-common.h"

#define ORPHAN_WAIT_S 5 /* see mp_capture_free() */

typedef enum {
    JOB_SESSION,
    JOB_CHANNEL,
    JOB_KIND,
    JOB_DATA,
    JOB_END,
    JOB_SESSION_END,
} JobType;

typedef struct {
    JobType type;
    guint session, channel;
    MpDir dir;
    MpChanKind kind;
    gboolean no_files; /* JOB_CHANNEL after the capture stopped */
    gint64 time_us, wall_us;
    char *text; /* peer, how it ended */
    MpCaptureDone done;
    gpointer done_data;
    GDestroyNotify destroy;
    gsize cost; /* counted in the queue */
    gsize len;
    guint8 data[]; /* JOB_DATA */
} Job;

/* ---- the writer thread's view (only it touches these) ---- */

typedef struct {
    int data, idx; /* -1: closed, or never opened */
    guint64 bytes, chunks;
    char *end;
    gint64 end_us;
} WDir;

typedef struct {
    guint channel;
    MpChanKind kind;
    char *peer;
    gint64 open_us;
    gboolean files; /* its four files were created */
    WDir dir[MP_DIR__MAX];
} WChan;

typedef struct {
    guint number;
    gint64 start_us, start_wall_us;
    GPtrArray *chans; /* WChan*, by channel; NULL slots */
    gboolean ended;
} WSession;

struct MpCapture {
    char *dir;
    int dirfd;
    GMainContext *context; /* where done() runs */
    GThread *thread;

    GMutex lock; /* guards everything below */
    GCond wake, idle;
    GQueue jobs;
    gsize queued; /* cost of the jobs queued or in progress */
    gboolean busy, quit;
    gboolean finished; /* the thread is past its last job */
    gboolean orphaned; /* freed while the thread was stuck: it frees */
    GError *error;
    char *error_file;
    guint64 error_offset;
    guint error_session;
    GPtrArray *notify; /* GSource*, done() not yet run */

    gint failed;           /* atomic: an error was recorded */
    gboolean stopped;      /* main only: no more data is queued */
    gboolean overflowed;   /* main only: the queue was full */
    GHashTable *queued_at; /* main only: (session, channel, dir) -> bytes */
    gboolean wfailed;      /* thread only: its writes stopped */
    GHashTable *sessions;  /* thread only: number -> WSession* */
};

typedef struct {
    MpCapture *c;
    guint session;
    MpCaptureDone done;
    gpointer data;
    GDestroyNotify destroy;
    GSource *source;
} Notify;

static void
job_free(Job *j)
{
    if (j->destroy)
        j->destroy(j->done_data);
    g_free(j->text);
    g_free(j);
}

static void
wchan_free(gpointer p)
{
    WChan *ch = p;
    if (!ch)
        return;
    for (int d = 0; d < MP_DIR__MAX; d++) {
        if (ch->dir[d].data >= 0)
            close(ch->dir[d].data);
        if (ch->dir[d].idx >= 0)
            close(ch->dir[d].idx);
        g_free(ch->dir[d].end);
    }
    g_free(ch->peer);
    g_free(ch);
}

static void
wsession_free(gpointer p)
{
    WSession *s = p;
    g_ptr_array_free(s->chans, TRUE);
    g_free(s);
}

static char *
file_name(guint session, guint channel, MpDir dir, const char *ext)
{
    return g_strdup_printf("s%u-c%u-%s.%s", session, channel, mp_dir_name(dir),
                           ext);
}

/* the file could not be created: `why` names it */
#define NO_OFFSET G_MAXUINT64

/* Records the first error; later ones (a full disk fails every write
 * after the first) add nothing. */
static void
fail(MpCapture *c, guint session, const char *file, guint64 offset,
     const char *why)
{
    g_autofree char *msg = NULL;

    g_mutex_lock(&c->lock);
    if (!c->error) {
        if (file && offset != NO_OFFSET)
            msg = g_strdup_printf("capture %s: %s at offset %" G_GUINT64_FORMAT
                                  ": %s (the capture stops here; the relay "
                                  "goes on)",
                                  c->dir, file, offset, why);
        else
            msg = g_strdup_printf("capture %s: %s (the capture stops here; "
                                  "the relay goes on)",
                                  c->dir, why);
        c->error = g_error_new_literal(G_FILE_ERROR, G_FILE_ERROR_FAILED, msg);
        c->error_file = g_strdup(file);
        c->error_offset = offset == NO_OFFSET ? 0 : offset;
        c->error_session = session;
        g_atomic_int_set(&c->failed, 1);
    }
    g_mutex_unlock(&c->lock);
    if (msg)
        g_warning("%s", msg);
}

/* An error of the writer thread: it writes no more data. */
static void
wfail(MpCapture *c, guint session, const char *file, guint64 offset,
      const char *why)
{
    c->wfailed = TRUE;
    fail(c, session, file, offset, why);
}

static gboolean
write_all(int fd, const void *buf, gsize len, int *err)
{
    const guint8 *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            *err = n < 0 ? errno : ENOSPC;
            return FALSE;
        }
        p += n;
        len -= n;
    }
    return TRUE;
}

static json_object *
session_json(MpCapture *c, const WSession *s)
{
    json_object *so = json_object_new_object();
    json_object_object_add(so, "format",
                           json_object_new_string("migproxy-capture-session"));
    json_object_object_add(so, "version", json_object_new_int(2));
    json_object_object_add(so, "session", json_object_new_int(s->number));
    g_autoptr(GDateTime) t =
        g_date_time_new_from_unix_utc(s->start_wall_us / G_USEC_PER_SEC);
    g_autofree char *iso = t ? g_date_time_format_iso8601(t) : NULL;
    json_object_object_add(so, "start_time",
                           iso ? json_object_new_string(iso) : NULL);
    json_object_object_add(so, "start_unix_us",
                           json_object_new_int64(s->start_wall_us));
    json_object_object_add(so, "ended", json_object_new_boolean(s->ended));
    g_mutex_lock(&c->lock);
    json_object_object_add(so, "capture_error",
                           c->error ? json_object_new_string(c->error->message)
                                    : NULL);
    g_mutex_unlock(&c->lock);
    json_object *chans = json_object_new_array();
    for (guint k = 0; k < s->chans->len; k++) {
        const WChan *ch = g_ptr_array_index(s->chans, k);
        /* a channel whose files could not be created is not listed: the
         * reader finds only files that exist */
        if (!ch || !ch->files)
            continue;
        json_object *co = json_object_new_object();
        json_object_object_add(co, "channel", json_object_new_int(ch->channel));
        json_object_object_add(
            co, "kind", json_object_new_string(mp_chan_kind_name(ch->kind)));
        json_object_object_add(
            co, "peer", ch->peer ? json_object_new_string(ch->peer) : NULL);
        json_object_object_add(co, "open_us",
                               json_object_new_int64(ch->open_us));
        for (int d = 0; d < MP_DIR__MAX; d++) {
            const WDir *w = &ch->dir[d];
            json_object *dj = json_object_new_object();
            g_autofree char *bin = file_name(s->number, ch->channel, d, "bin");
            g_autofree char *idx = file_name(s->number, ch->channel, d, "idx");
            json_object_object_add(dj, "file", json_object_new_string(bin));
            json_object_object_add(dj, "index", json_object_new_string(idx));
            json_object_object_add(dj, "bytes",
                                   json_object_new_int64(w->bytes));
            json_object_object_add(dj, "chunks",
                                   json_object_new_int64(w->chunks));
            json_object_object_add(
                dj, "end", w->end ? json_object_new_string(w->end) : NULL);
            json_object_object_add(
                dj, "end_us", w->end ? json_object_new_int64(w->end_us) : NULL);
            json_object_object_add(co, d ? "to_src" : "to_dst", dj);
        }
        json_object_array_add(chans, co);
    }
    json_object_object_add(so, "channels", chans);
    return so;
}

/* On a full disk the new s<S>.json has no room, but the old one's blocks
 * (a file system allocates whole blocks, and the text grows by a line or
 * two) take the last word: written over in place. */
static gboolean
overwrite(MpCapture *c, const char *name, const char *text)
{
    int fd = openat(c->dirfd, name, O_WRONLY | O_NOFOLLOW | O_CLOEXEC);
    int e = 0;
    if (fd < 0)
        return FALSE;
    gboolean ok = write_all(fd, text, strlen(text), &e)
                  && ftruncate(fd, (off_t)strlen(text)) == 0;
    return close(fd) == 0 && ok;
}

/* s<S>.json, replaced whole (a reader never sees half of it). */
static void
write_session(MpCapture *c, const WSession *s)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *name = g_strdup_printf("s%u.json", s->number);
    json_object *doc = session_json(c, s);
    const char *text =
        json_object_to_json_string_ext(doc, JSON_C_TO_STRING_PRETTY);

    if (!mp_out_file_replace(c->dirfd, name, text, strlen(text), &err)
        && !(g_error_matches(err, G_FILE_ERROR, G_FILE_ERROR_NOSPC)
             && overwrite(c, name, text)))
        wfail(c, s->number, NULL, 0, err->message);
    json_object_put(doc);
}

static WChan *
find_chan(MpCapture *c, const Job *j, WSession **sp)
{
    WSession *s =
        g_hash_table_lookup(c->sessions, GUINT_TO_POINTER(j->session));
    *sp = s;
    if (!s || j->channel >= s->chans->len)
        return NULL;
    return g_ptr_array_index(s->chans, j->channel);
}

static void
open_files(MpCapture *c, WSession *s, WChan *ch)
{
    for (int d = 0; d < MP_DIR__MAX; d++) {
        for (int k = 0; k < 2; k++) {
            g_autoptr(GError) err = NULL;
            g_autofree char *name =
                file_name(s->number, ch->channel, d, k ? "idx" : "bin");
            int fd = mp_out_file_create(c->dirfd, name, &err);
            if (fd < 0) {
                wfail(c, s->number, name, NO_OFFSET, err->message);
                return;
            }
            *(k ? &ch->dir[d].idx : &ch->dir[d].data) = fd;
        }
    }
    ch->files = TRUE;
}

static void
close_dir(MpCapture *c, WSession *s, WChan *ch, MpDir d)
{
    WDir *w = &ch->dir[d];
    for (int k = 0; k < 2; k++) {
        int *fd = k ? &w->idx : &w->data;
        if (*fd >= 0 && close(*fd) < 0) {
            g_autofree char *name =
                file_name(s->number, ch->channel, d, k ? "idx" : "bin");
            wfail(c, s->number, name, k ? 16 * w->chunks : w->bytes,
                  g_strerror(errno));
        }
        *fd = -1;
    }
}

static void
write_chunk(MpCapture *c, WSession *s, WChan *ch, const Job *j)
{
    WDir *w = &ch->dir[j->dir];
    guint8 rec[16];
    int e = 0;

    if (w->data < 0 || w->idx < 0 || c->wfailed)
        return; /* after an overflow, what was queued is still written */
    mp_put_be64(rec, (guint64)MAX(j->time_us - s->start_us, 0));
    mp_put_be64(rec + 8, w->bytes);
    if (!write_all(w->data, j->data, j->len, &e)) {
        g_autofree char *name =
            file_name(s->number, ch->channel, j->dir, "bin");
        /* no chunk without its entry: the last one would seem longer */
        if (ftruncate(w->data, (off_t)w->bytes) < 0)
            g_warning("capture %s: %s: cannot cut back to %" G_GUINT64_FORMAT
                      " bytes: %s",
                      c->dir, name, w->bytes, g_strerror(errno));
        wfail(c, s->number, name, w->bytes, g_strerror(e));
        return;
    }
    if (!write_all(w->idx, rec, sizeof(rec), &e)) {
        g_autofree char *name =
            file_name(s->number, ch->channel, j->dir, "idx");
        if (ftruncate(w->idx, (off_t)(16 * w->chunks)) < 0
            || ftruncate(w->data, (off_t)w->bytes) < 0)
            g_warning("capture %s: %s: cannot cut back the chunk that has no "
                      "entry: %s",
                      c->dir, name, g_strerror(errno));
        wfail(c, s->number, name, 16 * w->chunks, g_strerror(e));
        return;
    }
    w->bytes += j->len;
    w->chunks++;
}

static gboolean
notify_dispatch(gpointer user_data)
{
    Notify *n = user_data;
    MpCapture *c = n->c;

    g_mutex_lock(&c->lock);
    g_ptr_array_remove_fast(c->notify, n->source);
    g_mutex_unlock(&c->lock);
    if (n->done)
        n->done(c, n->session, n->data);
    return G_SOURCE_REMOVE;
}

static void
notify_free(gpointer user_data)
{
    Notify *n = user_data;
    if (n->destroy)
        n->destroy(n->data);
    g_free(n);
}

/* Hands done() to the main context; the job's data goes with it. */
static void
notify(MpCapture *c, Job *j)
{
    Notify *n = g_new0(Notify, 1);
    n->c = c;
    n->session = j->session;
    n->done = j->done;
    n->data = j->done_data;
    n->destroy = j->destroy;
    j->destroy = NULL;
    n->source = g_idle_source_new();
    g_source_set_callback(n->source, notify_dispatch, n, notify_free);
    g_mutex_lock(&c->lock);
    if (c->orphaned) {
        /* no one is left to hear it, nor to free its data safely */
        n->destroy = NULL;
        g_mutex_unlock(&c->lock);
        g_source_unref(n->source);
        return;
    }
    g_ptr_array_add(c->notify, n->source);
    g_source_attach(n->source, c->context);
    g_source_unref(n->source); /* the context holds it until dispatched */
    g_mutex_unlock(&c->lock);
}

/* `ended`: by the relay; else the capture stops with the session open. */
static void
end_session(MpCapture *c, WSession *s, gboolean ended)
{
    for (guint k = 0; k < s->chans->len; k++) {
        WChan *ch = g_ptr_array_index(s->chans, k);
        for (int d = 0; ch && d < MP_DIR__MAX; d++)
            close_dir(c, s, ch, d);
    }
    s->ended = ended;
    write_session(c, s);
}

static void
run_job(MpCapture *c, Job *j)
{
    WSession *s = NULL;
    WChan *ch = j->type == JOB_SESSION ? NULL : find_chan(c, j, &s);

    switch (j->type) {
    case JOB_SESSION:
        s = g_new0(WSession, 1);
        s->number = j->session;
        s->start_us = j->time_us;
        s->start_wall_us = j->wall_us;
        s->chans = g_ptr_array_new_with_free_func(wchan_free);
        g_hash_table_replace(c->sessions, GUINT_TO_POINTER(s->number), s);
        write_session(c, s);
        break;
    case JOB_CHANNEL:
        if (!s)
            break;
        ch = g_new0(WChan, 1);
        ch->channel = j->channel;
        ch->peer = g_steal_pointer(&j->text);
        ch->open_us = j->time_us - s->start_us;
        for (int d = 0; d < MP_DIR__MAX; d++)
            ch->dir[d].data = ch->dir[d].idx = -1;
        if (!c->wfailed && !j->no_files)
            open_files(c, s, ch);
        while (s->chans->len <= j->channel)
            g_ptr_array_add(s->chans, NULL);
        wchan_free(g_ptr_array_index(s->chans, j->channel));
        g_ptr_array_index(s->chans, j->channel) = ch;
        write_session(c, s);
        break;
    case JOB_KIND:
        if (!ch)
            break;
        ch->kind = j->kind;
        write_session(c, s);
        break;
    case JOB_DATA:
        if (ch)
            write_chunk(c, s, ch, j);
        break;
    case JOB_END:
        if (!ch || ch->dir[j->dir].end)
            break;
        ch->dir[j->dir].end = g_steal_pointer(&j->text);
        ch->dir[j->dir].end_us = j->time_us - s->start_us;
        close_dir(c, s, ch, j->dir);
        write_session(c, s);
        break;
    case JOB_SESSION_END:
        if (s) {
            end_session(c, s, TRUE);
            g_hash_table_remove(c->sessions, GUINT_TO_POINTER(j->session));
        }
        if (j->done || j->destroy)
            notify(c, j);
        break;
    }
}

static void capture_destroy(MpCapture *c);

static gpointer
writer_thread(gpointer data)
{
    MpCapture *c = data;

    g_mutex_lock(&c->lock);
    for (;;) {
        while (!c->jobs.length && !c->quit)
            g_cond_wait(&c->wake, &c->lock);
        Job *j = g_queue_pop_head(&c->jobs);
        if (!j)
            break; /* quit, and nothing left */
        c->busy = TRUE;
        g_mutex_unlock(&c->lock);
        run_job(c, j);
        gsize cost = j->cost;
        job_free(j);
        g_mutex_lock(&c->lock);
        c->busy = FALSE;
        c->queued -= cost;
        if (!c->jobs.length)
            g_cond_broadcast(&c->idle);
    }
    g_mutex_unlock(&c->lock);

    /* the relay stopped with sessions open: close them, ends unknown */
    GHashTableIter it;
    gpointer v;
    g_hash_table_iter_init(&it, c->sessions);
    while (g_hash_table_iter_next(&it, NULL, &v))
        end_session(c, v, FALSE);
    g_mutex_lock(&c->lock);
    c->finished = TRUE;
    g_cond_broadcast(&c->idle);
    gboolean orphaned = c->orphaned;
    g_mutex_unlock(&c->lock);
    if (orphaned)
        capture_destroy(c);
    return NULL;
}

static void
push(MpCapture *c, Job *j)
{
    j->cost += sizeof(*j) + j->len + (j->text ? strlen(j->text) : 0);
    g_mutex_lock(&c->lock);
    g_queue_push_tail(&c->jobs, j);
    c->queued += j->cost;
    g_cond_signal(&c->wake);
    g_mutex_unlock(&c->lock);
}

static Job *
job_new(JobType type, guint session, guint channel, gsize len)
{
    Job *j = g_malloc0(sizeof(Job) + len);
    j->type = type;
    j->session = session;
    j->channel = channel;
    j->len = len;
    return j;
}

MpCapture *
mp_capture_new(const char *dir, const char *listen, const char *to,
               GError **error)
{
    int dirfd = mp_out_dir_open(dir, TRUE, error);
    if (dirfd < 0) {
        g_prefix_error(error, "--capture: ");
        return NULL;
    }
    json_object *doc = json_object_new_object();
    json_object_object_add(doc, "format",
                           json_object_new_string("migproxy-capture"));
    json_object_object_add(doc, "version", json_object_new_int(2));
    json_object_object_add(doc, "listen", json_object_new_string(listen));
    json_object_object_add(doc, "to", json_object_new_string(to));
    json_object_object_add(doc, "sessions_in",
                           json_object_new_string("s<S>.json"));
    const char *text =
        json_object_to_json_string_ext(doc, JSON_C_TO_STRING_PRETTY);
    gboolean ok =
        mp_out_file_replace(dirfd, "index.json", text, strlen(text), error);
    json_object_put(doc);
    if (!ok) {
        g_prefix_error(error, "--capture %s: ", dir);
        close(dirfd);
        return NULL;
    }

    MpCapture *c = g_new0(MpCapture, 1);
    c->dir = g_strdup(dir);
    c->dirfd = dirfd;
    c->context = g_main_context_ref_thread_default();
    g_mutex_init(&c->lock);
    g_cond_init(&c->wake);
    g_cond_init(&c->idle);
    g_queue_init(&c->jobs);
    c->notify = g_ptr_array_new();
    c->sessions = g_hash_table_new_full(NULL, NULL, NULL, wsession_free);
    c->queued_at =
        g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, g_free);
    c->thread = g_thread_new("capture", writer_thread, c);
    return c;
}

static void
capture_destroy(MpCapture *c)
{
    g_ptr_array_free(c->notify, TRUE);
    g_hash_table_destroy(c->sessions);
    g_hash_table_destroy(c->queued_at);
    g_queue_clear(&c->jobs); /* empty: the thread took every job */
    g_clear_error(&c->error);
    g_free(c->error_file);
    g_mutex_clear(&c->lock);
    g_cond_clear(&c->wake);
    g_cond_clear(&c->idle);
    g_main_context_unref(c->context);
    close(c->dirfd);
    g_free(c->dir);
    g_free(c);
}

/* done() callbacks not yet run: their sessions are written, but no one
 * is left to hear it (their data is freed here, on the main context,
 * while its owner is alive).  Called with the lock held or the thread
 * gone. */
static void
drop_notifications(MpCapture *c)
{
    while (c->notify->len)
        g_source_destroy(g_ptr_array_steal_index_fast(c->notify, 0));
}

void
mp_capture_free(MpCapture *c)
{
    if (!c)
        return;
    GThread *thread = c->thread;
    g_mutex_lock(&c->lock);
    c->quit = TRUE;
    g_cond_signal(&c->wake);
    /* after an overflow the writer may be stuck on a disk that does not
     * answer (an NFS server gone): waiting for it would hang the relay's
     * exit, so after ORPHAN_WAIT_S it finishes on its own and frees the
     * rest (a slow disk has written its backlog by then) */
    gint64 deadline = g_get_monotonic_time() + ORPHAN_WAIT_S * G_USEC_PER_SEC;
    while (c->overflowed && !c->finished
           && g_cond_wait_until(&c->idle, &c->lock, deadline))
        ;
    gboolean orphaned = c->orphaned = c->overflowed && !c->finished;
    if (orphaned) {
        drop_notifications(c);
        for (GList *l = c->jobs.head; l; l = l->next) {
            Job *j = l->data;
            if (j->destroy)
                j->destroy(j->done_data);
            j->destroy = NULL;
            j->done = NULL;
        }
    }
    g_mutex_unlock(&c->lock);
    if (orphaned) {
        g_thread_unref(thread); /* `c` may be gone already */
        return;
    }
    g_thread_join(thread);
    drop_notifications(c); /* with those of the sessions it just ended */
    capture_destroy(c);
}

void
mp_capture_session(MpCapture *c, guint session, gint64 start_us,
                   gint64 start_wall_us)
{
    Job *j = job_new(JOB_SESSION, session, 0, 0);
    j->time_us = start_us;
    j->wall_us = start_wall_us;
    push(c, j);
}

void
mp_capture_channel(MpCapture *c, guint session, guint channel, const char *peer,
                   gint64 now_us)
{
    Job *j = job_new(JOB_CHANNEL, session, channel, 0);
    j->text = g_strdup(peer);
    j->no_files = c->stopped || g_atomic_int_get(&c->failed);
    j->time_us = now_us;
    push(c, j);
}

void
mp_capture_kind(MpCapture *c, guint session, guint channel, MpChanKind kind)
{
    Job *j = job_new(JOB_KIND, session, channel, 0);
    j->kind = kind;
    push(c, j);
}

/* Where the next chunk of (session, channel, dir) goes in its .bin. */
static guint64 *
queued_at(MpCapture *c, guint session, guint channel, MpDir dir)
{
    guint64 key = (guint64)session << 33 | (guint64)channel << 1 | dir;
    guint64 *v = g_hash_table_lookup(c->queued_at, &key);
    if (!v) {
        v = g_new0(guint64, 2);
        v[1] = key; /* the key lives in the value */
        g_hash_table_insert(c->queued_at, &v[1], v);
    }
    return v;
}

void
mp_capture_data(MpCapture *c, guint session, guint channel, MpDir dir,
                const guint8 *buf, gsize len, gint64 now_us)
{
    if (!len || c->stopped)
        return;
    if (g_atomic_int_get(&c->failed)) {
        c->stopped = TRUE; /* nothing more would be written */
        return;
    }
    guint64 *at = queued_at(c, session, channel, dir);
    g_mutex_lock(&c->lock);
    gboolean full = c->queued + sizeof(Job) + len > MP_CAPTURE_QUEUE_LIMIT;
    g_mutex_unlock(&c->lock);
    if (full) {
        /* what is queued is still written: the capture ends at `at` */
        g_autofree char *name = file_name(session, channel, dir, "bin");
        g_autofree char *why = g_strdup_printf(
            "the disk did not keep up: more than %u MiB waiting to be "
            "written",
            MP_CAPTURE_QUEUE_LIMIT >> 20);
        fail(c, session, name, *at, why);
        c->stopped = c->overflowed = TRUE;
        return;
    }
    Job *j = job_new(JOB_DATA, session, channel, len);
    j->dir = dir;
    j->time_us = now_us;
    memcpy(j->data, buf, len);
    *at += len;
    push(c, j);
}

void
mp_capture_end(MpCapture *c, guint session, guint channel, MpDir dir,
               MpEndReason how, gint64 now_us)
{
    Job *j = job_new(JOB_END, session, channel, 0);
    j->dir = dir;
    j->text = g_strdup(mp_end_reason_name(how));
    j->time_us = now_us;
    push(c, j);
}

static gboolean
same_session(gpointer key, gpointer value, gpointer user_data)
{
    return *(guint64 *)key >> 33 == GPOINTER_TO_UINT(user_data);
}

void
mp_capture_session_end(MpCapture *c, guint session, gint64 now_us,
                       MpCaptureDone done, gpointer data,
                       GDestroyNotify destroy)
{
    Job *j = job_new(JOB_SESSION_END, session, 0, 0);
    j->time_us = now_us;
    j->done = done;
    j->done_data = data;
    j->destroy = destroy;
    g_hash_table_foreach_remove(c->queued_at, same_session,
                                GUINT_TO_POINTER(session));
    if (c->overflowed) {
        /* the thread is behind, maybe stuck on the disk: the session's
         * report need not wait for it (the capture already failed) */
        notify(c, j);
        j->done = NULL;
    }
    push(c, j);
}

void
mp_capture_sync(MpCapture *c)
{
    g_mutex_lock(&c->lock);
    while (c->jobs.length || c->busy)
        g_cond_wait(&c->idle, &c->lock);
    g_mutex_unlock(&c->lock);
}

const GError *
mp_capture_error(MpCapture *c)
{
    g_mutex_lock(&c->lock);
    const GError *e = c->error; /* set once, kept until free */
    g_mutex_unlock(&c->lock);
    return e;
}

json_object *
mp_capture_status(MpCapture *c)
{
    json_object *o = json_object_new_object();
    g_mutex_lock(&c->lock);
    json_object_object_add(o, "dir", json_object_new_string(c->dir));
    json_object_object_add(o, "complete", json_object_new_boolean(!c->error));
    if (c->error) {
        json_object_object_add(o, "error",
                               json_object_new_string(c->error->message));
        json_object_object_add(
            o, "file",
            c->error_file ? json_object_new_string(c->error_file) : NULL);
        json_object_object_add(o, "offset",
                               json_object_new_int64(c->error_offset));
        json_object_object_add(o, "session",
                               json_object_new_int(c->error_session));
    }
    g_mutex_unlock(&c->lock);
    return o;
}
