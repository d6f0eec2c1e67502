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

This module is the one home of concept-space math; steering, attribution and the
catalog's alignment lookups call it:

- the heads' selection (:meth:`_ConceptHead.forward`, :meth:`_ConceptHead.features_top_k`);
- dot products of concept vectors with LM-head rows: of every concept
  (:meth:`_ConceptHead.lm_dots`, :meth:`_ConceptHead.embedding_norms`,
  :meth:`_ConceptHead.alignment`; in rank space for a factorized head, whose ``E`` is
  101k x 4096 for Steerling-8B) and of selected ones (:meth:`_ConceptHead.selected_lm_dots`);
- concept interventions (:func:`intervened_known_weights`, :func:`intervened_known_features`)
  and the vector the LM head reads (:func:`readout`);
- alignment of any vectors with the whole vocabulary (:func:`lm_alignment`) and the tokens
  each concept promotes most (:func:`top_promoted_tokens`);
- each concept's weight at each position (:meth:`_ConceptHead.feature_weights`).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ..errors import ConceptError
from ..loading.config import ConceptConfig

LOGIT_CLAMP = 15.0
NORM_EPS = 1e-12  # added to a norm before dividing by it (unit concept vectors and directions)


def as_concept_id(value: Any, head: str = "known") -> int:
    """``value`` as a concept id: an int (or an integer-valued index type, or a string of digits).

    Raises:
        ConceptError: a bool, float, or anything else that is not an integer (naming ``head``).
    """
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                return int(value)
    raise ConceptError(f"{head} concept id {value!r} is not an integer")


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

    def features_top_k(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """The feature top-k of a head with one (``k_features`` set): ids ``(N, k)`` long by
        descending logit and their logits ``(N, k)`` fp32, recomputed from the selected rows
        (the reference's order of operations)."""
        assert self.k_features is not None
        idx = self.all_logits(h).topk(min(self.k_features, self.n_concepts), dim=-1).indices
        return idx, self.selected_logits(h, idx)

    def forward(self, h: Tensor) -> HeadOutput:
        """Top-k decomposition of ``h`` ``(N, D)``; see :class:`HeadOutput`."""
        if self.k_features is None:
            logits = self.all_logits(h)
            weights = torch.sigmoid(logits)
            features = self.mix_all(weights).to(h.dtype)
            sel_logits, idx = logits.topk(min(self.k_report, self.n_concepts), dim=-1)
            return HeadOutput(features, idx, sel_logits)
        idx, sel_logits = self.features_top_k(h)
        features = self.mix(torch.sigmoid(sel_logits), idx).to(h.dtype)
        if self.k_report < idx.shape[-1]:  # reference: re-rank the feature top-k by logit, keep topk_known
            order = sel_logits.topk(self.k_report, dim=-1).indices
            idx, sel_logits = idx.gather(-1, order), sel_logits.gather(-1, order)
        return HeadOutput(features, idx, sel_logits)

    def feature_weights(self, h: Tensor) -> Tensor:
        """Each concept's weight in the features of each position, ``(N, C)`` fp32 for ``h``
        ``(N, D)``: ``sigmoid(logit)`` of the concepts the feature top-k selects, 0 for the others
        (every concept's sigmoid for a head without top-k): the ``w_c`` of ``Σ w_c E[c]``."""
        if self.k_features is None:
            return torch.sigmoid(self.all_logits(h))
        idx, logits = self.features_top_k(h)
        weights = torch.zeros(h.shape[0], self.n_concepts, device=h.device)
        return weights.scatter_(1, idx, torch.sigmoid(logits))

    def mix_all(self, weights: Tensor) -> Tensor:
        """``weights (N, C) @ E[:C]`` in fp32 (the no-top-k path)."""
        return weights @ self.all_embeddings()

    def all_embeddings(self) -> Tensor:
        """Every concept vector ``E[:C]`` ``(C, D)`` fp32 (of a dense head, ``concept_embedding``; a
        factorized head overrides the methods that would need it, to stay in rank space)."""
        return self.concept_embedding.weight[: self.n_concepts].float()

    def lm_dots(self, rows: Tensor) -> Tensor:
        """``rows[p] · E[c]`` for every concept: ``(P, D)`` fp32 rows (e.g. LM-head rows ``W_lm[y]``)
        -> ``(P, C)`` fp32."""
        return rows @ self.all_embeddings().t()

    def selected_lm_dots(self, idx: Tensor, rows: Tensor) -> Tensor:
        """``E[idx[p, j]] · rows[p]`` ``(P, k)`` fp32 for ids ``idx`` ``(P, k)`` and fp32 rows ``(P, D)``."""
        return torch.einsum("pkd,pd->pk", self.embedding(idx).float(), rows)

    def embedding_norms(self) -> Tensor:
        """``|E[c]|`` ``(C,)`` fp32 of every concept."""
        return self.all_embeddings().norm(dim=-1)

    def alignment(self, rows: Tensor) -> Tensor:
        """``(E[c] / |E[c]|) · rows[p]`` ``(P, C)`` fp32 for fp32 rows ``(P, D)``: how much each concept's
        unit vector points along each row (reference ``concept_top_tokens``' score, read the other way)."""
        return self.lm_dots(rows) / (self.embedding_norms() + NORM_EPS)


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

    def lm_dots(self, rows: Tensor) -> Tensor:
        if not self.factorized:
            return super().lm_dots(rows)
        coef = self.embedding_coef.weight[: self.n_concepts].float()  # (C, r)
        return (rows @ self.embedding_basis.weight.float()) @ coef.t()  # rows · basis: (P, r)

    def embedding_norms(self) -> Tensor:
        if not self.factorized:
            return super().embedding_norms()
        coef = self.embedding_coef.weight[: self.n_concepts].float()
        basis = self.embedding_basis.weight.float()  # (D, r)
        return ((coef @ (basis.t() @ basis)) * coef).sum(-1).clamp_min(0).sqrt()  # |coef · basisᵀ| via the Gram matrix


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


# ---------------------------------------------------------------------------------------
# concept interventions and the read-out


def intervened_known_weights(head: KnownHead, hidden: Tensor, interventions: dict[int, float]) -> tuple[Tensor, Tensor]:
    """Known-concept weights under a concept intervention (the reference's dense intervention
    path): ``sigmoid`` of every concept's logit, all but the top ``k_report`` zeroed, then the
    intervened concepts set to their values.

    Args:
        head: the known head.
        hidden: ``(N, D)`` final hidden states (after ln_f).
        interventions: known concept id -> the weight it is set to.

    Returns:
        ``(weights, top_ids)``: ``(N, C)`` fp32 weights, and ``(N, k)`` long the top-k ids before
        the overrides (by descending weight).
    """
    weights = torch.sigmoid(head.all_logits(hidden))
    top = weights.topk(min(head.k_report, head.n_concepts), dim=-1)
    weights = torch.zeros_like(weights).scatter_(-1, top.indices, top.values)
    ids = torch.tensor(list(interventions), dtype=torch.long, device=hidden.device)
    weights[:, ids] = torch.tensor(list(interventions.values()), dtype=weights.dtype, device=hidden.device)
    return weights, top.indices


def intervened_known_features(head: KnownHead, hidden: Tensor, interventions: dict[int, float]) -> Tensor:
    """``Σ_c w_c E_k[c]`` ``(N, D)`` in ``hidden``'s dtype with the weights of
    :func:`intervened_known_weights` (summed in fp32)."""
    weights, _ = intervened_known_weights(head, hidden, interventions)
    return head.mix_all(weights).to(hidden.dtype)


def readout(model, hidden: Tensor, interventions: dict[int, float] | None = None) -> Tensor:
    """The vector the LM head reads for final hidden states ``hidden`` ``(N, D)`` of ``model`` (a
    ``SteerlingModel``): with ``interventions`` (known id -> weight) the composed state with the
    intervened known features and no epsilon correction (reference), else ``hidden`` itself."""
    if not interventions:
        return hidden
    known = intervened_known_features(model.known_head, hidden, interventions)
    return decompose(hidden, model.known_head, model.unknown_head, model.cfg.concept.use_epsilon_correction,
                     known_override=known).composed


def lm_alignment(model, vectors: Tensor, chunk: int = 16384) -> Tensor:
    """``vectors · W_lmᵀ`` in fp32 for ``model``'s LM head ``W_lm`` ``(V, D)``: ``(D,)`` -> ``(V,)``
    or ``(K, D)`` -> ``(K, V)`` (logit units).

    W is converted to fp32 a chunk of rows at a time (a full fp32 copy of an 8B model's
    LM head would be 1.6 GB); the products are oriented as the reference's
    (``W @ d`` for one direction, ``E @ Wᵀ`` for several).
    """
    w = model.lm_head_weight
    v = vectors.float()
    if v.dim() == 1:
        return torch.cat([w[i:i + chunk].float() @ v for i in range(0, w.shape[0], chunk)])
    return torch.cat([v @ w[i:i + chunk].float().t() for i in range(0, w.shape[0], chunk)], dim=-1)



@torch.inference_mode()
def top_promoted_tokens(model, head: _ConceptHead, k: int, concept_ids: Tensor | None = None,
                        exclude: Tensor | None = None, batch: int = 256) -> tuple[Tensor, Tensor]:
    """The ``k`` tokens each concept promotes most: the largest ``E[c] · W_lm[t]`` over the
    vocabulary, scored as the reference's ``concept_top_tokens`` scores them,
    ``(E[c] / |E[c]|) · W_lm[t]`` in logit units (the same ranking).

    Args:
        model: a ``SteerlingModel`` (its LM head ``W_lm`` ``(V, D)``).
        head: its known or discovered head.
        k: tokens per concept (at most V).
        concept_ids: ``(K,)`` long ids (default every concept of the head).
        exclude: ``(M,)`` long token ids never returned (e.g. the special tokens).
        batch: concepts per product with the whole vocabulary (``batch x V`` fp32 at a time).

    Returns:
        ``(scores, token_ids)``: ``(K, k)`` fp32 and long on the CPU, highest first.
    """
    dev = model.lm_head_weight.device
    ids = torch.arange(head.n_concepts) if concept_ids is None else torch.as_tensor(concept_ids, dtype=torch.long)
    values, tokens = [], []
    for lo in range(0, ids.numel(), batch):
        v = head.embedding(ids[lo:lo + batch].to(dev)).float()
        scores = lm_alignment(model, v / (v.norm(dim=-1, keepdim=True) + NORM_EPS))
        if exclude is not None and exclude.numel():
            scores[:, exclude.to(scores.device)] = float("-inf")
        v, t = scores.topk(min(k, scores.shape[-1]), dim=-1)
        values.append(v.cpu())
        tokens.append(t.cpu())
    if not values:
        return torch.zeros(0, k), torch.zeros(0, k, dtype=torch.long)
    return torch.cat(values), torch.cat(tokens)
