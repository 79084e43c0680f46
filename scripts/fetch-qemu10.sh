#!/bin/bash
# fetch-qemu10.sh: install QEMU 10.0 (Debian bookworm-backports) into a
# private prefix, leaving the system's apt configuration and dpkg database
# alone.  The system keeps its QEMU 7.2 in /usr/bin.
#
#   scripts/fetch-qemu10.sh           # installs into <repo>/.qemu/10.0
#   MP_QEMU10_PREFIX=/opt/q10 scripts/fetch-qemu10.sh
#
# Then run it with scripts/qemu10 (sets QEMU_MODULE_DIR and -L).
#
# How:
#   1. the archive URI comes from the machine's own apt sources (the entry
#      whose suite is "bookworm"), so a mirror or proxy set up there is used;
#   2. a private sources list names only "bookworm-backports main"; apt-get
#      update/download run with Dir::Etc::SourceList, SourceParts=/dev/null,
#      Dir::State::Lists and Dir::Cache pointing into <prefix>.apt/;
#   3. the .debs are unpacked with dpkg -x into the prefix (no maintainer
#      scripts run, nothing is registered with dpkg).
#
# Packages unpacked (backports, 10.0.2 in 2025):
#   qemu-system-x86     the binary
#   qemu-system-common  its loadable modules (<prefix>/usr/lib/<triplet>/qemu)
#   qemu-system-data    firmware blobs, keymaps (<prefix>/usr/share/qemu)
#   seabios             QEMU 10's pc/q35 need seabios >> 1.16.3; bookworm has
#                       1.16.2 in /usr/share/seabios, so the backported one is
#                       unpacked too (<prefix>/usr/share/seabios)
# Not needed: qemu-system-modules-spice/-opengl and qemu-system-gui (display
# modules; migproxy runs -display none), ipxe-qemu (-nodefaults: no NIC; the
# bookworm one in /usr/lib/ipxe/qemu is found through QEMU's default path).
#
# Shared libraries: checked with ldd.  On bookworm none was missing (the 10.0
# binary needs the same libraries as the 7.2 package that is installed).  If
# some are, the lib* dependencies of the unpacked packages that are not
# installed are installed from bookworm itself with apt-get (needs root).
#
# Idempotent: when <prefix>/.mp-installed exists and the binary's libraries
# resolve, it exits at once.  Concurrent runs are serialised with flock.
set -euo pipefail

SUITE=bookworm
BRANCH=10.0
PACKAGES=(qemu-system-x86 qemu-system-common qemu-system-data)
FIRMWARE_PACKAGES=(seabios)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=${MP_QEMU10_PREFIX:-$ROOT/.qemu/10.0}
STAMP=$PREFIX/.mp-installed
BIN=$PREFIX/usr/bin/qemu-system-x86_64

log() {
    echo "fetch-qemu10: $*" >&2
}

die() {
    log "error: $*"
    exit 1
}

missing_libs() {
    # Prints the sonames ldd cannot resolve, on one line (empty when all
    # are present).
    ldd "$1" 2>/dev/null | awk '/not found/ { printf "%s ", $1 }' || true
}

installed_ok() {
    [[ -f $STAMP && -x $BIN ]] || return 1
    [[ -z $(missing_libs "$BIN") ]]
}

if installed_ok; then
    log "QEMU $(cat "$STAMP") already in $PREFIX"
    exit 0
fi

command -v apt-get >/dev/null || die "apt-get not found (Debian bookworm expected)"
command -v dpkg >/dev/null || die "dpkg not found (Debian bookworm expected)"

mkdir -p "$(dirname "$PREFIX")"
exec 9>"$PREFIX.lock"
flock 9
if installed_ok; then # another run finished while we waited
    log "QEMU $(cat "$STAMP") already in $PREFIX"
    exit 0
fi

# --- 1. the archive URI of the machine's bookworm entry -------------------
find_uri() {
    local f
    # deb822: a stanza whose Types has "deb" and whose Suites has "bookworm".
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        awk -v suite="$SUITE" '
            function flush() {
                if (uri != "" && types ~ /(^| )deb( |$)/ \
                    && (" " suites " ") ~ (" " suite " ") \
                    && tolower(enabled) != "no") {
                    print uri "\t" signed
                    found = 1
                    exit
                }
                uri = ""; types = ""; suites = ""; signed = ""; enabled = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            {
                key = $1; sub(/:$/, "", key); $1 = ""; sub(/^ +/, "")
                key = tolower(key)
                if (key == "types") types = $0
                else if (key == "uris") { split($0, u, " "); uri = u[1] }
                else if (key == "suites") suites = $0
                else if (key == "signed-by") signed = $0
                else if (key == "enabled") enabled = $0
            }
            END { if (!found) flush() }
        ' "$f"
    done
    # One-line format: deb [options] URI bookworm components...
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        awk -v suite="$SUITE" '
            /^[ \t]*deb[ \t]/ {
                line = $0; signed = ""
                if (match(line, /\[[^]]*\]/)) {
                    opts = substr(line, RSTART + 1, RLENGTH - 2)
                    line = substr(line, 1, RSTART - 1) substr(line, RSTART + RLENGTH)
                    if (match(opts, /signed-by=[^ ]+/))
                        signed = substr(opts, RSTART + 10, RLENGTH - 10)
                }
                n = split(line, w, /[ \t]+/)
                if (n >= 3 && w[3] == suite) { print w[2] "\t" signed; exit }
            }
        ' "$f"
    done
}

