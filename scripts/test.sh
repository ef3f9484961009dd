#!/usr/bin/env bash
# The test command (README.md): sets up everything a fresh machine needs, then
# checks formatting, lints, and runs every test in the workspace.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
"$root/scripts/setup.sh"
export RAGFLEET_MODELS="${RAGFLEET_MODELS:-$root/models}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked --no-fail-fast
