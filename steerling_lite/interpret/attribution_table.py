"""The concept-attribution record: one row of tensors per committed token, and its exactness check.

One type serves every scale: :func:`~steerling_lite.interpret.attribution.attribute_hidden`
builds an :class:`AttributionTable` for the tokens one denoising step committed, the
recorder concatenates the steps' tables, and
:class:`~steerling_lite.interpret.attribution_result.ConceptAttribution` is that table of
a whole generation plus its context (trace, labels, texts). How the parts are computed:
:mod:`steerling_lite.interpret.attribution`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class VerificationResult:
    """Outcome of :meth:`AttributionTable.verify`.

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


@dataclass
class AttributionTable:
    """Concept attribution of ``N`` committed tokens, one row each.

    Per row, ``Σ known_contrib + known_tail + Σ disc_contrib + discovered_tail + epsilon ==
    logits`` (see :meth:`verify`).

    Attributes:
        positions: ``(N,)`` long absolute positions.
        token_ids, steps: ``(N,)`` long: the committed token and the denoising step that committed it.
        logits: ``(N,)`` fp32 ``r · W_lm[y]``.
        model_logits: ``(N,)`` fp32 the logit the sampler saw (model dtype rounding).
        known_ids / known_weights / known_contrib: ``(N, Kk)`` long / fp32 / fp32 (logits); id -1
            marks padding (weight and contribution 0).
        known_tail, discovered_tail, epsilon: ``(N,)`` fp32 logits.
        disc_ids / disc_weights / disc_contrib: ``(N, Ku)``, as the known ones.
        readout, lm_rows: ``(N, D)`` model dtype: the vector the LM head read and ``W_lm[y]``,
            kept for :meth:`verify`.
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

    def __len__(self) -> int:
        return int(self.positions.numel())

    def columns(self) -> dict[str, Tensor]:
        """The tensors by field name (the same tensors, not copies)."""
        return {f.name: getattr(self, f.name) for f in fields(AttributionTable)}

    def cpu(self) -> AttributionTable:
        """The table with every tensor on the CPU."""
        return AttributionTable(**{k: v.cpu() for k, v in self.columns().items()})

    def take(self, rows: Tensor) -> AttributionTable:
        """The rows ``rows`` (``(M,)`` long indices), in that order."""
        return AttributionTable(**{k: v[rows] for k, v in self.columns().items()})

    @staticmethod
    def empty(n_embd: int, dtype: torch.dtype) -> AttributionTable:
        """A table of no rows; ``readout`` / ``lm_rows`` ``(0, n_embd)`` in ``dtype``."""
        e, el = torch.zeros(0), torch.zeros(0, dtype=torch.long)
        e2, el2 = torch.zeros(0, 0), torch.zeros(0, 0, dtype=torch.long)
        d = torch.zeros(0, n_embd, dtype=dtype)
        return AttributionTable(el, el, el, e, e, el2, e2, e2, e, el2, e2, e2, e, e, d, d)

    @staticmethod
    def concat(tables: Sequence[AttributionTable]) -> AttributionTable:
        """The rows of ``tables`` one after another (at least one table, all on one device); the
        per-concept columns are padded to the widest (id -1, weight and contribution 0)."""
        kk = max(t.known_ids.shape[1] for t in tables)
        ku = max(t.disc_ids.shape[1] for t in tables)
        width = dict.fromkeys(("known_ids", "known_weights", "known_contrib"), kk)
        width.update(dict.fromkeys(("disc_ids", "disc_weights", "disc_contrib"), ku))
        out = {}
        for name in tables[0].columns():
            parts = [getattr(t, name) for t in tables]
            if name in width:
                parts = [_pad_cols(p, width[name], -1 if name.endswith("_ids") else 0) for p in parts]
            out[name] = torch.cat(parts)
        return AttributionTable(**out)

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

    def decomposition(self) -> Tensor:
        """Per-token logit decomposition ``(N, 5)`` fp32, columns ``known, known_tail, discovered,
        discovered_tail, epsilon`` (logits; they sum to :attr:`logits`)."""
        return torch.stack([self.known_contrib.sum(-1), self.known_tail, self.disc_contrib.sum(-1),
                            self.discovered_tail, self.epsilon], dim=-1)

    def shares(self) -> Tensor:
        """``(N, 3)`` signed known / discovered / epsilon shares of each token's logit, each divided
        by the sum of their absolute values (as
        :attr:`~steerling_lite.interpret.attribution_result.TokenAttribution.shares`)."""
        d = self.decomposition()
        parts = torch.stack([d[:, 0] + d[:, 1], d[:, 2] + d[:, 3], d[:, 4]], dim=-1)
        return parts / parts.abs().sum(-1, keepdim=True).clamp_min(1e-12)


def _pad_cols(t: Tensor, k: int, value: float) -> Tensor:
    if t.shape[1] == k:
        return t
    pad = torch.full((t.shape[0], k - t.shape[1]), value, dtype=t.dtype, device=t.device)
    return torch.cat([t, pad], dim=1)
