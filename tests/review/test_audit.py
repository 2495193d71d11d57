"""core.review.audit: the hash chain catches a review changed, removed, inserted or replaced
through the raw database file, and names the first bad row by id and saved time."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from core.review.audit import CHAINED_COLUMNS, GENESIS, check_file, row_hash
from core.review.store import Review, ReviewStore


def _saved(path: Path, n: int = 4) -> list[Review]:
    store = ReviewStore(path)
    return [
        store.add_review(
            Review("1.2.3", "1.2.3.4", f"Dr {i}", "hemorrhage", {"any": "agree"}, f"note {i}")
        )
        for i in range(1, n + 1)
    ]


def _tamper(path: Path, *statements: str) -> None:
    """What someone with the file and the sqlite3 shell could do."""
    conn = sqlite3.connect(path)
    with conn:
        for statement in statements:
            conn.execute(statement)
    conn.close()


def test_the_hash_covers_every_field_and_the_previous_row() -> None:
    values = [1, "s", "se", "Dr A", "2026-01-01T00:00:00+00:00", "uncertain", "{}", "", None, None]
    base = row_hash(values, GENESIS)
    assert len(base) == 64 and base == row_hash(list(values), GENESIS)
    for i in range(len(CHAINED_COLUMNS)):
        changed = list(values)
        changed[i] = "2" if i == 0 else f"{changed[i]}x"  # text "2" is not the id 2 either
        assert row_hash(changed, GENESIS) != base, CHAINED_COLUMNS[i]
    assert row_hash(values, "1" * 64) != base
    with pytest.raises(ValueError):
        row_hash(values[:-1], GENESIS)


def test_an_intact_history_checks_clean(tmp_path) -> None:
    path = tmp_path / "r.sqlite3"
    _saved(path)
    check = check_file(path)
    assert check.intact and check.n_reviews == 4 and check.first_bad_id is None
    assert "intact" in check.lines()[0] and check.head in check.lines()[1]


def test_an_update_after_dropping_the_trigger_is_found_with_the_row_named(tmp_path) -> None:
    path = tmp_path / "r.sqlite3"
    saved = _saved(path)
    _tamper(
        path,
        "DROP TRIGGER reviews_no_update",
        "UPDATE reviews SET overall = 'no hemorrhage' WHERE id = 2",
    )
    check = check_file(path)
    assert not check.intact
    assert check.first_bad_id == 2 and check.n_bad == 1
    assert check.first_bad_saved_at == saved[1].created_at.isoformat()  # type: ignore[union-attr]
    assert check.missing_triggers == ("reviews_no_update",)
    text = "\n".join(check.lines())
    assert "id 2" in text and saved[1].created_at.isoformat() in text  # type: ignore[union-attr]
    assert "note 2" not in text and "Dr 2" not in text and "1.2.3" not in text


def test_replace_after_dropping_the_triggers_is_found(tmp_path) -> None:
    path = tmp_path / "r.sqlite3"
    saved = _saved(path)
    _tamper(
        path,
        "DROP TRIGGER reviews_no_reuse",
        "DROP TRIGGER reviews_no_delete",
        "INSERT OR REPLACE INTO reviews SELECT id, study_instance_uid, series_instance_uid, "
        "reviewer, created_at, 'no hemorrhage', label_agreement, notes, model_identity, "
        "study_scores, row_hash FROM reviews WHERE id = 3",
    )
    ReviewStore(path)  # the app reopening the file restores the triggers, not the review
    check = check_file(path)
    assert check.first_bad_id == 3 and check.n_bad == 1 and check.missing_triggers == ()
    assert check.first_bad_saved_at == saved[2].created_at.isoformat()  # type: ignore[union-attr]


def test_a_review_removed_or_slipped_in_is_found(tmp_path) -> None:
    path = tmp_path / "r.sqlite3"
    _saved(path, n=5)
    _tamper(path, "DROP TRIGGER reviews_no_delete", "DELETE FROM reviews WHERE id = 2")
    assert check_file(path).first_bad_id == 3  # its link to the previous row is gone

    other = tmp_path / "s.sqlite3"
    _saved(other, n=3)
    _tamper(
        other,
        "INSERT INTO reviews SELECT 4, study_instance_uid, series_instance_uid, reviewer, "
        "created_at, 'uncertain', label_agreement, notes, model_identity, study_scores, "
        "row_hash FROM reviews WHERE id = 3",
    )
    assert check_file(other).first_bad_id == 4  # a copied hash does not fit a new place


def test_the_last_reviews_removed_are_found(tmp_path) -> None:
    path = tmp_path / "r.sqlite3"
    _saved(path, n=4)
    _tamper(path, "DROP TRIGGER reviews_no_delete", "DELETE FROM reviews WHERE id >= 3")
    check = check_file(path)
    assert not check.intact and check.first_bad_id is None  # the rows left still match
    assert check.missing_after_id == 2 and check.last_issued_id == 4
    assert "after id 2 are missing" in "\n".join(check.lines())
