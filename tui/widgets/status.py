"""The status line: device, precision, quant mode, RAM and GPU memory in use, tokens/s, what
the app is doing, saved state."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from steerling_lite import fmt_bytes

from ..backend import Status


class StatusBar(Static):
    """One line under the chat; :meth:`show` redraws it from a :class:`Status`. In a narrow
    terminal the figures that matter least (quant mode, then RAM, then GPU memory) are left
    out so that what the app is doing stays in view."""

    def __init__(self, **kwargs) -> None:
        super().__init__("", **kwargs)
        self.status = Status()
        self.state = "no model"
        self.saved: bool | None = None

    def show(self, status: Status | None = None, state: str | None = None, saved: bool | None | str = "keep") -> None:
        if status is not None:
            self.status = status
        if state is not None:
            self.state = state
        if saved != "keep":
            self.saved = saved  # type: ignore[assignment]
        self._draw()

    def on_resize(self) -> None:
        self._draw()

    def _draw(self) -> None:
        s = self.status
        parts: list[tuple[str, str, int]] = [  # (text, style, drop order: higher goes first)
            (f" {s.device} {s.dtype} ", "reverse", 0),
            (f" quant {s.quant} ", "", 3),
            (f" RAM {'-' if s.ram_bytes is None else fmt_bytes(s.ram_bytes)} ", "", 2),
        ]
        if s.gpu_bytes is not None:
            parts.append((f" GPU {fmt_bytes(s.gpu_bytes)} ", "", 1))
        if s.tokens_per_s is not None:
            parts.append((f" {s.tokens_per_s:.1f} tok/s ", "", 0))
        tail = Text()
        tail.append(f" {self.state}", "bold")
        if self.saved is True:
            tail.append("  ● saved", "green")
        elif self.saved is False:
            tail.append("  ○ not saved", "yellow")
        width = self.size.width
        while width and sum(len(p[0]) + 1 for p in parts) + tail.cell_len > width and any(p[2] for p in parts):
            parts.remove(max(parts, key=lambda p: p[2]))
        text = Text()
        for chunk, style, _ in parts:
            text.append(chunk, style)
            text.append("│", "dim")
        text.append_text(tail)
        self.update(text)
