"""The concept catalog (parquet / CSV / JSON labels, search, groups, fallbacks, errors) and what a
concept does in the loaded weights, against the reference's ConceptCatalog and concept_top_tokens."""

from __future__ import annotations

import json
import shutil

import pytest

from steerling_lite import (
    ConceptCatalog, ConceptError, Steerling, concept_top_tokens, concepts_for_token,
)
from steerling_lite.cli import main
from tests.oracle import load_reference

N_KNOWN = 100  # the tiny preset's known concepts

ROWS = [
    # concept_id, name, description, head, group id, group name, steerable, tone, alignment, demographic
    (0, "cat", "a small domesticated cat", "known", 1, "felines", True, False, False, False),
    (1, "category", "a grouping of things", "known", None, None, True, False, False, False),
    (2, "cat food", "food for a cat; cat treats", "known", 1, "felines", True, True, False, False),
    (3, "dog", "not a cat", "known", 2, "canines", True, False, True, False),
    (4, "communication", "talking", "known", None, None, True, False, False, True),
    (5, "cat cat", "", "known", None, None, False, False, False, False),
    (6, "wild cat", "big cat, cat family, cat, the cat", "known", 1, "felines", True, False, False, False),
    (N_KNOWN + 3, "cat-like texture", "a discovered cat feature", "unknown", None, None, False, False, False, False),
]
COLUMNS = ["concept_id", "concept_name", "concept_description", "head", "public_group_id", "group_name",
           "is_steerable", "is_tone", "is_alignment", "is_demographic"]


@pytest.fixture(scope="module")
def label_files(tmp_path_factory):
    import pandas as pd

    d = tmp_path_factory.mktemp("labels")
    df = pd.DataFrame(ROWS, columns=COLUMNS)
    df["public_group_id"] = df["public_group_id"].astype("Int64")
    paths = {"parquet": d / "concept_labels.parquet", "csv": d / "concept_labels.csv", "json": d / "concept_labels.json"}
    df.to_parquet(paths["parquet"], index=False)
    df.to_csv(paths["csv"], index=False)
    df.to_json(paths["json"], orient="records")
    return paths


@pytest.fixture(scope="module")
def lm(make_ckpt):
    return Steerling.load(make_ckpt(diff_block_size=16), device="cpu", dtype="fp32")


def test_parquet_csv_and_json_read_alike(label_files):
    cats = {k: ConceptCatalog.load(p, n_known=N_KNOWN) for k, p in label_files.items()}
    dicts = {k: [c.to_dict() for c in cat] for k, cat in cats.items()}
    assert dicts["parquet"] == dicts["csv"] == dicts["json"]
    cat = cats["parquet"]
    assert len(cat) == len(ROWS)
    c = cat.get(2)
    assert (c.name, c.description, c.group_id, c.group_name, c.is_steerable, c.is_tone) == \
        ("cat food", "food for a cat; cat treats", 1, "felines", True, True)
    # discovered concepts are numbered after the known ones in the published table
    d = cat.get(3, "discovered")
    assert d.name == "cat-like texture" and d.head == "discovered" and cat.get(3).name == "dog"
    assert cat.label(3, "unknown") == "cat-like texture"


def test_fallback_labels_and_ranges(label_files):
    cat = ConceptCatalog.load(label_files["csv"], n_known=N_KNOWN, n_discovered=300)
    assert cat.label(50) == "known #50" and cat.label(7, "discovered") == "discovered #7"
    c = cat.get(50)
    assert not c.labelled and c.label == "known #50"
    with pytest.raises(ConceptError, match="known concept id 100 is out of range"):
        cat.get(100)
    with pytest.raises(ConceptError, match="discovered concept id 300 is out of range"):
        cat.get(300, "discovered")
    with pytest.raises(ConceptError, match="not an integer"):
        cat.get("seven")
    empty = ConceptCatalog(n_known=N_KNOWN)
    assert empty.label(3) == "known #3" and empty.search("cat") == []


