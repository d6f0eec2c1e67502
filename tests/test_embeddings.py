"""Embeddings (hidden / composed / known / discovered, mean / last / first / none pooling) against the
reference's ``SteerlingGenerator.get_embeddings``, and their errors."""

from __future__ import annotations

import pytest
import torch

from steerling_lite import ConceptError, Steerling, embed, embed_all
from tests.oracle import load_reference

TEXT = "The history of the city is long and full of stories"
SHAPES = {"factorized": dict(diff_block_size=16), "dense-no-topk": dict(
    diff_block_size=16, factorize_unknown=False, apply_topk_to_unknown=False, topk_known=4, topk_known_features=8)}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_matches_reference(make_ckpt, shape):
    path = make_ckpt(**SHAPES[shape])
    lm = Steerling.load(path, device="cpu", dtype="fp32")
    _, gen = load_reference(path)
    pools = {"mean": lambda t: t.mean(0), "last": lambda t: t[-1], "first": lambda t: t[0], "none": lambda t: t}
    assert torch.equal(gen.get_embeddings(TEXT, "mean", "known"), pools["mean"](gen.get_embeddings(TEXT, "none", "known")))
    for kind, ref_kind in (("hidden", "hidden"), ("composed", "composed"), ("known", "known"),
                           ("discovered", "unknown"), ("unknown", "unknown")):
        per_token = gen.get_embeddings(TEXT, "none", ref_kind).float()  # one reference pass per kind
        for pooling, pool in pools.items():
            ours = embed(lm, TEXT, kind, pooling)
            want = pool(per_token)
            assert ours.shape == want.shape and ours.dtype == torch.float32
            assert (ours - want).abs().max().item() < 1e-5, (kind, pooling)
    # the kinds differ from each other, and one pass gives them all
    every = embed_all(lm, TEXT, "mean")
    assert set(every) == {"hidden", "composed", "known", "discovered"}
    assert (every["known"] - every["discovered"]).abs().max() > 1e-3
    assert torch.allclose(every["known"], embed(lm, TEXT, "known"))


def test_non_interpretable_model(make_ckpt):
    path = make_ckpt(diff_block_size=16, interpretable=False)
    lm = Steerling.load(path, device="cpu", dtype="fp32")
    _, gen = load_reference(path)
    for pooling in ("mean", "last"):
        want = gen.get_embeddings(TEXT, pooling, "hidden").float()
        assert (embed(lm, TEXT, "hidden", pooling) - want).abs().max().item() < 1e-5
    assert torch.equal(embed(lm, TEXT, "composed"), embed(lm, TEXT, "hidden"))
    with pytest.raises(ConceptError, match="interpretable checkpoint"):
        embed(lm, TEXT, "known")


def test_batches_ids_and_errors(make_ckpt):
    lm = Steerling.load(make_ckpt(diff_block_size=16), device="cpu", dtype="fp32")
    texts = ["a first text", "and a second, longer text"]
    batch = embed(lm, texts, "composed", "mean")
    assert batch.shape == (2, lm.config.n_embd)
    for i, t in enumerate(texts):
        assert torch.allclose(batch[i], embed(lm, t, "composed", "mean"))
    per_token = embed(lm, texts, "hidden", "none")
    assert [p.shape[0] for p in per_token] == [len(lm.tokenizer.encode(t)) for t in texts]
    ids = lm.tokenizer.encode(TEXT)
    assert torch.equal(embed(lm, ids, "known", "last"), embed(lm, TEXT, "known", "last"))
    with pytest.raises(ConceptError, match="embedding kind 'latent'"):
        embed(lm, TEXT, "latent")
    with pytest.raises(ConceptError, match="pooling 'max'"):
        embed(lm, TEXT, "hidden", "max")
    with pytest.raises(ConceptError, match="empty"):
        embed(lm, "", "hidden")
    with pytest.raises(ConceptError, match="context"):
        embed(lm, [5] * (lm.config.block_size + 1))
    with pytest.raises(ConceptError, match="outside the vocabulary"):
        embed(lm, [10**6])
