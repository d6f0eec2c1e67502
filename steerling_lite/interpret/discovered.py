"""Discovered concepts a person can read: the tokens each promotes and the training chunks that activate it.

Steerling's discovered concepts have no names (the published labels file names the known
ones), yet on the default model they carry about three quarters of the logit mass. Each is
described two ways, as features of sparse autoencoders are (Bricken et al. 2023, "Towards
Monosemanticity"; Neuronpedia's feature pages):

- **top tokens**: the vocabulary it promotes most in the loaded weights, the largest
  ``E_u[c] · W_lm[t]``, scored ``(E_u[c] / |E_u[c]|) · W_lm[t]`` as ``concepts show`` scores
  them (:func:`~steerling_lite.model.concept_heads.top_promoted_tokens`). Cheap (one product of
  the concept vectors with the LM head) and always available; the first three distinct words make
  the display label ``discovered #3 "dog, cat, horse"`` that the catalog
  (:meth:`~steerling_lite.interpret.concepts.ConceptCatalog.label`) gives every display;
- **top-activating chunks**: the chunks of a training-data index
  (:mod:`~steerling_lite.interpret.retrieval`) in which some token gives the concept its
  largest weight. Each chunk's text is tokenized and run through the model alone, as the
  index embeds it, and the concept's weight at a token is what its features use (``sigmoid``
  of the detector logit when the feature top-k selects it, else 0;
  :meth:`~steerling_lite.model.concept_heads._ConceptHead.feature_weights`). A chunk's
  activation is the largest weight over its tokens (the peak token is kept). One pass over
  the chunks keeps the top N per concept: each batch's maxima are merged with the N kept so
  far by one ``topk`` per batch (a vectorised heap); ``limit`` caps the pass at the first
  chunks of a big corpus.

Both are cached per model in ``<data dir>/discovered/<fingerprint[:16]>.json`` (the
fingerprint the index uses, :func:`~steerling_lite.interpret.representation.model_fingerprint`),
written atomically; the chunks are kept with the index they came from (path, chunk count,
build time) and the ``limit``, and recomputed when any differs. A corrupt or unreadable
cache is rebuilt with a one-line warning; one that cannot be written is kept in memory.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..atomic import write_text_atomic
from ..errors import ConceptError, RetrievalError, require_interpretable
from ..model.concept_heads import top_promoted_tokens
from .concept_tokens import TokenScore
from .concepts import discovered_label
from .representation import length_batches, model_fingerprint

FORMAT, VERSION = "steerling-lite.discovered", 1
TOP_TOKENS = 10  # tokens kept per concept
LABEL_TOKENS = 3  # distinct words in the display label
TOP_CHUNKS = 5  # chunks kept per concept by default
MAX_BATCH_WEIGHTS = 2**24  # per-token weights held at once in the chunk pass (64 MiB fp32)

#: ``progress(chunks_done, chunks_total)`` of the pass over an index's chunks (first with 0 done).
ChunkProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class ActivatingChunk:
    """A training chunk that activates a discovered concept.

    Attributes:
        chunk_id: its id in the index.
        activation: the concept's largest weight over the chunk's tokens, in (0, 1].
        peak: the text of the token where it is largest.
        text: the chunk's text.
        source, line: its corpus file and 1-based line.
    """

    chunk_id: int
    activation: float
    peak: str
    text: str
    source: str
    line: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DiscoveredDescription:
    """What a discovered concept does.

    Attributes:
        concept_id: its id in the discovered head.
        label: the display label, ``discovered #3 "dog, cat, horse"``.
        summary: the words of the label, ``dog, cat, horse`` (empty when no token has text).
        top_tokens: the tokens it promotes most (the largest ``E_u[c] · W_lm[t]``, scored
            ``(E_u[c] / |E_u[c]|) · W_lm[t]`` in logit units as :func:`concept_top_tokens` does), highest first.
        top_chunks: the training chunks it is most active in, highest first; None without an index.
    """

    concept_id: int
    label: str
    summary: str
    top_tokens: tuple[TokenScore, ...]
    top_chunks: tuple[ActivatingChunk, ...] | None

    def to_dict(self) -> dict[str, Any]:
        return {"concept_id": self.concept_id, "head": "discovered", "label": self.label, "summary": self.summary,
                "top_tokens": [t.to_dict() for t in self.top_tokens],
                "top_chunks": None if self.top_chunks is None else [c.to_dict() for c in self.top_chunks]}


def summary_words(texts: Sequence[str], n: int = LABEL_TOKENS) -> list[str]:
    """The first ``n`` distinct words of token texts (stripped, compared without case; blank
    and partial-character tokens skipped): ``[" dog", "Dog", " cat"] -> ["dog", "cat"]``."""
    out: list[str] = []
    seen: set[str] = set()
    for t in texts:
        w = t.strip()
        if w and "\ufffd" not in w and w.lower() not in seen:
            seen.add(w.lower())
            out.append(w)
        if len(out) == n:
            break
    return out


# ---- the chunk pass -------------------------------------------------------------------------------
@torch.inference_mode()
def chunk_activations(lm, ids: Tensor) -> tuple[Tensor, Tensor]:
    """Per chunk of ``ids`` ``(B, T)`` (long, each run alone from position 0): every discovered
    concept's largest weight over the T tokens and the token where it is, ``(B, C)`` fp32 and
    ``(B, C)`` long, on the CPU."""
    model = lm.model
    hidden = model.transformer(ids.to(model.input_device))
    b, t, d = hidden.shape
    weights = model.unknown_head.feature_weights(hidden.reshape(b * t, d)).reshape(b, t, -1)
    peak = weights.max(dim=1)
    return peak.values.float().cpu(), peak.indices.cpu()


def top_activating_chunks(lm, batches, top_n: int = TOP_CHUNKS, total: int | None = None,
                          progress: ChunkProgress | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The ``top_n`` chunks of highest activation of every discovered concept, in one pass.

    Args:
        lm: the loaded :class:`~steerling_lite.Steerling`.
        batches: an iterable of lists of ``(chunk id, token ids)`` (each 1..context tokens).
        top_n: chunks kept per concept.
        total: chunks in all (for ``progress``).
        progress: see :data:`ChunkProgress`.

    Returns:
        ``(activation, chunk_ids, peak_token)``, each ``(C, n)`` (fp32, long, long; ``n <= top_n``),
        highest activation first; entries of activation 0 (never selected) have chunk id -1.
    """
    n_concepts = lm.model.unknown_head.n_concepts
    best_v = torch.zeros(n_concepts, 0)
    best_id = torch.zeros(n_concepts, 0, dtype=torch.long)
    best_pos = torch.zeros(n_concepts, 0, dtype=torch.long)
    done = 0
    if progress is not None:
        progress(0, total if total is not None else 0)
    for rows in batches:
        seqs = [toks for _, toks in rows]
        chunk_ids = torch.tensor([cid for cid, _ in rows], dtype=torch.long)
        longest = max((len(s) for s in seqs), default=1)
        size = max(1, MAX_BATCH_WEIGHTS // (longest * n_concepts))
        for part, ids in length_batches(seqs, lm.config.block_size, size):
            v, pos = chunk_activations(lm, ids)
            cand_v = torch.cat([best_v, v.t()], dim=1)
            cand_id = torch.cat([best_id, chunk_ids[part].expand(n_concepts, -1)], dim=1)
            cand_pos = torch.cat([best_pos, pos.t()], dim=1)
            top = cand_v.topk(min(top_n, cand_v.shape[1]), dim=1)
            best_v, best_id, best_pos = top.values, cand_id.gather(1, top.indices), cand_pos.gather(1, top.indices)
        done += len(rows)
        if progress is not None:
            progress(done, total if total is not None else done)
    best_id = best_id.masked_fill(best_v <= 0, -1)
    return best_v, best_id, best_pos


# ---- descriptions and their cache ------------------------------------------------------------------
def cache_dir() -> Path:
    """``<data dir>/discovered`` (``$STEERLING_LITE_HOME`` overrides the data dir)."""
    from ..loading.default_model import data_dir

    return data_dir() / "discovered"


class DiscoveredConcepts:
    """Descriptions of one loaded model's discovered concepts, computed on first use and cached.

    The shared instance of a loaded model is :meth:`Steerling.discovered_concepts`; another
    instance reads the same cache file (thread-safe).

    Args:
        lm: a loaded :class:`~steerling_lite.Steerling` with a discovered head.
        directory: where the cache lives (default :func:`cache_dir`).

    Raises:
        ConceptError: the model has no concept heads or no discovered head.
    """

    def __init__(self, lm, directory: str | Path | None = None):
        require_interpretable(lm.model, "describing discovered concepts")
        if lm.model.unknown_head is None:
            raise ConceptError("this model has no discovered-concept head")
        self.lm = lm
        self.n_concepts: int = lm.model.unknown_head.n_concepts
        self.fingerprint = model_fingerprint(lm)
        self.path = Path(directory if directory is not None else cache_dir()) / f"{self.fingerprint[:16]}.json"
        self._lock = threading.RLock()
        self._data: dict[str, Any] | None = None
        self._warned_write = False
        self._summaries: dict[int, str | None] = {}

    # ---- top tokens -----------------------------------------------------------------------------
    def top_tokens(self, concept_id: int, k: int = TOP_TOKENS) -> list[TokenScore]:
        """The ``k`` tokens concept ``concept_id`` promotes most (the whole head is computed and
        cached on first use).

        Raises:
            ConceptError: an id out of range.
        """
        cid = self.check_id(concept_id)
        tok = self._tokens(k)
        text = self.lm.tokenizer.token_text
        return [TokenScore(t, text(t), s) for t, s in zip(tok["ids"][cid][:k], tok["scores"][cid][:k])]

    def summary(self, concept_id: int) -> str | None:
        """``"dog, cat, horse"``: the first distinct words of the concept's top tokens; None for an
        id outside the head (what :meth:`ConceptCatalog.label` shows)."""
        cid = int(concept_id)
        if not 0 <= cid < self.n_concepts:
            return None
        if cid not in self._summaries:
            self._summaries[cid] = ", ".join(summary_words([t.text for t in self.top_tokens(cid)])) or None
        return self._summaries[cid]

    def label(self, concept_id: int) -> str:
        """``discovered #3 "dog, cat, horse"``."""
        return discovered_label(int(concept_id), self.summary(concept_id))

    def _tokens(self, k: int) -> dict[str, Any]:
        with self._lock:
            data = self._load()
            tok = data.get("tokens")
            if tok is None or tok["k"] < k:
                tok = self._compute_tokens(max(k, TOP_TOKENS))
                data["tokens"] = tok
                self._save()
            return tok

    def _compute_tokens(self, k: int) -> dict[str, Any]:
        lm = self.lm
        tokenizer = lm.tokenizer
        n_rows = lm.model.lm_head_weight.shape[0]
        exclude = torch.tensor([i for i in range(n_rows) if i >= lm.config.vocab_size or i in tokenizer.special_ids
                                or not tokenizer.is_text_token(i)], dtype=torch.long)
        scores, ids = top_promoted_tokens(lm.model, lm.model.unknown_head, k, exclude=exclude)
        return {"k": k, "ids": ids.tolist(), "scores": [[round(s, 5) for s in row] for row in scores.tolist()]}

    # ---- top-activating chunks -------------------------------------------------------------------
    def top_chunks(self, concept_id: int, index: str | Path, top_n: int = TOP_CHUNKS, limit: int | None = None,
                   progress: ChunkProgress | None = None) -> list[ActivatingChunk]:
        """The ``top_n`` chunks of the index at ``index`` in which concept ``concept_id`` is most
        active (one pass over the index's first ``limit`` chunks, default all, for every concept
        at once, cached).

        Raises:
            ConceptError: an id out of range; RetrievalError: a missing, corrupt or foreign index,
                ``top_n`` or ``limit`` below 1.
        """
        cid = self.check_id(concept_id)
        chunks = self._chunks(index, top_n, limit, progress)
        return [ActivatingChunk(**row) for row in chunks["concepts"][cid][:top_n]]

    def _chunks(self, index: str | Path, top_n: int, limit: int | None, progress) -> dict[str, Any]:
        from . import index_store as store
        from .retrieval import TrainingIndex, check_model

        if top_n < 1:
            raise RetrievalError(f"top chunks {top_n}: expected at least 1")
        if limit is not None and limit < 1:
            raise RetrievalError(f"--limit {limit}: expected at least 1 chunk")
        index = Path(index)
        with self._lock:
            m = store.read_manifest(index, verify=False)
            check_model(index, m, self.lm)
            key = {"index": str(index.resolve()), "n_chunks": m.get("n_chunks"),
                   "built": m.get("updated") or m.get("created"), "limit": limit}
            data = self._load()
            have = data.get("chunks")
            if have is not None and have["key"] == key and have["top_n"] >= top_n:
                return have
            with TrainingIndex.open(index, self.lm) as idx:
                data["chunks"] = self._compute_chunks(idx, key, top_n, limit, progress)
            self._save()
            return data["chunks"]

    def _compute_chunks(self, idx, key: dict[str, Any], top_n: int, limit: int | None, progress) -> dict[str, Any]:
        lm = self.lm
        ctx = lm.config.block_size

        def batches():
            for rows in idx.iter_texts(limit):
                yield [(cid, toks[:ctx]) for cid, text in rows if (toks := lm.tokenizer.encode(text))]

        total = idx.n_chunks if limit is None else min(limit, idx.n_chunks)
        act, ids, pos = top_activating_chunks(lm, batches(), top_n, total, progress)
        rows = idx.rows([i for i in ids.flatten().tolist() if i >= 0])
        concepts = []
        for c in range(self.n_concepts):
            kept = []
            for a, i, p in zip(act[c].tolist(), ids[c].tolist(), pos[c].tolist()):
                if i < 0:
                    continue
                r = rows[i]
                toks = lm.tokenizer.encode(r["text"])[:ctx]
                kept.append({"chunk_id": i, "activation": round(a, 5), "peak": lm.tokenizer.token_text(toks[p]),
                             "text": r["text"], "source": Path(r["path"]).name, "line": r["line"]})
            concepts.append(kept)
        return {"key": key, "top_n": top_n, "concepts": concepts}

    # ---- everything -------------------------------------------------------------------------------
    def describe(self, concept_id: int, index: str | Path | None = None, top_tokens: int = TOP_TOKENS,
                 top_chunks: int = TOP_CHUNKS, limit: int | None = None,
                 progress: ChunkProgress | None = None) -> DiscoveredDescription:
        """Concept ``concept_id``'s label, top tokens and (with ``index``) top-activating chunks.

        Raises:
            ConceptError, RetrievalError: see :meth:`top_tokens` and :meth:`top_chunks`.
        """
        cid = self.check_id(concept_id)
        chunks = None
        if index is not None and top_chunks > 0:
            chunks = tuple(self.top_chunks(cid, index, top_chunks, limit, progress))
        summary = self.summary(cid) or ""
        return DiscoveredDescription(cid, discovered_label(cid, summary), summary,
                                     tuple(self.top_tokens(cid, top_tokens)), chunks)

    def check_id(self, concept_id: int) -> int:
        """``concept_id`` as an int.

        Raises:
            ConceptError: outside the discovered head.
        """
        cid = int(concept_id)
        if not 0 <= cid < self.n_concepts:
            raise ConceptError(f"discovered concept id {cid} is out of range (0..{self.n_concepts - 1})")
        return cid

    # ---- the cache file ----------------------------------------------------------------------------
    def _empty(self) -> dict[str, Any]:
        name = self.lm.path.name if self.lm.path is not None else None
        return {"format": FORMAT, "version": VERSION, "fingerprint": self.fingerprint, "model": name,
                "n_concepts": self.n_concepts}

    def _load(self) -> dict[str, Any]:
        """The cache (read once): a missing file, or another model's, gives an empty one; a corrupt
        one is rebuilt with a one-line warning."""
        if self._data is not None:
            return self._data
        data = self._empty()
        try:
            raw = self.path.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            raw = None
        except (OSError, UnicodeDecodeError) as exc:
            _warn(f"{self.path}: unreadable discovered-concept cache ({exc}); rebuilding it")
            raw = None
        if raw is not None:
            try:
                loaded = json.loads(raw)
                problem = _check_cache(loaded, self.fingerprint, self.n_concepts)
            except ValueError as exc:
                problem = f"not JSON ({exc})"
            if problem:
                _warn(f"{self.path}: corrupt discovered-concept cache ({problem}); rebuilding it")
            elif loaded["fingerprint"] == self.fingerprint:
                data = loaded
        self._data = data
        return data

    def _save(self) -> None:
        try:
            write_text_atomic(self.path, json.dumps(self._data, ensure_ascii=False) + "\n")
        except OSError as exc:
            if not self._warned_write:
                _warn(f"{self.path}: cannot save the discovered-concept cache ({exc.strerror or exc}); "
                      "keeping it in memory")
                self._warned_write = True


def _warn(message: str) -> None:
    print(f"steerling-lite: {' '.join(message.split())}", file=sys.stderr)


def _check_cache(data: Any, fingerprint: str, n_concepts: int) -> str | None:
    """What is wrong with a loaded cache (None: nothing). Another model's cache (a file-name
    prefix collision) is not wrong: it is ignored, then replaced."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return "not a steerling-lite discovered-concept cache"
    if data.get("version") != VERSION:
        return f"version {data.get('version')!r}, expected {VERSION}"
    if not isinstance(data.get("fingerprint"), str):
        return "no model fingerprint"
    if data["fingerprint"] != fingerprint:
        return None
    tok = data.get("tokens")
    if tok is not None:
        ok = (isinstance(tok, dict) and isinstance(tok.get("k"), int) and _table(tok.get("ids"), n_concepts, int)
              and _table(tok.get("scores"), n_concepts, (int, float))
              and all(len(r) >= tok["k"] for r in tok["ids"]) and all(len(r) >= tok["k"] for r in tok["scores"]))
        if not ok:
            return "bad top tokens"
    ch = data.get("chunks")
    if ch is not None:
        fields = {"chunk_id": int, "activation": (int, float), "peak": str, "text": str, "source": str, "line": int}
        ok = (isinstance(ch, dict) and isinstance(ch.get("key"), dict) and isinstance(ch.get("top_n"), int)
              and _table(ch.get("concepts"), n_concepts, dict)
              and all(set(r) == set(fields) and all(isinstance(r[f], t) for f, t in fields.items())
                      for rows in ch["concepts"] for r in rows))
        if not ok:
            return "bad top chunks"
    return None


def _table(rows: Any, n: int, kind) -> bool:
    return (isinstance(rows, list) and len(rows) == n
            and all(isinstance(r, list) and all(isinstance(x, kind) and not isinstance(x, bool) for x in r)
                    for r in rows))
