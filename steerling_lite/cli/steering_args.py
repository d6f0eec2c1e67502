"""``--amplify ID[=TARGET]``, ``--suppress ID[=ALPHA]``, ``--intervene ID=WEIGHT``, ``--inject-layer N``:
the steering options shared by ``generate``, ``explain`` and ``steer``."""

from __future__ import annotations

import argparse
import math

from .argtypes import non_negative_int
from ..generation.steering import AMPLIFY_TARGET, SUPPRESS_ALPHA, Steering, SteeringBuilder, SteeringPlan


def _spec(mode: str, need_value: bool = False):
    def parse(text: str) -> tuple[str, int, float | None]:
        cid, sep, value = text.partition("=")
        try:
            concept = int(cid)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: the concept id {cid!r} is not an integer") from None
        if need_value and not sep:
            raise argparse.ArgumentTypeError(f"{text!r}: expected ID=WEIGHT")
        strength = None
        if sep:
            try:
                strength = float(value)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{text!r}: the strength {value!r} is not a number") from None
            if not math.isfinite(strength):
                raise argparse.ArgumentTypeError(f"{text!r}: the strength {value!r} is not a finite number")
        return mode, concept, strength

    return parse


def add_steering_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("steering (known concept ids: see `steerling-lite concepts search`)")
    g.add_argument("--amplify", action="append", default=[], type=_spec("amplify"), metavar="ID[=TARGET]",
                   help=f"amplify a concept: inject its direction at masked positions with strength TARGET in "
                        f"logit units (default {AMPLIFY_TARGET:g}, the reference's preset; full strength for the "
                        f"first 32 tokens); repeatable")
    g.add_argument("--suppress", action="append", default=[], type=_spec("suppress"), metavar="ID[=ALPHA]",
                   help=f"suppress a concept: negative injection of raw strength ALPHA (default {-SUPPRESS_ALPHA:g}; "
                        f"its sign is ignored) plus a ReLU mask on the tokens it promotes (strength 20); repeatable")
    g.add_argument("--intervene", action="append", default=[], type=_spec("intervene", True), metavar="ID=WEIGHT",
                   help="set a known concept's weight (activation, e.g. 0..1) at the generated positions; repeatable")
    g.add_argument("--inject-layer", type=non_negative_int, metavar="N",
                   help="inject after transformer layers >= N (default when amplifying: round(n_layers / 4), "
                        "8 for Steerling-8B as in the reference's preset; else n_layers // 2)")


def steerings_from_args(args: argparse.Namespace) -> list[Steering]:
    """The :class:`Steering` specs the flags describe, in flag order per kind."""
    out = []
    for mode, cid, strength in list(args.amplify) + list(args.suppress) + list(args.intervene):
        if mode == "suppress" and strength is not None:
            strength = abs(strength)  # ALPHA's sign is ignored: suppression always injects negatively
        out.append(Steering(cid, mode, strength))
    return out


def plan_from_args(lm, args: argparse.Namespace) -> SteeringPlan | None:
    """The steering plan of the flags, or None without steering flags.

    Raises:
        ConceptError: a bad id, a NaN / infinite strength, a bad inject layer, or a
            non-interpretable model.
    """
    specs = steerings_from_args(args)
    if not specs and args.inject_layer is None:
        return None
    return SteeringBuilder(lm).build(specs, args.inject_layer)


def describe(specs: list[Steering]) -> str:
    """``amplify 12 (+8), suppress 40 (7)``: a short label of the specs."""
    parts = []
    for s in specs:
        sign = "+" if s.mode == "amplify" and s.value >= 0 else ""
        parts.append(f"{s.mode} {s.concept_id} ({sign}{s.value:g})")
    return ", ".join(parts) or "none"
