"""``python -m core.verify_reviews [--db PATH]``: is the review history as it was saved?

Recomputes the hash chain of every saved review (core.review.audit) from the database file,
read-only, and names the first review that no longer matches by its id and saved time (never
the study, the reviewer or the notes). For IT and auditors: run it on the live file or on a
backup; write down the chain head it prints to compare later.

Exit codes: 0 intact; 1 the history was altered (a changed, removed or inserted review, or the
append-only protection dropped); 2 the file cannot be checked (missing, not a review
database, or from a version before the chain: open it once with the app to add it).
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path

from core.review.audit import NotChained, check_file
from core.review.store import DB_NAME, data_dir

EXIT_INTACT = 0
EXIT_BROKEN = 1
EXIT_UNCHECKED = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m core.verify_reviews",
        description="Check that no saved review was changed, removed or inserted afterwards.",
    )
    parser.add_argument(
        "--db",
        type=Path,
        help=f"the review database (default: {DB_NAME} in the app's data folder)",
    )
    args = parser.parse_args(argv)
    path: Path = args.db if args.db is not None else data_dir(create=False) / DB_NAME
    if not path.is_file():
        print(f"error: no review database at {path}", file=sys.stderr)
        return EXIT_UNCHECKED
    try:
        check = check_file(path)
    except NotChained:
        print(
            f"error: {path} was written by a version without the review hash chain; open it "
            "once with the app (it adds the chain without changing any review), then run this "
            "again.",
            file=sys.stderr,
        )
        return EXIT_UNCHECKED
    except sqlite3.DatabaseError as exc:
        print(f"error: {path} cannot be read as a review database ({exc})", file=sys.stderr)
        return EXIT_UNCHECKED
    print(f"Review database: {path}")
    print("\n".join(check.lines()))
    return EXIT_INTACT if check.intact else EXIT_BROKEN


if __name__ == "__main__":
    sys.exit(main())
