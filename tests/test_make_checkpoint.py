"""scripts/make_checkpoint.py: presets or explicit dims, both schemas, sharded or not, base or instruct."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import make_checkpoint  # noqa: E402

from steerling_lite.loading.checkpoint import open_checkpoint  # noqa: E402


def test_explicit_dims_native_instruct_sharded(tmp_path, capsys):
    out = tmp_path / "m"
    assert make_checkpoint.main(["--preset", "tiny", "--out", str(out), "--schema", "native", "--instruct",
                                 "--shard-size", "4MB", "--set", "n_layers=3", "--set", "diff_block_size=16",
                                 "--set", "n_concepts=40", "--dtype", "fp32"]) == 0
    ckpt = open_checkpoint(out)
    cfg = ckpt.config
    assert (cfg.schema, cfg.instruct, cfg.n_layers, cfg.diff_block_size, cfg.concept.n_concepts) == ("native", True, 3, 16, 40)
    assert len(ckpt.files) > 1 and all(info.dtype == "F32" for info in ckpt.tensors.values())
    assert json.loads((out / "config.json").read_text())["model_type"] == "causal_diffusion"


def test_flat_base_single_file_without_concepts(tmp_path):
    out = tmp_path / "m"
    assert make_checkpoint.main(["--out", str(out), "--no-concepts"]) == 0
    ckpt = open_checkpoint(out)
    assert ckpt.config.schema == "flat" and not ckpt.config.interpretable and len(ckpt.files) == 1


@pytest.mark.parametrize("argv", [["--set", "n_layers"], ["--shard-size", "lots"]])
def test_bad_arguments_are_refused(tmp_path, argv):
    with pytest.raises(SystemExit):
        make_checkpoint.main(["--out", str(tmp_path / "m"), *argv])
