"""``steerling-lite quantize``: write a pre-quantized checkpoint that loads without quantizing again."""

from __future__ import annotations

import argparse
import sys
import time

import torch

from .common import fmt_bytes, model_dir, size_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="write a pre-quantized copy of a checkpoint (int8, nf4, fp4)")
    p.add_argument("--model", metavar="DIR", help="checkpoint directory (default: the embedded default model)")
    p.add_argument("--quant", required=True, choices=["int8", "nf4", "fp4"], help="quantization method")
    p.add_argument("--out", required=True, metavar="DIR", help="the new checkpoint directory (must not exist)")
    p.add_argument("--int8-threshold", type=float, default=6.0, metavar="T",
                   help="int8: LLM.int8() outlier threshold (0 disables the fp16 outlier path; default 6)")
    p.add_argument("--double-quant", action=argparse.BooleanOptionalAction, default=True,
                   help="nf4/fp4: quantize the absmax statistics too (default on)")
    p.add_argument("--compute-dtype", default="bf16", choices=["bf16", "fp16", "fp32"],
                   help="nf4/fp4: matmul dtype recorded with the checkpoint (default bf16)")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"],
                   help="dtype of the unquantized tensors (default bf16)")
    p.add_argument("--shard-size", type=size_arg, default=2 * 2**30, metavar="SIZE",
                   help="largest safetensors file (default 2GiB)")
    p.add_argument("--device", default="auto", help="where to quantize: auto (CUDA if available: much faster), cpu, cuda")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..quantized import quant_config, write_prequantized
    from ..runtime import resolve_device

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    config = quant_config(args.quant, int8_threshold=args.int8_threshold, double_quant=args.double_quant,
                          compute_dtype=dtypes[args.compute_dtype])
    device = resolve_device(args.device)
    bar = None
    progress = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc="quantizing", file=sys.stderr, leave=False)

        def progress(done: int, total: int, name: str) -> None:
            bar.total = total
            bar.update(done - bar.n)
    t0 = time.perf_counter()
    try:
        out = write_prequantized(model_dir(args), args.out, config, shard_bytes=args.shard_size,
                                 dtype=dtypes[args.dtype], device=device, progress=progress)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    print(f"wrote {out}: {config.describe()}, {fmt_bytes(size)} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    print(out)
    return 0
