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
# The spec's groups side by side (each its own services): sqlmap mostly waits on round trips.
parts=("the harness" "product search" "auth endpoints" "notification lists")
pids=()
mkdir -p .run/security/sqlmap
rm -f ".run/security/sqlmap/$SQLMAP_PROFILE"-*.md
for i in "${!parts[@]}"; do
    SQLMAP_PART=$i "${MERCATO_BIN:-build/mercato}" lua spec/support/busted.lua -o TAP --filter="${parts[$i]}" \
        spec/integration/security_sqlmap_spec.lua >".run/security/sqlmap/$SQLMAP_PROFILE-$i.tap" 2>&1 &
    pids+=($!)
done
rc=0
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || rc=1
    cat ".run/security/sqlmap/$SQLMAP_PROFILE-$i.tap"
done
grep -q '^not ok' ".run/security/sqlmap/$SQLMAP_PROFILE"-*.tap && rc=1
{
    head -n 6 ".run/security/sqlmap/$SQLMAP_PROFILE-0.md"
    for i in "${!parts[@]}"; do tail -n +7 ".run/security/sqlmap/$SQLMAP_PROFILE-$i.md"; done
} >".run/security/sqlmap/$SQLMAP_PROFILE.md" 2>/dev/null
echo "---- sqlmap ($SQLMAP_PROFILE) took $(($(date +%s) - started)) s; per target: .run/security/sqlmap/$SQLMAP_PROFILE/"
cat ".run/security/sqlmap/$SQLMAP_PROFILE.md"
exit $rc
