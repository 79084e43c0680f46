/* qmp-client.c: synchronous QMP client over a unix socket.
 * Spec: QEMU docs/interop/qmp-spec.rst (facts only); wire summary in
 * qmp-client.h.
 *
 * The socket is non-blocking; each wait goes through
 * g_socket_condition_timed_wait() against one deadline per call, so a
 * silent or stuck QEMU costs at most the caller's timeout.  Replies are
 * matched by "id": a reply that arrives after its command timed out is
 * dropped instead of being taken for the next command's.
 */
#include "config.h"

#include <string.h>

#include <gio/gio.h>
#include <gio/gunixsocketaddress.h>

#include "json-util.h"
#include "qmp-client.h"

/* Longest message accepted.  The largest replies we expect are
 * query-migrate and qom-list (a few KiB); 64 MiB is a bound against a
 * peer that never sends a newline, not a size we plan for.
 */
#define MP_QMP_MAX_LINE (64u * 1024 * 1024)

/* Pause between connection attempts while QEMU has not created the
 * socket yet; QEMU 7.2 under TCG takes 50-300 ms to get there.
 */
#define MP_QMP_RETRY_US (20 * 1000)

struct MpQmpClient {
    char *path;
    GSocketConnection *conn;
    GSocket *sock; /* borrowed from conn */
    GByteArray *rbuf;
    GQueue events; /* json_object *, oldest first */
    json_object *greeting;
    guint timeout_ms;
    guint64 next_id;
    gboolean broken; /* sticky after CLOSED/IO/PROTOCOL */
};

G_DEFINE_QUARK(mp_qmp_error_quark, mp_qmp_error)

static gint64
deadline_after(guint timeout_ms)
{
    return g_get_monotonic_time() + (gint64)timeout_ms * 1000;
}

static void set_broken(MpQmpClient *c, GError **error, MpQmpErrorCode code,
                       const char *fmt, ...) G_GNUC_PRINTF(4, 5);

static void
set_broken(MpQmpClient *c, GError **error, MpQmpErrorCode code, const char *fmt,
           ...)
{
    g_autofree char *msg = NULL;
    va_list ap;

    c->broken = TRUE;
    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error_literal(error, MP_QMP_ERROR, code, msg);
}

/* Takes one complete line out of c->rbuf, if there is one.
 * @return the parsed object (caller owns), NULL with *error set on bad
 * JSON, or NULL without error when no complete line is buffered.
 */
static json_object *
take_buffered(MpQmpClient *c, GError **error)
{
    for (;;) {
        guint8 *nl;
        gsize len;
        json_object *obj;
        enum json_tokener_error jerr;

        if (c->rbuf->len == 0) /* data may be NULL: no memchr() */
            return NULL;
        nl = memchr(c->rbuf->data, '\n', c->rbuf->len);
        if (nl == NULL)
            return NULL;
        len = nl - c->rbuf->data;
        *nl = '\0';
        if (len > 0 && c->rbuf->data[len - 1] == '\r')
            c->rbuf->data[len - 1] = '\0';
        if (c->rbuf->data[0] == '\0') {
            g_byte_array_remove_range(c->rbuf, 0, len + 1);
            continue;
        }
        obj = json_tokener_parse_verbose((const char *)c->rbuf->data, &jerr);
        if (obj == NULL || !json_object_is_type(obj, json_type_object)) {
            set_broken(c, error, MP_QMP_ERROR_PROTOCOL,
                       "not a JSON object (%s): %.200s",
                       obj == NULL ? json_tokener_error_desc(jerr)
                                   : "other JSON type",
                       (const char *)c->rbuf->data);
            json_object_put(obj);
            return NULL;
        }
        g_byte_array_remove_range(c->rbuf, 0, len + 1);
        return obj;
    }
}

/* Reads the next message, waiting until @deadline (monotonic, us).
 * Data already readable is consumed even when the deadline has passed, so
 * a deadline of "now" drains without waiting.
 * @return the message (caller owns) or NULL with *error set; code
 * MP_QMP_ERROR_TIMEOUT leaves the client usable.
 */
