"""Evaluation data: UTF-8 text files cut into windows of tokens, and labelled JSONL for concept detection.

Text (``eval --data``, ``report --data`` with a ``.txt`` file): each file is read whole (UTF-8,
at most 256 MiB), tokenized once, and cut into consecutive windows of ``window`` tokens
(default: the model's context, ``config.block_size``); a file longer than one window gives
several, and its last, shorter window is kept when it has at least ``min_tokens`` tokens
(default 16). Windows never span two files.

Labelled JSONL (``report --data FILE.jsonl``): one JSON object per line,
``{"text": "...", "spans": [{"start": 0, "end": 12, "concept": "noun.animal"}, ...]}``;
``start`` / ``end`` are character offsets into ``text`` (``end`` exclusive) and ``concept`` a
known concept id (``12``, ``"#12"``) or its name in the model's labels file (case-insensitive).
A token is labelled with a concept when its characters overlap the span. A line without
``spans`` (or with an empty list) is text with no concept present. Blank lines are skipped.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import textfile
from ..errors import InputError

MAX_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Window:
    """A window of tokens to evaluate.

    Attributes:
        source: the file it came from.
        index: its index among that file's windows (0-based).
        start: its first token's index in the file's token stream.
        token_ids: the tokens.
    """

    source: str
    index: int
    start: int
    token_ids: tuple[int, ...]

    @property
    def key(self) -> str:
        """``FILE#INDEX``: how the state file of a resumable run names it."""
        return f"{self.source}#{self.index}"


def read_text(path: str | Path, option: str = "--data") -> str:
    """The UTF-8 text of ``path`` (given as ``option``), at most :data:`MAX_BYTES`
    (:func:`steerling_lite.textfile.read_text`), refusing a file with no text.

    Raises:
        InputError: missing, a directory, unreadable, too large, not UTF-8 or empty (naming it).
    """
    text = textfile.read_text(path, f"{option} {path}", MAX_BYTES, "a smaller file: split it into several")
    if not text.strip():
        raise InputError(f"{option} {path}: the file is empty; expected text to evaluate on")
    return text


def text_windows(paths: list[str], tokenizer, window: int, min_tokens: int = 16) -> list[Window]:
    """The windows of every file in ``paths`` (module doc), in order.

    Raises:
        InputError: a file :func:`read_text` refuses, or one with fewer than ``min_tokens`` tokens.
    """
    if window < 1:
        raise InputError(f"--window {window}: expected at least 1 token")
    out: list[Window] = []
    for path in paths:
        ids = tokenizer.encode(read_text(path))
        n_before = len(out)
        for i, start in enumerate(range(0, len(ids), window)):
            chunk = ids[start:start + window]
            if len(chunk) >= min(min_tokens, window):
                out.append(Window(str(path), i, start, tuple(chunk)))
        if len(out) == n_before:
            raise InputError(f"--data {path}: {len(ids)} tokens; expected at least {min(min_tokens, window)}")
    return out


@dataclass(frozen=True)
class LabelledText:
    """One labelled record: its tokens and, per token, the known concept ids present.

    Attributes:
        line: 1-based line number in the JSONL file.
        token_ids: the text's tokens.
        token_concepts: per token, the set of known concept ids whose span overlaps it.
    """

    line: int
    token_ids: tuple[int, ...]
    token_concepts: tuple[frozenset[int], ...]


def read_labelled(path: str | Path, tokenizer, resolve, max_tokens: int) -> list[LabelledText]:
    """The records of a labelled JSONL file (module doc); texts longer than ``max_tokens`` are cut.

    Args:
        path: the file.
        tokenizer: a :class:`~steerling_lite.loading.tokenizer.SteerlingTokenizer`.
        resolve: ``resolve(label) -> known concept id``, raising ``KeyError`` for an unknown label.
        max_tokens: the model's context.

    Raises:
        InputError: the file as :func:`read_text`; a line that is not a JSON object with a
            string ``text``; a span without integer ``start <= end`` inside the text; a label
            naming no known concept (each naming the file, line and label).
    """
    out: list[LabelledText] = []
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: not JSON ({exc.msg}); expected {{\"text\": ..., \"spans\": [...]}}") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            raise InputError(f"{where}: expected an object with a string \"text\"")
        text: str = rec["text"]
        spans = rec.get("spans") or []
        if not isinstance(spans, list):
            raise InputError(f"{where}: \"spans\" must be a list of {{\"start\", \"end\", \"concept\"}}")
        ids = tokenizer.encode(text)[:max_tokens]
        sizes = [len(tokenizer.token_bytes([t])) for t in ids]
        ends = list(itertools.accumulate(sizes))  # byte range of token t: [ends[t] - sizes[t], ends[t])
        concepts: list[set[int]] = [set() for _ in ids]
        for j, span in enumerate(spans):
            start, end, cid = _span(span, where, j, len(text), resolve)
            b0, b1 = len(text[:start].encode("utf-8")), len(text[:end].encode("utf-8"))  # the span in bytes
            for t, (size, b_end) in enumerate(zip(sizes, ends)):
                if b_end - size < b1 and b_end > b0:
                    concepts[t].add(cid)
        out.append(LabelledText(number, tuple(ids), tuple(frozenset(c) for c in concepts)))
    if not out:
        raise InputError(f"--data {path}: no records; expected one JSON object per line")
    return out


def _span(span: Any, where: str, j: int, n_chars: int, resolve) -> tuple[int, int, int]:
    if not isinstance(span, dict) or "concept" not in span:
        raise InputError(f"{where}: span {j} must be an object with \"start\", \"end\" and \"concept\"")
    start, end = span.get("start"), span.get("end")
    if not (isinstance(start, int) and isinstance(end, int)) or isinstance(start, bool) or isinstance(end, bool) \
            or not 0 <= start <= end <= n_chars:
        raise InputError(f"{where}: span {j} has start={start!r}, end={end!r}; expected integers "
                         f"0 <= start <= end <= {n_chars} (character offsets into text)")
    try:
        cid = resolve(span["concept"])
    except KeyError as exc:
        raise InputError(f"{where}: span {j} names unknown concept {span['concept']!r}{exc.args[0] if exc.args else ''}") from None
    return start, end, cid


class ConceptResolver:
    """Known concept ids by id (``12``, ``"12"``, ``"#12"``) or by name from the labels file (case-insensitive).

    Args:
        catalog: the model's :class:`~steerling_lite.interpret.concepts.ConceptCatalog`.
        n_known: the model's known concepts.
    """

    def __init__(self, catalog, n_known: int):
        self.n_known = n_known
        self.by_name = {c.name.strip().lower(): c.concept_id for c in catalog.concepts("known")}

    def __call__(self, value: Any) -> int:
        """The id ``value`` names; raises ``KeyError`` (with a hint) when there is none."""
        if isinstance(value, int) and not isinstance(value, bool):
            cid = value
        elif isinstance(value, str) and re.fullmatch(r"#?\d+", value.strip()):
            cid = int(value.strip().lstrip("#"))
        elif isinstance(value, str) and value.strip().lower() in self.by_name:
            return self.by_name[value.strip().lower()]
        else:
            hint = "" if self.by_name else " (this model has no concept labels file: use ids)"
            raise KeyError(hint)
        if not 0 <= cid < self.n_known:
            raise KeyError(f" (known concept ids are 0..{self.n_known - 1})")
        return cid
