#!/usr/bin/env bash
# User-space instructions per proxied keep-alive GET, ragfleet vs nginx, counted
# with valgrind's callgrind (instructions, not seconds: repeatable whatever
# else the machine is doing). Not a test.
#
# Each proxy runs twice under callgrind, serving N1 and then N2 requests
# (curl, one keep-alive connection, sequential); the difference of the two
# totals divided by N2 - N1 cancels shutdown; the counters are zeroed after a
# warm-up request, so start-up is not counted at all.
#
#   bench/gateway/instructions.sh              # N1=500 N2=2500
#   N1=1000 N2=5000 bench/gateway/instructions.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
N1="${N1:-500}"
N2="${N2:-2500}"
NGINX="${NGINX:-/usr/sbin/nginx}"
for tool in valgrind curl "$NGINX" callgrind_annotate; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done

. "$root/bench/gateway/lib.sh"
gw_bench_setup ragfleet-gw-instr

BACKEND=127.0.0.1:18181
PROXY=127.0.0.1:18180

mkdir -p "$tmp/backend" "$tmp/nginx"
cat > "$tmp/backend/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $tmp/backend/nginx.pid;
error_log $tmp/backend/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen $BACKEND;
    location / { default_type text/plain; return 200 "hello from the backend\n"; }
  }
}
CONF
"$NGINX" -p "$tmp/backend" -c "$tmp/backend/nginx.conf" -e "$tmp/backend/error.log" &
pids+=($!)

cat > "$tmp/ragfleet.toml" <<CONF
[listen]
addr = "$PROXY"
workers = 1

[[route]]
prefix = "/"
pool = "backend"

[pool.backend]
policy = "round_robin"
servers = [{ addr = "$BACKEND" }]
CONF

# nginx as one process (no master) so callgrind sees the worker's work.
cat > "$tmp/nginx/nginx.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream backend { server $BACKEND max_fails=1 fail_timeout=10s; keepalive 128; }
  proxy_http_version 1.1;
  proxy_set_header Host \$host;
  proxy_set_header X-Real-IP \$remote_addr;
  proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
  proxy_set_header X-Forwarded-Proto \$scheme;
  proxy_set_header X-Forwarded-Host \$host;
  proxy_next_upstream error timeout http_502 http_503 http_504;
  proxy_next_upstream_tries 3;
  server {
    listen $PROXY;
    location / { proxy_pass http://backend; proxy_set_header Connection ""; }
  }
}
CONF

wait_port() {
  for _ in $(seq 1 600); do
    (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listening on $1" >&2; exit 1
}
wait_port "$BACKEND"

# $1 = name, $2 = requests; the proxy command follows. Prints the total.
count() {
  local name="$1" n="$2"; shift 2
  local out="$tmp/$name.$n.callgrind"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >"$tmp/$name.$n.log" 2>&1 &
  local pid=$!
  wait_port "$PROXY"
  curl -s -o /dev/null --fail "http://$PROXY/warm" || { echo "$name: proxy does not answer" >&2; exit 1; }
  # Start-up is not the same in every run (quanta's clock calibration under
  # the rate limiter takes 8-16 M instructions, differently each time) and
  # N2 - N1 would not cancel it: count from after the warm-up.
  callgrind_control -z "$pid" >/dev/null
  curl -s -o /dev/null --fail "http://$PROXY/warm2"
  curl -s -o /dev/null --fail "http://$PROXY/req/[1-$n]"
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
  callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }'
}

per_request() { # name, command...
  local name="$1"; shift
  local a b
  a="$(count "$name" "$N1" "$@")"
  b="$(count "$name" "$N2" "$@")"
  echo $(( (b - a) / (N2 - N1) ))
}

echo "instructions per proxied keep-alive GET (callgrind; $N1 vs $N2 requests, one connection)"
r="$(RUST_LOG=warn per_request ragfleet "$RAGFLEET" gateway --config "$tmp/ragfleet.toml")"
n="$(per_request nginx "$NGINX" -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/error.log")"
printf '%-10s %10s\n' ragfleet "$r" nginx "$n"
awk -v r="$r" -v n="$n" 'BEGIN { printf "ragfleet / nginx: %.2fx\n", r / n }'
