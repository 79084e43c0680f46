#!/bin/bash
# deb-clean-install.sh [DEB]: the migproxy package installed on a clean
# Debian machine, as an operator installs it, and `migproxy demo` run
# from it (issue 13 item 3).
#
# The clean machine is a chroot of a minimal Debian (mmdebstrap
# --variant=minbase, from the archive in MP_DEB_MIRROR, by default
# http://deb.debian.org/debian, suite MP_DEB_SUITE, by default
# bookworm): nothing of this machine's packages, libraries or build tree
# is in it.  In it, apt installs the package (`apt-get install
# ./migproxy_*.deb`: every dependency comes from its Depends) and
# qemu-system-x86 (the demo's QEMU, which the package only Recommends);
# then, inside the chroot:
#   - dpkg knows the package, and its files are where they belong
#     (program, guest, man pages, completion, units, JSON schemas);
#   - `migproxy demo` migrates its guest between two QEMUs through its
#     relay and its checks pass.
# The chroot is a temporary directory of this machine, removed at the end
# (mmdebstrap --format=null); mmdebstrap mounts /proc, /sys and /dev for
# the commands run in it and unmounts them, and its file-mirror-automount
# hook puts the .deb where dpkg inside the chroot finds it.
#
# Without DEB it builds one first: `dpkg-buildpackage -us -uc -b` in a
# copy of the tree (the files git knows, committed or not).
#
# Needs root, mmdebstrap (Debian: mmdebstrap) and the archive over the
# network.  Takes minutes (downloads about 60 MB): docs/operators.md says
# how long it took here; not part of `meson test`.
#
# Exit status: 0 if all passed, 1 if something failed, 77 if the archive
# cannot be reached or mmdebstrap is missing (skipped).
set -uo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SUITE=${MP_DEB_SUITE:-bookworm}
MIRROR=${MP_DEB_MIRROR:-http://deb.debian.org/debian}
tmp=$(mktemp -d /var/tmp/migproxy-clean-XXXXXX)
child=
trap 'rm -rf "$tmp"' EXIT
# stopped (a timeout): stop the step that runs (mmdebstrap removes its
# chroot when it is told to stop), then clean up
trap '[ -n "$child" ] && kill "$child" 2>/dev/null; wait; exit 1' TERM INT HUP

log() {
    echo "== $*"
}

# bounded SECONDS LOG CMD...: CMD with output to LOG (and the terminal's
# stdout), killed after SECONDS; @return its status.
bounded() {
    local seconds=$1 out=$2
    shift 2
    timeout --kill-after=10 "$seconds" "$@" >"$out" 2>&1 &
    child=$!
    wait "$child"
    local rc=$?
    child=
    return $rc
}

[[ $(id -u) == 0 ]] || { echo "needs root (chroot)"; exit 1; }
command -v mmdebstrap >/dev/null \
    || { echo "SKIP: mmdebstrap not installed (apt-get install mmdebstrap)"; exit 77; }
if ! timeout 20 curl -fsS -o /dev/null "$MIRROR/dists/$SUITE/Release" 2>/dev/null \
    && ! timeout 20 wget -q -O /dev/null "$MIRROR/dists/$SUITE/Release" 2>/dev/null; then
    # apt's own transport, when neither curl nor wget is installed
    if ! timeout 60 apt-get download --print-uris base-files >/dev/null 2>&1; then
        echo "SKIP: $MIRROR ($SUITE) cannot be reached"
        exit 77
    fi
fi

start=$SECONDS
deb=${1:-}
if [ -z "$deb" ]; then
    log "dpkg-buildpackage -us -uc -b (a copy of the tree)"
    mkdir "$tmp/src"
    (cd "$SRC" && git ls-files -co --exclude-standard -z \
        | while IFS= read -r -d '' f; do
            [ -e "$f" ] && [ "$f" != .qemu ] && printf '%s\0' "$f"
        done | xargs -0 cp -P --parents -t "$tmp/src") || exit 1
    if ! (cd "$tmp/src" && bounded 1800 "$tmp/build.log" dpkg-buildpackage -us -uc -b); then
        tail -n 40 "$tmp/build.log"
        echo "FAIL: dpkg-buildpackage"
        exit 1
    fi
    debs=("$tmp"/migproxy_*.deb)
    deb=${debs[0]}
    echo "built $(basename "$deb") in $((SECONDS - start)) s"
fi
[ -f "$deb" ] || { echo "FAIL: $deb: no such file"; exit 1; }
deb=$(readlink -f "$deb")

# What the customize hooks check in the chroot ($1 is its root).
cat >"$tmp/check-files.sh" <<'EOF'
set -e
root=$1
chroot "$root" dpkg-query -W -f='${Package} ${Version} ${Status}\n' migproxy
for f in usr/bin/migproxy usr/libexec/migproxy/workload.elf \
    usr/share/man/man1/migproxy.1.gz \
    usr/share/bash-completion/completions/migproxy \
    lib/systemd/system/migproxy-relay@.service \
    lib/systemd/system/migproxy-dest@.service \
    usr/share/migproxy/schema/report.schema.json \
    usr/share/migproxy/schema/metrics-line.schema.json \
    usr/share/migproxy/schema/analyze.schema.json \
    usr/share/doc/migproxy/operators.md; do
    [ -f "$root/$f" ] || { echo "FAIL: /$f missing"; exit 1; }
done
chroot "$root" migproxy --version
EOF
# the demo's guest is the package's (beside the binary); its QEMU the
# chroot's
cat >"$tmp/demo.sh" <<'EOF'
set -e
chroot "$1" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    LANG=C.UTF-8 sh -c 'cd /tmp && migproxy demo'
EOF

log "mmdebstrap --variant=minbase $SUITE, then apt-get install $(basename "$deb") qemu-system-x86"
t0=$SECONDS
bounded 1500 "$tmp/chroot.log" mmdebstrap --variant=minbase --format=null \
    --hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount \
    --include="$deb" --include=qemu-system-x86 \
    --customize-hook="sh $tmp/check-files.sh \"\$1\"" \
    --customize-hook="sh $tmp/demo.sh \"\$1\"" \
    "$SUITE" /dev/null "$MIRROR"
rc=$?
grep -E "^(I: (downloading|installing)|migproxy |FAIL)|identical, byte for byte|: equal|demo" \
    "$tmp/chroot.log" | head -40
echo "chroot: $((SECONDS - t0)) s (total $((SECONDS - start)) s)"
if [ "$rc" -ne 0 ]; then
    tail -n 60 "$tmp/chroot.log"
    echo "FAIL: the package on a clean $SUITE (mmdebstrap status $rc)"
    exit 1
fi
echo "PASS: installed on a clean $SUITE and ran migproxy demo"
