#!/usr/bin/env bash
# bench/orders.sh — the order service's scenarios of `make bench` (issue 12): cart reads and
# writes with wrk, and the checkout's synchronous part under a closed loop of buyers, against
# real user, product, payment (Stripe stand-in) and order services (bench/svc/orders.lua).
# Then the event scenarios (bench/events.sh): the outbox relay's delay and event latency at a
# steady rate and in a burst (bench/svc/relay.lua), webhook verifications per second in C, POST
# /webhooks/stripe, and an e-mail burst's latency (bench/svc/events.lua). Prints markdown tables. Env: BENCH_ORDERS_DURATION [5] (s per wrk run),
# BENCH_ORDERS_CONNECTIONS [64], BENCH_ORDERS_CHECKOUT_C [32], BENCH_ORDERS_CHECKOUT_S [10].
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MERCATO=${MERCATO:-build/mercato}
scripts/dev/stack.sh up >/dev/null
set -a
# shellcheck disable=SC1090
. <(scripts/dev/stack.sh env)
set +a
export DATABASE_URL=$DATABASE_URL_PRODUCT MERCATO_BIN=$MERCATO
"$MERCATO" lua bench/svc/orders.lua
printf '\n'
MERCATO=$MERCATO exec bash bench/events.sh
