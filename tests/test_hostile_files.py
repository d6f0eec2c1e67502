"""Issue 13, hostile files: config.json, the safetensors index, safetensors headers and
quantize_config.json that are forged, nested deep, out of bounds or huge give one line
(exit 2) naming the file and field, before any structure is built; a single safetensors file
larger than RAM is inspected and planned from its header bytes alone."""

from __future__ import annotations

import json
import math
import shutil
import struct

import pytest

from steerling_lite.cli import main
from steerling_lite.errors import CheckpointError, ConfigError
from steerling_lite.loading.checkpoint import INDEX_FILE, SINGLE_FILE, expected_shapes, file_name, open_checkpoint
from steerling_lite.loading.config import load_config
from steerling_lite.loading.random_checkpoint import preset_config


@pytest.fixture
def ckpt_copy(tiny_ckpt, tmp_path):
    out = tmp_path / "m"
    shutil.copytree(tiny_ckpt, out)
    return out


def _set_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    text = json.dumps(cfg)
    for key, value in changes.items():  # a raw JSON token such as 1e999 (which json.dumps cannot write)
        if isinstance(value, str) and value.startswith("RAW:"):
            text = text.replace(json.dumps(value), value[4:])
    (path / "config.json").write_text(text)


def _exit_2(capsys, argv, *needles) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for n in needles:
        assert n in err, err
    return err


@pytest.mark.parametrize("field,value,needle", [
    ("n_layers", 10**9, "'n_layers' is 1000000000; expected an integer from 1 to 1024"),
    ("n_layers", 10**30, "'n_layers'"),
    ("intermediate_size", -5, "'intermediate_size' is -5"),
    ("factorize_rank", -1, "'factorize_rank' is -1"),
    ("norm_eps", -1e-5, "'norm_eps' is -1e-05; expected a finite number > 0"),
    ("rope_base", "RAW:1e999", "'rope_base' is inf"),  # json reads 1e999 as infinity
    ("clip_qkv", 0, "'clip_qkv' is 0"),
    ("diff_block_size", 4096, "larger than the context"),
    ("norm_eps", None, "'norm_eps' is null; expected int or float"),  # null only where the field allows it
    ("pad_multiple", None, "'pad_multiple' is null; expected int"),
])
def test_config_fields_out_of_bounds(ckpt_copy, capsys, field, value, needle):
    _set_config(ckpt_copy, **{field: value})
    with pytest.raises(ConfigError, match="config.json"):
        load_config(ckpt_copy)
    _exit_2(capsys, ["info", "--model", str(ckpt_copy)], needle)
    _exit_2(capsys, ["plan", "--model", str(ckpt_copy)], needle)


