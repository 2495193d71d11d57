"""core.review.worklist: ordering by suspicion, masking, saved studies, CSV export."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

from core.dicom.study import load_studies
from core.review.pseudonym import Pseudonymizer
from core.review.store import Review, StudyRecord
from core.review.worklist import build_worklist, top_subtype, worklist_csv

NAMES = Pseudonymizer("s" * 32)


def test_sorted_by_suspicion_with_unscored_last_and_identity_masked(study_zips) -> None:
    studies = [load_studies(p)[0] for p in study_zips[:3]]
    a, b, c = (s.study_instance_uid for s in studies)
    scores = {a: {"any": 0.2, "subdural": 0.1}, b: {"any": 0.9, "subarachnoid": 0.7}}
    saved = [StudyRecord("old", "old.1", "PID9", "Doe^Jane", "2019-01-01", 30, "m", {"any": 0.5})]
    review = Review(
        "old", "old.1", "Dr A", "uncertain", created_at=datetime(2026, 1, 2, tzinfo=UTC)
    )
    rows = build_worklist(studies, scores, saved, {"old": review}, NAMES)
    assert [r.study_instance_uid for r in rows] == [b, "old", a, c]
    assert rows[0].top_subtype == "subarachnoid" and rows[0].p_top_subtype == 0.7
    assert rows[-1].p_any is None and rows[-1].top_subtype == ""
    assert rows[1].review.startswith("uncertain · Dr A · 2026-01-02") and not rows[1].in_session
    assert all(r.patient.startswith("Patient ") for r in rows)
    assert rows[1].patient == NAMES.pseudonym("PID9")
    text = worklist_csv(rows)
    assert "PID9" not in text and "Doe" not in text
    for study in studies:
        assert study.patient_id not in text
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert [p["study_instance_uid"] for p in parsed] == [b, "old", a, c]
    shown = build_worklist(studies, scores, saved, {}, NAMES, show_identity=True)
    assert any(r.patient == "Doe Jane · PID9" for r in shown)


def test_top_subtype_ignores_any() -> None:
    assert top_subtype({"any": 0.99, "epidural": 0.1, "subdural": 0.3}) == ("subdural", 0.3)
    assert top_subtype(None) == ("", None)


def test_csv_cells_a_spreadsheet_would_run_are_neutralised() -> None:
    saved = [
        StudyRecord(
            "s1", "s1.1", "@SUM(A1)", "=cmd|' /C calc'!A0", "2019-01-01", 30, "m", {"any": 0.4}
        )
    ]
    rows = build_worklist([], {}, saved, {}, NAMES, show_identity=True)
    (parsed,) = list(csv.DictReader(io.StringIO(worklist_csv(rows))))
    assert parsed["patient"].startswith("'=cmd")  # shown as text, never run
    assert not any(v.startswith(("=", "+", "-", "@")) for v in parsed.values())
    assert float(parsed["p_any"]) == 0.4
    long = [StudyRecord("s2", "s2.1", "P", "N", None, 3, "m", {"any": 0.123456789012345})]
    (row,) = csv.DictReader(io.StringIO(worklist_csv(build_worklist([], {}, long, {}, NAMES))))
    assert row["p_any"] == "0.1235"  # 4 decimals, not a float's 17 digits


def test_scores_of_an_unverified_model_are_marked_in_the_rows_and_the_csv(study_zips) -> None:
    from core.model.checkpoint import weights_identity
    from core.model.manifest import SHIPPED

    shipped = weights_identity(SHIPPED[0].name, SHIPPED[0].weights_sha256)
    saved = [
        StudyRecord("a", "a.1", "P1", "A^B", "2019-01-01", 30, shipped, {"any": 0.4}),
        StudyRecord("b", "b.1", "P2", "C^D", "2019-01-01", 30, "mine@0123456789ab", {"any": 0.3}),
        StudyRecord("c", "c.1", "P3", "E^F", "2019-01-01", 30, None, None),
    ]
    (study,) = load_studies(study_zips[0])
    uid = study.study_instance_uid
    rows = build_worklist(
        [study], {uid: {"any": 0.9}}, saved, {}, NAMES, model_status={uid: "unverified model"}
    )
    assert [(r.study_instance_uid, r.model) for r in rows] == [
        (uid, "unverified model"),
        ("a", "verified"),
        ("b", "unverified model"),
        ("c", ""),
    ]
    parsed = list(csv.DictReader(io.StringIO(worklist_csv(rows))))
    assert [p["model"] for p in parsed] == ["unverified model", "verified", "unverified model", ""]
