"""Getting models: ``pull`` from the Hugging Face Hub, the local model registry and name resolution.

``pull`` is ``huggingface_hub.snapshot_download`` (resumable, with its progress bars, its
cache, its token handling and ``HF_HUB_OFFLINE``) restricted to what a Steerling
checkpoint needs: ``config.json``, the safetensors files and their index, a
``quantize_config.json`` for pre-quantized copies, and the concept labels; never Python
files or anything in a subfolder. The published labels (``concept_labels.parquet``) live
in the separate repo ``guidelabs/steerling``; pulling a ``guidelabs/`` model fetches them
too and places them in the model directory, where every command looks for them.

Where the files go:

- by default, the Hugging Face cache (``$HF_HUB_CACHE``, shared with ``hf download`` and
  transformers): the model directory is the snapshot folder, and the labels file is linked
  into it (a relative symlink to its blob, or a copy where links are not allowed);
- with ``local_dir``, that directory (huggingface_hub's local-dir mode), labels included.

Every pull is recorded in the registry ``models.json`` of the data directory
(:func:`~steerling_lite.loading.default_model.data_dir`), so ``--model guidelabs/steerling-8b``
finds the local copy (:func:`resolve_model`); models downloaded into the Hugging Face cache by
other tools are found too. ``steerling-lite list`` is :mod:`steerling_lite.loading.local_models`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass

from quant.jsonio import read_json
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..atomic import write_text_atomic
from ..errors import ConfigError, SteerlingError
from .config import load_config
from .default_model import data_dir, ensure_default_model

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
LABELS_REPO = "guidelabs/steerling"
LABELS_FILE = "concept_labels.parquet"
LABEL_FILES = ("concept_labels.parquet", "concept_labels.csv", "concept_labels.json")
MODEL_PATTERNS = ["config.json", "*.safetensors", "model.safetensors.index.json", "quantize_config.json", *LABEL_FILES]
IGNORE_PATTERNS = ["*/*", "*.py"]  # no subfolders, never code
HUB_HOSTS = ("huggingface.co", "www.huggingface.co", "hf.co")
REGISTRY_FILE = "models.json"


class HubError(SteerlingError):
    """A pull that cannot be done: no network, an unknown repository or revision, not a Steerling model."""


@dataclass(frozen=True)
class RepoRef:
    """A model repository named on the command line.

    Attributes:
        repo_id: ``owner/name``.
        revision: branch, tag or commit (None: the default branch).
        endpoint: the Hub's base URL when a URL named another host (a mirror), else None.
    """

    repo_id: str
    revision: str | None = None
    endpoint: str | None = None


def parse_repo_ref(text: str) -> RepoRef:
    """``owner/name`` or a Hub URL (``https://huggingface.co/owner/name[/tree/REV]``, or a
    mirror's URL, whose scheme and host become the endpoint) as a :class:`RepoRef`.

    Raises:
        HubError: neither a repo id nor a model URL.
    """
    text = text.strip()
    if REPO_ID.fullmatch(text):
        return RepoRef(text)
    url = urlparse(text if "://" in text else f"https://{text}")
    parts = [p for p in url.path.split("/") if p]
    if url.scheme in ("http", "https") and url.netloc and len(parts) >= 2 and parts[0] not in ("datasets", "spaces"):
        repo_id = f"{parts[0]}/{parts[1]}"
        if REPO_ID.fullmatch(repo_id):
            revision = parts[3] if len(parts) >= 4 and parts[2] in ("tree", "blob", "resolve") else None
            endpoint = None if url.netloc.lower() in HUB_HOSTS else f"{url.scheme}://{url.netloc}"
            return RepoRef(repo_id, revision, endpoint)
    raise HubError(f"{text!r}: expected a model repo id like guidelabs/steerling-8b or its URL "
                   "(https://huggingface.co/guidelabs/steerling-8b)")


@dataclass(frozen=True)
class PulledModel:
    """Where a pull put a model.

    Attributes:
        name: the repo id (what ``--model`` accepts from now on).
        path: the model directory.
        revision: the revision asked for (None: the default branch).
        labels: the concept labels file in ``path``, or None when there is none.
        files: file names in ``path``; size_bytes: their total size.
    """

    name: str
    path: Path
    revision: str | None
    labels: Path | None
    files: tuple[str, ...]
    size_bytes: int


def default_labels_repo(repo_id: str) -> str | None:
    """``guidelabs/steerling`` for Guide Labs' models (their labels are published there), else None."""
    return LABELS_REPO if repo_id.split("/")[0].lower() == "guidelabs" else None


def pull(
    repo_or_url: str, revision: str | None = None, local_dir: str | Path | None = None, *,
    labels_repo: str | None = "auto", token: str | None = None, cache_dir: str | Path | None = None,
) -> PulledModel:
    """Download a Steerling checkpoint (see the module docstring for what and where) and record it.

    Args:
        repo_or_url: ``owner/name`` or its URL.
        revision: branch, tag or commit; overrides one given in the URL.
        local_dir: download into this directory instead of the Hugging Face cache.
        labels_repo: where the concept labels come from when the model repo has none
            (``auto``: :func:`default_labels_repo`; None: do not fetch labels).
        token: a Hub token (default: huggingface_hub's, from ``HF_TOKEN`` or ``hf auth login``).
        cache_dir: the Hugging Face cache (default ``$HF_HUB_CACHE``).

    Raises:
        HubError: no network (or ``HF_HUB_OFFLINE``) and no cached copy, an unknown or gated
            repository or revision, or files that are not a Steerling checkpoint.
    """
    from huggingface_hub import hf_hub_download, snapshot_download

    ref = parse_repo_ref(repo_or_url)
    rev = revision or ref.revision
    where = dict(cache_dir=cache_dir, local_dir=local_dir, token=token, endpoint=ref.endpoint)
    path = Path(_hub_call(ref, rev, lambda: snapshot_download(
        ref.repo_id, revision=rev, allow_patterns=MODEL_PATTERNS, ignore_patterns=IGNORE_PATTERNS, **where)))
    try:
        load_config(path)
    except ConfigError as exc:
        raise HubError(f"{ref.repo_id} is not a Steerling checkpoint: {exc}") from None
    missing = missing_weights(path)
    if missing:
        raise HubError(f"{ref.repo_id}: the copy in {path} is incomplete (missing {missing}); "
                       "run the pull again with a network")
    labels = next((path / n for n in LABEL_FILES if (path / n).is_file()), None)
    source = default_labels_repo(ref.repo_id) if labels_repo == "auto" else labels_repo
    if labels is None and source:
        lref = RepoRef(source, None, ref.endpoint)
        got = Path(_hub_call(lref, None, lambda: hf_hub_download(source, LABELS_FILE, **where)))
        labels = path / LABELS_FILE
        if got.resolve() != labels.resolve():
            _place(got, labels)
    record_pull(ref.repo_id, path, rev)
    files = tuple(sorted(f.name for f in path.iterdir() if f.is_file()))
    size = sum((path / f).stat().st_size for f in files)
    return PulledModel(ref.repo_id, path, rev, labels, files, size)


def missing_weights(path: Path) -> str | None:
    """The first weight file a checkpoint directory lacks (the index's shards, else
    ``model.safetensors``), or None when all are there."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(read_json(index)["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            return index.name + " (unreadable)"
        return next((s for s in shards if not (path / s).is_file()), None)
    return None if (path / "model.safetensors").is_file() else "model.safetensors"


def _hub_call(ref: RepoRef, revision: str | None, call):
    """Run a huggingface_hub download, turning its errors into one-line :class:`HubError` s."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    hub = ref.endpoint or constants.ENDPOINT
    try:
        return call()
    except GatedRepoError:
        raise HubError(f"{ref.repo_id} is gated: accept its terms at {hub}/{ref.repo_id} and log in "
                       "(`hf auth login` or $HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise HubError(f"{ref.repo_id}: no such repository on {hub} (or it is private: log in with "
                       "`hf auth login` or set $HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise HubError(f"{ref.repo_id}: no revision {revision!r}") from None
    except (LocalEntryNotFoundError, OSError) as exc:
        # LocalEntryNotFoundError: offline and not cached; OSError covers requests' connection
        # errors (no errno) as well as local ones (a full disk: errno set) and other HTTP errors.
        if isinstance(exc, HfHubHTTPError) and not isinstance(exc, LocalEntryNotFoundError):
            raise HubError(f"{ref.repo_id}: {str(exc).splitlines()[0]}") from None
        if getattr(exc, "errno", None) is not None:
            raise HubError(f"cannot pull {ref.repo_id}: {exc}") from None
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else f"{hub} is not reachable"
        raise HubError(f"cannot pull {ref.repo_id}: {why} and no complete copy is cached; download the "
                       "checkpoint elsewhere and pass --model DIR") from None


def _place(src: Path, dest: Path) -> None:
    """Put ``src`` at ``dest``: a relative symlink to the real file, else an atomic copy."""
    target = src.resolve()
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(os.path.relpath(target, dest.parent), tmp)
    except OSError:  # no symlinks here (Windows without developer mode)
        shutil.copyfile(target, tmp)
    os.replace(tmp, dest)


# ---------------------------------------------------------------------------------------
# the registry and name resolution


def registry_path() -> Path:
    """``models.json`` in the data directory: ``{"models": {repo_id: {path, revision, pulled_at}}}``."""
    return data_dir() / REGISTRY_FILE


def read_registry() -> dict[str, dict[str, Any]]:
    """Pulled models by name (empty when nothing was pulled).

    Raises:
        ConfigError: the registry file is unreadable or not a registry.
    """
    path = registry_path()
    if not path.is_file():
        return {}
    try:
        data = read_json(path)
    except ValueError as exc:
        raise ConfigError(f"{path}: unreadable model registry ({exc}); delete it and pull again") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, dict) or not all(isinstance(v, dict) and "path" in v for v in models.values()):
        raise ConfigError(f"{path}: not a model registry (expected {{\"models\": {{name: {{\"path\": ...}}}}}}); "
                          "delete it and pull again")
    return models


def record_pull(name: str, path: Path, revision: str | None) -> None:
    """Record (or update) a pulled model in the registry (written atomically)."""
    models = read_registry()
    models[name] = {"path": str(Path(path).resolve()), "revision": revision,
                    "pulled_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_text_atomic(registry_path(), json.dumps({"models": models}, indent=2) + "\n")


def find_local_model(name: str, cache_dir: str | Path | None = None) -> Path | None:
    """The local directory of model ``name`` (``owner/name``): its last pull recorded in the
    registry, else its snapshot of the default branch in the Hugging Face cache; None if neither."""
    entry = read_registry().get(name)
    if entry is not None and (Path(entry["path"]) / "config.json").is_file():
        return Path(entry["path"])
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(name, "config.json", cache_dir=cache_dir)
    return Path(hit).parent if isinstance(hit, str) else None


def resolve_model(text: str) -> Path:
    """What ``--model TEXT`` means: an existing path as it is; a repo id (``owner/name``) that
    was pulled, its local copy; anything else as a path (whose absence the loader reports).

    Raises:
        ConfigError: ``text`` is neither a directory nor the name of a model found locally.
    """
    path = Path(text).expanduser()
    if path.exists() or not REPO_ID.fullmatch(text):
        return path
    found = find_local_model(text)
    if found is None:
        raise ConfigError(f"{text}: no such model directory, and no model of that name has been pulled; "
                          f"run `steerling-lite pull {text}` or pass --model DIR")
    return found


def resolve_model_dir(model: str | Path | None = None) -> Path:
    """The model directory a ``--model`` argument names: a directory (``~`` expanded), the local
    copy of a pulled model (:func:`resolve_model`), or, when ``model`` is None or empty, the
    embedded default model's (:func:`~steerling_lite.loading.default_model.ensure_default_model`).

    Raises:
        ConfigError: a repo id that was never pulled (see :func:`resolve_model`).
    """
    if model:
        return resolve_model(str(model))
    return ensure_default_model()
