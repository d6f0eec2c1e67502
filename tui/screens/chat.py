"""The main screen: the chat on the left, settings / steering / attribution on the right, status below.

Generation runs in a thread worker that iterates the runtime's :class:`Generation` and
posts a message per denoising step (at most ~20 per second, and at every finished
block); the UI thread only draws. Esc cancels the generation, which stops before its
next step and keeps what was committed. A steering change while generating builds the
new plan in another worker and hands it to the generation (``set_steering``), which
uses it from its next denoising step.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, Static, TabbedContent, TabPane
from textual.worker import get_current_worker

from steerling_lite import SteerlingError
from steerling_lite.loading.default_model import data_dir

from .. import backend
from ..backend import BackendError, ConceptSpec, Sampling
from ..store import Attribution, Session, StoreError, Turn
from ..widgets import AttributionPanel, OutputView, PromptArea, SamplingForm, StatusBar, SteeringPanel, TurnView
from .compare import CompareScreen
from .export import ExportScreen
from .history import HistoryScreen

WELCOME = ("Type a prompt below and press enter. esc stops a generation; f3 steers by concept; "
           "tab to an answer (or ctrl+g) and press enter to see which concepts made a token. f1: help.")

STEP_UPDATE_S = 0.05  # at most ~20 redraws a second while generating
KEEP_ATTRIBUTION = 8  # answers whose per-token attribution data stay in memory (~16 KB a token for 8B)


@dataclass
class TurnState:
    """A turn on screen, with what this run of the app knows beyond the saved :class:`Turn`."""

    turn: Turn
    view: TurnView
    tokens: list[str] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # absolute position of each output token
    attribution: Any = None  # ConceptAttribution recorded while generating (this run of the app only)


def steering_text(specs: list[dict[str, Any]] | list[ConceptSpec]) -> str:
    items = [s if isinstance(s, ConceptSpec) else ConceptSpec.from_dict(s) for s in specs]
    on_ = [s for s in items if s.enabled and s.strength != 0]
    return ", ".join(f"{s.label} {s.strength:+.0f}" for s in on_) or "none"


class ChatScreen(Screen):
    """Chat, side panel, status bar. See the module docstring for how generation runs."""

    BINDINGS = [
        Binding("escape", "stop", "Stop"),
        Binding("ctrl+n", "new_session", "New", show=False),
        Binding("ctrl+r", "history", "History"),
        Binding("ctrl+o", "app.open_model", "Model"),
        Binding("ctrl+s", "export", "Export"),
        Binding("ctrl+t", "compare", "Compare"),
        Binding("ctrl+g", "select_tokens", "Tokens"),
        Binding("ctrl+f", "find_concept", "Find concept", show=False),
        Binding("ctrl+b", "toggle_panel", "Panel", show=False),
        Binding("f2", "tab('tab-settings')", "Settings", show=False),
        Binding("f3", "tab('tab-steer')", "Steering", show=False),
        Binding("f4", "tab('tab-attr')", "Attribution", show=False),
        Binding("f1", "app.help", "Help"),
    ]

    # ---- messages from workers -----------------------------------------------------------
    class GenStep(Message):
        def __init__(self, view: TurnView, committed: str, block: list[str | None]) -> None:
            super().__init__()
            self.view, self.committed, self.block = view, committed, block

    class GenDone(Message):
        def __init__(self, view: TurnView, result, attribution) -> None:
            super().__init__()
            self.view, self.result, self.attribution = view, result, attribution

    class GenFailed(Message):
        def __init__(self, view: TurnView, error: str) -> None:
            super().__init__()
            self.view, self.error = view, error

    def __init__(self) -> None:
        super().__init__()
        self.session = Session(title="", model="")
        self.states: list[TurnState] = []
        self.generation = None
        self.pending: dict[str, Any] | None = None
        self.last_tps: float | None = None
        self.busy = ""  # what a worker is doing, for the status line
        self.live_steering_updates = 0  # steering plans handed to running generations
        self._steer_seq = 0  # the latest steering change; older plans are dropped
        self._steer_lock = threading.Lock()

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="main"):
            with Vertical(id="chat-col"):
                with VerticalScroll(id="turns"):
                    yield Static(Text(WELCOME, style="dim"), id="welcome")
                yield Static("", id="chat-error", classes="error")
                yield PromptArea(id="prompt", placeholder="Prompt (enter: send, shift+enter: new line)")
            with TabbedContent(id="side", initial="tab-settings"):
                with TabPane("Settings", id="tab-settings"):
                    yield SamplingForm(id="sampling")
                with TabPane("Steer", id="tab-steer"):
                    yield SteeringPanel(id="steering")
                with TabPane("Explain", id="tab-attr"):
                    yield AttributionPanel(id="attribution")
        yield StatusBar(id="status")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one(SamplingForm).set_values(Sampling())
        self.query_one(SamplingForm).set_chat(False)
        self.query_one("#prompt", PromptArea).focus()
        self.refresh_status()
        self.set_interval(2.0, self.refresh_status)

    def on_unmount(self) -> None:
        if self.generation is not None:
            self.generation.cancel()

    # ---- helpers -----------------------------------------------------------------------
    @property
    def lm(self):
        return getattr(self.app, "lm", None)

    def show_error(self, message: str) -> None:
        """Show ``message`` above the prompt (and as a notification); the app keeps working."""
        self.query_one("#chat-error", Static).update(Text(message))
        if message:
            self.notify(message, severity="error", timeout=6)

    def refresh_status(self, saved: bool | None | str = "keep") -> None:
        source = getattr(self.app, "status_source", backend.read_status)
        state = self.busy or ("ready" if self.lm is not None else "no model: ctrl+o")
        try:
            status = source(self.lm, self.last_tps)
        except Exception:  # a status line must never break the app
            status = None
        self.query_one(StatusBar).show(status, state, saved)

    def set_busy(self, what: str) -> None:
        self.busy = what
        self.refresh_status()

    def model_changed(self) -> None:
        """A model was loaded: reset what depends on it and start a new session."""
        lm = self.lm
        info = getattr(self.app, "model_info", None)
        catalog = getattr(self.app, "catalog", None)
        if catalog is not None:
            self.query_one(SteeringPanel).set_catalog(catalog)
        form = self.query_one(SamplingForm)
        block = lm.config.diff_block_size
        try:
            current = Sampling.from_form(form.form())
        except BackendError:
            current = Sampling()
        if current.max_new_tokens % block:
            current = Sampling(max_new_tokens=block, top_p=current.top_p, repetition_penalty=current.repetition_penalty,
                               temperature=current.temperature, seed=current.seed)
        form.set_values(current)
        chat = backend.is_instruct(lm)
        form.set_chat(chat, f"context {lm.config.block_size} tokens, block {block}"
                      + ("; chat template on" if chat else "; completion"))
        if info is not None:
            self.sub_title = f"{info.name} · {info.kind}" + ("" if info.interpretable else " · no concept heads")
            self.app.sub_title = self.sub_title
        self.action_new_session(quiet=True)
        self.show_error("")
        self.refresh_status()

    def _state_for(self, view: TurnView | OutputView) -> TurnState | None:
        for s in self.states:
            if s.view is view or s.view.output is view:
                return s
        return None

    # ---- sending -----------------------------------------------------------------------
    @on(PromptArea.Submitted)
    def _submitted(self, event: PromptArea.Submitted) -> None:
        self.send(event.text)

    def send(self, text: str) -> bool:
        """Start generating an answer to ``text``; False (and an error shown) if it cannot start."""
        lm = self.lm
        if self.generation is not None:
            self.show_error("a generation is running: esc stops it")
            return False
        if lm is None:
            self.show_error("no model loaded: press ctrl+o to open one")
            return False
        try:
            sampling = Sampling.from_form(self.query_one(SamplingForm).form())
            backend.check_sampling(lm, sampling)
            history = [(s.turn.prompt, s.turn.output) for s in self.states] if backend.is_instruct(lm) else []
            system = self.query_one(SamplingForm).system if backend.is_instruct(lm) else ""
            prompt_ids = backend.build_prompt(lm, text, history, system)
            specs = self.query_one(SteeringPanel).specs
            gen = backend.start_generation(lm, prompt_ids, sampling, None, capture=backend.can_attribute(lm))
        except SteerlingError as exc:
            self.show_error(str(exc))
            return False
        self.show_error("")
        self.query_one("#prompt", PromptArea).clear()
        welcome = self.query("#welcome")
        if welcome:
            welcome.first().display = False
        view = TurnView(text, classes="turn")
        self.query_one("#turns", VerticalScroll).mount(view)
        view.scroll_visible()
        self.generation = gen
        self.pending = {"prompt": text, "prompt_ids": prompt_ids, "sampling": sampling, "specs": specs,
                        "system": system, "steer_seq": self._steer_seq}
        self.set_busy("generating… (esc stops)")
        self._generate(gen, view, specs, self._steer_seq)
        return True

    @work(thread=True, exclusive=True, group="generate", exit_on_error=False)
    def _generate(self, gen, view: TurnView, specs: list[ConceptSpec], seq: int) -> None:
        lm = self.lm
        worker = get_current_worker()
        try:
            if specs:
                plan = self.app.steerer.plan(specs)
                with self._steer_lock:
                    if seq == self._steer_seq:  # else a live change already set a newer plan
                        gen.set_steering(plan)
            rec = backend.recorder(lm, gen, self.app.catalog)
            mask = backend.mask_id(lm)
            last = 0.0
            for event in gen:
                if rec is not None:
                    rec.record(event)
                if worker.is_cancelled:
                    gen.cancel()
                now = time.monotonic()
                block_done = mask not in event.block_tokens
                if now - last >= STEP_UPDATE_S or block_done:
                    last = now
                    committed = backend.decode(lm, gen.generated_ids(event.block_start))
                    block = [None if t == mask else ("" if backend.is_special(lm, t) else backend.token_text(lm, t))
                             for t in event.block_tokens]
                    self.post_message(self.GenStep(view, committed, block))
            self.post_message(self.GenDone(view, gen.result, rec.finish() if rec is not None else None))
        except SteerlingError as exc:
            self.post_message(self.GenFailed(view, str(exc)))
        except Exception as exc:  # never a traceback in the app
            self.post_message(self.GenFailed(view, f"generation failed: {type(exc).__name__}: {exc}"))

    def on_chat_screen_gen_step(self, event: GenStep) -> None:
        event.view.output.show_progress(event.committed, event.block)

    def on_chat_screen_gen_done(self, event: GenDone) -> None:
        lm, result, pending = self.lm, event.result, self.pending or {}
        self.generation = None
        self.pending = None
        sampling: Sampling = pending.get("sampling", Sampling())
        specs: list[ConceptSpec] = pending.get("specs", [])
        settings = sampling.to_dict()
        if self._steer_seq != pending.get("steer_seq", self._steer_seq):
            # steered live: record the steering it ended with, and that it changed on the way
            specs = self.query_one(SteeringPanel).specs
            settings["steering_changed_while_generating"] = True
        turn = Turn(
            prompt=pending.get("prompt", ""), output=result.text, prompt_ids=list(result.prompt_ids),
            token_ids=list(result.token_ids), settings=settings,
            steering=[s.to_dict() for s in specs], seed=result.seed, stop_reason=result.stop_reason,
            tokens_per_s=round(result.tokens_per_s, 2) if result.elapsed_s > 0 else None,
        )
        state = TurnState(turn, event.view, backend.token_texts(lm, result.token_ids),
                          backend.output_positions(lm, result), event.attribution)
        self.states.append(state)
        for old in self.states[:-KEEP_ATTRIBUTION]:
            old.attribution = None  # bound the memory: saved attributions stay viewable
        event.view.turn_index = len(self.states) - 1
        event.view.output.show_tokens(state.tokens)
        event.view.set_meta(self._meta(turn))
        self.last_tps = result.tokens_per_s if result.elapsed_s > 0 else None
        self.busy = "stopped: partial answer kept" if result.stop_reason == "cancelled" else ""
        self.session.model = str(getattr(lm, "path", "") or "")
        self.session.system = pending.get("system", "")
        self.session.settings = sampling.to_dict()
        self.session.steering = [s.to_dict() for s in self.query_one(SteeringPanel).specs]
        if not self.session.title:
            self.session.title = _title(turn.prompt)
        self._save_turn(turn)

    def on_chat_screen_gen_failed(self, event: GenFailed) -> None:
        self.generation = None
        self.pending = None
        event.view.output.show_plain("")
        event.view.set_meta("failed")
        event.view.remove()
        self.busy = ""
        self.show_error(event.error)
        self.refresh_status()

    def _meta(self, turn: Turn) -> str:
        parts = [f"seed {turn.seed}", f"{len(turn.token_ids)} tokens", f"stop: {turn.stop_reason}"]
        steer = steering_text(turn.steering)
        if turn.settings.get("steering_changed_while_generating"):
            parts.append(f"steering changed while generating, ended with: {steer}")
        elif steer != "none":
            parts.append(f"steered: {steer}")
        return " · ".join(parts)

    def _save_turn(self, turn: Turn) -> None:
        store = getattr(self.app, "store", None)
        if store is None:
            self.refresh_status(saved=False)
            return
        try:
            store.add_turn(self.session, turn)
        except (StoreError, sqlite3.Error) as exc:
            if turn not in self.session.turns:
                self.session.turns.append(turn)
            self.show_error(f"not saved: {exc}")
            self.refresh_status(saved=False)
            return
        self.refresh_status(saved=True)

    # ---- actions -----------------------------------------------------------------------
    def action_stop(self) -> None:
        if self.generation is not None:
            self.generation.cancel()
            self.set_busy("stopping…")
            return
        self.query_one("#prompt", PromptArea).focus()

    def action_new_session(self, quiet: bool = False) -> None:
        if self.generation is not None:
            self.show_error("a generation is running: esc stops it first")
            return
        self.session = Session(title="", model=str(getattr(self.lm, "path", "") or ""),
                               steering=[s.to_dict() for s in self.query_one(SteeringPanel).specs])
        self.states = []
        turns = self.query_one("#turns", VerticalScroll)
        for view in list(turns.query(TurnView)):
            view.remove()
        welcome = self.query("#welcome")
        if welcome:
            welcome.first().display = True
        self.query_one(AttributionPanel).show(None)
        self.last_tps = None
        self.busy = ""
        self.refresh_status(saved=None)
        if not quiet:
            self.query_one("#prompt", PromptArea).focus()

    def action_tab(self, tab: str) -> None:
        side = self.query_one("#side", TabbedContent)
        side.display = True
        side.active = tab
        if tab == "tab-steer":
            self.query_one("#concept-search").focus()
        elif tab == "tab-settings":
            self.query_one("#set-max_new_tokens").focus()

    def action_find_concept(self) -> None:
        self.action_tab("tab-steer")

    def action_toggle_panel(self) -> None:
        side = self.query_one("#side", TabbedContent)
        side.display = not side.display

    def action_select_tokens(self) -> None:
        """Focus the last answer's tokens (left/right, shift to extend, enter to attribute)."""
        done = [s for s in self.states if s.tokens]
        if not done:
            self.show_error("no answer to select tokens from yet")
            return
        done[-1].view.output.focus()
        done[-1].view.output.scroll_visible()

    # ---- history / export ----------------------------------------------------------------
    def action_history(self) -> None:
        store = getattr(self.app, "store", None)
        if store is None:
            self.show_error("sessions are not available: the database could not be opened")
            return
        if self.generation is not None:
            self.show_error("a generation is running: esc stops it first")
            return

        async def opened(session_id: int | None) -> None:
            if session_id is not None:
                await self.open_session(session_id)

        self.app.push_screen(HistoryScreen(store.list_sessions(), on_delete=store.delete_session), opened)

    async def open_session(self, session_id: int) -> None:
        """Show saved session ``session_id``: its turns, settings, steering and attributions."""
        store = self.app.store
        try:
            session = store.load_session(session_id)
        except (StoreError, sqlite3.Error) as exc:
            self.show_error(str(exc))
            return
        self.action_new_session(quiet=True)
        self.session = session
        lm = self.lm
        turns = self.query_one("#turns", VerticalScroll)
        self.query_one("#welcome").display = not session.turns
        for turn in session.turns:
            view = TurnView(turn.prompt, classes="turn")
            await turns.mount(view)
            tokens: list[str] = []
            if lm is not None:
                try:
                    tokens = backend.token_texts(lm, turn.token_ids)
                except Exception:
                    tokens = []
            state = TurnState(turn, view, tokens)
            self.states.append(state)
            view.turn_index = len(self.states) - 1
            self._fill_view(state)
        try:
            sampling = Sampling.from_dict(session.settings)
        except (TypeError, ValueError):
            sampling = Sampling()
        self.query_one(SamplingForm).set_values(sampling, session.system)
        self.query_one(SteeringPanel).set_specs([ConceptSpec.from_dict(d) for d in session.steering])
        last = self.states[-1] if self.states else None
        if last is not None and last.turn.attributions:
            a = last.turn.attributions[-1]
            self.query_one(AttributionPanel).show(a.data, (a.start, a.end), note="saved attribution")
        if lm is not None and session.model and str(getattr(lm, "path", "")) != session.model:
            self.notify(f"this session was made with {session.model}", timeout=5)
        self.refresh_status(saved=True)

    def _fill_view(self, state: TurnState) -> None:
        view = state.view
        if state.tokens:
            view.output.show_tokens(state.tokens)
        else:
            view.output.show_plain(state.turn.output)
        view.set_meta(self._meta(state.turn))
        if state.turn.attributions and state.turn.attributions[-1].data.get("inputs"):
            self._highlight_inputs(state, state.turn.attributions[-1].data["inputs"])

    def action_export(self) -> None:
        if self.session.id is None:
            self.show_error("nothing to export yet: a session is saved when its first answer finishes")
            return
        def done(path) -> None:
            if path is not None:
                self.notify(f"exported to {path}", timeout=5)
                self.query_one("#chat-error", Static).update(Text(f"exported to {path}", style="green"))

        self.app.push_screen(ExportScreen(self.session, data_dir() / "exports"), done)

    # ---- steering ------------------------------------------------------------------------
    @on(SteeringPanel.Changed)
    def _steering_changed(self, event: SteeringPanel.Changed) -> None:
        self.session.steering = [s.to_dict() for s in event.specs]
        if self.generation is not None and self.lm is not None:
            self._steer_seq += 1
            self._restear(self.generation, event.specs, self._steer_seq)

    @work(thread=True, group="steer", exit_on_error=False)
    def _restear(self, gen, specs: list[ConceptSpec], seq: int) -> None:
        """Build the plan for ``specs`` and hand it to ``gen``, unless a newer change came first."""
        try:
            plan = self.app.steerer.plan(specs)
            with self._steer_lock:
                if seq != self._steer_seq:
                    return  # a later slider change is being applied
                gen.set_steering(plan)
            self.app.call_from_thread(self._restered, gen)
        except SteerlingError as exc:
            self.app.call_from_thread(self.query_one(SteeringPanel).show_error, str(exc))

    def _restered(self, gen) -> None:
        self.live_steering_updates += 1
        if gen is self.generation:
            self.set_busy("generating… steering updated from the next step (esc stops)")

    @on(SteeringPanel.CompareRequest)
    def _compare_request(self) -> None:
        self.action_compare()

    def action_compare(self) -> None:
        if self.generation is not None:
            self.show_error("a generation is running: esc stops it first")
            return
        if not self.states:
            self.show_error("nothing to compare yet: generate an answer with steering first")
            return
        state = self.states[-1]
        turn = state.turn
        steer = steering_text(turn.steering)
        if turn.unsteered is not None:
            self.app.push_screen(CompareScreen(turn.prompt, turn.output, turn.unsteered, steer, turn.seed))
            return
        if steer == "none":
            self.show_error("the last answer was not steered: add a concept (f3) and generate, then compare")
            return
        if self.lm is None:
            self.show_error("no model loaded: press ctrl+o to open one")
            return
        self.set_busy("comparing: generating unsteered…")
        self._compare(state)

    @work(thread=True, exclusive=True, group="compare", exit_on_error=False)
    def _compare(self, state: TurnState) -> None:
        turn = state.turn
        try:
            sampling = Sampling.from_dict({**turn.settings, "seed": turn.seed})
            gen = backend.start_generation(self.lm, turn.prompt_ids, sampling, None, capture=False)
            result = gen.run()
            self.app.call_from_thread(self._compared, state, result.text)
        except SteerlingError as exc:
            self.app.call_from_thread(self._compare_failed, str(exc))
        except Exception as exc:
            self.app.call_from_thread(self._compare_failed, f"compare failed: {type(exc).__name__}: {exc}")

    def _compare_failed(self, message: str) -> None:
        self.set_busy("")
        self.show_error(message)

    def _compared(self, state: TurnState, text: str) -> None:
        turn = state.turn
        self.set_busy("")
        store = getattr(self.app, "store", None)
        try:
            if store is not None and turn.id is not None:
                store.set_unsteered(turn, text)
            else:
                turn.unsteered = text
        except (StoreError, sqlite3.Error) as exc:
            turn.unsteered = text
            self.show_error(f"not saved: {exc}")
        self.app.push_screen(CompareScreen(turn.prompt, turn.output, text, steering_text(turn.steering), turn.seed))

    # ---- attribution ---------------------------------------------------------------------
    @on(OutputView.AttributeRequest)
    def _attribute_request(self, event: OutputView.AttributeRequest) -> None:
        state = self._state_for(event.view)
        if state is None:
            return
        self.attribute(state, event.start, event.end, event.inputs)

    @on(AttributionPanel.InputsRequest)
    def _inputs_request(self) -> None:
        panel_state = getattr(self, "_attr_target", None)
        if panel_state is None:
            return
        state, start, _end = panel_state
        self.attribute(state, start, start + 1, inputs=True)

    def attribute(self, state: TurnState, start: int, end: int, inputs: bool = False) -> None:
        """Concept attribution of answer tokens ``start..end`` shown in the panel (and saved);
        with ``inputs``, also the input tokens behind token ``start`` (integrated gradients)."""
        panel = self.query_one(AttributionPanel)
        self.action_tab("tab-attr")
        state.view.output.focus()
        lm = self.lm
        self._attr_target = (state, start, end)
        saved = next((a for a in reversed(state.turn.attributions) if (a.start, a.end) == (start, end)), None)
        if state.attribution is None or lm is None:
            if saved is not None:
                panel.show(saved.data, (start, end), note="saved attribution")
                return
            reason = ("no model loaded" if lm is None else
                      "this model has no concept heads" if not backend.can_attribute(lm) else
                      "only answers generated in this run (the last 8) keep their attribution data; a reopened "
                      "session shows its saved attributions: regenerate the answer to attribute other tokens")
            panel.show(None, note=f"Cannot attribute: {reason}.")
            return
        if saved is not None and (not inputs or saved.data.get("inputs")):
            panel.show(saved.data, (start, end))
            return
        self.set_busy("attributing…")
        self._attribute(state, start, end, inputs, saved)

    @work(thread=True, exclusive=True, group="attribute", exit_on_error=False)
    def _attribute(self, state: TurnState, start: int, end: int, inputs: bool, saved: Attribution | None) -> None:
        lm = self.lm
        try:
            if saved is not None:
                data = dict(saved.data)
            else:
                data = backend.attribute_span(state.attribution, state.positions, start, end)
            note = ""
            if inputs:
                try:
                    data["inputs"] = backend.attribute_inputs(lm, state.attribution, state.positions[start])
                except SteerlingError as exc:
                    note = f"no input attribution: {exc}"
            self.app.call_from_thread(self._attributed, state, start, end, data, saved, note)
        except SteerlingError as exc:
            self.app.call_from_thread(self._attribution_failed, str(exc))
        except Exception as exc:
            self.app.call_from_thread(self._attribution_failed, f"attribution failed: {type(exc).__name__}: {exc}")

    def _attribution_failed(self, message: str) -> None:
        self.set_busy("")
        self.query_one(AttributionPanel).show(None, note=message)

    def _attributed(self, state: TurnState, start: int, end: int, data: dict, saved: Attribution | None,
                    note: str) -> None:
        self.set_busy("")
        panel = self.query_one(AttributionPanel)
        panel.show(data, (start, end))
        if note:
            panel.show_inputs(None, note=note)
        if data.get("inputs"):
            self._highlight_inputs(state, data["inputs"])
        store = getattr(self.app, "store", None)
        if saved is not None:
            saved.data = data
            if store is not None and saved.id is not None:
                try:
                    store.update_attribution(saved)
                except (StoreError, sqlite3.Error) as exc:
                    self.show_error(f"attribution not saved: {exc}")
            return
        attribution = Attribution(start, end, data)
        if store is None or state.turn.id is None:
            state.turn.attributions.append(attribution)
            return
        try:
            store.add_attribution(state.turn, attribution)
        except (StoreError, sqlite3.Error) as exc:
            state.turn.attributions.append(attribution)
            self.show_error(f"attribution not saved: {exc}")

    def _highlight_inputs(self, state: TurnState, inputs: list[dict]) -> None:
        state.view.highlight_prompt([str(r["text"]) for r in inputs], [float(r["score"]) for r in inputs])


def _title(prompt: str) -> str:
    line = prompt.strip().splitlines()[0] if prompt.strip() else "untitled"
    return line[:60]
