"""core.reports.pdf and core.reports.secondary_capture: the one-page PDF renders
(checked as pixels with pdftoppm) and the Secondary Capture reads back with pydicom with its
required attributes."""

from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from core.dicom.study import Study, load_studies
from core.inference.predictor import Predictor, ResultCache
from core.model.checkpoint import load_checkpoint
from core.reports.pdf import key_slice, render_pdf, report_input
from core.reports.secondary_capture import (
    SERIES_DESCRIPTION,
    secondary_capture,
    secondary_capture_bytes,
)
from core.reports.segmentation import SegmentationInput
from core.reports.study_report import study_report
from core.review.pseudonym import Pseudonymizer
from core.review.store import Review


@pytest.fixture(scope="module")
def content(small_zip: Path, tiny_weights: Path):
    study: Study = load_studies(small_zip)[0]
    predictor = Predictor(
        load_checkpoint(tiny_weights, allow_unverified=True), "cpu", cache=ResultCache()
    )
    prediction = predictor.predict(study)
    estimate = predictor.localise(study.default_series, prediction, threshold=0.0, max_slices=4)
    review = Review(
        study.study_instance_uid,
        study.default_series.series_instance_uid,
        "Dr Test",
        "no hemorrhage",
        {"any": "disagree"},
        "calcified falx",
        created_at=datetime(2026, 11, 23, 9, 30, tzinfo=UTC),
    )
    return report_input(study, prediction, predictor, estimate, [review], "Patient ABC123")


def test_pdf_is_one_page_that_renders_with_content(content, tmp_path: Path) -> None:
    pdftoppm = shutil.which("pdftoppm")
    assert pdftoppm, "pdftoppm (poppler-utils) is needed: .ci/setup test installs it"
    pdf = render_pdf(content)
    assert pdf.startswith(b"%PDF")
    path = tmp_path / "report.pdf"
    path.write_bytes(pdf)
    subprocess.run([pdftoppm, "-png", "-r", "50", str(path), str(tmp_path / "page")], check=True)
    pages = sorted(tmp_path.glob("page*.png"))
    assert len(pages) == 1
    pixels = np.asarray(Image.open(pages[0]).convert("L"), dtype=np.float32)
    assert pixels.std() > 20  # not blank: text and images
    assert (pixels < 50).mean() > 0.05  # the CT images are mostly dark
    out = Path("test-output/reports")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(pages[0], out / "report-page.png")


def test_pdf_text_shows_the_chosen_patient_label_findings_and_notice(
    content, tmp_path: Path
) -> None:
    path = tmp_path / "report.pdf"
    path.write_bytes(render_pdf(content))
    text = subprocess.run(
        ["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True, text=True
    ).stdout
    assert "Patient ABC123" in text
    assert content.study.patient_id and content.study.patient_id not in text
    assert "RESEARCH USE ONLY" in text and "no hemorrhage" in text and "Dr Test" in text
    assert "intraparenchymal" in text and "Estimated bleed volume" in text


def test_key_slice_prefers_the_outlined_area(content) -> None:
    est = content.estimate
    if max(est.area_mm2) > 0:
        assert key_slice(content.prediction, est) == int(np.argmax(est.area_mm2))
    assert key_slice(content.prediction, None) == int(np.argmax(content.prediction.probs[:, 0]))


def test_secondary_capture_reads_back_with_required_attributes(content) -> None:
    ds = pydicom.dcmread(io.BytesIO(secondary_capture_bytes(content)))
    assert ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    for keyword in (
        "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality",
        "ConversionType", "SeriesNumber", "InstanceNumber", "PatientOrientation",
    ):  # fmt: skip
        assert keyword in ds, keyword
    for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
        assert pydicom.uid.UID(uid).is_valid, uid
    assert ds.PatientID == content.study.patient_id
    assert ds.SeriesDescription == SERIES_DESCRIPTION
    assert "RESEARCH USE ONLY" in ds.ImageComments and "Dr Test" in ds.ImageComments
    assert ds.PhotometricInterpretation == "RGB" and ds.SamplesPerPixel == 3
    image = ds.pixel_array
    assert image.shape == (*content.study.default_series.hu.shape[1:], 3)
    assert image.std() > 10


def test_invalid_source_uid_gets_a_stable_valid_one(content) -> None:
    a, b = secondary_capture(content), secondary_capture(content)
    assert a.StudyInstanceUID == b.StudyInstanceUID  # same study → same derived UID
    assert a.SOPInstanceUID != b.SOPInstanceUID


def test_secondary_capture_passes_dciodvfy(content, tmp_path: Path) -> None:
    from dicom_validation import dciodvfy_errors

    assert dciodvfy_errors(secondary_capture_bytes(content), tmp_path) == []


def _pdf_text(content, tmp_path: Path) -> str:
    path = tmp_path / "report.pdf"
    path.write_bytes(render_pdf(content))
    return subprocess.run(
        ["pdftotext", str(path), "-"], check=True, capture_output=True, text=True
    ).stdout


def test_an_unverified_model_is_named_in_every_report(content, tmp_path: Path) -> None:
    """The tiny test model is on no manifest (core.model.integrity): loaded with the flag, its
    results say "unverified model" in the PDF, the Secondary Capture and the JSON report;
    the same results from a verified model do not."""
    assert not content.prediction.model_verified
    text = " ".join(_pdf_text(content, tmp_path).split())
    assert "UNVERIFIED MODEL" in text and "unverified model" in text
    assert "Not a model shipped with ICH review" in text
    comments = pydicom.dcmread(io.BytesIO(secondary_capture_bytes(content))).ImageComments
    assert "(unverified model)" in comments
    assert SegmentationInput.from_report(content).model_name == "tiny-test (unverified model)"
    names = Pseudonymizer("a-test-secret-of-at-least-32-characters")
    report = study_report(content.study, content.prediction, [], names)
    assert report["model_status"] == "unverified model"
    # Probabilities with 6 decimals, never a float's 17 digits; peaks named by how they count.
    numbers = [*report["study_probabilities"].values()]  # type: ignore[union-attr]
    numbers += [v for s in report["slices"] for v in s["probabilities"].values()]  # type: ignore[union-attr]
    assert numbers and all(v == round(v, 6) for v in numbers)
    peaks = report["peak_slice_index"]
    assert report["peak_slice_number"] == {k: i + 1 for k, i in peaks.items()}  # type: ignore[union-attr]

    verified = replace(content, prediction=replace(content.prediction, model_verified=True))
    text = " ".join(_pdf_text(verified, tmp_path).split())
    assert "UNVERIFIED" not in text and "unverified model" not in text
    comments = pydicom.dcmread(io.BytesIO(secondary_capture_bytes(verified))).ImageComments
    assert "unverified" not in comments
    assert SegmentationInput.from_report(verified).model_name == "tiny-test"
    assert study_report(verified.study, verified.prediction, [], names)["model_status"] == (
        "verified"
    )
