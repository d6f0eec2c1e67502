"""Steerling's quantization policy and the glue between the checkpoint loader and :mod:`quant`.

Policy: only the transformer blocks' linear layers (``attn.c_attn``, ``attn.c_proj``,
``mlp.c_fc``, ``mlp.c_proj``) are quantized. The token embedding / tied LM head, every
norm and both concept heads stay in the float dtype (bf16 by default), so the hidden and
composed states go through unquantized concept heads and LM head and attribution stays
exact. Only transformer blocks may be offloaded (to CPU RAM or disk); the embedding, the
final norm, the LM head and the concept heads stay resident on the execution device, since
steering and attribution read their weights directly.

:func:`plan_memory` plans a load from the checkpoint's headers (no weight is read):
bytes per part for the chosen precision, the KV cache at the requested context, the
activation workspace, the CUDA context reserve; ``quant="auto"`` picks the best precision
that runs without offloading (bf16, then int8, then nf4), else the one that offloads
least. :func:`load_planned` then streams the checkpoint in, quantizing layer by layer,
and dispatches it through accelerate when parts are offloaded. :func:`write_prequantized`
writes a pre-quantized checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from quant import (
    Budget, Candidate, DiskOffload, MachineMemory, Plan, QuantConfig, StreamingLoader, Unit, Workload,
    choose_plan, device_for, dispatch, format_plan, format_size, needs_dispatch, pack_for_cpu, parse_size,
    probe_memory, replace_linears, select_linears,
)
from quant.config import dtype_name
from quant.linear import CHUNK_WEIGHTS, cpu_layout_nbytes
from quant.memory import GiB, MiB, release_free_memory
from quant.planner import CPU_HEADROOM
from quant.prequant import PrequantInfo, check_versions, file_metadata, library_versions, QUANTIZE_CONFIG

from ..atomic import atomic_directory
from .checkpoint import (
    INDEX_FILE, SINGLE_FILE, TORCH_DTYPES, Checkpoint, Progress, file_name, iter_tensors, load_model, meta_model,
    open_checkpoint, read_order,
)
from .config import SteerlingConfig
from ..errors import CheckpointError, PlacementError
from ..model.kv_cache import KVCache
from ..model.transformer import SteerlingModel

QUANT_MODES = ("auto", "none", "int8", "nf4", "fp4")
AUTO_ORDER = ("none", "int8", "nf4")  # best first: "int8 for quality, nf4 for memory and speed"
KEEP_UNQUANTIZED = ("transformer.tok_emb", "transformer.lm_head", "known_head", "unknown_head")
RESIDENT = ("transformer.tok_emb", "transformer.lm_head", "transformer.ln_f", "known_head", "unknown_head")
HOST_BASELINE = 512 * MiB  # RSS after importing torch, bitsandbytes, accelerate (~350 MiB measured), rounded up
QUANT_TEMP_BYTES_PER_WEIGHT = 14  # bitsandbytes' CPU quantize_4bit temporaries (measured; int8: ~10)
TRIM_EVERY = 16  # tensors loaded between two release_free_memory() calls
SHORT_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def quant_config(method: str, *, int8_threshold: float = 6.0, double_quant: bool = True,
                 compute_dtype: torch.dtype = torch.bfloat16) -> QuantConfig | None:
    """Steerling's default settings for ``method`` (``none`` -> None): int8 outlier threshold 6,
    4-bit with double quantization (saves ~350 MB on the 8B shape) computing in bf16.

    Raises:
        ValueError: an unknown method.
    """
    if method == "none":
        return None
    return QuantConfig(method, int8_threshold=int8_threshold, double_quant=double_quant, compute_dtype=compute_dtype)


def quantized_layers(cfg: SteerlingConfig) -> list[str]:
    """Names of the layers the policy quantizes: every ``nn.Linear`` except the LM head and the
    concept heads, i.e. the four linear layers of each transformer block."""
    return select_linears(meta_model(cfg), KEEP_UNQUANTIZED)


def unit_of(param: str) -> str:
    """The placement unit of a parameter: ``transformer.blocks.N``, ``transformer.tok_emb``,
    ``transformer.ln_f``, ``transformer.lm_head``, ``known_head`` or ``unknown_head``."""
    parts = param.split(".")
    if parts[0] == "transformer":
        return ".".join(parts[:3]) if parts[1] == "blocks" else ".".join(parts[:2])
    return parts[0]


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


def float_dtype(dtype: str | torch.dtype | None, quant: QuantConfig | None, device: str, n_params: int,
                ram_available: int) -> torch.dtype:
    """Dtype of the unquantized weights. ``auto``: bf16 when quantizing or on a GPU; on the
    CPU fp32 when the fp32 weights fit in half the available RAM, else bf16 (the rule of
    :func:`steerling_lite.runtime.resolve_dtype`).

    Raises:
        ValueError: an unknown dtype name.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16}
    if dtype not in (None, "auto"):
        if dtype not in names:
            raise ValueError(f"dtype {dtype!r}: expected one of auto, {', '.join(sorted(names))}")
        return names[dtype]
    if quant is not None or device != "cpu":
        return torch.bfloat16
    return torch.float32 if n_params * 4 < ram_available / 2 else torch.bfloat16


