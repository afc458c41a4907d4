# shellcheck shell=bash disable=SC2004,SC2034 # sourced by bench/run.sh, whose arrays are associative
# bench/services.sh — the service scenarios of `make bench` (issues 4 and 5), sourced by
# bench/run.sh and run after its JSON and I/O scenarios: mercato's user and product services, and
# beside them (GET /users/me, GET /products/{id} cached and uncached) the Node peers of
# BENCH_SERVERS — Fastify ×1, Fastify ×2, Express — serving the same documents from the same
# databases (bench/node/services.js: pg, ioredis, jose), each measured right after mercato.
#
# Issue 4, the user service (scripts/services/user):
#   login        POST /auth/login of one registered user at c=$BENCH_SVC_LOGIN_CONNECTIONS
#                (one argon2id verification each; RATE_LIMIT_AUTH=$BENCH_SVC_RATE_LIMIT_AUTH, so
#                the per-IP limiter never refuses)
#   users-me     GET /users/me with a Bearer token at c=$BENCH_SVC_CONNECTIONS (RS256 verified in
#                C on the route, then one indexed PostgreSQL read)
#   jwt.verify   a `mercato lua` micro-benchmark (bench/svc/micro.lua): one thread, jwt.verify in
#                a loop for $BENCH_SVC_MICRO s → verifications/s per core; argon2id alike
# Issue 5, the product service (scripts/services/product, demo catalogue of seed.lua):
#   product-get  GET /products/{id}, Redis read cache on (default PRODUCT_CACHE_TTL) and off
#                (PRODUCT_CACHE_TTL=0, a second instance on the same database)
#   search       GET /products?q=wireles+hedphones (typos) and ?q=headphones&limit=20
#   reserve      POST /internal/reservations (scope inventory) on $BENCH_SVC_HOT hot products of
#                $BENCH_SVC_HOT_STOCK units, 1–3 items of 1–3 units each, fresh ids
#                (bench/svc/wrk/reserve.lua), then a psql check that stock + reserved still
#                equals the initial stock of every hot product
#
# Its own throw-away databases (${BENCH_SVC_DB}_user, ${BENCH_SVC_DB}_product), created here and
# dropped at the end, a Redis database of its own on the stack's Redis (BENCH_SVC_REDIS_DB), an
# RSA key pair made for the run (the user service signs with it; the product service verifies
# with its public half, JWT_PUBLIC_KEY_FILE; bench/svc/tokens.lua mints the seller and inventory
# tokens with jwt.sign). No AMQP_URL: the outbox rows stay in the bench databases, no event
# reaches the shared RabbitMQ. The Node peers take the ports after the product services'
# (BENCH_PORT_SVC + 3, 4, 5) and read the same databases, the same Redis database (their cache
# keys bench:node:product:v2:<id>) and the same public key.

BENCH_SVC=${BENCH_SVC:-1}
BENCH_SVC_ROUNDS=${BENCH_SVC_ROUNDS:-1}
BENCH_SVC_DURATION=${BENCH_SVC_DURATION:-5s}
BENCH_SVC_WARMUP=${BENCH_SVC_WARMUP:-1s}
BENCH_SVC_WORKERS=${BENCH_SVC_WORKERS:-2}
BENCH_SVC_CONNECTIONS=${BENCH_SVC_CONNECTIONS:-64}
BENCH_SVC_LOGIN_CONNECTIONS=${BENCH_SVC_LOGIN_CONNECTIONS:-8}
BENCH_SVC_MICRO=${BENCH_SVC_MICRO:-3}
BENCH_SVC_DB=${BENCH_SVC_DB:-${BENCH_DB}_svc}
BENCH_SVC_REDIS_DB=${BENCH_SVC_REDIS_DB:-13}
BENCH_SVC_RATE_LIMIT_AUTH=${BENCH_SVC_RATE_LIMIT_AUTH:-1000000/min}
BENCH_SVC_HOT=${BENCH_SVC_HOT:-5}
BENCH_SVC_HOT_STOCK=${BENCH_SVC_HOT_STOCK:-1000000}
BENCH_SVC_KEEP_DB=${BENCH_SVC_KEEP_DB:-0}
BENCH_PORT_SVC=${BENCH_PORT_SVC:-28200}

SVC_DIR="" SVC_PG="" SVC_REDIS="" SVC_DBS=()
SVC_EMAIL="bench-user@example.com" SVC_PASSWORD="bench password 123"
SVC_ACCESS="" SVC_SELLER_TOKEN="" SVC_INVENTORY_TOKEN="" SVC_PRODUCT_ID="" SVC_HOT=""
SVC_RES_2XX=0        # reservations acknowledged (2xx) to wrk and curl, warm-up included
SVC_RES_ERRS=0       # reservation requests that failed or timed out in wrk
SVC_JWT_MICRO=""     # "ops wall cpu ops/wall ops/cpu" of micro.lua jwt
SVC_ARGON2_MICRO=""
SVC_ROWS4=() SVC_ROWS5=() SVC_CHECK=()
SVC_PEERS=()         # the Node peers started for the service scenarios (svc-fastify-x1 ...)
declare -A SVC_NOTE=()

# svc_psql DB SQL...: psql on the stack's PostgreSQL, unaligned, tuples only.
svc_psql() {
  local db=$1
  shift
  psql "${SVC_PG%/*}/$db" -qAtX -v ON_ERROR_STOP=1 "$@"
}

