#!/bin/bash
# bench-postcopy-relay.sh: post-copy blocked time per request direct, with
# postcopy-preempt, and through `migproxy relay` without and with its
# priority lane, in one run (issue 3, item 5; docs/benchmarks.md).  Needs
# root.  Each round runs every configuration once, in turn, so that a noisy
# machine hits them alike; the table gives medians over the rounds.
#
#   bench/bench-postcopy-relay.sh [--rounds 3] [--qemu 10.0,7.2]
#                                 [--rate 95mbit] [--queue 1G] [--out DIR]
#                                 [--labels direct,relay,relay-prio]
#                                 [--before BIN]
#
# Configurations (each with and without postcopy-preempt):
#   direct      source -> destination over the shaped link
#   relay       through the relay in the source namespace, --no-priority
#   relay-prio  through the relay with --rate RATE --queue SIZE (priority)
#   relay-auto  through the relay with no options (priority, the queue
#               sized from the guest's RAM, the pace from the measured rate)
#   before      as relay-auto, with the binary given by --before BIN (an
#               older build), so that a change is measured against its
#               parent in the same rounds
# Everything else is bench/bench-postcopy.sh's (link 100 Mbit/s, Linux
# guest 512 MiB, post-copy after 2 s).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
rounds=3 qemus=10.0,7.2 rate=95mbit queue=1G out= labels=direct,relay,relay-prio
before=
while [[ $# -gt 0 ]]; do
    case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --qemu) qemus=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --queue) queue=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --labels) labels=$2; shift 2 ;;
    --before) before=$(realpath "$2"); shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "bench-postcopy-relay: unknown option $1" >&2; exit 2 ;;
    esac
done
out=${out:-$(mktemp -d /tmp/bench-postcopy-relay.XXXXXX)}
mkdir -p "$out"
ninja -C "$ROOT/build" src/migproxy >&2
MIGPROXY=$ROOT/build/src/migproxy
relay_args="relay --listen {listen_host}:{listen_port} --to {to_host}:{to_port} --once --quiet --report {run_dir}/report.json"
relay="$MIGPROXY $relay_args"
if [[ $labels == *before* && -z $before ]]; then
    echo "bench-postcopy-relay: the label 'before' needs --before BIN" >&2
    exit 2
fi

for ((i = 0; i < rounds; i++)); do
    for q in ${qemus//,/ }; do
        for label in ${labels//,/ }; do
            args=(--qemu "$q" --cases plain,preempt --runs 1 --label "$label"
                  --json "$out/$q-$label-$i.json")
            case $label in
            relay) args+=(--relay "$relay --no-priority") ;;
            relay-prio) args+=(--relay "$relay --rate $rate --queue $queue") ;;
            relay-auto) args+=(--relay "$relay") ;;
            before) args+=(--relay "$before $relay_args") ;;
            esac
            echo "bench-postcopy-relay: round $((i + 1))/$rounds, QEMU $q, $label" >&2
            "$ROOT/bench/bench-postcopy.sh" "${args[@]}" >/dev/null \
                2>>"$out/progress.log" || echo "bench-postcopy-relay: $q $label round $i failed (see $out/progress.log)" >&2
        done
    done
done

python3 - "$ROOT/bench/bench-postcopy.py" "$out" <<'PY'
import glob, importlib.util, json, sys
spec = importlib.util.spec_from_file_location("bp", sys.argv[1])
bp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bp)
results = []
for path in sorted(glob.glob(sys.argv[2] + "/*.json")):
    results += json.load(open(path))
order = {"direct": 0, "relay": 1, "relay-prio": 2, "before": 3,
         "relay-auto": 4}
results.sort(key=lambda r: (r["qemu"], order.get(r["label"], 9), r["preempt"]))
print(bp.table(results))
PY
echo "bench-postcopy-relay: results in $out" >&2
