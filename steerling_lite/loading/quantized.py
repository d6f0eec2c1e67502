"""Steerling's quantization policy: what is quantized, with which settings, in which order.

Only the transformer blocks' linear layers (``attn.c_attn``, ``attn.c_proj``, ``mlp.c_fc``,
``mlp.c_proj``) are quantized. The token embedding / tied LM head, every norm and both
concept heads stay in the float dtype (bf16 by default), so the hidden and composed states
go through unquantized concept heads and LM head and attribution stays exact. Only
transformer blocks may be offloaded (to CPU RAM or disk); the embedding, the final norm,
the LM head and the concept heads stay resident on the execution device, since steering and
attribution read their weights directly.

The planner (:mod:`.plan`), the planned load (:mod:`.load`) and the pre-quantized writer
(:mod:`.prequantized`) all follow this policy.
"""

from __future__ import annotations

import torch

from quant import QuantConfig, select_linears

from .checkpoint import Checkpoint, meta_model
from .config import SteerlingConfig

QUANT_MODES = ("auto", "none", "int8", "nf4", "fp4")  # what Steerling.load / --quant accept
AUTO_ORDER = ("none", "int8", "nf4")  # what ``auto`` weighs, best first: "int8 for quality, nf4 for memory and speed"
KEEP_UNQUANTIZED = ("transformer.tok_emb", "transformer.lm_head", "known_head", "unknown_head")


def quant_config(method: str, *, int8_threshold: float = 6.0, double_quant: bool = True,
                 compute_dtype: torch.dtype = torch.bfloat16) -> QuantConfig | None:
    """Steerling's default settings for ``method`` (``none`` -> None): int8 outlier threshold 6,
    4-bit with double quantization (saves ~350 MB on the 8B shape) computing in bf16.

    Raises:
        ValueError: an unknown method.
    """
    if method == "none":
        return None
    return QuantConfig(method, int8_threshold=int8_threshold, double_quant=double_quant, compute_dtype=compute_dtype)


def quantized_layers(cfg: SteerlingConfig) -> list[str]:
    """Names of the layers the policy quantizes: every ``nn.Linear`` except the LM head and the
    concept heads, i.e. the four linear layers of each transformer block."""
    return select_linears(meta_model(cfg), KEEP_UNQUANTIZED)


def stored_quantized_layers(ckpt: Checkpoint, quant: QuantConfig | None) -> list[str]:
    """The layers a load of ``ckpt`` holds quantized: those a pre-quantized checkpoint records,
    else the policy's (:func:`quantized_layers`) when ``quant`` is given, else none."""
    if ckpt.prequant is not None:
        return list(ckpt.prequant.modules)
    return quantized_layers(ckpt.config) if quant is not None else []