# svc_cleanup: drop the bench databases (after the services are stopped; on_exit calls it too).
svc_cleanup() {
  local db
  ((${#SVC_DBS[@]} > 0)) || return 0
  if [[ $BENCH_SVC_KEEP_DB == 1 ]]; then log "keeping databases ${SVC_DBS[*]} (BENCH_SVC_KEEP_DB=1)"; SVC_DBS=(); return 0; fi
  for db in "${SVC_DBS[@]}"; do
    svc_psql postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || warn "could not drop database $db"
  done
  SVC_DBS=()
}

# svc_stop NAME...: stop services started here, by PID.
svc_stop() {
  local name pid i
  for name in "$@"; do
    pid=${SERVER_PID[$name]:-}
    [[ -n $pid ]] || continue
    if alive "$pid"; then kill -TERM "$pid" 2>/dev/null || true; fi
    for ((i = 0; i < 100; i++)); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then warn "$name (pid $pid) ignored SIGTERM, sending SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
    wait "$pid" 2>/dev/null || true
    unset "SERVER_PID[$name]"
  done
}

# svc_start NAME LABEL PORT SERVICE KEY=value...: one mercato on scripts/ with the bench's Redis
# database; variables a caller's shell may carry (AMQP_URL, JWKS_URL, ...) are removed first.
svc_start() {
  local name=$1 label=$2 port=$3 service=$4
  shift 4
  port_free "$port" || die "port $port for $label is in use (set BENCH_PORT_SVC)"
  mkdir -p "$BENCH_DIR/$name"
  env -u AMQP_URL -u JWKS_URL -u JWT_PUBLIC_KEY_FILE -u JWT_PUBLIC_KEYS_DIR -u JWT_PRIVATE_KEY_FILE \
    -u ELASTICSEARCH_URL -u PRODUCT_CACHE_TTL -u RATE_LIMIT_AUTH -u ADMIN_EMAIL -u ADMIN_PASSWORD \
    -u SERVICE_CLIENT_ID -u SERVICE_CLIENT_SECRET -u ARGON2_THREADS -u ARGON2_QUEUE -u ARGON2_WAIT_MS \
    SERVICE="$service" SCRIPTS_DIR="$ROOT/scripts" PORT="$port" LISTEN_ADDR=127.0.0.1 \
    WORKERS="$BENCH_SVC_WORKERS" LOG_LEVEL=info HOT_RELOAD=0 REDIS_URL="$SVC_REDIS" "$@" \
    "$MERCATO" >"$BENCH_DIR/$name/access.log" 2>"$BENCH_DIR/$name.out" &
  SERVER_PID[$name]=$!
  SERVER_LABEL[$name]=$label
  SERVER_URL[$name]="http://127.0.0.1:$port"
}

# svc_ready NAME: until GET /ready answers 200 (20 s), failing early if the process died.
svc_ready() {
  local name=$1 pid=${SERVER_PID[$1]} i code=""
  for ((i = 0; i < 200; i++)); do
    alive "$pid" || die "${SERVER_LABEL[$name]} exited during start-up: $(tail -5 "$BENCH_DIR/$name.out" 2>/dev/null)"
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "${SERVER_URL[$name]}/ready" || true)
    [[ $code == 200 ]] && return 0
    sleep 0.1
  done
  die "${SERVER_LABEL[$name]} not ready within 20 s (last: $code); see $BENCH_DIR/$name.out"
}

# svc_curl OUT METHOD URL [TOKEN] [BODY]: the response body into OUT, prints the status.
svc_curl() {
  local out=$1 method=$2 url=$3 token=${4:-} body=${5:-} args=(-s -o "$1" -w '%{http_code}' --max-time 10 -X "$2")
  [[ -n $token ]] && args+=(-H "Authorization: Bearer $token")
  [[ -n $body ]] && args+=(-H 'Content-Type: application/json' --data-binary "$body")
  curl "${args[@]}" "$url" || echo 000
}

# svc_expect NAME WANT METHOD PATH [TOKEN] [BODY]: one request that must answer WANT; prints the body.
svc_expect() {
  local name=$1 want=$2 method=$3 path=$4 f code
  f=$(mktemp)
  code=$(svc_curl "$f" "$method" "${SERVER_URL[$name]}$path" "${5:-}" "${6:-}")
  [[ $code == "$want" ]] || die "${SERVER_LABEL[$name]}: $method $path answered $code, want $want: $(head -c 300 "$f")"
  cat "$f"
  rm -f "$f"
}

svc_setup() {
  local envf pg redis db out i id
  SVC_DIR=$BENCH_DIR/svc
  rm -rf "$SVC_DIR"
  mkdir -p "$SVC_DIR"
  log "service scenarios: private stack, databases ${BENCH_SVC_DB}_user/_product, Redis db $BENCH_SVC_REDIS_DB"
  scripts/dev/stack.sh up >>"$BENCH_DIR/stack.log" 2>&1 || die "stack.sh up failed: $(tail -5 "$BENCH_DIR/stack.log")"
  envf=$(scripts/dev/stack.sh env)
  pg=$(sed -n 's/^DATABASE_URL_USER=//p' <<<"$envf")
  redis=$(sed -n 's/^REDIS_URL=//p' <<<"$envf")
  [[ -n $pg && -n $redis ]] || die "stack.sh env gave no DATABASE_URL_USER/REDIS_URL"
  [[ $BENCH_SVC_DB =~ ^[a-z_][a-z0-9_]*$ ]] || die "BENCH_SVC_DB must be a plain lower-case name"
  [[ $BENCH_SVC_REDIS_DB =~ ^[0-9]+$ ]] || die "BENCH_SVC_REDIS_DB must be a number"
  SVC_PG=$pg
  SVC_REDIS="${redis%/*}/$BENCH_SVC_REDIS_DB"
  [[ $redis == redis://*/* ]] || SVC_REDIS="$redis/$BENCH_SVC_REDIS_DB"
  for db in "${BENCH_SVC_DB}_user" "${BENCH_SVC_DB}_product"; do
    SVC_DBS+=("$db")
    svc_psql postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" >/dev/null 2>&1 ||
      die "cannot create database $db"
  done

  # An RSA key pair for this run: the user service signs, the product service verifies.
  (umask 077 && openssl genrsa -out "$SVC_DIR/jwt.pem" 2048 2>/dev/null &&
    openssl rsa -in "$SVC_DIR/jwt.pem" -pubout -out "$SVC_DIR/jwt.pub" 2>/dev/null) || die "openssl genrsa failed"

  # Migrations first (two product instances share a database: neither should race the other).
  SERVICE=user DATABASE_URL="${pg%/*}/${BENCH_SVC_DB}_user" JWT_PRIVATE_KEY_FILE="$SVC_DIR/jwt.pem" \
    "$MERCATO" migrate >"$SVC_DIR/migrate-user.log" 2>&1 || die "user migrations failed: $(tail -5 "$SVC_DIR/migrate-user.log")"
  SERVICE=product DATABASE_URL="${pg%/*}/${BENCH_SVC_DB}_product" JWT_PUBLIC_KEY_FILE="$SVC_DIR/jwt.pub" \
    "$MERCATO" migrate >"$SVC_DIR/migrate-product.log" 2>&1 || die "product migrations failed: $(tail -5 "$SVC_DIR/migrate-product.log")"
  # The demo catalogue (228 products), as `make run` seeds it.
  env -u AMQP_URL SERVICE=product DATABASE_URL="${pg%/*}/${BENCH_SVC_DB}_product" "$MERCATO" lua scripts/services/product/seed.lua \
    >"$SVC_DIR/seed.log" 2>&1 || die "seed failed: $(tail -5 "$SVC_DIR/seed.log")"

  local p=$BENCH_PORT_SVC
  svc_start svc-user "user service" "$p" user DATABASE_URL="${pg%/*}/${BENCH_SVC_DB}_user" \
    JWT_PRIVATE_KEY_FILE="$SVC_DIR/jwt.pem" RATE_LIMIT_AUTH="$BENCH_SVC_RATE_LIMIT_AUTH"
  svc_start svc-product "product service" $((p + 1)) product DATABASE_URL="${pg%/*}/${BENCH_SVC_DB}_product" \
    JWT_PUBLIC_KEY_FILE="$SVC_DIR/jwt.pub"
  svc_start svc-product-nocache "product service, PRODUCT_CACHE_TTL=0" $((p + 2)) product \
    DATABASE_URL="${pg%/*}/${BENCH_SVC_DB}_product" JWT_PUBLIC_KEY_FILE="$SVC_DIR/jwt.pub" PRODUCT_CACHE_TTL=0
  svc_ready svc-user
  svc_ready svc-product
  svc_ready svc-product-nocache

  # One registered user; its access token for GET /users/me (15 min: plenty for the run).
  svc_expect svc-user 201 POST /auth/register "" \
    "{\"email\":\"$SVC_EMAIL\",\"password\":\"$SVC_PASSWORD\",\"name\":\"Bench User\"}" >/dev/null
  SVC_ACCESS=$(svc_expect svc-user 200 POST /auth/login "" "$(svc_login_body)" | jq -r .access_token)
  [[ -n $SVC_ACCESS && $SVC_ACCESS != null ]] || die "login gave no access_token"

  out=$("$MERCATO" lua bench/svc/tokens.lua "$SVC_DIR/jwt.pem") || die "bench/svc/tokens.lua failed: $out"
  SVC_SELLER_TOKEN=$(sed -n 's/^SELLER_TOKEN=//p' <<<"$out")
  SVC_INVENTORY_TOKEN=$(sed -n 's/^INVENTORY_TOKEN=//p' <<<"$out")

  # The hot products: created through the API (so the ledger has their 'initial' row).
  SVC_HOT=""
  for ((i = 1; i <= BENCH_SVC_HOT; i++)); do
    id=$(svc_expect svc-product 201 POST /products "$SVC_SELLER_TOKEN" \
      "{\"name\":\"Bench Hot Item $i\",\"description\":\"A product every checkout wants.\",\"price_cents\":999,\"currency\":\"eur\",\"tags\":[\"bench\"],\"stock\":$BENCH_SVC_HOT_STOCK}" |
      jq -r .id)
    [[ $id =~ ^[0-9a-f-]{36}$ ]] || die "POST /products gave no id"
    SVC_HOT+="${SVC_HOT:+,}$id"
  done
  # The product GET /products/{id} reads: a seeded one (headphones).
  SVC_PRODUCT_ID=$(svc_psql "${BENCH_SVC_DB}_product" -c \
    "SELECT id FROM products WHERE name ILIKE '%headphones%' AND status = 'active' ORDER BY name LIMIT 1")
  [[ $SVC_PRODUCT_ID =~ ^[0-9a-f-]{36}$ ]] || die "no seeded headphones product in ${BENCH_SVC_DB}_product"
  svc_start_peers $((p + 3))
}

# svc_start_peers PORT: the Node peers selected in BENCH_SERVERS, on PORT and the next ports,
# with the service routes on the bench databases (their I/O routes off).
svc_start_peers() {
  local port=$1 name dir workers label
  SVC_PEERS=()
  for name in svc-fastify-x1 svc-fastify-x2 svc-express; do
    case $name in
      svc-fastify-x1) dir=fastify workers=1 label="Fastify ×1" ;;
      svc-fastify-x2) dir=fastify workers=2 label="Fastify ×2" ;;
      svc-express) dir=express workers=$BENCH_EXPRESS_WORKERS label="Express" ;;
    esac
    [[ " $BENCH_SERVERS " == *" $dir "* ]] || continue
    port_free "$port" || die "port $port for $label is in use (set BENCH_PORT_SVC)"
    node_deps "bench/$dir" pg ioredis jose
    mkdir -p "$BENCH_DIR/$name"
    env -u DATABASE_URL -u REDIS_URL -u JWT_ISSUER -u JWT_AUDIENCE -u PRODUCT_CACHE_TTL \
      PORT="$port" FASTIFY_WORKERS="$workers" EXPRESS_WORKERS="$workers" NODE_ENV=production \
      ACCESS_LOG="$BENCH_DIR/$name/access.log" PG_POOL="$BENCH_NODE_PG_POOL" \
      PRODUCT_DATABASE_URL="${SVC_PG%/*}/${BENCH_SVC_DB}_product" USER_DATABASE_URL="${SVC_PG%/*}/${BENCH_SVC_DB}_user" \
      SVC_REDIS_URL="$SVC_REDIS" JWT_PUBLIC_KEY_FILE="$SVC_DIR/jwt.pub" \
      node "bench/$dir/server.js" >"$BENCH_DIR/$name.out" 2>&1 &
    SERVER_PID[$name]=$!
    SERVER_LABEL[$name]=$label
    SERVER_URL[$name]="http://127.0.0.1:$port"
    SVC_PEERS+=("$name")
    port=$((port + 1))
  done
  for name in "${SVC_PEERS[@]}"; do wait_ready "$name" /bench/json; done
}

# svc_same_doc NAME PATH WANT [TOKEN]: NAME answers PATH 200 with the document WANT (as JSON, key
# order ignored), or the run stops.
svc_same_doc() {
  local got
  got=$(svc_expect "$1" 200 GET "$2" "${4:-}")
  [[ $(jq -cS . <<<"$got") == "$(jq -cS . <<<"$3")" ]] ||
    die "${SERVER_LABEL[$1]}: GET $2 differs from mercato's document: got $(jq -cS . <<<"$got"), want $(jq -cS . <<<"$3")"
}

# svc_bench_peers SCEN PATH WANT [TOKEN]: each Node peer checked (same document as mercato's) and
# measured as scenario SCEN-<peer>.
svc_bench_peers() {
  local scen=$1 path=$2 want=$3 token=${4:-} name BENCH_SVC_WARMUP=$BENCH_NODE_WARMUP # V8's JIT: see run.sh
  for name in "${SVC_PEERS[@]}"; do
    svc_same_doc "$name" "$path" "$want" "$token"
    svc_bench "$scen-$name" "$name" "$path" "$BENCH_SVC_CONNECTIONS" bench/svc/wrk/request.lua
  done
}

# svc_peer_rows ISSUE SCEN LABEL NOTES: the rows of the Node peers measured as SCEN-<peer>.
svc_peer_rows() {
  local name
  for name in "${SVC_PEERS[@]}"; do
    svc_row "$1" "$2-$name" "$name" "$3 — ${SERVER_LABEL[$name]}" "$4" "$2"
  done
}

svc_login_body() { printf '{"email":"%s","password":"%s"}' "$SVC_EMAIL" "$SVC_PASSWORD"; }

# svc_pg_pids DB: the PostgreSQL backends connected to DB (the bench services' own connections).
svc_pg_pids() {
  svc_psql postgres -c "SELECT pid FROM pg_stat_activity WHERE datname = '$1' AND pid <> pg_backend_pid()" 2>/dev/null || true
}

# svc_pg_ticks PID...: "pid:utime+stime" of each (clock ticks), for the ones still there.
svc_pg_ticks() {
  local p t
  for p in "$@"; do
    t=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{ print $12 + $13 }') || continue
    [[ -n $t ]] && printf '%s:%s ' "$p" "$t"
  done
  echo
}

# svc_pg_cpu BEFORE AFTER REQUESTS: µs of backend CPU per request, over the pids in both samples.
svc_pg_cpu() {
  awk -v a="$1" -v b="$2" -v n="$3" -v hz="$CLK_TCK" 'BEGIN {
    na = split(a, A, " "); for (i = 1; i <= na; i++) { split(A[i], x, ":"); t0[x[1]] = x[2] }
    nb = split(b, B, " "); d = 0
    for (i = 1; i <= nb; i++) { split(B[i], x, ":"); if (x[1] in t0) d += x[2] - t0[x[1]] }
    printf "%.1f\n", (n > 0 ? d * 1e6 / hz / n : 0) }'
}
declare -A SVC_PGCPU=() # SVC_PGCPU[scen/round] = PostgreSQL backend CPU µs per request

