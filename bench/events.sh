#!/usr/bin/env bash
# bench/events.sh — the event scenarios of `make bench` (issues 13, 14, 17), run by bench/orders.sh
# (and alone: `bash bench/events.sh`). On the private stack, against real mercato processes on
# throw-away databases; prints markdown tables:
#   bench/svc/relay.lua   outbox relay delay (created_at → sent_at) and event latency
#                         (occurred_at → the consumer's transaction), p50/p99, at a steady
#                         BENCH_EVENTS_RATE [200] events/s for BENCH_EVENTS_STEADY_S [10] s and
#                         for a burst of BENCH_EVENTS_BURST [1000] events committed at once
#   bench/svc/events.lua  stripe.verify_webhook in C, POST /webhooks/stripe (wrk), and the
#                         e-mail burst (BENCH_EVENTS_BURST user.registered → accepted by SMTP)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MERCATO=${MERCATO:-build/mercato}
scripts/dev/stack.sh up >/dev/null
set -a
# shellcheck disable=SC1090
. <(scripts/dev/stack.sh env)
set +a
export DATABASE_URL=$DATABASE_URL_PRODUCT MERCATO_BIN=$MERCATO
"$MERCATO" lua bench/svc/relay.lua
printf '\n'
exec "$MERCATO" lua bench/svc/events.lua
