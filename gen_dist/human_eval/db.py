"""human_eval.sqlite: raters, the tasks each rater was given, and one row per judgement.

Every write is one transaction. A judgement carries its task's id and ``judgements.task_id`` is
UNIQUE, so a task is answered once whatever the retries, double clicks or server restarts; tasks
are stored when a rater's round is drawn, so a restarted server serves the same round from where
the rater stopped. All SQL is parameterised.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

PROTOCOLS = {"real-or-fake": ("real", "fake"), "pairwise": ("left", "right")}
REAL = "real"  # the source name of test-split images (a model may not take it)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS raters (
    id TEXT PRIMARY KEY,
    name TEXT,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    rater_id TEXT NOT NULL REFERENCES raters(id),
    protocol TEXT NOT NULL CHECK (protocol IN ('real-or-fake', 'pairwise')),
    position INTEGER NOT NULL,
    block TEXT NOT NULL,
    image_a TEXT NOT NULL UNIQUE,
    source_a TEXT NOT NULL,
    index_a INTEGER NOT NULL,
    image_b TEXT UNIQUE,
    source_b TEXT,
    index_b INTEGER,
    question TEXT NOT NULL,
    created REAL NOT NULL,
    UNIQUE (rater_id, protocol, position)
);
CREATE TABLE IF NOT EXISTS judgements (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL UNIQUE REFERENCES tasks(id),
    rater_id TEXT NOT NULL REFERENCES raters(id),
    rater_name TEXT,
    protocol TEXT NOT NULL,
    block TEXT NOT NULL,
    image_a TEXT NOT NULL,
    source_a TEXT NOT NULL,
    index_a INTEGER NOT NULL,
    image_b TEXT,
    source_b TEXT,
    index_b INTEGER,
    answer TEXT NOT NULL,
    response_ms REAL NOT NULL,
    created REAL NOT NULL
);
"""

TASK_COLUMNS = ("id", "block", "image_a", "source_a", "index_a", "image_b", "source_b", "index_b", "question")


class NotYourTask(Exception):
    """The task does not exist, or was given to another rater or under another protocol."""


class AlreadyAnswered(Exception):
    """The task has its judgement."""


def connect(path: str | Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)  # explicit BEGIN ... COMMIT
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    return conn


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception."""

    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, kind, value, tb):
        self.conn.execute("COMMIT" if kind is None else "ROLLBACK")
        return False


def init(path: str | Path) -> None:
    conn = connect(path)
    try:
        conn.executescript(SCHEMA)
    finally:
        conn.close()


def get_meta(conn, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row["value"] if row else None


def set_meta_default(conn, key: str, value: str) -> str:
    """The stored value, storing ``value`` first when there is none."""
    with _Tx(conn):
        conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
    return get_meta(conn, key)


def add_rater(conn, rater_id: str) -> None:
    with _Tx(conn):
        conn.execute("INSERT OR IGNORE INTO raters (id, created) VALUES (?, ?)", (rater_id, time.time()))


def rater_exists(conn, rater_id: str) -> bool:
    return conn.execute("SELECT 1 FROM raters WHERE id = ?", (rater_id,)).fetchone() is not None


def set_name(conn, rater_id: str, name: str) -> None:
    with _Tx(conn):
        conn.execute("UPDATE raters SET name = ? WHERE id = ?", (name, rater_id))


def ensure_round(conn, rater_id: str, protocol: str, draw) -> None:
    """Store the rater's round for this protocol unless it exists: ``draw()`` -> task dicts in order."""
    with _Tx(conn):
        if conn.execute("SELECT 1 FROM tasks WHERE rater_id = ? AND protocol = ? LIMIT 1",
                        (rater_id, protocol)).fetchone():
            return
        now = time.time()
        for position, task in enumerate(draw()):
            conn.execute(f"INSERT INTO tasks (rater_id, protocol, position, created, {', '.join(TASK_COLUMNS)}) "
                         f"VALUES (?, ?, ?, ?, {', '.join('?' * len(TASK_COLUMNS))})",
                         (rater_id, protocol, position, now, *(task.get(c) for c in TASK_COLUMNS)))


def progress(conn, rater_id: str, protocol: str) -> tuple[int, int]:
    """(answered, total) tasks of the rater's round."""
    row = conn.execute("SELECT COUNT(*) AS total, COUNT(j.id) AS done FROM tasks t "
                       "LEFT JOIN judgements j ON j.task_id = t.id WHERE t.rater_id = ? AND t.protocol = ?",
                       (rater_id, protocol)).fetchone()
    return row["done"], row["total"]


def next_task(conn, rater_id: str, protocol: str):
    """The first unanswered task of the rater's round (a Row), or None when the round is done."""
    return conn.execute("SELECT t.* FROM tasks t LEFT JOIN judgements j ON j.task_id = t.id "
                        "WHERE t.rater_id = ? AND t.protocol = ? AND j.id IS NULL ORDER BY t.position LIMIT 1",
                        (rater_id, protocol)).fetchone()


def record(conn, rater_id: str, protocol: str, task_id: str, answer: str, response_ms: float) -> None:
    """Store one judgement; NotYourTask / AlreadyAnswered store nothing."""
    with _Tx(conn):
        task = conn.execute("SELECT * FROM tasks WHERE id = ? AND rater_id = ? AND protocol = ?",
                            (task_id, rater_id, protocol)).fetchone()
        if task is None:
            raise NotYourTask(task_id)
        name = conn.execute("SELECT name FROM raters WHERE id = ?", (rater_id,)).fetchone()["name"]
        try:
            conn.execute("INSERT INTO judgements (task_id, rater_id, rater_name, protocol, block, image_a, source_a, "
                         "index_a, image_b, source_b, index_b, answer, response_ms, created) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (task_id, rater_id, name, protocol, task["block"], task["image_a"], task["source_a"],
                          task["index_a"], task["image_b"], task["source_b"], task["index_b"], answer,
                          float(response_ms), time.time()))
        except sqlite3.IntegrityError:
            raise AlreadyAnswered(task_id) from None


def image_of(conn, rater_id: str, token: str) -> tuple[str, int] | None:
    """(source, index) behind an opaque image id of one of the rater's tasks."""
    row = conn.execute("SELECT source_a AS s, index_a AS i FROM tasks WHERE image_a = ? AND rater_id = ? "
                       "UNION ALL SELECT source_b, index_b FROM tasks WHERE image_b = ? AND rater_id = ?",
                       (token, rater_id, token, rater_id)).fetchone()
    return (row["s"], row["i"]) if row else None


def judgements(path: str | Path, protocol: str | None = None) -> list[dict]:
    """Every judgement (of one protocol), oldest first, as dicts; opened read-only."""
    uri = f"file:{Path(path).resolve()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    conn.row_factory = sqlite3.Row
    try:
        if protocol is None:
            rows = conn.execute("SELECT * FROM judgements ORDER BY id").fetchall()
        else:
            rows = conn.execute("SELECT * FROM judgements WHERE protocol = ? ORDER BY id", (protocol,)).fetchall()
    finally:
        conn.close()
    return [dict(r) for r in rows]
