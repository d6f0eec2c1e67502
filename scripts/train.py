#!/usr/bin/env python3
"""Train a small Steerling model (block-causal masked diffusion + known/discovered concept heads).

One config file per run (TOML or JSON, see ``configs/train/``); the data directory is made
by ``scripts/prepare_data.py``. The run directory holds ``state.pt`` (resumable:
weights, optimizer, RNG, loss history), ``log.jsonl`` and ``loss_curves.png``; at the
end the model is exported in the published checkpoint format (flat ``config.json``,
``model.safetensors`` with the tensor names of
:func:`steerling_lite.loading.random_checkpoint.write_random_checkpoint`, full 100281-token
vocabulary) together with ``concept_labels.parquet``.

Usage::

    python scripts/prepare_data.py                        # WordNet -> checkpoints/data/wordnet
    python scripts/train.py configs/train/default.toml    # resumes if the run dir has state.pt
    python scripts/train.py CONFIG --set train.steps=20 --set output.run_dir=/tmp/run

Losses (per step, on a batch of ``batch_size`` windows of ``seq_len`` tokens), composed as
the reference's ``InterpretableCausalDiffusionLM.forward`` composes the heads:

- **masked diffusion** (MDLM, Sahoo et al. 2024; LLaDA, Nie et al. 2025): each sequence
  draws a mask ratio ``t ~ U[t_min, 1]`` (stratified across the batch); every eligible
  token is replaced by ``<|mask|>`` with probability ``t``; the loss is the cross-entropy
  of the masked tokens weighted ``1/t``, summed and divided by the eligible length.
  With probability ``prefix_clean_prob`` a sequence keeps a random-length prefix clean
  (only the suffix is eligible), which is the situation of block-by-block generation.
  Attention is block-causal (``Transformer.forward`` without a cache). The LM reads the
  composed state ``unk_hat.detach() + epsilon + known`` with ``epsilon = hidden -
  (unk_hat.detach() + known)``: the hidden state in value, so the LM loss trains the
  transformer and the runtime's logits are exactly those trained.
- **known-concept supervision**: BCE of the known head's logits (all concepts, read from the
  hidden state) against the concept labels of the entry (labelled span) each token belongs to.
- **epsilon** (the reference's ``epsilon_true``): ``||hidden.detach() - (known +
  discovered)||^2 / ||hidden||^2``. Its gradient trains the known concept vectors and the
  discovered head (top-k sparse, factorized, reading the detached hidden state) to
  reconstruct what the known concepts leave, and keeps epsilon small.

Vocabulary: the softmax runs over the tokens that occur in the training corpus (at least
``min_token_count`` times) plus one
**pooled row** shared by every other token of the 100281-token vocabulary (logit
``h·u + log(n_pooled)``): exactly the full-vocabulary softmax in which all unseen tokens
have the same embedding ``u``, at a fraction of the cost. The exported checkpoint has
all 100281 rows (unseen ones equal to ``u``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from steerling_lite.atomic import atomic_directory
from steerling_lite.loading.checkpoint import expected_shapes, file_name
from steerling_lite.loading.config import BASE_VOCAB_SIZE, ConceptConfig, SteerlingConfig, validate_config
from steerling_lite.model.transformer import SteerlingModel
from steerling_lite.loading.random_checkpoint import random_tensor
from steerling_lite.loading.tokenizer import SteerlingTokenizer

MASK_ID = 100280
LABELS_FILE = "concept_labels.parquet"
PLOT_FILE = "loss_curves.png"
STATE_FILE = "state.pt"
CARD_FILE = "MODEL_CARD.md"


# ---------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------
@dataclass
class ModelSection:
    """Architecture of the trained model (config.json fields of the flat schema)."""

    n_layers: int = 4
    n_head: int = 4
    n_kv_heads: int = 2
    n_embd: int = 128
    intermediate_size: int = 384
    block_size: int = 512  # context, tokens
    diff_block_size: int = 16
    rope_base: float = 10000.0
    n_unknown_concepts: int = 1024
    factorize_rank: int = 32
    topk_known: int = 8
    topk_known_features: int = 8
    unknown_topk: int = 16
    inject_layer: int = 2
    # initialisation (not stored in config.json): token embedding std, and the initial weight of the
    # blocks' post-norms ln_1/ln_2 (small: each block starts close to the identity, so the token's own
    # embedding is not swamped by the normalised sub-layer outputs of the post-norm blocks)
    init_embedding_std: float = 0.1
    init_block_norm: float = 0.2


@dataclass
class TrainSection:
    """Optimisation settings; ``steps`` fixes the learning-rate schedule, ``max_minutes`` stops early."""

    seq_len: int = 256
    batch_size: int = 16
    steps: int = 3000
    lr: float = 2e-3
    min_lr_frac: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    t_min: float = 0.02
    prefix_clean_prob: float = 0.5
    concept_loss_weight: float = 1.0
    epsilon_loss_weight: float = 1.0
    bf16_autocast: bool = True
    threads: int = 0  # 0: torch's default
    seed: int = 0
    eval_every: int = 250
    eval_batches: int = 8
    ckpt_every: int = 250
    max_minutes: float = 0.0  # 0: no limit
    log_every: int = 10


@dataclass
class DataSection:
    dir: str = "checkpoints/data/wordnet"
    train_limit_tokens: int = 0  # 0: all; else only the first N tokens of the train stream
    min_token_count: int = 1  # rarer corpus tokens share the pooled row (input and output)


@dataclass
class OutputSection:
    run_dir: str = "checkpoints/runs/default"
    export_dir: str = ""  # "" : <run_dir>/model
    torch_dtype: str = "bfloat16"


@dataclass
class RunConfig:
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainSection = field(default_factory=TrainSection)
    data: DataSection = field(default_factory=DataSection)
    output: OutputSection = field(default_factory=OutputSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_run_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a TOML / JSON run config and apply ``section.key=value`` overrides (values parsed as JSON,
    else kept as strings).

    Raises:
        ValueError: an unknown section or key, or a value of the wrong type.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        text = p.read_text(encoding="utf-8")
        raw = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ValueError(f"--set {item!r}: expected section.key=value")
        section, name = key.split(".", 1)
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        raw.setdefault(section, {})[name] = parsed
    cfg = RunConfig()
    for section, values in raw.items():
        if not hasattr(cfg, section) or not isinstance(values, dict):
            raise ValueError(f"{path}: unknown section [{section}]; expected model, train, data, output")
        obj = getattr(cfg, section)
        names = {f.name: f for f in dataclasses.fields(obj)}
        for k, v in values.items():
            if k not in names:
                raise ValueError(f"{path}: unknown key {section}.{k}; expected one of {', '.join(names)}")
            default = getattr(obj, k)
            if isinstance(default, bool) != isinstance(v, bool) or (
                isinstance(default, (int, float)) and not isinstance(v, (int, float))
            ) or (isinstance(default, str) and not isinstance(v, str)):
                raise ValueError(f"{path}: {section}.{k} is {v!r}; expected {type(default).__name__}")
            if isinstance(default, float):
                v = float(v)
            setattr(obj, k, v)
    return cfg


def steerling_config(m: ModelSection, n_concepts: int, vocab_size: int = BASE_VOCAB_SIZE, torch_dtype: str = "bfloat16") -> SteerlingConfig:
    """The published (flat) config of the model; ``vocab_size`` other than 100281 only for training."""
    concept = ConceptConfig(
        n_concepts=n_concepts, n_unknown_concepts=m.n_unknown_concepts, concept_dim=m.n_embd,
        topk_known=m.topk_known, topk_known_features=m.topk_known_features, unknown_topk=m.unknown_topk,
        factorize_unknown=True, factorize_rank=m.factorize_rank, use_epsilon_correction=True,
        inject_layer=m.inject_layer, block_size=4096,
    )
    cfg = SteerlingConfig(
        n_layers=m.n_layers, n_head=m.n_head, n_kv_heads=m.n_kv_heads, n_embd=m.n_embd,
        vocab_size=vocab_size, block_size=m.block_size, diff_block_size=m.diff_block_size,
        intermediate_size=m.intermediate_size, rope_base=m.rope_base, interpretable=True,
        concept=concept, torch_dtype=torch_dtype, schema="flat",
    )
    if vocab_size == BASE_VOCAB_SIZE:
        validate_config(cfg, source="run config [model]")
    return cfg


# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------
@dataclass
class Corpus:
    """Token streams in compact ids, their entry (span) ids, and the entries' concept labels.

    Attributes:
        compact_ids: ``(n_compact,)`` long: full-vocabulary id of each compact id except the
            last, which is the pooled row of every other token.
        to_compact: ``(100281,)`` long: compact id of every full id (pooled id if unseen).
        train, heldout: ``(N,)`` long compact token ids; ``*_spans`` int32 entry ids (-1: separator).
        label_offsets, label_ids: CSR of each entry's known concept ids.
        n_concepts: number of known concepts (rows of known_concepts.parquet).
    """

    compact_ids: Tensor
    to_compact: Tensor
    train: Tensor
    train_spans: Tensor
    heldout: Tensor
    heldout_spans: Tensor
    label_offsets: Tensor
    label_ids: Tensor
    n_concepts: int
    data_dir: Path

    @property
    def n_compact(self) -> int:
        return len(self.compact_ids) + 1

    @property
    def pooled_id(self) -> int:
        return len(self.compact_ids)

    @property
    def n_pooled(self) -> int:
        return BASE_VOCAB_SIZE - len(self.compact_ids)


def load_corpus(data_dir: str | Path, train_limit_tokens: int = 0, min_token_count: int = 1) -> Corpus:
    """Load what ``prepare_data.py`` wrote and build the compact vocabulary: the train tokens that
    occur at least ``min_token_count`` times, plus ``<|mask|>``; every other token maps to the pooled row.

    Raises:
        FileNotFoundError: the directory or one of its files is missing (run prepare_data.py).
    """
    d = Path(data_dir)
    need = ["train_tokens.npy", "train_spans.npy", "heldout_tokens.npy", "heldout_spans.npy",
            "labels_offsets.npy", "labels_ids.npy", "known_concepts.parquet"]
    missing = [n for n in need if not (d / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{d}: missing {', '.join(missing)}; run scripts/prepare_data.py --out {d}")
    load = lambda n: np.load(d / n, allow_pickle=False)  # noqa: E731
    train = load("train_tokens.npy").astype(np.int64)
    train_spans = load("train_spans.npy")
    if train_limit_tokens:
        train, train_spans = train[:train_limit_tokens], train_spans[:train_limit_tokens]
    heldout = load("heldout_tokens.npy").astype(np.int64)
    counts = np.bincount(train, minlength=BASE_VOCAB_SIZE)
    counts[MASK_ID] = max(1, min_token_count)
    seen = np.flatnonzero(counts >= max(1, min_token_count))
    to_compact = np.full(BASE_VOCAB_SIZE, len(seen), dtype=np.int64)
    to_compact[seen] = np.arange(len(seen))
    import pyarrow.parquet as pq

    n_concepts = pq.read_metadata(d / "known_concepts.parquet").num_rows
    return Corpus(
        compact_ids=torch.from_numpy(seen), to_compact=torch.from_numpy(to_compact),
        train=torch.from_numpy(to_compact[train]), train_spans=torch.from_numpy(train_spans.astype(np.int64)),
        heldout=torch.from_numpy(to_compact[heldout]),
        heldout_spans=torch.from_numpy(load("heldout_spans.npy").astype(np.int64)),
        label_offsets=torch.from_numpy(load("labels_offsets.npy")),
        label_ids=torch.from_numpy(load("labels_ids.npy").astype(np.int64)),
        n_concepts=n_concepts, data_dir=d,
    )


def concept_targets(spans: Tensor, corpus: Corpus) -> tuple[Tensor, Tensor]:
    """Multi-hot known-concept targets of the labelled positions.

    Args:
        spans: ``(N,)`` long entry id per position, -1 for separators.

    Returns:
        ``(valid, targets)``: ``(N,)`` bool labelled positions and ``(n_valid, n_concepts)`` fp32 0/1.
    """
    valid = spans >= 0
    s = spans[valid]
    start = corpus.label_offsets[s]
    counts = corpus.label_offsets[s + 1] - start
    rows = torch.repeat_interleave(torch.arange(len(s)), counts)
    within = torch.arange(int(counts.sum())) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    cols = corpus.label_ids[torch.repeat_interleave(start, counts) + within]
    targets = torch.zeros(len(s), corpus.n_concepts)
    targets[rows, cols] = 1.0
    return valid, targets


def sample_windows(stream: Tensor, spans: Tensor, batch: int, length: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """``batch`` random windows ``(batch, length)`` of token ids and their span ids."""
    if len(stream) <= length:
        raise ValueError(f"the token stream ({len(stream)} tokens) is shorter than seq_len {length}")
    starts = torch.randint(0, len(stream) - length, (batch,), generator=gen)
    idx = starts.unsqueeze(1) + torch.arange(length)
    return stream[idx], spans[idx]


def noise(x: Tensor, t_min: float, prefix_clean_prob: float, gen: torch.Generator, mask_id: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Forward masking process of masked diffusion.

    Args:
        x: ``(B, T)`` clean token ids.

    Returns:
        ``(x_noisy, masked, t, eligible)``: noisy ids ``(B, T)``, bool ``(B, T)`` masked positions,
        ``(B,)`` mask ratios (stratified ``U[t_min, 1]``), ``(B,)`` eligible length (T minus the clean prefix).
    """
    B, T = x.shape
    u0 = torch.rand((), generator=gen)
    t = t_min + (1 - t_min) * ((u0 + torch.arange(B) / B) % 1.0)
    cut = torch.randint(0, T, (B,), generator=gen)
    use_prefix = torch.rand(B, generator=gen) < prefix_clean_prob
    cut = torch.where(use_prefix, cut, torch.zeros_like(cut))
    eligible = torch.arange(T).unsqueeze(0) >= cut.unsqueeze(1)
    masked = (torch.rand(B, T, generator=gen) < t.unsqueeze(1)) & eligible
    return torch.where(masked, torch.full_like(x, mask_id), x), masked, t, (T - cut).float()


