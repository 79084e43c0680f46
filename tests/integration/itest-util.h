/* itest-util.h: what the real-QEMU integration tests share. */
#pragma once

#include <glib.h>
#include <json-c/json.h>
#include "qemu-process.h"
#include "../unit/test-util.h"

/* TRUE in a build with AddressSanitizer (scripts/test.sh's build-asan):
 * its shadow memory and quarantine make a process's RSS ASan's, so
 * memory bounds are checked in the plain build only. */
#if defined(__SANITIZE_ADDRESS__)
#define IT_ASAN TRUE
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define IT_ASAN TRUE
#endif
#endif
#ifndef IT_ASAN
#define IT_ASAN FALSE
#endif

#define IT_LOW_RAM_END    0xa0000u  /* RAM below the VGA window */
#define IT_HIGH_RAM_START 0x100000u /* RAM above the BIOS area */

/* Paths given by meson through the environment. */
const char *it_migproxy(void);    /* MP_MIGPROXY */
const char *it_workload(void);    /* MP_WORKLOAD: the workload guest */

/* tcpdump -i lo writing `file` for packets matching `filter`, its stderr
 * (where it says it listens, and what the kernel dropped) in `log`;
 * returns once it listens.  @return its pid for it_tcpdump_stop(). */
GPid it_tcpdump_start(const char *file, const char *filter, const char *log);
/* Stops the tcpdump *pid (0 after; accepts 0) once `file` stopped
 * growing: tcpdump stops at SIGINT without reading what its ring still
 * holds, and a CPU-starved tcpdump lags behind the migration. */
void it_tcpdump_stop(GPid *pid, const char *file);

/* `cmd` run by /bin/sh, its stderr going to `log`; returns its pid once
 * `log` holds `ready`.  Asserts that it does within `timeout_s` and that
 * the command does not exit first. */
GPid it_spawn_until(const char *cmd, const char *log, const char *ready,
                    guint timeout_s);

/* A new temporary directory; tu_remove_tree() (test-util.h) deletes it. */
char *it_tmpdir(void);

/* Starts a QEMU running the workload guest with `append` and waits for
 * its READY line.  Asserts on failure. */
MpQemu *it_start_workload(const char *version, const char *machine,
                          guint mem_mib, const char *append,
                          const char *const *extra_args);
/* The same run by `binary` (NULL: the version's own; a wrapper such as
 * it_netlink_qemu()'s). */
MpQemu *it_start_workload_bin(const char *binary, const char *version,
                              const char *machine, guint mem_mib,
                              const char *append,
                              const char *const *extra_args);

/* Two network namespaces of this process joined by a veth pair shaped
 * to `rate` (tc's syntax) each way, TCP cubic on its route:
 * scripts/netns-link.sh up with names and a /24 of this pid's, so that
 * it runs beside a benchmark's or another test's.  Skips the test when
 * not root.  it_netlink_down() removes both (their processes first). */
typedef struct {
    char *ns_src, *ns_dst;     /* namespace names */
    char *addr_src, *addr_dst; /* the veth ends' addresses */
    char *dir;                 /* where the QEMU wrappers go */
} ItNetLink;
ItNetLink *it_netlink_up(const char *rate, const char *dir);
void it_netlink_down(ItNetLink *l); /* accepts NULL */
/* A script that runs `version`'s QEMU in the source's (`dst` FALSE) or
 * the destination's namespace, for MpQemuConfig.binary (`ip netns exec`
 * execs it: the pid is QEMU's).  @return its path (caller frees). */
char *it_netlink_qemu(ItNetLink *l, gboolean dst, const char *version);

/* Runs `migproxy analyze --json -q [--dump-ram DIR] FILE`; asserts the
 * exit status is 0 and the output is valid against
 * docs/schema/analyze.schema.json, and returns the document (caller
 * owns). */
json_object *it_analyze(const char *stream, const char *dump_dir);

/* Runs tests/validate-json.py: `path` (one JSON document, or one a line
 * with `lines`) must be valid against docs/schema/`schema`.schema.json
 * (report, metrics-line, analyze); asserts, with the validator's errors. */
void it_validate_json(const char *schema, const char *path, gboolean lines);

/* Integer at a dotted path ("ram.pages.normal"); asserts it exists. */
gint64 it_jint(json_object *doc, const char *path);

/* pmemsaves guest RAM of `q` ([0, 640K) and [1M, ram_bytes)) and asserts
 * it equals the same ranges of `image` (a --dump-ram pc.ram file). */
void it_assert_ram_equals(MpQemu *q, const char *image, guint64 ram_bytes,
                          const char *tmpdir);
