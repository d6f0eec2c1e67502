"""The shipped default model (steerling_lite/assets/default-model): format, size, loading in every
quant mode, real-word generation, exact attribution, and that it is what ``--model``-less commands open."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest
import torch

from steerling_lite import GenerationConfig, Steerling
from steerling_lite.loading.checkpoint import open_checkpoint
from steerling_lite.model.concept_heads import decompose
from steerling_lite.loading.default_model import data_dir, default_model_dir, ensure_default_model, shipped_model_dir

SHIPPED = shipped_model_dir()
WORDS = {w for w in (Path(__file__).parent / "data" / "common_words.txt").read_text().split() if not w.startswith("#")}
PUBLISHED_COLUMNS = [
    "concept_id", "concept_name", "concept_description", "head", "public_group_id",
    "group_name", "is_steerable", "is_tone", "is_alignment", "is_demographic",
]
FIRST_SPECIAL_ID = 100257  # <|endoftext|>; every id from here up is a special token
QUANTS = ["none", "int8", "nf4", "fp4"] if "quant" in inspect.signature(Steerling.load).parameters else ["none"]

_LOADED: dict[str, Steerling] = {}


def load(quant: str = "none") -> Steerling:
    if quant not in _LOADED:
        kwargs = {"quant": quant} if quant != "none" or len(QUANTS) > 1 else {}
        _LOADED[quant] = Steerling.load(SHIPPED, device="cpu", dtype="fp32" if quant == "none" else "auto", **kwargs)
    return _LOADED[quant]


def test_default_model_is_the_shipped_checkpoint(_isolated_home):
    assert default_model_dir() == SHIPPED
    assert ensure_default_model() == SHIPPED
    assert not (data_dir() / "models").exists()  # nothing written on first use
    ckpt = open_checkpoint(SHIPPED)
    cfg = ckpt.config
    assert cfg.schema == "flat" and cfg.vocab_size == 100281 and cfg.interpretable
    assert cfg.concept.use_epsilon_correction and cfg.concept.factorize_unknown
    assert 128 % cfg.diff_block_size == 0  # the CLI's default --max-new-tokens works
    size = (SHIPPED / "model.safetensors").stat().st_size
    assert size <= 45 * 10**6, f"the shipped checkpoint is {size / 1e6:.1f} MB; the limit is 45 MB"
    assert {p.name for p in SHIPPED.iterdir()} >= {
        "config.json", "model.safetensors", "concept_labels.parquet", "MODEL_CARD.md", "loss_curves.png"}


def test_fallback_writes_random_weights_when_the_assets_are_missing(monkeypatch, tmp_path, capsys):
    import steerling_lite.loading.default_model as dm

    monkeypatch.setattr(dm, "shipped_model_dir", lambda: tmp_path / "missing")
    path = dm.ensure_default_model()
    assert path == data_dir() / "models" / dm.FALLBACK_MODEL_NAME
    assert json.loads((path / "config.json").read_text())["n_layers"] == 2
    assert "output is noise" in capsys.readouterr().err


def test_labels_file_has_the_published_columns_and_matches_the_heads():
    import pandas as pd

    labels = pd.read_parquet(SHIPPED / "concept_labels.parquet")
    assert list(labels.columns) == PUBLISHED_COLUMNS
    c = open_checkpoint(SHIPPED).config.concept
    known = labels[labels["head"] == "known"]
    disc = labels[labels["head"] == "unknown"]
    assert known["concept_id"].tolist() == list(range(c.n_concepts))
    assert disc["concept_id"].tolist() == list(range(c.n_concepts, c.n_concepts + c.n_unknown_concepts))
    assert known["concept_name"].is_unique and known["is_steerable"].all() and not disc["is_steerable"].any()
    assert {"noun.animal", "noun.food", "verb.motion"} <= set(known["concept_name"])
    assert str(labels["public_group_id"].dtype) == "Int64"


@pytest.mark.parametrize("quant", QUANTS)
def test_loads_in_every_quant_mode_and_generates_real_words(quant):
    lm = load(quant)
    assert lm.quant == quant if hasattr(lm, "quant") else quant == "none"
    texts = []
    for prompt, seed in (("The", 0), ("A small", 1)):
        r = lm.generate(prompt, GenerationConfig(max_new_tokens=32, seed=seed))
        ids = r.token_ids
        assert len(ids) >= 24, r
        assert all(i < FIRST_SPECIAL_ID for i in ids), f"special tokens generated: {ids}"
        assert len(set(ids)) >= 0.4 * len(ids), f"repetitive output: {r.text!r}"
        longest = max(len(m.group(0)) // len(m.group(1)) for m in re.finditer(r"(\b\w+\b\W*)\1*", r.text)) if r.text else 0
        assert longest <= 3, f"a word repeated {longest} times in a row: {r.text!r}"
        texts.append(r.text)
    words = re.findall(r"[a-z]+", " ".join(texts).lower())
    real = sum(w in WORDS for w in words)
    assert len(words) >= 15 and real >= 0.7 * len(words), f"{real}/{len(words)} real words: {texts}"


def test_attribution_verifies_and_decomposition_is_exact():
    lm = load("none")
    try:
        from steerling_lite.interpret.attribution import explain
    except ImportError:  # pragma: no cover - the attribution module is optional here
        explain = None
    if explain is not None:
        attribution = explain(lm, "A small dog", GenerationConfig(max_new_tokens=16, seed=0))
        check = attribution.verify()
        assert check.passed, check
        assert check.n_tokens >= 8
    # the same identity computed directly: known + discovered + epsilon == logit of every position
    ids = torch.tensor([lm.tokenizer.encode("A small dog: a domestic animal that barks.")])
    with torch.no_grad():
        h = lm.model.transformer(ids)[0]
        d = decompose(h, lm.model.known_head, lm.model.unknown_head, True)
        W = lm.model.lm_head_weight.float()
        logits = lm.model.lm_logits(h).float()
        y = logits.argmax(-1)
        known = head_logit(lm.model.known_head, d.known, W[y])
        disc = head_logit(lm.model.unknown_head, d.unknown, W[y])
        eps = (d.epsilon.float() * W[y]).sum(-1)
    torch.testing.assert_close(known + disc + eps, logits.gather(-1, y[:, None])[:, 0], rtol=1e-4, atol=1e-3)
    # the concept heads carry most of the hidden state: epsilon is small
    assert float(d.epsilon.norm(dim=-1).mean() / h.norm(dim=-1).mean()) < 0.5


def head_logit(head, out, w_y: torch.Tensor) -> torch.Tensor:
    """``Σ_k w_k E[c_k] · W_lm[y]`` per row: a head's part of the logit of token y (``w_y`` ``(N, D)``)."""
    dots = torch.einsum("nkd,nd->nk", head.embedding(out.indices).float(), w_y)
    return (out.weights * dots).sum(-1)


def test_generate_command_uses_the_default_model(capsys):
    from steerling_lite.cli import main

    assert main(["generate", "--prompt", "The", "-n", "16", "--seed", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["text"].strip()
    assert all(i < FIRST_SPECIAL_ID for i in out["token_ids"])
