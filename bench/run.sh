#!/usr/bin/env bash
# bench/run.sh — side-by-side benchmark for `make bench`: mercato vs nginx+Lua vs Node/Express.
#
# Starts every registered server on a private loopback port, checks that each answers each
# scenario with the agreed payload, warms each up, then runs wrk against each, interleaved,
# for ROUNDS rounds, and prints (and writes to .run/bench/results.md) a markdown table of the
# medians plus the per-round raw numbers. Every server it started is stopped by PID on exit.
#
# Env (defaults in brackets):
#   MERCATO                  mercato binary [build/mercato]; not executable → peers only, warning
#   BENCH_REQUIRE_MERCATO    1 = fail instead of warning when $MERCATO is missing [0]
#   BENCH_SERVERS            which servers to run, space-separated [mercato nginx express]
#   ROUNDS                   interleaved rounds [3]
#   BENCH_DURATION           wrk -d per run [8s]
#   BENCH_CONNECTIONS        wrk -c [64]
#   BENCH_THREADS            wrk -t [2]
#   BENCH_WARMUP             wrk -d of the warm-up run per server and scenario [2s]
#   BENCH_PAUSE              seconds of idle between runs [1]
#   BENCH_WORKERS            workers per server (mercato WORKERS, nginx worker_processes,
#                            Express cluster workers) [2]
#   BENCH_PORT_MERCATO / BENCH_PORT_NGINX / BENCH_PORT_EXPRESS   [58180 / 58181 / 58182]
#   BENCH_DIR                run directory [.run/bench]
#   BENCH_MERCATO_ENV        extra KEY=value words for mercato (overrides the dummies below)
#   BENCH_IO                 1 = also the pg-redis scenario (mercato only): brings up the private
#                            stack (scripts/dev/stack.sh up), gives mercato a fresh database
#                            mercato_bench and the stack's Redis, seeds both [1]
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
BENCH_SERVERS=${BENCH_SERVERS:-mercato nginx express}
ROUNDS=${ROUNDS:-3}
BENCH_DURATION=${BENCH_DURATION:-8s}
BENCH_CONNECTIONS=${BENCH_CONNECTIONS:-64}
BENCH_THREADS=${BENCH_THREADS:-2}
BENCH_WARMUP=${BENCH_WARMUP:-2s}
BENCH_PAUSE=${BENCH_PAUSE:-1}
BENCH_WORKERS=${BENCH_WORKERS:-2}
# Express runs as one process, as the Node/Express services this design replaces were deployed
# (one process per container); set BENCH_EXPRESS_WORKERS=2 for a node:cluster comparison.
BENCH_EXPRESS_WORKERS=${BENCH_EXPRESS_WORKERS:-1}
BENCH_PORT_MERCATO=${BENCH_PORT_MERCATO:-58180}
BENCH_PORT_NGINX=${BENCH_PORT_NGINX:-58181}
BENCH_PORT_EXPRESS=${BENCH_PORT_EXPRESS:-58182}
BENCH_DIR=${BENCH_DIR:-$ROOT/.run/bench}
BENCH_MERCATO_ENV=${BENCH_MERCATO_ENV:-}
BENCH_IO=${BENCH_IO:-1}
NGINX_MODULES=${NGINX_MODULES:-/usr/lib/nginx/modules}

# The payload every server must return for /bench/json (compared as parsed JSON, keys sorted).
JSON_PAYLOAD='{"id":"7f1c2a9e-0d7b-4e8a-9b7c-2f1e5a6b8c9d","name":"Wireless Headphones","price_cents":12999,"currency":"usd","tags":["audio","wireless"],"stock":42}'
BASELINE=nginx # the ratio column is req/s relative to this server
# /bench/pg-redis/42: bench_items row 42 (migration 001_bench_items.sql) plus stock from Redis.
PG_REDIS_PAYLOAD='{"id":42,"name":"Item 42","price_cents":1042,"currency":"usd","stock":7}'
MERCATO_DB_URL="postgres://bench:bench@127.0.0.1:1/mercato_product" # dummies unless BENCH_IO=1
MERCATO_REDIS_URL="redis://127.0.0.1:1"

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
  [[ " $BENCH_SERVERS " == *" $name "* ]] || return 0
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