# ---------------------------------------------------------------------------------------
# model and losses
# ---------------------------------------------------------------------------------------
def build_model(cfg_train: SteerlingConfig, seed: int, embedding_std: float = 0.02, block_norm: float = 1.0) -> SteerlingModel:
    """A fresh fp32 model: the reference's initialisation (``random_tensor``: N(0, 0.02), output
    projections scaled by ``(2 n_layers)^-1/2``, norms 1) except the token embedding, N(0,
    ``embedding_std``), and the blocks' ``ln_1``/``ln_2`` weights, ``block_norm``."""
    model = SteerlingModel(cfg_train)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            t = random_tensor(name, tuple(p.shape), cfg_train, gen, torch.float32)
            if name.endswith("tok_emb.weight"):
                t = t * (embedding_std / 0.02)
            elif name.endswith(("ln_1.weight", "ln_2.weight")):
                t = torch.full_like(t, block_norm)
            p.copy_(t)
    model.transformer.tie_weights()
    return model


@dataclass
class Losses:
    total: Tensor
    mdlm: Tensor
    concept: Tensor
    epsilon: Tensor
    masked_ce: Tensor  # unweighted mean CE over masked tokens
    masked_acc: Tensor
    n_masked: int


def lm_logits(model: SteerlingModel, states: Tensor, log_pooled: float) -> Tensor:
    """Compact-vocabulary LM logits ``(M, n_compact)`` fp32 of states ``(M, D)``; the pooled column
    gets ``+ log(n_pooled)`` (its probability is the total of the unseen tokens)."""
    logits = model.lm_logits(states).float()
    logits[:, -1] += log_pooled
    return logits


