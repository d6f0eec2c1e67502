"""The chat screen's session actions: new, history (reopen, delete), export, and the system
prompt line; a mixin of :class:`~tui.screens.chat.ChatScreen`, which holds the conversation,
the turn views and the panels these methods use."""

from __future__ import annotations

from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

from steerling_lite import data_dir

from ..jobs import USER_ERRORS
from ..widgets import AttributionPanel, PromptArea, SamplingForm, SteeringPanel, TurnView
from ..widgets.output import clean
from .export import ExportScreen
from .history import HistoryScreen


class SessionActions:
    """Session actions of the chat screen (``self`` is the :class:`~tui.screens.chat.ChatScreen`)."""

    def action_new_session(self, quiet: bool = False) -> None:
        try:
            self.conversation.new_session(self.query_one(SteeringPanel).specs)
        except USER_ERRORS as exc:
            self.show_error(str(exc))
            return
        self._clear_turns()
        if not quiet:
            self.clear_errors()
            self.query_one("#prompt", PromptArea).focus()

    def _clear_turns(self) -> None:
        for view in list(self.query_one("#turns", VerticalScroll).query(TurnView)):
            view.remove()
        self.views = []
        self.query_one("#welcome").display = True
        self._show_system("")
        self.query_one(AttributionPanel).show(None)
        self.busy = ""
        self.refresh_status(saved=None)

    def action_history(self) -> None:
        try:
            sessions = self.conversation.history()
        except USER_ERRORS as exc:
            self.show_error(str(exc))
            return

        async def opened(session_id: int | None) -> None:
            if session_id is not None:
                await self.open_session(session_id)

        def delete(session_id: int) -> None:
            try:
                self.conversation.delete_session(session_id)
            except USER_ERRORS as exc:
                self.notify(str(exc), severity="error", timeout=6)
                return
            if session_id == self.conversation.session.id:  # the one on screen: start afresh
                self.action_new_session(quiet=True)
                self.notify("the open session was deleted: this is a new one", timeout=5)

        self.app.push_screen(HistoryScreen(sessions, on_delete=delete), opened)

    async def open_session(self, session_id: int) -> None:
        """Show saved session ``session_id``: its turns, settings, steering and attributions."""
        try:
            session = self.conversation.open_session(session_id)
        except USER_ERRORS as exc:
            self.show_error(str(exc))
            return
        self._clear_turns()
        turns = self.query_one("#turns", VerticalScroll)
        self.query_one("#welcome").display = not session.turns
        self._show_system(session.system if self.conversation.answers else "")
        for answer in self.conversation.answers:
            view = TurnView(answer.turn.prompt, classes="turn")
            await turns.mount(view)
            self.views.append(view)
            view.turn_index = len(self.views) - 1
            view.show_answer(answer.turn, answer.tokens)
        self.query_one(SamplingForm).set_values(self.conversation.session_sampling(), session.system)
        self.query_one(SteeringPanel).set_specs(self.conversation.session_specs())
        last = self.conversation.answers[-1] if self.conversation.answers else None
        if last is not None and last.turn.attributions:
            a = last.turn.attributions[-1]
            self.query_one(AttributionPanel).show(a.data, (a.start, a.end), note="saved attribution")
        if self.conversation.made_with_other_model():
            self.notify(f"this session was made with {session.model}", timeout=5)
        self.refresh_status(saved=True)

    def _show_system(self, system: str) -> None:
        """Show the system prompt an instruct chat runs with (dim, above the turns); blank hides it."""
        line = self.query_one("#system-line", Static)
        line.update(Text.assemble(("system ", "bold"), clean(system.strip())))
        line.display = bool(system.strip())

    def action_export(self) -> None:
        session = self.conversation.session
        if session.id is None:
            self.show_error("nothing to export yet: a session is saved when its first answer finishes")
            return

        def done(path) -> None:
            if path is not None:
                self.notify(f"exported to {path}", timeout=5)
                self.query_one("#chat-error", Static).update(Text(f"exported to {path}", style="green"))

        self.app.push_screen(ExportScreen(session, data_dir() / "exports"), done)
