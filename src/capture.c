/* capture.c: writes the relay's capture directory (docs/capture-format.md).
 *
 * Data goes through stdio buffers (256 KiB per file): one fwrite per read
 * chunk, no syscall unless a buffer fills; mp_capture_flush() pushes them
 * out every 100 ms.  A write error stops the capture, never the relay.
 */
#include "config.h"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <glib/gstdio.h>
#include <json-c/json.h>
#include "capture.h"
#include "parse-common.h"

#define DATA_BUFFER  (256u << 10)
#define INDEX_BUFFER (64u << 10)

typedef struct {
    char *file, *index_file; /* names inside the directory */
    FILE *data, *idx;
    guint64 bytes, chunks;
    char *end;
    gint64 end_us;
} CapDir;

typedef struct {
    guint channel;
    MpChanKind kind;
    char *peer;
    gint64 open_us;
    CapDir dir[MP_DIR__MAX];
} CapChan;

typedef struct {
    guint session;
    gint64 start_us, start_wall_us;
    GPtrArray *chans; /* CapChan*, by channel */
} CapSession;

struct MpCapture {
    char *dir, *listen, *to;
    GPtrArray *sessions; /* CapSession* */
    GError *error;
};

static void
cap_chan_free(gpointer p)
{
    CapChan *c = p;
    if (!c)
        return;
    for (int d = 0; d < MP_DIR__MAX; d++) {
        if (c->dir[d].data)
            fclose(c->dir[d].data);
        if (c->dir[d].idx)
            fclose(c->dir[d].idx);
        g_free(c->dir[d].file);
        g_free(c->dir[d].index_file);
        g_free(c->dir[d].end);
    }
    g_free(c->peer);
    g_free(c);
}

static void
cap_session_free(gpointer p)
{
    CapSession *s = p;
    g_ptr_array_free(s->chans, TRUE);
    g_free(s);
}

static json_object *
index_json(const MpCapture *c)
{
    json_object *doc = json_object_new_object();
    json_object_object_add(doc, "format",
                           json_object_new_string("migproxy-capture"));
    json_object_object_add(doc, "version", json_object_new_int(1));
    json_object_object_add(doc, "listen", json_object_new_string(c->listen));
    json_object_object_add(doc, "to", json_object_new_string(c->to));
    json_object *sessions = json_object_new_array();
    for (guint i = 0; i < c->sessions->len; i++) {
        const CapSession *s = g_ptr_array_index(c->sessions, i);
        json_object *so = json_object_new_object();
        json_object_object_add(so, "session", json_object_new_int(s->session));
        g_autoptr(GDateTime) t =
            g_date_time_new_from_unix_utc(s->start_wall_us / G_USEC_PER_SEC);
        g_autofree char *iso = t ? g_date_time_format_iso8601(t) : NULL;
        json_object_object_add(so, "start_time",
                               iso ? json_object_new_string(iso) : NULL);
        json_object_object_add(so, "start_unix_us",
                               json_object_new_int64(s->start_wall_us));
        json_object *chans = json_object_new_array();
        for (guint k = 0; k < s->chans->len; k++) {
            const CapChan *ch = g_ptr_array_index(s->chans, k);
            if (!ch)
                continue;
            json_object *co = json_object_new_object();
            json_object_object_add(co, "channel",
                                   json_object_new_int(ch->channel));
            json_object_object_add(
                co, "kind",
                json_object_new_string(mp_chan_kind_name(ch->kind)));
            json_object_object_add(
                co, "peer", ch->peer ? json_object_new_string(ch->peer) : NULL);
            json_object_object_add(co, "open_us",
                                   json_object_new_int64(ch->open_us));
            for (int d = 0; d < MP_DIR__MAX; d++) {
                const CapDir *cd = &ch->dir[d];
                json_object *dj = json_object_new_object();
                json_object_object_add(dj, "file",
                                       json_object_new_string(cd->file));
                json_object_object_add(dj, "index",
                                       json_object_new_string(cd->index_file));
                json_object_object_add(dj, "bytes",
                                       json_object_new_int64(cd->bytes));
                json_object_object_add(dj, "chunks",
                                       json_object_new_int64(cd->chunks));
                json_object_object_add(dj, "end",
                                       cd->end ? json_object_new_string(cd->end)
                                               : NULL);
                json_object_object_add(
                    dj, "end_us",
                    cd->end ? json_object_new_int64(cd->end_us) : NULL);
                json_object_object_add(co, d ? "to_src" : "to_dst", dj);
            }
            json_object_array_add(chans, co);
        }
        json_object_object_add(so, "channels", chans);
        json_object_array_add(sessions, so);
    }
    json_object_object_add(doc, "sessions", sessions);
    return doc;
}

