#!/usr/bin/env bash
# scripts/dev/fuzz.sh [TARGET...]: run the libFuzzer targets built by `make fuzz-build`
# (build/fuzz/fuzz/fuzz_*) one after the other, FUZZ_SECONDS each (default 1800), on a working
# copy of the repository's seed corpus (tests/fuzz/corpus/<target>/, never written to: new
# inputs go to .run/fuzz/corpus/<target>/). Crashes are saved under .run/fuzz/crashes/.
# It prints one TAP line per target (scripts/dev/test.sh runs each for 30 s as a suite).
# FUZZ_OUT (default .run/fuzz) and FUZZ_BIN_DIR (default build/fuzz/fuzz) move its files.
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
    # -rss_limit_mb: ASan's shadow counts; -timeout: a single input taking 10 s is a finding.
    "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=8192 -print_final_stats=1 \
        -artifact_prefix="$out/crashes/$t/" "$work" "tests/fuzz/corpus/$t" >"$log" 2>&1
    rc=$?
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    if [ "$rc" -eq 0 ]; then
        echo "ok $n - $t: ${seconds}s, ${runs:-?} runs, ${cov:-cov: ?}, no finding"
    else
        echo "not ok $n - $t: exit $rc after ${runs:-?} runs (log $log, inputs in $out/crashes/$t/)"
        grep -m5 -E 'ERROR|SUMMARY|fuzz property failed|runtime error' "$log" | sed 's/^/#   /'
        bad=$((bad + 1))
    fi
done
[ "$bad" -eq 0 ]