# svc_bench SCEN NAME PATH CONNECTIONS SCRIPT: warm-up, then BENCH_SVC_ROUNDS measured wrk runs
# of BENCH_SVC_DURATION (with the server's CPU time, and that of the PostgreSQL backends serving
# the bench database) into RES[SCEN/NAME/round] and SVC_PGCPU[SCEN/round].
svc_bench() {
  local scen=$1 name=$2 path=$3 r out db pids a b
  local BENCH_CONNECTIONS=$4 WRK_SCRIPT=$5 BENCH_DURATION=$BENCH_SVC_DURATION
  db=${BENCH_SVC_DB}_product
  [[ $name == svc-user || $scen == users-me* ]] && db=${BENCH_SVC_DB}_user
  mkdir -p "$BENCH_DIR/raw"
  if [[ $BENCH_SVC_WARMUP != 0 && $BENCH_SVC_WARMUP != 0s ]]; then
    log "[$scen] warm-up ${SERVER_LABEL[$name]} ($BENCH_SVC_WARMUP)"
    run_wrk "$BENCH_SVC_WARMUP" "${SERVER_URL[$name]}$path" "$BENCH_DIR/raw/$scen-warmup.txt"
    read -r SVC_WARM_REQS SVC_WARM_ERRS <<<"$(parse_wrk "$BENCH_DIR/raw/$scen-warmup.txt" | awk '{ print $5 - $4, $4 }')"
  fi
  for ((r = 1; r <= BENCH_SVC_ROUNDS; r++)); do
    out="$BENCH_DIR/raw/$scen-r$r.txt"
    log "[$scen] round $r/$BENCH_SVC_ROUNDS ${SERVER_LABEL[$name]} ($BENCH_DURATION, -t$BENCH_THREADS -c$BENCH_CONNECTIONS)"
    # shellcheck disable=SC2086 # a list of pids
    pids=$(svc_pg_pids "$db") a=$(svc_pg_ticks $pids)
    RES[$scen/$name/$r]=$(measure "$name" "${SERVER_URL[$name]}$path" "$out")
    # shellcheck disable=SC2086
    b=$(svc_pg_ticks $pids)
    SVC_PGCPU[$scen/$r]=$(svc_pg_cpu "$a" "$b" "$(cut -d' ' -f5 <<<"${RES[$scen/$name/$r]}")")
    alive "${SERVER_PID[$name]}" || die "${SERVER_LABEL[$name]} died during the run"
    sleep "$BENCH_PAUSE"
  done
}
SVC_WARM_REQS=0 SVC_WARM_ERRS=0 # 2xx responses and errors of the last warm-up

