"""Faithful concept attribution, captured at the denoising step that committed each token.

For a committed token ``y`` the LM logit is ``r · W_lm[y]`` where ``r`` is the vector the
LM head read in the forward pass that committed it (the final hidden state; with a
concept intervention, the composed state). The concept heads split ``r`` exactly
(../shared/STEERLING_FORMAT.md §4 and §7, reference ``steerling==0.2.0``
``attribution/concept_attribution.py``)::

    r = Σ_{c ∈ known features} w_c E_k[c] + Σ_{u ∈ discovered features} w_u E_u[u] + ε

so, by linearity, the logit is the sum of per-concept contributions
``w_c · (E[c] · W_lm[y])`` plus ``ε · W_lm[y]``. The reference reports the top-k known and
discovered concepts and lumps everything else into one residual. Here the parts are
reported apart:

- ``known``: the head's reported top-k (by logit) known concepts;
- ``known_tail``: the other known features (non-zero only when ``topk_known_features >
  topk_known`` or a smaller report size was asked for);
- ``discovered``: the reported top-k discovered concepts;
- ``discovered_tail``: the discovered features outside that top-k (all of the rest when
  ``apply_topk_to_unknown`` is off);
- ``epsilon``: ``(r - known features - discovered features) · W_lm[y]``, the true epsilon.

``known + known_tail + discovered + discovered_tail + epsilon == logit``; every term is
computed in fp32 from the captured state, and :meth:`ConceptAttribution.verify`
re-computes both sides independently (all parts live in one record type,
:class:`~steerling_lite.interpret.attribution_table.AttributionTable`, whether for one
step's tokens or a whole generation). Attribution is computed only for committed
positions and only when asked for (a generation streamed with ``capture_hidden=True``
and recorded by an :class:`AttributionRecorder`; :func:`explain_stream` does both).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import ConceptError, require_interpretable
from ..generation.generate import Generation, GenerationConfig, GenerationResult, StepEvent
from ..generation.output import stop_ids
from ..generation.steering import SteeringPlan
from ..generation.trace import GenerationTrace, StepTrace
from ..model.concept_heads import intervened_known_weights, readout
from .attribution_result import ConceptAttribution, ConceptContribution, TokenAttribution, make_record
from .attribution_table import AttributionTable, VerificationResult
from .concepts import ConceptCatalog

# ---------------------------------------------------------------------------------------
# the computation


@dataclass
class _HeadTerms:
    ids: Tensor  # (P, k) long, -1 = padding
    weights: Tensor  # (P, k) fp32
    contrib: Tensor  # (P, k) fp32
    tail: Tensor  # (P,) fp32
    features: Tensor  # (P, D) fp32: Σ over all features of the head


def _contributions(head, idx: Tensor, weights: Tensor, w_y: Tensor) -> tuple[Tensor, Tensor]:
    """For concepts ``idx`` ``(P, k)`` (-1: padding, weight 0) with ``weights`` ``(P, k)`` fp32:
    their contributions ``w · (E[idx] · w_y)`` ``(P, k)`` and features ``Σ w E[idx]`` ``(P, D)``, fp32."""
    emb = head.embedding(idx.clamp_min(0)).float()  # (P, k, D)
    return weights * torch.einsum("pkd,pd->pk", emb, w_y), torch.einsum("pk,pkd->pd", weights, emb)


def _head_terms(head, h: Tensor, w_y: Tensor, k_report: int) -> _HeadTerms:
    """Reported top-``k_report`` concepts of ``head`` for hidden ``h`` ``(P, D)``, their weights
    and contributions to the logits whose LM rows are ``w_y`` ``(P, D)`` fp32, the tail of the
    other features, and the features themselves (fp32), following the head's own selection
    (:class:`~steerling_lite.model.concept_heads._ConceptHead`)."""
    if head.k_features is None:  # every concept is a feature
        logits_all = head.all_logits(h)  # (P, C) fp32, clamped
        sel_logits, idx = logits_all.topk(min(k_report, head.n_concepts), dim=-1)
        w_all = torch.sigmoid(logits_all)
        weights = torch.sigmoid(sel_logits)
        contrib = weights * head.selected_lm_dots(idx, w_y)
        # the tail directly: Σ over the unreported concepts of w_c (E_c · W_y), in rank space when factorized
        keep = torch.ones_like(w_all, dtype=torch.bool).scatter_(-1, idx, False)
        tail = (w_all * keep * head.lm_dots(w_y)).sum(-1)
        return _HeadTerms(idx, weights, contrib, tail, head.mix_all(w_all).float())
    idx_f, l_f = head.features_top_k(h)
    w_f = torch.sigmoid(l_f)
    contrib_f, features = _contributions(head, idx_f, w_f, w_y)
    order = l_f.topk(min(k_report, idx_f.shape[-1]), dim=-1).indices  # re-rank by logit, keep k (the reference's report)
    reported = torch.zeros_like(w_f, dtype=torch.bool).scatter_(-1, order, True)
    tail = (contrib_f * ~reported).sum(-1)
    return _HeadTerms(idx_f.gather(-1, order), w_f.gather(-1, order), contrib_f.gather(-1, order), tail, features)


def _intervened_known(head, h: Tensor, w_y: Tensor, interventions: dict[int, float]) -> _HeadTerms:
    """Known terms under a concept intervention: the weights of
    :func:`~steerling_lite.model.concept_heads.intervened_known_weights`, reported over the top-k
    plus the intervened ids (an intervened id already in the top-k once)."""
    dense, top_ids = intervened_known_weights(head, h, interventions)
    ids = torch.tensor(list(interventions), device=h.device, dtype=torch.long)
    idx = torch.cat([top_ids, ids.expand(h.shape[0], -1)], dim=-1)
    dup = torch.zeros_like(idx, dtype=torch.bool)
    dup[:, : top_ids.shape[1]] = (top_ids.unsqueeze(-1) == ids.view(1, 1, -1)).any(-1)
    weights = dense.gather(-1, idx).masked_fill(dup, 0.0)
    idx = idx.masked_fill(dup, -1)
    contrib, features = _contributions(head, idx, weights, w_y)
    return _HeadTerms(idx, weights, contrib, torch.zeros_like(contrib[:, 0]), features)


@torch.inference_mode()
def attribute_hidden(
    model,
    hidden: Tensor,
    token_ids: Tensor,
    plan: SteeringPlan | None = None,
    *,
    positions: Tensor | None = None,
    step: int = 0,
    model_logits: Tensor | None = None,
    known_k: int | None = None,
    discovered_k: int | None = None,
) -> AttributionTable:
    """Decompose the logits of ``token_ids`` ``(P,)`` read from final hidden states ``hidden``
    ``(P, D)`` (after ln_f, as the generation captured them).

    With ``plan.interventions`` the LM head reads the composed state (known weights
    overridden, no epsilon correction), as the generation does.

    Args:
        model: the ``SteerlingModel``.
        hidden, token_ids, plan: as above.
        positions: ``(P,)`` long absolute positions of the rows (default ``0..P-1``).
        step: the denoising step that committed them.
        model_logits: ``(P,)`` the logits the sampler saw (default: the fp32 ``logits``).
        known_k, discovered_k: concepts reported per token (default the heads' ``k_report``).

    Returns:
        The rows' :class:`AttributionTable`, on ``hidden``'s device.

    Raises:
        ConceptError: the model has no concept heads.
    """
    require_interpretable(model, "concept attribution")
    h = hidden
    P, device = h.shape[0], h.device
    w_rows = model.lm_head_weight[token_ids]
    w_y = w_rows.float()
    kh, uh = model.known_head, model.unknown_head
    interventions = plan.interventions if plan is not None else None
    r = readout(model, h, interventions)
    if interventions:
        known = _intervened_known(kh, h, w_y, interventions)
    else:
        known = _head_terms(kh, h, w_y, known_k or kh.k_report)
    if uh is not None:
        disc = _head_terms(uh, h, w_y, discovered_k or uh.k_report)
    else:
        z = torch.zeros(P, 0, device=device)
        disc = _HeadTerms(z.long(), z, z, torch.zeros(P, device=device), torch.zeros_like(w_y))
    r32 = r.float()
    logits = (r32 * w_y).sum(-1)
    return AttributionTable(
        positions=positions if positions is not None else torch.arange(P, device=device),
        token_ids=token_ids, steps=torch.full((P,), step, dtype=torch.long, device=device), logits=logits,
        model_logits=model_logits.float() if model_logits is not None else logits,
        known_ids=known.ids, known_weights=known.weights, known_contrib=known.contrib, known_tail=known.tail,
        disc_ids=disc.ids, disc_weights=disc.weights, disc_contrib=disc.contrib, discovered_tail=disc.tail,
        epsilon=((r32 - known.features - disc.features) * w_y).sum(-1), readout=r, lm_rows=w_rows,
    )


# ---------------------------------------------------------------------------------------
# recording


class AttributionRecorder:
    """Computes concept attribution step by step for a generation streamed with ``capture_hidden=True``.

    >>> gen = lm.stream(prompt, config, capture_hidden=True)          # doctest: +SKIP
    >>> rec = AttributionRecorder(lm, gen)                            # doctest: +SKIP
    >>> for event in gen:                                             # doctest: +SKIP
    ...     tokens = rec.record(event)   # list[TokenAttribution] of this step's tokens
    >>> attribution = rec.finish()                                    # doctest: +SKIP

    Args:
        lm: the loaded :class:`~steerling_lite.Steerling`.
        generation: the :class:`Generation` being recorded.
        catalog: concept labels (default: :meth:`ConceptCatalog.for_model`).
        known_k, discovered_k: concepts reported per token (default: the heads' top-k,
            ``topk_known`` and ``unknown_topk``); the rest goes to the tails.

    Raises:
        ConceptError: a model without concept heads, a generation without ``capture_hidden``,
            or classifier-free guidance (its logit mixes two forward passes).
    """

    def __init__(self, lm, generation: Generation, catalog: ConceptCatalog | None = None,
                 known_k: int | None = None, discovered_k: int | None = None):
        self.model = lm.model
        require_interpretable(self.model, "concept attribution")
        if not generation.capture_hidden:
            raise ConceptError("concept attribution needs the generation streamed with capture_hidden=True")
        if generation.config.cfg_scale > 0:
            raise ConceptError(
                "concept attribution with classifier-free guidance (cfg_scale > 0) is not supported: the "
                "sampled logit mixes the conditional and unconditional passes; set cfg_scale to 0"
            )
        for name, k in (("known_k", known_k), ("discovered_k", discovered_k)):
            if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
                raise ConceptError(f"{name} is {k!r}; expected a positive integer")
        self.lm, self.generation = lm, generation
        self.tokenizer = lm.tokenizer
        self.catalog = catalog if catalog is not None else ConceptCatalog.for_model(lm)
        self.known_k, self.discovered_k = known_k, discovered_k
        cfg = lm.config
        self.trace = GenerationTrace(
            prompt_ids=list(generation.prompt_ids), max_new_tokens=generation.config.max_new_tokens,
            mask_id=cfg.mask_token_id, block=cfg.diff_block_size, cfg_scale=generation.config.cfg_scale,
        )
        self._stop_ids = stop_ids(cfg, generation.config.stop_tokens)
        self._tables: list[AttributionTable] = []  # one per step that committed tokens, rows in commit order
        self._texts: list[list[str]] = []

    def record(self, event: StepEvent) -> list[TokenAttribution]:
        """Attribute the tokens committed by ``event`` and return their records (commit order)."""
        if event.hidden is None or event.logits is None:
            raise ConceptError("this StepEvent carries no hidden states: stream with capture_hidden=True")
        self.trace.add(event)
        if not event.positions:
            return []
        device = event.hidden.device
        table = attribute_hidden(
            self.model, event.hidden, torch.tensor(event.tokens, dtype=torch.long, device=device), event.steering,
            positions=torch.tensor(event.positions, dtype=torch.long, device=device), step=event.step,
            model_logits=event.logits, known_k=self.known_k, discovered_k=self.discovered_k,
        ).cpu()
        texts = [self.tokenizer.token_text(t) for t in event.tokens]
        self._tables.append(table)
        self._texts.append(texts)
        step = self._with_context(table, texts)  # this step's rows, in commit order
        return [make_record(step, i) for i in range(len(step))]

    def attribution(self) -> ConceptAttribution:
        """Everything recorded so far (usable mid-generation), rows sorted by position."""
        if not self._tables:
            return self._with_context(AttributionTable.empty(self.lm.config.n_embd, self.model.lm_head_weight.dtype), [])
        table = AttributionTable.concat(self._tables)
        order = torch.argsort(table.positions)
        texts = [t for ts in self._texts for t in ts]
        return self._with_context(table.take(order), [texts[i] for i in order.tolist()])

    def _with_context(self, table: AttributionTable, texts: list[str]) -> ConceptAttribution:
        return ConceptAttribution(
            **table.columns(), trace=self.trace, texts=texts, catalog=self.catalog,
            endofchunk_id=self.lm.config.endofchunk_token_id, stop_ids=self._stop_ids, tokenizer=self.tokenizer,
        )

    def finish(self) -> ConceptAttribution:
        """The attribution of the whole generation, with its result when it has finished."""
        a = self.attribution()
        a.result = self.generation.result
        return a


# ---------------------------------------------------------------------------------------
# convenience: stream / run with attribution


@dataclass
class ExplainedStep:
    """A denoising step and the attribution of the tokens it committed (commit order)."""

    event: StepEvent
    tokens: list[TokenAttribution]


class ExplainedStream:
    """A generation with concept attribution: iterate for :class:`ExplainedStep` s.

    ``cancel()`` and ``set_steering()`` act on the running generation (the new steering
    applies from the next denoising step, and each token's attribution is taken from the
    pass that committed it, steering included). After iteration :attr:`attribution`
    holds the whole :class:`ConceptAttribution`.
    """

    def __init__(self, lm, generation: Generation, recorder: AttributionRecorder):
        self.lm, self.generation, self.recorder = lm, generation, recorder
        self.attribution: ConceptAttribution | None = None
        self._iter: Iterator[ExplainedStep] | None = None

    def __iter__(self) -> Iterator[ExplainedStep]:
        if self._iter is None:
            self._iter = self._run()
        return self._iter

    def _run(self) -> Iterator[ExplainedStep]:
        for event in self.generation:
            yield ExplainedStep(event, self.recorder.record(event))
        self.attribution = self.recorder.finish()

    def run(self) -> ConceptAttribution:
        """Run to the end and return the attribution."""
        for _ in self:
            pass
        assert self.attribution is not None
        return self.attribution

    def cancel(self) -> None:
        self.generation.cancel()

    def set_steering(self, steering: SteeringPlan | None) -> None:
        self.generation.set_steering(steering)

    @property
    def result(self) -> GenerationResult | None:
        return self.generation.result


def explain_stream(
    lm, prompt, config: GenerationConfig | None = None, steering: SteeringPlan | None = None, *,
    chat: bool | None = None, catalog: ConceptCatalog | None = None,
    known_k: int | None = None, discovered_k: int | None = None,
) -> ExplainedStream:
    """Stream a generation with concept attribution (see :class:`ExplainedStream`).

    Arguments as :meth:`Steerling.stream`, plus those of :class:`AttributionRecorder`.

    Raises:
        ConceptError: a non-interpretable model, classifier-free guidance, bad report sizes.
        GenerationError: bad generation settings.
    """
    require_interpretable(lm.model, "concept attribution")
    gen = lm.stream(prompt, config, steering, chat=chat, capture_hidden=True)
    rec = AttributionRecorder(lm, gen, catalog, known_k, discovered_k)
    return ExplainedStream(lm, gen, rec)


def explain(
    lm, prompt, config: GenerationConfig | None = None, steering: SteeringPlan | None = None, **kwargs: Any,
) -> ConceptAttribution:
    """Generate and return the :class:`ConceptAttribution` of every committed token
    (``attribution.result`` holds the generation result); see :func:`explain_stream`."""
    return explain_stream(lm, prompt, config, steering, **kwargs).run()


__all__ = [
    "ConceptContribution", "TokenAttribution", "VerificationResult", "StepTrace", "GenerationTrace",
    "ConceptAttribution", "AttributionRecorder", "ExplainedStep", "ExplainedStream", "explain_stream",
    "explain", "attribute_hidden",
]
