"""The Comprehensive SR of a real study's findings: dciodvfy finds no Error, highdicom reads
back exactly what was scored, and it references the source study and every source slice by
the same (valid) UIDs as the Secondary Capture."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pydicom
import pytest
from dicom_validation import dciodvfy_errors

from core.dicom.study import load_studies
from core.dicom.uids import valid_uid
from core.inference.predictor import Predictor, ResultCache
from core.labels import LABELS
from core.model.checkpoint import find_default_checkpoint, load_checkpoint
from core.notice import NOTICE
from core.reports.structured_report import (
    SERIES_DESCRIPTION,
    read_findings,
    structured_report,
    structured_report_bytes,
)


@pytest.fixture(scope="module")
def scored(small_zip: Path, tiny_weights: Path):  # noqa: ANN201
    predictor = Predictor(
        load_checkpoint(find_default_checkpoint(tiny_weights), allow_unverified=True),
        cache=ResultCache(1),
    )  # type: ignore[arg-type]
    study = load_studies(small_zip)[0]
    prediction = predictor.predict(study)
    estimate = predictor.localise(study.default_series, prediction)
    return study, prediction, estimate


@pytest.mark.parametrize("threshold", [0.0001, 0.9999, None])
def test_sr_validates_and_reads_back(scored, threshold, tmp_path: Path) -> None:  # noqa: ANN001
    study, prediction, estimate = scored
    sr = structured_report(
        study, prediction, estimate, threshold=threshold, model_name="tiny-test",
        model_version="tiny-test@0123456789ab",
    )  # fmt: skip
    data = structured_report_bytes(sr)
    assert dciodvfy_errors(data, tmp_path, "sr.dcm") == []
    found = read_findings(data)
    for label in LABELS:
        assert found[label] == pytest.approx(prediction.study_scores[label], abs=1e-6)
    assert found["volume_ml"] == pytest.approx(estimate.volume_ml, abs=1e-3)
    expected_call = None if threshold is None else ("Yes" if threshold < 0.5 else "No")
    assert found["call"] == expected_call
    assert (found["algorithm"], found["version"]) == ("tiny-test", "tiny-test@0123456789ab")
    assert str(found["notice"]).startswith(NOTICE)

    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.SOPClassUID == pydicom.uid.ComprehensiveSRStorage
    # The tiny test model is not a shipped one: the PACS user sees it in the series list.
    assert not prediction.model_verified and found["model_status"] == "unverified model"
    assert ds.SeriesDescription == f"{SERIES_DESCRIPTION} (unverified model)"
    series = study.default_series
    assert ds.StudyInstanceUID == valid_uid(study.study_instance_uid) != study.study_instance_uid
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == ds.StudyInstanceUID
    ref_series = evidence.ReferencedSeriesSequence[0]
    assert ref_series.SeriesInstanceUID == valid_uid(series.series_instance_uid)
    assert [r.ReferencedSOPInstanceUID for r in ref_series.ReferencedSOPSequence] == [
        valid_uid(s.sop_instance_uid) for s in series.slices
    ]


def test_sr_of_a_verified_model_carries_no_unverified_mark(scored) -> None:  # noqa: ANN001
    study, prediction, estimate = scored
    verified = dataclasses.replace(prediction, model_verified=True)
    data = structured_report_bytes(
        structured_report(
            study, verified, estimate, threshold=0.5, model_name="m", model_version="m@1"
        )
    )
    assert read_findings(data)["model_status"] == "verified"
    assert pydicom.dcmread(io.BytesIO(data)).SeriesDescription == SERIES_DESCRIPTION
