"""``steerling-lite index build|add|info|search``: training-data indexes, and ``explain --retrieve``'s options.

An index holds a model's representation of every chunk of a training corpus in FAISS, with
the chunks' text and provenance in SQLite (:mod:`steerling_lite.interpret.retrieval`).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

from ..errors import RetrievalError
from ..interpret.index_build import (add_to_index, build_index, default_index_path, ensure_default_index,
                                     is_default_model)
from ..interpret.representation import DEFAULT_REPRESENTATION, REPRESENTATIONS
from ..interpret.retrieval import TrainingIndex, index_summary, retrieve
from .argtypes import non_negative_int, positive_int
from .common import add_model_args, byte_progress, load_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build and query training-data indexes (for explain --retrieve)")
    isub = p.add_subparsers(dest="index_command", metavar="ACTION", required=True)

    b = isub.add_parser("build", help="chunk and embed corpus files into a new index")
    add_model_args(b)
    b.add_argument("--corpus", nargs="+", required=True, metavar="FILE",
                   help="UTF-8 text files (.gz/.bz2/.xz read as such); each non-blank line is a document")
    b.add_argument("--out", required=True, metavar="INDEX", help="the index directory to create")
    b.add_argument("--chunk-tokens", type=positive_int, metavar="N", help="most tokens per chunk (default: one diffusion block)")
    b.add_argument("--representation", default=DEFAULT_REPRESENTATION, choices=REPRESENTATIONS,
                   help=f"what is embedded (default {DEFAULT_REPRESENTATION}; see BENCHMARKS.md for the recall of each)")
    b.add_argument("--batch-size", type=positive_int, default=256, metavar="N", help="chunks per forward pass (default 256)")
    b.add_argument("--force", action="store_true", help="replace an index already at --out (once the new one is complete)")
    b.set_defaults(func=run_build)

    a = isub.add_parser("add", help="add corpus files to an index (files already in it are skipped)")
    add_model_args(a)
    a.add_argument("--index", required=True, metavar="INDEX")
    a.add_argument("--corpus", nargs="+", required=True, metavar="FILE")
    a.add_argument("--batch-size", type=positive_int, default=256, metavar="N")
    a.set_defaults(func=run_add)

    i = isub.add_parser("info", help="what an index holds")
    i.add_argument("--index", required=True, metavar="INDEX")
    i.set_defaults(func=run_info)

    s = isub.add_parser("search", help="the training chunks nearest to a text")
    add_model_args(s)
    s.add_argument("--index", metavar="INDEX", help="default: the default model's index (built on first use)")
    s.add_argument("--text", required=True)
    s.add_argument("-k", type=positive_int, default=5, help="neighbours (default 5)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=run_search)


def _progress_run(desc: str, fn, *args, **kwargs):
    with byte_progress(desc) as bar:
        return fn(*args, progress=(lambda done, total, chunks: bar(done, total, "")) if bar else None, **kwargs)


def _report(r) -> None:
    resumed = f" ({r.resumed_chunks} from an interrupted run)" if r.resumed_chunks else ""
    skipped = f"; already indexed, skipped: {', '.join(r.skipped)}" if r.skipped else ""
    print(f"{r.path}: {r.n_chunks} chunks ({r.index_type}), {r.new_chunks} added{resumed} in {r.seconds:.1f} s{skipped}")


def run_build(args: argparse.Namespace) -> int:
    lm = load_model(args)
    _report(_progress_run("indexing", build_index, lm, args.corpus, args.out, chunk_tokens=args.chunk_tokens,
                          representation=args.representation, replace=args.force, batch_size=args.batch_size))
    return 0


def run_add(args: argparse.Namespace) -> int:
    lm = load_model(args)
    _report(_progress_run("indexing", add_to_index, lm, args.index, args.corpus, batch_size=args.batch_size))
    return 0


def run_info(args: argparse.Namespace) -> int:
    print(json.dumps(index_summary(args.index), indent=2))
    return 0


def run_search(args: argparse.Namespace) -> int:
    lm = load_model(args, quiet=args.json)
    with TrainingIndex.open(index_path(args, lm), lm) as index:
        found = index.search_text(lm, args.text, args.k)
    if args.json:
        print(json.dumps(found.to_dict()))
    else:
        print_neighbours([found], indent="")
    return 0


# ---- explain --retrieve --------------------------------------------------------------------------
def span_arg(text: str) -> tuple[int, int]:
    """argparse type for ``I:J`` (generated tokens I..J-1)."""
    try:
        i, j = (int(x) for x in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"span {text!r}: expected I:J, generated-token indices (end exclusive)") from None
    return i, j


def add_retrieve_args(g) -> None:
    """``--retrieve K --index INDEX --span I:J`` (explain)."""
    g.add_argument("--retrieve", type=non_negative_int, default=0, metavar="K",
                   help="also show the K training chunks nearest to each chunk of the output (or to --span)")
    g.add_argument("--index", metavar="INDEX",
                   help="training-data index for --retrieve (default model: its own, built on first use)")
    g.add_argument("--span", type=span_arg, metavar="I:J",
                   help="with --retrieve: neighbours of generated tokens I..J-1 instead of each chunk")


def index_path(args: argparse.Namespace, lm):
    """``--index``, else the default model's index (built on first use, with a progress bar)."""
    if args.index:
        return args.index
    if not is_default_model(lm):
        raise RetrievalError("no training-data index for this model: pass --index INDEX (only the default model has "
                             "a built-in one); build one with `steerling-lite index build --model DIR --corpus FILE... "
                             "--out INDEX`")
    if not (default_index_path(lm) / "manifest.json").is_file():
        print(f"steerling-lite: building the default model's training-data index (first use only) in "
              f"{default_index_path(lm)}", file=sys.stderr)
    return _progress_run("indexing WordNet", ensure_default_index, lm)


def neighbours(args: argparse.Namespace, lm, attribution) -> list | None:
    """``explain --retrieve``: the neighbours of each span of the output (cut as the corpus was:
    lines, at most one chunk) or of ``--span``; None without ``--retrieve``."""
    if args.retrieve <= 0:
        if args.span is not None or args.index:
            raise RetrievalError("--span and --index go with --retrieve K")
        return None
    with TrainingIndex.open(index_path(args, lm), lm) as index:
        return retrieve(lm, index, attribution, [args.span] if args.span else None, args.retrieve)


def print_neighbours(found: list, start: int = 0, end: int | None = None, indent: str = "  ") -> None:
    """For each query in ``found`` that starts in generated tokens ``[start, end)``: its tokens
    and text, then one line per neighbour (rank, similarity, file:line, text) and the known
    concepts they share."""
    for f in found:
        if f.start is not None and not (start <= f.start and (end is None or f.start < end)):
            continue
        where = f"tokens {f.start}..{f.end - 1} " if f.start is not None else ""
        print(f"{indent}training data nearest to {where}{textwrap.shorten(f.text, 60, placeholder=' ...')!r}:")
        for n in f.neighbours:
            text = textwrap.shorten(n.text, 70, placeholder=" ...")
            print(f"{indent}  {n.rank}. {n.similarity:.3f}  {n.source.rsplit('/', 1)[-1]}:{n.line}  {text!r}")
            if n.shared:
                print(f"{indent}     shared: " + ", ".join(s.label for s in n.shared[:4]))
