#!/bin/bash
# libvirt-pair.sh: two libvirt daemons on one machine, so that `virsh
# migrate` has a source host and a destination host to migrate between
# (docs/libvirt.md; tests/integration/test-libvirt-migrate.c runs every
# recipe there on top of it).  Needs root, libvirt-daemon-system and
# libvirt-clients (Debian's libvirt 9.0), iproute2 and util-linux.
#
#   scripts/libvirt-pair.sh up      # start both daemons (idempotent)
#   scripts/libvirt-pair.sh down    # stop what `up` started, remove the rest
#   scripts/libvirt-pair.sh status  # what runs; exit 1 if not up
#   scripts/libvirt-pair.sh env     # the addresses and URIs, as shell lines
#
#   the machine ("source host")              namespace $MP_LV_NS ("destination")
#   libvirtd, qemu:///system                 libvirtd, qemu+tcp://$PREFIX.2/system
#     (the system's; started if not running)   own network, mount and UTS
#                                              namespaces, hostname $MP_LV_NS,
#                                              own host_uuid, virtlogd
#   ${DEV}0 $PREFIX.1/24  <===== veth =====>  ${DEV}1 $PREFIX.2/24, lo
#
# The destination daemon listens on TCP (auth none) on $PREFIX.2 only, an
# address no other host can reach.  It has its own /etc/libvirt (the
# system's *.conf files, libvirtd.conf extended: listen_tcp, auth_tcp,
# listen_addr, host_uuid), /run/libvirt, /var/lib/libvirt,
# /var/cache/libvirt and /var/log/libvirt: directories under
# $MP_LV_DIR/dst bind-mounted over the real ones in its mount namespace
# (the daemon has no options for those paths).  Its QEMU logs are in
# $MP_LV_DIR/dst/log/qemu/.  libvirt refuses to migrate to "the same
# host", which it tells by hostname and host UUID: hence the UTS namespace
# and host_uuid.  `ip netns exec` mounts a fresh /sys without cgroup
# hierarchies, so the second daemon's QEMUs stay out of the cgroups the
# first one makes for a domain of the same name.
#
# Settings (environment):
#   MP_LV_DIR      state: pid files, the destination's directories
#                  (/run/mp-libvirt-pair)
#   MP_LV_NS       network namespace, also the destination's hostname
#                  (mp-lv-dst)
#   MP_LV_DEV      veth names without the 0/1 suffix, at most 14
#                  characters (mp-lv)
#   MP_LV_PREFIX   first three octets of the link's /24 (10.252.0)
#   MP_LV_TIMEOUT  seconds to wait for a daemon to answer (120)
#   MP_LV_QEMU_CONF  a file of qemu.conf lines for both daemons (e.g.
#                  migrate_tls_x509_cert_dir = "..."); only with a source
#                  daemon that `up` starts: `up` fails if the system's
#                  libvirtd already runs
# Two pairs can run side by side with different settings for all four
# of MP_LV_DIR, MP_LV_NS, MP_LV_DEV, MP_LV_PREFIX.
#
# A source libvirtd that `up` starts runs in a mount namespace of its own
# too, where $MP_LV_DIR/src/qemu.conf (the system's plus MP_LV_QEMU_CONF)
# is bind-mounted over /etc/libvirt/qemu.conf and $MP_LV_DIR/src/domains
# over /etc/libvirt/qemu (the XML of defined domains): the system's files
# are never written, and a pair killed before `down` leaves neither a
# changed configuration nor a defined domain behind (the domains defined
# on it go with `down`).
#
# `down` stops, by the pids in $MP_LV_DIR: the destination's QEMUs, its
# libvirtd and virtlogd, and the source's libvirtd and virtlogd if `up`
# started them (a daemon that was running before is left alone, and so
# are its domains); then it deletes the namespace (and with it the veth
# pair) and $MP_LV_DIR.
set -euo pipefail

DIR=${MP_LV_DIR:-/run/mp-libvirt-pair}
NS=${MP_LV_NS:-mp-lv-dst}
DEV=${MP_LV_DEV:-mp-lv}
PREFIX=${MP_LV_PREFIX:-10.252.0}
TIMEOUT=${MP_LV_TIMEOUT:-120}
QEMU_CONF_EXTRA=${MP_LV_QEMU_CONF:-}
SRC_ADDR=$PREFIX.1
DST_ADDR=$PREFIX.2
DST_URI=qemu+tcp://$DST_ADDR/system
SRC_URI=qemu:///system
# The directories libvirtd and virtlogd use with fixed paths when run as
# root; the destination gets its own copy of each (the name under
# $DIR/dst first).
LV_DIRS=(etc:/etc/libvirt run:/run/libvirt lib:/var/lib/libvirt
    cache:/var/cache/libvirt log:/var/log/libvirt)

log() {
    echo "libvirt-pair: $*" >&2
}

