"""The denoising loop: masked-diffusion generation with a KV cache of committed attention blocks.

Semantics are the reference's (``steerling==0.2.0`` ``SteerlingGenerator.generate_full``,
../shared/STEERLING_FORMAT.md §5): the prompt is followed by ``max_new_tokens`` mask
tokens, generated block by block (blocks of B = ``diff_block_size`` starting at the
prompt's end); each block gets ``steps / num_blocks`` denoising steps, and each step
commits the most confident masked positions of the block (linear schedule), each
sampled from the processed logits.

What differs is the cost. The reference re-runs the whole sequence and the LM head
at every position at every step. Here a step runs only the attention blocks that
overlap the generated block (all earlier blocks come from the :class:`KVCache`, which
is exact: their tokens are final), the last layer and the LM head only at the block's
masked positions, the concept heads only when something needs them, and the
sampling of a step is one batched pass (one host synchronisation per step).

A step's model computation (window forward, injection, read-out, logit processing) is
:func:`~steerling_lite.generation.step.denoise_step`; this loop chooses the positions to
commit, samples them and keeps the KV cache, the sequence and the output positions
(:mod:`steerling_lite.generation.output`).

Opt-in parallel decoding (Fast-dLLM, Wu et al. 2025): with
``confidence_threshold`` set, a step commits every masked position whose
confidence is at least the threshold, and never fewer than the schedule says.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..errors import GenerationError, require_interpretable
from ..loading.tokenizer import SteerlingTokenizer
from ..model.kv_cache import KVCache
from ..model.transformer import SteerlingModel
from .output import output_positions
from .sampling import check_probability, confidence, linear_schedule, sample_tokens
from .steering import SteeringPlan
from .step import LogitProcessing, StepOutput, StepSteering, compute_dtype, denoise_step, guided

SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes a signed/unsigned 64-bit value; stay portable


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings; defaults are the reference's ``GenerationConfig``.

    Attributes:
        max_new_tokens: tokens to generate; a multiple of the model's ``diff_block_size``.
        steps: denoising steps in all (default ``max_new_tokens``); a multiple of the number
            of generated blocks.
        temperature: 0 is greedy argmax; used by plain sampling (``entropy_sampling=False``).
        top_p: nucleus mass, in [0, 1].
        repetition_penalty: >= 1; divides positive / multiplies negative logits of every
            token already in the sequence.
        entropy_sampling: the reference's default entropy-adaptive temperature.
        cfg_scale: classifier-free guidance ``u + (s+1)(c-u)`` against the prompt masked out.
        seed: random seed; None picks one (reported in the result).
        stop_tokens: token ids that end generation after the block they appear in.
        confidence_threshold: parallel decoding (off when None), in (0, 1].
    """

    max_new_tokens: int = 1024
    steps: int | None = None
    temperature: float = 1.2
    top_p: float = 0.8
    repetition_penalty: float = 1.1
    entropy_sampling: bool = True
    cfg_scale: float = 0.0
    seed: int | None = None
    stop_tokens: tuple[int, ...] = ()
    confidence_threshold: float | None = None

    def validate(self, block: int) -> None:
        """Raise :class:`GenerationError` naming the setting that cannot be used with block size ``block``."""
        if self.max_new_tokens <= 0 or self.max_new_tokens % block:
            raise GenerationError(
                f"max_new_tokens is {self.max_new_tokens}; it must be a positive multiple of the model's "
                f"diffusion block size {block} (try {max(block, math.ceil(max(self.max_new_tokens, 1) / block) * block)})"
            )
        n_blocks = self.max_new_tokens // block
        steps = self.total_steps
        if steps <= 0 or steps % n_blocks:
            raise GenerationError(
                f"steps is {steps}; it must be a positive multiple of the number of generated blocks "
                f"({n_blocks} = max_new_tokens {self.max_new_tokens} / block {block})"
            )
        for name in ("temperature", "top_p", "repetition_penalty", "cfg_scale"):
            if not math.isfinite(getattr(self, name)):
                raise GenerationError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.temperature < 0:
            raise GenerationError(f"temperature must be >= 0, got {self.temperature}")
        try:
            check_probability("top_p", self.top_p)
        except ValueError as exc:
            raise GenerationError(str(exc)) from None
        if self.repetition_penalty < 1.0:
            raise GenerationError(f"repetition_penalty must be >= 1, got {self.repetition_penalty}")
        if self.cfg_scale < 0:
            raise GenerationError(f"cfg_scale must be >= 0, got {self.cfg_scale}")
        t = self.confidence_threshold
        if t is not None and not (math.isfinite(t) and 0.0 < t <= 1.0):
            raise GenerationError(f"confidence_threshold must be in (0, 1], got {t}")
        if self.seed is not None and not 0 <= self.seed <= SEED_MAX:
            raise GenerationError(f"seed is {self.seed}; expected an integer from 0 to {SEED_MAX} (2**63 - 1)")

    @property
    def total_steps(self) -> int:
        return self.steps if self.steps is not None else self.max_new_tokens

    @classmethod
    def from_settings(cls, *, temperature: float | None = None, **settings: Any) -> GenerationConfig:
        """A config from the settings a user gives (the CLI's flags, the app's settings panel).

        ``temperature`` None is the reference's entropy-adaptive temperature (its default),
        0 is greedy argmax, any other value samples ``softmax(logits / T)`` with top-p. The
        other keyword arguments are fields of :class:`GenerationConfig` (their defaults the
        reference's). The one place this convention is written.

        Raises:
            TypeError: an argument that is not a field (or ``entropy_sampling``, which
                ``temperature`` decides).
        """
        if temperature is None:
            return cls(entropy_sampling=True, **settings)
        return cls(temperature=temperature, entropy_sampling=False, **settings)


