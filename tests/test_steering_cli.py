"""``generate --amplify/--suppress/--intervene/--inject-layer`` and ``steer`` (side by side)."""

from __future__ import annotations

import json

import pytest

from steerling_lite import GenerationConfig, Steering, SteeringBuilder, Steerling
from steerling_lite.cli import main

PROMPT = "The history of the city"


@pytest.fixture(scope="module")
def model(make_ckpt):
    return make_ckpt(diff_block_size=16)


def _gen(model, *flags, capsys):
    assert main(["generate", "--model", str(model), "--prompt", PROMPT, "-n", "16", "--steps", "8",
                 "--temperature", "0", "--dtype", "fp32", "--json", *flags]) == 0
    return json.loads(capsys.readouterr().out)


def test_generate_steering_flags_build_the_api_plan(model, capsys):
    lm = Steerling.load(model, device="cpu", dtype="fp32")
    cfg = GenerationConfig(max_new_tokens=16, steps=8, temperature=0.0, entropy_sampling=False)
    plan = SteeringBuilder(lm).build([Steering(3, "amplify", 20.0), Steering(8, "amplify"),
                                      Steering(5, "suppress", 4.0), Steering(9, "intervene", 0.8)], inject_layer=1)
    out = _gen(model, "--amplify", "3=20", "--amplify", "8", "--suppress", "5=-4", "--intervene", "9=0.8",
               "--inject-layer", "1", capsys=capsys)
    assert out["token_ids"] == lm.generate(PROMPT, cfg, plan).token_ids
    assert out["steering"]["inject_layer"] == 1 and len(out["steering"]["terms"]) == 3
    assert [s["strength"] for s in out["steering"]["specs"]] == [20.0, 8.0, 4.0, 0.8]  # defaults: the presets'
    plain = _gen(model, capsys=capsys)
    assert plain["steering"] is None and plain["token_ids"] != out["token_ids"]


@pytest.mark.parametrize("flags,message", [
    (["--amplify", "3=nan"], "finite number"),
    (["--suppress", "7=inf"], "finite number"),
    (["--amplify", "100"], "out of range"),
    (["--amplify", "3", "--inject-layer", "9"], "inject_layer 9"),
])
def test_bad_steering_flags(model, capsys, flags, message):
    # exit 2 with the message: from argparse (a strength that is not finite is refused by the
    # flag's type) or from the run's error boundary (a value only the model can check)
    try:
        code = main(["generate", "--model", str(model), "--prompt", PROMPT, "-n", "16", *flags])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_unparsable_flag_is_a_usage_error(model, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--model", str(model), "--prompt", PROMPT, "--amplify", "x=2"])
    assert exc.value.code == 2 and "not an integer" in capsys.readouterr().err


def test_steer_prints_both_generations(model, capsys):
    args = ["steer", "--model", str(model), "--prompt", PROMPT, "-n", "16", "--steps", "8", "--seed", "5",
            "--dtype", "fp32", "--amplify", "3=20", "--inject-layer", "1"]
    assert main(args + ["--json"]) == 0
    both = json.loads(capsys.readouterr().out)
    lm = Steerling.load(model, device="cpu", dtype="fp32")
    cfg = GenerationConfig(max_new_tokens=16, steps=8, seed=5)
    assert both["unsteered_token_ids"] == lm.generate(PROMPT, cfg).token_ids
    plan = SteeringBuilder(lm).build([Steering(3, "amplify", 20.0)], inject_layer=1)
    assert both["steered_token_ids"] == lm.generate(PROMPT, cfg, plan).token_ids
    assert both["steered"] != both["unsteered"] and both["seed"] == 5
    assert main([a if a != "8" else "2" for a in args] + ["--width", "120"]) == 0  # 2 steps: only the layout is checked
    out = capsys.readouterr().out
    assert "unsteered" in out and "steered: amplify 3 (+20)" in out and "seed 5" in out
    assert main(["steer", "--model", str(model), "--prompt", PROMPT, "-n", "16"]) == 2
    assert "nothing to steer" in capsys.readouterr().err