static json_object *
read_message(MpQmpClient *c, gint64 deadline, GError **error)
{
    guint8 buf[16384];

    if (c->broken) {
        g_set_error(error, MP_QMP_ERROR, MP_QMP_ERROR_CLOSED,
                    "connection to %s is closed", c->path);
        return NULL;
    }
    for (;;) {
        g_autoptr(GError) err = NULL;
        GError *perr = NULL;
        json_object *obj = take_buffered(c, &perr);
        gssize n;
        gint64 left;

        if (obj != NULL)
            return obj;
        if (perr != NULL) {
            g_propagate_error(error, perr);
            return NULL;
        }
        if (c->rbuf->len > MP_QMP_MAX_LINE) {
            set_broken(c, error, MP_QMP_ERROR_PROTOCOL,
                       "message longer than %u bytes", MP_QMP_MAX_LINE);
            return NULL;
        }

        n = g_socket_receive(c->sock, (char *)buf, sizeof(buf), NULL, &err);
        if (n > 0) {
            g_byte_array_append(c->rbuf, buf, n);
            continue;
        }
        if (n == 0) {
            set_broken(c, error, MP_QMP_ERROR_CLOSED,
                       "QEMU closed the connection");
            return NULL;
        }
        if (!g_error_matches(err, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK)) {
            set_broken(c, error, MP_QMP_ERROR_IO, "receive: %s", err->message);
            return NULL;
        }
        g_clear_error(&err);

        left = deadline - g_get_monotonic_time();
        if (left <= 0) {
            g_set_error_literal(error, MP_QMP_ERROR, MP_QMP_ERROR_TIMEOUT,
                                "timed out waiting for QEMU");
            return NULL;
        }
        if (!g_socket_condition_timed_wait(c->sock, G_IO_IN, left, NULL, &err)
            && !g_error_matches(err, G_IO_ERROR, G_IO_ERROR_TIMED_OUT)) {
            set_broken(c, error, MP_QMP_ERROR_IO, "poll: %s", err->message);
            return NULL;
        }
        /* Timed out or readable: the loop tries a read, then the deadline. */
    }
}

static gboolean
send_all(MpQmpClient *c, const char *data, gsize len, gint64 deadline,
         GError **error)
{
    gsize done = 0;

    if (c->broken) {
        g_set_error(error, MP_QMP_ERROR, MP_QMP_ERROR_CLOSED,
                    "connection to %s is closed", c->path);
        return FALSE;
    }
    while (done < len) {
        g_autoptr(GError) err = NULL;
        gssize n = g_socket_send(c->sock, data + done, len - done, NULL, &err);
        gint64 left;

        if (n > 0) {
            done += n;
            continue;
        }
        if (n < 0
            && !g_error_matches(err, G_IO_ERROR, G_IO_ERROR_WOULD_BLOCK)) {
            set_broken(c, error,
                       g_error_matches(err, G_IO_ERROR, G_IO_ERROR_BROKEN_PIPE)
                           ? MP_QMP_ERROR_CLOSED
                           : MP_QMP_ERROR_IO,
                       "send: %s", err->message);
            return FALSE;
        }
        g_clear_error(&err);
        left = deadline - g_get_monotonic_time();
        if (left <= 0) {
            g_set_error_literal(error, MP_QMP_ERROR, MP_QMP_ERROR_TIMEOUT,
                                "timed out sending to QEMU");
            return FALSE;
        }
        if (!g_socket_condition_timed_wait(c->sock, G_IO_OUT, left, NULL, &err)
            && !g_error_matches(err, G_IO_ERROR, G_IO_ERROR_TIMED_OUT)) {
            set_broken(c, error, MP_QMP_ERROR_IO, "poll: %s", err->message);
            return FALSE;
        }
    }
    return TRUE;
}

static MpQmpErrorCode
code_of_class(const char *cls)
{
    static const struct {
        const char *name;
        MpQmpErrorCode code;
    } classes[] = {
        {"CommandNotFound", MP_QMP_ERROR_COMMAND_NOT_FOUND},
        {"DeviceNotFound", MP_QMP_ERROR_DEVICE_NOT_FOUND},
        {"DeviceNotActive", MP_QMP_ERROR_DEVICE_NOT_ACTIVE},
        {"KVMMissingCap", MP_QMP_ERROR_KVM_MISSING_CAP},
    };

    for (gsize i = 0; i < G_N_ELEMENTS(classes); i++) {
        if (g_strcmp0(cls, classes[i].name) == 0)
            return classes[i].code;
    }
    return MP_QMP_ERROR_GENERIC;
}

