"""Text embeddings from Steerling's hidden and concept-decomposed states.

One full (block-causal) forward pass over the text's tokens, no masks, then
(reference ``steerling==0.2.0`` ``SteerlingGenerator.get_embeddings``):

- ``hidden``: the final hidden states (after ln_f);
- ``composed``: ``known + discovered + epsilon``, what the LM head reads (equal to hidden
  up to rounding);
- ``known``: the known-concept features ``Σ w_c E_k[c]`` (top-k);
- ``discovered`` (the reference's ``unknown``): the discovered-concept features ``Σ w_u E_u[u]``;

pooled over the tokens by ``mean``, ``last``, ``first`` or ``none`` (every token).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from ..errors import ConceptError, require_interpretable
from ..model.concept_heads import decompose

EmbeddingKind = Literal["hidden", "composed", "known", "discovered"]
Pooling = Literal["mean", "last", "first", "none"]
KINDS = ("hidden", "composed", "known", "discovered")
POOLINGS = ("mean", "last", "first", "none")


def _kind(kind: str) -> str:
    k = "discovered" if kind == "unknown" else kind
    if k not in KINDS:
        raise ConceptError(f"embedding kind {kind!r}: expected one of {', '.join(KINDS)} ('unknown' = discovered)")
    return k


def pool(states: Tensor, pooling: str) -> Tensor:
    """Pool ``(T, D)`` states: ``mean`` / ``last`` / ``first`` -> ``(D,)``, ``none`` -> ``(T, D)``.

    Raises:
        ConceptError: an unknown pooling.
    """
    if pooling == "mean":
        return states.mean(dim=0)
    if pooling == "last":
        return states[-1]
    if pooling == "first":
        return states[0]
    if pooling == "none":
        return states
    raise ConceptError(f"pooling {pooling!r}: expected one of {', '.join(POOLINGS)}")


def _ids(lm, text: str | Sequence[int]) -> list[int]:
    ids = lm.tokenizer.encode(text) if isinstance(text, str) else [int(i) for i in text]
    if not ids:
        raise ConceptError("nothing to embed: the text is empty")
    if len(ids) > lm.config.block_size:
        raise ConceptError(f"the text is {len(ids)} tokens; the model's context is {lm.config.block_size}")
    vocab = lm.config.vocab_size
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise ConceptError(f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})")
    return ids


@torch.inference_mode()
def embed_all(lm, text: str | Sequence[int], pooling: str = "mean") -> dict[str, Tensor]:
    """Every embedding kind of one text (token ids are used as they are), from one forward pass.

    Returns:
        ``{kind: tensor}`` fp32 on the model's device, ``(D,)`` or ``(T, D)`` for ``none``;
        only ``hidden`` and ``composed`` for a model without concept heads.

    Raises:
        ConceptError: empty or too long text, unknown pooling.
    """
    if pooling not in POOLINGS:
        raise ConceptError(f"pooling {pooling!r}: expected one of {', '.join(POOLINGS)}")
    model = lm.model
    ids = torch.tensor([_ids(lm, text)], dtype=torch.long, device=model.lm_head_weight.device)
    hidden = model.transformer(ids)[0]  # (T, D)
    out = {"hidden": hidden, "composed": hidden}
    if model.known_head is not None:
        d = decompose(hidden, model.known_head, model.unknown_head, lm.config.concept.use_epsilon_correction)
        out["composed"] = d.composed
        out["known"] = d.known.features
        if d.unknown is not None:
            out["discovered"] = d.unknown.features
    return {k: pool(v.float(), pooling) for k, v in out.items()}


def embed(lm, text: str | Sequence[int] | Sequence[str], kind: str = "composed", pooling: str = "mean") -> Tensor:
    """Embedding of ``text`` (a string, token ids, or a list of strings embedded one by one).

    Args:
        lm: the loaded :class:`~steerling_lite.Steerling`.
        text: the input; strings are encoded without BOS/EOS (as the reference does).
        kind: ``hidden``, ``composed``, ``known`` or ``discovered`` (``unknown``).
        pooling: ``mean``, ``last``, ``first`` or ``none``.

    Returns:
        fp32 on the model's device: ``(D,)`` (``(T, D)`` with ``none``); for a list of
        strings ``(N, D)`` (a list of ``(T_i, D)`` tensors with ``none``).

    Raises:
        ConceptError: an unknown kind or pooling, ``known`` / ``discovered`` on a model without
            concept heads (or without a discovered head), empty or too long text.
    """
    k = _kind(kind)
    if not isinstance(text, str) and len(text) and isinstance(text[0], str):
        parts = [embed(lm, t, k, pooling) for t in text]  # type: ignore[arg-type]
        return parts if pooling == "none" else torch.stack(parts)  # type: ignore[return-value]
    if k in ("known", "discovered"):
        require_interpretable(lm.model, f"the {k} embedding")
    if k == "discovered" and lm.model.unknown_head is None:
        raise ConceptError("discovered embeddings need a discovered-concept head; this checkpoint has none")
    return embed_all(lm, text, pooling)[k]  # type: ignore[arg-type]
