"""Reading a Steerling checkpoint directory: find the weight files, check every tensor, load them.

A checkpoint holds ``config.json`` and either ``model.safetensors`` or shards plus
``model.safetensors.index.json`` (``{"weight_map": {tensor: shard}}``). Only those
files are read: Python files in the directory are never imported and nothing is
unpickled. Every tensor's name, shape and dtype is checked against config.json from
the safetensors headers before any weight is read, and weights are then streamed
tensor by tensor straight to their device and dtype (the model is built on the meta
device, so no second full copy exists).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .config import SteerlingConfig, load_config
from .errors import CheckpointError
from .model import SteerlingModel

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
FLOAT_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "I8": 1, "U8": 1, "I32": 4, "I64": 8, "F64": 8}
TIED_LM_HEAD = "transformer.lm_head.weight"

# progress(bytes_done, bytes_total, tensor_name)
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as its safetensors header describes it (nothing read yet)."""

    name: str  # name in the file
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype code: BF16, F32, ...
    file: Path

    @property
    def nbytes(self) -> int:
        n = DTYPE_BYTES.get(self.dtype, 2)
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint directory whose config and tensor headers have been read and checked.

    Attributes:
        path: the directory.
        config: parsed config.json.
        files: weight files in load order.
        tensors: model parameter name -> header info (the name in the file may lack the
            ``transformer.`` prefix for a non-interpretable checkpoint).
    """

    path: Path
    config: SteerlingConfig
    files: tuple[Path, ...]
    tensors: dict[str, TensorInfo]

    @property
    def nbytes(self) -> int:
        """Bytes of all tensors on disk."""
        return sum(t.nbytes for t in self.tensors.values())


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint: the shards named by the index, else ``model.safetensors``.

    Raises:
        CheckpointError: no weights, an unreadable index, or an index naming a missing shard.
    """
    index = model_dir / INDEX_FILE
    if index.is_file():
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
            weight_map = data["weight_map"]
            if not isinstance(weight_map, dict) or not weight_map:
                raise TypeError("weight_map must be a non-empty object")
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index}: not a valid safetensors index ({exc}); expected {{\"weight_map\": {{tensor: shard}}}}") from exc
        shards: list[Path] = []
        for shard in dict.fromkeys(weight_map.values()):
            p = model_dir / str(shard)
            if Path(str(shard)).is_absolute() or ".." in Path(str(shard)).parts:
                raise CheckpointError(f"{index}: shard name {shard!r} points outside the checkpoint directory")
            if not p.is_file():
                raise CheckpointError(f"{index}: names shard {shard!r}, which is missing from {model_dir}")
            shards.append(p)
        return shards
    single = model_dir / SINGLE_FILE
    if single.is_file():
        return [single]
    others = sorted(p.name for p in model_dir.glob("*.safetensors"))
    hint = f" (found {', '.join(others)} but no {INDEX_FILE} naming them)" if others else ""
    raise CheckpointError(f"{model_dir}: no weights: expected {SINGLE_FILE} or {INDEX_FILE} with its shards{hint}")


def read_headers(files: list[Path]) -> dict[str, TensorInfo]:
    """Name -> :class:`TensorInfo` from the files' headers.

    Raises:
        CheckpointError: a file is not valid safetensors (truncated, corrupt), or two files
            hold the same tensor.
    """
    out: dict[str, TensorInfo] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    sl = f.get_slice(name)
                    if name in out:
                        raise CheckpointError(f"{path}: tensor {name} is also in {out[name].file.name}")
                    out[name] = TensorInfo(name, tuple(sl.get_shape()), sl.get_dtype(), path)
        except SafetensorError as exc:
            raise CheckpointError(
                f"{path}: not a valid safetensors file ({exc}); it may be truncated or corrupt: copy or download it again"
            ) from exc
    return out


def expected_shapes(cfg: SteerlingConfig) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape the model built from ``cfg`` needs (the tied LM head once, as ``tok_emb``)."""
    with torch.device("meta"):
        model = SteerlingModel(cfg)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def file_name(cfg: SteerlingConfig, param: str) -> str:
    """Name of parameter ``param`` in the file: a non-interpretable checkpoint is the bare
    transformer (the reference's ``CausalDiffusionLM``), without the ``transformer.`` prefix."""
    if cfg.interpretable:
        return param
    return param.removeprefix("transformer.")


def _shape_hint(cfg: SteerlingConfig, name: str) -> str:
    c = cfg.concept
    if c is not None and name.startswith("known_head."):
        return f" (known concept rows: n_concepts {c.n_concepts} padded to a multiple of {c.pad_multiple} = {c.n_known_padded})"
    if c is not None and name.startswith("unknown_head."):
        return f" (discovered concept rows: n_unknown_concepts {c.n_unknown_concepts} padded to {c.n_unknown_padded}, rank {c.factorize_rank})"
    if name.endswith("tok_emb.weight") or name.endswith("lm_head.weight"):
        return f" (vocab_size {cfg.vocab_size} x n_embd {cfg.n_embd})"
    return ""


def open_checkpoint(model_dir: str | Path, allow_dtypes: frozenset[str] = frozenset(FLOAT_DTYPES)) -> Checkpoint:
    """Read config.json and the tensor headers of ``model_dir`` and check them against each other.

    Raises:
        ConfigError: config.json is missing or invalid.
        CheckpointError: missing weight files or shards, corrupt files, missing /
            unexpected / misshaped tensors, or a tensor of a non-float dtype.
    """
    model_dir = Path(model_dir)
    cfg = load_config(model_dir)
    files = weight_files(model_dir)
    headers = read_headers(files)
    want = expected_shapes(cfg)
    tensors: dict[str, TensorInfo] = {}
    missing: list[str] = []
    for param, shape in want.items():
        info = headers.get(file_name(cfg, param))
        if info is None:
            missing.append(file_name(cfg, param))
            continue
        if info.shape != shape:
            raise CheckpointError(
                f"{info.file}: tensor {info.name} has shape {list(info.shape)}, expected {list(shape)} "
                f"from config.json{_shape_hint(cfg, param)}"
            )
        if info.dtype not in allow_dtypes:
            raise CheckpointError(
                f"{info.file}: tensor {info.name} has dtype {info.dtype}; expected one of {', '.join(sorted(allow_dtypes))}"
            )
        tensors[param] = info
    if missing:
        more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        raise CheckpointError(f"{model_dir}: missing tensor(s) {', '.join(missing[:8])}{more} (config.json needs them)")
    known = {file_name(cfg, p) for p in want}
    if cfg.weight_sharing:
        known.add(file_name(cfg, TIED_LM_HEAD))  # tied: a copy in the file is allowed and ignored
    unexpected = [n for n in headers if n not in known]
    if unexpected:
        more = f" and {len(unexpected) - 8} more" if len(unexpected) > 8 else ""
        where = headers[unexpected[0]].file
        raise CheckpointError(
            f"{where}: unexpected tensor(s) {', '.join(unexpected[:8])}{more}: not part of the model config.json describes"
        )
    return Checkpoint(model_dir, cfg, tuple(files), tensors)


def assign_parameter(model: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace parameter ``name`` of ``model`` (possibly on the meta device) by ``value``, frozen."""
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    module._parameters[attr] = torch.nn.Parameter(value, requires_grad=False)


def iter_tensors(ckpt: Checkpoint, progress: Progress | None = None):
    """Yield ``(param_name, tensor)`` from the files one at a time, in file order, on the CPU.

    Raises:
        CheckpointError: a tensor's bytes cannot be read (file truncated since its header was read).
    """
    total = ckpt.nbytes
    done = 0
    by_file: dict[Path, list[tuple[str, TensorInfo]]] = {}
    for param, info in ckpt.tensors.items():
        by_file.setdefault(info.file, []).append((param, info))
    for path in ckpt.files:
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for param, info in by_file.get(path, []):
                    tensor = f.get_tensor(info.name)
                    yield param, tensor
                    done += info.nbytes
                    if progress is not None:
                        progress(done, total, info.name)
        except SafetensorError as exc:
            raise CheckpointError(f"{path}: cannot read tensor data ({exc}); the file may be truncated or corrupt") from exc


def load_model(
    model_dir: str | Path | Checkpoint,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: Progress | None = None,
) -> SteerlingModel:
    """Build a :class:`SteerlingModel` and load its weights, each tensor straight to ``device`` / ``dtype``.

    Args:
        model_dir: checkpoint directory (or an already opened :class:`Checkpoint`).
        device: target device.
        dtype: floating dtype of every weight.
        progress: called after each tensor with bytes done / total (file bytes).

    Returns:
        the model in eval mode, parameters frozen.

    Raises:
        ConfigError, CheckpointError: see :func:`open_checkpoint`.
    """
    ckpt = model_dir if isinstance(model_dir, Checkpoint) else open_checkpoint(model_dir)
    with torch.device("meta"):
        model = SteerlingModel(ckpt.config)
    for param, tensor in iter_tensors(ckpt, progress):
        assign_parameter(model, param, tensor.to(device=device, dtype=dtype))
    model.transformer.tie_weights()
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:  # pragma: no cover - open_checkpoint guarantees every tensor
        raise CheckpointError(f"{ckpt.path}: tensors never loaded: {', '.join(leftover[:5])}")
    return model.eval()
