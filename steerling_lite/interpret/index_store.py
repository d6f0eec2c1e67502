"""On-disk layout of a training-data index: a FAISS vector index, chunk text and provenance in SQLite, a manifest.

An index is a directory::

    manifest.json    format, model fingerprint, representation, whitening, index type,
                     counts, and the size and CRC-32 of each file below
    vectors.faiss    faiss.write_index of an IndexPreTransform: whitening, L2 normalization,
                     then IndexFlatIP (exact) or IndexHNSWFlat (inner product), ids = chunk ids
    chunks.sqlite    tables ``sources`` (file, SHA-256, sizes) and ``chunks`` (id, source,
                     line, byte range, token count, text, top known concepts)

Vectors are whitened (the corpus mean removed, then scaled to unit variance along each
principal direction, with shrinkage: eigenvalues ``λ + shrink · mean(λ)``; Su et al. 2021,
"Whitening sentence representations for better semantics and faster retrieval") and
L2-normalized, so the inner product is the cosine similarity of whitened vectors.
Without whitening the mean-pooled states of all chunks point nearly the same way and a
query's nearest neighbours are decided by a few dominant directions (BENCHMARKS.md,
"Training-data retrieval", has the recall figures with and without).

Exact search (``IndexFlatIP``) is used up to :data:`EXACT_MAX_WORK` multiply-adds per query
(``chunks x dim``); past it HNSW (``M = 32``, ``efSearch = 128``), whose query time grows
with ``log(chunks)``; both accept vectors added later (``index add``).
"""

from __future__ import annotations

import json
import sqlite3
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_text_atomic
from ..errors import RetrievalError

FORMAT = "steerling-lite-index"
FORMAT_VERSION = 1
MANIFEST, VECTORS, CHUNKS_DB = "manifest.json", "vectors.faiss", "chunks.sqlite"
# Exact search up to 2^27 multiply-adds per query: about 1M chunks of a 128-dim model
# (the default model's whole WordNet corpus is 0.2M), 33k chunks of Steerling-8B's 4096.
EXACT_MAX_WORK = 2**27
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, 128
SHRINK = 0.01

SCHEMA = """
CREATE TABLE IF NOT EXISTS sources (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL, sha256 TEXT NOT NULL UNIQUE,
    bytes INTEGER NOT NULL, documents INTEGER NOT NULL, complete INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY, source_id INTEGER NOT NULL REFERENCES sources(id), line INTEGER NOT NULL,
    start INTEGER NOT NULL, end INTEGER NOT NULL, n_tokens INTEGER NOT NULL, text TEXT NOT NULL,
    concepts TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_by_source ON chunks(source_id);
"""


def faiss():
    """The ``faiss`` module (package ``faiss-cpu``), imported on first use."""
    import faiss as _faiss

    return _faiss


# ---- whitening and the FAISS index ------------------------------------------------------------
def fit_whitening(x: np.ndarray, shrink: float = SHRINK) -> tuple[np.ndarray, np.ndarray]:
    """Shrinkage ZCA whitening fitted on ``x`` ``(N, d)``: ``(A, b)`` with ``y = x Aᵀ + b``.

    ``A = V diag((λ + shrink · mean λ)^-1/2) Vᵀ`` from the eigendecomposition ``V diag(λ) Vᵀ`` of
    the covariance (computed in float64), ``b = -A μ``; ``A`` ``(d, d)`` and ``b`` ``(d,)`` float32.
    One vector, or identical vectors, give the identity scaled by ``shrink``'s floor.
    """
    x64 = np.asarray(x, dtype=np.float64)
    mu = x64.mean(0)
    xc = x64 - mu
    lam, vecs = np.linalg.eigh(xc.T @ xc / len(x64))
    lam = lam.clip(min=0.0)
    lam = lam + shrink * lam.mean() + 1e-12
    a = (vecs / np.sqrt(lam)) @ vecs.T
    return a.astype(np.float32), (-a @ mu).astype(np.float32)


def use_exact(n_chunks: int, dim: int) -> bool:
    """Whether ``n_chunks`` vectors of ``dim`` are searched exactly (see :data:`EXACT_MAX_WORK`)."""
    return n_chunks * dim <= EXACT_MAX_WORK


def new_index(train: np.ndarray, n_chunks: int, shrink: float = SHRINK, exact: bool | None = None):
    """An empty ``IndexPreTransform``: whitening fitted on ``train`` ``(N, d)`` float32, L2
    normalization, then flat (``exact``; default :func:`use_exact` of ``n_chunks``) or HNSW
    inner product."""
    f = faiss()
    d = train.shape[1]
    a, b = fit_whitening(train, shrink)
    lt = f.LinearTransform(d, d, True)
    f.copy_array_to_vector(a.ravel(), lt.A)
    f.copy_array_to_vector(b, lt.b)
    lt.is_trained = True
    inner = f.IndexFlatIP(d) if (use_exact(n_chunks, d) if exact is None else exact) else _hnsw(d)
    index = f.IndexPreTransform(inner)
    index.prepend_transform(f.NormalizationTransform(d, 2.0))
    index.prepend_transform(lt)
    return f.deserialize_index(f.serialize_index(index))  # one object that owns its parts


