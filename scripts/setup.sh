#!/usr/bin/env bash
# Make a fresh machine ready to run ragfleet's tests and benchmarks:
# system packages (etcd, nginx, haproxy, wrk), the local PostgreSQL and Redis
# services, and the model files. Idempotent and quiet when all is in place.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

need_pkgs=()
command -v etcd >/dev/null || need_pkgs+=(etcd-server)
command -v etcdctl >/dev/null || need_pkgs+=(etcd-client)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_pkgs+=(nginx)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need_pkgs+=(haproxy)
command -v wrk >/dev/null || need_pkgs+=(wrk)
command -v redis-server >/dev/null || need_pkgs+=(redis-server)
# postgresql also brings the server binaries (/usr/lib/postgresql/*/bin:
# initdb, pg_ctl) the PostgreSQL-restart tests start a private server with
# (as root they run it through runuser as the package's `postgres` user).
command -v pg_ctlcluster >/dev/null || need_pkgs+=(postgresql)
command -v runuser >/dev/null || need_pkgs+=(util-linux)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "setup: installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# PostgreSQL on 127.0.0.1:5432 with trust auth and a `test` database.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  echo "setup: starting PostgreSQL"
  ver="$(ls /etc/postgresql | sort -V | tail -n1)"
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
if ! psql -h 127.0.0.1 -U postgres -lqt 2>/dev/null | cut -d'|' -f1 | grep -qw test; then
  psql -h 127.0.0.1 -U postgres -c 'CREATE DATABASE test' >/dev/null 2>&1 \
    || su postgres -c "psql -c 'CREATE DATABASE test'" >/dev/null 2>&1 || true
fi

# Redis on 127.0.0.1:6379, nothing kept on disk.
if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
  echo "setup: starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 30); do (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null && break; sleep 0.5; done
fi

# Python clients the tests drive the node with (the official OpenAI SDK).
if ! python3 -c 'import openai' 2>/dev/null; then
  echo "setup: installing the openai Python package"
  python3 -m pip install --quiet 'openai>=1.40'
fi

"$root/scripts/fetch-models.sh"
