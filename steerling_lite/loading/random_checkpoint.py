"""Random-weight checkpoints in the published format, for tests, benchmarks and the first-run default.

The real weights are not needed to exercise the runtime: a checkpoint with the right
config, tensor names, shapes and dtypes loads and runs exactly like the real one.
Presets: ``tiny`` (seconds to write, used by the tests) and ``8b`` (Steerling-8B's
shape, ~17 GB in bf16, for memory and speed benchmarks).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..atomic import atomic_directory
from .checkpoint import INDEX_FILE, SINGLE_FILE, expected_shapes, file_name
from .config import INSTRUCT_VOCAB_SIZE, BASE_VOCAB_SIZE, ConceptConfig, SteerlingConfig, validate_config

PRESETS: dict[str, dict[str, Any]] = {
    # 2 layers, n_embd 64: a few MB of transformer beside the 100k-token embedding.
    "tiny": dict(
        n_layers=2, n_head=4, n_kv_heads=2, n_embd=64, block_size=1024, diff_block_size=64,
        intermediate_size=128,
        concept=dict(n_concepts=100, n_unknown_concepts=300, concept_dim=64, factorize_rank=16,
                     topk_known=8, topk_known_features=8, unknown_topk=16, block_size=4096),
    ),
    # Steerling-8B (../shared/STEERLING_FORMAT.md §2): mlp_ratio 4 gives ~8.4B parameters, ~17 GB bf16.
    "8b": dict(
        n_layers=32, n_head=32, n_kv_heads=4, n_embd=4096, block_size=4096, diff_block_size=64,
        concept=dict(n_concepts=33732, n_unknown_concepts=101196, concept_dim=4096, factorize_rank=256,
                     topk_known=32, topk_known_features=32, unknown_topk=128, block_size=4096,
                     inject_layer=16),
    ),
}


def preset_config(
    name: str = "tiny", *, instruct: bool = False, interpretable: bool = True,
    schema: str = "flat", **overrides: Any,
) -> SteerlingConfig:
    """A :class:`SteerlingConfig` for preset ``name`` with ``overrides`` (config.json field names;
    concept fields may be given at top level too).

    Raises:
        KeyError: unknown preset; ConfigError: inconsistent overrides.
    """
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    arch = {k: v for k, v in PRESETS[name].items() if k != "concept"}
    concept = dict(PRESETS[name]["concept"])
    concept_fields = set(ConceptConfig.__dataclass_fields__)
    for key, value in overrides.items():
        if key in concept_fields and key != "block_size":
            concept[key] = value
        else:
            arch[key] = value
    concept["concept_dim"] = arch["n_embd"]
    vocab = INSTRUCT_VOCAB_SIZE if instruct else BASE_VOCAB_SIZE
    extra: dict[str, Any] = {}
    if instruct:
        extra = dict(start_header_id=100281, end_header_id=100282, eot_id=100283)
    cfg = SteerlingConfig(
        **arch, vocab_size=vocab, interpretable=interpretable,
        concept=ConceptConfig(**concept) if interpretable else None,
        torch_dtype="bfloat16", schema=schema, **extra,  # type: ignore[arg-type]
    )
    validate_config(cfg, source=f"preset {name}")
    return cfg


def random_tensor(
    name: str, shape: tuple[int, ...], cfg: SteerlingConfig, gen: torch.Generator, dtype: torch.dtype,
    embedding_std: float = 0.02,
) -> torch.Tensor:
    """Initial value of one parameter as the reference initialises a fresh model: norms 1,
    biases 0, weights N(0, 0.02) (output projections scaled by ``(2 n_layers)^-1/2``); the
    token embedding (= tied LM head) N(0, ``embedding_std``)."""
    leaf = name.rsplit(".", 2)
    if name.endswith(".bias"):
        return torch.zeros(shape, dtype=dtype)
    if any(part in ("ln_1", "ln_2", "ln_f", "q_norm", "k_norm") for part in leaf):
        return torch.ones(shape, dtype=dtype)
    std = embedding_std if name.endswith("tok_emb.weight") else 0.02
    if name.endswith("c_proj.weight"):
        std *= (2 * cfg.n_layers) ** -0.5
    out = torch.empty(shape, dtype=torch.float32)
    out.normal_(0.0, std, generator=gen)
    return out.to(dtype)


def write_random_checkpoint(
    out_dir: str | Path,
    cfg: SteerlingConfig,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
    max_shard_bytes: int | None = None,
    progress: bool = False,
    embedding_std: float = 0.02,
) -> Path:
    """Write ``cfg`` with random weights to ``out_dir`` in the published format.

    ``config.json`` in ``cfg.schema``; ``model.safetensors``, or shards of at most
    ``max_shard_bytes`` plus ``model.safetensors.index.json``. The tied LM head is not
    stored. The directory is written under a temporary name and renamed into place,
    so an interrupted write leaves nothing half-made. A larger ``embedding_std`` (e.g. 0.5)
    makes the LM's distributions peaked instead of nearly flat, which tests of sampling need.

    Returns:
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, replace=True) as tmp:
        shapes = expected_shapes(cfg)
        gen = torch.Generator().manual_seed(seed)
        elem = torch.empty((), dtype=dtype).element_size()
        shards: list[dict[str, torch.Tensor]] = [{}]
        shard_bytes = 0
        names = list(shapes)
        iterator = names
        if progress:
            from tqdm import tqdm
            iterator = tqdm(names, desc="writing tensors", unit="tensor")
        files: list[str] = []
        weight_map: dict[str, str] = {}
        total = 0

        def flush() -> None:
            nonlocal shard_bytes
            if not shards[-1]:
                return
            idx = len(files) + 1
            fname = SINGLE_FILE if max_shard_bytes is None else f"model-{idx:05d}.safetensors"
            save_file(shards[-1], str(tmp / fname), metadata={"format": "pt"})
            for n in shards[-1]:
                weight_map[n] = fname
            files.append(fname)
            shards[-1] = {}
            shard_bytes = 0

        for param in iterator:
            t = random_tensor(param, shapes[param], cfg, gen, dtype, embedding_std)
            nbytes = t.numel() * elem
            if max_shard_bytes is not None and shard_bytes and shard_bytes + nbytes > max_shard_bytes:
                flush()
            shards[-1][file_name(cfg, param)] = t
            shard_bytes += nbytes
            total += nbytes
        flush()
        if max_shard_bytes is not None:
            # rename shards to the HF pattern model-0000i-of-0000n.safetensors
            n = len(files)
            renamed = {f: f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i, f in enumerate(files)}
            for old, new in renamed.items():
                os.replace(tmp / old, tmp / new)
            index = {"metadata": {"total_size": total}, "weight_map": {k: renamed[v] for k, v in weight_map.items()}}
            (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2))
        (tmp / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    return out_dir