def compute_losses(
    model: SteerlingModel, x: Tensor, spans: Tensor, corpus: Corpus, tc: TrainSection, gen: torch.Generator,
) -> Losses:
    """Forward pass and all training losses for a clean batch ``x`` ``(B, T)`` (compact ids)."""
    B, T = x.shape
    mask_id = int(corpus.to_compact[MASK_ID])
    x_noisy, masked, t, eligible = noise(x, tc.t_min, tc.prefix_clean_prob, gen, mask_id)
    hidden = model.transformer(x_noisy)  # (B, T, D) block-causal, full sequence
    h = hidden.reshape(B * T, -1)
    hd = h.detach()
    # The reference's decomposition (InterpretableCausalDiffusionLM.forward): the known head reads
    # the hidden state, the discovered head its detached copy; the LM reads
    # composed = unk_hat.detach() + epsilon + known with epsilon = hidden - (unk_hat.detach() + known),
    # equal to the hidden state in value, so the LM gradient trains the transformer only.
    known = model.known_head(h)
    unknown = model.unknown_head(hd)
    unk_for_lm = unknown.features.detach()
    epsilon = h - (unk_for_lm + known.features)
    composed = unk_for_lm + epsilon + known.features
    # epsilon loss ("epsilon_true" of the reference): what the heads leave of the detached hidden
    # state; trains the concept vectors E_k and the discovered head to reconstruct it.
    eps_true = hd.float() - (known.features.float() + unknown.features.float())
    eps_loss = eps_true.pow(2).sum() / hd.float().pow(2).sum().clamp_min(1e-6)
    # known-concept supervision on labelled spans
    valid, targets = concept_targets(spans.reshape(-1), corpus)
    if valid.any():
        concept_loss = F.binary_cross_entropy_with_logits(model.known_head.all_logits(h[valid]), targets)
    else:
        concept_loss = torch.zeros(())
    # masked diffusion on the composed state
    m = masked.reshape(-1)
    if m.any():
        logits = lm_logits(model, composed[m], math.log(corpus.n_pooled))
        y = x.reshape(-1)[m]
        ce = F.cross_entropy(logits, y, reduction="none")
        seq = torch.arange(B).repeat_interleave(T)[m]
        weight = 1.0 / (t[seq] * eligible[seq])
        mdlm = (ce * weight).sum() / B
        masked_ce = ce.mean().detach()
        with torch.no_grad():
            acc = (logits.argmax(-1) == y).float().mean()
    else:
        mdlm = masked_ce = acc = torch.zeros(())
    total = mdlm + tc.concept_loss_weight * concept_loss + tc.epsilon_loss_weight * eps_loss
    return Losses(total, mdlm, concept_loss, eps_loss, masked_ce, acc, int(m.sum()))


