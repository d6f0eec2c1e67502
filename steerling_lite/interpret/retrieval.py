"""Training-data retrieval: the training chunks a span of generated text most resembles, and why.

A chunk of training text (:mod:`~steerling_lite.interpret.corpus`) and a span of a
generation's output are embedded the same way: one forward pass over their tokens alone
(one diffusion block for a default chunk, so every token sees every other), then the mean
over their tokens of a *representation* (:data:`~steerling_lite.interpret.representation.REPRESENTATIONS`). The default,
``composed+input``, is the mean composed state (known + discovered + epsilon, what the LM
head reads) and the mean input token embedding, each L2-normalized, concatenated. The
vectors go in a FAISS index (:mod:`~steerling_lite.interpret.index_store`: whitened,
L2-normalized, inner product = cosine similarity; exact for small corpora, HNSW for large
ones), the chunks' text and provenance in SQLite beside it;
:mod:`~steerling_lite.interpret.index_build` builds and extends one.

Why ``composed+input`` (BENCHMARKS.md, "Training-data retrieval", measured on the default
model's 216 k training chunks by ``scripts/bench_retrieval.py``): it finds a training chunk
from a copy with 30 % of its tokens masked or replaced more often than any other
representation tried. The composed state alone says what the model made of the chunk but
keeps the exact words only in part (the last layer of a masked-diffusion model is trained to
predict the masked tokens, not to carry the visible ones), so a corrupted copy lands among
chunks on the same topic; the known-concept weights say what a chunk is about and even less
which chunk it is, and mixing them with the composed state lowers its recall. The input
embeddings add the words, the composed state the model's reading of them. The known
concepts explain a neighbour instead: each result lists the known concepts that the span
and the chunk share (mean known-head weight over their tokens, top-k weights of each token,
those of at least
:data:`~steerling_lite.interpret.representation.MIN_CONCEPT_WEIGHT`).

The index records the model's fingerprint (:func:`model_fingerprint`); opening it with
another model is refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import RetrievalError
from . import index_store as store
from .corpus import balanced_lengths
from .representation import embed_sequences, model_fingerprint


# ---- results ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SharedConcept:
    """A known concept active in both the query span and a neighbour (mean weights over their tokens)."""

    concept_id: int
    label: str
    span_weight: float
    chunk_weight: float


@dataclass(frozen=True)
class Neighbour:
    """One training chunk near a query.

    Attributes:
        rank: 1 = nearest.
        chunk_id: its id in the index.
        similarity: cosine similarity of the whitened representations (-1..1).
        text: the chunk's text.
        source, line, start, end: its file, 1-based line and byte range in the (decompressed) file.
        shared: known concepts of both the query and the chunk, strongest (smaller weight) first.
    """

    rank: int
    chunk_id: int
    similarity: float
    text: str
    source: str
    line: int
    start: int
    end: int
    shared: tuple[SharedConcept, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SpanNeighbours:
    """The nearest training chunks of one query (a span of generated text, or a text).

    Attributes:
        start, end: the span ``[start, end)`` in generated-token indices (None for a text query).
        text: the query's text.
        concepts: the query's known concepts ``(id, label, mean weight)``.
        neighbours: nearest first.
    """

    start: int | None
    end: int | None
    text: str
    concepts: tuple[tuple[int, str, float], ...]
    neighbours: tuple[Neighbour, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "text": self.text,
                "concepts": [{"concept_id": c, "label": lab, "weight": w} for c, lab, w in self.concepts],
                "neighbours": [n.to_dict() for n in self.neighbours]}


# ---- the index ----------------------------------------------------------------------------------
class TrainingIndex:
    """An opened training-data index (read only). Use :meth:`open`.

    Attributes:
        path: its directory.
        manifest: ``manifest.json`` (model fingerprint, representation, counts, files).
        n_chunks: chunks in it.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], vectors, db):
        self.path, self.manifest, self._vectors, self._db = path, manifest, vectors, db
        self.n_chunks = int(vectors.ntotal)

    @classmethod
    def open(cls, path: str | Path, lm=None, verify: bool = True) -> TrainingIndex:
        """Open the index in ``path``; with ``lm``, check it was built by that model.

        Raises:
            RetrievalError: not an index, a truncated or corrupt file (size / CRC-32 checks,
                ``verify`` for the CRC), vectors and chunks that disagree, or another model.
        """
        path = Path(path)
        manifest = store.read_manifest(path, verify)
        if lm is not None:
            check_model(path, manifest, lm)
        vectors = store.read_vectors(path)
        db = store.connect(path / store.CHUNKS_DB, read_only=True)
        n_rows = db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        if not vectors.ntotal == n_rows == manifest.get("n_chunks"):
            db.close()
            raise RetrievalError(f"{path}: {vectors.ntotal} vectors but {n_rows} chunks; rebuild the index")
        return cls(path, manifest, vectors, db)

    @property
    def representation(self) -> str:
        return self.manifest["representation"]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> TrainingIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def search_ids(self, lm, queries: Sequence[Sequence[int]], k: int = 5, catalog=None) -> list[SpanNeighbours]:
        """The ``k`` nearest chunks of each token sequence (each embedded alone, from position 0).

        Raises:
            RetrievalError: ``k < 1``, an empty or too long query, a model other than the index's.
        """
        if k < 1:
            raise RetrievalError(f"k is {k}; expected at least 1 neighbour")
        check_model(self.path, self.manifest, lm)
        catalog = catalog if catalog is not None else _catalog(lm)
        vectors, concepts = embed_sequences(lm, queries, self.representation)
        sims, ids = self._vectors.search(vectors, min(k, self.n_chunks)) if len(queries) else (None, None)
        out = []
        for qi, q in enumerate(queries):
            mine = dict(concepts[qi])
            rows = self._rows([int(i) for i in ids[qi] if i >= 0])
            neighbours = []
            for rank, (cid, sim) in enumerate(zip(ids[qi].tolist(), sims[qi].tolist()), 1):
                if cid < 0:
                    continue
                r = rows[cid]
                theirs = dict(json.loads(r["concepts"]))
                shared = sorted((SharedConcept(c, catalog.label(c, "known"), mine[c], theirs[c])
                                 for c in mine.keys() & theirs.keys()),
                                key=lambda s: -min(s.span_weight, s.chunk_weight))
                neighbours.append(Neighbour(rank, cid, round(float(sim), 4), r["text"], r["path"], r["line"],
                                            r["start"], r["end"], tuple(shared)))
            out.append(SpanNeighbours(None, None, lm.tokenizer.decode(q),
                                      tuple((c, catalog.label(c, "known"), w) for c, w in concepts[qi]),
                                      tuple(neighbours)))
        return out

    def search_text(self, lm, text: str, k: int = 5, catalog=None) -> SpanNeighbours:
        """The ``k`` nearest chunks of a text (see :meth:`search_ids`).

        Raises:
            RetrievalError: empty text, see :meth:`search_ids`.
        """
        ids = lm.tokenizer.encode(text)
        if not ids:
            raise RetrievalError("the query text is empty")
        return self.search_ids(lm, [ids], k, catalog)[0]

    def _rows(self, ids: list[int]) -> dict[int, dict[str, Any]]:
        if not ids:
            return {}
        cur = self._db.execute(
            "SELECT c.id, c.line, c.start, c.end, c.text, c.concepts, s.path FROM chunks c "
            f"JOIN sources s ON s.id = c.source_id WHERE c.id IN ({','.join('?' * len(ids))})", ids)
        names = [d[0] for d in cur.description]
        return {row[0]: dict(zip(names, row)) for row in cur}

    def rows(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Chunk id -> ``{"id", "line", "start", "end", "text", "concepts", "path"}`` of ``ids``
        (ids not in the index are left out)."""
        ids = sorted({int(i) for i in ids})
        out: dict[int, dict[str, Any]] = {}
        for lo in range(0, len(ids), 900):  # SQLite's older limit of 999 parameters
            out.update(self._rows(ids[lo:lo + 900]))
        return out

    def iter_texts(self, limit: int | None = None, batch: int = 4096) -> Iterator[list[tuple[int, str]]]:
        """``(chunk id, text)`` of the first ``limit`` chunks (default all) by id, ``batch`` at a time."""
        n = self.n_chunks if limit is None else min(int(limit), self.n_chunks)
        cur = self._db.execute("SELECT id, text FROM chunks ORDER BY id LIMIT ?", (n,))
        while rows := cur.fetchmany(batch):
            yield rows


def check_model(path: Path, manifest: dict[str, Any], lm) -> None:
    """Raise :class:`RetrievalError` unless ``lm`` is the model that built the index at ``path``."""
    want = manifest.get("model", {}).get("fingerprint")
    have = model_fingerprint(lm)
    if want != have:
        built = manifest.get("model", {}).get("name") or "another model"
        raise RetrievalError(
            f"{path}: built by another model ({built}, fingerprint {str(want)[:12]}); this model's fingerprint "
            f"is {have[:12]}: build an index for it with `steerling-lite index build --model DIR`")


def _catalog(lm):
    from .concepts import ConceptCatalog

    return ConceptCatalog.for_model(lm)


# ---- spans of a generation ----------------------------------------------------------------------
def span_ids(attribution, start: int, end: int) -> list[int]:
    """The generated text tokens of ``[start, end)`` (generated-token indices) of a
    :class:`~steerling_lite.interpret.attribution_result.ConceptAttribution`: masks (nothing
    committed) and special tokens left out.

    Raises:
        RetrievalError: the span is empty, outside the output, or holds no generated text.
    """
    n = attribution.trace.max_new_tokens
    if not 0 <= start < end <= n:
        raise RetrievalError(f"span [{start}, {end}) is outside the generated output: expected "
                             f"0 <= start < end <= {n} (generated-token indices, end exclusive)")
    seq = attribution.trace.sequence()[attribution.prompt_len + start:attribution.prompt_len + end]
    tok = attribution.tokenizer
    special = tok.special_ids if tok is not None else {attribution.trace.mask_id}
    ids = [t for t in seq if t not in special and t != attribution.trace.mask_id]
    if not ids:
        raise RetrievalError(f"span [{start}, {end}) holds no generated text")
    return ids


def output_spans(attribution, chunk_tokens: int) -> list[tuple[int, int]]:
    """The generated output cut as a corpus is (:mod:`~steerling_lite.interpret.corpus`): at line
    breaks (a token holding a newline ends its piece; newline-only tokens, masks and special
    tokens belong to none), then each piece into near-equal spans of at most ``chunk_tokens``.
    Spans are ``(start, end)`` generated-token indices, in order."""
    n, p0 = attribution.trace.max_new_tokens, attribution.prompt_len
    seq = attribution.trace.sequence()[p0:p0 + n]
    tok = attribution.tokenizer
    skip = (tok.special_ids if tok is not None else frozenset()) | {attribution.trace.mask_id}
    pieces: list[tuple[int, int]] = []
    start = None
    for i, t in enumerate(seq + [attribution.trace.mask_id]):  # the sentinel closes the last piece
        text = tok.token_bytes([t]) if tok is not None and t not in skip else b""
        if t in skip or (b"\n" in text and not text.strip()):
            if start is not None:
                pieces.append((start, i))
            start = None
            continue
        start = i if start is None else start
        if b"\n" in text:
            pieces.append((start, i + 1))
            start = None
    out = []
    for s, e in pieces:
        for length in balanced_lengths(e - s, chunk_tokens):
            out.append((s, s + length))
            s += length
    return out


def retrieve(lm, index: TrainingIndex, attribution, spans: Sequence[tuple[int, int]] | None = None,
             k: int = 5) -> list[SpanNeighbours]:
    """The ``k`` nearest training chunks of spans of a generation, each with similarity, source
    and the known concepts they share with the span.

    Args:
        lm: the model that generated (and built the index).
        index: an opened :class:`TrainingIndex`.
        attribution: the generation's :class:`~steerling_lite.ConceptAttribution` (``explain``).
        spans: ``(start, end)`` generated-token indices, end exclusive; default the whole output
            cut as the index's corpus was (:func:`output_spans`: lines, at most one chunk long).
        k: neighbours per span.

    Raises:
        RetrievalError: a span outside the output or without text, ``k < 1``, another model.
    """
    if spans is None:
        spans = output_spans(attribution, int(index.manifest["chunk_tokens"]))
    spans = [(int(s), int(e)) for s, e in spans]
    queries = [span_ids(attribution, s, e) for s, e in spans]
    found = index.search_ids(lm, queries, k, attribution.catalog)
    return [SpanNeighbours(s, e, f.text, f.concepts, f.neighbours) for (s, e), f in zip(spans, found)]


def index_summary(path: str | Path) -> dict[str, Any]:
    """The manifest of an index (sizes checked, not CRCs): for ``index info``."""
    return store.read_manifest(Path(path), verify=False)
