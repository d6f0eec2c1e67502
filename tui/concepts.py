"""Concepts in the app: the searchable catalog, steered concepts -> steering plans, and the
concept / input-token attribution of a span of an answer.

Runs on ``steerling_lite``'s top-level names (:class:`ConceptCatalog`,
:class:`SteeringBuilder`, :class:`AttributionRecorder`, :func:`input_attribution`);
bad input raises :class:`tui.backend.BackendError` with a message the app shows.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from steerling_lite import (
    AMPLIFY_TARGET,
    AttributionRecorder,
    Concept,
    ConceptAttribution,
    ConceptCatalog,
    Generation,
    Steering,
    SteeringBuilder,
    SteeringPlan,
    Steerling,
    SteerlingError,
    input_attribution,
    require_interpretable,
)

from .backend import BackendError, concept_counts, token_text

_ID_QUERY = re.compile(r"(?:known\s*)?#?\s*(\d+)", re.IGNORECASE)  # "#12", "12", "known 12"


# ---------------------------------------------------------------------------------------
# the catalog
# ---------------------------------------------------------------------------------------
class Catalog:
    """The model's concepts, searchable by name and description, with display labels.

    Wraps :class:`steerling_lite.ConceptCatalog` (labels from
    ``concept_labels.{parquet,csv,json}`` next to the weights or ``$STEERLING_CONCEPTS_PATH``;
    without one, ``known #id`` / ``discovered #id``).

    Attributes:
        n_known, n_discovered: the model's concept counts (0 without concept heads).
        warning: why the labels file could not be used, if it could not.
    """

    def __init__(self, lm: Steerling | None = None):
        self.model = lm.model if lm is not None else None
        self.n_known, self.n_discovered = concept_counts(lm) if lm is not None else (0, 0)
        self.warning = ""
        self.cat = ConceptCatalog()
        if self.n_known:
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
        m = _ID_QUERY.fullmatch(q)
        if m:
            cid = int(m.group(1))
            return [self.get(cid)] if 0 <= cid < self.n_known else []
        if not self.labelled:
            return []
        return self.cat.search(q, limit=limit, steerable_only=False, head="known")

    def resolve(self, query: str) -> Concept:
        """The one concept ``query`` names: an id, an exact name, or the best search hit.

        Raises:
            BackendError: the model has no concept heads, or nothing matches.
        """
        if self.n_known == 0:
            require_interpretable(self.model, "steering", BackendError)
        q = query.strip()
        if not q:
            raise BackendError("type a concept name, words of its description, or #id")
        m = _ID_QUERY.fullmatch(q)
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


# ---------------------------------------------------------------------------------------
# steering
# ---------------------------------------------------------------------------------------
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

    @property
    def active(self) -> bool:
        """On and with a non-zero strength: it changes the generation."""
        return self.enabled and self.strength != 0

    def to_steering(self) -> Steering:
        mode = "amplify" if self.strength >= 0 else "suppress"
        return Steering(self.concept_id, mode, abs(float(self.strength)), self.enabled)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConceptSpec:
        cid = int(d["concept_id"])
        return cls(cid, str(d.get("label", ConceptCatalog().label(cid))),
                   float(d.get("strength", DEFAULT_STRENGTH)), bool(d.get("enabled", True)))


def steering_text(specs: Sequence[dict[str, Any]] | Sequence[ConceptSpec]) -> str:
    """``label +8, label -6`` for the active concepts of a steering (saved dicts or specs);
    ``none`` when nothing is steered."""
    items = [s if isinstance(s, ConceptSpec) else ConceptSpec.from_dict(s) for s in specs]
    return ", ".join(f"{s.label} {s.strength:+g}" for s in items if s.active) or "none"


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
        if not any(s.active for s in specs):
            return None
        require_interpretable(self.lm.model, "steering", BackendError)
        with self._lock:
            plan = self._builder.build([s.to_steering() for s in specs])
        return None if plan.is_empty else plan


# ---------------------------------------------------------------------------------------
# attribution
# ---------------------------------------------------------------------------------------
def recorder(lm: Steerling, gen: Generation, catalog: Catalog) -> AttributionRecorder | None:
    """An :class:`AttributionRecorder` for ``gen`` (streamed with ``capture_hidden``), or None
    for a model without concept heads."""
    if not lm.config.interpretable or not gen.capture_hidden or gen.config.cfg_scale > 0:
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


def attribute_inputs(lm: Steerling, attribution: ConceptAttribution, position: int | Sequence[int],
                     n_steps: int = 32) -> list[dict[str, Any]]:
    """Integrated-gradients score of each prompt token for the token committed at absolute
    ``position``, on the sequence the model read when it committed it (``n_steps`` extra
    forward/backward passes: call from a worker thread). Several positions (a span): the sum
    of their scores, which is the integrated gradients of the sum of their logits (IG is
    linear in the target), at ``n_steps`` passes per token.

    Returns:
        ``[{"index", "text", "score"}]`` per prompt token, in prompt order (logit units).
    """
    positions = [position] if isinstance(position, int) else list(position)
    ia = input_attribution(lm, attribution, positions, n_steps=n_steps)
    prompt_len = attribution.prompt_len
    scores = ia.scores[:, :prompt_len].sum(0).tolist()
    ids = attribution.trace.prompt_ids
    return [{"index": i, "text": token_text(lm, t), "score": float(s)}
            for i, (t, s) in enumerate(zip(ids, scores))]
