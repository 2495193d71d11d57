"""One-page PDF report of a study: key slice with and without heatmap, the six probabilities,
the estimated bleed volume, the radiologist's review, the model and its measured numbers.

Why matplotlib: it is already installed with grad-cam, writes vector text (searchable,
printable) and places images and tables on one page without a layout engine of our own.
Patient identity appears only when the user chose to show it; otherwise the pseudonym.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import matplotlib

matplotlib.use("Agg")  # no display: the report is rendered to a file, in any thread

# isort: split
import numpy as np
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from core.dicom.study import Study
from core.imaging.volume import BleedEstimate
from core.inference.predictor import Predictor, StudyPrediction
from core.labels import LABELS
from core.model.card import ModelCard
from core.model.gradcam import Heatmap
from core.model.integrity import UNVERIFIED_LABEL
from core.notice import CONFIRM
from core.notice import NOTICE as BASE_NOTICE
from core.reports.key_image import KeyImage, compose_key_image
from core.review.store import Review

#: The notice as the PDF prints it: shouted, then what it asks of the reader.
NOTICE = f"{BASE_NOTICE.upper()} {CONFIRM}"
A4 = (8.27, 11.69)  # inches


@dataclass(frozen=True)
class ReportInput:
    """What one study's report shows (what the viewer showed)."""

    study: Study
    prediction: StudyPrediction
    key_slice: int  # series index
    heatmap: Heatmap | None
    estimate: BleedEstimate | None
    reviews: Sequence[Review]
    model_name: str
    model_identity: str
    card_summary: str | None
    patient: str  # what the user chose to show: pseudonym or identity

    def key_image(self) -> KeyImage:
        """The key slice composed for the reports (core.reports.key_image)."""
        return compose_key_image(
            self.study.default_series.hu, self.key_slice, self.heatmap, self.estimate
        )


def key_slice(prediction: StudyPrediction, estimate: BleedEstimate | None = None) -> int:
    """The slice to show: the largest outlined area, else the highest P(any)."""
    if estimate is not None and max(estimate.area_mm2, default=0) > 0:
        return int(np.argmax(estimate.area_mm2))
    return int(np.argmax(np.asarray(prediction.probs)[:, 0]))


def _review_lines(reviews: Sequence[Review]) -> list[str]:
    if not reviews:
        return ["No review recorded."]
    r = reviews[-1]
    when = r.created_at.strftime("%Y-%m-%d %H:%M") if r.created_at else "not saved"
    lines = [f"Overall: {r.overall} — {r.reviewer}, {when}"]
    agree = ", ".join(f"{k}: {v}" for k, v in r.label_agreement.items() if v)
    if agree:
        lines.append(f"Per finding: {agree}")
    if r.notes:
        lines.append(f"Notes: {r.notes[:300]}")
    if len(reviews) > 1:
        lines.append(f"({len(reviews) - 1} earlier review(s) kept in the review history.)")
    return lines


def _probability_table(prediction: StudyPrediction, index: int) -> list[list[str]]:
    rows = []
    for j, label in enumerate(LABELS):
        rows.append(
            [
                label,
                f"{prediction.study_scores[label]:.3f}",
                f"{float(np.asarray(prediction.probs)[index, j]):.3f}",
            ]
        )
    return rows


