"""The status line: device, precision, quant mode, RAM and GPU memory in use, tokens/s, saved state."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from steerling_lite import fmt_bytes

from ..backend import Status


class StatusBar(Static):
    """One line under the chat; :meth:`show` redraws it from a :class:`Status`."""

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
        s = self.status
        parts = [
            (f" {s.device} {s.dtype} ", "reverse"),
            (f" quant {s.quant} ", ""),
            (f" RAM {'-' if s.ram_bytes is None else fmt_bytes(s.ram_bytes)} ", ""),
        ]
        if s.gpu_bytes is not None:
            parts.append((f" GPU {fmt_bytes(s.gpu_bytes)} ", ""))
        if s.tokens_per_s is not None:
            parts.append((f" {s.tokens_per_s:.1f} tok/s ", ""))
        text = Text()
        for chunk, style in parts:
            text.append(chunk, style)
            text.append("│", "dim")
        text.append(f" {self.state}", "bold")
        if self.saved is True:
            text.append("  ● saved", "green")
        elif self.saved is False:
            text.append("  ○ not saved", "yellow")
        self.update(text)
