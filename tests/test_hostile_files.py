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


def test_info_and_plan_of_one_file_larger_than_ram(tmp_path, capsys):
    """Steerling-8B's shapes in fp32 as one ~34 GB sparse file: more than this machine's RAM."""
    from quant import probe_memory

    cfg = preset_config("8b")
    model = tmp_path / "big"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(cfg.to_dict()))
    header, offset = {}, 0
    for name, shape in expected_shapes(cfg).items():
        n = math.prod(shape) * 4
        header[file_name(cfg, name)] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    ram = probe_memory().ram_total
    assert offset > ram, "the file must be larger than RAM for this test to mean anything"
    _header_file(model / SINGLE_FILE, header, offset)
    assert main(["info", "--model", str(model), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["total_bytes"] == offset
    assert main(["plan", "--model", str(model), "--device", "cpu", "--json"]) in (0, 1)
    plan = json.loads(capsys.readouterr().out)
    assert plan["model"] == str(model)
