#!/usr/bin/env bash
# scripts/dev/run.sh: `make run` — the private stack, every service that exists plus the
# gateway, dev secrets generated on first run, .run/env written once the gateway is ready,
# and everything stopped on Ctrl-C. Any CONTRACT §2 variable set in the caller's environment
# (RATE_LIMIT_AUTH=100/min make run) is passed through to the services.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
RUN_DIR=${RUN_DIR:-$REPO/.run}
LOGS=$RUN_DIR/logs
SECRETS=$RUN_DIR/secrets
BIN=${MERCATO_BIN:-build/mercato}
mkdir -p "$LOGS" "$SECRETS"
chmod 700 "$SECRETS"

# CONTRACT §2 ports; RUN_PORT_BASE moves the six together (the gateway on the base, the services
# on base+1 … base+5), so a second platform (a spec of `make run`) can run beside a first.
B=${RUN_PORT_BASE:-8080}
declare -A PORTS=([gateway]=$B [user]=$((B + 1)) [product]=$((B + 2)) [order]=$((B + 3)) [payment]=$((B + 4)) [notification]=$((B + 5)))
SERVICES=(user product order payment notification)
declare -A PIDS=()

log() { printf 'run: %s\n' "$*" >&2; }

# stop_all [STATUS]: stop every process started here, then the stack (unless KEEP_STACK=1), and
# exit STATUS: 0 after Ctrl-C, non-zero when something failed (its name was logged before).
stop_all() {
    local rc=${1:-0}
    trap - INT TERM EXIT
    log "stopping services"
    for name in "${!PIDS[@]}"; do kill -TERM "${PIDS[$name]}" 2>/dev/null || true; done
    for name in "${!PIDS[@]}"; do wait "${PIDS[$name]}" 2>/dev/null || true; done
    rm -f "$RUN_DIR/env"
    if [ "${KEEP_STACK:-0}" != 1 ]; then scripts/dev/stack.sh down || true; fi
    if [ "$rc" != 0 ]; then log "make run failed (status $rc)"; fi
    exit "$rc"
}
trap 'stop_all $?' EXIT
trap 'stop_all 0' INT TERM

# kv NAME VALUE: one .run/env line, the value single-quoted for sh (a password with a space or a
# quote sources as itself and never runs as a command).
kv() { printf "%s='%s'\n" "$1" "${2//\'/\'\\\'\'}"; }

# A secret generated once and kept under .run/secrets.
secret() {
    local file=$SECRETS/$1
    [ -s "$file" ] || (umask 077 && openssl rand -hex "${2:-24}" >"$file")
    cat "$file"
}

scripts/dev/stack.sh up
CALLER_SMTP_URL=${SMTP_URL:-}   # a caller's SMTP server wins over the stack's maildev
set -a
# shellcheck disable=SC1090
. <(scripts/dev/stack.sh env)
set +a

[ -s "$SECRETS/jwt-dev.pem" ] || (umask 077 && openssl genrsa -out "$SECRETS/jwt-dev.pem" 2048 2>/dev/null)
export JWT_PRIVATE_KEY_FILE=${JWT_PRIVATE_KEY_FILE:-$SECRETS/jwt-dev.pem}
export SERVICE_CLIENT_ID=${SERVICE_CLIENT_ID:-mercato-internal}
SERVICE_CLIENT_SECRET=${SERVICE_CLIENT_SECRET:-$(secret service-client-secret)}
STRIPE_WEBHOOK_SECRET=${STRIPE_WEBHOOK_SECRET:-whsec_$(secret stripe-webhook-secret)}
ADMIN_EMAIL=${ADMIN_EMAIL:-admin@mercato.local}
ADMIN_PASSWORD=${ADMIN_PASSWORD:-$(secret admin-password 12)}
export SERVICE_CLIENT_SECRET STRIPE_WEBHOOK_SECRET ADMIN_EMAIL ADMIN_PASSWORD
export LISTEN_ADDR=${LISTEN_ADDR:-127.0.0.1} HOT_RELOAD=${HOT_RELOAD:-1}
for s in "${SERVICES[@]}"; do
    export "${s^^}_SERVICE_URL=http://127.0.0.1:${PORTS[$s]}"
