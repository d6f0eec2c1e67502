"""Everything the app asks of steerling_lite, in one module, so API changes stay local.

The screens and widgets call the functions here rather than the runtime (they import
only ``SteerlingError`` to catch it); these run on steerling_lite's public API:

- checkpoint inspection and the memory plan shown before loading (headers only,
  :func:`steerling_lite.loading.quantized.plan_memory`);
- loading with a progress callback, quant mode and GPU budget (``Steerling.load``);
- sampling settings as the user types them -> :class:`GenerationConfig`;
- prompts: completion for base models, the chat template for instruct models;
- the concept catalog, steering plans from the user's concept list;
- concept attribution of a span of an answer, and input-token attribution;
- the status line (device, quant mode, RAM / GPU memory, tokens/s).

Errors for bad input are :class:`steerling_lite.SteerlingError` (from the runtime) or
:class:`BackendError` (from here); the app shows their message, never a traceback.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
import torch

from steerling_lite import (
    ChatMessage,
    Generation,
    GenerationConfig,
    GenerationResult,
    SteeringPlan,
    Steerling,
    SteerlingError,
)
from steerling_lite.interpret.attribution import AttributionRecorder, ConceptAttribution
from steerling_lite.interpret.concepts import Concept, ConceptCatalog
from steerling_lite.interpret.input_attribution import input_attribution
from steerling_lite import QUANT_MODES, plan_memory
from steerling_lite.generation.steering import AMPLIFY_TARGET, Steering, SteeringBuilder


class BackendError(SteerlingError):
    """Bad input caught by the app's backend (a setting, a concept name, a prompt)."""


