"""Reviews a radiologist saved, in one SQLite file under the app's data folder.

Why SQLite: a real database file with transactions, so a saved review survives a crash or a
restart, and IT can back it up as one file. Reviews are append-only (triggers refuse UPDATE,
DELETE and an INSERT that reuses an id, which is what ``INSERT OR REPLACE`` does): a later
review adds a row and the latest is shown, the history stays. Each row carries a hash chained
to the row before it (core.review.audit), so a rewrite through the raw file is detectable with
``python -m core.verify_reviews``. A review is appended under ``BEGIN IMMEDIATE``: the write
lock is held from reading the previous hash to the commit, so concurrent saves (threads or
processes) keep one unbroken chain.

The data folder is ``$ICH_REVIEW_DATA`` when set, otherwise ``data/`` in the project folder.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from core.data_folder import data_dir, ensure_folder  # noqa: F401 - re-exported
from core.errors import StoreError
from core.labels import LABELS
from core.review.audit import CHAINED_COLUMNS, GENESIS, row_hash

#: 1: reviews, studies, meta. 2: reviews.row_hash (the chain) and the no-reuse trigger.
SCHEMA_VERSION = 2
DB_NAME = "reviews.sqlite3"

Overall = Literal["hemorrhage", "no hemorrhage", "uncertain"]
OVERALL_CHOICES: tuple[str, ...] = ("hemorrhage", "no hemorrhage", "uncertain")
Agreement = Literal["agree", "disagree"]


@dataclass(frozen=True)
class Review:
    """One radiologist's read of one study: per-label agreement with the model, an overall
    call, notes, and which model produced the probabilities they looked at."""

    study_instance_uid: str
    series_instance_uid: str
    reviewer: str
    overall: str
    label_agreement: Mapping[str, str | None] = field(default_factory=dict)
    notes: str = ""
    model_identity: str | None = None
    study_scores: Mapping[str, float] | None = None
    created_at: datetime | None = None  # set by the store when saved
    review_id: int | None = None

    def __post_init__(self) -> None:
        if self.overall not in OVERALL_CHOICES:
            raise ValueError(f"overall call must be one of {OVERALL_CHOICES}, got {self.overall!r}")
        unknown = set(self.label_agreement) - set(LABELS)
        if unknown:
            raise ValueError(f"unknown labels in review: {sorted(unknown)}")
        bad = {v for v in self.label_agreement.values() if v not in ("agree", "disagree", None)}
        if bad:
            raise ValueError(f"agreement must be 'agree', 'disagree' or None, got {sorted(bad)}")
        if not self.reviewer.strip():
            raise ValueError("a review needs the reviewer's name")


@dataclass(frozen=True)
class StudyRecord:
    """What the worklist remembers of a study once it was saved: enough to list and sort it."""

    study_instance_uid: str
    series_instance_uid: str
    patient_id: str = field(repr=False)
    patient_name: str = field(repr=False)
    study_date: str | None
    n_slices: int
    model_identity: str | None = None
    study_scores: Mapping[str, float] | None = None


_TABLES = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS studies (
    study_instance_uid TEXT PRIMARY KEY,
    series_instance_uid TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    patient_name TEXT NOT NULL,
    study_date TEXT,
    n_slices INTEGER NOT NULL,
    model_identity TEXT,
    study_scores TEXT,
    updated_at TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS reviews (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_instance_uid TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    created_at TEXT NOT NULL,
    overall TEXT NOT NULL,
    label_agreement TEXT NOT NULL,
    notes TEXT NOT NULL,
    model_identity TEXT,
    study_scores TEXT,
    row_hash TEXT
)""",
    "CREATE INDEX IF NOT EXISTS reviews_by_study ON reviews (study_instance_uid, id)",
)
#: Recreated on every open, so a dropped trigger comes back (the chain shows what happened
#: while it was gone). A BEFORE INSERT trigger runs before the REPLACE conflict resolution, so
#: ``INSERT OR REPLACE`` with an existing id is refused instead of silently deleting the row.
_TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS reviews_no_update BEFORE UPDATE ON reviews "
    "BEGIN SELECT RAISE(ABORT, 'reviews are append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS reviews_no_delete BEFORE DELETE ON reviews "
    "BEGIN SELECT RAISE(ABORT, 'reviews are append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS reviews_no_reuse BEFORE INSERT ON reviews "
    "WHEN EXISTS (SELECT 1 FROM reviews WHERE id = NEW.id) "
    "BEGIN SELECT RAISE(ABORT, 'reviews are append-only: that review id is taken'); END",
)


