"""The ``steerling-lite`` command line: one module per subcommand, each with ``register(subparsers)``."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

from ..errors import run_guarded
from . import audit, concepts, explain, generate, index, info, plan, pull, quantize, report, serve, steer
from . import eval as eval_cmd

# Each module adds its subcommand(s); the parser's ``func`` runs it and returns an exit code.
COMMAND_MODULES = [generate, info, plan, quantize, explain, steer, concepts, pull, serve, index, audit, eval_cmd, report]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steerling-lite",
        description="Run Steerling, the interpretable causal diffusion language model, locally.",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (default: one line)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    # Subcommands of packages built on this one (the terminal app) come in as plugins, so
    # steerling_lite never imports them: entry point group "steerling_lite.commands",
    # each a register(subparsers) function.
    for ep in entry_points(group="steerling_lite.commands"):
        ep.load()(sub)
    _add_debug(parser)
    return parser


def _add_debug(parser: argparse.ArgumentParser) -> None:
    """``--debug`` after every (sub)subcommand too, e.g. ``concepts search QUERY --debug``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sp in action.choices.values():
                sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
                _add_debug(sp)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; the one error boundary of the CLI.

    Returns the exit code: 0 success, 1 a check that failed (``plan`` that does not fit, an
    attribution check), 2 bad input (a :class:`SteerlingError` or an operating-system error
    naming a file: one line on stderr, no traceback), 130 interrupted (Ctrl-C), 3 an internal
    error (one line; ``--debug`` shows the traceback of any error).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return run_guarded(lambda: args.func(args), debug=args.debug)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
