#!/bin/bash
# capture.sh: regenerate the sample streams of this folder from real QEMU
# (7.2 from the system, 10.0 from scripts/fetch-qemu10.sh) and the
# workload guest.  Needs a built tree (ninja -C build) and socat.
#
#   samples/streams/capture.sh [BUILD_DIR]
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUILD=${1:-$ROOT/build}
KERNEL=$BUILD/samples/workload/workload.elf
TMP=$(mktemp -d)
PID=
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

qmp() {
    { echo '{"execute":"qmp_capabilities"}'
      for c in "$@"; do echo "$c"; sleep 0.2; done
      sleep 0.3; } | socat - "UNIX-CONNECT:$TMP/qmp.sock" 2>/dev/null
}

# capture NAME QEMU MACHINE APPEND CAPS BANDWIDTH
capture() {
    local name=$1 qemu=$2 machine=$3 append=$4 caps=$5 bw=$6
    rm -f "$TMP/con" "$TMP/qmp.sock"
    $qemu -accel tcg -M "$machine" -m 64 -display none -nodefaults \
        -kernel "$KERNEL" -append "$append" -debugcon "file:$TMP/con" \
        -qmp "unix:$TMP/qmp.sock,server=on,wait=off" &
    PID=$!
    for _ in $(seq 300); do grep -q READY "$TMP/con" 2>/dev/null && break; sleep 0.1; done
    local capjson=""
    for c in $caps; do
        capjson="$capjson{\"capability\":\"$c\",\"state\":true},"
    done
    qmp "{\"execute\":\"migrate-set-capabilities\",\"arguments\":{\"capabilities\":[${capjson%,}]}}" \
        "{\"execute\":\"migrate-set-parameters\",\"arguments\":{\"max-bandwidth\":$bw,\"downtime-limit\":20}}" \
        "{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"exec:cat > $TMP/$name.mig\"}}" >/dev/null
    for _ in $(seq 600); do
        qmp '{"execute":"query-migrate"}' | grep -q '"completed"' && break
        sleep 0.2
    done
    qmp '{"execute":"query-migrate"}' | tail -n 1 > "$HERE/$name.query-migrate.json"
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
    zstd -q -19 -f "$TMP/$name.mig" -o "$HERE/$name.mig.zst"
    echo "$name: $(stat -c %s "$TMP/$name.mig") bytes, $(stat -c %s "$HERE/$name.mig.zst") compressed"
}

MIX="zero=40 dup=20 comp=35 rand=5"
capture idle-7.2 qemu-system-x86_64 pc-q35-7.2 "mem=8M $MIX" "" 268435456
capture busy-xbzrle-7.2 qemu-system-x86_64 pc-q35-7.2 \
    "mem=8M $MIX rate=2000 touch=64" "xbzrle" 8388608
capture busy-10.0 "$ROOT/scripts/qemu10" pc-q35-10.0 \
    "mem=8M $MIX rate=2000" "" 16777216
