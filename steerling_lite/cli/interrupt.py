"""Ctrl-C during a generation: the first SIGINT cancels it (what was committed is kept and
printed, the command exits 130 with ``stop_reason: "cancelled"``); a second one interrupts
outright (``KeyboardInterrupt``), as in ``ollama run`` and llama.cpp's ``main``."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar

EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention


class Cancellable(Protocol):
    def cancel(self) -> None: ...


G = TypeVar("G", bound=Cancellable)


class Interrupt:
    """Routes SIGINT to the generation being watched (:meth:`watch`)."""

    def __init__(self) -> None:
        self.generation: Cancellable | None = None
        self.cancelled = False

    def watch(self, generation: G) -> G:
        """Make ``generation`` (anything with ``cancel()``) the one Ctrl-C cancels; returns it.
        Once Ctrl-C was pressed, every later generation is cancelled before its first step."""
        self.generation = generation
        if self.cancelled:
            generation.cancel()
        return generation

    def handle(self, signum: int, frame) -> None:
        """The SIGINT handler: cancel the first time, raise ``KeyboardInterrupt`` the second."""
        if self.cancelled:
            raise KeyboardInterrupt
        self.cancelled = True
        if self.generation is not None:
            self.generation.cancel()


@contextmanager
def interruptible() -> Iterator[Interrupt]:
    """Install :meth:`Interrupt.handle` as the SIGINT handler for the block (main thread only;
    elsewhere Ctrl-C keeps its default), restoring the previous handler after."""
    stop = Interrupt()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signal.SIGINT, stop.handle)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
