"""The history screen: saved sessions, most recent first; enter reopens, delete removes."""

from __future__ import annotations

import time

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label, Static

from ..store import SessionSummary
from .confirm import ConfirmScreen


def when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


class HistoryScreen(ModalScreen[int | None]):
    """Dismisses with the chosen session id, or None."""

    BINDINGS = [
        Binding("escape", "dismiss_none", "Close"),
        Binding("delete", "delete", "Delete"),
    ]

    def __init__(self, sessions: list[SessionSummary], on_delete=None) -> None:
        super().__init__()
        self.sessions = sessions
        self.on_delete = on_delete

    def compose(self) -> ComposeResult:
        with Vertical(id="history-box"):
            yield Label("Sessions  (enter: open, delete: remove, esc: close)", classes="section")
            yield DataTable(id="history-table", cursor_type="row", zebra_stripes=True)
            yield Static("", id="history-empty", classes="hint")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("title", "turns", "model", "updated")
        for s in self.sessions:
            table.add_row(s.title[:40], str(s.turns), _short(s.model), when(s.updated_at), key=str(s.id))
        if not self.sessions:
            self.query_one("#history-empty", Static).update("No saved sessions yet: answers are saved as they finish.")
        table.focus()

    @on(DataTable.RowSelected)
    def _open(self, event: DataTable.RowSelected) -> None:
        self.dismiss(int(str(event.row_key.value)))

    def action_dismiss_none(self) -> None:
        self.dismiss(None)

    def action_delete(self) -> None:
        """Delete the session under the cursor, once the user confirms."""
        table = self.query_one(DataTable)
        if not table.row_count:
            return
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        session_id = int(str(key.value))
        title = next((s.title for s in self.sessions if s.id == session_id), "")

        def answered(yes: bool | None) -> None:
            if not yes:
                return
            if self.on_delete is not None:
                self.on_delete(session_id)
            table.remove_row(key)

        self.app.push_screen(ConfirmScreen(f"Delete the session \u201c{title}\u201d? This cannot be undone.", "Delete"),
                             answered)


def _short(path: str) -> str:
    parts = path.replace("\\", "/").rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) > 1 else path
