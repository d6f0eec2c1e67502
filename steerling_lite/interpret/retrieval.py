"""Training-data retrieval: the training chunks a span of generated text most resembles, and why.

A chunk of training text (:mod:`~steerling_lite.interpret.corpus`) and a span of a
generation's output are embedded the same way: one forward pass over their tokens alone
(one diffusion block for a default chunk, so every token sees every other), then the mean
over their tokens of a *representation* (:data:`REPRESENTATIONS`). The default,
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
those of at least :data:`MIN_CONCEPT_WEIGHT`).

The index records the model's fingerprint (:func:`model_fingerprint`); opening it with
another model is refused.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import RetrievalError
from ..model.concept_heads import decompose
from . import index_store as store

PARTS = ("composed", "hidden", "known", "input")
REPRESENTATIONS = ("composed+input", "composed", "hidden", "known", "composed+known", "input")
DEFAULT_REPRESENTATION = "composed+input"
CONCEPTS_PER_CHUNK = 8  # known concepts stored per chunk (and computed per span)
MIN_CONCEPT_WEIGHT = 0.1  # mean sigmoid weight over the tokens


# ---- representations ----------------------------------------------------------------------------
@dataclass
class PooledStates:
    """Per-sequence means over the tokens of one forward pass (fp32, CPU).

    Attributes:
        hidden: ``(N, D)`` final hidden states (after ln_f).
        composed: ``(N, D)`` known + discovered + epsilon, what the LM head reads. With epsilon
            correction (Steerling's default) this is the hidden state up to rounding (reference
            §4), so the hidden state is used and the discovered head is not run; without it, the
            decomposition's sum. ``hidden`` for a model without concept heads.
        known: ``(N, C)`` known-concept weights: each token's top-k detector sigmoids, 0 for the
            other concepts; None without concept heads.
        input: ``(N, D)`` input token embeddings (the tied LM-head rows of the tokens).
    """

    hidden: Tensor
    composed: Tensor
    known: Tensor | None
    input: Tensor


@torch.inference_mode()
def pooled_states(lm, ids: Tensor) -> PooledStates:
    """Run ``ids`` ``(N, T)`` (long; sequences of equal length, no padding) through the model from
    position 0 and average each state over the T tokens. Reference: the forward pass of
    ``steerling==0.2.0`` (``get_embeddings`` with ``pooling="mean"``), batched."""
    model = lm.model
    ids = ids.to(model.input_device)
    hidden = model.transformer(ids)
    n, t, d = hidden.shape
    flat = hidden.reshape(n * t, d)
    composed, known = flat, None
    if model.known_head is not None:
        if lm.config.concept.use_epsilon_correction:
            head = model.known_head(flat)
        else:
            parts = decompose(flat, model.known_head, model.unknown_head, False)
            head, composed = parts.known, parts.composed
        weights = torch.zeros(n * t, model.known_head.n_concepts, device=flat.device)
        weights.scatter_(1, head.indices, head.weights)
        known = weights.reshape(n, t, -1).mean(1).cpu()
    inputs = model.transformer.tok_emb(ids).float().mean(1).cpu()
    return PooledStates(hidden.float().mean(1).cpu(), composed.float().reshape(n, t, d).mean(1).cpu(), known, inputs)


def representation(states: PooledStates, kind: str) -> np.ndarray:
    """The vectors an index stores for ``kind`` (before whitening), ``(N, dim)`` float32: the
    ``+``-joined parts of :class:`PooledStates` (:data:`PARTS`), each L2-normalized, concatenated.
    ``composed+input`` (the default) is ``(N, 2 D)``; ``known`` ``(N, C)``.

    Raises:
        RetrievalError: an unknown part, or ``known`` on a model without concept heads.
    """
    names = kind.split("+")
    if not kind or any(p not in PARTS for p in names) or len(set(names)) != len(names):
        raise RetrievalError(f"representation {kind!r}: expected one of {', '.join(REPRESENTATIONS)} "
                             f"(or other '+'-joined parts of {', '.join(PARTS)})")
    if "known" in names and states.known is None:
        raise RetrievalError(f"the {kind!r} representation needs an interpretable checkpoint (with concept heads)")
    parts = [torch.nn.functional.normalize(getattr(states, p), dim=-1) for p in names]
    return torch.cat(parts, dim=-1).numpy().astype(np.float32)


def top_concepts(known: Tensor | None, n: int = CONCEPTS_PER_CHUNK) -> list[list[tuple[int, float]]]:
    """Per row of mean known weights ``(N, C)``: up to ``n`` ``(concept id, weight)`` pairs of at
    least :data:`MIN_CONCEPT_WEIGHT`, largest first (empty lists without concept heads)."""
    if known is None:
        return []
    w, idx = known.topk(min(n, known.shape[1]), dim=-1)
    return [[(int(i), round(float(x), 4)) for x, i in zip(wr, ir) if x >= MIN_CONCEPT_WEIGHT]
            for wr, ir in zip(w.tolist(), idx.tolist())]


def pooled_batches(lm, sequences: Sequence[Sequence[int]], batch_size: int = 256
                   ) -> Iterator[tuple[list[int], PooledStates]]:
    """:func:`pooled_states` of token sequences of any lengths, batched by length (nothing is
    padded): ``(indices into sequences, their states)`` per batch.

    Raises:
        RetrievalError: an empty sequence or one longer than the model's context.
    """
    by_len: dict[int, list[int]] = {}
    for i, s in enumerate(sequences):
        if not 0 < len(s) <= lm.config.block_size:
            raise RetrievalError(f"a sequence of {len(s)} tokens: expected 1..{lm.config.block_size} (the context)")
        by_len.setdefault(len(s), []).append(i)
    for rows in by_len.values():
        for lo in range(0, len(rows), batch_size):
            part = rows[lo:lo + batch_size]
            yield part, pooled_states(lm, torch.tensor([list(sequences[i]) for i in part], dtype=torch.long))


def embed_sequences(lm, sequences: Sequence[Sequence[int]], kind: str, batch_size: int = 256
                    ) -> tuple[np.ndarray, list[list[tuple[int, float]]]]:
    """Vectors ``(N, dim)`` float32 (:func:`representation`) and top known concepts
    (:func:`top_concepts`) of token sequences, in input order.

    Raises:
        RetrievalError: see :func:`pooled_batches` and :func:`representation`.
    """
    vectors: np.ndarray | None = None
    concepts: list[list[tuple[int, float]]] = [[] for _ in sequences]
    for part, states in pooled_batches(lm, sequences, batch_size):
        vec = representation(states, kind)
        if vectors is None:
            vectors = np.zeros((len(sequences), vec.shape[1]), dtype=np.float32)
        vectors[part] = vec
        for i, c in zip(part, top_concepts(states.known)):
            concepts[i] = c
    return (vectors if vectors is not None else np.zeros((0, 0), np.float32)), concepts


_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@torch.inference_mode()
def model_fingerprint(lm) -> str:
    """A SHA-256 (hex) identifying the model's weights, whatever its precision or quantization:
    its architecture, and 4096 evenly spaced values in fp32 of each parameter that is never
    quantized or offloaded (token embedding / LM head, final norm, concept heads). Cached per model."""
    if lm.model in _FINGERPRINTS:
        return _FINGERPRINTS[lm.model]
    cfg = lm.config
    h = hashlib.sha256(json.dumps([cfg.n_layers, cfg.n_embd, cfg.vocab_size, cfg.diff_block_size]).encode())
    for name, p in sorted(lm.model.named_parameters()):
        if name.startswith("transformer.") and not (name.endswith("tok_emb.weight") or name.startswith("transformer.ln_f")):
            continue
        flat = p.detach().reshape(-1)
        sample = flat[torch.linspace(0, flat.numel() - 1, min(4096, flat.numel())).long()]
        h.update(f"{name}{tuple(p.shape)}".encode())
        h.update(sample.float().cpu().numpy().tobytes())
    _FINGERPRINTS[lm.model] = h.hexdigest()
    return _FINGERPRINTS[lm.model]


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


def retrieve(lm, index: TrainingIndex, attribution, spans: Sequence[tuple[int, int]] | None = None,
             k: int = 5) -> list[SpanNeighbours]:
    """The ``k`` nearest training chunks of spans of a generation, each with similarity, source
    and the known concepts they share with the span.

    Args:
        lm: the model that generated (and built the index).
        index: an opened :class:`TrainingIndex`.
        attribution: the generation's :class:`~steerling_lite.ConceptAttribution` (``explain``).
        spans: ``(start, end)`` generated-token indices, end exclusive; default the chunks of
            :meth:`ConceptAttribution.chunks` (the output split at ``<|endofchunk|>``).
        k: neighbours per span.

    Raises:
        RetrievalError: a span outside the output or without text, ``k < 1``, another model.
    """
    if spans is None:
        spans = [(c.start - attribution.prompt_len, c.end - attribution.prompt_len) for c in attribution.chunks()]
    spans = [(int(s), int(e)) for s, e in spans]
    queries = [span_ids(attribution, s, e) for s, e in spans]
    found = index.search_ids(lm, queries, k, attribution.catalog)
    return [SpanNeighbours(s, e, f.text, f.concepts, f.neighbours) for (s, e), f in zip(spans, found)]


def index_summary(path: str | Path) -> dict[str, Any]:
    """The manifest of an index (sizes checked, not CRCs): for ``index info``."""
    return store.read_manifest(Path(path), verify=False)
