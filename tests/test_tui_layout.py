"""The app at 80x24 and 60x20 as a person sees it: what is on the terminal (the text Textual
draws), where the focus goes, what the keys do, what the fields and the status bar say.

Each test drives the app through Pilot on a tiny random checkpoint and reads the screen
with :func:`screen_lines` (the text of the frame ``App.export_screenshot`` draws). Nothing
here depends on timing: animations are off (``tests/conftest.py``) and every wait is for a
state of the app, not for a time.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from rich.console import Console
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Footer, Input, TabbedContent

from tui.app import SteerlingApp
from tui.backend import Status
from tui.concepts import STRENGTH_MAX, STRENGTH_MIN, attribute_inputs
from tui.screens import ChatScreen, CompareScreen, ConfirmScreen, HistoryScreen
from tui.store import Attribution, Session, Store, Turn
from tui.widgets import AttributionPanel, ConceptRow, OutputView, PromptArea, StatusBar, SteeringPanel

from .test_tui import async_test, error_text, fixed_status, home, loaded, send, set_form, wait_for  # noqa: F401 (home: a fixture)

LONG_NAME = "topic: music (an artistic / form of) and everything around it"


def screen_lines(app) -> list[str]:
    """The terminal's lines as plain text: the frame :meth:`App.export_screenshot` draws."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, record=True,
                      color_system=None, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text().splitlines()


def region_text(app, widget) -> list[str]:
    """The lines of the terminal inside ``widget``'s region on screen."""
    r = widget.region
    return [line[r.x:r.x + r.width] for line in screen_lines(app)[r.y:r.y + r.height]]


@pytest.fixture
def labelled_ckpt(tiny_ckpt, tmp_path) -> Path:
    """The tiny checkpoint with a labels file whose concept 3 has a long name."""
    ckpt = tmp_path / "labelled"
    shutil.copytree(tiny_ckpt, ckpt)
    (ckpt / "concept_labels.csv").write_text(
        "concept_id,concept_name,concept_description,head\n"
        f"3,{LONG_NAME},songs and instruments,known\n"
        "9,Legal language,contracts and statutes,known\n"
    )
    return ckpt


# ---------------------------------------------------------------------------------------
# the chat follows a growing answer


@async_test
async def test_chat_follows_the_answer_unless_scrolled_up(tiny_ckpt, home):
    app = SteerlingApp(tiny_ckpt, status_source=fixed_status, device="cpu")
    async with app.run_test(size=(80, 24)) as pilot:
        chat = await loaded(pilot)
        turns = chat.query_one("#turns", VerticalScroll)
        set_form(chat, seed=1)
        await send(pilot, chat, "First")
        await send(pilot, chat, "Second")  # the chat is full: what comes next is below the fold
        set_form(chat, max_new_tokens=256, steps=16)
        await send(pilot, chat, "A long one")
        await wait_for(pilot, lambda: turns.max_scroll_y > 0 and turns.scroll_y == turns.max_scroll_y,
                       what="the chat at its end")
        meta = chat.states[-1].view.query_one(".turn-meta")
        assert "256 tokens" in str(meta.content) or "stop: eot" in str(meta.content)
        # the answer's last line (its meta line) is on the terminal
        assert any("seed 1 · " in line for line in region_text(app, turns)[-3:])
        # scrolled up by the user while it writes: the chat stays where the user is
        set_form(chat, max_new_tokens=256, steps=256)
        await send(pilot, chat, "Another long one", wait=False)
        view = chat.query(OutputView).last()
        await wait_for(pilot, lambda: any(s is not None for s in view.block), what="first denoising step")
        turns.scroll_home(animate=False, immediate=True)  # as the mouse wheel or pgup would
        await pilot.pause()
        assert not chat.following
        await wait_for(pilot, lambda: chat.generation is None and len(chat.states) == 4, what="generation done")
        for _ in range(5):  # let any scroll the app had scheduled happen
            await pilot.pause()
        assert turns.scroll_y == 0 < turns.max_scroll_y


# ---------------------------------------------------------------------------------------
# sliders, labels and the side panel at 80x24 and 60x20


