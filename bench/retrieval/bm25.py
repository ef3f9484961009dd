#!/usr/bin/env python3
"""Plain whole-document BM25 on a BEIR directory, standard library only.

The independent check of `ragfleet eval retrieval`'s built-in BM25 baseline
row: lower-case, split on non-alphanumerics (str.isalnum), no stemming, no
stop words, k1 0.9, b 0.4, document = title + " " + text, Lucene idf
ln(1 + (N - df + 0.5) / (df + 0.5)), every query token counted, ties broken
by document id. nDCG@10 / Recall@10 as in BEIR (gain = grade, log2 discount).

    python3 bench/retrieval/bm25.py /work/shared/data/squad-beir
    python3 bench/retrieval/bm25.py /work/shared/data/arguana-recon --drop-self-hits
"""
import json
import math
import sys
from collections import Counter, defaultdict

K1, B = 0.9, 0.4


def tokens(s):
    out, cur = [], []
    for ch in s.lower():
        if ch.isalnum():
            cur.append(ch)
        elif cur:
            out.append("".join(cur))
            cur = []
    if cur:
        out.append("".join(cur))
    return out


def main():
    d = sys.argv[1]
    drop_self = "--drop-self-hits" in sys.argv
    ids, lens, postings = [], [], defaultdict(list)
    with open(f"{d}/corpus.jsonl") as f:
        for line in f:
            if not line.strip():
                continue
            doc = json.loads(line)
            t = tokens((doc.get("title") or "") + " " + doc["text"])
            for term, tf in Counter(t).items():
                postings[term].append((len(ids), tf))
            ids.append(str(doc["_id"]))
            lens.append(len(t))
    n = len(ids)
    avgdl = sum(lens) / n
    norm = [K1 * (1 - B + B * l / avgdl) for l in lens]
    qrels = defaultdict(dict)
    with open(f"{d}/qrels/test.tsv") as f:
        for i, line in enumerate(f):
            c = line.rstrip("\n").split("\t")
            if i == 0 and not c[2].strip().lstrip("-").isdigit():
                continue
            qrels[c[0]][c[1]] = int(c[2])
    ndcg = rec = 0.0
    count = 0
    with open(f"{d}/queries.jsonl") as f:
        for line in f:
            if not line.strip():
                continue
            q = json.loads(line)
            qid = str(q["_id"])
            judged = qrels.get(qid)
            if not judged or not any(g > 0 for g in judged.values()):
                continue
            scores = defaultdict(float)
            for term in tokens(q["text"]):
                plist = postings.get(term)
                if not plist:
                    continue
                df = len(plist)
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                for doc, tf in plist:
                    scores[doc] += idf * tf * (K1 + 1) / (tf + norm[doc])
            ranked = sorted(scores.items(), key=lambda x: (-x[1], ids[x[0]]))
            top = [ids[doc] for doc, _ in ranked if not (drop_self and ids[doc] == qid)][:10]
            dcg = sum(judged.get(t, 0) / math.log2(i + 2) for i, t in enumerate(top) if judged.get(t, 0) > 0)
            ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:10]
            idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
            ndcg += dcg / idcg
            rel = sum(1 for g in judged.values() if g > 0)
            rec += sum(1 for t in top if judged.get(t, 0) > 0) / rel
            count += 1
    print(f"{d}: {n} docs, {count} queries, BM25 k1={K1} b={B}: "
          f"nDCG@10 {ndcg / count:.4f}  Recall@10 {rec / count:.4f}")


if __name__ == "__main__":
    main()
