"""Training-data retrieval: chunking with provenance, index build / add / resume, search, spans, errors."""

from __future__ import annotations

import gzip
import json
import lzma
import shutil

import numpy as np
import pytest

from steerling_lite import GenerationConfig, Steerling, explain
from steerling_lite.cli import main
from steerling_lite.errors import RetrievalError, SteerlingError
from steerling_lite.interpret import index_build, index_store
from steerling_lite.interpret.corpus import balanced_lengths, inspect_corpus, iter_chunks
from steerling_lite.interpret.index_build import (
    add_to_index, build_index, default_corpus_path, default_index_path, ensure_default_index,
)
from steerling_lite.interpret.retrieval import TrainingIndex, output_spans, retrieve, span_ids
from steerling_lite.loading.default_model import data_dir, shipped_model_dir

LINES = [
    "Dog, domestic dog: a member of the genus Canis that has been domesticated by man since prehistoric times.",
    "Cat, true cat: feline mammal usually having thick soft fur and no ability to roar.",
    "Oak, oak tree: a deciduous tree of the genus Quercus; has acorns and lobed leaves.",
    "Violin, fiddle: bowed stringed instrument that is the highest member of the violin family.",
    "Bread, breadstuff, staff of life: food made from dough of flour or meal and usually raised with yeast.",
    "Run: move fast by using one's feet, with one foot off the ground at any given time. Don't run.",
    "Mountain, mount: a land mass that projects well above its surroundings; higher than a hill.",
    "River: a large natural stream of water (larger than a creek). The river was navigable for 50 miles.",
    "Über café naïve — 日本語のテキスト 🎉 emoji and accents are kept whole.",
    "Quick: accomplished rapidly and without delay. Was quick to make friends.",
]
PROMPT = "The history of the city"


