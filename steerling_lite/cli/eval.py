"""``steerling-lite eval``: quality and interpretability of each quantization mode against full precision.

Every mode named by ``--quant`` is loaded from the same checkpoint (all stay loaded) and run on
the same text with the same masks; see :mod:`steerling_lite.evaluation.eval_run` for the
measures. Output: a table on the terminal, ``--json FILE``, ``--plot FILE`` (PNG), and a
resumable state file (``--state``, ``--resume``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from quant.config import FLOAT_DTYPES

from ..atomic import write_text_atomic
from ..errors import InputError
from ..evaluation.data import ConceptResolver, text_windows
from ..evaluation.eval_run import EvalSettings, EvalSummary, run_eval
from ..evaluation.plots import plot_eval, require_matplotlib
from ..generation.steering import AMPLIFY_TARGET
from ..interpret.concepts import ConceptCatalog
from ..loading.config import load_config
from ..loading.quantized import quant_config
from ..loading.tokenizer import get_tokenizer
from ..runtime import Steerling
from .argtypes import device_arg, float_arg, positive_int, seed_arg
from .common import add_quant_settings, byte_progress, model_dir

EVAL_MODES = ("none", "int8", "nf4", "fp4")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="compare quantization modes with full precision: likelihood, KL, concepts, steering")
    p.add_argument("--model", metavar="DIR", help="checkpoint directory (default: the embedded default model)")
    p.add_argument("--data", nargs="+", required=True, metavar="FILE",
                   help="UTF-8 text files, cut into windows of --window tokens (a longer file gives several windows)")
    p.add_argument("--quant", nargs="+", default=list(EVAL_MODES), choices=EVAL_MODES, metavar="MODE",
                   help="modes to evaluate (none int8 nf4 fp4; default all); none is the reference and is always run")
    p.add_argument("--device", default="auto", type=device_arg, help="auto (CUDA if available, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", *FLOAT_DTYPES],
                   help="precision of the unquantized weights (auto: as `generate`)")
    add_quant_settings(p.add_argument_group("quantization settings"))
    g = p.add_argument_group("measures")
    g.add_argument("--window", type=positive_int, help="tokens per window (default: the model's context)")
    g.add_argument("--max-windows", type=positive_int, help="evaluate at most this many windows (the first ones)")
    g.add_argument("--samples", type=positive_int, default=16,
                   help="Monte Carlo masks per window for the likelihood (default 16; the reference's lm-eval uses 128)")
    g.add_argument("--kl-samples", type=positive_int, default=2,
                   help="masked copies per window for KL, concepts and steering (default 2)")
    g.add_argument("--batch-size", type=positive_int, default=8, help="masked copies per forward pass (default 8)")
    g.add_argument("--seed", type=seed_arg, default=0, help="seed of the masks (default 0)")
    g.add_argument("--top-k", type=positive_int, default=32, help="known concepts compared per position (default 32)")
    g.add_argument("--steer", nargs="*", metavar="CONCEPT",
                   help="known concepts (ids or names) whose steering effect is compared "
                        "(default: 4 ids spread over the known concepts; none given: skip)")
    g.add_argument("--steer-target", type=float_arg(0.0, lo_open=True), default=AMPLIFY_TARGET,
                   help=f"amplify target in logit units (default {AMPLIFY_TARGET:g}, the preset's)")
    g.add_argument("--inject-layer", type=positive_int, help="steering's inject layer (default: the preset's)")
    o = p.add_argument_group("output")
    o.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    o.add_argument("--plot", metavar="FILE", help="write a PNG plot (needs matplotlib)")
    o.add_argument("--markdown", metavar="FILE", help="write the table as Markdown")
    o.add_argument("--state", metavar="FILE", help="JSONL state file, one line per finished window "
                   "(default: FILE.state.jsonl beside --json, else none)")
    o.add_argument("--resume", action="store_true", help="continue the run in --state, skipping its finished windows")
    o.add_argument("--quiet", action="store_true", help="no progress bars or loading lines")
    p.set_defaults(func=run)


def load_mode(args: argparse.Namespace, mode: str) -> Steerling:
    """``--model`` loaded in quantization ``mode`` with the command's settings."""
    qc = quant_config(mode, int8_threshold=args.int8_threshold, double_quant=args.double_quant,
                      compute_dtype=FLOAT_DTYPES[args.compute_dtype])
    with byte_progress(f"loading {mode}", enabled=not args.quiet) as progress:
        return Steerling.load(model_dir(args), device=args.device, dtype=args.dtype, progress=progress,
                              quant=qc if qc is not None else "none")


