"""config.json of a Steerling checkpoint: both published schemas, validated, as dataclasses.

Two schemas exist (../shared/STEERLING_FORMAT.md §1):

- **flat** (the published Hugging Face repos): ``"model_type": "steerling"`` with the
  architecture, concept and token-id fields side by side at top level; the concept
  head's block size is called ``concept_block_size``.
- **native** (the reference package's own tools): ``"model_type": "causal_diffusion"``,
  architecture at top level and the concept fields nested under ``"concept"`` (there
  the concept head's block size is ``block_size``).

Defaults for optional fields are the reference's (``steerling==0.2.0``
``CausalDiffusionConfig`` / ``ConceptConfig``), i.e. Steerling-8B's values.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from quant.jsonio import read_json

from ..errors import ConfigError

CONFIG_MAX_BYTES = 2**20  # a real config.json is ~ 2 KiB

# Keys Hugging Face adds to config.json that mean nothing to the model.
HF_KEYS = frozenset({"auto_map", "architectures", "transformers_version", "_name_or_path"})

BASE_VOCAB_SIZE = 100281
INSTRUCT_VOCAB_SIZE = 100284


@dataclass(frozen=True)
class ConceptConfig:
    """Concept decomposition heads (reference ``ConceptConfig``).

    ``n_concepts`` known concepts and ``n_unknown_concepts`` discovered ("unknown")
    concepts; weight rows are padded to a multiple of ``pad_multiple``.
    """

    n_concepts: int = 33732
    n_unknown_concepts: int | None = 101196
    concept_dim: int = 4096
    use_attention_known: bool = False
    use_attention_unknown: bool = False
    topk_known: int | None = 32
    topk_known_features: int | None = 32
    unknown_topk: int | None = 128
    use_unknown: bool = True
    apply_topk_to_unknown: bool = True
    topk_on_logits: bool = False
    factorize_unknown: bool = True
    factorize_rank: int = 256
    use_epsilon_correction: bool = True
    block_size: int = 4096  # concept-head chunk size (memory), not the context
    pad_multiple: int = 16
    store_unknown_weights: bool = False
    inject_layer: int = 16
    inject_alpha: float = 1.0
    max_concepts: int = 16

    @property
    def n_known_padded(self) -> int:
        """Rows of the known head's weights: ``n_concepts`` rounded up to ``pad_multiple``."""
        return _round_up(self.n_concepts, self.pad_multiple)

    @property
    def n_unknown_padded(self) -> int:
        """Rows of the discovered head's weights (0 without a discovered head)."""
        if not self.use_unknown or not self.n_unknown_concepts:
            return 0
        return _round_up(self.n_unknown_concepts, self.pad_multiple)

    @property
    def known_feature_k(self) -> int | None:
        """How many known concepts feed the features (``topk_known_features`` else ``topk_known``)."""
        return self.topk_known_features if self.topk_known_features is not None else self.topk_known


@dataclass(frozen=True)
class SteerlingConfig:
    """Everything in a checkpoint's config.json that the runtime uses.

    Architecture fields follow the reference's ``CausalDiffusionConfig``; ``block_size``
    is the context length in tokens and ``diff_block_size`` the diffusion / attention
    block size B. Token ids follow the tokenizer (../shared/STEERLING_FORMAT.md §8).
    """

    n_layers: int
    n_head: int
    n_embd: int
    vocab_size: int
    block_size: int = 4096
    n_kv_heads: int | None = 4
    diff_block_size: int = 64
    use_rms_norm: bool = True
    norm_eps: float = 1e-5
    norm_order: Literal["pre", "post"] = "post"
    use_qk_norm: bool = True
    use_rope: bool = True
    rope_base: float = 500000.0
    rope_full_precision: bool = True
    mlp_type: Literal["swiglu", "standard"] = "swiglu"
    activation: Literal["gelu", "relu", "silu"] = "gelu"
    mlp_ratio: int = 4
    intermediate_size: int | None = None
    use_bias: bool = False
    clip_qkv: float | None = 10.0
    weight_sharing: bool = True
    interpretable: bool = False
    concept: ConceptConfig | None = None
    # token ids
    pad_token_id: int = 100277
    bos_token_id: int = 100278
    eos_token_id: int = 100257
    endofchunk_token_id: int = 100279
    mask_token_id: int = 100280
    start_header_id: int | None = None
    end_header_id: int | None = None
    eot_id: int | None = None
    torch_dtype: str | None = None
    schema: Literal["flat", "native"] = "flat"

    # ---- derived -----------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_heads is None else self.n_kv_heads

    @property
    def mlp_hidden(self) -> int:
        """MLP intermediate size I (``intermediate_size`` else ``mlp_ratio * n_embd``)."""
        return self.intermediate_size if self.intermediate_size is not None else self.mlp_ratio * self.n_embd

    @property
    def instruct(self) -> bool:
        """True for the instruct vocabulary (chat tokens 100281..100283)."""
        return self.vocab_size == INSTRUCT_VOCAB_SIZE

    # ---- (de)serialisation -----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """config.json content in this config's ``schema``."""
        return to_flat_dict(self) if self.schema == "flat" else to_native_dict(self)

    def replace(self, **changes: Any) -> SteerlingConfig:
        return dataclasses.replace(self, **changes)


