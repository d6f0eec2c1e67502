"""Reading a Steerling checkpoint directory: find the weight files, check every tensor, load them.

A checkpoint holds ``config.json`` and either ``model.safetensors`` or shards plus
``model.safetensors.index.json`` (``{"weight_map": {tensor: shard}}``). Only those
files are read: Python files in the directory are never imported and nothing is
unpickled. Every tensor's name, shape and dtype is checked against config.json from
the safetensors headers before any weight is read, and weights are then streamed
tensor by tensor straight to their device and dtype (the model is built on the meta
device, so no second full copy exists). Each tensor is read from its byte range in the
file rather than through a memory map: pages of a mapped file count in the process's
resident memory until it is closed, which for a 5 GB shard would be 5 GB more peak RAM.

A *pre-quantized* checkpoint (``steerling-lite quantize``) also holds
``quantize_config.json``; its quantized layers' tensors are checked against the layout of
its settings (:mod:`quant.prequant`), and each tensor against the CRC-32 in its file's
metadata when it is read.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from quant.config import FLOAT_DTYPES
from quant.jsonio import loads_limited, read_json
from quant.linear import replace_linears
from quant.offload import read_byte_range
from quant.prequant import META_CRC32, META_SETTINGS, QUANTIZE_CONFIG, PrequantInfo, check_file_settings, read_quantize_config

from .config import SteerlingConfig, load_config
from .header_check import check_config_against_headers
from .safetensors_header import check_header, file_header
from ..errors import CheckpointError
from ..model.transformer import SteerlingModel

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# safetensors' dtype codes (the file format's names) -> torch dtypes
TORCH_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                "I8": torch.int8, "U8": torch.uint8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64,
                "BOOL": torch.bool}
DTYPE_CODES = {v: k for k, v in TORCH_DTYPES.items()}
FLOAT_CODES = frozenset(DTYPE_CODES[d] for d in FLOAT_DTYPES.values())  # what weights may be stored in
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
    offsets: tuple[int, int] | None = None  # [begin, end) bytes of the data in the file
    crc32: int | None = None  # CRC-32 of the data, when the file's metadata records one

    @property
    def numel(self) -> int:
        """Elements (for a pre-quantized layer: of its stored, packed tensor)."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        dtype = TORCH_DTYPES.get(self.dtype)
        return self.numel * (dtype.itemsize if dtype is not None else 2)


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint directory whose config and tensor headers have been read and checked.

    Attributes:
        path: the directory.
        config: parsed config.json.
        files: weight files in load order.
        tensors: model parameter name -> header info (the name in the file may lack the
            ``transformer.`` prefix for a non-interpretable checkpoint). In a pre-quantized
            checkpoint a quantized layer's names are those of its quantized tensors
            (``<layer>.weight``, ``<layer>.absmax``, ...).
        prequant: what ``quantize_config.json`` says, for a pre-quantized checkpoint.
    """

    path: Path
    config: SteerlingConfig
    files: tuple[Path, ...]
    tensors: dict[str, TensorInfo]
    prequant: PrequantInfo | None = None

    @property
    def nbytes(self) -> int:
        """Bytes of all tensors on disk."""
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def n_params(self) -> int:
        """Parameters of the model, counted from the headers (of a pre-quantized checkpoint:
        its stored elements, packed; :func:`expected_shapes` gives the model's own shapes)."""
        return sum(t.numel for t in self.tensors.values())


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint: the shards named by the index, else ``model.safetensors``.

    Raises:
        CheckpointError: no weights, an unreadable index, or an index naming a missing shard.
    """
    index = model_dir / INDEX_FILE
    if index.is_file():
        try:
            data = read_json(index)
            weight_map = data["weight_map"] if isinstance(data, dict) else None
            if not isinstance(weight_map, dict) or not weight_map:
                raise TypeError("weight_map must be a non-empty object")
            bad = next((k for k, v in weight_map.items() if not isinstance(v, str) or not v), None)
            if bad is not None:
                raise TypeError(f"shard of {bad!r} is {weight_map[bad]!r}, not a file name")
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index}: not a valid safetensors index ({exc}); expected {{\"weight_map\": {{tensor: shard}}}}") from None
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
    """Name -> :class:`TensorInfo` from the files' headers (each file's header bytes only).

    Raises:
        CheckpointError: a file is not valid safetensors (truncated, corrupt), or two files
            hold the same tensor.
    """
    out: dict[str, TensorInfo] = {}
    for path in files:
        start, header, meta = file_header(path)
        try:
            check_header(header, path.stat().st_size - start)
        except (OSError, ValueError) as exc:
            raise CheckpointError(
                f"{path}: not a valid safetensors file ({exc}); it may be truncated or corrupt: copy or download it again"
            ) from None
        crcs: dict = {}
        if META_CRC32 in meta:
            try:
                crcs = loads_limited(meta[META_CRC32], META_CRC32)
                if not isinstance(crcs, dict) or not all(type(v) is int for v in crcs.values()):
                    raise ValueError("expected {tensor: CRC-32}")
            except ValueError as exc:
                raise CheckpointError(f"{path}: unreadable {META_CRC32} metadata ({exc}); the file may be corrupt") from exc
        for name, h in header.items():
            if name in out:
                raise CheckpointError(f"{path}: tensor {name} is also in {out[name].file.name}")
            begin, end = h["data_offsets"]
            crc = crcs.get(name)
            out[name] = TensorInfo(name, tuple(h["shape"]), h["dtype"], path, (start + begin, start + end),
                                   int(crc) if crc is not None else None)
    return out


def expected_shapes(cfg: SteerlingConfig) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape the model built from ``cfg`` needs (the tied LM head once, as ``tok_emb``)."""
    with torch.device("meta"):
        model = SteerlingModel(cfg)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def meta_model(cfg: SteerlingConfig, prequant: PrequantInfo | None = None) -> SteerlingModel:
    """The model on the meta device; with ``prequant``, its quantized layers replaced as recorded.

    Raises:
        CheckpointError: ``prequant`` names a layer that is not a quantizable linear layer.
    """
    with torch.device("meta"):
        model = SteerlingModel(cfg)
    if prequant is not None:
        if cfg.weight_sharing and "transformer.lm_head" in prequant.modules:
            raise CheckpointError(f"{QUANTIZE_CONFIG}: lists transformer.lm_head, which is tied to the embedding "
                                  "and cannot be quantized")
        try:
            replace_linears(model, prequant.modules, prequant.config)
        except (ValueError, AttributeError) as exc:
            raise CheckpointError(f"{QUANTIZE_CONFIG}: {exc}: not a layer of the model config.json describes") from exc
    return model


