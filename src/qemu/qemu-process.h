/* qemu-process.h: start, drive over QMP and stop a real QEMU (x86_64, TCG).
 *
 * Two QEMUs are known:
 *   "7.2"   /usr/bin/qemu-system-x86_64 (Debian bookworm's package)
 *   "10.0"  <prefix>/usr/bin/qemu-system-x86_64, unpacked from
 *           bookworm-backports by scripts/fetch-qemu10.sh; <prefix> is
 *           $MP_QEMU10_PREFIX or <source root>/.qemu/10.0.  It is run as
 *           scripts/qemu10 runs it, with
 *             QEMU_MODULE_DIR=<prefix>/usr/lib/<triplet>/qemu
 *             -L <prefix>/usr/share/qemu -L <prefix>/usr/share/seabios
 *
 * Every QEMU gets a private directory (g_dir_make_tmp) holding its QMP
 * socket, its debug console (isa-debugcon, port 0xe9 by default) and its
 * stdout/stderr, and always runs with
 *   -accel tcg -display none -nodefaults -no-user-config
 * It is started with PR_SET_PDEATHSIG=SIGKILL, so it dies with the thread
 * that started it, even if that one is killed before mp_qemu_free().
 *
 * Errors name the QEMU and what was being done, e.g.
 *   "qemu 10.0 (dst): waiting for migration: qmp: query-migrate: CLASS: DESC"
 */
#pragma once

#include <glib.h>
#include <json-c/json.h>

#include "qmp-client.h"

G_BEGIN_DECLS

#define MP_QEMU_ERROR (mp_qemu_error_quark())

typedef enum {
    MP_QEMU_ERROR_NOT_INSTALLED, /* binary missing: see the message */
    MP_QEMU_ERROR_CONFIG,        /* unknown version, bad argument */
    MP_QEMU_ERROR_START,         /* spawn or QMP connection failed */
    MP_QEMU_ERROR_EXITED,        /* QEMU exited while we waited on it */
    MP_QEMU_ERROR_TIMEOUT,       /* the awaited condition never came */
    MP_QEMU_ERROR_MIGRATION,     /* migration ended failed or cancelled */
    MP_QEMU_ERROR_IO,            /* local files: console, pmemsave output */
} MpQemuErrorCode;

GQuark mp_qemu_error_quark(void);

/* Zero-initialised is valid: QEMU 7.2, pc-q35-7.2, 128 MiB, running. */
typedef struct {
    const char *version;       /* "7.2" (NULL) or "10.0" */
    const char *label;         /* in messages: "qemu 7.2 (src)"; NULL: none */
    const char *binary;        /* instead of the version's binary; NULL: none */
    const char *qemu10_prefix; /* NULL: $MP_QEMU10_PREFIX or
                                * MP_SOURCE_ROOT/.qemu/10.0 */
    const char *machine;       /* NULL: "pc-q35-<version>" */
    guint memory_mib;          /* 0: 128 */
    const char *kernel;        /* -kernel; NULL: none, the firmware idles */
    const char *initrd;        /* -initrd; NULL: none */
    const char *append;        /* -append; NULL: none */
    gboolean paused;           /* -S */
    const char *incoming;      /* -incoming URI; NULL: none */
    guint debugcon_iobase;     /* isa-debugcon port; 0: 0xe9 */
    const char *const *extra_args; /* NULL-terminated, appended last */
    guint start_timeout_ms;        /* until QMP answers; 0: 30000 */
} MpQemuConfig;

typedef struct MpQemu MpQemu;

/* Starts QEMU as @cfg says and connects to its QMP socket.
 * @cfg: read during the call only.
 * @return the running QEMU (stop with mp_qemu_free()), or NULL with
 * @error set; if QEMU exited at once its stderr is quoted.
 */
MpQemu *mp_qemu_start(const MpQemuConfig *cfg, GError **error);

