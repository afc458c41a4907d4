#!/usr/bin/env bash
# scripts/dev/valgrind.sh: the host's start/serve/stop cycle under valgrind — requests of every
# kind (Lua route, params, error, 404, 405, 413, metrics, a hot reload), then SIGTERM. Prints
# TAP; fails on any leak ("definitely" or "indirectly lost") or memory error.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1

bin=${MERCATO_BIN:-build/mercato}
dir=$(mktemp -d /tmp/mercato-valgrind.XXXXXX)
port=$((20000 + RANDOM % 20000))
cp -r spec/fixtures/host/scripts "$dir/"
log=$dir/valgrind.log

SERVICE=product SCRIPTS_DIR=$dir/scripts PORT=$port LISTEN_ADDR=127.0.0.1 WORKERS=2 HOT_RELOAD=1 \
    valgrind --leak-check=full --show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect \
    --error-exitcode=9 --log-file="$log" "$bin" >"$dir/out.log" 2>&1 &
pid=$!

for _ in $(seq 1 300); do
    curl -s -o /dev/null "http://127.0.0.1:$port/health" && break
    sleep 0.1
done

n=0
hit() {   # hit PATH [curl options...]
    local path=$1
    shift
    curl -s -o /dev/null -w "# %{http_code} ${path}\n" "$@" "http://127.0.0.1:$port${path}"
    n=$((n + 1))
}
head -c 5000 /dev/zero >"$dir/big"
hit '/hello'
hit '/items/a%20b?q=1'
hit '/boom'
hit '/nowhere'
hit '/hello' -X DELETE
hit '/upload' -X POST --data-binary "@$dir/big"
hit '/echo' -X POST -d '{"a":1}'
hit '/metrics'
echo 'return { number = 2 }' >"$dir/scripts/services/product/version.lua"
sleep 1
hit '/version'
echo 'return { number = ' >"$dir/scripts/services/product/version.lua"
sleep 1
hit '/version'

kill -TERM "$pid"
wait "$pid"
rc=$?

echo "# $n requests served; valgrind log: $log"
if [ "$rc" -eq 0 ]; then
    echo "ok 1 - start/serve/stop exits 0 under valgrind"
else
    echo "not ok 1 - start/serve/stop exited $rc under valgrind"
fi
if grep -q "All heap blocks were freed" "$log" ||
    { grep -q "definitely lost: 0 bytes" "$log" && grep -q "indirectly lost: 0 bytes" "$log"; }; then
    echo "ok 2 - no memory definitely lost"
else
    echo "not ok 2 - memory definitely lost"
    grep -A30 "definitely lost in" "$log" | head -60 | sed 's/^/# /'
fi
if grep -q "ERROR SUMMARY: 0 errors" "$log"; then
    echo "ok 3 - no memory errors"
else
    echo "not ok 3 - valgrind reported errors"
    grep -B2 -A20 "Invalid\|uninitialised\|indirectly lost in" "$log" | head -60 | sed 's/^/# /'
fi
echo "1..3"
[ "$rc" -eq 0 ] && rm -rf "$dir"
exit 0
