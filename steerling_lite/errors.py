"""Errors steerling_lite raises for bad input, each naming what was wrong and where."""

from __future__ import annotations


class SteerlingError(Exception):
    """Base class of every error this package raises for bad input."""


class ConfigError(SteerlingError, ValueError):
    """A checkpoint's config.json is missing, unreadable or inconsistent."""


class CheckpointError(SteerlingError, ValueError):
    """A checkpoint's weight files are missing, corrupt or do not match config.json."""


class GenerationError(SteerlingError, ValueError):
    """Generation settings that cannot be honoured (context overflow, bad step counts, ...)."""


class PlacementError(SteerlingError, RuntimeError):
    """The model cannot be placed within the memory available (or where it was asked to run)."""
