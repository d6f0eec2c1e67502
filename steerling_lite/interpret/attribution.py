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
re-computes both sides independently. Attribution is computed only for committed
positions and only when asked for (a generation streamed with ``capture_hidden=True``
and recorded by an :class:`AttributionRecorder`; :func:`explain_stream` does both).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .attribution_result import (
    ConceptAttribution,
    ConceptContribution,
    TokenAttribution,
    VerificationResult,
    make_record,
)
from .concepts import ConceptCatalog, ConceptError, require_interpretable
from ..generation.generate import Generation, GenerationConfig, GenerationResult, StepEvent
from ..generation.output import stop_ids
from ..generation.steering import SteeringPlan
from ..generation.trace import GenerationTrace, StepTrace

# ---------------------------------------------------------------------------------------
# the computation


@dataclass
class _HeadTerms:
    ids: Tensor  # (P, k) long, -1 = padding
    weights: Tensor  # (P, k) fp32
    contrib: Tensor  # (P, k) fp32
    tail: Tensor  # (P,) fp32
    features: Tensor  # (P, D) fp32: Σ over all features of the head


def _dot_rows(head, idx: Tensor, w_y: Tensor) -> Tensor:
    """``E[idx[p, j]] · w_y[p]`` ``(P, k)`` fp32."""
    emb = head.embedding(idx).float()  # (P, k, D)
    return torch.einsum("pkd,pd->pk", emb, w_y)


def _head_terms(head, h: Tensor, w_y: Tensor, k_report: int) -> _HeadTerms:
    """Reported top-``k_report`` concepts of ``head`` for hidden ``h`` ``(P, D)``, their weights
    and contributions to the logits whose LM rows are ``w_y`` ``(P, D)`` fp32, the tail of the
    other features, and the features themselves (fp32), following the head's own selection
    (:class:`~steerling_lite.model.concept_heads._ConceptHead`)."""
    logits_all = head.all_logits(h)  # (P, C) fp32, clamped
    if head.k_features is None:  # every concept is a feature
        k = min(k_report, head.n_concepts)
        sel_logits, idx = logits_all.topk(k, dim=-1)
        w_all = torch.sigmoid(logits_all)
        features = head.mix_all(w_all).float()
        weights = torch.sigmoid(sel_logits)
        contrib = weights * _dot_rows(head, idx, w_y)
        # the tail directly: Σ over the unreported concepts of w_c (E_c · W_y)
        keep = torch.ones_like(w_all, dtype=torch.bool).scatter_(-1, idx, False)
        tail = _all_dots_weighted(head, w_all * keep, w_y)
        return _HeadTerms(idx, weights, contrib, tail, features)
    kf = min(head.k_features, head.n_concepts)
    idx_f = logits_all.topk(kf, dim=-1).indices
    l_f = head.selected_logits(h, idx_f)
    w_f = torch.sigmoid(l_f)
    emb = head.embedding(idx_f).float()  # (P, kf, D)
    features = torch.einsum("pk,pkd->pd", w_f, emb)
    contrib_f = w_f * torch.einsum("pkd,pd->pk", emb, w_y)
    k = min(k_report, kf)
    order = l_f.topk(k, dim=-1).indices  # re-rank the features by logit, keep k (the reference's report)
    reported = torch.zeros_like(w_f, dtype=torch.bool).scatter_(-1, order, True)
    tail = (contrib_f * ~reported).sum(-1)
    return _HeadTerms(idx_f.gather(-1, order), w_f.gather(-1, order), contrib_f.gather(-1, order), tail, features)


def _all_dots_weighted(head, weights: Tensor, w_y: Tensor) -> Tensor:
    """``Σ_c weights[p, c] (E_c · w_y[p])`` over every concept, ``(P,)`` fp32 (factorized heads
    stay in rank space)."""
    if getattr(head, "factorized", False):
        coef = head.embedding_coef.weight[: head.n_concepts].float()  # (C, r)
        proj = w_y @ head.embedding_basis.weight.float()  # (P, r): basisᵀ W_y
        return (weights * (proj @ coef.t())).sum(-1)
    emb = head.embedding(torch.arange(head.n_concepts, device=w_y.device)).float()  # (C, D)
    return (weights * (w_y @ emb.t())).sum(-1)


