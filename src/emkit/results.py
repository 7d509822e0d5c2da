"""``results.sqlite``: the run's database (generations, judgments, metrics, latent statistics).

Each module declares its table with :func:`register_table`; tables are created on first connect.
Writes go through :meth:`ResultsDB.transaction`, so a crash mid-write loses only the
uncommitted batch and never corrupts what was recorded (SQLite WAL journal).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TABLES: dict[str, str] = {}


def register_table(name: str, ddl: str) -> None:
    """Declare a table (``CREATE TABLE IF NOT EXISTS`` body, plus any indexes after a ``;``)."""
    TABLES[name] = ddl


register_table(
    "generations",
    """CREATE TABLE IF NOT EXISTS generations (
        model TEXT NOT NULL,          -- label of the model/condition that answered
        question_id TEXT NOT NULL,
        paraphrase INTEGER NOT NULL,
        sample INTEGER NOT NULL,
        sampling_hash TEXT NOT NULL,  -- hash of the sampling config (+ steering, if any)
        prompt TEXT NOT NULL,
        system TEXT,
        answer TEXT NOT NULL,
        n_tokens INTEGER NOT NULL,
        truncated INTEGER NOT NULL,
        created REAL NOT NULL DEFAULT (julianday('now')),
        PRIMARY KEY (model, question_id, paraphrase, sample, sampling_hash)
    )""",
)


class ResultsDB:
    """A thin wrapper over one SQLite file with the registered tables."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self.ensure_tables()

    @property
    def conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = sqlite3.connect(self.path, timeout=60)
            c.row_factory = sqlite3.Row
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = c
        return c

    def ensure_tables(self) -> None:
        with self.transaction() as c:
            for ddl in TABLES.values():
                # one statement at a time: executescript() would COMMIT the open transaction
                for stmt in ddl.split(";"):
                    if stmt.strip():
                        c.execute(stmt)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        c = self.conn
        try:
            c.execute("BEGIN")
            yield c
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def insert(self, table: str, rows: Iterable[dict[str, Any]], replace: bool = False) -> int:
        rows = list(rows)
        if not rows:
            return 0
        self.ensure_tables()
        cols = list(rows[0])
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        sql = f"{verb} INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        with self.transaction() as c:
            c.executemany(sql, [tuple(r[k] for k in cols) for r in rows])
        return len(rows)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        try:
            return [dict(r) for r in self.conn.execute(sql, params).fetchall()]
        except sqlite3.OperationalError as e:
            if "no such table" not in str(e):
                raise
            self.ensure_tables()  # a module registered its table after this database was opened
            return [dict(r) for r in self.conn.execute(sql, params).fetchall()]

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None