@pytest.mark.parametrize("size", [(80, 24), (60, 20)])
@async_test
async def test_long_concept_name_keeps_its_slider(labelled_ckpt, home, size):
    app = SteerlingApp(labelled_ckpt, status_source=fixed_status, device="cpu")
    async with app.run_test(size=size) as pilot:
        chat = await loaded(pilot)
        await pilot.press("f3", *"#3", "enter")
        row = chat.query_one(ConceptRow)
        steps = int(STRENGTH_MAX - STRENGTH_MIN)
        await pilot.press(*["shift+right"] * steps)  # shift+arrows move the slider, which is drawn
        await pilot.pause()
        label, slider = region_text(app, row)
        assert label.startswith("[x] topic: music") and label.rstrip().endswith("…")
        assert "●" in slider and slider.rstrip().endswith(f"{STRENGTH_MAX:+.0f}")
        await pilot.press(*["shift+left"] * steps)
        await pilot.pause()
        assert region_text(app, row)[1].rstrip().endswith(f"{STRENGTH_MIN:+.0f}")


@pytest.mark.parametrize("width, side", [(60, 27), (80, 32), (120, 48), (200, 60)])
@async_test
async def test_side_panel_width_is_proportional_within_bounds(tiny_ckpt, home, width, side):
    app = SteerlingApp(tiny_ckpt, status_source=fixed_status, device="cpu")
    async with app.run_test(size=(width, 24)) as pilot:
        chat = await loaded(pilot)
        assert chat.query_one("#side").outer_size.width == side
        assert chat.query_one("#chat-col").outer_size.width == width - side


def saved_attribution_session(model: str) -> None:
    """A saved session whose answer has an attribution with 8 known and 8 discovered rows."""
    from steerling_lite.loading.tokenizer import get_tokenizer

    tok = get_tokenizer(False)
    data = {
        "text": " fishing village",
        "known": [{"concept_id": i, "label": f"known #{i}", "share": 0.3 - 0.03 * i} for i in range(8)],
        "discovered": [{"concept_id": 3000 + i, "label": f"discovered #{3000 + i}", "share": 0.1 - 0.01 * i}
                       for i in range(8)],
        "known_other": 0.02, "discovered_other": 0.01, "epsilon": 0.25,
    }
    prompt, output = "The history of the city", " begins with a small fishing village on the river delta."
    session = Session(title=prompt, model=model, settings={"max_new_tokens": 64, "seed": 7})
    turn = Turn(prompt, output, prompt_ids=tok.encode(prompt), token_ids=tok.encode(output),
                settings={"max_new_tokens": 64, "seed": 7}, seed=7, stop_reason="length",
                attributions=[Attribution(4, 6, data)])
    store = Store()
    store.add_turn(session, turn)
    store.close()


@pytest.mark.parametrize("size", [(80, 24), (60, 20)])
@async_test
async def test_attribution_panel_shows_epsilon_and_says_there_is_more(tiny_ckpt, home, size):
    saved_attribution_session(str(tiny_ckpt))
    app = SteerlingApp(tiny_ckpt, status_source=fixed_status, device="cpu")
    async with app.run_test(size=size) as pilot:
        chat = await loaded(pilot)
        await chat.open_session(app.store.list_sessions()[0].id)
        await pilot.press("f2", "f4")
        attribution = chat.query_one(AttributionPanel)
        await wait_for(pilot, lambda: attribution.settled, what="the panel drawn for its width")
        panel = chat.query_one("#tab-attr")
        shown = "\n".join(region_text(app, panel))
        assert "epsilon 25.0%" in shown  # in view at once
        assert "known #0" in shown
        if size == (80, 24):
            assert "discovered #3000" in shown  # whole labels, not "discovered #3…"
        scroll = chat.query_one("#attr-scroll", VerticalScroll)
        assert scroll.max_scroll_y > 0 and "▼ more below" in shown
        # the focus came to the panel (f4 from the settings field): the keys scroll it
        assert app.focused is scroll
        await pilot.press("end")
        await wait_for(pilot, lambda: attribution.settled and scroll.scroll_y == scroll.max_scroll_y, what="the end")
        shown = "\n".join(region_text(app, panel))
        assert "▼ more below" not in shown and "Input tokens" in shown