def steer_ids(lm: Steerling, values: list[str] | None) -> tuple[int, ...]:
    """The steered concepts: ``values`` resolved by id or name, or 4 ids spread over the known concepts.

    Raises:
        InputError: a value naming no known concept.
    """
    n = lm.config.concept.n_concepts
    if values is None:
        return tuple(sorted({round(i * (n - 1) / 3) for i in range(4)}))
    resolve = ConceptResolver(ConceptCatalog.for_model(lm), n)
    out = []
    for v in values:
        try:
            out.append(resolve(v))
        except KeyError as exc:
            raise InputError(f"--steer {v!r}: no such known concept{exc.args[0] if exc.args else ''}") from None
    return tuple(out)


def run(args: argparse.Namespace) -> int:
    if args.plot:
        require_matplotlib()
    if args.resume and not (args.state or args.json):
        raise InputError("--resume needs --state FILE (or --json FILE, whose state file is FILE.state.jsonl)")
    cfg = load_config(model_dir(args))
    if cfg.concept is None:
        raise InputError(f"--model {model_dir(args)}: eval compares concepts, and this checkpoint has no concept heads")
    windows = text_windows(args.data, get_tokenizer(cfg.instruct), min(args.window or cfg.block_size, cfg.block_size))
    windows = windows[: args.max_windows]
    modes = ["none"] + [m for m in dict.fromkeys(args.quant) if m != "none"]
    lms = {m: load_mode(args, m) for m in modes}
    ref = lms["none"]
    settings = EvalSettings(args.samples, args.kl_samples, args.seed, args.batch_size, args.top_k,
                            steer_ids(ref, args.steer), args.steer_target, args.inject_layer)
    summary = run_eval(lms, windows, settings, state=state_path(args), resume=args.resume, model_name=str(model_dir(args)),
                       progress=None if args.quiet else _bar)
    if args.json:
        write_text_atomic(args.json, json.dumps(summary.to_dict(), indent=2) + "\n")
    if args.plot:
        plot_eval(summary, args.plot)
    if args.markdown:
        write_text_atomic(args.markdown, markdown(summary))
    print_table(summary)
    return 0


def _bar(items):
    from tqdm import tqdm

    return tqdm(items, desc="windows", unit="window", file=sys.stderr, disable=not sys.stderr.isatty())


def table_rows(summary: EvalSummary) -> tuple[list[str], list[list[str]]]:
    """Column names and one row of formatted figures per mode (the terminal table and the Markdown)."""
    cols = ["mode", "NLL/token ± s.e.", "PPL", "mean KLD", "p99 KLD", "same top", f"top-{summary.settings.top_k} known",
            "Δ known share", "Δ disc. share", "Δ ε share", "steer effect ratio (max deviation from 1)"]
    rows = []
    for m in summary.modes:
        d = m.shares_delta
        rows.append([m.mode, f"{m.nll:.4f} ± {m.nll_stderr:.4f}", f"{m.ppl:.1f}", f"{m.kl_mean:.5f}", f"{m.kl_p99:.4f}",
                     f"{m.same_top:.2%}", f"{m.known_overlap:.3f}", f"{d['known']:+.4f}", f"{d['discovered']:+.4f}",
                     f"{d['epsilon']:+.4f}", f"{m.steer_ratio_mean:.3f} ({m.steer_max_deviation:.3f})"])
    return cols, rows


def title(summary: EvalSummary) -> str:
    s = summary.settings
    return (f"{summary.windows} windows, {summary.tokens} tokens ({s.n_samples} MC samples each); "
            f"{summary.positions} masked positions compared with {summary.reference}")


def print_table(summary: EvalSummary, file=None) -> None:
    """The figures as a rich table (one row per mode)."""
    from rich.console import Console
    from rich.table import Table

    cols, rows = table_rows(summary)
    t = Table(title=title(summary))
    for col in cols:
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(*r)
    Console(file=file or sys.stdout, width=200).print(t)


def markdown(summary: EvalSummary) -> str:
    """The figures as a Markdown table under a one-line title."""
    cols, rows = table_rows(summary)
    lines = [title(summary) + ":", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def state_path(args: argparse.Namespace) -> Path | None:
    """Where the run's state goes: ``--state``, else beside ``--json``."""
    return Path(args.state) if args.state else (Path(f"{args.json}.state.jsonl") if args.json else None)
