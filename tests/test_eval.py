"""`steerling-lite eval`: quantization modes against full precision on a tiny checkpoint (none + int8).

The reference compared with itself gives KL 0, top-1 agreement 1, concept overlap 1, share
change 0 and steering ratio 1; a quantized mode gives KL >= 0 (and agrees with a direct
computation); a resumed run skips finished windows (forward passes counted) and gives the same
figures; bad data is refused with one line naming the file.
"""

from __future__ import annotations

import json

import pytest
import torch

from steerling_lite import Steerling
from steerling_lite.cli import main
from steerling_lite.errors import InputError
from steerling_lite.evaluation import eval_run
from steerling_lite.evaluation.data import text_windows
from steerling_lite.evaluation.eval_run import EvalSettings, run_eval
from steerling_lite.evaluation.metrics import kl_divergence, topk_overlap
from steerling_lite.evaluation.plots import require_matplotlib
from steerling_lite.model.transformer import Transformer

TEXT = ("The river wound through the valley, past the mill and the old stone bridge, where children gathered "
        "in summer to watch the boats drift by. In the evenings the town grew quiet, and the lamps along the "
        "quay were lit one by one as the fishermen came home with their nets. ") * 2
SETTINGS = EvalSettings(n_samples=3, kl_samples=2, seed=5, batch_size=4, top_k=32, steer_concepts=(3, 40), steer_target=4.0)


@pytest.fixture(scope="module")
def lms(tiny_ckpt):
    return {"none": Steerling.load(tiny_ckpt, device="cpu", quant="none"),
            "int8": Steerling.load(tiny_ckpt, device="cpu", quant="int8")}


def _windows(lm, tmp_path, window=40):
    f = tmp_path / "text.txt"
    f.write_text(TEXT, encoding="utf-8")
    return text_windows([str(f)], lm.tokenizer, window)


def test_long_text_is_windowed_and_nothing_is_lost(lms, tmp_path):
    lm = lms["none"]
    ws = _windows(lm, tmp_path, window=40)
    ids = lm.tokenizer.encode(TEXT)
    assert len(ws) == -(-len(ids) // 40) and all(len(w.token_ids) == 40 for w in ws[:-1])
    assert [t for w in ws for t in w.token_ids] == ids
    assert [w.index for w in ws] == list(range(len(ws))) and ws[1].start == 40


def test_fields_and_their_properties(lms, tmp_path):
    ws = _windows(lms["none"], tmp_path)[:2]
    s = run_eval(lms, ws, SETTINGS)
    ref, q = s.mode("none"), s.mode("int8")
    assert s.windows == 2 and s.tokens == sum(len(w.token_ids) for w in ws) and s.positions > 0
    # the reference against itself
    assert ref.kl_mean == 0.0 and ref.kl_p99 == 0.0 and ref.same_top == 1.0 and ref.known_overlap == 1.0
    assert all(v == 0.0 for v in ref.shares_delta.values())
    assert set(ref.steer_ratio) == {"3", "40"} and all(r == pytest.approx(1.0) for r in ref.steer_ratio.values())
    assert all(e != 0.0 for e in ref.steer_effect.values())  # amplifying moves the detector
    # a quantized mode
    assert q.kl_mean >= 0.0 and q.kl_p99 >= 0.0 and 0.0 <= q.same_top <= 1.0 and 0.0 <= q.known_overlap <= 1.0
    assert q.kl_mean > 0.0  # int8 changes the predictions a little
    for m in (ref, q):
        assert m.nll > 0 and m.nll_stderr > 0 and m.ppl == pytest.approx(torch.tensor(m.nll).exp().item(), rel=1e-6)
        assert sum(m.shares.values()) == pytest.approx(1.0, abs=1e-5)
    d = s.to_dict()
    assert set(d["modes"]) == {"none", "int8"} and "steer_max_deviation" in d["modes"]["int8"]
    json.dumps(d)


def test_kl_and_overlap_match_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 50, generator=g), torch.randn(5, 50, generator=g)
    lp, lq = a.log_softmax(-1), b.log_softmax(-1)
    direct = torch.nn.functional.kl_div(lq, lp, log_target=True, reduction="none").sum(-1)
    assert torch.allclose(kl_divergence(lp, lq), direct, atol=1e-6)
    assert (kl_divergence(lp, lp) == 0).all()
    ov = topk_overlap(a, b, 10)
    for i in range(5):
        sa, sb = set(a[i].topk(10).indices.tolist()), set(b[i].topk(10).indices.tolist())
        assert ov[i].item() == pytest.approx(len(sa & sb) / 10)


