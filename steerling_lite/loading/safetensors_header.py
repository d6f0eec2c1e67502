"""The safetensors header, read and checked from its own bytes: never the whole file, never
a memory map, so a single file larger than RAM can be inspected and planned.

Format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length
N, N bytes of JSON ``{name: {dtype, shape, data_offsets}, "__metadata__": {str: str}}``,
then the data, which the entries tile exactly. :func:`check_header` applies the library's
own validation rules to the header, so no ``safe_open`` is needed to trust it.
"""

from __future__ import annotations

import math
from pathlib import Path

from quant.jsonio import loads_limited

from ..errors import CheckpointError

# bytes per element of every safetensors dtype code
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}
HEADER_MAX_BYTES = 100_000_000  # safetensors' own limit on the JSON header


def file_header(path: Path) -> tuple[int, dict, dict[str, str]]:
    """The raw safetensors header of ``path``: ``(data_start, {name: {dtype, shape, data_offsets}},
    metadata)`` (format: 8-byte little-endian header length, JSON header, then the data). Only
    the header's bytes are read (never the whole file, never a memory map).

    Raises:
        CheckpointError: the header cannot be read: a length beyond the file or safetensors'
            100 MB limit, JSON that is invalid or nested too deep, not an object.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n > min(HEADER_MAX_BYTES, size - 8):
                raise ValueError(f"header length {n} does not fit the file of {size} bytes")
            header = loads_limited(f.read(n), "header", max_depth=8, max_bytes=HEADER_MAX_BYTES)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise ValueError("__metadata__ is not an object of strings")
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file (cannot read the header: {exc}); it may be "
                              "truncated or corrupt: copy or download it again") from None
    return 8 + n, header, meta


def check_header(header: dict, data_bytes: int) -> None:
    """Check a safetensors header as the safetensors library does, from the header alone:
    each entry has a dtype code, a shape of non-negative ints and ``data_offsets`` whose span
    is the tensor's size, and the entries tile the ``data_bytes`` after the header exactly.

    Raises:
        ValueError: the first entry that breaks a rule, named.
    """
    spans = []
    for name, h in header.items():
        if not isinstance(h, dict) or set(h) != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"tensor {name!r}: expected {{dtype, shape, data_offsets}}")
        dtype, shape, offsets = h["dtype"], h["shape"], h["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
            raise ValueError(f"tensor {name!r}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise ValueError(f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise ValueError(f"tensor {name!r}: data_offsets {offsets!r} are not [begin, end]")
        if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise ValueError(f"tensor {name!r}: data_offsets {offsets} do not hold shape {shape} of {dtype}")
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise ValueError(f"tensor {name!r}: data starts at {begin}, expected {end} (gap or overlap)")
        end = stop
    if end != data_bytes:
        raise ValueError(f"the tensors hold {end} bytes but the file has {data_bytes} after the header")
