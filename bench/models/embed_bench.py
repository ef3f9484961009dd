#!/usr/bin/env python3
"""Ingestion embedding throughput: ragfleet's BertEmbedder (Rust, gemm) beside
sentence-transformers (PyTorch), same model (all-MiniLM-L6-v2), same chunks,
same machine, one run. Prints chunks/s for both and the ratio.

Usage: bench/models/embed_bench.py [N_CHUNKS] [BATCH_SIZE]
Needs: a venv with sentence-transformers (VENV=/work/venv-st by default; see
scripts/make-model-fixtures.py), the models (scripts/fetch-models.sh) and the
evaluation data (/work/shared/data/squad-beir or $SQUAD_BEIR).
"""
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.environ.get("RAGFLEET_MODELS", os.path.join(ROOT, "models"))
MODEL_DIR = os.path.join(MODELS, "all-minilm-l6-v2")
CORPUS = os.path.join(
    os.environ.get("SQUAD_BEIR", os.path.join(ROOT, "..", "shared", "data", "squad-beir")),
    "corpus.jsonl",
)


def chunks(n):
    out = []
    with open(CORPUS, encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            out.append(d["title"] + "\n" + d["text"])
            if len(out) == n:
                break
    return out


def bench_st(texts, batch):
    import torch
    from sentence_transformers import SentenceTransformer

    m = SentenceTransformer(MODEL_DIR, device="cpu")
    m.encode(texts[:64], batch_size=batch)
    t = time.perf_counter()
    m.encode(texts, batch_size=batch)
    s = time.perf_counter() - t
    return {"chunks": len(texts), "seconds": s, "chunks_per_s": len(texts) / s,
            "torch_threads": torch.get_num_threads()}


def bench_ragfleet(texts, batch):
    env = dict(os.environ)
    # BENCH_PROFILE=dev reuses the test build (dependencies are opt-level 3
    # there too, see the workspace Cargo.toml); release adds thin LTO.
    profile = env.get("BENCH_PROFILE", "release")
    # --workspace (only ragfleet-models has this example): the workspace's
    # feature resolution, i.e. the dependencies the ragfleet binary really
    # runs with, and no rebuild of them after a workspace build.
    # BENCH_FEATURES, e.g. ragfleet-models/avx512-matmul (see its Cargo.toml).
    features = ["--features", env["BENCH_FEATURES"]] if env.get("BENCH_FEATURES") else []
    subprocess.run(
        ["cargo", "build", "-q", "--profile", profile, "--workspace", "--example", "embed_bench"] + features,
        cwd=ROOT, check=True, env=env,
    )
    target = env.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    exe = os.path.join(target, "debug" if profile == "dev" else profile, "examples", "embed_bench")
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for t in texts:
            f.write(json.dumps(t) + "\n")
        path = f.name
    try:
        args = [exe, MODEL_DIR, path, str(batch)]
        if os.environ.get("EMBED_THREADS"):
            args.append(os.environ["EMBED_THREADS"])
        out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    finally:
        os.unlink(path)
    return json.loads(out.strip().splitlines()[-1])


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    texts = chunks(n)
    rf = bench_ragfleet(texts, batch)
    st = bench_st(texts, batch)
    print(f"chunks: {len(texts)} (squad-beir passages, title + text), batch size {batch}, {os.cpu_count()} CPUs")
    print(f"{'implementation':<36}{'chunks/s':>10}{'seconds':>10}")
    print(f"{'sentence-transformers (torch ' + str(st['torch_threads']) + ' thr)':<36}{st['chunks_per_s']:>10.1f}{st['seconds']:>10.2f}")
    print(f"{'ragfleet BertEmbedder (gemm)':<36}{rf['chunks_per_s']:>10.1f}{rf['seconds']:>10.2f}")
    print(f"ratio ragfleet / sentence-transformers: {rf['chunks_per_s'] / st['chunks_per_s']:.2f}x")


if __name__ == "__main__":
    main()
