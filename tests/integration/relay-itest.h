/* relay-itest.h: what the relay's integration tests share: a `migproxy
 * relay` child process, QEMU pairs set up for a migration through it, and
 * checks against query-migrate and guest memory. */
#pragma once

#include <glib.h>
#include <gio/gio.h>
#include <json-c/json.h>
#include "qemu-process.h"

/* A `migproxy relay --once` child, listening on 127.0.0.1:port and
 * relaying to 127.0.0.1:dst_port.  Files live in `dir`. */
typedef struct {
    GPid pid;
    guint16 port, dst_port;
    char *log;     /* its stderr */
    char *out;     /* its stdout (--metrics -) */
    char *report;  /* --report */
    char *metrics; /* --metrics */
    char *capture; /* --capture */
    int status;    /* waitpid status once exited, else -1 */
} ItRelay;

/* Starts the relay (extra arguments may be NULL) with --once and waits
 * until it listens.  Asserts on failure. */
ItRelay *it_relay_start(const char *dir, guint16 dst_port,
                        const char *const *extra);
/* The same, without --once if `once` is FALSE: it serves until killed. */
ItRelay *it_relay_start_full(const char *dir, guint16 dst_port, gboolean once,
                             const char *const *extra);
/* The same on other addresses: listening on host:port, relaying to
 * dst_host:dst_port, run under `wrapper` (NULL-ended argv put before
 * migproxy's, e.g. `ip netns exec NS`, which execs it: the pid is the
 * relay's) or none (NULL). */
ItRelay *it_relay_start_at(const char *dir, const char *const *wrapper,
                           const char *host, guint16 port,
                           const char *dst_host, guint16 dst_port,
                           gboolean once, const char *const *extra);
/* TRUE once it exited (reaps it; never blocks). */
gboolean it_relay_exited(ItRelay *r);
/* Waits for it to exit; asserts it does within `timeout_ms`.
 * @return its exit code. */
int it_relay_wait(ItRelay *r, guint timeout_ms);
/* Kills it by pid if it still runs, reaps it, frees.  Accepts NULL. */
void it_relay_free(ItRelay *r);
/* @return the --report document (caller owns); asserts it parses and is
 * valid against docs/schema/report.schema.json, and once the relay exited
 * that its --metrics file (if any) is valid against metrics-line's. */
json_object *it_relay_report(ItRelay *r);
/* Session N > 1 reports to report-N.json (docs/relay.md).  @return its
 * path (caller frees). */
char *it_relay_report_path(ItRelay *r, guint session);
/* @return session N's report (caller owns); asserts it parses. */
json_object *it_relay_session_report(ItRelay *r, guint session);
/* @return its stderr so far (caller frees). */
char *it_relay_log_text(ItRelay *r);

/* Waits up to `timeout_ms` for `needle` in its stderr; asserts it comes. */
void it_relay_assert_log_has(ItRelay *r, const char *needle, guint timeout_ms);

/* A client of 127.0.0.1:port from the loopback address `from` (NULL: any;
 * 127.0.0.2 is another host as far as the relay can tell), with a 5 s
 * timeout on each read and write.  Asserts; @return it (caller owns). */
GSocket *it_connect_from(const char *from, guint16 port);
/* it_connect_from(NULL, port). */
GSocket *it_connect_port(guint16 port);
/* Sends all `len` bytes of `buf`; asserts. */
void it_send_all(GSocket *s, const void *buf, gsize len);
/* The relay closes `s`: a read ends (EOF or reset) before the socket's
 * timeout.  `what` names the client in the failure message. */
void it_assert_closed_by_relay(GSocket *s, const char *what);

/* A socket listening on a free loopback port, standing where the relay's
 * destination is so that a test can check nothing ever connects to it.
 * Sets *port.  @return it (caller owns; it_fake_destination_close()). */
