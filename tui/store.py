"""Sessions on disk: a SQLite database in the user data dir, versioned with a migrations table.

One database file, ``sessions.sqlite3`` in :func:`steerling_lite.data_dir`
(``$STEERLING_LITE_HOME`` if set). Every write runs in one explicit transaction
(``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error), and the app only says
"saved" after the commit returned, so a crash never loses what was shown as saved.
The journal is WAL, so a reader never sees half a write.

Schema (version 3):

- ``sessions``: title, model directory, system prompt, sampling settings (JSON),
  steering concepts (JSON), created / updated (Unix seconds);
- ``turns``: one prompt and its output per row, in ``position`` order, with the token ids,
  the settings and steering used, seed, stop reason, tokens/s, the unsteered output of a
  "Compare" and (version 3) which steering produced which tokens (``steering_segments``,
  ``token_segments``: see :mod:`tui.steering_record`);
- ``attributions``: concept / input attributions of a span of a turn's output
  (``start``..``end`` token indices, end exclusive), as JSON; ``audits`` (version 2): a
  span's audit (concepts, input units, nearest training chunks, the answer regenerated with
  a concept suppressed), as JSON, with the same columns;
- ``recent_models``: model directories opened, most recent first;
- ``schema_migrations``: the versions applied. An older database is upgraded in place when
  opened; its sessions read as before (no audits, no steering segments).

A newer app adds a migration to :data:`MIGRATIONS`; an older app refuses a database
whose version it does not know (:class:`StoreError`), instead of corrupting it. Every
database error (``sqlite3.Error``) leaves the store as a :class:`StoreError` naming the
file and what could not be done, so callers catch that one type.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steerling_lite import data_dir

from .store_schema import MIGRATIONS, SCHEMA_VERSION  # noqa: F401 (part of this module's API)

DB_NAME = "sessions.sqlite3"


class StoreError(Exception):
    """The sessions database cannot be opened, read or written (names the file and what is wrong)."""


@dataclass
class Attribution:
    """An attribution computed for tokens ``start``..``end`` (exclusive) of a turn's output."""

    start: int
    end: int
    data: dict[str, Any]
    id: int | None = None


@dataclass
class Audit(Attribution):
    """The audit of tokens ``start``..``end`` (exclusive) of a turn's output: ``data`` holds its
    concepts, input units, nearest training chunks and, once asked for, the answer regenerated
    with a concept suppressed (see :mod:`tui.audit`)."""


@dataclass
class Turn:
    """One prompt and the model's output.

    Attributes:
        prompt: the user's text (for instruct models the user turn; the chat history
            before it is the session's earlier turns).
        output: the generated text.
        prompt_ids: the token ids the model saw (chat template included).
        token_ids: the generated token ids (what ``GenerationResult.token_ids`` holds).
        settings: sampling settings used (JSON-able dict).
        steering: steering concepts in effect at the end (list of JSON-able dicts).
        steering_segments: which steering produced which steps: ``[{"from_step", "to_step",
            "tokens", "steering"}]`` (:mod:`tui.steering_record`; empty for turns saved before).
        token_segments: per output token, the index of the segment that produced it.
        seed, stop_reason, tokens_per_s: from the generation result.
        unsteered: the unsteered output for the same seed, once compared.
        attributions: attributions computed for spans of the output.
        audits: audits of spans of the output (:class:`Audit`).
    """

    prompt: str
    output: str
    prompt_ids: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    steering: list[dict[str, Any]] = field(default_factory=list)
    seed: int | None = None
    stop_reason: str = ""
    tokens_per_s: float | None = None
    unsteered: str | None = None
    attributions: list[Attribution] = field(default_factory=list)
    audits: list[Audit] = field(default_factory=list)
    id: int | None = None
    created_at: float = 0.0
    steering_segments: list[dict[str, Any]] = field(default_factory=list)
    token_segments: list[int] = field(default_factory=list)


@dataclass
class Session:
    """A saved conversation and the settings it was made with."""

    title: str
    model: str
    system: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    steering: list[dict[str, Any]] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    id: int | None = None
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True)
class SessionSummary:
    """A row of the history list."""

    id: int
    title: str
    model: str
    turns: int
    updated_at: float


def default_path() -> Path:
    """``<data dir>/sessions.sqlite3``."""
    return data_dir() / DB_NAME


