"""Errors steerling_lite raises for bad input, each naming what was wrong and where."""

from __future__ import annotations


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