/* Waits for the reply to the command sent with @id, queueing events.
 * @return the "return" value (caller owns) or NULL with *error set.
 */
static json_object *
wait_reply(MpQmpClient *c, const char *id, gint64 deadline, GError **error)
{
    for (;;) {
        json_object *msg = read_message(c, deadline, error);
        json_object *v;
        const char *msg_id;

        if (msg == NULL)
            return NULL;
        if (json_object_object_get_ex(msg, "event", NULL)) {
            g_queue_push_tail(&c->events, msg);
            continue;
        }
        /* A reply without "id" answers a request QEMU could not parse:
         * that can only be ours.
         */
        msg_id = mp_json_string(msg, "id");
        if (json_object_object_get_ex(msg, "id", NULL)
            && g_strcmp0(msg_id, id) != 0) {
            g_debug("qmp: dropping late reply %s",
                    json_object_to_json_string(msg));
            json_object_put(msg);
            continue;
        }
        if (json_object_object_get_ex(msg, "return", &v)) {
            json_object *ret = json_object_get(v);

            json_object_put(msg);
            return ret != NULL ? ret : json_object_new_object();
        }
        if (json_object_object_get_ex(msg, "error", &v)) {
            const char *cls = mp_json_string(v, "class");
            const char *desc = mp_json_string(v, "desc");

            g_set_error(error, MP_QMP_ERROR, code_of_class(cls), "%s: %s",
                        cls != NULL ? cls : "(no class)",
                        desc != NULL ? desc : "(no description)");
            json_object_put(msg);
            return NULL;
        }
        g_debug("qmp: ignoring message %s", json_object_to_json_string(msg));
        json_object_put(msg);
    }
}

static json_object *
execute_until(MpQmpClient *c, const char *command, json_object *args,
              gint64 deadline, GError **error)
{
    g_autofree char *id =
        g_strdup_printf("mp-%" G_GUINT64_FORMAT, c->next_id++);
    json_object *req = json_object_new_object();
    g_autofree char *line = NULL;
    json_object *ret;

    json_object_object_add(req, "execute", json_object_new_string(command));
    if (args != NULL)
        json_object_object_add(req, "arguments", json_object_get(args));
    json_object_object_add(req, "id", json_object_new_string(id));
    line =
        g_strconcat(json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN),
                    "\n", NULL);
    json_object_put(req);

    if (!send_all(c, line, strlen(line), deadline, error)) {
        g_prefix_error(error, "qmp: %s: ", command);
        return NULL;
    }
    ret = wait_reply(c, id, deadline, error);
    if (ret == NULL)
        g_prefix_error(error, "qmp: %s: ", command);
    return ret;
}

static gboolean
handshake(MpQmpClient *c, gint64 deadline, GError **error)
{
    json_object *msg = read_message(c, deadline, error);
    json_object *qmp, *ret;

    if (msg == NULL) {
        g_prefix_error(error, "qmp: %s: reading greeting: ", c->path);
        return FALSE;
    }
    if (!json_object_object_get_ex(msg, "QMP", &qmp)) {
        g_set_error(error, MP_QMP_ERROR, MP_QMP_ERROR_PROTOCOL,
                    "qmp: %s: expected a greeting, got %.200s", c->path,
                    json_object_to_json_string(msg));
        json_object_put(msg);
        return FALSE;
    }
    c->greeting = json_object_get(qmp);
    json_object_put(msg);

    ret = execute_until(c, "qmp_capabilities", NULL, deadline, error);
    if (ret == NULL)
        return FALSE;
    json_object_put(ret);
    return TRUE;
}

/* One connect(2); NULL with *error set if nobody listens yet. */
static GSocketConnection *
connect_socket(const char *socket_path, GError **error)
{
    g_autoptr(GSocketClient) sc = g_socket_client_new();
    g_autoptr(GSocketAddress) addr = g_unix_socket_address_new(socket_path);

    return g_socket_client_connect(sc, G_SOCKET_CONNECTABLE(addr), NULL, error);
}