def lr_at(step: int, tc: TrainSection, elapsed_s: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_frac * lr`` at ``steps``, or earlier at
    ``max_minutes`` of training time when that comes first (progress is the larger of the step
    and time fractions), so a run cut by the time limit still ends annealed."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    progress = (step - tc.warmup_steps) / max(1, tc.steps - tc.warmup_steps)
    if tc.max_minutes:
        progress = max(progress, elapsed_s / (tc.max_minutes * 60))
    progress = min(1.0, progress)
    return tc.lr * (tc.min_lr_frac + (1 - tc.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: SteerlingModel, tc: TrainSection) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices except the embedding, none on norms."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "tok_emb" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tc.lr, betas=(0.9, 0.95), eps=1e-8)


@torch.no_grad()
def evaluate(model: SteerlingModel, corpus: Corpus, tc: TrainSection, n_batches: int) -> dict[str, float]:
    """Held-out losses on fixed windows and fixed noise (seed 1234): comparable across steps."""
    model.eval()
    gen = torch.Generator().manual_seed(1234)
    length = min(tc.seq_len, len(corpus.heldout) - 1)
    sums: dict[str, float] = {"mdlm": 0.0, "concept": 0.0, "epsilon": 0.0, "masked_ce": 0.0, "masked_acc": 0.0}
    with _autocast(tc.bf16_autocast):
        for _ in range(n_batches):
            x, spans = sample_windows(corpus.heldout, corpus.heldout_spans, tc.batch_size, length, gen)
            ls = compute_losses(model, x, spans, corpus, dataclasses.replace(tc, prefix_clean_prob=0.0), gen)
            for k in sums:
                sums[k] += float(getattr(ls, k))
    model.train()
    return {f"heldout_{k}": v / n_batches for k, v in sums.items()}


def _autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


# ---------------------------------------------------------------------------------------
# state, plot, export
# ---------------------------------------------------------------------------------------
def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically (temp file + rename)."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def plot_losses(history: dict[str, list], out: Path, title: str) -> bool:
    """Loss curves PNG: masked diffusion (train, held-out), concept BCE and epsilon. False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[train]'): no loss plot", file=sys.stderr)
        return False
    steps = np.asarray(history.get("step", []))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = [("mdlm", "masked-diffusion loss (1/t weighted)", "heldout_mdlm"),
              ("concept", "known-concept BCE", "heldout_concept"),
              ("epsilon", "epsilon ||h-(known+disc)||²/||h||²", "heldout_epsilon")]
    for ax, (key, label, hkey) in zip(axes, panels):
        vals = np.asarray(history.get(key, []), dtype=float)
        if len(vals):
            k = max(1, min(25, len(vals) // 10))
            smooth = np.convolve(vals, np.ones(k) / k, mode="valid")
            ax.plot(steps[:len(vals)], vals, alpha=0.25, color="C0", lw=0.8)
            ax.plot(steps[k - 1:len(vals)], smooth, color="C0", label="train")
        ev_steps = history.get("eval_step", [])
        if ev_steps and history.get(hkey):
            ax.plot(ev_steps, history[hkey], "o-", color="C3", ms=3, label="held-out")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, out)
    return True


def full_vocab_state(model: SteerlingModel, corpus: Corpus, cfg_full: SteerlingConfig, dtype: torch.dtype) -> dict[str, Tensor]:
    """The published-format tensors: ``{name in file: tensor}`` with a 100281-row embedding whose
    unseen rows are the pooled row ``u``; checked against the config's expected shapes."""
    sd = model.state_dict()
    shapes = expected_shapes(cfg_full)
    out: dict[str, Tensor] = {}
    for name, shape in shapes.items():
        t = sd[name]
        if name == "transformer.tok_emb.weight":
            full = t[corpus.pooled_id].unsqueeze(0).repeat(BASE_VOCAB_SIZE, 1)
            full[corpus.compact_ids] = t[: corpus.pooled_id]
            t = full
        if tuple(t.shape) != shape:
            raise RuntimeError(f"export: {name} has shape {tuple(t.shape)}, the config expects {shape}")
        out[file_name(cfg_full, name)] = t.detach().to(dtype).contiguous()
    return out


def discovered_rows(model: SteerlingModel, corpus: Corpus, tok: SteerlingTokenizer, top: int = 4) -> list[dict[str, Any]]:
    """concept_labels rows of the discovered concepts, named by the tokens their vectors promote most
    (``E_u[c] · W_lm``, over the corpus tokens). As in the published table, discovered concept ``d``
    has ``concept_id = n_concepts + d`` and ``head = "unknown"``."""
    head = model.unknown_head
    n = head.n_concepts
    with torch.no_grad():
        emb = head.embedding(torch.arange(n)).float()
        w = model.transformer.tok_emb.weight[: corpus.pooled_id].float()
        scores = emb @ w.t()
        special = corpus.compact_ids >= 100257
        scores[:, special] = -float("inf")
        best = scores.topk(top, dim=-1).indices
    rows = []
    for c in range(n):
        words = [tok.decode([int(corpus.compact_ids[i])]).strip() or repr(tok.decode([int(corpus.compact_ids[i])])) for i in best[c]]
        rows.append({
            "concept_id": corpus.n_concepts + c, "concept_name": f"discovered #{c}: " + ", ".join(words),
            "concept_description": "discovered concept; tokens it promotes most: " + ", ".join(words),
            "head": "unknown", "public_group_id": None, "group_name": None, "is_steerable": False,
            "is_tone": False, "is_alignment": False, "is_demographic": False,
        })
    return rows


TRAINING_START, TRAINING_END = "<!-- training:start -->", "<!-- training:end -->"


def export(
    model: SteerlingModel, corpus: Corpus, rc: RunConfig, out_dir: Path, history: dict[str, list],
    plot: Path | None, summary: str,
) -> Path:
    """Write the model directory atomically: config.json, model.safetensors, concept_labels.parquet,
    the loss plot, and MODEL_CARD.md (an existing card keeps everything outside its training section)."""
    import pandas as pd
    from safetensors.torch import save_file

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import replace_section
    from prepare_data import LABEL_COLUMNS, labels_frame

    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[rc.output.torch_dtype]
    cfg_full = steerling_config(rc.model, corpus.n_concepts, torch_dtype=rc.output.torch_dtype)
    tensors = full_vocab_state(model, corpus, cfg_full, dtype)
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, replace=True) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg_full.to_dict(), indent=2) + "\n")
        known = pd.read_parquet(corpus.data_dir / "known_concepts.parquet")[LABEL_COLUMNS]
        unknown = labels_frame(discovered_rows(model, corpus, SteerlingTokenizer()))
        labels = pd.concat([known, unknown], ignore_index=True)
        labels_frame(labels.to_dict("records")).to_parquet(tmp / LABELS_FILE, index=False)
        if plot is not None and plot.is_file():
            shutil.copyfile(plot, tmp / PLOT_FILE)
        old_card = out_dir / CARD_FILE
        card = old_card.read_text(encoding="utf-8") if old_card.is_file() else "# Model card\n"
        (tmp / CARD_FILE).write_text(replace_section(card, TRAINING_START, TRAINING_END, summary), encoding="utf-8")
    return out_dir


