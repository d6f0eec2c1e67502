"""The embedded default model: what ``generate`` and ``tui`` open when no ``--model`` is given.

Until a trained default ships, it is the ``tiny`` random checkpoint, written on first
use into the user data directory (``platformdirs``; override with
``$STEERLING_LITE_HOME``). Writing takes about a second and needs no network.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

DEFAULT_MODEL_NAME = "tiny-random"


def data_dir() -> Path:
    """steerling-lite's user data directory (``$STEERLING_LITE_HOME`` if set)."""
    env = os.environ.get("STEERLING_LITE_HOME")
    return Path(env) if env else platformdirs.user_data_path("steerling-lite", appauthor=False)


def default_model_dir() -> Path:
    """Where the default model lives (it may not exist yet)."""
    return data_dir() / "models" / DEFAULT_MODEL_NAME


def ensure_default_model() -> Path:
    """The default model's directory, writing the tiny random checkpoint there first if it is missing."""
    path = default_model_dir()
    if not (path / "config.json").is_file():
        from .random_checkpoint import preset_config, write_random_checkpoint

        write_random_checkpoint(path, preset_config("tiny"), seed=0)
    return path
