#!/usr/bin/env bash
# bench/footprint.sh — memory and start-up of every service in `make bench` (issue 17): idle
# RSS (and its anonymous, PSS and private parts), RSS after a 256-connection wrk run, and exec →
# first 200 (bench/svc/footprint.lua). Prints a markdown table.
# Env: BENCH_FOOTPRINT_DURATION [5] (s of each 256-connection run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MERCATO=${MERCATO:-build/mercato}
scripts/dev/stack.sh up >/dev/null
set -a
# shellcheck disable=SC1090
. <(scripts/dev/stack.sh env)
set +a
mkdir -p .run/bench
export DATABASE_URL=$DATABASE_URL_PRODUCT MERCATO_BIN=$MERCATO
exec "$MERCATO" lua bench/svc/footprint.lua