start_mercato() {
  mkdir -p "$BENCH_DIR/mercato"
  # The bench route needs no database, but start-up may insist on these being set.
  # shellcheck disable=SC2086 # BENCH_MERCATO_ENV is a list of KEY=value words
  env SCRIPTS_DIR="$ROOT/bench/scripts" SERVICE=product PORT="$BENCH_PORT_MERCATO" \
    WORKERS="$BENCH_WORKERS" LOG_LEVEL=info HOT_RELOAD=0 \
    DATABASE_URL="$MERCATO_DB_URL" \
    REDIS_URL="$MERCATO_REDIS_URL" AMQP_URL="amqp://guest:guest@127.0.0.1:1/" \
    JWKS_URL="http://127.0.0.1:1/.well-known/jwks.json" \
    $BENCH_MERCATO_ENV \
    "$MERCATO" >"$BENCH_DIR/mercato/access.log" 2>"$BENCH_DIR/mercato.out" &
  SERVER_PID[mercato]=$!
}

start_nginx() {
  local p=$BENCH_DIR/nginx
  rm -rf "$p"
  mkdir -p "$p/logs" "$p/tmp"
  sed -e "s|@PREFIX@|$p|g" -e "s|@PORT@|$BENCH_PORT_NGINX|g" -e "s|@WORKERS@|$BENCH_WORKERS|g" \
    -e "s|@MODULES@|$NGINX_MODULES|g" -e "s|@ACCESS_LOG@|$p/logs/access.log|g" \
    bench/nginx/nginx.conf.in >"$p/nginx.conf"
  nginx -q -t -p "$p" -c "$p/nginx.conf" >"$BENCH_DIR/nginx.out" 2>&1 ||
    die "nginx config test failed: $(cat "$BENCH_DIR/nginx.out")"
  nginx -p "$p" -c "$p/nginx.conf" -g 'daemon off;' >>"$BENCH_DIR/nginx.out" 2>&1 &
  SERVER_PID[nginx]=$!
}

start_express() {
  mkdir -p "$BENCH_DIR/express"
  if [[ ! -d bench/express/node_modules/express ]]; then
    log "npm ci in bench/express"
    (cd bench/express && npm ci --no-audit --no-fund --loglevel=error) >&2 || die "npm ci failed"
  fi
  PORT=$BENCH_PORT_EXPRESS EXPRESS_WORKERS=$BENCH_EXPRESS_WORKERS NODE_ENV=production \
    ACCESS_LOG="$BENCH_DIR/express/access.log" \
    node bench/express/server.js >"$BENCH_DIR/express.out" 2>&1 &
  SERVER_PID[express]=$!
}

