"""The worklist: one row per study, most suspicious first, patient masked unless asked.

Rows come from the studies open in this session and from those saved before (ReviewStore), so
a radiologist sees both; the newest review of each study gives its status.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

from core.dicom.study import Study
from core.labels import LABELS
from core.model.checkpoint import identity_status
from core.review.pseudonym import Pseudonymizer
from core.review.store import Review, StudyRecord


@dataclass(frozen=True)
class WorklistEntry:
    study_instance_uid: str
    patient: str  # pseudonym unless the user chose to show identities
    study_date: str  # ISO date or ""
    n_slices: int
    p_any: float | None  # study-level probability of any hemorrhage; None without a model
    top_subtype: str  # subtype (not 'any') with the highest study score, or ""
    p_top_subtype: float | None
    review: str  # "not reviewed" or the latest overall call, reviewer and date
    in_session: bool  # images available now (else: saved before, upload again to view)
    #: "verified", "unverified model" (not a model this version ships) or "" (not scored).
    model: str = ""


def top_subtype(scores: Mapping[str, float] | None) -> tuple[str, float | None]:
    if not scores:
        return "", None
    name = max(LABELS[1:], key=lambda label: scores.get(label, -1.0))
    return name, scores.get(name)


def review_status(review: Review | None) -> str:
    if review is None:
        return "not reviewed"
    when = review.created_at.strftime("%Y-%m-%d %H:%M") if review.created_at else ""
    return f"{review.overall} · {review.reviewer} · {when}".strip(" ·")


def build_worklist(
    studies: Iterable[Study],
    scores: Mapping[str, Mapping[str, float]],
    saved: Iterable[StudyRecord],
    reviews: Mapping[str, Review],
    names: Pseudonymizer,
    show_identity: bool = False,
    model_status: Mapping[str, str] | None = None,
) -> list[WorklistEntry]:
    """All studies, sorted by suspicion: P(any) high to low, studies without scores last.

    ``model_status``: per study of this session, the status of the model that scored it
    (StudyPrediction.model_status); saved studies take it from the weights they were scored
    with, so an unverified model's scores are marked wherever the row goes (table, CSV).
    """
    status = model_status or {}
    entries: dict[str, WorklistEntry] = {}
    for rec in saved:
        sub, p_sub = top_subtype(rec.study_scores)
        entries[rec.study_instance_uid] = WorklistEntry(
            study_instance_uid=rec.study_instance_uid,
            patient=names.record_label(rec, show_identity),
            study_date=rec.study_date or "",
            n_slices=rec.n_slices,
            p_any=(rec.study_scores or {}).get("any"),
            top_subtype=sub,
            p_top_subtype=p_sub,
            review=review_status(reviews.get(rec.study_instance_uid)),
            in_session=False,
            model=identity_status(rec.model_identity) if rec.study_scores else "",
        )
    for study in studies:
        uid = study.study_instance_uid
        study_scores = scores.get(uid)
        sub, p_sub = top_subtype(study_scores)
        entries[uid] = WorklistEntry(
            study_instance_uid=uid,
            patient=names.study_label(study, show_identity),
            study_date=study.study_date.isoformat() if study.study_date else "",
            n_slices=study.default_series.n_slices,
            p_any=(study_scores or {}).get("any"),
            top_subtype=sub,
            p_top_subtype=p_sub,
            review=review_status(reviews.get(uid)),
            in_session=True,
            model=status.get(uid, "") if study_scores else "",
        )
    return sorted(
        entries.values(),
        key=lambda e: (e.p_any is None, -(e.p_any or 0.0), e.study_date, e.study_instance_uid),
    )


def worklist_csv(entries: Iterable[WorklistEntry]) -> str:
    """The worklist as CSV (what the user sees: patient column masked unless unmasked)."""
    out = io.StringIO()
    fields = list(WorklistEntry.__dataclass_fields__)
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for e in entries:
        writer.writerow({k: _cell(v) for k, v in asdict(e).items()})
    return out.getvalue()


#: A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> object:
    """Text that a spreadsheet would execute is prefixed with an apostrophe (OWASP's advice);
    probabilities keep 4 decimals; other numbers and text pass unchanged.

    >>> print(_cell('=HYPERLINK("http://x")'), _cell("no hemorrhage"), _cell(-0.5))
    '=HYPERLINK("http://x") no hemorrhage -0.5
    >>> _cell(0.12345678901234567), _cell(30)
    (0.1235, 30)
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    if isinstance(value, float):
        return round(value, 4)  # what the page shows and more; not a float's 17 digits
    return value
