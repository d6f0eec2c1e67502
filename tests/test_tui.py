"""The Textual app driven through Pilot on tiny random checkpoints: load, generate, stop, steer,
compare, attribute, sessions, export, and the bad inputs that must show an error and keep the
app working."""

from __future__ import annotations

import asyncio
import functools
import json
import shutil
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input

from steerling_lite import ChatMessage, GenerationConfig, Steerling
from steerling_lite.interpret.concepts import fallback_label
from tui.app import SteerlingApp
from tui.backend import Status, read_status
from tui.concepts import DEFAULT_STRENGTH
from tui.screens import ChatScreen, CompareScreen, ExportScreen, HelpScreen, HistoryScreen, LoadScreen
from tui.store import Store
from tui.widgets import ConceptRow, OutputView, PromptArea, StatusBar, SteeringPanel

SIZE = (80, 24)


def async_test(fn):
    """Run an ``async def`` test with ``asyncio.run`` (no pytest async plugin needed)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))

    del run.__wrapped__  # pytest must see a plain function; fixtures come from the signature below
    run.__signature__ = __import__("inspect").signature(fn)
    return run


def fixed_status(lm, tokens_per_s):
    """A status source that never varies (for snapshots and stable assertions)."""
    return Status(device="cpu", dtype="float32", quant="none", ram_bytes=512 * 2**20, gpu_bytes=None,
                  tokens_per_s=None)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh data dir per test (sessions database, exports)."""
    h = tmp_path / "home"
    monkeypatch.setenv("STEERLING_LITE_HOME", str(h))
    return h


async def wait_for(pilot, cond, timeout: float = 60.0, what: str = "condition") -> None:
    """Let the app run until ``cond()`` holds (workers run in threads)."""
    steps = int(timeout / 0.02)
    for _ in range(steps):
        if cond():
            return
        await pilot.pause(0.02)
    raise AssertionError(f"timed out waiting for {what}")


FAST_STEPS = 16  # 4 tokens per denoising step: the tests' generations cost a quarter


async def loaded(pilot, steps: int | None = FAST_STEPS) -> ChatScreen:
    """Wait for the model to load; set the steps field (default 16) to keep tests fast."""
    app = pilot.app
    await wait_for(pilot, lambda: app.lm is not None and isinstance(app.screen, ChatScreen), what="model loaded")
    await pilot.pause()
    if steps is not None:
        set_form(app.screen, steps=steps)
    return app.screen


def set_form(chat: ChatScreen, **values) -> None:
    for key, value in values.items():
        chat.query_one(f"#set-{key}", Input).value = str(value)


async def send(pilot, chat: ChatScreen, text: str, wait: bool = True) -> None:
    prompt = chat.query_one("#prompt", PromptArea)
    prompt.focus()
    prompt.load_text(text)
    n = len(chat.states)
    await pilot.press("enter")
    if wait:
        await wait_for(pilot, lambda: chat.generation is None and len(chat.states) > n, what="generation done")
        await pilot.pause()


def error_text(chat: ChatScreen) -> str:
    return str(chat.query_one("#chat-error").content)


def direct(ckpt: Path, prompt, **config) -> str:
    """The same generation run straight on the runtime (what the app must show)."""
    lm = Steerling.load(ckpt, device="cpu")
    return lm.generate(prompt, GenerationConfig(**config), chat=False if isinstance(prompt, str) else None).text


# ---------------------------------------------------------------------------------------
# load, generate, stop


@async_test
async def test_load_generate_and_save(tiny_ckpt, home):
    app = SteerlingApp(tiny_ckpt, status_source=fixed_status, device="cpu")
    async with app.run_test(size=SIZE) as pilot:
        chat = await loaded(pilot)
        assert "model · base" in app.sub_title
        set_form(chat, seed=7, max_new_tokens=64)
        await send(pilot, chat, "The history of the city")
        turn = chat.states[0].turn
        assert turn.seed == 7 and turn.stop_reason in ("length", "eot")
        # what the app shows is what the runtime generates for the same settings
        assert turn.output == direct(tiny_ckpt, "The history of the city", max_new_tokens=64, steps=FAST_STEPS, seed=7)
        assert "".join(chat.states[0].tokens) == turn.output or turn.output in "".join(chat.states[0].tokens)
        assert error_text(chat) == ""
        assert "saved" in str(chat.query_one(StatusBar).content)
    store = Store()
    (summary,) = store.list_sessions()
    assert summary.title == "The history of the city" and summary.turns == 1
    saved = store.load_session(summary.id)
    assert saved.turns[0].output == turn.output and saved.turns[0].seed == 7
    assert saved.turns[0].settings["max_new_tokens"] == 64
    assert store.recent_models() == [str(tiny_ckpt)]