def expected_tensors(cfg: SteerlingConfig, prequant: PrequantInfo | None = None) -> dict[str, tuple[tuple[int, ...], str | None]]:
    """Parameter name -> ``(shape, dtype code)``; the dtype is None for a float tensor (any
    float dtype is accepted) and fixed for a pre-quantized layer's tensors."""
    model = meta_model(cfg, prequant)
    fixed: set[str] = set()
    if prequant is not None:
        for layer in prequant.modules:
            fixed.update(f"{layer}.{k}" for k in prequant.config.layout(1, 1))
    return {name: (tuple(p.shape), DTYPE_CODES[p.dtype] if name in fixed else None)
            for name, p in model.named_parameters()}


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


def open_checkpoint(model_dir: str | Path, allow_dtypes: frozenset[str] = FLOAT_CODES) -> Checkpoint:
    """Read config.json and the tensor headers of ``model_dir`` and check them against each other:
    first the config fields against the headers alone (:mod:`.header_check`, before any model
    is built), then every tensor's name, shape and dtype against the model config.json describes.

    Raises:
        ConfigError: config.json is missing or invalid.
        CheckpointError: missing weight files or shards, corrupt files, missing /
            unexpected / misshaped tensors, or a tensor of a non-float dtype.
    """
    model_dir = Path(model_dir)
    cfg = load_config(model_dir)
    files = weight_files(model_dir)
    headers = read_headers(files)
    check_config_against_headers(cfg, headers, str(model_dir / "config.json"), FLOAT_CODES)  # before any model is built
    try:
        prequant = read_quantize_config(model_dir)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    for path in files:
        meta = file_header(path)[2]
        if prequant is None and META_SETTINGS in meta:
            raise CheckpointError(f"{path}: holds pre-quantized tensors but {QUANTIZE_CONFIG} is missing from {model_dir}")
        if prequant is not None:
            try:
                check_file_settings(prequant, meta, str(path))
            except ValueError as exc:
                raise CheckpointError(str(exc)) from None
            no_crc = next((i.name for i in headers.values() if i.file == path and i.crc32 is None), None)
            if no_crc is not None:  # files we write always carry CRC-32s: their absence is damage
                raise CheckpointError(f"{path}: tensor {no_crc} has no CRC-32 in the file's {META_CRC32} metadata; "
                                      "a pre-quantized file always records them: it was altered, quantize again")
    want = expected_tensors(cfg, prequant)
    tensors: dict[str, TensorInfo] = {}
    missing: list[str] = []
    for param, (shape, fixed_dtype) in want.items():
        info = headers.get(file_name(cfg, param))
        if info is None:
            missing.append(file_name(cfg, param))
            continue
        if info.shape != shape:
            what = f"the {prequant.config.method} layout" if fixed_dtype is not None and prequant else "config.json"
            raise CheckpointError(
                f"{info.file}: tensor {info.name} has shape {list(info.shape)}, expected {list(shape)} "
                f"from {what}{_shape_hint(cfg, param)}"
            )
        if fixed_dtype is not None and info.dtype != fixed_dtype:
            raise CheckpointError(
                f"{info.file}: tensor {info.name} has dtype {info.dtype}; expected {fixed_dtype} "
                f"(a pre-quantized {prequant.config.method} layer)"  # type: ignore[union-attr]
            )
        if fixed_dtype is None and info.dtype not in allow_dtypes:
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
    return Checkpoint(model_dir, cfg, tuple(files), tensors, prequant)