def test_config_nan_literal_and_deep_nesting(ckpt_copy, capsys):
    text = (ckpt_copy / "config.json").read_text()
    (ckpt_copy / "config.json").write_text(text.replace('"rope_base": 500000.0', '"rope_base": NaN'))
    _exit_2(capsys, ["info", "--model", str(ckpt_copy)], "config.json", "NaN is not valid JSON")
    (ckpt_copy / "config.json").write_text('{"model_type": "steerling", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    _exit_2(capsys, ["info", "--model", str(ckpt_copy)], "config.json", "nested 100001 levels deep")


@pytest.mark.parametrize("changes,needle", [
    ({"n_layers": 4}, "'n_layers' is 4 but the weights hold 2 layer(s) (tensors transformer.blocks.0.* to transformer.blocks.1.*"),
    ({"n_layers": 1}, "'n_layers' is 1 but the weights hold 2 layer(s)"),
    ({"n_embd": 128, "concept_dim": 128}, "tensor transformer.tok_emb.weight has shape [100281, 64], expected [100281, 128] "
                                          "from CONFIG: 'n_embd' is 128, but the tensor's dimension 1 is 64"),
    ({"n_head": 8}, "tensor transformer.blocks.0.attn.q_norm.weight has shape [16], expected [8] from CONFIG: 'n_head' is 8"),
    ({"n_kv_heads": 4}, "tensor transformer.blocks.0.attn.c_attn.weight has shape [128, 64], expected [192, 64] "
                        "from CONFIG: 'n_kv_heads' is 4"),
    ({"intermediate_size": 256}, "mlp.c_proj.weight has shape [64, 128], expected [64, 256] from CONFIG: "
                                 "'intermediate_size' is 256, but the tensor's dimension 1 is 128"),
    ({"n_concepts": 200}, "known_head.concept_embedding.weight has shape [112, 64], expected [208, 64] from CONFIG: "
                          "'n_concepts' is 200"),
    ({"n_unknown_concepts": 600}, "unknown_head.embedding_coef.weight has shape [304, 16], expected [608, 16] from "
                                  "CONFIG: 'n_unknown_concepts' is 600"),
    ({"factorize_rank": 32}, "from CONFIG: 'factorize_rank' is 32, but the tensor's dimension 1 is 16"),
])
def test_config_checked_against_the_headers_before_any_model_is_built(ckpt_copy, capsys, monkeypatch, changes, needle):
    """config.json that disagrees with the weights: one line naming the field, the tensor and both
    values, raised from the headers alone (building the model, even on the meta device, fails the test)."""
    import steerling_lite.loading.checkpoint as checkpoint

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before config.json was checked against the headers")

    monkeypatch.setattr(checkpoint, "meta_model", no_model)
    _set_config(ckpt_copy, **changes)
    needle = needle.replace("CONFIG", str(ckpt_copy / "config.json"))
    with pytest.raises(CheckpointError) as exc:
        open_checkpoint(ckpt_copy)
    assert needle in str(exc.value)
    _exit_2(capsys, ["info", "--model", str(ckpt_copy)], needle)
    _exit_2(capsys, ["plan", "--model", str(ckpt_copy)], needle)


def test_layer_count_of_a_non_interpretable_checkpoint(make_ckpt, tmp_path, capsys):
    model = tmp_path / "m"
    shutil.copytree(make_ckpt(interpretable=False), model)
    _set_config(model, n_layers=3)
    _exit_2(capsys, ["info", "--model", str(model)], "'n_layers' is 3 but the weights hold 2 layer(s) (tensors blocks.0.*")


def _index(path, weight_map):
    (path / INDEX_FILE).write_text(json.dumps({"weight_map": weight_map}))


@pytest.mark.parametrize("shard", [{"a": 1}, ["model.safetensors"], 7, ""])
def test_index_shard_names_that_are_not_strings(ckpt_copy, capsys, shard):
    _index(ckpt_copy, {"transformer.wte.weight": shard})
    with pytest.raises(CheckpointError, match="not a file name"):
        open_checkpoint(ckpt_copy)
    _exit_2(capsys, ["info", "--model", str(ckpt_copy)], INDEX_FILE, "not a valid safetensors index")


def test_deeply_nested_index_and_quantize_config(ckpt_copy, capsys):
    (ckpt_copy / INDEX_FILE).write_text('{"weight_map": ' + "[" * 50_000 + "]" * 50_000 + "}")
    _exit_2(capsys, ["info", "--model", str(ckpt_copy)], INDEX_FILE, "levels deep")
    (ckpt_copy / INDEX_FILE).unlink()
    (ckpt_copy / "quantize_config.json").write_text("[" * 50_000 + "]" * 50_000)
    _exit_2(capsys, ["info", "--model", str(ckpt_copy)], "quantize_config.json", "levels deep")


def _header_file(path, header: dict, data_bytes: int) -> None:
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + data_bytes)  # sparse: costs no disk


@pytest.mark.parametrize("header,data,needle", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, 4, "do not hold shape"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, 8, "gap or overlap"),
    ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, 4, "non-negative"),
    ({"a": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}}, 4, "unknown dtype"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, 40, "the file has 40"),
    ({"a": "x"}, 0, "expected {dtype, shape, data_offsets}"),
])
def test_forged_safetensors_headers(ckpt_copy, capsys, header, data, needle):
    _header_file(ckpt_copy / SINGLE_FILE, header, data)
    _exit_2(capsys, ["info", "--model", str(ckpt_copy)], SINGLE_FILE, needle)


def test_header_length_beyond_the_file(ckpt_copy, capsys):
    (ckpt_copy / SINGLE_FILE).write_bytes(struct.pack("<Q", 2**63) + b"{}")
    _exit_2(capsys, ["info", "--model", str(ckpt_copy)], "header length")


def _mapped_bytes() -> int:
    """This process's virtual address space in use now (Linux: /proc/self/statm)."""
    import resource

    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


@pytest.fixture(scope="module")
def larger_than_ram(tmp_path_factory):
    """Steerling-8B's shapes in fp32 as one sparse ``model.safetensors`` (~34 GB, costing no disk)
    larger than this machine's RAM (more layers of the same shapes on a machine with more RAM).
    The smallest tensors come first in the file, so streaming starts with cheap reads."""
    from quant import probe_memory

    ram = probe_memory().ram_total
    target = max(ram * 1.25, _mapped_bytes() + 16 * 2**30)  # also well above the address-space cap below
    cfg = preset_config("8b")
    shapes = expected_shapes(cfg)
    total = sum(math.prod(s) * 4 for s in shapes.values())
    if total <= target:
        block = sum(math.prod(s) * 4 for n, s in shapes.items() if n.startswith("transformer.blocks.0."))
        cfg = cfg.replace(n_layers=cfg.n_layers + math.ceil((target - total) / block))
        shapes = expected_shapes(cfg)
    model = tmp_path_factory.mktemp("big") / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(cfg.to_dict()))
    header, offset = {}, 0
    for name, shape in sorted(shapes.items(), key=lambda kv: math.prod(kv[1])):
        n = math.prod(shape) * 4
        header[file_name(cfg, name)] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    assert offset > ram, "the file must be larger than RAM for these tests to mean anything"
    _header_file(model / SINGLE_FILE, header, offset)
    return model, offset


