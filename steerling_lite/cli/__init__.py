"""The ``steerling-lite`` command line: one module per subcommand, each with ``register(subparsers)``."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

from ..errors import SteerlingError
from . import concepts, explain, generate, index, info, plan, pull, quantize, serve, steer

# Each module adds its subcommand(s); the parser's ``func`` runs it and returns an exit code.
COMMAND_MODULES = [generate, info, plan, quantize, explain, steer, concepts, pull, serve, index]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steerling-lite",
        description="Run Steerling, the interpretable causal diffusion language model, locally.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    # Subcommands of packages built on this one (the terminal app) come in as plugins, so
    # steerling_lite never imports them: entry point group "steerling_lite.commands",
    # each a register(subparsers) function.
    for ep in entry_points(group="steerling_lite.commands"):
        ep.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SteerlingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
