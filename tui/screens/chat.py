"""The main screen: the chat on the left, settings / steering / attribution on the right, status below.

The screen draws and runs workers; what it does is the :class:`~tui.conversation.Conversation`'s
(generate, steer live, attribute, compare, sessions), passed in with the status source.
Work that blocks (a generation, a steering plan, an attribution, a compare) runs in a
thread worker through :meth:`ChatScreen.run_job`, whose result comes back as a message,
in order with the generation's progress messages (at most ~20 redraws a second, and at
every finished block). Esc cancels the generation, which stops before its next step and
keeps what was committed; a steering change while generating applies from its next
denoising step. The chat follows a growing answer while it is scrolled to its end.
Its session actions (new, history, export) are :class:`~tui.screens.chat_sessions.SessionActions`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from functools import partial
from collections.abc import Callable
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, Static, TabbedContent, TabPane
from textual.worker import get_current_worker

from ..backend import Sampling, StatusSource
from ..conversation import Conversation
from ..jobs import USER_ERRORS, JobRunner
from ..records import Answer, Generated, PendingTurn, Progress, SpanRequest
from ..steering_record import steering_label
from ..widgets import AttributionPanel, OutputView, PromptArea, SamplingForm, StatusBar, SteeringPanel, TurnView
from ..widgets.output import meta_line
from ..audit import audit_target
from .audit import AuditScreen
from .compare import CompareScreen
from .chat_sessions import SessionActions

WELCOME = ("Type a prompt below and press enter. esc stops a generation; f3 steers by concept; "
           "tab to an answer (or ctrl+g) and press enter to see which concepts made a token. f1: help.")

STEP_UPDATE_S = 0.05  # at most ~20 redraws a second while generating


@dataclass(frozen=True)
class TurnState:
    """An answer of the conversation and the view that shows it; ``turn``, ``tokens``,
    ``positions`` and ``attribution`` are the answer's (:class:`~tui.records.Answer`)."""

    answer: Answer
    view: TurnView
    turn = property(lambda self: self.answer.turn)
    tokens = property(lambda self: self.answer.tokens)
    positions = property(lambda self: self.answer.positions)
    attribution = property(lambda self: self.answer.attribution)


