#!/usr/bin/env bash
# mercato local dependency stack: private PostgreSQL, Redis, RabbitMQ, SMTP
# sink (maildev) and S3 store (s3rver), all on 127.0.0.1, all under $RUN_DIR.
# No system service is touched.
#
# Usage: scripts/dev/stack.sh up|down|status|env|reset-db|stop|start|restart
#   up        start every service that is not already running, wait until ready,
#             create the five service databases if missing (idempotent, fast)
#   down      stop every service by its pid (nothing else is touched)
#   status    one line per service; exit 0 if all run, 3 otherwise
#   env       print KEY=value lines (DATABASE_URL_*, REDIS_URL, AMQP_URL, SMTP_*, S3_*)
#   reset-db  drop and recreate the five databases (PostgreSQL must be up)
#   stop|start|restart postgres|redis|rabbitmq|maildev
#             stop and/or start one server, keeping its data (restart_spec.lua uses
#             this to check that mercato reconnects; start waits until it is ready)
#   kill postgres|redis|rabbitmq|maildev
#             SIGKILL one server and its child processes (a crash: no shutdown, no
#             flush), then start it again and wait until it is ready (the chaos tier)
#   rabbitmqctl ARGS...  run rabbitmqctl against the private node
#
# Environment (defaults in brackets; the ports sit below Linux's ephemeral range, 32768-60999,
# so that no outgoing connection can hold one while its server restarts — RabbitMQ once failed
# to come back with eaddrinuse on 45672):
#   RUN_DIR            state, data and pid files           [<repo>/.run]
#   PG_PORT            PostgreSQL                           [29432]
#   PG_BIN             PostgreSQL server binaries           [/usr/lib/postgresql/<newest>/bin]
#   PG_MAX_CONNECTIONS                                      [200]
#   PG_STAT_STATEMENTS=1  load pg_stat_statements (shared_preload_libraries; top-level
#             statements, BEGIN and COMMIT included) and create the extension in database postgres, from
#             which its view shows every database's statements (bench/checkout_cost.sh).
#             Opt-in: it costs a little per statement. The setting applies when PostgreSQL
#             starts; `up` against a server started without it fails and says to run
#             `PG_STAT_STATEMENTS=1 scripts/dev/stack.sh restart postgres`  [0]
#   REDIS_PORT         Redis                                [29379]
#   AMQP_PORT          RabbitMQ AMQP listener               [29672]
#   AMQP_DIST_PORT     RabbitMQ Erlang distribution         [29673]
#   AMQP_EPMD_PORT     private epmd                         [29369]
#   AMQP_CTL_PORT_MIN / AMQP_CTL_PORT_MAX  rabbitmqctl dist [45680 / 45690]
#   AMQP_MGMT_PORT     management UI/API (only if enabled)  [29674]
#   RABBITMQ_MANAGEMENT=1  enable rabbitmq_management (slower start-up) [0]
#   SMTP_PORT          maildev SMTP                         [29025]
#   SMTP_WEB_PORT      maildev web UI + REST API            [29080]
#   S3_PORT            s3rver                               [29569]
#   S3_BUCKET          bucket created at start-up           [product-images]
#
# Layout: $RUN_DIR/{pg,redis,rmq,maildev,s3}/, pid files in $RUN_DIR/*.pid and
# in the services' own places, logs in $RUN_DIR/logs/.
# As root, PostgreSQL runs as user postgres (it refuses root); the rest as the caller.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
RUN_DIR=${RUN_DIR:-$REPO/.run}
LOG_DIR=$RUN_DIR/logs

