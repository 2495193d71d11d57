"""What the PACS watcher has done, in one SQLite file in the app's data folder
(``watch.sqlite3``), so that it scores each study once per model and resumes after a restart.

Why its own file (not the review database): the review database is append-only and chained;
this is bookkeeping that changes as studies are retried. Why SQLite: a kill at any instant
leaves either the old or the new state (one transaction per change), never half of one.

Rows are keyed by (StudyInstanceUID, weights identity): new weights score every study again,
the same weights never twice. A feed's position (Orthanc's change sequence number) is kept per
server and moved past a change only once its study is done, so a watcher killed while scoring
a study scores it again after the restart, and skips what was already done.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from core.errors import StoreError
from core.review.store import data_dir, ensure_folder

STATE_NAME = "watch.sqlite3"
Status = Literal["scored", "skipped", "failed"]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS cursor (server TEXT PRIMARY KEY, position INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS done (
    study_instance_uid TEXT NOT NULL,
    weights_identity TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    message TEXT NOT NULL,
    p_any REAL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (study_instance_uid, weights_identity)
)""",
)


@dataclass(frozen=True)
class WatchedStudy:
    """One study the watcher handled with one model: scored, skipped (not CT) or failed."""

    study_instance_uid: str
    weights_identity: str
    status: str
    attempts: int
    message: str  # the reason for a skip or failure, or the result's summary
    p_any: float | None
    updated_at: str


class WatchState:
    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else data_dir() / STATE_NAME
        ensure_folder(self.path.parent)
        with self._connect() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            with closing(sqlite3.connect(self.path, timeout=30, isolation_level=None)) as conn:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"The watcher's state file {self.path.name} cannot be used ({exc}); ask IT to "
                "check the data folder."
            ) from exc

    def cursor(self, server: str) -> int | None:
        with self._connect() as conn:
            row = conn.execute("SELECT position FROM cursor WHERE server = ?", (server,)).fetchone()
        return None if row is None else int(row[0])

    def set_cursor(self, server: str, position: int) -> None:
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO cursor VALUES (?, ?) ON CONFLICT(server) DO UPDATE SET "
                "position = excluded.position",
                (server, position),
            )

    def get(self, study_uid: str, weights_identity: str) -> WatchedStudy | None:
        with self._connect() as conn:
            row = conn.execute(
                "SELECT * FROM done WHERE study_instance_uid = ? AND weights_identity = ?",
                (study_uid, weights_identity),
            ).fetchone()
        return None if row is None else WatchedStudy(*row)

    def record(
        self,
        study_uid: str,
        weights_identity: str,
        status: Status,
        message: str,
        p_any: float | None = None,
    ) -> WatchedStudy:
        """Record the outcome (a failure counts one more attempt)."""
        now = datetime.now(UTC).isoformat()
        with self._connect() as conn:
            row = conn.execute(
                "SELECT attempts FROM done WHERE study_instance_uid = ? AND weights_identity = ?",
                (study_uid, weights_identity),
            ).fetchone()
            attempts = (row[0] if row else 0) + 1
            conn.execute(
                "INSERT OR REPLACE INTO done VALUES (?, ?, ?, ?, ?, ?, ?)",
                (study_uid, weights_identity, status, attempts, message, p_any, now),
            )
        return WatchedStudy(study_uid, weights_identity, status, attempts, message, p_any, now)

    def all(self, weights_identity: str | None = None) -> list[WatchedStudy]:
        with self._connect() as conn:
            if weights_identity is None:
                rows = conn.execute("SELECT * FROM done ORDER BY updated_at").fetchall()
            else:
                rows = conn.execute(
                    "SELECT * FROM done WHERE weights_identity = ? ORDER BY updated_at",
                    (weights_identity,),
                ).fetchall()
        return [WatchedStudy(*r) for r in rows]

    def to_retry(self, weights_identity: str, max_attempts: int) -> list[str]:
        """Studies that failed fewer than ``max_attempts`` times with these weights."""
        return [
            s.study_instance_uid
            for s in self.all(weights_identity)
            if s.status == "failed" and s.attempts < max_attempts
        ]
