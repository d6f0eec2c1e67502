"""``steerling-lite tui``: the terminal app, on a model directory or the embedded default.

steerling_lite never imports the app: this module plugs the subcommand into its command
line through the ``steerling_lite.commands`` entry point (pyproject.toml), so imports
go one way, tui -> steerling_lite.
"""

from __future__ import annotations

import argparse

from steerling_lite import QUANT_MODES, resolve_model_dir, run_guarded


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tui", help="open the terminal app: chat, live concept steering, attribution")
    add_args(p)
    p.set_defaults(func=run)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="DIR", help="checkpoint directory (default: the embedded default model)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--quant", default="auto", choices=QUANT_MODES,
                   help="quantization of the transformer layers (default auto: the best precision that fits); "
                        "the load screen shows the memory plan before loading")


def run(args: argparse.Namespace) -> int:
    """Open the app on ``--model``; the exit code is the app's (Textual's: 1 after an error it showed).

    Raises:
        SteerlingError: ``--model`` names no model (see :func:`steerling_lite.resolve_model_dir`).
    """
    from .app import SteerlingApp  # imported here: the other commands do not need Textual

    path = resolve_model_dir(args.model)
    app = SteerlingApp(model=path, device=args.device, quant=args.quant)
    app.run()
    return app.return_code or 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m tui``, inside the same error boundary as the CLI
    (:func:`steerling_lite.run_guarded`): a bad ``--model``, an unusable sessions database or a
    refusing file system is one line on stderr and exit 2; ``--debug`` shows the traceback."""
    from .store import StoreError

    parser = argparse.ArgumentParser(prog="python -m tui", description="steerling-lite's terminal app")
    add_args(parser)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (default: one line)")
    args = parser.parse_args(argv)
    return run_guarded(lambda: run(args), debug=args.debug, user_errors=(StoreError,))