# ---------------------------------------------------------------------------------------
# sizes
# ---------------------------------------------------------------------------------------
def fmt_bytes(n: float | None) -> str:
    """``1536`` -> ``1.5 KiB`` (binary units, as memory tools print them); None -> ``-``."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 2**30, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(text: str) -> int | None:
    """``"8GiB"``, ``"8 GB"``, ``"8g"``, ``"512MiB"``, ``"8"`` (GiB) -> bytes; blank -> None (no limit).

    Raises:
        BackendError: not a size.
    """
    if not text.strip():
        return None
    m = _SIZE_RE.match(text)
    if not m:
        raise BackendError(f"memory budget {text!r}: expected a size such as 8GiB, 512MiB or 8 (GiB)")
    unit = (m.group(2) or "").lower()
    if unit != "b":
        unit = unit.removesuffix("b").removesuffix("i")
    return int(float(m.group(1)) * _UNITS[unit])


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


def model_info(lm: Steerling) -> ModelInfo:
    """:class:`ModelInfo` of a loaded model (from its config; nothing read again)."""
    cfg = lm.config
    c = cfg.concept
    path = Path(lm.path) if lm.path is not None else Path("model")
    n_params = sum(n for n, _ in lm.parameter_bytes().values())
    file_bytes = lm.load_stats.file_bytes if lm.load_stats is not None else 0
    return ModelInfo(
        path=path, name=path.name or str(path), instruct=cfg.instruct, interpretable=cfg.interpretable,
        n_params=n_params, file_bytes=file_bytes, n_known=c.n_concepts if c else 0,
        n_discovered=(c.n_unknown_concepts or 0) if c and c.n_unknown_padded else 0,
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
    (:func:`steerling_lite.loading.quantized.plan_memory`: headers only, memory probed now).

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
    """The sampling settings the user edits.

    Attributes:
        max_new_tokens: tokens to generate (a multiple of the model's diffusion block).
        steps: denoising steps; None = one per token.
        temperature: None = the reference's entropy-adaptive temperature; 0 = greedy.
        top_p, repetition_penalty: as :class:`GenerationConfig`.
        seed: None = a random seed per generation (reported after it).
    """

    max_new_tokens: int = 64
    steps: int | None = None
    temperature: float | None = None
    top_p: float = 0.8
    repetition_penalty: float = 1.1
    seed: int | None = None

    FIELDS = ("max_new_tokens", "steps", "temperature", "top_p", "repetition_penalty", "seed")

    def to_config(self) -> GenerationConfig:
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            steps=self.steps,
            temperature=1.2 if self.temperature is None else self.temperature,
            entropy_sampling=self.temperature is None,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
            seed=self.seed,
        )

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


def check_sampling(lm: Steerling, sampling: Sampling) -> None:
    """Raise :class:`GenerationError` if the model cannot use these settings."""
    sampling.to_config().validate(lm.config.diff_block_size)


# ---------------------------------------------------------------------------------------
# prompts and generation
# ---------------------------------------------------------------------------------------
def is_instruct(lm: Steerling) -> bool:
    return bool(lm.config.instruct)


def build_prompt(lm: Steerling, prompt: str, history: Sequence[tuple[str, str]] = (), system: str = "") -> list[int]:
    """Token ids for ``prompt``.

    Instruct models: system turn (if any), the earlier (user, assistant) turns of the
    session, then ``prompt`` as the user turn, in the chat template. Base models:
    ``prompt`` as plain completion text.

    Raises:
        BackendError: the prompt is empty.
    """
    if not prompt.strip():
        raise BackendError("the prompt is empty: type some text first")
    if is_instruct(lm):
        msgs = [ChatMessage("system", system)] if system.strip() else []
        for user, assistant in history:
            msgs += [ChatMessage("user", user), ChatMessage("assistant", assistant)]
        msgs.append(ChatMessage("user", prompt))
        return lm.encode_prompt(msgs)
    return lm.encode_prompt(prompt, chat=False)


def start_generation(lm: Steerling, prompt_ids: list[int], sampling: Sampling,
                     steering: SteeringPlan | None, capture: bool) -> Generation:
    """A :class:`Generation` ready to iterate (in a worker thread).

    Raises:
        GenerationError: context overflow, settings the model cannot use, steering on a
            model without concept heads.
    """
    return lm.stream(prompt_ids, sampling.to_config(), steering=steering, capture_hidden=capture)


def mask_id(lm: Steerling) -> int:
    return lm.config.mask_token_id


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


def output_positions(lm: Steerling, result: GenerationResult) -> list[int]:
    """Absolute position of each id in ``result.token_ids`` (the same cleaning as
    ``Generation.generated_ids``: masks and EOS skipped, cut at ``<|eot_id|>``)."""
    cfg = lm.config
    start = len(result.prompt_ids)
    out: list[int] = []
    for p in range(start, len(result.sequence)):
        t = result.sequence[p]
        if t in (cfg.mask_token_id, cfg.eos_token_id):
            continue
        if cfg.eot_id is not None and t == cfg.eot_id:
            break
        out.append(p)
        if len(out) == len(result.token_ids):
            break
    return out


# ---------------------------------------------------------------------------------------
# concepts and steering
# ---------------------------------------------------------------------------------------
class Catalog:
    """The model's concepts, searchable by name and description, with display labels.

    Wraps :class:`steerling_lite.interpret.concepts.ConceptCatalog` (labels from
    ``concept_labels.{parquet,csv,json}`` next to the weights or ``$STEERLING_CONCEPTS_PATH``;
    without one, ``known #id`` / ``discovered #id``).

    Attributes:
        n_known, n_discovered: the model's concept counts (0 without concept heads).
        warning: why the labels file could not be used, if it could not.
    """

    def __init__(self, lm: Steerling | None):
        self.n_known = 0
        self.n_discovered = 0
        self.warning = ""
        self.cat = ConceptCatalog()
        if lm is not None and lm.config.concept is not None and lm.config.interpretable:
            c = lm.config.concept
            self.n_known = c.n_concepts
            self.n_discovered = (c.n_unknown_concepts or 0) if c.n_unknown_padded else 0
            try:
                self.cat = ConceptCatalog.for_model(lm)
            except SteerlingError as exc:
                self.warning = f"concept labels not loaded: {exc}"
                self.cat = ConceptCatalog((), self.n_known, self.n_discovered)

    @property
    def labelled(self) -> bool:
        return len(self.cat) > 0

    def label(self, concept_id: int, head: str = "known") -> str:
        return self.cat.label(concept_id, head)

    def get(self, concept_id: int) -> Concept:
        return self.cat.get(concept_id, "known")

    def search(self, query: str, limit: int = 20) -> list[Concept]:
        """Known concepts matching ``query``: ``#12`` / ``12`` is concept 12; words match the
        labels' names and descriptions (whole words, name matches first). Without a labels
        file, ``known 12`` style labels match by their number."""
        q = query.strip()
        if not q or self.n_known == 0:
            return []
        m = re.fullmatch(r"(?:known\s*)?#?\s*(\d+)", q, re.IGNORECASE)
        if m:
            cid = int(m.group(1))
            return [self.get(cid)] if 0 <= cid < self.n_known else []
        if not self.labelled:
            return []
        return self.cat.search(q, limit=limit, steerable_only=False, head="known")

    def resolve(self, query: str) -> Concept:
        """The one concept ``query`` names: an id, an exact name, or the best search hit.

        Raises:
            BackendError: the model has no concepts, or nothing matches.
        """
        if self.n_known == 0:
            raise BackendError("this model has no concept heads: steering needs an interpretable checkpoint")
        q = query.strip()
        if not q:
            raise BackendError("type a concept name, words of its description, or #id")
        m = re.fullmatch(r"(?:known\s*)?#?\s*(\d+)", q, re.IGNORECASE)
        if m and not 0 <= int(m.group(1)) < self.n_known:
            raise BackendError(f"unknown concept #{m.group(1)}: this model has known concepts #0..#{self.n_known - 1}")
        hits = self.search(q, limit=50)
        for c in hits:
            if c.label.lower() == q.lower():
                return c
        if not hits:
            how = "name, description words or #id" if self.labelled else "#id (this model has no concept labels file)"
            raise BackendError(f"unknown concept {q!r}: no known concept matches; search by {how}")
        return hits[0]


STRENGTH_MIN, STRENGTH_MAX = -10.0, 10.0
DEFAULT_STRENGTH = AMPLIFY_TARGET


@dataclass(frozen=True)
class ConceptSpec:
    """One steered concept as the panel shows it.

    ``strength`` runs from −10 to +10: positive amplifies (the reference's amplify preset,
    target in logit units, default +8), negative suppresses (the suppress preset: injection
    alpha ``−|strength|`` plus the concept's ReLU logit mask; the preset is −7).
    """

    concept_id: int
    label: str
    strength: float = DEFAULT_STRENGTH
    enabled: bool = True

    def to_steering(self) -> Steering:
        mode = "amplify" if self.strength >= 0 else "suppress"
        return Steering(self.concept_id, mode, abs(float(self.strength)), self.enabled)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConceptSpec:
        return cls(int(d["concept_id"]), str(d.get("label", f"known #{d['concept_id']}")),
                   float(d.get("strength", DEFAULT_STRENGTH)), bool(d.get("enabled", True)))


class Steerer:
    """Steering plans for one model (a :class:`SteeringBuilder`, which caches directions and
    masks so that a slider change rebuilds in microseconds); thread-safe."""

    def __init__(self, lm: Steerling):
        self.lm = lm
        self._builder = SteeringBuilder(lm) if lm.config.interpretable else None
        self._lock = threading.Lock()

    def plan(self, specs: Sequence[ConceptSpec]) -> SteeringPlan | None:
        """The plan for the enabled concepts, or None when nothing is steered.

        Raises:
            BackendError / ConceptError: a model without concept heads, an unknown concept id.
        """
        active = [s for s in specs if s.enabled and s.strength != 0]
        if not active:
            return None
        if self._builder is None:
            raise BackendError("this model has no concept heads: steering needs an interpretable checkpoint")
        with self._lock:
            plan = self._builder.build([s.to_steering() for s in specs])
        return None if plan.is_empty else plan


# ---------------------------------------------------------------------------------------
# attribution
# ---------------------------------------------------------------------------------------
def can_attribute(lm: Steerling) -> bool:
    return bool(lm.config.interpretable)


def recorder(lm: Steerling, gen: Generation, catalog: Catalog) -> AttributionRecorder | None:
    """An :class:`AttributionRecorder` for ``gen`` (streamed with ``capture_hidden``), or None
    for a model without concept heads."""
    if not can_attribute(lm) or not gen.capture_hidden or gen.config.cfg_scale > 0:
        return None
    return AttributionRecorder(lm, gen, catalog.cat)


def span_positions(positions: Sequence[int], start: int, end: int) -> tuple[int, int]:
    """Answer tokens ``start..end`` (exclusive) -> absolute positions ``[first, last + 1)``.

    Raises:
        BackendError: an empty or out-of-range span.
    """
    if not 0 <= start < end <= len(positions):
        raise BackendError(f"select at least one token of the answer (tokens 0..{len(positions) - 1})")
    return positions[start], positions[end - 1] + 1


def attribute_span(attribution: ConceptAttribution, positions: Sequence[int], start: int, end: int,
                   top: int = 8) -> dict[str, Any]:
    """Concept attribution of answer tokens ``start..end`` (exclusive), from the passes that
    committed them: the reference's chunk attribution (each token's contributions over its
    absolute mass, summed, divided by the span length), top ``top`` concepts per head.

    Returns:
        JSON-able ``{"text", "known": [{"concept_id", "label", "share"}], "discovered": [...],
        "known_other", "discovered_other", "epsilon"}``; shares are signed fractions.

    Raises:
        BackendError: an empty or out-of-range span.
    """
    a, b = span_positions(positions, start, end)
    chunk = attribution.chunks([(a, b)])[0]

    def rows(head: str) -> tuple[list[dict[str, Any]], float]:
        cs = [c for c in chunk.concepts if c.head == head]
        shown = [{"concept_id": c.concept_id, "label": c.label, "share": c.contribution} for c in cs[:top]]
        return shown, sum(c.contribution for c in cs[top:])

    known, known_rest = rows("known")
    disc, disc_rest = rows("discovered")
    return {
        "text": chunk.text, "known": known, "discovered": disc,
        "known_other": known_rest + chunk.known_tail, "discovered_other": disc_rest + chunk.discovered_tail,
        "epsilon": chunk.epsilon,
    }


def attribute_inputs(lm: Steerling, attribution: ConceptAttribution, position: int,
                     n_steps: int = 32) -> list[dict[str, Any]]:
    """Integrated-gradients score of each prompt token for the token committed at absolute
    ``position``, on the sequence the model read when it committed it (``n_steps`` extra
    forward/backward passes: call from a worker thread).

    Returns:
        ``[{"index", "text", "score"}]`` per prompt token, in prompt order (logit units).
    """
    ia = input_attribution(lm, attribution, [position], n_steps=n_steps)
    prompt_len = attribution.prompt_len
    scores = ia.scores[0, :prompt_len].tolist()
    ids = attribution.trace.prompt_ids
    return [{"index": i, "text": token_text(lm, t), "score": float(s)}
            for i, (t, s) in enumerate(zip(ids, scores))]


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
