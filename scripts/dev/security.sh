#!/usr/bin/env bash
# scripts/dev/security.sh: `make security` — the thorough security scans, too slow for make test:
# sqlmap with SQLMAP_PROFILE=full (--level 5 --risk 3, every technique) over every target of
# spec/integration/security_sqlmap_spec.lua, against the real services on the private stack.
# Prints the spec's TAP and the summary table (.run/security/sqlmap/full.md); exit 0 only when
# sqlmap found no injectable parameter and provoked no 500 anywhere.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1

# A stack this run starts is stopped at the end; one that was already up is left up.
if ! scripts/dev/stack.sh status >/dev/null 2>&1; then trap 'scripts/dev/stack.sh down >/dev/null 2>&1' EXIT; fi
scripts/dev/stack.sh up >/dev/null || { echo "security: the private stack did not start" >&2; exit 1; }
set -a
# shellcheck disable=SC1090
. <(scripts/dev/stack.sh env)
set +a
export DATABASE_URL=${DATABASE_URL_PRODUCT:-} SQLMAP_PROFILE=${SQLMAP_PROFILE:-full}
started=$(date +%s)
"${MERCATO_BIN:-build/mercato}" lua spec/support/busted.lua -o TAP spec/integration/security_sqlmap_spec.lua
rc=$?
echo "---- sqlmap ($SQLMAP_PROFILE) took $(($(date +%s) - started)) s; per target: .run/security/sqlmap/$SQLMAP_PROFILE/"
cat ".run/security/sqlmap/$SQLMAP_PROFILE.md" 2>/dev/null
exit $rc
