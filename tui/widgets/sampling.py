"""The sampling settings form: max new tokens, steps, temperature, top-p, repetition penalty,
seed, system prompt; each field is checked as it is typed.

A field's check is the runtime's own: :meth:`Sampling.from_form` (a number of the right kind)
and, once a model is loaded, :meth:`GenerationConfig.validate` with its diffusion block
size (a multiple of the block, steps a multiple of the blocks, top-p in 0..1, ...). A field
that fails is marked (Textual's ``-invalid`` class) and the problem is written under the
form, so that nothing is refused only at send.
"""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.validation import ValidationResult, Validator
from textual.widgets import Input, Label, Static

from steerling_lite import GenerationError

from ..backend import BackendError, ModelInfo, Sampling

FIELDS = [
    ("max_new_tokens", "max tokens", "multiple of the block"),
    ("steps", "steps", "blank: 1 per token"),
    ("temperature", "temperature", "blank=adaptive 0=greedy"),
    ("top_p", "top-p", "0..1"),
    ("repetition_penalty", "rep. penalty", ">= 1"),
    ("seed", "seed", "blank: random"),
]


def field_problem(key: str, value: str, form: dict[str, str], block: int | None) -> str:
    """Why ``value`` cannot be the setting ``key`` (blank when it can).

    The other settings are taken as their defaults, except that ``steps`` is checked
    against the ``max_new_tokens`` of ``form`` when that one is good: each problem shows
    on the field that has it. ``block``: the loaded model's diffusion block size (None: no
    model yet, only the number's kind is checked).
    """
    defaults = (Sampling().fit_block(block) if block else Sampling()).to_form()
    trial = {**defaults, key: value}
    try:
        parsed = Sampling.from_form(trial)
    except BackendError as exc:
        return str(exc)
    if block is None:
        return ""
    if key == "steps" and not field_problem("max_new_tokens", form["max_new_tokens"], form, block):
        trial["max_new_tokens"] = form["max_new_tokens"]
        parsed = Sampling.from_form(trial)
    try:
        parsed.to_config().validate(block)
    except GenerationError as exc:
        return str(exc)
    return ""


class SettingCheck(Validator):
    """Textual validator of one settings field (:func:`field_problem` on the form it is in)."""

    def __init__(self, form: SamplingForm, key: str) -> None:
        super().__init__()
        self.form, self.key = form, key

    def validate(self, value: str) -> ValidationResult:
        problem = field_problem(self.key, value, self.form.form(), self.form.block)
        return self.failure(problem) if problem else self.success()


class SamplingForm(VerticalScroll, can_focus=False):
    """Compact label + input rows; :meth:`form` returns what was typed, :meth:`set_values` fills it.

    Attributes:
        block: the loaded model's diffusion block size (None before a model is loaded).
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.block: int | None = None

    def compose(self) -> ComposeResult:
        for key, label, hint in FIELDS:
            with Horizontal(classes="field"):
                yield Label(label, classes="field-label")
                yield Input(placeholder=hint, id=f"set-{key}", compact=True, select_on_focus=True,
                            validators=[SettingCheck(self, key)], validate_on=["changed", "submitted"])
        with Horizontal(classes="field system-row"):
            yield Label("system", classes="field-label")
            yield Input(placeholder="system prompt (chat models)", id="set-system", compact=True)
        yield Static("", id="sampling-error", classes="error")
        yield Static("", id="sampling-note", classes="hint")

    def form(self) -> dict[str, str]:
        return {key: self.query_one(f"#set-{key}", Input).value for key, _, _ in FIELDS}

    @property
    def system(self) -> str:
        return self.query_one("#set-system", Input).value

    @on(Input.Changed)
    def _check(self, event: Input.Changed) -> None:
        """Check every field (a change of max tokens can make steps wrong) and show the first problem."""
        if event.input.id != "set-system":
            self.check()

    def check(self) -> bool:
        """Validate every field (marking those that fail) and show the first problem; True when all are good."""
        problems = []
        for key, _, _ in FIELDS:
            field = self.query_one(f"#set-{key}", Input)
            result = field.validate(field.value)
            if result is not None and not result.is_valid:
                problems += result.failure_descriptions
        self.query_one("#sampling-error", Static).update(problems[0] if problems else "")
        return not problems

    def set_values(self, sampling: Sampling, system: str | None = None) -> None:
        values = sampling.to_form()
        for key, _, _ in FIELDS:
            self.query_one(f"#set-{key}", Input).value = values[key]
        if system is not None:
            self.query_one("#set-system", Input).value = system

    def set_model(self, info: ModelInfo) -> None:
        """Fit the settings to a newly loaded model: one diffusion block of tokens when the
        current length does not fit its block; the system prompt for chat models only."""
        self.block = info.block
        try:
            current = Sampling.from_form(self.form())
        except BackendError:
            current = Sampling()
        self.set_values(current.fit_block(info.block))
        self.set_chat(info.instruct, f"context {info.context} tokens, block {info.block}"
                      + ("; chat template on" if info.instruct else "; completion"))
        self.check()

    def set_chat(self, chat: bool, note: str = "") -> None:
        """Show the system prompt only for chat (instruct) models."""
        self.query_one(".system-row").display = chat
        self.query_one("#sampling-note", Static).update(note)
