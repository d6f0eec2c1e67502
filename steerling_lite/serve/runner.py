"""What the worker thread runs: a generation turned into text deltas, and embeddings.

Steerling commits the tokens of a block in confidence order, not left to right, so text
is streamed as the **committed prefix** grows: after each denoising step, the tokens from
the last one sent up to the first still-masked position are final and are decoded and
sent (a character split across tokens, or the start of a stop string, is held back until
it is complete). The concatenated deltas are exactly the final text, which is what
``Steerling.generate`` returns for the same settings and seed, cut at a stop string or at
``max_tokens`` tokens (the generation is then cancelled: nothing more is computed).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import Steerling, SteeringBuilder, TokenAttribution, embed, explain_stream
from .prepare import GenerationRequest
from .queue import Job


@dataclass
class Delta:
    """Text committed by one denoising step, and (with attribution) its tokens' records."""

    text: str
    tokens: list[dict[str, Any]] | None = None


@dataclass
class Outcome:
    """A finished generation, as the response reports it."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    info: dict[str, Any]
    tokens: list[dict[str, Any]] | None = None


class DeltaTracker:
    """Text deltas of a generation's committed prefix (see the module docstring).

    Args:
        tokenizer: the model's tokenizer.
        prompt_len: tokens before the generated region.
        mask_id, eos_id: the mask token (not yet committed) and EOS (filler after ``<|eot_id|>``).
        terminal: ids that end the text (``<|eot_id|>``).
        max_tokens: tokens of text at most.
        stops: stop strings.
    """

    def __init__(self, tokenizer, prompt_len: int, mask_id: int, eos_id: int, terminal: set[int],
                 max_tokens: int, stops: Sequence[str] = ()):
        self.tokenizer, self.mask_id, self.eos_id, self.terminal = tokenizer, mask_id, eos_id, terminal
        self.max_tokens, self.stops = max_tokens, tuple(stops)
        self.pos = prompt_len
        self.ids: list[int] = []
        self.sent = ""
        self.finish_reason: str | None = None

    @property
    def done(self) -> bool:
        """The text is complete (a terminal token, ``max_tokens`` or a stop string was reached)."""
        return self.finish_reason is not None

    def advance(self, sequence: Sequence[int]) -> tuple[str, list[int]]:
        """The new text of the committed prefix of ``sequence`` (prompt + generated region), and
        the absolute positions of the tokens it added."""
        added: list[int] = []
        while not self.done and self.pos < len(sequence) and sequence[self.pos] != self.mask_id:
            p, t = self.pos, sequence[self.pos]
            self.pos += 1
            if t == self.eos_id:
                continue
            if t in self.terminal:
                self.finish_reason = "stop"
                break
            self.ids.append(t)
            added.append(p)
            if len(self.ids) >= self.max_tokens:
                self.finish_reason = "length"
        return self._delta(final=self.done), added

    def finish(self, stop_reason: str) -> str:
        """The rest of the text once generation ended with ``stop_reason`` (a
        :class:`~steerling_lite.GenerationResult` ``stop_reason``)."""
        if not self.done:
            self.finish_reason = {"length": "length", "cancelled": "cancelled"}.get(stop_reason, "stop")
        return self._delta(final=True)

    def _delta(self, final: bool) -> str:
        text = self.tokenizer.decode(self.ids)
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            text, final = text[:cut], True
            self.finish_reason = "stop"
        if not final:
            text = text.rstrip("\ufffd")  # a character whose bytes are not all committed yet
            hold = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
            text = text[:len(text) - hold]
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta


def token_record(t: TokenAttribution, top: int) -> dict[str, Any]:
    """A token's attribution for a chunk: its top concepts of both heads by ``|contribution|``
    (logit units) and the known / discovered / epsilon shares of its logit."""
    return {
        "token": t.text, "token_id": t.token_id, "index": t.index, "step": t.step, "logit": round(t.logit, 4),
        "shares": {k: round(v, 4) for k, v in t.shares.items()},
        "concepts": [{"id": c.concept_id, "head": c.head, "label": c.label, "weight": round(c.weight, 4),
                      "contribution": round(c.contribution, 4)} for c in t.top(top)],
    }


@dataclass
class Engine:
    """The loaded model and what the worker keeps for it (only the worker thread uses it).

    Attributes:
        lm: the model; builder: its steering builder (None without concept heads);
        catalog: concept labels for attribution.
    """

    lm: Steerling
    builder: SteeringBuilder | None
    catalog: Any

    def generate(self, req: GenerationRequest, job: Job) -> Outcome:
        """Run ``req``, emitting a :class:`Delta` per step that adds text; return the :class:`Outcome`."""
        lm, cfg = self.lm, self.lm.config
        plan = None
        if self.builder is not None and (req.steering or req.inject_layer is not None):
            plan = self.builder.build(req.steering, req.inject_layer)
            plan = None if plan.is_empty else plan
        if req.attribution_top is not None:
            stream = explain_stream(lm, req.prompt_ids, req.config, plan, catalog=self.catalog)
            gen = stream.generation
        else:
            stream = gen = lm.stream(req.prompt_ids, req.config, plan)
        job.attach(stream)
        terminal = {cfg.eot_id} if cfg.eot_id is not None else set()
        tracker = DeltaTracker(lm.tokenizer, len(req.prompt_ids), cfg.mask_token_id, cfg.eos_token_id, terminal,
                               req.max_tokens, req.stops)
        records: dict[int, TokenAttribution] = {}
        all_tokens: list[dict[str, Any]] | None = [] if req.attribution_top is not None else None
        if req.echo:
            job.emit(Delta(req.echo, [] if all_tokens is not None else None))
        for step in stream:
            if all_tokens is not None:
                records.update((t.position, t) for t in step.tokens)
            text, added = tracker.advance(gen.sequence)
            tokens = None
            if all_tokens is not None:
                tokens = [token_record(records.pop(p), req.attribution_top) for p in added if p in records]
                all_tokens += tokens
            if text or tokens:
                job.emit(Delta(text, tokens))
            job.step_done()
            if tracker.done:
                stream.cancel()  # the text is complete: compute nothing more
        result = gen.result
        tail = tracker.finish(result.stop_reason)
        if tail:
            job.emit(Delta(tail, [] if all_tokens is not None else None))
        info = {
            "seed": result.seed, "steps": result.steps, "max_tokens": req.max_tokens,
            "max_new_tokens": req.config.max_new_tokens, "rounded_up": req.rounded_up,
            "stop_reason": result.stop_reason, "tokens_per_s": round(result.tokens_per_s, 2),
            "steering": plan.describe() if plan is not None else None,
        }
        return Outcome(req.echo + tracker.sent, tracker.finish_reason or "stop", len(req.prompt_ids),
                       len(tracker.ids), info, all_tokens)

    def embeddings(self, inputs: list[list[int]], kind: str, pooling: str, encoding: str) -> list[Any]:
        """One embedding per input (see :func:`steerling_lite.embed`): a list of floats, a list of
        per-token lists with ``pooling="none"``, or base64 of little-endian float32 with ``base64``.

        Raises:
            ConceptError: an unknown kind or pooling, or concept embeddings of a model without heads.
        """
        out = []
        for ids in inputs:
            vec = embed(self.lm, ids, kind, pooling).float().cpu().numpy()
            if encoding == "base64":
                out.append(base64.b64encode(np.ascontiguousarray(vec, dtype="<f4").tobytes()).decode("ascii"))
            else:
                out.append(vec.tolist())
        return out
