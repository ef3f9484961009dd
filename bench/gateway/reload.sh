#!/usr/bin/env bash
# Reload under load (not a test; run by hand): N SSE streams and N WebSocket
# tunnels are held open through the proxy while its configuration is reloaded
# several times, each reload moving the upstreams to another backend (so the
# open streams' server is removed from the configuration). Reports the
# streams and tunnels dropped, ragfleet (SIGHUP) beside nginx (nginx -s reload,
# with worker_shutdown_timeout as production configs set it). ragfleet's
# target is 0.
#
#   bench/gateway/reload.sh
#   STREAMS=500 TUNNELS=500 HOLD=30 RELOADS=5 NGINX_SHUTDOWN_TIMEOUT=5s bench/gateway/reload.sh
#   GATEWAY_ONLY=1 bench/gateway/reload.sh   # the gateway library with SIGHUP reloads, without building the CLI
#
# Everything runs on 127.0.0.1 as our own processes in a temp dir.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
STREAMS="${STREAMS:-200}"
TUNNELS="${TUNNELS:-200}"
HOLD="${HOLD:-20}"                      # seconds each stream/tunnel is held
RELOADS="${RELOADS:-3}"
NGINX_SHUTDOWN_TIMEOUT="${NGINX_SHUTDOWN_TIMEOUT:-5s}"
WORKERS="${WORKERS:-1}"
NGINX="${NGINX:-/usr/sbin/nginx}"
command -v "$NGINX" >/dev/null || { echo "missing nginx (apt-get install nginx)" >&2; exit 1; }

. "$root/bench/gateway/lib.sh"
gw_bench_setup ragfleet-reload-bench

P_RAGFLEET=127.0.0.1:18280
P_NGINX=127.0.0.1:18282
SSE_A=127.0.0.1:18291; SSE_B=127.0.0.1:18292
WS_A=127.0.0.1:18293;  WS_B=127.0.0.1:18294

for b in $SSE_A $SSE_B; do "$TOOL" sse-backend "$b" & pids+=($!); done
for b in $WS_A $WS_B; do "$TOOL" ws-backend "$b" & pids+=($!); done

ragfleet_conf() { # $1 = sse backend, $2 = ws backend
  cat > "$tmp/ragfleet.toml.new" <<CONF
[listen]
addr = "$P_RAGFLEET"
workers = $WORKERS
[reload]
watch = false
[[route]]
prefix = "/sse"
pool = "sse"
[[route]]
prefix = "/ws"
pool = "ws"
[pool.sse]
policy = "round_robin"
servers = [{ addr = "$1" }]
[pool.ws]
policy = "round_robin"
servers = [{ addr = "$2" }]
[pool.ws.timeouts]
websocket_idle = "10m"
CONF
  mv "$tmp/ragfleet.toml.new" "$tmp/ragfleet.toml"
}

mkdir -p "$tmp/nginx"
nginx_conf() { # $1 = sse backend, $2 = ws backend
  cat > "$tmp/nginx/nginx.conf" <<CONF
worker_processes $WORKERS;
daemon off;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log warn;
worker_rlimit_nofile 65536;
worker_shutdown_timeout $NGINX_SHUTDOWN_TIMEOUT;
events { worker_connections 16384; }
http {
  access_log off;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' ''; }
  upstream sse { server $1; keepalive 128; }
  upstream ws { server $2; }
  proxy_http_version 1.1;
  server {
    listen $P_NGINX backlog=4096;
    location /sse { proxy_pass http://sse; proxy_set_header Connection ""; proxy_buffering off; proxy_read_timeout 600s; }
    location /ws { proxy_pass http://ws; proxy_set_header Upgrade \$http_upgrade; proxy_set_header Connection \$connection_upgrade; proxy_read_timeout 600s; }
  }
}
CONF
}

ragfleet_conf $SSE_A $WS_A
RUST_LOG=warn "$RAGFLEET" gateway --config "$tmp/ragfleet.toml" &
ragfleet_pid=$!
pids+=($ragfleet_pid)
nginx_conf $SSE_A $WS_A
"$NGINX" -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/error.log" &
pids+=($!)

wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listening on $1" >&2; exit 1
}
for p in $SSE_A $SSE_B $WS_A $WS_B $P_RAGFLEET $P_NGINX; do wait_port "$p"; done

# Reload $RELOADS times while the client holds its streams, alternating the
# backends so every reload removes the servers the open streams are on.
reload_loop() { # $1 = name
  sleep 3   # let every stream and tunnel open first
  for i in $(seq 1 "$RELOADS"); do
    if [ $((i % 2)) -eq 1 ]; then s=$SSE_B; w=$WS_B; else s=$SSE_A; w=$WS_A; fi
    case $1 in
      ragfleet) ragfleet_conf $s $w; kill -HUP "$ragfleet_pid" ;;
      nginx) nginx_conf $s $w; "$NGINX" -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/error.log" -s reload ;;
    esac
    sleep 2
  done
}

echo
echo "== reload under load: $STREAMS SSE streams + $TUNNELS WebSocket tunnels held ${HOLD}s, $RELOADS reloads (nginx worker_shutdown_timeout $NGINX_SHUTDOWN_TIMEOUT) =="
printf "%-10s %12s %12s %12s %12s\n" target "SSE open" "SSE dropped" "WS open" "WS dropped"
for t in ragfleet:$P_RAGFLEET nginx:$P_NGINX; do
  name=${t%%:*}; addr=${t#*:}
  reload_loop "$name" &
  rl=$!
  read -r so sd wo wd < <("$CLIENT" "$addr" "$STREAMS" "$TUNNELS" "$HOLD")
  wait "$rl" || true
  printf "%-10s %12s %12s %12s %12s\n" "$name" "$so" "$sd" "$wo" "$wd"
done
echo "(dropped = ended, broke or stalled 3 s before the ${HOLD}s hold was over; ragfleet target: 0)"
