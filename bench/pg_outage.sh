#!/usr/bin/env bash
# bench/pg_outage.sh — issue 6 resilience check: PostgreSQL stopped and restarted under load.
#
# On a PRIVATE stack (its own RUN_DIR under /tmp and its own ports; the stack in .run/ is never
# touched) it starts PostgreSQL only (scripts/dev/stack.sh start postgres), creates the bench
# database as bench/run.sh does (DROP/CREATE; mercato applies the bench_items migration with its
# 10 000 rows at start-up), starts one mercato on bench/scripts (SERVICE=product, WORKERS=2,
# LISTEN_ADDR=127.0.0.1, as run.sh starts its I/O mercato), warms it up, then runs
#   wrk -t2 -c256 -d30s --timeout 10s -s <status-per-second script> .../bench/pg/42
# and stops PostgreSQL at t≈10 s (stack.sh stop postgres: pg_ctl -m fast) and starts it again at
# t≈18 s. It prints per-second status counts (2xx / 503 / other), wrk's socket errors, whether
# mercato survived and /health and /ready answer, and mercato's threads, PostgreSQL connections
# (pg_stat_activity of the bench database) and open fds before vs after.
#
# Criteria (exit 1 and the list of failed ones if any fails):
#   alive       mercato is still running (same pid), nothing in its stderr about a crash
#   socket      wrk saw no connect/read/write/timeout error (every request was answered in 10 s)
#   statuses    every answer is 2xx or 503 (freeze: or 504, a statement sent before the freeze
#               that reached its deadline)
#   before      every second before the stop: answers, all 2xx
#   during      503s were answered during the outage, and no second of the run went without answers
#   after       every second from OUTAGE_RECOVER_S after PostgreSQL is back: answers, all 2xx
#   health      /health 200 after the run
#   ready       /ready 200 within 10 s after the run
#   threads     same thread count after as before
#   pg-conns    no more mercato connections to the bench database after than before
#   fds         no more open fds after than before (after up to 5 s for closes to land)
#
# Env (defaults in brackets):
#   MERCATO                 binary [build/mercato]
#   OUTAGE_DIR              private run dir, removed at the end [mktemp -d /tmp/mercato-pg-outage.XXXXXX]
#   OUTAGE_KEEP             1 = keep OUTAGE_DIR (logs; mercato's access log is never kept) [0]
#   OUTAGE_PORT             mercato's port [28290]
#   OUTAGE_PG_PORT          the private PostgreSQL [55532]; the other stack ports are moved too
#                           (REDIS 56479, AMQP 45772/45773, EPMD 44469, SMTP 51125/51180, S3 54669)
#                           although only PostgreSQL is started
#   OUTAGE_DB               database [mercato_bench]
#   OUTAGE_WORKERS          mercato WORKERS [2]
#   OUTAGE_CONNECTIONS      wrk -c [256]
#   OUTAGE_THREADS          wrk -t [2]
#   OUTAGE_DURATION         wrk -d in seconds [30]
#   OUTAGE_STOP_AT / OUTAGE_START_AT   seconds into the run [10 / 18]
#   OUTAGE_RECOVER_S        seconds after PostgreSQL is back (stack.sh start returned) from which
#                           only 2xx are expected: the reconnect back-off is at most 2 s [3]
#   OUTAGE_WRK_TIMEOUT      wrk --timeout [10s]
#   OUTAGE_PATH             route [/bench/pg/42]
#   OUTAGE_MERCATO_ENV      extra KEY=value words for mercato's environment
#   OUTAGE_MODE             stop = stack.sh stop/start postgres (connections refused: the issue's
#                           case); freeze = SIGSTOP/SIGCONT of the private postmaster and its
#                           backends instead (a hung server: TCP still accepts, nothing answers) [stop]
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

