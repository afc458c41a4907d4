#!/usr/bin/env bash
# bench/checkout_cost.sh — the database work of one checkout, per service (issue 17): SQL
# statements and transactions per POST /orders in the order, payment, product and user
# services, and the statements run most often (bench/svc/checkout_cost.lua). Needs the private
# stack's PostgreSQL with pg_stat_statements: this script brings the stack up with
# PG_STAT_STATEMENTS=1 (a PostgreSQL already running without it makes `up` fail, saying how to
# restart it). About a minute. Env: CHECKOUT_COST_N [50] checkouts, CHECKOUT_COST_ITEMS [2]
# products per cart, CHECKOUT_COST_TOP [10] statements listed per service, CHECKOUT_COST_IDLE_S
# [10] the quiet window whose background is subtracted, CHECKOUT_COST_SETTLE_S [11].
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MERCATO=${MERCATO:-build/mercato}
PG_STAT_STATEMENTS=1 scripts/dev/stack.sh up >/dev/null
set -a
# shellcheck disable=SC1090
. <(scripts/dev/stack.sh env)
set +a
export DATABASE_URL=$DATABASE_URL_PRODUCT MERCATO_BIN=$MERCATO
exec "$MERCATO" lua bench/svc/checkout_cost.lua
