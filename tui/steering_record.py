"""Which steering produced which tokens of an answer, and how the footer and exports say it.

While an answer is generated, every denoising step's steering *in effect* (the panel's
concepts that changed that step: on, non-zero, not past a cut-off) is recorded; consecutive
steps with the same steering form a segment ``{"from_step", "to_step", "tokens",
"steering"}`` (steps inclusive, ``tokens`` the answer tokens committed in them, ``steering``
the concepts as :meth:`ConceptSpec.to_dict` gives them, ``[]`` for unsteered), and every
answer token gets the index of the segment whose step committed it. Saved with the turn
(``Turn.steering_segments`` / ``Turn.token_segments``) and exported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .concepts import steering_text


@dataclass
class SteeringTimeline:
    """The segments of one generation, built step by step (worker thread)."""

    segments: list[dict[str, Any]] = field(default_factory=list)

    def add(self, step: int, steering: list[dict[str, Any]]) -> None:
        """Step ``step`` ran with ``steering`` in effect (a list of concept dicts, ``[]``: none)."""
        last = self.segments[-1] if self.segments else None
        if last is not None and last["steering"] == steering and last["to_step"] == step - 1:
            last["to_step"] = step
        else:
            self.segments.append({"from_step": step, "to_step": step, "tokens": 0, "steering": steering})

    def finish(self, commit_steps: Sequence[int]) -> tuple[list[dict[str, Any]], list[int]]:
        """The segments with their token counts, and each answer token's segment index, given the
        step that committed each answer token (``-1``: never, e.g. cancelled: index ``-1``)."""
        index: list[int] = []
        for step in commit_steps:
            i = next((k for k, s in enumerate(self.segments) if s["from_step"] <= step <= s["to_step"]), -1)
            index.append(i)
            if i >= 0:
                self.segments[i]["tokens"] += 1
        return self.segments, index


def _steps(seg: dict[str, Any]) -> str:
    a, b = seg["from_step"], seg["to_step"]
    span = f"step {a}" if a == b else f"steps {a}-{b}"
    n = seg.get("tokens", 0)
    return f"{span} ({n} token{'s' if n != 1 else ''})"


def segments_text(segments: Sequence[dict[str, Any]]) -> str:
    """``steps 0-15 (64 tokens): noun.animal +3; steps 16-63 (192 tokens): none``."""
    return "; ".join(f"{_steps(s)}: {steering_text(s['steering'])}" for s in segments)


def steering_label(segments: Sequence[dict[str, Any]], steering: Sequence[dict[str, Any]]) -> str:
    """A short label of the steering that produced a turn: the concepts when one steering produced
    the whole answer, else :func:`segments_text`."""
    if len(segments) > 1:
        return segments_text(segments)
    return steering_text(segments[0]["steering"] if segments else steering)


def steering_record(segments: Sequence[dict[str, Any]], steering: Sequence[dict[str, Any]],
                    changed: bool = False) -> str:
    """What a turn's steering was, for the Markdown export: ``steering: X`` when one steering
    produced the whole answer, else ``steering by step: ...`` (:func:`segments_text`). Turns
    saved without segments (older versions) say what was recorded then."""
    if len(segments) > 1:
        return f"steering by step: {segments_text(segments)}"
    if segments:
        return f"steering: {steering_text(segments[0]['steering'])}"
    if changed:
        return f"steering changed while generating, ended with: {steering_text(steering)}"
    return f"steering: {steering_text(steering)}"


def steering_footer(segments: Sequence[dict[str, Any]], steering: Sequence[dict[str, Any]],
                    changed: bool = False) -> str:
    """The footer's part about steering ('' for an unsteered answer): ``steered: X``, or ``steering
    changed while generating: steps ...`` naming each segment."""
    if len(segments) > 1:
        return f"steering changed while generating: {segments_text(segments)}"
    text = steering_text(segments[0]["steering"]) if segments else steering_text(steering)
    if not segments and changed:
        return f"steering changed while generating, ended with: {text}"
    return f"steered: {text}" if text != "none" else ""


def was_steered(segments: Sequence[dict[str, Any]], steering: Sequence[dict[str, Any]]) -> bool:
    """Some token of the answer was produced with steering in effect."""
    if segments:
        return any(s["steering"] for s in segments)
    return steering_text(steering) != "none"
