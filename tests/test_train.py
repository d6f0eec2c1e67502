"""scripts/prepare_data.py and scripts/train.py on the committed WordNet sample (tests/data/wordnet_sample).

A few training steps of a very small model: the corpus and concept catalog, the pooled-vocabulary
softmax against the exported full-vocabulary model, resuming, the published export format.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "tests" / "data" / "wordnet_sample"
sys.path.insert(0, str(REPO / "scripts"))

import prepare_data  # noqa: E402
import train  # noqa: E402

from steerling_lite import GenerationConfig, Steerling  # noqa: E402
from steerling_lite.loading.checkpoint import open_checkpoint  # noqa: E402

PUBLISHED_COLUMNS = [
    "concept_id", "concept_name", "concept_description", "head", "public_group_id",
    "group_name", "is_steerable", "is_tone", "is_alignment", "is_demographic",
]

SMALL = [
    "model.n_layers=1", "model.n_head=2", "model.n_kv_heads=1", "model.n_embd=32", "model.intermediate_size=64",
    "model.block_size=128", "model.diff_block_size=8", "model.n_unknown_concepts=32", "model.factorize_rank=8",
    "model.topk_known=4", "model.topk_known_features=4", "model.unknown_topk=4", "model.inject_layer=1",
    "train.seq_len=32", "train.batch_size=2", "train.eval_batches=1", "train.warmup_steps=0",
    "train.min_lr_frac=1.0", "train.threads=1", "train.bf16_autocast=false", "train.max_minutes=0",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wordnet") / "data"
    rc = prepare_data.main(["--wordnet-dir", str(SAMPLE), "--out", str(out), "--min-topic-members", "3",
                            "--min-category", "3", "--heldout-frac", "0.15"])
    assert rc == 0
    return out


def run_config(data_dir: Path, run_dir: Path, *extra: str) -> train.RunConfig:
    sets = SMALL + [f"data.dir={data_dir}", f"output.run_dir={run_dir}", f"output.export_dir={run_dir / 'model'}", *extra]
    return train.load_run_config(None, sets)


def test_parse_data_line_reads_words_pointers_and_examples():
    line = ("01322604 05 n 02 puppy 0 dog_pup 0 002 @ 01322343 n 0000 ;c 07020895 n 0000 "
            '| a young dog; "the puppy barked"; "a big puppy"  \n')
    s = prepare_data.parse_data_line(line)
    assert s.key == "n01322604" and s.pos == "n"
    assert prepare_data.LEXNAMES[s.lexfile][0] == "noun.animal"
    assert s.words == ["puppy", "dog pup"]
    assert s.hypernyms == ["n01322343"] and s.topics == ["n07020895"]
    assert s.definition == "a young dog"
    assert s.examples == ["the puppy barked", "a big puppy"]
    assert prepare_data.entry_text(s) == "Puppy, dog pup: a young dog. The puppy barked. A big puppy."
    with pytest.raises(ValueError, match="malformed WordNet data line"):
        prepare_data.parse_data_line("01322604 05 n zz puppy")


def test_prepare_data_catalog_and_labelled_spans(data_dir):
    import pandas as pd

    known = pd.read_parquet(data_dir / "known_concepts.parquet")
    assert list(known.columns) == PUBLISHED_COLUMNS
    assert known["concept_id"].tolist() == list(range(len(known)))
    assert known["concept_name"].is_unique and (known["head"] == "known").all()
    names = known["concept_name"].tolist()
    assert {"noun.animal", "noun.food", "verb.motion", "category: dog", "category: edible fruit"} <= set(names)
    assert any(n.startswith("topic: music") for n in names)
    # a category's group is its lexicographer file
    dog = known[known["concept_name"] == "category: dog"].iloc[0]
    assert names[int(dog["public_group_id"])] == "noun.animal"

    entries = [json.loads(line) for line in open(data_dir / "entries.jsonl")]
    by_text = {e["text"].split(":")[0]: e for e in entries}
    puppy = by_text["Puppy"]
    assert {names[c] for c in puppy["labels"]} >= {"noun.animal", "category: dog", "category: canine", "category: mammal"}
    offsets = np.load(data_dir / "labels_offsets.npy")
    ids = np.load(data_dir / "labels_ids.npy")
    assert sorted(ids[offsets[puppy["index"]]:offsets[puppy["index"] + 1]].tolist()) == sorted(puppy["labels"])
    # every token of an entry's span carries that entry's index; separators -1
    from steerling_lite.loading.tokenizer import SteerlingTokenizer

    tok = SteerlingTokenizer()
    split = puppy["split"]
    tokens = np.load(data_dir / f"{split}_tokens.npy")
    spans = np.load(data_dir / f"{split}_spans.npy")
    assert tok.decode(tokens[spans == puppy["index"]].tolist()) == puppy["text"]
    assert set(tok.decode(tokens[spans == -1].tolist())) == {"\n"}
    held = {e["index"] for e in entries if e["split"] == "heldout"}
    assert held and not held & set(np.load(data_dir / "train_spans.npy").tolist())


def test_run_config_rejects_unknown_keys_and_bad_types(tmp_path):
    with pytest.raises(ValueError, match="unknown key train.stepz"):
        train.load_run_config(None, ["train.stepz=3"])
    with pytest.raises(ValueError, match="expected int"):
        train.load_run_config(None, ["train.steps=\"many\""])
    cfg = tmp_path / "run.toml"
    cfg.write_text("[train]\nsteps = 7\n[model]\nn_embd = 64\n")
    rc = train.load_run_config(cfg, ["train.lr=0.01"])
    assert (rc.train.steps, rc.model.n_embd, rc.train.lr) == (7, 64, 0.01)


def test_pooled_softmax_equals_the_full_vocabulary_softmax(data_dir):
    """The training loss over corpus tokens + one pooled row equals the cross-entropy of the
    exported 100281-row model, in which every other token has the pooled embedding."""
    rc = run_config(data_dir, Path("/unused"))
    corpus = train.load_corpus(data_dir)
    cfg_train = train.steerling_config(rc.model, corpus.n_concepts, vocab_size=corpus.n_compact)
    model = train.build_model(cfg_train, seed=3, embedding_std=0.5)
    full_cfg = train.steerling_config(rc.model, corpus.n_concepts, torch_dtype="float32")
    tensors = train.full_vocab_state(model, corpus, full_cfg, torch.float32)
    W = tensors["transformer.tok_emb.weight"]
    assert W.shape == (100281, 32)
    unseen = torch.ones(100281, dtype=torch.bool)
    unseen[corpus.compact_ids] = False
    assert torch.equal(W[unseen], model.transformer.tok_emb.weight[corpus.pooled_id].detach().expand(int(unseen.sum()), -1))
    states = torch.randn(5, 32)
    compact = train.lm_logits(model, states, math.log(corpus.n_pooled))
    full = states @ W.t()
    y_full = corpus.compact_ids[torch.tensor([0, 5, 9, 20, 40])]
    y_compact = corpus.to_compact[y_full]
    torch.testing.assert_close(
        torch.nn.functional.cross_entropy(compact, y_compact), torch.nn.functional.cross_entropy(full, y_full),
        rtol=1e-5, atol=1e-5,
    )


def test_train_a_few_steps_exports_a_loadable_checkpoint(data_dir, tmp_path):
    import pandas as pd

    rc = run_config(data_dir, tmp_path / "run", "train.steps=4", "train.eval_every=2", "train.ckpt_every=2",
                    "output.torch_dtype=\"float32\"")
    out = train.train(rc, progress=False)
    log = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    assert [r["step"] for r in log] == [2, 4]  # log_every 10: only the evaluation steps
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["heldout_mdlm"]) for r in log)
    if _has_matplotlib():
        assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the published format: flat config, every expected tensor, tied LM head not stored
    ckpt = open_checkpoint(out)
    cfg = ckpt.config
    assert cfg.schema == "flat" and cfg.vocab_size == 100281 and cfg.diff_block_size == 8
    assert "transformer.lm_head.weight" not in ckpt.tensors
    labels = pd.read_parquet(out / "concept_labels.parquet")
    assert list(labels.columns) == PUBLISHED_COLUMNS
    n_known = cfg.concept.n_concepts
    assert (labels["head"] == "known").sum() == n_known
    disc = labels[labels["head"] == "unknown"]
    assert disc["concept_id"].tolist() == list(range(n_known, n_known + cfg.concept.n_unknown_concepts))
    assert "Training run" in (out / "MODEL_CARD.md").read_text()
    # the exported weights are the trained ones and the runtime computes the same hidden states
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    assert state["step"] == 4
    lm = Steerling.load(out, device="cpu", dtype="fp32")
    corpus = train.load_corpus(data_dir)
    cfg_train = train.steerling_config(rc.model, corpus.n_concepts, vocab_size=corpus.n_compact)
    trained = train.build_model(cfg_train, 0)
    trained.load_state_dict(state["model"])
    trained.transformer.tie_weights()
    x = corpus.train[:24].unsqueeze(0)
    full_ids = corpus.compact_ids[x]
    with torch.no_grad():
        torch.testing.assert_close(lm.model.transformer(full_ids), trained.transformer(x), rtol=1e-5, atol=1e-5)
    r = lm.generate("A dog", GenerationConfig(max_new_tokens=8, seed=0))
    assert len(r.token_ids) <= 8


def test_resume_continues_exactly(data_dir, tmp_path):
    """Stopping after 2 steps and resuming to 4 gives the same weights as 4 steps in one go."""
    base = ["train.eval_every=100", "train.ckpt_every=100"]
    rc_a = run_config(data_dir, tmp_path / "a", "train.steps=4", *base)
    train.train(rc_a, progress=False)
    rc_b = run_config(data_dir, tmp_path / "b", "train.steps=2", *base)
    train.train(rc_b, progress=False)
    rc_b = run_config(data_dir, tmp_path / "b", "train.steps=4", *base)
    train.train(rc_b, progress=False)
    a = torch.load(tmp_path / "a" / "state.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "state.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    for name, t in a["model"].items():
        assert torch.equal(t, b["model"][name]), name
    assert a["history"]["mdlm"] == b["history"]["mdlm"]
    # a different architecture in the same run dir is refused
    rc_c = run_config(data_dir, tmp_path / "b", "train.steps=6", "model.n_embd=64", *base)
    with pytest.raises(ValueError, match="different \\[model\\] section"):
        train.train(rc_c, progress=False)


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True
