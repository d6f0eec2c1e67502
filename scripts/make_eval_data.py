#!/usr/bin/env python3
"""The default model's held-out WordNet entries as `eval` / `report` data.

Reads the ``entries.jsonl`` that ``scripts/prepare_data.py`` writes (its held-out split: 2 % of
the synsets, never trained on; run prepare_data first, it needs WordNet 3.0 from Debian's
``wordnet-base``) and writes:

- ``heldout.txt``: the held-out entries' text, one entry per line, in corpus order (for
  ``steerling-lite eval --data`` and ``report --data``);
- ``heldout.jsonl``: the same entries labelled for ``report``: each line
  ``{"text", "spans"}`` with one span over the whole text per known concept of the entry's
  synset (its lexicographer file, topic domains and categories, as in training), concepts by id.

Usage::

    python scripts/prepare_data.py --out checkpoints/data/wordnet
    python scripts/make_eval_data.py --prepared checkpoints/data/wordnet --out checkpoints/data/eval
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prepared", type=Path, default=Path("checkpoints/data/wordnet"),
                   help="the output directory of scripts/prepare_data.py")
    p.add_argument("--out", type=Path, default=Path("checkpoints/data/eval"))
    p.add_argument("--max-entries", type=int, help="keep only the first N held-out entries")
    args = p.parse_args(argv)
    src = args.prepared / "entries.jsonl"
    if not src.is_file():
        print(f"{src}: missing; run scripts/prepare_data.py --out {args.prepared} first", file=sys.stderr)
        return 2
    held = []
    with open(src, encoding="utf-8") as f:
        for line in f:
            e = json.loads(line)
            if e["split"] == "heldout":
                held.append(e)
    held = held[: args.max_entries]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "heldout.txt").write_text("".join(e["text"] + "\n" for e in held), encoding="utf-8")
    with open(args.out / "heldout.jsonl", "w", encoding="utf-8") as f:
        for e in held:
            spans = [{"start": 0, "end": len(e["text"]), "concept": c} for c in e["labels"]]
            f.write(json.dumps({"text": e["text"], "spans": spans}) + "\n")
    print(f"{len(held)} held-out entries -> {args.out}/heldout.txt, heldout.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
