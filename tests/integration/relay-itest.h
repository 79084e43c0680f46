/* relay-itest.h: what the relay's integration tests share: a `migproxy
 * relay` child process, QEMU pairs set up for a migration through it, and
 * checks against query-migrate and guest memory. */
#pragma once

#include <glib.h>
#include <json-c/json.h>
#include "qemu-process.h"

/* A `migproxy relay --once` child, listening on 127.0.0.1:port and
 * relaying to 127.0.0.1:dst_port.  Files live in `dir`. */
typedef struct {
    GPid pid;
    guint16 port, dst_port;
    char *log;     /* its stderr */
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
/* TRUE once it exited (reaps it; never blocks). */
gboolean it_relay_exited(ItRelay *r);
/* Waits for it to exit; asserts it does within `timeout_ms`.
 * @return its exit code. */
int it_relay_wait(ItRelay *r, guint timeout_ms);
/* Kills it by pid if it still runs, reaps it, frees.  Accepts NULL. */
void it_relay_free(ItRelay *r);
/* @return the --report document (caller owns); asserts it parses. */
json_object *it_relay_report(ItRelay *r);
/* Session N > 1 reports to report-N.json (docs/relay.md).  @return its
 * path (caller frees). */
char *it_relay_report_path(ItRelay *r, guint session);
/* @return session N's report (caller owns); asserts it parses. */
json_object *it_relay_session_report(ItRelay *r, guint session);
/* @return its stderr so far (caller frees). */
char *it_relay_log_text(ItRelay *r);

/* A destination QEMU with `-incoming defer` (capabilities can be set
 * first), memory 128 MiB, paused (-S) unless `running`. */
MpQemu *it_start_destination(const char *version, const char *machine,
                             gboolean running, const char *const *extra);
/* migrate-incoming tcp:127.0.0.1:port. */
void it_incoming(MpQemu *dst, guint16 port);
/* The capability on `q`; asserts. */
void it_cap(MpQemu *q, const char *cap);
/* migrate tcp:127.0.0.1:port (`blk`: block migration); asserts. */
void it_migrate(MpQemu *src, guint16 port, gboolean blk);
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
