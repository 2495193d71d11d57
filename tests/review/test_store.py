"""core.review.store: reviews survive restarts, history is append-only (no UPDATE, DELETE or
reused id), every save extends one hash chain even when saves race, old files are migrated
without losing a review, bad databases and data folders say so."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from core.errors import ICHError
from core.review.audit import check_file
from core.review.store import Review, ReviewStore, StoreError, StudyRecord, data_dir

ROOT = Path(__file__).resolve().parents[2]


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


def test_replace_with_an_existing_id_is_refused(tmp_path) -> None:
    path = tmp_path / "r.sqlite3"
    ReviewStore(path).add_review(_review())
    with sqlite3.connect(path) as conn:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(
                "INSERT OR REPLACE INTO reviews (id, study_instance_uid, series_instance_uid, "
                "reviewer, created_at, overall, label_agreement, notes) "
                "VALUES (1, '1.2.3', '1.2.3.4', 'Mallory', '2020-01-01', 'uncertain', '{}', '')"
            )
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(
                "REPLACE INTO reviews (id, study_instance_uid, series_instance_uid, reviewer, "
                "created_at, overall, label_agreement, notes) "
                "VALUES (1, 'x', 'y', 'Mallory', '2020-01-01', 'uncertain', '{}', '')"
            )
    [kept] = ReviewStore(path).history("1.2.3")
    assert kept.reviewer == "Dr A" and kept.overall == "hemorrhage"
    assert check_file(path).intact


def test_a_dropped_trigger_comes_back_when_the_store_opens(tmp_path) -> None:
    path = tmp_path / "r.sqlite3"
    ReviewStore(path).add_review(_review())
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TRIGGER reviews_no_reuse")
        conn.execute("DROP TRIGGER reviews_no_delete")
    assert check_file(path).missing_triggers == ("reviews_no_delete", "reviews_no_reuse")
    ReviewStore(path)
    assert check_file(path).missing_triggers == ()
    with sqlite3.connect(path) as conn, pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM reviews")


def test_every_saved_review_extends_the_chain(tmp_path) -> None:
    path = tmp_path / "r.sqlite3"
    store = ReviewStore(path)
    assert check_file(path).n_reviews == 0 and check_file(path).intact
    ids = [store.add_review(_review(notes=f"read {i}")).review_id for i in range(4)]
    assert ids == [1, 2, 3, 4]
    check = check_file(path)
    assert check.intact and check.n_reviews == 4
    with sqlite3.connect(path) as conn:
        hashes = [r[0] for r in conn.execute("SELECT row_hash FROM reviews ORDER BY id")]
    assert len(set(hashes)) == 4 and all(len(h) == 64 for h in hashes)
    assert check.head == hashes[-1]


_WORKER = """
import sys
from core.review.store import Review, ReviewStore
store = ReviewStore(sys.argv[1])
for i in range(int(sys.argv[3])):
    store.add_review(Review("1.2.3", "1.2.3.4", sys.argv[2], "uncertain", notes=str(i)))
"""


def test_concurrent_saves_from_threads_and_processes_keep_one_valid_chain(tmp_path) -> None:
    path = tmp_path / "r.sqlite3"
    store = ReviewStore(path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(path), f"proc {k}", "15"], env=env)
        for k in range(3)
    ]
    errors: list[BaseException] = []

    def save(k: int) -> None:
        try:
            for i in range(15):
                store.add_review(_review(reviewer=f"thread {k}", notes=str(i)))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    assert not errors
    history = store.history("1.2.3")
    assert len(history) == 7 * 15
    assert [r.review_id for r in history] == list(range(1, 7 * 15 + 1))
    check = check_file(path)
    assert check.intact and check.n_reviews == 7 * 15


#: The schema as version 1 wrote it (no row_hash, no no-reuse trigger, salt in meta).
_SCHEMA_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE studies (study_instance_uid TEXT PRIMARY KEY, series_instance_uid TEXT NOT NULL,
    patient_id TEXT NOT NULL, patient_name TEXT NOT NULL, study_date TEXT,
    n_slices INTEGER NOT NULL, model_identity TEXT, study_scores TEXT, updated_at TEXT NOT NULL);
CREATE TABLE reviews (id INTEGER PRIMARY KEY AUTOINCREMENT, study_instance_uid TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL, reviewer TEXT NOT NULL, created_at TEXT NOT NULL,
    overall TEXT NOT NULL, label_agreement TEXT NOT NULL, notes TEXT NOT NULL,
    model_identity TEXT, study_scores TEXT);
CREATE INDEX reviews_by_study ON reviews (study_instance_uid, id);
CREATE TRIGGER reviews_no_update BEFORE UPDATE ON reviews
    BEGIN SELECT RAISE(ABORT, 'reviews are append-only'); END;
CREATE TRIGGER reviews_no_delete BEFORE DELETE ON reviews
    BEGIN SELECT RAISE(ABORT, 'reviews are append-only'); END;
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO meta VALUES ('pseudonym_salt', '0123456789abcdef0123456789abcdef');
"""


