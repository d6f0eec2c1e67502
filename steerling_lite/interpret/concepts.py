"""The concept catalog: labels of known and discovered concepts, search and groups.

Guide Labs publish the labels as ``concept_labels.parquet`` (Hugging Face repo
``guidelabs/steerling``; ../shared/STEERLING_FORMAT.md §1) with the columns
``concept_id, concept_name, concept_description, head ("known"/"unknown"),
public_group_id, group_name, is_steerable, is_tone, is_alignment, is_demographic``.
The same table is read from CSV or JSON. Only ``concept_id`` and ``concept_name`` are
required; a missing optional column takes a default (``head`` "known", no group,
known concepts steerable).

Ids. Steering and attribution use each head's own ids (known ``0..n_concepts-1``,
discovered ``0..n_unknown_concepts-1``). In the published table discovered concepts
are numbered after the known ones (the reference labels discovered concept ``d`` by
row ``n_concepts + d``, ``steerling==0.2.0`` ``chunk_attribution``); a table whose
``unknown`` rows all have ids ``>= n_concepts`` is read that way, otherwise its
discovered ids are taken as head-local. Concepts without a row get the fallback
labels ``known #id`` / ``discovered #id``, or for a loaded model's discovered concepts the
tokens each promotes, ``discovered #3 "dog, cat, horse"`` (:mod:`.discovered`).

Search ranks by whole-word matches of the query's words, three points per match in
the name and one in the description, as the reference's ``ConceptCatalog.search`` (word
prefixes when nothing matches whole). Reading a table's columns: :mod:`.concept_labels`.
What a concept does in the loaded weights (the vocabulary it promotes, the reliable
cross-check of what an id means) is :mod:`steerling_lite.interpret.concept_tokens`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import ConceptError
from ..model.concept_heads import as_concept_id
from .concept_labels import parse_bool, parse_int, parse_str, read_label_columns

Head = Literal["known", "discovered"]

LABEL_FILES = ("concept_labels.parquet", "concept_labels.csv", "concept_labels.json")
ENV_VAR = "STEERLING_CONCEPTS_PATH"
REQUIRED_COLUMNS = ("concept_id", "concept_name")
PUBLISHED_COLUMNS = (
    "concept_id", "concept_name", "concept_description", "head", "public_group_id", "group_name",
    "is_steerable", "is_tone", "is_alignment", "is_demographic",
)


def normalize_head(head: str) -> Head:
    """``known`` -> ``known``; ``discovered`` / ``unknown`` -> ``discovered``.

    Raises:
        ConceptError: anything else.
    """
    h = str(head).strip().lower()
    if h == "known":
        return "known"
    if h in ("discovered", "unknown"):
        return "discovered"
    raise ConceptError(f"concept head {head!r}: expected 'known' or 'discovered' (the file's 'unknown')")


def fallback_label(concept_id: int, head: str = "known") -> str:
    """``known #12`` / ``discovered #7``: the label of a concept the catalog has no row for."""
    return f"{normalize_head(head)} #{int(concept_id)}"


def discovered_label(concept_id: int, summary: str | None) -> str:
    """``discovered #3 "dog, cat, horse"``: an unlabelled discovered concept with the tokens it promotes."""
    plain = fallback_label(concept_id, "discovered")
    return f'{plain} "{summary}"' if summary else plain