class ReviewStore:
    """Append-only review history and the saved worklist, over one SQLite file.

    A connection is opened per operation, so one store is safe to share between the threads
    Streamlit runs sessions on; each write is one transaction.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else data_dir() / DB_NAME
        ensure_folder(self.path.parent)
        with self._connect(write=True) as conn:
            found = _meta(conn, "schema_version")
            if found is not None and int(found) > SCHEMA_VERSION:
                raise StoreError(
                    f"The review database {self.path.name} was written by a newer version of "
                    "this tool; update the tool before opening it."
                )
            for statement in _TABLES:
                conn.execute(statement)
            columns = {r[1] for r in conn.execute("PRAGMA table_info(reviews)")}
            if "row_hash" not in columns:
                _chain_existing_reviews(conn)
            for statement in _TRIGGERS:
                conn.execute(statement)
            conn.execute(
                "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )

    @contextmanager
    def _connect(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """One connection, one transaction: committed on success, rolled back on any error.
        A write takes the lock up front (BEGIN IMMEDIATE), so what it reads stays true until
        it commits."""
        try:
            with closing(sqlite3.connect(self.path, timeout=30, isolation_level=None)) as conn:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield conn
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"The review database {self.path.name} cannot be used ({exc}). "
                "Nothing was saved; ask IT to check the data folder."
            ) from exc

    def legacy_pseudonym_salt(self) -> str | None:
        """The pseudonym salt versions before the key file kept in this database (None when
        there is none); core.review.pseudonym moves it into the key file."""
        with self._connect() as conn:
            return _meta(conn, "pseudonym_salt")

    def forget_legacy_pseudonym_salt(self, value: str) -> None:
        """Remove the old salt once the key file holds the same value (one source only)."""
        with self._connect(write=True) as conn:
            conn.execute("DELETE FROM meta WHERE key = 'pseudonym_salt' AND value = ?", (value,))

    def save_study(self, record: StudyRecord) -> None:
        """Add the study to the saved worklist (or refresh its entry)."""
        with self._connect(write=True) as conn:
            conn.execute(
                "INSERT INTO studies VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(study_instance_uid) DO UPDATE SET "
                "series_instance_uid=excluded.series_instance_uid, "
                "patient_id=excluded.patient_id, patient_name=excluded.patient_name, "
                "study_date=excluded.study_date, n_slices=excluded.n_slices, "
                "model_identity=excluded.model_identity, study_scores=excluded.study_scores, "
                "updated_at=excluded.updated_at",
                (
                    record.study_instance_uid,
                    record.series_instance_uid,
                    record.patient_id,
                    record.patient_name,
                    record.study_date,
                    record.n_slices,
                    record.model_identity,
                    _dump(record.study_scores),
                    _now().isoformat(),
                ),
            )

    def studies(self) -> list[StudyRecord]:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT study_instance_uid, series_instance_uid, patient_id, patient_name, "
                "study_date, n_slices, model_identity, study_scores FROM studies"
            ).fetchall()
        return [
            StudyRecord(
                study_instance_uid=r[0],
                series_instance_uid=r[1],
                patient_id=r[2],
                patient_name=r[3],
                study_date=r[4],
                n_slices=r[5],
                model_identity=r[6],
                study_scores=_load(r[7]),
            )
            for r in rows
        ]

    def add_review(self, review: Review) -> Review:
        """Append a review; returns it with its id and timestamp. Never overwrites.

        The id is chosen here (one past the highest ever issued) because the row's hash
        covers it; the write lock is held from reading the previous hash to the commit."""
        created = _now()
        with self._connect(write=True) as conn:
            last = conn.execute(
                "SELECT id, row_hash FROM reviews ORDER BY id DESC LIMIT 1"
            ).fetchone()
            issued = conn.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'reviews'"
            ).fetchone()
            review_id = max(last[0] if last else 0, issued[0] if issued else 0) + 1
            values = (
                review_id,
                review.study_instance_uid,
                review.series_instance_uid,
                review.reviewer.strip(),
                created.isoformat(),
                review.overall,
                json.dumps({k: review.label_agreement.get(k) for k in LABELS}),
                review.notes,
                review.model_identity,
                _dump(review.study_scores),
            )
            previous = (last[1] or "") if last else GENESIS
            conn.execute(_INSERT_REVIEW, (*values, row_hash(values, previous)))
        return replace(review, created_at=created, review_id=review_id)

    def history(self, study_instance_uid: str) -> list[Review]:
        """Every review of the study, oldest first."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT id, study_instance_uid, series_instance_uid, reviewer, created_at, "
                "overall, label_agreement, notes, model_identity, study_scores FROM reviews "
                "WHERE study_instance_uid = ? ORDER BY id",
                (study_instance_uid,),
            ).fetchall()
        return [_review_from_row(r) for r in rows]

    def latest(self, study_instance_uid: str) -> Review | None:
        history = self.history(study_instance_uid)
        return history[-1] if history else None

    def latest_by_study(self) -> dict[str, Review]:
        """The latest review of every reviewed study (for the worklist)."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT r.id, r.study_instance_uid, r.series_instance_uid, r.reviewer, "
                "r.created_at, r.overall, r.label_agreement, r.notes, r.model_identity, "
                "r.study_scores FROM reviews r JOIN (SELECT study_instance_uid, MAX(id) AS id "
                "FROM reviews GROUP BY study_instance_uid) m ON r.id = m.id"
            ).fetchall()
        return {r[1]: _review_from_row(r) for r in rows}


_INSERT_REVIEW = (
    f"INSERT INTO reviews ({', '.join(CHAINED_COLUMNS)}, row_hash) "
    f"VALUES ({', '.join('?' * (len(CHAINED_COLUMNS) + 1))})"
)


def _meta(conn: sqlite3.Connection, key: str) -> str | None:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
    ).fetchone()
    if not exists:
        return None
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else row[0]


def _chain_existing_reviews(conn: sqlite3.Connection) -> None:
    """Migration from schema 1: add the hash column and chain the saved reviews in id order.

    Runs inside the opening transaction, so it completes or leaves the file as it was. The
    no-update trigger is dropped for the fill and recreated by the caller before the commit.
    It runs only while the column is missing: a row without a hash found later is tampering,
    not something to fill in.
    """
    conn.execute("ALTER TABLE reviews ADD COLUMN row_hash TEXT")
    conn.execute("DROP TRIGGER IF EXISTS reviews_no_update")
    previous = GENESIS
    rows = conn.execute(f"SELECT {', '.join(CHAINED_COLUMNS)} FROM reviews ORDER BY id").fetchall()
    for values in rows:
        previous = row_hash(values, previous)
        conn.execute("UPDATE reviews SET row_hash = ? WHERE id = ?", (previous, values[0]))


def _now() -> datetime:
    return datetime.now(UTC)


def _dump(value: Mapping | None) -> str | None:
    return None if value is None else json.dumps(dict(value))


def _load(text: str | None) -> dict | None:
    return None if text is None else json.loads(text)


def _review_from_row(row: tuple) -> Review:
    rid, study, series, reviewer, created, overall, labels, notes, model, scores = row
    return Review(
        study_instance_uid=study,
        series_instance_uid=series,
        reviewer=reviewer,
        overall=overall,
        label_agreement=json.loads(labels),
        notes=notes,
        model_identity=model,
        study_scores=_load(scores),
        created_at=datetime.fromisoformat(created),
        review_id=rid,
    )
