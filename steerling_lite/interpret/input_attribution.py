"""Input attribution: which prompt and earlier tokens caused a generated token.

Integrated gradients (Sundararajan et al. 2017, https://arxiv.org/abs/1703.01365) of the
token's LM logit with respect to the input embeddings, from the mask-embedding baseline,
on the sequence the model read when it committed the token (the prompt, the tokens
committed at earlier steps, the mask elsewhere); the reference's
``FaithfulOutputToInputAttributor`` (``steerling==0.2.0``,
``attribution/input_attribution.py``, right-Riemann sum)::

    score_t = (e_t - e_mask) · (1/n) Σ_{k=1..n} ∂ logit_y / ∂ e_t  at  e_mask + (k/n)(e - e_mask)

Positions still masked in the snapshot score 0 by construction, and the scores add up
to ``logit(snapshot) - logit(all masks)`` as ``n`` grows (completeness; the result
reports the gap).

Beyond the reference: steered generations are replayed with the steering of the step
that committed the token (injection at the masked positions with that step's alpha,
concept interventions through the composed state), and the forward pass runs only up
to the end of the target's attention block (later positions cannot reach it under
block-causal attention). Quantized layers (bitsandbytes int8 / nf4) pass gradients to
their inputs, so attribution works through them too (:mod:`quant.linear` gives 4-bit
layers in bitsandbytes' CPU-packed layout, whose kernel has no backward, one of their own).

Under a concept intervention the logit depends on the input only through the concept
heads' weights and their top-k selection, which is piecewise constant along the path, so
completeness holds only approximately there.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import ConceptError
from ..generation.step import StepSteering, compute_dtype, denoise_step
from .attribution import ConceptAttribution, ExplainedStream, GenerationTrace


@dataclass(frozen=True)
class InputScore:
    """An input position's score: integrated gradients (logit units), or occlusion (nats), where it
    scores a unit of positions ``[position, end)`` (``token_id``: its first token; -1 for an empty unit)."""

    position: int
    token_id: int
    text: str
    kind: str  # "prompt" or "generated"
    score: float
    end: int | None = None  # occlusion: one past the unit's last position

    def to_dict(self) -> dict[str, Any]:
        out = {"position": self.position, "token_id": self.token_id, "text": self.text, "kind": self.kind,
               "score": self.score}
        if self.end is not None:
            out["end"] = self.end
        return out


class TargetRows:
    """What input attribution results share: rows of targets at absolute ``positions`` ``(N,)``,
    token texts from ``tokenizer`` (ids as text without one)."""

    positions: Tensor
    tokenizer: Any

    def __len__(self) -> int:
        return int(self.positions.numel())

    def _row(self, position: int) -> int:
        hits = (self.positions == int(position)).nonzero()
        if hits.numel() == 0:
            raise KeyError(f"no attributed target at position {position}")
        return int(hits[0, 0])

    def _text(self, token_id: int) -> str:
        return self.tokenizer.token_text(token_id) if self.tokenizer is not None else str(token_id)


@dataclass
class InputAttribution(TargetRows):
    """Integrated-gradients scores of input positions for committed target tokens.

    Attributes:
        positions: ``(N,)`` long absolute positions of the targets.
        token_ids: ``(N,)`` long target tokens.
        steps: ``(N,)`` long steps that committed them.
        scores: ``(N, L)`` fp32: ``scores[n, t]`` is input position ``t``'s share of target
            ``n``'s logit (0 where the snapshot was masked or beyond the target's attention block).
        inputs: ``(N, L)`` long: the snapshot each target was committed from.
        target_logits: ``(N,)`` fp32 logit at the snapshot.
        baseline_logits: ``(N,)`` fp32 logit with every input position at the mask embedding.
        n_steps: interpolation steps used.
        trace: the generation's trace.
    """

    positions: Tensor
    token_ids: Tensor
    steps: Tensor
    scores: Tensor
    inputs: Tensor
    target_logits: Tensor
    baseline_logits: Tensor
    n_steps: int
    trace: GenerationTrace
    tokenizer: Any = None
    method = "ig"

    @property
    def completeness_gap(self) -> Tensor:
        """``(N,)`` ``|Σ_t scores - (target_logit - baseline_logit)|``: the Riemann-sum error, which
        shrinks as ``n_steps`` grows."""
        return (self.scores.sum(-1) - (self.target_logits - self.baseline_logits)).abs()

    def for_token(self, position: int, top: int | None = None, scope: str = "all") -> list[InputScore]:
        """Input positions ranked by ``|score|`` for the target at absolute ``position``;
        ``scope`` ``prompt``, ``generated`` or ``all`` (masked positions are left out).

        Raises:
            KeyError: no target at ``position``.
        """
        n = self._row(position)
        P = self.trace.prompt_len
        mask_id = self.trace.mask_id
        out = []
        for t, (tok, s) in enumerate(zip(self.inputs[n].tolist(), self.scores[n].tolist())):
            if tok == mask_id:
                continue
            kind = "prompt" if t < P else "generated"
            if scope != "all" and kind != scope:
                continue
            out.append(InputScore(t, tok, self._text(tok), kind, s))
        out.sort(key=lambda x: -abs(x.score))
        return out if top is None else out[:top]

    def aggregate(self, scope: str = "prompt", signed: bool = True, top: int | None = None,
                  targets: Iterable[int] | None = None) -> list[InputScore]:
        """Input positions ranked over the targets (all, or those at absolute positions ``targets``,
        e.g. one chunk's): each target's scores over ``scope`` (``prompt``, ``generated``, ``all``)
        are divided by their absolute sum (one vote per target), then averaged (reference
        ``aggregate`` / ``aggregate_chunk``)."""
        if scope not in ("prompt", "generated", "all"):
            raise ValueError(f"scope {scope!r}: expected prompt, generated or all")
        P, L = self.trace.prompt_len, self.trace.length
        rows = torch.arange(len(self))
        if targets is not None:
            want = {int(t) for t in targets}
            rows = torch.tensor([i for i, p in enumerate(self.positions.tolist()) if p in want], dtype=torch.long)
        keep = torch.zeros(L, dtype=torch.bool)
        if scope in ("prompt", "all"):
            keep[:P] = True
        if scope in ("generated", "all"):
            for p in self.trace.committed:
                keep[p] = True
        cols = keep.nonzero().flatten()
        if rows.numel() == 0 or cols.numel() == 0:
            return []
        s = self.scores[rows][:, cols]
        v = s / s.abs().sum(-1, keepdim=True).clamp_min(1e-8)
        if not signed:
            v = v.abs()
        agg = v.mean(0)
        seq = self.trace.sequence()
        out = [InputScore(int(c), seq[int(c)], self._text(seq[int(c)]), "prompt" if int(c) < P else "generated", float(a))
               for c, a in zip(cols.tolist(), agg.tolist())]
        out.sort(key=lambda x: -(x.score if signed else abs(x.score)))
        return out if top is None else out[:top]

    def to_dict(self, top: int | None = 10) -> dict[str, Any]:
        """JSON-able: per target its ``top`` input positions and the completeness gap."""
        gap = self.completeness_gap.tolist()
        return {
            "method": self.method, "n_steps": self.n_steps,
            "targets": [
                {"position": int(p), "token_id": int(t), "text": self._text(int(t)), "step": int(s),
                 "logit": float(lg), "baseline_logit": float(b), "completeness_gap": g,
                 "inputs": [x.to_dict() for x in self.for_token(int(p), top)]}
                for p, t, s, lg, b, g in zip(self.positions.tolist(), self.token_ids.tolist(), self.steps.tolist(),
                                             self.target_logits.tolist(), self.baseline_logits.tolist(), gap)
            ],
        }


def trace_of(source) -> GenerationTrace:
    """The :class:`GenerationTrace` of ``source`` (a trace, :class:`ConceptAttribution` or :class:`ExplainedStream`).

    Raises:
        TypeError: anything else.
    """
    if isinstance(source, GenerationTrace):
        return source
    if isinstance(source, ConceptAttribution):
        return source.trace
    if isinstance(source, ExplainedStream):
        return source.recorder.trace
    raise TypeError(f"expected a GenerationTrace, ConceptAttribution or ExplainedStream, got {type(source).__name__}")


def check_targets(trace: GenerationTrace, positions: Iterable[int] | None) -> list[int]:
    """The targets' absolute positions, sorted and distinct (default: every committed token).

    Raises:
        ConceptError: a position where no token was committed.
    """
    if positions is None:
        return sorted(trace.committed)
    targets = sorted({int(p) for p in positions})
    missing = [p for p in targets if p not in trace.committed]
    if missing:
        raise ConceptError(f"no token was committed at position {missing[0]} (prompt {trace.prompt_len} tokens)")
    return targets


def _usable_rope(transformer) -> None:
    """RoPE tables cached during generation were made under ``torch.inference_mode`` and cannot
    be saved for backward; replace them with ordinary copies (same values)."""
    rope = getattr(transformer, "_rope", None)
    if rope is not None and any(t.is_inference() for t in rope):
        transformer._rope = tuple(t.clone() for t in rope)


def input_attribution(
    lm,
    source,
    positions: Iterable[int] | None = None,
    *,
    n_steps: int = 32,
    batch_size: int = 8,
) -> InputAttribution:
    """Integrated gradients for committed tokens of a recorded generation.

    Args:
        lm: the :class:`~steerling_lite.Steerling` that generated.
        source: the generation's :class:`GenerationTrace`, or a :class:`ConceptAttribution` /
            :class:`ExplainedStream` holding one.
        positions: absolute positions of the targets (default: every committed token).
        n_steps: interpolation steps (the reference recommends 32; 1 is input x gradient).
        batch_size: (step, target) rows per forward + backward pass; activation memory grows
            with it (about ``batch_size x tokens x n_embd x n_layers`` values kept for backward).

    Returns:
        :class:`InputAttribution`, targets in position order.

    Raises:
        ConceptError: ``n_steps`` / ``batch_size`` not positive, a position with no committed
            token, or a generation with classifier-free guidance.
    """
    trace = trace_of(source)
    for name, v in (("n_steps", n_steps), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConceptError(f"{name} is {v!r}; expected a positive integer")
    if trace.cfg_scale > 0:
        raise ConceptError("input attribution with classifier-free guidance (cfg_scale > 0) is not supported")
    targets = check_targets(trace, positions)
    model = lm.model
    tf = model.transformer
    device = model.lm_head_weight.device
    dtype = compute_dtype(model)
    cfg = model.cfg
    B, L, mask_id = cfg.diff_block_size, trace.length, trace.mask_id

    by_step: dict[int, list[int]] = defaultdict(list)
    for p in targets:
        by_step[trace.committed[p][1]].append(p)

    N = len(targets)
    row_of = {p: i for i, p in enumerate(targets)}
    scores = torch.zeros(N, L)
    inputs = torch.full((N, L), mask_id, dtype=torch.long)
    f_x = torch.zeros(N)
    f_0 = torch.zeros(N)

    with torch.inference_mode(False), torch.enable_grad():
        _usable_rope(tf)
        for step, group in sorted(by_step.items()):
            st = trace.steps[step]
            snap = trace.snapshot(step)
            W = max(min((p // B + 1) * B, L) for p in group)  # end of the last target's attention block
            ids = torch.tensor(snap[:W], dtype=torch.long, device=device)
            with torch.no_grad():
                emb = tf.tok_emb(ids).float()  # (W, D)
                base = tf.tok_emb(torch.tensor([mask_id], device=device)).float().expand_as(emb)
            delta = emb - base
            # the step as generation ran it: its steering (injection at the snapshot's masked
            # positions, interventions in the read-out), the targets' rows read out
            steering = StepSteering.at(st.plan, st.committed_before, trace.max_new_tokens, dtype)
            window = ids.unsqueeze(0)  # (1, W): marks the masked positions for every row
            rows = torch.tensor(group, device=device)
            tok = torch.tensor([trace.committed[p][0] for p in group], device=device)
            w_y = model.lm_head_weight[tok].float()  # (G, D)

            def logits_at(x_emb: Tensor, target_idx: Tensor) -> Tensor:
                """Target logits ``(R,)`` for embeddings ``(R, W, D)`` fp32, row r -> target target_idx[r]."""
                out = denoise_step(model, window, rows, steering=steering, input_embeds=x_emb.to(dtype))
                h = out.readout[torch.arange(x_emb.shape[0], device=device), target_idx]  # (R, D)
                return (h.float() * w_y[target_idx]).sum(-1)

            G = len(group)
            with torch.no_grad():
                all_t = torch.arange(G, device=device)
                f_x_g = logits_at(emb.unsqueeze(0).expand(G, -1, -1), all_t)
                f_0_g = logits_at(base.unsqueeze(0).expand(G, -1, -1), all_t)
            grad_sum = torch.zeros(G, W, emb.shape[-1], device=device)
            pairs = [(k, j) for k in range(1, n_steps + 1) for j in range(G)]
            for s0 in range(0, len(pairs), batch_size):
                chunk = pairs[s0:s0 + batch_size]
                alphas = torch.tensor([k / n_steps for k, _ in chunk], device=device).view(-1, 1, 1)
                tidx = torch.tensor([j for _, j in chunk], device=device)
                interp = (base.unsqueeze(0) + alphas * delta.unsqueeze(0)).detach().requires_grad_(True)
                f = logits_at(interp, tidx)
                (grad,) = torch.autograd.grad(f.sum(), interp)
                grad_sum.index_add_(0, tidx, grad.float())
            attr = (delta.unsqueeze(0) * grad_sum / n_steps).sum(-1)  # (G, W)
            for j, p in enumerate(group):
                i = row_of[p]
                scores[i, :W] = attr[j].detach().cpu()
                inputs[i] = torch.tensor(snap)
                f_x[i], f_0[i] = float(f_x_g[j]), float(f_0_g[j])

    return InputAttribution(
        positions=torch.tensor(targets, dtype=torch.long),
        token_ids=torch.tensor([trace.committed[p][0] for p in targets], dtype=torch.long),
        steps=torch.tensor([trace.committed[p][1] for p in targets], dtype=torch.long),
        scores=scores, inputs=inputs, target_logits=f_x, baseline_logits=f_0, n_steps=n_steps, trace=trace,
        tokenizer=lm.tokenizer,
    )