done
export JWKS_URL=${JWKS_URL:-$USER_SERVICE_URL/.well-known/jwks.json}
export SMTP_URL=${CALLER_SMTP_URL:-$SMTP_URL} SMTP_FROM=${SMTP_FROM:-Mercato <no-reply@mercato.local>}

# The local Stripe stand-in (scripts/dev/stripe_standin.js; not Stripe) unless a Stripe key is
# set: it answers the payment service's API calls and sends signed webhooks to it.
if [ -z "${STRIPE_API_KEY:-}${STRIPE_TEST_KEY:-}" ]; then
    STRIPE_STANDIN_PORT=${STRIPE_STANDIN_PORT:-12111}
    export STRIPE_API_KEY=sk_test_mercato_standin STRIPE_API_BASE=http://127.0.0.1:$STRIPE_STANDIN_PORT
    STRIPE_STANDIN_PORT=$STRIPE_STANDIN_PORT STRIPE_WEBHOOK_URL=$PAYMENT_SERVICE_URL/webhooks/stripe \
        node scripts/dev/stripe_standin.js >"$LOGS/stripe-standin.log" 2>&1 &
    PIDS[stripe-standin]=$!
    for _ in $(seq 1 50); do
        curl -fs --max-time 2 -o /dev/null "$STRIPE_API_BASE/_standin/health" && break
        sleep 0.1
    done
    curl -fs --max-time 2 -o /dev/null "$STRIPE_API_BASE/_standin/health" || { log "the Stripe stand-in did not start: see $LOGS/stripe-standin.log"; exit 1; }
fi

start() {   # start NAME: one mercato process, its log under .run/logs
    local name=$1 db_var="DATABASE_URL_${1^^}" client=()
    # The internal client's secret only where it is used: the user service (which registers it)
    # and the order service (its one caller).
    case $name in user | order) ;; *) client=(-u SERVICE_CLIENT_SECRET) ;; esac
    env "${client[@]}" SERVICE="$name" PORT="${PORTS[$name]}" DATABASE_URL="${!db_var:-}" "$BIN" >"$LOGS/$name.log" 2>&1 &
    PIDS[$name]=$!
}

wait_ready() {   # wait_ready NAME: until /health answers, or fail with the log's tail
    local name=$1
    for _ in $(seq 1 100); do
        # our process first: another program on the port must not pass for it
        if ! kill -0 "${PIDS[$name]}" 2>/dev/null; then break; fi
        if curl -fs --max-time 2 -o /dev/null "http://127.0.0.1:${PORTS[$name]}/health"; then return 0; fi
        sleep 0.1
    done
    log "$name did not start; the end of $LOGS/$name.log:"
    tail -20 "$LOGS/$name.log" >&2
    return 1
}

started=()
for s in "${SERVICES[@]}"; do
    if [ -f "scripts/services/$s/routes.lua" ]; then
        start "$s"
        started+=("$s")
    fi
done
start gateway
for s in "${started[@]}" gateway; do wait_ready "$s" || { log "failed to start: $s"; exit 1; }; done

# The demo seller: a real seller account (registered through the user service) that owns the
# demo catalogue — the seed files its products under SEED_SELLER_ID.
DEMO_SELLER_EMAIL=${DEMO_SELLER_EMAIL:-seller@mercato.local}
DEMO_SELLER_PASSWORD=${DEMO_SELLER_PASSWORD:-$(secret demo-seller-password 12)}
if [ -z "${SEED_SELLER_ID:-}" ] && [ -n "${PIDS[user]:-}" ]; then
    if seller_id=$(scripts/dev/demo_account.sh "$USER_SERVICE_URL" "$DEMO_SELLER_EMAIL" "$DEMO_SELLER_PASSWORD"); then
        export SEED_SELLER_ID=$seller_id
    else
        log "the demo seller could not be registered; the demo catalogue gets a placeholder seller id"
    fi
