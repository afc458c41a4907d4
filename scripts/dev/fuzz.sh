#!/usr/bin/env bash
# scripts/dev/fuzz.sh [TARGET...]: run the libFuzzer targets built by `make fuzz-build`
# (build/fuzz/fuzz/fuzz_*) one after the other, FUZZ_SECONDS each (default 1800), on a working
# copy of the repository's seed corpus (tests/fuzz/corpus/<target>/, never written to: new
# inputs go to .run/fuzz/corpus/<target>/). Crashes are saved under .run/fuzz/crashes/.
# It prints one TAP line per target (scripts/dev/test.sh runs each for 30 s as a suite).
# FUZZ_OUT (default .run/fuzz) and FUZZ_BIN_DIR (default build/fuzz/fuzz) move its files.
# FUZZ_CPU_SECONDS=N makes each target's budget N seconds of its own CPU time (user + system)
# instead of wall time, so a run on a shared or loaded machine still gets its full share: the
# target is stopped with SIGINT once it has used N (run it under `nice` to fuzz with idle CPU).
# libFuzzer's per-input -timeout is wall-clock time: FUZZ_TIMEOUT seconds (default 10, and 120 with
# FUZZ_CPU_SECONDS, where other work may hold the CPU for seconds — at nice 19 behind a test run,
# inputs that take 1 ms alone were reported as 13-22 s timeouts). A hang is still one.
# Exit status: 0 when no target found anything.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1

seconds=${FUZZ_SECONDS:-1800}
out=${FUZZ_OUT:-.run/fuzz}
bins=${FUZZ_BIN_DIR:-build/fuzz/fuzz}
mkdir -p "$out/crashes"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for f in tests/fuzz/fuzz_*.c; do targets+=("$(basename "$f" .c)"); done
fi

# cpu_seconds PID: the CPU time (user + system, whole seconds) the process has used so far.
cpu_seconds() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    stat=${stat##*) }   # the fields after the command name, which may hold spaces
    # shellcheck disable=SC2086
    set -- $stat
    echo $(( (${12} + ${13}) / $(getconf CLK_TCK) ))
}

n=0
bad=0
for t in "${targets[@]}"; do
    n=$((n + 1))
    bin=$bins/$t
    work=$out/corpus/$t
    mkdir -p "$work" "$out/crashes/$t"
    if [ ! -x "$bin" ]; then
        echo "not ok $n - $t: $bin is not built (make fuzz-build)"
        bad=$((bad + 1))
        continue
    fi
    log=$out/$t.log
    # -rss_limit_mb: ASan's shadow counts; -timeout: a single input taking that long is a finding.
    timeout=${FUZZ_TIMEOUT:-10}
    [ -n "${FUZZ_CPU_SECONDS:-}" ] && timeout=${FUZZ_TIMEOUT:-120}
    wall=$seconds
    [ -n "${FUZZ_CPU_SECONDS:-}" ] && wall=$((FUZZ_CPU_SECONDS * 100))
    started=$SECONDS
    "$bin" -max_total_time="$wall" -timeout="$timeout" -rss_limit_mb=2048 -max_len=8192 -print_final_stats=1 \
        -artifact_prefix="$out/crashes/$t/" "$work" "tests/fuzz/corpus/$t" >"$log" 2>&1 &
    pid=$!
    cpu=0
    if [ -n "${FUZZ_CPU_SECONDS:-}" ]; then
        while kill -0 "$pid" 2>/dev/null; do
            cpu=$(cpu_seconds "$pid")
            if [ "${cpu:-0}" -ge "$FUZZ_CPU_SECONDS" ]; then kill -INT "$pid"; break; fi
            sleep 5
        done
    fi
    wait "$pid"
    rc=$?
    # libFuzzer exits 72 on SIGINT: the end of a CPU budget, not a finding.
    [ -n "${FUZZ_CPU_SECONDS:-}" ] && [ "$rc" -eq 72 ] && [ "${cpu:-0}" -ge "$FUZZ_CPU_SECONDS" ] && rc=0
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    [ -z "$runs" ] && runs=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#')
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    took="${seconds}s"
    [ -n "${FUZZ_CPU_SECONDS:-}" ] && took="${cpu}s of CPU in $((SECONDS - started))s"
    if [ "$rc" -eq 0 ]; then
        echo "ok $n - $t: $took, ${runs:-?} runs, ${cov:-cov: ?}, no finding"
    else
        echo "not ok $n - $t: exit $rc after ${runs:-?} runs (log $log, inputs in $out/crashes/$t/)"
        grep -m5 -E 'ERROR|SUMMARY|fuzz property failed|runtime error' "$log" | sed 's/^/#   /'
        bad=$((bad + 1))
    fi
done
[ "$bad" -eq 0 ]
