"""The steering panel: search the concept catalog, steer several concepts, each with a strength and an on/off switch.

A change posts :class:`SteeringPanel.Changed`; the chat screen turns it into a
steering plan and hands it to a running generation, which uses it from its next
denoising step.
"""

from __future__ import annotations

from rich.cells import cell_len, set_cell_size
from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import Button, Input, OptionList, Static
from textual.widgets.option_list import Option

from steerling_lite import Concept

from ..backend import BackendError
from ..concepts import DEFAULT_STRENGTH, STRENGTH_HELP, STRENGTH_MAX, STRENGTH_MIN, Catalog, ConceptSpec


class ConceptRow(Widget, can_focus=True):
    """One steered concept on two lines: ``[x] label`` and a strength bar from suppress to amplify.

    Keys: left / right change the strength by 1 (shift: by 5), space toggles, delete removes.
    """

    BINDINGS = [
        Binding("left", "nudge(-1)", "Weaker", show=False),
        Binding("right", "nudge(1)", "Stronger", show=False),
        Binding("shift+left", "nudge(-5)", "Weaker ×5", show=False),
        Binding("shift+right", "nudge(5)", "Stronger ×5", show=False),
        Binding("space", "toggle", "On/off", key_display="␣"),
        Binding("delete,backspace", "remove", "Remove", key_display="del"),
    ]

    strength: reactive[float] = reactive(DEFAULT_STRENGTH, init=False)
    enabled: reactive[bool] = reactive(True, init=False)

    class Changed(Message):
        def __init__(self, row: ConceptRow) -> None:
            super().__init__()
            self.row = row

    class Removed(Message):
        def __init__(self, row: ConceptRow) -> None:
            super().__init__()
            self.row = row

    def __init__(self, spec: ConceptSpec, **kwargs) -> None:
        super().__init__(**kwargs)
        self.concept_id = spec.concept_id
        self.label = spec.label
        self.set_reactive(ConceptRow.strength, spec.strength)
        self.set_reactive(ConceptRow.enabled, spec.enabled)
        self.tooltip = STRENGTH_HELP

    @property
    def spec(self) -> ConceptSpec:
        return ConceptSpec(self.concept_id, self.label, float(self.strength), bool(self.enabled))

    def watch_strength(self) -> None:
        self.post_message(self.Changed(self))

    def watch_enabled(self) -> None:
        self.set_class(not self.enabled, "-off")
        self.post_message(self.Changed(self))

    def action_nudge(self, delta: int) -> None:
        self.strength = float(max(STRENGTH_MIN, min(STRENGTH_MAX, self.strength + delta)))

    def action_toggle(self) -> None:
        self.enabled = not self.enabled

    def action_remove(self) -> None:
        self.post_message(self.Removed(self))

    def _bar_width(self) -> int:
        return max(5, self.size.width - 5)  # the bar, a space and the strength (``+10``)

    def on_click(self, event: events.Click) -> None:
        self.focus()
        if event.y == 0 and event.x <= 3:
            self.action_toggle()
        elif event.y == 1:
            w = self._bar_width()
            x = max(0, min(w - 1, event.x))
            frac = x / (w - 1)
            self.strength = float(round(STRENGTH_MIN + frac * (STRENGTH_MAX - STRENGTH_MIN)))

    def render(self) -> Text:
        box = "[x]" if self.enabled else "[ ]"
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(box + " ", "bold" if self.enabled else "dim")
        text.append(ellipsize(self.label, self.size.width - 4), "" if self.enabled else "dim")
        text.append("\n")
        w = self._bar_width()
        pos = round((self.strength - STRENGTH_MIN) / (STRENGTH_MAX - STRENGTH_MIN) * (w - 1))
        mid = (w - 1) // 2
        color = "green" if self.strength > 0 else ("red" if self.strength < 0 else "")
        if not self.enabled:
            color = "dim"
        for i in range(w):
            if i == pos:
                text.append("●", f"bold {color}")
            elif i == mid:
                text.append("┼", "dim")
            elif min(pos, mid) < i < max(pos, mid):
                text.append("━", color)
            else:
                text.append("─", "dim")
        text.append(f" {self.strength:+3.0f}", color)
        return text


