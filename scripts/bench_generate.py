#!/usr/bin/env python3
"""Generation speed: steerling-lite against the reference package, same checkpoint, prompt and seed.

Prints tokens/s of each, the ratio, and whether the tokens are identical, plus a
Markdown table row for BENCHMARKS.md. Default: the tiny preset, a 256-token prompt,
256 new tokens, 256 steps, greedy decoding, fp32, on the CPU.

    python scripts/bench_generate.py
    python scripts/bench_generate.py --steps 64 --dtype bf16
    python scripts/bench_generate.py --model checkpoints/8b --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402
from _common import machine, prompt_ids  # noqa: E402

from steerling_lite import GenerationConfig, Steerling  # noqa: E402
from steerling_lite.loading.random_checkpoint import preset_config, write_random_checkpoint  # noqa: E402
from tests.oracle import load_reference, reference_generation_config  # noqa: E402

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="checkpoint directory (default: write the tiny preset to a temp dir)")
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--steps", type=int, help="default: one per new token")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--sampling", default="greedy", choices=["greedy", "entropy"],
                   help="greedy (tokens comparable) or the reference's default entropy-adaptive sampling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="timed runs of ours (median reported)")
    p.add_argument("--ref-repeats", type=int, default=1, help="timed runs of the reference (0: time ours only)")
    p.add_argument("--parallel-threshold", type=float, help="also time ours with parallel decoding at this threshold")
    args = p.parse_args(argv)

    tmp = None
    if args.model:
        model_dir = Path(args.model)
    else:
        tmp = tempfile.TemporaryDirectory()
        model_dir = write_random_checkpoint(Path(tmp.name) / "tiny", preset_config("tiny"), seed=0)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    steps = args.steps or args.new_tokens

    lm = Steerling.load(model_dir, device=args.device, dtype=dtype)
    ids = prompt_ids(lm.tokenizer, args.prompt_tokens)
    greedy = args.sampling == "greedy"
    ours_cfg = GenerationConfig(max_new_tokens=args.new_tokens, steps=steps, seed=args.seed,
                                temperature=0.0 if greedy else 1.2, entropy_sampling=not greedy)
    ref_kw = dict(max_new_tokens=args.new_tokens, steps=steps, seed=args.seed)
    ref_kw.update(use_entropy_sampling=False, temperature=0.0) if greedy else None
    B = lm.config.diff_block_size

    def run_ours(cfg: GenerationConfig):
        t = time.perf_counter()
        r = lm.generate(ids, cfg)
        return time.perf_counter() - t, r

    warm = GenerationConfig(max_new_tokens=B, steps=B, temperature=0.0)
    run_ours(warm)
    ours_times, ours = [], None
    for _ in range(args.repeats):
        dt, ours = run_ours(ours_cfg)
        ours_times.append(dt)

    n = args.new_tokens
    ours_s = statistics.median(ours_times)
    if args.ref_repeats == 0:  # ours only: before/after comparisons of our own code
        print(f"steerling-lite:{ours_s:8.2f} s  {n / ours_s:8.1f} tokens/s   ({ours_s / steps * 1000:.1f} ms per step)"
              f"   runs {' '.join(f'{t:.2f}' for t in ours_times)} s   last tokens {ours.sequence[-4:]}")
        return 0
    _, ref_gen = load_reference(model_dir, dtype)
    if args.device != "cpu":
        ref_gen.model.to(args.device)
        ref_gen.device = torch.device(args.device)
    x = torch.tensor([ids], device=args.device)
    ref_gen.generate_full(x, reference_generation_config(max_new_tokens=B, steps=B, use_entropy_sampling=False, temperature=0.0))
    ref_times, ref = [], None
    for _ in range(args.ref_repeats):
        t = time.perf_counter()
        ref = ref_gen.generate_full(x, reference_generation_config(**ref_kw))
        ref_times.append(time.perf_counter() - t)

    ref_s = statistics.median(ref_times)
    same = ours.sequence == ref.tokens.tolist()
    print(f"machine: {machine()}")
    print(f"checkpoint: {model_dir}  ({args.dtype}, {args.device}, {args.sampling})")
    print(f"prompt {len(ids)} tokens, {n} new tokens, {steps} steps")
    print(f"reference:     {ref_s:8.2f} s  {n / ref_s:8.1f} tokens/s")
    print(f"steerling-lite:{ours_s:8.2f} s  {n / ours_s:8.1f} tokens/s   ({ours_s / steps * 1000:.1f} ms per step)")
    print(f"speed-up: {ref_s / ours_s:.1f}x   tokens identical: {same}")
    row = (f"| {args.dtype} | {args.sampling} | {len(ids)} | {n} | {steps} | {n / ref_s:.1f} | {n / ours_s:.1f} "
           f"| {ref_s / ours_s:.1f}x | {'yes' if same else 'no'} |")
    if args.parallel_threshold is not None:
        cfg = GenerationConfig(max_new_tokens=n, steps=steps, seed=args.seed, temperature=ours_cfg.temperature,
                               entropy_sampling=ours_cfg.entropy_sampling, confidence_threshold=args.parallel_threshold)
        dt, par = run_ours(cfg)
        agree = sum(a == b for a, b in zip(par.sequence, ours.sequence)) - len(ids)
        print(f"parallel decoding (threshold {args.parallel_threshold}): {dt:.2f} s, {n / dt:.1f} tokens/s, "
              f"{par.steps} steps, {ref_s / dt:.1f}x the reference, {agree}/{n} tokens equal to the default")
    print("markdown:", row)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
