"""Quantization settings and the exact tensor layout each method stores for one linear layer.

Methods (all weight-only, through bitsandbytes):

- ``int8``: LLM.int8() (Dettmers et al. 2022): int8 weights with one fp32 absmax per output
  row (``SCB``); activations are quantized per row at run time and input columns holding an
  outlier above ``int8_threshold`` are multiplied in fp16 instead (0 disables that).
- ``nf4`` / ``fp4``: 4-bit blockwise quantization of QLoRA (Dettmers et al. 2023): two
  4-bit codes per byte, one absmax per ``blocksize`` weights; with ``double_quant`` the
  absmax values are themselves quantized to 8 bits in blocks of 256 (about 0.37 bit per
  weight saved, QLoRA §3).

:meth:`QuantConfig.layout` is the single source of truth for what a quantized linear
layer holds (names, shapes, dtypes): the modules in :mod:`quant.linear` are built from it,
pre-quantized files are checked against it and the memory planner counts its bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

QUANT_METHODS = ("none", "int8", "nf4", "fp4")
FOUR_BIT = ("nf4", "fp4")
NESTED_BLOCKSIZE = 256  # bitsandbytes quantize_4bit(compress_statistics=True): absmax in blocks of 256
NESTED_CODE_SIZE = 256  # the 8-bit dynamic map of the nested absmax
FOUR_BIT_CODE_SIZE = 16
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
# the float dtypes weights are kept in, by the short names users type (--dtype, --compute-dtype);
# torch's own names (bfloat16, ...) are accepted too. The one dtype table of the project.
FLOAT_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (torch's name, as written in JSON files)."""
    return str(dtype).removeprefix("torch.")


def short_dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bf16"`` (the :data:`FLOAT_DTYPES` name; torch's name for others)."""
    return next((k for k, v in FLOAT_DTYPES.items() if v == dtype), dtype_name(dtype))


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """``"bf16"`` or ``"bfloat16"`` (any :data:`FLOAT_DTYPES` name or torch's name of one) -> ``torch.bfloat16``;
    a ``torch.dtype`` is returned as is.

    Raises:
        ValueError: an unknown name, naming it and the accepted ones.
    """
    if isinstance(name, torch.dtype):
        return name
    for short, dtype in FLOAT_DTYPES.items():
        if name in (short, dtype_name(dtype)):
            return dtype
    names = [n for short, d in FLOAT_DTYPES.items() for n in (short, dtype_name(d))]
    raise ValueError(f"dtype {name!r}: expected one of {', '.join(names)}")


