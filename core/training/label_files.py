"""The one reader of reference label files: the RSNA challenge CSV
(``ID_<sop>_<subtype>,Label``, as ``stage_2_train.csv``) and the wide CSV (``image_id`` plus one
column per label, as ``rsna_dev_labels.csv``). Training, evaluation and calibration all read
labels here, so a file is accepted or refused the same way wherever it is given.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from core.errors import InputError
from core.labels import LABELS


@dataclass(frozen=True)
class LabelSet:
    """Reference labels by SOPInstanceUID (image id ``ID_<sop>``) in LABELS order."""

    labels: dict[str, tuple[int, ...]]
    studies: dict[str, str]  # sop -> StudyInstanceUID; empty for the challenge format
    format: str


def _label_value(text: str, where: str) -> int:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if value not in (0.0, 1.0):
        raise InputError(f"{where}: label {text!r} is not 0 or 1")
    return int(value)


def _open_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not a CSV file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot be read as a CSV file ({exc})") from None
    if not rows:
        raise InputError(f"{path}: the file is empty")
    return [c.strip() for c in rows[0]], rows[1:]


def _detect_format(header: list[str]) -> str | None:
    if header[:2] == ["ID", "Label"]:
        return "challenge"
    if "image_id" in header and all(label in header for label in LABELS):
        return "wide"
    return None


def read_labels(path: str | Path, fmt: str = "auto") -> LabelSet:
    """Labels from the challenge CSV (``ID_<sop>_<subtype>,Label``) or the wide CSV
    (``image_id, StudyInstanceUID, ..., any, epidural, ...``); ``fmt='auto'`` reads the header.

    Identical duplicate rows are accepted (the full challenge file has some); conflicting
    duplicates, unknown subtypes, values other than 0/1 and an image missing any of the six
    labels are errors, since a silently guessed label would bias every figure.
    """
    path = Path(path)
    header, rows = _open_csv(path)
    found = _detect_format(header)
    if fmt == "auto":
        if found is None:
            raise InputError(
                f"{path}: unknown label format; expected the header 'ID,Label' (challenge) or "
                f"'image_id' with the columns {', '.join(LABELS)} (wide)"
            )
        fmt = found
    elif found != fmt:
        raise InputError(f"{path}: the header {header[:4]}… is not the {fmt} label format")

    labels: dict[str, tuple[int, ...]] = {}
    studies: dict[str, str] = {}
    if fmt == "challenge":
        values: dict[str, dict[str, int]] = {}
        for line, row in enumerate(rows, start=2):
            if not row or not "".join(row).strip():
                continue
            where = f"{path.name} line {line}"
            if len(row) < 2:
                raise InputError(f"{where}: expected 'ID_<sop>_<subtype>,Label'")
            sop, _, subtype = row[0].strip().rpartition("_")
            if not sop or subtype not in LABELS:
                raise InputError(f"{where}: {row[0]!r} does not end in one of {', '.join(LABELS)}")
            value = _label_value(row[1].strip(), where)
            seen = values.setdefault(sop, {})
            if seen.get(subtype, value) != value:
                raise InputError(f"{where}: {row[0]} appears twice with different labels")
            seen[subtype] = value
        incomplete = {sop: [x for x in LABELS if x not in v] for sop, v in values.items()}
        incomplete = {sop: missing for sop, missing in incomplete.items() if missing}
        if incomplete:
            sop, missing = next(iter(incomplete.items()))
            raise InputError(
                f"{path}: {len(incomplete)} image(s) lack some of the six labels, e.g. {sop} "
                f"has no {', '.join(missing)}"
            )
        labels = {sop: tuple(v[x] for x in LABELS) for sop, v in values.items()}
    else:
        col = {name: i for i, name in enumerate(header)}
        study_col = col.get("StudyInstanceUID")
        for line, row in enumerate(rows, start=2):
            if not row or not "".join(row).strip():
                continue
            where = f"{path.name} line {line}"
            if len(row) < len(header):
                raise InputError(f"{where}: {len(row)} fields, the header has {len(header)}")
            sop = row[col["image_id"]].strip()
            parsed = tuple(_label_value(row[col[x]].strip(), where) for x in LABELS)
            if labels.get(sop, parsed) != parsed:
                raise InputError(f"{where}: {sop} appears twice with different labels")
            labels[sop] = parsed
            if study_col is not None:
                studies[sop] = row[study_col].strip()
    if not labels:
        raise InputError(f"{path}: no labels in the file")
    return LabelSet(labels, studies, fmt)
