"""JSON read with limits: a size cap and a nesting-depth cap checked before parsing.

Python's :func:`json.loads` recurses once per nesting level, so a hostile file of
``[[[[...]]]]`` raises ``RecursionError`` (or exhausts the stack), and a huge file is read
whole into memory. Checkpoint metadata (config.json, the safetensors index, safetensors
headers, quantize_config.json) is a few levels deep and small, so both limits are far above
any real file. Errors are :class:`ValueError` naming the source.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

MAX_DEPTH = 64
MAX_BYTES = 64 * 2**20  # 64 MiB: a safetensors index of a 1000-shard model is ~ 100 KiB

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def nesting_depth(text: str) -> int:
    """The deepest nesting of arrays / objects in JSON ``text`` (strings skipped; 0 for a scalar)."""
    depth = deepest = 0
    for m in _BRACKET.finditer(_STRING.sub('""', text)):
        if m.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def loads_limited(text: str | bytes, source: str, max_depth: int = MAX_DEPTH, max_bytes: int = MAX_BYTES) -> Any:
    """``json.loads(text)`` after checking its size (bytes) and nesting depth.

    Raises:
        ValueError: ``source: ...`` when the text is larger than ``max_bytes``, nested deeper
            than ``max_depth``, not UTF-8, or not valid JSON (NaN / Infinity included).
    """
    if len(text) > max_bytes:
        raise ValueError(f"{source}: {len(text)} bytes of JSON; expected at most {max_bytes}")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    depth = nesting_depth(text)
    if depth > max_depth:
        raise ValueError(f"{source}: JSON nested {depth} levels deep; expected at most {max_depth}")

    def no_constant(name: str) -> float:
        raise ValueError(f"{name} is not valid JSON")

    try:
        return json.loads(text, parse_constant=no_constant)
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise ValueError(f"{source}: not valid JSON ({exc})") from None


def read_json(path: str | Path, max_depth: int = MAX_DEPTH, max_bytes: int = MAX_BYTES) -> Any:
    """Read and parse the JSON file ``path`` within the limits of :func:`loads_limited`.

    Raises:
        ValueError: ``path: ...`` unreadable (missing, a directory, permission), too large,
            too deep, not UTF-8 or not valid JSON.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return loads_limited(data, str(path), max_depth, max_bytes)
