"""The public entry point: a loaded Steerling model with its tokenizer, ready to generate.

>>> from steerling_lite import Steerling, GenerationConfig
>>> lm = Steerling.load("path/to/checkpoint")                       # doctest: +SKIP
>>> lm.generate("The capital of France is", GenerationConfig(max_new_tokens=64)).text  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from quant import QuantConfig

from .loading.checkpoint import Checkpoint, Progress, load_model, open_checkpoint
from .loading.config import SteerlingConfig
from .generation.generate import Generation, GenerationConfig, GenerationResult
from .generation.prompt import build_prompt
from .model.transformer import SteerlingModel, param_part
from .generation.steering import SteeringPlan
from .loading.tokenizer import ChatMessage, SteerlingTokenizer, get_tokenizer

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto``/None -> ``cuda`` when available, else ``cpu``.

    Raises:
        ValueError: a CUDA device was asked for on a machine without one.
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this machine has no CUDA GPU (torch {torch.__version__}); use --device cpu")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device, n_params: int) -> torch.dtype:
    """``auto``/None -> bf16 on CUDA; on CPU fp32 when the fp32 weights fit in half the free RAM,
    else bf16 (the published weights are bf16, so bf16 loses nothing).

    Raises:
        ValueError: an unknown dtype name.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16
        return torch.float32 if n_params * 4 < psutil.virtual_memory().available / 2 else torch.bfloat16
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of auto, {', '.join(sorted(set(DTYPES)))}")
    return DTYPES[dtype]


@dataclass(frozen=True)
class LoadStats:
    """How a load went: seconds, bytes of weights read, and resident memory after loading (bytes)."""

    seconds: float
    file_bytes: int
    rss_bytes: int