# ---------------------------------------------------------------------------------------
# focus and keys


@async_test
async def test_function_keys_work_from_the_concept_search_and_tab_reaches_the_rows(labelled_ckpt, home):
    app = SteerlingApp(labelled_ckpt, status_source=fixed_status, device="cpu")
    async with app.run_test(size=(80, 24)) as pilot:
        chat = await loaded(pilot)
        side = chat.query_one("#side", TabbedContent)
        await pilot.press("f3", *"#3", "enter")
        search = chat.query_one("#concept-search", Input)
        for typed in ("", "music"):  # the results list hidden, then shown
            search.focus()
            search.value = typed
            await pilot.pause()
            await pilot.press("f4")
            assert side.active == "tab-attr" and app.focused is not search
            await pilot.press("f3")
            assert side.active == "tab-steer" and app.focused is search
            await pilot.press("f2")
            assert side.active == "tab-settings" and app.focused is chat.query_one("#set-max_new_tokens")
            await pilot.press("f3")
        search.value = ""
        await pilot.pause()
        await pilot.press("tab")
        assert isinstance(app.focused, ConceptRow)  # one press: no invisible stop in between
        # every stop of the focus chain is a field, a button, a row, an answer, the tab bar or
        # a scroll area that is drawn differently when focused
        visible = ("Input", "PromptArea", "Button", "ConceptRow", "OutputView", "ContentTabs", "OptionList")
        for widget in chat.focus_chain:
            assert type(widget).__name__ in visible or widget.id in ("turns", "attr-scroll"), widget


@async_test
async def test_footer_shows_whole_keys(labelled_ckpt, home):
    """At 80 columns, whatever has the focus: every key of the footer whole, left of the
    command palette's, and nothing after that one."""
    app = SteerlingApp(labelled_ckpt, status_source=fixed_status, device="cpu")
    async with app.run_test(size=(80, 24)) as pilot:
        chat = await loaded(pilot)
        await send(pilot, chat, "Footer")
        await pilot.press("f3", *"#3", "enter")
        footer = chat.query_one(Footer)
        for focus, key in ((chat.query_one("#prompt"), "Stop"), (chat.states[0].view.output, "Explain"),
                           (chat.query_one(ConceptRow), "On/off")):
            focus.focus()
            await wait_for(pilot, lambda: key in region_text(app, footer)[0], what=f"the footer for {key}")
            line = region_text(app, footer)[0]
            assert line.rstrip().endswith("^p palette"), line
            keys = [k for k in footer.query("FooterKey") if not k.has_class("-command-palette")]
            palette = footer.query_one(".-command-palette")
            assert keys and all(k.region.right <= palette.region.x for k in keys), (type(focus).__name__, line)


# ---------------------------------------------------------------------------------------
# settings, status, selection


@async_test
async def test_settings_are_validated_as_typed(tiny_ckpt, home):
    app = SteerlingApp(tiny_ckpt, status_source=fixed_status, device="cpu")
    async with app.run_test(size=(80, 24)) as pilot:
        chat = await loaded(pilot)
        field = chat.query_one("#set-max_new_tokens", Input)
        problem = chat.query_one("#sampling-error")
        await pilot.press("f2")
        assert app.focused is field
        await pilot.press(*"300")
        assert field.has_class("-invalid")
        assert "multiple of the model's diffusion block size 64 (try 320)" in str(problem.content)
        await pilot.press("backspace", "backspace", "backspace", *"128")
        assert not field.has_class("-invalid") and str(problem.content) == ""
        steps = chat.query_one("#set-steps", Input)
        steps.value = "5"  # 2 blocks: steps must be a multiple of 2
        await pilot.pause()
        assert steps.has_class("-invalid") and "multiple of the number of generated blocks" in str(problem.content)
        field.value = "64"  # one block: 5 steps are fine now
        await pilot.pause()
        assert not steps.has_class("-invalid") and str(problem.content) == ""
        for key, bad, says in (("top_p", "2", "top_p"), ("temperature", "hot", "not a number"),
                               ("repetition_penalty", "0.5", "repetition_penalty must be >= 1")):
            box = chat.query_one(f"#set-{key}", Input)
            good = box.value
            box.value = bad
            await pilot.pause()
            assert box.has_class("-invalid") and says in str(problem.content), key
            box.value = good
            await pilot.pause()
            assert not box.has_class("-invalid")


