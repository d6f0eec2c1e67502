"""The "save steering as preset" dialog: a name, then the panel is saved as a TOML preset in the
data folder's ``steering-presets`` (atomically); errors stay in the dialog."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from ..concepts import ConceptSpec, save_steering_preset
from ..jobs import USER_ERRORS


def default_preset_name(specs: Sequence[ConceptSpec]) -> str:
    """``noun.animal +3, noun.food -2`` made a valid preset name (at most 64 characters)."""
    text = " ".join(f"{s.label} {s.strength:+g}" for s in specs if s.active) or "steering"
    name = "".join(ch if ch.isalnum() or ch in " _.+-" else "_" for ch in text).strip(" ._") or "steering"
    return name[:64].rstrip(" .")


class PresetSaveScreen(ModalScreen[Path | None]):
    """Asks for a name and saves ``specs`` as a preset; dismisses with the file written."""

    DEFAULT_CSS = """
    PresetSaveScreen { align: center middle; }
    #preset-box { width: 64; height: auto; border: round $accent; padding: 0 1; background: $surface; }
    """
    BINDINGS = [Binding("escape", "close", "Close")]
    AUTO_FOCUS = "#preset-name"

    def __init__(self, specs: Sequence[ConceptSpec], folder: Path | None = None) -> None:
        super().__init__()
        self.specs = list(specs)
        self.folder = folder

    def compose(self) -> ComposeResult:
        with Vertical(id="preset-box"):
            yield Label("Save steering as preset", classes="section")
            yield Input(default_preset_name(self.specs), id="preset-name", placeholder="preset name")
            with Horizontal(classes="buttons"):
                yield Button("Save", id="preset-go", variant="primary", compact=True)
                yield Button("Cancel", id="preset-cancel", compact=True)
            yield Static("", id="preset-error", classes="error")

    @on(Input.Submitted, "#preset-name")
    @on(Button.Pressed, "#preset-go")
    def action_save(self) -> None:
        name = self.query_one("#preset-name", Input).value
        try:
            written = save_steering_preset(name, self.specs, self.folder)
        except (*USER_ERRORS, OSError) as exc:
            self.query_one("#preset-error", Static).update(Text(f"Could not save: {exc}"))
            return
        self.dismiss(written)

    @on(Button.Pressed, "#preset-cancel")
    def action_close(self) -> None:
        self.dismiss(None)
