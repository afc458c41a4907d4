# shellcheck shell=bash disable=SC2004,SC2034,SC2154 # sourced by bench/run.sh, whose arrays (RES, SERVER_*) are associative
# bench/gateway.sh — the gateway scenario of `make bench` (issue 10), run inside the service
# scenarios (bench/services.sh calls gw_run while their product service is up):
#   direct   GET /products/{id} (Redis read cache on) straight to the product service
#   mercato  the same through SERVICE=gateway, WORKERS=$BENCH_SVC_WORKERS, RATE_LIMIT_GLOBAL=off
#   nginx    the same through nginx proxy_pass with a keep-alive upstream,
#            worker_processes=$BENCH_SVC_WORKERS (bench/nginx/gateway.conf.in)
# Both proxies log every request (mercato's access log, nginx's buffered access_log). Rounds are
# interleaved (direct, mercato, nginx, then again), one pass per client count.
#
# Env (defaults in brackets):
#   BENCH_GW                1 = run it [1]
#   BENCH_GW_ROUNDS         interleaved rounds [3]
#   BENCH_GW_DURATION       wrk -d per run [5s]
#   BENCH_GW_CONNECTIONS    wrk -c, one pass each ["64 256"]
#   BENCH_PORT_GW           the mercato gateway; nginx on the next port [28210]
#   BENCH_GW_KEEPALIVE      idle upstream connections kept per worker: nginx's `keepalive`, the
#                           gateway's GATEWAY_UPSTREAM_KEEPALIVE [128]

BENCH_GW=${BENCH_GW:-1}
BENCH_GW_ROUNDS=${BENCH_GW_ROUNDS:-3}
BENCH_GW_DURATION=${BENCH_GW_DURATION:-5s}
BENCH_GW_CONNECTIONS=${BENCH_GW_CONNECTIONS:-64 256}
BENCH_PORT_GW=${BENCH_PORT_GW:-28210}
BENCH_GW_KEEPALIVE=${BENCH_GW_KEEPALIVE:-128}
GW_ROWS=()

