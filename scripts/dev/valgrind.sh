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

# The same for a gateway in front of a product fixture, both under valgrind: forwards (a named
# upstream, a large answer, a body), a 502, a 504, and handlers parked on outbound HTTP and on
# host.sleep.
gport=$((port + 1)) uport=$((port + 2)) closed=$((port + 3))
SERVICE=product SCRIPTS_DIR=spec/fixtures/gateway/scripts PORT=$uport LISTEN_ADDR=127.0.0.1 WORKERS=2 \
    FIXTURE_STATE_DIR=$dir valgrind --leak-check=full --show-leak-kinds=definite,indirect \
    --errors-for-leak-kinds=definite,indirect --error-exitcode=9 --log-file="$dir/upstream.log" "$bin" \
    >"$dir/upstream.out" 2>&1 &
upid=$!
SERVICE=gateway PORT=$gport LISTEN_ADDR=127.0.0.1 WORKERS=2 GATEWAY_TIMEOUT_MS=1500 \
    PRODUCT_SERVICE_URL=http://localhost:$uport ORDER_SERVICE_URL=http://127.0.0.1:$closed \
    valgrind --leak-check=full --show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect \
    --error-exitcode=9 --log-file="$dir/gateway.log" "$bin" >"$dir/gateway.out" 2>&1 &
gpid=$!
for _ in $(seq 1 300); do
    curl -s -o /dev/null "http://127.0.0.1:$gport/products/ready" && curl -s -o /dev/null "http://127.0.0.1:$uport/health" && break
    sleep 0.1
done
port=$gport
hit '/products/x?y=1'
hit '/products/big?n=200000'
hit '/products/raw' -X POST --data-binary "@$dir/big"
hit '/orders'
hit '/products/slow?s=2'
hit '/products/nap?s=0.2'
hit '/products/relay' -X POST -d "{\"url\":\"http://127.0.0.1:$gport/health\"}"
hit '/products/relay' -X POST -d "{\"url\":\"http://127.0.0.1:$closed/\"}"
kill -TERM "$gpid"
wait "$gpid"
grc=$?
kill -TERM "$upid"
wait "$upid"
urc=$?

echo "# $n requests served; valgrind logs: $log, $dir/gateway.log, $dir/upstream.log"
t=0
check() {   # check NAME RC LOG
    local name=$1 rc=$2 vlog=$3
    t=$((t + 1))
    if [ "$rc" -eq 0 ]; then echo "ok $t - $name: start/serve/stop exits 0 under valgrind"
    else echo "not ok $t - $name: start/serve/stop exited $rc under valgrind"; fi
    t=$((t + 1))
    if grep -q "All heap blocks were freed" "$vlog" ||
        { grep -q "definitely lost: 0 bytes" "$vlog" && grep -q "indirectly lost: 0 bytes" "$vlog"; }; then
        echo "ok $t - $name: no memory definitely lost"
    else
        echo "not ok $t - $name: memory definitely lost"
        grep -A30 "definitely lost in" "$vlog" | head -60 | sed 's/^/# /'
    fi
    t=$((t + 1))
    if grep -q "ERROR SUMMARY: 0 errors" "$vlog"; then
        echo "ok $t - $name: no memory errors"
    else
        echo "not ok $t - $name: valgrind reported errors"
        grep -B2 -A20 "Invalid\|uninitialised\|indirectly lost in" "$vlog" | head -60 | sed 's/^/# /'
    fi
}
check "a service" "$rc" "$log"
check "the gateway" "$grc" "$dir/gateway.log"
check "a service calling out" "$urc" "$dir/upstream.log"
echo "1..$t"
[ "$rc" -eq 0 ] && [ "$grc" -eq 0 ] && [ "$urc" -eq 0 ] && rm -rf "$dir"
exit 0
