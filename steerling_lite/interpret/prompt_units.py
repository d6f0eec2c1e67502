"""The pieces of a prompt that occlusion masks as one: tokens, words, sentences or lines.

Boundaries are read from each token's exact UTF-8 bytes (BPE tokens carry their leading
space, so a new word begins where a token begins with whitespace), which keeps every unit a
run of whole tokens and the units together an exact, non-overlapping cover of the prompt:

- ``token``: every token is a unit;
- ``word``: whitespace-delimited, as ``str.split`` cuts (punctuation stays with its word);
  whitespace-only tokens and special tokens are units of their own;
- ``sentence``: ends after a token ending in ``.``, ``!`` or ``?`` when whitespace follows,
  and after a line break;
- ``line``: ends after a token holding a line break.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConceptError

GRANULARITIES = ("token", "word", "sentence", "line")


@dataclass(frozen=True)
class PromptUnit:
    """A run of prompt positions ``[start, end)`` occluded together.

    Attributes:
        start, end: absolute positions (the prompt starts at 0), end exclusive.
        text: the unit's text (bytes that are not whole UTF-8 characters as U+FFFD).
    """

    start: int
    end: int
    text: str

    def __len__(self) -> int:
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "text": self.text}


def _boundary(granularity: str, prev: bytes, cur: bytes, prev_special: bool, cur_special: bool) -> bool:
    """Whether a new unit begins at a token with bytes ``cur`` after one with bytes ``prev``."""
    if granularity == "token":
        return True
    if granularity == "line":
        return b"\n" in prev
    if granularity == "sentence":
        if b"\n" in prev:
            return True
        space_between = prev[-1:].isspace() or cur[:1].isspace()
        return prev.rstrip()[-1:] in (b".", b"!", b"?") and space_between
    # word: special tokens and tokens without text are units of their own
    if prev_special or cur_special or not prev or not cur:
        return True
    return cur[:1].isspace() or prev[-1:].isspace()


def prompt_units(tokenizer, prompt_ids: Sequence[int], granularity: str = "word") -> list[PromptUnit]:
    """Cut a prompt into units of ``granularity`` (see the module docstring).

    Args:
        tokenizer: a :class:`~steerling_lite.SteerlingTokenizer` (``token_bytes``, ``special_ids``).
        prompt_ids: the prompt's token ids.
        granularity: ``token``, ``word``, ``sentence`` or ``line``.

    Returns:
        units in prompt order; every position ``0 .. len(prompt_ids) - 1`` is in exactly one.

    Raises:
        ConceptError: an unknown ``granularity``.
    """
    if granularity not in GRANULARITIES:
        raise ConceptError(f"granularity {granularity!r}: expected one of {', '.join(GRANULARITIES)}")
    ids = [int(t) for t in prompt_ids]
    special = getattr(tokenizer, "special_ids", frozenset())
    pieces = [tokenizer.token_bytes([t]) for t in ids]
    starts = [i for i in range(len(ids))
              if i == 0 or _boundary(granularity, pieces[i - 1], pieces[i], ids[i - 1] in special, ids[i] in special)]
    ends = starts[1:] + [len(ids)]
    return [PromptUnit(s, e, b"".join(pieces[s:e]).decode("utf-8", errors="replace")) for s, e in zip(starts, ends)]


def check_units(units: Sequence[PromptUnit | tuple[int, int]], prompt_len: int, tokenizer=None,
                prompt_ids: Sequence[int] = ()) -> list[PromptUnit]:
    """Explicit units as :class:`PromptUnit` s (``(start, end)`` pairs get their text from
    ``tokenizer``). An empty unit (``start == end``) occludes nothing.

    Raises:
        ConceptError: a unit outside the prompt ``[0, prompt_len)``, or with ``start > end``.
    """
    out = []
    for u in units:
        s, e = (u.start, u.end) if isinstance(u, PromptUnit) else (int(u[0]), int(u[1]))
        if not 0 <= s <= e <= prompt_len:
            raise ConceptError(f"unit [{s}, {e}) is outside the prompt: expected 0 <= start <= end <= {prompt_len}")
        if isinstance(u, PromptUnit):
            out.append(u)
            continue
        text = tokenizer.token_bytes(prompt_ids[s:e]).decode("utf-8", errors="replace") if tokenizer else ""
        out.append(PromptUnit(s, e, text))
    return out
