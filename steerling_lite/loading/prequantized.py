"""Writing pre-quantized checkpoints (``steerling-lite quantize``): the policy's layers
(:mod:`.quantized`) stored quantized, so that the checkpoint loads without quantizing again.

What such a checkpoint records (``quantize_config.json``, per-file settings and CRC-32s) is
:mod:`quant.prequant`'s; reading one back is :func:`.checkpoint.open_checkpoint` and the
planned load (:mod:`.load`).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from quant import QuantConfig, quantize_weight
from quant.config import dtype_name
from quant.memory import GiB, release_free_memory
from quant.prequant import QUANTIZE_CONFIG, PrequantInfo, file_metadata, library_versions

from ..atomic import atomic_directory
from ..errors import CheckpointError
from .checkpoint import (
    INDEX_FILE, SINGLE_FILE, Checkpoint, Progress, file_name, iter_tensors, meta_model, open_checkpoint, read_order,
)
from .quantized import quantized_layers


def write_prequantized(
    model_dir: str | Path | Checkpoint,
    out_dir: str | Path,
    quant: QuantConfig,
    shard_bytes: int = 2 * GiB,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
) -> Path:
    """Quantize a checkpoint and write it as a pre-quantized checkpoint that loads without
    quantizing again (see :mod:`quant.prequant` for what is recorded).

    Streams the source tensor by tensor; holds at most one output shard (``shard_bytes``)
    in memory. The directory is written under a temporary name and renamed into place.

    Args:
        model_dir: a checkpoint that is not pre-quantized.
        out_dir: the new checkpoint directory (must not exist).
        quant: the settings (method not ``none``).
        shard_bytes: maximum bytes per safetensors file.
        dtype: dtype of the unquantized tensors.
        device: where to quantize (a GPU is much faster).

    Returns:
        ``out_dir``.

    Raises:
        CheckpointError: the source is pre-quantized or unreadable; FileExistsError: ``out_dir`` exists;
        ValueError: method ``none``.
    """
    ckpt = model_dir if isinstance(model_dir, Checkpoint) else open_checkpoint(model_dir)
    if not quant.enabled:
        raise ValueError("quantize needs a method: int8, nf4 or fp4")
    if ckpt.prequant is not None:
        raise CheckpointError(f"{ckpt.path}: already pre-quantized ({ckpt.prequant.config.method}); quantize the original")
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir}: already exists; choose a new directory")
    cfg = ckpt.config
    layers = quantized_layers(cfg)
    info = PrequantInfo(quant, tuple(layers), library_versions(),
                        {"source": {"path": str(ckpt.path), "bytes": ckpt.nbytes}, "dtype": dtype_name(dtype)})
    model = meta_model(cfg, info)
    # the stored size of each output tensor, in order, to number the shards before writing
    sizes: list[tuple[str, int]] = []
    quantized = set(layers)
    for param in read_order(ckpt):  # shards are filled in the order tensors are read
        t = ckpt.tensors[param]
        layer, _, attr = param.rpartition(".")
        if layer in quantized and attr == "weight":
            for key, (shape, dt) in quant.layout(*t.shape).items():
                sizes.append((f"{layer}.{key}", math.prod(shape) * dt.itemsize))
        else:
            sizes.append((param, t.numel * dtype.itemsize))
    shard_of: dict[str, int] = {}
    n_shards, acc = 1, 0
    for name, n in sizes:
        if acc and acc + n > shard_bytes:
            n_shards, acc = n_shards + 1, 0
        shard_of[name] = n_shards - 1
        acc += n
    names = [SINGLE_FILE] if n_shards == 1 else [f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors" for i in range(n_shards)]
    with atomic_directory(out_dir) as tmp:
        dev = torch.device(device)
        pending: dict[str, torch.Tensor] = {}
        current = 0
        weight_map: dict[str, str] = {}

        def flush() -> None:
            nonlocal pending
            if pending:
                save_file(pending, str(tmp / names[current]), metadata=file_metadata(info, pending))
                for key in pending:
                    weight_map[key] = names[current]
                pending = {}
                release_free_memory()

        def put(name: str, value: torch.Tensor) -> None:
            nonlocal current
            if shard_of[name] != current:
                if shard_of[name] < current:  # pragma: no cover - read_order fixes the order
                    raise RuntimeError(f"{name}: tensors arrived out of shard order")
                flush()
                current = shard_of[name]
            pending[file_name(cfg, name)] = value.detach().to("cpu").contiguous()

        for param, tensor in iter_tensors(ckpt, progress):
            layer, _, attr = param.rpartition(".")
            if layer in quantized and attr == "weight":
                for key, value in quantize_weight(tensor, quant, dev).items():
                    put(f"{layer}.{key}", value)
            else:
                put(param, tensor.to(dtype))
            del tensor
        flush()
        expected = {file_name(cfg, n) for n, _ in model.named_parameters()}
        if set(weight_map) != expected:  # pragma: no cover - guards the writer itself
            raise RuntimeError(f"writer produced {len(weight_map)} tensors, the model has {len(expected)}")
        shutil.copyfile(ckpt.path / "config.json", tmp / "config.json")
        (tmp / QUANTIZE_CONFIG).write_text(info.to_json() + "\n", encoding="utf-8")
        if n_shards > 1:
            total = sum(n for _, n in sizes)
            (tmp / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                     indent=2) + "\n", encoding="utf-8")
    return out_dir
