#!/usr/bin/env bash
# Gateway benchmark (not a test): the same wrk load (keep-alive, small
# responses) against the backend directly, through ragfleet, nginx and
# haproxy, all in one run on this machine, with the same worker count.
# Then the same load over HTTPS (TLS terminated by ragfleet and by nginx, same
# certificate made here with openssl), and (unless QUICK=1) per-event added
# latency over many concurrent SSE streams and resident memory per open
# WebSocket tunnel, ragfleet vs nginx.
#
#   bench/gateway/run.sh            # defaults below
#   WORKERS=2 DURATION=15s CONNS=100 SSE_STREAMS=1000 WS_TUNNELS=1000 bench/gateway/run.sh
#   GATEWAY_ONLY=1 bench/gateway/run.sh   # the gateway library via an example: no release build of the CLI
#   ROUNDS=5 bench/gateway/run.sh          # rounds of the throughput runs (medians reported)
#
# The throughput runs go in ROUNDS rounds (default 3), the targets in a
# rotating order, and report each target's median: one 10 s run on a
# 2-core VM swings by 10-20 %. With PIN=1 (default when WORKERS=1 and
# there are 2+ cores) wrk runs on CPU 0 and the backend and the proxies on
# CPU 1, so every proxy shares its core with the same backend the same way.
#
# nginx and haproxy run as our own processes with configs in a temp dir.
# Only 127.0.0.1 is targeted; every run is bounded by DURATION.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
WORKERS="${WORKERS:-1}"
DURATION="${DURATION:-10s}"
CONNS="${CONNS:-50}"
THREADS="${THREADS:-1}"
ROUNDS="${ROUNDS:-3}"
if [ -z "${PIN:-}" ]; then
  PIN=0
  [ "$WORKERS" = 1 ] && [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null && PIN=1
fi
# pin_load / pin_server: command prefixes for the load generator and the servers.
if [ "$PIN" = 1 ]; then pin_load=(taskset -c 0); pin_server=(taskset -c 1); else pin_load=(); pin_server=(); fi
SSE_STREAMS="${SSE_STREAMS:-1000}"
SSE_SECONDS="${SSE_SECONDS:-10}"
WS_TUNNELS="${WS_TUNNELS:-1000}"
NGINX="${NGINX:-/usr/sbin/nginx}"
HAPROXY="${HAPROXY:-/usr/sbin/haproxy}"
for tool in wrk "$NGINX" "$HAPROXY" openssl; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install wrk nginx haproxy)" >&2; exit 1; }
done

. "$root/bench/gateway/lib.sh"
gw_bench_setup ragfleet-gw-bench

BACKEND=127.0.0.1:18081
P_RAGFLEET=127.0.0.1:18080
P_NGINX=127.0.0.1:18082
P_HAPROXY=127.0.0.1:18083
P_RAGFLEET_TLS=127.0.0.1:18084
P_NGINX_TLS=127.0.0.1:18085
SSE_BACKEND=127.0.0.1:18091
WS_BACKEND=127.0.0.1:18092

# --- backend: nginx answering a small body, in its own process ----------------
mkdir -p "$tmp/backend" "$tmp/nginx"
cat > "$tmp/backend/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $tmp/backend/nginx.pid;
error_log $tmp/backend/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen $BACKEND reuseport backlog=4096;
    location / { default_type text/plain; return 200 "hello from the backend\n"; }
  }
}
CONF
"${pin_server[@]}" "$NGINX" -p "$tmp/backend" -c "$tmp/backend/nginx.conf" -e "$tmp/backend/error.log" &
pids+=($!)

# --- one certificate for both TLS terminators (P-256, like most sites) -----------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -keyout "$tmp/tls.key" -out "$tmp/tls.crt" -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null

# --- ragfleet -------------------------------------------------------------------
cat > "$tmp/ragfleet.toml" <<CONF
[listen]
addr = "$P_RAGFLEET"
workers = $WORKERS

[[route]]
prefix = "/"
pool = "backend"

[[route]]
prefix = "/sse"
pool = "sse"

[[route]]
prefix = "/ws"
pool = "ws"

