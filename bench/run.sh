#!/usr/bin/env bash
# bench/run.sh — side-by-side benchmark for `make bench`: mercato vs nginx+Lua vs Node (Fastify at
# 1 and 2 processes, Express).
#
# Starts every registered server on a private loopback port, checks that each answers each
# scenario with the agreed payload, warms each up, then runs wrk against each, interleaved,
# for ROUNDS rounds, and prints (and writes to .run/bench/results.md) a markdown table of the
# medians plus the per-round raw numbers. Every server it started is stopped by PID on exit.
#
# Env (defaults in brackets):
#   MERCATO                  mercato binary [build/mercato]; not executable → peers only, warning
#   BENCH_REQUIRE_MERCATO    1 = fail instead of warning when $MERCATO is missing [0]
#   BENCH_SERVERS            which servers to run, space-separated [mercato nginx fastify express]
#                            ("fastify" selects both Fastify ×1 and Fastify ×2)
#   ROUNDS                   interleaved rounds [3]
#   BENCH_DURATION           wrk -d per run [8s]
#   BENCH_CONNECTIONS        wrk -c [64]
#   BENCH_THREADS            wrk -t [2]
#   BENCH_WARMUP             wrk -d of the warm-up run per server and scenario [2s]
#   BENCH_NODE_WARMUP        the same for the Node peers, whose JIT needs longer (also in the
#                            service scenarios) [5s]
#   BENCH_PAUSE              seconds of idle between runs [1]
#   BENCH_WORKERS            workers per server (mercato WORKERS, nginx worker_processes,
#                            Express cluster workers) [2]
#   BENCH_PORT_MERCATO / BENCH_PORT_NGINX / BENCH_PORT_EXPRESS   [28180 / 28181 / 28182]
#   BENCH_PORT_FASTIFY       Fastify ×1; Fastify ×2 takes the next port [28183]
#   BENCH_NODE_PG_POOL       the Node peers' pg Pool size per process [16]
#   BENCH_DIR                run directory [.run/bench]
#   BENCH_MERCATO_ENV        extra KEY=value words for mercato (overrides the dummies below)
#   BENCH_IO                 1 = also the I/O scenarios (every server): brings up the private
#                            stack (scripts/dev/stack.sh up), gives the servers a fresh database
#                            $BENCH_DB and the stack's Redis, seeds both [1]
#   BENCH_DB                 the I/O scenarios' database, dropped and re-created [mercato_bench]
#   BENCH_IO_CONNECTIONS     wrk -c of the I/O scenarios, one pass each ["64 256"]
#   BENCH_IO_DURATION        wrk -d of each measured I/O run (whole seconds) [3s]
#   BENCH_WORKERS_IO         mercato WORKERS for the I/O scenarios; one mercato per value, e.g.
#                            "2 4" [2]
#   BENCH_PORT_MERCATO_IO    port of the first I/O mercato, the next ones follow [28190]
#   BENCH_NGINX_REDIS_POOL / BENCH_NGINX_PG_POOL   nginx cosocket pool: max open connections
#                            per nginx worker (more requests wait in its backlog, which gives
#                            long tails: keep it >= the connections a worker serves) [256 / 64]
#   BENCH_PGBENCH            1 = the pg scenarios also run `pgbench -S -M prepared` (same client
#                            count, capped by the free PostgreSQL connection slots) each round as
#                            the database's own ceiling [1]
#   BENCH_SVC                1 = also the service scenarios (issues 4 and 5, run last, with
#                            the Node peers on three of them): the user and product services on
#                            scripts/ against throw-away databases; see bench/services.sh for
#                            them and their BENCH_SVC_* [1];
#                            with them, the gateway against nginx proxy_pass (bench/gateway.sh,
#                            BENCH_GW_*)
#   BENCH_ORDERS             1 = the order service's cart and checkout scenarios last, then the
#                            event ones: outbox relay delay and event latency, payment webhook,
#                            e-mail burst (bench/orders.sh → bench/events.sh, BENCH_ORDERS_*,
#                            BENCH_EVENTS_*) [1]
#   BENCH_FOOTPRINT          1 = then every service's idle RSS, RSS after 256 connections and
#                            exec → first 200 (bench/footprint.sh) [1]
#
# Adding a scenario: one `bench_scenario NAME PATH EXPECTED_JSON [SERVERS]` line in main() (every
# server listed, all by default, must serve PATH with that payload: add the route to
# bench/scripts, bench/nginx, bench/express).
# Adding a peer: a start_<name> function and one `register_server` line in main().
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

