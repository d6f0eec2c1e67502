"""``steerling-lite tui``: the terminal app, on a model directory or the embedded default.

steerling_lite never imports the app: this module plugs the subcommand into its command
line through the ``steerling_lite.commands`` entry point (pyproject.toml), so imports
go one way, tui -> steerling_lite.
"""

from __future__ import annotations

import argparse

from steerling_lite import QUANT_MODES, resolve_model_dir


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
    from .app import SteerlingApp  # imported here: the other commands do not need Textual

    path = resolve_model_dir(args.model)
    SteerlingApp(model=path, device=args.device, quant=args.quant).run()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m tui``."""
    parser = argparse.ArgumentParser(prog="python -m tui", description="steerling-lite's terminal app")
    add_args(parser)
    return run(parser.parse_args(argv))
