#!/usr/bin/env python3
"""Training-data retrieval figures: recall per representation, build throughput, size, query latency.

Four parts (``--parts``, default all):

- ``recall``: every chunk of the corpus (default: the default model's shipped WordNet
  training corpus, one diffusion block per chunk at most) is embedded once; ``--queries``
  chunks (seeded, at least 2 tokens) are corrupted — 30 % of their tokens (``--corrupt``,
  rounded, at least one) *masked* (the mask token, the learned blank) or *replaced* (by
  random tokens of the corpus, drawn by frequency) — and looked up among all chunks by
  exact search. Recall@k: the share of queries whose own chunk (or a chunk with the same
  tokens) is among the k nearest. For each representation (composed, hidden, known concept
  weights, composed + known, the mean input token embedding alone, composed + input), raw
  (L2-normalized) and whitened as the index whitens.
- ``build``: ``build_index`` over the first ``--build-lines`` lines of the corpus: chunks/s,
  and the bytes of the index per chunk, scaled to a million chunks.
- ``default``: the default model's own index, built as on first use (the whole shipped corpus,
  into a temporary data directory): wall time and chunks/s; then HNSW built over the same
  (whitened) vectors and ``--queries`` corrupted chunks looked up in both: recall@10 of each,
  what an index past the exact-search limit keeps.
- ``latency``: synthetic Gaussian vectors of the default model's width (128) and of
  Steerling-8B's (4096), 10^4, 10^5 and 10^6 of them (4096-d: up to 10^5, 10^6 would need
  16 GB): one query at a time, median over ``--latency-queries`` queries, exact
  (IndexFlatIP) and HNSW as the index builds them; HNSW's recall@10 against exact search.

    python scripts/bench_retrieval.py                           # all parts, Markdown on stdout
    python scripts/bench_retrieval.py --parts recall --limit 20000
    python scripts/bench_retrieval.py --from-json checkpoints/bench/retrieval.json --update-benchmarks
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from _common import machine, replace_section  # noqa: E402

from steerling_lite import Steerling  # noqa: E402
from steerling_lite.interpret import index_store as store  # noqa: E402
from steerling_lite.interpret.corpus import iter_chunks  # noqa: E402
from steerling_lite.interpret.index_build import build_index, default_corpus_path  # noqa: E402
from steerling_lite.interpret.representation import DEFAULT_REPRESENTATION, pooled_batches, representation  # noqa: E402
from steerling_lite.loading.default_model import shipped_model_dir  # noqa: E402

START, END = "<!-- retrieval:start -->", "<!-- retrieval:end -->"
KINDS = ("composed", "hidden", "known", "composed+known", "input", "composed+input")
CHOSEN = DEFAULT_REPRESENTATION


# ---- recall ---------------------------------------------------------------------------------------
def embed_all(lm, seqs: list[tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Every representation of every sequence (one forward pass per batch)."""
    out: dict[str, np.ndarray] = {}
    for part, st in pooled_batches(lm, seqs, 512):
        for k in KINDS:
            v = representation(st, k)
            if k not in out:
                out[k] = np.zeros((len(seqs), v.shape[1]), np.float32)
            out[k][part] = v
    return out


def corrupt(seqs, targets, frac: float, mode: str, mask_id: int, rng) -> list[tuple[int, ...]]:
    pool = np.concatenate([np.asarray(s) for s in seqs])
    out = []
    for t in targets:
        s = list(seqs[t])
        m = max(1, int(round(frac * len(s))))
        for p in rng.choice(len(s), m, replace=False):
            s[p] = mask_id if mode == "masked" else int(pool[rng.integers(len(pool))])
        out.append(tuple(s))
    return out


def recall(base: np.ndarray, queries: np.ndarray, same: list[set[int]], whiten: bool, ks=(1, 10),
           shrink: float = store.SHRINK) -> dict[str, float]:
    """Recall@k of exact search, with the index's whitening or plain cosine."""
    f = store.faiss()
    if whiten:
        index = store.new_index(base, len(base), shrink, exact=True)
        index.add(base)
    else:
        index = f.IndexFlatIP(base.shape[1])
        index.add(base / np.linalg.norm(base, axis=1, keepdims=True).clip(1e-12))
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True).clip(1e-12)
    _, found = index.search(np.ascontiguousarray(queries), max(ks))
    hits = np.array([[int(c) in same[i] for c in row] for i, row in enumerate(found)])
    return {f"r@{k}": float(hits[:, :k].any(1).mean()) for k in ks}


