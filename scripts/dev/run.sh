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

declare -A PORTS=([gateway]=8080 [user]=8081 [product]=8082 [order]=8083 [payment]=8084 [notification]=8085)
SERVICES=(user product order payment notification)
declare -A PIDS=()

log() { printf 'run: %s\n' "$*" >&2; }

stop_all() {
    trap - INT TERM EXIT
    log "stopping services"
    for name in "${!PIDS[@]}"; do kill -TERM "${PIDS[$name]}" 2>/dev/null || true; done
    for name in "${!PIDS[@]}"; do wait "${PIDS[$name]}" 2>/dev/null || true; done
    rm -f "$RUN_DIR/env"
    if [ "${KEEP_STACK:-0}" != 1 ]; then scripts/dev/stack.sh down || true; fi
    exit 0
}
trap stop_all INT TERM EXIT

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
        curl -fs -o /dev/null "$STRIPE_API_BASE/_standin/health" && break
        sleep 0.1
    done
    curl -fs -o /dev/null "$STRIPE_API_BASE/_standin/health" || { log "the Stripe stand-in did not start: see $LOGS/stripe-standin.log"; exit 1; }
fi

start() {   # start NAME: one mercato process, its log under .run/logs
    local name=$1 db_var="DATABASE_URL_${1^^}"
    SERVICE=$name PORT=${PORTS[$name]} DATABASE_URL=${!db_var:-} "$BIN" >"$LOGS/$name.log" 2>&1 &
    PIDS[$name]=$!
}

wait_ready() {   # wait_ready NAME: until /health answers, or fail with the log's tail
    local name=$1
    for _ in $(seq 1 100); do
        if curl -fs -o /dev/null "http://127.0.0.1:${PORTS[$name]}/health"; then return 0; fi
        if ! kill -0 "${PIDS[$name]}" 2>/dev/null; then break; fi
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
for s in "${started[@]}" gateway; do wait_ready "$s"; done

# The demo seller: a real seller account (registered through the user service) that owns the
# demo catalogue — the seed files its products under SEED_SELLER_ID.
DEMO_SELLER_EMAIL=${DEMO_SELLER_EMAIL:-seller@mercato.local}
DEMO_SELLER_PASSWORD=${DEMO_SELLER_PASSWORD:-$(secret demo-seller-password 12)}
if [ -z "${SEED_SELLER_ID:-}" ] && [ -n "${PIDS[user]:-}" ]; then
    if seller_id=$(scripts/dev/demo_seller.sh "$USER_SERVICE_URL" "$DEMO_SELLER_EMAIL" "$DEMO_SELLER_PASSWORD"); then
        export SEED_SELLER_ID=$seller_id
    else
        log "the demo seller could not be registered; the demo catalogue gets a placeholder seller id"
    fi
fi

# The demo catalogue (idempotent: a second run adds nothing).
if [ -f scripts/services/product/seed.lua ] && [ -n "${PIDS[product]:-}" ]; then
    SERVICE=product DATABASE_URL=$DATABASE_URL_PRODUCT "$BIN" lua scripts/services/product/seed.lua >"$LOGS/seed.log" 2>&1 ||
        log "the demo catalogue seed failed: see $LOGS/seed.log"
fi

{
    echo "GATEWAY_URL=http://127.0.0.1:${PORTS[gateway]}"
    for s in "${SERVICES[@]}"; do echo "${s^^}_SERVICE_URL=http://127.0.0.1:${PORTS[$s]}"; done
    echo "ADMIN_EMAIL=$ADMIN_EMAIL"
    echo "ADMIN_PASSWORD=$ADMIN_PASSWORD"
    echo "DEMO_SELLER_EMAIL=$DEMO_SELLER_EMAIL"
    echo "DEMO_SELLER_PASSWORD=$DEMO_SELLER_PASSWORD"
    echo "SERVICE_CLIENT_ID=$SERVICE_CLIENT_ID"
    echo "SERVICE_CLIENT_SECRET=$SERVICE_CLIENT_SECRET"
    echo "STRIPE_WEBHOOK_SECRET=$STRIPE_WEBHOOK_SECRET"
    echo "STRIPE_API_BASE=${STRIPE_API_BASE:-}"
    if [ -n "${PIDS[stripe-standin]:-}" ]; then echo "STRIPE_API_KEY=$STRIPE_API_KEY"; fi
    echo "SMTP_API_URL=$SMTP_API_URL"
    # shellcheck disable=SC2153 # set by stack.sh env, above
    echo "AMQP_URL=$AMQP_URL"
    echo "REDIS_URL=$REDIS_URL"
    for s in "${SERVICES[@]}"; do
        v="DATABASE_URL_${s^^}"
        echo "$v=${!v}"
    done
} >"$RUN_DIR/env.tmp"
mv "$RUN_DIR/env.tmp" "$RUN_DIR/env"

cat <<EOF

mercato is running (Ctrl-C stops everything)
  gateway        http://127.0.0.1:${PORTS[gateway]}
  services       ${started[*]:-none yet}  (ports 8081-8085; logs in $LOGS)
  admin          $ADMIN_EMAIL / $ADMIN_PASSWORD
  demo seller    $DEMO_SELLER_EMAIL / $DEMO_SELLER_PASSWORD  (owns the demo catalogue)
  mail (maildev) ${SMTP_API_URL%/api/email}
  environment    $RUN_DIR/env
EOF

# Wait for Ctrl-C; if a service dies, say so and stop everything.
while true; do
    for name in "${!PIDS[@]}"; do
        if ! kill -0 "${PIDS[$name]}" 2>/dev/null; then
            log "$name exited; the end of $LOGS/$name.log:"
            tail -20 "$LOGS/$name.log" >&2
            stop_all
        fi
    done
    sleep 1
done