PG_PORT=${PG_PORT:-29432}
PG_MAX_CONNECTIONS=${PG_MAX_CONNECTIONS:-200}
PG_STAT_STATEMENTS=${PG_STAT_STATEMENTS:-0}
REDIS_PORT=${REDIS_PORT:-29379}
AMQP_PORT=${AMQP_PORT:-29672}
AMQP_DIST_PORT=${AMQP_DIST_PORT:-29673}
AMQP_EPMD_PORT=${AMQP_EPMD_PORT:-29369}
AMQP_CTL_PORT_MIN=${AMQP_CTL_PORT_MIN:-45680}
AMQP_CTL_PORT_MAX=${AMQP_CTL_PORT_MAX:-45690}
AMQP_MGMT_PORT=${AMQP_MGMT_PORT:-29674}
RABBITMQ_MANAGEMENT=${RABBITMQ_MANAGEMENT:-0}
SMTP_PORT=${SMTP_PORT:-29025}
SMTP_WEB_PORT=${SMTP_WEB_PORT:-29080}
S3_PORT=${S3_PORT:-29569}
S3_BUCKET=${S3_BUCKET:-product-images}

declare -A ALREADY=() # services found running by *_start

DATABASES=(mercato_user mercato_product mercato_order mercato_payment mercato_notification)

PG_DIR=$RUN_DIR/pg
pg_paths() {
  # .run/pg may be a link to /var/tmp (see pg_prepare_dir): use the real path,
  # which is the one user postgres can reach.
  if [ -L "$PG_DIR" ]; then PG_DIR=$(readlink -f "$PG_DIR"); fi
  PG_DATA=$PG_DIR/data
  PG_SOCK=$PG_DIR/sock
}
pg_paths
REDIS_DIR=$RUN_DIR/redis
REDIS_PID=$RUN_DIR/redis.pid
RMQ_DIR=$RUN_DIR/rmq
RMQ_PID=$RMQ_DIR/rabbit.pid          # written by the Erlang VM
RMQ_WRAPPER_PID=$RUN_DIR/rabbitmq.pid # the rabbitmq-server shell wrapper
RMQ_BIN=/usr/lib/rabbitmq/bin
MAILDEV_PID=$RUN_DIR/maildev.pid
S3_PID=$RUN_DIR/s3rver.pid          # written by s3rver.js once listening

log() { printf 'stack: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
is_root() { [ "$(id -u)" -eq 0 ]; }

# PostgreSQL binaries, called directly (the /usr/bin wrappers cost ~50 ms each).
if [ -z "${PG_BIN:-}" ]; then
  PG_BIN=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n1)
fi
pg_bin() {
  if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/postgres" ]; then
    die "PostgreSQL server binaries not found (run scripts/dev/install-deps.sh, or set PG_BIN)"
  fi
  printf '%s\n' "$PG_BIN"
}

# Run a PostgreSQL server tool: as postgres when we are root (it refuses root).
as_pg() {
  if is_root; then runuser -u postgres -- "$@"; else "$@"; fi
}

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Prints the pid in file $1 if that process is alive (not a zombie) and its
# command line contains $2; fails otherwise.
live_pid() {
  local file=$1 pattern=$2 pid="" stat
  [ -r "$file" ] || return 1
  read -r pid <"$file" || true
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  stat=$(ps -o stat= -p "$pid" 2>/dev/null) || return 1
  [[ "$stat" != Z* ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$pattern" || return 1
  printf '%s\n' "$pid"
}

# Wait (polling every 0.1 s, up to $1 s of wall-clock time) until "${@:2}" succeeds.
wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  while ! "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -le "$deadline" ] || return 1
    sleep 0.1
  done
}

# Failure report: message and the tail of the log.
fail() {
  local what=$1 logfile=$2
  log "ERROR: $what"
  if [ -f "$logfile" ]; then
    log "last lines of $logfile:"
    tail -n 30 "$logfile" >&2
  fi
  exit 1
}

# The port must be free unless our own service holds it.
require_free_port() {
  local name=$1 port=$2
  if port_open "$port"; then
    die "$name: port $port on 127.0.0.1 is in use by another process (set the port variable, see $0 header)"
  fi
}

# Stop pid $2 (service $1) with SIGTERM, SIGKILL after $3 s.
stop_pid() {
  local name=$1 pid=$2 timeout=${3:-20}
  kill -TERM "$pid" 2>/dev/null || return 0
  if ! wait_for "$timeout" pid_gone "$pid"; then
    log "$name (pid $pid) did not stop in ${timeout}s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_for 5 pid_gone "$pid" || true
  fi
}
pid_gone() {
  local stat
  stat=$(ps -o stat= -p "$1" 2>/dev/null) || return 0
  [[ "$stat" == Z* ]]
}

# Start a detached daemon: own session, stdin from /dev/null, output to $2.
# Prints its pid.
spawn() {
  local logfile=$1
  shift
  setsid "$@" </dev/null >>"$logfile" 2>&1 &
  printf '%s\n' "$!"
}

# ---------------------------------------------------------------- PostgreSQL

pg_pid() { live_pid "$PG_DATA/postmaster.pid" postgres; }

pg_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 1; }

