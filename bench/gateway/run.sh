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
#
# nginx and haproxy run as our own processes with configs in a temp dir.
# Only 127.0.0.1 is targeted; every run is bounded by DURATION.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
WORKERS="${WORKERS:-1}"
DURATION="${DURATION:-10s}"
CONNS="${CONNS:-50}"
THREADS="${THREADS:-1}"
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
"$NGINX" -p "$tmp/backend" -c "$tmp/backend/nginx.conf" -e "$tmp/backend/error.log" &
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
RUST_LOG=warn "$RAGFLEET" gateway --config "$tmp/ragfleet.toml" &
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
RUST_LOG=warn "$RAGFLEET" gateway --config "$tmp/ragfleet-tls.toml" &
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
"$NGINX" -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/error.log" &
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
"$HAPROXY" -f "$tmp/haproxy.cfg" -db &
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

declare -A RPS P50 P99
run_wrk() {
  local name=$1 addr=$2 scheme=${3:-http}
  wrk -t"$THREADS" -c"$CONNS" -d2s "$scheme://$addr/" >/dev/null 2>&1 || true   # warm-up
  local out
  out="$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$scheme://$addr/")"
  local errs
  errs="$(echo "$out" | grep -E 'Non-2xx|Socket errors' || true)"
  [ -n "$errs" ] && echo "  $name: $errs" >&2
  RPS[$name]="$(echo "$out" | awk '/Requests\/sec/ {print $2}')"
  P50[$name]="$(to_ms "$(echo "$out" | awk '$1=="50%" {print $2}')")"
  P99[$name]="$(to_ms "$(echo "$out" | awk '$1=="99%" {print $2}')")"
}

echo
echo "== HTTP/1.1 keep-alive, small responses: wrk -t$THREADS -c$CONNS -d$DURATION, proxies with $WORKERS worker(s), $(nproc) cores =="
for t in direct:$BACKEND ragfleet:$P_RAGFLEET nginx:$P_NGINX haproxy:$P_HAPROXY; do
  run_wrk "${t%%:*}" "${t#*:}"
done
printf "%-10s %12s %10s %10s %14s %14s\n" target "req/s" "p50 ms" "p99 ms" "rps vs nginx" "p99 vs nginx"
for n in direct ragfleet nginx haproxy; do
  awk -v n="$n" -v r="${RPS[$n]}" -v a="${P50[$n]}" -v b="${P99[$n]}" -v nr="${RPS[nginx]}" -v nb="${P99[nginx]}" \
    'BEGIN{ printf "%-10s %12.0f %10.3f %10.3f %13.2fx %13.2fx\n", n, r, a, b, r/nr, b/nb }'
done
awk -v r="${RPS[ragfleet]}" -v h="${RPS[haproxy]}" -v d="${RPS[direct]}" \
  'BEGIN{ printf "ragfleet vs haproxy: %.2fx req/s; ragfleet vs direct: %.2fx req/s\n", r/h, r/d }'


echo
echo "== HTTPS (same certificate, TLS terminated by the proxy), HTTP/1.1 keep-alive: wrk -t$THREADS -c$CONNS -d$DURATION =="
run_wrk ragfleet-tls "$P_RAGFLEET_TLS" https
run_wrk nginx-tls "$P_NGINX_TLS" https
printf "%-12s %12s %10s %10s %14s %14s\n" target "req/s" "p50 ms" "p99 ms" "rps vs nginx" "p99 vs nginx"
for n in ragfleet-tls nginx-tls; do
  awk -v n="$n" -v r="${RPS[$n]}" -v a="${P50[$n]}" -v b="${P99[$n]}" -v nr="${RPS[nginx-tls]}" -v nb="${P99[nginx-tls]}" \
    'BEGIN{ printf "%-12s %12.0f %10.3f %10.3f %13.2fx %13.2fx\n", n, r, a, b, r/nr, b/nb }'
done
awk -v t="${RPS[ragfleet-tls]}" -v p="${RPS[ragfleet]}" -v nt="${RPS[nginx-tls]}" -v np="${RPS[nginx]}" \
  'BEGIN{ printf "TLS cost: ragfleet keeps %.0f%% of its plain req/s, nginx %.0f%%\n", 100*t/p, 100*nt/np }'

[ "${QUICK:-0}" = 1 ] && exit 0

# --- SSE: per-event added latency over many concurrent streams -----------------------
"$TOOL" sse-backend "$SSE_BACKEND" &
pids+=($!)
"$TOOL" ws-backend "$WS_BACKEND" &
pids+=($!)
wait_port "$SSE_BACKEND"; wait_port "$WS_BACKEND"

echo
echo "== SSE: $SSE_STREAMS concurrent streams, one event per 100 ms each, ${SSE_SECONDS}s =="
printf "%-10s %12s %12s %12s %10s\n" target "events" "p50 ms" "p99 ms" "errors"
declare -A SP50 SP99
for t in direct:$SSE_BACKEND ragfleet:$P_RAGFLEET nginx:$P_NGINX; do
  read -r ev p50 p99 errs < <("$TOOL" sse-client "${t#*:}" "$SSE_STREAMS" "$SSE_SECONDS")
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
echo "== WebSocket: resident memory per open tunnel ($WS_TUNNELS tunnels) =="
printf "%-10s %12s %12s %14s\n" target "RSS before" "RSS open" "KiB/tunnel"
for t in ragfleet:$P_RAGFLEET:$ragfleet_pid nginx:$P_NGINX:$nginx_pid; do
  IFS=: read -r name host port pid <<<"$t"
  before=$(rss_kb "$pid")
  fifo="$tmp/ws-$name"; mkfifo "$fifo"
  "$TOOL" ws-client "$host:$port" "$WS_TUNNELS" 5 >"$fifo" &
  cpid=$!
  read -r opened <"$fifo" || opened=0   # printed once every tunnel is open and echoed
  after=$(rss_kb "$pid")
  wait "$cpid" || true
  rm -f "$fifo"
  awk -v n="$name" -v b="$before" -v a="$after" -v o="$opened" \
    'BEGIN{ printf "%-10s %10d K %10d K %13.1f   (%d open)\n", n, b, a, (o>0 ? (a-b)/o : 0), o }'
done
