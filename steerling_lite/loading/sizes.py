"""Sizes as users type and read them, for the CLI, the app and the planner.

# issue-10 placeholder: the loading helper owns the one home of sizes; reconcile at merge.
Both delegate to :mod:`quant.memory` (accelerate's rules: ``GiB`` = 2**30, ``GB`` = 10**9);
a bare number is bytes.
"""

from __future__ import annotations

from quant.memory import format_size, parse_size as _parse_units


def parse_size(text: str | int) -> int:
    """``"6GiB"`` -> 6442450944, ``"8GB"`` -> 8000000000, ``"1024"`` / ``1024`` -> 1024 (bytes).

    Raises:
        ValueError: not a size (the message names the text and the accepted forms).
    """
    if isinstance(text, str) and text.strip().isdigit():
        return int(text.strip())
    return _parse_units(text)


def fmt_bytes(n: int | float) -> str:
    """``1536`` -> ``1.5 KiB`` (binary units, as memory tools print them)."""
    return format_size(n)
