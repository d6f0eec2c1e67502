"""Attribution through quantized transformer layers (int8 / nf4; concept heads and LM head stay bf16):
the logit split holds within 1e-3 in both modes (bf16: test_attribution.py), and integrated gradients pass through the layers."""

from __future__ import annotations

import pytest

from steerling_lite import GenerationConfig, Steering, SteeringBuilder, Steerling, explain, input_attribution

PROMPT = "The history of the city"


@pytest.fixture(scope="module", params=["int8", "nf4"])  # bf16: tests/test_attribution.py
def quantized(request, make_ckpt):
    path = make_ckpt(diff_block_size=16)
    lm = Steerling.load(path, device="cpu", dtype="bf16", quant=request.param)
    assert lm.quant == request.param
    return request.param, lm


def test_verify_holds_in_every_quant_mode(quantized):
    mode, lm = quantized
    plan = SteeringBuilder(lm).build([Steering(3, "amplify", 20.0), Steering(6, "intervene", 0.9)], inject_layer=1)
    for steering in (None, plan):
        a = explain(lm, PROMPT, GenerationConfig(max_new_tokens=16, steps=8, seed=1), steering)
        check = a.verify(atol=1e-3)
        assert check.passed and check.n_tokens == 16, (mode, check)
        # the logit the sampler saw is the same quantity up to the bf16 LM head's rounding
        assert check.model_logit_max_error < 0.05


def test_integrated_gradients_pass_through_quantized_layers(quantized):
    """With zero gradients (a kernel without backward) the scores would sum to 0 instead of
    logit(snapshot) - logit(all masks)."""
    mode, lm = quantized
    a = explain(lm, PROMPT, GenerationConfig(max_new_tokens=16, steps=8, seed=1))
    targets = a.positions[::3].tolist()
    ia = input_attribution(lm, a, targets, n_steps=24, batch_size=48)
    delta = (ia.target_logits - ia.baseline_logits).abs()
    assert delta.sum() > 0.05
    assert ia.completeness_gap.sum() <= 0.1 * delta.sum(), (mode, ia.completeness_gap, delta)
    assert (ia.target_logits - a.logits[::3]).abs().max().item() < 0.02  # replay = the committed pass (bf16)
