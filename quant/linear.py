"""Weight-only quantized linear layers whose whole state is plain tensors.

bitsandbytes does the arithmetic: :func:`quantize_weight` calls
``bitsandbytes.functional.quantize_4bit`` / ``int8_vectorwise_quant`` and the modules'
forward calls ``bitsandbytes.matmul_4bit`` / ``bitsandbytes.matmul`` (LLM.int8()).
What differs from ``bnb.nn.Linear4bit`` / ``Linear8bitLt`` is storage: their quantization
state lives in Python attributes of tensor subclasses (``Params4bit.quant_state``,
``Linear8bitLt.state``), which accelerate's offload hooks (they swap a module's tensors
in from CPU RAM or disk before each forward and back to ``meta`` after) and safetensors
files do not carry. Here every part of the state (packed codes, absmax, code books) is
an ordinary frozen ``nn.Parameter`` named as in :meth:`QuantConfig.layout`, and the
``QuantState`` handed to bitsandbytes is rebuilt from them at each call (microseconds).
So a quantized layer can be placed on a GPU, kept in CPU RAM or offloaded to disk by
accelerate, and written to / read from safetensors, like any other layer.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import sys
from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn
from torch import Tensor

from .config import NESTED_BLOCKSIZE, QuantConfig


def _bnb():
    """bitsandbytes, imported on first use (~0.3 s).

    On CPUs with AVX512-BF16, bitsandbytes' import tries to fetch an optional CPU kernel from
    the Hugging Face Hub when the ``kernels`` package is installed; we never reach the network
    (``HF_HUB_OFFLINE=1`` unless the user set it) and silence its warning that the kernel is
    missing (bitsandbytes then uses its built-in CPU kernels).
    """
    if "bitsandbytes" not in sys.modules:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        log = logging.getLogger("bitsandbytes.backends.cpu.ops")
        level = log.level
        log.setLevel(logging.ERROR)
        try:
            import bitsandbytes  # noqa: F401
        finally:
            log.setLevel(level)
    import bitsandbytes as bnb

    return bnb


class QuantLinear(nn.Module):
    """Base class: ``y = x Wᵀ + b`` with W stored quantized (see subclasses).

    Attributes:
        in_features, out_features: the layer's dimensions.
        config: the :class:`QuantConfig` it was quantized with.
        bias: ``(out_features,)`` float parameter, or None.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, config: QuantConfig,
                 bias_dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "meta"):
        super().__init__()
        self.in_features, self.out_features, self.config = in_features, out_features, config
        for name, (shape, dtype) in config.layout(out_features, in_features).items():
            self.register_parameter(name, nn.Parameter(torch.empty(shape, dtype=dtype, device=device), requires_grad=False))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=bias_dtype, device=device), requires_grad=False) if bias else None

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, {self.config.describe()}"


class Int8Linear(QuantLinear):
    """LLM.int8() linear layer: ``weight`` ``(out, in)`` int8, ``SCB`` ``(out,)`` fp32 row absmax
    (``W ≈ weight * SCB[:, None] / 127``). The input is cast to fp16 (bitsandbytes quantizes
    activations from fp16) and the output back to the input's dtype."""

    weight: Tensor
    SCB: Tensor

    def forward(self, x: Tensor) -> Tensor:
        bnb = _bnb()
        state = bnb.MatmulLtState()
        state.CB, state.SCB = self.weight, self.SCB
        state.threshold = self.config.int8_threshold
        state.has_fp16_weights = False
        state.is_training = False
        bias = self.bias.to(torch.float16) if self.bias is not None else None
        out = bnb.matmul(x.to(torch.float16), self.weight, bias=bias, state=state)
        return out.to(x.dtype)