def _count_forwards(monkeypatch):
    calls = []
    original = Transformer.forward

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Transformer, "forward", counting)
    return calls


def test_resume_skips_finished_windows(lms, tmp_path, monkeypatch):
    ws = _windows(lms["none"], tmp_path)[:3]
    assert len(ws) == 3
    state = tmp_path / "state.jsonl"
    calls = _count_forwards(monkeypatch)
    full = run_eval(lms, ws, SETTINGS, state=state)
    per_window = len(calls) / 3
    assert per_window == int(per_window) and per_window > 0
    lines = state.read_text().splitlines()
    assert len(lines) == 4  # header + one line per window

    calls.clear()
    again = run_eval(lms, ws, SETTINGS, state=state, resume=True)
    assert calls == [] and again.to_dict() == full.to_dict()

    # killed during the third window's line: header, window 0, window 1 and a partial line
    state.write_text("\n".join(lines[:3]) + "\n" + lines[3][:25])
    calls.clear()
    resumed = run_eval(lms, ws, SETTINGS, state=state, resume=True)
    assert len(calls) == per_window
    assert resumed.to_dict() == full.to_dict()
    assert len(state.read_text().splitlines()) == 4


def test_state_of_other_settings_is_refused(lms, tmp_path):
    ws = _windows(lms["none"], tmp_path)[:1]
    state = tmp_path / "state.jsonl"
    run_eval(lms, ws, SETTINGS, state=state)
    other = EvalSettings(n_samples=4, kl_samples=2, seed=5, steer_concepts=(3, 40), steer_target=4.0)
    with pytest.raises(InputError, match="other settings"):
        run_eval(lms, ws, other, state=state, resume=True)


def test_cli_writes_table_json_and_plot(tiny_ckpt, tmp_path, capsys):
    data = tmp_path / "text.txt"
    data.write_text(TEXT, encoding="utf-8")
    out, png = tmp_path / "eval.json", tmp_path / "eval.png"
    rc = main(["eval", "--model", str(tiny_ckpt), "--device", "cpu", "--data", str(data), "--quant", "none", "int8",
               "--window", "32", "--max-windows", "1", "--samples", "2", "--kl-samples", "1", "--steer", "3",
               "--steer-target", "4", "--json", str(out), "--plot", str(png), "--quiet"])
    assert rc == 0
    table = capsys.readouterr().out
    assert "int8" in table and "mean KLD" in table
    d = json.loads(out.read_text())
    assert d["windows"] == 1 and set(d["modes"]) == {"none", "int8"}
    for key in ("nll", "nll_stderr", "kl_mean", "kl_p99", "same_top", "known_overlap", "shares_delta", "steer_ratio"):
        assert key in d["modes"]["int8"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "eval.json.state.jsonl").exists()


@pytest.mark.parametrize("content,expected", [(b"", "empty"), (b"  \n\n", "empty"), (b"caf\xe9 au lait", "not UTF-8")])
def test_bad_data_is_one_line_naming_the_file(tiny_ckpt, tmp_path, capsys, content, expected):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    rc = main(["eval", "--model", str(tiny_ckpt), "--device", "cpu", "--data", str(bad), "--quant", "none"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and str(bad) in err and expected in err


def test_missing_matplotlib_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(InputError, match="--plot needs matplotlib.*pip install matplotlib"):
        require_matplotlib()


def test_row_chunking_does_not_change_kl(lms, tmp_path, monkeypatch):
    ws = _windows(lms["none"], tmp_path)[:1]
    a = run_eval(lms, ws, SETTINGS).mode("int8")
    monkeypatch.setattr(eval_run, "ROW_CHUNK", 7)
    b = run_eval(lms, ws, SETTINGS).mode("int8")
    assert a.kl_mean == pytest.approx(b.kl_mean, rel=0.02) and a.same_top == b.same_top  # bf16 LM head: blocking rounds