def render_pdf(data: ReportInput, created: datetime | None = None) -> bytes:
    """The report as PDF bytes (one A4 page)."""
    study, series = data.study, data.study.default_series
    k = data.key_slice
    key = data.key_image()
    when = (created or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    date = study.study_date.isoformat() if study.study_date else "no date"

    fig = Figure(figsize=A4)
    fig.text(0.06, 0.965, "ICH review — study report", fontsize=17, weight="bold")
    fig.text(0.06, 0.945, NOTICE, fontsize=8.5, color="#b00020", weight="bold")
    if not data.prediction.model_verified:  # beside the title, where it cannot be missed
        fig.text(
            0.94,
            0.965,
            UNVERIFIED_LABEL.upper(),
            fontsize=13,
            color="#b00020",
            weight="bold",
            ha="right",
        )
    fig.text(
        0.06,
        0.92,
        f"Patient: {data.patient}    Study date: {date}    "
        f"{series.description or 'axial CT'}, {series.n_slices} slices",
        fontsize=9.5,
    )
    for i, (img, title) in enumerate(
        [
            (
                key.marked(),
                f"Slice {k + 1} (brain window)" + (", bleed outlined" if key.outlined else ""),
            ),
            (
                key.overlay,
                f"Slice {k + 1}, Grad-CAM '{data.heatmap.label}'" if data.heatmap else "",
            ),
        ]
    ):
        ax = fig.add_axes((0.06 + i * 0.46, 0.56, 0.42, 0.34))
        ax.set_axis_off()
        if img is not None:
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
            ax.set_title(title, fontsize=9)
        else:
            ax.text(0.5, 0.5, "no heatmap", ha="center", va="center", fontsize=9)

    ax = fig.add_axes((0.06, 0.36, 0.42, 0.17))
    ax.set_axis_off()
    table = ax.table(
        cellText=_probability_table(data.prediction, k),
        colLabels=["finding", "study", f"slice {k + 1}"],
        colWidths=[0.46, 0.27, 0.27],  # room for "intraparenchymal" at 8.5 pt
        loc="upper left",
        cellLoc="left",
    )
    table.auto_set_font_size(False)
    table.set_fontsize(8.5)
    method = data.prediction.study_method

    right = [f"Study score ('any'): {method}."]
    if data.estimate is not None:
        e = data.estimate
        right += [
            f"Estimated bleed volume: {e.volume_ml:.1f} mL (voxel count)",
            f"ABC/2: {e.abc2_ml:.1f} mL, on {e.scope}.",
            e.notice,
        ]
    else:
        right.append("Bleed volume: not estimated.")
    fig.text(0.52, 0.52, "\n".join(right), fontsize=8.5, va="top", wrap=True)

    fig.text(0.06, 0.32, "Radiologist's review", fontsize=11, weight="bold")
    fig.text(0.06, 0.305, "\n".join(_review_lines(data.reviews)), fontsize=8.5, va="top", wrap=True)
    fig.text(0.06, 0.20, "Model", fontsize=11, weight="bold")
    model_lines = [f"{data.model_name} ({data.model_identity}) — {data.prediction.model_status}"]
    summary = data.card_summary or "Its card records no cross-validated performance."
    if not data.prediction.model_verified:
        summary = "Not a model shipped with ICH review; " + (
            f"its card, which nobody has verified, says: {data.card_summary}"
            if data.card_summary
            else "its card records no cross-validated performance."
        )
    model_lines.append(summary)
    fig.text(0.06, 0.185, "\n".join(model_lines), fontsize=8.5, va="top", wrap=True)
    fig.text(
        0.06,
        0.03,
        f"Generated {when} by ICH review. StudyInstanceUID {study.study_instance_uid}. {NOTICE}",
        fontsize=6.5,
        color="#555555",
        wrap=True,
    )
    buf = io.BytesIO()
    with PdfPages(
        buf, metadata={"Title": "ICH review — study report", "Creator": "ICH review"}
    ) as pdf:
        pdf.savefig(fig)
    return buf.getvalue()


def report_input(
    study: Study,
    prediction: StudyPrediction,
    predictor: Predictor | None,
    estimate: BleedEstimate | None,
    reviews: Sequence[Review],
    patient: str,
    label: str = "any",
    card: ModelCard | None = None,
) -> ReportInput:
    """Gather a report's contents with the engine (the key slice's Grad-CAM included)."""
    k = key_slice(prediction, estimate)
    heat = predictor.explain(study.default_series, k, label) if predictor is not None else None
    if card is None:
        card = predictor.loaded.card if predictor is not None else ModelCard()
    return ReportInput(
        study=study,
        prediction=prediction,
        key_slice=k,
        heatmap=heat,
        estimate=estimate,
        reviews=reviews,
        model_name=card.name or "model",
        model_identity=prediction.weights_identity,
        card_summary=card.summary,
        patient=patient,
    )
