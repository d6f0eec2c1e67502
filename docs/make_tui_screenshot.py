"""Regenerate docs/tui.svg, the README's screenshot of the terminal app.

A real run on the embedded default model (fixed seed): steer one concept found by search,
generate, select tokens of the answer, attribute them and their input tokens, then save
the SVG Textual exports (``App.save_screenshot``).

    python docs/make_tui_screenshot.py [OUT.svg] [PROMPT] [CONCEPT SEARCH]
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

os.environ["STEERLING_LITE_HOME"] = tempfile.mkdtemp()  # no sessions of yours in the picture

from textual.widgets import Input  # noqa: E402

from steerling_lite import resolve_model_dir  # noqa: E402
from tui.app import SteerlingApp  # noqa: E402
from tui.screens import ChatScreen  # noqa: E402
from tui.widgets.steering import ConceptRow  # noqa: E402

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("tui.svg"))
PROMPT = sys.argv[2] if len(sys.argv) > 2 else "A river is"
CONCEPT = sys.argv[3] if len(sys.argv) > 3 else "water"
SIZE = (80, 24)  # the size the app is laid out for
STRENGTH = 3.0


async def wait_for(pilot, cond, timeout: float = 300.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if cond():
            return
        await pilot.pause(0.05)
    raise TimeoutError("the app did not get there in time")


async def main() -> None:
    app = SteerlingApp(resolve_model_dir(), device="cpu")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.lm is not None and isinstance(app.screen, ChatScreen))
        chat = app.screen
        chat.query_one("#set-seed", Input).value = "3"
        await pilot.press("f3", *CONCEPT)
        await pilot.pause(0.2)
        await pilot.press("enter")  # steer the best match (at +8) ...
        chat.query_one(ConceptRow).strength = STRENGTH  # ... then gently: the small model drowns at +8
        await pilot.pause(0.2)
        prompt = chat.query_one("#prompt")
        prompt.focus()
        prompt.load_text(PROMPT)
        await pilot.press("enter")
        await wait_for(pilot, lambda: chat.generation is None and chat.states)
        state = chat.states[0]
        await pilot.press("ctrl+g", "right", "right", "right", "shift+right", "enter")
        await wait_for(pilot, lambda: state.turn.attributions)
        await pilot.press("i")
        await wait_for(pilot, lambda: any(a.data.get("inputs") for a in state.turn.attributions))
        await pilot.pause(0.5)
        app.save_screenshot(OUT.name, str(OUT.parent))
        print(f"wrote {OUT}")


if __name__ == "__main__":
    asyncio.run(main())