# Runs the SQL on stdin as postgres (autocommit per statement).
psql_admin() {
  "$(pg_bin)/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres "$@"
}

# Make $PG_DIR usable by the server's user. As root, if postgres cannot reach
# $RUN_DIR (e.g. a repository under a private home), or the socket path would be
# too long, keep the cluster under /var/tmp and link it from $RUN_DIR/pg.
pg_prepare_dir() {
  if [ -f "$PG_DATA/PG_VERSION" ]; then return 0; fi
  local alt
  alt=/var/tmp/mercato-pg-$(printf '%s' "$RUN_DIR" | sha256sum | cut -c1-12)
  if [ ! -L "$PG_DIR" ]; then
    mkdir -p "$PG_DIR"
    if is_root; then chown postgres: "$PG_DIR"; fi
    if [ $((${#PG_SOCK} + 20)) -gt 100 ] || { is_root && ! runuser -u postgres -- test -w "$PG_DIR"; }; then
      log "postgres: $PG_DIR is not usable by user postgres (or too long a socket path); using $alt"
      rmdir "$PG_DIR" 2>/dev/null || die "postgres: $PG_DIR is not empty; remove it"
      mkdir -p "$alt"
      ln -s "$alt" "$PG_DIR"
      pg_paths
    fi
  fi
  mkdir -p "$PG_DATA" "$PG_SOCK" "$PG_DIR/log"
  chmod 700 "$PG_DATA"
  if is_root; then chown -R postgres: "$(readlink -f "$PG_DIR")"; fi
}

pg_start() {
  if pg_pid >/dev/null && port_open "$PG_PORT"; then ALREADY[pg]=1; return 0; fi
  if pg_pid >/dev/null; then return 0; fi # starting: *_wait polls
  require_free_port postgres "$PG_PORT"
  local bin
  bin=$(pg_bin)
  pg_prepare_dir
  ln -sfn "$PG_DIR/log/postgres.log" "$LOG_DIR/postgres.log"
  if [ ! -f "$PG_DATA/PG_VERSION" ]; then
    as_pg "$bin/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 --no-sync \
      >"$PG_DIR/log/initdb.log" 2>&1 || fail "postgres: initdb failed" "$PG_DIR/log/initdb.log"
  fi
  local opts="-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_SOCK -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=$PG_MAX_CONNECTIONS"
  if [ "$PG_STAT_STATEMENTS" = 1 ]; then
    # Top-level statements only (the default track=top): what the clients sent, BEGIN and COMMIT
    # included (track_utility), not the foreign-key checks run inside them.
    opts+=" -c shared_preload_libraries=pg_stat_statements"
  fi
  # -W: do not wait here; pg_wait polls while the other services start.
  as_pg "$bin/pg_ctl" -D "$PG_DATA" -l "$PG_DIR/log/postgres.log" -W start -o "$opts" \
    >/dev/null || fail "postgres: pg_ctl start failed" "$PG_DIR/log/postgres.log"
}

# PG_STAT_STATEMENTS=1: the running server must have loaded the library (it is read at start
# only); then the extension exists in database postgres.
pg_stat_statements_ensure() {
  [ "$PG_STAT_STATEMENTS" = 1 ] || return 0
  local loaded
  loaded=$(psql_admin -tA -c "SHOW shared_preload_libraries")
  case ",${loaded// /}," in
    *,pg_stat_statements,*) ;;
    *) die "postgres on :$PG_PORT runs without pg_stat_statements; run: PG_STAT_STATEMENTS=1 $0 restart postgres" ;;
  esac
  psql_admin -c "SET client_min_messages = warning" -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null
}

pg_wait() {
  if [ -z "${ALREADY[pg]:-}" ]; then
    wait_for 30 pg_ready || fail "postgres did not become ready on 127.0.0.1:$PG_PORT in 30 s" "$PG_DIR/log/postgres.log"
  fi
  pg_create_dbs
  pg_stat_statements_ensure
}

pg_create_dbs() {
  local list
  list=$(printf "'%s'," "${DATABASES[@]}")
  psql_admin <<SQL >/dev/null
SELECT format('CREATE DATABASE %I STRATEGY FILE_COPY', n)
  FROM unnest(ARRAY[${list%,}]) AS n
 WHERE NOT EXISTS (SELECT 1 FROM pg_database d WHERE d.datname = n)
\gexec
SQL
}

pg_reset_dbs() {
  pg_ready || die "postgres is not running on 127.0.0.1:$PG_PORT (run: $0 up)"
  local sql="" db
  for db in "${DATABASES[@]}"; do
    sql+="DROP DATABASE IF EXISTS $db WITH (FORCE);"$'\n'
    sql+="CREATE DATABASE $db STRATEGY FILE_COPY;"$'\n'
  done
  psql_admin >/dev/null <<<"$sql"
}

pg_stop() {
  local pid
  pid=$(pg_pid) || return 0
  as_pg "$(pg_bin)/pg_ctl" -D "$PG_DATA" -m fast -w -t 30 stop >/dev/null 2>&1 ||
    stop_pid postgres "$pid" 30
}

# --------------------------------------------------------------------- Redis

redis_pid() { live_pid "$REDIS_PID" redis-server; }

redis_ready() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }

redis_start() {
  if redis_pid >/dev/null && port_open "$REDIS_PORT"; then ALREADY[redis]=1; return 0; fi
  if redis_pid >/dev/null; then return 0; fi # starting: *_wait polls
  require_free_port redis "$REDIS_PORT"
  mkdir -p "$REDIS_DIR"
  rm -f "$REDIS_PID"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no \
    --daemonize yes --dir "$REDIS_DIR" --pidfile "$REDIS_PID" --logfile "$LOG_DIR/redis.log" \
    </dev/null || fail "redis: redis-server failed to start" "$LOG_DIR/redis.log"
}

redis_wait() {
  if [ -n "${ALREADY[redis]:-}" ]; then return 0; fi
  wait_for 10 redis_ready || fail "redis did not answer PING on 127.0.0.1:$REDIS_PORT in 10 s" "$LOG_DIR/redis.log"
}

redis_stop() {
  local pid
  pid=$(redis_pid) || return 0
  stop_pid redis "$pid" 10
  rm -f "$REDIS_PID"
}

# ------------------------------------------------------------------ RabbitMQ

# Environment for every RabbitMQ tool (server and rabbitmqctl): a private node
# with its own cookie, epmd port, ports and files (STACK.md recipe).
rmq_env() {
  export HOME=$RMQ_DIR/home PATH=$RMQ_BIN:$PATH \
    RABBITMQ_NODENAME=mercato@localhost RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT=$AMQP_PORT RABBITMQ_DIST_PORT=$AMQP_DIST_PORT \
    RABBITMQ_CTL_DIST_PORT_MIN=$AMQP_CTL_PORT_MIN RABBITMQ_CTL_DIST_PORT_MAX=$AMQP_CTL_PORT_MAX \
    ERL_EPMD_PORT=$AMQP_EPMD_PORT ERL_EPMD_ADDRESS=127.0.0.1 \
    RABBITMQ_MNESIA_BASE=$RMQ_DIR/mnesia RABBITMQ_LOG_BASE=$LOG_DIR/rabbitmq \
    RABBITMQ_PID_FILE=$RMQ_PID RABBITMQ_CONFIG_FILE=$RMQ_DIR/rabbitmq.conf \
    RABBITMQ_CONF_ENV_FILE=$RMQ_DIR/env.conf \
    RABBITMQ_ENABLED_PLUGINS_FILE=$RMQ_DIR/enabled_plugins \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

rmq_pid() { live_pid "$RMQ_PID" beam; }

rmq_start() {
  if rmq_pid >/dev/null && port_open "$AMQP_PORT"; then ALREADY[rmq]=1; return 0; fi
  if rmq_pid >/dev/null; then return 0; fi
  if live_pid "$RMQ_WRAPPER_PID" rabbitmq-server >/dev/null; then return 0; fi # still booting
  require_free_port rabbitmq "$AMQP_PORT"
  require_free_port "rabbitmq (distribution)" "$AMQP_DIST_PORT"
  mkdir -p "$RMQ_DIR/home" "$RMQ_DIR/mnesia" "$LOG_DIR/rabbitmq"
  : >"$RMQ_DIR/env.conf" # ignore /etc/rabbitmq/rabbitmq-env.conf
  # The cookie must exist before the server and rabbitmqctl race to create it.
  if [ ! -s "$RMQ_DIR/home/.erlang.cookie" ]; then
    (umask 077; head -c 32 /dev/urandom | sha256sum | cut -c1-20 | tr 'a-f0-9' 'A-J' >"$RMQ_DIR/home/.erlang.cookie")
    chmod 400 "$RMQ_DIR/home/.erlang.cookie"
  fi
  {
    printf 'listeners.tcp.default = 127.0.0.1:%s\n' "$AMQP_PORT"
    printf 'loopback_users = none\n'
    if [ "$RABBITMQ_MANAGEMENT" = 1 ]; then
      printf 'management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = %s\n' "$AMQP_MGMT_PORT"
    fi
  } >"$RMQ_DIR/rabbitmq.conf"
  if [ "$RABBITMQ_MANAGEMENT" = 1 ]; then
    echo '[rabbitmq_management].' >"$RMQ_DIR/enabled_plugins"
  else
    echo '[].' >"$RMQ_DIR/enabled_plugins"
  fi
  rm -f "$RMQ_PID"
  : >"$LOG_DIR/rabbitmq.log"
  : >"$RMQ_NODE_LOG" # rmq_ready looks for this start's "startup complete"
  local pid
  pid=$(
    rmq_env
    cd "$RMQ_DIR" # erl_crash.dump lands here
    spawn "$LOG_DIR/rabbitmq.log" "$RMQ_BIN/rabbitmq-server"
  )
  printf '%s\n' "$pid" >"$RMQ_WRAPPER_PID"
}

RMQ_NODE_LOG=$LOG_DIR/rabbitmq/mercato@localhost.log

# Ready = the broker logged "Server startup complete" (after its listeners
# started) and the AMQP port accepts connections. Polling the log and the port
# is ~2 s faster than `rabbitmqctl wait` + `await_startup` (each boots an Erlang VM).
rmq_ready() {
  grep -q 'Server startup complete' "$RMQ_NODE_LOG" 2>/dev/null && port_open "$AMQP_PORT"
}

rmq_wait() {
  if [ -n "${ALREADY[rmq]:-}" ]; then return 0; fi
  local logfile=$LOG_DIR/rabbitmq.log deadline=$((SECONDS + 90)) why="" wrapper=""
  read -r wrapper <"$RMQ_WRAPPER_PID" 2>/dev/null || true
  while ! rmq_ready; do
    # (by pid only: just after the fork the wrapper's command line is still ours)
    if { [ -z "$wrapper" ] || pid_gone "$wrapper"; } && ! rmq_pid >/dev/null; then
      why="rabbitmq exited during start-up"
    elif grep -q 'Server startup complete' "$RMQ_NODE_LOG" 2>/dev/null && ! port_open "$AMQP_PORT"; then
      # (the listener opens before that line is logged, so this is no race)
      why="rabbitmq is running but 127.0.0.1:$AMQP_PORT is closed (started with other ports? run: $0 down)"
    elif [ "$SECONDS" -gt "$deadline" ]; then
      why="rabbitmq did not start in 90 s"
    fi
    if [ -n "$why" ]; then
      tail -n 20 "$RMQ_NODE_LOG" >>"$logfile" 2>/dev/null || true
      fail "$why (node mercato@localhost, AMQP 127.0.0.1:$AMQP_PORT)" "$logfile"
    fi
    sleep 0.1
  done
}

rmq_stop() {
  local pid wrapper
  if pid=$(rmq_pid); then stop_pid rabbitmq "$pid" 30; fi
  if wrapper=$(live_pid "$RMQ_WRAPPER_PID" rabbitmq-server); then stop_pid rabbitmq-server "$wrapper" 10; fi
  rm -f "$RMQ_PID" "$RMQ_WRAPPER_PID"
  # The node started a private epmd on $AMQP_EPMD_PORT: stop it (only that one).
  if port_open "$AMQP_EPMD_PORT"; then
    ERL_EPMD_PORT=$AMQP_EPMD_PORT epmd -kill >/dev/null 2>&1 || true
  fi
}

# ---------------------------------------------------------- Node.js helpers

node_tools_check() {
  if [ ! -d "$REPO/node_modules/maildev" ] || [ ! -d "$REPO/node_modules/@20minutes/s3rver" ]; then
    die "npm tools are missing: run scripts/dev/install-deps.sh"
  fi
}

maildev_pid() { live_pid "$MAILDEV_PID" maildev; }

maildev_ready() {
  curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$SMTP_WEB_PORT/api/email" && port_open "$SMTP_PORT"
}

maildev_start() {
  if maildev_pid >/dev/null && port_open "$SMTP_WEB_PORT"; then ALREADY[maildev]=1; return 0; fi
  if maildev_pid >/dev/null; then return 0; fi # starting: *_wait polls
  require_free_port maildev "$SMTP_PORT"
  require_free_port "maildev (web)" "$SMTP_WEB_PORT"
  mkdir -p "$RUN_DIR/maildev"
  : >"$LOG_DIR/maildev.log"
  spawn "$LOG_DIR/maildev.log" node "$REPO/node_modules/maildev/dist/bin/maildev.js" \
    --ip 127.0.0.1 -s "$SMTP_PORT" --web-ip 127.0.0.1 -w "$SMTP_WEB_PORT" \
    --mail-directory "$RUN_DIR/maildev" >"$MAILDEV_PID"
}

maildev_wait() {
  if [ -n "${ALREADY[maildev]:-}" ]; then return 0; fi
  wait_for 30 maildev_ready || fail "maildev did not answer on http://127.0.0.1:$SMTP_WEB_PORT/api/email in 30 s" "$LOG_DIR/maildev.log"
}

maildev_stop() {
  local pid
  pid=$(maildev_pid) || return 0
  stop_pid maildev "$pid" 10
  rm -f "$MAILDEV_PID"
}

s3_pid() { live_pid "$S3_PID" s3rver.js; }

s3_ready() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$S3_PORT/$S3_BUCKET") || true
  [ -n "$code" ] && [ "$code" != 000 ] && s3_pid >/dev/null
}

s3_start() {
  if s3_pid >/dev/null && port_open "$S3_PORT"; then ALREADY[s3]=1; return 0; fi
  if s3_pid >/dev/null; then return 0; fi # starting: *_wait polls
  require_free_port s3rver "$S3_PORT"
  mkdir -p "$RUN_DIR/s3"
  rm -f "$S3_PID"
  : >"$LOG_DIR/s3rver.log"
  spawn "$LOG_DIR/s3rver.log" env S3_PORT="$S3_PORT" S3_BUCKET="$S3_BUCKET" S3_DIR="$RUN_DIR/s3" \
    S3_PID_FILE="$S3_PID" RUN_DIR="$RUN_DIR" node "$REPO/scripts/dev/s3rver.js" >"$RUN_DIR/s3rver.spawn.pid"
}

s3_wait() {
  if [ -n "${ALREADY[s3]:-}" ]; then return 0; fi
  wait_for 30 s3_ready || fail "s3rver did not answer on http://127.0.0.1:$S3_PORT in 30 s" "$LOG_DIR/s3rver.log"
  rm -f "$RUN_DIR/s3rver.spawn.pid"
}

s3_stop() {
  local pid
  if pid=$(s3_pid) || pid=$(live_pid "$RUN_DIR/s3rver.spawn.pid" s3rver.js); then
    stop_pid s3rver "$pid" 10
  fi
  rm -f "$S3_PID" "$RUN_DIR/s3rver.spawn.pid"
}

# ------------------------------------------------------------------ crashes

# SIGKILL pid $2 (server $1) and its direct children at once, as a crash would leave them, and
# wait until all are gone (PostgreSQL refuses to start while an old backend holds its memory).
kill_tree() {
  local name=$1 pid=$2 kids p
  kids=$(ps -o pid= --ppid "$pid" 2>/dev/null | tr -d ' ' | tr '\n' ' ') || true
  # shellcheck disable=SC2086 # one word per child pid
  kill -KILL "$pid" $kids 2>/dev/null || true
  for p in $pid $kids; do wait_for 10 pid_gone "$p" || log "$name: pid $p survived SIGKILL"; done
}

pg_kill() {
  local pid
  if pid=$(pg_pid); then kill_tree postgres "$pid"; fi
  # Its lock files name a dead pid that a busy machine may already have given to another
  # process: PostgreSQL would then refuse to start ("lock file already exists").
  rm -f "$PG_DATA/postmaster.pid" "$PG_SOCK/.s.PGSQL.$PG_PORT" "$PG_SOCK/.s.PGSQL.$PG_PORT.lock"
}

redis_kill() {
  local pid
  pid=$(redis_pid) || return 0
  kill_tree redis "$pid"
  rm -f "$REDIS_PID"
}

rmq_kill() {
  local pid wrapper
  if pid=$(rmq_pid); then kill_tree rabbitmq "$pid"; fi
  if wrapper=$(live_pid "$RMQ_WRAPPER_PID" rabbitmq-server); then kill_tree rabbitmq-server "$wrapper"; fi
  rm -f "$RMQ_PID" "$RMQ_WRAPPER_PID"
}

maildev_kill() {
  local pid
  pid=$(maildev_pid) || return 0
  kill_tree maildev "$pid"
  rm -f "$MAILDEV_PID"
}

# ------------------------------------------------------------------ commands

# cmd_one stop|start|restart|kill postgres|redis|rabbitmq|maildev
cmd_one() {
  local action=$1 name=${2:-} fn
  case "$name" in
    postgres) fn=pg ;;
    redis) fn=redis ;;
    rabbitmq) fn=rmq ;;
    maildev) fn=maildev ;;
    *) die "$action: expecting postgres, redis, rabbitmq or maildev, got '$name'" ;;
  esac
  mkdir -p "$RUN_DIR" "$LOG_DIR"
  if [ "$action" = kill ]; then "${fn}_kill"; log "$name killed (SIGKILL)"
  elif [ "$action" != start ]; then "${fn}_stop"; log "$name stopped"; fi
  if [ "$action" != stop ]; then
    "${fn}_start"
    "${fn}_wait"
    log "$name started"
  fi
}

