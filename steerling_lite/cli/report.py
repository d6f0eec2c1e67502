"""``steerling-lite report``: the technical report's four interpretability measures on the user's text.

Concept detection (AUROC, labelled JSONL only), entanglement, logit shares, label alignment; see
:mod:`steerling_lite.evaluation.report`. Output: a table, ``--json FILE``, ``--plot FILE`` (PNG),
``--markdown FILE`` (a section for a model card).
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from ..atomic import write_text_atomic
from ..errors import InputError
from ..evaluation.data import ConceptResolver, read_labelled, text_windows
from ..evaluation.plots import plot_report, require_matplotlib
from ..evaluation.report import Report, build_report
from ..interpret.concepts import ConceptCatalog
from ..loading.config import load_config
from ..loading.tokenizer import get_tokenizer
from .argtypes import positive_int, seed_arg
from .common import add_model_args, load_model, model_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="concept detection, entanglement, logit shares and label alignment on your text")
    add_model_args(p)
    p.add_argument("--data", required=True, metavar="FILE",
                   help="UTF-8 text, or labelled JSONL (.jsonl: {\"text\", \"spans\": [{\"start\", \"end\", \"concept\"}]})")
    p.add_argument("--labels", metavar="FILE", help="concept labels file (default: the model's)")
    p.add_argument("--window", type=positive_int, help="text: tokens per window (default: the model's context)")
    p.add_argument("--max-windows", type=positive_int, help="use at most this many windows / records (the first ones)")
    p.add_argument("--kl-samples", type=positive_int, default=2, help="masked copies per window for the logit shares (default 2)")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of the masks (default 0)")
    p.add_argument("--min-examples", type=positive_int, default=5,
                   help="positive and negative tokens a concept needs for its AUROC (default 5)")
    p.add_argument("--top-tokens", type=positive_int, default=20, help="label alignment: top promoted tokens searched (default 20)")
    p.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    p.add_argument("--plot", metavar="FILE", help="write a PNG plot (needs matplotlib)")
    p.add_argument("--markdown", metavar="FILE", help="write the figures as a Markdown section")
    p.add_argument("--quiet", action="store_true", help="no loading line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.plot:
        require_matplotlib()
    cfg = load_config(model_dir(args))
    if cfg.concept is None:
        raise InputError(f"--model {model_dir(args)}: the report measures concepts, and this checkpoint has no concept heads")
    tokenizer, ctx = get_tokenizer(cfg.instruct), cfg.block_size
    records = windows = None
    if args.data.lower().endswith(".jsonl"):
        catalog = ConceptCatalog.for_model(model_dir(args), args.labels)
        records = read_labelled(args.data, tokenizer, ConceptResolver(catalog, cfg.concept.n_concepts), ctx)
        records = records[: args.max_windows]
    else:
        windows = text_windows([args.data], tokenizer, min(args.window or ctx, ctx))[: args.max_windows]
    lm = load_model(args, quiet=args.quiet)
    catalog = ConceptCatalog.for_model(lm, args.labels)
    report = build_report(lm, catalog, windows=windows, records=records, kl_samples=args.kl_samples, seed=args.seed,
                          min_examples=args.min_examples, top_tokens=args.top_tokens)
    if args.json:
        write_text_atomic(args.json, json.dumps(report.to_dict(catalog), indent=2) + "\n")
    if args.plot:
        plot_report(report, args.plot)
    if args.markdown:
        write_text_atomic(args.markdown, markdown(report, catalog))
    print_report(report, catalog)
    return 0


def _fmt(x: float, spec: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def rows(report: Report, catalog) -> list[tuple[str, str, str]]:
    """``(measure, value, detail)`` rows shared by the table and the Markdown."""
    out = []
    d = report.detection
    if d is not None:
        best = sorted(d.per_concept.items(), key=lambda kv: -kv[1])
        detail = f"{len(d.per_concept)} concepts with >= {d.min_examples} positive and negative tokens, " \
                 f"{d.tokens} tokens in {d.records} records"
        if best:
            detail += "; best " + ", ".join(f"{catalog.label(c)} {a:.2f}" for c, a in best[:3])
            detail += "; worst " + ", ".join(f"{catalog.label(c)} {a:.2f}" for c, a in best[-3:])
        out.append(("concept detection (macro AUROC)", _fmt(d.macro_auroc), detail))
    e = report.entanglement
    out.append(("entanglement: mean absolute cosine of concept vectors", _fmt(e["mean_abs_cosine"]), f"{e['concepts']} known concepts"))
    out.append(("entanglement: mean absolute correlation of detector logits", _fmt(e["mean_abs_coactivation"]),
                f"{e['concepts_varying']} concepts varying over {e['tokens']} tokens"))
    s = report.shares
    out.append(("logit share known / discovered / epsilon",
                " / ".join(_fmt(s[k]) for k in ("known", "discovered", "epsilon")),
                f"mean absolute share of the true token's logit at {report.positions} masked positions"))
    la = report.label_alignment
    if la is not None:
        out.append(("label alignment", _fmt(la["share"]),
                    f"{la['aligned']} of {la['concepts']} labelled concepts have a label word among their top-{la['k']} "
                    f"promoted tokens" + (f", e.g. {', '.join(la['examples'][:3])}" if la["examples"] else "")))
    return out


def print_report(report: Report, catalog, file=None) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"interpretability report: {report.tokens} tokens")
    for col in ("measure", "value", "detail"):
        t.add_column(col)
    for r in rows(report, catalog):
        t.add_row(*r)
    console = Console(file=file or sys.stdout, width=160)
    console.print(t)
    for note in report.notes:
        console.print(f"note: {note}")


def markdown(report: Report, catalog) -> str:
    """The figures as a Markdown table, with the notes below it."""
    lines = ["| measure | value | detail |", "|---|---|---|"]
    lines += [f"| {m} | {v} | {d} |" for m, v, d in rows(report, catalog)]
    lines += [""] + [f"Note: {n}." for n in report.notes]
    return "\n".join(lines).rstrip() + "\n"