[pool.backend]
policy = "round_robin"
servers = [{ addr = "$BACKEND" }]

[pool.sse]
policy = "round_robin"
servers = [{ addr = "$SSE_BACKEND" }]

[pool.ws]
policy = "round_robin"
servers = [{ addr = "$WS_BACKEND" }]
CONF
RUST_LOG=warn "${pin_server[@]}" "$RAGFLEET" gateway --config "$tmp/ragfleet.toml" &
ragfleet_pid=$!
pids+=($ragfleet_pid)

# ragfleet terminating TLS (HTTP/1.1 for wrk; h2 offered by ALPN as well)
cat > "$tmp/ragfleet-tls.toml" <<CONF
[listen]
addr = "$P_RAGFLEET_TLS"
workers = $WORKERS

[tls]
[[tls.certificate]]
cert = "$tmp/tls.crt"
key = "$tmp/tls.key"

[[route]]
prefix = "/"
pool = "backend"

[pool.backend]
policy = "round_robin"
servers = [{ addr = "$BACKEND" }]
CONF
RUST_LOG=warn "${pin_server[@]}" "$RAGFLEET" gateway --config "$tmp/ragfleet-tls.toml" &
pids+=($!)

# --- nginx as the proxy, configured like ragfleet ---------------------------------
cat > "$tmp/nginx/nginx.conf" <<CONF
worker_processes $WORKERS;
daemon off;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_requests 1000000;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' ''; }
  upstream backend { server $BACKEND max_fails=1 fail_timeout=10s; keepalive 128; }
  upstream sse { server $SSE_BACKEND; keepalive 128; }
  upstream ws { server $WS_BACKEND; }
  proxy_http_version 1.1;
  proxy_set_header Host \$host;
  proxy_set_header X-Real-IP \$remote_addr;
  proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
  proxy_set_header X-Forwarded-Proto \$scheme;
  proxy_set_header X-Forwarded-Host \$host;
  proxy_next_upstream error timeout http_502 http_503 http_504;
  proxy_next_upstream_tries 3;
  server {
    listen $P_NGINX reuseport backlog=4096;
    location / { proxy_pass http://backend; proxy_set_header Connection ""; }
    location /sse { proxy_pass http://sse; proxy_set_header Connection ""; proxy_buffering off; proxy_read_timeout 60s; }
    location /ws { proxy_pass http://ws; proxy_set_header Upgrade \$http_upgrade; proxy_set_header Connection \$connection_upgrade; proxy_read_timeout 600s; }
  }
  server {
    listen $P_NGINX_TLS ssl reuseport backlog=4096;
    ssl_certificate $tmp/tls.crt;
    ssl_certificate_key $tmp/tls.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    location / { proxy_pass http://backend; proxy_set_header Connection ""; }
  }
}
CONF
"${pin_server[@]}" "$NGINX" -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/error.log" &
nginx_pid=$!
pids+=($nginx_pid)

# --- haproxy, configured alike ------------------------------------------------------
cat > "$tmp/haproxy.cfg" <<CONF
global
  nbthread $WORKERS
  maxconn 6000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option forwardfor
  http-reuse always
frontend fe
  bind $P_HAPROXY
  http-request set-header X-Forwarded-Proto http
  default_backend be
backend be
  retries 2
  option redispatch
  server b1 $BACKEND check inter 5s
CONF
"${pin_server[@]}" "$HAPROXY" -f "$tmp/haproxy.cfg" -db &
pids+=($!)

wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listening on $1" >&2; exit 1
}
for p in $BACKEND $P_RAGFLEET $P_NGINX $P_HAPROXY $P_RAGFLEET_TLS $P_NGINX_TLS; do wait_port "$p"; done

# Convert wrk's "1.23ms" / "456.00us" / "1.01s" into milliseconds.
to_ms() { awk -v v="$1" 'BEGIN{ n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /ms$/) n=n; else if (v ~ /s$/) n*=1000; printf "%.3f", n }'; }

declare -A RPS P50 P99 ALL
# One wrk run; appends "rps p50 p99" to ALL[name].
wrk_once() {
  local name=$1 addr=$2 scheme=${3:-http}
  local out errs
  out="$("${pin_load[@]}" wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$scheme://$addr/")"
  errs="$(echo "$out" | grep -E 'Non-2xx|Socket errors' || true)"
  [ -n "$errs" ] && echo "  $name: $errs" >&2
  ALL[$name]+="$(echo "$out" | awk '/Requests\/sec/ {print $2}') $(to_ms "$(echo "$out" | awk '$1=="50%" {print $2}')") $(to_ms "$(echo "$out" | awk '$1=="99%" {print $2}')");"
}
# Median of field $2 (1 rps, 2 p50, 3 p99) over the runs in $1.
median_of() { echo "$1" | tr ';' '\n' | awk -v f="$2" 'NF {print $f}' | sort -g | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
# Rounds over "name:addr[:scheme]" targets, order rotating each round; medians into RPS/P50/P99.
run_rounds() {
  local targets=("$@") n=${#targets[@]} r i t
  for t in "${targets[@]}"; do
    IFS=: read -r name host port scheme <<<"$t"
    "${pin_load[@]}" wrk -t"$THREADS" -c"$CONNS" -d2s "${scheme:-http}://$host:$port/" >/dev/null 2>&1 || true   # warm-up
  done
  for ((r = 0; r < ROUNDS; r++)); do
    for ((i = 0; i < n; i++)); do
      IFS=: read -r name host port scheme <<<"${targets[(i + r) % n]}"
      wrk_once "$name" "$host:$port" "${scheme:-http}"
    done
  done
  for t in "${targets[@]}"; do
    name=${t%%:*}
    RPS[$name]=$(median_of "${ALL[$name]}" 1)
    P50[$name]=$(median_of "${ALL[$name]}" 2)
    P99[$name]=$(median_of "${ALL[$name]}" 3)
  done
}

echo
echo "== HTTP/1.1 keep-alive, small responses: wrk -t$THREADS -c$CONNS -d$DURATION x $ROUNDS rounds (medians), proxies with $WORKERS worker(s), $(nproc) cores, pinned: $PIN =="
run_rounds direct:$BACKEND ragfleet:$P_RAGFLEET nginx:$P_NGINX haproxy:$P_HAPROXY
printf "%-10s %12s %10s %10s %14s %14s\n" target "req/s" "p50 ms" "p99 ms" "rps vs nginx" "p99 vs nginx"
for n in direct ragfleet nginx haproxy; do
  awk -v n="$n" -v r="${RPS[$n]}" -v a="${P50[$n]}" -v b="${P99[$n]}" -v nr="${RPS[nginx]}" -v nb="${P99[nginx]}" \
    'BEGIN{ printf "%-10s %12.0f %10.3f %10.3f %13.2fx %13.2fx\n", n, r, a, b, r/nr, b/nb }'
done
for n in ragfleet nginx haproxy; do echo "  $n rounds (req/s p50 p99): ${ALL[$n]}"; done
awk -v r="${RPS[ragfleet]}" -v h="${RPS[haproxy]}" -v d="${RPS[direct]}" \
  'BEGIN{ printf "ragfleet vs haproxy: %.2fx req/s; ragfleet vs direct: %.2fx req/s\n", r/h, r/d }'

echo
echo "== HTTPS (same certificate, TLS terminated by the proxy), HTTP/1.1 keep-alive: wrk -t$THREADS -c$CONNS -d$DURATION x $ROUNDS rounds (medians) =="
run_rounds ragfleet-tls:$P_RAGFLEET_TLS:https nginx-tls:$P_NGINX_TLS:https
printf "%-12s %12s %10s %10s %14s %14s\n" target "req/s" "p50 ms" "p99 ms" "rps vs nginx" "p99 vs nginx"
for n in ragfleet-tls nginx-tls; do
  awk -v n="$n" -v r="${RPS[$n]}" -v a="${P50[$n]}" -v b="${P99[$n]}" -v nr="${RPS[nginx-tls]}" -v nb="${P99[nginx-tls]}" \
    'BEGIN{ printf "%-12s %12.0f %10.3f %10.3f %13.2fx %13.2fx\n", n, r, a, b, r/nr, b/nb }'
done
awk -v t="${RPS[ragfleet-tls]}" -v p="${RPS[ragfleet]}" -v nt="${RPS[nginx-tls]}" -v np="${RPS[nginx]}" \
  'BEGIN{ printf "TLS cost: ragfleet keeps %.0f%% of its plain req/s, nginx %.0f%%\n", 100*t/p, 100*nt/np }'

[ "${QUICK:-0}" = 1 ] && exit 0

# --- SSE: per-event added latency over many concurrent streams -----------------------
"${pin_server[@]}" "$TOOL" sse-backend "$SSE_BACKEND" &
pids+=($!)
"${pin_server[@]}" "$TOOL" ws-backend "$WS_BACKEND" &
pids+=($!)
wait_port "$SSE_BACKEND"; wait_port "$WS_BACKEND"

echo
echo "== SSE: $SSE_STREAMS concurrent streams, one event per 100 ms each, ${SSE_SECONDS}s =="
printf "%-10s %12s %12s %12s %10s\n" target "events" "p50 ms" "p99 ms" "errors"
declare -A SP50 SP99
for t in direct:$SSE_BACKEND ragfleet:$P_RAGFLEET nginx:$P_NGINX; do
  read -r ev p50 p99 errs < <("${pin_load[@]}" "$TOOL" sse-client "${t#*:}" "$SSE_STREAMS" "$SSE_SECONDS")
  SP50[${t%%:*}]=$p50; SP99[${t%%:*}]=$p99
  printf "%-10s %12s %12s %12s %10s\n" "${t%%:*}" "$ev" "$p50" "$p99" "$errs"
done
for n in ragfleet nginx; do
  awk -v n="$n" -v a="${SP50[$n]}" -v b="${SP99[$n]}" -v da="${SP50[direct]}" -v db="${SP99[direct]}" \
    'BEGIN{ printf "%-10s added latency per event: p50 %.3f ms, p99 %.3f ms\n", n, a-da, b-db }'
done

# --- WebSocket: resident memory per open tunnel ----------------------------------------
rss_kb() { # sum of VmRSS over a process and its children (nginx workers)
  local total=0 p
  for p in "$@" $(pgrep -P "$1" 2>/dev/null || true); do
    total=$((total + $(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
  done
  echo "$total"
}
echo
echo "== WebSocket: resident memory per open tunnel ($WS_TUNNELS tunnels: RSS growth from the first half open to all open) =="
printf "%-10s %12s %12s %14s\n" target "RSS half" "RSS all" "KiB/tunnel"
half=$((WS_TUNNELS / 2))
for t in ragfleet:$P_RAGFLEET:$ragfleet_pid nginx:$P_NGINX:$nginx_pid; do
  IFS=: read -r name host port pid <<<"$t"
  # Two clients of half the tunnels each; the first holds its tunnels while
  # the second opens its own. The difference between the two readings is
  # what the second half costs, whatever the process held before.
  fifo1="$tmp/ws-$name-1"; fifo2="$tmp/ws-$name-2"; mkfifo "$fifo1" "$fifo2"
  "${pin_load[@]}" "$TOOL" ws-client "$host:$port" "$half" 12 >"$fifo1" &
  c1=$!
  read -r opened1 <"$fifo1" || opened1=0
  sleep 1
  mid=$(rss_kb "$pid")
  "${pin_load[@]}" "$TOOL" ws-client "$host:$port" "$half" 4 >"$fifo2" &
  c2=$!
  read -r opened2 <"$fifo2" || opened2=0
  sleep 1
  after=$(rss_kb "$pid")
  wait "$c1" "$c2" || true
  rm -f "$fifo1" "$fifo2"
  awk -v n="$name" -v b="$mid" -v a="$after" -v o="$opened2" -v o1="$opened1" \
    'BEGIN{ printf "%-10s %10d K %10d K %13.1f   (%d + %d open)\n", n, b, a, (o>0 ? (a-b)/o : 0), o1, o }'
done