@async_test
async def test_stop_mid_generation_keeps_partial_text(tiny_ckpt, home):
    app = SteerlingApp(tiny_ckpt, status_source=fixed_status, device="cpu")
    async with app.run_test(size=SIZE) as pilot:
        chat = await loaded(pilot)
        set_form(chat, seed=3, max_new_tokens=896, steps=896)  # plenty of steps to stop in
        await send(pilot, chat, "Once upon a time", wait=False)
        await wait_for(pilot, lambda: chat.query(OutputView) and any(
            s is not None for s in chat.query_one(OutputView).block), what="first denoising step")
        await pilot.press("escape")
        await wait_for(pilot, lambda: chat.generation is None and chat.states, what="stopped")
        turn = chat.states[0].turn
        assert turn.stop_reason == "cancelled"
        assert 0 < len(turn.token_ids) < 896
        assert turn.output == app.lm.tokenizer.decode(turn.token_ids)
        assert "stopped" in str(chat.query_one(StatusBar).content)
        # the app keeps working: a new generation runs to the end
        set_form(chat, max_new_tokens=64, steps=FAST_STEPS)
        await send(pilot, chat, "Again")
        assert chat.states[1].turn.stop_reason in ("length", "eot")
    assert Store().load_session(Store().list_sessions()[0].id).turns[0].stop_reason == "cancelled"


@async_test
async def test_instruct_model_uses_chat_template_with_history(make_ckpt, home):
    ckpt = make_ckpt(instruct=True)
    app = SteerlingApp(ckpt, status_source=fixed_status, device="cpu")
    async with app.run_test(size=SIZE) as pilot:
        chat = await loaded(pilot)
        assert "instruct" in app.sub_title
        assert chat.query_one(".system-row").display
        set_form(chat, seed=1, system="Be brief.")
        await send(pilot, chat, "Hi there")
        await send(pilot, chat, "And then?")
        first, second = (s.turn for s in chat.states)
        want = app.lm.encode_prompt([
            ChatMessage("system", "Be brief."), ChatMessage("user", "Hi there"),
            ChatMessage("assistant", first.output), ChatMessage("user", "And then?"),
        ])
        assert second.prompt_ids == want


# ---------------------------------------------------------------------------------------
# steering


@async_test
async def test_steering_concept_changes_output_and_compare(tiny_ckpt, home):
    app = SteerlingApp(tiny_ckpt, status_source=fixed_status, device="cpu")
    async with app.run_test(size=SIZE) as pilot:
        chat = await loaded(pilot)
        set_form(chat, seed=11)
        await send(pilot, chat, "Tell me about rivers")
        plain = chat.states[0].turn.output
        await pilot.press("f3")
        assert app.focused is chat.query_one("#concept-search")
        await pilot.press("#", "5", "enter")
        row = chat.query_one(ConceptRow)
        assert (row.concept_id, row.label, row.strength, row.enabled) == (5, fallback_label(5), DEFAULT_STRENGTH, True)
        row.strength = 8.0  # issue 12: the default is no longer the 8B preset's +8
        await pilot.press("right", "right")  # +10
        assert row.strength == 10.0
        await send(pilot, chat, "Tell me about rivers")
        steered = chat.states[1].turn
        assert steered.steering == [{"concept_id": 5, "label": "known #5", "strength": 10.0, "enabled": True}]
        assert steered.seed == 11 and steered.output != plain
        assert "steered: known #5 +10" in str(chat.states[1].view.query_one(".turn-meta").content)
        # compare: the unsteered answer with the same seed is the first answer again
        await pilot.press("ctrl+t")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen), what="compare screen")
        assert app.screen.unsteered == plain and app.screen.steered == steered.output
        await pilot.press("escape")
        assert isinstance(app.screen, ChatScreen)
        # turning the concept off (space) removes it from the plan: unsteered again
        row.focus()
        await pilot.press("space")
        assert row.enabled is False
        await send(pilot, chat, "Tell me about rivers")
        assert chat.states[2].turn.output == plain
    saved = Store().load_session(Store().list_sessions()[0].id)
    assert saved.turns[1].unsteered == plain


