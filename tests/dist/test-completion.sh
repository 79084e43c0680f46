#!/bin/bash
# test-completion.sh MIGPROXY SCRIPT: the bash completion the build wrote
# (dist/) offers what --help shows.
#
#   - the first word: every command of `migproxy --help`, and its options;
#   - after a command, "--" and "-" offer every option of its --help;
#   - a file option's value completes files, a DIR option's directories
#     only (also written --opt=VALUE), other values nothing, and
#     `analyze` operands files.
set -uo pipefail

MIGPROXY=$1
SCRIPT=$2
fail=0
bad() {
    echo "FAIL: $*" >&2
    fail=1
}
# shellcheck disable=SC1090
source "$SCRIPT" || exit 1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/dir1"
touch "$tmp/data.mig"

# offered WORD...: what _migproxy offers for the words, the last being the
# one completed, one per line, sorted.
offered() {
    COMP_WORDS=("$@")
    COMP_CWORD=$(($# - 1))
    COMPREPLY=()
    _migproxy 2>/dev/null
    ((${#COMPREPLY[@]})) && printf '%s\n' "${COMPREPLY[@]}" | sort
}
expect() {
    local want=$1
    shift
    local got
    got=$(offered "$@" | tr '\n' ' ')
    [ "$got" = "$want" ] || bad "'$*': offered '$got', expected '$want'"
}
has() {
    local word=$1
    shift
    offered "$@" | grep -qxF -- "$word" || bad "'$*' does not offer $word"
}

commands=$("$MIGPROXY" --help \
    | sed -n '/^Commands:/,/^$/s/^  \([a-z][a-z-]*\) .*/\1/p')
for c in $commands; do
    has "$c" migproxy ""
    n=0
    while read -r opt; do
        n=$((n + 1))
        case $opt in
        --*) has "$opt" migproxy "$c" -- ;;
        *) has "$opt" migproxy "$c" - ;;
        esac
    done < <("$MIGPROXY" "$c" --help \
        | grep -oE '^  (-[^-], )?--[a-z0-9-]+' | tr ', ' '\n\n' | grep .)
    ((n >= 3)) || bad "$c --help: only $n options"
    echo "$c: $n option names offered"
done
has --version migproxy --
expect "relay " migproxy rel
expect "--listen " migproxy relay --lis
expect "$tmp/dir1 " migproxy relay --capture "$tmp/d"
expect "$tmp/dir1 " migproxy relay --capture = "$tmp/d"
expect "$tmp/data.mig $tmp/dir1 " migproxy relay --report "$tmp/d"
expect "$tmp/data.mig $tmp/dir1 " migproxy relay -r "$tmp/d"
expect "" migproxy relay --listen ""
expect "" migproxy relay --queue = ""
expect "$tmp/data.mig $tmp/dir1 " migproxy analyze --json "$tmp/d"
expect "--dump-ram " migproxy analyze --dump
expect "" migproxy no-such-command --
exit $fail
