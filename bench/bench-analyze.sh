#!/bin/bash
# bench-analyze.sh: `migproxy analyze` throughput and peak memory against
# `cat` on a >= 2 GB stream captured from QEMU 7.2 (see docs/benchmarks.md).
#
#   bench/bench-analyze.sh [--runs N] [--no-analyze-py] [--json FILE] ...
#
# Builds a release tree in build-bench/ (buildtype=release, so NDEBUG),
# captures the streams once into bench/.cache/ (a few minutes under TCG;
# later runs reuse them; delete the folder to capture again) and runs
# bench/bench-analyze.py, which prints a markdown table.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=$ROOT/build-bench
if [ ! -f "$BUILD/build.ninja" ]; then
    meson setup "$BUILD" "$ROOT" -Dbuildtype=release -Db_ndebug=if-release \
        -Dtests=disabled >&2
fi
ninja -C "$BUILD" src/migproxy samples/workload/workload.elf >&2
exec python3 "$ROOT/bench/bench-analyze.py" --build "$BUILD" "$@"
