#!/bin/bash
# test-deb.sh SOURCE_ROOT: the Debian package, built from the tree and
# checked without installing it on this machine (dpkg -i would change the
# developer's system, and no clean chroot can be made offline):
#
#   1. dpkg-buildpackage -us -uc -b in a copy of the tree (the files git
#      knows, committed or not, as a fresh clone plus the work in
#      progress; no build/ directory) builds migproxy_*.deb;
#   2. lintian: no error or warning (debian/migproxy.lintian-overrides
#      says why the workload guest is statically linked);
#   3. dpkg-deb -I: Depends names the package of every shared library
#      the binary needs (dpkg-shlibdeps did its work);
#   4. dpkg-deb -x into a temporary root: the program, man pages,
#      completion, systemd units, the demo's guest are where they belong;
#      the man pages render without a warning; systemd-analyze verify
#      (against that root) finds nothing in the units;
#   5. the unpacked migproxy runs `migproxy demo` with this machine's
#      QEMU: a live migration through its relay, its checks all passing.
#
# Everything happens in one temporary directory, removed at the end.
set -uo pipefail

SRC=$(cd "$1" && pwd)
tmp=$(mktemp -d /tmp/migproxy-deb-XXXXXX)
child=
trap 'rm -rf "$tmp"' EXIT
# stopped (meson's timeout): stop the step that runs, then clean up
trap '[ -n "$child" ] && kill "$child" 2>/dev/null; wait; exit 1' TERM INT HUP

# bounded SECONDS LOG DIR CMD...: CMD in DIR, output to LOG, killed after
# SECONDS (timeout passes our SIGTERM on to it); @return its status.
bounded() {
    local seconds=$1 log=$2 dir=$3
    shift 3
    (cd "$dir" && exec timeout --kill-after=10 "$seconds" "$@") >"$log" 2>&1 &
    child=$!
    wait "$child"
    local rc=$?
    child=
    return $rc
}
fail=0
bad() {
    echo "FAIL: $*" >&2
    fail=1
}
step() {
    echo "== $*"
}

for tool in dpkg-buildpackage dh dpkg-deb; do
    command -v "$tool" >/dev/null \
        || { echo "FAIL: $tool missing (scripts/setup.sh installs it)"; exit 1; }
done

step "copying the tree"
mkdir "$tmp/src"
if git -C "$SRC" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$SRC" && git ls-files -co --exclude-standard -z \
        | while IFS= read -r -d '' f; do
            [ -e "$f" ] && [ "$f" != .qemu ] && printf '%s\0' "$f"
        done | xargs -0 cp -P --parents -t "$tmp/src") || exit 1
else
    (cd "$SRC" && tar --exclude='./build*' --exclude=./.qemu -cf - .) \
        | tar -C "$tmp/src" -xf - || exit 1
fi

step "dpkg-buildpackage -us -uc -b"
if ! bounded 1200 "$tmp/build.log" "$tmp/src" dpkg-buildpackage -us -uc -b; then
    tail -n 60 "$tmp/build.log"
    echo "FAIL: dpkg-buildpackage"
    exit 1
fi
debs=("$tmp"/migproxy_*.deb)
deb=${debs[0]}
[ -f "$deb" ] || { echo "FAIL: no migproxy_*.deb"; ls "$tmp"; exit 1; }
echo "built $(basename "$deb"), $(stat -c %s "$deb") bytes"

step "lintian"
if command -v lintian >/dev/null; then
    changes=("$tmp"/migproxy_*.changes)
    bounded 600 "$tmp/lintian.log" "$tmp" lintian --fail-on error,warning \
        "${changes[0]}" || bad "lintian"
    out=$(cat "$tmp/lintian.log")
    echo "$out"
    grep -E '^[EW]: ' <<<"$out" && bad "lintian tags"
else
    echo "lintian not installed: skipped (scripts/setup.sh installs it)"
fi

step "dpkg-deb -I"
depends=$(dpkg-deb -f "$deb" Depends)
echo "Depends: $depends"
root=$tmp/root
dpkg-deb -x "$deb" "$root" || { echo "FAIL: dpkg-deb -x"; exit 1; }
bin=$root/usr/bin/migproxy
for lib in $(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
    path=$(ldconfig -p | awk -v l="$lib" '$1 == l { print $NF; exit }')
    real=$(readlink -f "$path")
    # dpkg knows /lib/... where merged /usr resolves to /usr/lib/...
    pkg=$({ dpkg -S "$real" || dpkg -S "${real#/usr}"; } 2>/dev/null \
        | head -1 | cut -d: -f1)
    [ -n "$pkg" ] || { bad "$lib: no package owns it"; continue; }
    [[ ", $depends," == *", $pkg "* || ", $depends," == *", $pkg,"* ]] \
        || bad "Depends lacks $pkg (for $lib)"
done

step "files"
for f in usr/bin/migproxy \
    usr/share/man/man1/migproxy.1.gz \
    usr/share/man/man1/migproxy-analyze.1.gz \
    usr/share/man/man1/migproxy-demo.1.gz \
    usr/share/man/man1/migproxy-relay.1.gz \
    usr/share/man/man1/migproxy-source.1.gz \
    usr/share/man/man1/migproxy-dest.1.gz \
    usr/share/bash-completion/completions/migproxy \
    lib/systemd/system/migproxy-relay@.service \
    lib/systemd/system/migproxy-dest@.service \
    usr/libexec/migproxy/workload.elf \
    usr/share/doc/migproxy/copyright \
    usr/share/doc/migproxy/operators.md \
    usr/share/doc/migproxy/examples/relay.conf \
    usr/share/migproxy/schema/report.schema.json \
    usr/share/migproxy/schema/metrics-line.schema.json \
    usr/share/migproxy/schema/analyze.schema.json; do
    [ -f "$root/$f" ] || bad "$f missing from the package"
done
for page in "$root"/usr/share/man/man1/*.1.gz; do
    w=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -E UTF-8 -l -Tutf8 -Z \
        "$page" 2>&1 >/dev/null)
    [ -z "$w" ] || bad "$page: $w"
done
bash -n "$root/usr/share/bash-completion/completions/migproxy" \
    || bad "completion script does not parse"
"$bin" --version | grep -q "^migproxy " || bad "migproxy --version"

step "systemd-analyze verify"
if command -v systemd-analyze >/dev/null; then
    out=$(systemd-analyze verify --man=no --recursive-errors=no \
        --root="$root" migproxy-relay@test.service migproxy-dest@test.service 2>&1)
    rc=$?
    [ "$rc" -eq 0 ] && [ -z "$out" ] || bad "systemd-analyze verify: $out"
else
    echo "systemd-analyze not installed: skipped"
fi

step "migproxy demo from the unpacked package"
# the guest is found beside the binary (../libexec/migproxy), not in a
# build tree
if ! bounded 600 "$tmp/demo.log" "$tmp" env -u MP_WORKLOAD "$bin" demo; then
    tail -n 40 "$tmp/demo.log"
    bad "migproxy demo"
else
    grep -E "identical, byte for byte|: equal" "$tmp/demo.log"
fi
exit $fail
