#!/bin/bash
# bench-statefiles.sh: `migproxy analyze` (summary and --dump-ram) on the
# state files of a 2 GB guest, a libvirt save image and a mapped-ram file,
# against `cat` on the same files (issue 12, item 7; docs/benchmarks.md).
#
#   bench/bench-statefiles.sh [--runs N] [--json FILE]
#
# Builds a release tree in build-bench/ (as bench-analyze.sh does), makes
# the two files once from one QEMU 10.0 guest into bench/.cache/ (minutes
# under TCG; later runs reuse them; delete them to make them again) and
# runs bench/bench-statefiles.py, which prints a markdown table.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=$ROOT/build-bench
if [ ! -f "$BUILD/build.ninja" ]; then
    meson setup "$BUILD" "$ROOT" -Dbuildtype=release -Db_ndebug=if-release \
        -Dtests=disabled >&2
fi
ninja -C "$BUILD" src/migproxy samples/workload/workload.elf >&2
exec python3 "$ROOT/bench/bench-statefiles.py" --build "$BUILD" "$@"
