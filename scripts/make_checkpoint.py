#!/usr/bin/env python3
"""Write a random-weight Steerling checkpoint in the published format.

Examples:
    python scripts/make_checkpoint.py --preset tiny --out checkpoints/tiny
    python scripts/make_checkpoint.py --preset 8b --out checkpoints/8b --shard-size 5GB
    python scripts/make_checkpoint.py --preset tiny --instruct --schema native --shard-size 4MB \\
        --set n_layers=3 --set diff_block_size=16 --out /tmp/t
"""

from __future__ import annotations

import argparse
import json
import sys

from quant.config import FLOAT_DTYPES
from steerling_lite.cli.common import size_arg
from steerling_lite.loading.random_checkpoint import PRESETS, preset_config, write_random_checkpoint


def parse_set(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected KEY=VALUE")
    return key.strip(), json.loads(value)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--out", required=True, help="output directory (replaced if it exists)")
    p.add_argument("--schema", default="flat", choices=["flat", "native"],
                   help="config.json schema: flat (published HF repos) or native (reference tools)")
    p.add_argument("--instruct", action="store_true", help="instruct vocabulary (100284 tokens)")
    p.add_argument("--no-concepts", action="store_true", help="a non-interpretable checkpoint (no concept heads)")
    p.add_argument("--shard-size", type=size_arg, help="shard the weights into files of at most this size")
    p.add_argument("--dtype", default="bf16", choices=list(FLOAT_DTYPES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", type=parse_set, action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (JSON value), e.g. --set n_layers=4 --set n_concepts=500")
    args = p.parse_args(argv)
    dtype = FLOAT_DTYPES[args.dtype]
    cfg = preset_config(args.preset, instruct=args.instruct, schema=args.schema,
                        interpretable=not args.no_concepts, **dict(args.set))
    if args.preset == "8b" and args.shard_size is None:
        args.shard_size = 5 * 10**9  # never hold 17 GB in RAM at once
    out = write_random_checkpoint(args.out, cfg, seed=args.seed, dtype=dtype,
                                  max_shard_bytes=args.shard_size, progress=sys.stderr.isatty())
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
