#!/bin/bash
# bench-pair.sh: QEMU direct, xbzrle, multifd with zstd and the pair
# (`migproxy source` + `migproxy dest`) over a veth link shaped with tbf to
# 100 Mbit/s and 1 Gbit/s, for the sample guest dirtying compressible or
# random pages and for the Linux guest (issue 10, item 10; see
# docs/benchmarks.md, "The pair over a shaped link").  Needs root.
#
#   bench/bench-pair.sh [--rates 100mbit,1gbit] [--workloads comp,rand,linux,linux-text]
#                       [--modes direct,xbzrle,multifd-zstd,pair,pair-before]
#                       [--before-migproxy PATH] [--runs 3]
#                       [--json FILE] [--keep-net] ...
#
# Builds migproxy and the workload guest (scripts/setup.sh, the build/
# folder), the Linux guest when the linux workload is asked for
# (samples/linux-guest/build.sh, cached) and fetches QEMU 10.0
# (scripts/fetch-qemu10.sh, cached) unless --qemu 7.2; then runs
# bench/bench-pair.py, which prints markdown tables on stdout and progress
# on stderr.  All options are that script's (--help).  The namespaces are
# MP_NS_SRC/MP_NS_DST (default mpt-src/mpt-dst) on MP_NET_PREFIX.0/24
# (default 10.254.7), so that the benchmark does not take another one's
# link (bench-postcopy.sh uses mp-src/mp-dst).
#
# Cleanup: the Python script ends what it started by pid and takes the
# namespaces down; the trap of bench/run-python.sh is the second line, for
# a Python script that was killed: it ends every process recorded in the
# pid file whose start time still matches (so a reused pid is never hit),
# then runs scripts/netns-link.sh down (unless --keep-net).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

[[ $(id -u) == 0 ]] || { echo "bench-pair: needs root (ip netns, tc)" >&2; exit 1; }
export MP_NS_SRC=${MP_NS_SRC:-mpt-src}
export MP_NS_DST=${MP_NS_DST:-mpt-dst}
export MP_NET_PREFIX=${MP_NET_PREFIX:-10.254.7}

keep_net=0
qemu=10.0
workloads=comp,rand,linux,linux-text
prev=
for a in "$@"; do
    case $a in
    --keep-net) keep_net=1 ;;
    --qemu=*) qemu=${a#*=} ;;
    --workloads=*) workloads=${a#*=} ;;
    esac
    [[ $prev == --qemu ]] && qemu=$a
    [[ $prev == --workloads ]] && workloads=$a
    prev=$a
done

"$ROOT/scripts/setup.sh" >&2
extra=()
if [[ ,$workloads, == *,linux,* || ,$workloads, == *,linux-text,* ]]; then
    extra=(--linux-guest "$("$ROOT/samples/linux-guest/build.sh")")
fi
if [[ $qemu == 10.0 ]]; then
    "$ROOT/scripts/fetch-qemu10.sh" >&2
fi

. "$ROOT/bench/run-python.sh"
rc=0
bench_run_python bench-pair $((1 - keep_net)) "$ROOT/bench/bench-pair.py" \
    "${extra[@]}" "$@" || rc=$?
exit "$rc"