cmd_up() {
  local t0=$SECONDS
  mkdir -p "$RUN_DIR" "$LOG_DIR"
  node_tools_check
  # Refuse before starting anything if a port we need is held by someone else.
  pg_pid >/dev/null || require_free_port postgres "$PG_PORT"
  redis_pid >/dev/null || require_free_port redis "$REDIS_PORT"
  if ! rmq_pid >/dev/null && ! live_pid "$RMQ_WRAPPER_PID" rabbitmq-server >/dev/null; then
    require_free_port rabbitmq "$AMQP_PORT"
    require_free_port "rabbitmq (distribution)" "$AMQP_DIST_PORT"
  fi
  if ! maildev_pid >/dev/null; then
    require_free_port maildev "$SMTP_PORT"
    require_free_port "maildev (web)" "$SMTP_WEB_PORT"
  fi
  s3_pid >/dev/null || require_free_port s3rver "$S3_PORT"
  # Slowest first; every *_start returns at once, the *_wait calls then poll.
  rmq_start
  redis_start
  maildev_start
  s3_start
  pg_start
  pg_wait
  redis_wait
  maildev_wait
  s3_wait
  rmq_wait
  log "up in $((SECONDS - t0)) s: postgres :$PG_PORT, redis :$REDIS_PORT, rabbitmq :$AMQP_PORT, smtp :$SMTP_PORT (web :$SMTP_WEB_PORT), s3 :$S3_PORT"
}