gw_start_nginx() {
  local p=$BENCH_DIR/gw-nginx port=$((BENCH_PORT_GW + 1)) up=${SERVER_URL[svc-product]#http://}
  rm -rf "$p"
  mkdir -p "$p/logs" "$p/tmp"
  port_free "$port" || die "port $port for the nginx proxy is in use (set BENCH_PORT_GW)"
  sed -e "s|@PREFIX@|$p|g" -e "s|@PORT@|$port|g" -e "s|@WORKERS@|$BENCH_SVC_WORKERS|g" \
    -e "s|@UPSTREAM@|$up|g" -e "s|@KEEPALIVE@|$BENCH_GW_KEEPALIVE|g" -e "s|@ACCESS_LOG@|$p/logs/access.log|g" bench/nginx/gateway.conf.in >"$p/nginx.conf"
  nginx -q -t -p "$p" -c "$p/nginx.conf" >"$BENCH_DIR/gw-nginx.out" 2>&1 ||
    die "nginx proxy config test failed: $(cat "$BENCH_DIR/gw-nginx.out")"
  nginx -p "$p" -c "$p/nginx.conf" -g 'daemon off;' >>"$BENCH_DIR/gw-nginx.out" 2>&1 &
  SERVER_PID[gw-nginx]=$!
  SERVER_LABEL[gw-nginx]="nginx proxy_pass"
  SERVER_URL[gw-nginx]="http://127.0.0.1:$port"
}

# gw_row SCEN NAME LABEL: appends "| label | req/s (range) | p50 | p99 | CPU µs/req |" (medians
# over the rounds) to GW_ROWS and keeps the medians in MED[SCEN/NAME].
gw_row() {
  local ROUNDS=$BENCH_GW_ROUNDS rs ps p9 cs
  rs=$(field_stats "$1" "$2" 1) ps=$(field_stats "$1" "$2" 2) p9=$(field_stats "$1" "$2" 3) cs=$(field_stats "$1" "$2" 6)
  MED[$1/$2]="${rs%% *} ${ps%% *} ${p9%% *} ${cs%% *}"
  GW_ROWS+=("$(awk -v l="$3" -v rs="$rs" -v ps="$ps" -v p9="$p9" -v cs="$cs" 'BEGIN {
    split(rs, R, " "); split(ps, P, " "); split(p9, Q, " "); split(cs, C, " ")
    printf "| %s | %.0f (%.0f–%.0f) | %.2f | %.2f (%.2f–%.2f) | %.0f |", l, R[1], R[2], R[3], P[1], Q[1], Q[2], Q[3], C[1] }')")
}

gw_run() {
  [[ $BENCH_GW == 1 ]] || return 0
  local path=/products/$SVC_PRODUCT_ID c r name scen BENCH_DURATION=$BENCH_GW_DURATION BENCH_CONNECTIONS body
  svc_start gw-mercato "mercato gateway" "$BENCH_PORT_GW" gateway \
    PRODUCT_SERVICE_URL="${SERVER_URL[svc-product]}" RATE_LIMIT_GLOBAL=off GATEWAY_UPSTREAM_KEEPALIVE="$BENCH_GW_KEEPALIVE"
  svc_ready gw-mercato
  gw_start_nginx
  for name in gw-mercato gw-nginx; do
    for ((r = 0; r < 100; r++)); do
      [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "${SERVER_URL[$name]}$path" || true) == 200 ]] && break
      sleep 0.1
    done
    body=$(svc_expect "$name" 200 GET "$path")
    [[ $(jq -r .id <<<"$body") == "$SVC_PRODUCT_ID" ]] || die "${SERVER_LABEL[$name]}: GET $path: wrong document"
  done
  export BENCH_METHOD=GET BENCH_BODY="" BENCH_TOKEN=""
  local WRK_SCRIPT=bench/svc/wrk/request.lua
  for c in $BENCH_GW_CONNECTIONS; do
    BENCH_CONNECTIONS=$c
    scen=gateway-c$c
    for name in svc-product gw-mercato gw-nginx; do
      log "[$scen] warm-up ${SERVER_LABEL[$name]}"
      run_wrk 2s "${SERVER_URL[$name]}$path" "$BENCH_DIR/raw/$scen-$name-warmup.txt"
    done
    for ((r = 1; r <= BENCH_GW_ROUNDS; r++)); do
      for name in svc-product gw-mercato gw-nginx; do
        log "[$scen] round $r/$BENCH_GW_ROUNDS ${SERVER_LABEL[$name]} ($BENCH_DURATION, -c$c)"
        RES[$scen/$name/$r]=$(measure "$name" "${SERVER_URL[$name]}$path" "$BENCH_DIR/raw/$scen-$name-r$r.txt")
        alive "${SERVER_PID[$name]}" || die "${SERVER_LABEL[$name]} died during the run"
        sleep "$BENCH_PAUSE"
      done
    done
    gw_row "$scen" svc-product "c=$c: product service, direct"
    gw_row "$scen" gw-mercato "c=$c: **mercato gateway** → product"
    gw_row "$scen" gw-nginx "c=$c: nginx proxy_pass → product"
    GW_ROWS+=("$(awk -v m="${MED[$scen/gw-mercato]}" -v n="${MED[$scen/gw-nginx]}" -v c="$c" 'BEGIN {
      split(m, M, " "); split(n, N, " ")
      printf "| c=%d: mercato / nginx | **%.2f×** | | p99 %.2f vs %.2f ms (%s) | %.0f vs %.0f |", c, M[1] / N[1], M[3], N[3],
        M[3] <= N[3] ? "no worse" : "worse", M[4], N[4] }')")
  done
  unset BENCH_METHOD BENCH_BODY BENCH_TOKEN
  svc_stop gw-mercato gw-nginx
  RESULTS+=("### Issue 10: the gateway in front of the product service (GET /products/{id}, cached; wrk -t$BENCH_THREADS -d$BENCH_GW_DURATION --latency, $BENCH_GW_ROUNDS interleaved rounds, medians (ranges); both proxies with $BENCH_SVC_WORKERS workers and an access log)" ""
    "| scenario | req/s | p50 ms | p99 ms | server CPU µs/req |" "| --- | ---: | ---: | ---: | ---: |" "${GW_ROWS[@]}" ""
    "Server CPU µs/req is the proxy's own (nginx: master and workers), not the product service's behind it." "")
}
