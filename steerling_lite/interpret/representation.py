"""What a training-data index stores: a representation of a token sequence, and the model's fingerprint.

A sequence (a chunk of training text, a span of generated text) is run through the model
alone, from position 0, and each state is averaged over its tokens (:class:`PooledStates`,
reference ``steerling==0.2.0`` ``get_embeddings(pooling="mean")``, batched by length). A
*representation* (:data:`REPRESENTATIONS`) joins some of those means, each L2-normalized;
:mod:`~steerling_lite.interpret.retrieval` says which one is the default and why. The mean
known-concept weights also give each sequence its top known concepts (:func:`top_concepts`),
which explain why two sequences are near.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import RetrievalError
from ..model.concept_heads import decompose

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
    for part, ids in length_batches(sequences, lm.config.block_size, batch_size):
        yield part, pooled_states(lm, ids)


def length_batches(sequences: Sequence[Sequence[int]], max_len: int, batch_size: int
                   ) -> Iterator[tuple[list[int], Tensor]]:
    """Token sequences grouped by length into ``(N, T)`` long batches of at most ``batch_size``
    (nothing is padded): ``(indices into sequences, the batch)`` per batch.

    Raises:
        RetrievalError: an empty sequence or one longer than ``max_len`` (the context).
    """
    by_len: dict[int, list[int]] = {}
    for i, s in enumerate(sequences):
        if not 0 < len(s) <= max_len:
            raise RetrievalError(f"a sequence of {len(s)} tokens: expected 1..{max_len} (the context)")
        by_len.setdefault(len(s), []).append(i)
    for rows in by_len.values():
        for lo in range(0, len(rows), batch_size):
            part = rows[lo:lo + batch_size]
            yield part, torch.tensor([list(sequences[i]) for i in part], dtype=torch.long)


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
