"""``steerling-lite pull`` (a model from the Hugging Face Hub) and ``steerling-lite list`` (the local models)."""

from __future__ import annotations

import argparse
import json
import sys

from quant import fmt_bytes


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pull", help="download a Steerling model from the Hugging Face Hub (weights, config, labels)")
    p.add_argument("repo", metavar="REPO_OR_URL", help="e.g. guidelabs/steerling-8b or https://huggingface.co/guidelabs/steerling-8b")
    p.add_argument("--revision", metavar="R", help="branch, tag or commit (default: the default branch)")
    p.add_argument("--local-dir", metavar="DIR",
                   help="download into DIR instead of the Hugging Face cache ($HF_HUB_CACHE)")
    p.add_argument("--labels-repo", metavar="REPO", default="auto",
                   help="repo holding concept_labels.parquet when the model repo has none "
                        "(default: guidelabs/steerling for guidelabs/ models; 'none' to skip)")
    p.add_argument("--token", help="Hugging Face token (default: $HF_TOKEN or the one `hf auth login` saved)")
    p.set_defaults(func=run_pull)

    q = sub.add_parser("list", help="list the Steerling models on this machine (pulled, cached, default)")
    q.add_argument("folders", nargs="*", metavar="DIR", help="also look in these folders (model directories or folders of them)")
    q.add_argument("--json", action="store_true", help="print one JSON array")
    q.set_defaults(func=run_list)


def run_pull(args: argparse.Namespace) -> int:
    from ..loading.hub import pull

    labels_repo = None if args.labels_repo == "none" else args.labels_repo
    m = pull(args.repo, args.revision, args.local_dir, labels_repo=labels_repo, token=args.token)
    labels = f"labels {m.labels.name}" if m.labels else "no concept labels"
    print(f"pulled {m.name}{'@' + m.revision if m.revision else ''}: {fmt_bytes(m.size_bytes)} in {len(m.files)} "
          f"files, {labels}", file=sys.stderr)
    print(f"use it with --model {m.name}", file=sys.stderr)
    print(m.path)
    return 0


def run_list(args: argparse.Namespace) -> int:
    from ..loading.local_models import list_models

    models = list_models(args.folders)
    if args.json:
        print(json.dumps([m.to_dict() for m in models], indent=2))
        return 0
    if not models:
        print("no models found; get one with `steerling-lite pull guidelabs/steerling-8b`", file=sys.stderr)
        return 0
    rows = [("NAME", "SIZE", "SCHEMA", "KIND", "QUANT", "PRE-QUANTIZED COPIES", "LABELS", "PATH")]
    for m in models:
        copies = ", ".join(q for q, _ in m.copies) or "-"
        rows.append((m.name, fmt_bytes(m.size_bytes), m.schema, "instruct" if m.instruct else "base",
                     m.quant, copies, "yes" if m.labels else "no", str(m.path)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return 0
