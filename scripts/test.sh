#!/usr/bin/env bash
# The test command (README.md): sets up everything a fresh machine needs, then
# checks formatting, lints, and runs every test in the workspace.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
"$root/scripts/setup.sh"
export RAGFLEET_MODELS="${RAGFLEET_MODELS:-$root/models}"
cargo fmt --all -- --check
# The compose file is valid (no Docker daemon needed for this check).
docker compose -f deploy/compose.yaml config --quiet
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked --no-fail-fast
