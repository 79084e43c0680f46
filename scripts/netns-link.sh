#!/bin/bash
# netns-link.sh: two network namespaces joined by one veth pair shaped to a
# WAN-like rate in both directions, for migrations over a real bottleneck
# (bench/bench-postcopy.sh).  Needs root (ip, tc from iproute2).
#
#   scripts/netns-link.sh up      # create or update; idempotent
#   scripts/netns-link.sh down    # remove both namespaces (and the veth)
#   scripts/netns-link.sh status  # addresses and qdiscs, exit 1 if not up
#
#   namespace $MP_NS_SRC (mp-src)            namespace $MP_NS_DST (mp-dst)
#   lo up                                     lo up
#   mp-veth-s 10.253.0.1/24  <== veth ==>  mp-veth-d 10.253.0.2/24
#   root tbf rate burst latency (egress)     root tbf rate burst latency
#
# Settings (environment):
#   MP_NS_SRC, MP_NS_DST   namespace names            (mp-src, mp-dst)
#   MP_NET_PREFIX          first three octets of /24  (10.253.0)
#   MP_NET_RATE            tc rate                    (100mbit)
#   MP_NET_BURST           tbf bucket size            (32kb, i.e. 32 KiB)
#   MP_NET_LATENCY         tbf queue bound            (50ms)
#   MP_NET_CC              TCP congestion control in both namespaces (cubic)
# The addresses are private to the two namespaces: no route leads out of
# them, so nothing sent there can leave this machine.
#
# Why these tbf values (netem is not available; tbf is enough for a rate
# and a bounded queue, not for added propagation delay or loss):
#   rate 100mbit  12.5 MB/s, the link: a 4 KiB page takes 0.33 ms.
#   burst 32kb    the bucket: at most 32 KiB (2.6 ms at 100 Mbit/s) may leave
#                 at the speed of the veth after an idle moment.  It must
#                 hold one full frame (1514 B) and with high-resolution
#                 timers it need not cover rate/HZ; 32 KiB keeps bursts
#                 short next to the delays being measured (tens of ms) while
#                 costing tbf few wake-ups.  veth sends TSO/GSO packets up
#                 to 64 KiB; tbf splits those larger than the bucket into
#                 MSS-sized segments (tbf_segment) instead of dropping them.
#   latency 50ms  the longest a packet may wait in tbf's queue: the queue
#                 limit becomes rate * 50 ms + burst = 625 KB + 32 KiB.  This
#                 is the bottleneck buffer of the path: TCP (cubic) fills it
#                 until it drops, so a page sent behind a full queue waits up
#                 to 50 ms here, on top of what waits in the sender's socket
#                 buffer.  50 ms is a modest router buffer at this rate
#                 (about one BDP of a 50 ms path); larger values only add
#                 bufferbloat, smaller ones make TCP lose more and undershoot
#                 the rate.  Change it with MP_NET_LATENCY to see how the
#                 post-copy numbers depend on it.
# TCP congestion control is set on the link's route in each namespace
# (`ip route ... congctl cubic`): cubic, the kernel's and Debian's default,
# so that the numbers do not depend on what the host happens to use (this
# machine's default is bbr, which paces at its own estimate of the rate and
# keeps tbf's queue empty, moving the queue into the sender's socket buffer
# instead).  The per-namespace sysctl net.ipv4.tcp_congestion_control would
# be simpler, but a namespace other than the initial one may only choose
# from net.ipv4.tcp_allowed_congestion_control, a host-wide list (here
# "reno bbr") that this script leaves alone; route attributes have no such
# restriction.
# The same shaping is applied to both directions: the return path (page
# requests) crosses the same kind of link as the pages.
set -euo pipefail

NS_SRC=${MP_NS_SRC:-mp-src}
NS_DST=${MP_NS_DST:-mp-dst}
PREFIX=${MP_NET_PREFIX:-10.253.0}
RATE=${MP_NET_RATE:-100mbit}
BURST=${MP_NET_BURST:-32kb}
LATENCY=${MP_NET_LATENCY:-50ms}
CC=${MP_NET_CC:-cubic}
DEV_SRC=mp-veth-s
DEV_DST=mp-veth-d
ADDR_SRC=$PREFIX.1
ADDR_DST=$PREFIX.2

