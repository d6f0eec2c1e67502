"""Response bodies and server-sent events in the OpenAI API's shapes.

Streams are ``text/event-stream``: one ``data: {json}`` event per chunk, a last chunk
with ``finish_reason`` (and Steerling's ``steerling`` facts: seed, steps, tokens
generated), a usage chunk with no choices when ``stream_options.include_usage`` is set,
then ``data: [DONE]``. With attribution each chunk's choice carries ``attribution``: the
records of the tokens whose text the chunk adds (see :func:`.runner.token_record`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .runner import Delta, Outcome


@dataclass(frozen=True)
class Reply:
    """Identity of one response: its id, creation time (Unix seconds), model name and kind."""

    id: str
    created: int
    model: str
    chat: bool

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def _choice(self, text: str | None, finish_reason: str | None, tokens: list | None, final: bool) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            if final:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["delta"] = {} if text is None else {"content": text}
        else:
            choice["text"] = text or ""
        choice["logprobs"] = None
        choice["finish_reason"] = finish_reason
        if tokens is not None:
            choice["attribution"] = tokens
        return choice

    # ---- whole responses -------------------------------------------------------------------
    def body(self, outcome: Outcome) -> dict[str, Any]:
        """The non-streamed response: ``text_completion`` or ``chat.completion``."""
        out = self._head("chat.completion" if self.chat else "text_completion")
        out["choices"] = [self._choice(outcome.text, outcome.finish_reason, outcome.tokens, final=True)]
        out["usage"] = usage(outcome)
        out["steerling"] = outcome.info
        return out

    # ---- streams -------------------------------------------------------------------------
    def _event(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        out = self._head("chat.completion.chunk" if self.chat else "text_completion")
        out["choices"] = choices
        out.update(extra)
        return f"data: {json.dumps(out, ensure_ascii=False)}\n\n"

    def role_event(self) -> str:
        """Chat streams open with the assistant's role, as OpenAI's do."""
        choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        return self._event([choice])

    def delta_event(self, delta: Delta) -> str:
        return self._event([self._choice(delta.text, None, delta.tokens, final=False)])

    def final_events(self, outcome: Outcome, include_usage: bool) -> str:
        """The chunk with ``finish_reason``, the usage chunk if asked for, and ``[DONE]``."""
        text = None if self.chat else ""
        out = self._event([self._choice(text, outcome.finish_reason, None, final=False)], steerling=outcome.info)
        if include_usage:
            out += self._event([], usage=usage(outcome))
        return out + DONE


DONE = "data: [DONE]\n\n"


def usage(outcome: Outcome) -> dict[str, int]:
    """OpenAI's ``usage``: prompt, completion (returned) and total tokens."""
    return {"prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens,
            "total_tokens": outcome.prompt_tokens + outcome.completion_tokens}


def error_event(body: dict[str, Any]) -> str:
    """An error after the stream began (its status line was already sent): an ``error`` event, then ``[DONE]``."""
    return f"data: {json.dumps(body)}\n\n{DONE}"