@async_test
async def test_steering_change_applies_to_running_generation(tiny_ckpt, home):
    app = SteerlingApp(tiny_ckpt, status_source=fixed_status, device="cpu")
    async with app.run_test(size=SIZE) as pilot:
        chat = await loaded(pilot)
        set_form(chat, seed=5, max_new_tokens=512, steps=512)
        await send(pilot, chat, "Live steering", wait=False)
        await wait_for(pilot, lambda: chat.query(OutputView) and any(
            s is not None for s in chat.query_one(OutputView).block), what="first denoising step")
        chat.query_one(SteeringPanel).add_concept(app.catalog.get(7))
        await wait_for(pilot, lambda: chat.live_steering_updates == 1, what="steering handed to the generation")
        assert "steering updated" in str(chat.query_one(StatusBar).content)
        await pilot.pause(0.2)  # a few more denoising steps
        await pilot.press("escape")
        await wait_for(pilot, lambda: chat.generation is None and chat.states, what="generation done")
        trace = chat.states[0].attribution.trace
        plans = [s.plan for s in trace.steps]
        assert plans[0] is None  # started unsteered
        assert plans[-1] is not None and plans[-1].specs[0].concept_id == 7  # steered from a later step on
        switch = next(i for i, p in enumerate(plans) if p is not None)
        assert all(p is not None for p in plans[switch:])
        turn = chat.states[0].turn
        assert turn.steering[0]["concept_id"] == 7 and turn.settings["steering_changed_while_generating"]
        assert "steering changed while generating" in str(chat.states[0].view.query_one(".turn-meta").content)


@async_test
async def test_unknown_concept_shows_error(tiny_ckpt, home):
    app = SteerlingApp(tiny_ckpt, status_source=fixed_status, device="cpu")
    async with app.run_test(size=SIZE) as pilot:
        chat = await loaded(pilot)
        await pilot.press("f3")
        await pilot.press(*"#500", "enter")
        err = str(chat.query_one("#steer-error").content)
        assert "unknown concept #500" in err and "#0..#99" in err
        search = chat.query_one("#concept-search", Input)
        search.value = "banana"
        await pilot.press("enter")
        assert "unknown concept 'banana'" in str(chat.query_one("#steer-error").content)
        assert not chat.query(ConceptRow)
        # still works: a valid id is added
        search.value = "42"
        await pilot.press("enter")
        assert [r.concept_id for r in chat.query(ConceptRow)] == [42]


@async_test
async def test_concept_search_by_name_with_labels_file(tiny_ckpt, home, tmp_path):
    ckpt = tmp_path / "labelled"
    shutil.copytree(tiny_ckpt, ckpt)
    (ckpt / "concept_labels.csv").write_text(
        "concept_id,concept_name,concept_description,head\n"
        "3,Rivers and lakes,bodies of fresh water,known\n"
        "9,Legal language,contracts and statutes,known\n"
    )
    app = SteerlingApp(ckpt, status_source=fixed_status, device="cpu")
    async with app.run_test(size=SIZE) as pilot:
        chat = await loaded(pilot)
        await pilot.press("f3")
        await pilot.press(*"water")
        results = chat.query_one("#concept-results")
        assert results.option_count == 1 and "Rivers and lakes" in str(results.get_option_at_index(0).prompt)
        await pilot.press("enter")
        (row,) = chat.query(ConceptRow)
        assert (row.concept_id, row.label) == (3, "Rivers and lakes")


# ---------------------------------------------------------------------------------------
# attribution


async def first_answer(pilot, prompt: str = "Attribution test", seed: int = 2):
    """The loaded chat screen and the state of its first answer to ``prompt`` (seed ``seed``)."""
    chat = await loaded(pilot)
    set_form(chat, seed=seed)
    await send(pilot, chat, prompt)
    return chat, chat.states[0]


