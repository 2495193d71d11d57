"""Reviews a radiologist saved, in one SQLite file under the app's data folder.

Why SQLite: a real database file with transactions, so a saved review survives a crash or a
restart, and IT can back it up as one file. Reviews are append-only (triggers refuse UPDATE and
DELETE): a later review adds a row and the latest is shown, the history stays.

The data folder is ``$ICH_REVIEW_DATA`` when set, otherwise ``data/`` in the project folder.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Literal

from core.errors import ICHError
from core.labels import LABELS

SCHEMA_VERSION = 1
DB_NAME = "reviews.sqlite3"

Overall = Literal["hemorrhage", "no hemorrhage", "uncertain"]
OVERALL_CHOICES: tuple[str, ...] = ("hemorrhage", "no hemorrhage", "uncertain")
Agreement = Literal["agree", "disagree"]


def data_dir() -> Path:
    """The app's own data folder (created on first use); nothing is written outside it."""
    root = os.environ.get("ICH_REVIEW_DATA")
    path = Path(root).expanduser() if root else Path(__file__).resolve().parents[2] / "data"
    path.mkdir(parents=True, exist_ok=True)
    return path


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


class StoreError(ICHError):
    """The review database cannot be used (locked, damaged, read-only)."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    study_instance_uid TEXT PRIMARY KEY,
    series_instance_uid TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    patient_name TEXT NOT NULL,
    study_date TEXT,
    n_slices INTEGER NOT NULL,
    model_identity TEXT,
    study_scores TEXT,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS reviews (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_instance_uid TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    created_at TEXT NOT NULL,
    overall TEXT NOT NULL,
    label_agreement TEXT NOT NULL,
    notes TEXT NOT NULL,
    model_identity TEXT,
    study_scores TEXT
);
CREATE INDEX IF NOT EXISTS reviews_by_study ON reviews (study_instance_uid, id);
CREATE TRIGGER IF NOT EXISTS reviews_no_update BEFORE UPDATE ON reviews
    BEGIN SELECT RAISE(ABORT, 'reviews are append-only'); END;
CREATE TRIGGER IF NOT EXISTS reviews_no_delete BEFORE DELETE ON reviews
    BEGIN SELECT RAISE(ABORT, 'reviews are append-only'); END;
"""


class ReviewStore:
    """Append-only review history and the saved worklist, over one SQLite file.

    A connection is opened per operation, so one store is safe to share between the threads
    Streamlit runs sessions on; each write is one transaction.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else data_dir() / DB_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.executescript(_SCHEMA)
            conn.execute(
                "INSERT OR IGNORE INTO meta VALUES ('pseudonym_salt', ?)", (secrets.token_hex(16),)
            )
            found = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if found is None:
                conn.execute(
                    "INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
            elif int(found[0]) > SCHEMA_VERSION:
                raise StoreError(
                    f"The review database {self.path.name} was written by a newer version of "
                    "this tool; update the tool before opening it."
                )

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            with closing(sqlite3.connect(self.path, timeout=30)) as conn:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                with conn:  # one transaction: committed on success, rolled back on error
                    yield conn
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"The review database {self.path.name} cannot be used ({exc}). "
                "Nothing was saved; ask IT to check the data folder."
            ) from exc

    @cached_property
    def salt(self) -> str:
        """Per-installation secret mixed into patient pseudonyms, so the same patient gets the
        same pseudonym here but pseudonyms cannot be matched across sites."""
        with self._connect() as conn:
            return conn.execute("SELECT value FROM meta WHERE key = 'pseudonym_salt'").fetchone()[0]

    def save_study(self, record: StudyRecord) -> None:
        """Add the study to the saved worklist (or refresh its entry)."""
        with self._connect() as conn:
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
        return [StudyRecord(*r[:7], study_scores=_load(r[7])) for r in rows]

    def add_review(self, review: Review) -> Review:
        """Append a review; returns it with its id and timestamp. Never overwrites."""
        created = _now()
        with self._connect() as conn:
            cur = conn.execute(
                "INSERT INTO reviews (study_instance_uid, series_instance_uid, reviewer, "
                "created_at, overall, label_agreement, notes, model_identity, study_scores) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    review.study_instance_uid,
                    review.series_instance_uid,
                    review.reviewer.strip(),
                    created.isoformat(),
                    review.overall,
                    json.dumps({k: review.label_agreement.get(k) for k in LABELS}),
                    review.notes,
                    review.model_identity,
                    _dump(review.study_scores),
                ),
            )
            review_id = cur.lastrowid
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