static MpQmpClient *
client_new(const char *socket_path, GSocketConnection *conn)
{
    MpQmpClient *c = g_new0(MpQmpClient, 1);

    c->path = g_strdup(socket_path);
    c->conn = conn;
    c->sock = g_socket_connection_get_socket(conn);
    g_socket_set_blocking(c->sock, FALSE);
    c->rbuf = g_byte_array_new();
    g_queue_init(&c->events);
    c->timeout_ms = MP_QMP_DEFAULT_TIMEOUT_MS;
    c->next_id = 1;
    return c;
}

MpQmpClient *
mp_qmp_connect_once(const char *socket_path, guint timeout_ms, GError **error)
{
    g_autoptr(MpQmpClient) c = NULL;
    g_autoptr(GError) err = NULL;
    GSocketConnection *conn;

    conn = connect_socket(socket_path, &err);
    if (conn == NULL) {
        g_set_error(error, MP_QMP_ERROR, MP_QMP_ERROR_CONNECT,
                    "qmp: connecting to %s: %s", socket_path, err->message);
        return NULL;
    }
    c = client_new(socket_path, conn);
    if (!handshake(c, deadline_after(timeout_ms), error))
        return NULL;
    return g_steal_pointer(&c);
}

MpQmpClient *
mp_qmp_connect(const char *socket_path, guint timeout_ms, GError **error)
{
    gint64 deadline = deadline_after(timeout_ms);
    g_autoptr(MpQmpClient) c = NULL;

    for (;;) {
        g_autoptr(GError) err = NULL;
        GSocketConnection *conn = connect_socket(socket_path, &err);

        if (conn != NULL) {
            c = client_new(socket_path, conn);
            break;
        }
        if (g_get_monotonic_time() + MP_QMP_RETRY_US > deadline) {
            g_set_error(error, MP_QMP_ERROR, MP_QMP_ERROR_CONNECT,
                        "qmp: connecting to %s: gave up after %u ms: %s",
                        socket_path, timeout_ms, err->message);
            return NULL;
        }
        g_usleep(MP_QMP_RETRY_US);
    }
    /* The socket accepted: QEMU is up, the greeting is immediate. */
    if (!handshake(c, MAX(deadline, deadline_after(1000)), error))
        return NULL;
    return g_steal_pointer(&c);
}

static void
put_json(gpointer obj)
{
    json_object_put(obj);
}

void
mp_qmp_free(MpQmpClient *client)
{
    if (client == NULL)
        return;
    if (client->conn != NULL) {
        g_io_stream_close(G_IO_STREAM(client->conn), NULL, NULL);
        g_object_unref(client->conn);
    }
    g_queue_clear_full(&client->events, put_json);
    json_object_put(client->greeting);
    g_byte_array_unref(client->rbuf);
    g_free(client->path);
    g_free(client);
}

void
mp_qmp_set_timeout(MpQmpClient *client, guint timeout_ms)
{
    client->timeout_ms = timeout_ms;
}

json_object *
mp_qmp_greeting(MpQmpClient *client)
{
    return client->greeting;
}

json_object *
mp_qmp_execute(MpQmpClient *client, const char *command, json_object *args,
               GError **error)
{
    return execute_until(client, command, args,
                         deadline_after(client->timeout_ms), error);
}

json_object *
mp_qmp_next_event(MpQmpClient *client, guint timeout_ms, GError **error)
{
    gint64 deadline = deadline_after(timeout_ms);

    for (;;) {
        GError *err = NULL;
        json_object *msg;

        if (!g_queue_is_empty(&client->events))
            return g_queue_pop_head(&client->events);
        msg = read_message(client, deadline, &err);
        if (msg == NULL) {
            if (g_error_matches(err, MP_QMP_ERROR, MP_QMP_ERROR_TIMEOUT)) {
                g_error_free(err);
                return NULL;
            }
            g_propagate_prefixed_error(error, err, "qmp: waiting for event: ");
            return NULL;
        }
        if (json_object_object_get_ex(msg, "event", NULL))
            return msg;
        /* A reply nobody waits for (its command timed out). */
        json_object_put(msg);
    }
}
