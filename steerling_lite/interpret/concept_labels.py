"""Reading a concept labels table: its columns and the cells of each row.

The published ``concept_labels.parquet`` and the same table as CSV or JSON
(../shared/STEERLING_FORMAT.md §1) come back as plain columns; the cell parsers turn the
values each format writes for a missing cell (None, NaN, empty string) into defaults. What
the rows mean (heads, ids, the catalog) is :mod:`.concepts`.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from ..errors import ConceptError


def parse_bool(value: Any, default: bool) -> bool:
    """A flag cell: bool, 0/1, ``true``/``yes``/..., missing (None, NaN, empty) -> ``default``.

    Raises:
        ValueError: anything else.
    """
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return bool(value) if not (isinstance(value, float) and math.isnan(value)) else default
    s = str(value).strip().lower()
    if s in ("", "nan", "none", "null"):
        return default
    if s in ("1", "true", "t", "yes", "y"):
        return True
    if s in ("0", "false", "f", "no", "n"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def parse_int(value: Any) -> int | None:
    """An id cell: an integer (also ``3.0`` or ``"3"``), missing -> None.

    Raises:
        ValueError: a fraction, a bool or text that is not a number.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"not an integer: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value != int(value):
            raise ValueError(f"not an integer: {value!r}")
        return int(value)
    s = str(value).strip()
    if s.lower() in ("", "nan", "none", "null"):
        return None
    f = float(s)
    if f != int(f):
        raise ValueError(f"not an integer: {value!r}")
    return int(f)


def parse_str(value: Any) -> str | None:
    """A text cell; missing (None, NaN, empty) -> None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value) if str(value) != "" else None  # CSV writes missing values as empty strings


def read_label_columns(path: Path) -> dict[str, list[Any]]:
    """Columns of a labels file as ``{column: [cell, ...]}`` (parquet via pyarrow, CSV, JSON
    as a list of row objects, ``{"concepts": [...]}`` or column-oriented).

    Raises:
        ConceptError: unreadable file or unsupported type, naming the file.
    """
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            return {name: table.column(name).to_pylist() for name in table.column_names}
        if suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                rows = list(reader)
                names = list(reader.fieldnames or [])
            return {n: [r.get(n) for r in rows] for n in names}
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and "concepts" in data:
                data = data["concepts"]
            if isinstance(data, list):
                names: list[str] = []
                for r in data:
                    if not isinstance(r, dict):
                        raise ConceptError(f"{path}: expected a list of objects, one per concept")
                    names += [k for k in r if k not in names]
                return {n: [r.get(n) for r in data] for n in names}
            if isinstance(data, dict) and all(isinstance(v, (list, dict)) for v in data.values()):
                cols = {}
                for k, v in data.items():  # column-oriented, e.g. pandas to_json(orient="columns")
                    cols[k] = list(v.values()) if isinstance(v, dict) else list(v)
                return cols
            raise ConceptError(f"{path}: expected a list of concept objects or an object of columns")
    except ConceptError:
        raise
    except Exception as exc:  # pyarrow / csv / json errors name the problem; add the file
        raise ConceptError(f"{path}: cannot read concept labels ({type(exc).__name__}: {exc})") from None
    raise ConceptError(f"{path}: unsupported labels file type {suffix!r}; expected .parquet, .csv or .json")
