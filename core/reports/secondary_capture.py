"""A DICOM object a PACS can store: a Secondary Capture of the key slice with the heatmap and
the bleed outline burned in, filed in the original study, with the findings as text.

Why a Secondary Capture (built with highdicom): every PACS stores and displays it beside the
source series, whereas structured reports (TID 1500) are shown by few viewers. The object goes
into the patient's record, so it carries the source study's patient and study attributes (the
PACS files it by them); it is a new series, never a change to the source images. The findings
text says plainly that it comes from a research tool.
"""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pydicom

from core.dicom.uids import valid_uid
from core.labels import LABELS
from core.model.integrity import UNVERIFIED_LABEL
from core.reports.pdf import ReportInput

SERIES_DESCRIPTION = "ICH review (research use) key image"
MANUFACTURER = "ICH review (research software, not a medical device)"
#: Series number for derived objects, far from scanner series numbers.
SERIES_NUMBER = 9901


def _findings_text(data: ReportInput) -> str:
    p = data.prediction
    probs = ", ".join(f"{k} {p.study_scores[k]:.2f}" for k in LABELS)
    model = data.model_name
    if not p.model_verified:
        model += f" ({UNVERIFIED_LABEL})"
    text = f"RESEARCH USE ONLY. Model {model}: study probabilities {probs}."
    if data.estimate is not None:
        text += (
            f" Estimated bleed volume {data.estimate.volume_ml:.1f} mL "
            f"(ABC/2 {data.estimate.abc2_ml:.1f} mL), an estimate."
        )
    if data.reviews:
        r = data.reviews[-1]
        text += f" Review: {r.overall} ({r.reviewer})."
    return text[:10240]  # LT: at most 10240 characters


def key_image(data: ReportInput) -> np.ndarray:
    """The key slice (brain window) with heatmap and outline, RGB uint8."""
    return data.key_image().composite()


def secondary_capture(data: ReportInput) -> pydicom.Dataset:
    """The Secondary Capture dataset (validated by highdicom's constructor)."""
    study = data.study
    series = study.default_series
    spacing = series.pixel_spacing
    sc = hd.sc.SCImage(
        pixel_array=key_image(data),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        study_instance_uid=valid_uid(study.study_instance_uid),
        series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_id=study.patient_id or None,
        patient_name=study.patient_name or None,
        accession_number=study.accession_number or None,
        study_date=study.study_date,
        pixel_spacing=(float(spacing[0]), float(spacing[1])) if spacing else None,
        patient_orientation=("L", "P"),
    )
    sc.SeriesDescription = SERIES_DESCRIPTION
    sc.ImageComments = _findings_text(data)
    # A head is not a paired organ: naming it settles General Series' Type 2C Laterality,
    # which dciodvfy otherwise reports missing.
    sc.BodyPartExamined = "HEAD"
    sc.BurnedInAnnotation = "NO"  # colours only, no text in the pixels
    sc.DerivationDescription = (
        f"Slice {data.key_slice + 1} of series {series.series_instance_uid}, brain window, "
        "Grad-CAM heatmap and estimated bleed outline"
    )
    return sc


def secondary_capture_bytes(data: ReportInput) -> bytes:
    buf = io.BytesIO()
    secondary_capture(data).save_as(buf, enforce_file_format=True)
    return buf.getvalue()
