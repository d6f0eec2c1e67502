"""config.json checked against the safetensors headers before any structure is built.

:func:`check_config_against_headers` runs on the tensor headers alone (names, shapes,
dtypes) and on arithmetic from the config: no module, not even one on the meta device, is
built first. It checks what each config field fixes in the weights: ``n_layers`` against
the blocks the files hold, ``vocab_size`` / ``n_embd`` against the token embedding,
``n_head`` / ``n_kv_heads`` / the MLP width against the first block, and the concept
counts against the concept heads. A mismatch is one line naming config.json's field, the
tensor and both values. The full per-tensor check
(:func:`.checkpoint.open_checkpoint`) follows and catches whatever is left.

The expected shapes are those of :class:`~steerling_lite.model.transformer.SteerlingModel`
(the reference's ``InterpretableCausalDiffusionLM`` parameter layout).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..errors import CheckpointError
from .config import SteerlingConfig

_BLOCK = re.compile(r"^(?:transformer\.)?blocks\.(\d+)\.")


class _Header(Protocol):  # what is used of a checkpoint.TensorInfo
    name: str
    shape: tuple[int, ...]
    dtype: str
    file: Path


@dataclass(frozen=True)
class _Probe:
    """A tensor whose shape config fields fix: ``fields[d]`` explains dimension ``d``."""

    param: str
    shape: tuple[int, ...]
    fields: tuple[str, ...]


def _concept_field(cfg: SteerlingConfig, name: str) -> str:
    return f"concept.{name}" if cfg.schema == "native" else name


def _probes(cfg: SteerlingConfig) -> list[_Probe]:
    d, hd, kv = cfg.n_embd, cfg.head_dim, cfg.kv_heads
    mlp_field = (f"'intermediate_size' is {cfg.intermediate_size}" if cfg.intermediate_size is not None
                 else f"'mlp_ratio' is {cfg.mlp_ratio} (MLP width mlp_ratio x n_embd = {cfg.mlp_hidden})")
    probes = [
        _Probe("transformer.tok_emb.weight", (cfg.vocab_size, d),
               (f"'vocab_size' is {cfg.vocab_size}", f"'n_embd' is {d}")),
    ]
    head_dim = f"head_dim n_embd / n_head = {d} / {cfg.n_head} = {hd}"
    if cfg.use_qk_norm:  # before c_attn, whose rows depend on both head counts
        probes.append(_Probe("transformer.blocks.0.attn.q_norm.weight", (hd,), (f"'n_head' is {cfg.n_head} ({head_dim})",)))
    probes += [
        _Probe("transformer.blocks.0.attn.c_attn.weight", (d + 2 * kv * hd, d),
               (f"'n_kv_heads' is {kv} (rows n_embd + 2 x n_kv_heads x head_dim = {d} + 2 x {kv} x {hd}, {head_dim})",
                f"'n_embd' is {d}")),
        _Probe("transformer.blocks.0.mlp.c_proj.weight", (d, cfg.mlp_hidden), (f"'n_embd' is {d}", mlp_field)),
    ]
    c = cfg.concept
    if c is not None:
        known = _concept_field(cfg, "n_concepts")
        probes.append(_Probe("known_head.concept_embedding.weight", (c.n_known_padded, d),
                             (f"'{known}' is {c.n_concepts} (known concept rows: n_concepts padded to a multiple "
                              f"of {c.pad_multiple} = {c.n_known_padded})", f"'n_embd' is {d}")))
        if c.n_unknown_padded:
            unknown = (f"'{_concept_field(cfg, 'n_unknown_concepts')}' is {c.n_unknown_concepts} (discovered concept "
                       f"rows: padded to a multiple of {c.pad_multiple} = {c.n_unknown_padded})")
            if c.factorize_unknown:
                probes.append(_Probe("unknown_head.embedding_coef.weight", (c.n_unknown_padded, c.factorize_rank),
                                     (unknown, f"'{_concept_field(cfg, 'factorize_rank')}' is {c.factorize_rank}")))
            else:
                probes.append(_Probe("unknown_head.concept_embedding.weight", (c.n_unknown_padded, d),
                                     (unknown, f"'n_embd' is {d}")))
    return probes


def check_config_against_headers(cfg: SteerlingConfig, headers: Mapping[str, _Header],
                                 source: str = "config.json", float_codes: frozenset[str] | None = None) -> None:
    """Check ``cfg`` against the checkpoint's tensor headers, before any model is built.

    Args:
        cfg: the parsed config.json.
        headers: name in the file -> header (:class:`.checkpoint.TensorInfo`: ``name``,
            ``shape``, ``dtype``, ``file``); a non-interpretable checkpoint's names lack the
            ``transformer.`` prefix.
        source: config.json's path, for the message.
        float_codes: safetensors dtype codes of unquantized tensors; tensors of other dtypes
            (a pre-quantized layer's packed weights) are not probed. None: probe every tensor.

    Raises:
        CheckpointError: ``n_layers`` differs from the number of blocks the files hold
            (``blocks.0`` .. ``blocks.K-1``), or a probed tensor's shape differs from the one
            config.json gives it; the message names the field, the tensor, the file and both values.
    """
    prefix = "transformer." if cfg.interpretable else ""
    layers = sorted({int(m.group(1)) for n in headers if (m := _BLOCK.match(n))})
    if layers and layers == list(range(len(layers))) and len(layers) != cfg.n_layers:
        k = len(layers)
        last = next(h for n, h in headers.items() if (m := _BLOCK.match(n)) and int(m.group(1)) == k - 1)
        raise CheckpointError(
            f"{source}: 'n_layers' is {cfg.n_layers} but the weights hold {k} layer(s) (tensors {prefix}blocks.0.* "
            f"to {prefix}blocks.{k - 1}.*, the last in {last.file.name}): set n_layers to {k} or use the matching weights")
    for probe in _probes(cfg):
        name = probe.param if cfg.interpretable else probe.param.removeprefix("transformer.")
        info = headers.get(name)
        if info is None or info.shape == probe.shape or (float_codes is not None and info.dtype not in float_codes):
            continue  # missing tensors and other ranks are the full check's to report
        if len(info.shape) != len(probe.shape):
            continue
        dim = next(i for i, (a, b) in enumerate(zip(info.shape, probe.shape)) if a != b)
        raise CheckpointError(
            f"{info.file}: tensor {info.name} has shape {list(info.shape)}, expected {list(probe.shape)} from "
            f"{source}: {probe.fields[dim]}, but the tensor's dimension {dim} is {info.shape[dim]}")
