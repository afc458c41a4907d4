#!/usr/bin/env bash
# scripts/dev/lint.sh: every linter the machine has — luacheck (Lua, failing on a leftover
# #only focus tag), cppcheck and clang-tidy (C), shellcheck (scripts). Exit non-zero on any finding.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
rc=0
step() { echo "== $*"; "$@" || rc=1; }

step luacheck --codes scripts spec bench/scripts bindings/lua tests/fuzz
# The layers: core/ includes nothing of host/ or bindings/, host/ nothing of bindings/.
# shellcheck disable=SC2317 # called through step
layers() {
    local bad
    bad=$(grep -n '#include "\.\./\(host\|bindings\)/' core/*.[ch]; grep -n '#include "\.\./bindings/' host/*.[ch])
    [ -z "$bad" ] || { echo "an include against the layers (core <- host <- bindings):"; echo "$bad"; return 1; }
}
step layers
if grep -rn '#only' spec --include='*_spec.lua'; then echo "a #only focus tag is left in the specs"; rc=1; fi
cflags=$(pkg-config --cflags luajit libmicrohttpd libpq hiredis librabbitmq libcurl libjwt openssl libargon2)
# shellcheck disable=SC2086
step cppcheck --quiet --error-exitcode=1 --enable=warning,performance,portability --inline-suppr \
    --suppress=missingIncludeSystem -D_GNU_SOURCE -Ihost -Ibuild/gen host bindings core
if command -v clang-tidy >/dev/null; then
    # One file per clang-tidy run: given several files, clang-tidy 14 stops recognising va_start
    # after the first and reports every later vsnprintf wrapper as using an uninitialized va_list
    # (llvm/llvm-project#40656). MERCATO_VERSION is defined by the Makefile for every build.
    echo "== clang-tidy, one file per run, as many runs at once as CPUs: host/*.c bindings/*.c core/*.c"
    # shellcheck disable=SC2016 # $0 and $@ belong to the inner sh
    printf '%s\n' host/*.c bindings/*.c core/*.c | xargs -P "$(nproc 2>/dev/null || echo 2)" -I{} sh -c '
        clang-tidy --quiet --warnings-as-errors="*" \
            --checks="-*,bugprone-*,-bugprone-easily-swappable-parameters,-bugprone-reserved-identifier,-bugprone-narrowing-conversions,-bugprone-assignment-in-if-condition,clang-analyzer-*,-clang-analyzer-security.insecureAPI.*" \
            "$0" -- -std=gnu11 -D_GNU_SOURCE -DMERCATO_VERSION="\"lint\"" -Ihost -Ibuild/gen $1' {} "$cflags" || rc=1
fi
step shellcheck scripts/dev/*.sh bench/run.sh bench/services.sh bench/gateway.sh bench/pg_outage.sh bench/orders.sh bench/events.sh bench/checkout_cost.sh bench/footprint.sh .ci/run
step shellcheck docker/*.sh docker/postgres/*.sh spec/support/deploy/*.sh
exit $rc
