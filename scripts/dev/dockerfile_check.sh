#!/usr/bin/env bash
# scripts/dev/dockerfile_check.sh: docker/Dockerfile without Docker (none runs here) — its build
# and runtime steps run on this Debian 12 machine, as TAP (part of `make test`, a few seconds):
#   - each stage's apt-get package list resolves (`apt-get install --simulate`);
#   - the build stage's make target builds here (the same make, the same target);
#   - every shared library build/mercato and lua-cjson need comes from a runtime-stage package
#     (or from what debian:12-slim already has);
#   - every COPY source exists and .dockerignore lets it through;
#   - the runtime steps: `mercato version`, `mercato check` of every service as a non-root user
#     from / (nothing written), and the gateway started that way answers the HEALTHCHECK script;
#   - lint: dockerfilelint (npm) and the hadolint rules we can state in a few lines
#     (DL3002 last USER not root, DL3006/DL3007 tagged bases, DL3009 apt lists removed,
#     DL3015 --no-install-recommends, DL3020 COPY not ADD, DL3025 JSON ENTRYPOINT/CMD,
#     DL4006 pipefail before a pipe).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1

DF=docker/Dockerfile
n=0
fails=0
ok() { n=$((n + 1)); echo "ok $n - $*"; }
not_ok() { n=$((n + 1)); fails=$((fails + 1)); echo "not ok $n - $1"; shift; for l in "$@"; do echo "# $l"; done; }
check() {   # check "description" cmd...: ok when cmd exits 0, its output as diagnostics otherwise
    local what=$1 out
    shift
    if out=$("$@" 2>&1); then ok "$what"; else not_ok "$what" "${out//$'\n'/$'\n'# }"; fi
}

