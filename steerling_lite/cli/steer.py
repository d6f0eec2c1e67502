"""``steerling-lite steer``: the unsteered and the steered generation of a prompt, side by side.

Both runs use the same seed and settings, so the only difference is the steering (as
Neuronpedia's steering view shows default and steered completions together).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import replace

from ..errors import GenerationError
from .argtypes import int_arg
from .common import load_model
from .generate import add_generation_args, exit_code, generation_config, prompt_ids, prompt_text
from .interrupt import interruptible
from .steering_args import describe, plan_from_args, steerings_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("steer", help="print the unsteered and the steered output side by side")
    add_generation_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object with both texts instead")
    p.add_argument("--width", type=int_arg(20, 10000), help="table width in characters (default: the terminal's)")
    p.set_defaults(func=run)


def print_side_by_side(left_title: str, left: str, right_title: str, right: str, title: str,
                       width: int | None = None) -> None:
    """Two texts in two columns of a table (``width`` characters; default the terminal's)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(width=width, soft_wrap=False, highlight=False)
    table = Table(title=title, show_lines=False, expand=True)
    table.add_column(Text(left_title), ratio=1, overflow="fold")
    table.add_column(Text(right_title), ratio=1, overflow="fold")
    table.add_row(Text(left), Text(right))  # Text: no markup parsing of generated text
    console.print(table)


def run(args: argparse.Namespace) -> int:
    specs = steerings_from_args(args)
    if not specs:
        raise GenerationError("nothing to steer: give at least one --amplify ID, --suppress ID, "
                              "--intervene ID=WEIGHT or --steering FILE")
    text = prompt_text(args)
    lm = load_model(args, quiet=args.json)
    plan = plan_from_args(lm, args)
    config = generation_config(args)
    if config.seed is None:  # one seed for both runs
        config = replace(config, seed=random.SystemRandom().randrange(2**31))
    ids = prompt_ids(lm, args, text)
    with interruptible() as stop:
        plain = stop.watch(lm.stream(ids, config)).run()
        steered = stop.watch(lm.stream(ids, config, plan)).run()
    stop_reason = "cancelled" if stop.cancelled else steered.stop_reason
    label = describe(specs)
    if args.json:
        print(json.dumps({
            "prompt": text, "seed": config.seed, "steering": plan.describe() if plan is not None else None,
            "unsteered": plain.text, "steered": steered.text,
            "unsteered_token_ids": plain.token_ids, "steered_token_ids": steered.token_ids,
            "stop_reason": stop_reason,
        }))
        return exit_code(stop_reason)
    print_side_by_side("unsteered", plain.text, f"steered: {label}", steered.text, f"seed {config.seed}", args.width)
    print(f"{plain.committed_tokens} + {steered.committed_tokens} tokens, seed {config.seed}"
          + (", cancelled (Ctrl-C): shown is what was committed" if stop.cancelled else ""), file=sys.stderr)
    return exit_code(stop_reason)
