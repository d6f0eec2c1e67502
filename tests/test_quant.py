"""Quantized loading (issue 3): int8 / nf4 / fp4 on the CPU with bitsandbytes, what stays bf16,
logit error against bf16, attribution exactness, accelerate offload, pre-quantized files."""

from __future__ import annotations

import gc
import json
import shutil

import pytest
import torch
import torch.nn as nn

import quant.linear as qlinear
from quant import FourBitLinear, Int8Linear, QuantConfig, quantize_weight
from quant.memory import GiB, MachineMemory
from steerling_lite import GenerationConfig, Steerling
from steerling_lite.loading.checkpoint import open_checkpoint
from steerling_lite.errors import CheckpointError
from steerling_lite.loading.load import load_planned
from steerling_lite.loading.plan import plan_memory
from steerling_lite.loading.prequantized import write_prequantized
from steerling_lite.loading.quantized import quantized_layers

MODES = ["int8", "nf4", "fp4"]
GREEDY = GenerationConfig(max_new_tokens=64, steps=8, temperature=0, seed=0)
PROMPT = list(range(1000, 1040))
FAKE_MEMORY = MachineMemory(ram_total=16 * GiB, ram_available=12 * GiB)  # no GPU


def _logits(lm: Steerling, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return lm.model.lm_logits(lm.model.transformer(ids)).float()


# ---- quantization itself -------------------------------------------------------------------
@pytest.mark.parametrize("config", [QuantConfig("nf4"), QuantConfig("nf4", double_quant=False),
                                    QuantConfig("fp4", blocksize=128), QuantConfig("int8")],
                         ids=["nf4-dq", "nf4", "fp4-b128", "int8"])
@pytest.mark.parametrize("shape", [(96, 200), (256, 128)])
def test_chunked_quantization_is_bitsandbytes_bit_for_bit(monkeypatch, config, shape):
    import bitsandbytes.functional as F

    if config.four_bit and (shape[0] * shape[1]) % config.blocksize:
        pytest.skip("not a whole number of blocks")
    monkeypatch.setattr(qlinear, "CHUNK_WEIGHTS", 2000)  # many chunks
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    out = quantize_weight(w, config)
    assert list(out) == list(config.layout(*shape))
    assert sum(t.numel() * t.element_size() for t in out.values()) == config.weight_nbytes(*shape)
    if config.method == "int8":
        cb, scb, _ = F.int8_vectorwise_quant(w.half())
        assert torch.equal(out["weight"], cb) and torch.equal(out["SCB"], scb)
        return
    packed, qs = F.quantize_4bit(w, blocksize=config.blocksize, compress_statistics=config.double_quant,
                                 quant_type=config.method)
    assert torch.equal(out["weight"], packed) and torch.equal(out["absmax"], qs.absmax)
    assert torch.equal(out["quant_map"], qs.code)
    if config.double_quant:
        assert torch.equal(out["nested_absmax"], qs.state2.absmax) and torch.equal(out["offset"], qs.offset)


@pytest.mark.parametrize("method", MODES)
def test_quantized_linear_matches_a_float_linear(method):
    cfg = QuantConfig(method)
    lin = nn.Linear(128, 96, bias=True).to(torch.bfloat16)
    x = torch.randn(2, 5, 128, dtype=torch.bfloat16)
    cls = Int8Linear if method == "int8" else FourBitLinear
    q = cls(128, 96, True, cfg, device="cpu")
    for k, v in quantize_weight(lin.weight.data, cfg).items():
        q._parameters[k] = nn.Parameter(v, requires_grad=False)
    q.bias = nn.Parameter(lin.bias.data.clone(), requires_grad=False)
    with torch.no_grad():
        ref, y = lin(x).float(), q(x)
    assert y.dtype == x.dtype and y.shape == ref.shape
    rel = ((y.float() - ref).norm() / ref.norm()).item()
    # measured: int8 0.005-0.01, nf4 ~0.09, fp4 ~0.11 on N(0, 1) weights
    assert 1e-4 < rel < (0.03 if method == "int8" else 0.2)


def test_config_validation_and_round_trip():
    with pytest.raises(ValueError, match="quantization method 'int4'"):
        QuantConfig("int4")
    with pytest.raises(ValueError, match="int8_threshold"):
        QuantConfig("int8", int8_threshold=-1)
    with pytest.raises(ValueError, match="blocksize 48"):
        QuantConfig("nf4", blocksize=48)
    c = QuantConfig("fp4", double_quant=False, blocksize=128, compute_dtype=torch.float16)
    assert QuantConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert QuantConfig("int8", int8_threshold=0).int8_threshold == 0  # 0 is allowed: no fp16 outlier path


# ---- policy and loading ----------------------------------------------------------------------
def test_policy_quantizes_exactly_the_block_linears(tiny_ckpt):
    cfg = open_checkpoint(tiny_ckpt).config
    want = {f"transformer.blocks.{i}.{m}" for i in range(cfg.n_layers)
            for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert set(quantized_layers(cfg)) == want


@pytest.mark.parametrize("method", MODES)
def test_each_mode_loads_generates_and_keeps_embeddings_norms_heads_bf16(tiny_ckpt, method):
    lm = Steerling.load(tiny_ckpt, device="cpu", quant=method)
    assert lm.quant == method and lm.quant_config.method == method
    model = lm.model
    for name, mod in model.named_modules():
        if name.startswith("transformer.blocks.") and name.rsplit(".", 2)[-2:] in (["attn", "c_attn"], ["attn", "c_proj"],
                                                                                   ["mlp", "c_fc"], ["mlp", "c_proj"]):
            assert isinstance(mod, Int8Linear if method == "int8" else FourBitLinear), name
    kept = {n: p for n, p in model.named_parameters()
            if n.startswith(("known_head.", "unknown_head.", "transformer.tok_emb", "transformer.ln_f"))
            or n.endswith(("ln_1.weight", "ln_2.weight", "q_norm.weight", "k_norm.weight"))}
    assert len(kept) == 2 + 4 + 1 + 1 + 4 * model.cfg.n_layers  # heads, embedding, ln_f, per-block norms
    assert all(p.dtype == torch.bfloat16 for p in kept.values()), {n: p.dtype for n, p in kept.items()}
    assert type(model.transformer.lm_head) is nn.Linear
    assert model.transformer.lm_head.weight is model.transformer.tok_emb.weight  # still tied
    assert type(model.known_head.concept_predictor) is nn.Linear
    assert type(model.unknown_head.predictor_down) is nn.Linear
    result = lm.generate(PROMPT, GREEDY)
    assert len(result.token_ids) == 64 and result.stop_reason == "length"


def test_relative_logit_error_against_bf16_is_bounded(tiny_ckpt):
    """The same model in bf16 vs int8 / nf4 / fp4 (only the block linears differ).

    Measured on tiny random checkpoints (seeds 0-2, 128 random tokens): int8 0.012-0.017,
    nf4 0.15-0.18, fp4 0.18-0.22 relative L2 error of the logits (two post-norm layers of
    N(0, 0.02) weights; 4-bit codes carry ~9% error per matmul). Bounds: about 3x (int8)
    and 2x (4-bit) the largest measured value.
    """
    ids = torch.randint(0, 100000, (1, 128), generator=torch.Generator().manual_seed(0))
    ref = _logits(Steerling.load(tiny_ckpt, device="cpu", dtype="bf16", quant="none"), ids)
    err = {}
    for method in MODES:
        lm = Steerling.load(tiny_ckpt, device="cpu", quant=method)
        err[method] = ((_logits(lm, ids) - ref).norm() / ref.norm()).item()
    assert 1e-4 < err["int8"] < 0.05, err
    assert err["int8"] < err["nf4"] < 0.35, err
    assert err["fp4"] < 0.45, err


@pytest.mark.parametrize("method", ["none", *MODES])
def test_attribution_sums_stay_exact_in_every_mode(tiny_ckpt, method):
    from steerling_lite.interpret.attribution import explain

    lm = Steerling.load(tiny_ckpt, device="cpu", quant=method, dtype="bf16")
    attribution = explain(lm, PROMPT, GenerationConfig(max_new_tokens=64, steps=4, temperature=0, seed=0))
    check = attribution.verify(atol=1e-3)
    assert check.n_tokens == 64 and check.passed, check


# ---- accelerate offload on the CPU -------------------------------------------------------------
@pytest.mark.parametrize("method", ["none", "int8", "nf4"])
def test_disk_offload_device_map_gives_the_same_greedy_tokens(tiny_ckpt, tmp_path, method):
    lp = plan_memory(tiny_ckpt, quant=method, device="cpu", dtype="bf16", memory=FAKE_MEMORY,
                     offload_dir=tmp_path)
    assert lp.plan.device_map()["transformer.blocks.1"] == "cpu"
    plain = load_planned(lp, cpu_layout=False)
    assert not hasattr(plain.transformer.blocks[1], "_hf_hook")
    lp.plan.placement["transformer.blocks.1"] = "disk"  # CPU + disk offload, through accelerate
    offloaded = load_planned(lp, offload_dir=tmp_path)
    block = offloaded.transformer.blocks[1]
    assert hasattr(block, "_hf_hook") and block.mlp.c_fc.weight.is_meta
    assert offloaded.layer_devices() == [torch.device("cpu")] * 2 and offloaded.input_device == torch.device("cpu")
    folders = list(tmp_path.iterdir())
    assert len(folders) == (0 if method == "none" else 1)  # unquantized layers are read from the checkpoint itself
    a = Steerling(plain, torch.device("cpu"), lp.dtype).generate(PROMPT, GREEDY)
    b = Steerling(offloaded, torch.device("cpu"), lp.dtype).generate(PROMPT, GREEDY)
    assert a.token_ids == b.token_ids
    del offloaded, b, block
    gc.collect()
    assert list(tmp_path.iterdir()) == []  # the offload folder goes with the model


def test_load_with_a_ram_cap_offloads_blocks_to_disk(tiny_ckpt, tmp_path):
    probe = plan_memory(tiny_ckpt, quant="nf4", device="cpu", memory=FAKE_MEMORY)
    cap = probe.plan.devices["cpu"].peak - 1  # one byte short of holding everything
    lm = Steerling.load(tiny_ckpt, device="cpu", quant="nf4", max_cpu_memory=cap, offload_dir=tmp_path)
    assert "disk" in lm.plan.plan.device_map().values() and lm.plan.plan.fits
    ref = Steerling(load_planned(probe, cpu_layout=False), torch.device("cpu"), torch.bfloat16)
    assert lm.generate(PROMPT, GREEDY).token_ids == ref.generate(PROMPT, GREEDY).token_ids


def test_a_load_that_does_not_fit_is_refused_before_reading(tiny_ckpt):
    from steerling_lite.errors import PlacementError

    with pytest.raises(PlacementError, match="do not fit in RAM: give an offload directory"):
        Steerling.load(tiny_ckpt, device="cpu", quant="nf4", max_cpu_memory=1)


# ---- pre-quantized checkpoints -----------------------------------------------------------------
@pytest.fixture(scope="module")
def prequantized(tiny_ckpt, tmp_path_factory):
    out = {}
    for method in ("nf4", "int8"):
        out[method] = write_prequantized(tiny_ckpt, tmp_path_factory.mktemp("pq") / method, QuantConfig(method),
                                         shard_bytes=4_000_000)
    return out


def _copy(path, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(path, dst)
    return dst


@pytest.mark.parametrize("method", ["nf4", "int8"])
def test_prequantized_loads_without_quantizing_and_matches(tiny_ckpt, prequantized, monkeypatch, method):
    path = prequantized[method]
    info = json.loads((path / "quantize_config.json").read_text())
    assert info["versions"]["bitsandbytes"] and info["versions"]["torch"] and info["quantization"]["method"] == method
    assert len(list(path.glob("*.safetensors"))) > 1
    on_the_fly = Steerling.load(tiny_ckpt, device="cpu", quant=method)

    def no_quantizing(*a, **k):
        raise AssertionError("a pre-quantized checkpoint must not be quantized again")

    monkeypatch.setattr("quant.loader.quantize_weight", no_quantizing)
    lm = Steerling.load(path, device="cpu")  # auto: its own precision
    assert lm.quant == method
    ids = torch.tensor([PROMPT])
    assert torch.equal(_logits(lm, ids), _logits(on_the_fly, ids))


def test_prequantized_refuses_another_precision(prequantized):
    with pytest.raises(CheckpointError, match="pre-quantized with nf4.*not int8"):
        Steerling.load(prequantized["nf4"], device="cpu", quant="int8")
    with pytest.raises(CheckpointError, match="not none"):
        Steerling.load(prequantized["nf4"], device="cpu", quant="none")


def test_prequantized_from_another_bitsandbytes_is_refused(prequantized, monkeypatch):
    monkeypatch.setattr("quant.prequant.library_versions", lambda: {"bitsandbytes": "0.99.0", "torch": "2.13.0"})
    with pytest.raises(CheckpointError, match=r"pre-quantized with bitsandbytes 0\.50.*but bitsandbytes 0\.99\.0 is installed"):
        Steerling.load(prequantized["nf4"], device="cpu")


def test_damaged_prequantized_tensor_is_refused(prequantized, tmp_path):
    path = _copy(prequantized["nf4"], tmp_path)
    ckpt = open_checkpoint(path)
    info = ckpt.tensors["transformer.blocks.0.mlp.c_fc.weight"]
    data = bytearray(info.file.read_bytes())
    data[info.offsets[0] + 10] ^= 0xFF  # one flipped byte of packed codes: wrong numbers if not caught
    info.file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"c_fc.weight is damaged \(CRC-32"):
        Steerling.load(path, device="cpu")


def test_truncated_prequantized_shard_is_refused(prequantized, tmp_path):
    path = _copy(prequantized["nf4"], tmp_path)
    shard = sorted(path.glob("*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        Steerling.load(path, device="cpu")


def test_mixed_or_unlabelled_prequantized_files_are_refused(prequantized, tmp_path):
    path = _copy(prequantized["nf4"], tmp_path)
    cfg = json.loads((path / "quantize_config.json").read_text())
    cfg["quantization"]["double_quant"] = False
    (path / "quantize_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="other quantization settings.*mixes files"):
        open_checkpoint(path)
    (path / "quantize_config.json").unlink()
    with pytest.raises(CheckpointError, match="pre-quantized tensors but quantize_config.json is missing"):
        open_checkpoint(path)


def test_prequantized_tensor_of_the_wrong_shape_is_refused(prequantized, tmp_path):
    from safetensors.torch import load_file, save_file

    path = _copy(prequantized["int8"], tmp_path)
    ckpt = open_checkpoint(path)
    f = ckpt.tensors["transformer.blocks.1.attn.c_proj.SCB"].file
    from steerling_lite.loading.checkpoint import file_header

    meta = file_header(f)[2]
    tensors = load_file(f)
    tensors["transformer.blocks.1.attn.c_proj.SCB"] = tensors["transformer.blocks.1.attn.c_proj.SCB"][:10].clone()
    save_file(tensors, f, metadata=meta)
    with pytest.raises(CheckpointError, match=r"c_proj.SCB has shape \[10\], expected \[64\] from the int8 layout"):
        open_checkpoint(path)


@pytest.mark.parametrize("double_quant", [True, False])
def test_cpu_layout_conversion_in_chunks_matches_bitsandbytes(monkeypatch, double_quant):
    import bitsandbytes.functional as F

    if not F.has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: the CPU layout is not used")
    cfg = QuantConfig("nf4", double_quant=double_quant)
    w = torch.randn(256, 128, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    layer = FourBitLinear(128, 256, False, cfg, device="cpu")
    for k, v in quantize_weight(w, cfg).items():
        layer._parameters[k] = nn.Parameter(v, requires_grad=False)
    x = torch.randn(3, 128, dtype=torch.bfloat16)
    before = layer(x)
    packed, qs = F.quantize_4bit(w, blocksize=64, compress_statistics=double_quant, quant_type="nf4")
    ref_w, ref_qs = F._convert_weight_packed_for_cpu(packed, qs)  # what bnb.nn.Linear4bit does, in one piece
    monkeypatch.setattr(qlinear, "CHUNK_WEIGHTS", 64 * 128)  # 64-row chunks
    assert layer.pack_for_cpu() and layer.cpu_packed
    assert torch.equal(layer.weight, ref_w) and torch.equal(layer.absmax, ref_qs.absmax)
    after = layer(x)
    assert ((after.float() - before.float()).norm() / before.float().norm()) < 0.02  # absmax kept in bf16


def test_non_interpretable_checkpoint_quantizes_and_prequantizes(make_ckpt, tmp_path):
    """File names lack the ``transformer.`` prefix there (the reference's bare CausalDiffusionLM)."""
    src = make_ckpt(interpretable=False)
    out = write_prequantized(src, tmp_path / "nf4", QuantConfig("nf4"))
    assert open_checkpoint(out).tensors["transformer.blocks.0.mlp.c_fc.absmax"].name == "blocks.0.mlp.c_fc.absmax"
    a = Steerling.load(src, device="cpu", quant="nf4")
    b = Steerling.load(out, device="cpu")
    assert b.quant == "nf4" and a.model.known_head is None
    assert a.generate(PROMPT, GREEDY).token_ids == b.generate(PROMPT, GREEDY).token_ids


@pytest.mark.parametrize("packed", [False, True])
def test_four_bit_layer_passes_gradients_to_its_input(packed):
    """Integrated gradients need ∂y/∂x through 4-bit layers; bitsandbytes' CPU-packed kernel has
    no backward of its own, so the layer supplies ``∂L/∂x = ∂L/∂y · W`` from its dequantized W."""
    import bitsandbytes.functional as F

    if packed and not F.has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: the CPU layout is not used")
    cfg = QuantConfig("nf4", double_quant=True)
    w = torch.randn(96, 128, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    layer = FourBitLinear(128, 96, False, cfg, device="cpu")
    for k, v in quantize_weight(w, cfg).items():
        layer._parameters[k] = nn.Parameter(v, requires_grad=False)
    unpacked_w = layer.dequantized_weight()
    assert (unpacked_w - w.float()).abs().max() < 0.25 * w.float().abs().max()  # it is w, quantized
    if packed:
        assert layer.pack_for_cpu()
        assert torch.allclose(layer.dequantized_weight(), unpacked_w, rtol=1e-2, atol=1e-3)  # bf16 absmax
    x = torch.randn(5, 128, dtype=torch.bfloat16, requires_grad=True)
    y = layer(x)
    assert torch.allclose(y.float(), x.detach().float() @ layer.dequantized_weight().t(), rtol=0.05, atol=0.05)
    g = torch.randn_like(y)
    (grad,) = torch.autograd.grad((y * g).sum(), x)
    want = g.float() @ layer.dequantized_weight()
    assert grad.abs().max() > 0
    assert torch.allclose(grad.float(), want, rtol=0.02, atol=0.02)
