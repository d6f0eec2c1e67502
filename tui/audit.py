"""The audit loop's work in the app, without the view: a span's three axes, the answer
regenerated with a concept suppressed, and keeping the audit with the session.

A span of an answer (answer-token indices ``start..end``, end exclusive, as the chat's
selection) is audited along the three axes of Steerling's report, each computed by
``steerling_lite`` (:func:`steerling_lite.audit_span`'s parts) in a worker thread:

- concepts: the span's known and discovered concepts and epsilon (:func:`tui.concepts.attribute_span`,
  the attribution panel's numbers);
- inputs: the prompt units behind it (:func:`steerling_lite.span_inputs`; the method is
  :data:`steerling_lite.DEFAULT_INPUT_METHOD`, integrated gradients on request);
- chunks: the nearest training chunks (:func:`steerling_lite.span_neighbours`) in the
  default model's index, built into the data dir on first use.

The audit's data is one JSON-able dict (saved as a :class:`tui.store.Audit`): the keys of
an attribution (``text``, ``known``, ``discovered``, ``known_other``, ``discovered_other``,
``epsilon``), ``input_method`` and ``inputs`` (``[{"index", "text", "score"}]``, strongest
first), ``neighbours`` (``[{"rank", "similarity", "text", "source", "line", "shared"}]``),
``notes`` (axis -> why it is missing) and, after a suppression, ``suppressed``
(``{"concept_id", "label", "strength", "seed", "text"}``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerling_lite import (
    DEFAULT_INPUT_METHOD, SteerlingError, TrainingIndex, ensure_default_index, is_default_model, span_inputs,
    span_neighbours,
)

from .backend import BackendError, Sampling
from .concepts import DEFAULT_STRENGTH, ConceptSpec, answer_range, attribute_span
from .conversation import RUNNING, Conversation
from .records import Answer, ModelServices, Saved
from .store import Audit, StoreError, Turn

INPUT_UNITS = 16  # prompt units kept in an audit, strongest first
NEIGHBOURS = 5  # training chunks kept
SHARED = 4  # shared concepts kept per chunk
SUPPRESS_STRENGTH = -DEFAULT_STRENGTH  # on the steering panel's (relative) scale: the default slider, negated

IndexProgress = Callable[[int, int], None]  # (bytes of corpus indexed, bytes in all)


@dataclass
class AuditTarget:
    """A span of an answer to audit.

    Attributes:
        answer: the answer; start, end: its token indices, end exclusive.
        audit: the saved audit of this span (None until the first axis is kept).
        reason: why nothing can be computed now (blank when it can): the saved audit, if
            any, is all there is to show.
    """

    answer: Answer
    start: int
    end: int
    audit: Audit | None = None
    reason: str = ""

    @property
    def turn(self) -> Turn:
        return self.answer.turn

    @property
    def data(self) -> dict[str, Any]:
        return self.audit.data if self.audit is not None else {}

    def generated_span(self) -> tuple[int, int]:
        """The span in generated-token indices (absolute positions minus the prompt), as
        ``steerling_lite``'s span functions take it.

        Raises:
            BackendError: an empty or out-of-range span.
        """
        a, b = answer_range(self.answer.positions, self.start, self.end)
        p0 = len(self.turn.prompt_ids)
        return a - p0, b - p0


def audit_target(conversation: Conversation, answer: Answer, start: int, end: int) -> AuditTarget:
    """What auditing tokens ``start..end`` of ``answer`` takes: the saved audit, a computation,
    or why only the saved audit (or nothing) can be shown."""
    saved = next((a for a in reversed(answer.turn.audits) if (a.start, a.end) == (start, end)), None)
    reason = RUNNING if conversation.pending is not None else conversation.span_request(answer, start, end).reason
    return AuditTarget(answer, start, end, saved, reason)


# ---- the three axes (worker thread) ---------------------------------------------------------------
def audit_concepts(target: AuditTarget) -> dict[str, Any]:
    """The span's concepts (the attribution panel's dict)."""
    return attribute_span(target.answer.attribution, target.answer.positions, target.start, target.end)


def audit_inputs(lm, target: AuditTarget, method: str = DEFAULT_INPUT_METHOD) -> list[dict[str, Any]]:
    """The :data:`INPUT_UNITS` prompt units behind the span, by ``|score|`` (``method``: ``ig`` or
    ``occlusion``); ``index`` is the unit's prompt position."""
    start, end = target.generated_span()
    units = span_inputs(lm, target.answer.attribution, start, end, method)[:INPUT_UNITS]
    return [{"index": u.position, "text": u.text, "score": u.score} for u in units]


