"""The denoising step as a unit, and the conventions generation shares with the CLI and the app:
sampling settings (temperature None = entropy-adaptive), prompt building, output positions."""

from __future__ import annotations

import pytest
import torch

from steerling_lite import ChatMessage, GenerationConfig, GenerationError, Steerling, SteeringBuilder, build_prompt
from steerling_lite.generation.output import output_positions, stop_ids
from steerling_lite.generation.sampling import process_logits
from steerling_lite.generation.step import LogitProcessing, StepSteering, compute_dtype, denoise_step, guided
from steerling_lite.model.kv_cache import KVCache


@pytest.fixture(scope="module")
def lm(make_ckpt):
    return Steerling.load(make_ckpt(diff_block_size=16), dtype="fp32")


def _ids(lm, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(1000, 5000, (1, n), generator=g)
    x[0, n // 2:] = lm.config.mask_token_id  # the second half still masked
    return x


@torch.inference_mode()
def test_step_over_a_cached_window_equals_the_step_over_the_whole_sequence(lm):
    model, cfg = lm.model, lm.config
    B = cfg.diff_block_size
    x = _ids(lm, 3 * B)
    rows = torch.arange(2 * B, 3 * B)
    full = denoise_step(model, x, rows)
    cache = KVCache.allocate(model.layer_devices(), 1, cfg.kv_heads, 3 * B, cfg.head_dim, B, torch.float32)
    denoise_step(model, x[:, :2 * B], torch.arange(2 * B), cache=cache)
    cache.commit(2 * B)
    windowed = denoise_step(model, x[:, 2 * B:], rows - 2 * B, cache=cache, start=2 * B)
    assert windowed.hidden.shape == (1, B, cfg.n_embd)
    torch.testing.assert_close(windowed.hidden, full.hidden, atol=1e-5, rtol=1e-5)
    assert windowed.readout is windowed.hidden and windowed.logits is None  # unsteered, no processing


@torch.inference_mode()
def test_a_batch_of_sequences_is_the_steps_of_each_sequence(lm):
    """Batched forward passes (issue 14): B different sequences, partly masked, steered, in one step
    give what B one-sequence steps give, with and without a KV cache."""
    model, cfg = lm.model, lm.config
    B = cfg.diff_block_size
    x = torch.cat([_ids(lm, 3 * B, seed=s) for s in range(3)])
    x[1, 2 * B + 3:] = cfg.mask_token_id
    rows = torch.arange(2 * B, 3 * B)
    from steerling_lite import Steering

    plan = SteeringBuilder(lm).build([Steering(3, "amplify", 8.0), Steering(5, "intervene", 1.0)], inject_layer=1)
    steering = StepSteering.at(plan, 0, 32, torch.float32)
    batched = denoise_step(model, x, rows, steering=steering)
    for i in range(3):
        one = denoise_step(model, x[i:i + 1], rows, steering=steering)
        torch.testing.assert_close(batched.readout[i:i + 1], one.readout, atol=1e-5, rtol=1e-5)
    cache = KVCache.allocate(model.layer_devices(), 3, cfg.kv_heads, 3 * B, cfg.head_dim, B, torch.float32)
    denoise_step(model, x[:, :2 * B], torch.arange(2 * B), cache=cache)
    cache.commit(2 * B)
    windowed = denoise_step(model, x[:, 2 * B:], rows - 2 * B, cache=cache, start=2 * B)
    torch.testing.assert_close(windowed.hidden, denoise_step(model, x, rows).hidden, atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_step_logits_are_the_processed_lm_logits_of_the_rows(lm):
    model, cfg = lm.model, lm.config
    x = _ids(lm, 32, seed=1)
    rows = torch.tensor([20, 25, 31])
    seen = torch.unique(x[0])
    banned = torch.tensor([cfg.eos_token_id, cfg.mask_token_id, cfg.pad_token_id])
    out = denoise_step(model, x, rows, processing=LogitProcessing(1.3, banned), seen_ids=seen)
    want = process_logits(model.lm_logits(out.hidden)[0].float(), seen, 1.3, banned)
    assert out.logits is not None and out.logits.shape == (3, cfg.vocab_size)
    assert torch.equal(out.logits, want)
    assert torch.isinf(out.logits[:, cfg.mask_token_id]).all()


@torch.inference_mode()
def test_step_steering_injects_at_masked_positions_and_intervenes_in_the_readout(lm):
    model = lm.model
    x = _ids(lm, 32, seed=2)
    rows = torch.arange(32)
    plan = SteeringBuilder(lm).build([], inject_layer=0)
    assert StepSteering.at(None, 0, 32, torch.float32) is None
    assert StepSteering.at(plan, 0, 32, torch.float32) is None  # an empty plan is no steering
    plain = denoise_step(model, x, rows)
    from steerling_lite import Steering

    amp = SteeringBuilder(lm).build([Steering(3, "amplify", 8.0)], inject_layer=model.cfg.n_layers)
    steering = StepSteering.at(amp, 0, 32, torch.float32)
    assert steering is not None and torch.equal(steering.vector, amp.vector(0, 32, torch.float32))
    steered = denoise_step(model, x, rows, steering=steering)
    # injected after the last block only: the unmasked rows (first half) are untouched
    torch.testing.assert_close(steered.hidden[0, :16], plain.hidden[0, :16])
    assert not torch.allclose(steered.hidden[0, 16:], plain.hidden[0, 16:])
    assert StepSteering.at(amp, 32, 32, torch.float32).vector is None  # hard cutoff after 32 tokens

    iv = SteeringBuilder(lm).build([Steering(3, "intervene", 1.0)])
    out = denoise_step(model, x, rows, steering=StepSteering.at(iv, 0, 32, torch.float32))
    torch.testing.assert_close(out.readout[0], iv.readout(model, out.hidden[0]))
    assert not torch.allclose(out.readout, out.hidden)


def test_guided_is_classifier_free_guidance():
    cond, uncond = torch.randn(3, 5), torch.randn(3, 5)
    both = torch.stack([cond, uncond])
    assert guided(both, 0.0) is both
    torch.testing.assert_close(guided(both, 2.0)[0], uncond + 3.0 * (cond - uncond))


def test_compute_dtype(lm):
    assert compute_dtype(lm.model) == torch.float32


def test_from_settings_temperature_none_is_entropy_sampling():
    entropy = GenerationConfig.from_settings(max_new_tokens=32, temperature=None, seed=3)
    assert entropy.entropy_sampling and entropy.temperature == GenerationConfig().temperature
    assert entropy.max_new_tokens == 32 and entropy.seed == 3
    greedy = GenerationConfig.from_settings(temperature=0.0)
    assert greedy.temperature == 0.0 and not greedy.entropy_sampling
    plain = GenerationConfig.from_settings(temperature=0.7, top_p=0.5)
    assert plain.temperature == 0.7 and not plain.entropy_sampling and plain.top_p == 0.5
    assert GenerationConfig.from_settings() == GenerationConfig()  # the reference's defaults
    with pytest.raises(TypeError):
        GenerationConfig.from_settings(temperatur=1.0)


def test_build_prompt_completion_and_chat(lm, make_ckpt):
    tok = lm.tokenizer  # base model
    assert build_prompt(tok, "Once upon") == tok.encode("Once upon")
    assert build_prompt(tok, "Once upon", chat=None) == tok.encode("Once upon")  # base: completion
    # a completion prompt is the text alone: earlier turns need the chat template
    assert build_prompt(tok, "Once upon", messages=[ChatMessage("system", "Be brief.")]) == tok.encode("Once upon")
    with pytest.raises(GenerationError, match="needs text"):
        build_prompt(tok, messages=[ChatMessage("user", "hi")])
    inst = Steerling.load(make_ckpt(instruct=True), dtype="fp32")
    it = inst.tokenizer
    turns = [ChatMessage("system", "Be brief."), ChatMessage("user", "Hi"), ChatMessage("assistant", "Hello.")]
    want = it.chat_prompt(turns + [ChatMessage("user", "And then?")])
    assert build_prompt(it, "And then?", messages=turns, chat=None) == want  # instruct: chat by default
    assert build_prompt(it, "And then?", messages=turns, chat=True) == want
    assert build_prompt(it, messages=turns + [ChatMessage("user", "And then?")], chat=True) == want
    assert build_prompt(it, "And then?", messages=turns, chat=False) == it.encode("And then?")
    assert inst.encode_prompt("Hi") == build_prompt(it, "Hi", chat=True)
    assert inst.encode_prompt(turns) == it.chat_prompt(turns)
    with pytest.raises(GenerationError, match="empty"):
        build_prompt(it, chat=True)


def test_output_positions_skip_masks_and_eos_and_cut_at_stops(lm):
    cfg = lm.config
    M, E = cfg.mask_token_id, cfg.eos_token_id
    seq = [1, 2, 3, 10, M, 11, E, 12, 99, 13]  # prompt of 3
    assert output_positions(cfg, seq, 3) == [3, 5, 7, 8, 9]
    assert output_positions(cfg, seq, 3, stop_tokens=(99,)) == [3, 5, 7]
    assert output_positions(cfg, seq, 3, end=6) == [3, 5]
    assert stop_ids(cfg, (99,)) == (99,)  # a base model has no <|eot_id|>


def test_result_positions_locate_the_output_ids(lm):
    cfg = GenerationConfig(max_new_tokens=32, steps=8, temperature=0.0)
    prompt = list(range(1000, 1013))
    r = lm.generate(prompt, cfg)
    assert r.token_ids == [r.sequence[p] for p in r.positions]
    assert all(p >= len(prompt) for p in r.positions) and r.positions == sorted(r.positions)
    stop = r.token_ids[5]
    cut = lm.generate(prompt, GenerationConfig(max_new_tokens=32, steps=8, temperature=0.0, stop_tokens=(stop,)))
    first = r.token_ids.index(stop)
    assert cut.token_ids == r.token_ids[:first] and cut.positions == r.positions[:first]
