"""Occlusion input attribution: how much each piece of the prompt raised a span's log-probability.

Each prompt unit (a token, word, sentence or line: :mod:`~steerling_lite.interpret.prompt_units`)
is replaced by the mask token, the learned blank the model was trained to fill, and the
span's log-probability is measured again in the forward state that committed each token
(the sequence the model read at that denoising step, with its partial masking and its
steering: the snapshot integrated gradients replays, :mod:`~steerling_lite.interpret.input_attribution`)::

    score(unit) = Σ_{y in span} [ log p(y | snapshot_y) - log p(y | snapshot_y with unit masked) ]

(occlusion, Zeiler & Fergus 2014, https://arxiv.org/abs/1311.2901, with the mask token as the
occluder, as masked-diffusion LMs are trained on it). ``log p`` is the model's LM distribution
at the token's position under the step's steering (injection at the snapshot's masked
positions, concept interventions in the read-out, the suppression's ReLU logit mask), before
the sampler's own choices (temperature, top-p, repetition penalty, banned ids). A positive
score: the unit made the span more likely. The injection stays where the snapshot was
masked: occluding a prompt unit changes its input token only (IG's baseline does the same).

Cost: per denoising step that committed a span token, one pass over the full snapshot and
one per unit, the occluded copies ``batch_size`` at a time in one forward. Under
block-causal attention the blocks before a unit's attention block cannot see it, so their
keys and values come from the full snapshot's pass (a :class:`~steerling_lite.model.kv_cache.KVCache`
filled once per step) and an occluded copy runs only from the first occluded block to the
end of the span's attention block.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import ConceptError
from ..generation.step import StepSteering, compute_dtype, denoise_step
from ..generation.trace import GenerationTrace
from ..model.kv_cache import KVCache
from .input_attribution import InputScore, TargetRows, check_targets, trace_of
from .prompt_units import PromptUnit, check_units, prompt_units


@dataclass(frozen=True)
class OcclusionCost:
    """What an occlusion run takes: ``steps`` denoising steps to replay, ``units`` prompt units,
    ``forward_passes = steps * (units + 1)`` sequences run through the model, in
    ``batched_calls`` forward calls."""

    steps: int
    units: int
    forward_passes: int
    batched_calls: int

    def describe(self, granularity: str) -> str:
        return (f"occlusion: {self.units} {granularity} unit(s) x {self.steps} denoising step(s) = "
                f"{self.forward_passes} forward passes in {self.batched_calls} batched calls")


@dataclass
class OcclusionAttribution(TargetRows):
    """Occlusion scores of prompt units for committed target tokens (see the module docstring).

    Shares :class:`~steerling_lite.interpret.input_attribution.InputAttribution`'s views
    (``for_token``, ``aggregate``, ``to_dict``, ranked :class:`InputScore` s; here each one a
    unit, ``position`` its first token and ``end`` one past its last).

    Attributes:
        positions: ``(N,)`` long absolute positions of the targets.
        token_ids: ``(N,)`` long target tokens.
        steps: ``(N,)`` long steps that committed them.
        units: the occluded prompt units ``U``.
        scores: ``(N, U)`` fp32 ``log p(y_n | snapshot) - log p(y_n | snapshot, unit u masked)`` (nats).
        target_logprobs: ``(N,)`` fp32 ``log p(y_n | snapshot)``.
        target_logits: ``(N,)`` fp32 the target's LM logit at the snapshot (before the logit mask).
        logit_scores: ``(N, U)`` fp32 the same difference of the target's logit (the quantity
            integrated gradients attributes; no softmax normalizer).
        inputs: ``(N, L)`` long: the snapshot each target was committed from.
        granularity: how the prompt was cut (``custom`` for explicit units).
        cost: the forward passes run; ``seconds``: wall time.
        trace: the generation's trace.
    """

    positions: Tensor
    token_ids: Tensor
    steps: Tensor
    units: list[PromptUnit]
    scores: Tensor
    target_logprobs: Tensor
    target_logits: Tensor
    logit_scores: Tensor
    inputs: Tensor
    granularity: str
    cost: OcclusionCost
    seconds: float
    trace: GenerationTrace
    tokenizer: Any = None
    method = "occlusion"

    def _ranked(self, values: list[float], signed: bool, top: int | None) -> list[InputScore]:
        seq = self.trace.prompt_ids
        out = [InputScore(u.start, seq[u.start] if len(u) else -1, u.text, "prompt", v, u.end)
               for u, v in zip(self.units, values)]
        out.sort(key=lambda x: -(x.score if signed else abs(x.score)))
        return out if top is None else out[:top]

    def for_token(self, position: int, top: int | None = None, scope: str = "all") -> list[InputScore]:
        """Units ranked by ``|score|`` for the target at absolute ``position`` (occlusion scores
        prompt units only: ``scope="generated"`` gives none).

        Raises:
            KeyError: no target at ``position``.
        """
        row = self.scores[self._row(position)].tolist()
        if scope == "generated":
            return []
        return self._ranked(row, signed=False, top=top)

    def span_scores(self, targets: Iterable[int] | None = None) -> Tensor:
        """``(U,)`` the units' scores for the span of targets (all, or those at absolute positions
        ``targets``): the per-target scores summed, as the score is defined."""
        if targets is None:
            return self.scores.sum(0)
        want = {int(t) for t in targets}
        rows = [i for i, p in enumerate(self.positions.tolist()) if p in want]
        return self.scores[rows].sum(0)

    def aggregate(self, scope: str = "prompt", signed: bool = True, top: int | None = None,
                  targets: Iterable[int] | None = None) -> list[InputScore]:
        """Units ranked by their score for the span of targets (all, or those at absolute
        positions ``targets``, e.g. one chunk's): :meth:`span_scores`, largest first (``signed``)
        or by magnitude, as absolute values (not ``signed``); ``scope`` as
        :meth:`InputAttribution.aggregate` (``generated`` gives none)."""
        if scope not in ("prompt", "generated", "all"):
            raise ValueError(f"scope {scope!r}: expected prompt, generated or all")
        if scope == "generated" or len(self) == 0:
            return []
        values = self.span_scores(targets).tolist()
        return self._ranked(values if signed else [abs(v) for v in values], signed, top)

    def to_dict(self, top: int | None = 10) -> dict[str, Any]:
        """JSON-able: the method, units, cost, the span's ``top`` units and per target its ``top`` units."""
        return {
            "method": self.method, "granularity": self.granularity,
            "forward_passes": self.cost.forward_passes, "seconds": self.seconds,
            "units": [u.to_dict() for u in self.units],
            "span": [x.to_dict() for x in self.aggregate(top=top)],
            "targets": [
                {"position": int(p), "token_id": int(t), "text": self._text(int(t)), "step": int(s),
                 "logit": float(lg), "logprob": float(lp), "inputs": [x.to_dict() for x in self.for_token(int(p), top)]}
                for p, t, s, lg, lp in zip(self.positions.tolist(), self.token_ids.tolist(), self.steps.tolist(),
                                           self.target_logits.tolist(), self.target_logprobs.tolist())
            ],
        }


def span_positions(trace: GenerationTrace, start: int, end: int) -> list[int]:
    """Absolute positions of the committed tokens of the output span ``[start, end)``
    (generated-token indices, end exclusive).

    Raises:
        ConceptError: the span is empty or outside the output, or nothing in it was committed.
    """
    n, P = trace.max_new_tokens, trace.prompt_len
    if not 0 <= start < end <= n:
        raise ConceptError(f"span [{start}, {end}) is outside the output: expected 0 <= start < end <= {n} "
                           "(generated-token indices, end exclusive)")
    out = [P + i for i in range(start, end) if P + i in trace.committed]
    if not out:
        raise ConceptError(f"span [{start}, {end}) holds no committed token")
    return out


def occlusion_cost(n_steps: int, n_units: int, batch_size: int) -> OcclusionCost:
    """The :class:`OcclusionCost` of replaying ``n_steps`` steps with ``n_units`` units."""
    calls = n_steps * (1 + -(-n_units // batch_size))
    return OcclusionCost(n_steps, n_units, n_steps * (n_units + 1), calls)


def _logprob(model, readout: Tensor, tok: Tensor, steering: StepSteering | None) -> tuple[Tensor, Tensor]:
    """``(log p, logit)`` of tokens ``tok`` ``(R,)`` at read-out states ``(..., R, D)``, each ``(..., R)`` fp32."""
    logits = model.lm_logits(readout).float()
    logit = logits.gather(-1, tok.expand(logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    if steering is not None and steering.plan.logit_offset is not None:
        logits = logits - steering.plan.logit_offset.to(logits.device)
    lp = torch.log_softmax(logits, dim=-1).gather(-1, tok.expand(logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    return lp, logit


def occlusion(
    lm,
    source,
    positions: Iterable[int] | None = None,
    *,
    span: tuple[int, int] | None = None,
    granularity: str = "word",
    units: Sequence[PromptUnit | tuple[int, int]] | None = None,
    batch_size: int = 16,
    use_cache: bool = True,
    progress: bool = False,
) -> OcclusionAttribution:
    """Occlusion scores of prompt units for committed tokens of a recorded generation.

    Args:
        lm: the :class:`~steerling_lite.Steerling` that generated.
        source: the generation's :class:`GenerationTrace`, or a :class:`ConceptAttribution` /
            :class:`ExplainedStream` holding one.
        positions: absolute positions of the targets (default: every committed token, or the span's).
        span: ``(start, end)`` generated-token indices, end exclusive, instead of ``positions``.
        granularity: ``token``, ``word``, ``sentence`` or ``line`` (ignored with ``units``).
        units: explicit units (:class:`PromptUnit` or ``(start, end)`` prompt positions); an
            empty one occludes nothing and scores 0.
        batch_size: occluded copies per forward call; activation memory grows with it.
        use_cache: reuse the full snapshot's keys / values for the blocks before each unit (False:
            every copy runs from position 0; the same numbers, for checking).
        progress: print the cost to stderr before running and show a progress bar there.

    Returns:
        :class:`OcclusionAttribution`, targets in position order.

    Raises:
        ConceptError: a span outside the output, both ``positions`` and ``span``, a position with
            no committed token, an unknown granularity, a unit outside the prompt,
            ``batch_size`` not positive, or a generation with classifier-free guidance.
    """
    trace = trace_of(source)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConceptError(f"batch_size is {batch_size!r}; expected a positive integer")
    if trace.cfg_scale > 0:
        raise ConceptError("occlusion with classifier-free guidance (cfg_scale > 0) is not supported")
    if span is not None:
        if positions is not None:
            raise ConceptError("give positions or span, not both")
        positions = span_positions(trace, int(span[0]), int(span[1]))
    targets = check_targets(trace, positions)
    tokenizer = lm.tokenizer
    if units is None:
        unit_list = prompt_units(tokenizer, trace.prompt_ids, granularity)
    else:
        unit_list, granularity = check_units(units, trace.prompt_len, tokenizer, trace.prompt_ids), "custom"

    by_step: dict[int, list[int]] = defaultdict(list)
    for p in targets:
        by_step[trace.committed[p][1]].append(p)
    cost = occlusion_cost(len(by_step), len(unit_list), batch_size)
    if progress:
        print(cost.describe(granularity), file=sys.stderr)

    from tqdm import tqdm

    N, U, L = len(targets), len(unit_list), trace.length
    row_of = {p: i for i, p in enumerate(targets)}
    scores = torch.zeros(N, U)
    inputs = torch.full((N, L), trace.mask_id, dtype=torch.long)
    lp_x = torch.zeros(N)
    logit_x = torch.zeros(N)
    logit_scores = torch.zeros(N, U)
    t0 = time.perf_counter()
    bar = tqdm(total=cost.forward_passes, desc="occlusion", unit="pass", file=sys.stderr,
               disable=None if progress else True,  # None: only on a terminal
               leave=False)
    with torch.inference_mode(), bar:
        for step, group in sorted(by_step.items()):
            base_lp, base_logit, occluded, occluded_logit = _replay_step(
                lm.model, trace, step, group, unit_list, batch_size, use_cache, bar.update)
            snap = torch.tensor(trace.snapshot(step))
            for j, p in enumerate(group):
                i = row_of[p]
                lp_x[i], logit_x[i] = base_lp[j], base_logit[j]
                scores[i] = base_lp[j] - occluded[:, j]
                logit_scores[i] = base_logit[j] - occluded_logit[:, j]
                inputs[i] = snap
    return OcclusionAttribution(
        positions=torch.tensor(targets, dtype=torch.long),
        token_ids=torch.tensor([trace.committed[p][0] for p in targets], dtype=torch.long),
        steps=torch.tensor([trace.committed[p][1] for p in targets], dtype=torch.long),
        units=unit_list, scores=scores, target_logprobs=lp_x, target_logits=logit_x, logit_scores=logit_scores,
        inputs=inputs,
        granularity=granularity, cost=cost, seconds=time.perf_counter() - t0, trace=trace, tokenizer=tokenizer,
    )


def _replay_step(model, trace: GenerationTrace, step: int, group: list[int], units: list[PromptUnit],
                 batch_size: int, use_cache: bool, advance) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Replay denoising ``step`` for its targets ``group`` (absolute positions, G of them): the
    full snapshot and each unit masked. Returns ``(log p (G,), logit (G,), occluded log p (U, G), occluded logit (U, G))``
    fp32 on the CPU; ``advance(n)`` is called as sequences finish."""
    cfg, tf = model.cfg, model.transformer
    B, mask_id = cfg.diff_block_size, trace.mask_id
    device, dtype = model.input_device, compute_dtype(model)
    snap = trace.snapshot(step)
    W = max(min((p // B + 1) * B, trace.length) for p in group)  # end of the last target's attention block
    ids = torch.tensor(snap[:W], dtype=torch.long, device=device)
    window = ids.unsqueeze(0)  # (1, W): where the snapshot is masked (the steering injection goes there)
    st = trace.steps[step]
    steering = StepSteering.at(st.plan, st.committed_before, trace.max_new_tokens, dtype)
    rows = torch.tensor(group, device=device)
    tok = torch.tensor([trace.committed[p][0] for p in group], device=device)

    base_cache = None
    if use_cache:
        base_cache = KVCache.allocate(model.layer_devices(), 1, cfg.kv_heads, W, cfg.head_dim, B, dtype)
    out = denoise_step(model, window, rows, cache=base_cache, steering=steering)
    base_lp, base_logit = _logprob(model, out.readout[0], tok, steering)
    advance(1)

    first_target_block = min(group) // B
    # the window an occluded copy needs starts at the first block it changes (or the targets')
    starts = [min(u.start // B if len(u) else first_target_block, first_target_block) * B if use_cache else 0
              for u in units]
    # latest start first: a call writes keys / values at [start, W) only, so the prefix [0, start) a
    # later (earlier-starting) call reads is still the full snapshot's
    order = sorted(range(len(units)), key=lambda k: -starts[k])
    occluded = torch.zeros(len(units), len(group))
    occluded_logit = torch.zeros(len(units), len(group))
    cache = None
    if use_cache and units:
        n_max = min(batch_size, len(units))
        cache = KVCache.allocate(model.layer_devices(), n_max, cfg.kv_heads, W, cfg.head_dim, B, dtype)
        for k_all, v_all, k_1, v_1 in zip(cache.keys, cache.values, base_cache.keys, base_cache.values):
            k_all.copy_(k_1.expand_as(k_all))
            v_all.copy_(v_1.expand_as(v_all))
    for b0 in range(0, len(order), batch_size):
        batch = order[b0:b0 + batch_size]
        s = min(starts[k] for k in batch)
        copies = ids[s:].repeat(len(batch), 1)
        for j, k in enumerate(batch):
            u = units[k]
            copies[j, max(u.start, s) - s:max(u.end, s) - s] = mask_id
        view = None
        if cache is not None:
            view = KVCache([t[:len(batch)] for t in cache.keys], [t[:len(batch)] for t in cache.values], s, B)
        out = denoise_step(model, window[:, s:], rows - s, cache=view, start=s, steering=steering,
                           input_embeds=tf.tok_emb(copies))
        lp, logit = _logprob(model, out.readout, tok, steering)  # (n, G) each
        occluded[batch] = lp.cpu()
        occluded_logit[batch] = logit.cpu()
        advance(len(batch))
    return base_lp.cpu(), base_logit.cpu(), occluded, occluded_logit
