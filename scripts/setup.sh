#!/bin/bash
# setup.sh: everything migproxy needs on a Debian bookworm machine, then a
# build.  Idempotent: on a machine that has it all, it only rebuilds.
#
#   scripts/setup.sh            install packages, QEMU 10.0, build in build/
#   MP_BUILD=dir scripts/setup.sh   build in another directory
#
# Needs root for apt-get (skipped when every package is already installed).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${MP_BUILD:-$ROOT/build}

# Build: meson, a C compiler, the libraries.  Tests: criterion, QEMU 7.2,
# clang with libFuzzer (fuzz targets), iproute2 (namespaces), socat,
# zstd (sample streams), tcpdump and tshark (integration-pcap captures
# real migrations with both), valgrind (meson test --setup=valgrind), libvirt
# (analyze's test of virsh save images), debhelper and lintian
# (tests/package: the Debian package), python3-jsonschema (the JSON
# output checked against docs/schema/), chromium (integration-report
# renders `migproxy report`'s page headless).  Run time: glib-networking
# (GIO's TLS backend: the tunnel's --tls-*), openssl (the TLS tests make
# their certificates).
PACKAGES=(
    build-essential meson ninja-build pkg-config
    libglib2.0-dev libjson-c-dev libzstd-dev zlib1g-dev libpcap-dev
    liblzma-dev libbz2-dev liblzo2-dev
    libxxhash-dev
    glib-networking openssl
    libcriterion-dev
    qemu-system-x86 qemu-utils
    clang libclang-rt-14-dev
    iproute2 socat zstd valgrind tcpdump tshark
    libvirt-daemon-system libvirt-clients
    debhelper lintian
    python3-jsonschema
    chromium
)

log() {
    echo "setup: $*" >&2
}

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" \
        || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

"$ROOT/scripts/fetch-qemu10.sh"
# the Linux guest of integration-tunnel's balloon_100 (and the benchmarks):
# Debian's kernel and busybox, downloaded with apt-get once
"$ROOT/samples/linux-guest/build.sh" >/dev/null

if [ ! -f "$BUILD/build.ninja" ]; then
    log "configuring $BUILD"
    meson setup "$BUILD" "$ROOT" ${MP_MESON_ARGS:-} >/dev/null
fi
log "building in $BUILD"
if ! out=$(ninja -C "$BUILD" 2>&1); then
    echo "$out" >&2
    exit 1
fi
log "ready: $BUILD/src/migproxy"
