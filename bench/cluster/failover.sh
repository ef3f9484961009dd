#!/usr/bin/env bash
# Failover benchmark (run by hand, not a test): three `ragfleet node`
# processes on one shared store, a steady load of searches and chats, and
# one node SIGKILLed mid-run — first behind the ragfleet gateway (active
# /ready checks every second + passive checks, p2c, retries before the first
# byte), then behind nginx with passive checks only (max_fails /
# fail_timeout, proxy_next_upstream), on the same nodes. Both repeat a chat
# (POST) on another node when the first failed before answering
# (`retries.non_idempotent`, `proxy_next_upstream ... non_idempotent`):
# the nodes are interchangeable and the answer is not yet sent. Prints, per proxy:
# requests, failures, p50/p99, p99 in the 5 s after the kill, the time from
# the kill to the proxy marking the node down (from its log) and to the last
# failed request.
#
#   bench/cluster/failover.sh
#   DURATION=30 CONC=16 KILL_AT=10 NGINX_FAIL_TIMEOUT=10s bench/cluster/failover.sh
#
# Needs: the models (scripts/fetch-models.sh), nginx, python3. Builds the
# release binary unless SKIP_BUILD=1 (RAGFLEET_BIN overrides the path).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
DURATION="${DURATION:-20}"
CONC="${CONC:-8}"
KILL_AT="${KILL_AT:-8}"
NGINX="${NGINX:-/usr/sbin/nginx}"
NGINX_MAX_FAILS="${NGINX_MAX_FAILS:-1}"
NGINX_FAIL_TIMEOUT="${NGINX_FAIL_TIMEOUT:-10s}"
MODELS="${RAGFLEET_MODELS:-$root/models}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"

command -v "$NGINX" >/dev/null || { echo "missing nginx (apt-get install nginx)" >&2; exit 1; }
[ -d "$MODELS/all-minilm-l6-v2" ] || { echo "missing models in $MODELS (scripts/fetch-models.sh)" >&2; exit 1; }
if [ -z "${SKIP_BUILD:-}" ]; then
  echo "building ragfleet (release)..." >&2
  (cd "$root" && cargo build --release -q -p ragfleet)
fi
RAGFLEET="${RAGFLEET_BIN:-$CARGO_TARGET_DIR/release/ragfleet}"

tmp="$(mktemp -d /tmp/ragfleet-failover.XXXXXX)"
declare -A node_pid
pids=()
cleanup() {
  for p in "${pids[@]}" "${node_pid[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() { # url
  for _ in $(seq 1 600); do
    curl -fsS -o /dev/null "$1/ready" 2>/dev/null && return 0
    sleep 0.2
  done
  echo "not ready: $1" >&2; return 1
}

declare -A node_port
start_node() { # i
  local i=$1
  "$RAGFLEET" node --listen "127.0.0.1:${node_port[$i]}" --data "$tmp/node-$i" \
    --models "$MODELS" --node-id "node-$i" --store-url "sqlite://$tmp/store.db" \
    --no-auth >>"$tmp/node-$i.log" 2>&1 &
  node_pid[$i]=$!
}

for i in 1 2 3; do node_port[$i]="$(free_port)"; done
start_node 1; wait_ready "http://127.0.0.1:${node_port[1]}"
start_node 2; start_node 3
wait_ready "http://127.0.0.1:${node_port[2]}"; wait_ready "http://127.0.0.1:${node_port[3]}"
curl -fsS -o /dev/null -H 'content-type: application/json' \
  -d '{"id":"zorblax","title":"Zorblax reactor","text":"The zorblax reactor on Kepler station runs on liquid helium."}' \
  "http://127.0.0.1:${node_port[1]}/api/v1/documents"
sleep 1

P_RAGFLEET="$(free_port)"; P_NGINX="$(free_port)"
servers=""; upstreams=""
for i in 1 2 3; do
  servers+="  { addr = \"127.0.0.1:${node_port[$i]}\" },"$'\n'
  upstreams+="    server 127.0.0.1:${node_port[$i]} max_fails=$NGINX_MAX_FAILS fail_timeout=$NGINX_FAIL_TIMEOUT;"$'\n'
