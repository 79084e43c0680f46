#!/bin/bash
# bench-relay.sh: what `migproxy relay` costs (issue 3, item 8; see
# docs/benchmarks.md, "Relay overhead").  One run measures both:
#   live    real live migrations on loopback (QEMU 7.2, TCG, the workload
#           guest, 512 MiB), direct, through the relay (as it runs by
#           default, and plain: parsing only), through socat and through
#           bench/splice-forward.c (the cheapest middle: splice(), no
#           parsing), alternated: migration time, the relay's CPU per GB
#           and memory;
#   stream  a captured >= 2 GB stream pushed through the relay, through
#           socat and straight into a sink: GB/s, CPU per GB, peak RSS.
#
#   bench/bench-relay.sh [--rev REV] [--runs 8] [--stream-runs 5]
#                        [--parts live,stream] [--json FILE] [--keep] ...
#
# Builds a release tree in build-bench/ (as bench-analyze.sh does) from the
# working tree, or with --rev REV (first argument) from that commit alone
# (git archive into bench/.cache/rev-HASH/, built there): the relay of a
# commit, whatever is being edited in the working tree.  Then it reuses
# or captures bench/.cache/long-7.2.mig (bench-analyze's long stream), and
# runs bench/bench-relay.py, which prints markdown tables on stdout and
# progress on stderr.  All options are that script's (--help).  About 4 to
# 6 minutes with the defaults (2 cores), plus the build and, once, the
# capture.
#
# Cleanup: the Python script ends what it started by pid; the trap of
# bench/run-python.sh is the second line, for a Python script that was
# killed: it ends every process recorded in the pid file whose start time
# still matches (so a reused pid is never hit).  Ports are held only by
# those processes.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=$ROOT/build-bench
SRC=$ROOT
rev_args=()

command -v socat >/dev/null || { echo "bench-relay: needs socat" >&2; exit 1; }
if [[ ${1:-} == --rev ]]; then
    hash=$(git -C "$ROOT" rev-parse --verify "${2:?--rev needs a commit}^{commit}")
    shift 2
    SRC=$ROOT/bench/.cache/rev-${hash:0:12}/src
    BUILD=$ROOT/bench/.cache/rev-${hash:0:12}/build
    if [ ! -f "$SRC/meson.build" ]; then
        rm -rf "$SRC"
        mkdir -p "$SRC"
        git -C "$ROOT" archive "$hash" | tar -x -C "$SRC"
    fi
    rev_args=(--commit "$hash")
fi
if [ ! -f "$BUILD/build.ninja" ]; then
    meson setup "$BUILD" "$SRC" -Dbuildtype=release -Db_ndebug=if-release \
        -Dtests=disabled >&2
fi
ninja -C "$BUILD" src/migproxy samples/workload/workload.elf >&2
# the reference middle (splice, no parsing), always from this tree
mkdir -p "$BUILD/bench"
cc -O2 -Wall -o "$BUILD/bench/splice-forward" "$ROOT/bench/splice-forward.c"

. "$ROOT/bench/run-python.sh"
rc=0
bench_run_python bench-relay 0 "$ROOT/bench/bench-relay.py" \
    --build "$BUILD" "${rev_args[@]}" "$@" || rc=$?
exit "$rc"