def write_v1_database(path: Path, n: int = 5) -> list[tuple]:
    """A review database as version 1 left it; returns its review rows."""
    rows = [
        (
            i,
            f"1.2.{i % 2}",
            f"1.2.{i % 2}.1",
            f"Dr {i}",
            f"2025-0{i}-01T10:00:00+00:00",
            ("hemorrhage", "no hemorrhage", "uncertain")[i % 3],
            json.dumps({"any": "agree" if i % 2 else None}),
            f"note {i} ünïcode",
            "m@1" if i != 3 else None,
            json.dumps({"any": i / 10}) if i != 2 else None,
        )
        for i in range(1, n + 1)
    ]
    with sqlite3.connect(path) as conn:
        conn.executescript(_SCHEMA_V1)
        conn.executemany("INSERT INTO reviews VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        conn.execute(
            "INSERT INTO studies VALUES ('1.2.1', '1.2.1.1', 'PID', 'Doe^J', NULL, 30, NULL, "
            "NULL, '2025-01-01')"
        )
    conn.close()
    return rows


def test_an_old_database_is_migrated_and_keeps_every_review(tmp_path) -> None:
    path = tmp_path / "r.sqlite3"
    rows = write_v1_database(path)
    store = ReviewStore(path)
    with sqlite3.connect(path) as conn:
        after = conn.execute(
            "SELECT id, study_instance_uid, series_instance_uid, reviewer, created_at, overall, "
            "label_agreement, notes, model_identity, study_scores FROM reviews ORDER BY id"
        ).fetchall()
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    conn.close()
    assert after == rows  # every field of every review, unchanged
    assert version == ("2",)
    assert [r.review_id for r in store.history("1.2.1")] == [1, 3, 5]
    assert store.latest("1.2.0").notes == "note 4 ünïcode"  # type: ignore[union-attr]
    assert len(store.studies()) == 1
    check = check_file(path)
    assert check.intact and check.n_reviews == 5
    # the chain goes on from the migrated rows; the old file's triggers still hold
    assert store.add_review(_review()).review_id == 6
    head = check_file(path).head
    assert check_file(path).intact and check_file(path).n_reviews == 6
    ReviewStore(path)  # opening again changes nothing
    assert check_file(path).head == head and check_file(path).intact


def test_a_failed_migration_leaves_the_old_file_as_it_was(tmp_path, monkeypatch) -> None:
    path = tmp_path / "r.sqlite3"
    rows = write_v1_database(path, n=3)

    def broken(*_args: object) -> str:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr("core.review.store.row_hash", broken)
    with pytest.raises(StoreError, match="cannot be used"):
        ReviewStore(path)
    with sqlite3.connect(path) as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(reviews)")]
        kept = conn.execute("SELECT * FROM reviews ORDER BY id").fetchall()
        triggers = {
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'")
        }
    conn.close()
    assert "row_hash" not in columns and kept == rows  # rolled back as one transaction
    assert triggers == {"reviews_no_update", "reviews_no_delete"}


def test_a_data_folder_that_cannot_be_created_gives_a_readable_error(tmp_path, monkeypatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("ICH_REVIEW_DATA", str(blocker / "data"))
    with pytest.raises(StoreError, match="data folder .* cannot be created") as caught:
        data_dir()
    assert isinstance(caught.value, ICHError) and "ICH_REVIEW_DATA" in str(caught.value)
    with pytest.raises(StoreError, match="cannot be created"):
        ReviewStore(blocker / "data" / "reviews.sqlite3")
    assert data_dir(create=False) == blocker / "data"  # naming it never fails
