"""The attribution panel: a span's epsilon share, its top known and discovered concepts as
labelled bars and, on request, the input tokens that caused it.

The summary (the span, epsilon, the concepts outside the top rows) comes first so that it
is in view in a short terminal; what does not fit scrolls, and a hint under the panel says
so while there is more below.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Button, Static

from .output import clean
from .steering import ellipsize

HINT = ("Select tokens of an answer (tab to it, ←/→, shift+←/→) and press Enter; "
        "press i for the input tokens behind the selection (extra passes).")
MORE = "▼ more below (scroll)"
MIN_BAR = 3  # bar cells kept however long the labels are
PCT_W = 8  # " +12.3%": a space before the bar and the share


def bar_rows(title: str, rows: list[dict[str, Any]], width: int) -> Text:
    """``label ███▍    +12.3%`` rows, each on one line of ``width`` cells, bars scaled to the
    largest absolute share (negative shares red). Labels get the room the longest needs, up
    to all but :data:`MIN_BAR` bar cells; longer ones end in ``…``."""
    text = Text()
    text.append(f"{title}\n", "bold")
    if not rows:
        text.append("  (none)\n", "dim")
        return text
    longest = max(len(str(r["label"])) for r in rows)
    label_w = max(6, min(longest, width - PCT_W - MIN_BAR))
    bar_w = max(MIN_BAR, width - label_w - PCT_W)
    peak = max(abs(float(r["share"])) for r in rows) or 1.0
    for r in rows:
        share = float(r["share"])
        cells = abs(share) / peak * bar_w
        full = int(cells)
        bar = "█" * full + ("▌" if cells - full >= 0.5 else "")
        text.append(f"{ellipsize(str(r['label']), label_w):<{label_w}} ")
        text.append(f"{bar:<{bar_w}}", "green" if share >= 0 else "red")
        text.append(f"{share * 100:+6.1f}%\n")
    return text


def discovered_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Discovered-concept rows as the panel labels them, under its "discovered concepts" heading:
    ``#3 "dog, cat, horse"`` for a described ``discovered #3 "dog, cat, horse"`` (so that its
    words fit the label column), and so for a label file's ``discovered #3: ...``; other labels as
    they are."""
    return [{**r, "label": str(r["label"]).removeprefix("discovered ")} if _described(str(r["label"])) else r
            for r in rows]


def _described(label: str) -> bool:
    """``discovered #3 "dog, cat"`` or a label file's ``discovered #3: dog, cat``: more than the id."""
    return label.startswith("discovered #") and len(label.split(" ", 2)) > 2


