#!/usr/bin/env bash
# Query latency p50/p99 per retrieval mode (lexical, vector, hybrid) at 10k and
# 100k chunks, query embedding excluded. Prints a Markdown table.
#   RAG_BENCH_SIZES=10000,100000 (default)  RAGFLEET_MODELS=<dir with all-minilm-l6-v2>
set -euo pipefail
cd "$(dirname "$0")/../.."
export RAGFLEET_MODELS="${RAGFLEET_MODELS:-$PWD/models}"
exec cargo bench -p ragfleet-rag --bench query_latency
