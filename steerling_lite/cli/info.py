"""``steerling-lite info``: a checkpoint's config, parameter counts and bytes per part, without running it."""

from __future__ import annotations

import argparse
import json
import math

from quant import fmt_bytes

from ..loading.checkpoint import expected_shapes, open_checkpoint
from ..model.transformer import param_part
from .common import model_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print a checkpoint's config, parameter counts and bytes per part")
    p.add_argument("--model", metavar="DIR", help="checkpoint directory (default: the embedded default model)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = model_dir(args)
    ckpt = open_checkpoint(path)  # reads headers only
    cfg = ckpt.config
    parts: dict[str, dict[str, int]] = {}
    for name, shape in expected_shapes(cfg).items():  # the model's parameters (also when stored quantized)
        parts.setdefault(param_part(name), {"params": 0, "bytes": 0})["params"] += math.prod(shape)
    for name, info in ckpt.tensors.items():  # the bytes stored on disk
        parts[param_part(name)]["bytes"] += info.nbytes
    total_params = sum(p["params"] for p in parts.values())
    total_bytes = sum(p["bytes"] for p in parts.values())
    dtypes = sorted({i.dtype for i in ckpt.tensors.values()})
    if args.json:
        print(json.dumps({
            "path": str(path), "schema": cfg.schema, "config": cfg.to_dict(), "files": [f.name for f in ckpt.files],
            "dtypes": dtypes, "parts": parts, "total_params": total_params, "total_bytes": total_bytes,
            "prequantized": ckpt.prequant.config.describe() if ckpt.prequant is not None else None,
        }, indent=2))
        return 0
    kind = "instruct" if cfg.instruct else "base"
    print(f"{path}  ({cfg.schema} config, {kind}, {'interpretable' if cfg.interpretable else 'not interpretable'})")
    print(f"  files: {', '.join(f.name for f in ckpt.files)}  dtype: {', '.join(dtypes)}")
    if ckpt.prequant is not None:
        print(f"  pre-quantized: {ckpt.prequant.config.describe()} (transformer block linear layers)")
    print(f"  layers {cfg.n_layers}, n_embd {cfg.n_embd}, heads {cfg.n_head} (kv {cfg.kv_heads}), "
          f"mlp {cfg.mlp_type} {cfg.mlp_hidden}, context {cfg.block_size}, diffusion block {cfg.diff_block_size}, "
          f"vocab {cfg.vocab_size}")
    c = cfg.concept
    if c is not None:
        disc = (f"{c.n_unknown_concepts} discovered (top-{c.unknown_topk}, "
                f"{'rank ' + str(c.factorize_rank) if c.factorize_unknown else 'dense'})") if c.n_unknown_padded else "no discovered head"
        print(f"  concepts: {c.n_concepts} known (top-{c.topk_known}), {disc}, "
              f"epsilon correction {'on' if c.use_epsilon_correction else 'off'}")
    print(f"  {'part':<22}{'parameters':>16}{'bytes':>14}")
    for name in ("transformer", "embedding / lm head", "known head", "discovered head"):
        if name in parts:
            p = parts[name]
            print(f"  {name:<22}{p['params']:>16,}{fmt_bytes(p['bytes']):>14}")
    print(f"  {'total':<22}{total_params:>16,}{fmt_bytes(total_bytes):>14}")
    tied = "tied to the embedding" if cfg.weight_sharing else "separate"
    print(f"  lm head: {tied}; bf16 size of the whole model {fmt_bytes(total_params * 2)}")
    return 0