@pytest.fixture
def address_space_below_the_file(larger_than_ram):
    """Cap this process's virtual address space (RLIMIT_AS) at what it maps now plus 6 GiB, far
    below the file: mapping the whole file fails ("Cannot allocate memory") whatever the RAM."""
    import resource

    cap = _mapped_bytes() + 6 * 2**30
    assert cap < larger_than_ram[1]
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield cap
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def test_info_and_plan_of_one_file_larger_than_ram(larger_than_ram, address_space_below_the_file, capsys):
    model, size = larger_than_ram
    assert main(["info", "--model", str(model), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["total_bytes"] == size
    assert main(["plan", "--model", str(model), "--device", "cpu", "--json"]) in (0, 1)
    plan = json.loads(capsys.readouterr().out)
    assert plan["model"] == str(model)


@pytest.fixture
def count_reads(monkeypatch):
    """Count the tensors read from the checkpoint; ``stop_after(name_part)`` makes the read after
    the first tensor whose name holds ``name_part`` raise KeyboardInterrupt (Ctrl-C)."""
    import steerling_lite.loading.checkpoint as checkpoint

    class Reads(list):
        stop_after = None

    real = checkpoint.read_tensor
    reads = Reads()
    stop: list[str] = []

    def read(f, info):
        if stop and any(stop[0] in name for name in reads):
            raise KeyboardInterrupt
        reads.append(info.name)
        return real(f, info)

    monkeypatch.setattr(checkpoint, "read_tensor", read)
    reads.stop_after = stop.append
    return reads


def test_generate_on_a_file_larger_than_ram_is_refused_by_the_planner(larger_than_ram, address_space_below_the_file,
                                                                       count_reads, capsys):
    """What must stay in RAM (fp32 embedding and concept heads) cannot fit in 1 GiB: the plan refuses
    in one line naming what it needs, before any tensor is read."""
    model, size = larger_than_ram
    err = _exit_2(capsys, ["generate", "--model", str(model), "--prompt", "x", "--device", "cpu", "--quant", "none",
                           "--dtype", "fp32", "--max-cpu-memory", "1GiB"], "does not fit")
    assert "mmap" not in err and "Cannot allocate memory" not in err
    assert count_reads == []


def test_quantize_streams_a_file_larger_than_ram(larger_than_ram, address_space_below_the_file, count_reads,
                                                 tmp_path, capsys):
    """quantize reads tensor by tensor (never the whole file: the address space is capped far below
    it); stopped by Ctrl-C once a whole 8B linear layer was read and quantized, it leaves nothing."""
    model, size = larger_than_ram
    count_reads.stop_after("attn.c_proj.weight")
    code = main(["quantize", "--model", str(model), "--quant", "nf4", "--device", "cpu", "--out", str(tmp_path / "q")])
    err = capsys.readouterr().err
    assert code == 130 and "mmap" not in err and "Traceback" not in err, err
    assert count_reads[-1].endswith("attn.c_proj.weight")  # read and quantized; the next read was stopped
    assert list(tmp_path.iterdir()) == []


def test_disk_offloaded_tensors_are_read_by_byte_range_never_mapped(tiny_ckpt, monkeypatch):
    """Tensors offloaded to disk are read in place from the checkpoint at each forward: by byte
    range, not through accelerate's safetensors reading, which maps the whole file (and fails for
    a file larger than RAM: "unable to mmap ... Cannot allocate memory")."""
    import accelerate.utils.offload as accelerate_offload
    import torch

    from steerling_lite import GenerationConfig, Steerling
    from steerling_lite.loading.load import load_planned
    from steerling_lite.loading.plan import plan_memory

    def no_mapping(*args, **kwargs):
        raise AssertionError("a whole safetensors file was memory-mapped (safe_open)")

    monkeypatch.setattr(accelerate_offload, "safe_open", no_mapping)
    lp = plan_memory(tiny_ckpt, quant="none", device="cpu", dtype="bf16")
    plain = Steerling(load_planned(lp, cpu_layout=False), torch.device("cpu"), lp.dtype)
    lp.plan.placement["transformer.blocks.1"] = "disk"
    offloaded = load_planned(lp)
    assert offloaded.transformer.blocks[1].mlp.c_fc.weight.is_meta
    greedy = GenerationConfig(max_new_tokens=64, steps=4, temperature=0.0, entropy_sampling=False, seed=0)
    got = Steerling(offloaded, torch.device("cpu"), lp.dtype).generate("Once upon a time", greedy)
    assert got.token_ids == plain.generate("Once upon a time", greedy).token_ids
