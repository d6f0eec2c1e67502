"""TEMPORARY stand-in for steerling_lite/evaluation/likelihood.py (branch i14-batch); deleted at the merge."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LikelihoodEstimate:
    logprob: float
    stderr: float
    n_samples: int
    n_tokens: int


def sample_masks(n_tokens: int, n_samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    k = int(torch.randint(1, n_tokens + 1, (), generator=g))
    x = torch.round(torch.linspace(float(k), k + (n_samples - 1) * (n_tokens / n_samples), steps=n_samples)).long()
    x = ((x - 1) % n_tokens) + 1
    is_mask = torch.arange(n_tokens).repeat(n_samples, 1) < x.unsqueeze(1)
    for i in range(n_samples):
        is_mask[i] = is_mask[i][torch.randperm(n_tokens, generator=g)]
    return is_mask, x.float() / n_tokens


@torch.inference_mode()
def mc_loglikelihood(lm, context_ids, continuation_ids, *, n_samples, seed, batch_size) -> LikelihoodEstimate:
    ids = torch.tensor(list(context_ids) + list(continuation_ids))
    n = len(continuation_ids)
    mask, p = sample_masks(n, n_samples, seed)
    full = torch.zeros(n_samples, len(ids), dtype=torch.bool)
    full[:, len(context_ids):] = mask
    losses = []
    for i in range(0, n_samples, batch_size):
        m = full[i:i + batch_size]
        x = ids.expand(m.shape[0], -1)
        noisy = torch.where(m, lm.config.mask_token_id, x).to(lm.model.input_device)
        logits = lm.model.lm_logits(lm.model.transformer(noisy)).float().cpu()
        ce = F.cross_entropy(logits.transpose(1, 2), x, reduction="none")
        losses.append(((ce * m).sum(-1) / p[i:i + batch_size]))
    loss = torch.cat(losses)
    stderr = float(loss.std() / n_samples ** 0.5) if n_samples > 1 else float("nan")
    return LikelihoodEstimate(-float(loss.mean()), stderr, n_samples, n)