class ChatScreen(SessionActions, JobRunner, Screen):
    """Chat, side panel, status bar. See the module docstring for how work runs.

    Args:
        conversation: the controller this screen drives (its store and model services).
        status_source: ``(lm, tokens_per_s) -> Status`` for the status bar.
    """

    BINDINGS = [
        Binding("escape", "stop", "Stop"),
        Binding("ctrl+n", "new_session", "New", show=False),
        Binding("ctrl+r", "history", "History"),
        Binding("ctrl+o", "app.open_model", "Model", show=False),  # the footer fits 80 columns: the
        Binding("ctrl+s", "export", "Export", show=False),  # rest are in the help (f1) and the palette
        Binding("ctrl+t", "compare", "Compare"),
        Binding("ctrl+g", "select_tokens", "Tokens"),
        Binding("ctrl+f", "find_concept", "Find concept", show=False),
        Binding("ctrl+b", "toggle_panel", "Panel", show=False),
        Binding("f2", "tab('tab-settings')", "Settings", show=False),
        Binding("f3", "tab('tab-steer')", "Steering", show=False),
        Binding("f4", "tab('tab-attr')", "Attribution", show=False),
        Binding("f1", "app.help", "Help"),
    ]

    class GenStep(Message):
        """A redraw of the answer being generated in ``view``; ``tokens_per_s``: committed
        tokens per second of generation so far."""

        def __init__(self, view: TurnView, progress: Progress, tokens_per_s: float | None = None) -> None:
            super().__init__()
            self.view, self.progress, self.tokens_per_s = view, progress, tokens_per_s

    def __init__(self, conversation: Conversation, status_source: StatusSource) -> None:
        super().__init__()
        self.conversation = conversation
        self.status_source = status_source
        self.views: list[TurnView] = []  # the view of each answer of the conversation
        self.busy = ""  # what a worker is doing, for the status line
        self.live_steering_updates = 0  # steering plans handed to running generations
        self.live_tps: float | None = None  # tokens/s of the running generation so far
        self.following = True  # the chat shows its end as it grows (false once the user scrolls up)
        self._attr_target: tuple[Answer, TurnView, int, int] | None = None  # the answer and span the panel shows

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="main"):
            with Vertical(id="chat-col"):
                with VerticalScroll(id="turns"):
                    yield Static(Text(WELCOME, style="dim"), id="welcome")
                    yield Static("", id="system-line")
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
        self.query_one("#system-line").display = False
        self.watch(self.query_one("#turns", VerticalScroll), "scroll_y", self._chat_scrolled, init=False)
        self.refresh_status()
        self.set_interval(2.0, self.refresh_status)

    def on_unmount(self) -> None:
        if self.conversation.generation is not None:
            self.conversation.generation.cancel()

    # ---- state ----------------------------------------------------------------------------
    @property
    def generation(self):
        """The running generation, or None."""
        return self.conversation.generation

    @property
    def session(self):
        return self.conversation.session

    @property
    def states(self) -> list[TurnState]:
        """The answers on screen, oldest first."""
        return [TurnState(a, v) for a, v in zip(self.conversation.answers, self.views)]

    def _state_for(self, view: TurnView | OutputView) -> TurnState | None:
        return next((s for s in self.states if s.view is view or s.view.output is view), None)

    def _chat_scrolled(self, old: float, new: float) -> None:
        """Follow the chat's end unless the user scrolled up; again once they are back at the end."""
        if new < old:
            self.following = False
        if new >= self.query_one("#turns", VerticalScroll).max_scroll_y:
            self.following = True

    def _follow(self, change: Callable[[], object]) -> None:
        """Make ``change`` to the chat; while :attr:`following`, show the chat's end once the
        change is laid out (a growing answer is followed)."""
        change()
        self.call_after_refresh(self._show_end, 1)

    def _show_end(self, frames: int = 0) -> None:
        """Scroll the chat to its end ``frames`` refreshes from now, unless the user has
        scrolled up by then (checked at each step, so a scroll of theirs always wins)."""
        if not self.following:
            return
        if frames:
            self.call_after_refresh(self._show_end, frames - 1)
        else:
            self.query_one("#turns", VerticalScroll).scroll_end(animate=False, immediate=True)

    def on_chat_screen_gen_step(self, event: GenStep) -> None:
        self._follow(lambda: event.view.output.show_progress(event.progress.committed, event.progress.block))
        if event.tokens_per_s is not None and self.conversation.pending is not None:
            self.live_tps = event.tokens_per_s
            bar = self.query_one(StatusBar)
            bar.show(replace(bar.status, tokens_per_s=self.live_tps))

    # ---- status -------------------------------------------------------------------------------
    def show_error(self, message: str) -> None:
        """Show ``message`` above the prompt (and as a notification); the app keeps working."""
        self.query_one("#chat-error", Static).update(Text(message))
        if message:
            self.notify(message, severity="error", timeout=6)

    def refresh_status(self, saved: bool | None | str = "keep") -> None:
        lm = self.conversation.lm
        state = self.busy or ("ready" if lm is not None else "no model: ctrl+o")
        try:
            tps = self.live_tps if self.conversation.pending is not None else self.conversation.last_tps
            status = self.status_source(lm, tps)
        except Exception:  # a status line must never break the app
            status = None
        self.query_one(StatusBar).show(status, state, saved)

    def set_busy(self, what: str) -> None:
        self.busy = what
        self.refresh_status()

    def model_changed(self) -> None:
        """A model was loaded: reset what depends on it and start a new session."""
        model = self.conversation.model
        if model is None:
            return
        info = model.info
        self.query_one(SteeringPanel).set_catalog(model.catalog)
        self.query_one(SamplingForm).set_model(info)
        self.sub_title = f"{info.name} · {info.kind}" + ("" if info.interpretable else " · no concept heads")
        self.app.sub_title = self.sub_title
        self.action_new_session(quiet=True)
        self.clear_errors()
        self.refresh_status()

    def clear_errors(self) -> None:
        """Clear what earlier errors left on screen (above the prompt, in the panels, notifications)."""
        self.show_error("")
        self.query_one(SteeringPanel).show_error("")
        self.app.clear_notifications()

    # ---- generating -------------------------------------------------------------------------
    @on(PromptArea.Submitted)
    def _submitted(self, event: PromptArea.Submitted) -> None:
        self.send(event.text)

    def send(self, text: str) -> bool:
        """Start generating an answer to ``text``; False (and an error shown) if it cannot start."""
        form = self.query_one(SamplingForm)
        try:
            pending = self.conversation.start(text, form.form(), form.system, self.query_one(SteeringPanel).specs)
        except USER_ERRORS as exc:
            self.show_error(str(exc))
            return False
        self.show_error("")
        self.query_one("#prompt", PromptArea).clear()
        self.query_one("#welcome").display = False
        self._show_system(pending.system)
        view = TurnView(text, classes="turn")
        self.following = True  # the new answer is followed as it grows, until the user scrolls up
        self._follow(lambda: self.query_one("#turns", VerticalScroll).mount(view))
        self.live_tps = None
        self.set_busy("generating… (esc stops)")

        def job() -> Generated:
            worker = get_current_worker()
            t0 = time.monotonic()

            def progress(p: Progress) -> None:
                elapsed = time.monotonic() - t0
                tokens = len(pending.generation.output_positions())
                self.post_message(self.GenStep(view, p, tokens / elapsed if elapsed > 0 else None))

            return self.conversation.generate(pending, progress, cancelled=lambda: worker.is_cancelled,
                                              min_interval=STEP_UPDATE_S)

        self.run_job(job, partial(self._generated, pending, view), partial(self._generation_failed, pending, view),
                     what="generation", group="generate", exclusive=True)
        return True

    def _generated(self, pending: PendingTurn, view: TurnView, done: Generated) -> None:
        answer, saved = self.conversation.finish(pending, done, self.query_one(SteeringPanel).specs)
        self.views.append(view)
        view.turn_index = len(self.views) - 1

        def show() -> None:
            view.output.show_tokens(answer.tokens)
            view.set_meta(meta_line(answer.turn))

        self._follow(show)
        self.live_tps = None
        self.busy = "stopped: partial answer kept" if answer.turn.stop_reason == "cancelled" else ""
        if saved.error:
            self.show_error(saved.error)
        self.refresh_status(saved=saved.ok)

    def _generation_failed(self, pending: PendingTurn, view: TurnView, message: str) -> None:
        self.conversation.fail(pending)
        view.remove()
        self.live_tps = None
        self.busy = ""
        self.show_error(message)
        self.refresh_status()

    def action_stop(self) -> None:
        if self.conversation.generation is not None:
            self.conversation.generation.cancel()
            self.set_busy("stopping…")
            return
        self.query_one("#prompt", PromptArea).focus()

    # ---- steering ---------------------------------------------------------------------------
    @on(SteeringPanel.Changed)
    def _steering_changed(self, event: SteeringPanel.Changed) -> None:
        seq = self.conversation.steering_changed(event.specs)
        pending = self.conversation.pending
        if seq is None or pending is None:
            return
        self.run_job(lambda: self.conversation.apply_steering(pending, event.specs, seq),
                     partial(self._restered, pending), self.query_one(SteeringPanel).show_error,
                     what="steering", group="steer")

    def _restered(self, pending: PendingTurn, applied: bool) -> None:
        if not applied:
            return  # a later change superseded it
        self.live_steering_updates += 1
        if pending is self.conversation.pending:
            self.set_busy("generating… steering updated from the next step (esc stops)")

    @on(SteeringPanel.CompareRequest)
    def _compare_request(self) -> None:
        self.action_compare()

    def action_compare(self) -> None:
        try:
            answer = self.conversation.compare_target()
        except USER_ERRORS as exc:
            self.show_error(str(exc))
            return
        if answer.turn.unsteered is not None:
            self._show_compare(answer)
            return
        self.set_busy("comparing: generating unsteered…")
        self.run_job(lambda: self.conversation.unsteered(answer), partial(self._compared, answer),
                     self._compare_failed, what="compare", group="compare", exclusive=True)

    def _compared(self, answer: Answer, text: str) -> None:
        self.set_busy("")
        saved = self.conversation.keep_unsteered(answer, text)
        if saved.error:
            self.show_error(saved.error)
        self._show_compare(answer)

    def _compare_failed(self, message: str) -> None:
        self.set_busy("")
        self.show_error(message)

    def _show_compare(self, answer: Answer) -> None:
        t = answer.turn
        label = steering_label(t.steering_segments, t.steering)
        self.app.push_screen(CompareScreen(t.prompt, t.output, t.unsteered or "", label, t.seed))

    # ---- attribution ------------------------------------------------------------------------
    @on(OutputView.AttributeRequest)
    def _attribute_request(self, event: OutputView.AttributeRequest) -> None:
        state = self._state_for(event.view)
        if state is not None:
            self.attribute(state, event.start, event.end, event.inputs, event.method)

    @on(AttributionPanel.InputsRequest)
    def _inputs_request(self) -> None:
        if self._attr_target is not None:
            answer, view, start, end = self._attr_target
            self.attribute(TurnState(answer, view), start, end, inputs=True)

    def attribute(self, state: TurnState, start: int, end: int, inputs: bool = False, method: str = "occlusion") -> None:
        """Concept attribution of answer tokens ``start..end`` shown in the panel (and saved);
        with ``inputs``, also the input tokens behind them (``method``: ``occlusion`` or ``ig``)."""
        panel = self.query_one(AttributionPanel)
        self.action_tab("tab-attr")
        state.view.output.focus()
        self._attr_target = (state.answer, state.view, start, end)
        req = self.conversation.span_request(state.answer, start, end, inputs, method)
        if req.reason:
            if req.saved is not None:
                panel.show(req.saved.data, (start, end), note="saved attribution")
            else:
                panel.show(None, note=f"Cannot attribute: {req.reason}.")
            return
        if req.cached:
            panel.show(req.saved.data, (start, end))
            return
        self.set_busy("attributing…")
        self.run_job(lambda: self.conversation.attribute(req), partial(self._attributed, state.view, req),
                     self._attribution_failed, what="attribution", group="attribute", exclusive=True)

    def _attributed(self, view: TurnView, req: SpanRequest, outcome: tuple[dict[str, Any], str]) -> None:
        data, note = outcome
        self.set_busy("")
        panel = self.query_one(AttributionPanel)
        panel.show(data, (req.start, req.end))
        if note:
            panel.show_inputs(None, note=note)
        if data.get("inputs"):
            view.highlight_inputs(data["inputs"])
        saved = self.conversation.keep_attribution(req, data)
        if saved.error:
            self.show_error(saved.error)

    def _attribution_failed(self, message: str) -> None:
        self.set_busy("")
        self.query_one(AttributionPanel).show(None, note=message)

    @on(OutputView.AuditRequest)
    def _audit_request(self, event: OutputView.AuditRequest) -> None:
        state = self._state_for(event.view)
        if state is not None:
            self.audit(state, event.start, event.end)

    def audit(self, state: TurnState, start: int, end: int) -> None:
        """Open the audit of answer tokens ``start..end`` (:class:`AuditScreen`)."""
        self.app.push_screen(AuditScreen(self.conversation, audit_target(self.conversation, state.answer, start, end)))

    def action_audit(self) -> None:
        """Audit the selected tokens of the last answer (all of it when none is focused)."""
        done = [s for s in self.states if s.tokens]
        if not done:
            self.show_error("no answer to audit yet")
            return
        state = next((s for s in done if s.view.output.has_focus), done[-1])
        self.audit(state, *state.view.output.selection)

    # ---- panels and focus ---------------------------------------------------------------------
    def action_tab(self, tab: str) -> None:
        """Show side panel ``tab`` and focus its first field (the attribution panel takes the
        focus only from another pane, so an answer keeps it while its tokens are attributed)."""
        side = self.query_one("#side", TabbedContent)
        side.display = True
        side.active = tab
        if tab == "tab-steer":
            self.query_one("#concept-search").focus()
        elif tab == "tab-settings":
            self.query_one("#set-max_new_tokens").focus()
        elif self.focused is not None and side in self.focused.ancestors:
            self.query_one("#attr-scroll").focus()

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