def plan_units(ckpt: Checkpoint, quant: QuantConfig | None, dtype: torch.dtype, layers: Sequence[str],
               cpu_layout: bool = False) -> list[Unit]:
    """The checkpoint as planner units, in model order, with the bytes each takes stored as
    planned (quantized layers by :meth:`QuantConfig.weight_nbytes`, the rest in ``dtype``;
    with ``cpu_layout``, 4-bit layers at the larger of their portable and CPU-layout sizes)."""
    cfg = ckpt.config
    elem = torch.empty((), dtype=dtype).element_size()
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
            n = _numel(info.shape) * elem
        unit = unit_of(param)
        sizes[unit] = sizes.get(unit, 0) + n
    label_q = (prequant.config.method if prequant else quant.method if quant else None)
    units = []
    for name, n in sizes.items():
        block = name.startswith("transformer.blocks.")
        modules: tuple[str, ...] = ()
        if name == "transformer.tok_emb" and cfg.weight_sharing:
            modules = ("transformer.tok_emb", "transformer.lm_head")
        label = label_q if block and label_q else SHORT_DTYPES.get(dtype, dtype_name(dtype))
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
    e = torch.empty((), dtype=dtype).element_size()
    logits = B * V * (e + 16)
    per_token = 6 * D * 4 + (D + 2 * kvd) * e + 2 * (D + kvd) * 4 + 4 * I * e
    scores = H * T * context * 4
    out_f, in_f = largest_linear
    if quant is not None and quant.four_bit:
        extra = out_f * in_f * torch.empty((), dtype=quant.compute_dtype).element_size()
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
    elem = torch.empty((), dtype=dtype).element_size()
    kv = KVCache.bytes_needed(cfg.n_layers, 1, cfg.kv_heads, context, cfg.head_dim, elem)
    quantized = set(layers)
    largest = (0, 0)
    transient = 0
    for param, info in ckpt.tensors.items():
        layer, _, attr = param.rpartition(".")
        if layer in quantized and attr == "weight" and len(info.shape) == 2 and ckpt.prequant is None:
            if _numel(info.shape) > largest[0] * largest[1]:
                largest = (info.shape[0], info.shape[1])
            if quant is not None:
                chunk = min(_numel(info.shape), CHUNK_WEIGHTS)
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

    def summary_lines(self) -> list[str]:
        """The plan as ``steerling-lite plan`` prints it."""
        ck, mem = self.checkpoint, self.memory
        n_params = sum(_numel(t.shape) for t in ck.tensors.values()) if ck.prequant is None else None
        size = f"{n_params / 1e9:.2f} B parameters, " if n_params else ""
        lines = [f"model: {ck.path} ({size}{format_size(ck.nbytes)} of weights on disk"
                 f"{', pre-quantized ' + ck.prequant.config.method if ck.prequant else ''}), context {self.context} tokens"]
        for g in mem.gpus:
            name = "simulated" if g.simulated else g.name
            lines.append(f"GPU {g.device} ({name}): {format_size(g.total)} total, {format_size(g.free)} free")
        if not mem.gpus:
            lines.append("GPU: none")
        lines.append(f"RAM: {format_size(mem.ram_available)} available of {format_size(mem.ram_total)}")
        b = self.budget
        gpu_b = f"GPU {format_size(b.gpu)} ({format_size(b.gpu_reserve)} of it kept for the CUDA context), " if b.gpu is not None else ""
        if self.offload_dir is not None:
            disk = f"disk offload to {self.offload_dir}"
        elif b.disk:
            disk = "disk offload: read in place from the checkpoint files"
        else:
            disk = "no disk offload (no --offload-dir)"
        lines.append(f"budget: {gpu_b}RAM {format_size(b.cpu)}, {disk}")
        if len(self.candidates) > 1:
            lines.append(f"quant {self.requested}: weighed, best first:")
            for p in self.candidates:
                dev = p.devices.get(p.execution_device)
                peak = f"{p.execution_device} peak {format_size(dev.peak)}" if dev else ""
                verdict = "fits" if p.fits else "does not fit"
                if p.fits and p.offloads:
                    verdict += f", offloads {format_size(p.offloaded_bytes)}"
                lines.append(f"  {p.name:<5} {p.split():<24} {peak:<26} {verdict}")
        q = self.quant.describe() if self.quant is not None else f"none ({SHORT_DTYPES.get(self.dtype, self.dtype)})"
        lines.append(f"quant: {q}; unquantized weights and KV cache in {SHORT_DTYPES.get(self.dtype, self.dtype)}")
        lines.append("")
        lines.extend(format_plan(self.plan))
        return lines

    def summary(self) -> str:
        return "\n".join(self.summary_lines())


