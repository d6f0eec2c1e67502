"""argparse ``type=`` functions for the command line's numeric and device arguments.

Each one turns a bad value into :class:`argparse.ArgumentTypeError`, which argparse prints as a
one-line usage error naming the option (exit 2), before any file is read. The bounds are the
ones the runtime needs (a count of at least 1, a probability in [0, 1], a finite float, a seed
``torch.Generator.manual_seed`` accepts).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import torch

from ..generation.generate import SEED_MAX
from ..loading.plan import DEVICES


def int_arg(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """A type accepting a decimal integer in ``[lo, hi]`` (either bound may be None: unbounded)."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{value} is out of range; expected {_range(lo, hi)}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its messages
    return parse


def float_arg(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> Callable[[str], float]:
    """A type accepting a finite float in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``); NaN and
    infinities are refused."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if (lo is not None and (value < lo or (lo_open and value == lo))) or (hi is not None and value > hi):
            low = "" if lo is None else (f"> {lo:g}" if lo_open else f">= {lo:g}")
            high = "" if hi is None else f"<= {hi:g}"
            raise argparse.ArgumentTypeError(f"{value:g} is out of range; expected a number {' and '.join(x for x in (low, high) if x)}")
        return value

    parse.__name__ = "number"
    return parse


def _range(lo: int | None, hi: int | None) -> str:
    if lo is not None and hi is not None:
        return f"an integer from {lo} to {hi}"
    return f"an integer >= {lo}" if lo is not None else f"an integer <= {hi}"


seed_arg = int_arg(0, SEED_MAX)
positive_int = int_arg(1)
non_negative_int = int_arg(0)


def device_arg(text: str) -> str:
    """A type accepting ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (whether this machine has the GPU
    is checked when the model is placed: :func:`steerling_lite.loading.plan.resolve_device`)."""
    if text == "auto":
        return text
    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; expected {DEVICES}")
    return text


device_arg.__name__ = "device"


def directory_arg(text: str) -> str:
    """A type accepting a directory path that exists as a directory or does not exist yet (it is
    created when needed); a path naming a file, or under one, is refused."""
    from pathlib import Path

    try:
        p = Path(text).expanduser()
        for q in (p, *p.parents):
            if q.exists():
                if not q.is_dir():
                    raise argparse.ArgumentTypeError(f"{str(q)!r} is a file; expected a directory")
                break
    except (OSError, ValueError, RuntimeError) as exc:  # a name too long, a NUL byte, ~user unknown
        raise argparse.ArgumentTypeError(f"{text!r} is not a usable directory path ({exc})") from None
    return text


directory_arg.__name__ = "directory"
