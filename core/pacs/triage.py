"""Score one study and say what was found: the step the PACS watcher repeats for every new
study and the dashboard's PACS panel runs for the one a radiologist opens.

Why one module: the watcher and the dashboard must give the same numbers, write the same
worklist row and send the same DICOM objects (SR + Secondary Capture) for a study; keeping the
step here means there is one way to do it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pydicom

from core.dicom.study import Study
from core.imaging.volume import BleedEstimate
from core.inference.predictor import Predictor, StudyPrediction
from core.reports.pdf import report_input
from core.reports.secondary_capture import secondary_capture
from core.reports.structured_report import structured_report
from core.review.pseudonym import Pseudonymizer
from core.review.store import ReviewStore, StudyRecord


@dataclass(frozen=True)
class TriageResult:
    """What scoring one study gave (no patient data: the study is named by its UID)."""

    study_instance_uid: str
    series_instance_uid: str
    weights_identity: str
    n_slices: int
    study_scores: dict[str, float]
    threshold: float | None  # the card's operating threshold for P(any)
    volume_ml: float | None
    seconds: float

    @property
    def p_any(self) -> float:
        return self.study_scores["any"]

    @property
    def positive(self) -> bool | None:
        """P(any) at or above the operating threshold; None when the card has none."""
        return None if self.threshold is None else self.p_any >= self.threshold

    def summary(self) -> str:
        """One line for logs: numbers only, no patient data."""
        if self.positive is None:
            call = "no operating threshold"
        else:
            sign = "≥" if self.positive else "<"
            call = f"{sign} {self.threshold:.2f} → {'FLAGGED' if self.positive else 'not flagged'}"
        volume = f", bleed ≈ {self.volume_ml:.1f} mL" if self.volume_ml is not None else ""
        return (
            f"{self.n_slices} slices, P(any) {self.p_any:.2f} {call}{volume}, {self.seconds:.1f} s"
        )


@dataclass(frozen=True, eq=False)
class Scored:
    """A scored study with what the result objects are built from."""

    study: Study
    prediction: StudyPrediction
    estimate: BleedEstimate | None
    result: TriageResult


def score(study: Study, predictor: Predictor) -> Scored:
    """Probabilities of the default series and, where it is worth its cost, the bleed estimate.

    A model with the segmentation head gives the bleed map in the same pass, so the estimate
    is always made. Without one, the fallback runs Grad-CAM on up to 24 slices (tens of
    seconds on a CPU): a watcher working through a queue makes it only for studies flagged at
    the card's operating threshold, where the volume matters.
    """
    start = time.perf_counter()
    prediction = predictor.predict(study)
    series = study.series_by_uid(prediction.series_instance_uid)
    threshold = predictor.study_threshold
    flagged = threshold is not None and prediction.study_scores["any"] >= threshold
    estimate = (
        predictor.localise(series, prediction) if predictor.has_bleed_map or flagged else None
    )
    result = TriageResult(
        study_instance_uid=study.study_instance_uid,
        series_instance_uid=prediction.series_instance_uid,
        weights_identity=predictor.weights_identity,
        n_slices=series.n_slices,
        study_scores=dict(prediction.study_scores),
        threshold=threshold,
        volume_ml=float(estimate.volume_ml) if estimate is not None else None,
        seconds=time.perf_counter() - start,
    )
    return Scored(study, prediction, estimate, result)


def save_to_worklist(store: ReviewStore, scored: Scored) -> None:
    """The study's row in the saved worklist, as an upload's is saved."""
    study = scored.study
    store.save_study(
        StudyRecord(
            study_instance_uid=study.study_instance_uid,
            series_instance_uid=scored.result.series_instance_uid,
            patient_id=study.patient_id,
            patient_name=study.patient_name,
            study_date=study.study_date.isoformat() if study.study_date else None,
            n_slices=scored.result.n_slices,
            model_identity=scored.result.weights_identity,
            study_scores=scored.result.study_scores,
        )
    )


def result_objects(
    scored: Scored, predictor: Predictor, names: Pseudonymizer
) -> list[pydicom.Dataset]:
    """The Comprehensive SR and the Secondary Capture of the study, ready to store."""
    card = predictor.loaded.card
    sr = structured_report(
        scored.study,
        scored.prediction,
        scored.estimate,
        threshold=predictor.study_threshold,
        model_name=card.name or "model",
        model_version=predictor.weights_identity,
    )
    data = report_input(
        scored.study,
        scored.prediction,
        predictor,
        scored.estimate,
        reviews=[],
        patient=names.study_label(scored.study),
    )
    return [sr, secondary_capture(data)]
