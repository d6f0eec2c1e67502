"""``steerling-lite explain``: generate, then show which concepts (and input tokens) produced each chunk."""

from __future__ import annotations

import argparse
import json
import sys

from ..interpret.attribution import explain_stream
from ..interpret.concepts import ConceptCatalog
from ..interpret.prompt_units import GRANULARITIES
from ..errors import GenerationError
from .argtypes import non_negative_int, positive_int
from .common import load_model
from .generate import add_generation_args, exit_code, generation_config, prompt_ids, prompt_text
from .interrupt import interruptible
from .steering_args import plan_from_args
from .index import add_retrieve_args, neighbours, print_neighbours


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="generate and attribute every token to concepts (per chunk)")
    add_generation_args(p)
    g = p.add_argument_group("attribution")
    g.add_argument("--labels", metavar="FILE",
                   help="concept labels (concept_labels.parquet/.csv/.json; default: the one in the model directory, "
                        "else $STEERLING_CONCEPTS_PATH, else 'known #id' labels)")
    g.add_argument("--top", type=positive_int, default=5, help="concepts shown per head and chunk / token (default 5)")
    g.add_argument("--inputs", type=non_negative_int, default=0, metavar="N",
                   help="also show the N prompt units that most caused each chunk (see --method; slower)")
    g.add_argument("--method", choices=("occlusion", "ig"), default="occlusion",
                   help="input attribution for --inputs: occlusion (each prompt unit replaced by the mask token, "
                        "change in the chunk's log-probability; default) or ig (integrated gradients per token)")
    g.add_argument("--granularity", choices=GRANULARITIES, default="word",
                   help="prompt units occlusion masks (default word; ig always scores tokens)")
    g.add_argument("--ig-steps", type=positive_int, default=32, help="integrated-gradients steps for --inputs (default 32)")
    g.add_argument("--json", action="store_true", help="print per-token records (and chunks) as one JSON object")
    g.add_argument("--csv", metavar="FILE", help="also write the per-token decomposition as CSV to FILE")
    add_retrieve_args(p.add_argument_group("training-data retrieval"))
    p.set_defaults(func=run)


def _fmt_concepts(concepts, n: int) -> str:
    return ", ".join(f"{c.label} {c.contribution:+.4f}" for c in concepts[:n]) or "-"


def _input_attribution(lm, attribution, args: argparse.Namespace):
    """``--inputs``: occlusion (its cost printed and a progress bar on stderr) or integrated gradients."""
    if args.method == "ig":
        from ..interpret.input_attribution import input_attribution

        return input_attribution(lm, attribution, n_steps=args.ig_steps)
    from ..interpret.occlusion import occlusion

    return occlusion(lm, attribution, granularity=args.granularity, progress=True)


def print_concepts(c, top: int, indent: str = "  ") -> None:
    """The known, discovered and epsilon lines of a :class:`ChunkAttribution` (``top`` per head)."""
    print(f"{indent}known:      {_fmt_concepts(c.top(top, 'known'), top)}")
    print(f"{indent}discovered: {_fmt_concepts(c.top(top, 'discovered'), top)}")
    print(f"{indent}epsilon {c.epsilon_pct:.1f}%, known tail {100 * c.known_tail:.1f}%, "
          f"discovered tail {100 * c.discovered_tail:.1f}% of each token's logit mass")


def explained(args: argparse.Namespace):
    """Load ``--model``, generate the prompt with the sampling and steering flags and record its
    concept attribution: ``(lm, attribution)`` (Ctrl-C keeps what was committed)."""
    if args.top < 1:
        raise GenerationError(f"--top is {args.top}; expected >= 1")
    text = prompt_text(args)
    lm = load_model(args, quiet=args.json)
    catalog = ConceptCatalog.for_model(lm, args.labels)
    plan = plan_from_args(lm, args)
    with interruptible() as stop:
        stream = stop.watch(explain_stream(lm, prompt_ids(lm, args, text), generation_config(args), plan,
                                           catalog=catalog))
        attribution = stream.run()
    return lm, attribution


def run(args: argparse.Namespace) -> int:
    lm, attribution = explained(args)
    result = attribution.result
    assert result is not None
    check = attribution.verify()
    chunks = attribution.chunks()
    inputs = None
    if args.inputs > 0:
        inputs = _input_attribution(lm, attribution, args)
    found = neighbours(args, lm, attribution)
    if args.csv:
        attribution.to_csv(args.csv)
    if args.json:
        out = attribution.to_dict(top=args.top)
        out["stop_reason"] = result.stop_reason
        if inputs is not None:
            out["input_attribution"] = inputs.to_dict(top=args.inputs)
            for c, cd in zip(chunks, out["chunks"]):
                targets = [int(p) for p in attribution.positions.tolist() if c.start <= p < c.end]
                cd["inputs"] = [x.to_dict() for x in inputs.aggregate("prompt", top=args.inputs, targets=targets)]
        if found is not None:
            out["retrieval"] = [f.to_dict() for f in found]
        print(json.dumps(out, allow_nan=False))
        return exit_code(result.stop_reason) or (0 if check.passed else 1)
    for i, c in enumerate(chunks, 1):
        print(f"[chunk {i}] tokens {c.start - attribution.prompt_len}..{c.end - attribution.prompt_len - 1}"
              f" ({c.n_tokens} committed)")
        print(c.text)
        print_concepts(c, args.top)
        if inputs is not None:
            targets = [int(p) for p in attribution.positions.tolist() if c.start <= p < c.end]
            top_in = inputs.aggregate("prompt", top=args.inputs, targets=targets)
            unit = "nats" if inputs.method == "occlusion" else "logit"
            print(f"  inputs ({inputs.method}, {unit}): " + (", ".join(f"{x.text!r} {x.score:+.3f}" for x in top_in) or "-"))
        if found is not None and args.span is None:
            print_neighbours(found, c.start - attribution.prompt_len, c.end - attribution.prompt_len)
        print()
    if found is not None and args.span is not None:
        print_neighbours(found, indent="")
    if not chunks:
        print("(nothing was generated)")
    print(
        f"{result.committed_tokens} tokens in {result.elapsed_s:.2f} s, seed {result.seed}; attribution check: "
        f"{'pass' if check.passed else 'FAIL'} (max |parts - logit| {check.max_abs_error:.2e})",
        file=sys.stderr,
    )
    if result.stop_reason == "cancelled":
        print(f"cancelled (Ctrl-C) after {result.committed_tokens} tokens; shown: what was committed", file=sys.stderr)
    return exit_code(result.stop_reason) or (0 if check.passed else 1)