MERCATO=${MERCATO:-build/mercato}
[[ $MERCATO == /* ]] || MERCATO=$ROOT/$MERCATO
BENCH_REQUIRE_MERCATO=${BENCH_REQUIRE_MERCATO:-0}
BENCH_SERVERS=${BENCH_SERVERS:-mercato nginx fastify express}
ROUNDS=${ROUNDS:-3}
BENCH_DURATION=${BENCH_DURATION:-8s}
BENCH_CONNECTIONS=${BENCH_CONNECTIONS:-64}
BENCH_THREADS=${BENCH_THREADS:-2}
BENCH_WARMUP=${BENCH_WARMUP:-2s}
# V8 optimises a hot path only after many calls: measured on this machine (load 12), Fastify's
# pg route served 600 req/s in its first 4 s and 4.2-4.9 k req/s in the next ones.
BENCH_NODE_WARMUP=${BENCH_NODE_WARMUP:-5s}
BENCH_PAUSE=${BENCH_PAUSE:-1}
BENCH_WORKERS=${BENCH_WORKERS:-2}
# Express runs as one process, as the Node/Express services this design replaces were deployed
# (one process per container); set BENCH_EXPRESS_WORKERS=2 for a node:cluster comparison.
BENCH_EXPRESS_WORKERS=${BENCH_EXPRESS_WORKERS:-1}
BENCH_PORT_MERCATO=${BENCH_PORT_MERCATO:-28180}
BENCH_PORT_NGINX=${BENCH_PORT_NGINX:-28181}
BENCH_PORT_EXPRESS=${BENCH_PORT_EXPRESS:-28182}
BENCH_PORT_FASTIFY=${BENCH_PORT_FASTIFY:-28183}
BENCH_DIR=${BENCH_DIR:-$ROOT/.run/bench}
BENCH_MERCATO_ENV=${BENCH_MERCATO_ENV:-}
BENCH_IO=${BENCH_IO:-1}
BENCH_DB=${BENCH_DB:-mercato_bench}
BENCH_IO_CONNECTIONS=${BENCH_IO_CONNECTIONS:-64 256}
BENCH_IO_DURATION=${BENCH_IO_DURATION:-3s}
BENCH_WORKERS_IO=${BENCH_WORKERS_IO:-2}
BENCH_PORT_MERCATO_IO=${BENCH_PORT_MERCATO_IO:-28190}
BENCH_NGINX_REDIS_POOL=${BENCH_NGINX_REDIS_POOL:-256}
BENCH_NGINX_PG_POOL=${BENCH_NGINX_PG_POOL:-64}
# pg's default is 10; 16 connections (one query each at a time) carry 9.5 k queries/s from one
# process here, more than a Node process serves, and leave PostgreSQL's slots to the others.
BENCH_NODE_PG_POOL=${BENCH_NODE_PG_POOL:-16}
BENCH_PGBENCH=${BENCH_PGBENCH:-1}
NGINX_MODULES=${NGINX_MODULES:-/usr/lib/nginx/modules}

# The payload every server must return for /bench/json (compared as parsed JSON, keys sorted).
JSON_PAYLOAD='{"id":"7f1c2a9e-0d7b-4e8a-9b7c-2f1e5a6b8c9d","name":"Wireless Headphones","price_cents":12999,"currency":"usd","tags":["audio","wireless"],"stock":42}'
BASELINE=nginx # the first ratio column is req/s relative to this server
# further ratio columns, each shown when that server takes part in the scenario
RATIO_PEERS=(fastify-x2 express)
# /bench/pg-redis/42: bench_items row 42 (migration 001_bench_items.sql) plus stock from Redis.
PG_REDIS_PAYLOAD='{"id":42,"name":"Item 42","price_cents":1042,"currency":"usd","stock":7}'
MERCATO_DB_URL="" # unset unless BENCH_IO=1 (no database: no migrations at start-up)
MERCATO_REDIS_URL=""
# The same for the nginx peer (substituted into nginx.conf.in).
IO_PG_HOST=127.0.0.1 IO_PG_PORT=1 IO_PG_USER=postgres IO_PG_DB=$BENCH_DB
IO_REDIS_HOST=127.0.0.1 IO_REDIS_PORT=1 IO_REDIS_DB=0
# /bench/redis/42: HGETALL bench:product:42 as an object (Redis values are strings).
REDIS_PAYLOAD='{"id":"42","name":"Item 42","price_cents":"1042","currency":"usd","stock":"7"}'
# /bench/pg/42: bench_items row 42.
PG_PAYLOAD='{"id":42,"name":"Item 42","price_cents":1042,"currency":"usd"}'

# ---------------------------------------------------------------------------- helpers

log()  { printf 'bench: %s\n' "$*" >&2; }
warn() { printf 'bench: WARNING: %s\n' "$*" >&2; }
die()  { printf 'bench: ERROR: %s\n' "$*" >&2; exit 1; }

need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found (${2:-install it})"; }

# port_free PORT: true when nothing listens on 127.0.0.1:PORT.
port_free() { ! ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

# alive PID: the process exists and is not a zombie.
alive() {
  local st
  st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [[ -n $st && $st != Z* ]]
}

# ---------------------------------------------------------------------------- server registry
# Parallel arrays keyed by server name: label shown in the table, base URL, start function, PID.
SERVERS=()
declare -A SERVER_LABEL=() SERVER_URL=() SERVER_START=() SERVER_PID=()

# register_server NAME LABEL PORT START_FN — START_FN starts the server in the background
# (a direct child of this shell) and stores its PID in SERVER_PID[NAME].
register_server() {
  local name=$1 label=$2 port=$3 start=$4
  [[ " $BENCH_SERVERS " == *" ${name%%-*} "* ]] || return 0 # mercato-w8 is selected by "mercato"
  SERVERS+=("$name")
  SERVER_LABEL[$name]=$label
  SERVER_URL[$name]="http://127.0.0.1:$port"
  SERVER_START[$name]=$start
}

stop_servers() {
  local name pid i
  for name in "${!SERVER_PID[@]}"; do
    pid=${SERVER_PID[$name]}
    alive "$pid" || continue
    kill -TERM "$pid" 2>/dev/null || true
  done
  for name in "${!SERVER_PID[@]}"; do
    pid=${SERVER_PID[$name]}
    for ((i = 0; i < 50; i++)); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then
      warn "$name (pid $pid) ignored SIGTERM, sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    unset "SERVER_PID[$name]"
  done
}

on_exit() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n $WRK_PID ]] && alive "$WRK_PID"; then kill -TERM "$WRK_PID" 2>/dev/null || true; wait "$WRK_PID" 2>/dev/null || true; fi
  stop_servers
  if declare -F svc_cleanup >/dev/null; then svc_cleanup; fi
  [[ $rc -eq 0 ]] || log "failed (exit $rc); server logs in ${BENCH_DIR#"$ROOT"/}/"
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_ready NAME PATH: until NAME answers 200 on PATH (15 s), failing early if it died.
wait_ready() {
  local name=$1 path=$2 pid=${SERVER_PID[$1]} i code
  for ((i = 0; i < 150; i++)); do
    alive "$pid" || die "${SERVER_LABEL[$name]} exited during start-up: $(tail -5 "$BENCH_DIR/$name.out" 2>/dev/null)"
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "${SERVER_URL[$name]}$path" || true)
    [[ $code == 200 ]] && return 0
    sleep 0.1
  done
  die "${SERVER_LABEL[$name]} did not answer 200 on $path within 15 s (last: $code); see $BENCH_DIR/$name.out"
}

# check_response NAME PATH EXPECTED: the body equals EXPECTED (as JSON, key order ignored),
# Content-Type is JSON, X-Request-Id is generated when absent and echoed when sent.
check_response() {
  local name=$1 path=$2 expected=$3 url="${SERVER_URL[$1]}$2" hdr body got want rid
  hdr=$(mktemp) body=$(mktemp)
  curl -s -D "$hdr" -o "$body" --max-time 5 "$url" || die "$name: GET $path failed"
  got=$(jq -cS . "$body" 2>/dev/null) || die "$name: $path did not return JSON: $(head -c 200 "$body")"
  want=$(jq -cS . <<<"$expected")
  [[ $got == "$want" ]] || die "$name: $path payload differs: got $got, want $want"
  grep -qi '^content-type: *application/json' "$hdr" || die "$name: $path Content-Type is not application/json"
  grep -qi '^x-request-id: *[^[:space:]]' "$hdr" || die "$name: $path sent no X-Request-Id"
  rid=$(curl -s -D - -o /dev/null -H 'X-Request-Id: bench-echo-42' "$url" | tr -d '\r' |
    awk -F': *' 'tolower($1) == "x-request-id" { print $2 }')
  [[ $rid == bench-echo-42 ]] || die "$name: $path did not echo X-Request-Id (got '$rid')"
  rm -f "$hdr" "$body"
}

# ---------------------------------------------------------------------------- servers

# start_mercato_as NAME WORKERS PORT
start_mercato_as() {
  local name=$1 workers=$2 port=$3
  mkdir -p "$BENCH_DIR/$name"
  # The JSON route needs no database, but start-up may insist on these being set.
  # shellcheck disable=SC2086 # BENCH_MERCATO_ENV is a list of KEY=value words
  env SCRIPTS_DIR="$ROOT/bench/scripts" SERVICE=product PORT="$port" LISTEN_ADDR=127.0.0.1 \
    WORKERS="$workers" LOG_LEVEL=info HOT_RELOAD=0 \
    DATABASE_URL="$MERCATO_DB_URL" \
    REDIS_URL="$MERCATO_REDIS_URL" AMQP_URL="amqp://guest:guest@127.0.0.1:1/" \
    JWKS_URL="http://127.0.0.1:1/.well-known/jwks.json" \
    $BENCH_MERCATO_ENV \
    "$MERCATO" >"$BENCH_DIR/$name/access.log" 2>"$BENCH_DIR/$name.out" &
  SERVER_PID[$name]=$!
}

start_mercato() { start_mercato_as mercato "$BENCH_WORKERS" "$BENCH_PORT_MERCATO"; }

# One mercato per BENCH_WORKERS_IO value (mercato-w<N>, for the I/O scenarios).
IO_MERCATOS=()
register_io_mercatos() {
  local w i=0
  for w in $BENCH_WORKERS_IO; do
    [[ $w =~ ^[0-9]+$ ]] || die "BENCH_WORKERS_IO: '$w' is not a number"
    eval "start_mercato_w$w() { start_mercato_as mercato-w$w $w $((BENCH_PORT_MERCATO_IO + i)); }"
    register_server "mercato-w$w" "mercato W=$w" $((BENCH_PORT_MERCATO_IO + i)) "start_mercato_w$w"
    if [[ -n ${SERVER_URL[mercato-w$w]:-} ]]; then IO_MERCATOS+=("mercato-w$w"); fi
    i=$((i + 1))
  done
}

start_nginx() {
  local p=$BENCH_DIR/nginx
  rm -rf "$p"
  mkdir -p "$p/logs" "$p/tmp"
  sed -e "s|@PREFIX@|$p|g" -e "s|@PORT@|$BENCH_PORT_NGINX|g" -e "s|@WORKERS@|$BENCH_WORKERS|g" \
    -e "s|@MODULES@|$NGINX_MODULES|g" -e "s|@ACCESS_LOG@|$p/logs/access.log|g" \
    -e "s|@LUA_DIR@|$ROOT/bench/nginx|g" \
    -e "s|@REDIS_HOST@|$IO_REDIS_HOST|g" -e "s|@REDIS_PORT@|$IO_REDIS_PORT|g" \
    -e "s|@REDIS_DB@|$IO_REDIS_DB|g" -e "s|@REDIS_POOL@|$BENCH_NGINX_REDIS_POOL|g" \
    -e "s|@PG_HOST@|$IO_PG_HOST|g" -e "s|@PG_PORT@|$IO_PG_PORT|g" -e "s|@PG_USER@|$IO_PG_USER|g" \
    -e "s|@PG_DB@|$IO_PG_DB|g" -e "s|@PG_POOL@|$BENCH_NGINX_PG_POOL|g" \
    bench/nginx/nginx.conf.in >"$p/nginx.conf"
  nginx -q -t -p "$p" -c "$p/nginx.conf" >"$BENCH_DIR/nginx.out" 2>&1 ||
    die "nginx config test failed: $(cat "$BENCH_DIR/nginx.out")"
  nginx -p "$p" -c "$p/nginx.conf" -g 'daemon off;' >>"$BENCH_DIR/nginx.out" 2>&1 &
  SERVER_PID[nginx]=$!
}

# node_deps DIR MODULE...: `npm ci` in DIR (pinned by its package-lock.json) when a MODULE is missing.
node_deps() {
  local dir=$1 m
  shift
  for m in "$@"; do
    [[ -d $dir/node_modules/$m ]] && continue
    log "npm ci in $dir"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) >&2 || die "npm ci in $dir failed"
    return 0
  done
}

# The Node peers get the I/O scenarios' database and Redis (unset without BENCH_IO: their I/O
# routes then answer 503, and only the JSON scenario runs).
start_express() {
  mkdir -p "$BENCH_DIR/express"
  node_deps bench/express express pg ioredis
  env -u DATABASE_URL -u REDIS_URL PORT="$BENCH_PORT_EXPRESS" EXPRESS_WORKERS="$BENCH_EXPRESS_WORKERS" NODE_ENV=production \
    ACCESS_LOG="$BENCH_DIR/express/access.log" PG_POOL="$BENCH_NODE_PG_POOL" \
    ${MERCATO_DB_URL:+DATABASE_URL="$MERCATO_DB_URL"} ${MERCATO_REDIS_URL:+REDIS_URL="$MERCATO_REDIS_URL"} \
    node bench/express/server.js >"$BENCH_DIR/express.out" 2>&1 &
  SERVER_PID[express]=$!
}

# start_fastify_as NAME WORKERS PORT
start_fastify_as() {
  local name=$1 workers=$2 port=$3
  mkdir -p "$BENCH_DIR/$name"
  node_deps bench/fastify fastify pino pg ioredis
  env -u DATABASE_URL -u REDIS_URL PORT="$port" FASTIFY_WORKERS="$workers" NODE_ENV=production \
    ACCESS_LOG="$BENCH_DIR/$name/access.log" PG_POOL="$BENCH_NODE_PG_POOL" \
    ${MERCATO_DB_URL:+DATABASE_URL="$MERCATO_DB_URL"} ${MERCATO_REDIS_URL:+REDIS_URL="$MERCATO_REDIS_URL"} \
    node bench/fastify/server.js >"$BENCH_DIR/$name.out" 2>&1 &
  SERVER_PID[$name]=$!
}
start_fastify_x1() { start_fastify_as fastify-x1 1 "$BENCH_PORT_FASTIFY"; }
start_fastify_x2() { start_fastify_as fastify-x2 2 $((BENCH_PORT_FASTIFY + 1)); }

# setup_io: the private stack up, a fresh database $BENCH_DB (bench_items: migrated here with
# the mercato migration, which mercato then finds applied or applies itself; pgbench_* for the
# ceiling), bench:product:<id> hashes and bench:stock:<id> in Redis; points the servers at them.
setup_io() {
  local envf pg redis i hp
  log "I/O scenarios: bringing up the private stack (scripts/dev/stack.sh up)"
  scripts/dev/stack.sh up >"$BENCH_DIR/stack.log" 2>&1 || die "stack.sh up failed: $(tail -5 "$BENCH_DIR/stack.log")"
  envf=$(scripts/dev/stack.sh env)
  pg=$(sed -n 's/^DATABASE_URL_PRODUCT=//p' <<<"$envf")
  redis=$(sed -n 's/^REDIS_URL=//p' <<<"$envf")
  [[ -n $pg && -n $redis ]] || die "stack.sh env gave no DATABASE_URL_PRODUCT/REDIS_URL"
  [[ $BENCH_DB =~ ^[a-z_][a-z0-9_]*$ ]] || die "BENCH_DB must be a plain lower-case name"
  psql "${pg%/*}/postgres" -qAtX -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" \
    -c "CREATE DATABASE $BENCH_DB" >/dev/null 2>&1 || die "cannot create database $BENCH_DB"
  MERCATO_DB_URL="${pg%/*}/$BENCH_DB"
  MERCATO_REDIS_URL=$redis
  seed_redis
  # postgresql://user@host:port/db and redis://host:port/db for the nginx peer
  hp=${pg#*://}; IO_PG_USER=${hp%%@*}; hp=${hp#*@}; hp=${hp%%/*}
  IO_PG_HOST=${hp%:*} IO_PG_PORT=${hp##*:} IO_PG_DB=$BENCH_DB
  hp=${redis#redis://}; IO_REDIS_DB=${hp#*/}; hp=${hp%%/*}
  IO_REDIS_HOST=${hp%:*} IO_REDIS_PORT=${hp##*:}
  [[ $IO_REDIS_DB =~ ^[0-9]+$ ]] || IO_REDIS_DB=0
  [[ $IO_PG_USER != *:* && $hp != *@* ]] || die "the nginx peer supports trust auth without a password only"
  # mercato applies the migration at start-up; without a mercato, apply it here for the peers
  if [[ " ${SERVERS[*]} " != *" mercato"* ]]; then
    psql "$MERCATO_DB_URL" -qAtX -v ON_ERROR_STOP=1 \
      -f bench/scripts/services/product/migrations/001_bench_items.sql >/dev/null 2>&1 ||
      die "cannot create bench_items in $BENCH_DB"
  fi
  if [[ $BENCH_PGBENCH == 1 ]]; then
    need pgbench "apt-get install postgresql-client"
    pgbench -i -q -s 1 -h "$IO_PG_HOST" -p "$IO_PG_PORT" -U "$IO_PG_USER" "$BENCH_DB" >"$BENCH_DIR/pgbench-init.log" 2>&1 ||
      die "pgbench -i failed: $(tail -3 "$BENCH_DIR/pgbench-init.log")"
  fi
}

# seed_redis: bench:product:<id> (HGETALL of /bench/redis) and bench:stock:<id> (GET of
# /bench/pg-redis), ids 1..10000.
seed_redis() {
  local i
  for ((i = 1; i <= 10000; i++)); do
    printf 'HSET bench:product:%d id %d name "Item %d" price_cents %d currency usd stock %d\nSET bench:stock:%d %d\n' \
      "$i" "$i" "$i" $((1000 + i)) $((i % 100 == 42 ? 7 : i % 50)) "$i" $((i % 100 == 42 ? 7 : i % 50))
  done | redis-cli -u "$MERCATO_REDIS_URL" >/dev/null || die "cannot seed Redis"
}

# reseed_redis: the stack's Redis is shared, and test suites may flush it mid-run.
reseed_redis() {
  [[ $(redis-cli -u "$MERCATO_REDIS_URL" EXISTS bench:product:42 bench:stock:42 bench:product:10000 2>/dev/null) == 3 ]] && return 0
  warn "the bench: keys are gone from Redis (flushed by someone else?): seeding them again"
  seed_redis
}

# ---------------------------------------------------------------------------- wrk

# to_ms VALUE: wrk's "812.00us" / "1.23ms" / "2.01s" / "1.50m" → milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000
    else if (u == "m") n *= 60000; else if (u == "h") n *= 3600000
    printf "%.3f", n }'
}

# parse_wrk FILE: prints "rps p50_ms p99_ms errors requests" from `wrk --latency` output.
parse_wrk() {
  local f=$1 rps p50 p99 errs reqs
  rps=$(awk '/^Requests\/sec:/ { print $2 }' "$f")
  p50=$(awk '/Latency Distribution/ { d = 1 } d && $1 == "50%" { print $2; exit }' "$f")
  p99=$(awk '/Latency Distribution/ { d = 1 } d && $1 == "99%" { print $2; exit }' "$f")
  reqs=$(awk '/ requests in / { print $1; exit }' "$f")
  [[ -n $rps && -n $p50 && -n $p99 && -n $reqs ]] || die "cannot parse wrk output $f: $(cat "$f")"
  # socket errors (connect+read+write+timeout) plus non-2xx/3xx responses
  errs=$(awk '/Socket errors:/ { gsub(/,/, ""); e += $4 + $6 + $8 + $10 }
              /Non-2xx or 3xx responses:/ { e += $NF } END { print e + 0 }' "$f")
  printf '%s %s %s %s %s\n' "$rps" "$(to_ms "$p50")" "$(to_ms "$p99")" "$errs" "$reqs"
}

# proc_sample PID: "cpu_ticks voluntary_cs nonvoluntary_cs" of PID and its direct children (nginx's
# workers), all threads: utime+stime from /proc/<pid>/stat, context switches summed over
# /proc/<pid>/task/*/status.
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)
proc_sample() {
  local pid=$1 p ticks=0 t cs="0 0" kids
  kids=$(cat /proc/"$pid"/task/*/children 2>/dev/null || true)
  for p in $pid $kids; do
    [[ -r /proc/$p/stat ]] || continue
    t=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{ print $12 + $13 }') || continue
    ticks=$((ticks + ${t:-0}))
    cs=$(awk -v a="${cs% *}" -v b="${cs#* }" '/^voluntary_ctxt_switches/ { a += $2 }
      /^nonvoluntary_ctxt_switches/ { b += $2 } END { print a, b }' /proc/"$p"/task/*/status 2>/dev/null || echo "$cs")
  done
  printf '%s %s\n' "$ticks" "$cs"
}

# run_wrk DURATION URL OUTFILE. wrk runs in the background and is waited for, so that a
# TERM/INT to this script is handled at once (and on_exit stops wrk too).
# WRK_SCRIPT (optional, dynamically scoped): a wrk Lua script (-s), for requests other than GET.
WRK_PID=""
WRK_SCRIPT=""
run_wrk() {
  wrk -t"$BENCH_THREADS" -c"$BENCH_CONNECTIONS" -d"$1" --latency ${WRK_SCRIPT:+-s "$WRK_SCRIPT"} "$2" >"$3" 2>&1 &
  WRK_PID=$!
  wait "$WRK_PID" || die "wrk failed against $2: $(cat "$3")"
  WRK_PID=""
}

# measure NAME URL OUTFILE: one wrk run of BENCH_DURATION against NAME, with the server's CPU
# time and context switches over the run. Prints
# "rps p50 p99 errors requests cpu_us_per_req vol_cs_per_req nonvol_cs_per_req".
measure() {
  local name=$1 url=$2 out=$3 pid=${SERVER_PID[$1]} a b w
  a=$(proc_sample "$pid")
  run_wrk "$BENCH_DURATION" "$url" "$out"
  b=$(proc_sample "$pid")
  w=$(parse_wrk "$out")
  awk -v w="$w" -v a="$a" -v b="$b" -v hz="$CLK_TCK" 'BEGIN {
    split(w, x, " "); split(a, p, " "); split(b, q, " "); n = x[5] > 0 ? x[5] : 1
    printf "%s %s %s %s %s %.1f %.3f %.3f\n", x[1], x[2], x[3], x[4], x[5],
      (q[1] - p[1]) * 1e6 / hz / n, (q[2] - p[2]) / n, (q[3] - p[3]) / n }'
}

