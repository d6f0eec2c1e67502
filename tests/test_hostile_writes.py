"""Issue 13, outputs and faults: writes that fail (full disk, a path through a file) or are
stopped (SIGTERM, SIGINT) leave no temporary behind and give one line; a SIGKILL leftover is
removed by the next write; a pre-quantized file without its CRC-32s is refused."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys

import pytest

from steerling_lite.atomic import OWNER_FILE, atomic_directory, remove_stale_partials
from steerling_lite.cli import main
from steerling_lite.errors import CheckpointError
from steerling_lite.loading.checkpoint import open_checkpoint


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("fault", ["sigterm", "sigint", "enospc"])
def test_quantize_stopped_or_failing_while_writing_leaves_nothing(tiny_ckpt, tmp_path, monkeypatch, capsys, fault):
    import steerling_lite.loading.prequantized as pq

    real_save = pq.save_file

    def save_then_fault(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)  # a file is half-way into the temporary
        if fault == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        os.kill(os.getpid(), signal.SIGTERM if fault == "sigterm" else signal.SIGINT)
        for _ in range(10**8):  # the handler raises at the next bytecode boundary: wait for that state
            pass
        raise AssertionError("the signal handler never ran")

    monkeypatch.setattr(pq, "save_file", save_then_fault)
    code = main(["quantize", "--model", str(tiny_ckpt), "--quant", "nf4", "--out", str(tmp_path / "q")])
    err = capsys.readouterr().err
    assert code == {"sigterm": 143, "sigint": 130, "enospc": 2}[fault]
    assert "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "q").exists() and _leftovers(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored


def test_sigkill_leftover_is_removed_by_the_next_write(tmp_path):
    out = tmp_path / "q"
    code = ("import sys; from steerling_lite.atomic import atomic_directory\n"
            f"with atomic_directory({str(out)!r}) as tmp:\n"
            "    (tmp / 'model.safetensors').write_bytes(b'x' * 1000)\n"
            "    print('ready', flush=True); sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": os.getcwd()}, text=True)
    assert proc.stdout.readline() == "ready\n"  # waits for the state: the temporary is written
    proc.kill()
    proc.wait()
    (left,) = [p for p in tmp_path.iterdir()]
    assert left.name.startswith(".q.") and (left / OWNER_FILE).is_file()
    alive = tmp_path / ".q.mine.partial"  # one of a live process is left alone
    alive.mkdir()
    (alive / OWNER_FILE).write_text(str(os.getppid()))
    with atomic_directory(out) as tmp:
        (tmp / "x").write_text("x")
    assert not left.exists() and alive.exists() and (out / "x").is_file()
    assert remove_stale_partials(out) == []


def test_prequantized_file_without_crcs_is_refused(tiny_ckpt, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from quant.prequant import META_CRC32
    from steerling_lite.loading.safetensors_header import file_header

    out = tmp_path / "q"
    assert main(["quantize", "--model", str(tiny_ckpt), "--quant", "int8", "--out", str(out)]) == 0
    capsys.readouterr()
    f = out / "model.safetensors"
    meta = {k: v for k, v in file_header(f)[2].items() if k != META_CRC32}
    tensors = load_file(str(f))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1 if tensors[name].dtype.is_floating_point else tensors[name] ^ 1
    save_file(tensors, str(f), metadata=meta)
    with pytest.raises(CheckpointError, match="no CRC-32"):
        open_checkpoint(out)
    assert main(["info", "--model", str(out)]) == 2
    assert "was altered" in capsys.readouterr().err


def test_outputs_through_a_file_are_one_line(tiny_ckpt, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["quantize", "--model", str(tiny_ckpt), "--quant", "nf4", "--out", str(blocker / "q")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(blocker) in err and err.count("\n") == 1
    assert main(["explain", "--model", str(tiny_ckpt), "--prompt", "hi", "-n", "64", "--steps", "2",
                 "--csv", str(blocker / "x.csv"), "--json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(blocker) in err and err.count("\n") == 1


def _refusing(err_no: int, strerror: str):
    def refuse(*args, dir=None, **kwargs):
        raise OSError(err_no, strerror, str(dir))
    return refuse


def test_quantize_into_a_read_only_file_system(tiny_ckpt, tmp_path, monkeypatch, capsys):
    import steerling_lite.atomic as atomic

    monkeypatch.setattr(atomic.tempfile, "mkdtemp", _refusing(errno.EROFS, "Read-only file system"))
    assert main(["quantize", "--model", str(tiny_ckpt), "--quant", "nf4", "--out", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path}: Read-only file system (read-only file system: write elsewhere)\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fault", ["enospc", "erofs"])
def test_explain_csv_into_a_full_or_read_only_file_system(tiny_ckpt, tmp_path, monkeypatch, capsys, fault):
    """The CSV is written through a temporary: a full disk (the write fails half-way) or a read-only
    file system (the temporary cannot be made) is one line and leaves nothing."""
    import steerling_lite.atomic as atomic

    if fault == "erofs":
        monkeypatch.setattr(atomic.tempfile, "mkstemp", _refusing(errno.EROFS, "Read-only file system"))
        want = f"error: {tmp_path}: Read-only file system (read-only file system: write elsewhere)\n"
    else:
        def full(fd):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(atomic.os, "fsync", full)
        want = f"error: {tmp_path / 'x.csv'}: No space left on device (the disk is full: free space or write elsewhere)\n"
    out = tmp_path / "x.csv"
    assert main(["explain", "--model", str(tiny_ckpt), "--prompt", "hi", "-n", "64", "--steps", "2",
                 "--csv", str(out), "--json"]) == 2
    assert capsys.readouterr().err == want
    assert list(tmp_path.iterdir()) == []


def test_offload_dir_on_a_read_only_file_system(tiny_ckpt, tmp_path, monkeypatch, capsys):
    """Layers quantized while loading that the plan puts on disk go to --offload-dir: a folder that
    cannot be made there is one line."""
    import quant.offload as offload
    from steerling_lite.loading.plan import plan_memory

    cap = plan_memory(tiny_ckpt, quant="nf4", device="cpu").plan.devices["cpu"].peak - 1  # a block goes to disk
    monkeypatch.setattr(offload.tempfile, "mkdtemp", _refusing(errno.EROFS, "Read-only file system"))
    off = tmp_path / "off"
    code = main(["generate", "--model", str(tiny_ckpt), "--prompt", "hi", "-n", "64", "--device", "cpu",
                 "--quant", "nf4", "--max-cpu-memory", str(cap), "--offload-dir", str(off)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.splitlines()[-1] == f"error: {off}: Read-only file system (read-only file system: write elsewhere)"


def test_offload_folder_left_by_a_killed_process_is_removed_by_the_next(tmp_path):
    from quant.offload import FOLDER_PREFIX, DiskOffload

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()  # a process that has exited (and was reaped)
    stale, live, foreign = (tmp_path / f"{FOLDER_PREFIX}{name}" for name in ("stale", "live", "foreign"))
    for folder, owner in ((stale, gone), (live, str(os.getppid())), (foreign, None)):
        folder.mkdir()
        (folder / "w.dat").write_bytes(b"\0" * 4096)
        if owner is not None:
            (folder / OWNER_FILE).write_text(owner)
    off = DiskOffload(tmp_path)
    try:
        assert not stale.exists() and live.exists() and foreign.exists()
        assert (off.folder / OWNER_FILE).read_text() == str(os.getpid())
    finally:
        off.discard()
