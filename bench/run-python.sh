# run-python.sh: sourced by the bench wrappers (bench-pair.sh,
# bench-postcopy.sh, bench-relay.sh) to run their Python script.
#
#   bench_run_python NAME NET_DOWN SCRIPT [ARG...]
#
# Runs `python3 SCRIPT ARG...` with MP_BENCH_PIDFILE set to a new pid file,
# in which the script records every process it starts (pid, start time,
# name).  The script ends what it started itself; this is the second line,
# for a script that was killed: on any exit of the wrapper, every process
# in the pid file whose start time still matches (so a reused pid is never
# hit) is killed, and with NET_DOWN 1 scripts/netns-link.sh takes the
# namespaces down.  The script runs in the background, so that a signal to
# the wrapper runs the trap at once instead of after the script returns.
# Returns the script's exit status.

bench_cleanup() {
    local pid start name now
    trap - EXIT INT TERM HUP
    if [[ -n $BENCH_PY ]] && kill -0 "$BENCH_PY" 2>/dev/null; then
        kill -TERM "$BENCH_PY" 2>/dev/null || true
        wait "$BENCH_PY" 2>/dev/null || true
    fi
    while read -r pid start name; do
        [[ -r /proc/$pid/stat ]] || continue
        now=$(awk '{ sub(/.*\) /, ""); print $20 }' "/proc/$pid/stat" 2>/dev/null || true)
        if [[ $now == "$start" ]]; then
            echo "$BENCH_NAME: ending leftover $name (pid $pid)" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done <"$BENCH_PIDFILE"
    rm -f "$BENCH_PIDFILE"
    if [[ $BENCH_NET_DOWN == 1 ]]; then
        "$ROOT/scripts/netns-link.sh" down 2>/dev/null || true
    fi
}

bench_run_python() {
    BENCH_NAME=$1
    BENCH_NET_DOWN=$2
    shift 2
    BENCH_PY=
    BENCH_PIDFILE=$(mktemp "/tmp/$BENCH_NAME-pids.XXXXXX")
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    trap 'exit 129' HUP
    MP_BENCH_PIDFILE=$BENCH_PIDFILE python3 "$@" &
    BENCH_PY=$!
    local rc=0
    wait "$BENCH_PY" || rc=$?
    BENCH_PY=
    return "$rc"
}