MERCATO=${MERCATO:-build/mercato}
[[ $MERCATO == /* ]] || MERCATO=$ROOT/$MERCATO
OUTAGE_KEEP=${OUTAGE_KEEP:-0}
OUTAGE_PORT=${OUTAGE_PORT:-28290}
OUTAGE_PG_PORT=${OUTAGE_PG_PORT:-55532}
OUTAGE_DB=${OUTAGE_DB:-mercato_bench}
OUTAGE_WORKERS=${OUTAGE_WORKERS:-2}
OUTAGE_CONNECTIONS=${OUTAGE_CONNECTIONS:-256}
OUTAGE_THREADS=${OUTAGE_THREADS:-2}
OUTAGE_DURATION=${OUTAGE_DURATION:-30}
OUTAGE_STOP_AT=${OUTAGE_STOP_AT:-10}
OUTAGE_START_AT=${OUTAGE_START_AT:-18}
OUTAGE_RECOVER_S=${OUTAGE_RECOVER_S:-3}
OUTAGE_WRK_TIMEOUT=${OUTAGE_WRK_TIMEOUT:-10s}
OUTAGE_PATH=${OUTAGE_PATH:-/bench/pg/42}
OUTAGE_MERCATO_ENV=${OUTAGE_MERCATO_ENV:-}
OUTAGE_MODE=${OUTAGE_MODE:-stop}
PG_PAYLOAD='{"id":42,"name":"Item 42","price_cents":1042,"currency":"usd"}'

log()  { printf 'pg_outage: %s\n' "$*" >&2; }
die()  { printf 'pg_outage: ERROR: %s\n' "$*" >&2; exit 2; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found (${2:-install it})"; }
port_free() { ! ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
alive() {
  local st
  st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [[ -n $st && $st != Z* ]]
}
now_ms() { date +%s%3N; }
secs() { awk -v ms="$1" 'BEGIN { printf "%.1f", ms / 1000 }'; }

for v in OUTAGE_PORT OUTAGE_PG_PORT OUTAGE_WORKERS OUTAGE_CONNECTIONS OUTAGE_THREADS OUTAGE_DURATION \
  OUTAGE_STOP_AT OUTAGE_START_AT OUTAGE_RECOVER_S; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
((OUTAGE_STOP_AT < OUTAGE_START_AT && OUTAGE_START_AT < OUTAGE_DURATION)) ||
  die "need OUTAGE_STOP_AT < OUTAGE_START_AT < OUTAGE_DURATION"
[[ $OUTAGE_DB =~ ^[a-z_][a-z0-9_]*$ ]] || die "OUTAGE_DB must be a plain lower-case name"
[[ $OUTAGE_MODE == stop || $OUTAGE_MODE == freeze ]] || die "OUTAGE_MODE must be stop or freeze"

# ---------------------------------------------------------------------------- private stack

if [[ -z ${OUTAGE_DIR:-} ]]; then
  OUTAGE_DIR=$(mktemp -d /tmp/mercato-pg-outage.XXXXXX)
  OWN_DIR=1
else
  mkdir -p "$OUTAGE_DIR"
  OWN_DIR=0
fi
OUTAGE_DIR=$(cd "$OUTAGE_DIR" && pwd -P)
case "$OUTAGE_DIR" in
  /tmp/*) ;;
  *) die "OUTAGE_DIR must be under /tmp (got $OUTAGE_DIR)" ;;
esac
# PostgreSQL runs as user postgres (we may be root): it must reach $OUTAGE_DIR/pg.
chmod 755 "$OUTAGE_DIR"

# stack.sh with the private RUN_DIR and ports (never .run/ nor the default ports)
stack() {
  env RUN_DIR="$OUTAGE_DIR" PG_PORT="$OUTAGE_PG_PORT" REDIS_PORT=56479 \
    AMQP_PORT=45772 AMQP_DIST_PORT=45773 AMQP_EPMD_PORT=44469 AMQP_CTL_PORT_MIN=45780 AMQP_CTL_PORT_MAX=45790 \
    AMQP_MGMT_PORT=45774 SMTP_PORT=51125 SMTP_WEB_PORT=51180 S3_PORT=54669 \
    bash "$ROOT/scripts/dev/stack.sh" "$@"
}

PG_ADMIN_URL="postgresql://postgres@127.0.0.1:$OUTAGE_PG_PORT/postgres"
DB_URL="postgresql://postgres@127.0.0.1:$OUTAGE_PG_PORT/$OUTAGE_DB"
MERCATO_PID="" WRK_PID="" SAMPLER_PID="" PROBE_PID="" STACK_STARTED=0 FROZEN=""
URL="http://127.0.0.1:$OUTAGE_PORT"

on_exit() {
  local rc=$? i pgdir
  trap - EXIT INT TERM
  # shellcheck disable=SC2086 # a list of pids
  [[ -z $FROZEN ]] || kill -CONT $FROZEN 2>/dev/null || true
  if [[ -n $SAMPLER_PID ]] && alive "$SAMPLER_PID"; then kill -TERM "$SAMPLER_PID" 2>/dev/null || true; fi
  if [[ -n $WRK_PID ]] && alive "$WRK_PID"; then kill -TERM "$WRK_PID" 2>/dev/null || true; fi
  if [[ -n $PROBE_PID ]] && alive "$PROBE_PID"; then kill -TERM "$PROBE_PID" 2>/dev/null || true; fi
  [[ -z $SAMPLER_PID ]] || wait "$SAMPLER_PID" 2>/dev/null || true
  [[ -z $WRK_PID ]] || wait "$WRK_PID" 2>/dev/null || true
  [[ -z $PROBE_PID ]] || wait "$PROBE_PID" 2>/dev/null || true
  if [[ -n $MERCATO_PID ]] && alive "$MERCATO_PID"; then
    kill -TERM "$MERCATO_PID" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do alive "$MERCATO_PID" || break; sleep 0.1; done
    if alive "$MERCATO_PID"; then
      log "mercato (pid $MERCATO_PID) ignored SIGTERM for 15 s: SIGKILL"
      kill -KILL "$MERCATO_PID" 2>/dev/null || true
    fi
  fi
  [[ -z $MERCATO_PID ]] || wait "$MERCATO_PID" 2>/dev/null || true
  if ((STACK_STARTED)); then
    stack down >>"$OUTAGE_DIR/stack.log" 2>&1 || log "stack.sh down failed (see $OUTAGE_DIR/stack.log)"
  fi
  rm -f "$OUTAGE_DIR/mercato.access.log"
  if [[ $OUTAGE_KEEP == 1 || $OWN_DIR == 0 ]]; then
    log "run directory kept: $OUTAGE_DIR"
  else
    # the cluster may live under /var/tmp behind a link (stack.sh pg_prepare_dir)
    if [[ -L $OUTAGE_DIR/pg ]]; then
      pgdir=$(readlink -f "$OUTAGE_DIR/pg")
      [[ $pgdir == /var/tmp/mercato-pg-* ]] && rm -rf "$pgdir"
    fi
    rm -rf "$OUTAGE_DIR"
  fi
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

need wrk "apt-get install wrk"
need curl
need psql "apt-get install postgresql-client"
need ss
[[ -x $MERCATO ]] || die "$MERCATO is not executable (build it first: make)"
port_free "$OUTAGE_PORT" || die "port $OUTAGE_PORT is in use (set OUTAGE_PORT)"
port_free "$OUTAGE_PG_PORT" || die "port $OUTAGE_PG_PORT is in use (set OUTAGE_PG_PORT)"

log "private stack in $OUTAGE_DIR: PostgreSQL on 127.0.0.1:$OUTAGE_PG_PORT"
STACK_STARTED=1
stack start postgres >"$OUTAGE_DIR/stack.log" 2>&1 || die "stack.sh start postgres failed: $(tail -5 "$OUTAGE_DIR/stack.log")"
# as bench/run.sh setup_io: a fresh bench database; mercato migrates bench_items at start-up
psql "$PG_ADMIN_URL" -qAtX -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS $OUTAGE_DB WITH (FORCE)" \
  -c "CREATE DATABASE $OUTAGE_DB" >/dev/null 2>&1 || die "cannot create database $OUTAGE_DB"

# ---------------------------------------------------------------------------- mercato

log "starting mercato on $URL (WORKERS=$OUTAGE_WORKERS, bench/scripts, SERVICE=product)"
# as bench/run.sh start_mercato_as, but without AMQP_URL (run.sh's dummy amqp://…:1 would keep
# /ready at 503 for the queue check) and without Redis (the pg route does not use it)
# shellcheck disable=SC2086 # OUTAGE_MERCATO_ENV is a list of KEY=value words
env SCRIPTS_DIR="$ROOT/bench/scripts" SERVICE=product PORT="$OUTAGE_PORT" LISTEN_ADDR=127.0.0.1 \
  WORKERS="$OUTAGE_WORKERS" LOG_LEVEL=info HOT_RELOAD=0 \
  DATABASE_URL="$DB_URL" REDIS_URL="" AMQP_URL="" \
  JWKS_URL="http://127.0.0.1:1/.well-known/jwks.json" \
  $OUTAGE_MERCATO_ENV \
  "$MERCATO" >"$OUTAGE_DIR/mercato.access.log" 2>"$OUTAGE_DIR/mercato.err" &
MERCATO_PID=$!

code=""
for ((i = 0; i < 150; i++)); do
  alive "$MERCATO_PID" || die "mercato exited during start-up: $(tail -5 "$OUTAGE_DIR/mercato.err" "$OUTAGE_DIR/mercato.access.log")"
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$URL/bench/json" || true)
  [[ $code == 200 ]] && break
  sleep 0.1
done
[[ $code == 200 ]] || die "mercato did not answer 200 on /bench/json within 15 s (last: $code)"
body=$(curl -s --max-time 5 "$URL$OUTAGE_PATH" || true)
if command -v jq >/dev/null 2>&1; then
  [[ $(jq -cS . <<<"$body" 2>/dev/null) == "$(jq -cS . <<<"$PG_PAYLOAD")" ]] ||
    die "$OUTAGE_PATH answered '$body', want $PG_PAYLOAD"
else
  [[ $body == *'"Item 42"'* ]] || die "$OUTAGE_PATH answered '$body'"
fi

# ---------------------------------------------------------------------------- probes

threads_of() { awk '/^Threads:/ { print $2 }' "/proc/$MERCATO_PID/status" 2>/dev/null || echo "?"; }
fds_of() { local n; n=$(find "/proc/$MERCATO_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l) && echo "$n"; }
pg_conns() {
  psql "$PG_ADMIN_URL" -qAtX -c "SELECT count(*) FROM pg_stat_activity WHERE datname = '$OUTAGE_DB' AND application_name LIKE 'mercato-%'" 2>/dev/null || echo "?"
}
pg_conns_detail() {
  psql "$PG_ADMIN_URL" -qAtX -F ' ' -c "SELECT pid, application_name, state, to_char(backend_start, 'HH24:MI:SS') FROM pg_stat_activity WHERE datname = '$OUTAGE_DB' ORDER BY backend_start" 2>/dev/null || true
}
db_metrics() {
  curl -s --max-time 5 "$URL/metrics" 2>/dev/null | awk '/^db_(connections|reconnects_total|connect_failures_total)[ {]/ { printf "%s=%s ", $1, $2 }'
}
# http_probe PATH → "code seconds body"
http_probe() {
  local out
  out=$(curl -s -w '\n%{http_code} %{time_total}' --max-time 10 "$URL$1" 2>/dev/null || true)
  printf '%s %s\n' "$(tail -n1 <<<"$out")" "$(head -n -1 <<<"$out" | tr -d '\n' | cut -c1-300)"
}

# ---------------------------------------------------------------------------- wrk script

WRK_LUA=$OUTAGE_DIR/outage.lua
cat >"$WRK_LUA" <<'LUA'
-- per-second buckets of answers (2xx / 503 / other) relative to t0 (ms since the epoch, argv 1),
-- the longest silence between two answers of one wrk thread, and the first/last 503.
local ffi = require "ffi"
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } pgo_timespec;
  int clock_gettime(int clk, pgo_timespec *ts);
]]
local ts = ffi.new("pgo_timespec")
local function now_ms()
  ffi.C.clock_gettime(0, ts) -- CLOCK_REALTIME, the clock of `date +%s%3N`
  return tonumber(ts.tv_sec) * 1000 + math.floor(tonumber(ts.tv_nsec) / 1e6)
end

local t0 = 0
counts = {}      -- [sec * 3 + k] (k: 0 = 2xx, 1 = 503, 2 = other); globals: thread:get copies them
others = {}      -- [status] = n
maxgap, gapat = 0, 0
first503, last503, last = -1, -1, -1

local threads = {}
function setup(thread) threads[#threads + 1] = thread end

function init(args) t0 = tonumber(args[1]) or now_ms() end

function response(status, headers, body) -- luacheck: ignore 212
  local t = now_ms() - t0
  local k
  if status >= 200 and status < 300 then k = 0
  elseif status == 503 then
    k = 1
    if first503 < 0 then first503 = t end
    last503 = t
  else
    k = 2
    others[status] = (others[status] or 0) + 1
  end
  local key = math.floor(t / 1000) * 3 + k
  counts[key] = (counts[key] or 0) + 1
  if last >= 0 and t - last > maxgap then maxgap, gapat = t - last, last end
  last = t
end

function done(summary, latency, requests) -- luacheck: ignore 212
  local all, oth = {}, {}
  local gap, gat, f503, l503 = 0, 0, -1, -1
  for _, th in ipairs(threads) do
    for key, n in pairs(th:get("counts") or {}) do all[key] = (all[key] or 0) + n end
    for st, n in pairs(th:get("others") or {}) do oth[st] = (oth[st] or 0) + n end
    local g = th:get("maxgap") or 0
    if g > gap then gap, gat = g, th:get("gapat") end
    local f, l = th:get("first503"), th:get("last503")
    if f and f >= 0 and (f503 < 0 or f < f503) then f503 = f end
    if l and l > l503 then l503 = l end
  end
  local maxsec = -1
  for key in pairs(all) do
    local s = math.floor(key / 3)
    if s > maxsec then maxsec = s end
  end
  for s = 0, maxsec do
    io.write(string.format("PGO bucket %d %d %d %d\n", s, all[s * 3] or 0, all[s * 3 + 1] or 0, all[s * 3 + 2] or 0))
  end
  for st, n in pairs(oth) do io.write(string.format("PGO other %d %d\n", st, n)) end
  local e = summary.errors
  io.write(string.format("PGO errors %d %d %d %d %d\n", e.connect, e.read, e.write, e.status, e.timeout))
  io.write(string.format("PGO requests %d\n", summary.requests))
  io.write(string.format("PGO gap %d %d\n", gap, gat))
  io.write(string.format("PGO 503span %d %d\n", f503, l503))
end
LUA

# ---------------------------------------------------------------------------- run

log "warm-up: wrk -t$OUTAGE_THREADS -c$OUTAGE_CONNECTIONS -d2s (every worker opens its connection)"
wrk -t"$OUTAGE_THREADS" -c"$OUTAGE_CONNECTIONS" -d2s "$URL$OUTAGE_PATH" >"$OUTAGE_DIR/wrk-warmup.txt" 2>&1 ||
  die "warm-up wrk failed: $(cat "$OUTAGE_DIR/wrk-warmup.txt")"
if grep -qE 'Socket errors|Non-2xx' "$OUTAGE_DIR/wrk-warmup.txt"; then
  log "warning: the warm-up had errors: $(grep -E 'Socket errors|Non-2xx' "$OUTAGE_DIR/wrk-warmup.txt" | tr '\n' ' ')"
fi
sleep 2

B_THREADS=$(threads_of) B_FDS=$(fds_of) B_PG=$(pg_conns) B_METRICS=$(db_metrics)
B_PG_DETAIL=$(pg_conns_detail)
B_READY=$(http_probe /ready)
B_HEALTH=$(http_probe /health)

# the sampler: threads and fds of mercato every 0.5 s during the run (→ max and per second)
sampler() {
  local t th fd
  while alive "$MERCATO_PID"; do
    t=$(($(now_ms) - T0))
    th=$(awk '/^Threads:/ { print $2 }' "/proc/$MERCATO_PID/status" 2>/dev/null) || break
    fd=$(find "/proc/$MERCATO_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l) || break
    printf '%d %s %s\n' "$t" "$th" "$fd"
    sleep 0.5
  done
}

# the private PostgreSQL's postmaster and its children (backends, background processes)
pg_pids() {
  local pm=""
  read -r pm <"$OUTAGE_DIR/pg/data/postmaster.pid" || true
  [[ $pm =~ ^[0-9]+$ ]] || return 0
  echo "$pm"
  pgrep -P "$pm" || true
}
# shellcheck disable=SC2086 # FROZEN is a list of pids
outage_begin() {
  if [[ $OUTAGE_MODE == stop ]]; then
    stack stop postgres >>"$OUTAGE_DIR/stack.log" 2>&1 || log "stack.sh stop postgres failed (see $OUTAGE_DIR/stack.log)"
  else
    FROZEN=$(pg_pids | tr '\n' ' ')
    if [[ -n $FROZEN ]]; then kill -STOP $FROZEN; else log "no PostgreSQL process to freeze"; fi
  fi
}
# shellcheck disable=SC2086
outage_end() {
  if [[ $OUTAGE_MODE == stop ]]; then
    stack start postgres >>"$OUTAGE_DIR/stack.log" 2>&1 || log "stack.sh start postgres failed (see $OUTAGE_DIR/stack.log)"
  else
    [[ -z $FROZEN ]] || kill -CONT $FROZEN || true
    FROZEN=""
  fi
}
if [[ $OUTAGE_MODE == stop ]]; then
  EV_STOP="stop postgres" EV_STOPPED="stopped" EV_START="start postgres" EV_READY="ready"
  HOW_STOP="\`stack.sh stop postgres\`" HOW_START="\`stack.sh start postgres\`, returns once ready"
else
  EV_STOP="SIGSTOP postgres" EV_STOPPED="frozen" EV_START="SIGCONT postgres" EV_READY="resumed"
  HOW_STOP="SIGSTOP to the postmaster and its backends" HOW_START="SIGCONT"
fi

sleep_until() { # ms since T0
  local d=$(($1 - ($(now_ms) - T0)))
  ((d <= 0)) || sleep "$(awk -v ms="$d" 'BEGIN { printf "%.3f", ms / 1000 }')"
}

log "run: wrk -t$OUTAGE_THREADS -c$OUTAGE_CONNECTIONS -d${OUTAGE_DURATION}s --timeout $OUTAGE_WRK_TIMEOUT $URL$OUTAGE_PATH; PostgreSQL $EV_STOP at ${OUTAGE_STOP_AT} s, $EV_START at ${OUTAGE_START_AT} s"
T0=$(now_ms)
wrk -t"$OUTAGE_THREADS" -c"$OUTAGE_CONNECTIONS" -d"${OUTAGE_DURATION}s" --timeout "$OUTAGE_WRK_TIMEOUT" \
  -s "$WRK_LUA" "$URL$OUTAGE_PATH" -- "$T0" >"$OUTAGE_DIR/wrk.txt" 2>&1 &
WRK_PID=$!
sampler >"$OUTAGE_DIR/samples.txt" &
SAMPLER_PID=$!

sleep_until $((OUTAGE_STOP_AT * 1000))
STOP_B=$(($(now_ms) - T0))
outage_begin
STOP_E=$(($(now_ms) - T0))
log "PostgreSQL $EV_STOPPED ($(secs "$STOP_B") → $(secs "$STOP_E") s)"

# one /ready probe in the middle of the outage (informational: how fast it says 503), in the
# background so that a slow answer does not delay the restart
(
  sleep_until $(((OUTAGE_STOP_AT + OUTAGE_START_AT) * 500))
  at=$(($(now_ms) - T0))
  printf '%s %s\n' "$at" "$(http_probe /ready)" >"$OUTAGE_DIR/mid-ready.txt"
) &
PROBE_PID=$!

sleep_until $((OUTAGE_START_AT * 1000))
START_B=$(($(now_ms) - T0))
outage_end
START_E=$(($(now_ms) - T0))
log "PostgreSQL $EV_READY ($(secs "$START_B") → $(secs "$START_E") s)"

WRK_RC=0
wait "$WRK_PID" || WRK_RC=$?
WRK_PID=""
kill -TERM "$SAMPLER_PID" 2>/dev/null || true
wait "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=""
wait "$PROBE_PID" 2>/dev/null || true
PROBE_PID=""
MID_READY_AT=0 MID_READY="- - (no answer)"
if [[ -s $OUTAGE_DIR/mid-ready.txt ]]; then
  read -r MID_READY_AT MID_READY <"$OUTAGE_DIR/mid-ready.txt" || true
fi

# ---------------------------------------------------------------------------- after

ALIVE=0
alive "$MERCATO_PID" && ALIVE=1
A_THREADS="-" A_FDS="-" A_PG="-" A_METRICS="" HEALTH="- -" READY="- -" READY_WAIT="-"
if ((ALIVE)); then
  HEALTH=$(http_probe /health)
  # ready: up to 10 s (each worker answers for its own connection)
  t=$(now_ms)
  for ((i = 0; i < 20; i++)); do
    READY=$(http_probe /ready)
    [[ $READY == "200 "* ]] && break
    sleep 0.5
  done
  READY_WAIT=$(secs $(($(now_ms) - t)))
  # a few requests so that every worker has used (and, if needed, remade) its connection
  for ((i = 0; i < 8; i++)); do curl -s -o /dev/null --max-time 5 "$URL$OUTAGE_PATH" || true; done
  A_THREADS=$(threads_of)
  # closes of wrk's connections may take a moment to land
  for ((i = 0; i < 50; i++)); do
    A_FDS=$(fds_of)
    [[ $A_FDS =~ ^[0-9]+$ && $B_FDS =~ ^[0-9]+$ ]] && ((A_FDS <= B_FDS)) && break
    sleep 0.1
  done
  A_PG=$(pg_conns)
  A_METRICS=$(db_metrics)
fi
A_PG_DETAIL=$(pg_conns_detail)
alive "$MERCATO_PID" || ALIVE=0
MERCATO_EXIT=""
if ((!ALIVE)); then
  MERCATO_EXIT=0
  wait "$MERCATO_PID" 2>/dev/null || MERCATO_EXIT=$?
  MERCATO_PID_GONE=$MERCATO_PID MERCATO_PID=""
fi

# ---------------------------------------------------------------------------- report

WRK_OUT=$OUTAGE_DIR/wrk.txt
read -r E_CONNECT E_READ E_WRITE E_STATUS E_TIMEOUT < <(awk '$1 == "PGO" && $2 == "errors" { print $3, $4, $5, $6, $7 }' "$WRK_OUT") || true
[[ -n ${E_CONNECT:-} ]] || { cat "$WRK_OUT" >&2; die "wrk printed no PGO summary (exit $WRK_RC)"; }
read -r GAP GAP_AT < <(awk '$1 == "PGO" && $2 == "gap" { print $3, $4 }' "$WRK_OUT") || true
read -r F503 L503 < <(awk '$1 == "PGO" && $2 == "503span" { print $3, $4 }' "$WRK_OUT") || true
REQS=$(awk '$1 == "PGO" && $2 == "requests" { print $3 }' "$WRK_OUT")
OTHERS=$(awk '$1 == "PGO" && $2 == "other" { printf "%s×%s ", $3, $4 }' "$WRK_OUT")

STOP_SEC=$((STOP_B / 1000))                                   # first second touched by the stop
AFTER_SEC=$(((START_E + OUTAGE_RECOVER_S * 1000 + 999) / 1000)) # first second expected all 2xx

declare -A SAMPLE_TH=() SAMPLE_FD=()
MAX_TH=0 MAX_FD=0
while read -r t th fd; do
  [[ $t =~ ^[0-9]+$ ]] || continue
  SAMPLE_TH[$((t / 1000))]=$th SAMPLE_FD[$((t / 1000))]=$fd
  ((th > MAX_TH)) && MAX_TH=$th
  ((fd > MAX_FD)) && MAX_FD=$fd
done <"$OUTAGE_DIR/samples.txt"

echo
echo "## PostgreSQL outage under load (issue 6, mode $OUTAGE_MODE)"
echo
echo "mercato WORKERS=$OUTAGE_WORKERS on bench/scripts, \`wrk -t$OUTAGE_THREADS -c$OUTAGE_CONNECTIONS -d${OUTAGE_DURATION}s --timeout $OUTAGE_WRK_TIMEOUT\` GET $OUTAGE_PATH;"
echo "PostgreSQL (private, :$OUTAGE_PG_PORT) $EV_STOPPED $(secs "$STOP_B")→$(secs "$STOP_E") s ($HOW_STOP), $EV_READY $(secs "$START_B")→$(secs "$START_E") s ($HOW_START)."
echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) CPUs."
echo
echo "| second | 2xx | 503 | other | answers | mercato threads | mercato fds | event |"
echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
FAIL=()
BEFORE_BAD="" AFTER_BAD="" ZERO_SECS="" SEEN_503_DURING=0 last_sec=-1
while read -r s ok s503 other; do
  last_sec=$s
  ev=""
  ((s == STOP_B / 1000)) && ev+="$EV_STOP @$(secs "$STOP_B") s "
  ((s == STOP_E / 1000)) && ev+="$EV_STOPPED @$(secs "$STOP_E") s "
  ((s == MID_READY_AT / 1000)) && ev+="/ready probe: ${MID_READY%% *} "
  ((s == START_B / 1000)) && ev+="$EV_START @$(secs "$START_B") s "
  ((s == START_E / 1000)) && ev+="$EV_READY @$(secs "$START_E") s "
  ((s == AFTER_SEC)) && ev+="(all 2xx expected from here) "
  ((s == OUTAGE_DURATION)) && ev+="(partial second: wrk stops) "
  printf '| %d | %d | %d | %d | %d | %s | %s | %s |\n' "$s" "$ok" "$s503" "$other" $((ok + s503 + other)) \
    "${SAMPLE_TH[$s]:-}" "${SAMPLE_FD[$s]:-}" "${ev% }"
  if ((s < STOP_SEC)); then
    ((s503 + other == 0 && ok > 0)) || BEFORE_BAD+="$s "
  elif ((s < AFTER_SEC)); then
    ((s503 == 0)) || SEEN_503_DURING=1
  else
    ((s503 + other == 0 && (ok > 0 || s == OUTAGE_DURATION))) || AFTER_BAD+="$s "
  fi
  ((s == OUTAGE_DURATION || ok + s503 + other > 0)) || ZERO_SECS+="$s "
done < <(awk '$1 == "PGO" && $2 == "bucket" { print $3, $4, $5, $6 }' "$WRK_OUT")
# seconds at the end with no answer at all do not appear as buckets
for ((s = last_sec + 1; s < OUTAGE_DURATION; s++)); do ZERO_SECS+="$s "; AFTER_BAD+="$s "; done

echo
echo "wrk: $REQS answers; socket errors: connect $E_CONNECT, read $E_READ, write $E_WRITE, timeout $E_TIMEOUT; non-2xx/3xx $E_STATUS${OTHERS:+; other statuses: $OTHERS}"
echo "wrk's own summary: $(grep -E 'requests in|Socket errors|Non-2xx|Latency  ' "$WRK_OUT" | sed 's/^ *//' | tr -s ' ' | paste -sd ';' -)"
if ((F503 >= 0)); then
  echo "503s from $(secs "$F503") s to $(secs "$L503") s: the last one $(secs $((L503 - START_E))) s after PostgreSQL was ready again"
else
  echo "no 503 at all"
fi
echo "longest silence of a wrk thread (no answer at all): $GAP ms, from $(secs "$GAP_AT") s"
echo "/ready in the middle of the outage (@$(secs "$MID_READY_AT") s): status ${MID_READY%% *}, $(cut -d' ' -f2 <<<"$MID_READY") s: $(cut -d' ' -f3- <<<"$MID_READY")"
echo "mercato threads/fds max during the run: $MAX_TH / $MAX_FD"
echo
echo "| | before | after |"
echo "| --- | ---: | ---: |"
echo "| mercato alive (pid ${MERCATO_PID:-${MERCATO_PID_GONE:-?}}) | yes | $( ((ALIVE)) && echo yes || echo "NO (exit $MERCATO_EXIT)") |"
echo "| /health | ${B_HEALTH%% *} | ${HEALTH%% *} |"
echo "| /ready | ${B_READY%% *} | ${READY%% *} (after ${READY_WAIT} s) |"
echo "| threads (/proc/<pid>/status) | $B_THREADS | $A_THREADS |"
echo "| PostgreSQL connections of mercato to $OUTAGE_DB (pg_stat_activity) | $B_PG | $A_PG |"
echo "| open fds (/proc/<pid>/fd) | $B_FDS | $A_FDS |"
echo "| db metrics | ${B_METRICS% } | ${A_METRICS% } |"
echo
indent() { sed 's/^/    /'; }
echo "pg_stat_activity ($OUTAGE_DB) before:"; indent <<<"${B_PG_DETAIL:-(none)}"
echo "pg_stat_activity ($OUTAGE_DB) after:";  indent <<<"${A_PG_DETAIL:-(none)}"
# mercato's own log lines (not the access lines), condensed
EV=$OUTAGE_DIR/mercato.events.log
grep -v '"type":"access"' "$OUTAGE_DIR/mercato.access.log" >"$EV" 2>/dev/null || true
cat "$OUTAGE_DIR/mercato.err" >>"$EV" 2>/dev/null || true
echo "mercato log (non-access lines, $(wc -l <"$EV") in all; message counts):"
sed -E 's/.*"msg":"([^"]{0,110}).*/\1/' "$EV" | sed -E 's/[0-9]+/N/g' | sort | uniq -c | sort -rn | head -12 | sed 's/^/    /'
echo

# ---------------------------------------------------------------------------- criteria

((ALIVE)) || FAIL+=("alive: mercato (pid ${MERCATO_PID_GONE:-?}) is gone, exit status $MERCATO_EXIT (above 128: killed by signal N+128)")
CRASH_RE='segmentation fault|aborted|assertion|panic|core dumped|stack overflow'
if grep -qiE "$CRASH_RE" "$OUTAGE_DIR/mercato.err" 2>/dev/null; then
  FAIL+=("alive: mercato's stderr: $(grep -iE "$CRASH_RE" "$OUTAGE_DIR/mercato.err" | head -2 | tr '\n' ' ')")
fi
((E_CONNECT + E_READ + E_WRITE + E_TIMEOUT == 0)) ||
  FAIL+=("socket: wrk socket errors connect $E_CONNECT, read $E_READ, write $E_WRITE, timeout $E_TIMEOUT (requests not answered within $OUTAGE_WRK_TIMEOUT or connections dropped)")
BAD_OTHERS=$OTHERS
if [[ $OUTAGE_MODE == freeze ]]; then
  # A hung server: statements already sent when it froze end at their deadline with the
  # `timeout` code, which the routes answer 504 (a dependency that did not answer in time).
  BAD_OTHERS=$(sed -E 's/(^| )504×[0-9]+//g' <<<"$OTHERS")
fi
[[ -z ${BAD_OTHERS// /} ]] || FAIL+=("statuses: answers other than 2xx/503: $OTHERS")
[[ -z $BEFORE_BAD ]] || FAIL+=("before: seconds before the stop with a non-2xx answer or none: $BEFORE_BAD")
((SEEN_503_DURING)) || FAIL+=("during: no 503 was answered during the outage")
[[ -z $ZERO_SECS ]] || FAIL+=("during: seconds without a single answer (requests held, not refused): $ZERO_SECS")
[[ -z $AFTER_BAD ]] || FAIL+=("after: seconds from $AFTER_SEC s (PostgreSQL ready + ${OUTAGE_RECOVER_S} s) with a non-2xx answer or none: $AFTER_BAD")
[[ ${HEALTH%% *} == 200 ]] || FAIL+=("health: /health answered ${HEALTH%% *}")
[[ ${READY%% *} == 200 ]] || FAIL+=("ready: /ready answered ${READY%% *} after 10 s: $(cut -d' ' -f3- <<<"$READY")")
[[ $A_THREADS == "$B_THREADS" ]] || FAIL+=("threads: $B_THREADS before, $A_THREADS after")
[[ $A_PG =~ ^[0-9]+$ && $B_PG =~ ^[0-9]+$ ]] && ((A_PG <= B_PG)) ||
  FAIL+=("pg-conns: $B_PG mercato connections to $OUTAGE_DB before, $A_PG after")
[[ $A_FDS =~ ^[0-9]+$ && $B_FDS =~ ^[0-9]+$ ]] && ((A_FDS <= B_FDS)) ||
  FAIL+=("fds: $B_FDS open fds before, $A_FDS after")

CRITERIA=(alive socket statuses before during after health ready threads pg-conns fds)
for c in "${CRITERIA[@]}"; do
  st=PASS
  for f in "${FAIL[@]}"; do [[ $f == "$c:"* ]] && st=FAIL; done
  printf '%-9s %s\n' "$c" "$st"
done
if ((${#FAIL[@]})); then
  echo
  echo "FAILED:"
  printf '  - %s\n' "${FAIL[@]}"
  exit 1
fi
echo
echo "all criteria hold"