static void
set_error(MpCapture *c, const char *what, int errnum)
{
    if (c->error)
        return;
    g_set_error(&c->error, G_FILE_ERROR, g_file_error_from_errno(errnum),
                "capture %s: %s: %s (the capture stops here; the relay goes "
                "on)",
                c->dir, what, g_strerror(errnum));
    g_warning("%s", c->error->message);
}

static void
write_index(MpCapture *c)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *path = g_build_filename(c->dir, "index.json", NULL);
    json_object *doc = index_json(c);
    const char *text =
        json_object_to_json_string_ext(doc, JSON_C_TO_STRING_PRETTY);

    if (!c->error && !g_file_set_contents(path, text, -1, &err)) {
        c->error = g_error_copy(err);
        g_warning("capture %s: %s (the capture stops here; the relay goes "
                  "on)",
                  c->dir, err->message);
    }
    json_object_put(doc);
}

MpCapture *
mp_capture_new(const char *dir, const char *listen, const char *to,
               GError **error)
{
    if (g_mkdir_with_parents(dir, 0755) < 0) {
        int e = errno;
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(e),
                    "capture directory %s: %s", dir, g_strerror(e));
        return NULL;
    }
    MpCapture *c = g_new0(MpCapture, 1);
    c->dir = g_strdup(dir);
    c->listen = g_strdup(listen);
    c->to = g_strdup(to);
    c->sessions = g_ptr_array_new_with_free_func(cap_session_free);
    write_index(c);
    if (c->error) {
        g_propagate_error(error, g_steal_pointer(&c->error));
        mp_capture_free(c);
        return NULL;
    }
    return c;
}

void
mp_capture_free(MpCapture *c)
{
    if (!c)
        return;
    mp_capture_flush(c);
    write_index(c);
    g_ptr_array_free(c->sessions, TRUE);
    g_clear_error(&c->error);
    g_free(c->dir);
    g_free(c->listen);
    g_free(c->to);
    g_free(c);
}

const GError *
mp_capture_error(const MpCapture *c)
{
    return c->error;
}

static CapSession *
find_session(MpCapture *c, guint session)
{
    for (guint i = c->sessions->len; i-- > 0;) {
        CapSession *s = g_ptr_array_index(c->sessions, i);
        if (s->session == session)
            return s;
    }
    return NULL;
}

static CapChan *
find_chan(MpCapture *c, guint session, guint channel)
{
    CapSession *s = find_session(c, session);
    if (!s || channel >= s->chans->len)
        return NULL;
    return g_ptr_array_index(s->chans, channel);
}

void
mp_capture_session(MpCapture *c, guint session, gint64 start_us,
                   gint64 start_wall_us)
{
    CapSession *s = g_new0(CapSession, 1);
    s->session = session;
    s->start_us = start_us;
    s->start_wall_us = start_wall_us;
    s->chans = g_ptr_array_new_with_free_func(cap_chan_free);
    g_ptr_array_add(c->sessions, s);
    write_index(c);
}

