"""The denoising loop: streaming events, cancellation, parallel decoding, settings validation."""

from __future__ import annotations

import threading

import pytest

from steerling_lite import GenerationConfig, GenerationError, Steerling

MASK = 100280


@pytest.fixture(scope="module")
def lm(make_ckpt):
    return Steerling.load(make_ckpt(diff_block_size=16), dtype="fp32")


PROMPT = list(range(1000, 1013))  # 13 tokens: the first generated block straddles two attention blocks


def test_stream_commits_each_position_once_and_matches_generate(lm):
    cfg = GenerationConfig(max_new_tokens=48, steps=12, temperature=0.0)
    gen = lm.stream(PROMPT, cfg)
    events = list(gen)
    assert len(events) == 12 == gen.result.steps
    committed = [p for e in events for p in e.positions]
    assert sorted(committed) == list(range(13, 13 + 48))
    assert all(len(e.positions) == 4 for e in events)  # 16 tokens / 4 steps per block
    for e in events:  # block_tokens shows this step's commits and masks where still masked
        for p, t in zip(e.positions, e.tokens):
            assert e.block_tokens[p - e.block_start] == t
    assert events[0].block_tokens.count(MASK) == 12 and MASK not in events[3].block_tokens
    assert gen.result.sequence == lm.generate(PROMPT, cfg).sequence
    assert [e.step for e in events] == list(range(12))
    assert gen.result.commit_step[0] in range(4) and max(gen.result.commit_step) == 11


def test_cancel_keeps_what_was_committed(lm):
    gen = lm.stream(PROMPT, GenerationConfig(max_new_tokens=48, temperature=0.0))
    seen = []
    for event in gen:
        seen.extend(zip(event.positions, event.tokens))
        if len(seen) == 5:
            gen.cancel()
    r = gen.result
    assert r.stop_reason == "cancelled" and r.steps == 5 and r.committed_tokens == 5
    for p, t in seen:
        assert r.sequence[p] == t
    assert r.token_ids == [t for p, t in sorted(seen)]


def test_cancel_from_another_thread(lm):
    gen = lm.stream(PROMPT, GenerationConfig(max_new_tokens=48, temperature=0.0))
    first = threading.Event()

    def consume():
        for _ in gen:
            first.set()
            first.wait()

    t = threading.Thread(target=consume)
    t.start()
    first.wait(10)
    gen.cancel()
    t.join(10)
    assert gen.result is not None and gen.result.stop_reason == "cancelled" and gen.result.steps < 48


def test_parallel_decoding_commits_confident_positions_together(lm):
    base = GenerationConfig(max_new_tokens=48, temperature=0.0)
    default = lm.generate(PROMPT, base)
    everything = lm.generate(PROMPT, GenerationConfig(max_new_tokens=48, temperature=0.0, confidence_threshold=1e-9))
    assert default.steps == 48
    assert everything.steps == 3  # every position is above the threshold: one step per block
    assert MASK not in everything.sequence
    strict = lm.generate(PROMPT, GenerationConfig(max_new_tokens=48, temperature=0.0, confidence_threshold=1.0))
    assert strict.sequence == default.sequence  # nothing reaches 1.0: the schedule alone decides


def test_instruct_prompts_use_the_chat_template(make_ckpt):
    lm = Steerling.load(make_ckpt(diff_block_size=16, instruct=True), dtype="fp32")
    ids = lm.encode_prompt("hello")
    assert ids[0] == lm.tokenizer.start_header_id and ids[-1] == lm.tokenizer.encode("\n\n")[-1]
    assert lm.tokenizer.end_header_id in ids[-3:]
    assert lm.encode_prompt("hello", chat=False) == lm.tokenizer.encode("hello")


@pytest.mark.parametrize("kwargs,match", [
    (dict(max_new_tokens=20), "multiple of the model's diffusion block size 16 \\(try 32\\)"),
    (dict(max_new_tokens=48, steps=10), "steps is 10; it must be a positive multiple of the number of generated blocks \\(3"),
    (dict(max_new_tokens=16, temperature=-1), "temperature must be >= 0"),
    (dict(max_new_tokens=16, top_p=1.5), "top_p must be in \\[0, 1\\]"),
    (dict(max_new_tokens=16, repetition_penalty=0.5), "repetition_penalty must be >= 1"),
    (dict(max_new_tokens=16, temperature=float("nan")), "temperature must be a finite number"),
    (dict(max_new_tokens=16, confidence_threshold=0.0), "confidence_threshold must be in \\(0, 1\\]"),
    (dict(max_new_tokens=1024), "exceeds the model's context of 1024 tokens"),
])
def test_invalid_settings_are_refused(lm, kwargs, match):
    with pytest.raises(GenerationError, match=match):
        lm.stream(PROMPT, GenerationConfig(**kwargs))


def test_empty_prompt_and_bad_ids(lm):
    with pytest.raises(GenerationError, match="prompt is empty"):
        lm.stream("", GenerationConfig(max_new_tokens=16))
    with pytest.raises(GenerationError, match="token id 200000 is outside the vocabulary"):
        lm.stream([200000], GenerationConfig(max_new_tokens=16))