@async_test
async def test_status_bar_shows_live_tokens_per_second(tiny_ckpt, home):
    seen: list[float | None] = []

    def source(lm, tokens_per_s):
        seen.append(tokens_per_s)
        return Status(device="cpu", dtype="float32", quant="none", ram_bytes=None, gpu_bytes=None,
                      tokens_per_s=tokens_per_s)

    app = SteerlingApp(tiny_ckpt, status_source=source, device="cpu")
    async with app.run_test(size=(80, 24)) as pilot:
        chat = await loaded(pilot)
        await send(pilot, chat, "First")
        chat.conversation.last_tps = 12345.0  # the previous answer's (unmistakable) figure
        chat.refresh_status()
        bar = chat.query_one(StatusBar)
        assert "12345.0 tok/s" in str(bar.content)
        set_form(chat, max_new_tokens=512, steps=512)
        await send(pilot, chat, "Second", wait=False)
        assert "12345.0" not in str(bar.content)  # not the previous answer's while generating
        await wait_for(pilot, lambda: chat.live_tps is not None, what="a live figure")
        await pilot.pause()
        assert f"{chat.live_tps:.1f} tok/s" in str(bar.content) and chat.live_tps != 12345.0
        chat.refresh_status()  # the periodic refresh keeps the live figure too
        assert seen[-1] == chat.live_tps
        await pilot.press("escape")
        await wait_for(pilot, lambda: chat.generation is None and len(chat.states) == 2, what="stopped")


@async_test
async def test_input_tokens_keep_the_selection(tiny_ckpt, home):
    app = SteerlingApp(tiny_ckpt, status_source=fixed_status, device="cpu")
    async with app.run_test(size=(80, 24)) as pilot:
        chat = await loaded(pilot)
        set_form(chat, seed=2)
        await send(pilot, chat, "Attribution test")
        state = chat.states[0]
        output = state.view.output
        await pilot.press("ctrl+g", "right", "right", "shift+right", "i")
        await wait_for(pilot, lambda: any(a.data.get("inputs") for a in state.turn.attributions), what="inputs")
        assert output.selection == (2, 4)  # kept, not narrowed to the cursor's token
        (a,) = state.turn.attributions
        assert (a.start, a.end) == (2, 4)
        # the span's input scores are the sum of its tokens' (IG is linear in the target)
        each = [attribute_inputs(app.lm, state.attribution, state.positions[i]) for i in (2, 3)]
        scale = max(abs(r["score"]) for r in a.data["inputs"])
        assert scale > 0
        for row, r2, r3 in zip(a.data["inputs"], *each, strict=True):
            assert row["score"] == pytest.approx(r2["score"] + r3["score"], rel=1e-3, abs=1e-4 * scale)
        assert "summed over the span" in str(chat.query_one("#attr-inputs-body").content)


# ---------------------------------------------------------------------------------------
# errors, confirmations, messages


@async_test
async def test_stale_errors_are_cleared_by_new_session_and_load(tiny_ckpt, make_ckpt, home):
    app = SteerlingApp(tiny_ckpt, status_source=fixed_status, device="cpu")
    async with app.run_test(size=(80, 24)) as pilot:
        chat = await loaded(pilot)
        set_form(chat, max_new_tokens=65)
        await send(pilot, chat, "hello", wait=False)
        assert "multiple of the model's diffusion block" in error_text(chat)
        chat.query_one(SteeringPanel).show_error("unknown concept 'x'")
        await pilot.press("ctrl+n")
        assert error_text(chat) == "" and str(chat.query_one("#steer-error").content) == ""
        # an error, then another model loaded: the error is gone
        await pilot.press("f3", *"#500", "enter")
        assert "unknown concept #500" in str(chat.query_one("#steer-error").content)
        app.initial_model = ""
        app.open_model(str(make_ckpt(seed=1)), autoload=True)
        await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen) and str(app.lm.path) != str(tiny_ckpt),
                       what="second model")
        await pilot.pause()
        assert str(chat.query_one("#steer-error").content) == "" and error_text(chat) == ""