@async_test
async def test_attribution_of_a_token_and_its_inputs(tiny_ckpt, home):
    app = SteerlingApp(tiny_ckpt, status_source=fixed_status, device="cpu")
    async with app.run_test(size=SIZE) as pilot:
        chat, state = await first_answer(pilot)
        await pilot.press("ctrl+g")
        assert app.focused is state.view.output
        await pilot.press("right", "right", "enter")
        await wait_for(pilot, lambda: state.turn.attributions, what="attribution")
        (saved,) = state.turn.attributions
        assert (saved.start, saved.end) == (2, 3)
        # direct computation from the token's record: share = contribution / total absolute mass
        rec = state.attribution.token(state.positions[2])
        mass = (sum(abs(c.contribution) for c in rec.known + rec.discovered) + abs(rec.known_tail)
                + abs(rec.discovered_tail) + abs(rec.epsilon))
        top = max(rec.known, key=lambda c: abs(c.contribution))
        assert saved.data["known"][0]["concept_id"] == top.concept_id
        assert saved.data["known"][0]["label"] == fallback_label(top.concept_id)
        assert saved.data["known"][0]["share"] == pytest.approx(top.contribution / mass, rel=1e-4)
        assert saved.data["epsilon"] == pytest.approx(abs(rec.epsilon) / mass, rel=1e-4)
        body = str(chat.query_one("#attr-body").content)
        assert "known concepts" in body and fallback_label(top.concept_id) in body and "epsilon" in body
        assert chat.query_one("#side").active == "tab-attr"
        # a span: shift+right extends the selection
        await pilot.press("shift+right", "enter")
        await wait_for(pilot, lambda: len(state.turn.attributions) == 2, what="span attribution")
        assert (state.turn.attributions[1].start, state.turn.attributions[1].end) == (2, 4)
        # input tokens, on request (integrated gradients on the committing snapshot)
        await pilot.press("left", "i")
        await wait_for(pilot, lambda: any(a.data.get("inputs") for a in state.turn.attributions), what="inputs")
        inputs = next(a.data["inputs"] for a in state.turn.attributions if a.data.get("inputs"))
        assert [r["index"] for r in inputs] == list(range(len(state.turn.prompt_ids)))
        assert any(r["score"] != 0 for r in inputs)
        assert "input tokens" in str(chat.query_one("#attr-inputs-body").content)
    saved = Store().load_session(Store().list_sessions()[0].id)
    # the inputs were added to the saved attribution of token 2
    assert len(saved.turns[0].attributions) == 2 and saved.turns[0].attributions[0].data["inputs"] == inputs


@async_test
async def test_input_tokens_by_occlusion_or_integrated_gradients(tiny_ckpt, home):
    """i: occlusion (the default); I: integrated gradients; each saved with its method."""
    app = SteerlingApp(tiny_ckpt, status_source=fixed_status, device="cpu")
    async with app.run_test(size=SIZE) as pilot:
        chat, state = await first_answer(pilot)
        await pilot.press("ctrl+g", "right", "i")
        await wait_for(pilot, lambda: state.turn.attributions, what="occlusion inputs")
        (saved,) = state.turn.attributions
        assert saved.data["inputs_method"] == "occlusion" and len(saved.data["inputs"]) == len(state.turn.prompt_ids)
        assert "input tokens (occlusion" in str(chat.query_one("#attr-inputs-body").content)
        await pilot.press("I")
        await wait_for(pilot, lambda: saved.data.get("inputs_method") == "ig", what="IG inputs")
        assert "input tokens (integrated gradients" in str(chat.query_one("#attr-inputs-body").content)
        assert [r["index"] for r in saved.data["inputs"]] == list(range(len(state.turn.prompt_ids)))


# ---------------------------------------------------------------------------------------
# sessions, export, help, palette


