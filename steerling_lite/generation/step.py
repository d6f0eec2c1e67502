"""One denoising step: window forward, steering injection, read-out and logit processing.

The unit a masked-diffusion step is made of, as a function of its own (in the spirit of
gpt-fast's ``decode_one_token``): :func:`denoise_step` runs the transformer over a window of
positions (against a :class:`~steerling_lite.model.kv_cache.KVCache` of the committed
attention blocks before it, or over the whole sequence without one), adds the steering
injection at the still-masked positions, reads out the hidden states of the positions asked
for (the composed state under concept interventions) and, when asked, turns their LM logits
into the distribution the step samples from (classifier-free guidance, the ReLU logit mask,
repetition penalty, banned ids), exactly as the reference's ``generate_full``
(``steerling==0.2.0``, ../shared/STEERLING_FORMAT.md §5-6).

Callers: the generation loop (:mod:`steerling_lite.generation.generate`), which samples from
the processed logits, and input attribution (:mod:`steerling_lite.interpret.input_attribution`),
which replays a step on interpolated input embeddings and reads one logit per target.
Choosing which positions to commit, sampling, and cache bookkeeping stay with the loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..model.kv_cache import KVCache
from ..model.transformer import SteerlingModel
from .sampling import process_logits
from .steering import SteeringPlan


def compute_dtype(model: SteerlingModel) -> torch.dtype:
    """The dtype activations (and the injection vector, the KV cache) use: the token embedding's
    dtype when it is fp32 / fp16 / bf16, else bf16 (an embedding stored in another dtype)."""
    dtype = model.transformer.tok_emb.weight.dtype
    return dtype if dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.bfloat16


@dataclass(frozen=True)
class StepSteering:
    """The steering of one denoising step.

    Attributes:
        plan: the (non-empty) steering plan the step runs with.
        vector: ``(D,)`` injection ``Σ alpha_t · direction_t`` at this step in the compute dtype
            (:meth:`SteeringPlan.vector`), or None when every alpha is 0 at this step.
    """

    plan: SteeringPlan
    vector: Tensor | None

    @classmethod
    def at(cls, plan: SteeringPlan | None, committed: int, max_new_tokens: int,
           dtype: torch.dtype) -> StepSteering | None:
        """The steering of a step run once ``committed`` of ``max_new_tokens`` tokens are committed;
        None for no plan or an empty one (the step is unsteered)."""
        if plan is None or plan.is_empty:
            return None
        return cls(plan, plan.vector(committed, max_new_tokens, dtype))


@dataclass(frozen=True)
class LogitProcessing:
    """How a step's LM logits become the distribution its tokens are drawn from.

    Attributes:
        repetition_penalty: >= 1 (1 disables); see :func:`~steerling_lite.generation.sampling.process_logits`.
        banned: ``(K,)`` long ids whose logit is set to ``-inf`` (EOS, mask, pad).
        cfg_scale: classifier-free guidance scale; > 0 needs a batch of 2 (conditional,
            unconditional) windows, see :func:`guided`.
    """

    repetition_penalty: float
    banned: Tensor
    cfg_scale: float = 0.0


@dataclass
class StepOutput:
    """What one denoising step computed for the rows asked for.

    Attributes:
        hidden: ``(batch, R, D)`` final hidden states (after ``ln_f``, steering injection
            included), model dtype.
        readout: ``(batch, R, D)`` what the LM head reads: the composed state with the
            intervened concept weights under interventions, else ``hidden`` itself.
        logits: ``(R, V)`` fp32 processed logits (guided, masked, penalized, banned ids at
            ``-inf``) when :func:`denoise_step` was given a :class:`LogitProcessing`, else None.
    """

    hidden: Tensor
    readout: Tensor
    logits: Tensor | None = None


def denoise_step(
    model: SteerlingModel,
    window: Tensor,
    rows: Tensor,
    *,
    cache: KVCache | None = None,
    start: int = 0,
    steering: StepSteering | None = None,
    input_embeds: Tensor | None = None,
    processing: LogitProcessing | None = None,
    seen_ids: Tensor | None = None,
) -> StepOutput:
    """Run one denoising step over ``window`` and read out the window rows ``rows``.

    Args:
        model: the model.
        window: ``(batch, T)`` long token ids of positions ``[start, start + T)``; the steering
            injection goes where they are the mask id. With ``input_embeds`` they only mark
            the masked positions (``batch`` may then be 1, broadcast over the embeddings' batch).
        rows: ``(R,)`` long indices into the window whose outputs are wanted (the last layer
            runs only for them).
        cache: keys / values of positions ``[0, start)``; the window's are written after them
            (the caller commits finished attention blocks). None: ``start`` must be 0.
        start: absolute position of the window's first token.
        steering: this step's :class:`StepSteering`, or None (unsteered).
        input_embeds: ``(batch, T, D)`` input embeddings used instead of ``window``'s (input
            attribution's interpolation path; gradients flow through them).
        processing: when given, the LM logits of ``rows`` are computed and processed: those of
            the one sequence (batch 1), or guided across the pair (batch 2 with ``cfg_scale``);
            any other batch reads ``hidden`` / ``readout`` (every sequence of the batch is
            independent: a batch of B gives what B one-sequence steps give).
        seen_ids: ``(S,)`` distinct ids already in the sequence, for the repetition penalty.

    Returns:
        :class:`StepOutput`. The processed logits are made from the step's LM logits in place.
    """
    injection = None
    if steering is not None and steering.vector is not None:
        vector = steering.vector.to(window.device)
        masked = (window == model.cfg.mask_token_id).unsqueeze(-1)
        injection = torch.where(masked, vector, torch.zeros((), dtype=vector.dtype, device=window.device))
    hidden = model.transformer(
        window if input_embeds is None else None, input_embeds=input_embeds, cache=cache, start=start,
        out_rows=rows, injection=injection, inject_layer=steering.plan.inject_layer if steering is not None else 0,
    )
    readout = hidden
    if steering is not None and steering.plan.interventions:
        readout = steering.plan.readout(model, hidden.reshape(-1, hidden.shape[-1])).reshape(hidden.shape)
    logits = None
    if processing is not None:
        logits = process_logits(  # in place: the step's LM logits are not used after this
            guided(model.lm_logits(readout), processing.cfg_scale)[0].float(), seen_ids,
            processing.repetition_penalty, processing.banned,
            steering.plan.logit_offset if steering is not None else None,
        )
    return StepOutput(hidden, readout, logits)


def guided(logits: Tensor, cfg_scale: float) -> Tensor:
    """Classifier-free guidance of a step's ``(batch, R, ...)`` logits: unchanged when
    ``cfg_scale <= 0``; with batch 2 (conditional, unconditional) ``u + (s + 1)(c - u)`` as
    ``(1, R, ...)`` (reference ``generate_full``)."""
    if cfg_scale <= 0.0:
        return logits
    cond, uncond = logits[0], logits[1]
    return (uncond + (cfg_scale + 1) * (cond - uncond)).unsqueeze(0)