def _hnsw(d: int):
    f = faiss()
    inner = f.IndexHNSWFlat(d, HNSW_M, f.METRIC_INNER_PRODUCT)
    inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    inner.hnsw.efSearch = HNSW_EF_SEARCH
    return inner


def index_type(index) -> str:
    """``flat`` or ``hnsw``: the search structure inside an index made by :func:`new_index`."""
    return "hnsw" if isinstance(faiss().downcast_index(index.index), faiss().IndexHNSWFlat) else "flat"


def add_vectors(index, vectors: np.ndarray):
    """Add ``vectors`` ``(N, d)`` (raw representations; ids continue from ``ntotal``); a flat
    index that grows past :func:`use_exact` is rebuilt as HNSW first. Returns the index."""
    f = faiss()
    d = index.d
    if index_type(index) == "flat" and not use_exact(index.ntotal + len(vectors), d):
        flat = f.downcast_index(index.index)
        stored = flat.reconstruct_n(0, flat.ntotal) if flat.ntotal else np.zeros((0, d), np.float32)
        hnsw = _hnsw(d)
        if len(stored):
            hnsw.add(stored)
        chain = [index.chain.at(i) for i in range(index.chain.size())]
        rebuilt = f.IndexPreTransform(hnsw)
        for vt in reversed(chain):
            rebuilt.prepend_transform(vt)
        index = f.deserialize_index(f.serialize_index(rebuilt))
    if len(vectors):
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


# ---- files -------------------------------------------------------------------------------------
def file_crc32(path: Path) -> int:
    """CRC-32 of a file, read in 1 MiB pieces."""
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            crc = zlib.crc32(block, crc)
    return crc


def file_record(path: Path) -> dict[str, int]:
    """``{"bytes": size, "crc32": crc}`` of a file, as the manifest keeps it."""
    return {"bytes": path.stat().st_size, "crc32": file_crc32(path)}


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` with the size and CRC-32 of the vector and chunk files added."""
    manifest = dict(manifest, format=FORMAT, format_version=FORMAT_VERSION,
                    files={name: file_record(directory / name) for name in (VECTORS, CHUNKS_DB)})
    write_text_atomic(directory / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def read_manifest(directory: Path, verify: bool = True) -> dict[str, Any]:
    """The manifest of the index in ``directory``, after checking its files.

    Args:
        verify: also compare each file's CRC-32 with the manifest (reads the files once);
            sizes are always compared.

    Raises:
        RetrievalError: not an index, an unreadable or foreign manifest, a missing file, one
            whose size (truncated) or CRC-32 (corrupt) differs from the manifest.
    """
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir() or not path.is_file():
        raise RetrievalError(f"{directory}: not a steerling-lite index (no {MANIFEST}); "
                             "build one with `steerling-lite index build`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RetrievalError(f"{path}: corrupt index manifest ({exc}); rebuild the index") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise RetrievalError(f"{path}: not a steerling-lite index manifest; rebuild the index")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise RetrievalError(f"{path}: index format version {manifest.get('format_version')!r}; this "
                             f"steerling-lite reads version {FORMAT_VERSION}: rebuild the index")
    for name in (VECTORS, CHUNKS_DB):
        want = (manifest.get("files") or {}).get(name)
        f = directory / name
        if not isinstance(want, dict) or not f.is_file():
            raise RetrievalError(f"{f}: missing from the index; rebuild it")
        size = f.stat().st_size
        if size != want.get("bytes"):
            raise RetrievalError(f"{f}: truncated or altered ({size} bytes; the manifest says {want.get('bytes')}); "
                                 "rebuild the index")
        if verify and file_crc32(f) != want.get("crc32"):
            raise RetrievalError(f"{f}: corrupt (CRC-32 differs from the manifest); rebuild the index")
    return manifest


def read_vectors(directory: Path):
    """``faiss.read_index`` of ``vectors.faiss``.

    Raises:
        RetrievalError: FAISS cannot read it.
    """
    path = Path(directory) / VECTORS
    try:
        index = faiss().read_index(str(path))
    except RuntimeError as exc:
        raise RetrievalError(f"{path}: corrupt vector index ({str(exc).splitlines()[0][:120]}); rebuild it") from None
    if index_type(index) == "hnsw":
        faiss().downcast_index(index.index).hnsw.efSearch = HNSW_EF_SEARCH
    return index


def connect(path: Path, read_only: bool = False) -> sqlite3.Connection:
    """An SQLite connection to a chunk database (schema created when writable).

    Raises:
        RetrievalError: the file is not an SQLite database of chunks.
    """
    try:
        if read_only:
            db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
            db.execute("SELECT id, source_id, line, start, end, n_tokens, text, concepts FROM chunks LIMIT 1")
            db.execute("SELECT id, path, sha256 FROM sources LIMIT 1")
        else:
            db = sqlite3.connect(path)
            db.executescript(SCHEMA)
    except sqlite3.DatabaseError as exc:
        raise RetrievalError(f"{path}: corrupt chunk database ({exc}); rebuild the index") from None
    return db
