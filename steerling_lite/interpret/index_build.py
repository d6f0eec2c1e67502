"""Building and extending a training-data index: resumable, incremental, and atomic.

:func:`build_index` chunks and embeds corpus files (:mod:`~steerling_lite.interpret.corpus`,
:func:`~steerling_lite.interpret.retrieval.embed_sequences`) into a new index;
:func:`add_to_index` adds files to an existing one (their chunks get the next ids; files
already in it are skipped). Both work in a directory beside the destination,
``.NAME.partial``, holding ``job.json`` (what is being built), ``chunks.sqlite`` (the chunks
so far; for ``add`` a copy of the index's) and ``pending.sqlite`` (their vectors). Every
:data:`WINDOW` chunks are committed in one SQLite transaction across both files, so an
interrupted run (Ctrl-C, a crash, a full disk) loses at most one window: running the same
command again resumes where it stopped (a partial directory of another job is discarded).
When every chunk is embedded, the FAISS index and the manifest are written into the partial
directory, which then replaces the destination by renames: a failed or interrupted build
never leaves a half-written index, and an existing index stays as it was until the new one
is complete.

Every input file is read once before anything is written (it must be UTF-8 and not empty),
so a bad corpus fails without side effects.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path

import numpy as np

from ..errors import RetrievalError
from . import index_store as store
from .corpus import Chunk, CorpusFile, inspect_corpus, iter_chunks
from .representation import DEFAULT_REPRESENTATION, embed_sequences, model_fingerprint
from .retrieval import check_model

WINDOW = 2048  # chunks per transaction: what an interrupted build can lose
PENDING_DB = "pending.sqlite"
JOB = "job.json"

#: ``progress(bytes_done, bytes_total, chunks_done)``: bytes of (decompressed) corpus text chunked
#: and embedded so far, by this run and any run it resumes.
BuildProgress = Callable[[int, int, int], None]


@dataclass(frozen=True)
class BuildReport:
    """What a build or an add did.

    Attributes:
        path: the index directory.
        n_chunks: chunks in the index now.
        new_chunks: chunks this call added (``resumed_chunks`` of them embedded by an earlier,
            interrupted run of the same job).
        skipped: files not added because the index already holds them.
        index_type: ``flat`` (exact) or ``hnsw``.
        seconds: wall time of this call.
    """

    path: Path
    n_chunks: int
    new_chunks: int
    resumed_chunks: int
    skipped: tuple[str, ...]
    index_type: str
    seconds: float


def build_index(lm, corpus: Sequence[str | Path], out: str | Path, *, chunk_tokens: int | None = None,
                representation: str = DEFAULT_REPRESENTATION, replace: bool = False, batch_size: int = 256,
                progress: BuildProgress | None = None) -> BuildReport:
    """Build a new index of ``corpus`` at ``out`` with the loaded model ``lm``.

    Args:
        lm: the :class:`~steerling_lite.Steerling` whose representations are indexed.
        corpus: text files (see :mod:`~steerling_lite.interpret.corpus`).
        out: the index directory to create.
        chunk_tokens: most tokens per chunk (default the model's diffusion block).
        representation: one of :data:`~steerling_lite.interpret.retrieval.REPRESENTATIONS`.
        replace: replace an existing index at ``out`` (only once the new one is complete).
        batch_size: chunks per forward pass.
        progress: see :data:`BuildProgress`.

    Raises:
        RetrievalError: a bad corpus file (missing, not UTF-8, empty), ``out`` exists (without
            ``replace``, or is not an index), bad settings.
    """
    t0 = time.perf_counter()
    out = Path(out)
    chunk_tokens = lm.config.diff_block_size if chunk_tokens is None else int(chunk_tokens)
    if not 1 <= chunk_tokens <= lm.config.block_size:
        raise RetrievalError(f"chunk size {chunk_tokens}: expected 1..{lm.config.block_size} tokens (the context)")
    embed_sequences(lm, [[0]], representation)  # checks the representation against the model
    if out.exists():
        if not (out / store.MANIFEST).is_file():
            raise RetrievalError(f"{out}: exists and is not an index; choose another --out")
        if not replace:
            raise RetrievalError(f"{out}: an index is already there; pass --force to replace it (or use `index add`)")
    if not corpus:
        raise RetrievalError("no corpus files given")
    files = _unique(inspect_corpus(p) for p in corpus)
    job = {"kind": "build", "fingerprint": model_fingerprint(lm), "representation": representation,
           "chunk_tokens": chunk_tokens, "sources": [[str(f.path.resolve()), f.sha256] for f in files]}
    meta = {"model": _model_meta(lm), "representation": representation, "pooling": "mean",
            "whitening": {"method": "zca", "shrink": store.SHRINK}, "chunk_tokens": chunk_tokens,
            "created": _now()}
    return _run(lm, job, meta, files, out, None, batch_size, progress, t0, ())


def add_to_index(lm, index: str | Path, corpus: Sequence[str | Path], *, batch_size: int = 256,
                 progress: BuildProgress | None = None) -> BuildReport:
    """Add ``corpus`` files to the index at ``index`` (built by ``lm``); files it already holds
    (same content) are skipped.

    Raises:
        RetrievalError: the index is missing, corrupt or from another model; a bad corpus
            file, or one the index holds under the same path with other content.
    """
    t0 = time.perf_counter()
    index = Path(index)
    manifest = store.read_manifest(index, verify=True)
    check_model(index, manifest, lm)
    if not corpus:
        raise RetrievalError("no corpus files given")
    files = _unique(inspect_corpus(p) for p in corpus)
    with closing(store.connect(index / store.CHUNKS_DB, read_only=True)) as db:
        have = dict(db.execute("SELECT sha256, path FROM sources WHERE complete = 1").fetchall())
    by_path = {p: sha for sha, p in have.items()}
    for f in files:
        old = by_path.get(str(f.path.resolve()))
        if old is not None and old != f.sha256:
            raise RetrievalError(f"{f.path}: changed since it was indexed (other content under the same path); "
                                 "rebuild with `steerling-lite index build --force`")
    skipped = tuple(str(f.path) for f in files if f.sha256 in have)
    files = [f for f in files if f.sha256 not in have]
    if not files:
        return BuildReport(index, int(manifest["n_chunks"]), 0, 0, skipped, manifest["index_type"],
                           time.perf_counter() - t0)
    job = {"kind": "add", "base": manifest["files"], "fingerprint": manifest["model"]["fingerprint"],
           "sources": [[str(f.path.resolve()), f.sha256] for f in files]}
    meta = {k: v for k, v in manifest.items() if k not in ("files", "format", "format_version")}
    meta["updated"] = _now()
    return _run(lm, job, meta, files, index, manifest, batch_size, progress, t0, skipped)


def _run(lm, job, meta, files: list[CorpusFile], out: Path, base, batch_size, progress, t0, skipped) -> BuildReport:
    partial = _partial_dir(out, job, base)
    if not (partial / store.MANIFEST).is_file():
        db = _open_partial(partial)
        try:
            resumed, new = _embed(lm, db, files, meta["representation"], meta["chunk_tokens"], batch_size, progress)
            _finish(partial, db, meta, base, out)
        finally:
            db.close()
    else:  # an earlier run got as far as writing the manifest
        resumed, new = 0, 0
    manifest = store.read_manifest(partial, verify=False)
    _swap(partial, out)
    return BuildReport(out, int(manifest["n_chunks"]), resumed + new, resumed, skipped, manifest["index_type"],
                       time.perf_counter() - t0)


def _unique(files: Iterator[CorpusFile]) -> list[CorpusFile]:
    seen: dict[str, CorpusFile] = {}
    for f in files:
        seen.setdefault(f.sha256, f)
    return list(seen.values())


def _partial_dir(out: Path, job: dict, base: dict | None) -> Path:
    """The work directory of ``job``: resumed when it holds the same job, else made afresh
    (for ``add`` with a copy of the index's chunk database)."""
    partial = out.parent / f".{out.name}.partial"
    try:
        same = json.loads((partial / JOB).read_text(encoding="utf-8")) == job
    except (OSError, ValueError):
        same = False
    if same:
        return partial
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    if base is not None:
        shutil.copyfile(out / store.CHUNKS_DB, partial / store.CHUNKS_DB)
    (partial / JOB).write_text(json.dumps(job), encoding="utf-8")
    return partial


def _open_partial(partial: Path) -> sqlite3.Connection:
    db = store.connect(partial / store.CHUNKS_DB)
    db.execute("ATTACH DATABASE ? AS pending", (str(partial / PENDING_DB),))
    db.execute("CREATE TABLE IF NOT EXISTS pending.vectors (id INTEGER PRIMARY KEY, vector BLOB NOT NULL)")
    db.commit()
    return db


def _embed(lm, db: sqlite3.Connection, files: list[CorpusFile], kind: str, chunk_tokens: int, batch_size: int,
           progress: BuildProgress | None) -> tuple[int, int]:
    """Chunk and embed every file, resuming after the chunks already in ``db``; returns
    ``(chunks found from an earlier run, chunks embedded now)``."""
    total = sum(f.n_bytes for f in files)
    done_bytes = resumed = new = 0
    next_id = db.execute("SELECT COALESCE(MAX(id) + 1, 0) FROM chunks").fetchone()[0]
    for f in files:
        with db:
            db.execute("INSERT OR IGNORE INTO sources (path, sha256, bytes, documents) VALUES (?, ?, ?, ?)",
                       (str(f.path.resolve()), f.sha256, f.n_bytes, f.n_documents))
        source_id, complete = db.execute("SELECT id, complete FROM sources WHERE sha256 = ?", (f.sha256,)).fetchone()
        n_done = db.execute("SELECT COUNT(*) FROM chunks WHERE source_id = ?", (source_id,)).fetchone()[0]
        resumed += n_done
        if not complete:
            chunks = iter_chunks(f.path, lm.tokenizer, chunk_tokens)
            last = db.execute("SELECT MAX(end) FROM chunks WHERE source_id = ?", (source_id,)).fetchone()[0] or 0
            for _ in islice(chunks, n_done):
                pass
            if progress is not None:
                progress(done_bytes + last, total, resumed + new)
            while window := list(islice(chunks, WINDOW)):
                vectors, concepts = embed_sequences(lm, [c.token_ids for c in window], kind, batch_size)
                ids = range(next_id, next_id + len(window))
                with db:
                    db.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                   [_row(i, source_id, c, cs) for i, c, cs in zip(ids, window, concepts)])
                    db.executemany("INSERT INTO pending.vectors VALUES (?, ?)",
                                   [(i, v.tobytes()) for i, v in zip(ids, vectors)])
                next_id += len(window)
                new += len(window)
                if progress is not None:
                    progress(done_bytes + window[-1].end, total, resumed + new)
            with db:
                db.execute("UPDATE sources SET complete = 1 WHERE id = ?", (source_id,))
        done_bytes += f.n_bytes
        if progress is not None:
            progress(done_bytes, total, resumed + new)
    return resumed, new


def _row(chunk_id: int, source_id: int, c: Chunk, concepts) -> tuple:
    return (chunk_id, source_id, c.line, c.start, c.end, len(c.token_ids), c.text, json.dumps(concepts))


def _finish(partial: Path, db: sqlite3.Connection, meta: dict, base: dict | None, out: Path) -> None:
    """Write the FAISS index (the base index plus the pending vectors, or a new one) and the manifest."""
    rows = db.execute("SELECT id, vector FROM pending.vectors ORDER BY id").fetchall()
    first = base["n_chunks"] if base is not None else 0
    if [r[0] for r in rows] != list(range(first, first + len(rows))):
        raise RetrievalError(f"{partial}: the pending vectors do not follow the index's chunks; delete {partial} "
                             "and run the command again")
    vectors = np.stack([np.frombuffer(v, dtype=np.float32) for _, v in rows]) if rows else None
    if base is None:
        if vectors is None:
            raise RetrievalError("the corpus holds no chunks to index")
        index = store.new_index(vectors, len(vectors))
    else:
        index = store.read_vectors(out)
    if vectors is not None:
        index = store.add_vectors(index, vectors)
    store.faiss().write_index(index, str(partial / store.VECTORS))
    n_sources = db.execute("SELECT COUNT(*) FROM sources").fetchone()[0]
    db.execute("DETACH DATABASE pending")
    store.write_manifest(partial, dict(meta, n_chunks=int(index.ntotal), n_sources=n_sources, dim=int(index.d),
                                       index_type=store.index_type(index)))
    (partial / PENDING_DB).unlink(missing_ok=True)


def _swap(partial: Path, out: Path) -> None:
    """Put the finished ``partial`` directory at ``out`` by renames; an old ``out`` is removed
    only after (and restored if the second rename fails)."""
    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    try:
        os.replace(partial, out)
    except BaseException:
        if old.exists() and not out.exists():
            os.replace(old, out)
        raise
    (out / JOB).unlink(missing_ok=True)
    shutil.rmtree(old, ignore_errors=True)


def _model_meta(lm) -> dict:
    cfg = lm.config
    return {"fingerprint": model_fingerprint(lm), "name": lm.path.name if lm.path is not None else None,
            "n_embd": cfg.n_embd, "diff_block_size": cfg.diff_block_size, "vocab_size": cfg.vocab_size,
            "dtype": str(lm.dtype).removeprefix("torch."), "quant": lm.quant}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---- the default model's index ------------------------------------------------------------------
DEFAULT_CORPUS = "training-corpus.txt.xz"


def default_corpus_path() -> Path:
    """The default model's training corpus as shipped in the package (WordNet 3.0 glosses and
    examples, one entry per line, the training split in training order; xz-compressed)."""
    from ..loading.default_model import shipped_model_dir

    return shipped_model_dir() / DEFAULT_CORPUS


def is_default_model(lm) -> bool:
    """Whether ``lm`` was loaded from the shipped default model's directory."""
    from ..loading.default_model import shipped_model_dir

    return lm.path is not None and Path(lm.path).resolve() == shipped_model_dir().resolve()


def default_index_path(lm) -> Path:
    """Where the default model's index lives: ``<data dir>/indexes/<model>-<fingerprint[:12]>``."""
    from ..loading.default_model import DEFAULT_MODEL_NAME, data_dir

    return data_dir() / "indexes" / f"{DEFAULT_MODEL_NAME}-{model_fingerprint(lm)[:12]}"


def ensure_default_index(lm, progress: BuildProgress | None = None) -> Path:
    """The default model's index, built from its shipped corpus on first use (resumed if an
    earlier first use was interrupted).

    Raises:
        RetrievalError: ``lm`` is not the default model, or its corpus is not installed.
    """
    if not is_default_model(lm):
        raise RetrievalError("only the default model has a built-in training corpus; pass --index INDEX "
                             "(build one with `steerling-lite index build --model DIR --corpus FILE --out INDEX`)")
    path = default_index_path(lm)
    corpus = default_corpus_path()
    if not corpus.is_file():
        raise RetrievalError(f"{corpus}: the default model's training corpus is missing (installed without "
                             "package data?); reinstall steerling-lite")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(path.parent / f".{path.name}.lock"):  # a second process waits, then finds it built
        if path.exists():
            try:
                store.read_manifest(path, verify=False)
                return path
            except RetrievalError:  # a damaged copy of our own index: built again below
                shutil.rmtree(path)
        build_index(lm, [corpus], path, progress=progress)
    return path


@contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``lock`` (POSIX ``flock``; none where it is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