@async_test
async def test_reopen_session_and_export(tiny_ckpt, home):
    app = SteerlingApp(tiny_ckpt, status_source=fixed_status, device="cpu")
    async with app.run_test(size=SIZE) as pilot:
        chat = await loaded(pilot)
        set_form(chat, seed=4, top_p="0.9")
        chat.query_one(SteeringPanel).add_concept(app.catalog.get(12), strength=-6)
        await send(pilot, chat, "First question")
        await send(pilot, chat, "Second question")
        outputs = [s.turn.output for s in chat.states]
        await pilot.press("ctrl+n")
        assert chat.states == [] and chat.session.id is None
        set_form(chat, seed="", top_p="0.8")
        chat.query_one(SteeringPanel).clear()
        # history -> reopen
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: isinstance(app.screen, HistoryScreen), what="history")
        assert app.screen.query_one(DataTable).row_count == 1
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen) and len(chat.states) == 2, what="reopened")
        await pilot.pause()
        assert [s.turn.output for s in chat.states] == outputs
        assert [str(v.query_one(".turn-prompt").content) for v in (s.view for s in chat.states)] == [
            "First question", "Second question"]
        assert chat.query_one("#set-seed", Input).value == "4"
        assert chat.query_one("#set-top_p", Input).value == "0.9"
        assert [(r.concept_id, r.strength) for r in chat.query(ConceptRow)] == [(12, -6.0)]
        # export: markdown, then JSON
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, ExportScreen), what="export dialog")
        md_path = Path(app.screen.query_one("#export-path", Input).value)
        assert md_path.parent == home / "exports" and md_path.suffix == ".md"
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen), what="exported")
        md = md_path.read_bytes().decode("utf-8")  # verbatim: answers may hold \r
        assert "# First question" in md and outputs[0] in md and outputs[1] in md and "known #12 -6" in md
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, ExportScreen), what="export dialog")
        await pilot.click("#fmt-json")
        json_path = Path(app.screen.query_one("#export-path", Input).value)
        assert json_path.suffix == ".json"
        await pilot.click("#export-go")
        await wait_for(pilot, lambda: isinstance(app.screen, ChatScreen), what="exported")
        data = json.loads(json_path.read_text())
        assert [t["output"] for t in data["turns"]] == outputs
        assert data["settings"]["seed"] == 4 and data["steering"][0]["concept_id"] == 12
        assert not list(json_path.parent.glob(".*tmp"))  # atomic writes leave no temp files


@async_test
async def test_export_error_stays_in_dialog(tiny_ckpt, home, tmp_path):
    app = SteerlingApp(tiny_ckpt, status_source=fixed_status, device="cpu")
    async with app.run_test(size=SIZE) as pilot:
        chat = await loaded(pilot)
        await pilot.press("ctrl+s")
        assert "nothing to export yet" in error_text(chat)
        await send(pilot, chat, "Something")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, ExportScreen), what="export dialog")
        blocker = tmp_path / "file"
        blocker.write_text("x")
        app.screen.query_one("#export-path", Input).value = str(blocker / "out.md")  # parent is a file
        await pilot.press("enter")
        assert isinstance(app.screen, ExportScreen)
        assert "Could not export" in str(app.screen.query_one("#export-error").content)
        await pilot.press("escape")
        assert isinstance(app.screen, ChatScreen)


@async_test
async def test_help_screen_and_command_palette(tiny_ckpt, home):
    app = SteerlingApp(tiny_ckpt, status_source=fixed_status, device="cpu")
    async with app.run_test(size=SIZE) as pilot:
        chat = await loaded(pilot)
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert app.screen is chat
        titles = [c.title for c in app.get_system_commands(chat)]
        for want in ("Open model", "History", "Export session", "Compare steered / unsteered", "Help",
                     "Select answer tokens", "Steering panel"):
            assert want in titles
        await pilot.press("ctrl+p")
        await pilot.press(*"help")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), what="help from the palette")


@async_test
async def test_load_screen_memory_plan_and_quant_choice(tiny_ckpt, home):
    app = SteerlingApp(status_source=fixed_status, device="cpu")  # no model given: the load screen waits
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, LoadScreen), what="load screen")
        screen = app.screen
        screen.query_one("#model-path", Input).value = str(tiny_ckpt)
        plan = screen.query_one("#plan")
        await wait_for(pilot, lambda: "runs on cpu" in str(plan.content), what="memory plan")
        assert "quant auto: weighed" in str(plan.content) and app.lm is None  # planned, nothing loaded
        screen.query_one("#quant").value = "int8"
        await wait_for(pilot, lambda: "quant: int8" in str(plan.content), what="int8 plan")
        await pilot.press("ctrl+l")
        await loaded(pilot, steps=None)
        assert app.lm.quant == "int8"
        assert read_status(app.lm, None).quant == "int8" and read_status(app.lm, None).device == "cpu"
        assert Store().recent_models() == [str(tiny_ckpt)]