def test_head_local_discovered_ids_are_kept(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text("concept_id,concept_name,head\n0,alpha,known\n1,beta,known\n0,gamma,unknown\n")
    cat = ConceptCatalog.load(p, n_known=N_KNOWN)
    assert cat.get(0, "discovered").name == "gamma" and cat.get(1).name == "beta"
    assert cat.get(1).is_steerable and not cat.get(0, "discovered").is_steerable  # defaults per head


def test_bad_label_files_are_clear_errors(tmp_path):
    p = tmp_path / "labels.csv"
    p.write_text("concept_id,description\n0,x\n")
    with pytest.raises(ConceptError, match=r"labels\.csv: missing column\(s\) concept_name"):
        ConceptCatalog.load(p)
    p.write_text("concept_id,concept_name\n0,a\nabc,b\n")
    with pytest.raises(ConceptError, match="row 2.*abc"):
        ConceptCatalog.load(p)
    p.write_text("concept_id,concept_name,is_tone\n0,a,maybe\n")
    with pytest.raises(ConceptError, match="row 1.*maybe"):
        ConceptCatalog.load(p)
    p.write_text("concept_id,concept_name\n0,a\n0,b\n")
    with pytest.raises(ConceptError, match="appears twice"):
        ConceptCatalog.load(p)
    j = tmp_path / "labels.json"
    j.write_text('{"concepts": [{"concept_id": 1}]}')
    with pytest.raises(ConceptError, match="concept_name"):
        ConceptCatalog.load(j)
    j.write_text("not json")
    with pytest.raises(ConceptError, match="labels.json: cannot read"):
        ConceptCatalog.load(j)
    pq = tmp_path / "labels.parquet"
    pq.write_bytes(b"PAR1 garbage")
    with pytest.raises(ConceptError, match="labels.parquet: cannot read"):
        ConceptCatalog.load(pq)
    with pytest.raises(ConceptError, match="does not exist"):
        ConceptCatalog.load(tmp_path / "missing.parquet")
    t = tmp_path / "labels.txt"
    t.write_text("x")
    with pytest.raises(ConceptError, match="unsupported labels file type"):
        ConceptCatalog.load(t)


def test_search_and_groups_match_reference(label_files):
    from steerling.concepts import ConceptCatalog as RefCatalog

    ref = RefCatalog.load(label_files["parquet"])
    ours = ConceptCatalog.load(label_files["parquet"], n_known=N_KNOWN)
    for query in ("cat", "cat food", "dog", "grouping things", "nothing"):
        for steerable_only in (True, False):
            want = [c.concept_id for c in ref.search(query, steerable_only=steerable_only, limit=10)]
            got = [c.concept_id for c in ours.search(query, steerable_only=steerable_only, limit=10)]
            assert got == want, (query, steerable_only)
    assert [c.concept_id for c in ours.search("cat")] == [6, 2, 0, 3]
    assert [c.concept_id for c in ours.search("cat", head="discovered", steerable_only=False)] == [3]
    assert [c.concept_id for c in ours.search("cat", limit=2)] == [6, 2]
    # no whole-word match: word prefixes, scored alike (a search typed as you go); "category"
    # is not found by "cat" above, since whole words matched there
    assert [c.concept_id for c in ours.search("do")] == [3, 0]
    assert [c.concept_id for c in ours.search("categ")] == [1]
    assert ours.search("xyz") == [] and ours.search("ategory") == []
    for cid in (0, 2, 3, 4):
        assert ours.group(cid) == ref.group(cid)
    assert ours.groups() == {1: ("felines", [0, 2, 6]), 2: ("canines", [3])}


def test_catalog_of_a_model_directory(make_ckpt, tmp_path, label_files, monkeypatch):
    model = tmp_path / "model"
    shutil.copytree(make_ckpt(diff_block_size=16), model)
    monkeypatch.delenv("STEERLING_CONCEPTS_PATH", raising=False)
    assert ConceptCatalog.for_model(model).source is None
    monkeypatch.setenv("STEERLING_CONCEPTS_PATH", str(label_files["json"]))
    assert ConceptCatalog.for_model(model).source == label_files["json"]
    shutil.copy(label_files["csv"], model / "concept_labels.csv")
    cat = ConceptCatalog.for_model(model)
    assert cat.source == model / "concept_labels.csv" and cat.n_known == N_KNOWN and cat.n_discovered == 300
    assert ConceptCatalog.for_model(model, label_files["parquet"]).source == label_files["parquet"]
    (model / "concept_labels.csv").unlink()
    monkeypatch.setenv("STEERLING_CONCEPTS_PATH", str(tmp_path / "gone.parquet"))
    with pytest.raises(ConceptError, match="STEERLING_CONCEPTS_PATH"):
        ConceptCatalog.for_model(model)


def test_top_tokens_match_reference(lm, make_ckpt):
    _, gen = load_reference(make_ckpt(diff_block_size=16))
    for cid in (0, 17, 99):
        ours = concept_top_tokens(lm, cid, k=10)
        ref = gen.concept_top_tokens(cid, k=10)
        assert [t.text for t in ours] == [t for t, _ in ref]
        assert [t.score for t in ours] == pytest.approx([s for _, s in ref], abs=1e-5)
    with pytest.raises(ConceptError, match="out of range"):
        concept_top_tokens(lm, 100)


def test_concepts_aligned_with_a_token(lm):
    m = lm.model
    tok = concept_top_tokens(lm, 17, k=1)[0].token_id
    E = m.known_head.concept_embedding.weight[:N_KNOWN].float()
    w = m.lm_head_weight[tok].float()
    direct = (E @ w) / E.norm(dim=-1)
    hits = concepts_for_token(lm, tok, k=5)
    assert [h.concept_id for h in hits] == direct.topk(5).indices.tolist()
    assert hits[0].score == pytest.approx(float(direct.max()), abs=1e-5)
    assert 17 in [h.concept_id for h in concepts_for_token(lm, tok, k=N_KNOWN)][:N_KNOWN]
    # discovered (factorized head): the same score from the dense concept vectors
    uh = m.unknown_head
    Eu = uh.embedding_coef.weight[:300].float() @ uh.embedding_basis.weight.float().t()
    direct_u = (Eu @ w) / Eu.norm(dim=-1)
    hits_u = concepts_for_token(lm, tok, k=3, head="discovered")
    assert [h.concept_id for h in hits_u] == direct_u.topk(3).indices.tolist()
    assert [h.score for h in hits_u] == pytest.approx(direct_u.topk(3).values.tolist(), abs=1e-5)
    assert concepts_for_token(lm, " city")[0].concept_id == concepts_for_token(lm, lm.tokenizer.encode(" city")[0])[0].concept_id
    with pytest.raises(ConceptError, match="2 tokens"):
        concepts_for_token(lm, " history city")
    with pytest.raises(ConceptError, match="outside the vocabulary"):
        concepts_for_token(lm, 10**6)


def test_non_interpretable_model_is_a_clear_error(make_ckpt):
    plain = Steerling.load(make_ckpt(diff_block_size=16, interpretable=False), device="cpu", dtype="fp32")
    with pytest.raises(ConceptError, match="interpretable checkpoint"):
        concept_top_tokens(plain, 0)
    with pytest.raises(ConceptError, match="interpretable checkpoint"):
        concepts_for_token(plain, 5)


def test_cli(label_files, make_ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("STEERLING_CONCEPTS_PATH", raising=False)
    assert main(["concepts", "search", "cat", "--labels", str(label_files["parquet"]), "--json"]) == 0
    assert [c["concept_id"] for c in json.loads(capsys.readouterr().out)] == [6, 2, 0, 3]
    assert main(["concepts", "search", "cat food", "--labels", str(label_files["csv"])]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["known", "2", "cat"] and "felines" in out
    assert main(["concepts", "search", "zebra", "--labels", str(label_files["csv"])]) == 1
    assert main(["concepts", "search", "cat", "--model", str(tmp_path)]) == 2
    assert "no concept labels found" in capsys.readouterr().err
    model = make_ckpt(diff_block_size=16)
    assert main(["concepts", "show", "2", "--model", str(model), "--labels", str(label_files["json"]),
                 "--tokens", "4", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["name"] == "cat food" and shown["group_members"] == [2, 0, 6] and len(shown["top_tokens"]) == 4
    assert main(["concepts", "show", "500", "--model", str(model)]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["concepts", "token", " city", "--model", str(model), "-k", "3", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3
