"""One exchange of the chat: the prompt and the answer.

While generating, the answer shows the committed text and, after it, the block being
denoised: still-masked slots are placeholders (``░``) that fill in as each denoising
step commits its most confident tokens. When it is done, the answer's tokens become
selectable (left/right moves, shift extends, Enter attributes the selection, ``a`` audits it).
"""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Static

from ..steering_record import steering_footer
from ..store import Turn

PLACEHOLDER = "░"


def clean(text: str) -> str:
    """Token text safe to draw: carriage returns dropped, tabs as two spaces, other controls as ``·``."""
    out = []
    for ch in text:
        if ch == "\n":
            out.append(ch)
        elif ch == "\t":
            out.append("  ")
        elif ch == "\r":
            continue
        elif ord(ch) < 32 or 0x7F <= ord(ch) < 0xA0:
            out.append("·")
        else:
            out.append(ch)
    return "".join(out)


class OutputView(Static, can_focus=True):
    """An answer: live (committed text + the current block) or finished (selectable tokens)."""

    BINDINGS = [
        Binding("left", "move(-1)", "Prev token", show=False),
        Binding("right", "move(1)", "Next token", show=False),
        Binding("shift+left", "extend(-1)", "Extend left", show=False),
        Binding("shift+right", "extend(1)", "Extend right", show=False),
        Binding("home", "jump(0)", "First", show=False),
        Binding("end", "jump(-1)", "Last", show=False),
        Binding("enter", "attribute", "Explain"),
        Binding("i", "inputs", "Inputs"),
        Binding("I", "inputs('ig')", "Input tokens (integrated gradients)", show=False),
        Binding("a", "audit", "Audit", show=False),  # in the help, the palette and the attribution hint
    ]

    cursor: reactive[int] = reactive(0)
    anchor: reactive[int | None] = reactive(None)

    class AttributeRequest(Message):
        """Attribute tokens ``start..end`` (exclusive) of this answer; ``inputs``: also the input tokens,
        by ``method`` (``occlusion`` or ``ig``)."""

        def __init__(self, view: OutputView, start: int, end: int, inputs: bool, method: str = "occlusion") -> None:
            super().__init__()
            self.view = view
            self.start, self.end, self.inputs, self.method = start, end, inputs, method

    class AuditRequest(Message):
        """Audit tokens ``start..end`` (exclusive) of this answer: concepts, input units, training chunks."""

        def __init__(self, view: OutputView, start: int, end: int) -> None:
            super().__init__()
            self.view, self.start, self.end = view, start, end

    def __init__(self, **kwargs) -> None:
        super().__init__("", **kwargs)
        self.live = True
        self.committed = ""
        self.block: list[str | None] = []
        self.tokens: list[str] = []
        self.plain: str | None = None  # finished text without token boundaries (reopened, no model)

    # ---- live ------------------------------------------------------------------------
    def show_progress(self, committed: str, block: list[str | None]) -> None:
        """``committed``: text before the current block; ``block``: its slots (None = still masked)."""
        self.live, self.committed, self.block = True, committed, block
        self._redraw()

    def show_tokens(self, tokens: list[str]) -> None:
        """The finished answer, one string per token."""
        self.live, self.tokens, self.plain = False, tokens, None
        self.cursor = max(0, min(self.cursor, len(tokens) - 1))
        self._redraw()

    def show_plain(self, text: str) -> None:
        """A finished answer without its tokens (no model loaded): not selectable."""
        self.live, self.tokens, self.plain = False, [], text
        self._redraw()

    # ---- selection ---------------------------------------------------------------------
    @property
    def selection(self) -> tuple[int, int]:
        """Selected tokens as ``(start, end)``, end exclusive."""
        if not self.tokens:
            return (0, 0)
        a = self.cursor if self.anchor is None else self.anchor
        return (min(a, self.cursor), max(a, self.cursor) + 1)

    def watch_cursor(self) -> None:
        self._redraw()

    def watch_anchor(self) -> None:
        self._redraw()

    def watch_has_focus(self, has_focus: bool) -> None:
        super().watch_has_focus(has_focus)
        self._redraw()  # the selection shows only while the answer has focus

    def action_move(self, delta: int) -> None:
        if self.tokens:
            self.anchor = None
            self.cursor = max(0, min(len(self.tokens) - 1, self.cursor + delta))

    def action_extend(self, delta: int) -> None:
        if self.tokens:
            if self.anchor is None:
                self.anchor = self.cursor
            self.cursor = max(0, min(len(self.tokens) - 1, self.cursor + delta))

    def action_jump(self, index: int) -> None:
        if self.tokens:
            self.anchor = None
            self.cursor = index % len(self.tokens)

    def action_select_token(self, index: int) -> None:
        """Mouse: a click selects the token under it."""
        if not self.tokens:
            return
        self.focus()
        self.anchor = None
        self.cursor = max(0, min(len(self.tokens) - 1, index))

    def select(self, start: int, end: int) -> None:
        """Select tokens ``start..end`` (exclusive)."""
        if self.tokens:
            self.anchor = max(0, min(start, len(self.tokens) - 1))
            self.cursor = max(0, min(end - 1, len(self.tokens) - 1))

    def action_attribute(self) -> None:
        if self.tokens:
            start, end = self.selection
            self.post_message(self.AttributeRequest(self, start, end, inputs=False))

    def action_inputs(self, method: str = "occlusion") -> None:
        """Attribute the selection and the input tokens behind it (the selection is kept);
        ``method``: ``occlusion`` (i) or ``ig`` (I)."""
        if self.tokens:
            start, end = self.selection
            self.post_message(self.AttributeRequest(self, start, end, inputs=True, method=method))

    def action_audit(self) -> None:
        if self.tokens:
            start, end = self.selection
            self.post_message(self.AuditRequest(self, start, end))

    # ---- drawing -----------------------------------------------------------------------
    def _redraw(self) -> None:
        text = Text()
        if self.live:
            text.append(clean(self.committed))
            for slot in self.block:
                if slot is None:
                    text.append(PLACEHOLDER, "dim")
                else:
                    text.append(clean(slot), "bold")
            if not self.committed and not self.block:
                text.append("…", "dim")
        elif self.plain is not None:
            text.append(clean(self.plain) or "(empty)")
        else:
            start, end = self.selection
            show_sel = self.has_focus
            for i, tok in enumerate(self.tokens):
                shown = clean(tok)
                if not shown.strip("\n"):
                    shown = shown.replace("\n", "↵\n") if shown else "∅"
                style = Style(meta={"@click": f"select_token({i})"})
                if show_sel and start <= i < end:
                    style += Style(reverse=True)
                text.append(shown, style)
            if not self.tokens:
                text.append("(no tokens)", "dim")
        self.update(text)


