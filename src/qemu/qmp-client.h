/* qmp-client.h: synchronous QMP client over a unix socket.
 *
 * Spec: QEMU docs/interop/qmp-spec.rst.  Every message is one JSON object
 * on one line ("\r\n"-terminated, QEMU never pretty-prints on a socket):
 *
 *   server: {"QMP": {"version": {...}, "capabilities": [...]}}   greeting
 *   client: {"execute": "qmp_capabilities"}                      -> command
 *   client: {"execute": CMD, "arguments": {...}, "id": "mp-N"}
 *   server: {"return": VALUE, "id": "mp-N"}
 *         | {"error": {"class": CLASS, "desc": TEXT}, "id": "mp-N"}
 *         | {"event": NAME, "data": {...}, "timestamp": {...}}    any time
 *
 * Events that arrive while a reply is awaited are queued in arrival order
 * and handed out by mp_qmp_next_event().  Every read has a deadline: no
 * call blocks longer than its timeout.  Not thread-safe: one client, one
 * thread.
 */
#pragma once

#include <glib.h>
#include <json-c/json.h>

G_BEGIN_DECLS

#define MP_QMP_ERROR (mp_qmp_error_quark())

typedef enum {
    MP_QMP_ERROR_CONNECT,  /* socket never accepted before the deadline */
    MP_QMP_ERROR_TIMEOUT,  /* no reply before the deadline */
    MP_QMP_ERROR_CLOSED,   /* QEMU closed the socket (quit, crash) */
    MP_QMP_ERROR_PROTOCOL, /* not JSON, no greeting, oversized line ... */
    MP_QMP_ERROR_IO,       /* send/receive failed */
    /* QEMU answered {"error": ...}; one code per QMP error class. */
    MP_QMP_ERROR_GENERIC,           /* GenericError */
    MP_QMP_ERROR_COMMAND_NOT_FOUND, /* CommandNotFound */
    MP_QMP_ERROR_DEVICE_NOT_FOUND,  /* DeviceNotFound */
    MP_QMP_ERROR_DEVICE_NOT_ACTIVE, /* DeviceNotActive */
    MP_QMP_ERROR_KVM_MISSING_CAP,   /* KVMMissingCap */
} MpQmpErrorCode;

GQuark mp_qmp_error_quark(void);

/* Default deadline of mp_qmp_execute(), in milliseconds. */
#define MP_QMP_DEFAULT_TIMEOUT_MS 30000

typedef struct MpQmpClient MpQmpClient;

/* Connects to the QMP server listening on @socket_path, retrying until
 * @timeout_ms has passed (QEMU creates the socket a moment after it
 * starts), reads the greeting and negotiates capabilities.
 * @return a new client (free with mp_qmp_free()), or NULL with @error set.
 */
MpQmpClient *mp_qmp_connect(const char *socket_path, guint timeout_ms,
                            GError **error);

/* Same, but makes a single attempt to connect: for callers that run their
 * own retry loop (e.g. to notice that QEMU has exited meanwhile).  The
 * greeting and capabilities still get @timeout_ms.
 */
MpQmpClient *mp_qmp_connect_once(const char *socket_path, guint timeout_ms,
                                 GError **error);

/* Closes the socket and frees queued events.  Accepts NULL. */
void mp_qmp_free(MpQmpClient *client);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpQmpClient, mp_qmp_free)

/* Deadline of each later mp_qmp_execute(); MP_QMP_DEFAULT_TIMEOUT_MS at
 * first.
 */
void mp_qmp_set_timeout(MpQmpClient *client, guint timeout_ms);

/* The greeting's "QMP" object ({"version": ..., "capabilities": ...}).
 * @return borrowed: valid until mp_qmp_free().
 */
json_object *mp_qmp_greeting(MpQmpClient *client);

/* Runs @command with @args (a JSON object, or NULL for none; the caller
 * keeps ownership) and waits for its reply, queueing events on the way.
 * @return the reply's "return" value (an empty object for commands that
 * return nothing; the caller owns it: json_object_put()), or NULL with
 * @error set: a QEMU error carries its class in the code and
 * "qmp: COMMAND: CLASS: DESC" in the message.
 */
json_object *mp_qmp_execute(MpQmpClient *client, const char *command,
                            json_object *args, GError **error);

/* Pops the oldest queued event, or waits up to @timeout_ms (0: do not
 * wait) for one to arrive.
 * @return the whole event message ({"event": NAME, "data": ..., ...}; the
 * caller owns it), or NULL: with @error set if the connection failed,
 * without if no event came in time.
 */
json_object *mp_qmp_next_event(MpQmpClient *client, guint timeout_ms,
                               GError **error);

G_END_DECLS
