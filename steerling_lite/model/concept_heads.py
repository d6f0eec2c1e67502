"""Steerling's concept heads: known concepts (linear) and discovered concepts (factorized or dense).

Both heads map a hidden state h ``(N, D)`` to concept logits, keep the top-k concepts
and return the weighted sum of their embeddings (reference: ``steerling==0.2.0``
``models/interpretable/concept_head.py``, linear paths):

- logits ``clamp(h · Wᵀ, ±15)`` in fp32 (factorized: ``(h · downᵀ) · upᵀ``);
- top-k by logit (sigmoid is monotonic, so this is the reference's order too);
- weights ``sigmoid`` of the selected logits, recomputed in fp32;
- features ``Σ w_c E[c]`` (factorized: ``E = coef · basisᵀ``).

:func:`decompose` then composes ``known + discovered + epsilon`` as the reference's
``InterpretableCausalDiffusionLM.forward`` does (§4 of the format note).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from ..loading.config import ConceptConfig

LOGIT_CLAMP = 15.0


@dataclass
class HeadOutput:
    """One head's result for N positions.

    Attributes:
        features: ``(N, D)`` ``Σ_c w_c E[c]`` over the selected concepts, model dtype.
        indices: ``(N, k)`` selected concept ids (long), by descending logit.
        logits: ``(N, k)`` fp32 clamped logits of those concepts; weights are their sigmoid.
    """

    features: Tensor
    indices: Tensor
    logits: Tensor

    @property
    def weights(self) -> Tensor:
        return torch.sigmoid(self.logits)


class _ConceptHead(nn.Module):
    """Shared top-k logic; subclasses define the logits, selected logits and embeddings."""

    n_concepts: int
    k_features: int | None  # None: every concept contributes (no top-k)
    k_report: int  # how many concepts attribution reports

    def all_logits(self, h: Tensor) -> Tensor:  # (N, C) fp32, clamped
        raise NotImplementedError

    def selected_logits(self, h: Tensor, idx: Tensor) -> Tensor:  # (N, k) fp32, clamped
        raise NotImplementedError

    def embedding(self, idx: Tensor) -> Tensor:
        """Concept vectors ``E[idx]`` ``(..., D)`` in the weights' dtype."""
        raise NotImplementedError

    def mix(self, weights: Tensor, idx: Tensor) -> Tensor:
        """``Σ_k weights[n,k] E[idx[n,k]]`` ``(N, D)``."""
        emb = self.embedding(idx)
        return torch.einsum("nk,nkd->nd", weights.to(emb.dtype), emb)

    def forward(self, h: Tensor) -> HeadOutput:
        """Top-k decomposition of ``h`` ``(N, D)``; see :class:`HeadOutput`."""
        logits = self.all_logits(h)
        if self.k_features is None:
            weights = torch.sigmoid(logits)
            features = self.mix_all(weights).to(h.dtype)
            sel_logits, idx = logits.topk(min(self.k_report, self.n_concepts), dim=-1)
            return HeadOutput(features, idx, sel_logits)
        k = min(self.k_features, self.n_concepts)
        idx = logits.topk(k, dim=-1).indices
        sel_logits = self.selected_logits(h, idx)
        features = self.mix(torch.sigmoid(sel_logits), idx).to(h.dtype)
        if self.k_report < k:  # reference: re-rank the feature top-k by logit, keep topk_known
            order = sel_logits.topk(self.k_report, dim=-1).indices
            idx, sel_logits = idx.gather(-1, order), sel_logits.gather(-1, order)
        return HeadOutput(features, idx, sel_logits)

    def mix_all(self, weights: Tensor) -> Tensor:
        """``weights (N, C) @ E[:C]`` in fp32 (the no-top-k path)."""
        all_idx = torch.arange(self.n_concepts, device=weights.device)
        return weights @ self.embedding(all_idx).float()


class KnownHead(_ConceptHead):
    """Known concepts: ``concept_predictor`` (detectors) and ``concept_embedding`` (vectors E_k), ``(Pk, D)`` each."""

    def __init__(self, c: ConceptConfig, n_embd: int):
        super().__init__()
        self.n_concepts = c.n_concepts
        self.k_features = c.known_feature_k
        self.k_report = c.topk_known if c.topk_known is not None else (c.known_feature_k or 32)
        self.concept_embedding = nn.Embedding(c.n_known_padded, n_embd)
        self.concept_predictor = nn.Linear(n_embd, c.n_known_padded, bias=False)

    def all_logits(self, h: Tensor) -> Tensor:
        w = self.concept_predictor.weight[: self.n_concepts]
        return (h @ w.t()).float().clamp(-LOGIT_CLAMP, LOGIT_CLAMP)

    def selected_logits(self, h: Tensor, idx: Tensor) -> Tensor:
        w = self.concept_predictor.weight[idx].float()
        return torch.einsum("nd,nkd->nk", h.float(), w).clamp(-LOGIT_CLAMP, LOGIT_CLAMP)

    def embedding(self, idx: Tensor) -> Tensor:
        return self.concept_embedding.weight[idx]


