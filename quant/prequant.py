"""Pre-quantized checkpoints: the settings file, the per-file metadata and the compatibility check.

A pre-quantized checkpoint directory holds, beside the model's own files:

- ``quantize_config.json`` (the name AutoGPTQ uses): format and version, the
  :class:`~quant.config.QuantConfig`, the names of the quantized linear layers, and the
  versions of bitsandbytes and torch that wrote it;
- in every safetensors file's ``__metadata__``: the same settings (``quant.settings``) and
  a CRC-32 of each tensor's bytes (``quant.crc32``), so that mixed or damaged files are
  refused instead of giving wrong numbers.

The quantized layers' tensors are stored under the names of :meth:`QuantConfig.layout`
(``<layer>.weight``, ``<layer>.absmax``, ...). A checkpoint is refused when its format
version is not ours or when it was written by a bitsandbytes of another minor version
(the packed layouts are bitsandbytes' own); the torch version is recorded for the record
only (the files hold plain tensors).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import QuantConfig
from .jsonio import loads_limited, read_json

QUANTIZE_CONFIG = "quantize_config.json"
FORMAT = "quant.plain-tensors"
FORMAT_VERSION = 1
META_SETTINGS = "quant.settings"
META_CRC32 = "quant.crc32"


def library_versions() -> dict[str, str]:
    """``{"bitsandbytes": ..., "torch": ...}`` installed now."""
    from .linear import _bnb

    return {"bitsandbytes": str(_bnb().__version__), "torch": str(torch.__version__).split("+")[0]}


def _minor(version: str) -> tuple[str, ...]:
    return tuple(version.split("+")[0].split(".")[:2])


@dataclass(frozen=True)
class PrequantInfo:
    """What a pre-quantized checkpoint says about itself.

    Attributes:
        config: the quantization settings.
        modules: names of the quantized linear layers.
        versions: library versions that wrote it (``bitsandbytes``, ``torch``).
        extra: other recorded facts (e.g. the source checkpoint), kept as is.
    """

    config: QuantConfig
    modules: tuple[str, ...]
    versions: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict)

    def settings(self) -> dict[str, Any]:
        """The part every file must agree on: format, settings, layers, versions."""
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "quantization": self.config.to_dict(),
                "modules": list(self.modules), "versions": dict(self.versions)}

    def to_json(self) -> str:
        return json.dumps({**self.settings(), **self.extra}, indent=2)


def parse_info(data: Any, source: str) -> PrequantInfo:
    """Parse the JSON of :meth:`PrequantInfo.to_json`.

    Raises:
        ValueError: not an object, another format or format version, invalid settings.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object")
    if data.get("format") != FORMAT:
        raise ValueError(f"{source}: format {data.get('format')!r} is not {FORMAT!r}")
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{source}: format version {data.get('format_version')!r}; this version reads {FORMAT_VERSION}: "
                         "quantize the original checkpoint again")
    modules = data.get("modules")
    versions = data.get("versions")
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules) or not modules:
        raise ValueError(f"{source}: 'modules' must be a non-empty list of layer names")
    if not isinstance(versions, dict) or "bitsandbytes" not in versions:
        raise ValueError(f"{source}: 'versions' must record the bitsandbytes version that wrote the file")
    if not isinstance(data.get("quantization"), dict):
        raise ValueError(f"{source}: 'quantization' must be an object")
    config = QuantConfig.from_dict(data["quantization"], source)
    if not config.enabled:
        raise ValueError(f"{source}: quantization method 'none' in a pre-quantized checkpoint")
    extra = {k: v for k, v in data.items() if k not in ("format", "format_version", "quantization", "modules", "versions")}
    return PrequantInfo(config, tuple(modules), {str(k): str(v) for k, v in versions.items()}, extra)


def read_quantize_config(model_dir: str | Path) -> PrequantInfo | None:
    """The directory's ``quantize_config.json``, or None when there is none.

    Raises:
        ValueError: the file is unreadable or invalid (the message names it).
    """
    path = Path(model_dir) / QUANTIZE_CONFIG
    if not path.is_file():
        return None
    return parse_info(read_json(path, max_bytes=2**20), str(path))


def check_file_settings(info: PrequantInfo, metadata: dict[str, str] | None, source: str) -> None:
    """Check that a safetensors file's metadata carries the same settings as ``quantize_config.json``.

    Raises:
        ValueError: settings missing or different (files of two quantizations mixed).
    """
    raw = (metadata or {}).get(META_SETTINGS)
    if raw is None:
        raise ValueError(f"{source}: no quantization settings in the file's metadata; it is not part of this "
                         f"pre-quantized checkpoint ({info.config.method})")
    try:
        theirs = loads_limited(raw, source)
    except ValueError:
        raise ValueError(f"{source}: unreadable quantization settings in the file's metadata") from None
    if theirs != json.loads(json.dumps(info.settings())):
        what = theirs.get("quantization", {}).get("method") if isinstance(theirs, dict) else None
        raise ValueError(f"{source}: written with other quantization settings ({what}) than {QUANTIZE_CONFIG} "
                         f"({info.config.method}): the checkpoint mixes files of two quantizations")


def check_versions(info: PrequantInfo, installed: dict[str, str] | None = None, source: str = "checkpoint") -> None:
    """Refuse a checkpoint written by a bitsandbytes of another minor version than the installed one.

    Raises:
        ValueError: naming both versions and the fix.
    """
    installed = installed or library_versions()
    theirs, ours = info.versions.get("bitsandbytes", "?"), installed["bitsandbytes"]
    if _minor(theirs) != _minor(ours):
        raise ValueError(
            f"{source}: pre-quantized with bitsandbytes {theirs} (torch {info.versions.get('torch', '?')}), but "
            f"bitsandbytes {ours} is installed; its packed {info.config.method} layout may differ: install "
            f"bitsandbytes {'.'.join(_minor(theirs))}.x, or quantize the original checkpoint again"
        )


def tensor_crc32(t: torch.Tensor) -> int:
    """CRC-32 of a CPU tensor's bytes (little-endian, as safetensors stores them)."""
    data = t.detach().contiguous().reshape(-1).view(torch.uint8)
    return zlib.crc32(data.numpy()) if data.numel() else 0


def file_metadata(info: PrequantInfo, tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """safetensors ``__metadata__`` for a file of ``tensors``: format, settings and CRC-32s."""
    return {"format": "pt", META_SETTINGS: json.dumps(info.settings()),
            META_CRC32: json.dumps({name: tensor_crc32(t) for name, t in tensors.items()})}
