"""Steering presets: a named list of steered concepts in a TOML file, to save, load and share.

The app saves its steering panel as a preset (in ``<data dir>/steering-presets``, written
atomically) and lists the presets in its command palette; ``generate``, ``steer`` and
``explain`` take one with ``--steering FILE``. The format (``format`` may be left out;
every key of a concept but ``id`` and ``strength`` is optional)::

    format = "steerling-lite.steering/1"
    name = "animals"
    inject_layer = 1                # optional; default: the steering's preset layer

    [[concept]]
    id = 34                         # known concept id
    label = "noun.animal"           # shown in the app; not used to steer
    mode = "amplify"                # amplify | suppress | intervene (default amplify)
    strength = 3.0
    units = "relative"              # relative (default; the app's sliders) | reference (the CLI's flags)
    schedule = "fixed"              # fixed | hard_cutoff (default: the mode's reference preset)
    enabled = true
    group = [35, 36]                # extra concepts summed into the direction
    relu_strength = 6.0             # suppress: the ReLU logit mask (default: per units)
    cutoff_tokens = 32              # hard_cutoff: tokens at full strength

Units and schedules are those of :class:`~steerling_lite.generation.steering_builder.Steering`.
A bad file is a :class:`~steerling_lite.errors.ConceptError` naming the file and the field.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from ..atomic import write_text_atomic
from ..errors import ConceptError
from ..loading.default_model import data_dir
from ..textfile import read_text
from .steering import CUTOFF_TOKENS
from .steering_builder import MODES, SCHEDULES, UNITS, Steering

PRESET_FORMAT = "steerling-lite.steering/1"
PRESET_DIR = "steering-presets"
MAX_PRESET_BYTES = 1 << 20
_NAME = re.compile(r"[\w][\w .+-]{0,63}")
_TOP_KEYS = {"format", "name", "inject_layer", "concept"}
_CONCEPT_KEYS = {"id", "label", "mode", "strength", "units", "schedule", "enabled", "group", "relu_strength",
                 "cutoff_tokens"}


@dataclass(frozen=True)
class SteeringPreset:
    """A named steering: the specs, each concept's label, and an optional inject layer.

    Attributes:
        name: the preset's name (its file name in the presets folder).
        steerings: the steered concepts.
        labels: concept id -> label, for display.
        inject_layer: the layer every term injects from (None: the builder's default).
    """

    name: str
    steerings: tuple[Steering, ...]
    labels: dict[int, str] = field(default_factory=dict)
    inject_layer: int | None = None

    def to_toml(self) -> str:
        """The preset as TOML text (the format of the module docstring)."""
        doc: dict[str, Any] = {"format": PRESET_FORMAT, "name": self.name}
        if self.inject_layer is not None:
            doc["inject_layer"] = self.inject_layer
        concepts = []
        for s in self.steerings:
            c: dict[str, Any] = {"id": s.concept_id}
            if s.concept_id in self.labels:
                c["label"] = self.labels[s.concept_id]
            c.update(mode=s.mode, strength=s.value, units=s.units)
            if s.schedule is not None:  # none: the mode's reference preset, as when read back
                c["schedule"] = s.schedule
            c["enabled"] = s.enabled
            if s.group:
                c["group"] = list(s.group)
            if s.relu_strength is not None:
                c["relu_strength"] = float(s.relu_strength)
            if s.resolved_schedule == "hard_cutoff":
                c["cutoff_tokens"] = s.cutoff_tokens
            concepts.append(c)
        doc["concept"] = concepts
        return tomli_w.dumps(doc)


def preset_dir() -> Path:
    """``<data dir>/steering-presets`` (``$STEERLING_LITE_HOME`` overrides the data dir)."""
    return data_dir() / PRESET_DIR


def check_preset_name(name: str) -> str:
    """``name`` stripped, if it can be a preset's file name (letters, digits, ``_ .+-``, at most 64).

    Raises:
        ConceptError: an empty name or one with other characters.
    """
    n = str(name).strip()
    if not _NAME.fullmatch(n) or n.endswith("."):
        raise ConceptError(f"preset name {name!r}: expected 1-64 letters, digits, spaces or _ . + - "
                           "(starting with a letter or digit)")
    return n


def preset_path(name: str, folder: str | Path | None = None) -> Path:
    """The file of preset ``name`` in ``folder`` (default :func:`preset_dir`)."""
    return Path(folder if folder is not None else preset_dir()) / f"{check_preset_name(name)}.toml"


def list_presets(folder: str | Path | None = None) -> list[Path]:
    """The ``*.toml`` files of the presets folder, by name (none when it does not exist)."""
    d = Path(folder if folder is not None else preset_dir())
    try:
        return sorted((p for p in d.glob("*.toml") if p.is_file()), key=lambda p: p.name.lower())
    except OSError:
        return []


def save_preset(preset: SteeringPreset, path: str | Path) -> Path:
    """Write ``preset`` to ``path`` atomically (a complete file or none); returns the path.

    Raises:
        ConceptError: a bad name; OSError: the file cannot be written.
    """
    check_preset_name(preset.name)
    return write_text_atomic(path, preset.to_toml())


def load_preset(path: str | Path) -> SteeringPreset:
    """The preset in TOML file ``path``.

    Raises:
        ConceptError: ``<path>: ...`` for a missing, unreadable, oversized or non-UTF-8 file,
            invalid TOML, or a field that is missing, unknown or of the wrong kind (named as
            ``concept[i].field``). Concept ids are checked against a model when the preset is
            built into a plan.
    """
    text = read_text(path, str(path), MAX_PRESET_BYTES, "a steering preset (.toml)", ConceptError)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConceptError(f"{path}: not valid TOML ({exc})") from None
    return _parse(doc, str(path), Path(path).stem)


def _parse(doc: dict[str, Any], where: str, default_name: str) -> SteeringPreset:
    def fail(what: str) -> ConceptError:
        return ConceptError(f"{where}: {what}")

    unknown = sorted(set(doc) - _TOP_KEYS)
    if unknown:
        raise fail(f"unknown key {unknown[0]!r}; expected {', '.join(sorted(_TOP_KEYS))}")
    if "format" in doc and doc["format"] != PRESET_FORMAT:
        raise fail(f"format is {doc['format']!r}; expected {PRESET_FORMAT!r}")
    name = doc.get("name", default_name)
    if not isinstance(name, str):
        raise fail(f"name is {name!r}; expected a string")
    layer = doc.get("inject_layer")
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 0):
        raise fail(f"inject_layer is {layer!r}; expected an integer >= 0")
    concepts = doc.get("concept")
    if not isinstance(concepts, list) or not concepts:
        raise fail("no [[concept]] tables; expected at least one steered concept")
    steerings, labels = [], {}
    for i, c in enumerate(concepts):
        s, label = _concept(c, lambda what, i=i: fail(f"concept[{i}].{what}"))
        steerings.append(s)
        if label is not None:
            labels[s.concept_id] = label
    return SteeringPreset(name, tuple(steerings), labels, layer)


def _concept(c: Any, fail) -> tuple[Steering, str | None]:
    if not isinstance(c, dict):
        raise fail(f"is {c!r}; expected a table")
    unknown = sorted(set(c) - _CONCEPT_KEYS)
    if unknown:
        raise fail(f"{unknown[0]}: unknown key; expected one of {', '.join(sorted(_CONCEPT_KEYS))}")
    if "id" not in c:
        raise fail("id: missing; expected a known concept id")
    if "strength" not in c:
        raise fail("strength: missing; expected a number")

    def integer(key: str, lo: int) -> int:
        v = c[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise fail(f"{key} is {v!r}; expected an integer >= {lo}")
        return v

    def number(key: str) -> float:
        v = c[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise fail(f"{key} is {v!r}; expected a finite number")
        return float(v)

    def choice(key: str, options: tuple[str, ...], default: str | None) -> str | None:
        v = c.get(key, default)
        if v is not None and v not in options:
            raise fail(f"{key} is {v!r}; expected {' or '.join(options)}")
        return v

    group = c.get("group", [])
    if not isinstance(group, list) or any(isinstance(g, bool) or not isinstance(g, int) or g < 0 for g in group):
        raise fail(f"group is {group!r}; expected a list of known concept ids")
    enabled = c.get("enabled", True)
    if not isinstance(enabled, bool):
        raise fail(f"enabled is {enabled!r}; expected true or false")
    label = c.get("label")
    if label is not None and not isinstance(label, str):
        raise fail(f"label is {label!r}; expected a string")
    mode = choice("mode", MODES, "amplify")
    schedule = choice("schedule", SCHEDULES, None)
    if schedule == "hard_cutoff" and mode != "amplify":
        raise fail(f"schedule is 'hard_cutoff'; only amplify has a hard cut-off ({mode} is fixed)")
    steering = Steering(
        concept_id=integer("id", 0), mode=mode, strength=number("strength"), enabled=enabled,  # type: ignore[arg-type]
        group=tuple(group), relu_strength=number("relu_strength") if "relu_strength" in c else None,
        cutoff_tokens=integer("cutoff_tokens", 1) if "cutoff_tokens" in c else CUTOFF_TOKENS,
        schedule=schedule, units=choice("units", UNITS, "relative"),  # type: ignore[arg-type]
    )
    return steering, label
