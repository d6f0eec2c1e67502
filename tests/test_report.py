"""`steerling-lite report`: AUROC equals a brute-force pairwise count, detection on labelled JSONL equals a
direct computation, entanglement / shares / label alignment are sane, bad input is one clear line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from steerling_lite import Steerling
from steerling_lite.cli import main
from steerling_lite.evaluation.data import ConceptResolver, read_labelled
from steerling_lite.evaluation.metrics import auroc, correlation_matrix, cosine_matrix, mean_abs_offdiagonal
from steerling_lite.evaluation.report import build_report, label_words
from steerling_lite.interpret.concepts import ConceptCatalog


def brute_auroc(scores, labels) -> float:
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(8))
def test_auroc_equals_a_pairwise_count(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    scores = rng.integers(0, 6, n).astype(float) if seed % 2 else rng.normal(size=n)  # with ties, without
    labels = rng.integers(0, 2, n)
    labels[0], labels[1] = 0, 1
    assert auroc(scores, labels) == pytest.approx(brute_auroc(scores, labels), abs=1e-12)


def test_auroc_edge_cases():
    assert auroc([1, 2, 3], [0, 1, 1]) == 1.0 and auroc([3, 2, 1], [0, 1, 1]) == 0.0
    assert auroc([1, 1, 1], [0, 1, 0]) == 0.5
    assert math.isnan(auroc([1, 2], [1, 1]))


def test_matrix_helpers():
    v = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    c = cosine_matrix(v)
    assert mean_abs_offdiagonal(c) == pytest.approx((0 + 2 * 2**-0.5) * 2 / 6)
    x = torch.tensor([[1.0, 2.0, 5.0], [2.0, 4.0, 5.0], [3.0, 7.0, 5.0]])
    r = correlation_matrix(x)
    assert r[0, 1].item() == pytest.approx(float(np.corrcoef(x[:, 0], x[:, 1])[0, 1]), abs=1e-6)
    assert r[0, 2].item() == 0.0  # a constant column


LABELS_CSV = "concept_id,concept_name\n3,noun.animal\n7,category: river\n11,topic: music\n"
RECORDS = [
    {"text": "The dog ran by the river.", "spans": [{"start": 4, "end": 7, "concept": "noun.animal"},
                                                   {"start": 19, "end": 24, "concept": 7}]},
    {"text": "A song for the cat and the river bank.", "spans": [{"start": 0, "end": 10, "concept": "Topic: Music"},
                                                              {"start": 15, "end": 18, "concept": "#3"},
                                                              {"start": 27, "end": 37, "concept": "category: river"}]},
    {"text": "Nothing labelled here at all, just words."},
    {"text": "Birds, fish and dogs: animals everywhere.", "spans": [{"start": 0, "end": 41, "concept": 3}]},
]


@pytest.fixture(scope="module")
def lm(tiny_ckpt):
    return Steerling.load(tiny_ckpt, device="cpu", quant="none")


@pytest.fixture()
def labelled(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text(LABELS_CSV)
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n\n", encoding="utf-8")
    return data, labels


def _direct_labels(lm, rec: dict, concept: int) -> list[bool]:
    """Per token: does the token's text overlap a span of ``concept``? (character offsets, by decoding prefixes)"""
    ids = lm.tokenizer.encode(rec["text"])
    out, pos = [], 0
    spans = [(s["start"], s["end"]) for s in rec.get("spans", [])
             if str(s["concept"]).lower().lstrip("#") in {str(concept), {3: "noun.animal", 7: "category: river", 11: "topic: music"}[concept]}]
    for i in range(len(ids)):
        end = len(lm.tokenizer.decode(ids[: i + 1]))
        out.append(any(a < end and pos < b for a, b in spans))
        pos = end
    return out


