"""The attribution panel: a span's top known and discovered concepts as labelled bars, the
epsilon share and, on request, the input tokens that caused it."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import Button, Static

from .output import clean

HINT = ("Select tokens of an answer (tab to it, ←/→, shift+←/→) and press Enter; "
        "press i for the input tokens behind the token under the cursor (extra passes).")


def bar_rows(title: str, rows: list[dict[str, Any]], width: int) -> Text:
    """``label ███▍    12.3%`` rows scaled to the largest absolute share; negative shares red."""
    text = Text()
    text.append(f"{title}\n", "bold")
    if not rows:
        text.append("  (none)\n", "dim")
        return text
    label_w = max(6, min(20, width - 15))
    bar_w = max(4, width - label_w - 9)
    peak = max(abs(float(r["share"])) for r in rows) or 1.0
    for r in rows:
        share = float(r["share"])
        label = str(r["label"])
        label = label if len(label) <= label_w else label[: label_w - 1] + "…"
        cells = abs(share) / peak * bar_w
        full = int(cells)
        bar = "█" * full + ("▌" if cells - full >= 0.5 else "")
        text.append(f"{label:<{label_w}} ")
        text.append(f"{bar:<{bar_w}}", "green" if share >= 0 else "red")
        text.append(f"{share * 100:+6.1f}%\n")
    return text


def discovered_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Discovered-concept rows as the panel labels them, under its "discovered concepts" heading:
    ``#3 "dog, cat, horse"`` for a described ``discovered #3 "dog, cat, horse"`` (so that its
    words fit the label column); other labels as they are."""
    return [{**r, "label": str(r["label"]).removeprefix("discovered ")} if '"' in str(r["label"]) else r
            for r in rows]


class AttributionPanel(VerticalScroll):
    """Shows the attribution of the selected span (a dict as :meth:`SpanAttribution.to_dict` makes)."""

    class InputsRequest(Message):
        """The user asked for the input tokens of the current selection."""

    def compose(self) -> ComposeResult:
        yield Static(Text(HINT, style="dim"), id="attr-body")
        yield Button("Input tokens (slow)", id="attr-inputs", compact=True, disabled=True)
        yield Static("", id="attr-inputs-body")

    def show(self, data: dict[str, Any] | None, span: tuple[int, int] | None = None, note: str = "") -> None:
        body = self.query_one("#attr-body", Static)
        if data is None:
            body.update(Text(note or HINT, style="dim"))
            self.query_one("#attr-inputs", Button).disabled = True
            self.query_one("#attr-inputs-body", Static).update("")
            return
        width = max(24, self.size.width - 2) if self.size.width else 32
        text = Text()
        where = f"tokens {span[0]}..{span[1] - 1}" if span and span[1] - span[0] > 1 else (
            f"token {span[0]}" if span else "")
        text.append(f"{where} ", "bold")
        text.append(f"“{clean(str(data.get('text', '')))}”\n")
        if note:
            text.append(note + "\n", "dim")
        text.append_text(bar_rows("known concepts", data.get("known") or [], width))
        text.append_text(bar_rows("discovered concepts", discovered_rows(data.get("discovered") or []), width))
        other = [f"{k} {float(data[k + '_other']) * 100:+.1f}%" for k in ("known", "discovered")
                 if data.get(k + "_other")]
        if other:
            text.append("other concepts ", "bold")
            text.append(", ".join(other) + "\n")
        eps = data.get("epsilon")
        if eps is not None:
            text.append("epsilon ", "bold")
            text.append(f"{float(eps) * 100:.1f}%", "")
            text.append(" of the logit unexplained by concepts\n", "dim")
        body.update(text)
        self.query_one("#attr-inputs", Button).disabled = False
        self.show_inputs(data.get("inputs"), method=data.get("inputs_method", "ig"))

    def show_inputs(self, inputs: list[dict[str, Any]] | None, note: str = "", method: str = "occlusion") -> None:
        """``inputs``: ``[{"index", "text", "score"}]`` for the prompt tokens, scored by ``method``
        (``occlusion`` or ``ig``)."""
        out = self.query_one("#attr-inputs-body", Static)
        if note:
            out.update(Text(note, style="dim"))
            return
        if not inputs:
            out.update("")
            return
        top = sorted(inputs, key=lambda r: -abs(float(r["score"])))[:10]
        peak = max(abs(float(r["score"])) for r in top) or 1.0
        rows = [{"label": repr(clean(str(r["text"])))[1:-1] or "∅", "share": float(r["score"]) / peak} for r in top]
        width = max(24, self.size.width - 2) if self.size.width else 32
        name = "integrated gradients" if method == "ig" else "occlusion"
        text = bar_rows(f"input tokens ({name}, scaled)", rows, width)
        out.update(text)

    @on(Button.Pressed, "#attr-inputs")
    def _inputs(self) -> None:
        self.post_message(self.InputsRequest())