@pytest.fixture(scope="module")
def lm(make_ckpt):
    return Steerling.load(make_ckpt(diff_block_size=16), device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def other_lm(make_ckpt):
    return Steerling.load(make_ckpt(diff_block_size=16, seed=1), device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    (d / "a.txt").write_text("\n".join(LINES[:6]) + "\n\n", encoding="utf-8")
    (d / "b.txt").write_text("\n".join(LINES[6:]) + "\n", encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def built(lm, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("idx") / "index"
    build_index(lm, [corpus / "a.txt", corpus / "b.txt"], out)
    return out


def _chunks(lm, path):
    return list(iter_chunks(path, lm.tokenizer, lm.config.diff_block_size))


def _files(path):
    return {p.name: p.read_bytes() for p in path.iterdir()}


# ---- chunking ------------------------------------------------------------------------------------
def test_chunks_keep_provenance_and_never_split_characters(lm, corpus, tmp_path):
    raw = (corpus / "a.txt").read_bytes() + (corpus / "b.txt").read_bytes()
    (tmp_path / "ab.txt.gz").write_bytes(gzip.compress(raw))
    chunks = _chunks(lm, tmp_path / "ab.txt.gz")
    lines = raw.decode().split("\n")
    assert {c.line for c in chunks} == {i + 1 for i, t in enumerate(lines) if t.strip()}
    for line_no in {c.line for c in chunks}:
        mine = [c for c in chunks if c.line == line_no]
        # a line's chunks are its tokens, cut into near-equal parts of at most one diffusion block
        assert [t for c in mine for t in c.token_ids] == lm.tokenizer.encode(lines[line_no - 1])
        assert all(len(c.token_ids) <= 16 for c in mine)
        assert "".join(c.text for c in mine) == lines[line_no - 1]
    for c in chunks:  # byte offsets in the decompressed file give back the text
        assert raw[c.start:c.end].decode("utf-8") == c.text
    assert balanced_lengths(23, 16) == [12, 11] and balanced_lengths(16, 16) == [16]
    info = inspect_corpus(tmp_path / "ab.txt.gz")
    assert info.n_documents == len(LINES) and info.n_bytes == len(raw)


# ---- search --------------------------------------------------------------------------------------
def test_exact_training_chunk_is_found_at_rank_1(lm, corpus, built):
    chunks = _chunks(lm, corpus / "a.txt") + _chunks(lm, corpus / "b.txt")
    with TrainingIndex.open(built, lm) as index:
        assert index.n_chunks == len(chunks) and index.manifest["chunk_tokens"] == 16
        found = index.search_ids(lm, [c.token_ids for c in chunks], k=3)
    for chunk_id, (c, f) in enumerate(zip(chunks, found)):
        top = f.neighbours[0]
        assert (top.rank, top.chunk_id, top.text, top.line, top.start) == (1, chunk_id, c.text, c.line, c.start)
        assert top.similarity == pytest.approx(1.0, abs=1e-3) and f.neighbours[1].similarity < top.similarity
        assert top.source.endswith(("a.txt", "b.txt"))
        mine = {cid for cid, _, _ in f.concepts}
        for s in top.shared:  # shared concepts are among the query's (and, with the same text, the chunk's)
            assert s.concept_id in mine and s.span_weight == pytest.approx(s.chunk_weight, abs=2e-3)


def test_default_model_finds_its_training_text(tmp_path):
    lm = Steerling.load(shipped_model_dir(), device="cpu", dtype="fp32", quant="none")
    with lzma.open(default_corpus_path(), "rt", encoding="utf-8") as f:
        lines = [next(f) for _ in range(150)]
    (tmp_path / "wordnet.txt").write_text("".join(lines), encoding="utf-8")
    build_index(lm, [tmp_path / "wordnet.txt"], tmp_path / "index")
    with TrainingIndex.open(tmp_path / "index", lm) as index:
        hit = index.search_text(lm, lines[42].strip(), k=5)
    assert hit.neighbours[0].line == 43 and hit.neighbours[0].text == lines[42].strip()
    assert hit.neighbours[0].similarity > 0.99 > hit.neighbours[1].similarity


def test_spans_of_a_generation(lm, built):
    attribution = explain(lm, PROMPT, GenerationConfig(max_new_tokens=32, steps=16, temperature=0.0))
    with TrainingIndex.open(built, lm) as index:
        pieces = retrieve(lm, index, attribution, k=2)  # the output cut as the corpus was
        seq = attribution.trace.sequence()[attribution.prompt_len:]
        spans = [(p.start, p.end) for p in pieces]
        assert spans == output_spans(attribution, 16) and all(0 < e - s <= 16 for s, e in spans)
        assert all(e1 <= s2 for (_, e1), (s2, _) in zip(spans, spans[1:]))
        covered = {i for s, e in spans for i in range(s, e)}
        for i, t in enumerate(seq):  # every text token is in a piece, and no piece crosses a line break
            text = lm.tokenizer.token_bytes([t])
            assert (i in covered) == (t not in lm.tokenizer.special_ids and not (b"\n" in text and not text.strip()))
            if b"\n" in text and i in covered:
                assert any(e == i + 1 for _, e in spans)
        assert all(len(p.neighbours) == 2 for p in pieces)
        (span,) = retrieve(lm, index, attribution, [(3, 11)], k=4)
        ids = span_ids(attribution, 3, 11)
        assert ids == [t for t in seq[3:11] if t not in lm.tokenizer.special_ids]
        direct = index.search_ids(lm, [ids], k=4)[0]
        assert [n.chunk_id for n in span.neighbours] == [n.chunk_id for n in direct.neighbours]
        assert [n.similarity for n in span.neighbours] == pytest.approx([n.similarity for n in direct.neighbours])
        assert [n.rank for n in span.neighbours] == [1, 2, 3, 4]
        assert span.neighbours[0].similarity >= span.neighbours[-1].similarity
        json.dumps(span.to_dict())
        for bad in [(30, 40), (-1, 3), (5, 5)]:
            with pytest.raises(RetrievalError, match="outside the generated output"):
                retrieve(lm, index, attribution, [bad])
        with pytest.raises(RetrievalError, match="k is 0"):
            retrieve(lm, index, attribution, [(0, 4)], k=0)


# ---- errors: other model, corrupt, truncated ------------------------------------------------------
def test_index_from_another_model_is_refused(lm, other_lm, built, corpus, make_ckpt):
    same_weights = Steerling.load(make_ckpt(diff_block_size=16), device="cpu", dtype="bf16")
    TrainingIndex.open(built, same_weights).close()  # the fingerprint ignores the precision
    with pytest.raises(RetrievalError, match="built by another model"):
        TrainingIndex.open(built, other_lm)
    with TrainingIndex.open(built) as index, pytest.raises(RetrievalError, match="built by another model"):
        index.search_text(other_lm, "dog")
    before = _files(built)
    with pytest.raises(RetrievalError, match="built by another model"):
        add_to_index(other_lm, built, [corpus / "a.txt"])
    assert _files(built) == before


@pytest.mark.parametrize("damage, message", [
    ("truncate vectors", "truncated"), ("flip vectors", "corrupt"), ("truncate chunks", "truncated"),
    ("flip chunks", "corrupt"), ("manifest", "corrupt index manifest"), ("no manifest", "not a steerling-lite index"),
])
def test_corrupt_or_truncated_index(lm, built, tmp_path, damage, message):
    idx = tmp_path / "index"
    shutil.copytree(built, idx)
    target = idx / (index_store.VECTORS if "vectors" in damage else index_store.CHUNKS_DB)
    data = target.read_bytes()
    if damage.startswith("truncate"):
        target.write_bytes(data[: len(data) // 2])
    elif damage.startswith("flip"):
        target.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    elif damage == "manifest":
        (idx / index_store.MANIFEST).write_text("{not json")
    else:
        (idx / index_store.MANIFEST).unlink()
    with pytest.raises(RetrievalError, match=message):
        TrainingIndex.open(idx, lm)
    with pytest.raises(RetrievalError, match=message):
        add_to_index(lm, idx, [target.parent / "nothing.txt"])


# ---- errors: bad corpora leave everything as it was ----------------------------------------------
def test_bad_corpus_is_refused_and_leaves_the_previous_index(lm, built, tmp_path):
    idx = tmp_path / "index"
    shutil.copytree(built, idx)
    before = _files(idx)
    (tmp_path / "latin1.txt").write_bytes("café au lait\n".encode("latin-1"))
    (tmp_path / "empty.txt").write_text("\n  \n")
    cases = [(tmp_path / "latin1.txt", r"not UTF-8 text \(byte 0xe9 at line 1, byte offset 3\)"),
             (tmp_path / "empty.txt", "the corpus is empty"), (tmp_path / "missing.txt", "not found")]
    for path, message in cases:
        with pytest.raises(RetrievalError, match=message):
            build_index(lm, [path], idx, replace=True)
        with pytest.raises(RetrievalError, match=message):
            add_to_index(lm, idx, [path])
        with pytest.raises(RetrievalError, match=message):
            build_index(lm, [path], tmp_path / "new")
    assert _files(idx) == before and not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt", "index", "latin1.txt"]
    with pytest.raises(RetrievalError, match="already there"):
        build_index(lm, [tmp_path / "empty.txt"], idx)
    with pytest.raises(RetrievalError, match="not an index"):
        build_index(lm, [tmp_path / "latin1.txt"], tmp_path / "latin1.txt", replace=True)


def test_interrupted_build_keeps_the_old_index_and_resumes(lm, corpus, built, tmp_path, monkeypatch):
    idx = tmp_path / "index"
    shutil.copytree(built, idx)
    before = _files(idx)
    files = [corpus / "b.txt", corpus / "a.txt"]
    monkeypatch.setattr(index_build, "WINDOW", 4)
    real, calls = index_build.embed_sequences, []

    def failing(lm, sequences, *args, **kwargs):
        if len(calls) == 3:  # the first call checks the representation; then two windows
            raise KeyboardInterrupt
        calls.append(len(sequences))
        return real(lm, sequences, *args, **kwargs)

    monkeypatch.setattr(index_build, "embed_sequences", failing)
    with pytest.raises(KeyboardInterrupt):
        build_index(lm, files, idx, replace=True)
    assert _files(idx) == before  # the previous index is intact
    assert (tmp_path / ".index.partial").is_dir()
    monkeypatch.setattr(index_build, "embed_sequences", real)
    report = build_index(lm, files, idx, replace=True)
    assert report.resumed_chunks == sum(calls[1:]) > 4 and report.new_chunks == report.n_chunks
    assert not (tmp_path / ".index.partial").exists() and not (tmp_path / ".index.old").exists()
    fresh = build_index(lm, files, tmp_path / "fresh")
    with TrainingIndex.open(idx, lm) as a, TrainingIndex.open(tmp_path / "fresh", lm) as b:
        qa, qb = a.search_text(lm, LINES[7], k=5), b.search_text(lm, LINES[7], k=5)
    assert [(n.chunk_id, n.text) for n in qa.neighbours] == [(n.chunk_id, n.text) for n in qb.neighbours]
    assert [n.similarity for n in qa.neighbours] == pytest.approx([n.similarity for n in qb.neighbours], abs=1e-4)
    assert fresh.n_chunks == report.n_chunks


def test_incremental_add_and_switch_to_hnsw(lm, corpus, tmp_path, monkeypatch):
    idx = tmp_path / "index"
    r = build_index(lm, [corpus / "a.txt"], idx)
    n_a = r.n_chunks
    dim = index_store.read_manifest(idx)["dim"]
    monkeypatch.setattr(index_store, "EXACT_MAX_WORK", (n_a + 2) * dim)  # the next add crosses it
    r = add_to_index(lm, idx, [corpus / "a.txt", corpus / "b.txt"])
    assert r.skipped == (str(corpus / "a.txt"),) and r.index_type == "hnsw"
    chunks_b = _chunks(lm, corpus / "b.txt")
    assert r.n_chunks == n_a + len(chunks_b) == r.new_chunks + n_a
    with TrainingIndex.open(idx, lm) as index:
        assert index.manifest["n_sources"] == 2
        found = index.search_ids(lm, [c.token_ids for c in chunks_b], k=1)
    assert [f.neighbours[0].chunk_id for f in found] == list(range(n_a, n_a + len(chunks_b)))
    assert all(f.neighbours[0].source.endswith("b.txt") for f in found)
    again = add_to_index(lm, idx, [corpus / "b.txt"])
    assert again.new_chunks == 0 and again.n_chunks == r.n_chunks
    changed = tmp_path / "c.txt"
    changed.write_text("Something new: a text added later.\n")
    assert add_to_index(lm, idx, [changed]).new_chunks == 1
    changed.write_text("different text now\n")
    with pytest.raises(RetrievalError, match="changed since it was indexed"):
        add_to_index(lm, idx, [changed])


# ---- the default model's corpus and index ---------------------------------------------------------
def test_shipped_corpus_is_the_training_text():
    path = default_corpus_path()
    assert path.is_file() and path.stat().st_size < 4 * 2**20
    info = inspect_corpus(path)
    assert info.n_documents == 115306  # the training split of scripts/prepare_data.py (2 % held out)
    card = (shipped_model_dir() / "MODEL_CARD.md").read_text()
    assert "training-corpus.txt.xz" in card and "WordNet 3.0 Copyright 2006 by Princeton University" in card


def test_default_index_is_built_on_first_use(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STEERLING_LITE_HOME", str(tmp_path / "home"))  # no index built by an earlier test
    small = tmp_path / "corpus.txt.xz"
    with lzma.open(default_corpus_path(), "rt", encoding="utf-8") as f:
        small.write_bytes(lzma.compress("".join(next(f) for _ in range(40)).encode()))
    monkeypatch.setattr(index_build, "default_corpus_path", lambda: small)
    argv = ["explain", "--prompt", PROMPT, "-n", "16", "--seed", "1", "--retrieve", "2", "--dtype", "fp32"]
    assert main(argv + ["--json"]) == 0
    cap = capsys.readouterr()
    assert "building the default model's training-data index" in cap.err
    out = json.loads(cap.out)
    assert len(out["retrieval"]) >= len(out["chunks"]) and len(out["retrieval"][0]["neighbours"]) == 2
    assert out["retrieval"][0]["neighbours"][0]["source"] == str(small)
    lm = Steerling.load(shipped_model_dir(), device="cpu", dtype="fp32", quant="none")
    built_dir = default_index_path(lm)
    assert built_dir.parent == data_dir() / "indexes" and (built_dir / index_store.MANIFEST).is_file()
    assert ensure_default_index(lm) == built_dir  # second use: no build
    (built_dir / index_store.VECTORS).write_bytes(b"damaged")
    assert ensure_default_index(lm) == built_dir  # our own damaged index is built again
    TrainingIndex.open(built_dir, lm).close()
    assert main(argv + ["--span", "2:9"]) == 0
    cap = capsys.readouterr()
    assert "building" not in cap.err and "training data nearest to tokens 2..8 " in cap.out


# ---- CLI ------------------------------------------------------------------------------------------
def test_cli_index_build_add_info_search_and_explain(make_ckpt, corpus, tmp_path, capsys):
    model = str(make_ckpt(diff_block_size=16))
    idx = str(tmp_path / "index")
    common = ["--model", model, "--dtype", "fp32"]
    assert main(["index", "build", *common, "--corpus", str(corpus / "a.txt"), "--out", idx]) == 0
    assert "chunks (flat)" in capsys.readouterr().out
    assert main(["index", "add", *common, "--index", idx, "--corpus", str(corpus / "b.txt")]) == 0
    capsys.readouterr()
    assert main(["index", "info", "--index", idx]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_sources"] == 2 and info["representation"] == "composed+input"
    assert main(["index", "search", *common, "--index", idx, "--text", LINES[7], "-k", "2", "--json"]) == 0
    hit = json.loads(capsys.readouterr().out)
    assert hit["neighbours"][0]["text"] == LINES[7][: len(hit["neighbours"][0]["text"])]
    run = ["explain", *common, "--prompt", PROMPT, "-n", "16", "--seed", "1", "--retrieve", "3", "--index", idx]
    assert main(run) == 0
    out = capsys.readouterr().out
    assert "  training data nearest to tokens 0.." in out and "    1. " in out
    errors = [(run + ["--span", "10:40"], "outside the generated output"),
              (run[:-2], "no training-data index for this model: pass --index INDEX"),
              (["index", "build", *common, "--corpus", str(corpus / "a.txt"), "--out", idx], "already there")]
    for argv, message in errors:
        assert main(argv) == 2
        assert message in capsys.readouterr().err
    assert issubclass(RetrievalError, SteerlingError) and np.isfinite(hit["neighbours"][0]["similarity"])