fi

# The demo buyer, a real buyer account for the README's walk-through and the curious.
DEMO_BUYER_EMAIL=${DEMO_BUYER_EMAIL:-buyer@mercato.local}
DEMO_BUYER_PASSWORD=${DEMO_BUYER_PASSWORD:-$(secret demo-buyer-password 12)}
if [ -n "${PIDS[user]:-}" ]; then
    scripts/dev/demo_account.sh "$USER_SERVICE_URL" "$DEMO_BUYER_EMAIL" "$DEMO_BUYER_PASSWORD" buyer >/dev/null ||
        log "the demo buyer could not be registered"
fi

# The demo catalogue (idempotent: a second run adds nothing).
if [ -f scripts/services/product/seed.lua ] && [ -n "${PIDS[product]:-}" ]; then
    SERVICE=product DATABASE_URL=$DATABASE_URL_PRODUCT "$BIN" lua scripts/services/product/seed.lua >"$LOGS/seed.log" 2>&1 ||
        log "the demo catalogue seed failed: see $LOGS/seed.log"
fi

{
    kv GATEWAY_URL "http://127.0.0.1:${PORTS[gateway]}"
    for s in "${SERVICES[@]}"; do kv "${s^^}_SERVICE_URL" "http://127.0.0.1:${PORTS[$s]}"; done
    kv ADMIN_EMAIL "$ADMIN_EMAIL"
    kv ADMIN_PASSWORD "$ADMIN_PASSWORD"
    kv DEMO_SELLER_EMAIL "$DEMO_SELLER_EMAIL"
    kv DEMO_SELLER_PASSWORD "$DEMO_SELLER_PASSWORD"
    kv DEMO_BUYER_EMAIL "$DEMO_BUYER_EMAIL"
    kv DEMO_BUYER_PASSWORD "$DEMO_BUYER_PASSWORD"
    kv SERVICE_CLIENT_ID "$SERVICE_CLIENT_ID"
    kv SERVICE_CLIENT_SECRET "$SERVICE_CLIENT_SECRET"
    kv STRIPE_WEBHOOK_SECRET "$STRIPE_WEBHOOK_SECRET"
    kv STRIPE_API_BASE "${STRIPE_API_BASE:-}"
    if [ -n "${PIDS[stripe-standin]:-}" ]; then kv STRIPE_API_KEY "$STRIPE_API_KEY"; fi
    kv SMTP_API_URL "$SMTP_API_URL"
    # shellcheck disable=SC2153 # set by stack.sh env, above
    kv AMQP_URL "$AMQP_URL"
    kv REDIS_URL "$REDIS_URL"
    for s in "${SERVICES[@]}"; do
        v="DATABASE_URL_${s^^}"
        kv "$v" "${!v}"
    done
} >"$RUN_DIR/env.tmp"
mv "$RUN_DIR/env.tmp" "$RUN_DIR/env"

cat <<EOF

mercato is running (Ctrl-C stops everything)
  gateway        http://127.0.0.1:${PORTS[gateway]}
  services       ${started[*]:-none yet}  (ports ${PORTS[user]}-${PORTS[notification]}; logs in $LOGS)
  admin          $ADMIN_EMAIL / $ADMIN_PASSWORD
  demo seller    $DEMO_SELLER_EMAIL / $DEMO_SELLER_PASSWORD  (owns the demo catalogue)
  demo buyer     $DEMO_BUYER_EMAIL / $DEMO_BUYER_PASSWORD
  mail (maildev) ${SMTP_API_URL%/api/email}
  environment    $RUN_DIR/env
EOF

# Wait for Ctrl-C; if a service dies, say so and stop everything.
while true; do
    for name in "${!PIDS[@]}"; do
        if ! kill -0 "${PIDS[$name]}" 2>/dev/null; then
            log "$name exited; the end of $LOGS/$name.log:"
            tail -20 "$LOGS/$name.log" >&2
            stop_all 1
        fi
    done
    sleep 1
done
