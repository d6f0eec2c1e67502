"""Issue 13, the app's entry point: a data dir that is a file (or otherwise unwritable) is a
notification, and the app runs without saving sessions, instead of a traceback; ``python -m tui``
has the CLI's error boundary (one line, exit 2)."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from steerling_lite import SteerlingError
from tui.app import SteerlingApp
from tui.store import StoreError


def test_app_with_a_data_dir_that_is_a_file(tmp_path, monkeypatch):
    blocker = tmp_path / "home"
    blocker.write_text("not a directory")
    monkeypatch.setenv("STEERLING_LITE_HOME", str(blocker))

    async def run() -> list[str]:
        app = SteerlingApp(store_path=blocker / "sessions.sqlite3")
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            assert app.store is None
            return [n.message for n in app._notifications]

    messages = asyncio.run(run())
    assert any(str(blocker) in m and "sessions will not be saved" in m for m in messages)


@pytest.mark.parametrize("case", ["database is a directory", "read-only parent"])
def test_app_with_an_unusable_sessions_database(tmp_path, monkeypatch, case):
    """The database path is a directory (sqlite cannot open it), or its folder cannot be created
    (a read-only parent: simulated, as root may write anywhere): a notification, no traceback."""
    db = tmp_path / "home" / "sessions.sqlite3"
    if case == "database is a directory":
        db.mkdir(parents=True)
        shown = str(db)
    else:
        real_mkdir = Path.mkdir

        def read_only(self, *args, **kwargs):
            if str(self).startswith(str(tmp_path)):
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            return real_mkdir(self, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", read_only)
        shown = str(db.parent)

    async def run() -> list[str]:
        app = SteerlingApp(store_path=db)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            assert app.store is None
            return [n.message for n in app._notifications]

    messages = asyncio.run(run())
    assert any(shown in m and "sessions will not be saved" in m and "\n" not in m for m in messages), messages


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_python_m_tui_error_boundary(monkeypatch, capsys):
    """``python -m tui``: a model name never pulled, or a sessions-database error that escapes the
    app, is one line and exit 2; an unexpected error one line and exit 3; ``--debug`` re-raises."""
    import tui.command as command

    assert command.main(["--model", "nobody/never-pulled"]) == 2
    assert "nobody/never-pulled: no such model directory" in _one_line(capsys)
    with pytest.raises(SteerlingError):
        command.main(["--model", "nobody/never-pulled", "--debug"])

    def store_fails(args):
        raise StoreError("/data/sessions.sqlite3: cannot open the sessions database (disk I/O error)")

    monkeypatch.setattr(command, "run", store_fails)
    assert command.main([]) == 2
    assert "/data/sessions.sqlite3: cannot open" in _one_line(capsys)

    def bug(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(command, "run", bug)
    assert command.main([]) == 3
    assert "ZeroDivisionError" in _one_line(capsys)


def test_python_m_tui_as_users_start_it(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tui", "--model", "nobody/never-pulled"], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.returncode == 2 and proc.stderr.startswith("error: nobody/never-pulled: no such model directory")
    assert proc.stderr.count("\n") == 1 and proc.stdout == ""
