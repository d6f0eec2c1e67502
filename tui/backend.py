"""What the app asks of steerling_lite's runtime, so API changes stay local: models, sampling, text, status.

The screens and widgets call the functions here (and :mod:`tui.concepts` for concepts,
steering and attribution) rather than the runtime; all of it runs on names that
``steerling_lite`` exports at its top level:

- checkpoint inspection and the memory plan shown before loading (headers only,
  :func:`steerling_lite.plan_memory`);
- loading with a progress callback, quant mode and GPU budget (``Steerling.load``);
- sampling settings as the user types them -> :class:`GenerationConfig`
  (:meth:`GenerationConfig.from_settings`: a blank temperature is the reference's
  entropy-adaptive one; the other defaults are :class:`GenerationConfig`'s);
- token text for display;
- the status line (device, quant mode, RAM / GPU memory, tokens/s).

Errors for bad input are :class:`steerling_lite.SteerlingError` (from the runtime) or
:class:`BackendError` (from here); the app shows their message, never a traceback.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psutil
import torch

from steerling_lite import QUANT_MODES, GenerationConfig, Steerling, SteerlingError, parse_size, plan_memory


class BackendError(SteerlingError):
    """Bad input caught by the app (a setting, a concept name, a prompt, an action that cannot run now)."""


# ---------------------------------------------------------------------------------------
# checkpoints, memory plan, loading
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelInfo:
    """What the status line and title say about a loaded model.

    Attributes:
        path: the directory; name: its last component.
        instruct: chat model (vocab 100284); interpretable: has concept heads.
        n_params: parameters; file_bytes: bytes of weights on disk.
        n_known, n_discovered: concept counts (0 without heads).
        context: context length in tokens; block: diffusion block size in tokens.
        n_layers: transformer blocks.
    """

    path: Path
    name: str
    instruct: bool
    interpretable: bool
    n_params: int
    file_bytes: int
    n_known: int
    n_discovered: int
    context: int
    block: int
    n_layers: int

    @property
    def kind(self) -> str:
        return "instruct" if self.instruct else "base"


def concept_counts(lm: Steerling) -> tuple[int, int]:
    """``(known, discovered)`` concepts of a loaded model; ``(0, 0)`` without concept heads."""
    c = lm.config.concept
    if c is None or not lm.config.interpretable:
        return 0, 0
    return c.n_concepts, (c.n_unknown_concepts or 0) if c.n_unknown_padded else 0


def model_info(lm: Steerling) -> ModelInfo:
    """:class:`ModelInfo` of a loaded model (from its config; nothing read again)."""
    cfg = lm.config
    path = Path(lm.path) if lm.path is not None else Path("model")
    n_params = sum(n for n, _ in lm.parameter_bytes().values())
    file_bytes = lm.load_stats.file_bytes if lm.load_stats is not None else 0
    n_known, n_discovered = concept_counts(lm)
    return ModelInfo(
        path=path, name=path.name or str(path), instruct=cfg.instruct, interpretable=cfg.interpretable,
        n_params=n_params, file_bytes=file_bytes, n_known=n_known, n_discovered=n_discovered,
        context=cfg.block_size, block=cfg.diff_block_size, n_layers=cfg.n_layers,
    )


def quant_modes() -> list[str]:
    """Quantization modes ``Steerling.load`` accepts: ``auto`` (the best precision that runs
    without offloading), ``none``, ``int8``, ``nf4``, ``fp4``."""
    return list(QUANT_MODES)


@dataclass(frozen=True)
class LoadRequest:
    """What the load screen asks for.

    Attributes:
        path: checkpoint directory.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        quant: quantization mode (see :func:`quant_modes`).
        max_gpu_memory: GPU memory budget in bytes, or None for all free memory.
    """

    path: str
    device: str = "auto"
    quant: str = "auto"
    max_gpu_memory: int | None = None


def cuda_available() -> bool:
    return torch.cuda.is_available()


def budget_bytes(text: str) -> int | None:
    """The GPU budget field: blank -> None (all free memory), else a size as every command reads
    one (:func:`steerling_lite.parse_size`: ``8GiB``, ``512MiB``, ``8GB``); the field's unit is
    GiB, so a bare number (``8``) is GiB, as the field's placeholder says.

    Raises:
        BackendError: not a size (names the field).
    """
    if not text.strip():
        return None
    text = text.strip()
    try:
        float(text)
    except ValueError:
        pass
    else:
        text += "GiB"  # a bare number in this field counts GiB
    try:
        return parse_size(text)
    except ValueError as exc:
        raise BackendError(f"memory budget: {exc}") from None


def _check_dir(path_text: str) -> Path:
    if not str(path_text).strip():
        raise BackendError("no model directory given: type the path of a checkpoint directory")
    path = Path(path_text).expanduser()
    if not path.exists():
        raise BackendError(f"{path}: no such directory; give the folder holding config.json and model.safetensors")
    if not path.is_dir():
        raise BackendError(f"{path}: not a directory; give the folder holding config.json and model.safetensors")
    return path


def memory_plan(request: LoadRequest) -> list[str]:
    """Where the weights will go and whether they fit, before anything is loaded
    (:func:`steerling_lite.plan_memory`: headers only, memory probed now).

    The first lines are the verdict (where it runs, the precision chosen), then the
    planner's full report (per-module placement, peak memory per device).

    Raises:
        SteerlingError: the checkpoint cannot be read, or the device does not exist;
        BackendError: a bad option.
    """
    path = _check_dir(request.path)
    try:
        lp = plan_memory(path, quant=request.quant, device=request.device or "auto",
                         max_gpu_memory=request.max_gpu_memory)
    except SteerlingError:
        raise
    except ValueError as exc:
        raise BackendError(str(exc)) from exc
    lines = lp.summary_lines()
    head = [ln for ln in lines if ln.startswith("runs on")] + [ln for ln in lines if ln.startswith("quant:")]
    return head + [""] + [ln for ln in lines if ln not in head]


ProgressFn = Callable[[int, int, str], None]


def load_model(request: LoadRequest, progress: ProgressFn | None = None) -> Steerling:
    """Load the checkpoint as the load screen asks; runs in a worker thread.

    Raises:
        ConfigError, CheckpointError: bad checkpoint; PlacementError: it does not fit;
        BackendError: a bad path, device or option.
    """
    path = _check_dir(request.path)
    try:
        return Steerling.load(path, device=request.device or "auto", progress=progress, quant=request.quant,
                              max_gpu_memory=request.max_gpu_memory)
    except SteerlingError:
        raise
    except (ValueError, RuntimeError, OSError) as exc:  # device errors, out of memory, unreadable files
        raise BackendError(f"{path}: {exc}") from exc


def model_quant(lm: Steerling) -> str:
    """The loaded model's quantization mode (``none`` for plain weights)."""
    return str(getattr(lm, "quant", "none") or "none")