def _intervened_known(model, h: Tensor, w_y: Tensor, plan: SteeringPlan) -> _HeadTerms:
    """Known terms under a concept intervention: the dense top-k weights with the overrides set
    (:meth:`SteeringPlan.known_override`), reported over the top-k plus the intervened ids."""
    head = model.known_head
    weights = torch.sigmoid(head.all_logits(h))
    k = min(head.k_report, head.n_concepts)
    top = weights.topk(k, dim=-1)
    dense = torch.zeros_like(weights).scatter_(-1, top.indices, top.values)
    ids_int = torch.tensor(list(plan.interventions), device=h.device, dtype=torch.long)
    vals = torch.tensor(list(plan.interventions.values()), dtype=dense.dtype, device=h.device)
    dense[:, ids_int] = vals
    idx = torch.cat([top.indices, ids_int.expand(h.shape[0], -1)], dim=-1)
    # an intervened id may also be in the top-k: report it once
    dup = torch.zeros_like(idx, dtype=torch.bool)
    dup[:, :k] = (top.indices.unsqueeze(-1) == ids_int.view(1, 1, -1)).any(-1)
    w = dense.gather(-1, idx).masked_fill(dup, 0.0)
    idx = idx.masked_fill(dup, -1)
    safe = idx.clamp_min(0)
    emb = head.embedding(safe).float()
    contrib = w * torch.einsum("pkd,pd->pk", emb, w_y)
    features = torch.einsum("pk,pkd->pd", w, emb)
    return _HeadTerms(idx, w, contrib, torch.zeros_like(contrib[:, 0]), features)


@dataclass
class StepAttribution:
    """Tensors of one step's committed tokens (``P`` of them), on the CPU; see :class:`ConceptAttribution`."""

    positions: Tensor
    token_ids: Tensor
    steps: Tensor
    logits: Tensor
    model_logits: Tensor
    known_ids: Tensor
    known_weights: Tensor
    known_contrib: Tensor
    known_tail: Tensor
    disc_ids: Tensor
    disc_weights: Tensor
    disc_contrib: Tensor
    disc_tail: Tensor
    epsilon: Tensor
    readout: Tensor  # (P, D) model dtype: the vector the LM head read
    lm_rows: Tensor  # (P, D) model dtype: W_lm[y]


@torch.inference_mode()
def attribute_hidden(
    model,
    hidden: Tensor,
    token_ids: Tensor,
    plan: SteeringPlan | None = None,
    *,
    known_k: int | None = None,
    discovered_k: int | None = None,
) -> dict[str, Tensor]:
    """Decompose the logits of ``token_ids`` ``(P,)`` read from final hidden states ``hidden``
    ``(P, D)`` (after ln_f, as the generation captured them).

    With ``plan.interventions`` the LM head reads the composed state (known weights
    overridden, no epsilon correction), as the generation does.

    Returns:
        fp32 tensors on ``hidden``'s device: ``logits`` (P,), ``known_ids/weights/contrib``
        (P, Kk), ``known_tail`` (P,), ``disc_ids/weights/contrib`` (P, Ku), ``disc_tail``,
        ``epsilon`` (P,), and ``readout`` / ``lm_rows`` (P, D) in the model dtype.

    Raises:
        ConceptError: the model has no concept heads.
    """
    require_interpretable(model, "concept attribution")
    h = hidden
    w_rows = model.lm_head_weight[token_ids]
    w_y = w_rows.float()
    kh, uh = model.known_head, model.unknown_head
    if plan is not None and plan.interventions:
        readout = plan.readout(model, h)
        known = _intervened_known(model, h, w_y, plan)
    else:
        readout = h
        known = _head_terms(kh, h, w_y, known_k or kh.k_report)
    P = h.shape[0]
    if uh is not None:
        disc = _head_terms(uh, h, w_y, discovered_k or uh.k_report)
    else:
        z = torch.zeros(P, 0, device=h.device)
        disc = _HeadTerms(z.long(), z, z, torch.zeros(P, device=h.device), torch.zeros_like(w_y))
    r = readout.float()
    epsilon = ((r - known.features - disc.features) * w_y).sum(-1)
    return {
        "logits": (r * w_y).sum(-1),
        "known_ids": known.ids, "known_weights": known.weights, "known_contrib": known.contrib,
        "known_tail": known.tail,
        "disc_ids": disc.ids, "disc_weights": disc.weights, "disc_contrib": disc.contrib, "disc_tail": disc.tail,
        "epsilon": epsilon, "readout": readout, "lm_rows": w_rows,
    }


