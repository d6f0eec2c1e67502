"""``steerling-lite quantize``: write a pre-quantized checkpoint that loads without quantizing again."""

from __future__ import annotations

import argparse
import sys
import time

from quant import fmt_bytes
from quant.config import FLOAT_DTYPES

from .argtypes import device_arg
from .common import add_quant_settings, byte_progress, model_dir, quant_arg, size_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="write a pre-quantized copy of a checkpoint (int8, nf4, fp4)")
    p.add_argument("--model", metavar="DIR", help="checkpoint directory (default: the embedded default model)")
    p.add_argument("--quant", required=True, choices=["int8", "nf4", "fp4"], help="quantization method")
    p.add_argument("--out", required=True, metavar="DIR", help="the new checkpoint directory (must not exist)")
    add_quant_settings(p)
    p.add_argument("--dtype", default="bf16", choices=list(FLOAT_DTYPES),
                   help="dtype of the unquantized tensors (default bf16)")
    p.add_argument("--shard-size", type=size_arg, default=2 * 2**30, metavar="SIZE",
                   help="largest safetensors file (default 2GiB)")
    p.add_argument("--device", default="auto", type=device_arg, help="where to quantize: auto (CUDA if available: much faster), cpu, cuda")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..loading.plan import resolve_device
    from ..loading.prequantized import write_prequantized

    config = quant_arg(args)
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    try:
        with byte_progress("quantizing") as progress:
            out = write_prequantized(model_dir(args), args.out, config, shard_bytes=args.shard_size,
                                     dtype=FLOAT_DTYPES[args.dtype], device=device, progress=progress)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    print(f"wrote {out}: {config.describe()}, {fmt_bytes(size)} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    print(out)
    return 0
