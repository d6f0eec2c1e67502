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

from .loading.checkpoint import Progress
from .loading.load import load_planned
from .loading.plan import LoadPlan, plan_memory
from .loading.config import SteerlingConfig
from .generation.generate import Generation, GenerationConfig, GenerationResult
from .generation.prompt import build_prompt
from .model.transformer import SteerlingModel, param_part
from .generation.steering import SteeringPlan
from .loading.tokenizer import ChatMessage, SteerlingTokenizer, get_tokenizer


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
        plan: the memory plan the load followed (:class:`~steerling_lite.loading.plan.LoadPlan`;
            None for a model built in memory and wrapped directly).
    """

    def __init__(self, model: SteerlingModel, device: torch.device, dtype: torch.dtype,
                 path: Path | None = None, load_stats: LoadStats | None = None, *,
                 quant_config: QuantConfig | None = None, plan: LoadPlan | None = None):
        self.model = model
        self.config: SteerlingConfig = model.cfg
        self.tokenizer: SteerlingTokenizer = get_tokenizer(model.cfg.instruct)
        self.device, self.dtype = device, dtype
        self.path = path
        self.load_stats = load_stats
        self.quant_config = quant_config
        self.quant: str = quant_config.method if quant_config is not None else "none"
        self.plan = plan
        self._discovered = None  # DiscoveredConcepts, made on first use

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
        """Load a checkpoint directory: plan (:func:`~steerling_lite.loading.plan.plan_memory`, from
        the headers: precision, placement, memory), then load what the plan says
        (:func:`~steerling_lite.loading.load.load_planned`). See
        :func:`~steerling_lite.loading.checkpoint.open_checkpoint` for what is checked.

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
                (the policy: :mod:`steerling_lite.loading.quantized`). A pre-quantized checkpoint loads as
                what it is.
            max_gpu_memory, max_cpu_memory: caps in bytes or as ``"6GiB"``; parts that do not
                fit are offloaded through accelerate (GPU -> CPU RAM -> disk).
            offload_dir: where layers quantized while loading may be offloaded to disk.
            context: tokens of context to plan the KV cache for (default the model's).

        With ``quant="none"`` and a model that fits on its device this is the plain load:
        every weight straight to the device in the planned dtype.

        Raises:
            ConfigError, CheckpointError: a bad checkpoint (or a pre-quantized one asked for
                another precision, or written by another bitsandbytes);
            PlacementError: it does not fit, or not on the device asked for, or no such device;
            ValueError: a bad dtype, quant mode or size.
        """
        t0 = time.perf_counter()
        lp = plan_memory(model_dir, quant=quant, device=device, dtype=dtype, max_gpu_memory=max_gpu_memory,
                         max_cpu_memory=max_cpu_memory, offload_dir=offload_dir, context=context)
        lp.check_device(device)
        model = load_planned(lp, offload_dir, progress)
        stats = LoadStats(time.perf_counter() - t0, lp.checkpoint.nbytes, psutil.Process().memory_info().rss)
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

    # ---- interpretation -------------------------------------------------------------------
    def discovered_concepts(self):
        """Descriptions of this model's discovered concepts (one shared
        :class:`~steerling_lite.interpret.discovered.DiscoveredConcepts`, cached per model in the
        data dir); what :meth:`ConceptCatalog.for_model` labels them with.

        Raises:
            ConceptError: the model has no discovered-concept head.
        """
        from .interpret.discovered import DiscoveredConcepts

        if self._discovered is None:
            self._discovered = DiscoveredConcepts(self)
        return self._discovered

    # ---- sizes ---------------------------------------------------------------------------
    def parameter_bytes(self) -> dict[str, tuple[int, int]]:
        """Parameters and bytes per part: ``{part: (n_params, bytes)}`` for transformer (without
        the embedding), embedding / LM head (tied: counted once), known head, discovered head."""
        return parameter_breakdown(self.model)


def parameter_breakdown(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """``{part: (n_params, bytes)}`` over ``transformer`` (blocks + norms), ``embedding / lm head``,
    ``known head``, ``discovered head``; tied parameters are counted once."""
    parts: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        acc = parts.setdefault(param_part(name), [0, 0])
        acc[0] += p.numel()
        acc[1] += p.numel() * p.element_size()
    return {k: (v[0], v[1]) for k, v in parts.items()}
