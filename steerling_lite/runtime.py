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

from .checkpoint import Checkpoint, Progress, load_model, open_checkpoint
from .config import SteerlingConfig
from .generate import Generation, GenerationConfig, GenerationResult
from .model import SteerlingModel, param_part
from .steering import SteeringPlan
from .tokenizer import ChatMessage, SteerlingTokenizer, get_tokenizer

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
        device, dtype: where and in which precision the weights live.
        path: the checkpoint directory, if loaded from one.
    """

    def __init__(self, model: SteerlingModel, device: torch.device, dtype: torch.dtype,
                 path: Path | None = None, load_stats: LoadStats | None = None):
        self.model = model
        self.config: SteerlingConfig = model.cfg
        self.tokenizer: SteerlingTokenizer = get_tokenizer(model.cfg.instruct)
        self.device, self.dtype = device, dtype
        self.path = path
        self.load_stats = load_stats

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = "auto",
        progress: Progress | None = None,
    ) -> Steerling:
        """Load a checkpoint directory (see :func:`~steerling_lite.checkpoint.open_checkpoint` for
        what is checked and the errors raised)."""
        t0 = time.perf_counter()
        ckpt: Checkpoint = open_checkpoint(model_dir)
        dev = resolve_device(device)
        n_params = sum(_numel(t.shape) for t in ckpt.tensors.values())
        dt = resolve_dtype(dtype, dev, n_params)
        model = load_model(ckpt, dev, dt, progress)
        stats = LoadStats(time.perf_counter() - t0, ckpt.nbytes, psutil.Process().memory_info().rss)
        return cls(model, dev, dt, Path(model_dir), stats)

    # ---- prompts -------------------------------------------------------------------------
    def encode_prompt(self, prompt: str | Sequence[int] | Sequence[ChatMessage], chat: bool | None = None) -> list[int]:
        """Token ids of a prompt.

        A list of :class:`ChatMessage` is formatted with the instruct chat template; a string
        is wrapped as one user turn when ``chat`` is true (default: true for instruct models)
        and encoded as is for completion otherwise; a list of ints is used as is.
        """
        if isinstance(prompt, str):
            use_chat = self.config.instruct if chat is None else chat
            if use_chat:
                return self.tokenizer.chat_prompt([ChatMessage("user", prompt)])
            return self.tokenizer.encode(prompt)
        items = list(prompt)
        if items and isinstance(items[0], ChatMessage):
            return self.tokenizer.chat_prompt(items)  # type: ignore[arg-type]
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
