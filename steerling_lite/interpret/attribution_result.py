"""Results of concept attribution: per-token records, the whole generation's tensors, checks, export.

See :mod:`steerling_lite.interpret.attribution` for how the parts are computed.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..atomic import write_text_atomic
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


@dataclass(frozen=True)
class VerificationResult:
    """Outcome of :meth:`ConceptAttribution.verify`.

    Attributes:
        passed: every token's ``|parts - logit| <= atol``.
        max_abs_error: the largest such error (logits).
        mean_abs_error: its mean.
        atol: the tolerance used.
        n_tokens: tokens checked.
        model_logit_max_error: largest ``|fp32 logit - the logit the sampler saw|``: the model
            dtype's rounding of the LM head (about 1e-2 in bf16), informational.
    """

    passed: bool
    max_abs_error: float
    mean_abs_error: float
    atol: float
    n_tokens: int
    model_logit_max_error: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------
# a whole generation


@dataclass
class ConceptAttribution:
    """Concept attribution of every committed token of a generation (rows sorted by position).

    Attributes:
        positions: ``(N,)`` long absolute positions.
        token_ids, steps: ``(N,)`` long.
        logits: ``(N,)`` fp32 ``r · W_lm[y]``.
        model_logits: ``(N,)`` fp32 the logit the sampler saw (model dtype rounding).
        known_ids / known_weights / known_contrib: ``(N, Kk)``; id -1 marks padding.
        known_tail, discovered_tail, epsilon: ``(N,)`` fp32.
        disc_ids / disc_weights / disc_contrib: ``(N, Ku)``.
        readout, lm_rows: ``(N, D)`` model dtype, kept for :meth:`verify`.
        trace: the generation's :class:`GenerationTrace` (for input attribution).
        texts: display text per row.
        catalog: labels.
        result: the :class:`GenerationResult`, when the generation finished.
    """

    positions: Tensor
    token_ids: Tensor
    steps: Tensor
    logits: Tensor
    model_logits: Tensor
    known_ids: Tensor
    known_weights: Tensor
    known_contrib: Tensor
    known_tail: Tensor
    disc_ids: Tensor
    disc_weights: Tensor
    disc_contrib: Tensor
    discovered_tail: Tensor
    epsilon: Tensor
    readout: Tensor
    lm_rows: Tensor
    trace: GenerationTrace
    texts: list[str]
    catalog: ConceptCatalog
    endofchunk_id: int | None = None
    stop_ids: tuple[int, ...] = ()
    result: GenerationResult | None = None
    tokenizer: Any = None

    def __len__(self) -> int:
        return int(self.positions.numel())

    @property
    def prompt_len(self) -> int:
        return self.trace.prompt_len

    # ---- checks ------------------------------------------------------------------------
    def verify(self, atol: float = 1e-3) -> VerificationResult:
        """Check ``known + known_tail + discovered + discovered_tail + epsilon == logit`` per token.

        The right side is recomputed now, in fp32, from the stored read-out vector and LM row
        (``r · W_lm[y]``); the left side is the sum of the stored parts, each computed from the
        concept heads. Holds to fp32 rounding whatever the precision of the transformer
        layers (bf16, int8, nf4), since both sides read the same ``r``.
        """
        n = len(self)
        if n == 0:
            return VerificationResult(True, 0.0, 0.0, atol, 0, 0.0)
        rhs = (self.readout.float() * self.lm_rows.float()).sum(-1)
        lhs = (self.known_contrib.sum(-1) + self.known_tail + self.disc_contrib.sum(-1)
               + self.discovered_tail + self.epsilon)
        err = (lhs - rhs).abs()
        model_err = (self.model_logits - rhs).abs()
        return VerificationResult(
            passed=bool((err <= atol).all()), max_abs_error=float(err.max()), mean_abs_error=float(err.mean()),
            atol=atol, n_tokens=n, model_logit_max_error=float(model_err.max()),
        )

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

    def decomposition(self) -> Tensor:
        """Per-token logit decomposition ``(N, 5)`` fp32, columns ``known, known_tail, discovered,
        discovered_tail, epsilon`` (logits; they sum to :attr:`logits`)."""
        return torch.stack([self.known_contrib.sum(-1), self.known_tail, self.disc_contrib.sum(-1),
                            self.discovered_tail, self.epsilon], dim=-1)

    def shares(self) -> Tensor:
        """``(N, 3)`` signed known / discovered / epsilon shares (see :attr:`TokenAttribution.shares`)."""
        d = self.decomposition()
        parts = torch.stack([d[:, 0] + d[:, 1], d[:, 2] + d[:, 3], d[:, 4]], dim=-1)
        return parts / parts.abs().sum(-1, keepdim=True).clamp_min(1e-12)

    # ---- chunks ------------------------------------------------------------------------
    def chunks(self, spans: Sequence[tuple[int, int]] | None = None):
        """Chunk attribution (:func:`~steerling_lite.interpret.chunks.chunk_attribution`): over ``spans``
        (absolute ``[start, end)`` positions), default the generated text split at ``<|endofchunk|>``."""
        from .chunks import chunk_attribution

        return chunk_attribution(self, spans)

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
