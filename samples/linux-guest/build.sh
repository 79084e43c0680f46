#!/bin/bash
# build.sh: make the Linux guest (a kernel and an initramfs) from Debian
# packages, for the post-copy benchmark and tests.  See README.md.
#
#   samples/linux-guest/build.sh            # prints the output folder
#   MP_GUEST_CACHE=DIR samples/linux-guest/build.sh
#
# Output (default samples/linux-guest/.cache/, gitignored):
#   vmlinuz            from linux-image-<abi>-cloud-amd64, the package that
#                      linux-image-cloud-amd64 (a metapackage) depends on
#   initramfs.cpio.gz  busybox (busybox-static) + ./init, newc, made by cpio
#   guest.env          KERNEL_VERSION=..., BUSYBOX_VERSION=... (what went in)
#
# How: apt-get download into <cache>/debs, dpkg -x into <cache>/pkg-*; no
# package is installed on the host except cpio, if it is missing (apt-get
# install, needs root).  Nothing is registered with dpkg.
#
# Idempotent: the kernel is fetched again only when the candidate version of
# linux-image-cloud-amd64 changes (or never, with MP_GUEST_OFFLINE=1 once
# built); the initramfs is rebuilt when init or busybox changed.  Concurrent
# runs are serialised with flock.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${MP_GUEST_CACHE:-$HERE/.cache}
KMETA=linux-image-cloud-amd64
BALLOON_MODULES="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_balloon"
BBPKG=busybox-static

log() {
    echo "linux-guest: $*" >&2
}

die() {
    log "error: $*"
    exit 1
}

command -v apt-get >/dev/null || die "apt-get not found (Debian expected)"
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9

APT_OPTS=()
# Downloading into a folder of root's: the _apt sandbox user could not
# write there, and apt would warn for each file.
if [[ $(id -u) == 0 ]]; then
    APT_OPTS+=(-o "APT::Sandbox::User=root")
fi

candidate() {
    # The version apt would install, or nothing.
    apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2 }' \
        | grep -v '(none)' || true
}

updated=0
candidate_or_update() {
    local v
    v=$(candidate "$1")
    if [[ -z $v && $updated == 0 ]]; then
        log "apt-get update (no candidate for $1 yet)"
        apt-get -q update >&2 || die "apt-get update failed"
        updated=1
        v=$(candidate "$1")
    fi
    [[ -n $v ]] || die "no candidate version of $1 (apt sources?)"
    echo "$v"
}

fetch() {
    # fetch PKG VERSION DIR: download PKG=VERSION and unpack it into DIR
    # (replaced).
    local pkg=$1 ver=$2 dir=$3 deb
    mkdir -p "$CACHE/debs"
    rm -f "$CACHE/debs/${pkg}_"*.deb
    log "apt-get download $pkg=$ver"
    (cd "$CACHE/debs" && apt-get "${APT_OPTS[@]}" -q download "$pkg=$ver") \
        >"$CACHE/download.log" 2>&1 \
        || { cat "$CACHE/download.log" >&2; die "apt-get download $pkg=$ver failed"; }
    deb=$(ls "$CACHE/debs/${pkg}_"*.deb)
    rm -rf "$dir.partial"
    mkdir -p "$dir.partial"
    dpkg -x "$deb" "$dir.partial"
    rm -rf "$dir"
    mv "$dir.partial" "$dir"
    rm -f "$deb"
}

have_stamp() {
    # have_stamp FILE CONTENT: FILE exists and holds exactly CONTENT.
    [[ -f $1 && $(cat "$1") == "$2" ]]
}

# --- kernel -----------------------------------------------------------------
if [[ ${MP_GUEST_OFFLINE:-0} == 1 && -f $CACHE/vmlinuz && -f $CACHE/kernel.stamp && -f $CACHE/modules/order ]]; then
    kstamp=$(cat "$CACHE/kernel.stamp")