log() {
    echo "netns-link: $*" >&2
}

die() {
    log "error: $*"
    exit 1
}

ns_exists() {
    [[ -e /run/netns/$1 ]]
}

in_ns() {
    local ns=$1
    shift
    ip netns exec "$ns" "$@"
}

shape() {
    # shape NS DEV: (re)apply the tbf qdisc; replace is idempotent.
    in_ns "$1" tc qdisc replace dev "$2" root tbf \
        rate "$RATE" burst "$BURST" latency "$LATENCY"
}

route() {
    # route NS DEV ADDR: the link's route, with the congestion control as a
    # route attribute (see the header for why not the sysctl).
    in_ns "$1" ip route replace "$PREFIX.0/24" dev "$2" proto kernel \
        scope link src "$3" congctl "$CC"
}

up() {
    local ns
    for ns in "$NS_SRC" "$NS_DST"; do
        ns_exists "$ns" || ip netns add "$ns"
        in_ns "$ns" ip link set lo up
    done
    # A half-made pair (one end missing, or an end left in the default
    # namespace by an interrupted run) is removed and made again.
    if ! in_ns "$NS_SRC" ip link show "$DEV_SRC" >/dev/null 2>&1 \
        || ! in_ns "$NS_DST" ip link show "$DEV_DST" >/dev/null 2>&1; then
        in_ns "$NS_SRC" ip link del "$DEV_SRC" 2>/dev/null || true
        in_ns "$NS_DST" ip link del "$DEV_DST" 2>/dev/null || true
        ip link del "$DEV_SRC" 2>/dev/null || true
        ip link del "$DEV_DST" 2>/dev/null || true
        ip link add "$DEV_SRC" netns "$NS_SRC" type veth \
            peer name "$DEV_DST" netns "$NS_DST"
    fi
    in_ns "$NS_SRC" ip addr replace "$ADDR_SRC/24" dev "$DEV_SRC"
    in_ns "$NS_DST" ip addr replace "$ADDR_DST/24" dev "$DEV_DST"
    in_ns "$NS_SRC" ip link set "$DEV_SRC" up
    in_ns "$NS_DST" ip link set "$DEV_DST" up
    route "$NS_SRC" "$DEV_SRC" "$ADDR_SRC"
    route "$NS_DST" "$DEV_DST" "$ADDR_DST"
    shape "$NS_SRC" "$DEV_SRC"
    shape "$NS_DST" "$DEV_DST"
    log "up: $NS_SRC $ADDR_SRC <-> $NS_DST $ADDR_DST," \
        "tbf rate $RATE burst $BURST latency $LATENCY each way, tcp $CC"
}

down() {
    local ns
    # Deleting a namespace deletes the veth end in it, and with it the
    # peer.  A namespace that still has processes lingers (unnamed) until
    # they exit: whoever started them ends them first.
    for ns in "$NS_SRC" "$NS_DST"; do
        if ns_exists "$ns"; then
            ip netns del "$ns"
        fi
    done
    ip link del "$DEV_SRC" 2>/dev/null || true
    log "down: $NS_SRC, $NS_DST removed"
}

status() {
    local ns dev ok=0
    for ns in "$NS_SRC" "$NS_DST"; do
        [[ $ns == "$NS_SRC" ]] && dev=$DEV_SRC || dev=$DEV_DST
        if ! ns_exists "$ns"; then
            echo "$ns: missing"
            ok=1
            continue
        fi
        echo "$ns:"
        in_ns "$ns" ip route show dev "$dev" 2>/dev/null || true
        in_ns "$ns" ip -brief addr show dev "$dev" 2>/dev/null || { echo "  $dev missing"; ok=1; }
        in_ns "$ns" tc qdisc show dev "$dev" 2>/dev/null || true
    done
    return $ok
}

[[ $(id -u) == 0 ]] || die "needs root (ip netns, tc)"
command -v ip >/dev/null || die "ip (iproute2) not found"
command -v tc >/dev/null || die "tc (iproute2) not found"

case ${1:-} in
up) up ;;
down) down ;;
status) status ;;
*)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