def assign_parameter(model: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace parameter ``name`` of ``model`` (possibly on the meta device) by ``value``, frozen."""
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    module._parameters[attr] = torch.nn.Parameter(value, requires_grad=False)


def read_tensor(f, info: TensorInfo) -> torch.Tensor:
    """Read one tensor's bytes from open file ``f`` (its byte range, no memory map) into a new CPU tensor.

    Raises:
        CheckpointError: short read (the file was truncated), an unknown dtype, or a CRC-32
            mismatch (the data is damaged).
    """
    if info.offsets is None or info.dtype not in TORCH_DTYPES:
        raise CheckpointError(f"{info.file}: tensor {info.name}: cannot read dtype {info.dtype}")
    begin, end = info.offsets
    try:
        buf = read_byte_range(f, begin, end)
    except EOFError as exc:
        raise CheckpointError(f"{info.file}: cannot read tensor data of {info.name} (file ends at byte "
                              f"{exc.args[0]}, expected {end}); the file may be truncated or corrupt") from None
    if info.crc32 is not None and zlib.crc32(buf.numpy()) != info.crc32:
        raise CheckpointError(f"{info.file}: tensor {info.name} is damaged (CRC-32 does not match the file's "
                              "metadata): copy or write the file again")
    return buf.view(TORCH_DTYPES[info.dtype]).reshape(info.shape)


def read_order(ckpt: Checkpoint) -> list[str]:
    """Parameter names in the order :func:`iter_tensors` yields them: file by file, by offset in each file."""
    rank = {path: i for i, path in enumerate(ckpt.files)}
    return sorted(ckpt.tensors, key=lambda p: (rank.get(ckpt.tensors[p].file, len(rank)), ckpt.tensors[p].offsets or (0, 0)))


def iter_tensors(ckpt: Checkpoint, progress: Progress | None = None):
    """Yield ``(param_name, tensor)`` from the files one at a time, in file order, on the CPU.

    Each tensor is read from its byte range (see the module docstring: no memory map, so
    only the tensors the caller keeps stay in memory).

    Raises:
        CheckpointError: a tensor's bytes cannot be read (file truncated since its header was
            read) or do not match their CRC-32.
    """
    total = ckpt.nbytes
    done = 0
    by_file: dict[Path, list[str]] = {}
    for param in read_order(ckpt):
        by_file.setdefault(ckpt.tensors[param].file, []).append(param)
    for path in ckpt.files:
        items = [(param, ckpt.tensors[param]) for param in by_file.get(path, [])]
        try:
            with open(path, "rb", buffering=0) as f:
                for param, info in items:
                    tensor = read_tensor(f, info)
                    yield param, tensor
                    del tensor  # do not hold it while the next one is read
                    done += info.nbytes
                    if progress is not None:
                        progress(done, total, info.name)
        except OSError as exc:
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
    if ckpt.prequant is not None:
        raise CheckpointError(f"{ckpt.path}: pre-quantized ({ckpt.prequant.config.method}); load it with "
                              f"Steerling.load(..., quant='{ckpt.prequant.config.method}') or --quant {ckpt.prequant.config.method}")
    with torch.device("meta"):
        model = SteerlingModel(ckpt.config)
    for param, tensor in iter_tensors(ckpt, progress):
        assign_parameter(model, param, tensor.to(device=device, dtype=dtype))
    model.transformer.tie_weights()
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:  # pragma: no cover - open_checkpoint guarantees every tensor
        raise CheckpointError(f"{ckpt.path}: tensors never loaded: {', '.join(leftover[:5])}")
    return model.eval()