# The Dockerfile with continuation lines joined: one instruction per line.
joined=$(sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$DF" | grep -v '^[[:space:]]*#' | sed 's/[[:space:]]\+/ /g')
stage_of() {   # stage_of NAME: the instructions of stage NAME
    awk -v s="$1" '/^FROM /{cur = ($NF == s)} cur' <<<"$joined"
}
apt_packages() {   # apt_packages NAME: what the stage's apt-get install lines install
    stage_of "$1" | grep -o 'apt-get install [^&]*' | sed 's/apt-get install//' | tr ' ' '\n' | grep -v '^-' | grep -v '^$'
}

# ---- base images and packages ------------------------------------------------------------
if grep -q '^12' /etc/debian_version 2>/dev/null; then ok "this machine is Debian 12, like the image's stages"
else not_ok "this machine is Debian 12, like the image's stages" "found $(cat /etc/debian_version 2>/dev/null)"; fi
mapfile -t froms < <(grep '^FROM ' <<<"$joined" | awk '{print $2}')
if [ "${froms[*]}" = "debian:12 debian:12-slim" ]; then ok "build on debian:12, run on debian:12-slim"
else not_ok "build on debian:12, run on debian:12-slim" "FROM lines: ${froms[*]}"; fi

# Both stages at once (each simulation reads the package lists: seconds on a busy machine).
# A machine whose package lists were cleaned knows no package: refresh them first (as root).
if ! compgen -G '/var/lib/apt/lists/*_Packages' >/dev/null && [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq >/dev/null 2>&1 || true
fi
sim_dir=$(mktemp -d)
for stage in build runtime; do
    mapfile -t pkgs < <(apt_packages "$stage")
    echo "${#pkgs[@]}" >"$sim_dir/$stage.count"
    if [ "${#pkgs[@]}" -gt 0 ]; then
        (apt-get install --simulate -qq "${pkgs[@]}" >"$sim_dir/$stage.out" 2>&1; echo $? >"$sim_dir/$stage.rc") &
    fi
done
wait
for stage in build runtime; do
    count=$(cat "$sim_dir/$stage.count")
    if [ "$count" -eq 0 ]; then not_ok "the $stage stage installs packages" "no apt-get install line found"
    elif [ "$(cat "$sim_dir/$stage.rc")" = 0 ]; then ok "the $stage stage's $count apt packages resolve (apt-get install --simulate)"
    else not_ok "the $stage stage's $count apt packages resolve (apt-get install --simulate)" "$(tail -5 "$sim_dir/$stage.out")"; fi
done
rm -rf "$sim_dir"

# ---- the build: the same make target -----------------------------------------------------
target=$(stage_of build | grep '^RUN make ' | sed 's/^RUN //' | tr ' ' '\n' | grep -v '^make$' | grep -v '^-' | grep -v '=' | head -1)
if [ -z "$target" ]; then not_ok "the build stage runs make" "no make line"
else check "the build stage's target ($target) builds with the same make" make --no-print-directory "$target"; fi

# ---- runtime libraries ---------------------------------------------------------------------
mapfile -t runtime < <(apt_packages runtime)
# debian:12-slim's own packages that binaries here may link (Priority: required).
base="libc6 libgcc-s1 zlib1g libzstd1 libcom-err2 libkeyutils1 libselinux1 libpcre2-8-0 libgmp10 libtasn1-6 libp11-kit0 libffi8 libunistring2 libidn2-0 libnettle8 libhogweed6 libgnutls30 libcrypt1 libstdc++6 libsystemd0 liblzma5 libcap2 libgcrypt20 libgpg-error0 liblz4-1 libmd0 libudev1"
owner() {   # owner LIB-PATH: the Debian package that ships it (usr-merged paths tried both ways)
    local p hit
    p=$(readlink -f "$1")
    hit=$(grep -F -x -l -e "$p" -e "${p#/usr}" -e "/usr$p" -e "$1" -e "${1#/usr}" /var/lib/dpkg/info/*.list 2>/dev/null | head -1)
    [ -n "$hit" ] || return 1
    hit=$(basename "$hit" .list)
    echo "${hit%%:*}"
}
missing=()
cjson=$(luajit -e 'print((package.searchpath("cjson", package.cpath)))' 2>/dev/null)
# The libraries each binary names itself (NEEDED); what those need in turn comes with the
# packages' own dependencies, which apt resolved above.
for bin in "${target:-build/mercato}" "$cjson"; do
    [ -n "$bin" ] || continue
    while read -r soname; do
        lib=$(ldconfig -p | awk -v s="$soname" '$1 == s && /x86-64|64bit/ {print $NF; exit}')
        [ -n "$lib" ] || lib=$(ldconfig -p | awk -v s="$soname" '$1 == s {print $NF; exit}')
        pkg=$(owner "$lib") || { missing+=("$soname (no package)"); continue; }
        case " ${runtime[*]} $base " in *" $pkg "*) ;; *) missing+=("$(basename "$bin") needs $soname from $pkg") ;; esac
    done < <(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
done
if [ "${#missing[@]}" -eq 0 ]; then ok "every library build/mercato and cjson.so link comes from a runtime-stage package or debian:12-slim"
else not_ok "every library build/mercato and cjson.so link comes from a runtime-stage package or debian:12-slim" "${missing[@]}"; fi
pkg=$(owner "$cjson")
case " ${runtime[*]} " in *" $pkg "*) ok "the runtime stage installs $pkg (require \"cjson\")" ;;
    *) not_ok "the runtime stage installs the package of cjson.so" "cjson.so is in ${pkg:-?}" ;; esac

# ---- COPY sources and .dockerignore --------------------------------------------------------
ignored() {   # ignored PATH: 0 when .dockerignore keeps PATH out of the build context
    local path=$1 verdict=1 line neg pat
    while read -r line; do
        line=${line%%#*}
        line=${line//[[:space:]]/}
        [ -n "$line" ] || continue
        neg=0
        if [ "${line#!}" != "$line" ]; then neg=1; line=${line#!}; fi
        pat=${line%/}
        # shellcheck disable=SC2053
        if [[ $path == $pat || $path == $pat/* ]] || { [[ $pat == '**/'* ]] && [[ $path == ${pat#**/} || $path == */${pat#**/} ]]; }; then
            verdict=$((1 - neg))
        fi
    done <.dockerignore
    return $((1 - verdict))
}
bad=()
while read -r src; do
    src=${src%/}
    if [ ! -e "$src" ]; then bad+=("COPY $src: no such path"); continue; fi
    if ignored "$src"; then bad+=("COPY $src: excluded by .dockerignore"); fi
    while IFS= read -r f; do
        ignored "$f" && bad+=("$f (under COPY $src) is excluded by .dockerignore")
    done < <(find "$src" -type f -not -name '*.o' -not -name '*.d' | head -400)
done < <(grep '^COPY ' <<<"$joined" | grep -v -- '--from=' | awk '{for (i = 2; i < NF; i++) print $i}')
for p in .run build node_modules .tools spec bench .git; do ignored "$p" || bad+=("$p is sent in the build context"); done
if [ "${#bad[@]}" -eq 0 ]; then ok "every COPY source exists and passes .dockerignore; .run, build, node_modules, specs stay out"
else not_ok "every COPY source exists and passes .dockerignore" "${bad[@]}"; fi

# ---- runtime commands, as a non-root user from / -------------------------------------------
bin=$(readlink -f "${target:-build/mercato}")
user=nobody
# setpriv execs the command itself (no parent in between that would take the signals).
as_user() { if [ "$(id -u)" -eq 0 ]; then setpriv --reuid="$user" --regid=nogroup --clear-groups -- "$@"; else "$@"; fi; }
check "mercato version runs" as_user "$bin" version
scripts=$(readlink -f scripts)
for dir in scripts/services/*/; do
    svc=$(basename "$dir")
    check "SERVICE=$svc mercato check passes as $user, from /, HOT_RELOAD=0" \
        as_user env -C / SERVICE="$svc" SCRIPTS_DIR="$scripts" HOT_RELOAD=0 "$bin" check
done
port=$(( (RANDOM % 400) + 28600 ))
tmp=$(mktemp -d)
chmod 777 "$tmp"
(
    exec_user=()
    [ "$(id -u)" -eq 0 ] && exec_user=(setpriv --reuid="$user" --regid=nogroup --clear-groups --)
    exec "${exec_user[@]}" env -C / SERVICE=gateway PORT="$port" LISTEN_ADDR=127.0.0.1 WORKERS=1 SCRIPTS_DIR="$scripts" \
        BLOB_DIR="$tmp" TMPDIR="$tmp" RATE_LIMIT_GLOBAL=off "$bin" >"$tmp/gateway.log" 2>&1
) &
gw=$!   # mercato itself: the subshell and setpriv exec'd into it
healthy=1
for _ in $(seq 1 100); do
    if SERVICE=gateway PORT=$port docker/healthcheck.sh 2>/dev/null; then healthy=0; break; fi
    sleep 0.05
done
if [ "$healthy" -eq 0 ]; then ok "the gateway, started as $user from /, answers the HEALTHCHECK script"
else not_ok "the gateway, started as $user from /, answers the HEALTHCHECK script" "$(tail -5 "$tmp/gateway.log")"; fi
kill -TERM "$gw" 2>/dev/null
wait "$gw"
rc=$?
if [ "$rc" -eq 0 ]; then ok "it stops on SIGTERM with status 0"; else not_ok "it stops on SIGTERM with status 0" "status $rc"; fi
rm -rf "$tmp"

# ---- lint ----------------------------------------------------------------------------------
if [ -x node_modules/.bin/dockerfilelint ]; then
    check "dockerfilelint finds nothing" node_modules/.bin/dockerfilelint "$DF"
else
    not_ok "dockerfilelint is installed (npm ci)"
fi
rules=()
last_user=$(grep '^USER ' <<<"$joined" | tail -1 | awk '{print $2}')
case "${last_user%%:*}" in "" | root | 0) rules+=("DL3002: the last USER is root or missing") ;; esac
grep '^FROM ' <<<"$joined" | awk '{print $2}' | grep -v ':' | grep -q . && rules+=("DL3006: a FROM image has no tag")
grep '^FROM ' <<<"$joined" | grep -q ':latest' && rules+=("DL3007: a FROM image uses :latest")
grep '^RUN .*apt-get install' <<<"$joined" | grep -v 'rm -rf /var/lib/apt/lists' | grep -q . && rules+=("DL3009: apt lists not removed")
grep '^RUN .*apt-get install' <<<"$joined" | grep -v -- '--no-install-recommends' | grep -q . && rules+=("DL3015: apt-get install without --no-install-recommends")
grep -q '^ADD ' <<<"$joined" && rules+=("DL3020: ADD instead of COPY")
grep -E '^(ENTRYPOINT|CMD) ' <<<"$joined" | grep -v -E '^(ENTRYPOINT|CMD) \[' | grep -q . && rules+=("DL3025: ENTRYPOINT/CMD not in JSON form")
grep -q '^RUN .*|' <<<"$joined" && ! grep -q '^SHELL .*pipefail' <<<"$joined" && rules+=("DL4006: a pipe without SHELL pipefail")
grep -q '^HEALTHCHECK ' <<<"$joined" || rules+=("no HEALTHCHECK")
if [ "${#rules[@]}" -eq 0 ]; then ok "hadolint rules DL3002 DL3006 DL3007 DL3009 DL3015 DL3020 DL3025 DL4006, and a HEALTHCHECK"
else not_ok "hadolint rules" "${rules[@]}"; fi

echo "1..$n"
[ "$fails" -eq 0 ]
