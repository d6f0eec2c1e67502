"""Chunk attribution: which concepts drove a span of generated text.

A chunk is a span of absolute positions ``[start, end)``; by default the generated text
split at ``<|endofchunk|>`` and cut at the first stop token (``<|eot_id|>``), the
separator itself excluded (reference ``steerling==0.2.0`` ``find_chunk_boundaries``).

Aggregation follows the reference's ``chunk_attribution``: each token's contributions
are divided by that token's total absolute mass, so every token votes equally, then
summed per concept over the chunk and divided by the chunk's length. The mass here is
``Σ|known| + |known tail| + Σ|discovered| + |discovered tail| + |epsilon|`` (the
reference has one residual where we have three parts; with empty tails the two agree).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from .attribution_table import AttributionTable


def find_chunks(
    token_ids: Sequence[int], eoc_id: int | None, *, start: int = 0, stop_ids: Iterable[int] = (),
    include_final: bool = True,
) -> list[tuple[int, int]]:
    """Spans ``[start, end)`` of ``token_ids`` between ``<|endofchunk|>`` tokens, from ``start``.

    Scanning stops at the first of ``stop_ids`` (the chunk it closes is kept); the trailing
    span after the last separator is kept when ``include_final`` (or when a stop token ends
    it). Separators and stop tokens belong to no chunk; empty spans are dropped.
    """
    stops = frozenset(stop_ids)
    end, hit_stop = len(token_ids), False
    for i in range(start, len(token_ids)):
        if token_ids[i] in stops:
            end, hit_stop = i, True
            break
    chunks: list[tuple[int, int]] = []
    prev = start
    for i in range(start, end):
        if eoc_id is not None and token_ids[i] == eoc_id:
            if i > prev:
                chunks.append((prev, i))
            prev = i + 1
    if prev < end and (hit_stop or include_final):
        chunks.append((prev, end))
    return chunks


@dataclass(frozen=True)
class ChunkConcept:
    """A concept's mean normalized contribution over a chunk (signed; see the module doc)."""

    concept_id: int
    head: str
    label: str
    contribution: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ChunkAttribution:
    """Concept attribution of one chunk.

    Attributes:
        start, end: absolute positions ``[start, end)``.
        text: the chunk's text.
        n_tokens: committed tokens in it.
        concepts: every concept that contributed, largest ``|contribution|`` first.
        known_tail, discovered_tail, epsilon: mean of each part divided by the token's mass
            (fractions; ``epsilon * 100`` is the reference's ``eps_pct``).
    """

    start: int
    end: int
    text: str
    n_tokens: int
    concepts: tuple[ChunkConcept, ...]
    known_tail: float
    discovered_tail: float
    epsilon: float

    @property
    def epsilon_pct(self) -> float:
        return 100.0 * self.epsilon

    def top(self, n: int, head: str | None = None) -> list[ChunkConcept]:
        """The ``n`` largest concepts, of one head if given."""
        return [c for c in self.concepts if head is None or c.head == head][:n]

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        concepts = self.concepts if top is None else self.top(top, "known") + self.top(top, "discovered")
        return {
            "start": self.start, "end": self.end, "text": self.text, "n_tokens": self.n_tokens,
            "concepts": [c.to_dict() for c in concepts], "known_tail": self.known_tail,
            "discovered_tail": self.discovered_tail, "epsilon": self.epsilon,
        }


def chunk_attribution(
    table: AttributionTable, spans: Sequence[tuple[int, int]], length: int,
    label: Callable[[int, str], str], text: Callable[[list[int]], str],
) -> list[ChunkAttribution]:
    """One :class:`ChunkAttribution` per span of ``table``'s rows (see the module doc);
    :meth:`~steerling_lite.interpret.attribution_result.ConceptAttribution.chunks` is the usual way in.

    Args:
        table: the attribution of the committed tokens.
        spans: absolute ``[start, end)`` positions.
        length: the sequence's length (prompt included); spans must lie in ``[0, length]``.
        label: ``label(concept_id, head)`` -> display label.
        text: ``text(rows)`` -> the text of those rows of ``table``.

    Raises:
        ValueError: a span with ``end <= start`` or outside the sequence.
    """
    out = []
    pos = table.positions
    for start, end in spans:
        start, end = int(start), int(end)
        if not 0 <= start < end <= length:
            raise ValueError(f"chunk span [{start}, {end}) is empty or outside the sequence (0..{length})")
        rows = ((pos >= start) & (pos < end)).nonzero().flatten()
        T = end - start
        k_c, u_c = table.known_contrib[rows], table.disc_contrib[rows]
        k_tail, u_tail, eps = table.known_tail[rows], table.discovered_tail[rows], table.epsilon[rows]
        mass = (k_c.abs().sum(-1) + k_tail.abs() + u_c.abs().sum(-1) + u_tail.abs() + eps.abs()).clamp_min(1e-8)
        concepts: list[ChunkConcept] = []
        for head, ids, contrib in (("known", table.known_ids[rows], k_c), ("discovered", table.disc_ids[rows], u_c)):
            norm = (contrib / mass.unsqueeze(-1)).reshape(-1)
            flat = ids.reshape(-1)
            valid = flat >= 0
            uniq, inv = flat[valid].unique(return_inverse=True)
            agg = torch.zeros(len(uniq)).scatter_add_(0, inv, norm[valid])
            concepts += [ChunkConcept(int(c), head, label(int(c), head), float(m) / T)
                         for c, m in zip(uniq.tolist(), agg.tolist())]
        concepts.sort(key=lambda c: -abs(c.contribution))
        n = int(rows.numel())

        def mean_share(x: torch.Tensor) -> float:
            return float((x / mass).mean()) if n else 0.0

        out.append(ChunkAttribution(start, end, text(rows.tolist()), n, tuple(concepts), mean_share(k_tail),
                                    mean_share(u_tail), mean_share(eps)))
    return out