@dataclass
class StepEvent:
    """What one denoising step did (one event per step, streamed to the caller).

    Attributes:
        step: global denoising step index, from 0.
        block: index of the generated block being denoised.
        block_start: absolute position of that block's first token.
        positions: absolute positions committed this step, in commit (confidence) order.
        tokens: the token ids committed there.
        block_tokens: the block's tokens after this step; the mask id where still masked.
        hidden: ``(len(positions), D)`` final hidden states of the committed positions from
            this step's forward pass (steering included), when ``capture_hidden`` was asked for.
        logits: ``(len(positions),)`` fp32 LM logit of each committed token in that pass.
        steering: the steering plan this step ran with (None: unsteered); with live steering
            (:meth:`Generation.set_steering`) it tells which plan produced these tokens.
    """

    step: int
    block: int
    block_start: int
    positions: list[int]
    tokens: list[int]
    block_tokens: list[int]
    hidden: Tensor | None = None
    logits: Tensor | None = None
    steering: SteeringPlan | None = None


@dataclass
class GenerationResult:
    """A finished (or cancelled) generation.

    Attributes:
        text: decoded generated text (special tokens removed).
        token_ids: generated ids as the reference returns them: masks and EOS dropped, cut
            before the first stop token / ``<|eot_id|>``.
        prompt_ids: the prompt's ids.
        sequence: the whole final sequence, prompt + generated region (masks / EOS included).
        commit_step: per generated position, the step that committed it (-1: never).
        stop_reason: ``length``, ``eot``, ``stop_token`` or ``cancelled``.
        steps: denoising steps run.
        seed: the seed used.
        elapsed_s: wall time of the loop, seconds.
        first_commit_s: seconds until the first token was committed.
        positions: the absolute position in ``sequence`` of each id of ``token_ids``.
    """

    text: str
    token_ids: list[int]
    prompt_ids: list[int]
    sequence: list[int]
    commit_step: list[int]
    stop_reason: str
    steps: int
    seed: int
    elapsed_s: float
    first_commit_s: float
    positions: list[int] = field(default_factory=list)

    @property
    def committed_tokens(self) -> int:
        return sum(1 for s in self.commit_step if s >= 0)

    @property
    def tokens_per_s(self) -> float:
        """Committed tokens per second of loop wall time."""
        return self.committed_tokens / self.elapsed_s if self.elapsed_s > 0 else float("inf")


