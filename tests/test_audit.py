"""The audit of a span (steerling_lite.interpret.audit) and ``steerling-lite audit``: the three axes
equal their direct computations, the suppressed regeneration is the steered generation with the
same seed, and bad spans / methods are one-line errors."""

from __future__ import annotations

import json
import lzma

import pytest

from steerling_lite import GenerationConfig, Steerling, SteeringBuilder, explain
from steerling_lite.cli import main
from steerling_lite.errors import ConceptError, RetrievalError
from steerling_lite.generation.steering_builder import Steering
from steerling_lite.interpret import index_build
from steerling_lite.interpret.audit import audit_span, span_inputs, suppression, top_known
from steerling_lite.interpret.index_build import build_index, default_corpus_path
from steerling_lite.interpret.input_attribution import input_attribution
from steerling_lite.interpret.occlusion import occlusion
from steerling_lite.interpret.retrieval import TrainingIndex, retrieve
from steerling_lite.loading.default_model import shipped_model_dir

PROMPT = "A small dog"


@pytest.fixture(scope="module")
def corpus_lines() -> list[str]:
    with lzma.open(default_corpus_path(), "rt", encoding="utf-8") as f:
        return [next(f) for _ in range(60)]


@pytest.fixture(scope="module")
def lm():
    return Steerling.load(shipped_model_dir(), device="cpu", dtype="fp32", quant="none")


@pytest.fixture(scope="module")
def generated(lm):
    return explain(lm, PROMPT, GenerationConfig(max_new_tokens=16, seed=5))


@pytest.fixture(scope="module")
def index(lm, corpus_lines, tmp_path_factory):
    d = tmp_path_factory.mktemp("audit")
    (d / "corpus.txt").write_text("".join(corpus_lines), encoding="utf-8")
    build_index(lm, [d / "corpus.txt"], d / "index")
    with TrainingIndex.open(d / "index", lm) as idx:
        yield idx


def test_the_three_axes_are_the_direct_computations(lm, generated, index):
    a = generated
    p0 = a.prompt_len
    audit = audit_span(lm, a, 2, 7, index=index, k=3)
    assert audit.concepts == a.chunks([(p0 + 2, p0 + 7)])[0] and audit.text == audit.concepts.text
    targets = [p for p in a.positions.tolist() if p0 + 2 <= p < p0 + 7]
    oc = occlusion(lm, a, targets, granularity="word").aggregate("prompt", targets=targets)
    oc.sort(key=lambda x: -abs(x.score))
    assert [(x.position, x.text) for x in audit.inputs] == [(x.position, x.text) for x in oc]
    assert [x.score for x in audit.inputs] == pytest.approx([x.score for x in oc], abs=1e-6)
    assert audit.input_method == "occlusion" and len(audit.inputs) == 3  # the prompt's three words
    # integrated gradients on request: per token, each target's scores over their absolute sum, averaged
    ig = input_attribution(lm, a, targets[:1], n_steps=32).aggregate("prompt", targets=targets[:1])
    ig.sort(key=lambda x: -abs(x.score))
    by_ig = span_inputs(lm, a, 2, 3, "ig")
    assert [x.position for x in by_ig] == [x.position for x in ig]
    assert [x.score for x in by_ig] == pytest.approx([x.score for x in ig], abs=1e-6)
    assert sum(abs(x.score) for x in by_ig) == pytest.approx(1.0, abs=1e-5)
    assert audit.neighbours == retrieve(lm, index, a, [(2, 7)], 3)[0]
    top = audit.top_known()
    assert top.head == "known" and top.contribution > 0
    assert top.contribution == max(c.contribution for c in audit.concepts.concepts if c.head == "known")
    d = audit.to_dict(top=2, inputs=3)
    assert len(d["inputs"]) == 3 and d["retrieval"]["start"] == 2 and len(d["retrieval"]["neighbours"]) == 3
    assert json.loads(json.dumps(d, allow_nan=False))["retrieval"]["neighbours"][0]["rank"] == 1
    # nothing asked beyond the concepts: nothing computed
    bare = audit_span(lm, a, 2, 7, inputs=False)
    assert (bare.inputs, bare.input_method, bare.neighbours) == ((), "", None)


def test_bad_spans_and_methods_are_clear_errors(lm, generated):
    for start, end in ((5, 5), (-1, 3), (10, 40)):
        with pytest.raises(RetrievalError, match="outside the generated output"):
            audit_span(lm, generated, start, end)
    with pytest.raises(ConceptError, match="expected one of occlusion, ig"):
        span_inputs(lm, generated, 0, 4, "saliency")


def test_suppression_replaces_the_concepts_own_steering():
    steering = [Steering(3, "amplify", 2.0), Steering(9, "amplify", 4.0)]
    out = suppression(steering, 9)
    assert out[0] == steering[0] and out[1] == Steering(9, "suppress", None) and out[1].value == 7.0
    assert suppression([], 4, -3.0) == [Steering(4, "suppress", 3.0)]


def test_top_known_needs_a_concept_that_pushed(generated):
    chunk = generated.chunks()[0]
    pushed = [c for c in chunk.concepts if c.head == "known" and c.contribution > 0]
    assert top_known(chunk) == pushed[0]
    only_negative = type(chunk)(**{**chunk.__dict__, "concepts": tuple(c for c in chunk.concepts
                                                                        if c.contribution < 0)})
    with pytest.raises(ConceptError, match="nothing to suppress"):
        top_known(only_negative)


def test_cli_audit_prints_three_axes_and_the_suppressed_twin(lm, corpus_lines, tmp_path, monkeypatch, capsys):
    small = tmp_path / "corpus.txt.xz"
    small.write_bytes(lzma.compress("".join(corpus_lines).encode()))
    monkeypatch.setattr(index_build, "default_corpus_path", lambda: small)
    argv = ["audit", "--prompt", PROMPT, "-n", "16", "--seed", "5", "--dtype", "fp32", "--quant", "none",
            "--span", "2:7", "--retrieve", "3", "--inputs", "2", "--suppress-top"]
    assert main(argv + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    audit = out["audit"]
    assert (audit["start"], audit["end"], audit["input_method"]) == (2, 7, "occlusion")
    assert len(audit["inputs"]) == 2 and len(audit["retrieval"]["neighbours"]) == 3
    assert audit["retrieval"]["neighbours"][0]["source"] == str(small)
    known = [c for c in audit["concepts"]["concepts"] if c["head"] == "known"]
    top = max(known, key=lambda c: c["contribution"])
    sup = out["suppressed"]
    assert (sup["concept_id"], sup["label"]) == (top["concept_id"], top["label"])
    plan = SteeringBuilder(lm).build([Steering(top["concept_id"], "suppress")])
    twin = lm.generate(PROMPT, GenerationConfig(max_new_tokens=16, seed=5), plan)
    assert sup["text"] == twin.text and out["text"] == lm.generate(PROMPT, GenerationConfig(max_new_tokens=16,
                                                                                             seed=5)).text
    # as text: the three axes, then both answers side by side
    assert main(argv + ["--width", "100"]) == 0
    text = capsys.readouterr().out
    for part in ("audit of generated tokens 2..6", "concepts:", "  known:", "input units (occlusion, nats",
                 "training data nearest to tokens 2..6", "as generated", f"{top['label']} suppressed"):
        assert part in text, part
    # a span outside the output: one line, exit 2
    assert main(argv[:-6] + ["40:50"]) == 2
    assert "outside the generated output" in capsys.readouterr().err