def run_recall(lm, corpus: Path, args) -> dict:
    t0 = time.perf_counter()
    chunks = [c.token_ids for c in iter_chunks(corpus, lm.tokenizer, lm.config.diff_block_size)]
    if args.limit:
        chunks = chunks[:args.limit]
    print(f"recall: {len(chunks)} chunks; embedding ...", file=sys.stderr)
    base = embed_all(lm, chunks)
    t_embed = time.perf_counter() - t0
    rng = np.random.default_rng(args.seed)
    eligible = np.array([i for i, c in enumerate(chunks) if len(c) >= 2])
    targets = rng.choice(eligible, min(args.queries, len(eligible)), replace=False)
    by_tokens: dict[tuple[int, ...], set[int]] = {}
    for i, c in enumerate(chunks):
        by_tokens.setdefault(c, set()).add(i)
    same = [by_tokens[chunks[t]] for t in targets]
    res: dict = {"chunks": len(chunks), "queries": len(targets), "corrupt": args.corrupt, "embed_s": t_embed,
                 "mean_tokens": float(np.mean([len(c) for c in chunks])), "rows": []}
    for mode in ("masked", "replaced"):
        q = embed_all(lm, corrupt(chunks, targets, args.corrupt, mode, lm.tokenizer.mask_token_id, rng))
        for kind in KINDS:
            for whiten in (False, True):
                r = recall(base[kind], q[kind], same, whiten)
                res["rows"].append({"mode": mode, "kind": kind, "whitened": whiten, "dim": base[kind].shape[1], **r})
                print(f"  {mode:8s} {kind:28s} {'whitened' if whiten else 'raw':8s} {r}", file=sys.stderr)
    for mode in ("masked", "replaced"):  # the whitening shrinkage, of the chosen representation
        q = embed_all(lm, corrupt(chunks, targets, args.corrupt, mode, lm.tokenizer.mask_token_id, rng))
        for shrink in (0.001, 0.01, 0.1, 1.0):
            r = recall(base[CHOSEN], q[CHOSEN], same, True, shrink=shrink)
            res.setdefault("shrink", []).append({"shrink": shrink, "mode": mode, **r})
    return res