@dataclass(frozen=True)
class Concept:
    """One concept of the catalog.

    Attributes:
        concept_id: id within its head (what steering and attribution use).
        head: ``known`` or ``discovered``.
        name, description: from the labels file; for an unlabelled concept the fallback
            label (a discovered one's with its top tokens, see :func:`discovered_label`) and
            an empty description (a discovered one's: the tokens it promotes).
        group_id, group_name: the public concept group, or None.
        is_steerable, is_tone, is_alignment, is_demographic: the published flags.
        labelled: False for a fallback entry (no row in the file).
    """

    concept_id: int
    head: Head
    name: str
    description: str = ""
    group_id: int | None = None
    group_name: str | None = None
    is_steerable: bool = False
    is_tone: bool = False
    is_alignment: bool = False
    is_demographic: bool = False
    labelled: bool = True

    @property
    def label(self) -> str:
        """Display label: the name, or ``known #id`` / ``discovered #id`` without one."""
        return self.name or fallback_label(self.concept_id, self.head)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of every field plus ``label``."""
        d = asdict(self)
        d["label"] = self.label
        return d


# ---------------------------------------------------------------------------------------
# reading label files


def read_concept_labels(path: str | Path, n_known: int | None = None) -> list[Concept]:
    """Concepts of a labels file (parquet, CSV or JSON), with head-local ids (see the module doc).

    Args:
        path: the file.
        n_known: the model's number of known concepts, to map the published discovered ids
            (``n_known + d``); default ``1 + max known id`` of the file.

    Raises:
        ConceptError: unreadable file, missing required columns, a bad value (naming the row
            and column), or a duplicate (head, id).
    """
    path = Path(path)
    if not path.is_file():
        raise ConceptError(f"concept labels file {path} does not exist")
    cols = read_label_columns(path)
    if "concept_idx" in cols and "concept_id" not in cols:  # the reference's legacy CSV
        cols["concept_id"] = cols.pop("concept_idx")
    missing = [c for c in REQUIRED_COLUMNS if c not in cols]
    if missing:
        raise ConceptError(
            f"{path}: missing column(s) {', '.join(missing)}; a labels file needs {', '.join(REQUIRED_COLUMNS)} "
            f"(published columns: {', '.join(PUBLISHED_COLUMNS)}); found: {', '.join(cols) or 'none'}"
        )
    n_rows = len(cols["concept_id"])

    def col(name: str) -> list[Any]:
        return cols.get(name) or [None] * n_rows

    raw: list[tuple[int, Head, dict[str, Any]]] = []
    for i in range(n_rows):
        row = {k: col(k)[i] for k in PUBLISHED_COLUMNS}
        try:
            cid = parse_int(row["concept_id"])
            if cid is None or cid < 0:
                raise ValueError(f"concept_id {row['concept_id']!r} is not a non-negative integer")
            head = normalize_head(row["head"]) if parse_str(row["head"]) else "known"
            raw.append((cid, head, row))
        except (ValueError, ConceptError) as exc:
            raise ConceptError(f"{path}: row {i + 1}: {exc}") from None
    known_ids = [c for c, h, _ in raw if h == "known"]
    disc_ids = [c for c, h, _ in raw if h == "discovered"]
    if n_known is None:
        n_known = max(known_ids) + 1 if known_ids else 0
    offset = n_known if disc_ids and min(disc_ids) >= n_known else 0
    out: list[Concept] = []
    seen: set[tuple[str, int]] = set()
    for i, (cid, head, row) in enumerate(raw):
        local = cid - offset if head == "discovered" else cid
        if (head, local) in seen:
            raise ConceptError(f"{path}: row {i + 1}: {head} concept {local} appears twice")
        seen.add((head, local))
        try:
            out.append(Concept(
                concept_id=local, head=head,
                name=parse_str(row["concept_name"]) or "",
                description=parse_str(row["concept_description"]) or "",
                group_id=parse_int(row["public_group_id"]),
                group_name=parse_str(row["group_name"]),
                is_steerable=parse_bool(row["is_steerable"], head == "known"),
                is_tone=parse_bool(row["is_tone"], False),
                is_alignment=parse_bool(row["is_alignment"], False),
                is_demographic=parse_bool(row["is_demographic"], False),
            ))
        except ValueError as exc:
            raise ConceptError(f"{path}: row {i + 1} (concept {cid}): {exc}") from None
    return out


def find_labels_file(model_dir: str | Path | None = None, path: str | Path | None = None) -> Path | None:
    """The labels file to use: ``path`` if given, else ``concept_labels.{parquet,csv,json}`` in
    ``model_dir``, else ``$STEERLING_CONCEPTS_PATH``; None when there is none.

    Raises:
        ConceptError: an explicit ``path`` (or the environment variable's) that does not exist.
    """
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConceptError(f"concept labels file {p} does not exist")
        return p
    if model_dir is not None:
        for name in LABEL_FILES:
            p = Path(model_dir) / name
            if p.is_file():
                return p
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env)
        if not p.is_file():
            raise ConceptError(f"${ENV_VAR} points at {p}, which does not exist")
        return p
    return None


# ---------------------------------------------------------------------------------------
# the catalog


class ConceptCatalog:
    """Known and discovered concepts with their labels; lookups fall back to ``known #id`` labels.

    Args:
        concepts: the labelled concepts (head-local ids).
        n_known, n_discovered: the model's concept counts, when known: ids outside them are
            rejected by :meth:`get`, and ids inside them without a row get fallback entries.
        source: the file the labels came from (None: no file).
        describe_discovered: ``id -> "dog, cat, horse"`` (or None) for discovered concepts without a
            row (:meth:`for_model`: the tokens each promotes in the loaded weights).
    """

    def __init__(self, concepts: Iterable[Concept] = (), n_known: int | None = None,
                 n_discovered: int | None = None, source: Path | None = None,
                 describe_discovered: Callable[[int], str | None] | None = None):
        self._rows: dict[tuple[str, int], Concept] = {(c.head, c.concept_id): c for c in concepts}
        self.n_known, self.n_discovered = n_known, n_discovered
        self.source = source
        self.describe_discovered = describe_discovered

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, n_known: int | None = None, n_discovered: int | None = None) -> ConceptCatalog:
        """Read a labels file (see :func:`read_concept_labels`)."""
        return cls(read_concept_labels(path, n_known), n_known, n_discovered, Path(path))

    @classmethod
    def for_model(cls, lm, path: str | Path | None = None) -> ConceptCatalog:
        """The catalog of a loaded :class:`~steerling_lite.Steerling` (or a checkpoint directory):
        ``path``, else the labels file in the model directory, else ``$STEERLING_CONCEPTS_PATH``,
        else an empty catalog of fallback labels. A loaded model with a discovered head also gets
        descriptions of its discovered concepts (computed on first use, cached per model:
        :class:`~steerling_lite.interpret.discovered.DiscoveredConcepts`)."""
        from ..loading.config import load_config

        if isinstance(lm, (str, Path)):
            model_dir: Path | None = Path(lm)
            cfg = load_config(model_dir)
        else:
            model_dir, cfg = lm.path, lm.config
        c = cfg.concept
        n_known = c.n_concepts if c is not None else None
        n_disc = (c.n_unknown_concepts if c is not None and c.n_unknown_padded else 0) if c is not None else None
        found = find_labels_file(model_dir, path)
        rows = read_concept_labels(found, n_known) if found is not None else ()
        loaded = hasattr(lm, "discovered_concepts") and getattr(lm.model, "unknown_head", None) is not None
        return cls(rows, n_known, n_disc, found, lm.discovered_concepts().summary if loaded else None)

    # ---- lookups ------------------------------------------------------------------------
    def _limit(self, head: Head) -> int | None:
        return self.n_known if head == "known" else self.n_discovered

    def check_id(self, concept_id: Any, head: str = "known") -> int:
        """``concept_id`` as an int, checked against the model's range when the catalog knows it.

        Raises:
            ConceptError: not an integer, negative, or outside the model's concepts.
        """
        h = normalize_head(head)
        cid = as_concept_id(concept_id, h)
        limit = self._limit(h)
        if cid < 0 or (limit is not None and cid >= limit):
            rng = f"0..{limit - 1}" if limit else "none: the model has no such concepts"
            raise ConceptError(f"{h} concept id {cid} is out of range ({rng})")
        return cid

    def get(self, concept_id: int, head: str = "known") -> Concept:
        """The concept, or a fallback entry (``labelled=False``) when the file has no row for it.

        Raises:
            ConceptError: an id outside the model's range (see :meth:`check_id`).
        """
        h = normalize_head(head)
        cid = self.check_id(concept_id, h)
        row = self._rows.get((h, cid))
        if row is not None:
            return row
        if h == "discovered" and (summary := self._summary(cid)):
            return Concept(cid, h, discovered_label(cid, summary), f"promotes: {summary}", labelled=False)
        return Concept(cid, h, fallback_label(cid, h), is_steerable=h == "known", labelled=False)

    def label(self, concept_id: int, head: str = "known") -> str:
        """Display label of a concept: its name, else ``discovered #3 "dog, cat, horse"`` for a
        described discovered concept, else ``known #id`` / ``discovered #id``; never raises for a
        non-negative id. The one label lookup of every display (CLI, records, server, app)."""
        h = normalize_head(head)
        cid = int(concept_id)
        row = self._rows.get((h, cid))
        if row is not None:
            return row.label
        return discovered_label(cid, self._summary(cid)) if h == "discovered" else fallback_label(cid, h)

    def _summary(self, concept_id: int) -> str | None:
        return self.describe_discovered(concept_id) if self.describe_discovered is not None else None

    def __contains__(self, key: object) -> bool:
        if isinstance(key, tuple):
            return (normalize_head(key[0]), int(key[1])) in self._rows
        return ("known", key) in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[Concept]:
        return iter(sorted(self._rows.values(), key=lambda c: (c.head != "known", c.concept_id)))

    def concepts(self, head: str | None = None, steerable_only: bool = False) -> list[Concept]:
        """Labelled concepts, known first, by id; optionally of one head / steerable only."""
        h = normalize_head(head) if head is not None else None
        return [c for c in self if (h is None or c.head == h) and (not steerable_only or c.is_steerable)]

    # ---- search and groups -----------------------------------------------------------------
    def search(self, query: str, *, limit: int = 10, steerable_only: bool = True,
               head: str | None = "known") -> list[Concept]:
        """Concepts whose name / description contain the query's words, best first.

        Score: per query word, 3 per whole-word match in the name plus 1 per match in the
        description (case-insensitive; the reference's ``ConceptCatalog.search``); ties by id.
        When no concept has a whole-word match, words that start with the query's words count
        the same way, so that a search typed as you go (``ani``) finds ``noun.animal``.
        By default only steerable known concepts, the set that can be steered.
        """
        terms = [t for t in query.lower().split() if t]
        if not terms:
            return []
        found = self._scored([re.compile(rf"\b{re.escape(t)}\b") for t in terms], steerable_only, head)
        if not found:
            found = self._scored([re.compile(rf"\b{re.escape(t)}") for t in terms], steerable_only, head)
        return found[: max(limit, 0)]

    def _scored(self, patterns: list[re.Pattern[str]], steerable_only: bool, head: str | None) -> list[Concept]:
        """Concepts with a positive :meth:`search` score for ``patterns``, best first."""
        scored: list[tuple[int, Concept]] = []
        for c in self.concepts(head, steerable_only):
            name, desc = c.name.lower(), c.description.lower()
            score = sum(3 * len(p.findall(name)) + len(p.findall(desc)) for p in patterns)
            if score > 0:
                scored.append((score, c))
        scored.sort(key=lambda sc: (-sc[0], sc[1].head != "known", sc[1].concept_id))
        return [c for _, c in scored]

    def group(self, concept_id: int, head: str = "known") -> list[int]:
        """Ids of the concepts in this concept's public group, the focal id first (just the id
        when it has no group). Pass them to :func:`~steerling_lite.generation.steering.suppress` for group
        steering, as the reference does."""
        focal = self.get(concept_id, head)
        if focal.group_id is None:
            return [focal.concept_id]
        members = [c.concept_id for c in self.concepts(focal.head) if c.group_id == focal.group_id]
        return [focal.concept_id] + [m for m in members if m != focal.concept_id]

    def groups(self, head: str = "known") -> dict[int, tuple[str | None, list[int]]]:
        """``{group_id: (group_name, [concept ids])}`` of one head."""
        out: dict[int, tuple[str | None, list[int]]] = {}
        for c in self.concepts(head):
            if c.group_id is not None:
                name, ids = out.setdefault(c.group_id, (c.group_name, []))
                ids.append(c.concept_id)
        return out