class Generation:
    """A running generation: iterate for :class:`StepEvent` s, then read :attr:`result`.

    ``cancel()`` (from any thread) stops it before the next step and keeps what was
    committed; ``set_steering()`` changes the steering from the next step on.
    """

    def __init__(
        self,
        model: SteerlingModel,
        tokenizer: SteerlingTokenizer,
        prompt_ids: list[int],
        config: GenerationConfig,
        steering: SteeringPlan | None = None,
        capture_hidden: bool = False,
    ):
        cfg = model.cfg
        if not prompt_ids:
            raise GenerationError("the prompt is empty: give at least one token of text")
        config.validate(cfg.diff_block_size)
        total = len(prompt_ids) + config.max_new_tokens
        if total > cfg.block_size:
            raise GenerationError(
                f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({config.max_new_tokens}) = {total} "
                f"exceeds the model's context of {cfg.block_size} tokens; shorten the prompt or generate fewer tokens"
            )
        bad = [i for i in prompt_ids if not 0 <= i < cfg.vocab_size]
        if bad:
            raise GenerationError(f"prompt token id {bad[0]} is outside the vocabulary (0..{cfg.vocab_size - 1})")
        if steering is not None and not steering.is_empty:
            require_interpretable(model, "steering", GenerationError)
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.prompt_ids = list(prompt_ids)
        self.capture_hidden = capture_hidden
        self.seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**31)
        self._steering = steering
        self._cancel = threading.Event()
        self.result: GenerationResult | None = None
        self.sequence: list[int] = list(prompt_ids)  # prompt + generated region, updated every step
        self._iter: Iterator[StepEvent] | None = None

    def output_positions(self, end: int | None = None) -> list[int]:
        """Absolute positions of the generated ids so far (see :func:`output_positions`); ``end``
        (absolute position) limits the region."""
        return output_positions(self.model.cfg, self.sequence, len(self.prompt_ids), self.config.stop_tokens, end)

    def generated_ids(self, end: int | None = None) -> list[int]:
        """Generated ids so far, cleaned as the final result is: masks and EOS dropped, cut before
        the first stop token / ``<|eot_id|>``; ``end`` (absolute position) limits the region."""
        return [self.sequence[p] for p in self.output_positions(end)]

    def cancel(self) -> None:
        """Stop before the next denoising step; committed tokens are kept."""
        self._cancel.set()

    def set_steering(self, steering: SteeringPlan | None) -> None:
        """Use ``steering`` from the next denoising step on (live steering)."""
        if steering is not None and not steering.is_empty:
            require_interpretable(self.model, "steering", GenerationError)
        self._steering = steering

    def __iter__(self) -> Iterator[StepEvent]:
        if self._iter is None:
            self._iter = self._run()
        return self._iter

    def run(self) -> GenerationResult:
        """Run to the end and return the result."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result

    # ------------------------------------------------------------------------------------
    @torch.inference_mode()
    def _run(self) -> Iterator[StepEvent]:
        model, cfg, gc, tok = self.model, self.model.cfg, self.config, self.tokenizer
        device = model.input_device
        dtype = compute_dtype(model)
        B = cfg.diff_block_size
        mask_id, eos_id = cfg.mask_token_id, cfg.eos_token_id
        P, G = len(self.prompt_ids), gc.max_new_tokens
        L = P + G
        n_blocks = G // B
        steps_per_block = gc.total_steps // n_blocks
        cfg_on = gc.cfg_scale > 0.0
        batch = 2 if cfg_on else 1

        x = torch.full((batch, L), mask_id, dtype=torch.long, device=device)
        x[0, :P] = torch.tensor(self.prompt_ids, dtype=torch.long, device=device)
        # distinct ids in the sequence, for the repetition penalty (the mask id is always present)
        seen_ids = torch.unique(torch.cat([x[0, :P], x.new_tensor([mask_id])]))
        processing = LogitProcessing(
            gc.repetition_penalty, torch.tensor([eos_id, mask_id, cfg.pad_token_id], device=device), gc.cfg_scale,
        )
        generator = torch.Generator(device=device).manual_seed(self.seed)
        cache = KVCache.allocate(model.layer_devices(), batch, cfg.kv_heads, L, cfg.head_dim, B, dtype)
        seq = self.sequence = [mask_id] * L
        seq[:P] = self.prompt_ids
        commit_step = [-1] * G
        stop_reason = "length"
        step = 0
        committed = 0
        cache_vector: Tensor | None = None  # steering vector the uncond (CFG) cache was built with
        t0 = time.perf_counter()
        first_commit: float | None = None

        for b in range(n_blocks):
            gs, ge = P + b * B, P + (b + 1) * B
            final_prefix = (gs // B) * B  # attention blocks before this one are fully committed
            win_end = min(((ge - 1) // B + 1) * B, L)
            masked = list(range(gs, ge))
            schedule = linear_schedule(B, steps_per_block)
            s_in_block = 0
            while masked:
                if self._cancel.is_set():
                    stop_reason = "cancelled"
                    break
                want = schedule[s_in_block] if s_in_block < len(schedule) else 1
                s_in_block += 1
                if want == 0 and gc.confidence_threshold is None:
                    continue  # a step that commits nothing changes nothing
                steering = StepSteering.at(self._steering, committed, G, dtype)
                vector = steering.vector if steering is not None else None
                if cfg_on and not _same(vector, cache_vector):
                    cache.length = 0  # the uncond row's masked prompt is steered: its cache is stale
                    cache_vector = vector
                start = cache.length
                rows = torch.tensor([p - start for p in masked], device=device)
                out = denoise_step(model, x[:, start:win_end], rows, cache=cache, start=start, steering=steering,
                                   processing=processing, seen_ids=seen_ids)
                cache.commit(final_prefix)
                proc = out.logits
                assert proc is not None
                conf = confidence(proc)
                k = want
                if gc.confidence_threshold is not None:
                    k = max(k, int((conf >= gc.confidence_threshold).sum()), 1)
                k = min(k, len(masked))
                sel = conf.topk(k).indices
                new_tokens = sample_tokens(
                    proc[sel], temperature=gc.temperature, top_p=gc.top_p,
                    entropy_sampling=gc.entropy_sampling, generator=generator,
                )
                sel_list, tok_list = sel.tolist(), new_tokens.tolist()
                positions: list[int] = []
                tokens: list[int] = []
                eot_at: int | None = None
                for i, t in zip(sel_list, tok_list):
                    positions.append(masked[i])
                    tokens.append(t)
                    if cfg.eot_id is not None and t == cfg.eot_id:
                        eot_at = masked[i]
                        break
                n = len(positions)
                pos_t = torch.tensor(positions, device=device)
                x[:, pos_t] = new_tokens[:n]
                seen_ids = torch.unique(torch.cat([seen_ids, new_tokens[:n]]))
                for p, t in zip(positions, tokens):
                    seq[p] = t
                    commit_step[p - P] = step
                if first_commit is None:
                    first_commit = time.perf_counter() - t0
                committed += n
                if eot_at is not None:
                    x[:, eot_at + 1:] = eos_id
                    for p in range(eot_at + 1, L):
                        seq[p] = eos_id
                    stop_reason = "eot"
                picked = set(positions)
                masked = [p for p in masked if p not in picked]
                event = StepEvent(
                    step=step, block=b, block_start=gs, positions=positions, tokens=tokens,
                    block_tokens=seq[gs:ge], steering=steering.plan if steering is not None else None,
                )
                if self.capture_hidden:
                    event.hidden, event.logits = _committed_states(model, out, sel[:n], new_tokens[:n], gc.cfg_scale)
                step += 1
                yield event
                if eot_at is not None:
                    break
            if stop_reason in ("eot", "cancelled"):
                break
            if gc.stop_tokens and any(t in gc.stop_tokens for t in seq[P:ge]):
                stop_reason = "stop_token"
                break

        elapsed = time.perf_counter() - t0
        positions_out = self.output_positions()
        out_ids = [seq[p] for p in positions_out]
        self.result = GenerationResult(
            text=tok.decode(out_ids), token_ids=out_ids, prompt_ids=self.prompt_ids, sequence=seq,
            commit_step=commit_step, stop_reason=stop_reason, steps=step, seed=self.seed,
            elapsed_s=elapsed, first_commit_s=first_commit if first_commit is not None else elapsed,
            positions=positions_out,
        )


def _committed_states(model: SteerlingModel, out: StepOutput, rows: Tensor, tokens: Tensor, cfg_scale: float) -> tuple[Tensor, Tensor]:
    """Final hidden states ``(n, D)`` of the committed rows of a step (the conditional row) and the
    raw fp32 logit ``(n,)`` of each committed token in that pass (guided as the step's logits).

    The step's logits were processed in place, so each raw logit is one dot product per token,
    not another pass over the LM head."""
    w = model.lm_head_weight[tokens].to(out.readout.dtype)
    raw = torch.einsum("bnd,nd->bn", out.readout[:, rows], w).unsqueeze(-1)
    return out.hidden[0, rows], guided(raw, cfg_scale)[0, :, 0].float()


def _same(a: Tensor | None, b: Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool(torch.equal(a, b))
