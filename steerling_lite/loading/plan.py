"""Planning a load: Steerling's memory cost model, and :func:`plan_memory`, which turns a
checkpoint's headers and the machine's memory into a :class:`LoadPlan` (no weight is read).

The cost model, per precision: bytes per placement unit (:func:`plan_units`: each
transformer block, the embedding / tied LM head, the final norm, each concept head), the KV
cache at the requested context, the activation workspace of one denoising step
(:func:`workspace_bytes`), what loading holds in RAM besides the weights, and the process
baseline (:func:`plan_workload`). :mod:`quant.planner` places the units within the budget;
``quant="auto"`` weighs bf16, int8 and nf4 (:data:`~.quantized.AUTO_ORDER`) and picks the best
that runs without offloading, else the one that offloads least. :func:`.load.load_planned`
then loads what the plan says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from quant import (
    Budget, Candidate, GpuMemory, MachineMemory, Plan, QuantConfig, Unit, Workload, choose_plan, fmt_bytes,
    format_plan, parse_size, probe_memory,
)
from quant.config import parse_dtype, short_dtype_name
from quant.linear import CHUNK_WEIGHTS, cpu_layout_nbytes
from quant.memory import MiB
from quant.planner import CPU_HEADROOM

from ..errors import CheckpointError, PlacementError
from ..model.kv_cache import KVCache
from .checkpoint import TORCH_DTYPES, Checkpoint, meta_model, open_checkpoint
from .config import SteerlingConfig
from .quantized import AUTO_ORDER, QUANT_MODES, quant_config, stored_quantized_layers

HOST_BASELINE = 512 * MiB  # RSS after importing torch, bitsandbytes, accelerate (~350 MiB measured), rounded up
QUANT_TEMP_BYTES_PER_WEIGHT = 14  # bitsandbytes' CPU quantize_4bit temporaries (measured; int8: ~10)
DEVICES = "auto, cpu, cuda or cuda:N"


def _torch_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise PlacementError(f"device {str(device)!r}: expected {DEVICES}")
    return dev


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto``/None -> ``cuda`` when this machine has a CUDA GPU, else ``cpu``; other names as torch reads them.

    Raises:
        PlacementError: not a device name, or a CUDA device asked for on a machine without one.
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = _torch_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PlacementError(f"device {str(device)!r}: this machine has no CUDA GPU (torch {torch.__version__}); "
                             "use --device cpu")
    return dev


def float_dtype(dtype: str | torch.dtype | None, quant: QuantConfig | None, device: str, n_params: int,
                ram_available: int) -> torch.dtype:
    """Dtype of the unquantized weights. ``auto``/None: bf16 when quantizing or on a GPU; on the
    CPU fp32 when the fp32 weights fit in half the available RAM, else bf16 (the published
    weights are bf16, so bf16 loses nothing).

    Raises:
        ValueError: an unknown dtype name.
    """
    if dtype not in (None, "auto"):
        return parse_dtype(dtype)
    if quant is not None or device != "cpu":
        return torch.bfloat16
    return torch.float32 if n_params * 4 < ram_available / 2 else torch.bfloat16


def unit_of(param: str) -> str:
    """The placement unit of a parameter: ``transformer.blocks.N``, ``transformer.tok_emb``,
    ``transformer.ln_f``, ``transformer.lm_head``, ``known_head`` or ``unknown_head``."""
    parts = param.split(".")
    if parts[0] == "transformer":
        return ".".join(parts[:3]) if parts[1] == "blocks" else ".".join(parts[:2])
    return parts[0]


def plan_units(ckpt: Checkpoint, quant: QuantConfig | None, dtype: torch.dtype, layers: Sequence[str],
               cpu_layout: bool = False) -> list[Unit]:
    """The checkpoint as planner units, in model order, with the bytes each takes stored as
    planned (quantized layers by :meth:`QuantConfig.weight_nbytes`, the rest in ``dtype``;
    with ``cpu_layout``, 4-bit layers at the larger of their portable and CPU-layout sizes).
    Only the transformer blocks are offloadable (see :mod:`.quantized`)."""
    cfg = ckpt.config
    quantized = set(layers)
    prequant = ckpt.prequant
    sizes: dict[str, int] = {}
    for param, info in ckpt.tensors.items():
        layer, _, attr = param.rpartition(".")
        if prequant is not None and layer in quantized:
            n = info.nbytes  # kept as stored
        elif quant is not None and layer in quantized and attr == "weight":
            n = quant.weight_nbytes(*info.shape)
            if cpu_layout and quant.four_bit:
                n = max(n, cpu_layout_nbytes(quant, *info.shape))
        else:
            n = info.numel * dtype.itemsize
        unit = unit_of(param)
        sizes[unit] = sizes.get(unit, 0) + n
    label_q = (prequant.config.method if prequant else quant.method if quant else None)
    units = []
    for name, n in sizes.items():
        block = name.startswith("transformer.blocks.")
        modules: tuple[str, ...] = ()
        if name == "transformer.tok_emb" and cfg.weight_sharing:
            modules = ("transformer.tok_emb", "transformer.lm_head")
        label = label_q if block and label_q else short_dtype_name(dtype)
        units.append(Unit(name, n, offloadable=block, modules=modules, label=label))
    return units


def workspace_bytes(cfg: SteerlingConfig, quant: QuantConfig | None, dtype: torch.dtype, context: int,
                    largest_linear: tuple[int, int]) -> int:
    """Activation workspace of one denoising step, in bytes (an upper bound, summed over parts
    that are not all alive at once).

    - LM head logits over the masked rows of one diffusion block: ``B x V`` in the model
      dtype, plus four fp32 copies (raw, processed, softmax, sampling; generate.py / sampling.py);
    - activations of a window of two attention blocks (a generated block straddles two):
      per token the residual stream and fp32 norms (6 D x 4 B), q/k/v in the model dtype and
      their fp32 RoPE copies, the SwiGLU hidden (4 I in the model dtype);
    - attention scores when SDPA takes its math path: ``n_head x 2B x context x 4 B``;
    - 4-bit: the largest layer's weight dequantized to the compute dtype (bitsandbytes
      dequantizes before the matmul when more than one token goes through); int8: the
      fp16 input, int8 input and int32 output of the largest layer.
    """
    B = cfg.diff_block_size
    T = 2 * B
    D, V, I, H = cfg.n_embd, cfg.vocab_size, cfg.mlp_hidden, cfg.n_head
    kvd = cfg.kv_heads * cfg.head_dim
    e = dtype.itemsize
    logits = B * V * (e + 16)
    per_token = 6 * D * 4 + (D + 2 * kvd) * e + 2 * (D + kvd) * 4 + 4 * I * e
    scores = H * T * context * 4
    out_f, in_f = largest_linear
    if quant is not None and quant.four_bit:
        extra = out_f * in_f * quant.compute_dtype.itemsize
    elif quant is not None:
        extra = T * (in_f * 3 + out_f * 4)
    else:
        extra = 0
    return logits + T * per_token + scores + extra


def plan_workload(ckpt: Checkpoint, quant: QuantConfig | None, dtype: torch.dtype, context: int,
                  layers: Sequence[str]) -> Workload:
    """KV cache at ``context`` (:meth:`KVCache.bytes_needed`, batch 1: classifier-free guidance
    doubles it), workspace (:func:`workspace_bytes`), what loading holds in RAM besides the
    weights (the largest tensor read that is not kept as read, plus bitsandbytes' quantization
    temporaries of one chunk) and the process baseline."""
    cfg = ckpt.config
    kv = KVCache.bytes_needed(cfg.n_layers, 1, cfg.kv_heads, context, cfg.head_dim, dtype.itemsize)
    quantized = set(layers)
    largest = (0, 0)
    transient = 0
    for param, info in ckpt.tensors.items():
        layer, _, attr = param.rpartition(".")
        if layer in quantized and attr == "weight" and len(info.shape) == 2 and ckpt.prequant is None:
            if info.numel > largest[0] * largest[1]:
                largest = (info.shape[0], info.shape[1])
            if quant is not None:
                chunk = min(info.numel, CHUNK_WEIGHTS)
                transient = max(transient, info.nbytes + chunk * QUANT_TEMP_BYTES_PER_WEIGHT
                                + 2 * quant.weight_nbytes(*info.shape))
                continue
        elif ckpt.prequant is not None and layer in quantized:
            continue  # kept as read
        if TORCH_DTYPES.get(info.dtype) != dtype:
            transient = max(transient, info.nbytes)  # the read buffer, while the cast copy is made
    if ckpt.prequant is not None:
        model = meta_model(cfg)
        for name in quantized:
            mod = model.get_submodule(name)
            if mod.out_features * mod.in_features > largest[0] * largest[1]:
                largest = (mod.out_features, mod.in_features)
    q = quant if quant is not None else (ckpt.prequant.config if ckpt.prequant else None)
    return Workload(kv, workspace_bytes(cfg, q, dtype, context, largest), transient, HOST_BASELINE)


@dataclass
class LoadPlan:
    """A planned load: the chosen placement and precision, and what was weighed.

    Attributes:
        checkpoint: the opened checkpoint (headers only).
        plan: the chosen :class:`quant.Plan`.
        quant: its quantization (None: unquantized).
        dtype: dtype of the unquantized weights (and of the KV cache).
        requested: the quant mode asked for (``auto``, ``none``, ...).
        context: tokens of context the KV cache was planned for.
        memory: the machine's memory figures used.
        budget: the chosen plan's budget.
        candidates: every precision weighed (``auto``), in order.
        offload_dir: the disk offload directory given, if any.
    """

    checkpoint: Checkpoint
    plan: Plan
    quant: QuantConfig | None
    dtype: torch.dtype
    requested: str
    context: int
    memory: MachineMemory
    budget: Budget
    candidates: list[Plan] = field(default_factory=list)
    offload_dir: str | None = None

    @property
    def method(self) -> str:
        return self.quant.method if self.quant is not None else "none"

    def check_device(self, device: str | torch.device | None) -> None:
        """Refuse a plan that does not run on ``device`` (``auto`` or None accept any).

        Raises:
            PlacementError: it runs elsewhere (the model does not fit there), or ``device`` is
                not a device name.
        """
        runs_on = self.plan.execution_device
        if device is None or str(device) == "auto":
            return
        dev = _torch_device(device)
        if str(dev) == runs_on or (dev.type == "cuda" and dev.index is None and runs_on == "cuda:0"):
            return
        raise PlacementError(f"{self.checkpoint.path}: does not fit on {device} "
                             f"({'; '.join(self.plan.notes) or 'see steerling-lite plan'}); "
                             "use --device auto or a smaller --quant")

    def summary_lines(self) -> list[str]:
        """The plan as ``steerling-lite plan`` prints it."""
        ck, mem = self.checkpoint, self.memory
        size = f"{ck.n_params / 1e9:.2f} B parameters, " if ck.prequant is None and ck.n_params else ""
        lines = [f"model: {ck.path} ({size}{fmt_bytes(ck.nbytes)} of weights on disk"
                 f"{', pre-quantized ' + ck.prequant.config.method if ck.prequant else ''}), context {self.context} tokens"]
        for g in mem.gpus:
            name = "simulated" if g.simulated else g.name
            lines.append(f"GPU {g.device} ({name}): {fmt_bytes(g.total)} total, {fmt_bytes(g.free)} free")
        if not mem.gpus:
            lines.append("GPU: none")
        lines.append(f"RAM: {fmt_bytes(mem.ram_available)} available of {fmt_bytes(mem.ram_total)}")
        b = self.budget
        gpu_b = f"GPU {fmt_bytes(b.gpu)} ({fmt_bytes(b.gpu_reserve)} of it kept for the CUDA context), " if b.gpu is not None else ""
        if self.offload_dir is not None:
            disk = f"disk offload to {self.offload_dir}"
        elif b.disk:
            disk = "disk offload: read in place from the checkpoint files"
        else:
            disk = "no disk offload (no --offload-dir)"
        lines.append(f"budget: {gpu_b}RAM {fmt_bytes(b.cpu)}, {disk}")
        if len(self.candidates) > 1:
            lines.append(f"quant {self.requested}: weighed, best first:")
            for p in self.candidates:
                dev = p.devices.get(p.execution_device)
                peak = f"{p.execution_device} peak {fmt_bytes(dev.peak)}" if dev else ""
                verdict = "fits" if p.fits else "does not fit"
                if p.fits and p.offloads:
                    verdict += f", offloads {fmt_bytes(p.offloaded_bytes)}"
                lines.append(f"  {p.name:<5} {p.split():<24} {peak:<26} {verdict}")
        dt = short_dtype_name(self.dtype)
        q = self.quant.describe() if self.quant is not None else f"none ({dt})"
        lines.append(f"quant: {q}; unquantized weights and KV cache in {dt}")
        lines.append("")
        lines.extend(format_plan(self.plan))
        return lines

    def summary(self) -> str:
        return "\n".join(self.summary_lines())


def _pick_gpu(memory: MachineMemory, device: str) -> GpuMemory | None:
    if device == "auto":
        return memory.gpus[0] if memory.gpus else None
    dev = _torch_device(device)
    if dev.type == "cpu":
        return None
    if not memory.gpus:
        raise PlacementError(f"device {device!r}: this machine has no CUDA GPU; use --device cpu")
    for g in memory.gpus:
        if g.index == (dev.index or 0):
            return g
    raise PlacementError(f"device {device!r}: no such GPU (have {', '.join(g.device for g in memory.gpus)})")


def _methods(ckpt: Checkpoint, quant: str | QuantConfig, requested: str) -> list[tuple[str, QuantConfig | None]]:
    """The precisions to weigh, best first, as ``(name, settings)``."""
    if requested not in QUANT_MODES:
        raise ValueError(f"quant {requested!r}: expected one of {', '.join(QUANT_MODES)}")
    prequant = ckpt.prequant
    if prequant is not None:
        if requested not in ("auto", prequant.config.method):
            raise CheckpointError(
                f"{ckpt.path}: pre-quantized with {prequant.config.describe()}; it loads as {prequant.config.method} "
                f"(--quant {prequant.config.method} or auto), not {requested}: quantize the original checkpoint for that"
            )
        return [(prequant.config.method, prequant.config)]
    if isinstance(quant, QuantConfig):
        return [(quant.method, quant if quant.enabled else None)]
    if requested == "auto":
        return [(m, quant_config(m)) for m in AUTO_ORDER]
    return [(requested, quant_config(requested))]


def plan_memory(
    model_dir: str | Path | Checkpoint,
    quant: str | QuantConfig = "auto",
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    max_gpu_memory: int | str | None = None,
    max_cpu_memory: int | str | None = None,
    offload_dir: str | Path | None = None,
    context: int | None = None,
    memory: MachineMemory | None = None,
) -> LoadPlan:
    """Plan loading a checkpoint without reading its weights.

    Args:
        model_dir: checkpoint directory or opened :class:`Checkpoint`.
        quant: ``auto``, ``none``, ``int8``, ``nf4``, ``fp4`` or a :class:`QuantConfig`.
        device: ``auto`` (the first GPU if any, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: dtype of unquantized weights (see :func:`float_dtype`).
        max_gpu_memory, max_cpu_memory: caps (bytes or ``6GiB``-style, :func:`quant.parse_size`);
            default the free GPU memory and the available RAM minus 1 GiB.
        offload_dir: where disk offload may write (None: only weights readable as stored can
            go to disk).
        context: tokens of context for the KV cache (default the model's ``block_size``).
        memory: memory figures to plan with (default: :func:`quant.probe_memory` now).

    Raises:
        ConfigError, CheckpointError: a bad checkpoint (see :func:`.checkpoint.open_checkpoint`),
        or a pre-quantized one asked for another precision; PlacementError: not a device name,
        or no such device; ValueError: an unknown quant mode, dtype or size.
    """
    ckpt = model_dir if isinstance(model_dir, Checkpoint) else open_checkpoint(model_dir)
    cfg = ckpt.config
    memory = memory or probe_memory()
    gpu = _pick_gpu(memory, "auto" if device is None else str(device))
    context = int(context or cfg.block_size)
    if context <= 0:
        raise ValueError(f"context must be a positive number of tokens, got {context}")
    max_gpu = parse_size(max_gpu_memory) if max_gpu_memory is not None else None
    max_cpu = parse_size(max_cpu_memory) if max_cpu_memory is not None else None
    cpu_budget = max(0, memory.ram_available - CPU_HEADROOM)
    if max_cpu is not None:
        cpu_budget = min(max_cpu, memory.ram_available)
    gpu_budget = None
    if gpu is not None:
        gpu_budget = gpu.free if max_gpu is None else min(max_gpu, gpu.free)
    requested = quant.method if isinstance(quant, QuantConfig) else str(quant)
    methods = _methods(ckpt, quant, requested)
    prequant = ckpt.prequant
    exec_kind = "cuda" if gpu is not None else "cpu"
    candidates = []
    configs: dict[str, tuple[QuantConfig | None, torch.dtype]] = {}
    for name, q in methods:
        dt = float_dtype(dtype, q, exec_kind, ckpt.n_params, memory.ram_available)
        layers = stored_quantized_layers(ckpt, q)
        units = plan_units(ckpt, q, dt, layers, cpu_layout=gpu is None)
        work = plan_workload(ckpt, q, dt, context, layers)
        # disk offload without a folder works when what goes to disk is read as stored (accelerate
        # reads it from the safetensors file); layers quantized while loading must be written out
        disk_ok = offload_dir is not None or q is None or prequant is not None
        budget = Budget(gpu_budget, cpu_budget, disk_ok, gpu.device if gpu is not None else "cuda:0")
        label = name if name != "none" else short_dtype_name(dt)
        candidates.append(Candidate(label, units, work, budget))
        configs[label] = (q, dt)
    chosen, plans = choose_plan(candidates)
    if chosen.offloads and offload_dir is None:
        better = [p for p in plans if not p.fits and p.offloaded_bytes < chosen.offloaded_bytes
                  and not any("RAM: needs" in n for n in p.notes)]
        if better:
            b = min(better, key=lambda p: p.offloaded_bytes)
            chosen.notes.append(f"with --offload-dir, {b.name} would offload {fmt_bytes(b.offloaded_bytes)} instead of "
                                f"{fmt_bytes(chosen.offloaded_bytes)} ({b.name} layers are quantized while loading, "
                                "so they must be written out to be offloaded to disk)")
    q, dt = configs[chosen.name]
    budget = next(c.budget for c in candidates if c.name == chosen.name)
    return LoadPlan(ckpt, chosen, q, dt, requested, context, memory, budget, plans,
                    str(offload_dir) if offload_dir is not None else None)
