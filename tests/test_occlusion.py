"""Occlusion input attribution: batched + KV-cached equals one copy at a time from position 0, a
direct full forward agrees, occluding nothing changes nothing, prompt units cover the prompt once,
spans outside the output are refused, steered generations replay with their steering, the CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from steerling_lite import (
    GRANULARITIES, ConceptError, GenerationConfig, Steering, SteeringBuilder, Steerling, explain, occlusion,
    prompt_units,
)
from steerling_lite.cli import main

# two attention blocks of prompt (diff_block_size 16), so the KV prefix is used
PROMPT = ("The history of the city begins with a small village by the river, where fishermen traded salt. "
          "Later, merchants came!\nA new line here.\n\nEnd")
CONFIG = GenerationConfig(max_new_tokens=32, steps=8, temperature=0.0)


@pytest.fixture(scope="module")
def tiny16(make_ckpt):
    path = make_ckpt(diff_block_size=16)
    return path, Steerling.load(path, device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def generated(tiny16):
    _, lm = tiny16
    return explain(lm, PROMPT, CONFIG)


def test_batched_and_cached_equals_one_at_a_time(tiny16, generated):
    _, lm = tiny16
    a = generated
    assert a.prompt_len > 2 * lm.config.diff_block_size - 8
    targets = a.positions[::3].tolist()
    fast = occlusion(lm, a, targets, granularity="token", batch_size=7)
    slow = occlusion(lm, a, targets, granularity="token", batch_size=1, use_cache=False)
    assert fast.scores.shape == (len(targets), a.prompt_len)
    assert (fast.scores - slow.scores).abs().max().item() < 1e-4
    assert (fast.target_logprobs - slow.target_logprobs).abs().max().item() < 1e-5
    assert fast.scores.abs().max().item() > 1e-3  # occlusion changes something
    steps = len(set(fast.steps.tolist()))
    assert fast.cost.forward_passes == steps * (a.prompt_len + 1)
    assert fast.cost.batched_calls == steps * (1 + -(-a.prompt_len // 7))


def test_matches_a_direct_full_forward(tiny16, generated):
    """Score = log p(y | snapshot) - log p(y | snapshot, unit masked), each computed here by a
    plain forward over the whole sequence (no window, no cache, no row selection)."""
    _, lm = tiny16
    a = generated
    p = int(a.positions[-1])
    oc = occlusion(lm, a, [p], granularity="word")
    tr, mask = a.trace, lm.config.mask_token_id
    y, step = tr.committed[p]

    def logits(ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return lm.model.lm_logits(lm.model.transformer(torch.tensor([ids]))[0, p]).float()

    def logp(ids: list[int]) -> float:
        return torch.log_softmax(logits(ids), -1)[y].item()

    snap = tr.snapshot(step)
    assert oc.target_logprobs[0].item() == pytest.approx(logp(snap), abs=1e-5)
    for k in (0, len(oc.units) // 2, len(oc.units) - 1):
        u = oc.units[k]
        occluded = snap[:u.start] + [mask] * len(u) + snap[u.end:]
        assert oc.scores[0, k].item() == pytest.approx(logp(snap) - logp(occluded), abs=1e-4)
        assert oc.logit_scores[0, k].item() == pytest.approx((logits(snap)[y] - logits(occluded)[y]).item(), abs=1e-4)


@pytest.mark.parametrize("use_cache", [True, False])
def test_occluding_nothing_changes_nothing(tiny16, generated, use_cache):
    _, lm = tiny16
    a = generated
    oc = occlusion(lm, a, units=[(0, 0), (5, 5), (a.prompt_len, a.prompt_len)], use_cache=use_cache, batch_size=2)
    assert oc.granularity == "custom"
    assert oc.scores.abs().max().item() < 1e-5
    assert (oc.span_scores().abs() < 1e-4).all()


@pytest.mark.parametrize("prompt", [PROMPT, "one", "  two  spaces\tand tabs\n\n\nx. y? z!", "naïve café — déjà vu…\n"])
def test_units_cover_the_prompt_exactly_once(tiny16, prompt):
    _, lm = tiny16
    tok = lm.tokenizer
    ids = tok.encode(prompt)
    for g in GRANULARITIES:
        units = prompt_units(tok, ids, g)
        covered = [p for u in units for p in range(u.start, u.end)]
        assert covered == list(range(len(ids))), g  # in order, each position once
        assert all(len(u) > 0 for u in units)
        assert b"".join(tok.token_bytes(ids[u.start:u.end]) for u in units) == prompt.encode()
        texts = [u.text for u in units]
        if g == "token":
            assert len(units) == len(ids)
        if g == "word":
            assert [t.strip() for t in texts if t.strip()] == prompt.split()
        if g == "line":
            assert all("\n" not in t.rstrip("\n") for t in texts)
            assert all(t.endswith("\n") for t in texts[:-1])
        if g == "sentence":
            assert all(t.rstrip()[-1:] in ".!?" or "\n" in t for t in texts[:-1])
    assert len(prompt_units(tok, ids, "line")) <= len(prompt_units(tok, ids, "sentence")) <= len(
        prompt_units(tok, ids, "word")) <= len(ids)


def test_span_outside_the_output_is_a_clear_error(tiny16, generated):
    _, lm = tiny16
    a = generated
    for span in [(0, 99), (-1, 3), (4, 4)]:
        with pytest.raises(ConceptError, match=rf"^span \[{span[0]}, {span[1]}\) is outside the output"):
            occlusion(lm, a, span=span)
    with pytest.raises(ValueError, match="not both"):
        occlusion(lm, a, [int(a.positions[0])], span=(0, 1))
    with pytest.raises(ConceptError, match="granularity 'phrase'"):
        occlusion(lm, a, span=(0, 1), granularity="phrase")
    with pytest.raises(ConceptError, match=r"unit \[0, 999\) is outside the prompt"):
        occlusion(lm, a, span=(0, 1), units=[(0, 999)])
    with pytest.raises(ConceptError, match="batch_size"):
        occlusion(lm, a, span=(0, 1), batch_size=0)
    with pytest.raises(ConceptError, match="classifier-free guidance"):
        occlusion(lm, dataclasses.replace(a.trace, cfg_scale=1.0))


def test_span_views(tiny16, generated):
    _, lm = tiny16
    a = generated
    oc = occlusion(lm, a, span=(2, 9), granularity="sentence")
    assert oc.positions.tolist() == [a.prompt_len + i for i in range(2, 9)]
    agg = oc.aggregate()
    assert [x.score for x in agg] == sorted((x.score for x in agg), reverse=True)
    by_start = {x.position: x.score for x in agg}
    for u, s in zip(oc.units, oc.span_scores().tolist()):
        assert by_start[u.start] == pytest.approx(s)
        assert s == pytest.approx(sum(oc.scores[:, oc.units.index(u)].tolist()), abs=1e-5)
    one = oc.for_token(int(oc.positions[0]), top=2)
    assert len(one) == 2 and abs(one[0].score) >= abs(one[1].score) and one[0].end > one[0].position
    assert oc.aggregate("generated") == [] and oc.for_token(int(oc.positions[0]), scope="generated") == []
    d = json.loads(json.dumps(oc.to_dict(top=3)))
    assert d["method"] == "occlusion" and len(d["span"]) == 3 and len(d["targets"]) == 7


@pytest.mark.parametrize("specs", [[Steering(3, "amplify", 20.0)], [Steering(5, "suppress", 7.0)]])
def test_steered_generations_replay_with_their_steering(tiny16, specs):
    """The replayed logit is the one the generation committed with (the step's steering
    re-applied); the same snapshots without the steering give other log-probabilities."""
    _, lm = tiny16
    plan = SteeringBuilder(lm).build(specs, inject_layer=1)
    a = explain(lm, PROMPT, CONFIG, plan)
    targets = a.positions[::4].tolist()
    oc = occlusion(lm, a, targets, granularity="line")
    want = torch.stack([a.logits[a.row_of(p)] for p in targets])
    assert (oc.target_logits - want).abs().max().item() < 1e-5
    unsteered = dataclasses.replace(a.trace, steps=[dataclasses.replace(s, plan=None) for s in a.trace.steps])
    plain = occlusion(lm, unsteered, targets, granularity="line")
    assert (plain.target_logprobs - oc.target_logprobs).abs().max().item() > 1e-3
    slow = occlusion(lm, a, targets, granularity="line", batch_size=1, use_cache=False)
    assert (oc.scores - slow.scores).abs().max().item() < 1e-4


def test_cli_explain_inputs_occlusion(tiny16, capsys):
    path, _ = tiny16
    args = ["explain", "--model", str(path), "--prompt", PROMPT, "-n", "16", "--steps", "4", "--temperature", "0",
            "--dtype", "fp32", "--inputs", "3"]
    assert main(args + ["--json", "--granularity", "sentence"]) == 0
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    assert out["input_attribution"]["method"] == "occlusion"
    assert out["input_attribution"]["granularity"] == "sentence"
    assert "forward passes" in cap.err
    assert len(out["chunks"][0]["inputs"]) == 3 and all("end" in x for x in out["chunks"][0]["inputs"])
    assert main(args + ["--method", "ig", "--ig-steps", "2"]) == 0
    assert "inputs (ig, logit):" in capsys.readouterr().out