@dataclass(frozen=True)
class QuantConfig:
    """How linear layers are quantized.

    Attributes:
        method: ``none``, ``int8``, ``nf4`` or ``fp4``.
        int8_threshold: LLM.int8() outlier threshold on activation magnitudes (>= 0; 0 turns
            the fp16 outlier path off). bitsandbytes / transformers default: 6.0.
        double_quant: 4-bit only: quantize the absmax statistics too (QLoRA double quantization).
        blocksize: 4-bit only: weights per absmax (bitsandbytes accepts 32 ... 4096; default 64).
        compute_dtype: 4-bit only: dtype of the matmul (the dequantized weight and the input are
            cast to it). int8 always computes in fp16 (bitsandbytes' LLM.int8()).
    """

    method: str = "nf4"
    int8_threshold: float = 6.0
    double_quant: bool = True
    blocksize: int = 64
    compute_dtype: torch.dtype = field(default=torch.bfloat16)

    def __post_init__(self) -> None:
        if self.method not in QUANT_METHODS:
            raise ValueError(f"quantization method {self.method!r}: expected one of {', '.join(QUANT_METHODS)}")
        if not (self.int8_threshold >= 0.0 and math.isfinite(self.int8_threshold)):
            raise ValueError(f"int8_threshold must be a finite number >= 0, got {self.int8_threshold}")
        if self.blocksize not in BLOCKSIZES:
            raise ValueError(f"blocksize {self.blocksize}: bitsandbytes supports {', '.join(map(str, BLOCKSIZES))}")
        if self.compute_dtype not in FLOAT_DTYPES.values():
            raise ValueError(f"compute_dtype {self.compute_dtype}: expected bfloat16, float16 or float32")

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    @property
    def four_bit(self) -> bool:
        return self.method in FOUR_BIT

    def layout(self, out_features: int, in_features: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """The tensors a quantized ``nn.Linear(in_features, out_features)`` weight becomes.

        Returns:
            ``{name: (shape, dtype)}`` in a fixed order. int8: ``weight`` ``(out, in)`` int8 and
            ``SCB`` ``(out,)`` fp32 (row absmax, as bitsandbytes' ``Linear8bitLt`` state dict).
            4-bit: ``weight`` ``(ceil(out*in/2), 1)`` uint8 (two codes per byte), ``absmax``
            ``(n_blocks,)`` fp32, or uint8 with double quantization plus ``nested_absmax``
            ``(ceil(n_blocks/256),)`` fp32, ``nested_quant_map`` ``(256,)`` fp32 and ``offset``
            ``()`` fp32; ``quant_map`` ``(16,)`` fp32 (the 4-bit code book). The bias, if any,
            is not part of the layout (it stays a float parameter).

        Raises:
            ValueError: for method ``none``.
        """
        n = out_features * in_features
        if self.method == "int8":
            return {"weight": ((out_features, in_features), torch.int8), "SCB": ((out_features,), torch.float32)}
        if not self.four_bit:
            raise ValueError("method 'none' has no quantized layout")
        n_blocks = -(-n // self.blocksize)
        out: dict[str, tuple[tuple[int, ...], torch.dtype]] = {"weight": (((n + 1) // 2, 1), torch.uint8)}
        if self.double_quant:
            out["absmax"] = ((n_blocks,), torch.uint8)
            out["nested_absmax"] = ((-(-n_blocks // NESTED_BLOCKSIZE),), torch.float32)
            out["nested_quant_map"] = ((NESTED_CODE_SIZE,), torch.float32)
            out["offset"] = ((), torch.float32)
        else:
            out["absmax"] = ((n_blocks,), torch.float32)
        out["quant_map"] = ((FOUR_BIT_CODE_SIZE,), torch.float32)
        return out

    def weight_nbytes(self, out_features: int, in_features: int, float_bytes: int = 2) -> int:
        """Bytes the weight of an ``(out, in)`` linear layer takes with this method
        (``out * in * float_bytes`` for ``none``)."""
        if not self.enabled:
            return out_features * in_features * float_bytes
        total = 0
        for shape, dtype in self.layout(out_features, in_features).values():
            total += math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        return total

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (the inverse of :meth:`from_dict`)."""
        return {
            "method": self.method, "int8_threshold": self.int8_threshold, "double_quant": self.double_quant,
            "blocksize": self.blocksize, "compute_dtype": dtype_name(self.compute_dtype),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "quantization settings") -> QuantConfig:
        """Parse :meth:`to_dict` output.

        Raises:
            ValueError: a missing or invalid field, naming ``source``.
        """
        try:
            dtype = parse_dtype(str(data["compute_dtype"]))
            return cls(
                method=str(data["method"]), int8_threshold=float(data["int8_threshold"]),
                double_quant=bool(data["double_quant"]), blocksize=int(data["blocksize"]), compute_dtype=dtype,
            )
        except KeyError as exc:
            raise ValueError(f"{source}: missing or unknown field {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: {exc}") from None

    def describe(self) -> str:
        """Short human description, e.g. ``nf4 (double quant, blocks of 64, compute bfloat16)``."""
        if self.method == "none":
            return "none"
        if self.method == "int8":
            return f"int8 (LLM.int8(), outlier threshold {self.int8_threshold:g})"
        dq = "double quant, " if self.double_quant else ""
        return f"{self.method} ({dq}blocks of {self.blocksize}, compute {dtype_name(self.compute_dtype)})"
