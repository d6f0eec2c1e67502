"""Monte Carlo log-likelihood of a continuation under a masked-diffusion model, batched over samples.

A masked-diffusion LM has no left-to-right factorization to read ``log p(continuation |
context)`` from; the standard estimate is the ELBO of the masked-diffusion objective (LLaDA,
Nie et al. 2025, eq. 6 and its Monte Carlo form, Algorithm 3), which is what the reference's
lm-evaluation-harness wrapper computes (``steerling==0.2.0``,
``evaluation/lm_harness_wrapper.py``: ``_forward_process`` and ``_compute_mc_loglikelihood``).
With ``C`` continuation tokens and ``N`` samples drawn in groups of ``G`` (the reference's
``mc_num`` = 128 and ``mc_batch_size`` = 32):

- each group draws one ``k`` uniform in ``1..C`` and gives its ``G`` samples the stratified
  mask counts ``m_i = ((round(linspace(k, k + (G-1)·C/G, G)) - 1) mod C) + 1``; sample ``i``
  masks ``m_i`` continuation positions chosen by a random permutation (the context is never
  masked);
- one forward pass over the partly masked sequence gives, at each masked position ``j``, the
  log-probability of the true token; the sample's value is
  ``l_i = Σ_j log p(x_j | x_masked) / (m_i / C)``;
- the estimate is the mean over groups of the mean of ``l_i`` within the group (the plain mean
  of all ``l_i`` when ``G`` divides ``N``).

With classifier-free guidance (``cfg_scale`` s > 0) the logits are ``u + (s + 1)(c - u)``, ``u``
from the same masked sequence with the whole context masked too (the reference's
``_model_forward_with_cfg``); the conditional and unconditional passes run as one batch.

The samples of a group are one batch of equal-length sequences (no padding), so the
transformer runs once per group and the LM head once over all masked positions of the group.
This module draws random numbers on the CPU from a ``torch.Generator`` in the reference's
order, so with ``seed`` s the masks are the reference's after ``torch.manual_seed(s)`` on the
CPU (on CUDA the reference draws from the CUDA generator instead).

Sequences longer than the model's context are windowed (the reference scores them -inf):
see :func:`windows`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InputError
from ..generation.step import StepSteering, compute_dtype, denoise_step, guided
from ..generation.steering import SteeringPlan
from ..model.transformer import SteerlingModel

DEFAULT_SAMPLES = 128  # the reference's mc_num (configs/evaluation.py TaskSettings)
DEFAULT_GROUP = 32  # the reference's mc_batch_size
LOGIT_ELEMENTS = 1 << 25  # fp32 logits materialized at a time (128 MiB): rows per LM-head chunk = this / V


@dataclass(frozen=True)
class LikelihoodEstimate:
    """A Monte Carlo estimate of ``log p(continuation | context)``.

    Attributes:
        logprob: the estimate, nats (an ELBO: a lower bound of the log-likelihood in expectation).
        stderr: standard error of the estimate, nats: the sample standard deviation of the
            per-sample values times the root of the sum of squared weights (``s / sqrt(N)`` for
            equal groups); the stratified samples of a group are negatively correlated, so
            this errs on the large side. ``nan`` with one sample; 0 for an empty continuation.
        n_samples: masked samples per window (0 for an empty continuation).
        n_tokens: continuation tokens scored.
        n_windows: forward windows the continuation was split into (1 unless windowed).
    """

    logprob: float
    stderr: float
    n_samples: int
    n_tokens: int
    n_windows: int = 1


@dataclass(frozen=True)
class MaskSamples:
    """Masks of the Monte Carlo samples of one continuation.

    Attributes:
        mask: ``(N, C)`` bool, True at the masked continuation positions (at least one per row).
        ratio: ``(N,)`` fp32 fraction of the continuation each sample masks, ``m_i / C`` (the
            reference's ``p_mask``).
        group: ``(N,)`` long index of the group (forward batch) each sample was drawn in.
    """

    mask: Tensor
    ratio: Tensor
    group: Tensor


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")


def sample_masks(
    n_tokens: int, n_samples: int = DEFAULT_SAMPLES, *, group_size: int = DEFAULT_GROUP,
    generator: torch.Generator | None = None, seed: int = 0,
) -> MaskSamples:
    """Draw the masks of ``n_samples`` Monte Carlo samples of a continuation of ``n_tokens``
    tokens, in groups of ``group_size``, in the reference's order of random draws (module
    docstring): per group one ``randint(1, C + 1)`` for the stratification offset, then one
    ``randperm(C)`` per sample.

    Args:
        n_tokens: continuation length C >= 1.
        n_samples: N >= 1; the last group is smaller when ``group_size`` does not divide N.
        group_size: G >= 1, samples per group (the reference's ``mc_batch_size``).
        generator: a CPU ``torch.Generator`` to draw from (advanced in place); default: a new
            one seeded with ``seed``.
        seed: the seed of the default generator.

    Raises:
        InputError: a count that is not a positive integer.
    """
    _check_positive("n_tokens", n_tokens)
    _check_positive("n_samples", n_samples)
    _check_positive("group_size", group_size)
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    C = n_tokens
    masks, counts, groups = [], [], []
    done = 0
    while done < n_samples:
        size = min(group_size, n_samples - done)
        k = torch.randint(1, C + 1, (), generator=g)
        counts_g = torch.round(torch.linspace(float(k), k + (size - 1) * (C / size), steps=size)).long()
        counts_g = (counts_g - 1) % C + 1
        ordered = torch.arange(C).unsqueeze(0) < counts_g.unsqueeze(1)  # the first m_i positions
        for i in range(size):
            masks.append(ordered[i][torch.randperm(C, generator=g)])
        counts.append(counts_g)
        groups.append(torch.full((size,), len(groups), dtype=torch.long))
        done += size
    count = torch.cat(counts)
    return MaskSamples(torch.stack(masks), count.float() / C, torch.cat(groups))


def masked_logprobs(
    lm, ids: Tensor, mask: Tensor, *, context_len: int = 0, cfg_scale: float = 0.0,
    steering: SteeringPlan | None = None,
) -> Tensor:
    """Log-probability of the true token at the masked positions of a batch of sequences, in one
    forward pass.

    Args:
        lm: a :class:`~steerling_lite.Steerling` (or its ``SteerlingModel``).
        ids: ``(B, T)`` long, the true token ids (on any device).
        mask: ``(B, T)`` bool, the positions replaced by the mask token (and scored).
        context_len: positions ``[0, context_len)`` are the context, masked out entirely in the
            unconditional pass of classifier-free guidance.
        cfg_scale: classifier-free guidance scale s >= 0; > 0 runs the conditional and the
            unconditional batch as one batch of ``2B``.
        steering: a steering plan, applied as in the first denoising step of a generation
            (injection at full strength at the masked positions, concept interventions in the
            read-out, the ReLU logit mask subtracted from the logits).

    Returns:
        ``(B, T)`` fp32 on the CPU: ``log softmax(logits)[true token]`` at masked positions, 0
        elsewhere (nats).

    Raises:
        InputError: shapes that differ, ids outside the vocabulary, a negative ``cfg_scale``.
    """
    model: SteerlingModel = getattr(lm, "model", lm)
    cfg = model.cfg
    if ids.dim() != 2 or mask.shape != ids.shape:
        raise InputError(f"ids {tuple(ids.shape)} and mask {tuple(mask.shape)} must both be (batch, length)")
    if ids.numel() and not (0 <= int(ids.min()) and int(ids.max()) < cfg.vocab_size):
        raise InputError(f"token ids must be in 0..{cfg.vocab_size - 1}")
    if not (cfg_scale >= 0 and math.isfinite(cfg_scale)):
        raise InputError(f"cfg_scale must be a finite number >= 0, got {cfg_scale}")
    out = torch.zeros(ids.shape, dtype=torch.float32)
    rows = mask.any(0).nonzero().flatten()
    if rows.numel() == 0:
        return out
    device = model.input_device
    ids, mask = ids.to(device), mask.to(device)
    noisy = ids.masked_fill(mask, cfg.mask_token_id)
    batch = noisy
    if cfg_scale > 0:
        uncond = noisy.clone()
        uncond[:, :context_len] = cfg.mask_token_id
        batch = torch.cat([noisy, uncond])
    step_steering = StepSteering.at(steering, 0, 1, compute_dtype(model))
    with torch.inference_mode():
        readout = denoise_step(model, batch, rows.to(device), steering=step_steering).readout  # (B', R, D)
        sel = mask[:, rows]  # (B, R)
        labels = ids[:, rows][sel]
        states = readout[: ids.shape[0]][sel]
        uncond_states = readout[ids.shape[0]:][sel] if cfg_scale > 0 else None
        offset = step_steering.plan.logit_offset if step_steering is not None else None
        chunk = max(1, LOGIT_ELEMENTS // cfg.vocab_size)
        values = []
        for i in range(0, states.shape[0], chunk):
            logits = model.lm_logits(states[i:i + chunk])
            if uncond_states is not None:
                logits = guided(torch.stack([logits, model.lm_logits(uncond_states[i:i + chunk])]), cfg_scale)[0]
            logits = logits.float()
            if offset is not None:
                logits = logits - offset.to(logits.device)
            values.append(logits.gather(1, labels[i:i + chunk, None]).squeeze(1) - logits.logsumexp(-1))
        scored = torch.zeros(sel.shape, dtype=torch.float32, device=device)
        scored[sel] = torch.cat(values)
    out[:, rows.cpu()] = scored.cpu()
    return out


def windows(context_ids: list[int], continuation_ids: list[int], max_len: int) -> list[tuple[list[int], list[int]]]:
    """``(context, piece)`` pairs scoring ``continuation_ids`` within ``max_len`` positions.

    A pair that fits (``len(context) + len(continuation) <= max_len``) is kept whole. Otherwise the
    continuation is cut into consecutive pieces of at most ``max_len // 2`` tokens (one piece if
    it is that short), and each piece is scored given the ``max_len - len(piece)`` tokens just
    before it (the end of the context and the earlier pieces): by the chain rule
    ``log p(c | x) = Σ_k log p(c_k | x, c_<k)``, each term estimated with a truncated history.
    """
    P, C = len(context_ids), len(continuation_ids)
    if P + C <= max_len:
        return [(list(context_ids), list(continuation_ids))]
    full = list(context_ids) + list(continuation_ids)
    step = min(C, max_len // 2)
    out = []
    for s in range(0, C, step):
        piece = full[P + s:P + s + step]
        end = P + s
        out.append((full[max(0, end - (max_len - len(piece))):end], piece))
    return out


def group_mean(values: Tensor, group: Tensor) -> tuple[float, float]:
    """Mean over groups of the within-group mean of ``values`` ``(N,)`` fp64, and its standard error."""
    n_groups = int(group.max()) + 1
    sizes = torch.bincount(group, minlength=n_groups).to(values.dtype)
    weights = 1.0 / (n_groups * sizes[group])
    mean = float((weights * values).sum())
    if values.numel() < 2:
        return mean, float("nan")
    return mean, float(values.std(unbiased=True) * weights.pow(2).sum().sqrt())


def mc_loglikelihood(
    lm, context_ids: list[int], continuation_ids: list[int], *, n_samples: int = DEFAULT_SAMPLES,
    seed: int = 0, batch_size: int = DEFAULT_GROUP, generator: torch.Generator | None = None,
    cfg_scale: float = 0.0, steering: SteeringPlan | None = None,
) -> LikelihoodEstimate:
    """Monte Carlo estimate of ``log p(continuation | context)`` (nats), the reference wrapper's
    (module docstring), batched over samples.

    Args:
        lm: a :class:`~steerling_lite.Steerling` (or its ``SteerlingModel``).
        context_ids, continuation_ids: token ids; the context may be empty.
        n_samples: Monte Carlo samples N per window (default the reference's 128).
        seed: seeds a fresh CPU generator when ``generator`` is None.
        batch_size: samples per group, which is both the forward batch and the stratification
            group (the reference's ``mc_batch_size``; changing it changes the masks).
        generator: a CPU ``torch.Generator`` to draw the masks from (advanced in place).
        cfg_scale: classifier-free guidance scale (the reference's ``cfg``; 0 disables).
        steering: a steering plan (see :func:`masked_logprobs`).

    Returns:
        :class:`LikelihoodEstimate`; for an empty continuation logprob 0 with no samples. A pair
        longer than the model's context (``block_size``) is windowed (:func:`windows`): the
        windows' estimates and variances add.

    Raises:
        InputError: ids outside the vocabulary, a count that is not a positive integer, a
            negative ``cfg_scale``.
    """
    model: SteerlingModel = getattr(lm, "model", lm)
    _check_positive("n_samples", n_samples)
    _check_positive("batch_size", batch_size)
    C = len(continuation_ids)
    if C == 0:
        return LikelihoodEstimate(0.0, 0.0, 0, 0, 0)
    bad = [i for i in list(context_ids) + list(continuation_ids) if not 0 <= int(i) < model.cfg.vocab_size]
    if bad:
        raise InputError(f"token id {bad[0]} is outside the vocabulary (0..{model.cfg.vocab_size - 1})")
    g = generator if generator is not None else torch.Generator().manual_seed(seed)
    total, variance = 0.0, 0.0
    parts = windows(list(context_ids), list(continuation_ids), model.cfg.block_size)
    for ctx, piece in parts:
        samples = sample_masks(len(piece), n_samples, group_size=batch_size, generator=g)
        seq = torch.tensor(ctx + piece, dtype=torch.long)
        values = torch.empty(n_samples, dtype=torch.float64)
        for start in range(0, n_samples, batch_size):
            idx = slice(start, start + batch_size)
            mask = torch.zeros((samples.mask[idx].shape[0], seq.shape[0]), dtype=torch.bool)
            mask[:, len(ctx):] = samples.mask[idx]
            logp = masked_logprobs(model, seq.expand(mask.shape[0], -1), mask, context_len=len(ctx),
                                   cfg_scale=cfg_scale, steering=steering)
            values[idx] = logp.sum(1).double() / samples.ratio[idx].double()
        mean, stderr = group_mean(values, samples.group)
        total += mean
        variance += stderr ** 2
    return LikelihoodEstimate(total, math.sqrt(variance), n_samples, C, len(parts))
