"""The sampling settings form: max new tokens, steps, temperature, top-p, repetition penalty, seed, system prompt."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Input, Label, Static

from ..backend import BackendError, ModelInfo, Sampling

FIELDS = [
    ("max_new_tokens", "max tokens", "multiple of the block"),
    ("steps", "steps", "blank: 1 per token"),
    ("temperature", "temperature", "blank=adaptive 0=greedy"),
    ("top_p", "top-p", "0..1"),
    ("repetition_penalty", "rep. penalty", ">= 1"),
    ("seed", "seed", "blank: random"),
]


class SamplingForm(VerticalScroll):
    """Compact label + input rows; :meth:`form` returns what was typed, :meth:`set_values` fills it."""

    def compose(self) -> ComposeResult:
        for key, label, hint in FIELDS:
            with Horizontal(classes="field"):
                yield Label(label, classes="field-label")
                yield Input(placeholder=hint, id=f"set-{key}", compact=True, select_on_focus=True)
        with Horizontal(classes="field system-row"):
            yield Label("system", classes="field-label")
            yield Input(placeholder="system prompt (chat models)", id="set-system", compact=True)
        yield Static("", id="sampling-note", classes="hint")

    def form(self) -> dict[str, str]:
        return {key: self.query_one(f"#set-{key}", Input).value for key, _, _ in FIELDS}

    @property
    def system(self) -> str:
        return self.query_one("#set-system", Input).value

    def set_values(self, sampling: Sampling, system: str | None = None) -> None:
        values = sampling.to_form()
        for key, _, _ in FIELDS:
            self.query_one(f"#set-{key}", Input).value = values[key]
        if system is not None:
            self.query_one("#set-system", Input).value = system

    def set_model(self, info: ModelInfo) -> None:
        """Fit the settings to a newly loaded model: one diffusion block of tokens when the
        current length does not fit its block; the system prompt for chat models only."""
        try:
            current = Sampling.from_form(self.form())
        except BackendError:
            current = Sampling()
        self.set_values(current.fit_block(info.block))
        self.set_chat(info.instruct, f"context {info.context} tokens, block {info.block}"
                      + ("; chat template on" if info.instruct else "; completion"))

    def set_chat(self, chat: bool, note: str = "") -> None:
        """Show the system prompt only for chat (instruct) models."""
        self.query_one(".system-row").display = chat
        self.query_one("#sampling-note", Static).update(note)