entry=$(find_uri | head -n 1)
[[ -n $entry ]] || die "no apt source for suite '$SUITE' in /etc/apt/sources.list{,.d/*}"
URI=${entry%%$'\t'*}
SIGNED=${entry#*$'\t'}
if [[ -z $SIGNED || $SIGNED == *$'\n'* || ! -f $SIGNED ]]; then
    SIGNED=/usr/share/keyrings/debian-archive-keyring.gpg
fi
log "archive $URI (from the machine's $SUITE entry)"

# --- 2. private apt state --------------------------------------------------
APTDIR=$PREFIX.apt
mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial" "$APTDIR/debs"
echo "deb [signed-by=$SIGNED] $URI $SUITE-backports main" >"$APTDIR/sources.list"
APT_OPTS=(
    -o "Dir::Etc::SourceList=$APTDIR/sources.list"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$APTDIR/lists"
    -o "Dir::Cache=$APTDIR/cache"
)
# The private dirs are not readable by the _apt sandbox user: download as
# ourselves rather than print a warning per file.
if [[ $(id -u) == 0 ]]; then
    APT_OPTS+=(-o "APT::Sandbox::User=root")
fi

log "apt-get update ($SUITE-backports, private lists)"
apt-get "${APT_OPTS[@]}" -q update >"$APTDIR/update.log" 2>&1 \
    || { cat "$APTDIR/update.log" >&2; die "apt-get update of $SUITE-backports failed"; }

# The newest 1:10.0.* of qemu-system-x86 in backports: later backports may
# move to 10.1, and we want 10.0 exactly.
VERSION=$(apt-cache "${APT_OPTS[@]}" madison qemu-system-x86 \
    | awk -F'|' -v b="$BRANCH" '
        { gsub(/ /, "", $2); gsub(/ /, "", $3) }
        $3 ~ /backports/ && $2 ~ ("^1:" b "\\.") { print $2; exit }')
[[ -n $VERSION ]] || die "no qemu-system-x86 $BRANCH.x in $SUITE-backports"
log "qemu-system-x86 $VERSION"

specs=()
for p in "${PACKAGES[@]}"; do
    specs+=("$p=$VERSION")
done
for p in "${FIRMWARE_PACKAGES[@]}"; do
    specs+=("$p/$SUITE-backports")
done

rm -f "$APTDIR/debs"/*.deb
(cd "$APTDIR/debs" && apt-get "${APT_OPTS[@]}" -q download "${specs[@]}") \
    >"$APTDIR/download.log" 2>&1 \
    || { cat "$APTDIR/download.log" >&2; die "apt-get download ${specs[*]} failed"; }

# --- 3. unpack into a staging dir, then move into place --------------------
STAGE=$PREFIX.partial
rm -rf "$STAGE"
mkdir -p "$STAGE"
for deb in "$APTDIR/debs"/*.deb; do
    log "unpacking $(basename "$deb")"
    dpkg -x "$deb" "$STAGE"
done
[[ -x $STAGE/usr/bin/qemu-system-x86_64 ]] || die "qemu-system-x86_64 missing after unpacking"

# --- 4. shared libraries ---------------------------------------------------
missing=$(missing_libs "$STAGE/usr/bin/qemu-system-x86_64")
if [[ -n $missing ]]; then
    log "libraries missing on this system: $missing"
    need=()
    for deb in "$APTDIR/debs"/*.deb; do
        for dep in $(dpkg-deb -f "$deb" Depends | tr ',' '\n' \
            | sed -e 's/|.*//' -e 's/(.*)//' -e 's/ //g' | grep '^lib' || true); do
            dpkg-query -W -f='${Status}' "$dep" 2>/dev/null | grep -q 'ok installed' \
                || need+=("$dep")
        done
    done
    [[ ${#need[@]} -gt 0 ]] || die "libraries missing but no uninstalled lib* dependency: $missing"
    log "installing from $SUITE: ${need[*]}"
    apt-get install -y -q --no-install-recommends "${need[@]}" >&2 \
        || { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends "${need[@]}" >&2; } \
        || die "apt-get install ${need[*]} failed"
    missing=$(missing_libs "$STAGE/usr/bin/qemu-system-x86_64")
    [[ -z $missing ]] || die "still missing after install: $missing"
fi

# --- 5. check that it runs, and install ---------------------------------------
MODDIR=$(echo "$STAGE"/usr/lib/*/qemu)
out=$(QEMU_MODULE_DIR=$MODDIR "$STAGE/usr/bin/qemu-system-x86_64" \
    -L "$STAGE/usr/share/qemu" -L "$STAGE/usr/share/seabios" --version) \
    || die "unpacked qemu-system-x86_64 does not run"
[[ $out == *"version $BRANCH."* ]] || die "unexpected version: $out"

echo "$VERSION" >"$STAGE/.mp-installed"
rm -rf "$PREFIX"
mv "$STAGE" "$PREFIX"
rm -f "$APTDIR/debs"/*.deb
log "installed QEMU $VERSION in $PREFIX; run it with scripts/qemu10"
