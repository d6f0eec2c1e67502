#!/usr/bin/env python3
"""Monte Carlo likelihood: batched over samples against one sample at a time, in one run.

The estimate the reference's lm-eval wrapper makes (``mc_loglikelihood``: 128 samples in groups
of 32 by default) for a multiple-choice-like request (a context of ``--context`` tokens of
English and a continuation of ``--continuation`` tokens). "Batched" is
:func:`~steerling_lite.evaluation.likelihood.mc_loglikelihood` (one forward pass per group of
``--batch`` samples); "one at a time" scores the same masks with one forward pass per sample
(:func:`~steerling_lite.evaluation.likelihood.masked_logprobs` on a batch of 1). Both give the
same per-sample values (checked); runs are interleaved and the median of ``--repeats`` is
reported with the ratio. Optionally (``--cfg S``) both with classifier-free guidance, where
batched also means the conditional and unconditional pass in one batch.

    python scripts/bench_likelihood.py                       # the default model, CPU
    python scripts/bench_likelihood.py --model DIR --dtype bf16 --samples 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402
from _common import machine, prompt_ids  # noqa: E402

from steerling_lite import Steerling, default_model_dir  # noqa: E402
from steerling_lite.evaluation.likelihood import group_mean, masked_logprobs, mc_loglikelihood, sample_masks  # noqa: E402


def one_at_a_time(lm, ctx: list[int], cont: list[int], n: int, group: int, seed: int, cfg: float) -> float:
    """The same estimate with one forward pass per sample (same masks, same weighting)."""
    samples = sample_masks(len(cont), n, group_size=group, seed=seed)
    seq = torch.tensor([ctx + cont])
    values = []
    for i in range(n):
        mask = torch.zeros_like(seq, dtype=torch.bool)
        mask[0, len(ctx):] = samples.mask[i]
        logp = masked_logprobs(lm, seq, mask, context_len=len(ctx), cfg_scale=cfg)
        values.append(float(logp.sum()) / float(samples.ratio[i]))
    return group_mean(torch.tensor(values, dtype=torch.float64), samples.group)[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="checkpoint directory (default: the embedded default model)")
    p.add_argument("--context", type=int, default=48, help="context tokens (default 48)")
    p.add_argument("--continuation", type=int, default=8, help="continuation tokens (default 8)")
    p.add_argument("--samples", type=int, default=128, help="Monte Carlo samples (default 128, the reference's)")
    p.add_argument("--batch", type=int, default=32, help="samples per forward batch (default 32, the reference's)")
    p.add_argument("--cfg", type=float, default=0.0, help="classifier-free guidance scale (default 0)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each (median reported)")
    args = p.parse_args(argv)

    model_dir = Path(args.model) if args.model else default_model_dir()
    lm = Steerling.load(model_dir, device=args.device, dtype=args.dtype, quant="none")
    ids = prompt_ids(lm.tokenizer, args.context + args.continuation)
    ctx, cont = ids[:args.context], ids[args.context:]
    batched_times, single_times = [], []
    est = single = float("nan")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        est = mc_loglikelihood(lm, ctx, cont, n_samples=args.samples, batch_size=args.batch, cfg_scale=args.cfg).logprob
        batched_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        single = one_at_a_time(lm, ctx, cont, args.samples, args.batch, 0, args.cfg)
        single_times.append(time.perf_counter() - t0)
    agree = abs(est - single) < 1e-3 * max(1.0, abs(est))
    b, s = statistics.median(batched_times), statistics.median(single_times)
    print(f"machine: {machine()}")
    print(f"model: {model_dir} ({args.dtype}, {args.device}); context {args.context} + continuation "
          f"{args.continuation} tokens; {args.samples} samples, batch {args.batch}, cfg {args.cfg:g}")
    print(f"estimate: batched {est:.4f} nats, one at a time {single:.4f} nats ({'agree' if agree else 'DIFFER'})")
    print(f"batched: {b * 1000:.0f} ms, one sample at a time: {s * 1000:.0f} ms (median of {args.repeats})")
    print(f"ratio: {s / b:.1f}x")
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
