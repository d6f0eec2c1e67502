"""``--amplify ID[=TARGET]``, ``--suppress ID[=ALPHA]``, ``--intervene ID=WEIGHT``, ``--inject-layer N``,
``--schedule``, ``--units`` and ``--steering FILE`` (a preset): the steering options shared by
``generate``, ``explain`` and ``steer``.

The flags' defaults are the reference's presets (logit-unit targets, the amplify preset's hard
cut-off after 32 tokens), so a flag alone generates what the reference generates; a preset file
says its own units and schedules (the app's: relative units, fixed)."""

from __future__ import annotations

import argparse
import math

from .argtypes import non_negative_int
from ..generation.steering import AMPLIFY_TARGET, CUTOFF_TOKENS, SUPPRESS_ALPHA, SteeringPlan
from ..generation.steering_builder import SCHEDULES, UNITS, Steering, SteeringBuilder
from ..generation.steering_preset import load_preset


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
                        f"first {CUTOFF_TOKENS} tokens unless --schedule fixed); repeatable")
    g.add_argument("--suppress", action="append", default=[], type=_spec("suppress"), metavar="ID[=ALPHA]",
                   help=f"suppress a concept: negative injection of raw strength ALPHA (default {-SUPPRESS_ALPHA:g}; "
                        f"its sign is ignored) plus a ReLU mask on the tokens it promotes (strength 20); repeatable")
    g.add_argument("--intervene", action="append", default=[], type=_spec("intervene", True), metavar="ID=WEIGHT",
                   help="set a known concept's weight (activation, e.g. 0..1) at the generated positions; repeatable")
    g.add_argument("--schedule", choices=SCHEDULES,
                   help="schedule of the --amplify flags: hard_cutoff (default, the reference's amplify preset: full "
                        f"strength for the first {CUTOFF_TOKENS} tokens, then none) or fixed (for the whole generation)")
    g.add_argument("--units", choices=UNITS, default="reference",
                   help="units of the flags' strengths: reference (default: amplify TARGET in logit units, suppress "
                        "raw ALPHA, as the reference) or relative (the app's slider scale: the same number means a "
                        "similar effect on every model; see README 'Steering strength')")
    g.add_argument("--steering", metavar="FILE", action="append", default=[],
                   help="a steering preset (TOML, as the app saves them in <data dir>/steering-presets); combined "
                        "with the flags; repeatable")
    g.add_argument("--inject-layer", type=non_negative_int, metavar="N",
                   help="inject after transformer layers >= N (default when amplifying: round(n_layers / 4), "
                        "8 for Steerling-8B as in the reference's preset; else n_layers // 2)")


def steerings_from_args(args: argparse.Namespace) -> list[Steering]:
    """The :class:`Steering` specs of the ``--steering`` files (in order), then of the flags, in
    flag order per kind.

    Raises:
        ConceptError: a preset file that cannot be read (naming the file and the field).
    """
    out = [s for path in args.steering for s in load_preset(path).steerings]
    schedule = getattr(args, "schedule", None)
    for mode, cid, strength in list(args.amplify) + list(args.suppress) + list(args.intervene):
        if mode == "suppress" and strength is not None:
            strength = abs(strength)  # ALPHA's sign is ignored: suppression always injects negatively
        out.append(Steering(cid, mode, strength, schedule=schedule if mode == "amplify" else None, units=args.units))
    return out


def inject_layer_from_args(args: argparse.Namespace) -> int | None:
    """``--inject-layer``, else the last ``--steering`` file's ``inject_layer`` (None: the default)."""
    if args.inject_layer is not None:
        return args.inject_layer
    layers = [load_preset(path).inject_layer for path in args.steering]
    return next((la for la in reversed(layers) if la is not None), None)


def plan_from_args(lm, args: argparse.Namespace) -> SteeringPlan | None:
    """The steering plan of the flags and preset files, or None without any.

    Raises:
        ConceptError: a bad id, a NaN / infinite strength, a bad inject layer or preset file, or
            a non-interpretable model.
    """
    specs = steerings_from_args(args)
    layer = inject_layer_from_args(args)
    if not specs and layer is None:
        return None
    return SteeringBuilder(lm).build(specs, layer)


def describe(specs: list[Steering]) -> str:
    """``amplify 12 (+8), suppress 40 (7)``: a short label of the specs (``relative`` and ``fixed``
    marked where they are not the flags' defaults)."""
    parts = []
    for s in specs:
        sign = "+" if s.mode == "amplify" and s.value >= 0 else ""
        notes = [n for n in ("relative" if s.units == "relative" else "",
                             "fixed" if s.mode == "amplify" and s.resolved_schedule == "fixed" else "") if n]
        parts.append(f"{s.mode} {s.concept_id} ({sign}{s.value:g}{', ' + ', '.join(notes) if notes else ''})")
    return ", ".join(parts) or "none"
