#!/bin/bash
# test-systemd-units.sh MIGPROXY UNIT...: `systemd-analyze verify` finds
# nothing to say about the units the build wrote (dist/systemd/), checked
# as instance "test" in a temporary root that holds them and the program
# at the path of their ExecStart=, so that nothing on this machine is
# changed or consulted but systemd's own units.  Skipped without
# systemd-analyze.
set -uo pipefail

MIGPROXY=$1
shift
command -v systemd-analyze >/dev/null \
    || { echo "systemd-analyze not installed: skipped"; exit 77; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/lib/systemd/system"
fail=0
instances=()
for unit in "$@"; do
    name=$(basename "$unit")
    cp "$unit" "$root/lib/systemd/system/$name"
    exe=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$unit")
    [ -n "$exe" ] || { echo "FAIL: $name has no ExecStart="; fail=1; }
    mkdir -p "$root$(dirname "$exe")"
    cp "$MIGPROXY" "$root$exe"
    instances+=("${name/@./@test.}")
    # the hardening docs/operators.md promises
    for want in NoNewPrivileges=yes ProtectSystem=strict ProtectHome=yes \
        PrivateTmp=yes StateDirectoryMode=0700 CapabilityBoundingSet= \
        'RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX' \
        SystemCallFilter=@system-service DynamicUser=yes; do
        grep -qxF "$want" "$unit" || { echo "FAIL: $name lacks $want"; fail=1; }
    done
done
if ! out=$(systemd-analyze verify --man=no --recursive-errors=no \
        --root="$root" "${instances[@]}" 2>&1) || [ -n "$out" ]; then
    echo "FAIL: systemd-analyze verify ${instances[*]}:"
    echo "$out"
    fail=1
fi
echo "verified: ${instances[*]}"
exit $fail
