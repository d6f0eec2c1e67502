#!/usr/bin/env python3
"""Occlusion input attribution on the default model: cost per span and rank agreement with IG.

``--spans`` output spans (default 20: ``--spans / 2`` prompts, two spans each of ``--span-tokens``
generated tokens) of greedy generations of the default model
(``steerling_lite/assets/default-model``, fp32, CPU). For each span:

- occlusion (token granularity, so that it ranks what IG ranks) batched with the KV prefix,
  and one occluded copy at a time from position 0 (the same numbers): forward passes and
  seconds of each;
- integrated gradients (``--ig-steps``, default 32) of the span's tokens, summed over the span
  per prompt token: seconds;
- Spearman's rank correlation (ties averaged; scipy's when installed) of the two per-token
  scores over the prompt tokens.

Markdown on stdout; ``--update-benchmarks`` also writes it into BENCHMARKS.md (section
"Tracing (issue 11)", between the occlusion markers).

    python scripts/bench_occlusion.py
    python scripts/bench_occlusion.py --spans 4 --ig-steps 8        # a quick look
    python scripts/bench_occlusion.py --update-benchmarks --note "quiet machine"
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from _common import machine, replace_section  # noqa: E402

from steerling_lite import GenerationConfig, Steerling, explain, input_attribution, occlusion  # noqa: E402
from steerling_lite.loading.default_model import shipped_model_dir  # noqa: E402

START, END = "<!-- occlusion:start -->", "<!-- occlusion:end -->"
SECTION = "## Tracing (issue 11)"

# WordNet-gloss-like prompts, in the default model's training domain
PROMPTS = [
    "A small domesticated carnivorous mammal with soft fur, a short snout and retractable claws, kept as a pet",
    "A large body of salt water that covers most of the surface of the earth and surrounds its continents",
    "The act of moving quickly on foot so that both feet leave the ground during each stride",
    "A building or outdoor area where plays, films or other dramatic performances are given to an audience",
    "A sweet edible fruit of a tree of the rose family, typically with red or green skin and crisp flesh",
    "An instrument for measuring time, especially one that shows the hours and minutes with hands on a dial",
    "The branch of science that deals with the structure and behaviour of the physical and natural world",
    "A person who writes poems, especially one who is skilled and admired for the imaginative quality",
    "A vehicle with two wheels held in a frame one behind the other, propelled by pedals and steered",
    "The feeling of being happy and content, especially when something good has happened to you or others",
    "A piece of furniture with a flat top supported by legs, used for eating, writing or working at",
    "A natural elevation of the earth's surface rising more or less abruptly to a summit, higher than a hill",
]


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rho of ``x`` and ``y``: Pearson's correlation of their ranks, ties given their
    average rank (scipy.stats.spearmanr when scipy is installed). NaN when either is constant."""
    try:
        from scipy.stats import spearmanr
    except ImportError:
        pass
    else:
        return float(spearmanr(x, y).statistic)

    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        out = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2 + 1
            i = j + 1
        return out

    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return cov / (vx * vy) ** 0.5 if vx > 0 and vy > 0 else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spans", type=int, default=20, help="spans measured (two per prompt; default 20)")
    p.add_argument("--span-tokens", type=int, default=8, help="generated tokens per span (default 8)")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens generated per prompt (default 32)")
    p.add_argument("--ig-steps", type=int, default=32, help="integrated-gradients steps (default 32)")
    p.add_argument("--batch-size", type=int, default=16, help="occluded copies per forward (default 16)")
    p.add_argument("--compare-spans", type=int, default=20,
                   help="time one-at-a-time occlusion on the first N spans too (default 20)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.add_argument("--note", default="machine shared with other jobs", help="said of the machine in the Markdown")
    p.add_argument("--update-benchmarks", action="store_true", help="write the Markdown into BENCHMARKS.md")
    args = p.parse_args(argv)
    if not 2 * args.span_tokens <= args.new_tokens:
        p.error("--new-tokens must hold two spans of --span-tokens")

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = Steerling.load(shipped_model_dir(), device="cpu", dtype="fp32")
    n_prompts = (args.spans + 1) // 2
    prompts = (PROMPTS * (n_prompts // len(PROMPTS) + 1))[:n_prompts]
    cfg = GenerationConfig(max_new_tokens=args.new_tokens, temperature=0.0)
    explain(lm, "warm up", GenerationConfig(max_new_tokens=lm.config.diff_block_size, temperature=0.0))

    rows = []
    for prompt in prompts:
        a = explain(lm, prompt, cfg)
        for s0 in (0, args.span_tokens)[: args.spans - len(rows)]:
            span = (s0, s0 + args.span_tokens)
            t0 = time.perf_counter()
            fast = occlusion(lm, a, span=span, granularity="token", batch_size=args.batch_size)
            t_fast = time.perf_counter() - t0
            t_slow = diff = float("nan")
            if len(rows) < args.compare_spans:
                t0 = time.perf_counter()
                slow = occlusion(lm, a, span=span, granularity="token", batch_size=1, use_cache=False)
                t_slow = time.perf_counter() - t0
                diff = (fast.scores - slow.scores).abs().max().item()
            t0 = time.perf_counter()
            ig = input_attribution(lm, a, fast.positions.tolist(), n_steps=args.ig_steps)
            t_ig = time.perf_counter() - t0
            P = a.prompt_len
            oc_scores = fast.span_scores().tolist()
            ig_scores = ig.scores[:, :P].sum(0).tolist()
            rho = spearman(oc_scores, ig_scores)
            rho_logit = spearman(fast.logit_scores.sum(0).tolist(), ig_scores)
            rho_abs = spearman([abs(v) for v in oc_scores], [abs(v) for v in ig_scores])
            top_same = max(range(P), key=lambda i: abs(oc_scores[i])) == max(range(P), key=lambda i: abs(ig_scores[i]))
            rows.append({"prompt_tokens": P, "targets": len(fast), "passes": fast.cost.forward_passes,
                         "calls": fast.cost.batched_calls, "t_fast": t_fast, "t_slow": t_slow, "t_ig": t_ig,
                         "rho": rho, "rho_logit": rho_logit, "rho_abs": rho_abs, "top_same": top_same, "diff": diff})
            print(f"span {len(rows)}: {P} prompt tokens, {fast.cost.forward_passes} passes, batched {t_fast:.2f} s, "
                  f"one at a time {t_slow:.2f} s, IG {t_ig:.2f} s, rho {rho:+.2f}", file=sys.stderr)

    med = statistics.median
    slow = [r for r in rows if r["t_slow"] == r["t_slow"]]  # the spans timed one at a time too

    def rho_summary(key: str) -> str:
        v = [r[key] for r in rows if r[key] == r[key]]  # NaN (a constant score vector) left out
        return (f"median {med(v):+.2f}, mean {statistics.fmean(v):+.2f}, min {min(v):+.2f}, max {max(v):+.2f} "
                f"({len(v)} spans)")

    lines = [
        f"Occlusion on the default model (4 layers, d=128, fp32, CPU): {len(rows)} spans of {args.span_tokens} "
        f"generated tokens (greedy, one token per denoising step, so each span token is its own committing "
        f"snapshot), two per prompt of {min(r['prompt_tokens'] for r in rows)}-{max(r['prompt_tokens'] for r in rows)} "
        f"tokens; token granularity. Machine: {machine()}; {args.note}.",
        "",
        "| | median per span | total |",
        "|---|---:|---:|",
        f"| occlusion forward passes (sequences) | {med(r['passes'] for r in rows):.0f} | {sum(r['passes'] for r in rows)} |",
        f"| occlusion forward calls, batched {args.batch_size} | {med(r['calls'] for r in rows):.0f} | "
        f"{sum(r['calls'] for r in rows)} |",
        f"| occlusion, batched + KV prefix (s) | {med(r['t_fast'] for r in rows):.3f} | "
        f"{sum(r['t_fast'] for r in rows):.2f} |",
        *([f"| occlusion batched + KV prefix, the {len(slow)} spans below (s) | {med(r['t_fast'] for r in slow):.3f} | "
           f"{sum(r['t_fast'] for r in slow):.2f} |",
           f"| occlusion one copy at a time from position 0, {len(slow)} spans (s) | "
           f"{med(r['t_slow'] for r in slow):.3f} | {sum(r['t_slow'] for r in slow):.2f} |"] if slow else []),
        f"| integrated gradients, {args.ig_steps} steps (s) | {med(r['t_ig'] for r in rows):.3f} | "
        f"{sum(r['t_ig'] for r in rows):.2f} |",
        "",
        "Rank agreement with integrated gradients: Spearman's rho over the prompt tokens between IG's "
        "span scores (its per-token logit shares summed over the span) and",
        "",
        f"- occlusion's span scores (log-probability drop, as defined): {rho_summary('rho')};",
        f"- occlusion of the target's logit instead (IG's quantity, no softmax normalizer): {rho_summary('rho_logit')};",
        f"- magnitudes only (|occlusion| vs |IG|): {rho_summary('rho_abs')}.",
        "",
        f"The same top token (by magnitude) in {sum(r['top_same'] for r in rows)} of {len(rows)} spans."
        + (f" Batched vs one at a time ({len(slow)} spans): max |score difference| "
           f"{max(r['diff'] for r in slow):.1e} nats." if slow else ""),
    ]
    body = "\n".join(lines)
    print(body)
    if args.update_benchmarks:
        path = ROOT / "BENCHMARKS.md"
        text = path.read_text()
        if SECTION not in text:
            text = text.rstrip() + f"\n\n{SECTION}\n\n{START}\n{END}\n"
        path.write_text(replace_section(text, START, END, body))
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
