#!/usr/bin/env python3
"""Full-size validation on a GPU (issue 7): memory, speed, offload, attribution / steering
overhead and time to first token at the Steerling-8B shape, with the reference where it fits.

Every measurement runs in a fresh process (so GPU peaks are its own) and appends one JSON
record to ``--out/results.jsonl``; ``--out/summary.md`` is rewritten from all records after
each phase. Phases (``--phases``, default all), each small enough for one 10-minute call:

- ``memory``: per precision, peak GPU memory after load and during generation at 4k context
  (prompt 4032 + 64 new tokens); ``torch.cuda.max_memory_allocated`` and the device-wide use
  (``mem_get_info``, CUDA context included). Targets: nf4 <= 6.5 GB, int8 <= 10.5 GB.
- ``speed``: prompt 512, 256 new tokens, steps 256 and 64, greedy: tokens/s of bf16 / int8 /
  nf4 and of the reference in bf16; ratio ours/reference in bf16 (target >= 5x) and whether
  the tokens match.
- ``offload``: nf4 and int8 under ``--max-gpu-memory`` 8, 6 and 4 GiB (the rest in RAM, then
  disk): completes?, tokens/s, peak GPU memory.
- ``overhead``: attribution (``explain``) and steering (one amplified concept) against plain
  generation, nf4 and bf16.
- ``ttft``: ``steerling-lite generate`` as a subprocess, command to first committed token,
  load included: cold (quantizing while loading) and from a pre-quantized checkpoint.

    python scripts/make_checkpoint.py --preset 8b --out checkpoints/8b
    python scripts/bench_gpu.py --model checkpoints/8b --out out/gpu --phases memory speed
    python scripts/bench_gpu.py --preset tiny --device cpu --out /tmp/gpu-dry   # code paths, no GPU
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

GB = 10**9
GiB = 2**30
PHASES = ("memory", "speed", "offload", "overhead", "ttft")
PRECISIONS = ("none", "int8", "nf4")


# ---- measurements (each in its own process) ---------------------------------------------------
def _gpu_reset(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _gpu_stats(device: str) -> dict:
    import torch

    if not device.startswith("cuda"):
        return {}
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    return {"max_allocated": torch.cuda.max_memory_allocated(), "max_reserved": torch.cuda.max_memory_reserved(),
            "device_used": total - free}


def _timed_generate(lm, ids, cfg, steering=None, explain_it=False):
    import torch

    from steerling_lite import explain

    if lm.device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    if explain_it:
        out = explain(lm, ids, cfg, steering)
        tokens = out.trace.sequence if hasattr(out, "trace") else None
    else:
        out = lm.generate(ids, cfg, steering)
        tokens = out.sequence
    if lm.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, tokens


def measure(args: argparse.Namespace, task: dict) -> dict:
    """One measurement: ``task`` names the phase and its settings."""
    import torch

    from _common import machine, prompt_ids
    from steerling_lite import GenerationConfig, Steerling, SteeringBuilder, Steering

    phase, quant = task["phase"], task.get("quant", "none")
    rec = {"phase": phase, "quant": quant, "machine": machine()}
    _gpu_reset(args.device)
    t0 = time.perf_counter()
    lm = Steerling.load(task.get("model", args.model), device=args.device, dtype="bf16", quant=quant,
                        max_gpu_memory=task.get("max_gpu_memory"), offload_dir=task.get("offload_dir"))
    rec["load_s"] = round(time.perf_counter() - t0, 2)
    rec["split"] = lm.plan.plan.split() if lm.plan is not None else "100% " + lm.device.type.upper()
    rec["after_load"] = _gpu_stats(args.device)
    B = lm.config.diff_block_size
    greedy = dict(temperature=0.0, seed=0)
    if phase == "memory":
        n_prompt = min(lm.config.block_size, args.context) - B
        ids = prompt_ids(lm.tokenizer, n_prompt)
        _gpu_reset(args.device)
        dt, _ = _timed_generate(lm, ids, GenerationConfig(max_new_tokens=B, steps=B, **greedy))
        rec.update(prompt=len(ids), new_tokens=B, during_generation=_gpu_stats(args.device), seconds=round(dt, 2))
    elif phase in ("speed", "offload"):
        ids = prompt_ids(lm.tokenizer, task["prompt"])
        n = task["new_tokens"]
        _timed_generate(lm, ids, GenerationConfig(max_new_tokens=B, steps=B, **greedy))  # warm-up
        _gpu_reset(args.device)
        dt, tokens = _timed_generate(lm, ids, GenerationConfig(max_new_tokens=n, steps=task["steps"], **greedy))
        rec.update(prompt=len(ids), new_tokens=n, steps=task["steps"], seconds=round(dt, 3),
                   tokens_per_s=round(n / dt, 2), peak=_gpu_stats(args.device),
                   max_gpu_memory=task.get("max_gpu_memory"), tokens=tokens)
        if task.get("reference"):
            from tests.oracle import load_reference, reference_generation_config

            del lm
            torch.cuda.empty_cache() if args.device.startswith("cuda") else None
            model, gen = load_reference(args.model, torch.bfloat16)
            model.to(args.device)
            gen.device = torch.device(args.device)
            x = torch.tensor([ids], device=args.device)
            ref_cfg = dict(use_entropy_sampling=False, temperature=0.0, seed=0)
            gen.generate_full(x, reference_generation_config(max_new_tokens=B, steps=B, **ref_cfg))
            _gpu_reset(args.device)
            t = time.perf_counter()
            ref = gen.generate_full(x, reference_generation_config(max_new_tokens=n, steps=task["steps"], **ref_cfg))
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            rdt = time.perf_counter() - t
            rec.update(reference_seconds=round(rdt, 3), reference_tokens_per_s=round(n / rdt, 2),
                       reference_peak=_gpu_stats(args.device), speedup=round(rdt / dt, 2),
                       identical=ref.tokens.tolist() == tokens)
    elif phase == "overhead":
        ids = prompt_ids(lm.tokenizer, task["prompt"])
        cfg = GenerationConfig(max_new_tokens=task["new_tokens"], steps=task["steps"], seed=0)
        plan = SteeringBuilder(lm).build([Steering(0, "amplify", 8.0)])
        _timed_generate(lm, ids, GenerationConfig(max_new_tokens=B, steps=B, **greedy))
        plain, _ = _timed_generate(lm, ids, cfg)
        steered, _ = _timed_generate(lm, ids, cfg, plan)
        attributed, _ = _timed_generate(lm, ids, cfg, explain_it=True)
        rec.update(prompt=len(ids), new_tokens=task["new_tokens"], steps=task["steps"], plain_s=round(plain, 3),
                   steered_s=round(steered, 3), attributed_s=round(attributed, 3),
                   steering_overhead=round(steered / plain, 3), attribution_overhead=round(attributed / plain, 3))
    rec.pop("tokens", None)
    return rec


def ttft(args: argparse.Namespace, model: str, quant: str, label: str) -> dict:
    """Wall time from launching ``steerling-lite generate`` to its first committed token."""
    cmd = [sys.executable, "-m", "steerling_lite", "generate", "--model", model, "--device", args.device,
           "--quant", quant, "--prompt", "The history of the city", "-n", "64", "--temperature", "0", "--json"]
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t
    res = json.loads(out.stdout)
    tm = res["timings"]
    first = wall - (tm["generate_s"] - tm["first_token_s"]) - (tm["total_s"] - tm["load_s"] - tm["generate_s"])
    return {"phase": "ttft", "quant": quant, "label": label, "wall_s": round(wall, 2), "load_s": tm["load_s"],
            "command_to_first_token_s": round(first, 2)}


# ---- orchestration -----------------------------------------------------------------------------
def run_child(args: argparse.Namespace, task: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(task), "--model", str(args.model), "--device", args.device,
           "--context", str(args.context)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {**task, "error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def tasks_for(phase: str, args: argparse.Namespace) -> list[dict]:
    if phase == "memory":
        return [{"phase": "memory", "quant": q} for q in PRECISIONS]
    if phase == "speed":
        return [{"phase": "speed", "quant": q, "prompt": 512, "new_tokens": 256, "steps": s, "reference": q == "none"}
                for s in (256, 64) for q in PRECISIONS]
    if phase == "offload":
        return [{"phase": "offload", "quant": q, "prompt": 512, "new_tokens": 64, "steps": 64,
                 "max_gpu_memory": f"{g}GiB", "offload_dir": str(Path(args.out) / "offload")}
                for q in ("nf4", "int8") for g in args.budgets]
    if phase == "overhead":
        return [{"phase": "overhead", "quant": q, "prompt": 512, "new_tokens": 128, "steps": 128} for q in ("nf4", "none")]
    return []


def summarize(records: list[dict]) -> str:
    def g(x):
        return f"{x / GB:.2f} GB" if isinstance(x, (int, float)) else "-"

    lines = ["# bench_gpu summary", ""]
    machines = [r["machine"] for r in records if "machine" in r]
    if machines:
        lines += [f"machine: {machines[-1]}", ""]
    for r in records:
        if "error" in r:
            lines.append(f"- {r['phase']} {r.get('quant')} {r.get('max_gpu_memory', '')}: FAILED: {r['error']}")
        elif r["phase"] == "memory":
            d = r.get("during_generation", {})
            lines.append(f"- memory {r['quant']}: after load {g(r['after_load'].get('max_allocated'))} allocated, "
                         f"{g(r['after_load'].get('device_used'))} device; generating at {r['prompt'] + r['new_tokens']} "
                         f"tokens {g(d.get('max_allocated'))} allocated, {g(d.get('device_used'))} device")
        elif r["phase"] in ("speed", "offload"):
            extra = (f"; reference {r['reference_tokens_per_s']} tok/s, {r['speedup']}x, identical {r['identical']}"
                     if "speedup" in r else "")
            lines.append(f"- {r['phase']} {r['quant']} {r.get('max_gpu_memory') or ''} steps {r['steps']}: "
                         f"{r['tokens_per_s']} tok/s, peak {g(r['peak'].get('max_allocated'))}, {r['split']}{extra}")
        elif r["phase"] == "overhead":
            lines.append(f"- overhead {r['quant']}: steering x{r['steering_overhead']}, attribution x{r['attribution_overhead']}")
        elif r["phase"] == "ttft":
            lines.append(f"- ttft {r['label']} {r['quant']}: {r['command_to_first_token_s']} s (load {r['load_s']} s)")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="checkpoint directory (the 8B shape)")
    p.add_argument("--preset", help="write a random checkpoint of this preset instead of --model (e.g. tiny)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default="out/gpu")
    p.add_argument("--phases", nargs="+", default=list(PHASES), choices=PHASES)
    p.add_argument("--budgets", nargs="+", type=int, default=[8, 6, 4], help="GiB for the offload phase")
    p.add_argument("--context", type=int, default=4096)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args, json.loads(args.child))))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.preset:
        from steerling_lite.loading.random_checkpoint import preset_config, write_random_checkpoint

        args.model = str(write_random_checkpoint(Path(tempfile.mkdtemp()) / args.preset, preset_config(args.preset)))
    if not args.model:
        p.error("--model or --preset is required")
    results = out / "results.jsonl"
    for phase in args.phases:
        if phase == "ttft":
            prequant = out / "prequantized-nf4"
            recs = [ttft(args, args.model, "nf4", "cold")]
            if not prequant.exists():
                subprocess.run([sys.executable, "-m", "steerling_lite", "quantize", "--model", args.model,
                                "--quant", "nf4", "--out", str(prequant)], check=True)
            recs.append(ttft(args, str(prequant), "auto", "pre-quantized nf4"))
        else:
            recs = [run_child(args, t) for t in tasks_for(phase, args)]
        with results.open("a") as f:
            for r in recs:
                f.write(json.dumps(r) + "\n")
                print(json.dumps(r), flush=True)
        records = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
        (out / "summary.md").write_text(summarize(records))
    print((out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
