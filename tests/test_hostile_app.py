"""Issue 13, the app's entry point: a data dir that is a file (or otherwise unwritable) is a
notification, and the app runs without saving sessions, instead of a traceback."""

from __future__ import annotations

import asyncio

from tui.app import SteerlingApp


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
