"""Concept steering: residual-stream injection, the ReLU logit mask and concept interventions.

The reference's recipes (``steerling==0.2.0`` ``SteeringConfig`` and
``SteerlingGenerator._prepare_steering / _build_relu_mask / _resolve_alpha``,
../shared/STEERLING_FORMAT.md §6):

- direction = unit-normalized sum of the known concept vectors ``E_k[c]``;
  ``peak = max_v (W_lm[v] · direction)``; with a target in logit units
  ``alpha = target / peak``;
- after every block ``i`` with ``i + 1 >= inject_layer``, ``alpha · direction`` is
  added at the positions that are still masked;
- schedules: ``fixed``, or ``hard_cutoff`` (full alpha while fewer than
  ``cutoff_tokens`` tokens are committed, then 0);
- ReLU logit mask: ``logits -= Σ_c strength_c · relu(E_k[c] · W_lmᵀ)``.

A :class:`SteeringPlan` may hold several injection terms, each with its own strength
and schedule; their scaled directions add up. A plan is immutable; a running
:class:`~steerling_lite.generate.Generation` takes a new one between steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

Schedule = Literal["fixed", "hard_cutoff"]


@dataclass(frozen=True)
class InjectionTerm:
    """``alpha · direction`` added at masked positions.

    Attributes:
        direction: ``(D,)`` fp32 unit vector.
        alpha: raw strength (residual-stream units).
        schedule: ``fixed`` or ``hard_cutoff``.
        cutoff_tokens: ``hard_cutoff`` only: tokens committed at full alpha before it drops to 0.
    """

    direction: Tensor
    alpha: float
    schedule: Schedule = "fixed"
    cutoff_tokens: int = 32

    def alpha_at(self, committed: int) -> float:
        """Strength once ``committed`` tokens of the generation are committed (reference ``_resolve_alpha``)."""
        if self.schedule == "fixed":
            return self.alpha
        return self.alpha if committed < self.cutoff_tokens else 0.0


@dataclass(frozen=True)
class SteeringPlan:
    """Everything steering changes in a denoising step.

    Attributes:
        terms: injection terms, summed.
        inject_layer: inject after blocks ``i`` with ``i + 1 >= inject_layer``.
        logit_offset: ``(V,)`` fp32 subtracted from the logits (the ReLU mask), or None.
        interventions: known concept id -> weight it is set to at the generated positions.
    """

    terms: tuple[InjectionTerm, ...] = ()
    inject_layer: int = 0
    logit_offset: Tensor | None = None
    interventions: dict[int, float] = field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        return not self.terms and self.logit_offset is None and not self.interventions

    def vector(self, committed: int, max_new_tokens: int, dtype: torch.dtype) -> Tensor | None:
        """``Σ alpha_t · direction_t`` ``(D,)`` in ``dtype`` for this step, or None when every alpha is 0.

        Each term is scaled in ``dtype`` as the reference scales its injection
        (``alpha * direction.to(model_dtype)``).
        """
        out: Tensor | None = None
        for term in self.terms:
            a = term.alpha_at(committed)
            if a == 0.0:
                continue
            v = a * term.direction.to(dtype)
            out = v if out is None else out + v
        return out

    def known_override(self, model, hidden: Tensor) -> Tensor:
        """Known-concept features ``(N, D)`` with the intervened weights set (reference dense
        intervention path: all concept weights, top-k by weight, then the overrides)."""
        head = model.known_head
        logits = head.all_logits(hidden)
        weights = torch.sigmoid(logits)
        k = head.k_report
        if k < head.n_concepts:
            top = weights.topk(k, dim=-1)
            weights = torch.zeros_like(weights).scatter_(-1, top.indices, top.values)
        ids = torch.tensor(list(self.interventions), device=hidden.device)
        vals = torch.tensor(list(self.interventions.values()), dtype=weights.dtype, device=hidden.device)
        weights[:, ids] = vals
        emb = head.embedding(torch.arange(head.n_concepts, device=hidden.device)).float()
        return (weights.float() @ emb).to(hidden.dtype)


def concept_direction(model, concept_ids: list[int]) -> tuple[Tensor, float]:
    """Unit direction ``(D,)`` fp32 of the summed known concept vectors and its peak LM alignment.

    Raises:
        ValueError: no concept ids, or an id outside ``[0, n_concepts)``.
    """
    head = model.known_head
    if head is None:
        raise ValueError("steering needs an interpretable checkpoint (with concept heads)")
    if not concept_ids:
        raise ValueError("no concept ids to steer")
    for c in concept_ids:
        if not 0 <= int(c) < head.n_concepts:
            raise ValueError(f"known concept id {c} is out of range: the model has {head.n_concepts} known concepts")
    ids = torch.tensor([int(c) for c in concept_ids], device=model.lm_head_weight.device)
    vec = head.embedding(ids).float().sum(dim=0)
    direction = vec / (vec.norm(p=2) + 1e-12)
    peak = max(float(lm_alignment(model, direction).max()), 1e-6)
    return direction, peak


def lm_alignment(model, vectors: Tensor, chunk: int = 16384) -> Tensor:
    """``vectors · W_lmᵀ`` in fp32: ``(D,)`` -> ``(V,)`` or ``(K, D)`` -> ``(K, V)``.

    W is converted to fp32 a chunk of rows at a time (a full fp32 copy of an 8B model's
    LM head would be 1.6 GB); the products are oriented as the reference's
    (``W @ d`` for one direction, ``E @ Wᵀ`` for several).
    """
    w = model.lm_head_weight
    v = vectors.float()
    if v.dim() == 1:
        return torch.cat([w[i:i + chunk].float() @ v for i in range(0, w.shape[0], chunk)])
    return torch.cat([v @ w[i:i + chunk].float().t() for i in range(0, w.shape[0], chunk)], dim=-1)


def relu_logit_mask(model, strengths: dict[int, float]) -> Tensor:
    """``Σ_c strength_c · relu(E_k[c] · W_lmᵀ)`` ``(V,)`` fp32 (reference ``_build_relu_mask``)."""
    head = model.known_head
    for c in strengths:
        if not 0 <= int(c) < head.n_concepts:
            raise ValueError(f"known concept id {c} is out of range: the model has {head.n_concepts} known concepts")
    ids = torch.tensor(list(strengths), device=model.lm_head_weight.device)
    s = torch.tensor(list(strengths.values()), dtype=torch.float32, device=ids.device)
    alignment = lm_alignment(model, head.embedding(ids).float().reshape(len(strengths), -1))
    return (s.unsqueeze(-1) * alignment.clamp_min(0.0)).sum(dim=0)


def amplify(model, concept_ids: list[int], target: float = 8.0, inject_layer: int = 8, cutoff_tokens: int = 32) -> SteeringPlan:
    """The reference's amplify preset (``SteeringConfig.injection``): ``alpha = target / peak``
    (target in logit units), hard-cutoff schedule."""
    direction, peak = concept_direction(model, concept_ids)
    term = InjectionTerm(direction, target / peak, "hard_cutoff", cutoff_tokens)
    return SteeringPlan(terms=(term,), inject_layer=inject_layer)


def suppress(
    model, concept_id: int, group_ids: list[int] | None = None, alpha: float = -7.0,
    inject_layer: int | None = None, relu_strength: float = 20.0,
) -> SteeringPlan:
    """The reference's suppress preset (``SteeringConfig.injection_relu``): raw ``alpha`` over the
    focal concept plus its group, fixed schedule, ReLU mask of the focal concept."""
    ids = [concept_id] + [c for c in (group_ids or []) if c != concept_id]
    direction, _ = concept_direction(model, ids)
    layer = inject_layer if inject_layer is not None else model.cfg.n_layers // 2
    return SteeringPlan(
        terms=(InjectionTerm(direction, float(alpha), "fixed"),),
        inject_layer=layer,
        logit_offset=relu_logit_mask(model, {concept_id: relu_strength}),
    )
