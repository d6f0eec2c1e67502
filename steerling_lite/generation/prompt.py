"""Prompt building: text and chat turns to the token ids a generation starts from.

The one home of the convention the CLI, the app and :meth:`Steerling.encode_prompt` share:
a completion prompt is the text encoded as is; a chat prompt is the earlier turns, then the
text as the user's turn, in the instruct model's chat template
(:meth:`~steerling_lite.loading.tokenizer.SteerlingTokenizer.chat_prompt`, which ends with
the assistant's header, as the reference's ``apply_chat_template(...,
add_generation_prompt=True)``); by default instruct models get the chat template.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import GenerationError
from ..loading.tokenizer import ChatMessage, SteerlingTokenizer


def build_prompt(
    tokenizer: SteerlingTokenizer,
    text: str | None = None,
    messages: Sequence[ChatMessage] | None = None,
    chat: bool | None = False,
) -> list[int]:
    """Token ids of a prompt.

    Args:
        tokenizer: the model's tokenizer.
        text: the new text: the completion prompt, or with ``chat`` the user's turn.
        messages: the turns before ``text`` (system, user, assistant), in order. Only a chat
            prompt has turns: without ``chat`` they are left out (a base model continues
            ``text`` alone).
        chat: use the chat template; None: when the tokenizer is the instruct one.

    Returns:
        the prompt's token ids.

    Raises:
        GenerationError: no ``text`` for a completion prompt, or neither ``text`` nor ``messages``.
        GenerationError: the chat template asked for on a base model's tokenizer.
        ValueError: a bad role (from ``chat_prompt``).
    """
    use_chat = tokenizer.instruct if chat is None else chat
    if not use_chat:
        if text is None:
            raise GenerationError("a completion prompt needs text (turns need the chat template: chat=True)")
        return tokenizer.encode(text)
    if not tokenizer.instruct:
        raise GenerationError("the chat template needs an instruct model; this one is a base model "
                              "(tokenizer vocab without chat tokens): drop --chat / pass chat=False")
    turns = list(messages or [])
    if text is not None:
        turns.append(ChatMessage("user", text))
    if not turns:
        raise GenerationError("the prompt is empty: give text or chat messages")
    return tokenizer.chat_prompt(turns)