def training_summary(rc: RunConfig, corpus: Corpus, state: dict[str, Any], n_params: int) -> str:
    """Markdown of the training facts for the model card."""
    h = state["history"]
    last = {k: h[k][-1] for k in ("heldout_mdlm", "heldout_masked_ce", "heldout_masked_acc", "heldout_concept", "heldout_epsilon") if h.get(k)}
    tc, m = rc.train, rc.model
    lines = [
        "## Training run",
        "",
        f"- Steps: {state['step']} of {tc.steps} (batch {tc.batch_size} x {tc.seq_len} tokens), "
        f"wall time {state['elapsed_s'] / 60:.1f} min on {torch.get_num_threads()} CPU thread(s) "
        f"({'bf16 autocast' if tc.bf16_autocast else 'fp32'}).",
        f"- Tokens seen: {state['step'] * tc.batch_size * tc.seq_len:,}; training corpus {len(corpus.train):,} tokens, "
        f"held-out {len(corpus.heldout):,}; compact vocabulary {len(corpus.compact_ids):,} corpus tokens + 1 pooled row "
        f"for the other {corpus.n_pooled:,}.",
        f"- Model: {m.n_layers} layers, n_embd {m.n_embd}, {m.n_head} heads ({m.n_kv_heads} KV), SwiGLU {m.intermediate_size}, "
        f"context {m.block_size}, diffusion block {m.diff_block_size}; {corpus.n_concepts} known concepts (top-{m.topk_known_features}), "
        f"{m.n_unknown_concepts} discovered (rank {m.factorize_rank}, top-{m.unknown_topk}); "
        f"{n_params:,} trained parameters ({n_params - (corpus.n_compact * m.n_embd):,} outside the embedding).",
        f"- Optimiser: AdamW lr {tc.lr} (warm-up {tc.warmup_steps}, cosine to {tc.min_lr_frac:g}x), weight decay {tc.weight_decay}, "
        f"clip {tc.grad_clip}; loss weights: concept {tc.concept_loss_weight}, epsilon {tc.epsilon_loss_weight}; "
        f"t ~ U[{tc.t_min}, 1], clean prefix with probability {tc.prefix_clean_prob}.",
    ]
    if last:
        lines.append(
            "- Final held-out (training script's fixed windows, t ~ U[t_min,1], no clean prefix): "
            + ", ".join(f"{k.removeprefix('heldout_')} {v:.4f}" for k, v in last.items()) + "."
        )
    lines += ["", f"![loss curves]({PLOT_FILE})"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# main loop
# ---------------------------------------------------------------------------------------
def train(rc: RunConfig, config_path: str | None = None, fresh: bool = False, progress: bool = True) -> Path:
    """Run (or resume) training as configured and export the model; returns the export directory."""
    from tqdm import tqdm

    tc = rc.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    run_dir = Path(rc.output.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    export_dir = Path(rc.output.export_dir) if rc.output.export_dir else run_dir / "model"
    corpus = load_corpus(rc.data.dir, rc.data.train_limit_tokens, rc.data.min_token_count)
    cfg_train = steerling_config(rc.model, corpus.n_concepts, vocab_size=corpus.n_compact)
    steerling_config(rc.model, corpus.n_concepts)  # validates the exported shape now, not at the end
    torch.manual_seed(tc.seed)
    model = build_model(cfg_train, tc.seed, rc.model.init_embedding_std, rc.model.init_block_norm)
    opt = make_optimizer(model, tc)
    gen = torch.Generator().manual_seed(tc.seed)
    state_path = run_dir / STATE_FILE
    history: dict[str, list] = {}
    step, elapsed = 0, 0.0
    if state_path.is_file() and not fresh:
        state = torch.load(state_path, weights_only=True)
        if state["config"]["model"] != rc.to_dict()["model"]:
            raise ValueError(f"{state_path}: saved with a different [model] section; use --fresh or another run_dir")
        if not torch.equal(state["compact_ids"], corpus.compact_ids):
            raise ValueError(f"{state_path}: saved with a different corpus vocabulary ({rc.data.dir}); use --fresh")
        model.load_state_dict(state["model"])
        model.transformer.tie_weights()
        opt.load_state_dict(state["optim"])
        gen.set_state(state["gen"])
        history, step, elapsed = state["history"], state["step"], state["elapsed_s"]
        print(f"resumed {state_path} at step {step}", file=sys.stderr)
    (run_dir / "config.json").write_text(json.dumps({"config_file": config_path, **rc.to_dict()}, indent=2))
    n_params = sum(p.numel() for p in model.parameters())
    model.train()

    def snapshot() -> dict[str, Any]:
        return {"step": step, "model": model.state_dict(), "optim": opt.state_dict(), "gen": gen.get_state(),
                "history": history, "elapsed_s": elapsed, "config": rc.to_dict(), "compact_ids": corpus.compact_ids}

    log = open(run_dir / "log.jsonl", "a" if step else "w", encoding="utf-8")
    bar = tqdm(total=tc.steps, initial=step, desc="training", unit="step", disable=not progress, dynamic_ncols=True)
    t_last = time.perf_counter()
    stopped_early = False
    try:
        while step < tc.steps:
            if tc.max_minutes and elapsed >= tc.max_minutes * 60:
                stopped_early = True
                print(f"stopping at step {step}: max_minutes {tc.max_minutes} reached", file=sys.stderr)
                break
            lr = lr_at(step, tc, elapsed)
            for g in opt.param_groups:
                g["lr"] = lr
            x, spans = sample_windows(corpus.train, corpus.train_spans, tc.batch_size, tc.seq_len, gen)
            with _autocast(tc.bf16_autocast):
                ls = compute_losses(model, x, spans, corpus, tc, gen)
            opt.zero_grad(set_to_none=True)
            ls.total.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            step += 1
            now = time.perf_counter()
            elapsed += now - t_last
            t_last = now
            rec = {"step": step, "lr": lr, "loss": ls.total.item(), "mdlm": ls.mdlm.item(), "concept": ls.concept.item(),
                   "epsilon": ls.epsilon.item(), "masked_ce": float(ls.masked_ce), "masked_acc": float(ls.masked_acc),
                   "grad_norm": float(gnorm), "elapsed_s": round(elapsed, 2)}
            for k in ("step", "mdlm", "concept", "epsilon", "masked_ce", "masked_acc"):
                history.setdefault(k, []).append(rec[k])
            if step % tc.eval_every == 0 or step == tc.steps:
                ev = evaluate(model, corpus, tc, tc.eval_batches)
                history.setdefault("eval_step", []).append(step)
                for k, v in ev.items():
                    history.setdefault(k, []).append(v)
                rec.update(ev)
                t_last = time.perf_counter()  # evaluation time is not training time
            if step % tc.log_every == 0 or "heldout_mdlm" in rec:
                log.write(json.dumps(rec) + "\n")
                log.flush()
            bar.set_postfix(mdlm=f"{rec['mdlm']:.2f}", ce=f"{rec['masked_ce']:.2f}", bce=f"{rec['concept']:.3f}",
                            eps=f"{rec['epsilon']:.3f}", refresh=False)
            bar.update(1)
            if step % tc.ckpt_every == 0:
                save_state(state_path, snapshot())
                plot_losses(history, run_dir / PLOT_FILE, f"{run_dir.name}: step {step}")
    finally:
        bar.close()
        log.close()
    state = snapshot()
    save_state(state_path, state)
    plotted = plot_losses(history, run_dir / PLOT_FILE, f"{run_dir.name}: {step} steps, {elapsed / 60:.1f} min")
    summary = training_summary(rc, corpus, state, n_params)
    if stopped_early:
        summary += f"\n\nStopped early at step {step} by max_minutes {tc.max_minutes}."
    out = export(model, corpus, rc, export_dir, history, run_dir / PLOT_FILE if plotted else None, summary)
    print(f"exported {out}", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="run config (.toml or .json)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    p.add_argument("--fresh", action="store_true", help="ignore an existing state.pt in the run dir")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    rc = load_run_config(args.config, args.set)
    train(rc, args.config, fresh=args.fresh, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
