"""Small, exact statistics for evaluation: rank-based AUROC, KL divergence between two
predictive distributions, top-k set overlap, percentiles.

Plain functions of tensors / arrays; no model code. scikit-learn is not a dependency, so
:func:`auroc` is the Mann-Whitney U statistic with average ranks for ties (Hanley & McNeil
1982, "The meaning and use of the area under a ROC curve"), which equals the probability
that a random positive scores above a random negative, ties counting one half.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def auroc(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` ``(n,)`` for binary ``labels`` ``(n,)`` (0/1).

    Computed as ``(R+ - n+ (n+ + 1) / 2) / (n+ n-)`` with ``R+`` the sum of the positives'
    ranks (ties get their average rank): O(n log n).

    Returns:
        AUROC in [0, 1]; NaN when either class is empty.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in length")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # average rank of each run of equal scores: runs start where the sorted value changes
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]  # exclusive
    avg = (starts + ends - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def kl_divergence(logp_ref: Tensor, logp: Tensor) -> Tensor:
    """``KL(P_ref || P)`` per row, nats: ``Σ_v p_ref(v) (log p_ref(v) - log p(v))`` for log-probabilities
    ``(N, V)`` fp32 (as llama.cpp's ``llama-perplexity --kl-divergence``, the base model's
    distribution first). Rows where both are identical give exactly 0. Returns ``(N,)`` fp32."""
    return (logp_ref.exp() * (logp_ref - logp)).sum(-1)


def topk_overlap(scores_ref: Tensor, scores: Tensor, k: int) -> Tensor:
    """``|top_k(scores_ref) ∩ top_k(scores)| / k`` per row for scores ``(N, C)`` (``k`` capped at C).
    Returns ``(N,)`` fp32 in [0, 1]."""
    k = min(k, scores.shape[-1])
    a = scores_ref.topk(k, dim=-1).indices
    b = scores.topk(k, dim=-1).indices
    return (a.unsqueeze(-1) == b.unsqueeze(-2)).any(-1).float().sum(-1) / k


def percentile(values: Sequence[float] | np.ndarray, q: float) -> float:
    """The ``q``-th percentile (0..100, linear interpolation as ``numpy.percentile``); NaN when empty."""
    v = np.asarray(values, dtype=np.float64)
    return float(np.percentile(v, q)) if v.size else float("nan")


def ratio(a: float, b: float) -> float:
    """``a / b``, NaN when ``b`` is 0 or either is not finite."""
    if b == 0 or not (math.isfinite(a) and math.isfinite(b)):
        return float("nan")
    return a / b


def mean_abs_offdiagonal(m: Tensor) -> float:
    """Mean ``|m[i, j]|`` over ``i != j`` of a square matrix ``(C, C)`` (NaN when C < 2)."""
    c = m.shape[0]
    if c < 2:
        return float("nan")
    off = m.abs().sum() - m.diagonal().abs().sum()
    return float(off / (c * (c - 1)))


def cosine_matrix(vectors: Tensor) -> Tensor:
    """Pairwise cosine similarities ``(C, C)`` fp32 of ``vectors`` ``(C, D)`` (zero vectors give 0)."""
    v = vectors.float()
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return v @ v.t()


def correlation_matrix(x: Tensor) -> Tensor:
    """Pearson correlations ``(C, C)`` fp32 between the columns of ``x`` ``(N, C)`` (columns
    without variance get 0)."""
    x = x.float()
    x = x - x.mean(0, keepdim=True)
    sd = x.norm(dim=0)
    x = x / torch.where(sd > 0, sd, torch.ones_like(sd))
    return x.t() @ x