def _round_up(n: int, multiple: int) -> int:
    return ((n + multiple - 1) // multiple) * multiple


_ARCH_FIELDS = [f.name for f in fields(SteerlingConfig) if f.name not in ("concept", "schema")]
_CONCEPT_FIELDS = [f.name for f in fields(ConceptConfig)]
_TOKEN_FIELDS = [
    "pad_token_id", "bos_token_id", "eos_token_id", "endofchunk_token_id", "mask_token_id",
    "start_header_id", "end_header_id", "eot_id",
]
_REQUIRED = ("n_layers", "n_head", "n_embd", "vocab_size", "block_size", "diff_block_size")
# flat-schema name of each ConceptConfig field (only block_size is renamed)
_FLAT_CONCEPT_NAME = {name: ("concept_block_size" if name == "block_size" else name) for name in _CONCEPT_FIELDS}
_FLAT_CONCEPT_FIELD = {v: k for k, v in _FLAT_CONCEPT_NAME.items()}

# Field types, for type checks with clear messages.
_TYPES: dict[str, tuple[type, ...]] = {}
_NULLABLE: set[str] = set()  # fields whose type admits null (``X | None``)
for _cls in (SteerlingConfig, ConceptConfig):
    for _f in fields(_cls):
        t = str(_f.type)
        if "None" in t:
            _NULLABLE.add(_f.name)
        if t.startswith("int"):
            _TYPES[_f.name] = (int,)
        elif t.startswith("float"):
            _TYPES[_f.name] = (int, float)
        elif t.startswith("bool"):
            _TYPES[_f.name] = (bool,)
        elif t.startswith("Literal") or t.startswith("str"):
            _TYPES[_f.name] = (str,)


def _check_type(source: str, key: str, value: Any) -> None:
    expected = _TYPES.get(key)
    if value is None and expected is not None and key not in _NULLABLE:
        names = " or ".join(t.__name__ for t in expected)
        raise ConfigError(f"{source}: '{key}' is null; expected {'a number' if key in _REQUIRED else names}")
    if expected is None or value is None:
        return
    ok = isinstance(value, expected) and not (bool not in expected and isinstance(value, bool))
    if not ok:
        names = " or ".join(t.__name__ for t in expected)
        raise ConfigError(f"{source}: '{key}' is {value!r}; expected {names}")


def parse_config(data: dict[str, Any], source: str = "config.json") -> SteerlingConfig:
    """Validate a config.json dict of either schema into a :class:`SteerlingConfig`.

    Args:
        data: the parsed JSON object.
        source: file name used in error messages.

    Raises:
        ConfigError: unknown ``model_type``; unknown keys; a missing required key
            (``n_layers, n_head, n_embd, vocab_size, block_size, diff_block_size``, and
            ``n_concepts`` for an interpretable model); a wrong type; inconsistent
            dimensions (``n_embd`` not divisible by ``n_head``, ``concept_dim != n_embd``,
            ...); a vocabulary or token ids that do not match the Steerling tokenizer.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
    model_type = data.get("model_type")
    if model_type == "steerling":
        schema = "flat"
    elif model_type == "causal_diffusion":
        schema = "native"
    else:
        raise ConfigError(
            f"{source}: model_type is {model_type!r}; expected 'steerling' (published flat schema) "
            "or 'causal_diffusion' (the reference's native schema)"
        )

    arch: dict[str, Any] = {}
    concept: dict[str, Any] = {}
    unknown: list[str] = []
    instruct_flag: bool | None = None
    for key, value in data.items():
        if key == "model_type" or key in HF_KEYS:
            continue
        if key == "instruct":
            instruct_flag = bool(value)
        elif key in _ARCH_FIELDS:
            _check_type(source, key, value)
            arch[key] = value
        elif schema == "flat" and key in _FLAT_CONCEPT_FIELD:
            name = _FLAT_CONCEPT_FIELD[key]
            _check_type(source, name, value)
            concept[name] = value
        elif schema == "native" and key == "concept":
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: 'concept' must be an object, got {type(value).__name__}")
            for ckey, cvalue in value.items():
                if ckey not in _CONCEPT_FIELDS:
                    unknown.append(f"concept.{ckey}")
                    continue
                _check_type(source, ckey, cvalue)
                concept[ckey] = cvalue
        else:
            unknown.append(key)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(sorted(unknown))} for the {schema} schema")
    missing = [k for k in _REQUIRED if k not in arch]
    interpretable = bool(arch.get("interpretable", False))
    if interpretable and "n_concepts" not in concept:
        missing.append("concept.n_concepts" if schema == "native" else "n_concepts")
    if missing:
        raise ConfigError(f"{source}: missing required key(s) {', '.join(missing)}")

    concept_cfg = ConceptConfig(**concept) if interpretable else None
    cfg = SteerlingConfig(**arch, concept=concept_cfg, schema=schema)
    if cfg.instruct and cfg.eot_id is None:
        cfg = cfg.replace(start_header_id=100281, end_header_id=100282, eot_id=100283)
    if instruct_flag is not None and instruct_flag != cfg.instruct:
        raise ConfigError(
            f"{source}: 'instruct' is {instruct_flag} but vocab_size {cfg.vocab_size} is the "
            f"{'instruct' if cfg.instruct else 'base'} vocabulary"
        )
    validate_config(cfg, source)
    return cfg


def validate_config(cfg: SteerlingConfig, source: str = "config.json") -> None:
    """Check dimensions and token ids for consistency; raise :class:`ConfigError` naming the field."""
    def bad(msg: str) -> None:
        raise ConfigError(f"{source}: {msg}")

    for name in ("n_layers", "n_head", "n_embd", "block_size", "diff_block_size"):
        if getattr(cfg, name) <= 0:
            bad(f"'{name}' must be positive, got {getattr(cfg, name)}")
    check_bounds(cfg, bad)
    if cfg.n_embd % cfg.n_head:
        bad(f"n_embd ({cfg.n_embd}) must be divisible by n_head ({cfg.n_head})")
    if cfg.kv_heads <= 0 or cfg.n_head % cfg.kv_heads:
        bad(f"n_head ({cfg.n_head}) must be divisible by n_kv_heads ({cfg.n_kv_heads})")
    if cfg.use_rope and cfg.head_dim % 2:
        bad(f"head_dim n_embd/n_head = {cfg.head_dim} must be even for RoPE")
    if cfg.norm_order not in ("pre", "post"):
        bad(f"norm_order is {cfg.norm_order!r}; expected 'pre' or 'post'")
    if cfg.mlp_type not in ("swiglu", "standard"):
        bad(f"mlp_type is {cfg.mlp_type!r}; expected 'swiglu' or 'standard'")
    if cfg.activation not in ("gelu", "relu", "silu"):
        bad(f"activation is {cfg.activation!r}; expected 'gelu', 'relu' or 'silu'")
    if cfg.vocab_size not in (BASE_VOCAB_SIZE, INSTRUCT_VOCAB_SIZE):
        bad(
            f"vocab_size is {cfg.vocab_size}; the Steerling tokenizer (cl100k_base + specials) has "
            f"{BASE_VOCAB_SIZE} tokens (base) or {INSTRUCT_VOCAB_SIZE} (instruct)"
        )
    expected_ids = {
        "pad_token_id": 100277, "bos_token_id": 100278, "eos_token_id": 100257,
        "endofchunk_token_id": 100279, "mask_token_id": 100280,
    }
    if cfg.instruct:
        expected_ids.update(start_header_id=100281, end_header_id=100282, eot_id=100283)
    for name, want in expected_ids.items():
        got = getattr(cfg, name)
        if got != want:
            bad(f"{name} is {got}; the Steerling tokenizer uses {want}")
    if not cfg.instruct and cfg.eot_id is not None:
        bad(f"eot_id {cfg.eot_id} given but vocab_size {cfg.vocab_size} is the base vocabulary")
    c = cfg.concept
    if c is not None:
        if c.concept_dim != cfg.n_embd:
            bad(f"concept_dim ({c.concept_dim}) must equal n_embd ({cfg.n_embd})")
        if c.n_concepts <= 0:
            bad(f"n_concepts must be positive, got {c.n_concepts}")
        if c.pad_multiple <= 0:
            bad(f"pad_multiple must be positive, got {c.pad_multiple}")
        if c.use_unknown and not c.n_unknown_concepts:
            bad("use_unknown is true but n_unknown_concepts is not set")
        if c.use_attention_known or c.use_attention_unknown:
            bad(
                "use_attention_known / use_attention_unknown are not supported: the published "
                "Steerling checkpoints use linear concept heads"
            )
        for name in ("topk_known", "topk_known_features", "unknown_topk"):
            v = getattr(c, name)
            if v is not None and v <= 0:
                bad(f"{name} must be positive or null, got {v}")


# Upper bounds far above any real model (Steerling-8B: 32 layers, 4096 wide, context 4096),
# so that a forged config cannot make `info` / `plan` build billions of layers or tensors
# with more elements than memory could ever hold.
INT_BOUNDS: dict[str, tuple[int, int]] = {
    "n_layers": (1, 1024), "n_head": (1, 1024), "n_kv_heads": (1, 1024), "n_embd": (1, 2**17),
    "block_size": (1, 2**21), "diff_block_size": (1, 2**16), "mlp_ratio": (1, 64),
    "intermediate_size": (1, 2**20),
}
CONCEPT_INT_BOUNDS: dict[str, tuple[int, int]] = {
    "n_concepts": (1, 2**24), "n_unknown_concepts": (1, 2**24), "factorize_rank": (1, 2**17),
    "block_size": (1, 2**24), "pad_multiple": (1, 2**16), "inject_layer": (0, 1023), "max_concepts": (1, 2**24),
    "topk_known": (1, 2**24), "topk_known_features": (1, 2**24), "unknown_topk": (1, 2**24),
}


def check_bounds(cfg: SteerlingConfig, bad) -> None:
    """Integers within :data:`INT_BOUNDS` / :data:`CONCEPT_INT_BOUNDS`; floats finite,
    ``norm_eps`` and ``rope_base`` positive, ``clip_qkv`` positive or null. ``bad(msg)`` raises."""
    def ints(obj, bounds, prefix=""):
        for name, (lo, hi) in bounds.items():
            v = getattr(obj, name)
            if v is not None and not lo <= v <= hi:
                bad(f"'{prefix}{name}' is {v}; expected an integer from {lo} to {hi}")

    ints(cfg, INT_BOUNDS)
    for name, positive in (("norm_eps", True), ("rope_base", True), ("clip_qkv", True)):
        v = getattr(cfg, name)
        if v is not None and (not math.isfinite(v) or (positive and v <= 0)):
            bad(f"'{name}' is {v}; expected a finite number > 0" + (" or null" if name == "clip_qkv" else ""))
    if cfg.diff_block_size > cfg.block_size:
        bad(f"'diff_block_size' {cfg.diff_block_size} is larger than the context 'block_size' {cfg.block_size}")
    if cfg.concept is not None:
        ints(cfg.concept, CONCEPT_INT_BOUNDS, "concept." if cfg.schema == "native" else "")
        if not math.isfinite(cfg.concept.inject_alpha):
            bad(f"'inject_alpha' is {cfg.concept.inject_alpha}; expected a finite number")


def to_flat_dict(cfg: SteerlingConfig) -> dict[str, Any]:
    """config.json in the published flat schema (``model_type: steerling``)."""
    out: dict[str, Any] = {"model_type": "steerling", "architectures": ["SteerlingForCausalLM"]}
    for name in _ARCH_FIELDS:
        value = getattr(cfg, name)
        if name in ("start_header_id", "end_header_id", "eot_id") and value is None:
            continue
        out[name] = value
    if cfg.concept is not None:
        for name in _CONCEPT_FIELDS:
            out[_FLAT_CONCEPT_NAME[name]] = getattr(cfg.concept, name)
    return out


def to_native_dict(cfg: SteerlingConfig) -> dict[str, Any]:
    """config.json in the reference's native schema (``model_type: causal_diffusion``)."""
    out: dict[str, Any] = {"model_type": "causal_diffusion"}
    token_fields = set(_TOKEN_FIELDS)
    for name in _ARCH_FIELDS:
        if name in token_fields or name == "torch_dtype":
            continue
        out[name] = getattr(cfg, name)
    out["instruct"] = cfg.instruct
    if cfg.concept is not None:
        out["concept"] = dataclasses.asdict(cfg.concept)
    return out


def load_config(model_dir: str | Path) -> SteerlingConfig:
    """Read and validate ``<model_dir>/config.json``.

    Raises:
        ConfigError: the directory or file is missing, is not valid JSON, or fails
            :func:`parse_config`.
    """
    model_dir = Path(model_dir)
    path = model_dir / "config.json"
    if not model_dir.is_dir():
        raise ConfigError(f"{model_dir}: no such model directory")
    if not path.is_file():
        raise ConfigError(f"{path}: missing; a Steerling checkpoint directory holds config.json and safetensors weights")
    try:
        data = read_json(path, max_bytes=CONFIG_MAX_BYTES)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return parse_config(data, source=str(path))


__all__ = [
    "ConceptConfig", "SteerlingConfig", "parse_config", "validate_config", "load_config",
    "to_flat_dict", "to_native_dict", "BASE_VOCAB_SIZE", "INSTRUCT_VOCAB_SIZE",
]
