"""Parity with the reference package (steerling==0.2.0) on tiny random checkpoints, fp32.

Logits of the KV-cached windowed forward agree with the reference's full forward within
1e-4; greedy generations are token-identical; seeded sampling is reproducible, and
agrees with the reference's when the distributions are peaked (with nearly flat ones
the 1e-7 rounding differences reorder top-p's sort, so tokens cannot be compared).
"""

from __future__ import annotations

import pytest
import torch

from steerling_lite import GenerationConfig, Steerling
from steerling_lite.model.concept_heads import decompose
from steerling_lite.model.kv_cache import KVCache
from tests.oracle import load_reference, reference_generation_config

MASK = 100280

# (name, make_ckpt kwargs): shapes covering GQA / MHA, block sizes, both schemas, sharding,
# instruct vocab, the alternative architecture flags and the concept-head variants.
SHAPES = {
    "tiny-gqa": dict(),
    "b16-mha-native-sharded": dict(diff_block_size=16, n_layers=3, n_kv_heads=4, schema="native", max_shard_bytes=4_000_000),
    "b16-instruct": dict(diff_block_size=16, instruct=True, n_kv_heads=1),
    "b16-variants": dict(diff_block_size=16, norm_order="pre", mlp_type="standard", activation="gelu",
                         use_qk_norm=False, use_bias=True, clip_qkv=None, rope_full_precision=False),
    "b16-dense-unknown": dict(diff_block_size=16, factorize_unknown=False, topk_known_features=12, topk_known=6),
    "b16-no-unknown": dict(diff_block_size=16, use_unknown=False, n_unknown_concepts=None),
}


@pytest.fixture(scope="module", params=list(SHAPES))
def pair(request, make_ckpt):
    """(checkpoint dir, our fp32 model, reference fp32 (model, generator))."""
    path = make_ckpt(**SHAPES[request.param])
    return path, Steerling.load(path, device="cpu", dtype="fp32"), load_reference(path, torch.float32)


def test_cached_window_logits_match_reference_full_forward(pair):
    path, lm, (ref_model, _) = pair
    B = lm.config.diff_block_size
    g = torch.Generator().manual_seed(0)
    L = 4 * B + 5
    ids = torch.randint(0, 100000, (1, L), generator=g)
    ids[0, 2 * B + 3:] = MASK  # a partly masked sequence, as during generation
    ids[0, 3 * B + 7] = 42
    with torch.no_grad():
        ref_logits, ref_out = ref_model(ids, minimal_output=False)
        # prefill two attention blocks into the cache, then run the rest as a window
        cache = KVCache.allocate(lm.model.layer_devices(), 1, lm.config.kv_heads, L, lm.config.head_dim, B, torch.float32)
        lm.model.transformer(ids[:, : 2 * B], cache=cache, start=0)
        cache.commit(2 * B)
        rows = torch.tensor([1, 4, B + 2, L - 2 * B - 1])
        hidden = lm.model.transformer(ids[:, 2 * B:], cache=cache, start=2 * B, out_rows=rows)
        ours = lm.model.lm_logits(hidden)[0]
        full_hidden = lm.model.transformer(ids)
    want = ref_logits[0, 2 * B + rows]
    assert (ours - want).abs().max().item() < 1e-4
    assert (lm.model.lm_logits(full_hidden)[0] - ref_logits[0]).abs().max().item() < 1e-4
    if lm.model.interpretable:
        d = decompose(full_hidden[0], lm.model.known_head, lm.model.unknown_head, lm.config.concept.use_epsilon_correction)
        assert (lm.model.lm_logits(d.composed) - ref_logits[0]).abs().max().item() < 1e-4
        assert torch.equal(d.known.indices, ref_out.known_topk_indices[0])
        assert (d.known.logits - ref_out.known_topk_logits[0]).abs().max().item() < 1e-4
        assert (d.known.features - ref_out.known_features[0]).abs().max().item() < 1e-4
        if lm.model.unknown_head is not None:
            assert (d.unknown.features - ref_out.unk_hat[0]).abs().max().item() < 1e-4


def _prompt(lm, n: int) -> list[int]:
    text = "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm afternoon sun. " * 20
    ids = lm.tokenizer.encode(text)
    return ids[:n]


@pytest.mark.parametrize("prompt_len,blocks,steps_per_block,cfg_scale", [
    (13, 3, None, 0.0),   # prompt splits an attention block; one step per token
    (16, 2, 4, 0.0),      # aligned prompt; 4 steps per block (steps < tokens)
    (5, 2, 8, 1.0),       # classifier-free guidance
])
def test_greedy_generation_is_token_identical(pair, prompt_len, blocks, steps_per_block, cfg_scale):
    path, lm, (_, ref_gen) = pair
    B = lm.config.diff_block_size
    if B == 64 and blocks > 2:
        blocks = 2
    n_new = blocks * B
    steps = n_new if steps_per_block is None else steps_per_block * blocks
    ids = _prompt(lm, prompt_len)
    ref = ref_gen.generate_full(torch.tensor([ids]), reference_generation_config(
        max_new_tokens=n_new, steps=steps, use_entropy_sampling=False, temperature=0.0, cfg_scale=cfg_scale))
    ours = lm.generate(ids, GenerationConfig(max_new_tokens=n_new, steps=steps, temperature=0.0, cfg_scale=cfg_scale))
    assert ours.sequence == ref.tokens.tolist()
    assert ours.text == ref.text
    assert ours.token_ids and ours.stop_reason == "length"


