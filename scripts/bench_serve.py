#!/usr/bin/env python3
"""The server under load on loopback, against the Python API called directly in one process.

Serves the model with ``steerling-lite serve``'s app (uvicorn on 127.0.0.1, a free port, in
this process) and sends streaming ``/v1/completions`` requests from 1, 4 and 8 concurrent
clients (raw HTTP, server-sent events parsed as they arrive). For each level: requests/s
(requests / wall time) and time to first chunk (from sending the request to the first
chunk with text; it includes waiting in the queue). The baseline runs the same requests
one after another through ``Steerling.stream`` in this process, its "first chunk" being
the first step that commits text at the start of the answer, exactly as the server
streams it. The ratios are the cost of HTTP, SSE and queueing; "identical" checks that
every answer equals the direct one (same seeds). The baseline runs on a thread of its own,
as the server's generations run on its worker thread: on a busy CPU, torch's intra-op
threads make a generation on the main thread several times slower than on another thread,
which would flatter the server.

Bounded: at most ``--requests`` per level, and no new request once ``--max-seconds`` of
the run have passed (reported).

    python scripts/bench_serve.py                          # the embedded default model
    python scripts/bench_serve.py --requests 4 --max-tokens 16 --concurrency 1 2   # a smoke run
    python scripts/bench_serve.py --model DIR --device cuda --json
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from _common import ENGLISH, machine  # noqa: E402

from steerling_lite import GenerationConfig, Steerling  # noqa: E402
from steerling_lite.serve import BackgroundServer, ServeSettings, create_app  # noqa: E402
from steerling_lite.serve.runner import DeltaTracker  # noqa: E402

WORDS = ENGLISH.split()


def prompts(n: int, words: int) -> list[str]:
    """``n`` different prompts of ``words`` words each, cut from the fixed English text."""
    return [" ".join((WORDS * (words // len(WORDS) + 2))[i:i + words]) for i in range(n)]


def direct(lm: Steerling, texts: list[str], config: GenerationConfig, max_tokens: int, deadline: float) -> dict:
    """The requests one after another through the Python API: seconds to first text, total, answers."""
    cfg = lm.config
    ttfc, answers = [], []
    t0 = time.perf_counter()
    for i, text in enumerate(texts):
        if time.perf_counter() > deadline:
            break
        start = time.perf_counter()
        gen = lm.stream(text, replace(config, seed=i))
        tracker = DeltaTracker(lm.tokenizer, len(gen.prompt_ids), cfg.mask_token_id, cfg.eos_token_id,
                               {cfg.eot_id} - {None}, max_tokens)
        first = None
        for _ in gen:
            if tracker.advance(gen.sequence)[0] and first is None:
                first = time.perf_counter() - start
            if tracker.done:
                gen.cancel()  # as the server does at max_tokens
        tracker.finish(gen.result.stop_reason)
        ttfc.append(first if first is not None else time.perf_counter() - start)
        answers.append(tracker.sent)
    return {"wall_s": time.perf_counter() - t0, "ttfc_s": ttfc, "answers": answers}


def one_request(host: str, port: int, body: dict) -> tuple[float, str]:
    """A streaming completion over raw HTTP: (seconds to the first chunk with text, the answer)."""
    conn = http.client.HTTPConnection(host, port, timeout=600)
    start = time.perf_counter()
    try:
        conn.request("POST", "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:200]!r}")
        first, parts = None, []
        for line in resp:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            text = chunk["choices"][0]["text"] if chunk["choices"] else ""
            if text and first is None:
                first = time.perf_counter() - start
            parts.append(text)
        return (first if first is not None else time.perf_counter() - start), "".join(parts)
    finally:
        conn.close()


def load(server: BackgroundServer, texts: list[str], clients: int, args, deadline: float) -> dict:
    """``texts`` sent by ``clients`` concurrent clients; stops handing out requests at ``deadline``."""
    host, port = server.sock.getsockname()[:2]
    lock, results, nxt = threading.Lock(), {}, [0]

    def client() -> None:
        while True:
            with lock:
                i = nxt[0]
                if i >= len(texts) or time.perf_counter() > deadline:
                    return
                nxt[0] += 1
            body = {"prompt": texts[i], "max_tokens": args.max_tokens, "seed": i, "stream": True}
            if args.steps:
                body["steps"] = args.steps
            results[i] = one_request(host, port, body)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    wall = time.perf_counter() - t0
    done = sorted(results)
    return {"wall_s": wall, "ttfc_s": [results[i][0] for i in done], "answers": [results[i][1] for i in done]}


def summary(run: dict) -> dict:
    n, ttfc = len(run["answers"]), sorted(run["ttfc_s"])
    return {"requests": n, "requests_per_s": n / run["wall_s"] if run["wall_s"] > 0 else 0.0,
            "ttfc_median_ms": 1000 * statistics.median(ttfc) if ttfc else float("nan"),
            "ttfc_p90_ms": 1000 * ttfc[min(len(ttfc) - 1, int(0.9 * len(ttfc)))] if ttfc else float("nan")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="checkpoint directory (default: the embedded default model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--requests", type=int, default=16, help="requests per level (default 16)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8], help="client counts (default 1 4 8)")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per answer (default 64)")
    p.add_argument("--steps", type=int, help="denoising steps (default: one per token)")
    p.add_argument("--prompt-words", type=int, default=24, help="words per prompt (default 24)")
    p.add_argument("--max-seconds", type=float, default=600, help="no new request after this (default 600)")
    p.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    args = p.parse_args(argv)

    from steerling_lite.loading.default_model import ensure_default_model

    lm = Steerling.load(args.model or ensure_default_model(), device=args.device, dtype=args.dtype)
    texts = prompts(args.requests, args.prompt_words)
    block = lm.config.diff_block_size
    config = GenerationConfig(max_new_tokens=-(-args.max_tokens // block) * block, steps=args.steps)
    t_end = time.perf_counter() + args.max_seconds
    with ThreadPoolExecutor(1) as one:  # on a thread, as the server's worker runs (see the docstring)
        one.submit(lm.generate, texts[0], GenerationConfig(max_new_tokens=block, steps=block)).result()  # warm-up
        base = one.submit(direct, lm, texts, config, args.max_tokens, t_end).result()
    rows = {"direct": summary(base)}
    app = create_app(lm, ServeSettings(model_name="bench", max_queue=max(args.concurrency) + 1))
    with BackgroundServer(app) as server:
        for c in args.concurrency:
            run = load(server, texts, c, args, t_end)
            row = summary(run)
            n = min(len(run["answers"]), len(base["answers"]))
            row["identical"] = run["answers"][:n] == base["answers"][:n]
            rows[f"{c} client{'s' if c > 1 else ''}"] = row
    ref = rows["direct"]
    for name, row in rows.items():
        row["rps_ratio"] = row["requests_per_s"] / ref["requests_per_s"] if ref["requests_per_s"] else float("nan")
        row["ttfc_ratio"] = row["ttfc_median_ms"] / ref["ttfc_median_ms"] if ref["ttfc_median_ms"] else float("nan")
    cut = time.perf_counter() > t_end
    meta = {"machine": machine(), "model": str(lm.path), "device": str(lm.device), "dtype": args.dtype,
            "max_tokens": args.max_tokens, "steps": args.steps or config.max_new_tokens,
            "prompt_words": args.prompt_words, "stopped_by_deadline": cut}
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows}, indent=2))
        return 0
    print(f"Machine: {meta['machine']}; model {meta['model']} ({meta['dtype']} on {meta['device']}); "
          f"{args.max_tokens} tokens per answer, {meta['steps']} steps, prompts of {args.prompt_words} words"
          + ("; the deadline cut the run short" if cut else ""))
    print()
    print("| run | requests | requests/s | vs direct | first chunk, median (ms) | p90 (ms) | vs direct | identical |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        same = "-" if name == "direct" else ("yes" if r["identical"] else "no")
        print(f"| {name} | {r['requests']} | {r['requests_per_s']:.2f} | {r['rps_ratio']:.2f}x | "
              f"{r['ttfc_median_ms']:.0f} | {r['ttfc_p90_ms']:.0f} | {r['ttfc_ratio']:.2f}x | {same} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
