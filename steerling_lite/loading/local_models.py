"""The models on this machine, for ``steerling-lite list``.

Looked for in: the embedded default model; the pulls recorded in the registry
(:mod:`steerling_lite.loading.hub`); Steerling models in the Hugging Face cache (whoever
downloaded them); the folders of ``$STEERLING_LITE_HOME/models`` and any folder named on
the command line (a model directory, or a folder of them). A pre-quantized checkpoint
(``steerling-lite quantize``) records its source in ``quantize_config.json``; such copies
found in those places or beside a model's directory are listed with the model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from quant.prequant import read_quantize_config

from ..errors import ConfigError
from .config import load_config
from .default_model import DEFAULT_MODEL_NAME, data_dir, default_model_dir
from .hub import LABEL_FILES, read_registry


@dataclass(frozen=True)
class LocalModel:
    """One model directory found on this machine.

    Attributes:
        name: the repo id for pulled / cached models, else the directory's name.
        path: the checkpoint directory.
        where: ``default``, ``pulled``, ``hf-cache`` or ``folder``.
        size_bytes: bytes of its files (config, weights, labels).
        schema: ``flat`` or ``native`` config.
        instruct: an instruct model (chat template) rather than a base model.
        interpretable: it has concept heads.
        labels: a concept labels file is there.
        quant: ``none``, or the method of a pre-quantized checkpoint.
        copies: pre-quantized copies of this model found: ``(method, path)``.
    """

    name: str
    path: Path
    where: str
    size_bytes: int
    schema: str
    instruct: bool
    interpretable: bool
    labels: bool
    quant: str
    copies: tuple[tuple[str, Path], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "where": self.where, "size_bytes": self.size_bytes,
                "schema": self.schema, "kind": "instruct" if self.instruct else "base",
                "interpretable": self.interpretable, "labels": self.labels, "quant": self.quant,
                "prequantized_copies": [{"quant": q, "path": str(p)} for q, p in self.copies]}


def _hf_cache_dirs(cache_dir: str | Path | None) -> list[tuple[str, Path]]:
    """``(repo_id, snapshot)`` of every cached model repo with a config.json: the snapshot of
    ``main`` when there is one, else the most recently modified."""
    from huggingface_hub import constants, scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache_dir or constants.HF_HUB_CACHE)
    except (CacheNotFound, OSError):
        return []
    out = []
    for repo in info.repos:
        if repo.repo_type != "model" or not repo.revisions:
            continue
        revs = sorted(repo.revisions, key=lambda r: ("main" in r.refs, r.last_modified), reverse=True)
        snap = Path(revs[0].snapshot_path)
        if (snap / "config.json").is_file():
            out.append((repo.repo_id, snap))
    return out


def _folder_dirs(folder: Path) -> list[Path]:
    """``folder`` if it is a model directory, else its subfolders that are."""
    if (folder / "config.json").is_file():
        return [folder]
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if (p / "config.json").is_file())


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def _describe(name: str, path: Path, where: str) -> LocalModel | None:
    """The model in ``path``, or None when it is not a readable Steerling checkpoint."""
    try:
        cfg = load_config(path)
        info = read_quantize_config(path)
    except (ConfigError, ValueError, OSError):
        return None
    return LocalModel(name, path, where, _dir_size(path), cfg.schema, bool(cfg.instruct), bool(cfg.interpretable),
                      any((path / f).is_file() for f in LABEL_FILES), info.config.method if info else "none")


def _source_of(model: LocalModel) -> Path | None:
    """The checkpoint a pre-quantized copy was made from (its ``quantize_config.json``)."""
    if model.quant == "none":
        return None
    info = read_quantize_config(model.path)
    src = info.extra.get("source") if info is not None else None
    return Path(src["path"]).resolve() if isinstance(src, dict) and isinstance(src.get("path"), str) else None


def list_models(folders: Iterable[str | Path] = (), cache_dir: str | Path | None = None) -> list[LocalModel]:
    """Every Steerling model found (see the module docstring), each directory once, with the
    pre-quantized copies of each attached to it.

    Args:
        folders: more places to look: model directories or folders of them.
        cache_dir: the Hugging Face cache (default ``$HF_HUB_CACHE``).

    Raises:
        ConfigError: an unreadable registry file.
    """
    found: list[tuple[str, Path, str]] = []
    default = default_model_dir()
    if (default / "config.json").is_file():
        found.append((DEFAULT_MODEL_NAME, default, "default"))
    found += [(name, Path(e["path"]), "pulled") for name, e in sorted(read_registry().items())]
    found += [(name, p, "hf-cache") for name, p in _hf_cache_dirs(cache_dir)]
    for folder in [data_dir() / "models", *map(Path, folders)]:
        found += [(p.name, p, "folder") for p in _folder_dirs(Path(folder).expanduser())]
    models: dict[Path, LocalModel] = {}
    for name, path, where in found:
        key = path.resolve()
        if key not in models and (m := _describe(name, path, where)) is not None:
            models[key] = m
    # pre-quantized copies: among those found, and beside each model's directory
    for key in list(models):
        for sibling in _folder_dirs(key.parent):
            if sibling.resolve() not in models and (sibling / "quantize_config.json").is_file():
                if (m := _describe(sibling.name, sibling, "folder")) is not None:
                    models[sibling.resolve()] = m
    copies: dict[Path, list[tuple[str, Path]]] = {}
    for m in models.values():
        src = _source_of(m)
        if src is not None and src in models:
            copies.setdefault(src, []).append((m.quant, m.path))
    return [replace(m, copies=tuple(sorted(copies.get(k, [])))) for k, m in models.items()]