GSocket *it_fake_destination(guint16 *port);
/* Asserts that no client is waiting at `fake`. */
void it_assert_no_connection(GSocket *fake);
/* Closes and clears *fake so the real destination can take its port.
 * Accepts *fake == NULL. */
void it_fake_destination_close(GSocket **fake);

/* What a relay test may start; it_relay_fixture_fini() ends all of it
 * (relays and QEMUs by pid, the fake destination, the directory), passed
 * or failed. */
typedef struct {
    MpQemu *src, *dst;
    ItRelay *relay, *relay2;
    GSocket *fake_dst;
    char *dir; /* a new temporary directory */
} ItRelayFixture;
void it_relay_fixture_init(ItRelayFixture *fx);
void it_relay_fixture_fini(ItRelayFixture *fx);

/* migrate-set-parameters `name` = v on `q`; asserts. */
void it_set_int(MpQemu *q, const char *name, gint64 v);
/* Polls query-migrate until its status is `want`; asserts it is within
 * `timeout_ms`. */
void it_wait_status(MpQemu *q, const char *want, guint timeout_ms);
/* Starts post-copy on `src` once its migration is active and `after_ms`
 * passed; asserts the migration did not end before. */
void it_start_postcopy(MpQemu *src, guint after_ms);

/* A destination QEMU with `-incoming defer` (capabilities can be set
 * first), memory 128 MiB, paused (-S) unless `running`. */
MpQemu *it_start_destination(const char *version, const char *machine,
                             gboolean running, const char *const *extra);
/* The same run by `binary` (NULL: the version's own). */
MpQemu *it_start_destination_bin(const char *binary, const char *version,
                                 const char *machine, gboolean running,
                                 const char *const *extra);
/* migrate-incoming tcp:127.0.0.1:port. */
void it_incoming(MpQemu *dst, guint16 port);
/* The capability on `q`; asserts. */
void it_cap(MpQemu *q, const char *cap);
/* migrate tcp:127.0.0.1:port (`blk`: block migration); asserts. */
void it_migrate(MpQemu *src, guint16 port, gboolean blk);
/* migrate to `uri` ("unix:PATH", ...); asserts. */
void it_migrate_uri(MpQemu *src, const char *uri, gboolean blk);
/* QEMU's post-copy recovery, both QEMUs in postcopy-paused:
 * migrate-recover tcp:127.0.0.1:recover_port on `dst`, then migrate
 * tcp:127.0.0.1:resume_port with resume on `src`; asserts both. */
void it_postcopy_recover(MpQemu *src, MpQemu *dst, guint16 recover_port,
                         guint16 resume_port);
/* query-migrate until completed, failed or cancelled; returns the final
 * answer (caller owns), whatever it is. */
json_object *it_wait_final(MpQemu *q, guint timeout_ms);
/* query-migrate's "status" now (caller frees). */
char *it_migration_status(MpQemu *q);
/* query-status' "status" ("running", "paused", ...; caller frees). */
char *it_run_state(MpQemu *q);

/* Object or value at a dotted path, or NULL. */
json_object *it_jget(json_object *doc, const char *path);
/* Number at a dotted path as a double; asserts it exists. */
double it_jnum(json_object *doc, const char *path);

/* pmemsaves the RAM of `a` ([0, 640K) and [1M, ram)) and asserts that
 * `b`'s is the same. */
void it_assert_same_ram(MpQemu *a, MpQemu *b, guint64 ram_bytes,
                        const char *tmpdir);

/* A real migration through `r` (started with --once) after strangers
 * were refused: QEMU 7.2, a 128 MiB workload guest, to a destination on
 * `dport`.  Asserts the source completed, the relay exited 0 and the
 * destination's memory is the source's.  *src and *dst are the caller's
 * to free (a fixture's, so that a failed assertion still cleans up). */
void it_relay_migrate_72(ItRelay *r, guint16 dport, MpQemu **src,
                         MpQemu **dst, const char *dir);