# setup_io: the private stack up, a fresh database mercato_bench (mercato migrates and seeds
# it at start-up) and bench:stock:<id> in Redis; points mercato at them.
setup_io() {
  local envf pg redis i
  log "pg-redis: bringing up the private stack (scripts/dev/stack.sh up)"
  scripts/dev/stack.sh up >"$BENCH_DIR/stack.log" 2>&1 || die "stack.sh up failed: $(tail -5 "$BENCH_DIR/stack.log")"
  envf=$(scripts/dev/stack.sh env)
  pg=$(sed -n 's/^DATABASE_URL_PRODUCT=//p' <<<"$envf")
  redis=$(sed -n 's/^REDIS_URL=//p' <<<"$envf")
  [[ -n $pg && -n $redis ]] || die "stack.sh env gave no DATABASE_URL_PRODUCT/REDIS_URL"
  psql "${pg%/*}/postgres" -qAtX -v ON_ERROR_STOP=1 -c 'DROP DATABASE IF EXISTS mercato_bench WITH (FORCE)' \
    -c 'CREATE DATABASE mercato_bench' >/dev/null || die "cannot create database mercato_bench"
  for ((i = 1; i <= 10000; i++)); do printf 'SET bench:stock:%d %d\n' "$i" $((i % 100 == 42 ? 7 : i % 50)); done |
    redis-cli -u "$redis" >/dev/null || die "cannot seed Redis"
  MERCATO_DB_URL="${pg%/*}/mercato_bench"
  MERCATO_REDIS_URL=$redis
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

# parse_wrk FILE: prints "rps p50_ms p99_ms errors" from `wrk --latency` output.
parse_wrk() {
  local f=$1 rps p50 p99 errs
  rps=$(awk '/^Requests\/sec:/ { print $2 }' "$f")
  p50=$(awk '/Latency Distribution/ { d = 1 } d && $1 == "50%" { print $2; exit }' "$f")
  p99=$(awk '/Latency Distribution/ { d = 1 } d && $1 == "99%" { print $2; exit }' "$f")
  [[ -n $rps && -n $p50 && -n $p99 ]] || die "cannot parse wrk output $f: $(cat "$f")"
  # socket errors (connect+read+write+timeout) plus non-2xx/3xx responses
  errs=$(awk '/Socket errors:/ { gsub(/,/, ""); e += $4 + $6 + $8 + $10 }
              /Non-2xx or 3xx responses:/ { e += $NF } END { print e + 0 }' "$f")
  printf '%s %s %s %s\n' "$rps" "$(to_ms "$p50")" "$(to_ms "$p99")" "$errs"
}

# run_wrk DURATION URL OUTFILE. wrk runs in the background and is waited for, so that a
# TERM/INT to this script is handled at once (and on_exit stops wrk too).
WRK_PID=""
run_wrk() {
  wrk -t"$BENCH_THREADS" -c"$BENCH_CONNECTIONS" -d"$1" --latency "$2" >"$3" 2>&1 &
  WRK_PID=$!
  wait "$WRK_PID" || die "wrk failed against $2: $(cat "$3")"
  WRK_PID=""
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
declare -A RES=() # RES[scenario/server/round] = "rps p50 p99 errors"

# bench_scenario NAME PATH EXPECTED_JSON: check that every registered server answers PATH
# with EXPECTED_JSON, warm each up, then measure them interleaved for ROUNDS rounds.
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
  local scen=$1 path=$2 expected=$3 name r i n=${#SERVERS[@]} out
  mkdir -p "$BENCH_DIR/raw"
  for name in "${SERVERS[@]}"; do check_response "$name" "$path" "$expected"; done
  for name in "${SERVERS[@]}"; do
    log "[$scen] warm-up ${SERVER_LABEL[$name]} ($BENCH_WARMUP)"
    run_wrk "$BENCH_WARMUP" "${SERVER_URL[$name]}$path" "$BENCH_DIR/raw/$scen-$name-warmup.txt"
    sleep "$BENCH_PAUSE"
  done
  for ((r = 1; r <= ROUNDS; r++)); do
    # rotate the starting server each round so no server always runs first or last
    for ((i = 0; i < n; i++)); do
      name=${SERVERS[$(((i + r - 1) % n))]}
      out="$BENCH_DIR/raw/$scen-$name-r$r.txt"
      log "[$scen] round $r/$ROUNDS ${SERVER_LABEL[$name]} ($BENCH_DURATION, -t$BENCH_THREADS -c$BENCH_CONNECTIONS)"
      run_wrk "$BENCH_DURATION" "${SERVER_URL[$name]}$path" "$out"
      alive "${SERVER_PID[$name]}" || die "${SERVER_LABEL[$name]} died during the run"
      RES[$scen/$name/$r]=$(parse_wrk "$out")
      sleep "$BENCH_PAUSE"
    done
  done
  summarize "$scen" "$path"
}

# summarize NAME PATH: append the median table and the raw per-round table for a scenario.
summarize() {
  local scen=$1 path=$2 name r rps p50 p99 errs base="" ratio
  declare -A med_rps=() med_p50=() med_p99=() err_sum=()
  for name in "${SERVERS[@]}"; do
    med_rps[$name]=$(for ((r = 1; r <= ROUNDS; r++)); do cut -d' ' -f1 <<<"${RES[$scen/$name/$r]}"; done | median)
    med_p50[$name]=$(for ((r = 1; r <= ROUNDS; r++)); do cut -d' ' -f2 <<<"${RES[$scen/$name/$r]}"; done | median)
    med_p99[$name]=$(for ((r = 1; r <= ROUNDS; r++)); do cut -d' ' -f3 <<<"${RES[$scen/$name/$r]}"; done | median)
    err_sum[$name]=$(for ((r = 1; r <= ROUNDS; r++)); do cut -d' ' -f4 <<<"${RES[$scen/$name/$r]}"; done |
      awk '{ s += $1 } END { print s + 0 }')
  done
  [[ -n ${med_rps[$BASELINE]:-} ]] && base=${med_rps[$BASELINE]}

  RESULTS+=("### $scen: GET $path" ""
    "| server | req/s (median of $ROUNDS) | p50 ms | p99 ms | req/s ratio vs ${SERVER_LABEL[$BASELINE]:-$BASELINE} |"
    "| --- | ---: | ---: | ---: | ---: |")
  for name in "${SERVERS[@]}"; do
    if [[ -n $base ]]; then
      ratio=$(awk -v a="${med_rps[$name]}" -v b="$base" 'BEGIN { printf "%.2fx", a / b }')
    else
      ratio="n/a"
    fi
    RESULTS+=("$(printf '| %s | %.0f | %.2f | %.2f | %s |' "${SERVER_LABEL[$name]}" \
      "${med_rps[$name]}" "${med_p50[$name]}" "${med_p99[$name]}" "$ratio")")
  done
  for name in "${SERVERS[@]}"; do
    [[ ${err_sum[$name]} -eq 0 ]] ||
      RESULTS+=("" "**${SERVER_LABEL[$name]}: ${err_sum[$name]} socket errors / non-2xx responses** (see raw wrk output)")
  done
  RESULTS+=("")

  RAW+=("### $scen: per round" "" "| round | server | req/s | p50 ms | p99 ms | errors |" "| ---: | --- | ---: | ---: | ---: | ---: |")
  for ((r = 1; r <= ROUNDS; r++)); do
    for name in "${SERVERS[@]}"; do
      read -r rps p50 p99 errs <<<"${RES[$scen/$name/$r]}"
      RAW+=("$(printf '| %d | %s | %.0f | %.2f | %.2f | %d |' "$r" "${SERVER_LABEL[$name]}" "$rps" "$p50" "$p99" "$errs")")
    done
  done
  RAW+=("")
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
    printf 'Versions: %s; %s + lua-nginx-module %s; node %s + express %s%s.\n\n' \
      "${mver:-mercato ${MERCATO#"$ROOT"/}}" "$(nginx -v 2>&1 | sed 's/^nginx version: //')" \
      "$(dpkg-query -W -f='${Version}' libnginx-mod-http-lua 2>/dev/null || echo '?')" \
      "$(node -v)" "$(node -p 'require("./bench/express/node_modules/express/package.json").version')" \
      "$([[ " ${SERVERS[*]} " == *" mercato "* ]] || echo '; **mercato not benchmarked** (binary missing or deselected)')"
    printf '%s\n' "${RESULTS[@]}" "${RAW[@]}"
    printf 'Raw wrk output: %s/raw/\n' "${BENCH_DIR#"$ROOT"/}"
  } >"$f"
  cat "$f"
}

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
  register_server express "Node/Express" "$BENCH_PORT_EXPRESS" start_express
  ((${#SERVERS[@]} > 0)) || die "no server selected (BENCH_SERVERS='$BENCH_SERVERS')"

  mkdir -p "$BENCH_DIR"
  rm -rf "$BENCH_DIR/raw"
  local io=0
  if [[ $BENCH_IO == 1 && " ${SERVERS[*]} " == *" mercato "* ]]; then
    setup_io
    io=1
  fi
  local name port
  for name in "${SERVERS[@]}"; do
    port=${SERVER_URL[$name]##*:}
    port_free "$port" || die "port $port for $name is in use (set BENCH_PORT_${name^^})"
  done
  for name in "${SERVERS[@]}"; do
    log "starting ${SERVER_LABEL[$name]} on ${SERVER_URL[$name]}"
    "${SERVER_START[$name]}"
  done
  for name in "${SERVERS[@]}"; do wait_ready "$name" /bench/json; done

  # Scenarios: NAME PATH EXPECTED_JSON. Every registered server must serve each PATH.
  bench_scenario json /bench/json "$JSON_PAYLOAD"
  # One indexed PostgreSQL read and one Redis read per request (issue 3), mercato only.
  if ((io)); then bench_scenario pg-redis /bench/pg-redis/42 "$PG_REDIS_PAYLOAD" mercato; fi

  write_results
}

main "$@"