class UnknownHead(_ConceptHead):
    """Discovered concepts.

    Factorized (Steerling-8B): ``E_u = embedding_coef · embedding_basisᵀ`` and detector
    logits ``(h · predictor_downᵀ) · predictor_upᵀ``; dense: ``concept_embedding`` and
    ``concept_predictor`` like the known head.
    """

    def __init__(self, c: ConceptConfig, n_embd: int):
        super().__init__()
        assert c.n_unknown_concepts is not None
        self.n_concepts = c.n_unknown_concepts
        self.factorized = c.factorize_unknown
        topk = c.unknown_topk if c.apply_topk_to_unknown else None
        self.k_features = topk
        self.k_report = c.unknown_topk or 64
        p = c.n_unknown_padded
        if self.factorized:
            r = c.factorize_rank
            self.embedding_coef = nn.Embedding(p, r)
            self.embedding_basis = nn.Linear(r, n_embd, bias=False)
            self.predictor_down = nn.Linear(n_embd, r, bias=False)
            self.predictor_up = nn.Linear(r, p, bias=False)
        else:
            self.concept_embedding = nn.Embedding(p, n_embd)
            self.concept_predictor = nn.Linear(n_embd, p, bias=False)

    def all_logits(self, h: Tensor) -> Tensor:
        if self.factorized:
            hc = h @ self.predictor_down.weight.t()
            logits = hc.float() @ self.predictor_up.weight[: self.n_concepts].float().t()
        else:
            logits = (h @ self.concept_predictor.weight[: self.n_concepts].t()).float()
        return logits.clamp(-LOGIT_CLAMP, LOGIT_CLAMP)

    def selected_logits(self, h: Tensor, idx: Tensor) -> Tensor:
        if self.factorized:
            hc = (h @ self.predictor_down.weight.t()).float()
            return torch.einsum("nr,nkr->nk", hc, self.predictor_up.weight[idx].float()).clamp(-LOGIT_CLAMP, LOGIT_CLAMP)
        w = self.concept_predictor.weight[idx].float()
        return torch.einsum("nd,nkd->nk", h.float(), w).clamp(-LOGIT_CLAMP, LOGIT_CLAMP)

    def embedding(self, idx: Tensor) -> Tensor:
        if self.factorized:
            return self.embedding_coef.weight[idx] @ self.embedding_basis.weight.t()
        return self.concept_embedding.weight[idx]

    def mix(self, weights: Tensor, idx: Tensor) -> Tensor:
        if not self.factorized:
            return super().mix(weights, idx)
        coef = self.embedding_coef.weight[idx]  # (N, k, r): stay in rank space as the reference does
        mixed = torch.einsum("nk,nkr->nr", weights.to(coef.dtype), coef)
        return mixed @ self.embedding_basis.weight.t().to(mixed.dtype)

    def mix_all(self, weights: Tensor) -> Tensor:
        if not self.factorized:
            return super().mix_all(weights)
        coef = self.embedding_coef.weight[: self.n_concepts].float()
        return (weights @ coef) @ self.embedding_basis.weight.t().float()


@dataclass
class Decomposition:
    """``composed = known + discovered + epsilon`` for N positions (reference §4).

    Attributes:
        hidden: ``(N, D)`` final hidden states (after ln_f), model dtype.
        known: known-head output.
        unknown: discovered-head output, or None for a model without one.
        epsilon: ``(N, D)`` ``hidden - (discovered + known)``; zero when
            ``use_epsilon_correction`` is off.
        composed: ``(N, D)`` the vector the LM head reads.
    """

    hidden: Tensor
    known: HeadOutput
    unknown: HeadOutput | None
    epsilon: Tensor
    composed: Tensor


def decompose(
    hidden: Tensor,
    known_head: KnownHead,
    unknown_head: UnknownHead | None,
    use_epsilon: bool,
    known_override: Tensor | None = None,
) -> Decomposition:
    """Run both heads on ``hidden`` ``(N, D)`` and compose, in the reference's order of operations.

    ``known_override`` ``(N, D)`` replaces the known features (a concept intervention);
    as in the reference, no epsilon is added then.
    """
    known = known_head(hidden)
    known_feat = known.features if known_override is None else known_override.to(hidden.dtype)
    unknown = unknown_head(hidden) if unknown_head is not None else None
    unk = unknown.features if unknown is not None else hidden - known_feat
    if use_epsilon and known_override is None:
        epsilon = hidden - (unk + known_feat)
        unk = unk + epsilon
    else:
        epsilon = torch.zeros_like(hidden)
    return Decomposition(hidden, known, unknown, epsilon, unk + known_feat)