@async_test
async def test_model_without_concept_heads(make_ckpt, home):
    ckpt = make_ckpt(interpretable=False)
    app = SteerlingApp(ckpt, status_source=fixed_status, device="cpu")
    async with app.run_test(size=SIZE) as pilot:
        chat = await loaded(pilot)
        assert "no concept heads" in app.sub_title
        await send(pilot, chat, "plain generation")
        assert chat.states[0].attribution is None
        await pilot.press("f3", "#", "1", "enter")
        assert "no concept heads" in str(chat.query_one("#steer-error").content)
        await pilot.press("ctrl+g", "enter")
        assert "no concept heads" in str(chat.query_one("#attr-body").content)


# ---------------------------------------------------------------------------------------
# bad input: an error is shown and the app keeps working


@async_test
async def test_missing_model_directory_then_load_a_good_one(tiny_ckpt, home, tmp_path):
    missing = tmp_path / "no-such-model"
    app = SteerlingApp(missing, status_source=fixed_status, device="cpu")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, LoadScreen) and str(
            app.screen.query_one("#load-error").content), what="load error")
        err = str(app.screen.query_one("#load-error").content)
        assert "no such directory" in err and str(missing) in err and "Traceback" not in err
        assert app.lm is None
        app.screen.query_one("#model-path", Input).value = str(tiny_ckpt)
        app.screen.query_one("#model-path", Input).focus()
        await pilot.press("enter")
        await loaded(pilot)
        assert app.lm is not None


@async_test
async def test_corrupt_checkpoint_shows_error(tiny_ckpt, home, tmp_path):
    bad = tmp_path / "corrupt"
    shutil.copytree(tiny_ckpt, bad)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    app = SteerlingApp(bad, status_source=fixed_status, device="cpu")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, LoadScreen) and str(
            app.screen.query_one("#load-error").content), what="load error")
        err = str(app.screen.query_one("#load-error").content)
        assert "Could not load the model" in err and "model.safetensors" in err and "Traceback" not in err
        # back to the chat without a model: sending says what to do
        await pilot.press("escape")
        chat = app.screen
        assert isinstance(chat, ChatScreen)
        await send(pilot, chat, "hello", wait=False)
        assert "no model loaded" in error_text(chat)


@async_test
async def test_empty_prompt_and_bad_settings_show_errors(tiny_ckpt, home):
    app = SteerlingApp(tiny_ckpt, status_source=fixed_status, device="cpu")
    async with app.run_test(size=SIZE) as pilot:
        chat = await loaded(pilot)
        await send(pilot, chat, "   ", wait=False)
        assert "the prompt is empty" in error_text(chat) and not chat.states
        set_form(chat, max_new_tokens=65)
        await send(pilot, chat, "hello", wait=False)
        assert "multiple of the model's diffusion block size 64" in error_text(chat)
        set_form(chat, max_new_tokens="many")
        await send(pilot, chat, "hello", wait=False)
        assert "max new tokens: 'many' is not a whole number" in error_text(chat)
        assert chat.query_one("#prompt", PromptArea).text == "hello"  # the prompt is kept to fix and resend
        set_form(chat, max_new_tokens=64)
        await send(pilot, chat, "hello")
        assert len(chat.states) == 1 and error_text(chat) == ""


@async_test
async def test_prompt_longer_than_context_shows_error(tiny_ckpt, home):
    app = SteerlingApp(tiny_ckpt, status_source=fixed_status, device="cpu")
    async with app.run_test(size=SIZE) as pilot:
        chat = await loaded(pilot)
        await send(pilot, chat, "word " * 1200, wait=False)
        err = error_text(chat)
        assert "exceeds the model's context of 1024 tokens" in err and not chat.states
        await send(pilot, chat, "short")
        assert len(chat.states) == 1


@async_test
async def test_corrupt_sessions_database_keeps_app_usable(tiny_ckpt, home):
    home.mkdir(parents=True, exist_ok=True)
    (home / "sessions.sqlite3").write_bytes(b"this is not a database" * 100)
    app = SteerlingApp(tiny_ckpt, status_source=fixed_status, device="cpu")
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        chat = await loaded(pilot)
        assert app.store is None
        await send(pilot, chat, "still works")
        assert len(chat.states) == 1
        assert "not saved" in str(chat.query_one(StatusBar).content)
        await pilot.press("ctrl+r")
        assert "sessions are not available" in error_text(chat)


def test_cli_has_tui_subcommand():
    from steerling_lite.cli import build_parser

    args = build_parser().parse_args(["tui", "--model", "some/dir", "--device", "cpu"])
    assert args.command == "tui" and args.model == "some/dir" and args.device == "cpu"
