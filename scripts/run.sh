#!/usr/bin/env bash
# The main job in one command (README.md): fetch the model files if missing,
# build the release binary, and run the whole cluster with `ragfleet up`
# (a gateway and three nodes on one store; page http://127.0.0.1:8080/).
# Arguments go to `ragfleet up`, e.g. `scripts/run.sh --nodes 2 --max-body 128MiB`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export RAGFLEET_MODELS="${RAGFLEET_MODELS:-$root/models}"
"$root/scripts/fetch-models.sh"
cargo build --release --locked -p ragfleet
exec "${CARGO_TARGET_DIR:-$root/target}/release/ragfleet" up "$@"
