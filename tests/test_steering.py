"""Steering: slider specs -> plans (same as the reference presets), several concepts at once,
interventions, live changes between denoising steps, and clear errors for bad input."""

from __future__ import annotations

import math

import pytest
import torch

from steerling_lite import (
    ConceptError, GenerationConfig, Steering, SteeringBuilder, Steerling, amplify, build_steering, suppress,
)
from steerling_lite.model.concept_heads import lm_alignment
from tests.oracle import load_reference, reference_generation_config

PROMPT = "The history of the city"


@pytest.fixture(scope="module")
def tiny16(make_ckpt):
    path = make_ckpt(diff_block_size=16)
    return path, Steerling.load(path, device="cpu", dtype="fp32")


def test_builder_specs_equal_the_reference_presets(tiny16):
    _, lm = tiny16
    b = SteeringBuilder(lm)
    amp = b.build([Steering(3, "amplify", 6.0, group=(7,))], inject_layer=1)
    ref_amp = amplify(lm.model, [3, 7], target=6.0, inject_layer=1)
    sup = b.build([Steering(5, "suppress", 7.0, group=(9, 5))])
    ref_sup = suppress(lm.model, 5, [9], alpha=-7.0)
    for ours, ref in ((amp, ref_amp), (sup, ref_sup)):
        (t,), (r,) = ours.terms, ref.terms
        assert torch.equal(t.direction, r.direction) and t.alpha == r.alpha
        assert (t.schedule, t.cutoff_tokens) == (r.schedule, r.cutoff_tokens)
    assert amp.inject_layer == 1 and amp.logit_offset is None
    assert sup.inject_layer == lm.config.n_layers // 2 == ref_sup.inject_layer
    assert torch.equal(sup.logit_offset, ref_sup.logit_offset)
    # defaults: the presets' strengths; the amplify layer (8 of 32) scaled to the model's depth
    d = b.build([Steering(3)])
    assert d.terms[0].alpha == pytest.approx(8.0 / b.direction((3,))[1])
    assert d.inject_layer == max(1, round(lm.config.n_layers / 4))
    assert b.build([Steering(5, "suppress")]).terms[0].alpha == -7.0


@pytest.mark.parametrize("embedding_std,sampling", [(0.02, "greedy"), (0.5, "seeded")])
def test_steered_generation_matches_reference(make_ckpt, embedding_std, sampling):
    """Builder plans generate what the reference's presets generate: greedy on the standard tiny
    checkpoint; seeded entropy sampling on one with peaked distributions (on nearly flat ones
    1e-7 rounding differences reorder top-p's sort)."""
    from steerling.configs import SteeringConfig

    path = make_ckpt(diff_block_size=16, embedding_std=embedding_std)
    lm = Steerling.load(path, device="cpu", dtype="fp32")
    _, gen = load_reference(path)
    ids = lm.tokenizer.encode(PROMPT)
    if sampling == "greedy":
        ours_cfg = GenerationConfig(max_new_tokens=16, steps=8, temperature=0.0, entropy_sampling=False)
        ref_cfg = reference_generation_config(max_new_tokens=16, steps=8, temperature=0.0, use_entropy_sampling=False)
    else:
        ours_cfg = GenerationConfig(max_new_tokens=16, steps=8, seed=11)
        ref_cfg = reference_generation_config(max_new_tokens=16, steps=8, seed=11)
    b = SteeringBuilder(lm)
    plain = lm.generate(ids, ours_cfg)
    cases = [
        (b.build([Steering(3, "amplify", 20.0)], inject_layer=1), SteeringConfig.injection(3, 20.0, inject_layer=1)),
        (b.build([Steering(5, "suppress", 7.0, group=(9,))], inject_layer=1),
         SteeringConfig.injection_relu(5, [9], -7.0, inject_layer=1)),
    ]
    for plan, ref_steering in cases:
        ref = gen.generate_full(torch.tensor([ids]), ref_cfg, steering=ref_steering)
        ours = lm.generate(ids, ours_cfg, plan)
        assert ours.sequence == ref.tokens.tolist()
        assert ours.sequence != plain.sequence


def test_several_concepts_each_with_its_own_strength(tiny16):
    _, lm = tiny16
    b = SteeringBuilder(lm)
    specs = [Steering(3, "amplify", 10.0), Steering(8, "amplify", -4.0, cutoff_tokens=5),
             Steering(5, "suppress", 6.0, relu_strength=10.0), Steering(12, "suppress", 2.0),
             Steering(20, "amplify", 50.0, enabled=False), Steering(21, "amplify", 0.0)]
    plan = b.build(specs, inject_layer=1)
    assert len(plan.terms) == 4 and len(plan.specs) == 6
    d = {c: b.direction((c,)) for c in (3, 8, 5, 12)}
    early = 10.0 / d[3][1] * d[3][0] - 4.0 / d[8][1] * d[8][0] - 6.0 * d[5][0] - 2.0 * d[12][0]
    assert torch.allclose(plan.vector(0, 32, torch.float32), early, atol=1e-6)
    later = 10.0 / d[3][1] * d[3][0] - 6.0 * d[5][0] - 2.0 * d[12][0]  # concept 8's cutoff (5 tokens) passed
    assert torch.allclose(plan.vector(7, 32, torch.float32), later, atol=1e-6)
    relu = lambda c: lm_alignment(lm.model, lm.model.known_head.embedding(torch.tensor([c])).float())[0].clamp_min(0)  # noqa: E731
    assert torch.allclose(plan.logit_offset, 10.0 * relu(5) + 20.0 * relu(12), atol=1e-5)
    assert b.direction((3,)) is d[3]  # cached for the next slider change
    # all sliders off: an empty plan, generation as unsteered
    off = b.build([Steering(3, enabled=False)])
    cfg = GenerationConfig(max_new_tokens=16, temperature=0.0)
    assert off.is_empty and lm.generate(PROMPT, cfg, off).sequence == lm.generate(PROMPT, cfg).sequence
    assert plan.describe()["specs"][4]["enabled"] is False


