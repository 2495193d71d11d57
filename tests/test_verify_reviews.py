"""``python -m core.verify_reviews``: exit codes and what the person at the terminal reads."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from core.review.store import DB_NAME, Review, ReviewStore, data_dir
from core.verify_reviews import EXIT_BROKEN, EXIT_INTACT, EXIT_UNCHECKED, main

ROOT = Path(__file__).resolve().parents[1]


def _store(path: Path) -> list[Review]:
    store = ReviewStore(path)
    return [
        store.add_review(Review("1.2.9", "1.2.9.1", "Dr Who", "uncertain", notes=f"PID-{i}"))
        for i in range(3)
    ]


def test_intact_then_tampered_through_the_raw_file(tmp_path, capsys) -> None:
    path = tmp_path / DB_NAME
    saved = _store(path)
    assert main(["--db", str(path)]) == EXIT_INTACT
    out = capsys.readouterr().out
    assert "Review history intact: 3 review(s)" in out and "Chain head: " in out

    conn = sqlite3.connect(path)
    with conn:
        conn.execute("DROP TRIGGER reviews_no_update")
        conn.execute("UPDATE reviews SET notes = 'nothing seen' WHERE id = 2")
    conn.close()
    result = subprocess.run(
        [sys.executable, "-m", "core.verify_reviews", "--db", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == EXIT_BROKEN
    when = saved[1].created_at.isoformat()  # type: ignore[union-attr]
    assert f"First bad review: id 2, saved {when}" in result.stdout
    assert "Traceback" not in result.stderr
    for private in ("PID-", "Dr Who", "1.2.9", "nothing seen"):
        assert private not in result.stdout + result.stderr


def test_default_database_is_the_apps_data_folder(capsys) -> None:
    _store(data_dir() / DB_NAME)  # ICH_REVIEW_DATA: the test's own folder (conftest)
    assert main([]) == EXIT_INTACT
    assert str(data_dir() / DB_NAME) in capsys.readouterr().out


def test_a_missing_or_unchained_file_cannot_be_checked(tmp_path, capsys) -> None:
    assert main(["--db", str(tmp_path / "none.sqlite3")]) == EXIT_UNCHECKED
    assert "no review database" in capsys.readouterr().err
    assert not (tmp_path / "none.sqlite3").exists()  # checking creates nothing

    old = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(old)
    with conn:
        conn.execute("CREATE TABLE reviews (id INTEGER PRIMARY KEY, notes TEXT)")
    conn.close()
    assert main(["--db", str(old)]) == EXIT_UNCHECKED
    assert "open it once with the app" in capsys.readouterr().err

    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"not a database" * 100)
    assert main(["--db", str(junk)]) == EXIT_UNCHECKED
    assert "cannot be read as a review database" in capsys.readouterr().err