# pg_free_slots: connection slots PostgreSQL has left for ordinary clients.
pg_free_slots() {
  psql -h "$IO_PG_HOST" -p "$IO_PG_PORT" -U "$IO_PG_USER" -d "$BENCH_DB" -qAtX -c \
    "SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int
            - count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'" 2>/dev/null || echo 0
}

# pgbench_clients WANTED: WANTED, capped by the free slots less 10 for others' connections.
pgbench_clients() {
  local free i
  # the servers' idle pool connections close 2 s after their run: wait for them (3 s at most)
  for ((i = 0; i < 30; i++)); do
    free=$(($(pg_free_slots) - 10))
    (($1 > free)) || break
    sleep 0.1
  done
  if (($1 <= free)); then echo "$1"; elif ((free >= 1)); then echo "$free"; else echo 1; fi
}

# run_pgbench CLIENTS OUTFILE: `pgbench -S -M prepared` (select-only: one indexed SELECT by
# primary key per transaction) for BENCH_IO_DURATION; prints "tps p50 p99 errors transactions"
# (latency percentiles from its per-transaction log). The shared PostgreSQL may run out of
# connection slots (other users): then it retries once with the clients that fit, and failing
# that reports 0 tps with an error.
run_pgbench() {
  local c=$1 out=$2 secs=${BENCH_IO_DURATION%s} pre=$2.log j lat ok=0
  for _ in 1 2; do
    j=$BENCH_THREADS
    ((j <= c)) || j=$c
    rm -f "$pre".*
    pgbench -n -S -M prepared -c "$c" -j "$j" -T "$secs" -l --log-prefix="$pre" \
      -h "$IO_PG_HOST" -p "$IO_PG_PORT" -U "$IO_PG_USER" "$BENCH_DB" >"$out" 2>&1 &
    WRK_PID=$!
    if wait "$WRK_PID"; then ok=1; WRK_PID=""; break; fi
    WRK_PID=""
    warn "pgbench -c$c failed: $(tail -1 "$out")"
    sleep 1
    c=$(pgbench_clients "$1")
    echo "retry with -c$c" >>"$out.retry"
  done
  if ((!ok)); then rm -f "$pre".*; echo "0 0 0 1 0 - - -"; return 0; fi
  lat=$(cat "$pre".* | awk '{ print $3 }' | sort -n | awk '{ a[NR] = $1 } END {
    if (NR == 0) { print "nan nan 0"; exit }
    i50 = int(NR * 0.50); if (i50 < 1) i50 = 1; i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
    printf "%.3f %.3f %d\n", a[i50] / 1000, a[i99] / 1000, NR }')
  rm -f "$pre".*
  awk -v l="$lat" '/^tps = / && !done { split(l, x, " "); printf "%s %s %s 0 %s - - -\n", $3, x[1], x[2], x[3]; done = 1 }' "$out"
}