class TurnView(Vertical):
    """A prompt, its answer and a line about how it was made."""

    def __init__(self, prompt: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.prompt_text = prompt
        self.turn_index: int | None = None

    def compose(self) -> ComposeResult:
        yield Static(Text(clean(self.prompt_text)), classes="turn-prompt")
        yield OutputView(classes="turn-output")
        yield Static("", classes="turn-meta")

    @property
    def output(self) -> OutputView:
        return self.query_one(OutputView)

    def set_meta(self, text: str) -> None:
        self.query_one(".turn-meta", Static).update(Text(text))

    def show_answer(self, turn: Turn, tokens: list[str]) -> None:
        """Draw a saved answer: its ``tokens`` (or its text, when no model could decode them),
        its meta line and the input tokens of its last saved attribution."""
        if tokens:
            self.output.show_tokens(tokens)
        else:
            self.output.show_plain(turn.output)
        self.set_meta(meta_line(turn))
        if turn.attributions and turn.attributions[-1].data.get("inputs"):
            self.highlight_inputs(turn.attributions[-1].data["inputs"])

    def highlight_inputs(self, inputs: list[dict]) -> None:
        """Shade the prompt by each input token's score (``[{"text", "score"}]``, prompt order)."""
        self.highlight_prompt([str(r["text"]) for r in inputs], [float(r["score"]) for r in inputs])

    def highlight_prompt(self, tokens: list[str], scores: list[float]) -> None:
        """Draw the prompt's tokens with a background whose strength is each token's share of
        the largest absolute score (green: pushes towards the token, red: away)."""
        peak = max((abs(s) for s in scores), default=0.0) or 1.0
        text = Text()
        for tok, s in zip(tokens, scores):
            a = min(1.0, abs(s) / peak)
            level = int(40 + 160 * a)
            color = f"rgb(0,{level},0)" if s >= 0 else f"rgb({level},0,0)"
            text.append(clean(tok), Style(bgcolor=color) if a > 0.05 else None)
        self.query_one(".turn-prompt", Static).update(text)


def meta_line(turn: Turn) -> str:
    """The line under an answer: seed, tokens, why it stopped, the steering it ran with."""
    parts = [f"seed {turn.seed}", f"{len(turn.token_ids)} tokens", f"stop: {turn.stop_reason}"]
    steer = steering_footer(turn.steering_segments, turn.steering,
                            bool(turn.settings.get("steering_changed_while_generating")))
    return " · ".join(parts + ([steer] if steer else []))
