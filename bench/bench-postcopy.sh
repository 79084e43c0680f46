#!/bin/bash
# bench-postcopy.sh: vCPU time blocked per post-copy page request, with the
# Linux guest (512 MiB) migrating between two network namespaces over a
# veth link shaped to 100 Mbit/s (see docs/benchmarks.md, "Post-copy
# blocked time per request").  Needs root.
#
#   bench/bench-postcopy.sh [--qemu 7.2,10.0] [--cases plain,preempt]
#                           [--runs 3] [--json FILE] [--keep] ...
#   bench/bench-postcopy.sh --relay 'build/src/migproxy relay
#       --listen {listen_host}:{listen_port} --to {to_host}:{to_port}'
#
# Builds the guest (samples/linux-guest/build.sh, cached), fetches QEMU 10.0
# (scripts/fetch-qemu10.sh, cached) when 10.0 is asked for, and runs
# bench/bench-postcopy.py, which prints a markdown table on stdout and
# progress on stderr.  All options are that script's (--help).
#
# Cleanup: the Python script ends what it started by pid and takes the
# namespaces down; the trap of bench/run-python.sh is the second line, for
# a Python script that was killed: it ends every process recorded in the
# pid file whose start time still matches (so a reused pid is never hit),
# then runs scripts/netns-link.sh down (unless --keep-net).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

[[ $(id -u) == 0 ]] || { echo "bench-postcopy: needs root (ip netns, tc)" >&2; exit 1; }

keep_net=0
qemus=7.2,10.0
prev=
for a in "$@"; do
    case $a in
    --keep-net) keep_net=1 ;;
    --qemu=*) qemus=${a#*=} ;;
    esac
    [[ $prev == --qemu ]] && qemus=$a
    prev=$a
done

GUEST=$("$ROOT/samples/linux-guest/build.sh")
if [[ ,$qemus, == *,10.0,* ]]; then
    "$ROOT/scripts/fetch-qemu10.sh"
fi

. "$ROOT/bench/run-python.sh"
rc=0
bench_run_python bench-postcopy $((1 - keep_net)) "$ROOT/bench/bench-postcopy.py" \
    --guest "$GUEST" "$@" || rc=$?
exit "$rc"