# svc_row ISSUE SCEN NAME LABEL NOTES [GROUP]: one table row (medians over the rounds) and its raw
# lines. GROUP: the scenario the Node peers ran as GROUP-<peer>, for the "vs Fastify ×2" and
# "vs Express" cells (req/s over that peer's); "–" without one.
svc_row() {
  local issue=$1 scen=$2 name=$3 label=$4 notes=$5 grp=${6:-} ROUNDS=$BENCH_SVC_ROUNDS rs ps p9 cs es line r pg
  local peer vs="" prps
  for peer in svc-fastify-x2 svc-express; do
    if [[ -n $grp && -n ${RES[$grp-$peer/$peer/1]:-} ]]; then
      prps=$(field_stats "$grp-$peer" "$peer" 1 | cut -d' ' -f1)
      vs+=$(awk -v a="$(field_stats "$scen" "$name" 1 | cut -d' ' -f1)" -v b="$prps" 'BEGIN { if (b > 0) printf "%.2fx | ", a / b; else printf "n/a | " }')
    else
      vs+="– | "
    fi
  done
  rs=$(field_stats "$scen" "$name" 1) ps=$(field_stats "$scen" "$name" 2) p9=$(field_stats "$scen" "$name" 3)
  cs=$(field_stats "$scen" "$name" 6)
  pg=$(for ((r = 1; r <= ROUNDS; r++)); do echo "${SVC_PGCPU[$scen/$r]:-0}"; done | median)
  es=$(for ((r = 1; r <= ROUNDS; r++)); do cut -d' ' -f4 <<<"${RES[$scen/$name/$r]}"; done | awk '{ s += $1 } END { print s + 0 }')
  ((es == 0)) || notes+="; **$es socket errors / non-2xx responses** (see raw)"
  MED[$scen/$name]="${rs%% *} ${ps%% *} ${p9%% *} ${cs%% *}"
  line=$(awk -v l="$label" -v rs="$rs" -v ps="$ps" -v p9="$p9" -v cs="$cs" -v pg="$pg" -v n="$notes" -v rounds="$ROUNDS" -v vs="$vs" 'BEGIN {
    split(rs, R, " "); split(ps, P, " "); split(p9, Q, " "); split(cs, C, " ")
    range = rounds > 1 ? sprintf(" (%.0f–%.0f)", R[2], R[3]) : ""
    printf "| %s | %.0f%s | %.2f | %.2f | %.0f | %.0f | %s%s |", l, R[1], range, P[1], Q[1], C[1], pg, vs, n }')
  if [[ $issue == 4 ]]; then SVC_ROWS4+=("$line"); else SVC_ROWS5+=("$line"); fi
  RAW+=("### $scen: per round" "" "| round | req/s | p50 ms | p99 ms | errors | requests | server CPU µs/req | PostgreSQL CPU µs/req |" "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
  for ((r = 1; r <= ROUNDS; r++)); do
    RAW+=("$(awk -v r="$r" -v x="${RES[$scen/$name/$r]}" -v pg="${SVC_PGCPU[$scen/$r]:-0}" 'BEGIN { split(x, a, " ")
      printf "| %d | %.0f | %.2f | %.2f | %d | %d | %.0f | %.0f |", r, a[1], a[2], a[3], a[4], a[5], a[6], pg }')")
  done
  RAW+=("")
}

# svc_reqs SCEN NAME [FIELD]: 2xx responses (or, with FIELD 4, errors) wrk saw over the measured rounds.
svc_reqs() {
  local r
  for ((r = 1; r <= BENCH_SVC_ROUNDS; r++)); do
    awk -v f="${3:-0}" '{ print f ? $f : $5 - $4 }' <<<"${RES[$1/$2/$r]}"
  done | awk '{ s += $1 } END { print s + 0 }'
}

# ---------------------------------------------------------------------------- issue 4: user

svc_issue4() {
  local m rps cpu vcpu body
  log "[jwt.verify] micro-benchmark, 1 thread, ${BENCH_SVC_MICRO} s"
  SVC_JWT_MICRO=$(JWT_PRIVATE_KEY_FILE="$SVC_DIR/jwt.pem" "$MERCATO" lua bench/svc/micro.lua jwt "$BENCH_SVC_MICRO" 2>"$SVC_DIR/micro.err") ||
    die "micro-benchmark failed: $(cat "$SVC_DIR/micro.err")"
  log "[argon2] micro-benchmark, 1 thread, 2 s"
  SVC_ARGON2_MICRO=$("$MERCATO" lua bench/svc/micro.lua argon2 2 2>>"$SVC_DIR/micro.err") ||
    die "micro-benchmark failed: $(cat "$SVC_DIR/micro.err")"

  # login: every request is the same document; each costs one argon2id verification.
  svc_expect svc-user 200 POST /auth/login "" "$(svc_login_body)" >/dev/null
  export BENCH_METHOD=POST BENCH_BODY BENCH_TOKEN=""
  BENCH_BODY=$(svc_login_body)
  svc_bench login svc-user /auth/login "$BENCH_SVC_LOGIN_CONNECTIONS" bench/svc/wrk/request.lua

  # GET /users/me: the RS256 token checked in C (auth = "required"), one indexed SELECT by id.
  body=$(svc_expect svc-user 200 GET /users/me "$SVC_ACCESS")
  [[ $(jq -r .email <<<"$body") == "$SVC_EMAIL" ]] || die "GET /users/me: not the bench user: $body"
  export BENCH_METHOD=GET BENCH_BODY="" BENCH_TOKEN=$SVC_ACCESS
  svc_bench users-me svc-user /users/me "$BENCH_SVC_CONNECTIONS" bench/svc/wrk/request.lua
  svc_bench_peers users-me /users/me "$body" "$SVC_ACCESS"
  unset BENCH_METHOD BENCH_BODY BENCH_TOKEN

  read -r _ _ _ _ m <<<"$SVC_ARGON2_MICRO"
  read -r rps _ _ cpu <<<"$(svc_med login)"
  svc_row 4 login svc-user "login: POST /auth/login, c=$BENCH_SVC_LOGIN_CONNECTIONS" \
    "$(awk -v rps="$rps" -v cpu="$cpu" -v m="$m" -v w="$BENCH_SVC_WORKERS" -v rl="$BENCH_SVC_RATE_LIMIT_AUTH" 'BEGIN {
      printf "logins/s = argon2id hashes/s (one argon2_verify per login, m=19 MiB t=2 p=1): %.0f hashes/s; one core alone does %.1f (micro-benchmark below), so %d workers bound it near %.0f/s; server CPU %.1f ms/login; each login also INSERTs a refresh token and makes Redis lock-out/limiter calls; RATE_LIMIT_AUTH=%s, so the limiter never refuses",
        rps, m, w, w * m, cpu / 1000, rl }')"
  read -r _ _ _ _ _ vcpu <<<"$SVC_JWT_MICRO"
  read -r rps _ _ cpu <<<"$(svc_med users-me)"
  svc_row 4 users-me svc-user "GET /users/me, c=$BENCH_SVC_CONNECTIONS" \
    "$(awk -v rps="$rps" -v cpu="$cpu" -v vc="$vcpu" 'BEGIN {
      printf "token verified in C (RS256) on every request, so %.0f verifications/s, + one indexed PostgreSQL read; %.0f requests (= verifications) per server CPU-second, i.e. per core, the verification being about %.0f %% of it (%.1f of %.0f µs)",
        rps, 1e6 / cpu, 100 * (1e6 / vc) / cpu, 1e6 / vc, cpu }')" users-me
  svc_peer_rows 4 users-me "GET /users/me, c=$BENCH_SVC_CONNECTIONS" \
    "jose jwtVerify (RS256, exp, iss, aud) + the same indexed PostgreSQL read with pg (bench/node/services.js); same document as mercato's"
  SVC_ROWS4+=("$(awk -v x="$SVC_JWT_MICRO" -v s="$BENCH_SVC_MICRO" 'BEGIN { split(x, a, " ")
    printf "| jwt.verify micro-benchmark (`mercato lua bench/svc/micro.lua jwt %s`, 1 thread) | %.0f verifications/s per core | – | – | %.1f | – | – | – | %d verifications in %.2f s wall, %.2f s CPU: %.0f per wall-second, %.0f per CPU-second (the per-core figure); RS256, 2048-bit key |",
      s, a[6], 1e6 / a[6], a[2], a[3], a[4], a[5], a[6] }')")
  SVC_ROWS4+=("$(awk -v x="$SVC_ARGON2_MICRO" 'BEGIN { split(x, a, " ")
    printf "| argon2id micro-benchmark (`mercato lua bench/svc/micro.lua argon2 2`, 1 thread) | %.1f hashes/s per core | – | – | %.0f | – | – | – | %d verifications in %.2f s wall, %.2f s CPU |",
      a[6], 1e6 / a[6], a[2], a[3], a[4] }')")
}

