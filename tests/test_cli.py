"""The command line: generate (text / JSON), info, and errors that say what to do."""

from __future__ import annotations

import json

import pytest

from steerling_lite.cli import main


def test_generate_json(tiny_ckpt, capsys):
    assert main(["generate", "--model", str(tiny_ckpt), "--prompt", "Hello there", "-n", "64",
                 "--temperature", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["generated_tokens"] == len(out["token_ids"]) == 64
    assert out["steps"] == 64 and out["stop_reason"] == "length"
    assert out["timings"]["tokens_per_s"] > 0 and out["dtype"] == "float32"


def test_generate_text_streams_to_stdout_and_timings_to_stderr(tiny_ckpt, capsys):
    assert main(["generate", "--model", str(tiny_ckpt), "--prompt", "Hello", "-n", "128", "--steps", "32",
                 "--seed", "3"]) == 0
    captured = capsys.readouterr()
    main(["generate", "--model", str(tiny_ckpt), "--prompt", "Hello", "-n", "128", "--steps", "32", "--seed", "3",
          "--json"])
    again = json.loads(capsys.readouterr().out)
    assert captured.out == again["text"] + "\n"
    assert "tokens/s" in captured.err and "seed 3" in captured.err and "32 steps" in captured.err


def test_info(tiny_ckpt, capsys):
    assert main(["info", "--model", str(tiny_ckpt), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    parts = info["parts"]
    assert parts["embedding / lm head"]["params"] == 100281 * 64
    assert parts["known head"]["params"] == 2 * 112 * 64
    assert info["total_params"] == sum(p["params"] for p in parts.values())
    assert main(["info", "--model", str(tiny_ckpt)]) == 0
    assert "discovered head" in capsys.readouterr().out


@pytest.mark.parametrize("argv,match", [
    (["generate", "--model", "/nonexistent/dir", "--prompt", "x"], "no such model directory"),
    (["generate", "--prompt", "x", "-n", "30"], "multiple of the model's diffusion block size 64 \\(try 64\\)"),
    (["generate", "--prompt", "   "], "prompt is empty"),
])
def test_errors_exit_2_with_a_message(tiny_ckpt, capsys, argv, match):
    import re

    if "--model" not in argv:
        argv = argv[:1] + ["--model", str(tiny_ckpt)] + argv[1:]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and re.search(match, err)


def test_info_of_a_prequantized_checkpoint_counts_parameters_not_packed_bytes(tiny_ckpt, tmp_path, capsys):
    assert main(["quantize", "--model", str(tiny_ckpt), "--quant", "nf4", "--out", str(tmp_path / "q")]) == 0
    capsys.readouterr()
    main(["info", "--model", str(tiny_ckpt), "--json"])
    plain = json.loads(capsys.readouterr().out)
    main(["info", "--model", str(tmp_path / "q"), "--json"])
    quant = json.loads(capsys.readouterr().out)
    assert quant["total_params"] == plain["total_params"]
    assert quant["parts"]["transformer"]["bytes"] < plain["parts"]["transformer"]["bytes"] / 2
    assert quant["prequantized"].startswith("nf4")
