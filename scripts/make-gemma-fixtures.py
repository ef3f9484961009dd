#!/usr/bin/env python3
"""Compute the Gemma 3 270M reference fixture for crates/models tests, ONCE,
with a different implementation than ragfleet's (never run in CI):

  crates/models/tests/fixtures/gemma3_reference.json
      - token ids of fixed texts (markup, digits, non-ASCII) from the
        `transformers` tokenizer converted from the GGUF's vocabulary
        (AutoTokenizer.from_pretrained(dir, gguf_file=...)), without BOS;
      - the first 16 greedy token ids after a fixed prompt from
        `transformers`' Gemma 3 forward pass (torch, CPU, float32) over the
        GGUF's weights dequantised by the `gguf` package.

llama-cpp-python ships no wheel for this machine (it needs cmake to build),
so transformers is the reference forward pass.

Usage (in a venv outside the repo):
  pip install gguf tokenizers transformers accelerate sentencepiece protobuf torch numpy
  python scripts/make-gemma-fixtures.py
The models directory is $RAGFLEET_MODELS or <repo>/models (scripts/fetch-models.sh).
"""
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.environ.get("RAGFLEET_MODELS", os.path.join(ROOT, "models"))
FIXTURE = os.path.join(ROOT, "crates", "models", "tests", "fixtures", "gemma3_reference.json")
DIR = os.path.join(MODELS, "gemma3")
FILE = "gemma-3-270m-q4_k_m.gguf"

TEXTS = [
    "<start_of_turn>user\nWhat is 12345 + 6.78? Answer in <b>bold</b>.<end_of_turn>\n<start_of_turn>model\n",
    "Ünïcödé: café, naïve, Straße, 東京は日本の首都です。 Привет, мир! 🚀",
    "Numbers like 3.14159, 2026-11-24 and $1,234.56 are tokenised too.",
    "fn main() {\n    let x: Vec<u8> = vec![0x0A, 255];\n\tprintln!(\"{x:?}\");\n}\n\n\n",
    "  two  spaces   and three, trailing ",
    "<div class=\"note\">HTML &amp; markup</div>",
]

PROMPT = "The capital of France is Paris. The capital of Germany is"
STEPS = 16


def main():
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(DIR, gguf_file=FILE)
    texts = [{"text": t, "ids": tok(t, add_special_tokens=False)["input_ids"]} for t in TEXTS]

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(DIR, gguf_file=FILE, dtype=torch.float32)
    model.eval()
    prompt_ids = [tok.bos_token_id] + tok(PROMPT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt_ids]),
            max_new_tokens=STEPS,
            min_new_tokens=STEPS,
            do_sample=False,
        )
    greedy = out[0, len(prompt_ids):].tolist()
    fx = {
        "model": FILE,
        "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "generator": f"transformers {transformers.__version__}, torch {torch.__version__} (float32, CPU)",
        "texts": texts,
        "greedy": {
            "prompt": PROMPT,
            "prompt_ids": prompt_ids,
            "ids": greedy,
            "text": tok.decode(greedy),
        },
    }
    with open(FIXTURE, "w") as f:
        json.dump(fx, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(json.dumps(fx["greedy"], ensure_ascii=False))


if __name__ == "__main__":
    main()