class _PackedMatmul4bit(torch.autograd.Function):
    """``y = layer(x)`` through bitsandbytes' CPU-packed 4-bit kernel (``gemv_4bit``, which has no
    backward: autograd would return zero gradients) with ``∂L/∂x = ∂L/∂y · W``, W the layer's
    dequantized weight, rebuilt at each backward (O(out x in), no matmul)."""

    @staticmethod
    def forward(ctx, x: Tensor, layer: FourBitLinear) -> Tensor:
        ctx.layer = layer
        return layer._matmul(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        w = ctx.layer.dequantized_weight()
        return (grad.float() @ w).to(grad.dtype), None


class FourBitLinear(QuantLinear):
    """nf4 / fp4 linear layer (QLoRA blockwise 4-bit): tensors as in :meth:`QuantConfig.layout`.

    The input is cast to ``config.compute_dtype``, multiplied by the dequantized weight
    (bitsandbytes' ``gemm_4bit``) and cast back to its dtype. After :meth:`pack_for_cpu`
    the tensors are in bitsandbytes' AVX512-BF16 CPU layout (about 2x faster matmuls on CPUs
    that have it); such a layer only runs on the CPU.
    """

    weight: Tensor
    absmax: Tensor
    quant_map: Tensor

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cpu_packed = False

    def quant_state(self):
        """A bitsandbytes ``QuantState`` viewing this layer's tensors (built per call)."""
        F = _bnb().functional
        cfg = self.config
        shape = torch.Size((self.out_features, self.in_features))
        if self.cpu_packed:
            qs = F.QuantState(absmax=self.absmax, shape=shape, code=self.quant_map, blocksize=cfg.blocksize,
                              quant_type=cfg.method, dtype=torch.bfloat16)
            qs.packing_format_for_cpu = True
            return qs
        state2 = None
        offset = None
        if cfg.double_quant:
            state2 = F.QuantState(absmax=self.nested_absmax, code=self.nested_quant_map, blocksize=NESTED_BLOCKSIZE,
                                  dtype=torch.float32)
            offset = self.offset
        return F.QuantState(absmax=self.absmax, shape=shape, code=self.quant_map, blocksize=cfg.blocksize,
                            quant_type=cfg.method, dtype=cfg.compute_dtype, offset=offset, state2=state2)

    def forward(self, x: Tensor) -> Tensor:
        if self.cpu_packed and x.device.type != "cpu":
            raise RuntimeError(
                f"this {self.config.method} layer holds bitsandbytes' CPU-only packed layout and cannot run on {x.device}; "
                "reload the model for that device instead of moving it"
            )
        if self.cpu_packed and x.requires_grad and torch.is_grad_enabled():
            return _PackedMatmul4bit.apply(x, self)  # the packed kernel has no backward
        return self._matmul(x)

    def _matmul(self, x: Tensor) -> Tensor:
        compute = torch.bfloat16 if self.cpu_packed else self.config.compute_dtype
        bias = self.bias.to(compute) if self.bias is not None else None
        out = _bnb().matmul_4bit(x.to(compute), self.weight, self.quant_state(), bias=bias)
        return out.to(x.dtype)

    def dequantized_weight(self) -> Tensor:
        """The dense weight ``(out, in)`` fp32 this layer multiplies by: ``code[q] * absmax`` of
        each block (for the CPU-packed layout, its nibble order undone as bitsandbytes'
        ``_convert_weight_packed_for_cpu_inverse`` does)."""
        if not self.cpu_packed:
            return _bnb().functional.dequantize_4bit(self.weight, self.quant_state()).float()
        n, k, bs = self.out_features, self.in_features, self.config.blocksize
        packed = self.weight.reshape(-1, 32)  # rows of 32 bytes: 32 low nibbles, then 32 high
        codes = torch.cat([packed & 0xF, packed >> 4], dim=-1)  # (n/32 * k/2, 64)
        codes = codes.reshape(n // 32, k // 2, 32, 2).transpose(1, 2).reshape(n, k)
        scale = self.absmax.t().float().repeat_interleave(bs, dim=1)  # absmax is (k / blocksize, n)
        return self.quant_map.float()[codes.long()] * scale

    def pack_for_cpu(self) -> bool:
        """Convert to bitsandbytes' AVX512-BF16 CPU layout when it applies: weights on the CPU,
        a CPU with AVX512-BF16, compute dtype bf16, ``out_features`` a multiple of 32.
        This is what ``bnb.nn.Linear4bit`` does on its first CPU forward. Returns whether it did.
        (The layout comes from a private bitsandbytes helper; without it nothing changes.)"""
        if self.cpu_packed or self.weight.device.type != "cpu" or self.config.compute_dtype != torch.bfloat16:
            return False
        if self.out_features % 32 or self.in_features % 2:
            return False
        F = _bnb().functional
        convert = getattr(F, "_convert_weight_packed_for_cpu", None)
        has = getattr(F, "has_avx512bf16", None)
        if convert is None or has is None or not has():
            return False
        cfg = self.config
        n, k = self.out_features, self.in_features
        if (n * k) % cfg.blocksize or k % cfg.blocksize:
            return False
        qs = self.quant_state()
        absmax = F.dequantize_blockwise(qs.absmax, qs.state2) + qs.offset if qs.nested else qs.absmax
        absmax = absmax.float().reshape(n, k // cfg.blocksize)
        packed = self.weight.data.reshape(n, k // 2)  # row-major codes: rows are contiguous byte ranges
        # convert 32-row groups in chunks (the conversion holds ~6 bytes of temporaries per weight)
        step = max(32, (CHUNK_WEIGHTS // max(k, 1)) // 32 * 32)
        weights, absmaxes = [], []
        for i in range(0, n, step):
            rows = min(step, n - i)
            part = F.QuantState(absmax=absmax[i:i + rows].reshape(-1).contiguous(), shape=torch.Size((rows, k)),
                                code=self.quant_map, blocksize=cfg.blocksize, quant_type=cfg.method, dtype=cfg.compute_dtype)
            w, part = convert(packed[i:i + rows].reshape(-1, 1).contiguous(), part)
            weights.append(w)
            absmaxes.append(part.absmax)  # (k / blocksize, rows) bf16
        self.weight = nn.Parameter(torch.cat(weights), requires_grad=False)
        self.absmax = nn.Parameter(torch.cat(absmaxes, dim=1).contiguous(), requires_grad=False)
        for name in ("nested_absmax", "nested_quant_map", "offset"):
            if name in self._parameters:
                del self._parameters[name]
        self.cpu_packed = True
        return True


def cpu_layout_nbytes(config: QuantConfig, out_features: int, in_features: int) -> int:
    """Bytes of a 4-bit weight in bitsandbytes' AVX512-BF16 CPU layout (:meth:`FourBitLinear.pack_for_cpu`):
    the packed codes, one bf16 absmax per block (no double quantization) and the code book."""
    n = out_features * in_features
    return (n + 1) // 2 + -(-n // config.blocksize) * 2 + 16 * 4


def module_class(config: QuantConfig) -> type[QuantLinear]:
    """The module class for ``config.method`` (``int8`` or ``nf4`` / ``fp4``).

    Raises:
        ValueError: method ``none``.
    """
    if config.method == "int8":
        return Int8Linear
    if config.four_bit:
        return FourBitLinear
    raise ValueError("method 'none' has no quantized module")


CHUNK_WEIGHTS = 8 * 2**20  # weights quantized per bitsandbytes call


def _chunk_rows(rows: int, cols: int, config: QuantConfig) -> int:
    """Rows per chunk: about CHUNK_WEIGHTS weights, a whole number of 4-bit blocks (and bytes)."""
    step = max(1, CHUNK_WEIGHTS // max(cols, 1))
    if config.four_bit:
        unit = 1
        while (unit * cols) % config.blocksize or (unit * cols) % 2:
            unit += 1
            if unit > config.blocksize:  # cols odd and blocksize even never aligns: one chunk
                return rows
        step = max(unit, step - step % unit)
    return min(step, rows) if rows else 1


@torch.no_grad()
def quantize_weight(weight: Tensor, config: QuantConfig, device: str | torch.device | None = None) -> dict[str, Tensor]:
    """Quantize one ``(out, in)`` float weight with bitsandbytes.

    Args:
        weight: ``(out_features, in_features)`` bf16 / fp16 / fp32.
        config: the method and its settings.
        device: where to quantize (and return the tensors); default the weight's device.

    Returns:
        ``{name: tensor}`` exactly as :meth:`QuantConfig.layout` says (names, shapes, dtypes).

    bitsandbytes' CPU kernels hold about 10 (int8) to 14 (nf4) bytes of temporaries per
    weight, so the weight is quantized in row chunks of about 8M weights aligned to the
    4-bit blocks; int8 is row-wise and the first 4-bit stage blockwise, so the result is
    bit-identical to one call, and double quantization then runs on the whole absmax
    exactly as ``quantize_4bit(compress_statistics=True)`` does (tested).

    Raises:
        ValueError: a weight that is not 2-D floating point, or method ``none``.
    """
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"can only quantize a 2-D float weight, got shape {tuple(weight.shape)} {weight.dtype}")
    F = _bnb().functional
    dev = torch.device(device) if device is not None else weight.device
    rows, cols = weight.shape
    step = _chunk_rows(rows, cols, config)
    if config.method == "int8":
        cbs, scbs = [], []
        for i in range(0, rows, step):
            cb, scb, _ = F.int8_vectorwise_quant(weight[i:i + step].to(dev).to(torch.float16).contiguous())  # as Int8Params
            cbs.append(cb)
            scbs.append(scb)
        out = {"weight": torch.cat(cbs), "SCB": torch.cat(scbs)}
    elif config.four_bit:
        packed, absmax = [], []
        code = None
        for i in range(0, rows, step):
            p, qs = F.quantize_4bit(weight[i:i + step].to(dev).contiguous(), blocksize=config.blocksize,
                                    compress_statistics=False, quant_type=config.method, quant_storage=torch.uint8)
            packed.append(p)
            absmax.append(qs.absmax)
            code = qs.code
        out = {"weight": torch.cat(packed)}
        amax = torch.cat(absmax)
        if config.double_quant:  # bitsandbytes quantize_4bit(compress_statistics=True), on the whole absmax
            offset = amax.mean()
            qabsmax, state2 = F.quantize_blockwise(amax - offset, blocksize=NESTED_BLOCKSIZE)
            out.update(absmax=qabsmax, nested_absmax=state2.absmax, nested_quant_map=state2.code,
                       offset=offset.reshape(()).float())
        else:
            out["absmax"] = amax
        out["quant_map"] = code
    else:
        raise ValueError("method 'none' does not quantize")
    layout = config.layout(*weight.shape)
    for name, (shape, dtype) in layout.items():  # a bitsandbytes upgrade that changed the layout would stop here
        t = out[name]
        if tuple(t.shape) != shape or t.dtype != dtype:
            raise RuntimeError(f"bitsandbytes returned {name} {tuple(t.shape)} {t.dtype}, expected {shape} {dtype}")
    return {name: out[name].contiguous() for name in layout}


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") or fnmatch.fnmatchcase(name, p) for p in patterns)


def select_linears(model: nn.Module, keep: Sequence[str] = ()) -> list[str]:
    """Names of the ``nn.Linear`` modules of ``model`` to quantize: all of them except those
    matched by ``keep`` (a module name, a prefix of one — ``"head"`` keeps ``head.proj`` —
    or an fnmatch pattern), like transformers' ``llm_int8_skip_modules``.

    Raises:
        ValueError: a selected layer's weight is shared with another parameter (tied
            weights cannot be quantized: keep that layer).
    """
    owners: dict[int, list[str]] = {}
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        for p_name, p in mod.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append(f"{mod_name}.{p_name}" if mod_name else p_name)
    out = []
    for name, mod in model.named_modules():
        if type(mod) is nn.Linear and not _matches(name, keep):
            shared = owners.get(id(mod.weight), [])
            if len(shared) > 1:
                raise ValueError(f"{name}.weight is tied to {', '.join(s for s in shared if s != name + '.weight')}; "
                                 "tied weights cannot be quantized: add the layer to the modules kept unquantized")
            out.append(name)
    return out


def replace_linears(model: nn.Module, names: Iterable[str], config: QuantConfig, bias_dtype: torch.dtype = torch.bfloat16) -> None:
    """Swap each named ``nn.Linear`` of ``model`` for an empty quantized layer on the meta device
    (to be filled by assigning the tensors of :func:`quantize_weight` or of a pre-quantized file).

    Raises:
        ValueError: a name that is not an ``nn.Linear`` of ``model``.
    """
    cls = module_class(config)
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, attr, None)
        if type(old) is not nn.Linear:
            raise ValueError(f"{name}: expected an nn.Linear to quantize, found {type(old).__name__}")
        setattr(parent, attr, cls(old.in_features, old.out_features, old.bias is not None, config, bias_dtype))


def pack_for_cpu(model: nn.Module) -> int:
    """:meth:`FourBitLinear.pack_for_cpu` on every 4-bit layer whose weights are on the CPU;
    returns how many were converted."""
    return sum(m.pack_for_cpu() for m in model.modules() if isinstance(m, FourBitLinear))
