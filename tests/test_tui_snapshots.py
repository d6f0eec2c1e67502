"""SVG snapshots of the app's main screens at 80x24 (pytest-textual-snapshot).

Deterministic by construction: a fixed status source (no RAM / tokens/s figures), a fresh
data dir, sessions written to the database beforehand, so no generated text (whose
random-model tokens could differ across CPUs) appears, no animations (``tests/conftest.py``
sets ``TEXTUAL_ANIMATIONS=none``: a tab's underline is drawn where it ends, not mid-way),
cursors that do not blink (a blinking cursor's state depends on when the snapshot is
taken), and the frame taken once the app is idle (``snap_compare`` waits for scheduled
animations and a pause after ``run_before``). Refresh with
``pytest tests/test_tui_snapshots.py --snapshot-update`` after an intended change, and look
at the report before committing.
"""

from __future__ import annotations

import pytest

from steerling_lite.loading.tokenizer import get_tokenizer
from tui.app import SteerlingApp
from tui.screens import ChatScreen, CompareScreen, HelpScreen, LoadScreen
from tui.store import Attribution, Session, Store, Turn
from tui.widgets import AttributionPanel

from .test_tui import fixed_status, wait_for

SIZE = (80, 24)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh data dir per test: no recent models, no other sessions."""
    monkeypatch.setenv("STEERLING_LITE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"

PROMPT = "The history of the city"
OUTPUT = (" begins with a small fishing village on the river delta. Over three centuries it grew "
          "into a trading port, then an industrial town.")
UNSTEERED = " is told in the museum by the old harbour, which opens every day except Monday."

ATTRIBUTION = {
    "text": " fishing village",
    "known": [
        {"concept_id": 12, "label": "known #12", "share": 0.31},
        {"concept_id": 5, "label": "known #5", "share": 0.18},
        {"concept_id": 40, "label": "known #40", "share": -0.07},
    ],
    "discovered": [
        {"concept_id": 210, "label": "discovered #210", "share": 0.12},
        {"concept_id": 7, "label": "discovered #7", "share": 0.04},
    ],
    "known_other": 0.02,
    "discovered_other": 0.01,
    "epsilon": 0.25,
}


def saved_session(model: str) -> int:
    """A session in the database as the app saves one (made with ``model``)."""
    tok = get_tokenizer(False)
    steering = [{"concept_id": 12, "label": "known #12", "strength": 8.0, "enabled": True},
                {"concept_id": 5, "label": "known #5", "strength": -6.0, "enabled": False}]
    settings = {"max_new_tokens": 64, "steps": 16, "temperature": None, "top_p": 0.8,
                "repetition_penalty": 1.1, "seed": 7}
    session = Session(title=PROMPT, model=model, settings=settings, steering=steering)
    turn = Turn(PROMPT, OUTPUT, prompt_ids=tok.encode(PROMPT), token_ids=tok.encode(OUTPUT), settings=settings,
                steering=steering[:1], seed=7, stop_reason="length", unsteered=UNSTEERED,
                attributions=[Attribution(4, 6, ATTRIBUTION)])
    store = Store()
    store.add_turn(session, turn)
    store.close()
    return session.id


async def steady_cursors(pilot) -> None:
    """Stop every text cursor blinking (a focused one stays drawn; with animations off the app
    already does), then wait until the app is idle: no animation scheduled, nothing pending."""
    for screen in pilot.app.screen_stack:
        for widget in screen.query("Input, TextArea"):
            widget.cursor_blink = False
    await pilot.wait_for_scheduled_animations()
    await pilot.pause()


def reopened(tiny_ckpt, then=None):
    """A ``run_before`` that waits for the model, reopens the saved session, then runs ``then``."""

    async def run_before(pilot) -> None:
        app = pilot.app
        await wait_for(pilot, lambda: app.lm is not None and isinstance(app.screen, ChatScreen), what="model")
        chat = app.screen
        await chat.open_session(app.store.list_sessions()[0].id)
        await wait_for(pilot, lambda: chat.states and chat.states[0].view.output.tokens, what="session shown")
        chat.query_one("#prompt").focus()
        if then is not None:
            await then(pilot, chat)
        await pilot.pause()
        await steady_cursors(pilot)

    return run_before


def test_snapshot_load_screen_error(snap_compare, home):
    """The load screen after a missing model directory: the error and what to do."""
    app = SteerlingApp("no/such/model", status_source=fixed_status, device="cpu")

    async def run_before(pilot) -> None:
        await wait_for(pilot, lambda: isinstance(app.screen, LoadScreen)
                       and str(app.screen.query_one("#load-error").content), what="load error")
        await wait_for(pilot, lambda: "no memory plan" in str(app.screen.query_one("#plan").content), what="plan")
        await steady_cursors(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_snapshot_chat_screen(snap_compare, home, tiny_ckpt):
    """The chat screen with a reopened session: prompt, answer, meta line, settings, status bar."""
    saved_session(str(tiny_ckpt))
    app = SteerlingApp(tiny_ckpt, status_source=fixed_status, device="cpu")
    assert snap_compare(app, terminal_size=SIZE, run_before=reopened(tiny_ckpt))


def test_snapshot_steering_panel(snap_compare, home, tiny_ckpt):
    """The steering panel: one concept amplified, one suppressed and switched off."""
    saved_session(str(tiny_ckpt))
    app = SteerlingApp(tiny_ckpt, status_source=fixed_status, device="cpu")

    async def steer(pilot, chat) -> None:
        await pilot.press("f3")

    assert snap_compare(app, terminal_size=SIZE, run_before=reopened(tiny_ckpt, steer))


def test_snapshot_attribution_panel(snap_compare, home, tiny_ckpt):
    """The attribution panel showing the saved attribution of a selected span."""
    saved_session(str(tiny_ckpt))
    app = SteerlingApp(tiny_ckpt, status_source=fixed_status, device="cpu")

    async def attribute(pilot, chat) -> None:
        chat.states[0].view.output.select(4, 6)
        chat.attribute(chat.states[0], 4, 6)
        panel = chat.query_one(AttributionPanel)
        await wait_for(pilot, lambda: panel.settled, what="the panel drawn for its width")

    assert snap_compare(app, terminal_size=SIZE, run_before=reopened(tiny_ckpt, attribute))


def test_snapshot_compare_screen(snap_compare, home, tiny_ckpt):
    """Compare: the steered answer and the unsteered one side by side."""
    saved_session(str(tiny_ckpt))
    app = SteerlingApp(tiny_ckpt, status_source=fixed_status, device="cpu")

    async def compare(pilot, chat) -> None:
        await pilot.press("ctrl+t")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, CompareScreen), what="compare")

    assert snap_compare(app, terminal_size=SIZE, run_before=reopened(tiny_ckpt, compare))


def test_snapshot_help_screen(snap_compare, home, tiny_ckpt):
    """The help screen over the chat."""
    app = SteerlingApp(tiny_ckpt, status_source=fixed_status, device="cpu")

    async def run_before(pilot) -> None:
        await wait_for(pilot, lambda: app.lm is not None and isinstance(app.screen, ChatScreen), what="model")
        await pilot.press("f1")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), what="help")
        await steady_cursors(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_snapshot_steering_panel_60x20(snap_compare, home, tiny_ckpt):
    """The steering panel in a 60x20 terminal: a narrower side panel, each slider on its line."""
    saved_session(str(tiny_ckpt))
    app = SteerlingApp(tiny_ckpt, status_source=fixed_status, device="cpu")

    async def steer(pilot, chat) -> None:
        await pilot.press("f3")

    assert snap_compare(app, terminal_size=(60, 20), run_before=reopened(tiny_ckpt, steer))