def _pick_gpu(memory: MachineMemory, device: str) -> object | None:
    if device == "cpu" or not memory.gpus:
        if device.startswith("cuda") and not memory.gpus:
            raise PlacementError(f"device {device!r}: this machine has no CUDA GPU; use --device cpu")
        return None
    if device in ("auto", "cuda"):
        return memory.gpus[0]
    idx = torch.device(device).index or 0
    for g in memory.gpus:
        if g.index == idx:
            return g
    raise PlacementError(f"device {device!r}: no such GPU (have {', '.join(g.device for g in memory.gpus)})")


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
        max_gpu_memory, max_cpu_memory: caps (bytes or ``6GiB``-style); default the free GPU
            memory and the available RAM minus 1 GiB.
        offload_dir: where disk offload may write (None: only weights readable as stored can
            go to disk).
        context: tokens of context for the KV cache (default the model's ``block_size``).
        memory: memory figures to plan with (default: :func:`quant.probe_memory` now).

    Raises:
        ValueError: an unknown quant mode or size; CheckpointError: a pre-quantized checkpoint
        asked for another precision; PlacementError: no such device.
    """
    ckpt = model_dir if isinstance(model_dir, Checkpoint) else open_checkpoint(model_dir)
    cfg = ckpt.config
    memory = memory or probe_memory()
    device = "auto" if device is None else str(device)
    gpu = _pick_gpu(memory, device)
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
    if requested not in QUANT_MODES:
        raise ValueError(f"quant {requested!r}: expected one of {', '.join(QUANT_MODES)}")
    prequant = ckpt.prequant
    if prequant is not None:
        if requested not in ("auto", prequant.config.method):
            raise CheckpointError(
                f"{ckpt.path}: pre-quantized with {prequant.config.describe()}; it loads as {prequant.config.method} "
                f"(--quant {prequant.config.method} or auto), not {requested}: quantize the original checkpoint for that"
            )
        methods: list[tuple[str, QuantConfig | None]] = [(prequant.config.method, prequant.config)]
    elif isinstance(quant, QuantConfig):
        methods = [(quant.method, quant if quant.enabled else None)]
    elif requested == "auto":
        methods = [(m, quant_config(m)) for m in AUTO_ORDER]
    else:
        methods = [(requested, quant_config(requested))]
    n_params = sum(_numel(t.shape) for t in ckpt.tensors.values())
    exec_kind = "cuda" if gpu is not None else "cpu"
    candidates = []
    configs: dict[str, tuple[QuantConfig | None, torch.dtype]] = {}
    for name, q in methods:
        dt = float_dtype(dtype, q, exec_kind, n_params, memory.ram_available)
        layers = list(prequant.modules) if prequant else (quantized_layers(cfg) if q is not None else [])
        units = plan_units(ckpt, q, dt, layers, cpu_layout=gpu is None)
        work = plan_workload(ckpt, q, dt, context, layers)
        # disk offload without a folder works when what goes to disk is read as stored (accelerate
        # reads it from the safetensors file); layers quantized while loading must be written out
        disk_ok = offload_dir is not None or q is None or prequant is not None
        budget = Budget(gpu_budget, cpu_budget, disk_ok, gpu.device if gpu is not None else "cuda:0")
        label = name if name != "none" else SHORT_DTYPES.get(dt, dtype_name(dt))
        candidates.append(Candidate(label, units, work, budget))
        configs[label] = (q, dt)
    chosen, plans = choose_plan(candidates)
    if chosen.offloads and offload_dir is None:
        better = [p for p in plans if not p.fits and p.offloaded_bytes < chosen.offloaded_bytes
                  and not any("RAM: needs" in n for n in p.notes)]
        if better:
            b = min(better, key=lambda p: p.offloaded_bytes)
            chosen.notes.append(f"with --offload-dir, {b.name} would offload {format_size(b.offloaded_bytes)} instead of "
                                f"{format_size(chosen.offloaded_bytes)} ({b.name} layers are quantized while loading, "
                                "so they must be written out to be offloaded to disk)")
    q, dt = configs[chosen.name]
    budget = next(c.budget for c in candidates if c.name == chosen.name)
    return LoadPlan(ckpt, chosen, q, dt, requested, context, memory, budget, plans,
                    str(offload_dir) if offload_dir is not None else None)


def load_planned(lp: LoadPlan, offload_dir: str | Path | None = None, progress: Progress | None = None,
                 cpu_layout: bool = True) -> SteerlingModel:
    """Load the checkpoint as ``lp`` says: stream tensors shard by shard, quantize the policy's
    layers as they arrive, put each where the plan places its part, then attach accelerate's
    hooks when parts are offloaded.

    With ``cpu_layout`` and a model wholly in CPU RAM, 4-bit layers are converted to
    bitsandbytes' AVX512-BF16 CPU layout when the CPU has it (about 2x faster matmuls; the
    absmax is then kept in bf16, so logits differ slightly from the portable layout, which
    offloaded models and GPUs use).

    Raises:
        PlacementError: the plan does not fit; CheckpointError: unreadable / damaged tensors,
        or a pre-quantized checkpoint written by another bitsandbytes.
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
        return load_model(ckpt, exec_dev, lp.dtype, progress)  # the plain path, unchanged
    layers = list(prequant.modules) if prequant else (quantized_layers(cfg) if lp.quant is not None else [])
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
        if not quantize_here:
            stored = TORCH_DTYPES[info.dtype] if (prequant is not None and layer in quantized) else lp.dtype
            if loader.add_reference(param, str(info.file), info.name, info.nbytes, stored):
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
    elem = torch.empty((), dtype=dtype).element_size()
    # the stored size of each output tensor, in order, to number the shards before writing
    sizes: list[tuple[str, int]] = []
    quantized = set(layers)
    for param in read_order(ckpt):  # shards are filled in the order tensors are read
        t = ckpt.tensors[param]
        layer, _, attr = param.rpartition(".")
        if layer in quantized and attr == "weight":
            for key, (shape, dt) in quant.layout(*t.shape).items():
                sizes.append((f"{layer}.{key}", _numel(shape) * torch.empty((), dtype=dt).element_size()))
        else:
            sizes.append((param, _numel(t.shape) * elem))
    shard_of: dict[str, int] = {}
    n_shards, acc = 1, 0
    for name, n in sizes:
        if acc and acc + n > shard_bytes:
            n_shards, acc = n_shards + 1, 0
        shard_of[name] = n_shards - 1
        acc += n
    names = [SINGLE_FILE] if n_shards == 1 else [f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors" for i in range(n_shards)]
    from safetensors.torch import save_file

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

        from quant.linear import quantize_weight

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