# ---- build ----------------------------------------------------------------------------------------
def run_build(lm, corpus: Path, args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-retrieval-"))
    try:
        sub = tmp / "corpus.txt"
        with open(sub, "w", encoding="utf-8") as f:
            for i, line in enumerate(_text_lines(corpus)):
                if i >= args.build_lines:
                    break
                f.write(line)
        t0 = time.perf_counter()
        report = build_index(lm, [sub], tmp / "index")
        secs = time.perf_counter() - t0
        files = {p.name: p.stat().st_size for p in (tmp / "index").iterdir()}
        n = report.n_chunks
        dim = store.read_manifest(tmp / "index")["dim"]
        return {"lines": args.build_lines, "chunks": n, "seconds": secs, "chunks_per_s": n / secs, "dim": dim,
                "bytes": files, "mb_per_million": {k: v / n * 1e6 / 2**20 for k, v in files.items()}}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _text_lines(path: Path):
    from steerling_lite.interpret.corpus import open_corpus

    with open_corpus(path) as f:
        for raw in f:
            yield raw.decode("utf-8")


# ---- the default model's index --------------------------------------------------------------------
def run_default(lm, corpus: Path, args) -> dict:
    import os

    from steerling_lite.interpret.index_build import ensure_default_index

    home = Path(tempfile.mkdtemp(prefix="bench-retrieval-home-"))
    os.environ["STEERLING_LITE_HOME"] = str(home)
    try:
        t0 = time.perf_counter()
        path = ensure_default_index(lm)
        secs = time.perf_counter() - t0
        files = {p.name: p.stat().st_size for p in path.iterdir()}
        index = store.read_vectors(path)
        n = int(index.ntotal)
        res: dict = {"chunks": n, "seconds": secs, "chunks_per_s": n / secs, "bytes": files}
        print(f"default index: {n} chunks in {secs:.0f} s", file=sys.stderr)
        flat = store.faiss().downcast_index(index.index)
        whitened = flat.reconstruct_n(0, n)
        t0 = time.perf_counter()
        hnsw = store._hnsw(whitened.shape[1])
        hnsw.add(whitened)
        res["hnsw_build_s"] = time.perf_counter() - t0
        chunks = [c.token_ids for c in iter_chunks(corpus, lm.tokenizer, lm.config.diff_block_size)]
        rng = np.random.default_rng(args.seed)
        targets = rng.choice([i for i, c in enumerate(chunks) if len(c) >= 2], args.queries, replace=False)
        by_tokens: dict[tuple[int, ...], set[int]] = {}
        for i, c in enumerate(chunks):
            by_tokens.setdefault(c, set()).add(i)
        same = [by_tokens[chunks[t]] for t in targets]
        for mode in ("masked", "replaced"):
            q = embed_all(lm, corrupt(chunks, targets, args.corrupt, mode, lm.tokenizer.mask_token_id, rng))[CHOSEN]
            qw = q
            for i in range(index.chain.size()):  # whitened and normalized, as the index does
                qw = index.chain.at(i).apply(qw)
            for name, searcher in (("exact", flat), ("hnsw", hnsw)):
                _, found = searcher.search(qw, 10)
                hits = np.array([[int(c) in same[i] for c in row] for i, row in enumerate(found)])
                res[f"{mode}_{name}"] = {"r@1": float(hits[:, 0].mean()), "r@10": float(hits.any(1).mean())}
        return res
    finally:
        shutil.rmtree(home, ignore_errors=True)


# ---- latency --------------------------------------------------------------------------------------
def run_latency(args) -> list[dict]:
    f = store.faiss()
    rows = []
    rng = np.random.default_rng(0)
    for spec in args.latency_sizes:
        d, n = (int(float(x)) for x in spec.split(":"))
        x = rng.standard_normal((n, d), dtype=np.float32)
        q = rng.standard_normal((args.latency_queries, d), dtype=np.float32)
        row: dict = {"dim": d, "n": n}
        exact_ids = None
        for kind in ("flat", "hnsw"):
            t0 = time.perf_counter()
            index = store.new_index(x[: min(n, 100_000)], n, exact=kind == "flat")
            index.add(x)
            build = time.perf_counter() - t0
            times, cpu, ids = [], [], []
            for i in range(len(q)):
                t0, c0 = time.perf_counter(), time.process_time()
                _, found = index.search(q[i:i + 1], 10)
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
                ids.append(found[0])
            with tempfile.TemporaryDirectory() as tmp:
                f.write_index(index, f"{tmp}/v.faiss")
                size = Path(f"{tmp}/v.faiss").stat().st_size
            row[kind] = {"build_s": build, "query_ms": 1000 * float(np.median(times)),
                         "query_cpu_ms": 1000 * float(np.median(cpu)), "bytes": size,
                         "mb_per_million": size / n * 1e6 / 2**20}
            if kind == "flat":
                exact_ids = ids
            else:
                row[kind]["recall@10_vs_exact"] = float(np.mean(
                    [len(set(a) & set(b)) / 10 for a, b in zip(ids, exact_ids)]))
            print(f"  latency d={d} n={n} {kind}: {row[kind]}", file=sys.stderr)
            del index
        rows.append(row)
    return rows


# ---- report ---------------------------------------------------------------------------------------
def markdown(res: dict) -> str:
    out = [f"Machine: {res['machine']} ({res['date']}). The machine was shared with other jobs (load "
           "average in the line above): the recall figures do not depend on it, the times do (to be "
           "re-measured on a quiet machine).", ""]
    r = res.get("recall")
    if r:
        out += [f"#### Recall of training chunks from corrupted copies ({r['chunks']:,} chunks, mean "
                f"{r['mean_tokens']:.1f} tokens, {r['queries']} queries, {100 * r['corrupt']:.0f} % of "
                "each query's tokens masked or replaced; exact search)", "",
                "| representation | dim | masked r@1 | masked r@10 | replaced r@1 | replaced r@10 |", "|---|---|---|---|---|---|"]
        for kind in KINDS:
            for whiten in (False, True):
                cells = {x["mode"]: x for x in r["rows"] if x["kind"] == kind and x["whitened"] == whiten}
                name = f"{kind}, {'whitened' if whiten else 'raw cosine'}"
                if kind == CHOSEN and whiten:
                    name = f"**{name}** (the index's)"
                out.append(f"| {name} | {cells['masked']['dim']} | {cells['masked']['r@1']:.3f} | "
                           f"{cells['masked']['r@10']:.3f} | {cells['replaced']['r@1']:.3f} | "
                           f"{cells['replaced']['r@10']:.3f} |")
        if r.get("shrink"):
            out += ["", f"Whitening shrinkage of {CHOSEN} (the index uses {store.SHRINK}), "
                    "r@1 / r@10:", "", "| shrink | masked | replaced |", "|---|---|---|"]
            for s in sorted({x["shrink"] for x in r["shrink"]}):
                c = {x["mode"]: x for x in r["shrink"] if x["shrink"] == s}
                out.append(f"| {s} | {c['masked']['r@1']:.3f} / {c['masked']['r@10']:.3f} | "
                           f"{c['replaced']['r@1']:.3f} / {c['replaced']['r@10']:.3f} |")
    dflt = res.get("default")
    if dflt:
        out += ["", "#### The default model's index, built on first use", "",
                f"The whole shipped corpus: {dflt['chunks']:,} chunks in {dflt['seconds']:.0f} s, "
                f"**{dflt['chunks_per_s']:.0f} chunks/s**; {dflt['bytes'].get('vectors.faiss', 0) / 2**20:.0f} MiB of "
                f"vectors (exact search), {dflt['bytes'].get('chunks.sqlite', 0) / 2**20:.0f} MiB of chunks. The same "
                f"vectors in HNSW (built in {dflt['hnsw_build_s']:.0f} s), the corrupted-copy queries above, r@1 / r@10:",
                "", "| search | masked | replaced |", "|---|---|---|"]
        for name in ("exact", "hnsw"):
            m, r = dflt[f"masked_{name}"], dflt[f"replaced_{name}"]
            out.append(f"| {name} | {m['r@1']:.3f} / {m['r@10']:.3f} | {r['r@1']:.3f} / {r['r@10']:.3f} |")
    b = res.get("build")
    if b:
        mb = b["mb_per_million"]
        out += ["", "#### Index build", "",
                f"`build_index` over the first {b['lines']:,} lines of the corpus: {b['chunks']:,} chunks in "
                f"{b['seconds']:.1f} s, **{b['chunks_per_s']:.0f} chunks/s** (chunking, embedding, SQLite, FAISS). "
                f"Size per million chunks: {mb.get('vectors.faiss', 0):,.0f} MiB of vectors "
                f"(exact, {b.get('dim', '?')}-dim fp32), {mb.get('chunks.sqlite', 0):,.0f} MiB of chunk text and provenance."]
    lat = res.get("latency")
    if lat:
        out += ["", "#### Query latency (synthetic vectors, one query at a time, k = 10, one thread)", "",
                "Median milliseconds per query, wall clock / CPU time of the process (the CPU time is the "
                "less disturbed by other jobs); sizes of the written index.", "",
                "| dim | chunks | exact: ms | exact: MiB | HNSW: ms | HNSW recall@10 vs exact | "
                "HNSW: build s | HNSW: MiB |", "|---|---|---|---|---|---|---|---|"]
        for x in lat:
            fl, hn = x["flat"], x["hnsw"]
            out.append(f"| {x['dim']} | {x['n']:,} | {fl['query_ms']:.2f} / {fl.get('query_cpu_ms', float('nan')):.2f} "
                       f"| {fl['bytes'] / 2**20:,.0f} | {hn['query_ms']:.2f} / {hn.get('query_cpu_ms', float('nan')):.2f} "
                       f"| {hn['recall@10_vs_exact']:.3f} | {hn['build_s']:.1f} | {hn['bytes'] / 2**20:,.0f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=shipped_model_dir())
    p.add_argument("--corpus", type=Path, default=default_corpus_path())
    p.add_argument("--parts", nargs="+", default=["recall", "build", "default", "latency"],
                   choices=["recall", "build", "default", "latency"])
    p.add_argument("--limit", type=int, default=0, help="recall: only the first N chunks (default all)")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--corrupt", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--build-lines", type=int, default=10000)
    p.add_argument("--latency-queries", type=int, default=200)
    p.add_argument("--latency-sizes", nargs="+", metavar="DIM:N",
                   default=["128:1e4", "128:1e5", "128:1e6", "4096:1e4", "4096:1e5"],
                   help="synthetic index shapes for the latency part (default: the default model's width and "
                        "Steerling-8B's, 10^4..10^6 chunks)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.add_argument("--out", type=Path, default=ROOT / "checkpoints" / "bench" / "retrieval.json")
    p.add_argument("--from-json", type=Path, help="re-render an earlier run's --out file")
    p.add_argument("--update-benchmarks", action="store_true", help="write the section into BENCHMARKS.md")
    args = p.parse_args(argv)
    if args.from_json:
        res = json.loads(args.from_json.read_text())
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        res = json.loads(args.out.read_text()) if args.out.is_file() else {}
        res.update(machine=machine(), date=time.strftime("%Y-%m-%d"))
        lm = Steerling.load(args.model, device="cpu", dtype="fp32", quant="none")
        for part in args.parts:
            res[part] = {"recall": run_recall, "build": run_build, "default": run_default}[part](lm, args.corpus, args) \
                if part != "latency" else run_latency(args)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(res, indent=2))
    md = markdown(res)
    print(md)
    if args.update_benchmarks:
        bench = ROOT / "BENCHMARKS.md"
        body = ("### Training-data retrieval\n\n`python scripts/bench_retrieval.py` on the default model "
                "(fp32, CPU) and its shipped WordNet training corpus.\n\n" + md)
        bench.write_text(replace_section(bench.read_text(encoding="utf-8"), START, END, body), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
