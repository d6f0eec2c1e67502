"""Logit processing, confidence and token sampling for one denoising step, batched over positions.

Every function works on a ``(N, V)`` batch of fp32 logits (the masked positions of
the current block) in one pass: no Python loop or host synchronisation per token.
The arithmetic is the reference's (``steerling==0.2.0``,
``inference/causal_diffusion.py``: ``generate_full``, ``_sample_token``,
``_sample_top_p``), in the same order, so that with the same seed the same tokens
come out; sampling the N selected rows with one ``torch.multinomial`` call draws
the same random numbers as the reference's N sequential calls.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def process_logits(
    logits: Tensor,
    seen_ids: Tensor | None,
    repetition_penalty: float,
    banned: Tensor,
    offset: Tensor | None = None,
) -> Tensor:
    """Apply the reference's logit processing to ``logits`` ``(N, V)`` fp32.

    In order: subtract ``offset`` ``(V,)`` (the concept ReLU mask, if any); repetition
    penalty on the distinct ids ``seen_ids`` ``(S,)`` already in the sequence (positive
    logits ÷ p, negative × p), touching only those S columns; ``-inf`` at ``banned`` ids
    (EOS, mask, pad). ``logits`` is modified in place unless an offset is given.

    Returns:
        the processed ``(N, V)`` fp32 logits.
    """
    if offset is not None:
        logits = logits - offset
    if repetition_penalty != 1.0 and seen_ids is not None and seen_ids.numel():
        values = logits[:, seen_ids]
        logits[:, seen_ids] = torch.where(values > 0, values / repetition_penalty, values * repetition_penalty)
    logits.index_fill_(-1, banned, float("-inf"))
    return logits


def confidence(logits: Tensor) -> Tensor:
    """Max softmax probability per row: ``(N, V)`` logits -> ``(N,)`` fp32 (reference order of ops)."""
    return torch.softmax(logits, dim=-1).amax(dim=-1)


def sorted_prefix(probs: Tensor, top_p: float) -> tuple[Tensor, Tensor, Tensor]:
    """The head of each row of ``probs`` ``(N, V)`` sorted in descending order, long enough to
    hold the whole top-p nucleus: ``(values, indices, cumulative)``, each ``(N, m)``.

    Equal to the first m columns of ``torch.sort(probs, descending=True)`` and its cumsum (the
    CPU cumsum is sequential), but with ``topk`` instead of a full sort of the vocabulary:
    a peaked distribution needs a few hundred entries, not 100k. Grows m until every row's
    cumulative mass passes ``top_p``; falls back to the full sort for flat distributions.
    """
    V = probs.shape[-1]
    m = min(V, 256)
    while top_p < 1.0 and 8 * m < V:
        values, indices = probs.topk(m, dim=-1)
        cumulative = torch.cumsum(values, dim=-1)
        if bool((cumulative[:, -2] > top_p + 1e-6).all()):  # one host sync per step, not per token
            return values, indices, cumulative
        # the rest of a sorted row is no larger than its head, so the nucleus needs at least
        # m * top_p / mass(head) entries: jump there (flat rows go straight to the full sort)
        need = m * top_p / max(float(cumulative[:, -1].min()), 1e-12)
        m = int(max(8 * m, 2 * need))
    values, indices = torch.sort(probs, dim=-1, descending=True)
    return values, indices, torch.cumsum(values, dim=-1)


def sample_top_p(probs: Tensor, top_p: float, generator: torch.Generator | None) -> Tensor:
    """Nucleus sampling per row of ``probs`` ``(N, V)``: keep the smallest prefix of the sorted
    distribution whose mass before each kept token is <= ``top_p`` (always the top token), and
    draw from it as ``torch.multinomial`` does (``argmax(p / q)``, ``q ~ Exp(1)`` drawn for all V
    entries), so the random stream is the reference's even though only the nucleus is sorted.

    Returns:
        ``(N,)`` sampled token ids (long).
    """
    values, indices, cumulative = sorted_prefix(probs, top_p)
    keep = (cumulative - values) <= top_p
    keep[:, 0] = True
    filtered = torch.where(keep, values, torch.zeros_like(values))
    filtered = filtered / filtered.sum(dim=-1, keepdim=True)
    q = torch.empty(probs.shape, dtype=probs.dtype, device=probs.device).exponential_(1, generator=generator)
    choice = (filtered / q[:, : values.shape[1]]).argmax(dim=-1, keepdim=True)
    return indices.gather(-1, choice).squeeze(-1)


def entropy_temperature(logits: Tensor, top_p: float) -> Tensor:
    """Entropy-adaptive temperature per row: ``0.3 + 0.4 * min(1, H / log k_eff)`` with
    ``k_eff = max(#(cumulative sorted prob <= top_p) + 1, 2)`` (reference ``_sample_token``).

    Returns:
        ``(N,)`` float64 temperatures (the reference computes them as Python floats).
    """
    probs = torch.softmax(logits, dim=-1)
    _, _, cumulative = sorted_prefix(probs, top_p)
    k_eff = ((cumulative <= top_p).sum(dim=-1) + 1).clamp_min(2)
    entropy = -torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    normalized = (entropy.double() / torch.log(k_eff.double())).clamp_max(1.0)
    return 0.3 + 0.4 * normalized


def sample_tokens(
    logits: Tensor,
    *,
    temperature: float,
    top_p: float,
    entropy_sampling: bool,
    generator: torch.Generator | None,
) -> Tensor:
    """One token per row of processed ``logits`` ``(N, V)``.

    ``temperature == 0`` is greedy argmax; otherwise entropy-adaptive sampling (default) or
    plain ``softmax(logits / temperature)`` then top-p; ``top_p == 0`` is argmax too.

    Returns:
        ``(N,)`` token ids (long).
    """
    if temperature == 0.0 or (not entropy_sampling and top_p <= 0.0):
        return logits.argmax(dim=-1)
    if entropy_sampling:
        temps = entropy_temperature(logits, top_p).float().unsqueeze(-1)
    else:
        temps = torch.tensor(temperature, dtype=torch.float32, device=logits.device)
    probs = torch.softmax(logits / temps, dim=-1)
    return sample_top_p(probs, top_p, generator)


def linear_schedule(masked: int, steps: int) -> list[int]:
    """Tokens to commit at each of ``steps`` steps for ``masked`` positions: equal shares,
    the remainder on the first steps (reference ``_get_num_transfer_tokens``)."""
    base, rem = divmod(masked, steps)
    return [base + (1 if i < rem else 0) for i in range(steps)]


def check_probability(name: str, value: float) -> None:
    """Raise ValueError unless ``0 <= value <= 1`` (and finite)."""
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {value}")