die() {
    log "error: $*"
    exit 1
}

ns_exists() {
    [[ -e /run/netns/$NS ]]
}

# pid_alive FILE: the pid in FILE runs.
pid_alive() {
    local pid
    [[ -s $1 ]] || return 1
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

# stop_pid FILE: SIGTERM the pid in FILE, SIGKILL after 10 s; removes FILE.
stop_pid() {
    local pid i
    if pid_alive "$1"; then
        pid=$(<"$1")
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$1"
}

# answers URI: a daemon serves URI.
answers() {
    timeout 10 virsh -q -c "$1" version >/dev/null 2>&1
}

# wait_answers URI PIDFILE WHAT: waits until the daemon answers; fails
# if its pid is gone or after $TIMEOUT s (it probes the QEMU binaries
# before it listens: seconds, more on a loaded machine).
wait_answers() {
    local end=$((SECONDS + TIMEOUT))
    until answers "$1"; do
        pid_alive "$2" || die "$3 exited (see its log in ${4:-/var/log/libvirt})"
        ((SECONDS < end)) || die "$3 does not answer on $1 after $TIMEOUT s"
        sleep 0.2
    done
}

# socket_alive PATH: something accepts on the unix socket PATH (a file
# left by a daemon that is gone does not count).
socket_alive() {
    [[ -S $1 ]] && timeout 5 socat -u OPEN:/dev/null "UNIX-CONNECT:$1" 2>/dev/null
}

# qemu_conf OUT: the system's qemu.conf and the lines of MP_LV_QEMU_CONF
# in OUT.
qemu_conf() {
    cp /etc/libvirt/qemu.conf "$1"
    if [[ -n $QEMU_CONF_EXTRA ]]; then
        printf '\n# libvirt-pair.sh: MP_LV_QEMU_CONF\n' >>"$1"
        cat "$QEMU_CONF_EXTRA" >>"$1"
    fi
}

up_source() {
    if answers "$SRC_URI"; then
        [[ -z $QEMU_CONF_EXTRA ]] || die "MP_LV_QEMU_CONF needs a source" \
            "libvirtd started here, and the system's answers on $SRC_URI"
        log "source: the system's libvirtd answers on $SRC_URI (left alone)"
        return
    fi
    if ! socket_alive /run/libvirt/virtlogd-sock; then
        virtlogd -d -p "$DIR/src-virtlogd.pid"
    fi
    install -d -m 0700 "$DIR/src" "$DIR/src/domains"
    qemu_conf "$DIR/src/qemu.conf"
    # the daemon (-d forks) stays in the namespace unshare makes
    unshare --mount --propagation private -- sh -c \
        'mount --bind "$1" /etc/libvirt/qemu.conf &&
         mount --bind "$2" /etc/libvirt/qemu &&
         exec libvirtd -d -p "$3"' \
        sh "$DIR/src/qemu.conf" "$DIR/src/domains" "$DIR/src-libvirtd.pid"
    wait_answers "$SRC_URI" "$DIR/src-libvirtd.pid" "the source's libvirtd"
    log "source: started libvirtd (pid $(<"$DIR/src-libvirtd.pid"))"
}

# A copy of a system directory's subdirectories (two levels: libvirt
# makes the deeper ones), owners and modes kept (libvirt-qemu must reach
# some of them), without their files: the system's domain state and logs
# stay where they are.
copy_tree() {
    local from=$1 to=$2 d
    install -d -m "$(stat -c %a "$from")" -o "$(stat -c %u "$from")" \
        -g "$(stat -c %g "$from")" "$to"
    while IFS= read -r -d '' d; do
        install -d -m "$(stat -c %a "$d")" -o "$(stat -c %u "$d")" \
            -g "$(stat -c %g "$d")" "$to/${d#"$from"/}"
    done < <(find "$from" -mindepth 1 -maxdepth 2 -type d -print0)
}

prepare_destination() {
    local entry name path uuid
    for entry in "${LV_DIRS[@]}"; do
        name=${entry%%:*}
        path=${entry#*:}
        [[ -d $DIR/dst/$name ]] && continue
        case $name in
        etc)
            # the daemons' settings, not the system's domains and networks
            install -d -m 0755 "$DIR/dst/etc"
            find "$path" -maxdepth 1 -type f -name '*.conf' \
                -exec cp -a {} "$DIR/dst/etc/" \;
            qemu_conf "$DIR/dst/etc/qemu.conf"
            ;;
        run)
            install -d -m 0755 "$DIR/dst/run"
            ;;
        lib | log)
            copy_tree "$path" "$DIR/dst/$name"
            ;;
        cache)
            # the QEMU capabilities cache: valid for the same binaries,
            # it saves the second daemon probing them again
            cp -a "$path" "$DIR/dst/cache"
            ;;
        esac
    done
    uuid=$(cat /proc/sys/kernel/random/uuid)
    if ! grep -q '^host_uuid' "$DIR/dst/etc/libvirtd.conf" 2>/dev/null; then
        cat >>"$DIR/dst/etc/libvirtd.conf" <<EOF

