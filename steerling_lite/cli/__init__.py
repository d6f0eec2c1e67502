"""The ``steerling-lite`` command line: one module per subcommand, each with ``register(subparsers)``."""

from __future__ import annotations

import argparse
import errno
import sys
from importlib.metadata import entry_points

from ..atomic import Terminated
from ..errors import SteerlingError
from . import concepts, explain, generate, index, info, plan, pull, quantize, report, serve, steer
from . import eval as eval_cmd

# Each module adds its subcommand(s); the parser's ``func`` runs it and returns an exit code.
COMMAND_MODULES = [generate, info, plan, quantize, explain, steer, concepts, pull, serve, index, eval_cmd, report]


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
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated (SIGTERM); nothing half-written was left", file=sys.stderr)
        return 143
    except Exception as exc:  # the boundary: every error becomes one line
        if args.debug:
            raise
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 2 if is_user_error(exc) else 3


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is one a user can cause (bad input, a file system that refuses)."""
    return isinstance(exc, (SteerlingError, OSError, UnicodeError, MemoryError))


def error_line(exc: BaseException) -> str:
    """One line for ``exc``: the message of the project's errors, ``PATH: reason`` for
    operating-system errors, else the type and message with a pointer to ``--debug``."""
    if isinstance(exc, SteerlingError):
        text = str(exc)
    elif isinstance(exc, OSError) and exc.strerror:
        where = exc.filename if exc.filename is not None else ""
        hint = {errno.ENOSPC: " (the disk is full: free space or write elsewhere)",
                errno.EROFS: " (read-only file system: write elsewhere)",
                errno.EACCES: " (permission denied: write elsewhere)"}.get(exc.errno, "")
        text = f"{where}: {exc.strerror}{hint}" if where else f"{exc.strerror}{hint}"
    elif isinstance(exc, MemoryError):
        text = "out of memory: use a smaller --dtype / --quant, or --max-cpu-memory with --offload-dir"
    else:
        text = f"internal error ({type(exc).__name__}: {exc}); run again with --debug for the traceback"
    return " ".join(text.split()) or type(exc).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