/* Asks QEMU to quit over QMP, gives it 3 s, then SIGKILLs it by pid,
 * reaps it and deletes its private directory.  Accepts NULL.
 */
void mp_qemu_free(MpQemu *q);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(MpQemu, mp_qemu_free)

/* Whether @version's binary is there; if not, @error says how to get it
 * (for 10.0: "run scripts/fetch-qemu10.sh").
 * @prefix: the 10.0 prefix, NULL for the default.
 */
gboolean mp_qemu_available(const char *version, const char *prefix,
                           GError **error);

/* Default 10.0 prefix: $MP_QEMU10_PREFIX or MP_SOURCE_ROOT/.qemu/10.0.
 * @return newly allocated.
 */
char *mp_qemu_default_prefix(void);

/* @return borrowed, valid until mp_qemu_free(). */
MpQmpClient *mp_qemu_qmp(MpQemu *q);
/* "qemu 7.2 (src)": borrowed. */
const char *mp_qemu_name(MpQemu *q);
GPid mp_qemu_pid(MpQemu *q);
/* Private directory, deleted by mp_qemu_free(): borrowed. */
const char *mp_qemu_dir(MpQemu *q);
/* File the debug console writes to: borrowed. */
const char *mp_qemu_console_path(MpQemu *q);

/* Whether QEMU has exited (reaps it if so; never blocks).
 * @wait_status: if not NULL and exited, the waitpid() status.
 */
gboolean mp_qemu_exited(MpQemu *q, int *wait_status);

/* mp_qmp_execute() with the QEMU's name in the error and, if QEMU died,
 * its exit status and stderr.
 * @args: caller keeps ownership.  @return caller owns.
 */
json_object *mp_qemu_execute(MpQemu *q, const char *command, json_object *args,
                             GError **error);

/* Waits until @substring appears in the debug console output (from the
 * start), polling every 20 ms.  Fails early if QEMU exits.
 */
gboolean mp_qemu_wait_console(MpQemu *q, const char *substring,
                              guint timeout_ms, GError **error);

/* migrate-set-capabilities with one capability ("xbzrle", "multifd" ...). */
gboolean mp_qemu_set_capability(MpQemu *q, const char *capability, gboolean on,
                                GError **error);
/* migrate-set-parameters with one integer parameter ("max-bandwidth"). */
gboolean mp_qemu_set_parameter_int(MpQemu *q, const char *name, gint64 value,
                                   GError **error);
/* migrate-set-parameters with one string parameter. */
gboolean mp_qemu_set_parameter_str(MpQemu *q, const char *name,
                                   const char *value, GError **error);

/* Starts an outgoing migration ("migrate" {"uri": @uri}); returns at once. */
gboolean mp_qemu_migrate(MpQemu *q, const char *uri, GError **error);

/* Polls query-migrate every 50 ms until its status is completed, failed
 * or cancelled (works on both sides: the destination reports its incoming
 * migration).  Fails early if QEMU exits.
 * @final_info: if not NULL, gets the last query-migrate reply (caller
 * owns) whenever a final status was reached, even a failed one.
 * @return TRUE only for "completed".
 */
gboolean mp_qemu_wait_migration(MpQemu *q, guint timeout_ms,
                                json_object **final_info, GError **error);

/* Saves guest-physical [@addr, @addr + @size) to @path and checks that
 * the file has @size bytes; QMP pmemsave replies once the file is written
 * and closed, so it is complete on return.
 * @path: a relative one is made absolute against our working directory
 * (QEMU would resolve it against its own).
 */
gboolean mp_qemu_pmemsave(MpQemu *q, guint64 addr, guint64 size,
                          const char *path, GError **error);

/* A TCP port free on 127.0.0.1 right now (bind port 0, read, close), for
 * "-incoming tcp:127.0.0.1:PORT".  Another process may take it before
 * QEMU does; on loopback in a test that has not been seen.
 * @return the port, or 0 with @error set.
 */
guint16 mp_qemu_pick_free_port(GError **error);

G_END_DECLS
