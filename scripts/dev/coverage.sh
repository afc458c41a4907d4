#!/usr/bin/env bash
# scripts/dev/coverage.sh: `make coverage` — C line coverage (gcov/lcov) of the host and
# bindings, and Lua line coverage of scripts/ (LUA_COVERAGE line hook), from the C tests and
# every integration spec run against a --coverage build. Reports under build/coverage/.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
out=build/coverage
rm -rf "$out" && mkdir -p "$out/lua-raw"
make --no-print-directory BUILD=build/cov OPT=-O0 EXTRA_CFLAGS=--coverage EXTRA_LDFLAGS=--coverage all >/dev/null || exit 1
find build/cov -name '*.gcda' -delete

# Leave the stack as it was found: stopped at the end if this run started it.
if scripts/dev/stack.sh status >/dev/null 2>&1; then started_stack=0; else started_stack=1; fi
stop_stack() { if [ "$started_stack" = 1 ]; then scripts/dev/stack.sh down >/dev/null 2>&1 || true; fi; }
trap stop_stack EXIT
scripts/dev/stack.sh up >/dev/null && scripts/dev/stack.sh reset-db >/dev/null || exit 1
set -a
# shellcheck disable=SC1090
. <(scripts/dev/stack.sh env)
set +a
export DATABASE_URL=${DATABASE_URL_PRODUCT:-} MERCATO_BIN=build/cov/mercato LUA_COVERAGE=$PWD/$out/lua-raw

for t in build/cov/tests/test_*; do
    case $t in *.gc*) continue ;; esac
    "$t" >/dev/null 2>&1 || echo "coverage: $t failed"
done
for f in spec/unit/*_spec.lua spec/unit/*/*_spec.lua spec/integration/*_spec.lua spec/e2e/*_spec.lua; do
    [ -f "$f" ] || continue
    build/cov/mercato lua spec/support/busted.lua -o TAP "$f" >"$out/$(basename "$f").tap" 2>&1 ||
        echo "coverage: $f had failures (see $out/$(basename "$f").tap)"
done

echo "== C (gcov)"
lcov --quiet --capture --directory build/cov/obj --output-file "$out/c.info" --rc lcov_branch_coverage=0 >/dev/null 2>&1
lcov --quiet --extract "$out/c.info" '*/host/*' '*/bindings/*' --output-file "$out/c.info" >/dev/null 2>&1
lcov --list "$out/c.info" 2>/dev/null | grep -E '\.c|Total' | sed 's/^/  /'
genhtml --quiet "$out/c.info" --output-directory "$out/c-html" >/dev/null 2>&1

echo "== Lua (line hook)"
trees=(scripts/lib)
for d in scripts/services/*/; do trees+=("${d%/}"); done
build/cov/mercato lua scripts/dev/coverage.lua "$out/lua-raw" "$out/lua.info" "${trees[@]}" | sed 's/^/  /'
genhtml --quiet "$out/lua.info" --output-directory "$out/lua-html" >/dev/null 2>&1
echo "reports: $out/c-html/index.html, $out/lua-html/index.html"
