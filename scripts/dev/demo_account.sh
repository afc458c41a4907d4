#!/usr/bin/env bash
# scripts/dev/demo_account.sh USER_SERVICE_URL EMAIL PASSWORD [ROLE]: make sure a demo account
# (ROLE seller, the default, or buyer) is a real account and print its user id. It registers
# EMAIL through the user service's public API (POST /auth/register; a 409 means it exists
# already), logs in and reads GET /users/me. `make run` (scripts/dev/run.sh) makes the demo seller
# and buyer with it, and passes the seller's id to the product seed as SEED_SELLER_ID, so the
# demo catalogue belongs to an account that can log in and manage it.
# Exit 1 with a message on stderr when the account cannot be reached (wrong password, user
# service down).
set -euo pipefail
[ $# -eq 3 ] || [ $# -eq 4 ] || { echo "usage: $0 USER_SERVICE_URL EMAIL PASSWORD [seller|buyer]" >&2; exit 2; }
url=${1%/} email=$2 password=$3 want=${4:-seller}

json_str() {   # a JSON string literal for $1
    local s=${1//\\/\\\\}
    s=${s//\"/\\\"}
    printf '"%s"' "$s"
}
field() {      # the first string value of key $1 in the JSON on stdin
    sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p" | head -1
}

creds="{\"email\":$(json_str "$email"),\"password\":$(json_str "$password")"
status=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
    -d "$creds,\"name\":\"Demo ${want^}\",\"role\":\"$want\"}" "$url/auth/register") || status=000
case $status in
    201|409) ;;
    *) echo "demo_account: registering $email answered $status" >&2; exit 1 ;;
esac
token=$(curl -s -X POST -H 'Content-Type: application/json' -d "$creds}" "$url/auth/login" | field access_token)
[ -n "$token" ] || { echo "demo_account: cannot log in as $email (another password?)" >&2; exit 1; }
me=$(curl -s -H "Authorization: Bearer $token" "$url/users/me")
id=$(printf '%s' "$me" | field id)
role=$(printf '%s' "$me" | field role)
[ -n "$id" ] || { echo "demo_account: GET /users/me gave no id" >&2; exit 1; }
[ "$role" = "$want" ] || { echo "demo_account: $email is a $role account, not a $want" >&2; exit 1; }
echo "$id"
