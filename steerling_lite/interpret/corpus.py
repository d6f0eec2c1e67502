"""Training corpora for retrieval: UTF-8 text files cut into chunks of tokens, each with its provenance.

A corpus file is plain UTF-8 text, optionally compressed (``.gz``, ``.bz2``, ``.xz`` by file
name; offsets then count bytes of the decompressed text). Each non-blank line is one
document (a WordNet entry, a paragraph written on one line, a JSONL record...). A line of
``n`` tokens is cut into ``ceil(n / chunk_tokens)`` chunks of near-equal length, at most
``chunk_tokens`` each (default: one diffusion block of the model), so no chunk mixes two
lines and none is a stub of one or two tokens; a cut never falls inside a UTF-8 character.
Tokens are those of :meth:`SteerlingTokenizer.encode` (special-token text stays text).

Provenance of a chunk: the file, its 1-based line number and the byte range ``[start, end)``
of its text in the (decompressed) file, as ``grep -b`` counts.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import RetrievalError

OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def open_corpus(path: str | Path) -> BinaryIO:
    """The file opened for reading its (decompressed) bytes, by its suffix.

    Raises:
        RetrievalError: the file is missing or unreadable.
    """
    path = Path(path)
    if not path.exists():
        raise RetrievalError(f"{path}: corpus file not found")
    if not path.is_file():
        raise RetrievalError(f"{path}: not a regular file; pass text files as the corpus")
    try:
        return OPENERS.get(path.suffix.lower(), open)(path, "rb")  # type: ignore[operator]
    except OSError as exc:
        raise RetrievalError(f"{path}: cannot read the corpus ({exc.strerror or exc})") from None


def _lines(path: Path) -> Iterator[tuple[int, int, bytes, bytes]]:
    """``(line number, byte offset, line, line without its newline)`` of every line, decompressed."""
    offset = 0
    try:
        with open_corpus(path) as f:
            for number, raw in enumerate(f, 1):
                yield number, offset, raw, raw.rstrip(b"\n").rstrip(b"\r")
                offset += len(raw)
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise RetrievalError(f"{path}: cannot read the corpus ({exc})") from None


@dataclass(frozen=True)
class CorpusFile:
    """What :func:`inspect_corpus` found in one file.

    Attributes:
        path: the file as given.
        sha256: hex SHA-256 of its decompressed bytes (the file's identity in an index).
        n_bytes: decompressed size, bytes.
        n_documents: non-blank lines.
    """

    path: Path
    sha256: str
    n_bytes: int
    n_documents: int


def inspect_corpus(path: str | Path) -> CorpusFile:
    """Read a corpus file once: its hash, size and number of documents, checking it is UTF-8.

    Raises:
        RetrievalError: missing or unreadable file, a byte sequence that is not UTF-8 (the
            message gives its line and byte offset), or no text at all.
    """
    path = Path(path)
    digest = hashlib.sha256()
    n_docs = n_bytes = 0
    for number, offset, raw, body in _lines(path):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RetrievalError(
                f"{path}: not UTF-8 text (byte 0x{body[exc.start]:02x} at line {number}, byte offset "
                f"{offset + exc.start}); convert it first, e.g. iconv -f latin1 -t utf-8"
            ) from None
        digest.update(raw)
        n_bytes = offset + len(raw)
        n_docs += bool(text.strip())
    if n_docs == 0:
        raise RetrievalError(f"{path}: the corpus is empty (no text to index)")
    return CorpusFile(path, digest.hexdigest(), n_bytes, n_docs)


@dataclass(frozen=True)
class Chunk:
    """One chunk of a corpus.

    Attributes:
        line: 1-based line number in the file.
        start, end: byte range of the chunk's text in the decompressed file.
        token_ids: its tokens (between 1 and ``chunk_tokens``; a line whose one character spans
            more tokens than that keeps it whole).
        text: its text (the exact bytes ``[start, end)``).
    """

    line: int
    start: int
    end: int
    token_ids: tuple[int, ...]
    text: str


def balanced_lengths(n: int, size: int) -> list[int]:
    """``n`` split into ``ceil(n / size)`` near-equal parts, longer ones first: ``(23, 16) -> [12, 11]``."""
    parts = -(-n // size)
    base, extra = divmod(n, parts)
    return [base + (i < extra) for i in range(parts)]


def _cuts(tokenizer, ids: list[int], body: bytes, size: int) -> list[tuple[int, int]]:
    """Token index and byte offset of every cut of a line, both ends included; a cut inside a
    UTF-8 character moves back to the character's first token (forward when that would empty
    the chunk). Linear in the line's length."""
    cuts = [(0, 0)]
    target = 0
    for length in balanced_lengths(len(ids), size)[:-1]:
        target += length
        prev, b_prev = cuts[-1]
        if target <= prev:
            continue

        def offset(k: int) -> int:
            return b_prev + len(tokenizer.token_bytes(ids[prev:k]))

        k = target
        while k > prev and _mid_char(body, offset(k)):
            k -= 1
        if k == prev:
            k = target
            while k < len(ids) and _mid_char(body, offset(k)):
                k += 1
        if k >= len(ids):
            break
        cuts.append((k, offset(k)))
    cuts.append((len(ids), len(body)))
    return cuts


def _mid_char(body: bytes, offset: int) -> bool:
    return 0 < offset < len(body) and 0x80 <= body[offset] < 0xC0


def iter_chunks(path: str | Path, tokenizer, chunk_tokens: int) -> Iterator[Chunk]:
    """The chunks of a corpus file, in file order (see the module doc).

    Args:
        path: the corpus file (checked first with :func:`inspect_corpus`).
        tokenizer: a :class:`~steerling_lite.loading.tokenizer.SteerlingTokenizer`.
        chunk_tokens: most tokens per chunk (>= 1).

    Raises:
        RetrievalError: as :func:`inspect_corpus`, or ``chunk_tokens < 1``.
    """
    if chunk_tokens < 1:
        raise RetrievalError(f"chunk size {chunk_tokens}: expected at least 1 token")
    for number, offset, _, body in _lines(Path(path)):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise RetrievalError(f"{path}: not UTF-8 text at line {number}") from None
        if not text.strip():
            continue
        ids = tokenizer.encode(text)
        cuts = _cuts(tokenizer, ids, body, chunk_tokens)
        for (k0, b0), (k1, b1) in zip(cuts, cuts[1:]):
            yield Chunk(number, offset + b0, offset + b1, tuple(ids[k0:k1]), body[b0:b1].decode("utf-8"))
