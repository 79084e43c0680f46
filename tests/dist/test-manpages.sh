#!/bin/bash
# test-manpages.sh MIGPROXY MANDIR: the man pages the build wrote (man/)
# say what --help says, and render without a warning.
#
#   - every command that `migproxy --help` lists has its page, and no page
#     is left over;
#   - every option line of `migproxy [COMMAND] --help` ("-l, --listen=HOST:PORT"
#     and its text) is in the rendered page, white space aside;
#   - every line of the command's Examples is in the page;
#   - `man --warnings` (as lintian runs it) or groff -ww says nothing.
set -uo pipefail

MIGPROXY=$1
MANDIR=$2
fail=0
bad() {
    echo "FAIL: $*" >&2
    fail=1
}

if command -v man >/dev/null; then
    render() {
        LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -E UTF-8 -l -Tutf8 -Z "$1"
    }
    text() {
        LC_ALL=C.UTF-8 MANWIDTH=80 man -l "$1" 2>/dev/null | col -b
    }
elif command -v groff >/dev/null; then
    render() {
        groff -man -ww -Tutf8 "$1"
    }
    text() {
        groff -man -Tutf8 -P-cbou "$1" 2>/dev/null
    }
else
    echo "neither man nor groff: skipped"
    exit 77
fi

# Collapses white space, so that wrapped lines compare with --help's.
flat() {
    tr -s ' \t\n' '   '
}

# `migproxy [COMMAND] --help` vs PAGE.
check_page() {
    local page=$1
    shift
    [ -f "$page" ] || {
        bad "$page missing"
        return
    }
    local warnings
    warnings=$(render "$page" 2>&1 >/dev/null)
    [ -z "$warnings" ] || bad "$page: warnings: $warnings"
    local rendered help
    rendered=$(text "$page" | flat)
    help=$("$MIGPROXY" "$@" --help)
    local n=0 line opt desc
    # option lines: two spaces, "-x, --name[=ARG]" or "--name[=ARG]", text
    while IFS= read -r line; do
        [[ $line =~ ^\ \ (-.,\ )?(--[^\ ]+)\ +(.*)$ ]] || continue
        opt="${BASH_REMATCH[1]}${BASH_REMATCH[2]}"
        desc=${BASH_REMATCH[3]}
        n=$((n + 1))
        [[ $rendered == *" $opt $(echo "$desc" | flat)"* ]] \
            || bad "$page: '$opt' ($desc) as --help shows it is not in the page"
    done <<<"$help"
    ((n >= 2)) || bad "migproxy $* --help: only $n options found"
    # Examples: every line, indented in --help as in the page
    local in_examples=0
    while IFS= read -r line; do
        if [[ $line == Examples:* ]]; then
            in_examples=1
            continue
        fi
        ((in_examples)) || continue
        [[ $line == "  "* || -z $line ]] || break
        [ -z "$line" ] && continue
        [[ $rendered == *"$(echo "$line" | flat)"* ]] \
            || bad "$page: example line '$line' is not in the page"
    done <<<"$help"
    echo "$page: $n options checked"
}

commands=$("$MIGPROXY" --help \
    | sed -n '/^Commands:/,/^$/s/^  \([a-z][a-z-]*\) .*/\1/p')
[ -n "$commands" ] || bad "no commands in migproxy --help"
check_page "$MANDIR/migproxy.1"
for c in $commands; do
    check_page "$MANDIR/migproxy-$c.1" "$c"
    grep -q "migproxy\\\\-$c" "$MANDIR/migproxy.1" \
        || bad "migproxy.1 does not name migproxy-$c"
done
for page in "$MANDIR"/migproxy-*.1; do
    c=${page##*/migproxy-}
    c=${c%.1}
    grep -qx "$c" <<<"$commands" || bad "$page: no such command in --help"
done
# the hidden generator says no to a command that does not exist
if "$MIGPROXY" --man no-such-command >/dev/null 2>&1; then
    bad "migproxy --man no-such-command succeeded"
fi
exit $fail
