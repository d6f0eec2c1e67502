"""Compare: the steered answer and the unsteered one (same seed, same settings) side by side."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from ..widgets.output import clean


class CompareScreen(ModalScreen):
    """Two columns: steered (with the concepts used) and unsteered; esc (or q, ctrl+t) closes, as the
    box's bottom border says. ``titles`` names the two columns otherwise (the audit: the answer
    with a concept suppressed, and as generated)."""

    BINDINGS = [Binding("escape,q,ctrl+t", "close", "Close")]

    def __init__(self, prompt: str, steered: str, unsteered: str, steering: str, seed: int | None,
                 titles: tuple[str, str] | None = None) -> None:
        super().__init__()
        self.prompt, self.steered, self.unsteered = prompt, steered, unsteered
        self.steering, self.seed = steering, seed
        self.titles = titles or (f"steered: {steering}", "unsteered")

    def compose(self) -> ComposeResult:
        with Vertical(id="compare-box") as box:
            box.border_subtitle = "esc close"
            yield Label(Text(f"Compare (seed {self.seed}): {clean(self.prompt)[:60]}", no_wrap=True,
                             overflow="ellipsis"), classes="section")
            with Horizontal(id="compare-cols"):
                with VerticalScroll(classes="compare-col", id="compare-steered"):
                    yield Label(Text(self.titles[0], no_wrap=True, overflow="ellipsis"), classes="compare-title")
                    yield Static(Text(clean(self.steered)))
                with VerticalScroll(classes="compare-col", id="compare-unsteered"):
                    yield Label(Text(self.titles[1], no_wrap=True, overflow="ellipsis"), classes="compare-title")
                    yield Static(Text(clean(self.unsteered)))

    def action_close(self) -> None:
        self.dismiss(None)