def index_path(lm, progress: IndexProgress | None = None) -> Path:
    """The model's training-data index: the default model's, built into the data dir on first
    use (``progress(done, total)`` in bytes of corpus while it is built).

    Raises:
        BackendError: the model has no built-in index.
    """
    if not is_default_model(lm):
        raise BackendError("no training-data index for this model (only the default model has a built-in one); "
                           "build one with `steerling-lite index build` and audit with `steerling-lite audit --index`")
    return ensure_default_index(lm, (lambda done, total, chunks: progress(done, total)) if progress else None)


def audit_neighbours(lm, target: AuditTarget, progress: IndexProgress | None = None) -> list[dict[str, Any]]:
    """The :data:`NEIGHBOURS` training chunks nearest to the span, each with the known concepts
    it shares with the span (at most :data:`SHARED` labels)."""
    start, end = target.generated_span()
    with TrainingIndex.open(index_path(lm, progress), lm) as index:
        found = span_neighbours(lm, index, target.answer.attribution, start, end, NEIGHBOURS)
    return [{"rank": n.rank, "similarity": n.similarity, "text": n.text, "source": Path(n.source).name,
             "line": n.line, "shared": [s.label for s in n.shared[:SHARED]]} for n in found.neighbours]


def compute_axis(axis: str, lm, target: AuditTarget, method: str = DEFAULT_INPUT_METHOD,
                 progress: IndexProgress | None = None) -> dict[str, Any]:
    """Worker thread: the audit data of one axis (``concepts``, ``inputs`` or ``neighbours``), or
    ``{"notes": {axis: why}}`` when it cannot be computed (a user error's message)."""
    try:
        if axis == "concepts":
            return audit_concepts(target)
        if axis == "inputs":
            return {"input_method": method, "inputs": audit_inputs(lm, target, method)}
        return {"neighbours": audit_neighbours(lm, target, progress)}
    except SteerlingError as exc:
        return {"notes": {axis: str(exc)}}


def merge(data: dict[str, Any], axis: str, part: dict[str, Any]) -> dict[str, Any]:
    """``data`` with ``part`` (what :func:`compute_axis` returned for ``axis``) added: its keys
    replace those in ``data``, and its note, if any, replaces the axis's earlier one."""
    notes = {k: v for k, v in (data.get("notes") or {}).items() if k != axis}
    notes.update(part.get("notes") or {})
    out = {**{k: v for k, v in data.items() if k != "notes"}, **{k: v for k, v in part.items() if k != "notes"}}
    return {**out, "notes": notes} if notes else out


# ---- suppress and regenerate ----------------------------------------------------------------------
def regenerate_suppressed(model: ModelServices, turn: Turn, concept_id: int, label: str,
                          strength: float = SUPPRESS_STRENGTH) -> dict[str, Any]:
    """Worker thread: ``turn`` regenerated with its settings, seed and steering plus known concept
    ``concept_id`` suppressed (replacing its own entry, if it was steered); the ``suppressed``
    record of the audit.

    Raises:
        BackendError / ConceptError: a model without concept heads, an unknown concept.
    """
    specs = [s for s in (ConceptSpec.from_dict(d) for d in turn.steering) if s.concept_id != concept_id]
    specs.append(ConceptSpec(concept_id, label, -abs(strength)))
    sampling = Sampling.from_dict({**turn.settings, "seed": turn.seed})
    result = model.lm.generate(turn.prompt_ids, sampling.to_config(), model.steerer.plan(specs))
    return {"concept_id": concept_id, "label": label, "strength": -abs(strength), "seed": turn.seed,
            "text": result.text}


# ---- keeping it -----------------------------------------------------------------------------------
def keep_audit(conversation: Conversation, target: AuditTarget, data: dict[str, Any]) -> Saved:
    """Make ``data`` the audit of ``target``'s span and save it with the session (kept in memory
    when there is no database or the turn is not saved)."""
    turn, store = target.turn, conversation.store
    if target.audit is None:
        target.audit = Audit(target.start, target.end, data)
        if store is None or turn.id is None:
            turn.audits.append(target.audit)
            return Saved(False)
        try:
            store.add_audit(turn, target.audit)
        except StoreError as exc:
            turn.audits.append(target.audit)
            return Saved(False, f"audit not saved: {exc}")
        return Saved(True)
    target.audit.data = data
    if store is None or target.audit.id is None:
        return Saved(False)
    try:
        store.update_audit(target.audit)
    except StoreError as exc:
        return Saved(False, f"audit not saved: {exc}")
    return Saved(True)
