"""The lm-evaluation-harness model type ``steerling-lite``: lm-eval's command line runs local tasks
(a YAML and a JSONL written here, no downloads) of the three request types against a tiny
checkpoint, and what it reports is what the runtime computes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install -e .[eval])")

from steerling_lite import GenerationConfig, Steerling  # noqa: E402
from steerling_lite.errors import InputError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

MC_DOCS = [
    {"question": "The capital of France is", "choices": [" Paris", " a small green frog"], "answer": 0},
    {"question": "Two plus two equals", "choices": [" four", " the moon"], "answer": 0},
]
GEN_DOCS = [{"question": "Once upon a time", "answer": "there"}]
ROLL_DOCS = [{"text": "The river wound through the valley, past the mill and the old stone bridge."}]


def _tasks(folder: Path) -> None:
    data = {"mc": MC_DOCS, "gen": GEN_DOCS, "roll": ROLL_DOCS}
    for name, docs in data.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    common = "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {path}\ntest_split: test\n"
    (folder / "sl_mc.yaml").write_text(
        "task: sl_mc\n" + common.format(path=folder / "mc.jsonl")
        + 'output_type: multiple_choice\ndoc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\n'
        + 'doc_to_target: "{{answer}}"\nmetric_list:\n  - metric: acc\n')
    (folder / "sl_gen.yaml").write_text(
        "task: sl_gen\n" + common.format(path=folder / "gen.jsonl")
        + 'output_type: generate_until\ndoc_to_text: "{{question}}"\ndoc_to_target: "{{answer}}"\n'
        + "generation_kwargs:\n  until: [\"\\n\\n\", \".\"]\n  max_gen_toks: 20\n  do_sample: false\n"
        + "metric_list:\n  - metric: exact_match\n")
    (folder / "sl_roll.yaml").write_text(
        "task: sl_roll\n" + common.format(path=folder / "roll.jsonl")
        + 'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        + "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n")


def _samples(out: Path, task: str) -> list[dict]:
    files = sorted(out.rglob(f"samples_{task}_*.jsonl"))
    assert files, f"no samples file for {task} under {out}"
    return [json.loads(line) for line in files[-1].read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def ckpt(make_ckpt):
    return make_ckpt(diff_block_size=16)


def test_lm_eval_cli_runs_local_tasks_of_all_three_request_types(ckpt, tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    _tasks(tasks)
    out = tmp_path / "out"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    args = ["--model", "steerling-lite",
            "--model_args", f"pretrained={ckpt},dtype=fp32,device=cpu,mc_num=8,mc_batch_size=4,seed=3",
            "--include_path", str(tasks), "--tasks", "sl_mc,sl_gen,sl_roll",
            "--output_path", str(out), "--log_samples"]
    proc = subprocess.run([sys.executable, "-m", "steerling_lite.evaluation", *args],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(sorted(out.rglob("results_*.json"))[-1].read_text())["results"]
    assert 0.0 <= results["sl_mc"]["acc,none"] <= 1.0
    assert math.isfinite(results["sl_roll"]["word_perplexity,none"])
    assert "exact_match,none" in results["sl_gen"]

    # what lm-eval reports is what the runtime computes with the same settings: the Monte Carlo
    # estimate of each (context, continuation) pair, and the greedy generation cut at a stop string
    from steerling_lite.evaluation.likelihood import mc_loglikelihood
    from steerling_lite.evaluation.lm_eval_model import encode_pair, encode_text

    lm = Steerling.load(ckpt, device="cpu", dtype="fp32")
    for sample in _samples(out, "sl_mc"):
        for i, resp in enumerate(sample["resps"]):
            request = sample["arguments"][f"gen_args_{i}"]
            ctx, cont = encode_pair(lm.tokenizer, request["arg_0"], request["arg_1"])
            want = mc_loglikelihood(lm, ctx, cont, n_samples=8, batch_size=4, seed=3).logprob
            assert abs(float(resp[0][0]) - want) < 1e-4
    [roll] = _samples(out, "sl_roll")
    text = roll["arguments"]["gen_args_0"]["arg_0"]
    want = mc_loglikelihood(lm, [], encode_text(lm.tokenizer, text), n_samples=8, batch_size=4, seed=3).logprob
    assert abs(float(roll["resps"][0][0]) - want) < 1e-4
    [gen] = _samples(out, "sl_gen")
    full = lm.generate(encode_text(lm.tokenizer, "Once upon a time"),
                       GenerationConfig.from_settings(temperature=0.0, max_new_tokens=32)).text  # 20 -> 2 blocks
    cut = min([i for i in (full.find("\n\n"), full.find(".")) if i >= 0], default=len(full))
    assert gen["resps"][0][0] == full[:cut]


def test_model_args_are_checked_and_steering_presets_read(ckpt, tmp_path):
    from steerling_lite.evaluation.lm_eval_model import SteerlingLiteLM, read_steering_preset

    with pytest.raises(InputError, match="unknown model_args"):
        SteerlingLiteLM(pretrained=str(ckpt), dtype="fp32", colour="red")
    with pytest.raises(InputError, match="mc_num"):
        SteerlingLiteLM(pretrained=str(ckpt), dtype="fp32", mc_num=0)
    preset = tmp_path / "p.toml"
    preset.write_text('inject_layer = 1\n[[steering]]\nconcept_id = 3\nmode = "suppress"\nstrength = 5.0\n')
    specs, layer = read_steering_preset(preset)
    assert layer == 1 and specs[0].concept_id == 3 and specs[0].mode == "suppress" and specs[0].value == 5.0
    preset.write_text('[[steering]]\nconcept = 3\n')
    with pytest.raises(InputError, match="concept_id"):
        read_steering_preset(preset)
    model = SteerlingLiteLM(pretrained=str(ckpt), dtype="fp32", amplify="3:6;5", inject_layer=1, mc_num=4,
                            mc_batch_size=4)
    assert model.plan is not None and len(model.plan.terms) == 2 and model.plan.inject_layer == 1
    with pytest.raises(InputError, match="ID"):
        SteerlingLiteLM(pretrained=str(ckpt), dtype="fp32", suppress="x")
