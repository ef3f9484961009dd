#!/usr/bin/env python3
"""Compute reference fixtures for crates/models tests, ONCE, with the reference
implementations (never by ragfleet itself):

  crates/models/tests/fixtures/minilm_embeddings.json
      all-MiniLM-L6-v2 sentence embeddings from sentence-transformers
      (mean pooling over the attention mask + L2 normalisation).
  crates/models/tests/fixtures/smollm2_tokens.json
      SmolLM2-135M-Instruct token ids from the `transformers` GGUF tokenizer
      conversion (AutoTokenizer.from_pretrained(dir, gguf_file=...)), plus the
      chat template rendered by transformers' apply_chat_template.

Usage (in a venv with: pip install sentence-transformers gguf transformers tokenizers):
  python scripts/make-model-fixtures.py [embeddings|tokens|all]
The models directory is $RAGFLEET_MODELS or <repo>/models (scripts/fetch-models.sh).
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.environ.get("RAGFLEET_MODELS", os.path.join(ROOT, "models"))
FIXTURES = os.path.join(ROOT, "crates", "models", "tests", "fixtures")

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Retrieval-augmented generation grounds answers in documents.",
    "Ünïcödé: café, naïve, Straße, 東京は日本の首都です。 Привет, мир! 🚀",
    ".",
    "   ",
    "a",
    "Numbers like 3.14159, 2026-11-24 and $1,234.56 are tokenised too.",
    # Long enough to be truncated at the model's 256 word pieces.
    " ".join(
        f"Sentence {i} talks about load balancers, embeddings and vector indexes."
        for i in range(60)
    ),
    "Short query?",
    "HNSW graphs trade memory for logarithmic search; BM25 scores term frequency.",
]


def embeddings():
    from sentence_transformers import SentenceTransformer

    path = os.path.join(MODELS, "all-minilm-l6-v2")
    model = SentenceTransformer(path, device="cpu")
    vecs = model.encode(SENTENCES, batch_size=4, convert_to_numpy=True, normalize_embeddings=False)
    tok = model.tokenizer
    out = {
        "model": "all-minilm-l6-v2",
        "generator": "sentence-transformers " + __import__("sentence_transformers").__version__,
        "max_seq_length": model.max_seq_length,
        "items": [
            {
                "text": s,
                # Word pieces without special tokens, untruncated (for count_tokens).
                "n_tokens": len(tok(s, add_special_tokens=False)["input_ids"]),
                "embedding": [float(x) for x in v],
            }
            for s, v in zip(SENTENCES, vecs)
        ],
    }
    write("minilm_embeddings.json", out)


TOKEN_TEXTS = [
    "Hello, world!",
    "<|im_start|>user\nWhat is 12345 + 678?<|im_end|>\n<|im_start|>assistant\n",
    "1234567890 3.14159 2026-11-24",
    "Ünïcödé: café, naïve, Straße, 東京は日本の首都です。 Привет, мир! 🚀",
    "  leading spaces and\ttabs\n\nnew lines  ",
    "def f(x):\n    return x**2  # squared",
    "don't won't I'm they're",
    "",
]

CHATS = [
    [{"role": "user", "content": "Hi!"}],
    [
        {"role": "system", "content": "You answer from the sources [1], [2]."},
        {"role": "user", "content": "What is RAG?"},
        {"role": "assistant", "content": "Retrieval-augmented generation [1]."},
        {"role": "user", "content": "And BM25?"},
    ],
]


def tokens():
    from transformers import AutoTokenizer

    d = os.path.join(MODELS, "smollm2")
    tok = AutoTokenizer.from_pretrained(d, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    import transformers

    out = {
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "generator": "transformers " + transformers.__version__ + " GGUF tokenizer conversion",
        "texts": [
            {"text": t, "ids": tok(t, add_special_tokens=False)["input_ids"]} for t in TOKEN_TEXTS
        ],
        "chats": [
            {
                "messages": c,
                "rendered": tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True),
            }
            for c in CHATS
        ],
    }
    for c in out["chats"]:
        c["ids"] = tok(c["rendered"], add_special_tokens=False)["input_ids"]
    write("smollm2_tokens.json", out)


def write(name, obj):
    os.makedirs(FIXTURES, exist_ok=True)
    p = os.path.join(FIXTURES, name)
    with open(p, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("wrote", p)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    if what in ("embeddings", "all"):
        embeddings()
    if what in ("tokens", "all"):
        tokens()