done
cat > "$tmp/gateway.toml" <<CONF
[listen]
addr = "127.0.0.1:$P_RAGFLEET"
[[route]]
prefix = "/"
pool = "nodes"
[pool.nodes]
policy = "p2c"
max_fails = 1
fail_timeout = "3s"
servers = [
$servers]
[pool.nodes.health]
path = "/ready"
interval = "1s"
timeout = "1s"
rise = 1
fall = 1
[pool.nodes.retries]
non_idempotent = true
[pool.nodes.timeouts]
connect = "1s"
CONF
mkdir -p "$tmp/nginx"
cat > "$tmp/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream nodes {
$upstreams    keepalive 64;
  }
  server {
    listen 127.0.0.1:$P_NGINX;
    location / {
      proxy_pass http://nodes;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_connect_timeout 1s;
      proxy_next_upstream error timeout http_502 http_503 non_idempotent;
    }
  }
}
CONF

victim=3
run_one() { # name url log
  local name=$1 url=$2 log=$3
  wait_ready "$url"
  python3 "$root/bench/cluster/load.py" --url "$url" --duration "$DURATION" --conc "$CONC" \
    --kill-at "$KILL_AT" --kill-pid "${node_pid[$victim]}" > "$tmp/$name.json"
  wait "${node_pid[$victim]}" 2>/dev/null || true
  # Time from the kill to the proxy's first "down" line about the victim.
  python3 - "$tmp/$name.json" "$log" "127.0.0.1:${node_port[$victim]}" "$name" <<'PY'
import json, re, sys, datetime
res = json.load(open(sys.argv[1])); log = sys.argv[2]; victim = sys.argv[3]; name = sys.argv[4]
k = res.get("kill_epoch"); down = None
for line in open(log, errors="replace"):
    if victim not in line or not re.search(r"down|disabled|unhealthy|no live", line, re.I):
        continue
    m = re.search(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z", line)
    if m:
        t = datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc).timestamp()
    else:
        m = re.search(r"(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d)", line)
        if not m:
            continue
        t = datetime.datetime.strptime(m.group(1), "%Y/%m/%d %H:%M:%S").astimezone().timestamp()
    if k and t >= k - 1:
        down = round(max(0.0, t - k), 3); break
res["marked_down_after_s"] = down
res["proxy"] = name
json.dump(res, open(sys.argv[1], "w"))
PY
  start_node "$victim"; wait_ready "http://127.0.0.1:${node_port[$victim]}"
  sleep 2
}

"$RAGFLEET" gateway --config "$tmp/gateway.toml" >>"$tmp/gateway.log" 2>&1 &
pids+=($!)
run_one ragfleet "http://127.0.0.1:$P_RAGFLEET" "$tmp/gateway.log"
"$NGINX" -c "$tmp/nginx/nginx.conf" -p "$tmp/nginx" >>"$tmp/nginx/stdout.log" 2>&1 &
pids+=($!)
run_one nginx "http://127.0.0.1:$P_NGINX" "$tmp/nginx/error.log"

echo
echo "failover: 3 nodes, ${CONC} clients (GET search + POST chat, extractive), ${DURATION} s, SIGKILL node-$victim at ${KILL_AT} s"
python3 - "$tmp/ragfleet.json" "$tmp/nginx.json" <<'PY'
import json, sys
rows = [json.load(open(p)) for p in sys.argv[1:]]
cols = [("proxy", "proxy"), ("requests", "requests"), ("failures", "failures"), ("rps", "req/s"),
        ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("p99_kill_window_ms", "p99 kill+5s ms"),
        ("marked_down_after_s", "marked down s"), ("last_failure_after_kill_s", "last failure s")]
w = [max(len(h), *(len(str(r.get(k))) for r in rows)) for k, h in cols]
print("  ".join(h.ljust(x) for (k, h), x in zip(cols, w)))
for r in rows:
    print("  ".join(str(r.get(k)).ljust(x) for (k, h), x in zip(cols, w)))
for r in rows:
    if r["failure_examples"]:
        print(f"{r['proxy']} failures, e.g.: {r['failure_examples']}")
PY
