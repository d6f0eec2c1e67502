"""The offline tokenizer: same ids as the reference's, special tokens, chat template."""

from __future__ import annotations

import pytest

from steerling_lite.loading.tokenizer import ChatMessage, SteerlingTokenizer
from tests.oracle import prepare_tiktoken_cache

TEXTS = [
    "Hello, world!",
    "Steerling explains every token: <|mask|> and <|endofchunk|> here are plain text.",
    "Ünïcödé — 漢字 and emoji 🎉\n\ttabs   spaces",
    "",
]


@pytest.mark.parametrize("instruct", [False, True])
def test_ids_match_the_reference_tokenizer(instruct):
    prepare_tiktoken_cache()
    from steerling.data.tokenizer import SteerlingTokenizer as Ref

    ours, ref = SteerlingTokenizer(instruct), Ref(instruct=instruct)
    assert ours.vocab_size == ref.vocab_size
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "endofchunk_token_id", "mask_token_id", "eot_id"):
        assert getattr(ours, name) == getattr(ref, name), name
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == ref.encode(text, add_special_tokens=False)
        assert ours.decode(ids) == ref.decode(ids) == text
    specials = [ours.mask_token_id, ours.endofchunk_token_id, 9906]
    assert ours.decode(specials) == ref.decode(specials)
    assert ours.decode(specials, skip_special_tokens=False) == ref.decode(specials, skip_special_tokens=False)


def test_chat_template():
    tok = SteerlingTokenizer(instruct=True)
    msgs = [ChatMessage("system", "Be brief."), ChatMessage("user", "Hi <|eot_id|> there")]
    ids = tok.chat_prompt(msgs)
    expected = (
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|endofchunk|><|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n"
    )
    want = tok.encode_with_specials(expected) + tok.encode("Hi <|eot_id|> there")
    want += [tok.endofchunk_token_id, tok.eot_id] + tok.encode_with_specials("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert ids == want
    assert ids.count(tok.eot_id) == 2  # the user's literal "<|eot_id|>" text is not a control token
    with pytest.raises(ValueError, match="instruct tokenizer"):
        SteerlingTokenizer(instruct=False).chat_prompt(msgs)
    with pytest.raises(ValueError, match="chat role 'robot'"):
        tok.chat_prompt([ChatMessage("robot", "x")])


def test_ids_without_text_decode_to_nothing():
    """cl100k leaves 100256 and 100261..100275 unused; a model can still sample them."""
    tok = SteerlingTokenizer()
    hello = tok.encode("hello")
    assert tok.decode(hello + [100256, 100270] + hello) == "hellohello"
    assert tok.token_text(100256) == "\ufffd" and not tok.is_text_token(100275)
    assert tok.is_text_token(100257) and tok.is_text_token(100255) and tok.is_text_token(100280)
