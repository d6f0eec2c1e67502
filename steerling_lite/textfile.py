"""Reading a small user-given text file whole: size-limited, UTF-8, every failure one line."""

from __future__ import annotations

from pathlib import Path

from quant import fmt_bytes

from .errors import InputError, SteerlingError


def read_text(path: str | Path, what: str, max_bytes: int, expected: str,
              error: type[SteerlingError] = InputError) -> str:
    """The UTF-8 text of ``path``, at most ``max_bytes`` bytes.

    Args:
        what: how messages name the file (e.g. ``--prompt-file p.txt``).
        expected: what the file should be, for the messages (e.g. ``a prompt-sized text file``).
        error: the exception class raised.

    Raises:
        ``error``: ``<what>: ...`` for a missing, unreadable or too large file, a directory, or
            text that is not UTF-8.
    """
    p = Path(path).expanduser()
    try:
        if p.is_dir():
            raise error(f"{what}: is a directory; expected {expected}")
        with open(p, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"{what}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise error(f"{what}: larger than {fmt_bytes(max_bytes)}; expected {expected}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
