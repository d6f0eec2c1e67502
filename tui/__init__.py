"""steerling-lite's terminal app (Textual): chat-like generation with live concept steering and attribution.

Run it with ``steerling-lite tui [--model DIR]`` or ``python -m tui [--model DIR]``.
"""

from .app import SteerlingApp

__all__ = ["SteerlingApp"]
