"""Slider specs -> steering plans: :class:`Steering` (one steered concept, its strength, units and
schedule) and :class:`SteeringBuilder` (a list of specs -> a
:class:`~steerling_lite.generation.steering.SteeringPlan`, with cached directions and masks).

Strength units (issue 12). ``reference`` units are the reference's (``steerling==0.2.0``
``SteeringConfig``, ../shared/STEERLING_FORMAT.md §6): an amplify strength is a target in
logit units (``alpha = target / peak``), a suppress strength the raw alpha. They do not mean
the same on every model: what an injection does depends on its length next to the residual
stream's, which differs between models (on the 4-layer default model the amplify preset's
+8, and even +1, turns the text into letter soup). ``relative`` units (the app's sliders,
presets) are relative to the model: strength ``s`` injects

    alpha = s · RELATIVE_UNIT · ‖h‖ / n_inject

at every block it is added after, where ``‖h‖`` is the mean length of the final residual
stream (the input of ``ln_f``) at the masked positions of an unsteered pass
(:func:`residual_norm`) and ``n_inject`` the number of blocks the injection is added after;
so at strength 10 the injected vectors add up to three quarters of the residual stream's length. In
relative units a suppress's ReLU logit mask has strength ``RELU_PER_STRENGTH · |s|``, the
reference's 20 at strength 10. Measured on the default model: BENCHMARKS.md, "Steering
strength scale (issue 12)".

Schedules: ``fixed`` (for as long as the steering is on) or ``hard_cutoff`` (the reference's
amplify preset: full strength for the first ``cutoff_tokens`` committed tokens, then 0). A
:class:`Steering` without a schedule takes its mode's reference preset (amplify:
``hard_cutoff``, the others ``fixed``), so the API's and the CLI's defaults generate what
the reference generates; the app always uses ``fixed``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from ..errors import ConceptError
from .steering import (
    AMPLIFY_INJECT_LAYER, AMPLIFY_TARGET, CUTOFF_TOKENS, RELU_STRENGTH, SUPPRESS_ALPHA, InjectionTerm, Schedule,
    SteeringMode, SteeringPlan, check_known_ids, check_strength, concept_direction, relu_logit_mask,
)

Units = Literal["reference", "relative"]
MODES: tuple[str, ...] = ("amplify", "suppress", "intervene")
SCHEDULES: tuple[str, ...] = ("fixed", "hard_cutoff")
UNITS: tuple[str, ...] = ("reference", "relative")
# relative units: strength 1 injects RELATIVE_UNIT of the residual stream's length (summed over
# the blocks it is added after); a suppress's ReLU mask is RELU_PER_STRENGTH per unit of strength
RELATIVE_UNIT = 0.075
RELU_PER_STRENGTH = RELU_STRENGTH / 10


@dataclass(frozen=True)
class Steering:
    """One steered concept (a slider of the app, a ``--amplify`` / ``--suppress`` flag, a preset entry).

    Attributes:
        concept_id: known concept id.
        mode: ``amplify`` (positive injection, reference ``SteeringConfig.injection``),
            ``suppress`` (negative injection plus the ReLU logit mask, ``injection_relu``) or
            ``intervene`` (set the concept's weight at the generated positions).
        strength: in ``units``. ``reference``: amplify: target in logit units
            (``alpha = strength / peak``; default 8); suppress: the raw injection alpha, always
            applied negatively (default 7, i.e. alpha -7). ``relative``: ``alpha = ±strength ·
            RELATIVE_UNIT · ‖h‖ / n_inject`` (see the module docstring). Intervene: the concept
            weight (a sigmoid activation, e.g. 0..1) in either units.
        enabled: off keeps the slider's value but leaves it out of the plan.
        group: extra known ids summed into the direction (the reference's group steering).
        relu_strength: suppress only: strength of the ReLU logit mask; None: 20 in reference
            units, ``RELU_PER_STRENGTH · |strength|`` in relative units.
        cutoff_tokens: ``hard_cutoff`` only: tokens generated at full strength.
        schedule: ``fixed`` (as long as it is on) or ``hard_cutoff``; None: the mode's reference
            preset (amplify ``hard_cutoff``, the others ``fixed``).
        units: ``reference`` (default, the reference's presets) or ``relative`` (the app's sliders).
    """

    concept_id: int
    mode: SteeringMode = "amplify"
    strength: float | None = None
    enabled: bool = True
    group: tuple[int, ...] = ()
    relu_strength: float | None = None
    cutoff_tokens: int = CUTOFF_TOKENS
    schedule: Schedule | None = None
    units: Units = "reference"

    @property
    def value(self) -> float:
        """The strength, or the mode's reference default."""
        if self.strength is not None:
            return float(self.strength)
        return {"amplify": AMPLIFY_TARGET, "suppress": -SUPPRESS_ALPHA, "intervene": 1.0}[self.mode]

    @property
    def relu_value(self) -> float:
        """The ReLU mask strength (suppress): given, else the units' default."""
        if self.relu_strength is not None:
            return float(self.relu_strength)
        return RELU_STRENGTH if self.units == "reference" else RELU_PER_STRENGTH * abs(self.value)

    @property
    def resolved_schedule(self) -> Schedule:
        """The schedule, or the mode's reference preset's (amplify ``hard_cutoff``, else ``fixed``)."""
        if self.schedule is not None:
            return self.schedule
        return "hard_cutoff" if self.mode == "amplify" else "fixed"

    def in_effect(self, committed: int) -> bool:
        """Whether this spec changes a denoising step run once ``committed`` tokens are committed:
        on, a non-zero strength (or an intervention), and not past a hard cut-off."""
        if not self.enabled or (self.value == 0.0 and self.mode != "intervene"):
            return False
        if self.mode == "amplify" and self.resolved_schedule == "hard_cutoff":
            return committed < self.cutoff_tokens
        return True

    def to_dict(self) -> dict[str, Any]:
        return {
            "concept_id": self.concept_id, "mode": self.mode, "strength": self.value, "enabled": self.enabled,
            "group": list(self.group), "relu_strength": self.relu_value, "cutoff_tokens": self.cutoff_tokens,
            "schedule": self.resolved_schedule, "units": self.units,
        }


class SteeringBuilder:
    """Turns lists of :class:`Steering` into :class:`SteeringPlan` s for one model, caching each
    direction (with its peak LM alignment) and each ReLU mask, so that rebuilding on every
    slider change is cheap.

    Args:
        model: a :class:`~steerling_lite.Steerling` or its ``SteerlingModel``.
        cache_size: directions / masks kept (each ReLU mask is ``V`` fp32: 0.4 MB for 8B).
    """

    def __init__(self, model, cache_size: int = 64):
        self.model = getattr(model, "model", model)
        self._directions: OrderedDict[tuple[int, ...], tuple[Tensor, float]] = OrderedDict()
        self._relu: OrderedDict[int, Tensor] = OrderedDict()
        self._cache_size = cache_size
        self._residual_norm: float | None = None

    def _cached(self, cache: OrderedDict, key, make):
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        value = make()
        cache[key] = value
        if len(cache) > self._cache_size:
            cache.popitem(last=False)
        return value

    @torch.inference_mode()
    def direction(self, concept_ids: tuple[int, ...]) -> tuple[Tensor, float]:
        """Unit direction ``(D,)`` fp32 of the summed concept vectors and its peak (cached)."""
        return self._cached(self._directions, tuple(concept_ids), lambda: concept_direction(self.model, list(concept_ids)))

    @torch.inference_mode()
    def relu_alignment(self, concept_id: int) -> Tensor:
        """``relu(E_k[c] · W_lmᵀ)`` ``(V,)`` fp32 (cached)."""
        return self._cached(self._relu, int(concept_id), lambda: relu_logit_mask(self.model, {int(concept_id): 1.0}))

    def residual_norm(self) -> float:
        """:func:`residual_norm` of the model (computed once, one forward pass of a block)."""
        if self._residual_norm is None:
            self._residual_norm = residual_norm(self.model)
        return self._residual_norm

    def relative_unit(self, inject_layer: int) -> float:
        """Alpha of strength 1 in relative units when injecting from ``inject_layer``:
        ``RELATIVE_UNIT · ‖h‖ / n_inject`` (``n_inject``: the blocks the injection is added after,
        ``n_layers - max(inject_layer - 1, 0)``)."""
        n_inject = max(1, self.model.cfg.n_layers - max(inject_layer - 1, 0))
        return RELATIVE_UNIT * self.residual_norm() / n_inject

    def default_inject_layer(self, steerings: Iterable[Steering]) -> int:
        """The presets' layer: when any concept is amplified, the amplify preset's layer 8 of
        Steerling-8B's 32 scaled to the model's depth (``round(n_layers / 4)``, at least 1: 8 for
        the 8B; the preset's fixed 8 would inject nothing into a model of fewer layers), else the
        suppress preset's ``n_layers // 2``."""
        n = self.model.cfg.n_layers
        modes = {s.mode for s in steerings}
        if "amplify" in modes:
            return max(1, round(n * AMPLIFY_INJECT_LAYER / 32))
        return n // 2

    def validate(self, steerings: Iterable[Steering]) -> list[Steering]:
        """The specs, checked: modes, ids, finite strengths, no concept steered twice the same way.

        Raises:
            ConceptError: naming the first bad spec.
        """
        out, seen = [], set()
        for sp in steerings:
            if not isinstance(sp, Steering):
                raise ConceptError(f"expected a Steering spec, got {type(sp).__name__}")
            if sp.mode not in MODES:
                raise ConceptError(f"steering mode {sp.mode!r}: expected amplify, suppress or intervene")
            (cid,) = check_known_ids(self.model, [sp.concept_id])
            if sp.schedule is not None and sp.schedule not in SCHEDULES:
                raise ConceptError(f"schedule {sp.schedule!r} of concept {cid}: expected fixed or hard_cutoff")
            if sp.schedule == "hard_cutoff" and sp.mode != "amplify":
                raise ConceptError(f"schedule 'hard_cutoff' of concept {cid}: only amplify has a hard cut-off "
                                   f"(the reference's amplify preset); {sp.mode} is fixed")
            if sp.units not in UNITS:
                raise ConceptError(f"units {sp.units!r} of concept {cid}: expected reference or relative")
            check_known_ids(self.model, sp.group)
            check_strength(sp.value, f"{sp.mode} strength of concept {cid}")
            check_strength(sp.relu_value, f"ReLU mask strength of concept {cid}")
            if isinstance(sp.cutoff_tokens, bool) or not isinstance(sp.cutoff_tokens, int) or sp.cutoff_tokens < 1:
                raise ConceptError(f"cutoff_tokens of concept {cid} is {sp.cutoff_tokens}; expected >= 1")
            key = (cid, "intervene" if sp.mode == "intervene" else "inject")
            if key in seen:
                raise ConceptError(f"concept {cid} is steered twice ({sp.mode}); give each concept one spec per kind")
            seen.add(key)
            out.append(sp)
        return out

    def build(self, steerings: Iterable[Steering], inject_layer: int | None = None) -> SteeringPlan:
        """The plan for ``steerings`` (disabled specs and zero strengths left out; an empty plan
        when nothing is on, which generation treats as unsteered).

        ``inject_layer`` (``0..n_layers``) applies to every term; default
        :meth:`default_inject_layer`.

        Raises:
            ConceptError: a bad spec (see :meth:`validate`) or inject layer.
        """
        specs = self.validate(list(steerings))
        n_layers = self.model.cfg.n_layers
        if inject_layer is not None:
            if isinstance(inject_layer, bool) or not isinstance(inject_layer, int) or not 0 <= inject_layer <= n_layers:
                raise ConceptError(f"inject_layer {inject_layer!r}: expected an integer in 0..{n_layers} (the model's layers)")
        active = [sp for sp in specs if sp.enabled and (sp.value != 0.0 or sp.mode == "intervene")]
        if not active:
            return SteeringPlan(specs=tuple(specs))
        layer = inject_layer if inject_layer is not None else self.default_inject_layer(active)
        terms: list[InjectionTerm] = []
        offset: Tensor | None = None
        interventions: dict[int, float] = {}
        for sp in active:
            cid = int(sp.concept_id)
            if sp.mode == "intervene":
                interventions[cid] = sp.value
                continue
            ids = (cid,) + tuple(int(g) for g in sp.group if int(g) != cid)
            direction, peak = self.direction(ids)
            # reference units: amplify in logit units (target / peak), suppress raw alpha
            if sp.units == "relative":
                per_unit = self.relative_unit(layer)
                alpha = sp.value * per_unit if sp.mode == "amplify" else -abs(sp.value) * per_unit
            else:
                alpha = sp.value / peak if sp.mode == "amplify" else -abs(sp.value)
            terms.append(InjectionTerm(direction, alpha, sp.resolved_schedule, int(sp.cutoff_tokens)))
            if sp.mode == "suppress" and sp.relu_value != 0.0:
                mask = sp.relu_value * self.relu_alignment(cid)
                offset = mask if offset is None else offset + mask
        return SteeringPlan(terms=tuple(terms), inject_layer=layer, logit_offset=offset,
                            interventions=interventions, specs=tuple(specs))


@torch.inference_mode()
def residual_norm(model) -> float:
    """Mean L2 length (fp32) of the final residual stream, the input of ``ln_f``, at the masked
    positions of an unsteered pass over one diffusion block of mask tokens after a BOS token:
    what a steering injection is measured against in relative units (see the module docstring).

    One forward pass of ``diff_block_size + 1`` positions (a hook on the last block)."""
    model = getattr(model, "model", model)
    cfg = model.cfg
    ids = torch.tensor([[cfg.bos_token_id] + [cfg.mask_token_id] * cfg.diff_block_size],
                       device=model.input_device)
    seen: list[Tensor] = []
    hook = model.transformer.blocks[-1].register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        model.transformer(ids)
    finally:
        hook.remove()
    return float(seen[-1][0, 1:].float().norm(dim=-1).mean())


def build_steering(model, steerings: Iterable[Steering], inject_layer: int | None = None) -> SteeringPlan:
    """One-off :meth:`SteeringBuilder.build` (keep a :class:`SteeringBuilder` to rebuild often)."""
    return SteeringBuilder(model).build(steerings, inject_layer)
