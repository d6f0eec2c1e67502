"""``steerling-lite concepts``: search the concept catalog, show a concept, find concepts aligned with a
token, describe discovered concepts (the tokens they promote, the training chunks that activate them)."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

from ..errors import ConceptError
from ..interpret.concept_tokens import concept_top_tokens, concepts_for_token
from ..interpret.concepts import ConceptCatalog, find_labels_file
from ..interpret.discovered import TOP_CHUNKS, TOP_TOKENS
from ..interpret.index_build import is_default_model
from ..loading.hub import resolve_model_dir
from .argtypes import non_negative_int, positive_int
from .common import add_model_args, byte_progress, load_model
from .index import index_path


def _labels_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", metavar="FILE",
                   help="concept labels file (concept_labels.parquet/.csv/.json, from the guidelabs/steerling "
                        "repo); default: the one in --model's directory, else $STEERLING_CONCEPTS_PATH")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("concepts", help="search and inspect the concepts a model can be steered with")
    csub = p.add_subparsers(dest="concepts_command", metavar="SUBCOMMAND")

    s = csub.add_parser("search", help="concepts whose name or description match QUERY")
    s.add_argument("query", metavar="QUERY")
    s.add_argument("--model", metavar="DIR", help="checkpoint directory (for its labels file and concept counts)")
    _labels_args(s)
    s.add_argument("--limit", type=positive_int, default=10, help="results (default 10)")
    s.add_argument("--all", action="store_true", help="include concepts not marked steerable")
    s.add_argument("--head", choices=["known", "discovered", "any"], default="known",
                   help="which concepts (default known: the steerable ones)")
    s.set_defaults(func=run_search)

    sh = csub.add_parser("show", help="a concept's label, group and the tokens it promotes")
    sh.add_argument("concept_id", type=non_negative_int, metavar="ID")
    sh.add_argument("--head", choices=["known", "discovered"], default="known")
    add_model_args(sh)
    _labels_args(sh)
    sh.add_argument("--tokens", type=non_negative_int, default=15, help="top promoted tokens to show (default 15)")
    sh.set_defaults(func=run_show)

    t = csub.add_parser("token", help="concepts most aligned with one token")
    t.add_argument("token", metavar="TOKEN", help="a token's text (one token) or its id")
    t.add_argument("--head", choices=["known", "discovered"], default="known")
    t.add_argument("-k", type=positive_int, default=10, help="concepts to show (default 10)")
    add_model_args(t)
    _labels_args(t)
    t.set_defaults(func=run_token)

    d = csub.add_parser("describe", help="what discovered concepts do: the tokens they promote and the "
                                         "training chunks that activate them most")
    d.add_argument("concept_ids", type=non_negative_int, nargs="+", metavar="ID", help="discovered concept ids")
    _describe_args(d)
    d.set_defaults(func=run_describe)

    a = csub.add_parser("discovered", help="every discovered concept with the tokens it promotes "
                                           "(and, with --chunks N, its top training chunks)")
    _describe_args(a, default_chunks=0)
    a.set_defaults(func=run_describe)

    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _describe_args(p: argparse.ArgumentParser, default_chunks: int = TOP_CHUNKS) -> None:
    add_model_args(p)
    p.add_argument("--tokens", type=positive_int, default=TOP_TOKENS,
                   help=f"top promoted tokens to show (default {TOP_TOKENS})")
    p.add_argument("--chunks", type=non_negative_int, default=default_chunks, metavar="N",
                   help=f"top-activating training chunks to show (default {default_chunks}; needs an index: "
                        "the default model's own, built on first use, or --index)")
    p.add_argument("--index", metavar="INDEX", help="training-data index whose chunks are scanned "
                                                    "(`steerling-lite index build`)")
    p.add_argument("--limit", type=positive_int, metavar="N",
                   help="scan only the index's first N chunks (a big corpus; default all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def _catalog_without_model(args: argparse.Namespace) -> ConceptCatalog:
    # a directory, a pulled model's name, or (no --model, no --labels) the default model
    model = resolve_model_dir(args.model) if args.model or not args.labels else None
    path = find_labels_file(model, args.labels)
    if path is None:
        raise ConceptError(
            "no concept labels found: pass --labels FILE (concept_labels.parquet from the Hugging Face repo "
            "guidelabs/steerling), put it in the --model directory, or set $STEERLING_CONCEPTS_PATH"
        )
    if model is not None:
        return ConceptCatalog.for_model(model, path)
    return ConceptCatalog.load(path)


def run_search(args: argparse.Namespace) -> int:
    catalog = _catalog_without_model(args)
    head = None if args.head == "any" else args.head
    hits = catalog.search(args.query, limit=args.limit, steerable_only=not args.all, head=head)
    if args.json:
        print(json.dumps([c.to_dict() for c in hits]))
        return 0
    if not hits:
        print(f"no {'' if args.all else 'steerable '}concepts match {args.query!r} in {catalog.source}")
        return 1
    for c in hits:
        group = f"  [group {c.group_id}: {c.group_name}]" if c.group_id is not None else ""
        print(f"{c.head:10} {c.concept_id:>7}  {c.name}{group}")
        if c.description:
            print(f"{'':19}{c.description}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    lm = load_model(args, quiet=True)
    catalog = ConceptCatalog.for_model(lm, args.labels)
    c = catalog.get(args.concept_id, args.head)
    tokens = concept_top_tokens(lm, c.concept_id, args.tokens, c.head) if args.tokens > 0 else []
    group = catalog.group(c.concept_id, c.head) if c.group_id is not None else [c.concept_id]
    if args.json:
        print(json.dumps({**c.to_dict(), "group_members": group, "top_tokens": [t.to_dict() for t in tokens]}))
        return 0
    print(f"{c.head} concept {c.concept_id}: {c.label}")
    if c.description:
        print(f"  {c.description}")
    if c.group_id is not None:
        print(f"  group {c.group_id} ({c.group_name}): {', '.join(map(str, group))}")
    flags = [f for f in ("is_steerable", "is_tone", "is_alignment", "is_demographic") if getattr(c, f)]
    print(f"  flags: {', '.join(f.removeprefix('is_') for f in flags) or 'none'}")
    if tokens:
        print("  promotes: " + ", ".join(f"{t.text!r} {t.score:+.3f}" for t in tokens))
    return 0


def run_token(args: argparse.Namespace) -> int:
    lm = load_model(args, quiet=True)
    catalog = ConceptCatalog.for_model(lm, args.labels)
    token: int | str = int(args.token) if args.token.isdigit() else args.token
    hits = concepts_for_token(lm, token, args.k, args.head, catalog)
    if args.json:
        print(json.dumps([h.to_dict() for h in hits]))
        return 0
    for h in hits:
        print(f"{h.head:10} {h.concept_id:>7}  {h.score:+.4f}  {h.label}")
    return 0


def _descriptions(args: argparse.Namespace, ids: list[int] | None) -> list:
    """Load the model; the descriptions of ``ids`` (default every discovered concept), with the
    top chunks of ``--index`` or the default model's index when ``--chunks`` asks for them."""
    lm = load_model(args, quiet=True)
    disc = lm.discovered_concepts()
    ids = list(range(disc.n_concepts)) if ids is None else ids
    for cid in ids:
        disc.check_id(cid)
    index = None
    if args.chunks > 0:
        if args.index or is_default_model(lm):
            index = index_path(args, lm)
        else:
            print("steerling-lite: no training-data index for this model: showing the tokens only (pass --index "
                  "INDEX for its top-activating chunks)", file=sys.stderr)
    elif args.index or args.limit:
        raise ConceptError("--index and --limit go with --chunks N (N > 0)")
    with byte_progress("scanning chunks", unit="chunk") as bar:
        def progress(done: int, total: int) -> None:
            if done == 0:
                print(f"steerling-lite: scanning {total} training chunks for every discovered concept's top chunks "
                      "(once; cached)", file=sys.stderr)
            if bar:
                bar(done, total, "")

        return [disc.describe(cid, index, args.tokens, args.chunks, args.limit, progress) for cid in ids]


def _print_description(d, brief: bool) -> None:
    tokens = ", ".join(f"{t.text!r} {t.score:+.3f}" for t in d.top_tokens)
    if brief:
        print(f"{d.concept_id:>6}  {json.dumps(d.summary, ensure_ascii=False):24}  {tokens}")
    else:
        print(f"discovered concept {d.concept_id}: {d.label}")
        print(f"  promotes: {tokens}")
    for i, c in enumerate(d.top_chunks or (), 1):
        text = textwrap.shorten(c.text, 70, placeholder=" ...")
        print(f"{'':8}{i}. {c.activation:.3f} at {c.peak!r}  {c.source}:{c.line}  {text!r}")
    if not brief and d.top_chunks == ():
        print("  no chunk of the index activates it")


def run_describe(args: argparse.Namespace) -> int:
    """``concepts describe ID...`` (full) and ``concepts discovered`` (every concept, one line each)."""
    ids = getattr(args, "concept_ids", None)
    found = _descriptions(args, ids)
    if args.json:
        print(json.dumps([d.to_dict() for d in found], ensure_ascii=False))
        return 0
    for d in found:
        _print_description(d, brief=ids is None)
    return 0