cmd_down() {
  # Independent: stop all at once (RabbitMQ and maildev take 1-2 s each).
  local pids=() p
  rmq_stop & pids+=($!)
  pg_stop & pids+=($!)
  redis_stop & pids+=($!)
  maildev_stop & pids+=($!)
  s3_stop & pids+=($!)
  for p in "${pids[@]}"; do wait "$p" || true; done
  log "down"
}

cmd_status() {
  local rc=0 pid
  status_line() {
    local name=$1 port=$2 pidfn=$3
    if pid=$($pidfn) && port_open "$port"; then
      printf '%-9s running  pid %-7s 127.0.0.1:%s\n' "$name" "$pid" "$port"
    elif pid=$($pidfn); then
      printf '%-9s starting pid %-7s 127.0.0.1:%s (port not open yet)\n' "$name" "$pid" "$port"
      rc=3
    else
      printf '%-9s stopped\n' "$name"
      rc=3
    fi
  }
  status_line postgres "$PG_PORT" pg_pid
  status_line redis "$REDIS_PORT" redis_pid
  status_line rabbitmq "$AMQP_PORT" rmq_pid
  status_line maildev "$SMTP_PORT" maildev_pid
  status_line s3rver "$S3_PORT" s3_pid
  return "$rc"
}

cmd_env() {
  local db
  for db in "${DATABASES[@]}"; do
    printf 'DATABASE_URL_%s=postgresql://postgres@127.0.0.1:%s/%s\n' \
      "$(printf '%s' "${db#mercato_}" | tr '[:lower:]' '[:upper:]')" "$PG_PORT" "$db"
  done
  cat <<EOF
REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0
AMQP_URL=amqp://guest:guest@127.0.0.1:$AMQP_PORT/
SMTP_URL=smtp://127.0.0.1:$SMTP_PORT
SMTP_API_URL=http://127.0.0.1:$SMTP_WEB_PORT/api/email
S3_ENDPOINT=http://127.0.0.1:$S3_PORT
S3_BUCKET=$S3_BUCKET
S3_REGION=us-east-1
S3_ACCESS_KEY=S3RVER
S3_SECRET_KEY=S3RVER
EOF
}

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
  exit "${1:-2}"
}

# up, down and reset-db run one at a time per $RUN_DIR (flock in command mode
# holds the lock itself, so the daemons started here do not inherit it).
case "${1:-}" in
  up | down | reset-db | stop | start | restart | kill)
    if [ -z "${MERCATO_STACK_LOCKED:-}" ] && command -v flock >/dev/null 2>&1; then
      mkdir -p "$RUN_DIR"
      MERCATO_STACK_LOCKED=1 exec flock -o "$RUN_DIR/.stack.lock" bash "$0" "$@"
    fi
    ;;
esac

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  reset-db) pg_reset_dbs ;;
  stop | start | restart | kill) cmd_one "$1" "${2:-}" ;;
  rabbitmqctl)
    shift
    rmq_env
    exec rabbitmqctl "$@"
    ;;
  -h | --help | help) usage 0 ;;
  *) usage ;;
esac
