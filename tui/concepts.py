"""Concepts in the app: the searchable catalog, steered concepts -> steering plans and presets,
the record of which steering produced which tokens, and the concept / input-token attribution
of a span of an answer.

Runs on ``steerling_lite``'s top-level names (:class:`ConceptCatalog`,
:class:`SteeringBuilder`, :class:`AttributionRecorder`, :func:`occlusion`, :func:`input_attribution`);
bad input raises :class:`tui.backend.BackendError` with a message the app shows.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from steerling_lite import (
    AttributionRecorder,
    Concept,
    ConceptAttribution,
    ConceptCatalog,
    Generation,
    Steering,
    SteeringBuilder,
    SteeringPlan,
    SteeringPreset,
    Steerling,
    SteerlingError,
    check_preset_name,
    input_attribution,
    load_preset,
    occlusion,
    preset_path,
    require_interpretable,
    save_preset,
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
# Relative units (steerling_lite.generation.steering_builder): strength s adds, over the layers,
# s · 7.5 % of the residual stream's length in the concept's direction, on any model. The default
# gave a visible but mostly readable effect on the default model (BENCHMARKS.md, "Steering
# strength scale (issue 12)").
DEFAULT_STRENGTH = 3.0
STRENGTH_HELP = ("strength: + amplifies, − suppresses; s adds s × 7.5% of the model's hidden-state length "
                 "in the concept's direction (same meaning on every model). ~+3 is visible, past +6 the text "
                 "comes apart. Applies for as long as it is on.")


@dataclass(frozen=True)
class ConceptSpec:
    """One steered concept as the panel shows it.

    ``strength`` runs from −10 to +10 in relative units (``Steering(units="relative")``: the same
    number means a similar effect on every model): positive amplifies (injects the concept's
    direction), negative suppresses (injects it negatively and masks the tokens it promotes,
    the reference's suppress preset scaled by the strength). The schedule is always ``fixed``:
    the steering applies for as long as it is on.
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
        return Steering(self.concept_id, mode, abs(float(self.strength)), self.enabled, schedule="fixed",
                        units="relative")

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


def preset_from_specs(name: str, specs: Sequence[ConceptSpec]) -> SteeringPreset:
    """The steering panel as a :class:`steerling_lite.SteeringPreset` named ``name`` (relative
    units, fixed schedule, each concept's label kept).

    Raises:
        BackendError: a bad name, or nothing steered.
    """
    if not specs:
        raise BackendError("nothing to save: add a concept to steer first (f3)")
    try:
        name = check_preset_name(name)
    except SteerlingError as exc:
        raise BackendError(str(exc)) from None
    return SteeringPreset(name, tuple(s.to_steering() for s in specs), {s.concept_id: s.label for s in specs})


def specs_from_preset(preset: SteeringPreset, where: str, catalog: Catalog | None = None) -> list[ConceptSpec]:
    """The panel rows of ``preset`` (read from ``where``): sliders take amplify / suppress in
    relative units with the fixed schedule, strengths in −10..10.

    Raises:
        BackendError: ``<where>: concept[i] ...`` for an entry the sliders cannot show.
    """
    out = []
    for i, s in enumerate(preset.steerings):
        what = f"{where}: concept[{i}] (#{s.concept_id})"
        if (s.mode == "intervene" or s.units != "relative" or s.resolved_schedule != "fixed" or s.group
                or s.relu_strength is not None):
            raise BackendError(f"{what}: the app's sliders take amplify / suppress in relative units with the "
                               "fixed schedule, no group and no relu_strength; use this preset with --steering FILE")
        if catalog is not None and catalog.n_known and not 0 <= s.concept_id < catalog.n_known:
            raise BackendError(f"{what}: this model has known concepts #0..#{catalog.n_known - 1}")
        value = s.value if s.mode == "amplify" else -abs(s.value)
        if not STRENGTH_MIN <= value <= STRENGTH_MAX:
            raise BackendError(f"{what}: strength {value:g} is outside the sliders' {STRENGTH_MIN:g}..{STRENGTH_MAX:g}")
        label = preset.labels.get(s.concept_id) or (catalog.label(s.concept_id) if catalog else f"known #{s.concept_id}")
        out.append(ConceptSpec(s.concept_id, label, value, s.enabled))
    return out


def save_steering_preset(name: str, specs: Sequence[ConceptSpec], folder: str | Path | None = None) -> Path:
    """Save the panel as preset ``name`` in ``folder`` (default: the data folder's
    ``steering-presets``), atomically; returns the file written.

    Raises:
        BackendError: a bad name or nothing steered; OSError: it cannot be written.
    """
    preset = preset_from_specs(name, specs)
    return save_preset(preset, preset_path(preset.name, folder))


def read_steering_preset(path: str | Path, catalog: Catalog | None = None) -> list[ConceptSpec]:
    """The panel rows of the preset file ``path``.

    Raises:
        ConceptError: the file cannot be read or a field is bad (naming the file and the field);
        BackendError: an entry the sliders cannot show.
    """
    return specs_from_preset(load_preset(path), str(path), catalog)


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


def answer_range(positions: Sequence[int], start: int, end: int) -> tuple[int, int]:
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
    a, b = answer_range(positions, start, end)
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
                     n_steps: int = 32, method: str = "occlusion") -> list[dict[str, Any]]:
    """Score of each prompt token for the token(s) committed at absolute ``position`` (one, or
    the positions of a span), each on the sequence the model read when it committed it (call
    from a worker thread): ``method`` ``occlusion`` (default: the span's log-probability minus
    its log-probability with the prompt token masked, summed over the span's tokens, nats; one
    forward pass per prompt token and span token) or ``ig`` (integrated gradients of the sum of
    the span's logits, logit units, which is the sum of each token's scores as IG is linear in
    the target; ``n_steps`` forward/backward passes per token).

    Returns:
        ``[{"index", "text", "score"}]`` per prompt token, in prompt order.
    """
    positions = [position] if isinstance(position, int) else list(position)
    if method == "occlusion":
        oc = occlusion(lm, attribution, positions, granularity="token")
        return [{"index": u.start, "text": u.text, "score": float(s)} for u, s in zip(oc.units, oc.span_scores().tolist())]
    ia = input_attribution(lm, attribution, positions, n_steps=n_steps)
    prompt_len = attribution.prompt_len
    scores = ia.scores[:, :prompt_len].sum(0).tolist()
    ids = attribution.trace.prompt_ids
    return [{"index": i, "text": token_text(lm, t), "score": float(s)}
            for i, (t, s) in enumerate(zip(ids, scores))]