# svc_med SCEN: "rps p50 p99 cpu" (medians) of SCEN on whichever service ran it.
svc_med() {
  local scen=$1 name ROUNDS=$BENCH_SVC_ROUNDS
  for name in svc-user svc-product svc-product-nocache; do
    [[ -n ${RES[$scen/$name/1]:-} ]] || continue
    echo "$(field_stats "$scen" "$name" 1 | cut -d' ' -f1) $(field_stats "$scen" "$name" 2 | cut -d' ' -f1) $(field_stats "$scen" "$name" 3 | cut -d' ' -f1) $(field_stats "$scen" "$name" 6 | cut -d' ' -f1)"
    return 0
  done
}

# ---------------------------------------------------------------------------- issue 5: product

# svc_search_note NAME PATH: "N items: first, second, third" of a search page.
svc_search_note() {
  svc_expect "$1" 200 GET "$2" | jq -r '(.items | length) as $n | "\($n) item\(if $n == 1 then "" else "s" end) on the page: " + ([.items[:3][].name] | join(", ")) + (if $n > 3 then ", …" else "" end)'
}

svc_issue5() {
  local path body note_typo note_q hot_n sql check db_n ok_n
  path=/products/$SVC_PRODUCT_ID
  body=$(svc_expect svc-product 200 GET "$path")
  [[ $(jq -r .id <<<"$body") == "$SVC_PRODUCT_ID" ]] || die "GET $path: wrong document: $(head -c 200 <<<"$body")"
  svc_expect svc-product-nocache 200 GET "$path" >/dev/null
  unset BENCH_METHOD BENCH_BODY BENCH_TOKEN
  svc_bench product-get-cached svc-product "$path" "$BENCH_SVC_CONNECTIONS" bench/svc/wrk/request.lua
  svc_bench product-get-uncached svc-product-nocache "$path" "$BENCH_SVC_CONNECTIONS" bench/svc/wrk/request.lua
  svc_bench_peers product-get-cached "$path" "$body"
  svc_bench_peers product-get-uncached "/nocache$path" "$body"

  note_typo=$(svc_search_note svc-product "/products?q=wireles+hedphones")
  note_q=$(svc_search_note svc-product "/products?q=headphones&limit=20")
  svc_bench search-typo svc-product "/products?q=wireles+hedphones" "$BENCH_SVC_CONNECTIONS" bench/svc/wrk/request.lua
  svc_bench search svc-product "/products?q=headphones&limit=20" "$BENCH_SVC_CONNECTIONS" bench/svc/wrk/request.lua

  # Reservations: one by curl first (it must be 201), then wrk.
  export BENCH_TOKEN=$SVC_INVENTORY_TOKEN BENCH_HOT_PRODUCTS=$SVC_HOT
  svc_expect svc-product 201 POST /internal/reservations "$SVC_INVENTORY_TOKEN" \
    "{\"reservation_id\":\"$(cat /proc/sys/kernel/random/uuid)\",\"items\":[{\"product_id\":\"${SVC_HOT%%,*}\",\"quantity\":1}]}" >/dev/null
  SVC_RES_2XX=1
  svc_bench reserve svc-product /internal/reservations "$BENCH_SVC_CONNECTIONS" bench/svc/wrk/reserve.lua
  SVC_RES_2XX=$((SVC_RES_2XX + SVC_WARM_REQS + $(svc_reqs reserve svc-product)))
  SVC_RES_ERRS=$((SVC_WARM_ERRS + $(svc_reqs reserve svc-product 4)))
  unset BENCH_TOKEN BENCH_HOT_PRODUCTS

  # The check: nothing oversold or lost, per hot product.
  hot_n=$(tr ',' '\n' <<<"$SVC_HOT" | wc -l)
  sql="WITH hot(id) AS (SELECT unnest(string_to_array('$SVC_HOT', ','))::uuid),
    l AS (SELECT product_id,
      sum(quantity) FILTER (WHERE kind = 'initial') AS initial,
      sum(CASE WHEN kind IN ('initial','restock','release','expire','return') THEN quantity WHEN kind = 'reserve' THEN -quantity ELSE 0 END) AS l_stock,
      sum(CASE kind WHEN 'reserve' THEN quantity WHEN 'commit' THEN -quantity WHEN 'release' THEN -quantity WHEN 'expire' THEN -quantity ELSE 0 END) AS l_reserved
      FROM inventory_ledger WHERE product_id IN (SELECT id FROM hot) GROUP BY product_id),
    h AS (SELECT ri.product_id, sum(ri.quantity) AS held, count(*) AS n FROM reservation_items ri
      JOIN reservations r ON r.id = ri.reservation_id AND r.status = 'reserved'
      WHERE ri.product_id IN (SELECT id FROM hot) GROUP BY ri.product_id)
    SELECT p.name, $BENCH_SVC_HOT_STOCK, i.stock, i.reserved, i.stock + i.reserved, coalesce(h.held, 0), coalesce(h.n, 0),
      l.initial, l.l_stock, l.l_reserved,
      (i.stock + i.reserved = $BENCH_SVC_HOT_STOCK AND i.reserved = coalesce(h.held, 0)
        AND l.initial = $BENCH_SVC_HOT_STOCK AND l.l_stock = i.stock AND l.l_reserved = i.reserved)
    FROM hot JOIN products p ON p.id = hot.id JOIN inventory i ON i.product_id = hot.id
    LEFT JOIN h ON h.product_id = hot.id LEFT JOIN l ON l.product_id = hot.id ORDER BY p.name"
  check=$(svc_psql "${BENCH_SVC_DB}_product" -F'|' -c "$sql") || die "the stock check query failed"
  db_n=$(svc_psql "${BENCH_SVC_DB}_product" -c "SELECT count(*) FROM reservations WHERE status = 'reserved'")
  ok_n=$(grep -c '|t$' <<<"$check" || true)
  # acknowledged ≤ in the database ≤ acknowledged + what was in flight when wrk stopped (c per
  # run) + what wrk gave up on (timeouts, errors: they may have committed all the same)
  local runs=$BENCH_SVC_ROUNDS inflight retries
  [[ $BENCH_SVC_WARMUP == 0 || $BENCH_SVC_WARMUP == 0s ]] || runs=$((runs + 1))
  inflight=$((runs * BENCH_SVC_CONNECTIONS + SVC_RES_ERRS))
  ((db_n >= SVC_RES_2XX && db_n <= SVC_RES_2XX + inflight)) || ok_n=-1
  retries=$(grep -c '"msg":"inventory: .*retrying' "$BENCH_DIR/svc-product/access.log" "$BENCH_DIR/svc-product.out" 2>/dev/null |
    awk -F: '{ s += $NF } END { print s + 0 }' || true)
  SVC_CHECK=("### Issue 5: stock check after the reservations (psql on ${BENCH_SVC_DB}_product)" ""
    "| hot product | initial stock | stock | reserved | stock + reserved | held by open reservations (items) | ledger: initial / stock / reserved | ok |"
    "| --- | ---: | ---: | ---: | ---: | ---: | --- | :---: |")
  while IFS='|' read -r name init stock res sum held n li ls lr ok; do
    SVC_CHECK+=("| $name | $init | $stock | $res | $sum | $held ($n) | $li / $ls / $lr | $([[ $ok == t ]] && echo yes || echo '**NO**') |")
  done <<<"$check"
  SVC_CHECK+=("" "Every row must read: stock + reserved = $BENCH_SVC_HOT_STOCK (nothing oversold or lost), reserved = the units held by open reservations, and the ledger (inventory_ledger) replays to the same stock and reserved. $db_n reservations in the database, $SVC_RES_2XX acknowledged with 2xx to curl and wrk (warm-up included): the difference, $((db_n - SVC_RES_2XX)), must lie within 0..$inflight (requests in flight when wrk stopped, at most $BENCH_SVC_CONNECTIONS per run, plus $SVC_RES_ERRS errors/timeouts). Deadlock/serialization retries logged by the inventory binding: $retries." "")
  if ((ok_n == hot_n)); then
    SVC_NOTE[reserve]="stock check (psql, below): OK for $ok_n/$hot_n products; $db_n reservations stored, $retries deadlock retries"
  elif ((ok_n < 0)); then
    SVC_NOTE[reserve]="**stock check FAILED: $db_n reservations stored but $SVC_RES_2XX acknowledged**"
  else
    SVC_NOTE[reserve]="**stock check FAILED: only $ok_n/$hot_n products consistent**"
  fi

  svc_row 5 product-get-cached svc-product "GET /products/{id}, cached, c=$BENCH_SVC_CONNECTIONS" \
    "Redis read cache on (PRODUCT_CACHE_TTL default 60 s): one GET in Redis, the cached JSON sent as it is" product-get-cached
  svc_peer_rows 5 product-get-cached "GET /products/{id}, cached, c=$BENCH_SVC_CONNECTIONS" \
    "the same cache logic with ioredis (the version and the JSON text under a key of its own, EX 60; on a hit the text is sent as it is)"
  svc_row 5 product-get-uncached svc-product-nocache "GET /products/{id}, uncached, c=$BENCH_SVC_CONNECTIONS" \
    "PRODUCT_CACHE_TTL=0 (a second instance on the same database): PostgreSQL read + JSON encoding every time" product-get-uncached
  svc_peer_rows 5 product-get-uncached "GET /products/{id}, uncached, c=$BENCH_SVC_CONNECTIONS" \
    "GET /nocache/products/{id} on the same process: the same SELECT (products JOIN inventory by primary key) with pg + JSON.stringify every time"
  svc_row 5 search-typo svc-product "GET /products?q=wireles+hedphones, c=$BENCH_SVC_CONNECTIONS" \
    "PostgreSQL search (no ELASTICSEARCH_URL), two typos; $note_typo"
  svc_row 5 search svc-product "GET /products?q=headphones&limit=20, c=$BENCH_SVC_CONNECTIONS" "PostgreSQL search; $note_q"
  svc_row 5 reserve svc-product "POST /internal/reservations, c=$BENCH_SVC_CONNECTIONS" \
    "reservations/s; $BENCH_SVC_HOT hot products × $BENCH_SVC_HOT_STOCK units, 1–3 items × 1–3 units each, fresh ids; C inventory binding, one transaction each (rows locked in product order); ${SVC_NOTE[reserve]}"
  ((ok_n == hot_n)) || SVC_FAILED=1
}
SVC_FAILED=0