# median: numbers on stdin → their median (mean of the middle two for an even count).
median() {
  sort -g | awk '{ a[NR] = $1 } END {
    if (NR == 0) { print "nan"; exit }
    if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# ---------------------------------------------------------------------------- scenarios

RESULTS=()       # markdown lines of the summary tables
RAW=()           # markdown lines of the per-round tables
# RES[scenario/server/round] = "rps p50 p99 errors requests cpu_us/req vol_cs/req nonvol_cs/req"
declare -A RES=()
declare -A MED=() # MED[scenario/server] = "rps p50 p99 cpu_us/req cs/req" (medians)
SCEN_CEILING=""   # "pgbench": the scenario also measures pgbench -S each round
PGBENCH_CLIENTS=0
SCENARIOS=()

# bench_scenario NAME PATH EXPECTED_JSON [SERVERS]: check that every registered server (or those
# of SERVERS) answers PATH with EXPECTED_JSON, warm each up, then measure them interleaved for
# ROUNDS rounds.
bench_scenario() {
  local scen=$1 path=$2 expected=$3 only=${4:-} all=("${SERVERS[@]}") name
  if [[ -n $only ]]; then
    SERVERS=()
    for name in "${all[@]}"; do [[ " $only " == *" $name "* ]] && SERVERS+=("$name"); done
    if ((${#SERVERS[@]} == 0)); then
      warn "[$scen] none of '$only' is running: skipped"
      SERVERS=("${all[@]}")
      return 0
    fi
  fi
  run_scenario "$scen" "$path" "$expected"
  SERVERS=("${all[@]}")
}

run_scenario() {
  local scen=$1 path=$2 expected=$3 name r i n=${#SERVERS[@]} out c w
  mkdir -p "$BENCH_DIR/raw"
  for name in "${SERVERS[@]}"; do check_response "$name" "$path" "$expected"; done
  if [[ $BENCH_WARMUP != 0 && $BENCH_WARMUP != 0s ]]; then
    for name in "${SERVERS[@]}"; do
      w=$BENCH_WARMUP
      [[ $name != fastify-* && $name != express ]] || w=$BENCH_NODE_WARMUP
      log "[$scen] warm-up ${SERVER_LABEL[$name]} ($w)"
      run_wrk "$w" "${SERVER_URL[$name]}$path" "$BENCH_DIR/raw/$scen-$name-warmup.txt"
      sleep "$BENCH_PAUSE"
    done
  fi
  if [[ $SCEN_CEILING == pgbench ]]; then
    SERVER_LABEL[pgbench]="pgbench -S -M prepared (ceiling)"
    PGBENCH_CLIENTS=""
  fi
  for ((r = 1; r <= ROUNDS; r++)); do
    # rotate the starting server each round so no server always runs first or last
    for ((i = 0; i < n; i++)); do
      name=${SERVERS[$(((i + r - 1) % n))]}
      out="$BENCH_DIR/raw/$scen-$name-r$r.txt"
      log "[$scen] round $r/$ROUNDS ${SERVER_LABEL[$name]} ($BENCH_DURATION, -t$BENCH_THREADS -c$BENCH_CONNECTIONS)"
      RES[$scen/$name/$r]=$(measure "$name" "${SERVER_URL[$name]}$path" "$out")
      alive "${SERVER_PID[$name]}" || die "${SERVER_LABEL[$name]} died during the run"
      sleep "$BENCH_PAUSE"
    done
    if [[ $SCEN_CEILING == pgbench ]]; then
      # as many clients as wrk has connections, within the slots the servers left free (nginx's
      # and the Node peers' idle PostgreSQL connections close after 2 s, waited for; mercato's per-worker ones stay open)
      c=$(pgbench_clients "$BENCH_CONNECTIONS")
      [[ " $PGBENCH_CLIENTS " == *" $c "* ]] || PGBENCH_CLIENTS+="${PGBENCH_CLIENTS:+/}$c"
      SERVER_LABEL[pgbench]="pgbench -S -M prepared -c$PGBENCH_CLIENTS (ceiling)"
      log "[$scen] round $r/$ROUNDS pgbench -S -c$c ($BENCH_IO_DURATION)"
      RES[$scen/pgbench/$r]=$(run_pgbench "$c" "$BENCH_DIR/raw/$scen-pgbench-r$r.txt")
      # a retry with fewer clients is named in the label
      if [[ -e $BENCH_DIR/raw/$scen-pgbench-r$r.txt.retry || ${RES[$scen/pgbench/$r]} == "0 "* ]]; then
        SERVER_LABEL[pgbench]="pgbench -S -M prepared -c$PGBENCH_CLIENTS (ceiling; some rounds failed or ran with fewer clients, see raw)"
      fi
      sleep "$BENCH_PAUSE"
    fi
  done
  summarize "$scen" "$path"
}

# field_stats SCEN NAME FIELD: "median min max" of field FIELD of RES over the rounds.
field_stats() {
  local r
  for ((r = 1; r <= ROUNDS; r++)); do cut -d' ' -f"$3" <<<"${RES[$1/$2/$r]}"; done |
    sort -g | awk '{ a[NR] = $1 } END {
      if (NR == 0 || a[1] == "-") { print "- - -"; exit }
      m = NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
      print m, a[1], a[NR] }'
}

# summarize NAME PATH: append the median table and the raw per-round table for a scenario.
summarize() {
  local scen=$1 path=$2 name r rps p50 p99 errs reqs cpu vcs ncs base="" ceil="" ratio cratio names
  local rs ps p9 cs vs ns errsum line
  names=("${SERVERS[@]}")
  if [[ $SCEN_CEILING == pgbench ]]; then names+=(pgbench); fi
  if [[ " ${SERVERS[*]} " == *" $BASELINE "* ]]; then base=$(field_stats "$scen" "$BASELINE" 1 | cut -d' ' -f1); fi
  if [[ $SCEN_CEILING == pgbench ]]; then ceil=$(field_stats "$scen" pgbench 1 | cut -d' ' -f1); fi
  SCENARIOS+=("$scen")

  local chdr="" csep="" peer pbase=() peers=() pratio
  if [[ -n $ceil ]]; then chdr=" | vs pgbench -S" csep=" | ---:"; fi
  # "vs Fastify ×2", "vs Express": req/s over that peer's, when it ran this scenario
  for peer in "${RATIO_PEERS[@]}"; do
    [[ " ${SERVERS[*]} " == *" $peer "* ]] || continue
    peers+=("$peer")
    pbase+=("$(field_stats "$scen" "$peer" 1 | cut -d' ' -f1)")
    chdr+=" | vs ${SERVER_LABEL[$peer]}" csep+=" | ---:"
  done
  RESULTS+=("### $scen: GET $path (wrk -c$BENCH_CONNECTIONS -d$BENCH_DURATION)" ""
    "| server | req/s (median of $ROUNDS) | req/s range | p50 ms | p99 ms | p99 range | vs ${SERVER_LABEL[$BASELINE]:-$BASELINE}$chdr | server CPU µs/req | ctx sw/req (vol+invol) |"
    "| --- | ---: | ---: | ---: | ---: | ---: | ---:$csep | ---: | ---: |")
  for name in "${names[@]}"; do
    rs=$(field_stats "$scen" "$name" 1) ps=$(field_stats "$scen" "$name" 2) p9=$(field_stats "$scen" "$name" 3)
    cs=$(field_stats "$scen" "$name" 6) vs=$(field_stats "$scen" "$name" 7) ns=$(field_stats "$scen" "$name" 8)
    ratio="n/a" cratio=""
    if [[ -n $base ]]; then ratio=$(awk -v a="${rs%% *}" -v b="$base" 'BEGIN { printf "%.2fx", a / b }'); fi
    if [[ -n $ceil ]]; then cratio=" | $(awk -v a="${rs%% *}" -v b="$ceil" 'BEGIN { printf "%.0f %%", 100 * a / b }')"; fi
    for pratio in "${pbase[@]}"; do
      cratio+=" | $(awk -v a="${rs%% *}" -v b="$pratio" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else printf "n/a" }')"
    done
    line=$(awk -v n="${SERVER_LABEL[$name]}" -v rs="$rs" -v ps="$ps" -v p9="$p9" -v cs="$cs" -v vs="$vs" -v ns="$ns" \
      -v ratio="$ratio" -v cr="$cratio" 'BEGIN {
        split(rs, R, " "); split(ps, P, " "); split(p9, Q, " "); split(cs, C, " "); split(vs, V, " "); split(ns, N, " ")
        cpu = C[1] == "-" ? "–" : sprintf("%.0f", C[1])
        ctx = V[1] == "-" ? "–" : sprintf("%.2f+%.2f", V[1], N[1])
        printf "| %s | %.0f | %.0f–%.0f | %.2f | %.2f | %.2f–%.2f | %s%s | %s | %s |", n, R[1], R[2], R[3], P[1], Q[1], Q[2], Q[3], ratio, cr, cpu, ctx }')
    RESULTS+=("$line")
    MED[$scen/$name]="${rs%% *} ${ps%% *} ${p9%% *} ${cs%% *} $(awk -v a="${vs%% *}" -v b="${ns%% *}" 'BEGIN { if (a == "-") print "-"; else printf "%.2f", a + b }')"
  done
  for name in "${names[@]}"; do
    errsum=$(for ((r = 1; r <= ROUNDS; r++)); do cut -d' ' -f4 <<<"${RES[$scen/$name/$r]}"; done | awk '{ s += $1 } END { print s + 0 }')
    [[ $errsum -eq 0 ]] ||
      RESULTS+=("" "**${SERVER_LABEL[$name]}: $errsum socket errors / non-2xx responses** (see raw wrk output)")
  done
  RESULTS+=("")

  RAW+=("### $scen: per round" "" "| round | server | req/s | p50 ms | p99 ms | errors | CPU µs/req | ctx sw/req |" "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
  for ((r = 1; r <= ROUNDS; r++)); do
    for name in "${names[@]}"; do
      read -r rps p50 p99 errs reqs cpu vcs ncs <<<"${RES[$scen/$name/$r]}"
      RAW+=("| $r | ${SERVER_LABEL[$name]} | $(printf '%.0f | %.2f | %.2f | %d' "$rps" "$p50" "$p99" "$errs") | $cpu | $(awk -v a="$vcs" -v b="$ncs" 'BEGIN { if (a == "-") print "-"; else printf "%.2f", a + b }') |")
    done
  done
  RAW+=("")
  write_results >/dev/null # so far: a failure later keeps what was measured
}

# io_summary: the I/O scenarios pivoted — per route and server, req/s, p50 and p99 at each
# connection count (medians), plus server CPU per request.
io_summary() {
  local route c name hdr sep row m any
  ((${#SCENARIOS[@]} > 0)) || return 0
  hdr="| route | server |" sep="| --- | --- |"
  for c in $BENCH_IO_CONNECTIONS; do
    hdr+=" c=$c req/s | p50 ms | p99 ms | CPU µs/req |"
    sep+=" ---: | ---: | ---: | ---: |"
  done
  RESULTS+=("### I/O summary (medians of $ROUNDS rounds, wrk -d$BENCH_IO_DURATION)" "" "$hdr" "$sep")
  for route in redis pg pg-redis; do
    for name in "${IO_MERCATOS[@]}" nginx fastify-x1 fastify-x2 express pgbench; do
      row="| $route | ${SERVER_LABEL[$name]:-$name} |" any=0
      if [[ $name == pgbench ]]; then row="| $route | pgbench -S -M prepared (ceiling) |"; fi
      for c in $BENCH_IO_CONNECTIONS; do
        m=${MED[$route-c$c/$name]:-}
        if [[ -n $m ]]; then
          any=1
          row+=$(awk -v m="$m" -v c="$c" -v n="$name" -v pc="${PGC[$route-c$c]:-}" 'BEGIN { split(m, x, " ")
            printf " %.0f%s | %.2f | %.2f | %s |", x[1], (n == "pgbench" ? " (-c" pc ")" : ""), x[2], x[3], (x[4] == "-" ? "–" : sprintf("%.0f", x[4])) }')
        else
          row+=" – | – | – | – |"
        fi
      done
      if ((any)); then RESULTS+=("$row"); fi
    done
  done
  RESULTS+=("")
}
declare -A PGC=() # pgbench client count per pg scenario

# io_pass CONNECTIONS WARMUP: the I/O scenarios at one wrk -c.
io_pass() {
  local BENCH_CONNECTIONS=$1 BENCH_WARMUP=$2 BENCH_DURATION=$BENCH_IO_DURATION only
  only="${IO_MERCATOS[*]} nginx fastify-x1 fastify-x2 express"
  reseed_redis
  bench_scenario "redis-c$1" /bench/redis/42 "$REDIS_PAYLOAD" "$only"
  if [[ $BENCH_PGBENCH == 1 ]]; then SCEN_CEILING=pgbench; fi
  bench_scenario "pg-c$1" /bench/pg/42 "$PG_PAYLOAD" "$only"
  if [[ $SCEN_CEILING == pgbench ]]; then PGC[pg-c$1]=$PGBENCH_CLIENTS; fi
  SCEN_CEILING=""
  reseed_redis
  bench_scenario "pg-redis-c$1" /bench/pg-redis/42 "$PG_REDIS_PAYLOAD" "$only"
}

# node_ver PEER PACKAGE: the version of PACKAGE installed for bench/PEER ('?' when it is not).
node_ver() {
  node -p "require('./bench/$1/node_modules/$2/package.json').version" 2>/dev/null || echo '?'
}

write_results() {
  local f=$BENCH_DIR/results.md mver=""
  if [[ -n ${SERVER_PID[mercato]:-} ]]; then
    mver=$("$MERCATO" version 2>/dev/null | head -1 || true)
  fi
  {
    printf '## mercato benchmark (%s)\n\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    printf 'wrk -t%s -c%s -d%s --latency, %s interleaved round(s) after a %s warm-up; ' \
      "$BENCH_THREADS" "$BENCH_CONNECTIONS" "$BENCH_DURATION" "$ROUNDS" "$BENCH_WARMUP"
    printf '%s workers per server; %s CPU(s) shared by wrk and the server.\n' "$BENCH_WORKERS" "$(nproc)"
    if [[ ${#IO_MERCATOS[@]} -gt 0 || -n ${SERVER_URL[nginx]:-} ]] && [[ $BENCH_IO == 1 ]]; then
      printf 'I/O scenarios: wrk -t%s -c{%s} -d%s; mercato WORKERS {%s} (handlers park on one async Redis connection and a pipelined PostgreSQL pool per worker, DB_POOL_SIZE default); ' \
        "$BENCH_THREADS" "${BENCH_IO_CONNECTIONS// /,}" "$BENCH_IO_DURATION" "${BENCH_WORKERS_IO// /,}"
      printf 'nginx %s workers, cosocket pools of at most %s Redis / %s PostgreSQL connections per worker (bench/nginx/redis_mini.lua, pgmini.lua); ' \
        "$BENCH_WORKERS" "$BENCH_NGINX_REDIS_POOL" "$BENCH_NGINX_PG_POOL"
      printf 'Fastify ×1/×2 and Express (%s process(es)): one ioredis connection and a pg Pool of at most %s connections per process (bench/node/io.js); database %s.\n' \
        "$BENCH_EXPRESS_WORKERS" "$BENCH_NODE_PG_POOL" "$BENCH_DB"
      printf 'Server CPU µs/req: utime+stime of the server process (nginx: master + workers) over the run / requests; ctx sw/req: voluntary+involuntary context switches of all its threads / requests.\n'
    fi
    printf '\n'
    printf 'Versions: %s; %s + lua-nginx-module %s; node %s + fastify %s (pino %s) / express %s, with pg %s and ioredis %s%s.\n\n' \
      "${mver:-mercato ${MERCATO#"$ROOT"/}}" "$(nginx -v 2>&1 | sed 's/^nginx version: //')" \
      "$(dpkg-query -W -f='${Version}' libnginx-mod-http-lua 2>/dev/null || echo '?')" \
      "$(node -v)" "$(node_ver fastify fastify)" "$(node_ver fastify pino)" "$(node_ver express express)" \
      "$(node_ver express pg)" "$(node_ver express ioredis)" \
      "$([[ " ${SERVERS[*]} " == *" mercato "* ]] || echo '; **mercato not benchmarked** (binary missing or deselected)')"
    printf '%s\n' "${RESULTS[@]}" "${RAW[@]}"
    printf 'Raw wrk output: %s/raw/\n' "${BENCH_DIR#"$ROOT"/}"
  } >"$f"
  cat "$f"
}

# ---------------------------------------------------------------------------- service scenarios

# Issues 4 and 5 (user and product services): svc_run, svc_cleanup and their BENCH_SVC_* settings.
# shellcheck source=bench/services.sh disable=SC1091 # checked on its own: shellcheck bench/services.sh
. "$ROOT/bench/services.sh"
# shellcheck source=bench/gateway.sh disable=SC1091 # checked on its own: shellcheck bench/gateway.sh
. "$ROOT/bench/gateway.sh"

# ---------------------------------------------------------------------------- main

main() {
  need wrk "apt-get install wrk"
  need nginx "apt-get install nginx-light libnginx-mod-http-lua"
  need node "apt-get install nodejs npm"
  need curl
  need jq
  [[ -f $NGINX_MODULES/ndk_http_module.so && -f $NGINX_MODULES/ngx_http_lua_module.so ]] ||
    die "lua-nginx-module not found in $NGINX_MODULES (apt-get install libnginx-mod-http-lua)"

  if [[ " $BENCH_SERVERS " == *" mercato "* && ! -x $MERCATO ]]; then
    [[ $BENCH_REQUIRE_MERCATO == 1 ]] && die "$MERCATO is not executable (build it first)"
    warn "$MERCATO is not executable: benchmarking the peers only"
    BENCH_SERVERS=${BENCH_SERVERS//mercato/}
  fi

  register_server mercato "mercato"      "$BENCH_PORT_MERCATO" start_mercato
  register_server nginx   "nginx+Lua"    "$BENCH_PORT_NGINX"   start_nginx
  register_server fastify-x1 "Fastify ×1" "$BENCH_PORT_FASTIFY" start_fastify_x1
  register_server fastify-x2 "Fastify ×2" $((BENCH_PORT_FASTIFY + 1)) start_fastify_x2
  register_server express "Express" "$BENCH_PORT_EXPRESS" start_express
  if [[ $BENCH_IO == 1 ]]; then register_io_mercatos; fi
  ((${#SERVERS[@]} > 0)) || die "no server selected (BENCH_SERVERS='$BENCH_SERVERS')"

  mkdir -p "$BENCH_DIR"
  rm -rf "$BENCH_DIR/raw"
  local io=0
  if [[ $BENCH_IO == 1 ]]; then
    setup_io
    io=1
  fi
  local name port var
  for name in "${SERVERS[@]}"; do
    port=${SERVER_URL[$name]##*:}
    var=${name%%-*}
    port_free "$port" || die "port $port for $name is in use (set BENCH_PORT_${var^^}, or BENCH_PORT_MERCATO_IO)"
  done
  for name in "${SERVERS[@]}"; do
    log "starting ${SERVER_LABEL[$name]} on ${SERVER_URL[$name]}"
    "${SERVER_START[$name]}"
  done
  for name in "${SERVERS[@]}"; do wait_ready "$name" /bench/json; done

  # Scenarios: NAME PATH EXPECTED_JSON [SERVERS]. Every server listed must serve each PATH.
  bench_scenario json /bench/json "$JSON_PAYLOAD" "mercato nginx fastify-x1 fastify-x2 express"
  # I/O (issue 6): one Redis HGETALL, one indexed PostgreSQL SELECT by primary key (with the
  # pgbench -S ceiling), one of each in sequence; mercato at each BENCH_WORKERS_IO vs nginx+Lua,
  # Fastify ×1, Fastify ×2 and Express (pg + ioredis),
  # one pass per BENCH_IO_CONNECTIONS value (warm-ups in the first pass only).
  if ((io)); then
    local c warm=$BENCH_WARMUP
    for c in $BENCH_IO_CONNECTIONS; do
      io_pass "$c" "$warm"
      warm=0
    done
    io_summary
  fi
  # Services (issues 4 and 5): the user and product services themselves (needs mercato), with
  # the Node peers beside them on GET /users/me and GET /products/{id}.
  if [[ $BENCH_SVC == 1 && " $BENCH_SERVERS " == *" mercato "* && -x $MERCATO ]]; then
    svc_run
  elif [[ $BENCH_SVC == 1 ]]; then
    warn "service scenarios skipped: mercato is not selected or not built"
  fi

  write_results
  # The order service (issue 12): cart reads/writes and the checkout's synchronous part.
  if [[ ${BENCH_ORDERS:-1} == 1 && " $BENCH_SERVERS " == *" mercato "* && -x $MERCATO ]]; then
    log "order service scenarios (bench/orders.sh)"
    { printf '\n### Order, payment and notification services (bench/orders.sh)\n\n'; MERCATO=$MERCATO bash "$ROOT/bench/orders.sh"; } | tee -a "$BENCH_DIR/results.md" ||
      warn "order service scenarios failed"
  fi
  # Memory and start-up of every service (issue 17).
  if [[ ${BENCH_FOOTPRINT:-1} == 1 && " $BENCH_SERVERS " == *" mercato "* && -x $MERCATO ]]; then
    log "memory and start-up (bench/footprint.sh)"
    { printf '\n### Memory and start-up per service (bench/footprint.sh)\n\n'; MERCATO=$MERCATO bash "$ROOT/bench/footprint.sh"; } |
      tee -a "$BENCH_DIR/results.md" || warn "memory and start-up scenario failed"
  fi
}

main "$@"
