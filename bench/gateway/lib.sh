# Sourced by bench/gateway/run.sh and reload.sh (after `root` is set): the
# release build, the binaries' paths and a temp dir removed on exit with
# every process listed in `pids`.
#
# Sets RAGFLEET (what runs `gateway --config FILE`: the CLI, or with
# GATEWAY_ONLY=1 the gateway library through the gateway_reload_bench
# example — same code and runtime, no release build of the model crates),
# TOOL (backends), CLIENT (the reload client), tmp and pids.
# SKIP_BUILD=1 skips the build; RAGFLEET_BIN, BENCH_TOOL and RELOAD_CLIENT
# override the paths.
gw_bench_setup() { # $1 = temp dir name prefix
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
  ulimit -n 65536 2>/dev/null || ulimit -n 16384 2>/dev/null || true
  local rel="$CARGO_TARGET_DIR/release"
  if [ -z "${SKIP_BUILD:-}" ]; then
    echo "building ragfleet (release)..." >&2
    local cli=(-p ragfleet)
    [ -n "${GATEWAY_ONLY:-}" ] && cli=()
    (cd "$root" && cargo build --release -q "${cli[@]}" -p ragfleet-gateway \
        --example gateway_bench_tool --example gateway_reload_bench)
  fi
  if [ -n "${GATEWAY_ONLY:-}" ]; then
    RAGFLEET="${RAGFLEET_BIN:-$rel/examples/gateway_reload_bench}"
  else
    RAGFLEET="${RAGFLEET_BIN:-$rel/ragfleet}"
  fi
  TOOL="${BENCH_TOOL:-$rel/examples/gateway_bench_tool}"
  CLIENT="${RELOAD_CLIENT:-$rel/examples/gateway_reload_bench}"
  tmp="$(mktemp -d "/tmp/$1.XXXXXX")"
  pids=()
  trap gw_bench_cleanup EXIT
}

gw_bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
