#!/bin/bash
# test-usage.sh MIGPROXY: a usage error exits 2 with a message naming the
# command, for each command's checks after its option table was parsed
# (string options given, so that an early return that forgets them shows
# as a leak in the ASan build: scripts/test.sh runs this suite there).
set -uo pipefail

MIGPROXY=$1
fail=0
# expect_usage COMMAND ARG...: exit status 2, "migproxy COMMAND" on stderr
expect_usage() {
    local out rc
    out=$("$MIGPROXY" "$@" 2>&1 >/dev/null)
    rc=$?
    if [ "$rc" -ne 2 ] || [[ $out != *"migproxy $1"* && $out != migproxy:* ]]; then
        echo "FAIL: migproxy $*: status $rc, said: $out"
        fail=1
    fi
}
expect_usage analyze --no-such-option --dump-ram=d
expect_usage analyze --dump-ram=d
expect_usage analyze --dump-ram=d one.mig two.mig
expect_usage report --no-such-option --output=o.html --snapshot=s
expect_usage report --output=o.html --snapshot=s
expect_usage report --output=o.html --snapshot=s one.mig two.mig
expect_usage report --snapshot=s one.mig
expect_usage relay --no-such-option --report=r.json --allow=127.0.0.1
expect_usage relay --listen=127.0.0.1:0 --report=r.json --allow=127.0.0.1
expect_usage relay --listen=127.0.0.1:0 --to=127.0.0.1:1 --rate=fast \
    --queue=1M --metrics=m --capture=c
expect_usage relay --listen=127.0.0.1:0 --to=127.0.0.1:1 extra
expect_usage demo --no-such-option --keep=k
expect_usage demo --qemu=9 --machine=m --workload=w --kernel=k --keep=k
expect_usage demo --memory=1 --machine=m
expect_usage demo --through=tunnel --keep=k
expect_usage no-such-command
# each command's synopsis names its operands once ("FILE...", not
# "FILE... FILE...": the option table's operand entry has no description)
for cmd in analyze report replay plan relay source dest demo; do
    synopsis=$("$MIGPROXY" "$cmd" --help 2>/dev/null | sed -n 2p)
    last=${synopsis##* }
    rest=${synopsis% *}
    if [ -n "$last" ] && [ "${rest##* }" = "$last" ]; then
        echo "FAIL: migproxy $cmd --help: synopsis '$synopsis' names $last twice"
        fail=1
    fi
done
"$MIGPROXY" >/dev/null 2>&1
[ $? -eq 2 ] || { echo "FAIL: migproxy without a command: not 2"; fail=1; }
exit $fail
