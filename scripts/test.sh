#!/bin/bash
# test.sh: set everything up and run the whole test suite:
#   1. unit and integration tests (real QEMU 7.2 and 10.0) in build/;
#   2. the same unit tests and the analyzer's, relay's, tunnel's and replay's
#      integration tests under AddressSanitizer + UBSan in build-asan/;
#   3. each libFuzzer target for MP_FUZZ_SECONDS (default 30) in build-fuzz/.
# Exits non-zero if anything fails; ends with "N passed, N failed".
#
#   scripts/test.sh                  everything
#   MP_TEST_QUICK=1 scripts/test.sh  step 1 only
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
FUZZ_SECONDS=${MP_FUZZ_SECONDS:-30}
WERROR=-Dwerror=true

passed=0
failed=0
step() {
    echo
    echo "=== $* ==="
}
# Adds a meson test log's results to the totals.
count() {
    local log=$1/meson-logs/testlog.json
    [ -f "$log" ] || return 0
    local p f
    p=$(grep -c '"result": "OK"' "$log")
    f=$(grep -c -E '"result": "(FAIL|TIMEOUT|ERROR|UNEXPECTEDPASS)"' "$log")
    passed=$((passed + p))
    failed=$((failed + f))
}

step "setup and build (build/)"
MP_MESON_ARGS="$WERROR" scripts/setup.sh || exit 1

step "unit and integration tests"
meson test -C build --print-errorlogs --num-processes 2
count build

if [ -z "${MP_TEST_QUICK:-}" ]; then
    step "AddressSanitizer + UBSan (build-asan/)"
    if [ ! -f build-asan/build.ninja ]; then
        meson setup build-asan $WERROR -Db_sanitize=address,undefined \
            -Db_lundef=false >/dev/null || exit 1
    fi
    if ninja -C build-asan >/dev/null; then
        # intercept_tls_get_addr=0: with the tunnel's TLS, GIO loads
        # glib-networking (GnuTLS) with dlopen, and LeakSanitizer's record
        # of such modules' thread-local blocks goes wrong on bookworm (gcc
        # 12): its tracer crashes at exit ("Tracer caught signal 11", "DTLS
        # ... at 0x00020000012c"); the blocks are ordinary heap to it then
        ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:intercept_tls_get_addr=0 \
        UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
            meson test -C build-asan --print-errorlogs --num-processes 2 -t 4 \
            --suite unit --suite analyze --suite relay --suite tunnel \
            --suite replay --suite dist
        count build-asan
    else
        ninja -C build-asan
        failed=$((failed + 1))
    fi

    step "fuzzing, ${FUZZ_SECONDS}s per target (build-fuzz/)"
    if [ ! -f build-fuzz/build.ninja ]; then
        CC=clang meson setup build-fuzz -Dfuzz=true >/dev/null || exit 1
    fi
    if ninja -C build-fuzz >/dev/null; then
        for f in build-fuzz/tests/fuzz/fuzz-*; do
            [ -f "$f" ] && [ -x "$f" ] || continue  # meson also makes fuzz-*.p directories
            name=$(basename "$f")
            corpus=$(mktemp -d)
            seeds=tests/fuzz/corpus/${name#fuzz-}
            [ -d "$seeds" ] && cp -r "$seeds"/. "$corpus"/
            if "$f" -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 \
                -print_final_stats=1 "$corpus" >"$corpus.log" 2>&1; then
                echo "$name: ok ($(grep -o 'stat::number_of_executed_units: [0-9]*' "$corpus.log" | awk '{print $2}') execs)"
                passed=$((passed + 1))
            else
                tail -n 40 "$corpus.log"
                echo "$name: FAILED"
                failed=$((failed + 1))
            fi
            rm -rf "$corpus" "$corpus.log"
        done
    else
        ninja -C build-fuzz
        failed=$((failed + 1))
    fi
fi

echo
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
