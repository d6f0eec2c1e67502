"""Issue 13, the CLI's error boundary: bad arguments are argparse usage errors (exit 2, before
any file is read), bad files and refusing file systems one line (exit 2), anything else one
line (exit 3) unless ``--debug``; Ctrl-C keeps what was committed (exit 130, ``cancelled``)."""

from __future__ import annotations

import errno
import json
import os
import signal

import pytest
import torch

from steerling_lite.cli import main
from steerling_lite.generation.generate import Generation


@pytest.mark.parametrize("argv,option", [
    (["generate", "--prompt", "x", "--seed", str(2**64)], "--seed"),
    (["generate", "--prompt", "x", "--seed", "-1"], "--seed"),
    (["generate", "--prompt", "x", "--device", "bogus"], "--device"),
    (["quantize", "--quant", "nf4", "--out", "o", "--device", "bogus"], "--device"),
    (["plan", "--device", "bogus"], "--device"),
    (["generate", "--prompt", "x", "--int8-threshold", "nan"], "--int8-threshold"),
    (["generate", "--prompt", "x", "--int8-threshold", "-1"], "--int8-threshold"),
    (["generate", "--prompt", "x", "--temperature", "inf"], "--temperature"),
    (["generate", "--prompt", "x", "--top-p", "0"], "--top-p"),
    (["generate", "--prompt", "x", "-n", "0"], "--max-new-tokens"),
    (["plan", "--context", "-5"], "--context"),
    (["concepts", "token", "a", "-k", "-1"], "-k"),
    (["concepts", "search", "cat", "--limit", "-1"], "--limit"),
    (["concepts", "show", "-3"], "ID"),
    (["steer", "--prompt", "x", "--amplify", "1", "--width", "-5"], "--width"),
    (["explain", "--prompt", "x", "--top", "0"], "--top"),
    (["index", "search", "--text", "x", "-k", "0"], "-k"),
    (["generate", "--prompt", "x", "--offload-dir", __file__], "--offload-dir"),
    (["plan", "--offload-dir", __file__ + "/sub"], "--offload-dir"),
    (["steer", "--prompt", "x", "--amplify", "3=nan"], "--amplify"),
    (["generate", "--prompt", "x", "--suppress", "3=inf"], "--suppress"),
    (["serve", "--port", "70000"], "--port"),
    (["serve", "--port", "-1"], "--port"),
    (["serve", "--api-key", ""], "--api-key"),
    (["serve", "--api-key", "two words"], "--api-key"),
    (["serve", "--max-queue", "-1"], "--max-queue"),
    (["serve", "--default-max-tokens", "0"], "--default-max-tokens"),
    (["serve", "--max-tokens-limit", "0"], "--max-tokens-limit"),
])
def test_bad_argument_values_are_usage_errors(argv, option, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"argument {option}" in err


def _one_line_error(capsys, argv, code=2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_prompt_file_missing_directory_or_not_utf8(tiny_ckpt, tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    for path, match in [(tmp_path / "missing.txt", "No such file"), (tmp_path, "is a directory"),
                        (bad, "not UTF-8")]:
        err = _one_line_error(capsys, ["generate", "--model", str(tiny_ckpt), "--prompt-file", str(path)])
        assert "--prompt-file" in err and match in err


def test_serve_startup_errors_are_one_line(tiny_ckpt, tmp_path, monkeypatch, capsys):
    """serve: a missing model, a host that is no name, a bad key in the environment: one line,
    exit 2, before anything is loaded or served (a taken port: tests/test_serve_errors.py)."""
    err = _one_line_error(capsys, ["serve", "--model", str(tmp_path / "missing"), "--port", "0"])
    assert "missing: no such model directory" in err
    err = _one_line_error(capsys, ["serve", "--model", str(tiny_ckpt), "--port", "0", "--host", "a" * 100])
    assert "--host " in err and "expected a host name or address" in err
    monkeypatch.setenv("STEERLING_LITE_API_KEY", "two words")
    err = _one_line_error(capsys, ["serve", "--model", str(tiny_ckpt), "--port", "0"])
    assert "$STEERLING_LITE_API_KEY: expected a non-empty key" in err


def test_chat_on_a_base_model(tiny_ckpt, capsys):
    err = _one_line_error(capsys, ["generate", "--model", str(tiny_ckpt), "--prompt", "hi", "--chat"])
    assert "base model" in err and "--chat" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu(tiny_ckpt, tmp_path, capsys):
    err = _one_line_error(capsys, ["generate", "--model", str(tiny_ckpt), "--prompt", "hi", "--device", "cuda"])
    assert "no CUDA GPU" in err
    err = _one_line_error(capsys, ["quantize", "--model", str(tiny_ckpt), "--quant", "nf4", "--out",
                                   str(tmp_path / "q"), "--device", "cuda"])
    assert "no CUDA GPU" in err


def test_os_errors_are_one_line_and_internal_errors_point_to_debug(tiny_ckpt, monkeypatch, capsys):
    import steerling_lite.cli.info as info

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/out/x")

    monkeypatch.setattr(info, "run", full)
    err = _one_line_error(capsys, ["info", "--model", str(tiny_ckpt)])
    assert "/out/x: No space left on device (the disk is full" in err

    def bug(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(info, "run", bug)
    err = _one_line_error(capsys, ["info", "--model", str(tiny_ckpt)], code=3)
    assert "ZeroDivisionError" in err and "--debug" in err
    with pytest.raises(ZeroDivisionError):
        main(["info", "--model", str(tiny_ckpt), "--debug"])
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "info", "--model", str(tiny_ckpt)])


@pytest.fixture
def ctrl_c_after_first_block(monkeypatch):
    """Send this process SIGINT once the first diffusion block is committed, then wait (a state,
    not a time) until the CLI's handler has cancelled the generation."""
    original = Generation.__iter__
    sent = []

    def iterate(self):
        for event in original(self):
            yield event
            if not sent and self.model.cfg.mask_token_id not in event.block_tokens:
                sent.append(True)
                os.kill(os.getpid(), signal.SIGINT)
                while not self._cancel.is_set():  # the handler runs at the next bytecode boundary
                    pass

    monkeypatch.setattr(Generation, "__iter__", iterate)
    return sent


def test_ctrl_c_in_generate_keeps_the_committed_text(tiny_ckpt, capsys, ctrl_c_after_first_block):
    argv = ["generate", "--model", str(tiny_ckpt), "--prompt", "Hello", "-n", "128", "--temperature", "0"]
    assert main(argv + ["--json"]) == 130
    out = json.loads(capsys.readouterr().out)
    assert out["stop_reason"] == "cancelled" and out["generated_tokens"] == 64
    ctrl_c_after_first_block.clear()
    assert main(argv) == 130
    captured = capsys.readouterr()
    assert captured.out == out["text"] + "\n" and out["text"]
    assert "stop: cancelled" in captured.err and "64 of 128 tokens" in captured.err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_ctrl_c_in_explain_and_steer(tiny_ckpt, capsys, ctrl_c_after_first_block):
    argv = ["--model", str(tiny_ckpt), "--prompt", "Hello", "-n", "128", "--temperature", "0", "--json"]
    assert main(["explain", *argv]) == 130
    out = json.loads(capsys.readouterr().out)
    assert out["stop_reason"] == "cancelled" and out["generated_tokens"] == 64
    ctrl_c_after_first_block.clear()
    assert main(["steer", *argv, "--amplify", "3"]) == 130
    out = json.loads(capsys.readouterr().out)
    assert out["stop_reason"] == "cancelled" and len(out["unsteered_token_ids"]) == 64
    assert out["steered_token_ids"] == []


def test_debug_is_accepted_after_nested_subcommands():
    from steerling_lite.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["concepts", "search", "cat", "--debug"]).debug is True
    assert parser.parse_args(["--debug", "info"]).debug is True
    assert parser.parse_args(["info"]).debug is False
