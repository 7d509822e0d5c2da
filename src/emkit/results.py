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
# the key of a ``generations`` row; tables that refer to an answer repeat these columns
ANSWER_KEY = ("model", "question_id", "paraphrase", "sample", "sampling_hash")
MAX_IN = 900  # question ids one statement takes as parameters (SQLite before 3.32 allows 999 in all)


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


def select(db: ResultsDB | sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Rows as dicts from a :class:`ResultsDB` or a plain (e.g. read-only) ``sqlite3`` connection."""
    if isinstance(db, sqlite3.Connection):
        cur = db.execute(sql, params)
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    return db.query(sql, params)


def stored_answers(db: ResultsDB | sqlite3.Connection, label: str | None = None, *,
                   sampling_hash: str | None = None, questions: Iterable[str] | None = None,
                   limit: int | None = None, nonempty: bool = False) -> list[dict[str, Any]]:
    """Rows of ``generations``, ordered by label, question, paraphrase, sample (then sampling hash).

    ``label`` / ``sampling_hash`` (see :func:`emkit.generate.sampling_hash`) pick one model and
    condition (every one when None); ``questions`` keeps those question ids; ``nonempty`` drops
    empty answers; ``limit`` keeps the first rows left after those filters. The filters and the limit
    are the query's, so a limited read reads no more rows than it returns.
    """
    keep = None if questions is None else sorted({q for q in questions if isinstance(q, str)})  # ids are text
    few = keep is None or len(keep) <= MAX_IN  # else too many parameters for one statement: filtered here
    where, params = ["(? IS NULL OR model=?)", "(? IS NULL OR sampling_hash=?)"], [label, label, sampling_hash, sampling_hash]
    if nonempty:
        where.append("answer != ''")
    if keep is not None and few:
        where.append(f"question_id IN ({', '.join('?' * len(keep))})")
        params += keep
    sql = f"SELECT * FROM generations WHERE {' AND '.join(where)} ORDER BY {', '.join(ANSWER_KEY)}"
    sql_limit = few and limit is not None and limit >= 0  # the key orders rows totally: the same first rows
    rows = select(db, sql + " LIMIT ?" if sql_limit else sql, [*params, limit] if sql_limit else params)
    if not few:
        kept = set(keep)
        rows = [r for r in rows if r["question_id"] in kept]
    return rows if sql_limit or limit is None else rows[:limit]


def stored_keys(db: ResultsDB | sqlite3.Connection, label: str, sampling_hash: str) -> set[tuple[str, int, int]]:
    """(question, paraphrase, sample) of the answers stored for one model and condition (no answer text read)."""
    return {(r["question_id"], r["paraphrase"], r["sample"]) for r in select(
        db, "SELECT question_id, paraphrase, sample FROM generations WHERE model=? AND sampling_hash=?",
        (label, sampling_hash))}


def stored_conditions(db: ResultsDB | sqlite3.Connection, label: str) -> list[str]:
    """The sampling hashes under which ``label`` has answers, sorted."""
    return [r["sampling_hash"] for r in select(
        db, "SELECT DISTINCT sampling_hash FROM generations WHERE model=? ORDER BY sampling_hash", (label,))]


# the columns that name a model label in each table keyed by one (see :func:`delete_model_rows`)
MODEL_COLUMNS: dict[str, tuple[str, ...]] = {
    "generations": ("model",), "answer_judgments": ("model",), "metrics": ("model",), "latent_stats": ("model",),
    "persona_projection": ("model", "reference"), "steering": ("label",), "training_evals": ("run_label",),
    "realign_curve": ("run_label",), "prediction": ("member",)}
# tables with such a column whose rows outlive a changed model, and why
KEPT_ON_MODEL_CHANGE = {"judgments": "keyed by text; its label column is the judge's CODE/REFUSAL",
                        "blind_scores": "people's scores; each names the exported answer it read",
                        "data_screen": "its model column is the screening model, not a recipe label"}


def delete_model_rows(db: ResultsDB, labels: Iterable[str]) -> None:
    """Delete the rows of each label (and of its re-alignment runs, ``LABEL-realign...``) from every
    table keyed by model label (:data:`MODEL_COLUMNS`) that this database has, in one transaction.
    Judgments are keyed by text and stay."""
    tables = {r["name"] for r in db.query("SELECT name FROM sqlite_master WHERE type='table'")}
    with db.transaction() as c:
        for lab in labels:
            prefix = f"{lab}-realign"  # an exact prefix: LIKE would read _ and % in a label as wildcards
            for table, cols in MODEL_COLUMNS.items():
                if table in tables:
                    for col in cols:
                        c.execute(f"DELETE FROM {table} WHERE {col}=? OR substr({col}, 1, ?)=?",
                                  (lab, len(prefix), prefix))


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
