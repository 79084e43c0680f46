#!/bin/bash
# bench-tunnel-tls.sh: the cost of TLS on the tunnel (docs/benchmarks.md,
# "TLS on the tunnel").  One synthetic connection of SIZE MiB of random
# bytes (incompressible; --no-compress, so the tunnel only frames and,
# with TLS, encrypts) goes through `migproxy source` and `migproxy dest`
# on loopback to a sink; plain and TLS runs alternate.  Per run: seconds
# from the first byte to the sink's end, the rate, and the CPU seconds
# (user + system) of source and dest.
#
#   bench/bench-tunnel-tls.sh [RUNS] [SIZE_MIB]      default 5 runs, 512 MiB
#
# The connection starts with the 6 bytes of a TLS ClientHello's header,
# so the source side's relay takes it as a TLS migration channel and
# forwards it untouched (a random start is refused as not QEMU).  Needs
# socat and openssl; MIGPROXY (default build/src/migproxy).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MIGPROXY=${MIGPROXY:-$ROOT/build/src/migproxy}
RUNS=${1:-5}
SIZE=${2:-512}
tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

# certificates as docs/tunnel.md makes them
(
    cd "$tmp"
    openssl req -x509 -new -noenc -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
        -keyout ca.key -out ca.pem -days 2 -subj "/CN=bench CA" \
        -addext basicConstraints=critical,CA:TRUE \
        -addext keyUsage=critical,keyCertSign,cRLSign
    for n in dest source; do
        if [ $n = dest ]; then
            printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n'
        else
            printf 'subjectAltName=DNS:source\nextendedKeyUsage=clientAuth\n'
        fi >$n.ext
        openssl req -new -noenc -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
            -keyout $n.key -out $n.csr -subj "/CN=$n"
        openssl x509 -req -in $n.csr -CA ca.pem -CAkey ca.key \
            -set_serial 0x"$(openssl rand -hex 8)" -days 2 -extfile $n.ext \
            -out $n.pem
    done
) >/dev/null 2>&1
{
    printf '\x16\x03\x01\x02\x00\x01'
    head -c $((SIZE << 20)) /dev/urandom
} >"$tmp/stream.bin"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# CPU seconds (user + system) of a running process
cpu_s() {
    awk -v t="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / t }' \
        "/proc/$1/stat"
}

wait_line() { # FILE TEXT
    for _ in $(seq 500); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.02
    done
    echo "no '$2' in $1:" >&2
    cat "$1" >&2
    return 1
}

run_one() { # plain|tls
    local mode=$1 qp dp sp tls_d=() tls_s=()
    qp=$(free_port)
    dp=$(free_port)
    sp=$(free_port)
    if [ "$mode" = tls ]; then
        tls_d=(--tls-cert "$tmp/dest.pem" --tls-key "$tmp/dest.key"
            --tls-ca "$tmp/ca.pem")
        tls_s=(--tls-cert "$tmp/source.pem" --tls-key "$tmp/source.key"
            --tls-ca "$tmp/ca.pem")
    fi
    socat -u TCP-LISTEN:"$qp",bind=127.0.0.1,reuseaddr OPEN:/dev/null &
    local sink=$!
    pids+=("$sink")
    "$MIGPROXY" dest --listen 127.0.0.1:"$dp" --to 127.0.0.1:"$qp" \
        --allow 127.0.0.1 "${tls_d[@]}" 2>"$tmp/dest.log" &
    local d=$!
    pids+=("$d")
    wait_line "$tmp/dest.log" "listening on"
    "$MIGPROXY" source --listen 127.0.0.1:"$sp" --peer 127.0.0.1:"$dp" \
        --no-compress --no-progress "${tls_s[@]}" 2>"$tmp/source.log" &
    local s=$!
    pids+=("$s")
    wait_line "$tmp/source.log" "listening on"
    local t0 t1
    t0=$(date +%s.%N)
    socat -u FILE:"$tmp/stream.bin" TCP:127.0.0.1:"$sp"
    wait "$sink"
    t1=$(date +%s.%N)
    local cs cd
    cs=$(cpu_s "$s")
    cd=$(cpu_s "$d")
    kill "$s" "$d"
    wait "$s" "$d" 2>/dev/null || true
    awk -v m="$mode" -v a="$t0" -v b="$t1" -v n="$SIZE" -v cs="$cs" \
        -v cd="$cd" 'BEGIN { s = b - a; printf "%-5s %6.2f s %7.1f MiB/s  cpu source %5.2f s  dest %5.2f s  (%.2f cpu-s per GiB)\n", m, s, n / s, cs, cd, (cs + cd) / (n / 1024) }'
}

echo "# $RUNS x $SIZE MiB, random bytes, --no-compress; load: $(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq "$RUNS"); do
    run_one plain
    run_one tls
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
