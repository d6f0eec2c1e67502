"""Shared fixtures: tiny random checkpoints (written once per session) and an isolated data dir."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# One PyTorch thread in the tests and in the commands they start: the tiny checkpoints gain
# nothing from a second one, and on a 2-core machine that another process keeps busy, two
# OpenMP threads waiting on each other make the suite many times slower. Set before torch is
# imported (the import below) so that its thread pools start with one.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from steerling_lite.loading.random_checkpoint import preset_config, write_random_checkpoint  # noqa: E402

torch.set_num_threads(1)  # also when a plugin imported torch before this file

_CACHE: dict[str, Path] = {}


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Point the user data dir at a per-session temp dir: tests never touch the real home."""
    home = tmp_path_factory.getbasetemp() / "steerling-home"
    monkeypatch.setenv("STEERLING_LITE_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def _steady_textual(monkeypatch):
    """Textual apps under test draw the same frames however loaded the machine: no animations
    (``TEXTUAL_ANIMATIONS=none``, which ``App`` reads from ``textual.constants`` when it is
    created; the snapshot plugin imports Textual before this file, so the constant is set too),
    hence no blinking cursors in the app (see ``SteerlingApp.on_descendant_focus``)."""
    monkeypatch.setenv("TEXTUAL_ANIMATIONS", "none")
    constants = sys.modules.get("textual.constants")
    if constants is not None:
        monkeypatch.setattr(constants, "TEXTUAL_ANIMATIONS", "none")


@pytest.fixture(scope="session")
def make_ckpt(tmp_path_factory):
    """``make_ckpt(preset="tiny", seed=0, max_shard_bytes=None, dtype=bf16, instruct=False,
    schema="flat", interpretable=True, embedding_std=0.02, **config_overrides) -> Path``, cached
    per argument set."""
    import torch

    def make(preset: str = "tiny", *, seed: int = 0, max_shard_bytes: int | None = None,
             dtype=torch.bfloat16, instruct: bool = False, schema: str = "flat",
             interpretable: bool = True, embedding_std: float = 0.02, **overrides) -> Path:
        key = json.dumps([preset, seed, max_shard_bytes, str(dtype), instruct, schema, interpretable,
                          embedding_std, sorted(overrides.items())], default=str)
        if key not in _CACHE:
            cfg = preset_config(preset, instruct=instruct, schema=schema, interpretable=interpretable, **overrides)
            out = tmp_path_factory.mktemp("ckpt")
            _CACHE[key] = write_random_checkpoint(out / "model", cfg, seed=seed, dtype=dtype,
                                                  max_shard_bytes=max_shard_bytes, embedding_std=embedding_std)
        return _CACHE[key]

    return make


@pytest.fixture(scope="session")
def tiny_ckpt(make_ckpt) -> Path:
    """The ``tiny`` preset, flat schema, single file, bf16."""
    return make_ckpt()
