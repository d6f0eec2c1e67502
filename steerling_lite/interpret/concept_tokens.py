"""What a concept does in the loaded weights: the vocabulary it promotes, the concepts a token is aligned with.

Both read the same score, the alignment of a concept's unit vector with a token's LM-head
row, ``(E[c] / |E[c]|) · W_lm[token]`` in logit units (reference ``steerling==0.2.0``
``SteerlingGenerator.concept_top_tokens``): :func:`concept_top_tokens` ranks the
vocabulary for one concept, :func:`concepts_for_token` ranks a head's concepts for one
token. The math is :mod:`steerling_lite.model.concept_heads`' (``lm_alignment``, the
heads' ``alignment``); labels come from the :class:`~steerling_lite.interpret.concepts.ConceptCatalog`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import ConceptError, require_interpretable
from ..model.concept_heads import NORM_EPS, lm_alignment
from .concepts import ConceptCatalog, Head, normalize_head


@dataclass(frozen=True)
class TokenScore:
    """A vocabulary token and its alignment with a concept: ``(E[c] / |E[c]|) · W_lm[token]``, logit units."""

    token_id: int
    text: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ConceptScore:
    """A concept and its alignment with a token (same score as :class:`TokenScore`)."""

    concept_id: int
    head: Head
    label: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _head_module(model, head: Head, what: str):
    """The known or discovered head of ``model``.

    Raises:
        ConceptError: no concept heads, or no discovered head.
    """
    require_interpretable(model, what)
    mod = model.known_head if head == "known" else model.unknown_head
    if mod is None:
        raise ConceptError("this model has no discovered-concept head")
    return mod


def concept_vectors(model, concept_ids: Sequence[int] | Tensor, head: str = "known") -> Tensor:
    """Concept vectors ``E[ids]`` ``(K, D)`` fp32 of the known or discovered head.

    Raises:
        ConceptError: no concept heads / no discovered head, or an id out of range.
    """
    h = normalize_head(head)
    mod = _head_module(model, h, "concept vectors")
    ids = torch.as_tensor(concept_ids, dtype=torch.long, device=model.lm_head_weight.device).reshape(-1)
    bad = ids[(ids < 0) | (ids >= mod.n_concepts)]
    if bad.numel():
        raise ConceptError(f"{h} concept id {int(bad[0])} is out of range (0..{mod.n_concepts - 1})")
    return mod.embedding(ids).float()


def _token_id(lm, token: int | str) -> int:
    vocab = lm.config.vocab_size
    if isinstance(token, str):
        ids = lm.tokenizer.encode_with_specials(token)
        if len(ids) != 1:
            raise ConceptError(f"{token!r} is {len(ids)} tokens ({ids}); give a single token or its id")
        return ids[0]
    t = int(token)
    if not 0 <= t < vocab:
        raise ConceptError(f"token id {t} is outside the vocabulary (0..{vocab - 1})")
    return t


@torch.inference_mode()
def concept_top_tokens(lm, concept_id: int, k: int = 15, head: str = "known") -> list[TokenScore]:
    """The ``k`` vocabulary tokens concept ``concept_id`` most promotes: ``W_lm · E[c] / |E[c]|``
    (reference ``SteerlingGenerator.concept_top_tokens``), highest first.

    Raises:
        ConceptError: no concept heads, or an id out of range.
    """
    v = concept_vectors(lm.model, [concept_id], head)[0]
    scores = lm_alignment(lm.model, v / (v.norm() + NORM_EPS))
    vals, idx = scores.topk(min(k, scores.numel()))
    return [TokenScore(int(i), lm.tokenizer.token_text(int(i)), float(s)) for i, s in zip(idx.tolist(), vals.tolist())]


@torch.inference_mode()
def concepts_for_token(lm, token: int | str, k: int = 10, head: str = "known",
                       catalog: ConceptCatalog | None = None) -> list[ConceptScore]:
    """The ``k`` concepts of ``head`` whose unit vector is most aligned with token ``token``'s LM
    row: ``(E[c] / |E[c]|) · W_lm[token]``, highest first (the score :func:`concept_top_tokens`
    ranks tokens by). ``token`` is an id or the text of one token.

    Raises:
        ConceptError: no concept heads, a text that is not one token, an id out of range.
    """
    h = normalize_head(head)
    mod = _head_module(lm.model, h, "concept lookup")
    tid = _token_id(lm, token)
    scores = mod.alignment(lm.model.lm_head_weight[tid].float().unsqueeze(0))[0]
    vals, idx = scores.topk(min(k, scores.numel()))
    cat = catalog or ConceptCatalog()
    return [ConceptScore(int(i), h, cat.label(int(i), h), float(s)) for i, s in zip(idx.tolist(), vals.tolist())]
