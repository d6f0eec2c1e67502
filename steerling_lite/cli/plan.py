"""``steerling-lite plan``: where a model would go (GPU, CPU RAM, disk) and how much memory it
would take, from the checkpoint's headers alone (no weight is read), like llama.cpp's
``--fit`` report and ``ollama ps``."""

from __future__ import annotations

import argparse
import json

from .argtypes import positive_int
from .common import add_model_args, model_dir, quant_arg, size_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="show where the model's parts would go and the memory each device needs")
    add_model_args(p)
    p.add_argument("--context", type=positive_int, metavar="TOKENS",
                   help="tokens of context to plan the KV cache for (default: the model's context)")
    p.add_argument("--gpu-total", type=size_arg, metavar="SIZE",
                   help="plan for a simulated GPU of SIZE (e.g. 8GiB) instead of this machine's GPUs; without a GPU "
                        "--max-gpu-memory alone simulates one of that size")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from quant import probe_memory

    from ..loading.plan import plan_memory

    memory = probe_memory()
    if args.gpu_total is not None:
        memory = memory.with_simulated_gpu(args.gpu_total)
    elif not memory.gpus and args.max_gpu_memory is not None and args.device != "cpu":
        memory = memory.with_simulated_gpu(args.max_gpu_memory)
    lp = plan_memory(model_dir(args), quant=quant_arg(args), device=args.device, dtype=args.dtype,
                     max_gpu_memory=args.max_gpu_memory, max_cpu_memory=args.max_cpu_memory,
                     offload_dir=args.offload_dir, context=args.context, memory=memory)
    plan = lp.plan
    if args.json:
        print(json.dumps({
            "model": str(lp.checkpoint.path), "quant": lp.method, "dtype": str(lp.dtype).removeprefix("torch."),
            "context": lp.context, "execution_device": plan.execution_device, "split": plan.split(),
            "fits": plan.fits, "device_map": plan.device_map(),
            "devices": {d: {"weights": u.weights, "kv_cache": u.kv_cache, "workspace": u.workspace,
                            "reserve": u.reserve, "streamed": u.streamed, "loading": u.loading,
                            "peak": u.peak, "budget": u.budget} for d, u in plan.devices.items()},
            "candidates": [{"name": p.name, "split": p.split(), "fits": p.fits, "offloaded_bytes": p.offloaded_bytes}
                           for p in lp.candidates],
            "notes": plan.notes,
        }, indent=2))
    else:
        print("\n".join(lp.summary_lines()))
    return 0 if plan.fits else 1
