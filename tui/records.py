"""The typed records the conversation controller (:mod:`tui.conversation`) and the chat screen
exchange: the model's services, a finished answer, the pending turn, a progress redraw, a
generation's outcome, a save's outcome and an attribution request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from steerling_lite import ConceptAttribution, Generation, GenerationResult, SteeringPlan, Steerling

from . import backend
from .backend import ModelInfo, Sampling
from .concepts import Catalog, ConceptSpec, Steerer
from .store import Attribution, Turn

KEEP_ATTRIBUTION = 8  # answers whose per-token attribution data stay in memory (~16 KB a token for 8B)


@dataclass(frozen=True)
class ModelServices:
    """A loaded model and what the app builds on it once: its info, concept catalog and steerer."""

    lm: Steerling
    info: ModelInfo
    catalog: Catalog
    steerer: Steerer

    @classmethod
    def for_model(cls, lm: Steerling) -> ModelServices:
        return cls(lm, backend.model_info(lm), Catalog(lm), Steerer(lm))


@dataclass
class Answer:
    """A finished turn, with what this run of the app knows beyond the saved :class:`Turn`.

    Attributes:
        tokens: display text of each output token (empty when no model can decode them).
        positions: absolute position of each output token in the generated sequence.
        attribution: recorded while generating (this run of the app, the last
            :data:`KEEP_ATTRIBUTION` answers only).
    """

    turn: Turn
    tokens: list[str] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    attribution: ConceptAttribution | None = None


@dataclass(frozen=True)
class PendingTurn:
    """The turn being generated: what was asked, with which settings, on which model.

    ``plans`` holds each steering plan handed to the generation with the panel's concepts it
    was built from (the generation's step events name the plan; the record names the concepts).
    """

    prompt: str
    prompt_ids: list[int]
    sampling: Sampling
    specs: list[ConceptSpec]
    system: str
    steer_seq: int
    model: ModelServices
    generation: Generation
    plans: list[tuple[SteeringPlan, list[ConceptSpec]]] = field(default_factory=list)

    def specs_of(self, plan: SteeringPlan | None) -> list[ConceptSpec]:
        """The concepts ``plan`` was built from (``[]`` for no plan)."""
        return next((specs for p, specs in self.plans if p is plan), []) if plan is not None else []


@dataclass(frozen=True)
class Progress:
    """A redraw of the answer being generated: ``committed`` text before the current block and
    the block's slots (None: still masked)."""

    committed: str
    block: list[str | None]


@dataclass(frozen=True)
class Generated:
    """What a finished (or stopped) generation produced; ``steering_segments`` /
    ``token_segments``: which steering produced which steps and tokens (:mod:`tui.steering_record`)."""

    result: GenerationResult
    positions: list[int]
    attribution: ConceptAttribution | None
    steering_segments: list[dict[str, Any]] = field(default_factory=list)
    token_segments: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Saved:
    """Whether a write reached the sessions database; ``error`` says why not (blank when there
    is no database)."""

    ok: bool
    error: str = ""


@dataclass(frozen=True)
class SpanRequest:
    """Attribution asked for tokens ``start..end`` (exclusive) of ``answer``.

    Attributes:
        saved: the attribution already saved for this span, if any.
        inputs: the input tokens are wanted too.
        reason: why it cannot be computed now (blank when it can).
        method: input attribution by ``occlusion`` or ``ig`` (integrated gradients).
    """

    answer: Answer
    start: int
    end: int
    inputs: bool
    saved: Attribution | None
    reason: str = ""
    method: str = "occlusion"

    @property
    def cached(self) -> bool:
        """The saved attribution answers it: nothing to compute."""
        return self.saved is not None and (not self.inputs or (
            bool(self.saved.data.get("inputs")) and self.saved.data.get("inputs_method", "ig") == self.method))
