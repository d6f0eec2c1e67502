"""The planned load: reading a checkpoint into the placement and precision a :class:`~.plan.LoadPlan` chose.

Every load goes through here (``Steerling.load`` plans, then calls :func:`load_planned`): an
unquantized model that fits on one device is read tensor by tensor straight to its device
and dtype (:func:`.checkpoint.load_model`); otherwise tensors are streamed shard by shard
into a meta-device model, the policy's layers (:mod:`.quantized`) quantized as they arrive,
each part put where the plan places it, and accelerate's hooks attached when parts are
offloaded (:mod:`quant.loader`, :mod:`quant.offload`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from quant import DiskOffload, StreamingLoader, device_for, dispatch, needs_dispatch, pack_for_cpu, replace_linears
from quant.offload import TensorRef
from quant.memory import release_free_memory
from quant.prequant import QUANTIZE_CONFIG, check_versions

from ..errors import CheckpointError, PlacementError
from ..model.transformer import SteerlingModel
from .checkpoint import TORCH_DTYPES, Progress, iter_tensors, load_model, meta_model
from .plan import LoadPlan
from .quantized import stored_quantized_layers

TRIM_EVERY = 16  # tensors loaded between two release_free_memory() calls


def load_planned(lp: LoadPlan, offload_dir: str | Path | None = None, progress: Progress | None = None,
                 cpu_layout: bool = True) -> SteerlingModel:
    """Load the checkpoint as ``lp`` says: stream tensors shard by shard, quantize the policy's
    layers as they arrive, put each where the plan places its part, then attach accelerate's
    hooks when parts are offloaded. An unquantized model wholly on one device takes the plain
    path (:func:`.checkpoint.load_model`).

    With ``cpu_layout`` and a model wholly in CPU RAM, 4-bit layers are converted to
    bitsandbytes' AVX512-BF16 CPU layout when the CPU has it (about 2x faster matmuls; the
    absmax is then kept in bf16, so logits differ slightly from the portable layout, which
    offloaded models and GPUs use).

    Args:
        lp: the plan (:func:`.plan.plan_memory`).
        offload_dir: where layers quantized while loading are written when the plan puts them
            on disk (None: refused for those).
        progress: called after each tensor with bytes done / total and the tensor's name.

    Returns:
        the model in eval mode, parameters frozen, on the plan's execution device.

    Raises:
        PlacementError: the plan does not fit, or needs ``offload_dir``; CheckpointError:
        unreadable / damaged tensors, or a pre-quantized checkpoint written by another bitsandbytes.
    """
    ckpt, plan, cfg = lp.checkpoint, lp.plan, lp.checkpoint.config
    if not plan.fits:
        raise PlacementError(f"{ckpt.path}: does not fit: " + "; ".join(plan.notes))
    prequant = ckpt.prequant
    if prequant is not None:
        try:
            check_versions(prequant, source=str(ckpt.path / QUANTIZE_CONFIG))
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None
    device_map = plan.device_map()
    exec_dev = torch.device(plan.execution_device)
    if lp.quant is None and prequant is None and not needs_dispatch(device_map):
        return load_model(ckpt, exec_dev, lp.dtype, progress)  # the plain path
    layers = stored_quantized_layers(ckpt, lp.quant)
    model = meta_model(cfg)
    if lp.quant is not None:
        replace_linears(model, layers, lp.quant, bias_dtype=lp.dtype)
    quantized = frozenset(layers)
    on_disk = "disk" in device_map.values()
    offload = None
    if on_disk:
        needs_folder = prequant is None and lp.quant is not None and any(
            device_for(p, device_map) == "disk" for p in ckpt.tensors if p.rpartition(".")[0] in quantized)
        if needs_folder and offload_dir is None:
            raise PlacementError(f"{ckpt.path}: {lp.method} layers must be offloaded to disk: give --offload-dir")
        offload = DiskOffload(offload_dir if needs_folder else None)
    loader = StreamingLoader(model, device_map, lp.dtype, lp.quant if prequant is None else None, quantized,
                             exec_dev if exec_dev.type == "cuda" else torch.device("cpu"), offload)
    to_read = {}
    for param, info in ckpt.tensors.items():
        layer, _, attr = param.rpartition(".")
        quantize_here = prequant is None and layer in quantized and attr == "weight"
        if not quantize_here and info.offsets is not None:
            dtype = TORCH_DTYPES[info.dtype] if (prequant is not None and layer in quantized) else lp.dtype
            ref = TensorRef(str(info.file), *info.offsets, info.shape, TORCH_DTYPES[info.dtype], dtype)
            if loader.add_reference(param, ref):
                continue
        to_read[param] = info
    try:
        for i, (param, tensor) in enumerate(iter_tensors(dataclasses.replace(ckpt, tensors=to_read), progress)):
            if prequant is not None:
                loader.add_stored(param, tensor)
            else:
                loader.add(param, tensor)
            del tensor
            if i % TRIM_EVERY == TRIM_EVERY - 1:
                # quantization temporaries are many mid-sized blocks: without this the C heap keeps
                # their pages (measured: ~1 GB more resident memory on the 8B shape)
                release_free_memory()
        model.transformer.tie_weights()
        missing = loader.missing()
        if missing:  # pragma: no cover - open_checkpoint guarantees every tensor
            raise CheckpointError(f"{ckpt.path}: tensors never loaded: {', '.join(missing[:5])}")
        if cpu_layout and exec_dev.type == "cpu" and not needs_dispatch(device_map):
            pack_for_cpu(model)
        if needs_dispatch(device_map):
            dispatch(model, device_map, exec_dev, offload)
    except BaseException:
        if offload is not None:
            offload.discard()
        raise
    if offload is not None:
        offload.tie_lifetime(model)
    release_free_memory()  # the read buffers and quantization temporaries are gone: give their pages back
    return model.eval()
