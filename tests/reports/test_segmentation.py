"""core.reports.segmentation: the bleed outline as a DICOM SEG, on the real study ID_286f17f9e7
(gantry tilt 22°, 2.7 mm then 5.4 mm slices, no frame of reference in the files) with its
hand-drawn hemseg masks as the outline. The SEG passes dciodvfy, references every image of the
source series, and reads back with pydicom alone and with highdicom to the same mask on the
same slices; an empty outline gives no SEG."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from data_paths import DATA, LABELLED, require
from PIL import Image

from core.dicom.study import Study, load_studies
from core.dicom.uids import frame_of_reference_uid, valid_uid
from core.inference.predictor import Predictor, ResultCache
from core.model.checkpoint import DEFAULT_WEIGHTS_DIR, find_default_checkpoint, load_checkpoint
from core.reports.segmentation import (
    CONTENT_DESCRIPTION,
    SERIES_DESCRIPTION,
    EmptyOutlineError,
    SegmentationInput,
    UnplaceableSeriesError,
    mask_from_segmentation,
    segmentation,
    segmentation_bytes,
)

STUDY = "ID_286f17f9e7"
MODEL = "ich-test-model"
VERSION = "ich-test-model@0123456789ab"


@pytest.fixture(scope="module")
def study() -> Study:
    return load_studies(require(LABELLED / "studies" / f"{STUDY}.zip"))[0]


@pytest.fixture(scope="module")
def hand_mask(study: Study) -> np.ndarray:
    """The hand-drawn hemseg masks of the study, on its default series (by SOP Instance UID)."""
    folder = require(DATA / "hemseg" / "masks")
    series = study.default_series
    mask = np.zeros(series.shape, dtype=bool)
    for s in series.slices:
        mask[s.index] = np.asarray(Image.open(require(folder / f"{s.sop_instance_uid}.png"))) > 127
    return mask


@pytest.fixture(scope="module")
def seg_bytes(study: Study, hand_mask: np.ndarray) -> bytes:
    return segmentation_bytes(
        SegmentationInput(study, study.default_series, hand_mask, MODEL, VERSION)
    )


def _source_uid(frame: pydicom.Dataset) -> str:
    [derivation] = frame.DerivationImageSequence
    [source] = derivation.SourceImageSequence
    return str(source.ReferencedSOPInstanceUID)


def test_the_real_mask_is_bloody_on_some_slices_only(hand_mask: np.ndarray) -> None:
    bloody = hand_mask.reshape(len(hand_mask), -1).any(axis=1)
    assert bloody.sum() == 11 and (~bloody).sum() == 25  # the hemseg README's count


def test_seg_passes_dciodvfy(seg_bytes: bytes, tmp_path: Path) -> None:
    from dicom_validation import dciodvfy_errors

    assert dciodvfy_errors(seg_bytes, tmp_path, "seg.dcm") == []


def test_seg_reads_back_with_pydicom_alone_to_the_same_mask_on_the_same_slices(
    seg_bytes: bytes, study: Study, hand_mask: np.ndarray
) -> None:
    ds = pydicom.dcmread(io.BytesIO(seg_bytes))
    series = study.default_series
    assert ds.SOPClassUID == pydicom.uid.SegmentationStorage and ds.Modality == "SEG"
    assert ds.SegmentationType == "BINARY"
    # one frame per slice with blood (empty frames omitted) …
    bloody = np.flatnonzero(hand_mask.reshape(len(hand_mask), -1).any(axis=1))
    assert int(ds.NumberOfFrames) == len(bloody)
    # … each put back on its slice by the SOP Instance UID it references, and by position
    by_uid = {valid_uid(s.sop_instance_uid): s for s in series.slices}
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    back = np.zeros_like(hand_mask)
    for frame, item in zip(frames, ds.PerFrameFunctionalGroupsSequence, strict=True):
        source = by_uid[_source_uid(item)]
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(position, source.position, atol=1e-3)
        back[source.index] = frame > 0
    assert np.array_equal(back, hand_mask)


def test_seg_references_the_whole_source_series_in_its_study(
    seg_bytes: bytes, study: Study
) -> None:
    ds = pydicom.dcmread(io.BytesIO(seg_bytes))
    series = study.default_series
    assert ds.StudyInstanceUID == valid_uid(study.study_instance_uid)
    assert ds.SeriesInstanceUID != valid_uid(series.series_instance_uid)  # a new series
    [ref] = ds.ReferencedSeriesSequence
    assert ref.SeriesInstanceUID == valid_uid(series.series_instance_uid)
    assert [r.ReferencedSOPInstanceUID for r in ref.ReferencedInstanceSequence] == [
        valid_uid(s.sop_instance_uid) for s in series.slices
    ]
    assert {r.ReferencedSOPClassUID for r in ref.ReferencedInstanceSequence} == {
        pydicom.uid.CTImageStorage
    }
    # RSNA's files name no frame of reference: a stable one derived from the series UID
    assert series.frame_of_reference_uid == ""
    assert ds.FrameOfReferenceUID == frame_of_reference_uid(series.series_instance_uid)
    for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID):
        assert pydicom.uid.UID(uid).is_valid
    assert ds.PatientID == study.patient_id


def test_seg_says_what_it_is_and_who_drew_it(seg_bytes: bytes) -> None:
    ds = pydicom.dcmread(io.BytesIO(seg_bytes))
    [segment] = ds.SegmentSequence
    assert segment.SegmentLabel == "Hemorrhage" and segment.SegmentAlgorithmType == "AUTOMATIC"
    [category] = segment.SegmentedPropertyCategoryCodeSequence
    [kind] = segment.SegmentedPropertyTypeCodeSequence
    assert (category.CodingSchemeDesignator, category.CodeValue) == ("SCT", "49755003")
    assert category.CodeMeaning.lower() == "morphologically abnormal structure"
    assert (kind.CodingSchemeDesignator, kind.CodeValue, kind.CodeMeaning) == (
        "SCT", "50960005", "Hemorrhage",
    )  # fmt: skip
    [algorithm] = segment.SegmentationAlgorithmIdentificationSequence
    assert algorithm.AlgorithmName == MODEL and algorithm.AlgorithmVersion == VERSION
    assert "RESEARCH USE ONLY" in ds.ContentDescription == CONTENT_DESCRIPTION
    assert "research use only" in ds.SeriesDescription == SERIES_DESCRIPTION


def test_seg_reads_back_with_highdicom_to_the_same_mask(
    seg_bytes: bytes, study: Study, hand_mask: np.ndarray
) -> None:
    seg = hd.seg.segread(io.BytesIO(seg_bytes))
    assert seg.get_segment_description(1).segment_label == "Hemorrhage"
    assert np.array_equal(mask_from_segmentation(seg, study.default_series), hand_mask)
    # highdicom sees the whole source series referenced, not only the slices with frames
    assert {uid for _, _, uid in seg.get_source_image_uids()} == {
        valid_uid(s.sop_instance_uid) for s in study.default_series.slices
    }


def test_a_mask_on_one_slice_lands_on_that_slice_only(study: Study) -> None:
    series = study.default_series
    mask = np.zeros(series.shape, dtype=bool)
    mask[20, 200:260, 300:340] = True  # a block well away from the hand-drawn bleed's slices
    ds = segmentation(SegmentationInput(study, series, mask, MODEL, VERSION))
    assert int(ds.NumberOfFrames) == 1
    assert _source_uid(ds.PerFrameFunctionalGroupsSequence[0]) == valid_uid(
        series.slices[20].sop_instance_uid
    )
    back = mask_from_segmentation(pydicom.dcmread(io.BytesIO(_save(ds))), series)
    assert np.array_equal(back, mask)


def _save(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_an_empty_outline_gives_no_seg_but_a_reason(study: Study) -> None:
    series = study.default_series
    empty = np.zeros(series.shape, dtype=bool)
    with pytest.raises(EmptyOutlineError, match="no bleed"):
        segmentation(SegmentationInput(study, series, empty, MODEL, VERSION))


def test_a_series_without_positions_gives_no_seg_but_a_reason(
    study: Study, hand_mask: np.ndarray
) -> None:
    series = study.default_series
    unplaced = dataclasses.replace(
        series, slices=tuple(dataclasses.replace(s, position=None) for s in series.slices)
    )
    with pytest.raises(UnplaceableSeriesError, match="ImagePositionPatient"):
        segmentation(SegmentationInput(study, unplaced, hand_mask, MODEL, VERSION))


def test_a_mask_of_another_shape_is_refused(study: Study) -> None:
    with pytest.raises(ValueError, match="for a series of"):
        segmentation(
            SegmentationInput(study, study.default_series, np.ones((2, 4, 4), bool), MODEL, "v")
        )


def test_the_shipped_models_outline_reads_back_from_its_seg(study: Study, tmp_path: Path) -> None:
    """The engine's own outline (the shipped model's bleed map) on the real bleed, end to end."""
    from dicom_validation import dciodvfy_errors

    card = find_default_checkpoint(DEFAULT_WEIGHTS_DIR)
    assert card is not None
    predictor = Predictor(load_checkpoint(card), "cpu", cache=ResultCache())
    series = study.default_series
    estimate = predictor.localise(series, predictor.predict(study))
    assert estimate.mask.any(), "the shipped model outlines this study's hematoma"
    data = SegmentationInput.from_estimate(
        study, series, estimate, predictor.loaded.card.name, predictor.weights_identity
    )
    raw = segmentation_bytes(data)
    assert dciodvfy_errors(raw, tmp_path, "model-seg.dcm") == []
    seg = hd.seg.segread(io.BytesIO(raw))
    assert np.array_equal(mask_from_segmentation(seg, series), estimate.mask)
    [algorithm] = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence
    assert algorithm.AlgorithmName == predictor.loaded.card.name
    assert algorithm.AlgorithmVersion == predictor.weights_identity


def test_a_source_frame_of_reference_and_study_date_are_kept(
    study: Study, hand_mask: np.ndarray, tmp_path: Path
) -> None:
    from datetime import date

    from dicom_validation import dciodvfy_errors

    frame = "1.2.826.0.1.3680043.8.498.77"
    series = dataclasses.replace(study.default_series, frame_of_reference_uid=frame)
    dated = dataclasses.replace(study, series=(series,), study_date=date(2026, 11, 23))
    raw = segmentation_bytes(SegmentationInput(dated, series, hand_mask, MODEL, VERSION))
    ds = pydicom.dcmread(io.BytesIO(raw))
    assert ds.FrameOfReferenceUID == frame and ds.StudyDate == "20261123"
    assert dciodvfy_errors(raw, tmp_path, "dated-seg.dcm") == []
