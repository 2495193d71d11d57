"""One study's report as plain data (JSON): findings, the model that made them, the reviews.

Patient identity is included only when the user chose to show it; otherwise the pseudonym.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict

from core.dicom.study import Study
from core.inference.predictor import StudyPrediction
from core.labels import LABELS
from core.notice import NOTICE
from core.review.pseudonym import Pseudonymizer
from core.review.store import Review


def study_report(
    study: Study,
    prediction: StudyPrediction | None,
    reviews: Sequence[Review],
    names: Pseudonymizer,
    show_identity: bool = False,
) -> dict[str, object]:
    series = study.default_series
    report: dict[str, object] = {
        "report_id": hashlib.sha256(study.study_instance_uid.encode()).hexdigest()[:12],
        "notice": NOTICE,
        "StudyInstanceUID": study.study_instance_uid,
        "SeriesInstanceUID": series.series_instance_uid,
        "patient": names.study_label(study, show_identity),
        "StudyDate": study.study_date.isoformat() if study.study_date else None,
        "NumberOfSlices": series.n_slices,
        "warnings": list(study.warnings + series.warnings),
        "labels": list(LABELS),
    }
    if show_identity:
        report["PatientID"] = study.patient_id
        report["PatientName"] = study.patient_name
    if prediction is None:
        report["model"] = None
        report["study_probabilities"] = None
    else:
        report["model"] = prediction.weights_identity
        report["model_status"] = prediction.model_status
        report["study_probabilities"] = {
            k: round(float(prediction.study_scores[k]), 6) for k in LABELS
        }
        report["study_score"] = prediction.study_method
        report.update(prediction.peak_slices_json())
        report["slices"] = [
            {
                "index": s.index,
                "SOPInstanceUID": s.sop_instance_uid,
                "z": round(s.z, 3),
                "probabilities": {k: round(float(p), 6) for k, p in zip(LABELS, row, strict=True)},
            }
            for s, row in zip(series.slices, prediction.probs.tolist(), strict=True)
        ]
    report["reviews"] = [
        {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in asdict(r).items()}
        for r in reviews
    ]
    return report
