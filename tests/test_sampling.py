"""Batched sampling against the reference's per-token functions, on the same random stream."""

from __future__ import annotations

import pytest
import torch

from steerling_lite.generation.sampling import linear_schedule, process_logits, sample_tokens, sorted_prefix


def _reference():
    from steerling.configs import GenerationConfig
    from steerling.inference.causal_diffusion import _get_num_transfer_tokens, _sample_token

    return GenerationConfig, _sample_token, _get_num_transfer_tokens


@pytest.mark.parametrize("scale", [0.3, 3.0, 8.0])  # flat (full sort) to peaked (nucleus prefix only)
@pytest.mark.parametrize("entropy,temperature,top_p", [(True, 1.2, 0.8), (False, 0.7, 0.9), (False, 1.0, 1.0)])
def test_sample_tokens_draw_what_the_reference_draws(scale, entropy, temperature, top_p):
    GenerationConfig, ref_sample, _ = _reference()
    g = torch.Generator().manual_seed(int(scale * 10))
    logits = torch.randn(6, 100281, generator=g) * scale
    logits[:, [100257, 100277, 100280]] = float("-inf")
    cfg = GenerationConfig(use_entropy_sampling=entropy, temperature=temperature, top_p=top_p)
    ref_gen, our_gen = torch.Generator().manual_seed(99), torch.Generator().manual_seed(99)
    want = [int(ref_sample(logits[i], cfg, ref_gen)) for i in range(6)]
    got = sample_tokens(logits, temperature=temperature, top_p=top_p, entropy_sampling=entropy, generator=our_gen)
    assert got.tolist() == want
    assert torch.equal(torch.rand(3, generator=ref_gen), torch.rand(3, generator=our_gen))  # same stream consumed


def test_greedy_is_argmax():
    logits = torch.randn(4, 1000)
    assert torch.equal(sample_tokens(logits, temperature=0.0, top_p=0.8, entropy_sampling=True, generator=None),
                       logits.argmax(-1))


def test_sorted_prefix_is_the_head_of_the_full_sort():
    probs = torch.softmax(torch.randn(3, 100281) * 5, dim=-1)
    values, indices, cumulative = sorted_prefix(probs, 0.8)
    full_v, full_i = torch.sort(probs, dim=-1, descending=True)
    m = values.shape[1]
    assert m < 100281 // 8
    assert torch.equal(values, full_v[:, :m]) and torch.equal(indices, full_i[:, :m])
    assert torch.equal(cumulative, torch.cumsum(full_v, -1)[:, :m])
    assert bool((cumulative[:, -2] > 0.8).all())


def test_repetition_penalty_and_bans_match_a_direct_computation():
    logits = torch.randn(3, 50)
    seen = torch.tensor([2, 5, 7, 49])
    out = process_logits(logits.clone(), seen, 1.3, torch.tensor([0, 1]))
    want = logits.clone()
    for c in seen.tolist():
        want[:, c] = torch.where(logits[:, c] > 0, logits[:, c] / 1.3, logits[:, c] * 1.3)
    want[:, [0, 1]] = float("-inf")
    assert torch.equal(out, want)
    offset = torch.rand(50)
    assert torch.equal(process_logits(logits.clone(), None, 1.0, torch.tensor([0]), offset)[:, 1:], (logits - offset)[:, 1:])


@pytest.mark.parametrize("masked,steps", [(64, 64), (64, 16), (16, 5), (10, 32)])
def test_linear_schedule_matches_reference(masked, steps):
    _, _, ref_schedule = _reference()
    want = ref_schedule(torch.ones(1, masked, dtype=torch.bool), steps)[0].tolist()
    assert linear_schedule(masked, steps) == want
