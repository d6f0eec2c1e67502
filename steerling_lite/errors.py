"""Errors steerling_lite raises for bad input, each naming what was wrong and where, and
:func:`run_guarded`, the error boundary of every entry point (the CLI, the app)."""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable


class SteerlingError(Exception):
    """Base class of every error this package raises for bad input."""


class InputError(SteerlingError, ValueError):
    """A file or value the user named on the command line (or in the app) that cannot be used:
    missing, a directory, not UTF-8, unwritable."""


class ConfigError(SteerlingError, ValueError):
    """A checkpoint's config.json is missing, unreadable or inconsistent."""


class CheckpointError(SteerlingError, ValueError):
    """A checkpoint's weight files are missing, corrupt or do not match config.json."""


class GenerationError(SteerlingError, ValueError):
    """Generation settings that cannot be honoured (context overflow, bad step counts, ...)."""


class PlacementError(SteerlingError, RuntimeError):
    """The model cannot be placed within the memory available (or where it was asked to run)."""


class ConceptError(SteerlingError, ValueError):
    """An invalid concept id or strength, an unreadable labels file, or a model without concept heads."""


class RetrievalError(SteerlingError, ValueError):
    """A training-data index that is missing, corrupt, truncated or built by another model; a corpus
    that cannot be indexed (unreadable, not UTF-8, empty); a span outside a generation's output."""


def require_interpretable(model, what: str, error: type[SteerlingError] = ConceptError) -> None:
    """Raise ``error`` (default :class:`ConceptError`) unless ``model`` (a ``SteerlingModel``, or
    anything with a ``known_head`` attribute) has concept heads; ``what`` names the feature that
    needs them ("concept attribution", "steering", ...). The one place this message is written."""
    if getattr(model, "known_head", None) is None:
        raise error(
            f"{what} needs an interpretable checkpoint; this one has no concept heads "
            f"(config.json: interpretable is false)"
        )


def is_user_error(exc: BaseException, extra: tuple[type[BaseException], ...] = ()) -> bool:
    """Whether ``exc`` is one a user can cause (bad input, a file system that refuses, too
    little memory), or one of the caller's own ``extra`` types."""
    return isinstance(exc, (SteerlingError, OSError, UnicodeError, MemoryError, *extra))


def error_line(exc: BaseException, extra: tuple[type[BaseException], ...] = ()) -> str:
    """One line for ``exc``: the message of the project's errors (and of ``extra`` types),
    ``PATH: reason`` for operating-system errors, else the type and message with a pointer to
    ``--debug``."""
    if isinstance(exc, (SteerlingError, *extra)):
        text = str(exc)
    elif isinstance(exc, OSError) and exc.strerror:
        where = exc.filename if exc.filename is not None else ""
        hint = {errno.ENOSPC: " (the disk is full: free space or write elsewhere)",
                errno.EROFS: " (read-only file system: write elsewhere)",
                errno.EACCES: " (permission denied: write elsewhere)"}.get(exc.errno, "")
        text = f"{where}: {exc.strerror}{hint}" if where else f"{exc.strerror}{hint}"
    elif isinstance(exc, MemoryError):
        text = "out of memory: use a smaller --dtype / --quant, or --max-cpu-memory with --offload-dir"
    else:
        text = f"internal error ({type(exc).__name__}: {exc}); run again with --debug for the traceback"
    return " ".join(text.split()) or type(exc).__name__


def run_guarded(call: Callable[[], int | None], debug: bool = False,
                user_errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run an entry point's ``call`` inside the one error boundary: every error becomes one
    line on stderr and an exit code, never a traceback (unless ``debug``).

    Args:
        call: the command; returns its exit code (None: 0).
        debug: re-raise every error instead (its traceback is shown).
        user_errors: the caller's own error types that a user can cause (e.g. the app's
            sessions-database error), reported like :class:`SteerlingError`.

    Returns:
        the command's code; 2 for an error a user can cause (:func:`is_user_error`): one line
        ``error: ...``; 3 for any other (one line pointing to ``--debug``); 130 after Ctrl-C;
        143 after SIGTERM during an atomic write (:class:`~steerling_lite.atomic.Terminated`).
    """
    from .atomic import Terminated

    try:
        return int(call() or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated (SIGTERM); nothing half-written was left", file=sys.stderr)
        return 143
    except Exception as exc:  # the boundary: every error becomes one line
        if debug:
            raise
        print(f"error: {error_line(exc, user_errors)}", file=sys.stderr)
        return 2 if is_user_error(exc, user_errors) else 3
