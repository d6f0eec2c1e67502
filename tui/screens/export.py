"""The export dialog: Markdown or JSON, to a path (default: the data folder's exports/)."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, RadioButton, RadioSet, Static

from ..export import export_session
from ..store import Session

SUFFIX = {"markdown": ".md", "json": ".json"}


class ExportScreen(ModalScreen[Path | None]):
    """Writes the session (atomically) and dismisses with the path written; errors stay on screen."""

    BINDINGS = [Binding("escape", "close", "Close")]

    def __init__(self, session: Session, folder: Path, fmt: str = "markdown") -> None:
        super().__init__()
        self.session = session
        self.folder = folder
        self.fmt = fmt

    def default_path(self, fmt: str) -> str:
        return str(self.folder / f"session-{self.session.id}{SUFFIX[fmt]}")

    def compose(self) -> ComposeResult:
        with Vertical(id="export-box"):
            yield Label("Export session", classes="section")
            with RadioSet(id="export-format"):
                yield RadioButton("Markdown", value=self.fmt == "markdown", id="fmt-markdown")
                yield RadioButton("JSON", value=self.fmt == "json", id="fmt-json")
            yield Input(self.default_path(self.fmt), id="export-path")
            with Horizontal(classes="buttons"):
                yield Button("Export", id="export-go", variant="primary", compact=True)
                yield Button("Cancel", id="export-cancel", compact=True)
            yield Static("", id="export-error", classes="error")

    def on_mount(self) -> None:
        self.query_one("#export-path", Input).focus()

    @on(RadioSet.Changed)
    def _format(self, event: RadioSet.Changed) -> None:
        fmt = "json" if event.pressed.id == "fmt-json" else "markdown"
        path = self.query_one("#export-path", Input)
        if path.value in (self.default_path("markdown"), self.default_path("json")):
            path.value = self.default_path(fmt)
        self.fmt = fmt

    @on(Input.Submitted, "#export-path")
    @on(Button.Pressed, "#export-go")
    def action_export(self) -> None:
        target = self.query_one("#export-path", Input).value.strip()
        if not target:
            self.query_one("#export-error", Static).update("give a file path to export to")
            return
        try:
            written = export_session(self.session, target, self.fmt)
        except (OSError, ValueError) as exc:
            self.query_one("#export-error", Static).update(Text(f"Could not export: {exc}"))
            return
        self.dismiss(written)

    @on(Button.Pressed, "#export-cancel")
    def action_close(self) -> None:
        self.dismiss(None)
