"""Steerling's block-causal transformer with a KV cache, in plain PyTorch.

Module and parameter names match the published checkpoints
(``transformer.blocks.{i}.attn.c_attn.weight``, ...), so a state dict loads as is.
The forward pass follows ../shared/STEERLING_FORMAT.md §4 and the reference
(``steerling==0.2.0``, ``models/layers``): post-norm blocks, RMSNorm in fp32, QK-norm,
RoPE (rotate-half, fp32 tables), qkv clipping, GQA and block-causal attention where
query i sees key j iff ``i // B >= j // B`` (B = ``diff_block_size``, positions from 0).

Unlike the reference, :meth:`Transformer.forward` runs a *window* of positions
``[start, start + T)`` against a :class:`~steerling_lite.model.kv_cache.KVCache` holding the
keys/values of positions ``[0, start)`` (whole, fully committed attention blocks), and
can run the last layer only for the rows whose output is needed.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .concept_heads import KnownHead, UnknownHead
from ..loading.config import SteerlingConfig
from .kv_cache import KVCache


def param_part(name: str) -> str:
    """Which part of the model a parameter belongs to: ``transformer`` (blocks and norms),
    ``embedding / lm head`` (tied), ``known head`` or ``discovered head``."""
    if name.startswith("known_head."):
        return "known head"
    if name.startswith("unknown_head."):
        return "discovered head"
    if name.endswith("tok_emb.weight") or name.endswith("lm_head.weight"):
        return "embedding / lm head"
    return "transformer"


class RMSNorm(nn.Module):
    """``x * rsqrt(mean(x^2) + eps) * weight`` computed in fp32, cast back to x's dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * x).to(dtype)


def make_norm(cfg: SteerlingConfig, dim: int) -> nn.Module:
    # The reference builds nn.LayerNorm with its default eps when use_rms_norm is false.
    return RMSNorm(dim, cfg.norm_eps) if cfg.use_rms_norm else nn.LayerNorm(dim)


def rope_tables(head_dim: int, base: float, length: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """RoPE ``(cos, sin)`` tables, each ``(length, head_dim)`` fp32, frequencies concatenated twice.

    Computed exactly as the reference's ``RotaryEmbedding`` so that fp32 results agree bit for bit.
    """
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float) / head_dim))
    seq = torch.arange(length, device=device, dtype=torch.float)
    freqs = torch.outer(seq, inv_freq)
    pos = torch.cat((freqs, freqs), dim=-1)
    return pos.cos(), pos.sin()