else
    kver=$(candidate_or_update "$KMETA")
    # The metapackage holds no kernel: it depends on exactly one image
    # package of the same version (linux-image-6.1.0-NN-cloud-amd64).
    kpkg=$(apt-cache show "$KMETA=$kver" | awk -F': ' '/^Depends:/ { print $2; exit }' \
        | tr ',' '\n' | sed -e 's/(.*)//' -e 's/ //g' \
        | grep -E '^linux-image-[0-9].*-cloud-amd64$' | head -n 1 || true)
    [[ -n $kpkg ]] || die "cannot tell which image package $KMETA=$kver depends on"
    kstamp="$kpkg=$kver"
    if ! have_stamp "$CACHE/kernel.stamp" "$kstamp" || [[ ! -f $CACHE/vmlinuz ]] \
        || [[ ! -f $CACHE/modules/order ]]; then
        fetch "$kpkg" "$kver" "$CACHE/pkg-kernel"
        vml=$(ls "$CACHE/pkg-kernel/boot/"vmlinuz-* 2>/dev/null | head -n 1 || true)
        [[ -n $vml ]] || die "$kpkg has no /boot/vmlinuz-*"
        cp "$vml" "$CACHE/vmlinuz.partial"
        # the virtio-balloon driver and what it needs, in load order
        # (init's mp_balloon=1); every other module is dropped
        rm -rf "$CACHE/modules" "$CACHE/modules.partial"
        mkdir -p "$CACHE/modules.partial"
        for m in $BALLOON_MODULES; do
            ko=$(find "$CACHE/pkg-kernel/lib/modules" -name "$m.ko" | head -n 1)
            [[ -n $ko ]] || die "$kpkg has no $m.ko"
            cp "$ko" "$CACHE/modules.partial/"
            echo "$m" >>"$CACHE/modules.partial/order"
        done
        mv "$CACHE/modules.partial" "$CACHE/modules"
        mv "$CACHE/vmlinuz.partial" "$CACHE/vmlinuz"
        # The modules (~90 MB unpacked) are not needed: no disk, no network,
        # and everything the guest uses (tmpfs, devtmpfs, 8250 console,
        # gzip initramfs) is built in.
        rm -rf "$CACHE/pkg-kernel"
        echo "$kstamp" >"$CACHE/kernel.stamp"
        log "kernel: $kstamp"
    fi
fi

# --- busybox ----------------------------------------------------------------
if [[ ${MP_GUEST_OFFLINE:-0} == 1 && -x $CACHE/pkg-busybox/bin/busybox && -f $CACHE/busybox.stamp ]]; then
    bstamp=$(cat "$CACHE/busybox.stamp")
else
    bver=$(candidate_or_update "$BBPKG")
    bstamp="$BBPKG=$bver"
    if ! have_stamp "$CACHE/busybox.stamp" "$bstamp" || [[ ! -x $CACHE/pkg-busybox/bin/busybox ]]; then
        fetch "$BBPKG" "$bver" "$CACHE/pkg-busybox"
        [[ -x $CACHE/pkg-busybox/bin/busybox ]] || die "$BBPKG has no /bin/busybox"
        echo "$bstamp" >"$CACHE/busybox.stamp"
        log "busybox: $bstamp"
    fi
fi

# --- initramfs --------------------------------------------------------------
istamp="$bstamp $kstamp $(cat "$HERE/init" "$CACHE/modules/order" | sha256sum | cut -d' ' -f1)"
if ! have_stamp "$CACHE/initramfs.stamp" "$istamp" || [[ ! -f $CACHE/initramfs.cpio.gz ]]; then
    if ! command -v cpio >/dev/null; then
        log "installing cpio"
        apt-get install -y -q --no-install-recommends cpio >&2 \
            || { apt-get -q update >&2 && apt-get install -y -q --no-install-recommends cpio >&2; } \
            || die "apt-get install cpio failed"
    fi
    root=$CACHE/initramfs.root
    rm -rf "$root"
    mkdir -p "$root/bin" "$root/dev" "$root/proc" "$root/sys" "$root/fill" "$root/tmp"
    cp "$CACHE/pkg-busybox/bin/busybox" "$root/bin/busybox"
    install -m 0755 "$HERE/init" "$root/init"
    mkdir -p "$root/lib/mp-modules"
    cp "$CACHE/modules/"* "$root/lib/mp-modules/"
    # Without /dev/console in the initramfs the kernel starts init with no
    # stdout ("unable to open an initial console"); init mounts devtmpfs
    # and reopens the console anyway, so only root can add the node.
    if [[ $(id -u) == 0 ]]; then
        mknod -m 0600 "$root/dev/console" c 5 1
    fi
    # Fixed owner and mtime: the same inputs give the same archive.
    (cd "$root" && find . -print0 | LC_ALL=C sort -z \
        | cpio --null --create --format=newc --owner=0:0 --reproducible --quiet) \
        | gzip -n -9 >"$CACHE/initramfs.cpio.gz.partial"
    mv "$CACHE/initramfs.cpio.gz.partial" "$CACHE/initramfs.cpio.gz"
    rm -rf "$root"
    echo "$istamp" >"$CACHE/initramfs.stamp"
    log "initramfs: $(stat -c %s "$CACHE/initramfs.cpio.gz") bytes"
fi

{
    echo "KERNEL=$kstamp"
    echo "BUSYBOX=$bstamp"
} >"$CACHE/guest.env"
echo "$CACHE"
