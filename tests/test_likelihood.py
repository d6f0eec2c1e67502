"""Monte Carlo masked-diffusion log-likelihood (steerling_lite.evaluation.likelihood): the reference
lm-eval wrapper's estimate with the same masks and seeds (fp32, 1e-4), batched == one at a time,
direct computation, windowing, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from steerling_lite import Steerling, Steering, SteeringBuilder
from steerling_lite.errors import InputError
from steerling_lite.evaluation.likelihood import (
    masked_logprobs, mc_loglikelihood, sample_masks, windows,
)

from tests.oracle import load_reference, reference_lm_eval_wrapper


def _need_lm_eval():
    pytest.importorskip("lm_eval", reason="the reference wrapper imports lm-eval (pip install -e .[eval])")


@pytest.fixture(scope="module")
def pair(make_ckpt):
    path = make_ckpt(diff_block_size=16)
    ref_model, _ = load_reference(path, torch.float32)
    return Steerling.load(path, device="cpu", dtype="fp32"), ref_model


def _ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, 100000, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("n_ctx,n_cont,n_samples,group,cfg", [
    (20, 7, 32, 32, 0.0),    # one group
    (13, 11, 40, 16, 0.0),   # three groups, the last smaller (the reference's unequal weighting)
    (0, 9, 24, 8, 0.0),      # no context (loglikelihood_rolling)
    (17, 5, 16, 16, 1.5),    # classifier-free guidance: cond + uncond in one batch
    (30, 1, 8, 4, 0.0),      # a one-token continuation: every sample masks it
])
def test_mc_loglikelihood_matches_the_reference_wrapper(pair, n_ctx, n_cont, n_samples, group, cfg):
    _need_lm_eval()
    lm, ref_model = pair
    ctx, cont = _ids(n_ctx, 1), _ids(n_cont, 2)
    ours = mc_loglikelihood(lm, ctx, cont, n_samples=n_samples, batch_size=group, seed=7, cfg_scale=cfg)
    wrapper = reference_lm_eval_wrapper(ref_model, lm.config.mask_token_id, mc_num=n_samples,
                                        mc_batch_size=group, cfg=cfg)
    torch.manual_seed(7)
    want, greedy = wrapper._compute_mc_loglikelihood(ctx, cont)
    assert abs(ours.logprob - want) < 1e-4, (ours.logprob, want)
    assert ours.n_samples == n_samples and ours.n_tokens == n_cont and ours.n_windows == 1
    assert ours.stderr > 0 or n_cont == 1
    assert math.isfinite(ours.stderr)


def test_sample_masks_are_the_reference_forward_process(pair):
    _need_lm_eval()
    lm, ref_model = pair
    wrapper = reference_lm_eval_wrapper(ref_model, lm.config.mask_token_id, mc_num=12, mc_batch_size=12)
    P, C = 5, 13
    batch = torch.tensor([_ids(P + C, 3)] * 12)
    torch.manual_seed(11)
    noisy, p_mask = wrapper._forward_process(batch, P)
    ours = sample_masks(C, 12, group_size=12, seed=11)
    assert torch.equal(ours.mask, noisy[:, P:] == lm.config.mask_token_id)
    assert torch.equal(ours.ratio, p_mask[:, 0])
    assert (ours.mask.sum(1) >= 1).all() and torch.equal(ours.mask.sum(1).float() / C, ours.ratio)
    # stratified: the counts of a group are spread over 1..C, not drawn independently
    assert len(set(ours.mask.sum(1).tolist())) >= 10


def test_masked_logprobs_batched_equals_one_at_a_time_and_the_direct_computation(pair):
    lm, _ = pair
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 100000, (6, 40), generator=g)
    mask = torch.rand(6, 40, generator=g) < 0.3
    mask[:, :10] = False
    batched = masked_logprobs(lm, ids, mask, context_len=10)
    single = torch.cat([masked_logprobs(lm, ids[i:i + 1], mask[i:i + 1], context_len=10) for i in range(6)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    assert (batched[~mask] == 0).all() and (batched[mask] < 0).all()
    with torch.no_grad():  # direct: full forward of each noisy row, log-softmax of the LM logits
        noisy = ids.masked_fill(mask, lm.config.mask_token_id)
        logp = lm.model.lm_logits(lm.model.transformer(noisy)).float().log_softmax(-1)
        direct = logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1) * mask
    torch.testing.assert_close(batched, direct, atol=1e-4, rtol=1e-5)


def test_steering_changes_the_likelihood_at_masked_positions(pair):
    lm, _ = pair
    ids = torch.tensor([_ids(32, 4)])
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[0, 20:] = True
    plain = masked_logprobs(lm, ids, mask, context_len=20)
    plan = SteeringBuilder(lm).build([Steering(3, "suppress", 7.0)])
    steered = masked_logprobs(lm, ids, mask, context_len=20, steering=plan)
    assert not torch.allclose(plain[mask], steered[mask]) and (steered[~mask] == 0).all()
    # the suppress ReLU mask lowers the logit of every token the concept promotes
    offset = plan.logit_offset
    top = int(offset.argmax())
    ids2 = ids.clone()
    ids2[0, 20:] = top
    assert (masked_logprobs(lm, ids2, mask, context_len=20, steering=plan)[mask]
            < masked_logprobs(lm, ids2, mask, context_len=20)[mask]).all()


def test_windows_split_long_continuations_by_the_chain_rule():
    ctx, cont = list(range(100, 130)), list(range(200, 250))
    assert windows(ctx, cont, 100) == [(ctx, cont)]
    w = windows(ctx, cont[:10], 32)  # short continuation: the context is cut from the left
    assert w == [(ctx[-22:], cont[:10])]
    w = windows(ctx, cont, 32)  # pieces of 16 tokens, each after the 16 tokens before it
    assert [p for _, p in w] == [cont[0:16], cont[16:32], cont[32:48], cont[48:50]]
    assert w[1][0] == cont[0:16] and w[0][0] == ctx[-16:] and w[3][0] == (ctx + cont)[48:78]
    for c, p in w:
        assert len(c) + len(p) <= 32


def test_a_pair_longer_than_the_context_is_windowed_not_refused(make_ckpt):
    lm = Steerling.load(make_ckpt(diff_block_size=16, block_size=64), dtype="fp32")
    ctx, cont = _ids(40, 8), _ids(70, 9)
    est = mc_loglikelihood(lm, ctx, cont, n_samples=8, batch_size=8, seed=3)
    assert est.n_windows == 3 and est.n_tokens == 70 and math.isfinite(est.logprob)
    g = torch.Generator().manual_seed(3)  # the same draws, window by window
    parts = [mc_loglikelihood(lm, c, p, n_samples=8, batch_size=8, generator=g) for c, p in windows(ctx, cont, 64)]
    assert abs(est.logprob - sum(p.logprob for p in parts)) < 1e-9
    assert abs(est.stderr - math.sqrt(sum(p.stderr ** 2 for p in parts))) < 1e-9


def test_bad_input_is_a_one_line_error(pair):
    lm, _ = pair
    with pytest.raises(InputError, match="outside the vocabulary"):
        mc_loglikelihood(lm, [1, 2], [10**9])
    with pytest.raises(InputError, match="n_samples"):
        mc_loglikelihood(lm, [1], [2], n_samples=0)
    with pytest.raises(InputError, match="batch_size"):
        mc_loglikelihood(lm, [1], [2], batch_size=1.5)
    with pytest.raises(InputError, match="cfg_scale"):
        mc_loglikelihood(lm, [1], [2], cfg_scale=-1.0)
    with pytest.raises(InputError, match="batch, length"):
        masked_logprobs(lm, torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.bool))
    empty = mc_loglikelihood(lm, [1, 2], [])
    assert empty.logprob == 0.0 and empty.n_tokens == 0
