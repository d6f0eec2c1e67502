"""``steerling-lite explain``: per-chunk concept attribution, per-token JSON records, CSV, input attribution."""

from __future__ import annotations

import json

import pytest

from steerling_lite import GenerationConfig, Steerling, explain
from steerling_lite.cli import main

PROMPT = "The history of the city"


@pytest.fixture(scope="module")
def model(make_ckpt):
    return make_ckpt(diff_block_size=16)


def test_explain_json_and_csv(model, capsys, tmp_path):
    csv_path = tmp_path / "tokens.csv"
    assert main(["explain", "--model", str(model), "--prompt", PROMPT, "-n", "16", "--steps", "8",
                 "--temperature", "0", "--dtype", "fp32", "--top", "3", "--json", "--csv", str(csv_path),
                 "--inputs", "2", "--ig-steps", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    lm = Steerling.load(model, device="cpu", dtype="fp32")
    want = explain(lm, PROMPT, GenerationConfig(max_new_tokens=16, steps=8, temperature=0.0, entropy_sampling=False))
    assert [t["token_id"] for t in out["tokens"]] == want.token_ids.tolist()
    assert [t["logit"] for t in out["tokens"]] == pytest.approx(want.logits.tolist(), abs=1e-6)
    assert out["verification"]["passed"] and all(len(t["known"]) == 3 for t in out["tokens"])
    assert len(out["chunks"]) == 1 and len(out["chunks"][0]["inputs"]) == 2
    assert all(x["kind"] == "prompt" for x in out["chunks"][0]["inputs"])
    assert csv_path.read_text() == want.to_csv()


def test_explain_text(model, capsys):
    assert main(["explain", "--model", str(model), "--prompt", PROMPT, "-n", "16", "--steps", "8", "--seed", "2",
                 "--amplify", "3=20", "--inject-layer", "1"]) == 0
    cap = capsys.readouterr()
    lines = cap.out.splitlines()
    assert lines[0] == "[chunk 1] tokens 0..15 (16 committed)"
    assert lines[2].startswith("  known:      known #") and lines[3].startswith("  discovered: discovered #")
    assert "epsilon" in lines[4] and "attribution check: pass" in cap.err


def test_explain_needs_an_interpretable_checkpoint(make_ckpt, capsys):
    plain = make_ckpt(diff_block_size=16, interpretable=False)
    assert main(["explain", "--model", str(plain), "--prompt", PROMPT, "-n", "16"]) == 2
    assert "needs an interpretable checkpoint" in capsys.readouterr().err
