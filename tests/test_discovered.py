"""Discovered concepts a person can read: top promoted tokens, top-activating training chunks, the
per-model cache, the catalog's labels and the CLI."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch

from steerling_lite import ConceptCatalog, GenerationConfig, explain
from steerling_lite.cli import main
from steerling_lite.interpret import discovered
from steerling_lite.interpret.discovered import DiscoveredConcepts, summary_words
from steerling_lite.interpret.index_build import build_index

from .test_retrieval import LINES, lm, other_lm  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def index(lm, tmp_path_factory):
    d = tmp_path_factory.mktemp("disc-corpus")
    (d / "corpus.txt").write_text("\n".join(LINES) + "\n", encoding="utf-8")
    out = d / "index"
    build_index(lm, [d / "corpus.txt"], out)
    return out


@pytest.fixture
def counted(monkeypatch):
    """Counts of the two computations (top tokens, the chunk pass) from here on."""
    calls = {"tokens": 0, "chunks": 0}

    def wrap(name, key):
        real = getattr(discovered, name)

        def counting(*args, **kwargs):
            calls[key] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(discovered, name, counting)

    wrap("top_promoted_tokens", "tokens")
    wrap("top_activating_chunks", "chunks")
    return calls


def _unit_embeddings(lm) -> torch.Tensor:
    head = lm.model.unknown_head
    sd = {k: v.float() for k, v in head.state_dict().items()}
    e = sd["embedding_coef.weight"] @ sd["embedding_basis.weight"].t() if head.factorized \
        else sd["concept_embedding.weight"]
    return e[: head.n_concepts]


# ---- top tokens ------------------------------------------------------------------------------
def test_top_tokens_equal_a_direct_computation(lm, tmp_path):
    disc = DiscoveredConcepts(lm, tmp_path)
    e = _unit_embeddings(lm)
    w = lm.model.lm_head_weight.float()
    scores = e @ w.t()  # (C, V): E_u @ W_lm^T
    tok = lm.tokenizer
    bad = [i for i in range(w.shape[0]) if i >= lm.config.vocab_size or i in tok.special_ids
           or not tok.is_text_token(i)]
    scores[:, bad] = float("-inf")
    vals, ids = scores.topk(10, dim=-1)
    norms = e.norm(dim=-1, keepdim=True)
    for c in (0, 7, lm.model.unknown_head.n_concepts - 1):
        got = disc.top_tokens(c, 10)
        assert [t.token_id for t in got] == ids[c].tolist()
        assert [t.score for t in got] == pytest.approx((vals[c] / norms[c]).tolist(), abs=1e-4)
        assert [t.text for t in got] == [tok.token_text(i) for i in ids[c].tolist()]
    words = summary_words([t.text for t in disc.top_tokens(7)])
    assert disc.summary(7) == ", ".join(words) and 1 <= len(words) <= 3
    assert disc.label(7) == f'discovered #7 "{disc.summary(7)}"'


def test_summary_words():
    assert summary_words([" dog", "Dog", " cat", "\n", " horse", " cow"]) == ["dog", "cat", "horse"]
    assert summary_words(["\ufffd", " ", "x"], 5) == ["x"]


# ---- top-activating chunks ---------------------------------------------------------------------
def _brute_force(lm, index, top_n, limit=None):
    """Per concept: [(chunk id, activation, peak token text)] of the top chunks, one chunk at a time."""
    db = sqlite3.connect(index / "chunks.sqlite")
    rows = db.execute("SELECT id, text FROM chunks ORDER BY id").fetchall()[:limit]
    db.close()
    head = lm.model.unknown_head
    per_chunk = []
    with torch.no_grad():
        for cid, text in rows:
            ids = lm.tokenizer.encode(text)
            h = lm.model.transformer(torch.tensor([ids]))[0]
            logits = head.all_logits(h)  # (T, C)
            w = torch.zeros_like(logits)
            top = logits.topk(head.k_features, dim=-1).indices
            w.scatter_(1, top, torch.sigmoid(logits.gather(1, top)))
            best = w.max(dim=0)
            per_chunk.append((cid, best.values, [lm.tokenizer.token_text(ids[p]) for p in best.indices.tolist()]))
    out = []
    for c in range(head.n_concepts):
        acts = sorted(((float(v[c]), cid, peak[c]) for cid, v, peak in per_chunk if v[c] > 0), reverse=True)
        out.append([(cid, a, p) for a, cid, p in acts[:top_n]])
    return out


def test_top_chunks_equal_a_brute_force_computation(lm, index, tmp_path):
    disc = DiscoveredConcepts(lm, tmp_path)
    want = _brute_force(lm, index, 3)
    assert sum(1 for w in want if w) > 10  # the comparison is not vacuous
    for c in range(lm.model.unknown_head.n_concepts):
        got = disc.top_chunks(c, index, 3)
        assert [g.chunk_id for g in got] == [w[0] for w in want[c]], c
        assert [g.activation for g in got] == pytest.approx([w[1] for w in want[c]], abs=1e-4)
        assert [g.peak for g in got] == [w[2] for w in want[c]]
    first = next(c for c in range(len(want)) if want[c])
    chunk = disc.top_chunks(first, index, 1)[0]
    assert chunk.source == "corpus.txt" and chunk.text in LINES[chunk.line - 1]
    d = disc.describe(first, index, top_tokens=4, top_chunks=2)
    assert d.label == disc.label(first) and len(d.top_tokens) == 4 and len(d.top_chunks) <= 2
    assert json.loads(json.dumps(d.to_dict()))["top_chunks"][0]["chunk_id"] == chunk.chunk_id


def test_limit_scans_only_the_first_chunks(lm, index, tmp_path):
    disc = DiscoveredConcepts(lm, tmp_path)
    want = _brute_force(lm, index, 2, limit=3)
    for c in range(0, lm.model.unknown_head.n_concepts, 7):
        got = disc.top_chunks(c, index, 2, limit=3)
        assert [g.chunk_id for g in got] == [w[0] for w in want[c]] and all(g.chunk_id < 3 for g in got)


# ---- the cache -------------------------------------------------------------------------------
def test_cache_is_reused_and_keyed_by_model(lm, other_lm, index, tmp_path, counted):
    DiscoveredConcepts(lm, tmp_path).top_chunks(5, index, 3)
    DiscoveredConcepts(lm, tmp_path).summary(5)
    assert counted == {"tokens": 1, "chunks": 1}
    again = DiscoveredConcepts(lm, tmp_path)  # a new instance reads the file
    assert again.summary(5) and again.top_chunks(5, index, 2) is not None
    assert counted == {"tokens": 1, "chunks": 1}
    again.top_chunks(5, index, 2, limit=4)  # another scan: computed (and kept) anew
    assert counted["chunks"] == 2
    other = DiscoveredConcepts(other_lm, tmp_path)
    assert other.path != again.path
    other.summary(5)
    assert counted["tokens"] == 2
    with pytest.raises(Exception, match="another model"):  # the index is the first model's
        other.top_chunks(5, index)
    assert json.loads(other.path.read_text())["fingerprint"] == other.fingerprint


@pytest.mark.parametrize("garbage", ["{not json", json.dumps({"format": "steerling-lite.discovered", "version": 1,
                                                                "fingerprint": "x", "tokens": 3}), ""])
def test_a_corrupt_cache_is_rebuilt_with_one_warning(lm, tmp_path, counted, capsys, garbage):
    path = DiscoveredConcepts(lm, tmp_path).path
    path.parent.mkdir(parents=True, exist_ok=True)
    if garbage.startswith("{\"format"):  # well-formed JSON of the right model, with bad contents
        data = json.loads(garbage)
        data["fingerprint"] = DiscoveredConcepts(lm, tmp_path).fingerprint
        garbage = json.dumps(data)
    path.write_text(garbage)
    disc = DiscoveredConcepts(lm, tmp_path)
    assert disc.summary(3)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "corrupt discovered-concept cache" in err[0] and str(path) in err[0]
    assert counted["tokens"] == 1
    assert json.loads(path.read_text())["tokens"]["k"] >= 10  # rewritten whole
    DiscoveredConcepts(lm, tmp_path).summary(3)
    assert counted["tokens"] == 1 and capsys.readouterr().err == ""


def test_an_unwritable_cache_dir_keeps_descriptions_in_memory(lm, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    disc = DiscoveredConcepts(lm, blocker)
    assert disc.summary(1) and disc.summary(2)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "keeping it in memory" in err[0]


# ---- where the descriptions are shown ---------------------------------------------------------
def test_catalog_labels_discovered_concepts(lm):
    cat = ConceptCatalog.for_model(lm)
    summary = lm.discovered_concepts().summary(4)
    assert cat.label(4, "discovered") == f'discovered #4 "{summary}"'
    c = cat.get(4, "discovered")
    assert c.label == cat.label(4, "discovered") and c.description == f"promotes: {summary}" and not c.labelled
    assert cat.label(4, "known") == "known #4"
    assert ConceptCatalog().label(4, "discovered") == "discovered #4"


def test_attribution_records_carry_the_description(lm):
    a = explain(lm, "The history of the city", GenerationConfig(max_new_tokens=16, steps=4, temperature=0.0))
    disc = lm.discovered_concepts()
    rec = a.tokens()[0]
    assert rec.discovered and all(c.label == disc.label(c.concept_id) for c in rec.discovered)
    chunk = a.chunks()[0]
    assert all(c.label == disc.label(c.concept_id) for c in chunk.concepts if c.head == "discovered")


def test_cli_describes_discovered_concepts(lm, index, capsys):
    base = ["--model", str(lm.path), "--dtype", "fp32", "--device", "cpu"]
    assert main(["concepts", "describe", "2", "9", *base, "--index", str(index), "--chunks", "2"]) == 0
    out, err = capsys.readouterr()
    assert "training chunks for every discovered concept" in err  # the first scan says so
    disc = lm.discovered_concepts()
    assert f"discovered concept 2: {disc.label(2)}" in out and f"discovered concept 9: {disc.label(9)}" in out
    assert "promotes: " in out and "corpus.txt:" in out
    assert main(["concepts", "describe", "2", *base, "--json", "--tokens", "3", "--chunks", "0"]) == 0
    (d,) = json.loads(capsys.readouterr().out)
    assert d["label"] == disc.label(2) and len(d["top_tokens"]) == 3 and d["top_chunks"] is None
    assert main(["concepts", "discovered", *base, "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == lm.model.unknown_head.n_concepts
    assert main(["concepts", "describe", "100000", *base]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["concepts", "describe", "1", *base]) == 0  # another model without --index: tokens only
    assert "no training-data index" in capsys.readouterr().err
    assert main(["concepts", "show", "2", "--head", "discovered", *base]) == 0
    assert disc.label(2) in capsys.readouterr().out


def test_explain_shows_the_description(lm, capsys):
    assert main(["explain", "--model", str(lm.path), "--prompt", "The history of the city", "-n", "16", "--steps", "8",
                 "--temperature", "0", "--dtype", "fp32"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("  discovered: "))
    assert line.startswith('  discovered: discovered #') and '"' in line


def test_server_attribution_extra_carries_the_description(lm):
    from steerling_lite.serve.app import ServerState, ServeSettings
    from steerling_lite.serve.runner import token_record

    state = ServerState(lm, ServeSettings("tiny"))
    a = explain(lm, "Once upon a time", GenerationConfig(max_new_tokens=16, steps=4, temperature=0.0),
                catalog=state.engine.catalog)
    disc = lm.discovered_concepts()
    concepts = [c for t in a.tokens() for c in token_record(t, 40)["concepts"] if c["head"] == "discovered"]
    assert concepts and all(c["label"] == disc.label(c["id"]) and '"' in c["label"] for c in concepts)


def test_app_panel_and_exports_show_the_description(lm):
    from tui.concepts import Catalog, attribute_span
    from tui.export import session_to_dict, session_to_markdown
    from tui.store import Attribution, Session, Turn
    from tui.widgets.attribution import discovered_rows

    a = explain(lm, "Once upon a time", GenerationConfig(max_new_tokens=16, steps=4, temperature=0.0),
                catalog=Catalog(lm).cat)
    data = attribute_span(a, a.positions.tolist(), 0, 4)
    disc = lm.discovered_concepts()
    assert data["discovered"] and all(r["label"] == disc.label(r["concept_id"]) for r in data["discovered"])
    session = Session("t", "tiny", turns=[Turn("Once upon a time", "x", attributions=[Attribution(0, 4, data)])])
    md = session_to_markdown(session)
    assert disc.label(data["discovered"][0]["concept_id"]) in md
    exported = session_to_dict(session)["turns"][0]["attributions"][0]["discovered"]
    assert [r["label"] for r in exported] == [r["label"] for r in data["discovered"]]
    shown = discovered_rows(data["discovered"])  # the panel's heading says "discovered"
    assert [r["label"] for r in shown] == [disc.label(r["concept_id"]).removeprefix("discovered ") for r in shown]
    assert shown[0]["label"].startswith(f'#{shown[0]["concept_id"]} "')
    assert discovered_rows([{"concept_id": 7, "label": "discovered #7"}])[0]["label"] == "discovered #7"
