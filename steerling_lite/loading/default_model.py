"""The embedded default model: what ``generate`` and ``tui`` open when no ``--model`` is given.

It is a small Steerling (4 layers, n_embd 128, 537 known WordNet concepts, 1024 discovered
concepts, full cl100k vocabulary; ~28 MB in bf16) trained on the glosses and example
sentences of WordNet 3.0 by ``scripts/train.py configs/train/default.toml``. It ships
inside the package (``steerling_lite/assets/default-model``: ``config.json``,
``model.safetensors``, ``concept_labels.parquet``, ``MODEL_CARD.md``), so nothing is
downloaded or written on first use.

If the package was installed without its data files, the ``tiny`` random-weight checkpoint
is written on first use into the user data directory instead (``platformdirs``; override
with ``$STEERLING_LITE_HOME``), with a warning: it runs, but its output is noise.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import platformdirs

DEFAULT_MODEL_NAME = "steerling-lite-wordnet"
FALLBACK_MODEL_NAME = "tiny-random"
REQUIRED_FILES = ("config.json", "model.safetensors")


def data_dir() -> Path:
    """steerling-lite's user data directory (``$STEERLING_LITE_HOME`` if set)."""
    env = os.environ.get("STEERLING_LITE_HOME")
    return Path(env) if env else platformdirs.user_data_path("steerling-lite", appauthor=False)


def shipped_model_dir() -> Path:
    """Where the trained default model lies inside the installed package (it may be missing)."""
    return Path(__file__).resolve().parent.parent / "assets" / "default-model"


def default_model_dir() -> Path:
    """The default model's directory: the shipped model when it is installed, else the fallback
    random checkpoint's place in the user data directory (which may not exist yet)."""
    shipped = shipped_model_dir()
    if all((shipped / f).is_file() for f in REQUIRED_FILES):
        return shipped
    return data_dir() / "models" / FALLBACK_MODEL_NAME


def ensure_default_model() -> Path:
    """The default model's directory, ready to load.

    The shipped trained model when it is installed; otherwise the ``tiny`` random checkpoint,
    written into the user data directory on first use, with a warning on stderr.
    """
    path = default_model_dir()
    if path == shipped_model_dir():
        return path
    print(
        f"steerling-lite: the shipped default model is missing from {shipped_model_dir()} "
        "(installed without package data?); using random weights, whose output is noise. "
        "Pass --model DIR or reinstall the package.",
        file=sys.stderr,
    )
    if not (path / "config.json").is_file():
        from .random_checkpoint import preset_config, write_random_checkpoint

        write_random_checkpoint(path, preset_config("tiny"), seed=0)
    return path


def resolve_model_dir(model: str | Path | None = None) -> Path:  # issue-10 placeholder (loading helper's)
    """``model`` as a path, or the embedded default model's directory (written on first use)
    when ``model`` is None or empty: what ``--model`` means in every command and the app."""
    return Path(model) if model else ensure_default_model()
