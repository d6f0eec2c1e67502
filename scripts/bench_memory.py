#!/usr/bin/env python3
"""Peak host memory and time of loading (and one denoising step), per quantization mode,
against what the memory planner predicted.

Each measurement runs in a fresh process so that its peak is its own: the peak resident
set size is the kernel's high-water mark (``getrusage(RUSAGE_SELF).ru_maxrss``), read
after loading and again after one generation step; psutil gives the resident size at
each point. The planner's prediction is the CPU device's ``peak`` of the plan the load
followed (``steerling-lite plan``, same options).

Examples:
    python scripts/bench_memory.py --model checkpoints/tiny --quant none int8 nf4
    python scripts/bench_memory.py --model checkpoints/8b --quant nf4 int8 --json out/mem8b.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

GiB = 2**30


def child(args: argparse.Namespace) -> dict:
    import psutil
    import torch

    from steerling_lite import GenerationConfig, Steerling

    proc = psutil.Process()
    torch.set_num_threads(max(1, psutil.cpu_count(logical=True) or 1))
    import accelerate  # noqa: F401  (import costs belong to the baseline, as in the CLI)

    from quant.linear import _bnb

    _bnb()

    from steerling_lite.loading.plan import plan_memory

    from steerling_lite.loading.quantized import quant_config

    mode = args.quant
    if ":" in mode:  # int8:T = int8 with outlier threshold T
        method, threshold = mode.split(":")
        mode = quant_config(method, int8_threshold=float(threshold))
    lp = plan_memory(args.model, quant=mode, device="cpu", dtype=args.dtype, context=args.context)
    baseline = proc.memory_info().rss
    t0 = time.perf_counter()
    lm = Steerling.load(args.model, device="cpu", quant=mode, dtype=args.dtype, context=args.context)
    load_s = time.perf_counter() - t0
    peak_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rss_loaded = proc.memory_info().rss
    weights = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    prompt = list(range(1000, 1000 + args.prompt_tokens))
    block = lm.config.diff_block_size
    t1 = time.perf_counter()
    lm.generate(prompt, GenerationConfig(max_new_tokens=block, steps=args.steps, temperature=0, seed=0))
    gen_s = time.perf_counter() - t1
    peak_all = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    plan = lp.plan
    predicted = plan.devices["cpu"].peak
    return {
        "model": args.model, "quant": args.quant if ":" in args.quant else lm.quant,
        "dtype": str(lm.dtype).removeprefix("torch."),
        "load_s": round(load_s, 2), "generate_step_s": round(gen_s / args.steps, 3), "steps": args.steps,
        "baseline_rss": baseline, "weights_bytes": weights, "rss_after_load": rss_loaded,
        "peak_rss_load": peak_load, "peak_rss_load_and_step": peak_all,
        "peak_over_weights": round(peak_load / weights, 3),
        "predicted_peak": predicted,
        "predicted_over_measured": round(predicted / peak_all, 3) if predicted else None,
        "split": plan.split(), "planned_quant": lp.method,
    }


def fmt(n: float | None) -> str:
    return "-" if n is None else f"{n / GiB:.2f} GiB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint directory")
    p.add_argument("--quant", nargs="+", default=["nf4", "int8"],
                   help="modes to measure: none, int8, nf4, fp4, auto, or int8:T (outlier threshold T)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--context", type=int, default=None, help="context to plan for (default: the model's)")
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--steps", type=int, default=1, help="denoising steps for the one generated block")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.quant = args.quant[0]
        print(json.dumps(child(args)))
        return 0
    rows = []
    for q in args.quant:
        cmd = [sys.executable, __file__, "--child", "--model", args.model, "--quant", q, "--dtype", args.dtype,
               "--prompt-tokens", str(args.prompt_tokens), "--steps", str(args.steps)]
        if args.context:
            cmd += ["--context", str(args.context)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return out.returncode
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    import psutil

    machine = f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / GiB:.1f} GiB RAM"
    print(f"machine: {machine}")
    print("| model | quant | load s | weights in RAM | peak RSS (load) | peak / weights | peak RSS (load + 1 step) "
          "| planner predicted peak | predicted / measured | step s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['quant']} ({r['dtype']} rest) | {r['load_s']} | {fmt(r['weights_bytes'])} "
              f"| {fmt(r['peak_rss_load'])} | {r['peak_over_weights']} | {fmt(r['peak_rss_load_and_step'])} "
              f"| {fmt(r['predicted_peak'])} | {r['predicted_over_measured']} | {r['generate_step_s']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
