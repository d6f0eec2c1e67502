"""The audit of a span of a generation: its three axes in one record, and the concept to suppress.

Steerling's technical report traces an output along three axes, and the audit loop walks
them for one span of generated tokens:

1. **concepts**: the span's concept attribution (known and discovered concepts, epsilon)
   from the passes that committed its tokens
   (:meth:`~steerling_lite.interpret.attribution_result.ConceptAttribution.chunks`);
2. **input units**: the prompt units whose replacement by the mask token (the learned
   blank) changes the span's log-probability most (occlusion), or integrated gradients on
   request (:func:`span_inputs`: the one place the method is chosen);
3. **training chunks**: the training text the span most resembles
   (:func:`~steerling_lite.interpret.retrieval.retrieve`, with the known concepts they share);

then the loop's last step: suppress the concept that drove the span and regenerate with
the same seed (:func:`suppression` adds it to the steering the span was generated with;
:meth:`SpanAudit.top_known` picks the concept).

Spans are ``(start, end)`` generated-token indices, end exclusive, as ``explain --span``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConceptError
from ..generation.steering_builder import Steering
from .chunks import ChunkAttribution, ChunkConcept
from .input_attribution import InputScore, input_attribution
from .occlusion import occlusion, span_positions
from .retrieval import SpanNeighbours, TrainingIndex, retrieve, span_ids

INPUT_METHODS = ("occlusion", "ig")
DEFAULT_INPUT_METHOD = "occlusion"
METHOD_NAMES = {"occlusion": "occlusion", "ig": "integrated gradients"}


def check_span(attribution, start: int, end: int) -> list[int]:
    """The one check of a span of generated tokens ``[start, end)`` (inside the output, holding
    text: :func:`~.retrieval.span_ids`); its committed absolute positions
    (:func:`~.occlusion.span_positions`).

    Raises:
        RetrievalError: the span is empty, outside the output, or holds no generated text.
    """
    span_ids(attribution, start, end)
    return span_positions(attribution.trace, start, end)


def span_concepts(attribution, start: int, end: int) -> ChunkAttribution:
    """Concept attribution of generated tokens ``[start, end)`` (the reference's chunk attribution:
    each token's contributions over its absolute logit mass, summed, over the span length).

    Raises:
        RetrievalError: a span outside the output or without text.
    """
    check_span(attribution, start, end)
    p0 = attribution.prompt_len
    return attribution.chunks([(p0 + start, p0 + end)])[0]


def span_inputs(lm, attribution, start: int, end: int, method: str = DEFAULT_INPUT_METHOD, *,
                granularity: str = "word", n_steps: int = 32) -> list[InputScore]:
    """The prompt units behind generated tokens ``[start, end)``, largest ``|score|`` first (a
    positive score pushed the span's tokens, a negative one pulled away from them).

    ``occlusion`` (:func:`~steerling_lite.interpret.occlusion.occlusion`): each prompt unit
    (``granularity``: token, word, sentence or line) replaced by the mask token; its score is
    the span's log-probability minus that with the unit masked (nats), in the passes that
    committed the span. ``ig``: integrated gradients
    (:func:`~steerling_lite.interpret.input_attribution.input_attribution`, ``n_steps``
    forward + backward passes per token of the span) of each prompt token, each token's
    scores divided by their absolute sum and averaged over the span (the reference's chunk
    aggregation), so scores are signed fractions.

    Raises:
        ConceptError: an unknown method or granularity;
        RetrievalError: a span outside the output.
    """
    if method not in INPUT_METHODS:
        raise ConceptError(f"input attribution method {method!r}: expected one of {', '.join(INPUT_METHODS)}")
    positions = check_span(attribution, start, end)
    if method == "occlusion":
        found = occlusion(lm, attribution, positions, granularity=granularity)
    else:
        found = input_attribution(lm, attribution, positions, n_steps=n_steps)
    return sorted(found.aggregate("prompt", targets=positions), key=lambda x: -abs(x.score))


def span_neighbours(lm, index: TrainingIndex, attribution, start: int, end: int, k: int = 5) -> SpanNeighbours:
    """The ``k`` training chunks nearest to generated tokens ``[start, end)`` (see
    :func:`~steerling_lite.interpret.retrieval.retrieve`).

    Raises:
        RetrievalError: a span outside the output, ``k < 1``, an index of another model.
    """
    return retrieve(lm, index, attribution, [(start, end)], k)[0]


def top_known(concepts: ChunkAttribution) -> ChunkConcept:
    """The known concept that pushed the span's tokens most (largest positive contribution):
    the one the audit loop suppresses.

    Raises:
        ConceptError: no known concept contributed positively.
    """
    for c in concepts.concepts:  # largest |contribution| first
        if c.head == "known" and c.contribution > 0:
            return c
    raise ConceptError(f"no known concept pushed tokens {concepts.text!r}: nothing to suppress")


def suppression(steering: Sequence[Steering], concept_id: int, strength: float | None = None) -> list[Steering]:
    """``steering`` with known concept ``concept_id`` suppressed (its earlier entry, if any,
    replaced): the steering to regenerate with, same seed, to see what the concept did.

    ``strength`` is the suppress preset's raw injection strength (default
    ``|SUPPRESS_ALPHA|`` = 7, with the ReLU logit mask of the reference's ``injection_relu``).
    """
    kept = [s for s in steering if s.concept_id != int(concept_id)]
    return kept + [Steering(int(concept_id), "suppress", abs(strength) if strength is not None else None)]


@dataclass(frozen=True)
class SpanAudit:
    """The three axes of one span.

    Attributes:
        start, end: generated-token indices, end exclusive.
        concepts: the span's concept attribution.
        inputs: prompt units, largest ``|score|`` first (empty when not asked for).
        input_method: ``ig`` or ``occlusion`` (blank when not asked for).
        neighbours: the nearest training chunks (None without an index).
    """

    start: int
    end: int
    concepts: ChunkAttribution
    inputs: tuple[InputScore, ...] = ()
    input_method: str = ""
    neighbours: SpanNeighbours | None = None

    @property
    def text(self) -> str:
        return self.concepts.text

    def top_known(self) -> ChunkConcept:
        """See :func:`top_known`."""
        return top_known(self.concepts)

    def to_dict(self, top: int | None = None, inputs: int | None = None) -> dict[str, Any]:
        """JSON-able: span, text, concepts (``top`` per head), inputs (``inputs`` first), neighbours."""
        return {
            "start": self.start, "end": self.end, "text": self.text,
            "concepts": self.concepts.to_dict(top),
            "input_method": self.input_method or None,
            "inputs": [x.to_dict() for x in (self.inputs if inputs is None else self.inputs[:inputs])],
            "retrieval": self.neighbours.to_dict() if self.neighbours is not None else None,
        }


def audit_span(lm, attribution, start: int, end: int, *, inputs: bool = True,
               method: str = DEFAULT_INPUT_METHOD, granularity: str = "word", n_steps: int = 32,
               index: TrainingIndex | None = None, k: int = 5) -> SpanAudit:
    """The audit of generated tokens ``[start, end)`` of a recorded generation.

    Args:
        lm: the model that generated.
        attribution: the generation's :class:`~steerling_lite.ConceptAttribution` (``explain``).
        inputs: compute the input units (``method``, ``granularity``, ``n_steps``: see :func:`span_inputs`).
        index: a training-data index of ``lm`` for the neighbours (None: no neighbours).
        k: neighbours.

    Raises:
        RetrievalError: a span outside the output or without text; an index of another model;
        ConceptError: a bad input method.
    """
    concepts = span_concepts(attribution, start, end)
    units = (tuple(span_inputs(lm, attribution, start, end, method, granularity=granularity, n_steps=n_steps))
             if inputs else ())
    found = span_neighbours(lm, index, attribution, start, end, k) if index is not None else None
    return SpanAudit(start, end, concepts, units, method if inputs else "", found)
