"""Output positions: which positions of a generated sequence make up its output.

A masked-diffusion generation fills a fixed region after the prompt; its output (what
``GenerationResult.token_ids`` holds, and what the CLI prints and the app shows) is that
region with the mask and EOS tokens skipped, cut before the first stop token or
``<|eot_id|>`` (the reference's cleaning of its output, ``steerling==0.2.0``
``SteerlingGenerator.generate_full``). The one home of this bookkeeping: the generation loop,
streaming output, attribution chunks and the app all take positions from here.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..loading.config import SteerlingConfig


def stop_ids(cfg: SteerlingConfig, stop_tokens: Sequence[int] = ()) -> tuple[int, ...]:
    """The ids generated text is cut before: ``stop_tokens``, then ``<|eot_id|>`` for instruct models."""
    return tuple(stop_tokens) + ((cfg.eot_id,) if cfg.eot_id is not None else ())


def output_positions(cfg: SteerlingConfig, sequence: Sequence[int], prompt_len: int,
                     stop_tokens: Sequence[int] = (), end: int | None = None) -> list[int]:
    """Absolute positions of the generated tokens a result keeps, in order: those of
    ``sequence[prompt_len:end]`` that are not the mask or EOS, cut before the first of
    :func:`stop_ids` (reference ``generate_full``). The one home of the
    generated-position bookkeeping: ``GenerationResult.token_ids`` are ``sequence`` at these.
    """
    terminal = set(stop_ids(cfg, stop_tokens))
    skip = (cfg.mask_token_id, cfg.eos_token_id)
    stop = len(sequence) if end is None else min(end, len(sequence))
    out: list[int] = []
    for p in range(prompt_len, stop):
        t = sequence[p]
        if t in skip:
            continue
        if t in terminal:
            break
        out.append(p)
    return out
