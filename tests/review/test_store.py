"""core.review.store: reviews survive restarts, history is append-only, bad databases say so."""

from __future__ import annotations

import sqlite3

import pytest

from core.review.store import Review, ReviewStore, StoreError, StudyRecord, data_dir


def _review(**kw) -> Review:
    base = dict(
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.4",
        reviewer="Dr A",
        overall="hemorrhage",
        label_agreement={"any": "agree", "subdural": "disagree"},
        notes="small left SDH",
        model_identity="demo@abc",
        study_scores={"any": 0.9},
    )
    base.update(kw)
    return Review(**base)


def test_review_saved_and_read_back_after_restart(tmp_path) -> None:
    path = tmp_path / "reviews.sqlite3"
    saved = ReviewStore(path).add_review(_review())
    assert saved.review_id == 1 and saved.created_at is not None
    reopened = ReviewStore(path)  # a new process would do exactly this
    latest = reopened.latest("1.2.3")
    assert latest is not None
    assert latest.notes == "small left SDH" and latest.overall == "hemorrhage"
    assert latest.label_agreement["subdural"] == "disagree"
    assert latest.label_agreement["epidural"] is None  # every label present, in order
    assert list(latest.label_agreement) == [
        "any",
        "epidural",
        "intraparenchymal",
        "intraventricular",
        "subarachnoid",
        "subdural",
    ]
    assert latest.model_identity == "demo@abc" and latest.study_scores == {"any": 0.9}
    assert latest.created_at == saved.created_at


def test_a_later_review_appends_and_history_is_kept(tmp_path) -> None:
    store = ReviewStore(tmp_path / "r.sqlite3")
    store.add_review(_review())
    store.add_review(_review(reviewer="Dr B", overall="no hemorrhage", notes="artefact"))
    history = store.history("1.2.3")
    assert [r.reviewer for r in history] == ["Dr A", "Dr B"]
    assert store.latest("1.2.3").overall == "no hemorrhage"  # type: ignore[union-attr]
    assert set(store.latest_by_study()) == {"1.2.3"}
    assert store.latest("9.9") is None


def test_reviews_cannot_be_updated_or_deleted_even_with_sql(tmp_path) -> None:
    path = tmp_path / "r.sqlite3"
    ReviewStore(path).add_review(_review())
    with sqlite3.connect(path) as conn:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE reviews SET overall = 'uncertain'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM reviews")
    assert ReviewStore(path).latest("1.2.3").overall == "hemorrhage"  # type: ignore[union-attr]


def test_saved_worklist_entries_round_trip_and_refresh(tmp_path) -> None:
    store = ReviewStore(tmp_path / "r.sqlite3")
    rec = StudyRecord("1.2.3", "1.2.3.4", "PID", "Doe^Jane", "2019-01-02", 32, "m@1", {"any": 0.2})
    store.save_study(rec)
    store.save_study(StudyRecord("1.2.3", "1.2.3.4", "PID", "Doe^Jane", "2019-01-02", 32, "m@2"))
    [back] = store.studies()
    assert back.model_identity == "m@2" and back.n_slices == 32 and back.patient_name == "Doe^Jane"
    assert "Doe" not in repr(back)


def test_invalid_reviews_are_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="overall call"):
        _review(overall="maybe")
    with pytest.raises(ValueError, match="unknown labels"):
        _review(label_agreement={"stroke": "agree"})
    with pytest.raises(ValueError, match="reviewer"):
        _review(reviewer="  ")


def test_a_damaged_database_gives_a_readable_error(tmp_path) -> None:
    path = tmp_path / "r.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot be used"):
        ReviewStore(path)


def test_newer_schema_is_refused(tmp_path) -> None:
    path = tmp_path / "r.sqlite3"
    ReviewStore(path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="newer version"):
        ReviewStore(path)


def test_data_dir_follows_the_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ICH_REVIEW_DATA", str(tmp_path / "site"))
    assert data_dir() == tmp_path / "site" and (tmp_path / "site").is_dir()
    assert ReviewStore().path == tmp_path / "site" / "reviews.sqlite3"


def test_pseudonym_salt_is_per_installation_and_stable(tmp_path) -> None:
    a = ReviewStore(tmp_path / "a.sqlite3")
    assert len(a.salt) == 32
    assert ReviewStore(tmp_path / "a.sqlite3").salt == a.salt
    assert ReviewStore(tmp_path / "b.sqlite3").salt != a.salt