class SteeringPanel(Vertical):
    """Concept search, the steered concepts and the Compare / Clear buttons."""

    class Changed(Message):
        """The steering changed (a concept added, removed, toggled or re-weighted)."""

        def __init__(self, specs: list[ConceptSpec]) -> None:
            super().__init__()
            self.specs = specs

    class CompareRequest(Message):
        pass

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.catalog: Catalog = Catalog()

    def compose(self) -> ComposeResult:
        yield Input(placeholder="search concepts (name, words, #id)", id="concept-search", compact=True)
        yield OptionList(id="concept-results")
        yield Static("", id="steer-error", classes="error")
        yield Static("", id="steer-note", classes="hint")
        yield VerticalScroll(id="concept-rows", can_focus=False)  # its rows take the focus, not the list
        with Horizontal(classes="buttons"):
            yield Button("Compare", id="steer-compare", compact=True, tooltip="regenerate the last answer unsteered")
            yield Button("Clear", id="steer-clear", compact=True)

    def set_catalog(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.query_one("#concept-results", OptionList).clear_options()

    @property
    def specs(self) -> list[ConceptSpec]:
        return [row.spec for row in self.query(ConceptRow)]

    def show_error(self, message: str) -> None:
        _show_line(self.query_one("#steer-error", Static), message)

    @on(Input.Changed, "#concept-search")
    def _search(self, event: Input.Changed) -> None:
        results = self.query_one("#concept-results", OptionList)
        results.clear_options()
        self.show_error("")
        for c in self.catalog.search(event.value, limit=20):
            results.add_option(Option(_option_text(c), id=f"c{c.concept_id}"))
        results.display = results.option_count > 0
        query = event.value.strip()
        note = ""
        if query and not results.option_count:
            if not self.catalog.n_known:
                note = "this model has no concept heads: nothing to steer"
            else:
                note = f"no concept matches {query!r}"
                if not self.catalog.labelled:
                    note += ": this model has no concept labels file, search by #id"
        _show_line(self.query_one("#steer-note", Static), note)

    @on(Input.Submitted, "#concept-search")
    def _submit(self, event: Input.Submitted) -> None:
        try:
            concept = self.catalog.resolve(event.value)
        except BackendError as exc:
            self.show_error(str(exc))
            return
        self.add_concept(concept)

    @on(OptionList.OptionSelected, "#concept-results")
    def _picked(self, event: OptionList.OptionSelected) -> None:
        cid = int(str(event.option.id)[1:])
        self.add_concept(self.catalog.get(cid))

    def add_concept(self, concept: Concept, strength: float = DEFAULT_STRENGTH) -> ConceptRow:
        """Steer ``concept`` (focus its row if it is already steered)."""
        self.show_error("")
        for row in self.query(ConceptRow):
            if row.concept_id == concept.concept_id:
                row.focus()
                return row
        row = ConceptRow(ConceptSpec(concept.concept_id, concept.label, strength, True))
        self.query_one("#concept-rows", VerticalScroll).mount(row)
        search = self.query_one("#concept-search", Input)
        search.value = ""
        row.focus()
        self._changed()
        return row

    def set_specs(self, specs: list[ConceptSpec]) -> None:
        """Replace the steered concepts (reopening a session)."""
        rows = self.query_one("#concept-rows", VerticalScroll)
        rows.remove_children()
        rows.mount_all([ConceptRow(s) for s in specs])
        self._changed()

    def clear(self) -> None:
        self.set_specs([])

    def _changed(self) -> None:
        self.post_message(self.Changed(self.specs))

    @on(ConceptRow.Changed)
    def _row_changed(self, event: ConceptRow.Changed) -> None:
        event.stop()
        self._changed()

    @on(ConceptRow.Removed)
    async def _row_removed(self, event: ConceptRow.Removed) -> None:
        event.stop()
        await event.row.remove()
        self._changed()

    @on(Button.Pressed, "#steer-clear")
    def _clear(self) -> None:
        self.clear()

    @on(Button.Pressed, "#steer-compare")
    def _compare(self) -> None:
        self.post_message(self.CompareRequest())


def _show_line(line: Static, message: str) -> None:
    """Show ``message`` in ``line``, which takes no room while it is blank."""
    line.update(Text(message))
    line.display = bool(message)


def ellipsize(text: str, width: int) -> str:
    """``text`` on one line of at most ``width`` cells, cut with ``…`` when longer."""
    text = " ".join(text.split())
    if cell_len(text) <= width:
        return text
    return set_cell_size(text, max(0, width - 1)) + "…" if width > 0 else ""


def _option_text(c: Concept) -> Text:
    t = Text(no_wrap=True, overflow="ellipsis")
    t.append(c.label)
    if c.description:
        t.append(f"  {c.description}", "dim")
    return t