def test_interventions_match_reference(tiny16):
    """A forward pass with interventions equals the reference's ``intervene``; in generation each
    step's logits are the reference's intervened logits of the sequence the model read then
    (an intervention only changes what the LM head reads, so intervening everywhere or only at
    the masked positions gives the same logits there)."""
    path, lm = tiny16
    ref_model, _ = load_reference(path)
    settings = {3: 0.9, 17: 0.0}
    plan = build_steering(lm, [Steering(c, "intervene", v) for c, v in settings.items()])
    ids = torch.tensor([lm.tokenizer.encode("The history of the city is long and")])
    with torch.no_grad():
        ours = lm.model.lm_logits(plan.readout(lm.model, lm.model.transformer(ids)[0]))
        ref, _ = ref_model.intervene(ids, known=settings)
    assert (ours - ref[0]).abs().max().item() < 1e-5
    assert (ours - lm.model.lm_logits(lm.model.transformer(ids)[0])).abs().max().item() > 1e-3
    gen = lm.stream(PROMPT, GenerationConfig(max_new_tokens=16, steps=4, temperature=0.0), plan, capture_hidden=True)
    seq = list(gen.prompt_ids) + [lm.config.mask_token_id] * 16
    for event in gen:
        with torch.no_grad():
            ref_logits, _ = ref_model.intervene(torch.tensor([seq]), known=settings)
        want = ref_logits[0, event.positions, event.tokens]
        assert (event.logits - want).abs().max().item() < 1e-5
        for p, t in zip(event.positions, event.tokens):
            seq[p] = t


def test_set_steering_applies_from_the_next_step(tiny16):
    """Change the steering after step 5 of a running generation: steps 0-5 are the unsteered run's,
    step 6 is computed with the new plan (checked against the reference's injected forward of the
    sequence at that step), and step 5 without it."""
    path, lm = tiny16
    ref_model, _ = load_reference(path)
    cfg = GenerationConfig(max_new_tokens=16, temperature=0.0, entropy_sampling=False)
    plan = SteeringBuilder(lm).build([Steering(3, "amplify", 30.0)], inject_layer=1)
    plain = list(lm.stream(PROMPT, cfg))
    gen = lm.stream(PROMPT, cfg, capture_hidden=True)
    mask = lm.config.mask_token_id
    seq = list(gen.prompt_ids) + [mask] * 16
    events = []
    for event in gen:
        events.append(event)
        x = torch.tensor([seq])
        with torch.no_grad():
            if event.step == 6:  # the first step after the change
                (term,) = plan.terms
                inj = (x == mask).unsqueeze(-1).float() * term.direction
                want, _ = ref_model(x, minimal_output=True, position_injection=inj, steering_inject_layer=1,
                                    steering_inject_alpha=term.alpha_at(6))
                unsteered, _ = ref_model(x, minimal_output=True)
                got = event.logits
                assert (got - want[0, event.positions, event.tokens]).abs().max().item() < 1e-5
                assert (got - unsteered[0, event.positions, event.tokens]).abs().max().item() > 1e-3
            elif event.step == 5:
                want, _ = ref_model(x, minimal_output=True)
                assert (event.logits - want[0, event.positions, event.tokens]).abs().max().item() < 1e-5
        for p, t in zip(event.positions, event.tokens):
            seq[p] = t
        if event.step == 5:
            gen.set_steering(plan)
        if event.step == 11:
            gen.set_steering(None)
    assert [(e.positions, e.tokens) for e in events[:6]] == [(e.positions, e.tokens) for e in plain[:6]]
    assert [e.steering is plan for e in events] == [6 <= e.step <= 11 for e in events]
    assert gen.result.sequence != lm.generate(PROMPT, cfg).sequence


def test_bad_input_is_a_clear_error(tiny16, make_ckpt):
    _, lm = tiny16
    b = SteeringBuilder(lm)
    n = lm.config.concept.n_concepts
    for bad in (-1, n, "x", 2.5, True):
        with pytest.raises(ConceptError, match="concept id"):
            b.build([Steering(bad)])  # type: ignore[arg-type]
    with pytest.raises(ConceptError, match=f"out of range.*0..{n - 1}"):
        b.build([Steering(3, group=(n + 5,))])
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(ConceptError, match="finite number"):
            b.build([Steering(3, "amplify", value)])
        with pytest.raises(ConceptError, match="finite number"):
            b.build([Steering(3, "suppress", 2.0, relu_strength=value)])
        with pytest.raises(ConceptError, match="finite number"):
            b.build([Steering(3, "intervene", value)])
        with pytest.raises(ConceptError, match="amplify target"):
            amplify(lm.model, [3], target=value)
        with pytest.raises(ConceptError, match="suppress alpha"):
            suppress(lm.model, 3, alpha=value)
    with pytest.raises(ConceptError, match="inject_layer 99"):
        b.build([Steering(3)], inject_layer=99)
    with pytest.raises(ConceptError, match="steered twice"):
        b.build([Steering(3), Steering(3, "suppress")])
    with pytest.raises(ConceptError, match="mode"):
        b.build([Steering(3, "boost")])  # type: ignore[arg-type]
    plain = Steerling.load(make_ckpt(diff_block_size=16, interpretable=False), device="cpu", dtype="fp32")
    with pytest.raises(ConceptError, match="interpretable checkpoint"):
        SteeringBuilder(plain).build([Steering(3)])