@async_test
async def test_deleting_a_session_asks_first(tiny_ckpt, home):
    app = SteerlingApp(tiny_ckpt, status_source=fixed_status, device="cpu")
    async with app.run_test(size=(80, 24)) as pilot:
        chat = await loaded(pilot)
        await send(pilot, chat, "Keep me?")
        for answer, left in (("n", 1), ("escape", 1), ("y", 0)):
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen), what="history")
            await pilot.press("delete")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
            assert "Keep me?" in "\n".join(screen_lines(app))
            await pilot.press(answer)
            await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen), what="answered")
            assert app.screen.query_one(DataTable).row_count == left
            assert len(app.store.list_sessions()) == left
            await pilot.press("escape")
        # the session on screen was deleted: a new one took its place, and it is saved
        assert chat.states == [] and chat.session.id is None
        await send(pilot, chat, "Keep me too")
        assert "● saved" in str(chat.query_one(StatusBar).content)
        # enter on the dialog presses its focused button, which is No
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen), what="history")
        await pilot.press("delete")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen), what="answered")
        assert len(app.store.list_sessions()) == 1


@async_test
async def test_compare_says_how_to_close_it(tiny_ckpt, home):
    app = SteerlingApp(tiny_ckpt, status_source=fixed_status, device="cpu")
    async with app.run_test(size=(80, 24)) as pilot:
        chat = await loaded(pilot)
        chat.query_one(SteeringPanel).add_concept(app.catalog.get(5))
        await send(pilot, chat, "Compare me")
        await pilot.press("ctrl+t")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen), what="compare")
        await pilot.pause()
        assert "esc close" in "\n".join(screen_lines(app))
        await pilot.press("escape")
        assert isinstance(app.screen, ChatScreen)


@async_test
async def test_concept_search_without_a_match_says_so(labelled_ckpt, home):
    app = SteerlingApp(labelled_ckpt, status_source=fixed_status, device="cpu")
    async with app.run_test(size=(80, 24)) as pilot:
        chat = await loaded(pilot)
        await pilot.press("f3", *"melody")
        await pilot.pause()
        note = chat.query_one("#steer-note")
        assert str(note.content) == "no concept matches 'melody'"
        assert "no concept matches 'melody'" in "\n".join(screen_lines(app))
        await pilot.press(*["backspace"] * 6, *"music")
        assert str(note.content) == "" and chat.query_one("#concept-results").option_count == 1


@async_test
async def test_system_prompt_of_a_chat_is_shown_first(make_ckpt, home):
    app = SteerlingApp(make_ckpt(instruct=True), status_source=fixed_status, device="cpu")
    async with app.run_test(size=(80, 24)) as pilot:
        chat = await loaded(pilot)
        line = chat.query_one("#system-line")
        assert not line.display
        set_form(chat, system="Be brief.")
        await send(pilot, chat, "Hi there")
        assert line.display and str(line.content) == "system Be brief."
        turns = chat.query_one("#turns", VerticalScroll)
        shown = [w for w in turns.children if w.display]
        assert shown[0] is line and shown[1] is chat.states[0].view
        turns.scroll_home(animate=False)
        await pilot.pause()
        assert any("system Be brief." in row for row in region_text(app, turns))
        await pilot.press("ctrl+n")
        assert not line.display


@async_test
async def test_test_apps_do_not_animate_or_blink(tiny_ckpt, home):
    app = SteerlingApp(tiny_ckpt, status_source=fixed_status, device="cpu")
    async with app.run_test(size=(80, 24)) as pilot:
        chat = await loaded(pilot)
        assert app.animation_level == "none"
        assert app.focused is chat.query_one("#prompt", PromptArea)
        assert chat.query_one("#prompt", PromptArea).cursor_blink is False
        await pilot.press("f3")
        assert app.focused.cursor_blink is False