def _pad_cols(t: Tensor, k: int, value) -> Tensor:
    if t.shape[1] == k:
        return t
    pad = torch.full((t.shape[0], k - t.shape[1]), value, dtype=t.dtype, device=t.device)
    return torch.cat([t, pad], dim=1)


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
        self._steps: list[StepAttribution] = []
        self._texts: list[list[str]] = []

    def record(self, event: StepEvent) -> list[TokenAttribution]:
        """Attribute the tokens committed by ``event`` and return their records (commit order)."""
        if event.hidden is None or event.logits is None:
            raise ConceptError("this StepEvent carries no hidden states: stream with capture_hidden=True")
        self.trace.add(event)
        if not event.positions:
            return []
        device = event.hidden.device
        ids = torch.tensor(event.tokens, dtype=torch.long, device=device)
        out = attribute_hidden(self.model, event.hidden, ids, event.steering,
                               known_k=self.known_k, discovered_k=self.discovered_k)
        cpu = {k: v.cpu() for k, v in out.items()}
        P = len(event.positions)
        sa = StepAttribution(
            positions=torch.tensor(event.positions, dtype=torch.long), token_ids=ids.cpu(),
            steps=torch.full((P,), event.step, dtype=torch.long), logits=cpu["logits"],
            model_logits=event.logits.float().cpu(),
            known_ids=cpu["known_ids"], known_weights=cpu["known_weights"], known_contrib=cpu["known_contrib"],
            known_tail=cpu["known_tail"], disc_ids=cpu["disc_ids"], disc_weights=cpu["disc_weights"],
            disc_contrib=cpu["disc_contrib"], disc_tail=cpu["disc_tail"], epsilon=cpu["epsilon"],
            readout=cpu["readout"], lm_rows=cpu["lm_rows"],
        )
        texts = [self.tokenizer.token_text(t) for t in event.tokens]
        self._steps.append(sa)
        self._texts.append(texts)
        partial = _assemble([sa], [texts], self)
        return [make_record(partial, i) for i in _commit_order(partial, event.positions)]

    def attribution(self) -> ConceptAttribution:
        """Everything recorded so far (usable mid-generation)."""
        return _assemble(self._steps, self._texts, self)

    def finish(self) -> ConceptAttribution:
        """The attribution of the whole generation, with its result when it has finished."""
        a = self.attribution()
        a.result = self.generation.result
        return a


def _commit_order(a: ConceptAttribution, positions: list[int]) -> list[int]:
    rows = {int(p): i for i, p in enumerate(a.positions.tolist())}
    return [rows[p] for p in positions]


def _assemble(steps: list[StepAttribution], texts: list[list[str]], rec: AttributionRecorder) -> ConceptAttribution:
    cfg = rec.lm.config
    D = cfg.n_embd
    dtype = rec.model.lm_head_weight.dtype
    if not steps:
        e = torch.zeros(0)
        el = torch.zeros(0, dtype=torch.long)
        e2, el2 = torch.zeros(0, 0), torch.zeros(0, 0, dtype=torch.long)
        return ConceptAttribution(
            el, el, el, e, e, el2, e2, e2, e, el2, e2, e2, e, e, torch.zeros(0, D, dtype=dtype),
            torch.zeros(0, D, dtype=dtype), rec.trace, [], rec.catalog, cfg.endofchunk_token_id, _stop_ids(rec),
            tokenizer=rec.tokenizer,
        )
    kk = max(s.known_ids.shape[1] for s in steps)
    ku = max(s.disc_ids.shape[1] for s in steps)

    def cat(name: str, k: int | None = None, value=0.0) -> Tensor:
        ts = [getattr(s, name) for s in steps]
        if k is not None:
            ts = [_pad_cols(t, k, value) for t in ts]
        return torch.cat(ts)

    positions = cat("positions")
    order = torch.argsort(positions)
    flat_texts = [t for ts in texts for t in ts]
    pick = lambda t: t[order]  # noqa: E731
    return ConceptAttribution(
        positions=pick(positions), token_ids=pick(cat("token_ids")), steps=pick(cat("steps")),
        logits=pick(cat("logits")), model_logits=pick(cat("model_logits")),
        known_ids=pick(cat("known_ids", kk, -1)), known_weights=pick(cat("known_weights", kk)),
        known_contrib=pick(cat("known_contrib", kk)), known_tail=pick(cat("known_tail")),
        disc_ids=pick(cat("disc_ids", ku, -1)), disc_weights=pick(cat("disc_weights", ku)),
        disc_contrib=pick(cat("disc_contrib", ku)), discovered_tail=pick(cat("disc_tail")),
        epsilon=pick(cat("epsilon")), readout=pick(cat("readout")), lm_rows=pick(cat("lm_rows")),
        trace=rec.trace, texts=[flat_texts[i] for i in order.tolist()], catalog=rec.catalog,
        endofchunk_id=cfg.endofchunk_token_id, stop_ids=_stop_ids(rec), tokenizer=rec.tokenizer,
    )


def _stop_ids(rec: AttributionRecorder) -> tuple[int, ...]:
    return stop_ids(rec.lm.config, rec.generation.config.stop_tokens)


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