class Steerling:
    """A loaded model, its tokenizer and where it runs.

    Attributes:
        model: the :class:`SteerlingModel` (eval mode, frozen).
        tokenizer: the matching tokenizer (base or instruct).
        config: the checkpoint's config.
        device, dtype: where the model runs (the execution device) and the precision of its
            unquantized weights.
        path: the checkpoint directory, if loaded from one.
        quant: ``none``, ``int8``, ``nf4`` or ``fp4`` (the transformer blocks' linear layers).
        quant_config: the :class:`quant.QuantConfig`, or None when unquantized.
        plan: the memory plan the load followed (:class:`steerling_lite.loading.quantized.LoadPlan`),
            or None for a plain load.
    """

    def __init__(self, model: SteerlingModel, device: torch.device, dtype: torch.dtype,
                 path: Path | None = None, load_stats: LoadStats | None = None, *,
                 quant_config=None, plan=None):
        self.model = model
        self.config: SteerlingConfig = model.cfg
        self.tokenizer: SteerlingTokenizer = get_tokenizer(model.cfg.instruct)
        self.device, self.dtype = device, dtype
        self.path = path
        self.load_stats = load_stats
        self.quant_config = quant_config
        self.quant: str = quant_config.method if quant_config is not None else "none"
        self.plan = plan

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = "auto",
        progress: Progress | None = None,
        *,
        quant: str | QuantConfig = "auto",
        max_gpu_memory: int | str | None = None,
        max_cpu_memory: int | str | None = None,
        offload_dir: str | Path | None = None,
        context: int | None = None,
    ) -> Steerling:
        """Load a checkpoint directory (see :func:`~steerling_lite.loading.checkpoint.open_checkpoint` for
        what is checked and the errors raised).

        Args:
            model_dir: the checkpoint directory.
            device: ``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda``, ``cuda:N``.
            dtype: precision of the unquantized weights (``auto``: bf16 on CUDA or when
                quantizing; on the CPU fp32 when it fits in half the free RAM, else bf16).
            progress: called after each tensor with bytes done / total.
            quant: ``auto`` (the best precision that runs without offloading: bf16, int8,
                nf4; else the one that offloads least), ``none``, ``int8``, ``nf4``, ``fp4``, or a
                :class:`quant.QuantConfig` with settings (int8 threshold, double quant, compute dtype).
                Only the transformer blocks' linear layers are quantized
                (:mod:`steerling_lite.loading.quantized`). A pre-quantized checkpoint loads as what it is.
            max_gpu_memory, max_cpu_memory: caps in bytes or as ``"6GiB"``; parts that do not
                fit are offloaded through accelerate (GPU -> CPU RAM -> disk).
            offload_dir: where layers quantized while loading may be offloaded to disk.
            context: tokens of context to plan the KV cache for (default the model's).

        With ``quant="none"`` and no memory options this is the plain load: every weight
        straight to ``device`` in ``dtype``.

        Raises:
            ConfigError, CheckpointError: a bad checkpoint (or a pre-quantized one asked for
                another precision, or written by another bitsandbytes);
            PlacementError: it does not fit, or not on the device asked for;
            ValueError: a bad device, dtype, quant mode or size.
        """
        t0 = time.perf_counter()
        ckpt: Checkpoint = open_checkpoint(model_dir)
        dev = resolve_device(device)
        plain = (isinstance(quant, str) and quant == "none" and ckpt.prequant is None and max_gpu_memory is None
                 and max_cpu_memory is None and offload_dir is None)
        if plain:
            n_params = sum(_numel(t.shape) for t in ckpt.tensors.values())
            dt = resolve_dtype(dtype, dev, n_params)
            model = load_model(ckpt, dev, dt, progress)
            stats = LoadStats(time.perf_counter() - t0, ckpt.nbytes, psutil.Process().memory_info().rss)
            return cls(model, dev, dt, Path(model_dir), stats)
        from .loading.quantized import PlacementError, load_planned, plan_memory

        asked = "auto" if device is None or str(device) == "auto" else str(dev)
        lp = plan_memory(ckpt, quant=quant, device=asked, dtype=dtype, max_gpu_memory=max_gpu_memory,
                         max_cpu_memory=max_cpu_memory, offload_dir=offload_dir, context=context)
        if asked != "auto" and lp.plan.execution_device != asked and not (asked == "cuda" and lp.plan.execution_device == "cuda:0"):
            raise PlacementError(f"{model_dir}: does not fit on {asked} "
                                 f"({'; '.join(lp.plan.notes) or 'see steerling-lite plan'}); use --device auto or a smaller --quant")
        model = load_planned(lp, offload_dir, progress)
        stats = LoadStats(time.perf_counter() - t0, ckpt.nbytes, psutil.Process().memory_info().rss)
        return cls(model, torch.device(lp.plan.execution_device), lp.dtype, Path(model_dir), stats,
                   quant_config=lp.quant, plan=lp)

    # ---- prompts -------------------------------------------------------------------------
    def encode_prompt(self, prompt: str | Sequence[int] | Sequence[ChatMessage], chat: bool | None = None) -> list[int]:
        """Token ids of a prompt.

        A list of :class:`ChatMessage` is formatted with the instruct chat template; a string
        is wrapped as one user turn when ``chat`` is true (default: true for instruct models)
        and encoded as is for completion otherwise; a list of ints is used as is
        (:func:`~steerling_lite.generation.prompt.build_prompt`).
        """
        if isinstance(prompt, str):
            return build_prompt(self.tokenizer, prompt, chat=chat)
        items = list(prompt)
        if items and isinstance(items[0], ChatMessage):
            return build_prompt(self.tokenizer, messages=items, chat=True)  # type: ignore[arg-type]
        return [int(i) for i in items]  # type: ignore[arg-type]

    # ---- generation ---------------------------------------------------------------------
    def stream(
        self,
        prompt: str | Sequence[int] | Sequence[ChatMessage],
        config: GenerationConfig | None = None,
        steering: SteeringPlan | None = None,
        *,
        chat: bool | None = None,
        capture_hidden: bool = False,
    ) -> Generation:
        """A :class:`Generation` to iterate: one :class:`StepEvent` per denoising step.

        Raises:
            GenerationError: empty prompt, context overflow, invalid settings.
        """
        config = config or GenerationConfig()
        ids = self.encode_prompt(prompt, chat)
        return Generation(self.model, self.tokenizer, ids, config, steering, capture_hidden)

    def generate(
        self,
        prompt: str | Sequence[int] | Sequence[ChatMessage],
        config: GenerationConfig | None = None,
        steering: SteeringPlan | None = None,
        *,
        chat: bool | None = None,
    ) -> GenerationResult:
        """Generate to the end; see :meth:`stream`."""
        return self.stream(prompt, config, steering, chat=chat).run()

    # ---- sizes ---------------------------------------------------------------------------
    def parameter_bytes(self) -> dict[str, tuple[int, int]]:
        """Parameters and bytes per part: ``{part: (n_params, bytes)}`` for transformer (without
        the embedding), embedding / LM head (tied: counted once), known head, discovered head."""
        return parameter_breakdown(self.model)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def parameter_breakdown(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """``{part: (n_params, bytes)}`` over ``transformer`` (blocks + norms), ``embedding / lm head``,
    ``known head``, ``discovered head``; tied parameters are counted once."""
    parts: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        acc = parts.setdefault(param_part(name), [0, 0])
        acc[0] += p.numel()
        acc[1] += p.numel() * p.element_size()
    return {k: (v[0], v[1]) for k, v in parts.items()}