# ---------------------------------------------------------------------------------------
# sampling settings
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sampling:
    """The sampling settings the user edits (and a session saves).

    Attributes:
        max_new_tokens: tokens to generate (a multiple of the model's diffusion block); the
            app starts at one block of the small models (64), not the reference's 1024.
        steps: denoising steps; None = one per token.
        temperature: None = the reference's entropy-adaptive temperature; 0 = greedy.
        top_p, repetition_penalty: as :class:`GenerationConfig` (and its defaults).
        seed: None = a random seed per generation (reported after it).
    """

    max_new_tokens: int = 64
    steps: int | None = None
    temperature: float | None = None
    top_p: float = GenerationConfig.top_p
    repetition_penalty: float = GenerationConfig.repetition_penalty
    seed: int | None = None

    FIELDS = ("max_new_tokens", "steps", "temperature", "top_p", "repetition_penalty", "seed")

    def to_config(self) -> GenerationConfig:
        return GenerationConfig.from_settings(
            temperature=self.temperature, max_new_tokens=self.max_new_tokens, steps=self.steps,
            top_p=self.top_p, repetition_penalty=self.repetition_penalty, seed=self.seed,
        )

    def check(self, lm: Steerling) -> None:
        """Raise :class:`GenerationError` if ``lm`` cannot use these settings."""
        self.to_config().validate(lm.config.diff_block_size)

    def fit_block(self, block: int) -> Sampling:
        """These settings, or when ``max_new_tokens`` is not a multiple of ``block`` (a model with
        another diffusion block size was loaded) one block of tokens at one step per token."""
        return self if self.max_new_tokens % block == 0 else replace(self, max_new_tokens=block, steps=None)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.FIELDS}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sampling:
        return cls(**{k: d[k] for k in cls.FIELDS if k in d})

    def to_form(self) -> dict[str, str]:
        return {k: "" if getattr(self, k) is None else str(getattr(self, k)) for k in self.FIELDS}

    @classmethod
    def from_form(cls, form: dict[str, str]) -> Sampling:
        """Parse what the user typed.

        Raises:
            BackendError: a field is not a number of the right kind (names the field).
        """

        def num(name: str, kind: type, optional: bool) -> Any:
            text = form.get(name, "").strip()
            if not text:
                if optional:
                    return None
                raise BackendError(f"{name.replace('_', ' ')}: a value is needed")
            try:
                value = kind(text)
            except ValueError:
                what = "a whole number" if kind is int else "a number"
                raise BackendError(f"{name.replace('_', ' ')}: {text!r} is not {what}") from None
            if kind is float and not math.isfinite(value):
                raise BackendError(f"{name.replace('_', ' ')}: must be a finite number")
            return value

        return cls(
            max_new_tokens=num("max_new_tokens", int, False),
            steps=num("steps", int, True),
            temperature=num("temperature", float, True),
            top_p=num("top_p", float, False),
            repetition_penalty=num("repetition_penalty", float, False),
            seed=num("seed", int, True),
        )


