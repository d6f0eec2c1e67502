"""The trace of a generation: enough to rebuild the sequence the model read at any denoising step.

Recorded from the :class:`~steerling_lite.generation.generate.StepEvent` s of a generation (each step's
committed positions and tokens, and the steering it ran with); input attribution
replays it (:mod:`steerling_lite.interpret.input_attribution`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .generate import StepEvent
from .steering import SteeringPlan

# the trace of a generation (what input attribution replays)


@dataclass(frozen=True)
class StepTrace:
    """One denoising step: the steering it ran with and how many tokens were committed before it."""

    step: int
    block_start: int
    plan: SteeringPlan | None
    committed_before: int


@dataclass
class GenerationTrace:
    """Enough of a generation to rebuild the sequence the model saw at any step.

    Attributes:
        prompt_ids: the prompt's ids.
        max_new_tokens: length of the generated region.
        mask_id: the mask token id.
        block: the diffusion block size B.
        cfg_scale: classifier-free guidance scale of the generation.
        steps: per step that ran (index = step number), see :class:`StepTrace`.
        committed: absolute position -> (token id, step that committed it).
    """

    prompt_ids: list[int]
    max_new_tokens: int
    mask_id: int
    block: int
    cfg_scale: float = 0.0
    steps: list[StepTrace] = field(default_factory=list)
    committed: dict[int, tuple[int, int]] = field(default_factory=dict)

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    @property
    def length(self) -> int:
        """Prompt + generated region, tokens."""
        return len(self.prompt_ids) + self.max_new_tokens

    def add(self, event: StepEvent) -> None:
        """Record a step (events must come in order)."""
        before = len(self.committed)
        self.steps.append(StepTrace(event.step, event.block_start, event.steering, before))
        for p, t in zip(event.positions, event.tokens):
            self.committed[p] = (t, event.step)

    def snapshot(self, step: int) -> list[int]:
        """The sequence the model read at ``step``: prompt, the tokens committed at earlier
        steps, the mask everywhere else (``length`` ids)."""
        seq = list(self.prompt_ids) + [self.mask_id] * self.max_new_tokens
        for p, (t, s) in self.committed.items():
            if s < step:
                seq[p] = t
        return seq

    def sequence(self) -> list[int]:
        """The sequence with every committed token (masks where nothing was committed)."""
        return self.snapshot(len(self.steps) + 1)