svc_tables() {
  local hdr="| scenario | req/s (median of $BENCH_SVC_ROUNDS) | p50 ms | p99 ms | server CPU µs/req | PostgreSQL CPU µs/req | vs Fastify ×2 | vs Express | notes |" sep="| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
  local cfg="wrk -t$BENCH_THREADS -d$BENCH_SVC_DURATION --latency after a $BENCH_SVC_WARMUP warm-up; mercato WORKERS=$BENCH_SVC_WORKERS per service"
  RESULTS+=("### Issue 4: user service ($cfg; own database ${BENCH_SVC_DB}_user, Redis db $BENCH_SVC_REDIS_DB; RATE_LIMIT_AUTH=$BENCH_SVC_RATE_LIMIT_AUTH)" "" "$hdr" "$sep" "${SVC_ROWS4[@]}" "")
  RESULTS+=("### Issue 5: product service ($cfg; own database ${BENCH_SVC_DB}_product with the demo catalogue, Redis db $BENCH_SVC_REDIS_DB, no Elasticsearch)" "" "$hdr" "$sep" "${SVC_ROWS5[@]}" "")
  RESULTS+=("Server CPU µs/req: utime+stime of the service process over the run / requests (as above). PostgreSQL CPU µs/req: the same for the PostgreSQL backends connected to the bench database (the service's own connections), sampled from /proc; Redis's CPU is not included (a shared server)." "")
  RESULTS+=("${SVC_CHECK[@]}")
  RESULTS+=("Load average at the start / end of the service scenarios: $SVC_LOAD0 / $(cut -d' ' -f1-3 /proc/loadavg) (the machine has $(nproc) CPUs)." "")
}
SVC_LOAD0=""

# svc_run: the whole section (main() calls it after the I/O scenarios).
svc_run() {
  local t0=$SECONDS
  SVC_LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
  svc_setup
  svc_issue4
  svc_issue5
  gw_run
  svc_stop svc-user svc-product svc-product-nocache "${SVC_PEERS[@]}"
  svc_cleanup
  svc_tables
  write_results >/dev/null
  log "service scenarios took $((SECONDS - t0)) s"
  ((SVC_FAILED == 0)) || die "the stock check after the reservations failed (see the results)"
}