static FILE *
open_file(MpCapture *c, const char *name, gsize buffer)
{
    g_autofree char *path = g_build_filename(c->dir, name, NULL);
    FILE *f = fopen(path, "wb");
    if (!f) {
        set_error(c, name, errno);
        return NULL;
    }
    setvbuf(f, NULL, _IOFBF, buffer);
    return f;
}

void
mp_capture_channel(MpCapture *c, guint session, guint channel, const char *peer,
                   gint64 now_us)
{
    CapSession *s = find_session(c, session);
    if (!s)
        return;
    CapChan *ch = g_new0(CapChan, 1);
    ch->channel = channel;
    ch->peer = g_strdup(peer);
    ch->open_us = now_us - s->start_us;
    for (int d = 0; d < MP_DIR__MAX; d++) {
        CapDir *cd = &ch->dir[d];
        cd->file =
            g_strdup_printf("s%u-c%u-%s.bin", session, channel, mp_dir_name(d));
        cd->index_file =
            g_strdup_printf("s%u-c%u-%s.idx", session, channel, mp_dir_name(d));
        if (!c->error) {
            cd->data = open_file(c, cd->file, DATA_BUFFER);
            cd->idx = open_file(c, cd->index_file, INDEX_BUFFER);
        }
    }
    while (s->chans->len <= channel)
        g_ptr_array_add(s->chans, NULL);
    cap_chan_free(g_ptr_array_index(s->chans, channel));
    g_ptr_array_index(s->chans, channel) = ch;
    write_index(c);
}

void
mp_capture_kind(MpCapture *c, guint session, guint channel, MpChanKind kind)
{
    CapChan *ch = find_chan(c, session, channel);
    if (!ch)
        return;
    ch->kind = kind;
    write_index(c);
}

void
mp_capture_data(MpCapture *c, guint session, guint channel, MpDir dir,
                const guint8 *buf, gsize len, gint64 now_us)
{
    CapSession *s = find_session(c, session);
    CapChan *ch = find_chan(c, session, channel);
    if (!ch || c->error || !len)
        return;
    CapDir *cd = &ch->dir[dir];
    guint8 rec[16];
    mp_put_be64(rec, (guint64)MAX(now_us - s->start_us, 0));
    mp_put_be64(rec + 8, cd->bytes);
    if (!cd->data || !cd->idx || fwrite(rec, sizeof(rec), 1, cd->idx) != 1
        || fwrite(buf, 1, len, cd->data) != len) {
        set_error(c, cd->file, errno ? errno : EIO);
        return;
    }
    cd->bytes += len;
    cd->chunks++;
}

void
mp_capture_end(MpCapture *c, guint session, guint channel, MpDir dir,
               const char *how, gint64 now_us)
{
    CapSession *s = find_session(c, session);
    CapChan *ch = find_chan(c, session, channel);
    if (!ch || ch->dir[dir].end)
        return;
    CapDir *cd = &ch->dir[dir];
    cd->end = g_strdup(how);
    cd->end_us = now_us - s->start_us;
    if (cd->data && fflush(cd->data) != 0)
        set_error(c, cd->file, errno);
    if (cd->idx && fflush(cd->idx) != 0)
        set_error(c, cd->index_file, errno);
    write_index(c);
}

void
mp_capture_flush(MpCapture *c)
{
    for (guint i = 0; i < c->sessions->len; i++) {
        CapSession *s = g_ptr_array_index(c->sessions, i);
        for (guint k = 0; k < s->chans->len; k++) {
            CapChan *ch = g_ptr_array_index(s->chans, k);
            for (int d = 0; ch && d < MP_DIR__MAX; d++) {
                if (ch->dir[d].data && fflush(ch->dir[d].data) != 0)
                    set_error(c, ch->dir[d].file, errno);
                if (ch->dir[d].idx && fflush(ch->dir[d].idx) != 0)
                    set_error(c, ch->dir[d].index_file, errno);
            }
        }
    }
}
