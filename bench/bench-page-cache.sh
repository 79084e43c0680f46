#!/bin/bash
# bench-page-cache.sh: the cost of a put into the tunnel's page cache
# (filters/page-cache.c), first pass (fresh memory) and second pass, for
# this tree and, with --before REV, the page-cache.c of an older commit,
# alternating in one run (docs/benchmarks.md, "The page cache in huge
# pages").
#
#   bench/bench-page-cache.sh [--mib 128] [--rounds 3] [--before REV]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mib=128 rounds=3 before=
while [[ $# -gt 0 ]]; do
    case $1 in
    --mib) mib=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --before) before=$2; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "bench-page-cache: unknown option $1" >&2; exit 2 ;;
    esac
done
[[ -f $ROOT/build/config.h ]] || meson setup "$ROOT/build" "$ROOT" >&2
work=$(mktemp -d /tmp/bench-page-cache.XXXXXX)
trap 'rm -rf "$work"' EXIT
build() { # NAME PAGE_CACHE_C
    cc -O2 -Wall -o "$work/$1" "$ROOT/bench/page-cache-fill.c" "$2" \
        -I"$ROOT/filters" -I"$ROOT/parsers" -I"$ROOT/build" \
        $(pkg-config --cflags --libs glib-2.0 libxxhash)
}
build now "$ROOT/filters/page-cache.c"
names=now
if [[ -n $before ]]; then
    git -C "$ROOT" show "$before:filters/page-cache.c" > "$work/before.c"
    build before "$work/before.c"
    names="now before"
fi
echo "THP: $(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null || echo none)"
for ((r = 1; r <= rounds; r++)); do
    for n in $names; do
        echo "$n: $("$work/$n" "$mib" 1)"
    done
done
