"""Tamper evidence for the review history: every review row carries a hash chained to the row
before it, and ``check_chain`` recomputes the chain from the database file.

Why a chain: the triggers that make the table append-only live in the same file, so whoever
can write the file can drop them and rewrite a review. They cannot do it unnoticed: a row's
hash covers its own fields and the previous row's hash, so an edited, removed, renumbered or
inserted row no longer matches. What a chain alone cannot show is a whole history recomputed
from scratch by someone who knows this code; ``check_chain`` reports the head hash so a site
can write it down (or log it elsewhere) and compare it later.

The check names a bad row by its id and saved time only: never the study, reviewer or notes.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: The chained fields of a review row, in the order they are serialised (the stored text, as
#: SQLite holds it: label_agreement and study_scores are JSON text already).
CHAINED_COLUMNS: tuple[str, ...] = (
    "id",
    "study_instance_uid",
    "series_instance_uid",
    "reviewer",
    "created_at",
    "overall",
    "label_agreement",
    "notes",
    "model_identity",
    "study_scores",
)
#: The "previous hash" of the first row.
GENESIS = "0" * 64
#: Names the serialisation, so a future change of format cannot be mistaken for tampering.
_FORMAT = "ich-review-chain-v1"
#: The triggers that keep the table append-only; a missing one means someone dropped it.
TRIGGERS: tuple[str, ...] = ("reviews_no_update", "reviews_no_delete", "reviews_no_reuse")


def row_hash(values: Sequence[object], previous: str) -> str:
    """sha256 of a canonical serialisation of the row's chained fields and the previous hash.

    JSON with fixed separators and ASCII escapes: one byte string for one set of values, and
    types stay apart (the number 1 and the text "1" hash differently).
    """
    if len(values) != len(CHAINED_COLUMNS):
        raise ValueError(f"a review row has {len(CHAINED_COLUMNS)} chained fields")
    text = json.dumps([_FORMAT, previous, list(values)], ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


@dataclass(frozen=True)
class ChainCheck:
    """What ``check_chain`` found. ``first_bad_id``/``first_bad_saved_at`` name the first row
    whose hash does not match (None when every row matches)."""

    n_reviews: int
    head: str  # hash of the last row (GENESIS for an empty history)
    first_bad_id: int | None = None
    first_bad_saved_at: str | None = None
    n_bad: int = 0
    missing_after_id: int | None = None  # the last rows were removed: ids above this are gone
    last_issued_id: int | None = None
    missing_triggers: tuple[str, ...] = ()

    @property
    def intact(self) -> bool:
        return (
            self.first_bad_id is None
            and self.missing_after_id is None
            and not (self.missing_triggers)
        )

    def lines(self) -> list[str]:
        """The result for the person at the terminal (ids and times only, no patient data)."""
        if self.intact:
            return [
                f"Review history intact: {self.n_reviews} review(s), every hash matches.",
                f"Chain head: {self.head}",
                "(Note this head; if it is later found with fewer or other reviews before it, "
                "the history was rewritten.)",
            ]
        out = [f"Review history BROKEN ({self.n_reviews} review(s) checked)."]
        if self.first_bad_id is not None:
            out.append(
                f"First bad review: id {self.first_bad_id}, saved {self.first_bad_saved_at} "
                "— it was changed, or a review before it was removed or inserted, after it "
                f"was saved. {self.n_bad} review(s) do not match."
            )
        if self.missing_after_id is not None:
            out.append(
                f"Reviews after id {self.missing_after_id} are missing: the database had "
                f"saved reviews up to id {self.last_issued_id}."
            )
        if self.missing_triggers:
            out.append(
                "The append-only protection was removed (missing trigger(s): "
                f"{', '.join(self.missing_triggers)})."
            )
        out.append("Keep a copy of this file as it is and tell IT: it was altered outside the app.")
        return out


class NotChained(Exception):
    """The file has no hash column yet (written by a version before the chain)."""


def check_chain(conn: sqlite3.Connection) -> ChainCheck:
    """Recompute the chain over ``reviews`` in id order (read only)."""
    columns = {r[1] for r in conn.execute("PRAGMA table_info(reviews)")}
    if "row_hash" not in columns:
        raise NotChained
    previous, n, n_bad = GENESIS, 0, 0
    first: tuple[int, str] | None = None
    last_id: int | None = None
    query = f"SELECT {', '.join(CHAINED_COLUMNS)}, row_hash FROM reviews ORDER BY id"
    for *values, stored in conn.execute(query):
        n += 1
        last_id = values[0]
        if stored != row_hash(values, previous):
            n_bad += 1
            if first is None:
                first = (values[0], str(values[4]))
        # Link to the stored hash: one edited row shows as one bad row, the rest still match.
        previous = stored if isinstance(stored, str) else ""
    issued = _last_issued_id(conn)
    missing_after = None
    if issued is not None and issued > (last_id or 0):
        missing_after = last_id or 0
    present = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'")}
    return ChainCheck(
        n_reviews=n,
        head=previous if n else GENESIS,
        first_bad_id=first[0] if first else None,
        first_bad_saved_at=first[1] if first else None,
        n_bad=n_bad,
        missing_after_id=missing_after,
        last_issued_id=issued if missing_after is not None else None,
        missing_triggers=tuple(t for t in TRIGGERS if t not in present),
    )


def check_file(path: Path) -> ChainCheck:
    """Open the database read-only (nothing is migrated or repaired) and check its chain."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=30)
    try:
        return check_chain(conn)
    finally:
        conn.close()


def _last_issued_id(conn: sqlite3.Connection) -> int | None:
    """The highest id AUTOINCREMENT has handed out (it never goes back, even after a delete)."""
    try:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'reviews'").fetchone()
    except sqlite3.OperationalError:  # no AUTOINCREMENT table was ever written
        return None
    return int(row[0]) if row and row[0] is not None else None
