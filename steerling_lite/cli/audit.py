"""``steerling-lite audit``: one span of a generation along its three axes, then with its top concept suppressed.

Generates as ``explain`` does (same flags), then for ``--span I:J`` (default: the output's
first line, at most one diffusion block) prints its concepts, the prompt units behind it
(``--inputs N``, ``--method``) and the training chunks it resembles (``--retrieve K``);
with ``--suppress-top`` it regenerates with the same seed and the span's top known concept
suppressed (added to the steering flags) and prints both texts side by side, as ``steer``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from ..errors import RetrievalError
from ..generation.steering_builder import SteeringBuilder
from ..interpret.audit import (DEFAULT_INPUT_METHOD, INPUT_METHODS, METHOD_NAMES, audit_span, check_span,
                               suppression)
from ..interpret.prompt_units import GRANULARITIES
from ..interpret.retrieval import TrainingIndex, output_spans
from .argtypes import int_arg, non_negative_int, positive_int
from .explain import explained, print_concepts
from .generate import add_generation_args, exit_code, generation_config
from .index import index_path, print_neighbours, span_arg
from .steer import print_side_by_side
from .steering_args import steerings_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="a span's concepts, input units and nearest training chunks; "
                                     "--suppress-top regenerates without its top concept")
    add_generation_args(p)
    g = p.add_argument_group("audit")
    g.add_argument("--span", type=span_arg, metavar="I:J",
                   help="the generated tokens I..J-1 to audit (default: the output's first line, at most one block)")
    g.add_argument("--labels", metavar="FILE", help="concept labels file (default: the one in the model directory)")
    g.add_argument("--top", type=positive_int, default=5, help="concepts shown per head (default 5)")
    g.add_argument("--inputs", type=non_negative_int, default=8, metavar="N",
                   help="prompt units shown (default 8; 0 skips input attribution)")
    g.add_argument("--method", choices=INPUT_METHODS, default=DEFAULT_INPUT_METHOD,
                   help=f"input attribution: occlusion or ig (integrated gradients); default {DEFAULT_INPUT_METHOD}")
    g.add_argument("--granularity", choices=GRANULARITIES, default="word",
                   help="prompt units occlusion masks (default word; ig always scores tokens)")
    g.add_argument("--ig-steps", type=positive_int, default=32, help="integrated-gradients steps (default 32)")
    g.add_argument("--retrieve", type=non_negative_int, default=5, metavar="K",
                   help="training chunks shown (default 5; 0 skips retrieval)")
    g.add_argument("--index", metavar="INDEX",
                   help="training-data index (default model: its own, built on first use)")
    g.add_argument("--suppress-top", action="store_true",
                   help="regenerate with the same seed and the span's top known concept suppressed; print both")
    g.add_argument("--json", action="store_true", help="print one JSON object instead")
    g.add_argument("--width", type=int_arg(20, 10000), help="table width for --suppress-top (default: the terminal's)")
    p.set_defaults(func=run)


def default_span(lm, attribution) -> tuple[int, int]:
    """The output's first line, at most one diffusion block (as an index's corpus is cut).

    Raises:
        RetrievalError: nothing was generated.
    """
    spans = output_spans(attribution, lm.config.diff_block_size)
    if not spans:
        raise RetrievalError("nothing was generated: no span to audit")
    return spans[0]


def run(args: argparse.Namespace) -> int:
    lm, attribution = explained(args)
    result = attribution.result
    assert result is not None
    start, end = args.span if args.span is not None else default_span(lm, attribution)
    check_span(attribution, start, end)  # a bad span fails before an index is opened or built
    index = TrainingIndex.open(index_path(args, lm), lm) if args.retrieve > 0 else None
    try:
        audit = audit_span(lm, attribution, start, end, inputs=args.inputs > 0, method=args.method,
                           granularity=args.granularity, n_steps=args.ig_steps, index=index,
                           k=max(1, args.retrieve))
    finally:
        if index is not None:
            index.close()
    suppressed = None
    if args.suppress_top:
        top = audit.top_known()
        plan = SteeringBuilder(lm).build(suppression(steerings_from_args(args), top.concept_id), args.inject_layer)
        config = replace(generation_config(args), seed=result.seed)
        suppressed = (top, lm.generate(attribution.trace.prompt_ids, config, plan))
    if args.json:
        out = {"text": result.text, "seed": result.seed, "audit": audit.to_dict(args.top, args.inputs)}
        if suppressed is not None:
            top, res = suppressed
            out["suppressed"] = {"concept_id": top.concept_id, "label": top.label, "text": res.text,
                                 "token_ids": res.token_ids, "stop_reason": res.stop_reason}
        print(json.dumps(out, allow_nan=False))
        return exit_code(result.stop_reason)
    print_audit(audit, args.top, args.inputs)
    if suppressed is not None:
        top, res = suppressed
        print()
        print_side_by_side("as generated", result.text, f"{top.label} suppressed", res.text,
                           f"seed {result.seed}", args.width)
    print(f"{result.committed_tokens} tokens, seed {result.seed}", file=sys.stderr)
    return exit_code(result.stop_reason)


def print_audit(audit, top: int, inputs: int) -> None:
    """The three axes of ``audit`` as text: concepts, ``inputs`` prompt units, nearest chunks."""
    print(f"audit of generated tokens {audit.start}..{audit.end - 1}: {audit.text!r}")
    print("concepts:")
    print_concepts(audit.concepts, top)
    if audit.input_method:
        shown = audit.inputs[:inputs]
        unit = "nats of the span's log-probability" if audit.input_method == "occlusion" else "share of its logits"
        print(f"input units ({METHOD_NAMES[audit.input_method]}, {unit}):")
        print("  " + (", ".join(f"{x.text!r} {x.score:+.3f}" for x in shown) or "-"))
    if audit.neighbours is not None:
        print_neighbours([audit.neighbours], indent="")