# libvirt-pair.sh: the destination of a pair on one machine
listen_tls = 0
listen_tcp = 1
listen_addr = "$DST_ADDR"
auth_tcp = "none"
host_uuid = "$uuid"
EOF
    fi
}

up_link() {
    ns_exists "$NS" || ip netns add "$NS"
    ip -n "$NS" link set lo up
    if ! ip link show "${DEV}0" >/dev/null 2>&1 \
        || ! ip -n "$NS" link show "${DEV}1" >/dev/null 2>&1; then
        ip link del "${DEV}0" 2>/dev/null || true
        ip -n "$NS" link del "${DEV}1" 2>/dev/null || true
        ip link add "${DEV}0" type veth peer name "${DEV}1" netns "$NS"
    fi
    ip addr replace "$SRC_ADDR/24" dev "${DEV}0"
    ip -n "$NS" addr replace "$DST_ADDR/24" dev "${DEV}1"
    ip link set "${DEV}0" up
    ip -n "$NS" link set "${DEV}1" up
}

up_destination() {
    if pid_alive "$DIR/dst-libvirtd.pid" && answers "$DST_URI"; then
        log "destination: libvirtd already up on $DST_URI"
        return
    fi
    stop_pid "$DIR/dst-libvirtd.pid"
    stop_pid "$DIR/dst-virtlogd.pid"
    prepare_destination
    # new mount and UTS namespaces inside the network namespace; the
    # daemons keep them alive after this shell exits
    ip netns exec "$NS" unshare --mount --uts --propagation private \
        -- "$(readlink -f "$0")" _inner
    wait_answers "$DST_URI" "$DIR/dst-libvirtd.pid" "the destination's libvirtd" \
        "$DIR/dst/log"
    log "destination: libvirtd (pid $(<"$DIR/dst-libvirtd.pid")) on $DST_URI," \
        "hostname $NS"
}

# Runs in the destination's new namespaces (from up_destination).
inner() {
    local entry name path
    echo "$NS" >/proc/sys/kernel/hostname
    for entry in "${LV_DIRS[@]}"; do
        name=${entry%%:*}
        path=${entry#*:}
        mkdir -p "$path"
        mount --bind "$DIR/dst/$name" "$path"
    done
    virtlogd -d -p "$DIR/dst-virtlogd.pid"
    libvirtd -d -l -p "$DIR/dst-libvirtd.pid"
}

up() {
    install -d -m 0700 "$DIR"
    up_link
    up_source
    up_destination
    log "up: source $SRC_URI ($SRC_ADDR) <-> destination $DST_URI"
}

down() {
    local f
    # the destination's QEMUs first: libvirtd leaves its domains running
    # when it stops
    for f in "$DIR"/dst/run/qemu/*.pid; do
        [[ -e $f ]] && stop_pid "$f"
    done
    stop_pid "$DIR/dst-libvirtd.pid"
    stop_pid "$DIR/dst-virtlogd.pid"
    stop_pid "$DIR/src-libvirtd.pid"
    stop_pid "$DIR/src-virtlogd.pid"
    # the veth's peer goes with the namespace
    if ns_exists "$NS"; then
        ip netns del "$NS"
    fi
    ip link del "${DEV}0" 2>/dev/null || true
    rm -rf "$DIR"
    log "down: $NS and ${DEV}0 removed"
}

status() {
    local ok=0
    echo "source:      $SRC_URI ($SRC_ADDR)"
    if answers "$SRC_URI"; then echo "  answers"; else echo "  not answering"; ok=1; fi
    echo "destination: $DST_URI, namespace $NS"
    if ns_exists "$NS" && answers "$DST_URI"; then
        echo "  answers (libvirtd pid $(cat "$DIR/dst-libvirtd.pid" 2>/dev/null))"
    else
        echo "  not answering"
        ok=1
    fi
    return $ok
}

env_lines() {
    cat <<EOF
MP_LV_SRC_URI=$SRC_URI
MP_LV_DST_URI=$DST_URI
MP_LV_SRC_ADDR=$SRC_ADDR
MP_LV_DST_ADDR=$DST_ADDR
MP_LV_NS=$NS
EOF
}

case ${1:-} in
up | down | status | _inner)
    [[ $(id -u) == 0 ]] || die "needs root (namespaces, the system's libvirtd)"
    for tool in ip unshare libvirtd virtlogd virsh socat; do
        command -v "$tool" >/dev/null || die "$tool not found"
    done
    ;;
esac

case ${1:-} in
up) up ;;
down) down ;;
status) status ;;
env) env_lines ;;
_inner) inner ;;
*)
    echo "usage: $0 up|down|status|env" >&2
    exit 2
    ;;
esac
