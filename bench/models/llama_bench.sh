#!/usr/bin/env bash
# Local generation speed of SmolLM2-135M-Instruct: time to first token and
# decode tokens/s for each weight layout, side by side in one run.
# Usage: bench/models/llama_bench.sh [FORMATS] [TOKENS] [RUNS]
#   FORMATS default "native,f32,as_file,q8_0" (ratios are to the first one);
#   BENCH_PROFILE=dev|release (default release);
#   BENCH_GGUF=FILE another model (relative to the models dir unless
#   absolute), e.g. gemma3/gemma-3-270m-q4_k_m.gguf.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
models="${RAGFLEET_MODELS:-$root/models}"
profile="${BENCH_PROFILE:-release}"
cd "$root"
# --workspace: the workspace feature resolution (what the ragfleet binary runs);
# BENCH_SCOPE=package builds ragfleet-models alone (much less to compile on a
# busy machine; same code on these paths).
# BENCH_FEATURES, e.g. ragfleet-models/avx512-matmul (see its Cargo.toml).
scope="--workspace"
[ "${BENCH_SCOPE:-workspace}" = package ] && scope="-p ragfleet-models"
cargo build -q --profile "$profile" $scope --example llama_bench ${BENCH_FEATURES:+--features "$BENCH_FEATURES"}
dir="$([ "$profile" = dev ] && echo debug || echo "$profile")"
exe="${CARGO_TARGET_DIR:-$root/target}/$dir/examples/llama_bench"
echo "machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
gguf="${BENCH_GGUF:-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}"
case "$gguf" in /*) ;; *) gguf="$models/$gguf" ;; esac
echo "model: $gguf"
"$exe" "$gguf" "${1:-native,f32,as_file,q8_0}" "${2:-128}" "${3:-3}"
