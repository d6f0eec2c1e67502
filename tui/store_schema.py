"""The sessions database's schema as migrations (:mod:`tui.store`): migration ``i`` (from 1)
takes a database from version ``i - 1`` to ``i``; a released migration never changes."""

from __future__ import annotations

# Each entry upgrades the schema by one version; statements run in one transaction.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE sessions (
            id INTEGER PRIMARY KEY,
            title TEXT NOT NULL,
            model TEXT NOT NULL,
            system TEXT NOT NULL DEFAULT '',
            settings TEXT NOT NULL DEFAULT '{}',
            steering TEXT NOT NULL DEFAULT '[]',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        """CREATE TABLE turns (
            id INTEGER PRIMARY KEY,
            session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            prompt TEXT NOT NULL,
            output TEXT NOT NULL,
            prompt_ids TEXT NOT NULL DEFAULT '[]',
            token_ids TEXT NOT NULL DEFAULT '[]',
            settings TEXT NOT NULL DEFAULT '{}',
            steering TEXT NOT NULL DEFAULT '[]',
            seed INTEGER,
            stop_reason TEXT NOT NULL DEFAULT '',
            tokens_per_s REAL,
            unsteered TEXT,
            created_at REAL NOT NULL,
            UNIQUE (session_id, position)
        )""",
        """CREATE TABLE attributions (
            id INTEGER PRIMARY KEY,
            turn_id INTEGER NOT NULL REFERENCES turns(id) ON DELETE CASCADE,
            start INTEGER NOT NULL,
            end INTEGER NOT NULL,
            data TEXT NOT NULL,
            created_at REAL NOT NULL
        )""",
        "CREATE TABLE recent_models (path TEXT PRIMARY KEY, used_at REAL NOT NULL)",
        "CREATE INDEX turns_by_session ON turns (session_id, position)",
        "CREATE INDEX attributions_by_turn ON attributions (turn_id)",
    ],
    [  # 2: audits (issue 11); written out, not derived from the attributions table: a released migration never changes
        """CREATE TABLE audits (
            id INTEGER PRIMARY KEY,
            turn_id INTEGER NOT NULL REFERENCES turns(id) ON DELETE CASCADE,
            start INTEGER NOT NULL,
            end INTEGER NOT NULL,
            data TEXT NOT NULL,
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX audits_by_turn ON audits (turn_id)",
    ],
    [  # 3: per-step steering record (issue 12)
        "ALTER TABLE turns ADD COLUMN steering_segments TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE turns ADD COLUMN token_segments TEXT NOT NULL DEFAULT '[]'",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)