def test_stop_token_ends_after_its_block_like_the_reference(make_ckpt):
    path = make_ckpt(diff_block_size=16)
    lm = Steerling.load(path, dtype="fp32")
    _, ref_gen = load_reference(path)
    ids = _prompt(lm, 10)
    first = lm.generate(ids, GenerationConfig(max_new_tokens=64, temperature=0.0))
    stop = first.sequence[10 + 16 + 3]  # a token of the second block
    ref = ref_gen.generate_full(torch.tensor([ids]), reference_generation_config(
        max_new_tokens=64, use_entropy_sampling=False, temperature=0.0, stop_tokens=[stop]))
    ours = lm.generate(ids, GenerationConfig(max_new_tokens=64, temperature=0.0, stop_tokens=(stop,)))
    assert ours.stop_reason == "stop_token"
    assert ours.sequence == ref.tokens.tolist()
    assert ours.token_ids == first.token_ids[: first.token_ids.index(stop)]
    assert ours.text == ref.text


def test_instruct_eot_fills_with_eos_and_stops_like_the_reference(make_ckpt, tmp_path):
    """Point the <|eot_id|> embedding along the masked positions' hidden states so that greedy
    decoding commits it after a few other tokens; then compare with the reference."""
    import shutil

    from safetensors.torch import load_file, save_file

    src = make_ckpt(diff_block_size=16, instruct=True)
    lm = Steerling.load(src, dtype="fp32")
    ids = lm.encode_prompt("Tell me a story.", chat=False)  # no <|eot_id|> in the input
    with torch.no_grad():
        h = lm.model.transformer(torch.tensor([ids + [MASK] * 48]))[0, len(ids):]
    u = h.mean(0) / h.mean(0).norm()
    path = tmp_path / "eot"
    shutil.copytree(src, path)
    tensors = load_file(str(path / "model.safetensors"))
    emb = tensors["transformer.tok_emb.weight"].float()
    emb[100283] = u * (0.65 / (h @ u).mean())  # eot logit ~0.65: committed after a few other tokens
    tensors["transformer.tok_emb.weight"] = emb.to(torch.bfloat16)
    save_file(tensors, str(path / "model.safetensors"))
    lm = Steerling.load(path, dtype="fp32")
    _, ref_gen = load_reference(path)
    ref = ref_gen.generate_full(torch.tensor([ids]), reference_generation_config(
        max_new_tokens=48, use_entropy_sampling=False, temperature=0.0))
    ours = lm.generate(ids, GenerationConfig(max_new_tokens=48, temperature=0.0))
    assert ours.stop_reason == "eot"
    assert ours.sequence == ref.tokens.tolist()
    eot_pos = ours.sequence.index(100283, len(ids))
    assert all(t == lm.config.eos_token_id for t in ours.sequence[eot_pos + 1:])
    assert ours.token_ids and 100283 not in ours.token_ids and ours.text == ref.text


@pytest.mark.parametrize("entropy", [True, False])
def test_seeded_sampling_matches_reference_on_peaked_model(make_ckpt, entropy):
    path = make_ckpt(diff_block_size=16, embedding_std=0.5)
    lm = Steerling.load(path, dtype="fp32")
    _, ref_gen = load_reference(path)
    ids = _prompt(lm, 11)
    kw = dict(max_new_tokens=48, steps=24, top_p=0.8, seed=1234)
    ref = ref_gen.generate_full(torch.tensor([ids]), reference_generation_config(
        use_entropy_sampling=entropy, temperature=1.0, **kw))
    ours = lm.generate(ids, GenerationConfig(entropy_sampling=entropy, temperature=1.0, **kw))
    assert ours.sequence == ref.tokens.tolist()


def test_seeded_sampling_is_reproducible(tiny_ckpt):
    lm = Steerling.load(tiny_ckpt, dtype="fp32")
    ids = _prompt(lm, 20)
    a = lm.generate(ids, GenerationConfig(max_new_tokens=64, seed=7))
    b = lm.generate(ids, GenerationConfig(max_new_tokens=64, seed=7))
    c = lm.generate(ids, GenerationConfig(max_new_tokens=64, seed=8))
    assert a.sequence == b.sequence and a.seed == 7
    assert a.sequence != c.sequence


@pytest.mark.parametrize("cfg_scale", [0.0, 1.0])
def test_steered_greedy_generation_matches_reference(make_ckpt, cfg_scale):
    """Amplify (hard cutoff: the injection stops mid-generation) and suppress (ReLU mask), with and
    without CFG. With CFG the unconditional row's prompt is masked, hence injected, so its cached
    blocks must be recomputed when the injection changes."""
    from steerling.configs import SteeringConfig

    from steerling_lite.generation.steering import amplify, suppress

    path = make_ckpt(diff_block_size=16)
    lm = Steerling.load(path, dtype="fp32")
    _, ref_gen = load_reference(path)
    ids = _prompt(lm, 11)
    cases = [
        (amplify(lm.model, [3, 7], target=8.0, inject_layer=1, cutoff_tokens=20),
         SteeringConfig.injection([3, 7], 8.0, inject_layer=1, cutoff_tokens=20)),
        (suppress(lm.model, 5, [9], alpha=-7.0, inject_layer=1),
         SteeringConfig.injection_relu(5, [9], -7.0, inject_layer=1)),
    ]
    plain = lm.generate(ids, GenerationConfig(max_new_tokens=48, temperature=0.0, cfg_scale=cfg_scale))
    for plan, ref_steering in cases:
        ref = ref_gen.generate_full(torch.tensor([ids]), reference_generation_config(
            max_new_tokens=48, use_entropy_sampling=False, temperature=0.0, cfg_scale=cfg_scale), steering=ref_steering)
        ours = lm.generate(ids, GenerationConfig(max_new_tokens=48, temperature=0.0, cfg_scale=cfg_scale), steering=plan)
        assert ours.sequence == ref.tokens.tolist()
        assert ours.sequence != plain.sequence