def apply_rope(t: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate-half RoPE of ``t`` ``(B, H, T, hd)`` with tables ``(T, hd)`` of t's dtype."""
    half = t.shape[-1] // 2
    rotated = torch.cat((-t[..., half:], t[..., :half]), dim=-1)
    return t * cos + rotated * sin


def block_causal_mask(q_pos: Tensor, k_len: int, block: int) -> Tensor:
    """Boolean ``(Tq, k_len)`` mask, True where query position i may see key j: ``i // B >= j // B``."""
    k_pos = torch.arange(k_len, device=q_pos.device)
    return (q_pos // block).unsqueeze(1) >= (k_pos // block).unsqueeze(0)


class Attention(nn.Module):
    """Block-causal self-attention with GQA, QK-norm, RoPE and qkv clipping."""

    def __init__(self, cfg: SteerlingConfig):
        super().__init__()
        self.n_head, self.n_kv, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.clip_qkv = cfg.clip_qkv
        self.rope_fp32 = cfg.rope_full_precision
        kv_dim = self.n_kv * self.head_dim
        self.c_attn = nn.Linear(cfg.n_embd, cfg.n_embd + 2 * kv_dim, bias=cfg.use_bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.use_bias)
        if cfg.use_qk_norm:
            self.q_norm: nn.Module | None = make_norm(cfg, self.head_dim)
            self.k_norm: nn.Module | None = make_norm(cfg, self.head_dim)
        else:
            self.q_norm = self.k_norm = None

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None,
        mask: Tensor,
        cache: tuple[Tensor, Tensor] | None,
        start: int,
        rows: Tensor | None = None,
    ) -> Tensor:
        """Attention output for window ``x`` ``(B, T, D)`` at positions ``[start, start+T)``.

        ``cache`` is this layer's ``(k, v)`` buffers ``(B, KV, T_max, hd)``; the window's keys
        and values are written into them at ``[start, start+T)`` and attention reads
        ``[0, start+T)``. ``rows`` (indices into the window) restricts the queries, and so the
        output, to those rows; ``mask`` is ``(len(rows) or T, start+T)``.
        """
        B, T, C = x.shape
        kv_dim = self.n_kv * self.head_dim
        qkv = self.c_attn(x)
        if self.clip_qkv is not None:
            qkv = qkv.clamp(min=-self.clip_qkv, max=self.clip_qkv)
        q, k, v = qkv.split([C, kv_dim, kv_dim], dim=2)
        if rows is not None:
            q = q[:, rows]
        q = q.reshape(B, q.shape[1], self.n_head, self.head_dim).transpose(1, 2)
        k = k.reshape(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        v = v.reshape(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            cos, sin = rope
            q_cos, q_sin = (cos[rows], sin[rows]) if rows is not None else (cos, sin)
            if self.rope_fp32:
                q = apply_rope(q.float(), q_cos, q_sin).to(x.dtype)
                k = apply_rope(k.float(), cos, sin).to(x.dtype)
            else:
                q = apply_rope(q, q_cos.to(q.dtype), q_sin.to(q.dtype))
                k = apply_rope(k, cos.to(k.dtype), sin.to(k.dtype))
        if cache is not None:
            ck, cv = cache
            ck[:, :, start:start + T] = k
            cv[:, :, start:start + T] = v
            k, v = ck[:, :, :start + T], cv[:, :, :start + T]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.n_kv != self.n_head)
        y = y.transpose(1, 2).reshape(B, q.shape[2], C)
        return self.c_proj(y)


class MLP(nn.Module):
    """SwiGLU ``c_proj(silu(gate) * up)`` (c_fc rows: up, then gate) or ``c_proj(act(c_fc(x)))``."""

    def __init__(self, cfg: SteerlingConfig):
        super().__init__()
        hidden = cfg.mlp_hidden
        self.swiglu = cfg.mlp_type == "swiglu"
        self.c_fc = nn.Linear(cfg.n_embd, 2 * hidden if self.swiglu else hidden, bias=cfg.use_bias)
        self.c_proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.use_bias)
        self.act = {"gelu": nn.GELU(approximate="tanh"), "relu": nn.ReLU(), "silu": nn.SiLU()}[cfg.activation]

    def forward(self, x: Tensor) -> Tensor:
        h = self.c_fc(x)
        if self.swiglu:
            up, gate = h.chunk(2, dim=-1)
            return self.c_proj(F.silu(gate) * up)
        return self.c_proj(self.act(h))


class Block(nn.Module):
    """One transformer block; post-norm ``x + ln(sublayer(x))`` or pre-norm ``x + sublayer(ln(x))``."""

    def __init__(self, cfg: SteerlingConfig):
        super().__init__()
        self.post_norm = cfg.norm_order == "post"
        self.ln_1 = make_norm(cfg, cfg.n_embd)
        self.ln_2 = make_norm(cfg, cfg.n_embd)
        self.attn = Attention(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x, rope, mask, cache, start, rows=None):
        residual = x[:, rows] if rows is not None else x
        if self.post_norm:
            x = residual + self.ln_1(self.attn(x, rope, mask, cache, start, rows))
            return x + self.ln_2(self.mlp(x))
        x = residual + self.attn(self.ln_1(x), rope, mask, cache, start, rows)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """Embedding, blocks, final norm and the (tied) LM head: ``CausalDiffusionLM`` of the reference."""

    def __init__(self, cfg: SteerlingConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = make_norm(cfg, cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.weight_sharing:
            self.lm_head.weight = self.tok_emb.weight
        self._rope: tuple[Tensor, Tensor] | None = None

    def tie_weights(self) -> None:
        """Re-point the LM head at the token embedding (after weights were assigned)."""
        if self.cfg.weight_sharing:
            self.lm_head.weight = self.tok_emb.weight

    def rope_for(self, start: int, length: int, device: torch.device) -> tuple[Tensor, Tensor] | None:
        """RoPE tables for positions ``[start, start+length)``, each ``(length, hd)`` fp32."""
        if not self.cfg.use_rope:
            return None
        end = start + length
        if self._rope is None or self._rope[0].shape[0] < end or self._rope[0].device != device:
            n = max(end, self.cfg.block_size)
            self._rope = rope_tables(self.cfg.head_dim, self.cfg.rope_base, n, device)
        cos, sin = self._rope
        return cos[start:end], sin[start:end]

    def forward(
        self,
        input_ids: Tensor | None = None,
        *,
        input_embeds: Tensor | None = None,
        cache: KVCache | None = None,
        start: int = 0,
        out_rows: Tensor | None = None,
        injection: Tensor | None = None,
        inject_layer: int = 0,
    ) -> Tensor:
        """Final hidden states (after ``ln_f``) for a window of positions ``[start, start+T)``.

        Args:
            input_ids: ``(B, T)`` token ids (long), or pass ``input_embeds`` ``(B, T, D)``.
            cache: keys/values of positions ``[0, start)``; the window's are written after them.
                Without a cache ``start`` must be 0 (the whole sequence is the window).
            start: absolute position of the window's first token.
            out_rows: ``(R,)`` window indices whose output is wanted; the last layer runs only
                for them and the result is ``(B, R, D)``. Default: every row, ``(B, T, D)``.
            injection: ``(B, T, D)`` steering term already scaled by alpha (zero at rows that
                are not injected), added after every block ``i`` with ``i + 1 >= inject_layer``
                (reference ``_forward_with_injection``).

        Returns:
            hidden states in the model dtype, ``(B, T or R, D)``.
        """
        x = self.tok_emb(input_ids) if input_embeds is None else input_embeds
        T = x.shape[1]
        if cache is None and start != 0:
            raise ValueError("start > 0 needs a KV cache holding the earlier positions")
        device = x.device
        rope = self.rope_for(start, T, device)
        q_pos = torch.arange(start, start + T, device=device)
        mask = block_causal_mask(q_pos, start + T, self.cfg.diff_block_size)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            rows = out_rows if i == last else None
            m = mask[rows] if rows is not None else mask
            layer_cache = cache.layer(i) if cache is not None else None
            x = block(x, rope, m, layer_cache, start, rows)
            if injection is not None and i + 1 >= inject_layer:
                x = x + (injection[:, rows] if rows is not None else injection)
        return self.ln_f(x)


class SteerlingModel(nn.Module):
    """A Steerling model: the transformer plus, when interpretable, the known and discovered concept heads.

    Parameter names are those of the reference's ``InterpretableCausalDiffusionLM``
    (``transformer.*``, ``known_head.*``, ``unknown_head.*``).
    """

    def __init__(self, cfg: SteerlingConfig):
        super().__init__()
        self.cfg = cfg
        self.transformer = Transformer(cfg)
        c = cfg.concept
        self.known_head: KnownHead | None = KnownHead(c, cfg.n_embd) if c is not None else None
        self.unknown_head: UnknownHead | None = (
            UnknownHead(c, cfg.n_embd) if c is not None and c.n_unknown_padded else None
        )

    def layer_devices(self) -> list[torch.device]:
        """The device each transformer block computes on: an offload hook's execution device
        (accelerate) if the block has one, else the device of its first parameter."""
        out = []
        for block in self.transformer.blocks:
            hook = getattr(block, "_hf_hook", None)
            dev = getattr(hook, "execution_device", None)
            if dev is None:
                dev = next(block.parameters()).device
            out.append(torch.device(dev if not isinstance(dev, int) else f"cuda:{dev}"))
        return out

    @property
    def input_device(self) -> torch.device:
        """Where input token ids go: the token embedding's execution device (an accelerate
        offload hook's, when the model was dispatched), else the device of its weight."""
        emb = self.transformer.tok_emb
        dev = getattr(getattr(emb, "_hf_hook", None), "execution_device", None)
        if dev is None:
            return emb.weight.device
        return torch.device(dev if not isinstance(dev, int) else f"cuda:{dev}")

    @property
    def interpretable(self) -> bool:
        return self.known_head is not None

    @property
    def lm_head_weight(self) -> Tensor:
        """``(V, D)`` LM head weight (the token embedding when tied)."""
        return self.transformer.lm_head.weight

    def lm_logits(self, hidden: Tensor) -> Tensor:
        """LM logits ``(..., V)`` (model dtype) of hidden or composed states ``(..., D)``."""
        return self.transformer.lm_head(hidden)