# ---------------------------------------------------------------------------------------
# token text
# ---------------------------------------------------------------------------------------
def token_text(lm: Steerling, token_id: int) -> str:
    """Display text of one token; an id the tokenizer cannot decode (a hole in the vocabulary,
    which a random-weight model may sample) shows as ``\ufffd``."""
    try:
        return lm.tokenizer.token_text(token_id)
    except (KeyError, ValueError):
        return "\ufffd"


def decode(lm: Steerling, ids: Sequence[int]) -> str:
    """Text of ``ids`` (special tokens dropped); undecodable ids as ``\ufffd``."""
    try:
        return lm.tokenizer.decode(ids)
    except (KeyError, ValueError):
        return "".join(token_text(lm, i) for i in ids if not is_special(lm, i))


def token_texts(lm: Steerling, ids: Sequence[int]) -> list[str]:
    """Display text of each token (partial UTF-8 shows as a replacement char)."""
    return [token_text(lm, i) for i in ids]


def is_special(lm: Steerling, token_id: int) -> bool:
    return token_id in lm.tokenizer.special_ids


def block_texts(lm: Steerling, block_tokens: Sequence[int]) -> list[str | None]:
    """The slots of the block being denoised: None where still masked, ``""`` for a special
    token, else the token's display text."""
    mask = lm.config.mask_token_id
    return [None if t == mask else ("" if is_special(lm, t) else token_text(lm, t)) for t in block_tokens]


# ---------------------------------------------------------------------------------------
# status
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Status:
    """What the status bar shows. Memory in bytes; None where not applicable."""

    device: str = "-"
    dtype: str = "-"
    quant: str = "none"
    ram_bytes: int | None = None
    gpu_bytes: int | None = None
    tokens_per_s: float | None = None


StatusSource = Callable[["Steerling | None", "float | None"], Status]


def read_status(lm: Steerling | None, tokens_per_s: float | None) -> Status:
    """The live status: process RSS (psutil) and, on CUDA, ``torch.cuda.memory_allocated``."""
    ram = psutil.Process().memory_info().rss
    if lm is None:
        return Status(ram_bytes=ram, tokens_per_s=tokens_per_s)
    gpu = None
    if lm.device.type == "cuda" and torch.cuda.is_available():
        gpu = int(torch.cuda.memory_allocated(lm.device))
    return Status(device=str(lm.device), dtype=str(lm.dtype).removeprefix("torch."), quant=model_quant(lm),
                  ram_bytes=ram, gpu_bytes=gpu, tokens_per_s=tokens_per_s)
