#!/bin/bash
# unit-sandbox.sh STATE_DIR UID CMD...: runs CMD in the sandbox that
# migproxy-relay@.service and migproxy-dest@.service ask systemd for, as
# far as it can be made without systemd as PID 1 (the test machines run
# in containers).  Used by test-relay-service.c; the pid of this script
# becomes CMD's (every step execs the next), so a signal sent to it is
# the one systemctl would send to the service's main process.
#
# Made here, as the unit's settings would:
#   DynamicUser=yes          CMD runs as UID:UID, no supplementary groups
#                            (the caller chowns STATE_DIR to it, as
#                            systemd does for a dynamic user)
#   NoNewPrivileges=yes      setpriv --no-new-privs
#   CapabilityBoundingSet=   every capability dropped from the bounding,
#   AmbientCapabilities=     inheritable and ambient sets
#   ProtectSystem=strict     every mount read-only, /dev, /proc and /sys
#                            apart, and STATE_DIR (StateDirectory=) writable
#   ProtectKernelTunables=   /proc/sys read-only
#   PrivateTmp=yes           a new empty /tmp and /var/tmp
#   ProtectHome=yes          /home, /root, /run/user empty and closed (0)
#   PrivateMounts=yes        its own mount namespace
# Not made (systemd, seccomp or cgroups would): SystemCallFilter=,
# RestrictAddressFamilies=, MemoryDenyWriteExecute=, PrivateDevices=,
# PrivateUsers=, ProtectProc=, RestrictNamespaces= and the rest.
set -euo pipefail

if [[ ${1:-} != _inner ]]; then
    [[ $# -ge 3 ]] || { echo "usage: $0 STATE_DIR UID CMD..." >&2; exit 2; }
    exec unshare --mount --propagation private -- "$(readlink -f "$0")" _inner "$@"
fi
shift
state=$(readlink -f "$1")
uid=$2
shift 2

# the state directory, kept open across the new /tmp that may hide it
exec 3<"$state"
# the program too: systemd runs it from @bindir@, the tests from the build
# tree, which the new /tmp or /home may hide (a clone in /tmp); it is
# bound at the same place in the new /tmp below
prog=$(readlink -f "$(command -v "$1")")
exec 4<"$prog"
for tmp in /tmp /var/tmp; do
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$tmp"
done
for home in /home /root /run/user; do
    [[ -d $home ]] && mount -t tmpfs -o mode=000,size=4k tmpfs "$home"
done
(umask 022 && mkdir -p "$state")
# no canonicalizing: the link names the hidden directory, not its path
mount --no-canonicalize --bind /proc/self/fd/3 "$state"
exec 3<&-
mount --bind /proc/sys /proc/sys
run_prog=/tmp/unit-program/$(basename "$prog")
mkdir -p /tmp/unit-program
touch "$run_prog"
mount --no-canonicalize --bind /proc/self/fd/4 "$run_prog"
exec 4<&-
shift
set -- "$run_prog" "$@"

# ProtectSystem=strict: everything read-only but the API file systems,
# the private /tmp and the state directory
while read -r target; do
    target=$(printf '%b' "$target") # findmnt -r escapes blanks as \x20
    case $target in
    /proc | /proc/* | /sys | /sys/* | /dev | /dev/*) continue ;;
    /tmp | /var/tmp | "$state") continue ;;
    esac
    mount -o remount,bind,ro "$target" 2>/dev/null || true
done < <(findmnt -rno TARGET)
mount -o remount,bind,ro /proc/sys

exec setpriv --reuid="$uid" --regid="$uid" --clear-groups --no-new-privs \
    --bounding-set=-all --inh-caps=-all --ambient-caps=-all -- "$@"