class Store:
    """The sessions database. Use from one thread (the app's); every write is one transaction.

    Raises:
        StoreError: the file is not a SQLite database, or was written by a newer version.
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else default_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{self.path.parent}: cannot create the folder of the sessions database ({exc})") from exc
        try:
            # isolation_level=None: no implicit transactions; we issue BEGIN / COMMIT ourselves.
            self.conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=5.0)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA foreign_keys = ON")
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = FULL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"{self.path}: cannot open the sessions database ({exc}); move the file away to start afresh"
            ) from exc

    def close(self) -> None:
        self.conn.close()

    # ---- plumbing ---------------------------------------------------------------------
    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn a ``sqlite3.Error`` into a :class:`StoreError`: ``<file>: cannot <what> (<error>)``."""
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot {what} ({exc})") from exc

    @contextmanager
    def transaction(self, what: str = "write to the sessions database") -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; any exception rolls the whole write back.

        Raises:
            StoreError: a database error (what was being done, the file); other exceptions
                from the body pass through, after the rollback.
        """
        with self._errors(what):
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def schema_version(self) -> int:
        with self._errors("read the schema version"):
            row = self.conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    def _migrate(self) -> None:
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        current = self.schema_version()
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {current} is newer than this app knows ({SCHEMA_VERSION}); "
                "upgrade steerling-lite"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            with self.transaction(f"upgrade the database to schema version {version}") as c:
                for stmt in MIGRATIONS[version - 1]:
                    c.execute(stmt)
                c.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", (version, time.time()))

    # ---- sessions ----------------------------------------------------------------------
    def save_session(self, session: Session) -> int:
        """Insert or update ``session``'s own fields (not its turns); sets and returns ``session.id``."""
        now = time.time()
        with self.transaction("save the session") as c:
            self._upsert_session(c, session, now)
        session.updated_at = now
        return session.id

    def _upsert_session(self, c: sqlite3.Connection, session: Session, now: float) -> None:
        """Insert ``session`` (setting its id) or update its row, inside the caller's transaction.

        Raises:
            StoreError: the session has an id but its row is gone.
        """
        fields = (session.title, session.model, session.system, _dump(session.settings), _dump(session.steering))
        if session.id is None:
            session.created_at = session.created_at or now
            cur = c.execute(
                "INSERT INTO sessions (title, model, system, settings, steering, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (*fields, session.created_at, now),
            )
            session.id = int(cur.lastrowid)
            return
        cur = c.execute(
            "UPDATE sessions SET title=?, model=?, system=?, settings=?, steering=?, updated_at=? WHERE id=?",
            (*fields, now, session.id),
        )
        if cur.rowcount != 1:
            raise StoreError(f"{self.path}: session {session.id} no longer exists")

    def add_turn(self, session: Session, turn: Turn) -> int:
        """Append ``turn`` to ``session`` (saving the session first if new), in one transaction
        with the session's settings and steering; sets and returns ``turn.id``."""
        now = time.time()
        turn.created_at = turn.created_at or now
        with self.transaction("save the answer") as c:
            self._upsert_session(c, session, now)
            position = c.execute(
                "SELECT COALESCE(MAX(position) + 1, 0) FROM turns WHERE session_id=?", (session.id,)
            ).fetchone()[0]
            cur = c.execute(
                "INSERT INTO turns (session_id, position, prompt, output, prompt_ids, token_ids, settings, steering, "
                "seed, stop_reason, tokens_per_s, unsteered, created_at, steering_segments, token_segments) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (session.id, position, turn.prompt, turn.output, _dump(turn.prompt_ids), _dump(turn.token_ids),
                 _dump(turn.settings), _dump(turn.steering), turn.seed, turn.stop_reason, turn.tokens_per_s,
                 turn.unsteered, turn.created_at, _dump(turn.steering_segments), _dump(turn.token_segments)),
            )
            turn.id = int(cur.lastrowid)
            for a in turn.attributions:
                a.id = self._insert_attribution(c, turn.id, a, now)
            for a in turn.audits:
                a.id = self._insert_attribution(c, turn.id, a, now, "audits")
        session.updated_at = now
        if turn not in session.turns:
            session.turns.append(turn)
        return turn.id

    def set_unsteered(self, turn: Turn, text: str) -> None:
        """Record the unsteered output of a turn (from "Compare")."""
        with self.transaction("save the unsteered answer") as c:
            c.execute("UPDATE turns SET unsteered=? WHERE id=?", (text, turn.id))
        turn.unsteered = text

    def add_attribution(self, turn: Turn, attribution: Attribution) -> int:
        """Save an attribution of ``turn`` (which must be saved); sets and returns its id."""
        if turn.id is None:
            raise StoreError("save the turn before its attributions")
        with self.transaction("save the attribution") as c:
            attribution.id = self._insert_attribution(c, turn.id, attribution, time.time())
        turn.attributions.append(attribution)
        return attribution.id

    def update_attribution(self, attribution: Attribution) -> None:
        """Rewrite a saved attribution's data (e.g. input tokens added to it)."""
        with self.transaction("save the attribution") as c:
            c.execute("UPDATE attributions SET data=? WHERE id=?", (_dump(attribution.data), attribution.id))

    def add_audit(self, turn: Turn, audit: Audit) -> int:
        """Save an audit of ``turn`` (which must be saved); sets and returns its id."""
        if turn.id is None:
            raise StoreError("save the turn before its audits")
        with self.transaction("save the audit") as c:
            audit.id = self._insert_attribution(c, turn.id, audit, time.time(), "audits")
        turn.audits.append(audit)
        return audit.id

    def update_audit(self, audit: Audit) -> None:
        """Rewrite a saved audit's data (e.g. the suppressed answer added to it)."""
        with self.transaction("save the audit") as c:
            c.execute("UPDATE audits SET data=? WHERE id=?", (_dump(audit.data), audit.id))

    @staticmethod
    def _insert_attribution(c: sqlite3.Connection, turn_id: int, a: Attribution, now: float,
                            table: str = "attributions") -> int:
        """Insert ``a`` into ``table`` (``attributions`` or ``audits``, which have the same columns)."""
        cur = c.execute(
            f"INSERT INTO {table} (turn_id, start, end, data, created_at) VALUES (?, ?, ?, ?, ?)",
            (turn_id, a.start, a.end, _dump(a.data), now),
        )
        return int(cur.lastrowid)

    def list_sessions(self, limit: int = 200) -> list[SessionSummary]:
        """Sessions, most recently updated first."""
        with self._errors("list the sessions"):
            rows = self.conn.execute(
                "SELECT s.id, s.title, s.model, s.updated_at, COUNT(t.id) AS n FROM sessions s "
                "LEFT JOIN turns t ON t.session_id = s.id GROUP BY s.id ORDER BY s.updated_at DESC, s.id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [SessionSummary(r["id"], r["title"], r["model"], r["n"], r["updated_at"]) for r in rows]

    def load_session(self, session_id: int) -> Session:
        """The session with its turns, their attributions and audits.

        Raises:
            StoreError: no session has this id, or it cannot be read.
        """
        with self._errors(f"read session {session_id}"):
            return self._load_session(session_id)

    def _load_session(self, session_id: int) -> Session:
        r = self.conn.execute("SELECT * FROM sessions WHERE id=?", (session_id,)).fetchone()
        if r is None:
            raise StoreError(f"{self.path}: no session {session_id}")
        session = Session(
            title=r["title"], model=r["model"], system=r["system"], settings=_load(r["settings"], {}),
            steering=_load(r["steering"], []), id=r["id"], created_at=r["created_at"], updated_at=r["updated_at"],
        )
        turns = self.conn.execute("SELECT * FROM turns WHERE session_id=? ORDER BY position", (session_id,)).fetchall()
        for t in turns:
            turn = Turn(
                prompt=t["prompt"], output=t["output"], prompt_ids=_load(t["prompt_ids"], []),
                token_ids=_load(t["token_ids"], []), settings=_load(t["settings"], {}),
                steering=_load(t["steering"], []), steering_segments=_load(t["steering_segments"], []),
                token_segments=_load(t["token_segments"], []), seed=t["seed"], stop_reason=t["stop_reason"], tokens_per_s=t["tokens_per_s"], unsteered=t["unsteered"],
                id=t["id"], created_at=t["created_at"],
            )
            for a in self.conn.execute("SELECT * FROM attributions WHERE turn_id=? ORDER BY id", (t["id"],)):
                turn.attributions.append(Attribution(a["start"], a["end"], _load(a["data"], {}), a["id"]))
            for a in self.conn.execute("SELECT * FROM audits WHERE turn_id=? ORDER BY id", (t["id"],)):
                turn.audits.append(Audit(a["start"], a["end"], _load(a["data"], {}), a["id"]))
            session.turns.append(turn)
        return session

    def delete_session(self, session_id: int) -> None:
        with self.transaction(f"delete session {session_id}") as c:
            c.execute("DELETE FROM sessions WHERE id=?", (session_id,))

    # ---- recent models -----------------------------------------------------------------
    def remember_model(self, path: str, keep: int = 10) -> None:
        """Put ``path`` first in the recent models, keeping the ``keep`` most recent."""
        with self.transaction("remember the model") as c:
            c.execute(
                "INSERT INTO recent_models (path, used_at) VALUES (?, ?) "
                "ON CONFLICT(path) DO UPDATE SET used_at=excluded.used_at",
                (path, time.time()),
            )
            c.execute(
                "DELETE FROM recent_models WHERE path NOT IN "
                "(SELECT path FROM recent_models ORDER BY used_at DESC LIMIT ?)", (keep,),
            )

    def recent_models(self) -> list[str]:
        """Model directories opened, most recent first."""
        with self._errors("read the recent models"):
            return [r[0] for r in self.conn.execute("SELECT path FROM recent_models ORDER BY used_at DESC")]


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _load(text: str | None, default: Any) -> Any:
    if not text:
        return default
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return default
