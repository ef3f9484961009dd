#!/usr/bin/env bash
# Query latency p50/p99 per retrieval mode (lexical, vector, hybrid) at 10k and
# 100k chunks, query embedding excluded. Prints a Markdown table.
#   RAG_BENCH_SIZES=10000,100000 (default)  RAGFLEET_MODELS=<dir with all-minilm-l6-v2>
#   RAGFLEET_EVAL_DATA=<dir with squad-beir/> (default ../shared/data)
#   BENCH_PROFILE=release (default: thin LTO, a full rebuild of the
#   dependencies) or dev: the test build's profile with our own crates at
#   opt-level 3 too (dependencies are opt-level 3 in dev already), so only the
#   workspace crates rebuild. Use a separate CARGO_TARGET_DIR for it, or the
#   next `cargo test` rebuilds them back at opt-level 1.
set -euo pipefail
cd "$(dirname "$0")/../.."
export RAGFLEET_MODELS="${RAGFLEET_MODELS:-$PWD/models}"
profile="${BENCH_PROFILE:-release}"
if [ "$profile" = dev ]; then
  export CARGO_PROFILE_DEV_OPT_LEVEL=3
fi
# --workspace (only ragfleet-rag has this bench): the same feature resolution
# as the workspace build, so no dependency rebuilds.
exec cargo bench --locked --profile "$profile" --workspace --bench query_latency
