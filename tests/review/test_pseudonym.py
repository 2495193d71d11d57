"""core.review.pseudonym: one secret per installation (a 0600 file, created once, atomically),
the old database salt carried over so pseudonyms already shown stay, and no empty salt."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from core.errors import StoreError
from core.review.pseudonym import KEY_NAME, Pseudonymizer, for_installation, installation_secret
from core.review.store import DB_NAME, ReviewStore, StudyRecord

ROOT = Path(__file__).resolve().parents[2]


def test_the_key_is_created_once_owner_only_and_stable(tmp_path) -> None:
    folder = tmp_path / "site"
    names = for_installation(folder)
    key = folder / KEY_NAME
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    secret = key.read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", secret)
    assert names.pseudonym("ID_1") == for_installation(folder).pseudonym("ID_1")
    assert key.read_text().strip() == secret  # not rewritten by the second call
    assert secret not in repr(names)
    assert [p.name for p in folder.iterdir()] == [KEY_NAME]  # no temporary file left


def test_two_installations_give_different_pseudonyms(tmp_path) -> None:
    a, b = for_installation(tmp_path / "a"), for_installation(tmp_path / "b")
    assert a.pseudonym("ID_52c1ab5a") != b.pseudonym("ID_52c1ab5a")
    assert re.fullmatch(r"Patient [0-9A-F]{6}", a.pseudonym("ID_52c1ab5a"))


def test_the_default_folder_is_the_apps_data_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ICH_REVIEW_DATA", str(tmp_path / "site"))
    assert for_installation() == for_installation(tmp_path / "site")
    assert (tmp_path / "site" / KEY_NAME).is_file()


def test_no_empty_or_short_secret_is_accepted(tmp_path) -> None:
    for weak in ("", " " * 40, "s"):
        with pytest.raises(ValueError, match="at least 32"):
            Pseudonymizer(weak)
    key = tmp_path / KEY_NAME
    key.write_text("\n")
    with pytest.raises(StoreError, match="damaged"):
        installation_secret(tmp_path)
    assert key.read_text() == "\n"  # never replaced silently: every pseudonym would change


def test_a_key_readable_by_others_is_made_owner_only(tmp_path) -> None:
    key = tmp_path / KEY_NAME
    key.write_text("ab" * 32)
    key.chmod(0o644)
    assert installation_secret(tmp_path) == "ab" * 32
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_processes_starting_together_agree_on_one_key(tmp_path) -> None:
    folder = tmp_path / "site"
    barrier = threading.Barrier(8)
    found: list[str] = []

    def start() -> None:
        barrier.wait()
        found.append(installation_secret(folder))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(found) == 8 and len(set(found)) == 1
    assert (folder / KEY_NAME).read_text().strip() == found[0]
    assert [p.name for p in folder.iterdir()] == [KEY_NAME]


def test_the_salt_an_older_version_kept_in_the_database_is_moved_into_the_key(tmp_path) -> None:
    folder = tmp_path / "site"
    folder.mkdir()
    db = folder / DB_NAME
    ReviewStore(db)
    old_salt = "0123456789abcdef" * 2
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO meta VALUES ('pseudonym_salt', ?)", (old_salt,))
    conn.close()
    # What versions before showed for this patient: sha256(salt, NUL, PatientID).
    shown_before = hashlib.sha256(f"{old_salt}\x00PID-7".encode()).hexdigest()[:6].upper()

    names = for_installation(folder)
    assert names.pseudonym("PID-7") == f"Patient {shown_before}"
    assert (folder / KEY_NAME).read_text().strip() == old_salt
    assert stat.S_IMODE((folder / KEY_NAME).stat().st_mode) == 0o600
    assert ReviewStore(db).legacy_pseudonym_salt() is None  # one source: the key file


def test_labels_for_studies_and_saved_records_agree(tmp_path) -> None:
    names = for_installation(tmp_path)
    record = StudyRecord("1.2.3", "1.2.3.4", "PID-7", "Doe^Jane", None, 30)
    assert names.record_label(record) == names.pseudonym("PID-7")
    assert names.record_label(record, show_identity=True) == "Doe Jane · PID-7"
    anonymous = StudyRecord("1.2.3", "1.2.3.4", "", "", None, 30)
    assert names.record_label(anonymous) == names.pseudonym("1.2.3")  # the study stands in
    assert names.record_label(anonymous, show_identity=True) == "(no name or ID)"


def test_a_key_that_cannot_be_created_gives_a_readable_error(tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot be created"):
        for_installation(blocker / "site")


def test_pseudonyms_are_computed_in_one_place_and_never_with_an_empty_salt() -> None:
    """Every output (CLI, dashboard, PDF, CSV) goes through core.review.pseudonym."""
    home = ROOT / "core" / "review" / "pseudonym.py"
    for folder in ("core", "dashboard"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            assert not re.search(r"salt[^\n]*=\s*\"\"", text), f"empty salt in {path}"
            if path != home:
                assert 'f"Patient {' not in text, f"a pseudonym is made in {path}"
                assert "def pseudonym(" not in text, path
