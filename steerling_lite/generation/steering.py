"""Concept steering: residual-stream injection, the ReLU logit mask and concept interventions.

The reference's recipes (``steerling==0.2.0`` ``SteeringConfig`` and
``SteerlingGenerator._prepare_steering / _build_relu_mask / _resolve_alpha``,
../shared/STEERLING_FORMAT.md §6):

- direction = unit-normalized sum of the known concept vectors ``E_k[c]``;
  ``peak = max_v (W_lm[v] · direction)``; with a target in logit units
  ``alpha = target / peak``;
- after every block ``i`` with ``i + 1 >= inject_layer``, ``alpha · direction`` is
  added at the positions that are still masked;
- schedules: ``fixed`` (as long as the steering is on), or ``hard_cutoff`` (the amplify
  preset's: full alpha while fewer than ``cutoff_tokens`` tokens are committed, then 0);
- ReLU logit mask: ``logits -= Σ_c strength_c · relu(E_k[c] · W_lmᵀ)``.

A :class:`SteeringPlan` may hold several injection terms, each with its own strength
and schedule; their scaled directions add up. A plan is immutable; a running
:class:`~steerling_lite.generation.generate.Generation` takes a new one between steps.

Slider specs (:class:`~steerling_lite.generation.steering_builder.Steering`), their strength
units and the builder that turns them into plans are in
:mod:`steerling_lite.generation.steering_builder`; steering presets (TOML files) in
:mod:`steerling_lite.generation.steering_preset`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from ..errors import ConceptError, require_interpretable
from ..model.concept_heads import NORM_EPS, as_concept_id, lm_alignment, readout

Schedule = Literal["fixed", "hard_cutoff"]
SteeringMode = Literal["amplify", "suppress", "intervene"]

# The reference presets' defaults (steerling==0.2.0 SteeringConfig.injection / injection_relu).
AMPLIFY_TARGET = 8.0
AMPLIFY_INJECT_LAYER = 8  # of Steerling-8B's 32 layers: a quarter of the depth
SUPPRESS_ALPHA = -7.0
RELU_STRENGTH = 20.0
CUTOFF_TOKENS = 32


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
    specs: tuple[Any, ...] = ()  # the Steering specs it was built from (steering_builder)

    def describe(self) -> dict[str, Any]:
        """JSON-able summary: the slider specs it was built from, the inject layer, and per term
        its alpha and schedule."""
        return {
            "inject_layer": self.inject_layer,
            "specs": [sp.to_dict() for sp in self.specs],
            "terms": [{"alpha": t.alpha, "schedule": t.schedule, "cutoff_tokens": t.cutoff_tokens} for t in self.terms],
            "interventions": {str(k): v for k, v in self.interventions.items()},
            "logit_mask": self.logit_offset is not None,
        }

    @property
    def is_empty(self) -> bool:
        return not self.terms and self.logit_offset is None and not self.interventions

    def in_effect(self, committed: int) -> tuple[Any, ...]:
        """The specs that change a step run once ``committed`` tokens are committed (see
        :meth:`Steering.in_effect`): what a record of this step's steering must name. Plans made
        by :func:`amplify` / :func:`suppress` have no specs: ``()``."""
        return tuple(sp for sp in self.specs if sp.in_effect(committed))

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

    def readout(self, model, hidden: Tensor) -> Tensor:
        """The vector the LM head reads for final hidden states ``hidden`` ``(N, D)``: the composed
        state with the intervened known weights (no epsilon correction, as the reference) when
        the plan has interventions, else ``hidden`` itself
        (:func:`~steerling_lite.model.concept_heads.readout`)."""
        return readout(model, hidden, self.interventions)


def concept_direction(model, concept_ids: list[int]) -> tuple[Tensor, float]:
    """Unit direction ``(D,)`` fp32 of the summed known concept vectors and its peak LM alignment.

    Raises:
        ConceptError (a ValueError): no concept heads, no concept ids, or an id outside ``[0, n_concepts)``.
    """
    require_interpretable(model, "steering")
    if not concept_ids:
        raise ConceptError("no concept ids to steer")
    ids_list = check_known_ids(model, concept_ids)
    ids = torch.tensor(ids_list, device=model.lm_head_weight.device)
    vec = model.known_head.embedding(ids).float().sum(dim=0)
    direction = vec / (vec.norm(p=2) + NORM_EPS)
    peak = max(float(lm_alignment(model, direction).max()), 1e-6)
    return direction, peak


def relu_logit_mask(model, strengths: dict[int, float]) -> Tensor:
    """``Σ_c strength_c · relu(E_k[c] · W_lmᵀ)`` ``(V,)`` fp32 (reference ``_build_relu_mask``).

    Raises:
        ConceptError: an id out of range or a strength that is not finite.
    """
    head = model.known_head
    check_known_ids(model, list(strengths))
    for c, v in strengths.items():
        check_strength(v, f"ReLU mask strength of concept {c}")
    ids = torch.tensor(list(strengths), device=model.lm_head_weight.device)
    s = torch.tensor(list(strengths.values()), dtype=torch.float32, device=ids.device)
    alignment = lm_alignment(model, head.embedding(ids).float().reshape(len(strengths), -1))
    return (s.unsqueeze(-1) * alignment.clamp_min(0.0)).sum(dim=0)


def amplify(model, concept_ids: list[int], target: float = 8.0, inject_layer: int = 8, cutoff_tokens: int = 32) -> SteeringPlan:
    """The reference's amplify preset (``SteeringConfig.injection``): ``alpha = target / peak``
    (target in logit units), hard-cutoff schedule.

    Raises:
        ConceptError: a bad id or a target that is not finite.
    """
    check_strength(target, "amplify target")
    direction, peak = concept_direction(model, concept_ids)
    term = InjectionTerm(direction, target / peak, "hard_cutoff", cutoff_tokens)
    return SteeringPlan(terms=(term,), inject_layer=inject_layer)


def suppress(
    model, concept_id: int, group_ids: list[int] | None = None, alpha: float = -7.0,
    inject_layer: int | None = None, relu_strength: float = 20.0,
) -> SteeringPlan:
    """The reference's suppress preset (``SteeringConfig.injection_relu``): raw ``alpha`` over the
    focal concept plus its group, fixed schedule, ReLU mask of the focal concept.

    Raises:
        ConceptError: a bad id, or an alpha / relu strength that is not finite.
    """
    check_strength(alpha, "suppress alpha")
    ids = [concept_id] + [c for c in (group_ids or []) if c != concept_id]
    direction, _ = concept_direction(model, ids)
    layer = inject_layer if inject_layer is not None else model.cfg.n_layers // 2
    return SteeringPlan(
        terms=(InjectionTerm(direction, float(alpha), "fixed"),),
        inject_layer=layer,
        logit_offset=relu_logit_mask(model, {concept_id: relu_strength}),
    )


# ---------------------------------------------------------------------------------------
# validation


def check_strength(value: Any, what: str) -> float:
    """``value`` as a finite float.

    Raises:
        ConceptError: not a number, NaN or infinite (naming ``what``).
    """
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConceptError(f"{what} is {value!r}; expected a finite number") from None
    if not math.isfinite(v):
        raise ConceptError(f"{what} is {v}; expected a finite number")
    return v


def check_known_ids(model, concept_ids: Iterable[Any]) -> list[int]:
    """Known concept ids as ints, each in ``[0, n_concepts)``.

    Raises:
        ConceptError: no concept heads, a non-integer id, or an id out of range.
    """
    require_interpretable(model, "steering")
    head = model.known_head
    out = []
    for c in concept_ids:
        cid = as_concept_id(c)
        if not 0 <= cid < head.n_concepts:
            raise ConceptError(
                f"known concept id {cid} is out of range: the model has {head.n_concepts} known concepts "
                f"(0..{head.n_concepts - 1})"
            )
        out.append(cid)
    return out
