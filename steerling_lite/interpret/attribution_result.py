"""Results of concept attribution: per-token records, the whole generation's attribution, chunks, export.

The tensors and their exactness check are :mod:`steerling_lite.interpret.attribution_table`'s;
:mod:`steerling_lite.interpret.attribution` computes them.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from ..atomic import write_text_atomic
from .attribution_table import AttributionTable
from .chunks import ChunkAttribution, chunk_attribution, find_chunks
from .concepts import ConceptCatalog
from ..generation.generate import GenerationResult
from ..generation.trace import GenerationTrace

# ---------------------------------------------------------------------------------------
# per-token records (what the app and the JSON export show)


@dataclass(frozen=True)
class ConceptContribution:
    """One concept's share of a token's logit.

    Attributes:
        concept_id: id within its head.
        head: ``known`` or ``discovered``.
        label: catalog label (fallback ``known #id`` / ``discovered #id``).
        weight: the concept's activation ``sigmoid(logit)`` in [0, 1] (or an intervened value).
        contribution: ``weight · (E[c] · W_lm[y])`` in logit units.
    """

    concept_id: int
    head: str
    label: str
    weight: float
    contribution: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TokenAttribution:
    """The decomposition of one committed token's logit.

    Attributes:
        position: absolute position in the sequence (prompt included).
        index: position in the generated region (``position - prompt_len``).
        token_id, text: the token and its display text.
        step: the denoising step that committed it.
        logit: ``r · W_lm[y]`` in fp32 (logit units).
        model_logit: the logit the sampler saw (model dtype, before the logit processing).
        known, discovered: reported concepts, largest ``|contribution|`` first.
        known_tail, discovered_tail: contributions of the other features of each head.
        epsilon: the true epsilon contribution.
    """

    position: int
    index: int
    token_id: int
    text: str
    step: int
    logit: float
    model_logit: float
    known: tuple[ConceptContribution, ...]
    discovered: tuple[ConceptContribution, ...]
    known_tail: float
    discovered_tail: float
    epsilon: float

    @property
    def known_total(self) -> float:
        """All known features' contribution (reported + tail), logits."""
        return sum(c.contribution for c in self.known) + self.known_tail

    @property
    def discovered_total(self) -> float:
        """All discovered features' contribution (reported + tail), logits."""
        return sum(c.contribution for c in self.discovered) + self.discovered_tail

    @property
    def shares(self) -> dict[str, float]:
        """Signed ``known`` / ``discovered`` / ``epsilon`` parts of the logit, each divided by
        ``|known| + |discovered| + |epsilon|`` (their absolute values sum to 1)."""
        parts = {"known": self.known_total, "discovered": self.discovered_total, "epsilon": self.epsilon}
        mass = sum(abs(v) for v in parts.values())
        return {k: (v / mass if mass > 0 else 0.0) for k, v in parts.items()}

    @property
    def error(self) -> float:
        """``|sum of parts - logit|`` (fp32 rounding only)."""
        return abs(self.known_total + self.discovered_total + self.epsilon - self.logit)

    def top(self, n: int) -> list[ConceptContribution]:
        """The ``n`` largest ``|contribution|`` concepts of both heads."""
        both = sorted(self.known + self.discovered, key=lambda c: -abs(c.contribution))
        return both[:n]

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        """JSON-able dict; ``top`` keeps only the largest ``top`` concepts of each head (the
        rest are summed into ``known_other`` / ``discovered_other``, so the parts still add up)."""
        known, disc = list(self.known), list(self.discovered)
        known_other = disc_other = 0.0
        if top is not None:
            known_other = sum(c.contribution for c in known[top:])
            disc_other = sum(c.contribution for c in disc[top:])
            known, disc = known[:top], disc[:top]
        return {
            "position": self.position, "index": self.index, "token_id": self.token_id, "text": self.text,
            "step": self.step, "logit": self.logit, "model_logit": self.model_logit,
            "known": [c.to_dict() for c in known], "discovered": [c.to_dict() for c in disc],
            "known_other": known_other, "discovered_other": disc_other,
            "known_tail": self.known_tail, "discovered_tail": self.discovered_tail, "epsilon": self.epsilon,
            "known_total": self.known_total, "discovered_total": self.discovered_total,
            "shares": self.shares,
        }


# ---------------------------------------------------------------------------------------
# a whole generation


@dataclass
class ConceptAttribution(AttributionTable):
    """Concept attribution of every committed token of a generation: an :class:`AttributionTable`
    (rows sorted by position) and its context.

    Attributes:
        (the table's tensors): see :class:`AttributionTable`.
        trace: the generation's :class:`GenerationTrace` (for input attribution).
        texts: display text per row.
        catalog: labels.
        endofchunk_id, stop_ids: the tokens that split and end chunks (:meth:`chunks`).
        result: the :class:`GenerationResult`, when the generation finished.
        tokenizer: decodes a chunk's text (when None, the rows' texts are joined).
    """

    trace: GenerationTrace
    texts: list[str]
    catalog: ConceptCatalog
    endofchunk_id: int | None = None
    stop_ids: tuple[int, ...] = ()
    result: GenerationResult | None = None
    tokenizer: Any = None

    @property
    def prompt_len(self) -> int:
        return self.trace.prompt_len

    # ---- per token -----------------------------------------------------------------------
    def row_of(self, position: int) -> int:
        """Row index of absolute ``position``.

        Raises:
            KeyError: nothing was committed there.
        """
        hits = (self.positions == int(position)).nonzero()
        if hits.numel() == 0:
            raise KeyError(f"no token was committed at position {position}")
        return int(hits[0, 0])

    def token(self, position: int) -> TokenAttribution:
        """The record of the token at absolute ``position`` (see :meth:`row_of`)."""
        return self._record(self.row_of(position))

    def tokens(self) -> list[TokenAttribution]:
        """One record per committed token, by position."""
        return [self._record(i) for i in range(len(self))]

    def _record(self, i: int) -> TokenAttribution:
        return make_record(self, i)

    # ---- chunks ------------------------------------------------------------------------
    def chunk_spans(self) -> list[tuple[int, int]]:
        """The generated region split at ``<|endofchunk|>``, cut at the first stop token: absolute
        ``[start, end)`` spans (:func:`~steerling_lite.interpret.chunks.find_chunks`)."""
        return find_chunks(self.trace.sequence(), self.endofchunk_id, start=self.prompt_len, stop_ids=self.stop_ids)

    def text_of(self, rows: Sequence[int]) -> str:
        """The text of rows ``rows`` (decoded together when a tokenizer is known)."""
        if self.tokenizer is not None:
            return self.tokenizer.decode([int(self.token_ids[r]) for r in rows])
        return "".join(self.texts[r] for r in rows)

    def chunks(self, spans: Sequence[tuple[int, int]] | None = None) -> list[ChunkAttribution]:
        """Chunk attribution (:func:`~steerling_lite.interpret.chunks.chunk_attribution`): over ``spans``
        (absolute ``[start, end)`` positions), default :meth:`chunk_spans`.

        Raises:
            ValueError: a span with ``end <= start`` or outside the sequence.
        """
        spans = self.chunk_spans() if spans is None else spans
        return chunk_attribution(self, spans, self.trace.length, self.catalog.label, self.text_of)

    # ---- export ------------------------------------------------------------------------
    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        """JSON-able dict: text, prompt length, steering, verification, per-token records (each
        with ``top`` concepts per head, all by default) and chunks."""
        res = self.result
        steering = None
        plans = {id(s.plan): s.plan for s in self.trace.steps if s.plan is not None}
        if plans:
            steering = [p.describe() for p in plans.values()]
        return {
            "text": res.text if res is not None else None,
            "prompt_tokens": self.prompt_len,
            "generated_tokens": len(self),
            "steering": steering,
            "verification": self.verify().to_dict(),
            "tokens": [t.to_dict(top) for t in self.tokens()],
            "chunks": [c.to_dict(top) for c in self.chunks()],
        }

    def to_json(self, path: str | Path | None = None, top: int | None = None, indent: int | None = None) -> str:
        """The :meth:`to_dict` as JSON text; written atomically to ``path`` when given."""
        text = json.dumps(self.to_dict(top), indent=indent, allow_nan=False)
        if path is not None:
            write_text_atomic(path, text + "\n")
        return text

    CSV_COLUMNS = ("position", "index", "step", "token_id", "token", "logit", "part", "head", "concept_id",
                   "label", "weight", "contribution")

    def to_csv(self, path: str | Path | None = None) -> str:
        """Long-format CSV, one row per (token, part): ``part`` is ``concept`` (with head, id,
        label, weight), ``known_tail``, ``discovered_tail`` or ``epsilon``; per token the
        contributions sum to ``logit``. Written atomically to ``path`` when given."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.CSV_COLUMNS)
        for t in self.tokens():
            base = [t.position, t.index, t.step, t.token_id, t.text, _f(t.logit)]
            for c in t.known + t.discovered:
                w.writerow(base + ["concept", c.head, c.concept_id, c.label, _f(c.weight), _f(c.contribution)])
            for part, v in (("known_tail", t.known_tail), ("discovered_tail", t.discovered_tail),
                            ("epsilon", t.epsilon)):
                w.writerow(base + [part, "", "", "", "", _f(v)])
        text = buf.getvalue()
        if path is not None:
            write_text_atomic(path, text)
        return text


def _f(x: float) -> str:
    return repr(float(x))


def make_record(a: ConceptAttribution, i: int) -> TokenAttribution:
    """The :class:`TokenAttribution` of row ``i`` of ``a``."""
    def concepts(ids: Tensor, w: Tensor, c: Tensor, head: str) -> tuple[ConceptContribution, ...]:
        out = [ConceptContribution(int(cid), head, a.catalog.label(int(cid), head), float(wi), float(ci))
               for cid, wi, ci in zip(ids.tolist(), w.tolist(), c.tolist()) if cid >= 0]
        out.sort(key=lambda x: -abs(x.contribution))
        return tuple(out)

    pos = int(a.positions[i])
    return TokenAttribution(
        position=pos, index=pos - a.prompt_len, token_id=int(a.token_ids[i]), text=a.texts[i],
        step=int(a.steps[i]), logit=float(a.logits[i]), model_logit=float(a.model_logits[i]),
        known=concepts(a.known_ids[i], a.known_weights[i], a.known_contrib[i], "known"),
        discovered=concepts(a.disc_ids[i], a.disc_weights[i], a.disc_contrib[i], "discovered"),
        known_tail=float(a.known_tail[i]), discovered_tail=float(a.discovered_tail[i]), epsilon=float(a.epsilon[i]),
    )
