#!/bin/bash
# bench-postcopy-pair.sh: post-copy blocked time per page request direct,
# through `migproxy relay` and through the pair (`migproxy source` in the
# source namespace, `migproxy dest` in the destination's, the tunnel over
# the shaped link), in one run (issue 10 item 4; docs/benchmarks.md).
# Needs root.  Each round runs every configuration once, in turn, so that
# a noisy machine hits them alike; the table gives medians over the rounds.
#
#   bench/bench-postcopy-pair.sh [--rounds 2] [--qemu 10.0] [--out DIR]
#                                [--cases plain,preempt]
#                                [--labels direct,relay,pair]
#                                [--before BIN]
#
# Configurations, all with no options of migproxy:
#   direct   source -> destination over the shaped link
#   relay    through `migproxy relay` in the source namespace
#   pair     source -> migproxy source ==tunnel==> migproxy dest -> dest
#   pair-nolift  as pair, `migproxy source --no-lift` (requested pages
#            not lifted into the tunnel's urgent lane)
#   relay-unix  as relay, the source QEMU migrating to `migproxy relay
#            --listen unix:PATH`
#   pair-unix  as pair, the source QEMU migrating to `migproxy source
#            --listen unix:PATH` (migrate unix:PATH)
#   before   as pair, both ends run by BIN (an older build), so that a
#            change is measured against its parent in the same rounds
#   before-unix  as pair-unix, both ends run by BIN
# Everything else is bench/bench-postcopy.sh's (link 100 Mbit/s, Linux
# guest 512 MiB, post-copy after 2 s).  The namespaces are mpp-src and
# mpp-dst (10.253.7.0/24) unless MP_NS_SRC, MP_NS_DST, MP_NET_PREFIX say
# otherwise, so that this runs beside bench-postcopy-relay.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
rounds=2 qemus=10.0 out= labels=direct,relay,pair cases=plain,preempt
before=
while [[ $# -gt 0 ]]; do
    case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --qemu) qemus=$2; shift 2 ;;
    --cases) cases=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --labels) labels=$2; shift 2 ;;
    --before) before=$(realpath "$2"); shift 2 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "bench-postcopy-pair: unknown option $1" >&2; exit 2 ;;
    esac
done
export MP_NS_SRC=${MP_NS_SRC:-mpp-src} MP_NS_DST=${MP_NS_DST:-mpp-dst}
export MP_NET_PREFIX=${MP_NET_PREFIX:-10.253.7}
out=${out:-$(mktemp -d /tmp/bench-postcopy-pair.XXXXXX)}
mkdir -p "$out"
ninja -C "$ROOT/build" src/migproxy >&2
MIGPROXY=${MIGPROXY:-$ROOT/build/src/migproxy}
if [[ $labels == *before* && -z $before ]]; then
    echo "bench-postcopy-pair: the label 'before' needs --before BIN" >&2
    exit 2
fi
relay="$MIGPROXY relay --listen {listen_host}:{listen_port} --to {to_host}:{to_port} --once --quiet --report {run_dir}/report.json"
src_args="source --listen {listen_host}:{listen_port} --peer {tunnel_host}:{tunnel_port} --once --no-progress --report {run_dir}/report.json"
dst_args="dest --listen {listen_host}:{tunnel_port} --to {to_host}:{to_port} --allow {src_host} --once --report {run_dir}/dest.json"

for ((i = 0; i < rounds; i++)); do
    for q in ${qemus//,/ }; do
        for label in ${labels//,/ }; do
            args=(--qemu "$q" --cases "$cases" --runs 1 --label "$label"
                  --json "$out/$q-$label-$i.json" --keep
                  --run-dir "$out/runs/$q-$label-$i")
            case $label in
            relay) args+=(--relay "$relay") ;;
            relay-unix) args+=(--relay "${relay/'{listen_host}:{listen_port}'/'unix:{listen_unix}'}") ;;
            pair) args+=(--relay "$MIGPROXY $src_args"
                         --dest-cmd "$MIGPROXY $dst_args") ;;
            pair-nolift) args+=(--relay "$MIGPROXY $src_args --no-lift"
                                --dest-cmd "$MIGPROXY $dst_args") ;;
            pair-unix) args+=(--relay "$MIGPROXY ${src_args/'{listen_host}:{listen_port}'/'unix:{listen_unix}'}"
                              --dest-cmd "$MIGPROXY $dst_args") ;;
            before) args+=(--relay "$before $src_args"
                           --dest-cmd "$before $dst_args") ;;
            before-unix) args+=(--relay "$before ${src_args/'{listen_host}:{listen_port}'/'unix:{listen_unix}'}"
                                --dest-cmd "$before $dst_args") ;;
            esac
            echo "bench-postcopy-pair: round $((i + 1))/$rounds, QEMU $q, $label" >&2
            "$ROOT/bench/bench-postcopy.sh" "${args[@]}" >/dev/null \
                2>>"$out/progress.log" || echo "bench-postcopy-pair: $q $label round $i failed (see $out/progress.log)" >&2
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
    # (each file is one round: $q-$label-$round.json)
    rnd = int(path.rsplit("-", 1)[1].split(".")[0])
    results += [dict(r, round=rnd) for r in json.load(open(path))]
order = {"direct": 0, "relay": 1, "before": 2, "pair-nolift": 3, "pair": 4, "pair-unix": 5, "relay-unix": 6}
results.sort(key=lambda r: (r["qemu"], order.get(r["label"], 9), r["preempt"]))
print(bp.table(results))
# ratios of each round's pair to its direct and relay runs
for r in results:
    if r["label"] == "pair" and r.get("ms_per_request"):
        peers = {x["label"]: x.get("ms_per_request") for x in results
                 if x["round"] == r["round"] and x["qemu"] == r["qemu"]
                 and x["preempt"] == r["preempt"]}
        print(f"round {r['round'] + 1}, {r['qemu']}"
              f"{' preempt' if r['preempt'] else ''}: pair "
              f"{r['ms_per_request']} ms/request; "
              + ", ".join(f"{k} {v}" for k, v in sorted(peers.items())
                          if k != "pair")
              + f"; tunnel {json.dumps(r.get('tunnel', {}).get('link'))}")
PY
echo "bench-postcopy-pair: results in $out" >&2
