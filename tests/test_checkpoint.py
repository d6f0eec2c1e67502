"""Checkpoint loading: both schemas, sharding, tied embeddings, and a clear error for each bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from steerling_lite import CheckpointError, ConfigError, Steerling
from steerling_lite.loading.checkpoint import INDEX_FILE, load_model, open_checkpoint
from steerling_lite.loading.config import load_config, parse_config


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    return dst


def _edit_config(path: Path, **changes) -> None:
    cfg = json.loads((path / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (path / "config.json").write_text(json.dumps(cfg))


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters()}


def test_flat_native_and_sharded_load_the_same_weights(make_ckpt):
    flat = load_model(make_ckpt(seed=3), dtype=torch.float32)
    native = load_model(make_ckpt(seed=3, schema="native"), dtype=torch.float32)
    sharded = load_model(make_ckpt(seed=3, max_shard_bytes=2_000_000), dtype=torch.float32)
    a, b, c = _params(flat), _params(native), _params(sharded)
    assert a.keys() == b.keys() == c.keys()
    for k in a:
        assert torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]), k
    assert len(open_checkpoint(make_ckpt(seed=3, max_shard_bytes=2_000_000)).files) > 1
    assert flat.cfg == native.cfg.replace(schema="flat", torch_dtype="bfloat16")  # native has no torch_dtype


def test_tied_lm_head_is_the_embedding_and_loads_in_target_dtype(tiny_ckpt):
    model = load_model(tiny_ckpt, dtype=torch.bfloat16)
    assert model.transformer.lm_head.weight is model.transformer.tok_emb.weight
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in model.parameters())
    assert "transformer.lm_head.weight" not in load_file(str(tiny_ckpt / "model.safetensors"))


def test_untied_and_non_interpretable_checkpoints(make_ckpt):
    untied = load_model(make_ckpt(weight_sharing=False), dtype=torch.float32)
    assert untied.transformer.lm_head.weight is not untied.transformer.tok_emb.weight
    bare = make_ckpt(interpretable=False)
    names = load_file(str(bare / "model.safetensors")).keys()
    assert "tok_emb.weight" in names and not any(n.startswith("transformer.") for n in names)
    lm = Steerling.load(bare, dtype="fp32")
    assert not lm.model.interpretable
    assert lm.generate([1, 2, 3], _greedy(64)).token_ids


def test_padded_concept_rows(make_ckpt):
    ckpt = open_checkpoint(make_ckpt(n_concepts=37, n_unknown_concepts=50))
    assert ckpt.tensors["known_head.concept_embedding.weight"].shape[0] == 48  # 37 -> multiple of 16
    assert ckpt.tensors["unknown_head.predictor_up.weight"].shape[0] == 64


def test_instruct_vocab(make_ckpt):
    lm = Steerling.load(make_ckpt(instruct=True), dtype="fp32")
    assert lm.config.vocab_size == 100284 and lm.config.eot_id == 100283 and lm.tokenizer.instruct


def _greedy(n):
    from steerling_lite import GenerationConfig

    return GenerationConfig(max_new_tokens=n, temperature=0.0)


# ---- config errors -------------------------------------------------------------------------
@pytest.mark.parametrize("changes,match", [
    ({"model_type": "llama"}, "model_type is 'llama'"),
    ({"n_layers": None}, "missing required key.*n_layers"),
    ({"n_concepts": None}, "missing required key.*n_concepts"),
    ({"hidden_act": "gelu"}, "unknown key.*hidden_act"),
    ({"n_layers": "two"}, "'n_layers' is 'two'; expected int"),
    ({"vocab_size": 50000}, "vocab_size is 50000.*100281"),
    ({"mask_token_id": 5}, "mask_token_id is 5; the Steerling tokenizer uses 100280"),
    ({"n_head": 3}, "n_embd \\(64\\) must be divisible by n_head \\(3\\)"),
    ({"concept_dim": 32}, "concept_dim \\(32\\) must equal n_embd \\(64\\)"),
    ({"use_attention_known": True}, "not supported"),
])
def test_config_errors_name_the_field(tiny_ckpt, tmp_path, changes, match):
    path = _copy(tiny_ckpt, tmp_path)
    _edit_config(path, **changes)
    with pytest.raises(ConfigError, match=match) as exc:
        Steerling.load(path)
    assert "config.json" in str(exc.value)


def test_native_schema_unknown_concept_key():
    data = {"model_type": "causal_diffusion", "n_layers": 1, "n_head": 1, "n_embd": 8, "vocab_size": 100281,
            "block_size": 64, "diff_block_size": 8, "interpretable": True,
            "concept": {"n_concepts": 4, "concept_dim": 8, "bogus": 1}}
    with pytest.raises(ConfigError, match="concept.bogus"):
        parse_config(data)


def test_missing_or_invalid_config(tiny_ckpt, tmp_path):
    with pytest.raises(ConfigError, match="no such model directory"):
        Steerling.load(tmp_path / "nope")
    path = _copy(tiny_ckpt, tmp_path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json: not valid JSON"):
        load_config(path)
    (path / "config.json").unlink()
    with pytest.raises(ConfigError, match="config.json: missing"):
        load_config(path)


# ---- weight errors --------------------------------------------------------------------------
def test_no_weights(tiny_ckpt, tmp_path):
    path = _copy(tiny_ckpt, tmp_path)
    (path / "model.safetensors").rename(path / "weights.safetensors")
    with pytest.raises(CheckpointError, match="no weights.*found weights.safetensors"):
        Steerling.load(path)


def test_index_naming_a_missing_shard(make_ckpt, tmp_path):
    path = _copy(make_ckpt(max_shard_bytes=2_000_000), tmp_path)
    shard = sorted(path.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"{INDEX_FILE}: names shard '{shard.name}', which is missing"):
        Steerling.load(path)


def test_index_that_is_not_json(make_ckpt, tmp_path):
    path = _copy(make_ckpt(max_shard_bytes=2_000_000), tmp_path)
    (path / INDEX_FILE).write_text('{"metadata": {}}')
    with pytest.raises(CheckpointError, match="not a valid safetensors index"):
        Steerling.load(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_truncated_or_corrupt_safetensors(tiny_ckpt, tmp_path, damage):
    path = _copy(tiny_ckpt, tmp_path)
    f = path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00\x01garbage" * 100, "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="model.safetensors: not a valid safetensors file.*truncated or corrupt"):
        Steerling.load(path)


def _rewrite(path: Path, fn) -> None:
    f = path / "model.safetensors"
    tensors = load_file(str(f))
    fn(tensors)
    save_file(tensors, str(f))


def test_missing_tensor(tiny_ckpt, tmp_path):
    path = _copy(tiny_ckpt, tmp_path)
    _rewrite(path, lambda t: t.pop("transformer.blocks.1.mlp.c_fc.weight"))
    with pytest.raises(CheckpointError, match="missing tensor.*transformer.blocks.1.mlp.c_fc.weight"):
        Steerling.load(path)


def test_unexpected_tensor(tiny_ckpt, tmp_path):
    path = _copy(tiny_ckpt, tmp_path)
    _rewrite(path, lambda t: t.__setitem__("transformer.blocks.7.attn.c_attn.weight", torch.zeros(2, 2)))
    with pytest.raises(CheckpointError, match="unexpected tensor.*transformer.blocks.7.attn.c_attn.weight"):
        Steerling.load(path)


def test_misshaped_tensor_names_file_tensor_and_expected_shape(tiny_ckpt, tmp_path):
    path = _copy(tiny_ckpt, tmp_path)
    _rewrite(path, lambda t: t.__setitem__("known_head.concept_embedding.weight", torch.zeros(100, 64, dtype=torch.bfloat16)))
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor known_head.concept_embedding.weight has shape "
                                              r"\[100, 64\], expected \[112, 64\].*padded to a multiple of 16"):
        Steerling.load(path)


def test_non_float_tensor(tiny_ckpt, tmp_path):
    path = _copy(tiny_ckpt, tmp_path)
    _rewrite(path, lambda t: t.__setitem__("transformer.ln_f.weight", torch.ones(64, dtype=torch.int32)))
    with pytest.raises(CheckpointError, match="ln_f.weight has dtype I32"):
        Steerling.load(path)


def test_vocab_not_matching_tokenizer_in_weights(tiny_ckpt, tmp_path):
    path = _copy(tiny_ckpt, tmp_path)
    _rewrite(path, lambda t: t.__setitem__("transformer.tok_emb.weight", t["transformer.tok_emb.weight"][:100000].clone()))
    with pytest.raises(CheckpointError, match=r"tok_emb.weight has shape \[100000, 64\], expected \[100281, 64\].*vocab_size"):
        Steerling.load(path)


def test_python_files_in_the_directory_are_never_run(tiny_ckpt, tmp_path):
    path = _copy(tiny_ckpt, tmp_path)
    marker = tmp_path / "ran"
    (path / "modeling_steerling.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    _edit_config(path, auto_map={"AutoModel": "modeling_steerling.SteerlingModel"})
    Steerling.load(path)
    assert not marker.exists()