class AttributionPanel(Vertical):
    """Shows the attribution of the selected span (a dict as :meth:`SpanAttribution.to_dict` makes),
    drawn again for the panel's width when it is resized."""

    class InputsRequest(Message):
        """The user asked for the input tokens of the current selection."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._shown: tuple[dict[str, Any] | None, tuple[int, int] | None, str] = (None, None, "")
        # the input tokens shown: scores, why there are none, the span, the method (occlusion / ig)
        self._inputs: tuple[list[dict[str, Any]] | None, str, tuple[int, int] | None, str] = (None, "", None, "")
        self._drawn_width = 0
        self._more = False  # the hint says there is more below

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="attr-scroll"):
            yield Static(Text(HINT, style="dim"), id="attr-body")
            yield Button("Input tokens (i)", id="attr-inputs", compact=True, disabled=True)
            yield Static("", id="attr-inputs-body")
        yield Static("", id="attr-more", classes="hint")  # its line is always there: the scroll's size never depends on it

    def on_mount(self) -> None:
        scroll = self.query_one("#attr-scroll", VerticalScroll)
        # the hint follows the scroll position and the content's laid-out height: a new
        # attribution is laid out a refresh or more after it is drawn
        for attribute in ("scroll_y", "virtual_size", "size"):
            self.watch(scroll, attribute, self._update_more, init=False)

    def on_resize(self) -> None:
        self._draw()

    def _update_more(self, *_: object) -> None:
        """Show the hint while part of the panel is below the fold."""
        scroll = self.query_one("#attr-scroll", VerticalScroll)
        self._more = scroll.scroll_y < scroll.max_scroll_y
        self.query_one("#attr-more", Static).update(Text(MORE, style="italic") if self._more else "")

    @property
    def _width(self) -> int:
        """Cells a line of the panel has (the scrollbar's column left free)."""
        return max(20, self.size.width - 1) if self.size.width else 30

    def show(self, data: dict[str, Any] | None, span: tuple[int, int] | None = None, note: str = "") -> None:
        """Show ``data`` for answer tokens ``span`` (None: the hint, or ``note`` instead)."""
        self._shown = (data, span, note)
        # attributions saved before occlusion existed have IG scores and no method
        self._inputs = (data.get("inputs") if data else None, "", span,
                        data.get("inputs_method", "ig") if data else "")
        self.query_one("#attr-scroll", VerticalScroll).scroll_home(animate=False)
        self._draw()

    def show_inputs(self, inputs: list[dict[str, Any]] | None, note: str = "",
                    span: tuple[int, int] | None = None, method: str = "occlusion") -> None:
        """``inputs``: ``[{"index", "text", "score"}]`` for the prompt tokens (of the ``span``'s
        tokens together when it has several), scored by ``method`` (``occlusion`` or ``ig``);
        ``note``: why there are none."""
        self._inputs = (inputs, note, span if span is not None else self._shown[1], method)
        self._draw()

    @property
    def settled(self) -> bool:
        """Drawn for the panel's current width, with the more-below hint as the scroll is."""
        scroll = self.query_one("#attr-scroll", VerticalScroll)
        more = scroll.scroll_y < scroll.max_scroll_y
        return self._drawn_width == self._width and self._more == more

    def _draw(self) -> None:
        data, span, note = self._shown
        self._drawn_width = self._width
        body = self.query_one("#attr-body", Static)
        self.query_one("#attr-inputs", Button).disabled = data is None
        if data is None:
            body.update(Text(note or HINT, style="dim"))
            self.query_one("#attr-inputs-body", Static).update("")
        else:
            body.update(self._summary(data, span, note))
            self.query_one("#attr-inputs-body", Static).update(self._inputs_text())
        self.call_after_refresh(self._update_more)

    def _summary(self, data: dict[str, Any], span: tuple[int, int] | None, note: str) -> Text:
        """The span, epsilon and the other concepts' share first (in view in a short
        terminal), then the known and discovered concepts' bars."""
        width = self._width
        text = Text()
        where = f"tokens {span[0]}..{span[1] - 1}" if span and span[1] - span[0] > 1 else (
            f"token {span[0]}" if span else "")
        text.append(f"{where} ", "bold")
        text.append(f"“{clean(str(data.get('text', '')))}”\n")
        if note:
            text.append(note + "\n", "dim")
        eps = data.get("epsilon")
        if eps is not None:
            text.append("epsilon ", "bold")
            text.append(f"{float(eps) * 100:.1f}%")
            text.append(" of the logit unexplained by concepts\n", "dim")
        other = [f"{k} {float(data[k + '_other']) * 100:+.1f}%" for k in ("known", "discovered")
                 if data.get(k + "_other")]
        if other:
            text.append("other concepts ", "bold")
            text.append(", ".join(other) + "\n")
        text.append_text(bar_rows("known concepts", data.get("known") or [], width))
        text.append_text(bar_rows("discovered concepts", discovered_rows(data.get("discovered") or []), width))
        return text

    def _inputs_text(self) -> Text:
        inputs, note, span, method = self._inputs
        if note:
            return Text(note, style="dim")
        if not inputs:
            return Text()
        top = sorted(inputs, key=lambda r: -abs(float(r["score"])))[:10]
        peak = max(abs(float(r["score"])) for r in top) or 1.0
        rows = [{"label": repr(clean(str(r["text"])))[1:-1] or "∅", "share": float(r["score"]) / peak} for r in top]
        several = span is not None and span[1] - span[0] > 1
        name = "integrated gradients" if method == "ig" else "occlusion"
        title = f"input tokens ({name}, " + ("summed over the span, " if several else "") + "scaled)"
        return bar_rows(title, rows, self._width)

    @on(Button.Pressed, "#attr-inputs")
    def _inputs_pressed(self) -> None:
        self.post_message(self.InputsRequest())