def test_detection_auroc_equals_a_direct_computation(lm, labelled):
    data, labels = labelled
    catalog = ConceptCatalog.for_model(lm, labels)
    records = read_labelled(data, lm.tokenizer, ConceptResolver(catalog, lm.config.concept.n_concepts), 1024)
    assert [r.line for r in records] == [1, 2, 3, 4]
    rep = build_report(lm, catalog, records=records, min_examples=2)
    det = rep.detection
    assert det is not None and det.records == 4 and det.labelled_concepts == 3
    with torch.inference_mode():
        scores = torch.cat([lm.model.known_head.all_logits(lm.model.transformer(torch.tensor([lm.tokenizer.encode(r["text"])]))[0])
                            for r in RECORDS]).float()
    assert set(det.per_concept) == {3, 7, 11}
    for c in (3, 7, 11):
        y = [b for r in RECORDS for b in _direct_labels(lm, r, c)]
        assert sum(y) >= 2
        assert det.per_concept[c] == pytest.approx(brute_auroc(scores[:, c].tolist(), y), abs=1e-9)
    assert det.macro_auroc == pytest.approx(np.mean(list(det.per_concept.values())))
    assert sum(rep.shares.values()) == pytest.approx(1.0, abs=1e-5) and rep.positions > 0
    e = rep.entanglement
    assert 0 <= e["mean_abs_cosine"] <= 1 and 0 <= e["mean_abs_coactivation"] <= 1 and e["concepts"] == 100
    la = rep.label_alignment
    assert la is not None and la["concepts"] == 3 and 0 <= la["share"] <= 1


def test_label_words():
    assert label_words("noun.animal") == {"animal"}
    assert label_words("category: musical instrument") == {"musical", "instrument"}
    assert label_words("topic: medicine (the branches of ...)") == {"medicine", "branches"}


def test_cli_plain_text_skips_detection_with_a_note(tiny_ckpt, tmp_path, capsys):
    data = tmp_path / "t.txt"
    data.write_text("The dog ran by the river and the cat sat on the bank. " * 4, encoding="utf-8")
    out, md, png = tmp_path / "r.json", tmp_path / "r.md", tmp_path / "r.png"
    rc = main(["report", "--model", str(tiny_ckpt), "--device", "cpu", "--quant", "none", "--data", str(data),
               "--json", str(out), "--markdown", str(md), "--plot", str(png), "--quiet"])
    printed = capsys.readouterr().out
    assert rc == 0 and "concept detection skipped" in printed and "label alignment skipped" in printed
    d = json.loads(out.read_text())
    assert d["detection"] is None and d["label_alignment"] is None and set(d["shares"]) == {"known", "discovered", "epsilon"}
    assert "| entanglement: mean absolute cosine of concept vectors |" in md.read_text()
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_cli_labelled_jsonl(tiny_ckpt, labelled, tmp_path, capsys):
    data, labels = labelled
    out = tmp_path / "r.json"
    rc = main(["report", "--model", str(tiny_ckpt), "--device", "cpu", "--quant", "none", "--data", str(data),
               "--labels", str(labels), "--min-examples", "2", "--json", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    d = json.loads(out.read_text())
    assert set(d["detection"]["per_concept"]) == {"noun.animal", "category: river", "topic: music"}


@pytest.mark.parametrize("record,expected", [
    ({"text": "a cat", "spans": [{"start": 0, "end": 5, "concept": "noun.plant"}]}, "unknown concept 'noun.plant'"),
    ({"text": "a cat", "spans": [{"start": 0, "end": 5, "concept": 100}]}, "unknown concept 100 (known concept ids are 0..99)"),
    ({"text": "a cat", "spans": [{"start": 3, "end": 9, "concept": 3}]}, "start=3, end=9"),
    ({"spans": []}, "string \"text\""),
])
def test_bad_labels_name_the_line_and_label(tiny_ckpt, labelled, tmp_path, capsys, record, expected):
    _, labels = labelled
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(RECORDS[0]) + "\n" + json.dumps(record) + "\n", encoding="utf-8")
    rc = main(["report", "--model", str(tiny_ckpt), "--device", "cpu", "--data", str(data), "--labels", str(labels)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and f"{data}:2:" in err and expected in err


@pytest.mark.parametrize("name,content,expected", [
    ("e.jsonl", b"", "empty"), ("e.txt", b"\n \n", "empty"), ("b.txt", b"\xff\xfe text", "not UTF-8"),
    ("b.jsonl", b'{"text": "caf\xe9"}\n', "not UTF-8"),
])
def test_bad_data_files(tiny_ckpt, tmp_path, capsys, name, content, expected):
    data = tmp_path / name
    data.write_bytes(content)
    rc = main(["report", "--model", str(tiny_ckpt), "--device", "cpu", "--data", str(data)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and str(data) in err and expected in err
